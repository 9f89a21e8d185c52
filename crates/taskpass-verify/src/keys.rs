use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use crate::error::VerifyError;

/// The largest JWKS document [`KeySet::from_json`] parses, in bytes.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// The most entries a JWKS may have (accepted or skipped).
pub const MAX_JWKS_KEYS: usize = 100;

/// One verification key with the single algorithm it may be used with.
#[derive(Clone)]
pub(crate) struct PinnedKey {
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

/// The broker's signing keys, parsed once from its JWKS (`/.well-known/jwks.json` or
/// `GetJwks`).
///
/// Each key is pinned to one algorithm, taken from the JWK's `alg` or derived from its type:
/// `OKP`/`Ed25519` is `EdDSA`, `EC`/`P-256` is `ES256`. A token is only ever verified with the
/// algorithm its key is pinned to, whatever its header says.
///
/// Keys this SDK cannot or must not use are skipped, not errors: `use` other than `sig`,
/// `key_ops` without `verify`, no `kid`, RSA and symmetric (`oct`) keys, other curves, and keys
/// whose `alg` contradicts their type. A usable key that is broken (bad base64, wrong length),
/// that carries private material (`d`), or whose `kid` repeats makes the whole set invalid.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: BTreeMap<String, PinnedKey>,
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`), keeping the keys that can verify Taskpass
    /// tokens. An empty result is allowed: every token then fails with
    /// [`VerifyError::UnknownKey`].
    pub fn from_json(jwks_json: &str) -> Result<Self, VerifyError> {
        if jwks_json.len() > MAX_JWKS_BYTES {
            return Err(invalid("document is larger than the size limit"));
        }
        let doc: Value =
            serde_json::from_str(jwks_json).map_err(|_| invalid("document is not valid JSON"))?;
        let entries = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("document has no `keys` array"))?;
        if entries.len() > MAX_JWKS_KEYS {
            return Err(invalid("document has too many keys"));
        }
        let mut keys = BTreeMap::new();
        for (index, entry) in entries.iter().enumerate() {
            let parsed = parse_key(entry)
                .map_err(|why| VerifyError::InvalidKeySet(format!("key {index}: {why}")))?;
            if let Some((kid, key)) = parsed
                && keys.insert(kid, key).is_some()
            {
                return Err(VerifyError::InvalidKeySet(format!(
                    "key {index}: duplicate kid"
                )));
            }
        }
        Ok(Self { keys })
    }

    /// How many usable keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no usable key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key ids of the usable keys, in sorted order.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    pub(crate) fn get(&self, kid: &str) -> Option<&PinnedKey> {
        self.keys.get(kid)
    }
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key ids and algorithms only: no key material.
        f.debug_map()
            .entries(self.keys.iter().map(|(kid, key)| (kid, key.alg)))
            .finish()
    }
}

fn invalid(why: &str) -> VerifyError {
    VerifyError::InvalidKeySet(why.to_owned())
}

/// `Ok(None)`: a key to skip. `Err`: a key of a kind we use that is broken.
fn parse_key(entry: &Value) -> Result<Option<(String, PinnedKey)>, String> {
    let jwk = entry.as_object().ok_or("not a JSON object")?;

    if let Some(usage) = string_member(jwk, "use")?
        && usage != "sig"
    {
        return Ok(None);
    }
    if let Some(ops) = jwk.get("key_ops") {
        let ops = ops.as_array().ok_or("`key_ops` is not an array")?;
        if !ops.iter().any(|op| op.as_str() == Some("verify")) {
            return Ok(None);
        }
    }

    let kty = string_member(jwk, "kty")?.ok_or("`kty` is missing")?;
    let crv = string_member(jwk, "crv")?;
    let alg = match (kty, crv) {
        ("OKP", Some("Ed25519")) => Algorithm::EdDSA,
        ("EC", Some("P-256")) => Algorithm::ES256,
        // RSA, oct (HMAC), other curves: never used by the broker.
        _ => return Ok(None),
    };
    if let Some(declared) = string_member(jwk, "alg")?
        && declared != alg_name(alg)
    {
        return Ok(None);
    }
    let Some(kid) = string_member(jwk, "kid")?.filter(|kid| !kid.is_empty()) else {
        return Ok(None);
    };
    if jwk.contains_key("d") {
        return Err("contains private key material".to_owned());
    }

    let key = match alg {
        Algorithm::EdDSA => {
            let x = coordinate(jwk, "x")?;
            DecodingKey::from_ed_components(x).map_err(|_| "`x` is not valid base64url")?
        }
        _ => {
            let x = coordinate(jwk, "x")?;
            let y = coordinate(jwk, "y")?;
            DecodingKey::from_ec_components(x, y).map_err(|_| "`x` or `y` is not base64url")?
        }
    };
    Ok(Some((kid.to_owned(), PinnedKey { alg, key })))
}

/// The `alg` value a JWK or a JWS header uses for `alg`.
pub(crate) fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::EdDSA => "EdDSA",
        Algorithm::ES256 => "ES256",
        _ => "unsupported",
    }
}

fn string_member<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("`{name}` is not a string")),
    }
}

/// A 32-byte base64url coordinate (Ed25519 `x`, P-256 `x` and `y`), checked before use.
fn coordinate<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    let encoded = string_member(jwk, name)?.ok_or_else(|| format!("`{name}` is missing"))?;
    let raw = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| format!("`{name}` is not valid base64url"))?;
    if raw.len() != 32 {
        return Err(format!("`{name}` is not 32 bytes"));
    }
    Ok(encoded)
}
