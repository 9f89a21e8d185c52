use std::fmt::Write as _;

/// Why an attestation was refused, or why a verifier could not be built.
///
/// Every variant maps to `UNAUTHENTICATED` at the gRPC edge (except [`AttestError::Config`],
/// which is a startup error). Messages name what to fix and never contain the token, a key or
/// any other secret; values copied from a token (issuer, key id, algorithm) are clipped and
/// escaped. [`AttestError::reason`] gives a short stable code for audit logs.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The token is longer than `OidcOptions::max_token_bytes`; it was not parsed.
    #[error(
        "attestation token is {size} bytes, more than the {limit} bytes this broker accepts: \
         present an OIDC ID token, not another document"
    )]
    TooLarge {
        /// The token's length in bytes.
        size: usize,
        /// The configured maximum.
        limit: usize,
    },
    /// The token is not a compact JWS whose header and claims are base64url-encoded JSON objects.
    #[error("attestation token is malformed: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is not RS256, ES256 or EdDSA, or is not the algorithm of the key it names.
    #[error(
        "attestation token algorithm {alg} is not allowed: sign with RS256, ES256 or EdDSA using \
         the algorithm of a key the issuer publishes"
    )]
    AlgNotAllowed {
        /// The header's algorithm, clipped and quoted.
        alg: String,
    },
    /// The header carries a parameter the broker refuses (`crit`, `jku`, `x5u`, `jwk`, `x5c`):
    /// keys are only ever taken from the issuer's configured key set.
    #[error(
        "attestation token header \"{header}\" is not accepted: the broker only uses keys \
         configured or published for the issuer"
    )]
    ForbiddenHeader {
        /// The refused header parameter.
        header: &'static str,
    },
    /// The `iss` claim names no issuer configured under `[[attestation.oidc]]`.
    #[error(
        "attestation token issuer {issuer} is not trusted by this broker: add it under \
         [[attestation.oidc]]"
    )]
    UntrustedIssuer {
        /// The token's issuer, clipped and quoted.
        issuer: String,
    },
    /// The header has no `kid` and the issuer publishes more than one key.
    #[error(
        "attestation token from issuer {issuer} has no \"kid\" header, and the issuer publishes \
         several keys: the issuer must name its signing key"
    )]
    MissingKeyId {
        /// The issuer.
        issuer: String,
    },
    /// No signature key with the token's `kid` is in the issuer's key set, even after a refetch.
    #[error(
        "attestation token key {kid} is not among the signature keys of issuer {issuer}: the key \
         may be new (retry shortly) or the token was not signed by this issuer"
    )]
    UnknownKey {
        /// The issuer.
        issuer: String,
        /// The token's key id, clipped and quoted (`none` when absent).
        kid: String,
    },
    /// The signature does not verify with the issuer's key.
    #[error("attestation token signature does not verify with key {kid} of issuer {issuer}")]
    BadSignature {
        /// The issuer.
        issuer: String,
        /// The key id used, clipped and quoted.
        kid: String,
    },
    /// `exp` is in the past by more than the leeway.
    #[error(
        "attestation token expired at {exp} (now {now}, leeway {leeway}s): get a fresh token \
         from the issuer"
    )]
    Expired {
        /// The token's `exp`.
        exp: i64,
        /// The broker's clock.
        now: i64,
        /// The configured leeway in seconds.
        leeway: u32,
    },
    /// `nbf` is in the future by more than the leeway.
    #[error(
        "attestation token is not valid before {nbf} (now {now}, leeway {leeway}s): check the \
         clocks of the issuer and the broker"
    )]
    NotYetValid {
        /// The token's `nbf`.
        nbf: i64,
        /// The broker's clock.
        now: i64,
        /// The configured leeway in seconds.
        leeway: u32,
    },
    /// `iat` is in the future by more than the leeway.
    #[error(
        "attestation token was issued in the future at {iat} (now {now}, leeway {leeway}s): \
         check the clocks of the issuer and the broker"
    )]
    IssuedInFuture {
        /// The token's `iat`.
        iat: i64,
        /// The broker's clock.
        now: i64,
        /// The configured leeway in seconds.
        leeway: u32,
    },
    /// `aud` contains none of the audiences configured for the issuer.
    #[error(
        "attestation token audience is not one of {expected} accepted for issuer {issuer}: \
         request the token for one of them"
    )]
    WrongAudience {
        /// The issuer.
        issuer: String,
        /// The configured audiences, quoted.
        expected: String,
    },
    /// A required claim (`iss`, `sub`, `aud`, `exp`) is absent or not of the right type.
    #[error("attestation token lacks a valid \"{claim}\" claim, which the broker requires")]
    MissingClaim {
        /// The claim's name.
        claim: &'static str,
    },
    /// The issuer's keys could not be obtained (discovery or JWKS fetch failed, or they hold no
    /// usable signature key).
    #[error("keys of attestation issuer {issuer} are unavailable: {detail}")]
    KeysUnavailable {
        /// The issuer.
        issuer: String,
        /// What failed, for the operator.
        detail: String,
    },
    /// A client certificate was refused (mTLS attestation): `reason` is the stable code, e.g.
    /// `certificate_expired`, `certificate_untrusted`, `certificate_trust_domain`.
    #[error("client certificate refused: {detail}")]
    Certificate {
        /// The stable code.
        reason: &'static str,
        /// What is wrong, for the caller.
        detail: String,
    },
    /// The attestation configuration is invalid (startup only); lists every problem found.
    #[error("invalid attestation configuration: {}", .problems.join("; "))]
    Config {
        /// Each problem, one sentence each.
        problems: Vec<String>,
    },
}

