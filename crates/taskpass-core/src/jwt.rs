//! The access-token profile: what a Taskpass access token must look like to be read at all.
//! The broker (introspection) and validators (`taskpass-verify`) both check tokens with this
//! one profile, so that they can never disagree on what a token says; each then checks the
//! signature with its own keys, and the issuer, audience and times as its role requires.
//!
//! The profile, strictest reading throughout:
//! - a compact JWS of at most [`MAX_TOKEN_BYTES`]: three base64url parts without padding,
//!   canonically encoded;
//! - a header that is a JSON object with `alg` `EdDSA` or `ES256`, `typ` `at+jwt` (RFC 9068;
//!   compared case-insensitively, `application/` allowed, RFC 7515 §4.1.9) and a non-empty
//!   `kid`, and none of `crit`, `jku`, `jwk`, `x5u`, `x5c`;
//! - claims that are a JSON object with every RFC 9068 claim Taskpass issues, each of its
//!   type: non-empty strings, integer times with `exp` after `iat` and `nbf`, `act` an object
//!   with a non-empty `sub`, `cnf` one binding Taskpass knows (`x5t#S256` or `jkt`, each a
//!   SHA-256 thumbprint);
//! - no member name twice in any object, header or claims, at any depth (JSON parsers
//!   disagree on which one wins, so neither does).

use std::collections::HashSet;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::token::AccessClaims;

/// The largest token looked at, bytes. Larger ones are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token does not fit the profile. Never carries a token or claim value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// Larger than [`MAX_TOKEN_BYTES`].
    #[error("token is larger than the size limit")]
    TooLarge,
    /// Not three canonical base64url parts, or a header or claim set that is not a JSON
    /// object without repeated names.
    #[error("token is malformed")]
    Malformed,
    /// A header parameter that is never accepted.
    #[error("token header parameter `{0}` is not allowed")]
    ForbiddenHeader(&'static str),
    /// `typ` missing or not `at+jwt`.
    #[error("token type is not at+jwt")]
    WrongType,
    /// `alg` is not `EdDSA` or `ES256`.
    #[error("token algorithm is not accepted")]
    UnsupportedAlgorithm,
    /// No `kid`.
    #[error("token header has no key id")]
    MissingKeyId,
    /// A required claim is absent, null or an empty string.
    #[error("token claim `{0}` is missing")]
    MissingClaim(&'static str),
    /// A claim of the wrong type or an impossible value.
    #[error("token claim `{0}` is invalid")]
    InvalidClaim(&'static str),
    /// `exp` has passed (beyond the leeway).
    #[error("token has expired")]
    Expired,
    /// `nbf` or `iat` is in the future (beyond the leeway).
    #[error("token is not yet valid")]
    NotYetValid,
}

/// The signature algorithms of the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAlg {
    /// Ed25519 (RFC 8037): what the broker signs with.
    EdDSA,
    /// ECDSA P-256 with SHA-256.
    ES256,
}

impl TokenAlg {
    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EdDSA => "EdDSA",
            Self::ES256 => "ES256",
        }
    }
}

/// A token split and its header checked; the claims are read only after the caller has
/// verified the signature ([`SignedToken::claims`]).
#[derive(Debug)]
pub struct SignedToken<'a> {
    /// The header's algorithm.
    pub alg: TokenAlg,
    /// The header's key id.
    pub kid: String,
    /// `header.payload`: the bytes the signature covers.
    pub signing_input: &'a str,
    /// The signature part as sent (canonical base64url).
    pub signature_b64: &'a str,
    /// The signature, decoded.
    pub signature: Vec<u8>,
    payload_b64: &'a str,
}

impl<'a> SignedToken<'a> {
    /// Splits `token` and checks its header: an access token (`typ` at+jwt).
    pub fn parse(token: &'a str) -> Result<Self, ProfileError> {
        Self::parse_as(token, "at+jwt", MAX_TOKEN_BYTES)
    }

