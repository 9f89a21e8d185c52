//! An issuer's key set: the JWKS parsed once into verification keys, each pinned to one
//! algorithm.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use crate::AttestError;
use crate::error::quoted;

/// Most JWKS entries looked at; the rest are ignored.
const MAX_KEYS: usize = 64;
/// Smallest RSA modulus accepted.
const MIN_RSA_BITS: usize = 2048;

/// One signature key, parsed, with the only algorithm it may verify.
#[derive(Clone)]
pub(crate) struct VerifyingKey {
    pub(crate) kid: Option<String>,
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

/// The usable keys of one issuer.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeySet {
    pub(crate) keys: Vec<VerifyingKey>,
}

/// The outcome of looking a token's key up.
#[derive(Debug)]
pub(crate) enum Lookup<'a> {
    Found(&'a VerifyingKey),
    /// No key with that id (or no key at all): a refetch may help.
    Unknown,
}

impl KeySet {
    /// Parses a JWKS document, skipping entries that are not usable signature keys.
    pub(crate) fn from_jwks(doc: &Value) -> Result<Self, String> {
        let Some(entries) = doc.get("keys").and_then(Value::as_array) else {
            return Err("the JWKS has no \"keys\" array".to_owned());
        };
        let mut keys = Vec::new();
        for entry in entries.iter().take(MAX_KEYS) {
            let Some(jwk) = entry.as_object() else {
                continue;
            };
            match parse_jwk(jwk) {
                Ok(Some(key)) => keys.push(key),
                Ok(None) => {}
                Err(why) => {
                    let kid = jwk.get("kid").and_then(Value::as_str).unwrap_or("");
                    tracing::debug!(kid = %quoted(kid), why, "ignoring JWKS entry");
                }
            }
        }
        if keys.is_empty() {
            return Err(
                "the JWKS holds no usable signature key (RS256, ES256 or EdDSA)".to_owned(),
            );
        }
        Ok(Self { keys })
    }

    /// The key ids, for change detection and logs.
    pub(crate) fn kids(&self) -> Vec<Option<&str>> {
        self.keys.iter().map(|k| k.kid.as_deref()).collect()
    }

    /// Finds the key for a token's `kid` and `alg`. The algorithm is pinned per key: a key
    /// with the right id but another algorithm is refused, never tried.
    pub(crate) fn lookup(
        &self,
        issuer: &str,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Lookup<'_>, AttestError> {
        let candidates: Vec<&VerifyingKey> = match kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            None if self.keys.len() > 1 => {
                return Err(AttestError::MissingKeyId {
                    issuer: quoted(issuer),
                });
            }
            None => self.keys.iter().collect(),
        };
        if candidates.is_empty() {
            return Ok(Lookup::Unknown);
        }
        if let Some(key) = candidates.iter().find(|k| k.alg == alg) {
            return Ok(Lookup::Found(key));
        }
        // The key exists but is pinned to another algorithm: refuse, never try it.
        let other = candidates.first().map_or(alg, |k| k.alg);
        let kid = kid.unwrap_or("none");
        Err(AttestError::AlgNotAllowed {
            alg: format!(
                "{} for key {} (a {other:?} key)",
                quoted(&format!("{alg:?}")),
                quoted(kid)
            ),
        })
    }
}

fn str_field<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, &'static str> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err("a member is not a string"),
    }
}

fn b64_len(s: &str, len: usize) -> Result<(), &'static str> {
    match URL_SAFE_NO_PAD.decode(s) {
        Ok(b) if b.len() == len => Ok(()),
        _ => Err("a coordinate is not base64url of the curve's size"),
    }
}

