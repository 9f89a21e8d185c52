use std::sync::{Arc, PoisonError, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use taskpass_core::{AccessClaims, Clock as _, SystemClock};

use crate::error::VerifyError;
use crate::keys::{KeySet, alg_name};

/// The largest token [`Verifier::verify`] looks at, in bytes. Larger ones are rejected with
/// [`VerifyError::TooLarge`] before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The clock skew a [`Verifier`] allows by default on `exp`, `nbf` and `iat`, in seconds.
///
/// The broker itself uses none when it issues tokens; a validator runs on another machine, so
/// a few seconds absorb the skew between the two clocks without noticeably extending a
/// token's life.
pub const DEFAULT_LEEWAY_SECS: u64 = 5;

/// Verifies Taskpass access tokens offline, against the broker's keys.
///
/// Secure by default: only `EdDSA` and `ES256` signatures from the configured key set, each
/// key pinned to one algorithm; `typ` must be `at+jwt`; `kid` is required; `crit`, `jku`,
/// `jwk`, `x5u` and `x5c` headers are refused; `iss` must be the configured issuer, `aud` the
/// audience asked for, and `exp`, `nbf` and `iat` are checked with a small leeway
/// ([`DEFAULT_LEEWAY_SECS`]).
///
/// A `Verifier` is `Send + Sync`: share one (in an `Arc`) across requests and refresh its keys
/// with [`Verifier::replace_keys`] when the broker rotates them.
#[derive(Debug)]
pub struct Verifier {
    issuer: String,
    leeway: u64,
    keys: RwLock<Arc<KeySet>>,
}

impl Verifier {
    /// A verifier for tokens issued by `issuer` (the broker's `iss`, e.g.
    /// `https://taskpass.example.org`) and signed by one of `keys`.
    ///
    /// Also selects `jsonwebtoken`'s aws-lc-rs crypto provider as the process default if no
    /// provider was installed yet, so verification never depends on feature inference.
    pub fn new(issuer: impl Into<String>, keys: KeySet) -> Self {
        // An `Err` means a provider is already installed (the application's or ours).
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
        Self {
            issuer: issuer.into(),
            leeway: DEFAULT_LEEWAY_SECS,
            keys: RwLock::new(Arc::new(keys)),
        }
    }

    /// Sets the clock skew allowed on `exp`, `nbf` and `iat`, in seconds (default
    /// [`DEFAULT_LEEWAY_SECS`]). Keep it small: it extends every token's life by as much.
    #[must_use]
    pub fn with_leeway(mut self, secs: u64) -> Self {
        self.leeway = secs;
        self
    }

    /// The issuer this verifier trusts.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Replaces the key set, e.g. after re-fetching the JWKS on an unknown `kid`. Verifications
    /// already running finish with the keys they started with.
    pub fn replace_keys(&self, keys: KeySet) {
        let mut guard = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        *guard = Arc::new(keys);
    }

    /// Verifies `token` for `audience` (the calling API's own audience) at the current time.
    pub fn verify(&self, token: &str, audience: &str) -> Result<VerifiedToken, VerifyError> {
        self.verify_at(token, audience, SystemClock.now())
    }

    /// Verifies `token` for `audience` as if the time were `now` (Unix seconds).
    pub fn verify_at(
        &self,
        token: &str,
        audience: &str,
        now: i64,
    ) -> Result<VerifiedToken, VerifyError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VerifyError::Malformed);
        };
        if header.is_empty() || payload.is_empty() {
            return Err(VerifyError::Malformed);
        }

        let header = parse_header(header)?;
        let alg = check_header(&header)?;
        let kid = header
            .kid
            .as_deref()
            .filter(|kid| !kid.is_empty())
            .ok_or(VerifyError::MissingKeyId)?;

        let keys = Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner));
        let key = keys.get(kid).ok_or(VerifyError::UnknownKey)?;
        if key.alg != alg {
            return Err(VerifyError::UnsupportedAlgorithm);
        }

        // Signature, `iss` and `aud` by jsonwebtoken. Its time checks read the system clock
        // and ignore `iat`, so times are checked below against `now`.
        let mut validation = Validation::new(key.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.set_issuer(&[self.issuer.as_str()]);
        validation.set_audience(&[audience]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| map_jwt_error(e.kind()))?;

        let claims = access_claims(data.claims)?;
        // Belt and braces: jsonwebtoken checked these, but the single-string form matters.
        if claims.iss != self.issuer {
            return Err(VerifyError::WrongIssuer);
        }
        if claims.aud != audience {
            return Err(VerifyError::WrongAudience);
        }
        check_times(&claims, now, self.leeway)?;
        Ok(VerifiedToken::new(claims))
    }
}

