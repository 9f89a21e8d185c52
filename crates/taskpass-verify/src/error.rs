use thiserror::Error;

/// Why a token or a key set was rejected.
///
/// Messages name the rule that failed and never include the token, a claim value or key
/// material, so they can be logged and returned to callers. [`VerifyError::reason`] gives the
/// stable, machine-readable reason used by introspection (`inactive_reason`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The token is not a compact JWS: not three base64url parts, or a header or payload
    /// that is not a JSON object.
    #[error("token is malformed")]
    Malformed,
    /// The token is larger than [`MAX_TOKEN_BYTES`](crate::MAX_TOKEN_BYTES); it was not parsed.
    #[error("token is larger than the size limit")]
    TooLarge,
    /// The header's `alg` is not one this SDK accepts (`none`, HMAC, RSA, ...), or is not the
    /// algorithm the key named by `kid` is pinned to.
    #[error("token algorithm is not accepted for its key")]
    UnsupportedAlgorithm,
    /// The header carries a parameter that is never accepted (`crit`, `jku`, `jwk`, `x5u`,
    /// `x5c`): the name of the parameter.
    #[error("token header parameter `{0}` is not allowed")]
    ForbiddenHeader(&'static str),
    /// The header's `typ` is missing or is not `at+jwt` (RFC 9068).
    #[error("token type is not at+jwt")]
    WrongType,
    /// The header has no `kid`, so no key can be chosen.
    #[error("token header has no key id")]
    MissingKeyId,
    /// No key in the key set has the header's `kid`: the JWKS may need refreshing.
    #[error("token key id is not in the key set")]
    UnknownKey,
    /// The signature does not verify under the key named by `kid`.
    #[error("token signature is invalid")]
    BadSignature,
    /// The token's `exp` has passed (beyond the leeway).
    #[error("token has expired")]
    Expired,
    /// The token's `nbf` or `iat` is in the future (beyond the leeway).
    #[error("token is not yet valid")]
    NotYetValid,
    /// The token's `iss` is not the issuer this verifier trusts.
    #[error("token issuer is not the trusted issuer")]
    WrongIssuer,
    /// The token's `aud` is not the audience being verified for.
    #[error("token audience does not match")]
    WrongAudience,
    /// A required claim is absent (or an empty string): the claim's name.
    #[error("token claim `{0}` is missing")]
    MissingClaim(&'static str),
    /// A claim is present but has the wrong type or an impossible value: the claim's name.
    #[error("token claim `{0}` is invalid")]
    InvalidClaim(&'static str),
    /// The token is bound (`cnf`) to a certificate or key and the caller presented none: a
    /// stolen bound token is worthless, so it is not accepted without its proof.
    #[error("token is bound to a certificate or key: the caller must present it")]
    ProofRequired,
    /// The token is bound to another certificate or key than the one presented.
    #[error("token is bound to another certificate or key than the one presented")]
    WrongHolder,
    /// The DPoP proof is not valid: the part that failed (`typ`, `alg`, `jwk`, `signature`,
    /// `htm`, `htu`, `iat`, `jti`, `ath`, ...).
    #[error("DPoP proof is invalid: {0}")]
    InvalidProof(&'static str),
    /// The DPoP proof's `jti` was seen before: a replay.
    #[error("DPoP proof was already used")]
    ReplayedProof,
    /// The token is revoked: by itself, its task, its agent or the certificate it is bound
    /// to. The reason, in introspection's vocabulary (`revoked`, `task_completed`,
    /// `agent_offboarded`, `certificate_revoked`, ...).
    #[error("token is revoked ({0})")]
    Revoked(&'static str),
    /// The verifier follows revocations live and has not heard from the broker within its
    /// staleness budget: it cannot tell whether the token was revoked, so it refuses it.
    #[error(
        "revocation state is stale: the broker's revocation stream has been unreachable beyond the staleness budget"
    )]
    Stale,
    /// The broker's introspection (the fallback while the stream is down) says the token is
    /// not active, for this reason.
    #[error("token is not active ({0})")]
    Inactive(&'static str),
    /// The broker could not be asked (fallback introspection, key refresh): why.
    #[error("the broker is unavailable: {0}")]
    Unavailable(String),
    /// The JWKS could not be used: why (never key material).
    #[error("invalid key set: {0}")]
    InvalidKeySet(String),
}

impl VerifyError {
    /// The stable reason for this rejection, as introspection reports it in
    /// `inactive_reason`.
    ///
    /// | reason | errors |
    /// |---|---|
    /// | `malformed` | `Malformed`, `TooLarge`, `ForbiddenHeader`, `WrongType`, `MissingKeyId`, `MissingClaim`, `InvalidClaim` |
    /// | `bad_signature` | `BadSignature`, `UnsupportedAlgorithm` |
    /// | `unknown_key` | `UnknownKey` |
    /// | `expired` | `Expired` |
    /// | `not_yet_valid` | `NotYetValid` |
    /// | `wrong_issuer` | `WrongIssuer` |
    /// | `wrong_audience` | `WrongAudience` |
    /// | `proof_required` | `ProofRequired` |
    /// | `wrong_holder` | `WrongHolder` |
    /// | `invalid_dpop_proof` | `InvalidProof` |
    /// | `replayed_dpop_proof` | `ReplayedProof` |
    /// | `revoked`, `task_completed`, `task_expired`, `task_revoked`, `agent_offboarded`, `agent_suspended`, `agent_revoked`, `certificate_revoked` | `Revoked` |
    /// | `revocations_stale` | `Stale` |
    /// | the broker's `inactive_reason` | `Inactive` |
    /// | `broker_unavailable` | `Unavailable` |
    /// | `invalid_key_set` | `InvalidKeySet` (never returned by verification) |
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed
            | Self::TooLarge
            | Self::ForbiddenHeader(_)
            | Self::WrongType
            | Self::MissingKeyId
            | Self::MissingClaim(_)
            | Self::InvalidClaim(_) => "malformed",
            Self::UnsupportedAlgorithm | Self::BadSignature => "bad_signature",
            Self::UnknownKey => "unknown_key",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::ProofRequired => "proof_required",
            Self::WrongHolder => "wrong_holder",
            Self::InvalidProof(_) => "invalid_dpop_proof",
            Self::ReplayedProof => "replayed_dpop_proof",
            Self::Revoked(reason) | Self::Inactive(reason) => reason,
            Self::Stale => "revocations_stale",
            Self::Unavailable(_) => "broker_unavailable",
            Self::InvalidKeySet(_) => "invalid_key_set",
        }
    }
}

impl From<taskpass_core::jwt::ProfileError> for VerifyError {
    fn from(e: taskpass_core::jwt::ProfileError) -> Self {
        use taskpass_core::jwt::ProfileError as P;
        match e {
            P::TooLarge => Self::TooLarge,
            P::Malformed => Self::Malformed,
            P::ForbiddenHeader(name) => Self::ForbiddenHeader(name),
            P::WrongType => Self::WrongType,
            P::UnsupportedAlgorithm => Self::UnsupportedAlgorithm,
            P::MissingKeyId => Self::MissingKeyId,
            P::MissingClaim(name) => Self::MissingClaim(name),
            P::InvalidClaim(name) => Self::InvalidClaim(name),
            P::Expired => Self::Expired,
            P::NotYetValid => Self::NotYetValid,
        }
    }
}