impl AttestError {
    /// A short stable code for audit logs and metrics, e.g. `"expired"`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Malformed(_) => "malformed",
            Self::AlgNotAllowed { .. } => "alg_not_allowed",
            Self::ForbiddenHeader { .. } => "forbidden_header",
            Self::UntrustedIssuer { .. } => "untrusted_issuer",
            Self::MissingKeyId { .. } => "missing_kid",
            Self::UnknownKey { .. } => "unknown_key",
            Self::BadSignature { .. } => "bad_signature",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::IssuedInFuture { .. } => "issued_in_future",
            Self::WrongAudience { .. } => "wrong_audience",
            Self::MissingClaim { .. } => "missing_claim",
            Self::KeysUnavailable { .. } => "keys_unavailable",
            Self::Certificate { reason, .. } => reason,
            Self::Config { .. } => "config",
        }
    }
}

/// Longest value copied from a token into a message.
const CLIP: usize = 96;

/// Quotes a value that may come from an untrusted token: at most [`CLIP`] characters, with
/// control characters and quotes escaped, so a message stays one readable line.
pub(crate) fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(CLIP) + 8);
    out.push('"');
    for (i, c) in value.chars().enumerate() {
        if i == CLIP {
            out.push('…');
            break;
        }
        for e in c.escape_debug() {
            out.push(e);
        }
    }
    out.push('"');
    out
}

/// Quotes a list of configured values: `["a", "b"]`.
pub(crate) fn quoted_list(values: &[String]) -> String {
    let mut out = String::from("[");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{}", quoted(v));
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_clips_and_escapes() {
        assert_eq!(quoted("a\"b\n"), r#""a\"b\n""#);
        let long = "x".repeat(500);
        let q = quoted(&long);
        assert!(q.chars().count() < 110, "{q}");
        assert_eq!(quoted_list(&["a".into(), "b".into()]), r#"["a", "b"]"#);
    }

    #[test]
    fn messages_are_lowercase_and_reasons_stable() {
        let e = AttestError::UntrustedIssuer {
            issuer: quoted("https://x"),
        };
        assert_eq!(
            e.to_string(),
            "attestation token issuer \"https://x\" is not trusted by this broker: add it under \
             [[attestation.oidc]]"
        );
        assert_eq!(e.reason(), "untrusted_issuer");
        let e = AttestError::Expired {
            exp: 1,
            now: 100,
            leeway: 30,
        };
        assert_eq!(e.reason(), "expired");
        assert!(e.to_string().starts_with("attestation token expired"));
    }
}