    /// Splits a JWS of type `typ` (also accepted as `application/<typ>`) no larger than
    /// `max_bytes` and checks its header as for an access token: the same algorithms, a `kid`,
    /// none of the forbidden parameters.
    pub fn parse_as(token: &'a str, typ: &str, max_bytes: usize) -> Result<Self, ProfileError> {
        if token.len() > max_bytes {
            return Err(ProfileError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ProfileError::Malformed);
        };
        // An empty signature is a bad signature, for the signature check to say.
        if h.is_empty() || p.is_empty() {
            return Err(ProfileError::Malformed);
        }
        let header = object(h)?;
        let (alg, kid) = check_header(&header, typ)?;
        let signature = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| ProfileError::Malformed)?;
        Ok(Self {
            alg,
            kid,
            signing_input: &token[..h.len() + 1 + p.len()],
            signature_b64: s,
            signature,
            payload_b64: p,
        })
    }

    /// The claims, checked against the profile. Call only once the signature verified.
    pub fn claims(&self) -> Result<AccessClaims, ProfileError> {
        access_claims(self.payload()?)
    }

    /// The payload as a JSON object without repeated names, for token types other than the
    /// access token. Call only once the signature verified.
    pub fn payload(&self) -> Result<Map<String, Value>, ProfileError> {
        object(self.payload_b64)
    }
}

/// Checks `exp`, `nbf` and `iat` against `now`, allowing `leeway` seconds of clock skew.
pub fn check_times(claims: &AccessClaims, now: i64, leeway: u64) -> Result<(), ProfileError> {
    let leeway = i64::try_from(leeway).unwrap_or(i64::MAX);
    // RFC 7519 §4.1.4: not accepted "on or after" exp.
    if now.saturating_sub(leeway) >= claims.exp {
        return Err(ProfileError::Expired);
    }
    let latest = now.saturating_add(leeway);
    if claims.nbf > latest || claims.iat > latest {
        return Err(ProfileError::NotYetValid);
    }
    Ok(())
}

/// Refuses a token whose lifetime (`exp` − `iat`) is longer than `max_secs`: no broker issues
/// one, so it was not issued by one (or by one configured otherwise).
pub fn check_lifetime(claims: &AccessClaims, max_secs: u64) -> Result<(), ProfileError> {
    let max = i64::try_from(max_secs).unwrap_or(i64::MAX);
    if claims.exp.saturating_sub(claims.iat) > max {
        return Err(ProfileError::InvalidClaim("exp"));
    }
    Ok(())
}

/// A base64url part holding a JSON object without repeated names.
fn object(b64: &str) -> Result<Map<String, Value>, ProfileError> {
    let json = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| ProfileError::Malformed)?;
    match strict_json(&json)? {
        Value::Object(map) => Ok(map),
        _ => Err(ProfileError::Malformed),
    }
}

/// Parses JSON, refusing any object that names a member twice.
pub fn strict_json(json: &[u8]) -> Result<Value, ProfileError> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let v = de
        .deserialize_any(StrictValue)
        .map_err(|_| ProfileError::Malformed)?;
    de.end().map_err(|_| ProfileError::Malformed)?;
    Ok(v)
}

struct StrictValue;

impl<'de> de::DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON without repeated member names")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("not a finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        let mut seen = HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            if !seen.insert(k.clone()) {
                return Err(de::Error::custom("a member name is repeated"));
            }
            let v = map.next_value_seed(StrictValue)?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

fn check_header(
    header: &Map<String, Value>,
    typ: &str,
) -> Result<(TokenAlg, String), ProfileError> {
    // `alg` a string; `typ` and `kid` strings when they are there at all.
    let string_or_absent = |name| {
        matches!(
            header.get(name),
            None | Some(Value::Null | Value::String(_))
        )
    };
    if !header.get("alg").is_some_and(Value::is_string)
        || !string_or_absent("typ")
        || !string_or_absent("kid")
    {
        return Err(ProfileError::Malformed);
    }
    if let Some(name) = ["crit", "jku", "jwk", "x5u", "x5c"]
        .into_iter()
        .find(|n| header.contains_key(*n))
    {
        return Err(ProfileError::ForbiddenHeader(name));
    }
    let typ_ok = header.get("typ").and_then(Value::as_str).is_some_and(|t| {
        // `get`, not indexing: `t` is untrusted and may split a character there.
        t.eq_ignore_ascii_case(typ)
            || t.get(..12)
                .is_some_and(|p| p.eq_ignore_ascii_case("application/"))
                && t.get(12..).is_some_and(|r| r.eq_ignore_ascii_case(typ))
    });
    if !typ_ok {
        return Err(ProfileError::WrongType);
    }
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("EdDSA") => TokenAlg::EdDSA,
        Some("ES256") => TokenAlg::ES256,
        _ => return Err(ProfileError::UnsupportedAlgorithm),
    };
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .ok_or(ProfileError::MissingKeyId)?;
    Ok((alg, kid.to_owned()))
}

