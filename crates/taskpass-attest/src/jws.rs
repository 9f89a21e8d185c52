//! First, unverified look at a compact JWS: shape, header policy (RFC 8725), and the claims
//! needed to pick the issuer's key set. Nothing here is trusted until the signature verifies.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::AttestError;
use crate::error::quoted;

/// Header parameters that would let a token choose or carry its own key, or demand processing
/// we do not do. A token carrying any of them is refused outright.
const FORBIDDEN_HEADERS: [&str; 5] = ["crit", "jku", "x5u", "jwk", "x5c"];

/// Longest `kid` accepted.
const MAX_KID_LEN: usize = 256;

/// The parts of a token read before its signature is checked.
#[derive(Debug)]
pub(crate) struct Unverified {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
    /// The `iss` claim, used only to select the configured issuer.
    pub(crate) iss: String,
}

/// The algorithms an attestation may be signed with.
pub(crate) fn allowed_alg(name: &str) -> Option<Algorithm> {
    match name {
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

/// Decodes one base64url (unpadded) segment into a JSON object.
fn json_object(segment: &str, what: &'static str) -> Result<Map<String, Value>, AttestError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| AttestError::Malformed(what))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AttestError::Malformed(what)),
    }
}

/// Checks the token's shape and header policy and reads `alg`, `kid` and `iss`.
///
/// The caller has already bounded the token's size.
pub(crate) fn parse(token: &str) -> Result<Unverified, AttestError> {
    if token.is_empty() {
        return Err(AttestError::Malformed("the token is empty"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AttestError::Malformed(
            "expected a compact JWS: three base64url parts separated by '.'",
        ));
    };
    if header.is_empty() || payload.is_empty() {
        return Err(AttestError::Malformed(
            "the header or the claims part is empty",
        ));
    }

    let header = json_object(header, "the header is not base64url-encoded JSON object")?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg,
        Some(_) => return Err(AttestError::Malformed("the header's alg is not a string")),
        None => return Err(AttestError::Malformed("the header has no alg")),
    };
    // `none`, every HMAC alg, and anything else not on the list are refused here, before any key
    // is looked at: an HMAC "verification" keyed with a public key is the classic confusion.
    let Some(alg) = allowed_alg(alg) else {
        return Err(AttestError::AlgNotAllowed { alg: quoted(alg) });
    };
    for name in FORBIDDEN_HEADERS {
        if header.contains_key(name) {
            return Err(AttestError::ForbiddenHeader { header: name });
        }
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) if !kid.is_empty() && kid.len() <= MAX_KID_LEN => {
            Some(kid.clone())
        }
        Some(_) => {
            return Err(AttestError::Malformed(
                "the header's kid is not a short non-empty string",
            ));
        }
    };

    if signature.is_empty() {
        return Err(AttestError::Malformed("the signature is empty"));
    }
    if URL_SAFE_NO_PAD.decode(signature).is_err() {
        return Err(AttestError::Malformed(
            "the signature is not base64url-encoded",
        ));
    }

    let claims = json_object(payload, "the claims are not base64url-encoded JSON object")?;
    let iss = match claims.get("iss") {
        Some(Value::String(iss)) => iss.clone(),
        _ => return Err(AttestError::MissingClaim { claim: "iss" }),
    };
    Ok(Unverified { alg, kid, iss })
}

/// A NumericDate claim as whole seconds: integers, or finite non-integers rounded down.
/// `Ok(None)` when absent; an error when present but not a number.
pub(crate) fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<i64>, AttestError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
                // Saturating float-to-int conversion is the intent: absurd dates stay absurd.
                #[expect(clippy::cast_possible_truncation, reason = "saturating by design")]
                Ok(Some(f.floor() as i64))
            } else {
                Err(AttestError::MissingClaim { claim: name })
            }
        }
        Some(_) => Err(AttestError::MissingClaim { claim: name }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &str) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    fn token(header: &str, claims: &str) -> String {
        format!("{}.{}.{}", b64(header), b64(claims), b64("sig"))
    }

    const CLAIMS: &str = r#"{"iss":"https://i","sub":"s"}"#;

    #[test]
    fn reads_alg_kid_iss() {
        let u = parse(&token(r#"{"alg":"ES256","kid":"k1"}"#, CLAIMS)).expect("valid test input");
        assert_eq!(u.alg, Algorithm::ES256);
        assert_eq!(u.kid.as_deref(), Some("k1"));
        assert_eq!(u.iss, "https://i");
    }

    #[test]
    fn refuses_algorithms() {
        for alg in [
            "none", "None", "HS256", "HS512", "RS512", "PS256", "ES384", "rs256", "",
        ] {
            let e = parse(&token(&format!(r#"{{"alg":"{alg}"}}"#), CLAIMS))
                .expect_err("must be refused");
            assert_eq!(e.reason(), "alg_not_allowed", "{alg}");
        }
        let e = parse(&token(r#"{"alg":5}"#, CLAIMS)).expect_err("must be refused");
        assert_eq!(e.reason(), "malformed");
    }

    #[test]
    fn refuses_forbidden_headers() {
        for h in FORBIDDEN_HEADERS {
            let e = parse(&token(&format!(r#"{{"alg":"RS256","{h}":"x"}}"#), CLAIMS))
                .expect_err("must be refused");
            assert_eq!(e.reason(), "forbidden_header", "{h}");
        }
    }

    #[test]
    fn refuses_bad_shapes() {
        for t in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "..",
            "!!.!!.!!",
            &format!("{}.{}.", b64(r#"{"alg":"RS256"}"#), b64(CLAIMS)),
            &format!(
                "{}=.{}.{}",
                b64(r#"{"alg":"RS256"}"#),
                b64(CLAIMS),
                b64("s")
            ),
            &token("[1]", CLAIMS),
            &token("not json", CLAIMS),
            &token(r#"{"alg":"RS256"}"#, "[]"),
            &token(r#"{"alg":"RS256","kid":7}"#, CLAIMS),
        ] {
            let e = parse(t).expect_err("must be refused");
            assert_eq!(e.reason(), "malformed", "{t:?}: {e}");
        }
        let e = parse(&token(r#"{"alg":"RS256"}"#, r#"{"sub":"s"}"#)).expect_err("must be refused");
        assert_eq!(e.reason(), "missing_claim");
    }

    #[test]
    fn numeric_dates() {
        let m: Map<String, Value> =
            serde_json::from_str(r#"{"a":5,"b":5.9,"c":"5","d":-3,"e":1e300}"#)
                .expect("valid test input");
        assert_eq!(numeric_date(&m, "a").expect("valid test input"), Some(5));
        assert_eq!(numeric_date(&m, "b").expect("valid test input"), Some(5));
        assert!(numeric_date(&m, "c").is_err());
        assert_eq!(numeric_date(&m, "d").expect("valid test input"), Some(-3));
        assert_eq!(
            numeric_date(&m, "e").expect("valid test input"),
            Some(i64::MAX)
        );
        assert_eq!(numeric_date(&m, "z").expect("valid test input"), None);
    }
}