/// A token that passed every check, with its claims.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedToken {
    /// `sub`: the agent id, or the user when the agent acts for one.
    pub subject: String,
    /// `client_id`: always the agent id.
    pub client_id: String,
    /// `txn`: the task the token was issued for.
    pub task_id: String,
    /// `jti`: the token id (what token revocations name).
    pub token_id: String,
    /// `aud`: the audience, equal to the one verified for.
    pub audience: String,
    /// `scope`, split on spaces.
    pub scopes: Vec<String>,
    /// `iat`, Unix seconds.
    pub issued_at: i64,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
    /// `act.sub`: the acting agent, when the token acts for a user.
    pub actor: Option<String>,
    /// Every claim, as issued.
    pub claims: AccessClaims,
}

impl VerifiedToken {
    fn new(claims: AccessClaims) -> Self {
        Self {
            subject: claims.sub.clone(),
            client_id: claims.client_id.clone(),
            task_id: claims.txn.clone(),
            token_id: claims.jti.clone(),
            audience: claims.aud.clone(),
            scopes: claims.scopes(),
            issued_at: claims.iat,
            expires_at: claims.exp,
            actor: claims.act.as_ref().map(|act| act.sub.clone()),
            claims,
        }
    }

    /// Whether the token grants `scope` (exact match).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// The header parameters we look at. Duplicate names among them are rejected by serde.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, deserialize_with = "present")]
    crit: bool,
    #[serde(default, deserialize_with = "present")]
    jku: bool,
    #[serde(default, deserialize_with = "present")]
    jwk: bool,
    #[serde(default, deserialize_with = "present")]
    x5u: bool,
    #[serde(default, deserialize_with = "present")]
    x5c: bool,
}

/// True whenever the member exists, whatever its value (`null` included).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(deserializer).map(|_| true)
}

fn parse_header(encoded: &str) -> Result<RawHeader, VerifyError> {
    let json = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| VerifyError::Malformed)?;
    // A struct also deserializes from a JSON array: insist on an object.
    if !json.trim_ascii_start().starts_with(b"{") {
        return Err(VerifyError::Malformed);
    }
    serde_json::from_slice(&json).map_err(|_| VerifyError::Malformed)
}

/// Checks the header on its own and returns the algorithm it names.
fn check_header(header: &RawHeader) -> Result<Algorithm, VerifyError> {
    let forbidden = [
        ("crit", header.crit),
        ("jku", header.jku),
        ("jwk", header.jwk),
        ("x5u", header.x5u),
        ("x5c", header.x5c),
    ];
    if let Some((name, _)) = forbidden.into_iter().find(|(_, set)| *set) {
        return Err(VerifyError::ForbiddenHeader(name));
    }
    // RFC 9068 §4: "at+jwt"; RFC 7515 §4.1.9: media types compare case-insensitively and
    // may carry the "application/" prefix.
    let typ_ok = header.typ.as_deref().is_some_and(|typ| {
        typ.eq_ignore_ascii_case("at+jwt") || typ.eq_ignore_ascii_case("application/at+jwt")
    });
    if !typ_ok {
        return Err(VerifyError::WrongType);
    }
    [Algorithm::EdDSA, Algorithm::ES256]
        .into_iter()
        .find(|alg| alg_name(*alg) == header.alg)
        .ok_or(VerifyError::UnsupportedAlgorithm)
}