const STRING_CLAIMS: [&str; 6] = ["iss", "sub", "aud", "jti", "client_id", "txn"];
const TIME_CLAIMS: [&str; 3] = ["exp", "iat", "nbf"];

fn access_claims(map: Map<String, Value>) -> Result<AccessClaims, ProfileError> {
    for name in STRING_CLAIMS {
        match map.get(name) {
            None | Some(Value::Null) => return Err(ProfileError::MissingClaim(name)),
            Some(Value::String(s)) if s.is_empty() => return Err(ProfileError::MissingClaim(name)),
            Some(Value::String(_)) => {}
            Some(_) => return Err(ProfileError::InvalidClaim(name)),
        }
    }
    match map.get("scope") {
        None | Some(Value::Null) => return Err(ProfileError::MissingClaim("scope")),
        Some(Value::String(_)) => {}
        Some(_) => return Err(ProfileError::InvalidClaim("scope")),
    }
    for name in TIME_CLAIMS {
        match map.get(name) {
            None | Some(Value::Null) => return Err(ProfileError::MissingClaim(name)),
            Some(v) if v.as_i64().is_some() => {}
            Some(_) => return Err(ProfileError::InvalidClaim(name)),
        }
    }
    if let Some(act) = map.get("act") {
        let acting = act
            .get("sub")
            .and_then(Value::as_str)
            .is_some_and(|sub| !sub.is_empty());
        if !acting {
            return Err(ProfileError::InvalidClaim("act"));
        }
    }
    // A binding this profile cannot read is refused, never taken for no binding.
    if let Some(cnf) = map.get("cnf")
        && serde_json::from_value::<crate::Confirmation>(cnf.clone()).is_err()
    {
        return Err(ProfileError::InvalidClaim("cnf"));
    }
    if let Some(status) = map.get("status")
        && serde_json::from_value::<crate::TokenStatus>(status.clone()).is_err()
    {
        return Err(ProfileError::InvalidClaim("status"));
    }
    let claims: AccessClaims =
        serde_json::from_value(Value::Object(map)).map_err(|_| ProfileError::Malformed)?;
    // A token that can never be valid was not issued by a working broker.
    if claims.exp <= claims.nbf || claims.exp <= claims.iat {
        return Err(ProfileError::InvalidClaim("exp"));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    const HEADER: &str = r#"{"alg":"EdDSA","typ":"at+jwt","kid":"k1"}"#;
    const CLAIMS: &str = r#"{"iss":"https://b","sub":"a","aud":"api","exp":200,"iat":100,"nbf":100,"jti":"t","client_id":"a","scope":"read","txn":"x"}"#;

    fn token(header: &str, claims: &str) -> String {
        format!("{}.{}.{}", b64(header), b64(claims), b64("sig"))
    }

    fn claims_of(claims: &str) -> Result<AccessClaims, ProfileError> {
        let t = token(HEADER, claims);
        SignedToken::parse(&t)?.claims()
    }

    #[test]
    fn a_token_of_the_profile_is_read() {
        let t = token(HEADER, CLAIMS);
        let s = SignedToken::parse(&t).unwrap();
        assert_eq!((s.alg, s.kid.as_str()), (TokenAlg::EdDSA, "k1"));
        assert_eq!(s.signature, b"sig");
        assert!(t.starts_with(s.signing_input) && s.signing_input.matches('.').count() == 1);
        let c = s.claims().unwrap();
        assert_eq!((c.aud.as_str(), c.exp), ("api", 200));
        assert_eq!(check_times(&c, 150, 0), Ok(()));
        assert_eq!(check_times(&c, 200, 0), Err(ProfileError::Expired));
        assert_eq!(check_times(&c, 99, 0), Err(ProfileError::NotYetValid));
        assert_eq!(check_times(&c, 99, 5), Ok(()));
    }

    #[test]
    fn repeated_names_are_refused_at_any_depth() {
        let dup_header = r#"{"alg":"EdDSA","typ":"at+jwt","kid":"k1","alg":"EdDSA"}"#;
        assert_eq!(
            SignedToken::parse(&token(dup_header, CLAIMS)).unwrap_err(),
            ProfileError::Malformed
        );
        let dup_claim = CLAIMS.replace(r#""aud":"api","#, r#""aud":"other","aud":"api","#);
        assert_eq!(claims_of(&dup_claim), Err(ProfileError::Malformed));
        let dup_nested = CLAIMS.replace(
            r#""txn":"x""#,
            r#""txn":"x","cnf":{"x5t#S256":"a","x5t#S256":"b"}"#,
        );
        assert_eq!(claims_of(&dup_nested), Err(ProfileError::Malformed));
    }

    #[test]
    fn claims_of_the_wrong_shape_are_refused() {
        let with = |extra: &str| CLAIMS.replace(r#""txn":"x""#, &format!(r#""txn":"x",{extra}"#));
        assert_eq!(
            claims_of(&with(r#""act":null"#)),
            Err(ProfileError::InvalidClaim("act"))
        );
        assert_eq!(
            claims_of(&with(r#""act":{"sub":""}"#)),
            Err(ProfileError::InvalidClaim("act"))
        );
        assert!(claims_of(&with(r#""act":{"sub":"agent"}"#)).is_ok());
        assert_eq!(
            claims_of(&with(r#""cnf":null"#)),
            Err(ProfileError::InvalidClaim("cnf"))
        );
        assert_eq!(
            claims_of(&CLAIMS.replace(r#""aud":"api""#, r#""aud":["api"]"#)),
            Err(ProfileError::InvalidClaim("aud"))
        );
        assert_eq!(
            claims_of(&CLAIMS.replace(r#""jti":"t""#, r#""jti":"""#)),
            Err(ProfileError::MissingClaim("jti"))
        );
        assert_eq!(
            claims_of(&CLAIMS.replace(r#""exp":200"#, r#""exp":200.5"#)),
            Err(ProfileError::InvalidClaim("exp"))
        );
        assert_eq!(
            claims_of(&CLAIMS.replace(r#""exp":200"#, r#""exp":100"#)),
            Err(ProfileError::InvalidClaim("exp"))
        );
        assert_eq!(claims_of("[1]"), Err(ProfileError::Malformed));
        assert_eq!(
            claims_of(&format!("{CLAIMS} x")),
            Err(ProfileError::Malformed)
        );
    }

    #[test]
    fn headers_outside_the_profile_are_refused() {
        let h = |s: &str| SignedToken::parse(&token(s, CLAIMS)).unwrap_err();
        assert_eq!(
            h(r#"{"alg":"none","typ":"at+jwt","kid":"k"}"#),
            ProfileError::UnsupportedAlgorithm
        );
        assert_eq!(
            h(r#"{"alg":"HS256","typ":"at+jwt","kid":"k"}"#),
            ProfileError::UnsupportedAlgorithm
        );
        assert_eq!(
            h(r#"{"alg":"EdDSA","typ":"JWT","kid":"k"}"#),
            ProfileError::WrongType
        );
        assert_eq!(
            h(r#"{"alg":"EdDSA","typ":"at+jwt"}"#),
            ProfileError::MissingKeyId
        );
        assert_eq!(
            h(r#"{"alg":"EdDSA","typ":"at+jwt","kid":"k","jku":null}"#),
            ProfileError::ForbiddenHeader("jku")
        );
        let es = token(
            r#"{"alg":"ES256","typ":"Application/AT+JWT","kid":"k"}"#,
            CLAIMS,
        );
        assert_eq!(SignedToken::parse(&es).unwrap().alg, TokenAlg::ES256);
    }

    #[test]
    fn encodings_outside_the_profile_are_refused() {
        let t = token(HEADER, CLAIMS);
        let (h, rest) = t.split_once('.').unwrap();
        for bad in [
            format!("{h}=.{rest}"),
            format!("{}+{}.{rest}", &h[..1], &h[2..]),
            format!("{t}."),
            format!(".{rest}"),
            t.replace('.', ".."),
            "x".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert!(SignedToken::parse(&bad).is_err(), "{bad}");
        }
        assert_eq!(
            SignedToken::parse(&"x".repeat(MAX_TOKEN_BYTES + 1)).unwrap_err(),
            ProfileError::TooLarge
        );
    }
}