/// One JWK: `Ok(None)` when it is not meant for signatures or of an unsupported type.
fn parse_jwk(jwk: &Map<String, Value>) -> Result<Option<VerifyingKey>, &'static str> {
    if let Some(usage) = str_field(jwk, "use")?
        && usage != "sig"
    {
        return Ok(None);
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verify = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o == "verify"));
        if !verify {
            return Ok(None);
        }
    }
    let kid = str_field(jwk, "kid")?.map(str::to_owned);
    let declared = str_field(jwk, "alg")?;
    let kty = str_field(jwk, "kty")?.ok_or("no kty")?;
    let (alg, key) = match kty {
        "RSA" => {
            if declared.is_some_and(|a| a != "RS256") {
                return Ok(None);
            }
            let n = str_field(jwk, "n")?.ok_or("no n")?;
            let e = str_field(jwk, "e")?.ok_or("no e")?;
            let modulus = URL_SAFE_NO_PAD
                .decode(n)
                .map_err(|_| "n is not base64url")?;
            let bits = modulus.iter().position(|b| *b != 0).map_or(0, |first| {
                (modulus.len() - first - 1) * 8 + (8 - modulus[first].leading_zeros() as usize)
            });
            if bits < MIN_RSA_BITS {
                return Err("the RSA modulus is shorter than 2048 bits");
            }
            let key = DecodingKey::from_rsa_components(n, e).map_err(|_| "bad RSA components")?;
            (Algorithm::RS256, key)
        }
        "EC" => {
            if declared.is_some_and(|a| a != "ES256") {
                return Ok(None);
            }
            if str_field(jwk, "crv")? != Some("P-256") {
                return Ok(None);
            }
            let x = str_field(jwk, "x")?.ok_or("no x")?;
            let y = str_field(jwk, "y")?.ok_or("no y")?;
            b64_len(x, 32)?;
            b64_len(y, 32)?;
            let key = DecodingKey::from_ec_components(x, y).map_err(|_| "bad EC components")?;
            (Algorithm::ES256, key)
        }
        "OKP" => {
            // RFC 9864 names the fully-specified "Ed25519"; older issuers say "EdDSA".
            if declared.is_some_and(|a| a != "EdDSA" && a != "Ed25519") {
                return Ok(None);
            }
            if str_field(jwk, "crv")? != Some("Ed25519") {
                return Ok(None);
            }
            let x = str_field(jwk, "x")?.ok_or("no x")?;
            b64_len(x, 32)?;
            let key = DecodingKey::from_ed_components(x).map_err(|_| "bad OKP component")?;
            (Algorithm::EdDSA, key)
        }
        _ => return Ok(None),
    };
    Ok(Some(VerifyingKey { kid, alg, key }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn rsa(kid: &str, bits: usize) -> Value {
        let mut n = vec![0xffu8; bits / 8];
        n[0] = 0xc1;
        json!({"kty": "RSA", "kid": kid, "n": b64(&n), "e": "AQAB"})
    }

    fn ec(kid: &str) -> Value {
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&[1; 32]), "y": b64(&[2; 32])})
    }

    fn okp(kid: &str) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(&[3; 32])})
    }

    #[test]
    fn alg_derived_from_key_type() {
        let set = KeySet::from_jwks(&json!({"keys": [rsa("r", 2048), ec("e"), okp("o")]}))
            .expect("valid test input");
        let algs: Vec<_> = set
            .keys
            .iter()
            .map(|k| (k.kid.clone().expect("valid test input"), k.alg))
            .collect();
        assert_eq!(
            algs,
            vec![
                ("r".into(), Algorithm::RS256),
                ("e".into(), Algorithm::ES256),
                ("o".into(), Algorithm::EdDSA)
            ]
        );
    }

    #[test]
    fn skips_unusable_entries_without_failing() {
        let mut enc = ec("enc");
        enc["use"] = json!("enc");
        let mut ps = rsa("ps", 2048);
        ps["alg"] = json!("PS256");
        let mut wrap = ec("wrap");
        wrap["key_ops"] = json!(["wrapKey"]);
        let doc = json!({"keys": [
            enc, ps, wrap, rsa("small", 1024),
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "EC", "crv": "P-384", "kid": "p384", "x": b64(&[1; 48]), "y": b64(&[1; 48])},
            {"kty": "EC", "crv": "P-256", "kid": "short", "x": b64(&[1; 31]), "y": b64(&[1; 32])},
            {"kty": 5}, "not an object",
            okp("good"),
        ]});
        let set = KeySet::from_jwks(&doc).expect("valid test input");
        assert_eq!(set.kids(), vec![Some("good")]);
    }

    #[test]
    fn empty_or_unusable_sets_are_errors() {
        assert!(KeySet::from_jwks(&json!({})).is_err());
        assert!(KeySet::from_jwks(&json!({"keys": []})).is_err());
        assert!(KeySet::from_jwks(&json!({"keys": [{"kty": "oct", "k": "AA"}]})).is_err());
    }

    #[test]
    fn lookup_pins_alg_and_requires_kid_among_several() {
        let set = KeySet::from_jwks(&json!({"keys": [rsa("r", 2048), ec("e")]}))
            .expect("valid test input");
        assert!(matches!(
            set.lookup("https://i", Some("r"), Algorithm::RS256),
            Ok(Lookup::Found(_))
        ));
        let e = set
            .lookup("https://i", Some("r"), Algorithm::ES256)
            .expect_err("must be refused");
        assert_eq!(e.reason(), "alg_not_allowed");
        assert!(matches!(
            set.lookup("https://i", Some("zz"), Algorithm::RS256),
            Ok(Lookup::Unknown)
        ));
        let e = set
            .lookup("https://i", None, Algorithm::RS256)
            .expect_err("must be refused");
        assert_eq!(e.reason(), "missing_kid");

        let one = KeySet::from_jwks(&json!({"keys": [okp("o")]})).expect("valid test input");
        assert!(matches!(
            one.lookup("https://i", None, Algorithm::EdDSA),
            Ok(Lookup::Found(_))
        ));
        assert!(one.lookup("https://i", None, Algorithm::RS256).is_err());
    }
}