fn map_jwt_error(kind: &ErrorKind) -> VerifyError {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidKeyFormat => VerifyError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => VerifyError::UnsupportedAlgorithm,
        ErrorKind::InvalidIssuer => VerifyError::WrongIssuer,
        ErrorKind::InvalidAudience => VerifyError::WrongAudience,
        ErrorKind::ExpiredSignature => VerifyError::Expired,
        ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
        ErrorKind::MissingRequiredClaim(name) => match claim_name(name) {
            Some(name) => VerifyError::MissingClaim(name),
            None => VerifyError::Malformed,
        },
        ErrorKind::InvalidClaimFormat(name) => match claim_name(name) {
            Some(name) => VerifyError::InvalidClaim(name),
            None => VerifyError::Malformed,
        },
        _ => VerifyError::Malformed,
    }
}

const STRING_CLAIMS: [&str; 6] = ["iss", "sub", "aud", "jti", "client_id", "txn"];
const TIME_CLAIMS: [&str; 3] = ["exp", "iat", "nbf"];

/// The `&'static` name of a claim we know, for error variants.
fn claim_name(name: &str) -> Option<&'static str> {
    STRING_CLAIMS
        .into_iter()
        .chain(TIME_CLAIMS)
        .chain(["scope", "act", "cnf"])
        .find(|known| *known == name)
}

/// Checks presence and type of every claim, then converts to [`AccessClaims`].
fn access_claims(map: Map<String, Value>) -> Result<AccessClaims, VerifyError> {
    for name in STRING_CLAIMS {
        match map.get(name) {
            None | Some(Value::Null) => return Err(VerifyError::MissingClaim(name)),
            Some(Value::String(s)) if s.is_empty() => return Err(VerifyError::MissingClaim(name)),
            Some(Value::String(_)) => {}
            Some(_) => return Err(VerifyError::InvalidClaim(name)),
        }
    }
    match map.get("scope") {
        None | Some(Value::Null) => return Err(VerifyError::MissingClaim("scope")),
        Some(Value::String(_)) => {}
        Some(_) => return Err(VerifyError::InvalidClaim("scope")),
    }
    for name in TIME_CLAIMS {
        match map.get(name) {
            None | Some(Value::Null) => return Err(VerifyError::MissingClaim(name)),
            Some(v) if v.as_i64().is_some() => {}
            Some(_) => return Err(VerifyError::InvalidClaim(name)),
        }
    }
    if let Some(act) = map.get("act") {
        let acting = act
            .get("sub")
            .and_then(Value::as_str)
            .is_some_and(|sub| !sub.is_empty());
        if !acting {
            return Err(VerifyError::InvalidClaim("act"));
        }
    }
    if map.get("cnf").is_some_and(|cnf| !cnf.is_object()) {
        return Err(VerifyError::InvalidClaim("cnf"));
    }
    serde_json::from_value(Value::Object(map)).map_err(|_| VerifyError::Malformed)
}

fn check_times(claims: &AccessClaims, now: i64, leeway: u64) -> Result<(), VerifyError> {
    let leeway = i64::try_from(leeway).unwrap_or(i64::MAX);
    // A token that can never be valid was not issued by a working broker.
    if claims.exp <= claims.nbf || claims.exp <= claims.iat {
        return Err(VerifyError::InvalidClaim("exp"));
    }
    // RFC 7519 §4.1.4: not accepted "on or after" exp.
    if now.saturating_sub(leeway) >= claims.exp {
        return Err(VerifyError::Expired);
    }
    let latest = now.saturating_add(leeway);
    if claims.nbf > latest || claims.iat > latest {
        return Err(VerifyError::NotYetValid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Verifier>();
        assert_send_sync::<KeySet>();
        assert_send_sync::<VerifiedToken>();
    }

    #[test]
    fn every_claim_name_is_known() {
        for name in ["exp", "nbf", "iss", "aud", "sub", "iat", "txn", "act"] {
            assert_eq!(claim_name(name), Some(name));
        }
        assert_eq!(claim_name("other"), None);
    }

    #[test]
    fn map_required_claim_error() {
        let kind = ErrorKind::MissingRequiredClaim("nbf".to_owned());
        assert_eq!(map_jwt_error(&kind), VerifyError::MissingClaim("nbf"));
    }
}
