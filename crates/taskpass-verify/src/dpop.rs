//! DPoP proofs (RFC 9449) for key-bound tokens (`cnf.jkt`): what a resource server checks
//! when a client presents `Authorization: DPoP <token>` with a `DPoP: <proof>` header.
//!
//! A proof is accepted only if it is a compact JWS with `typ` `dpop+jwt`, an asymmetric `alg`
//! (ES256, EdDSA, RS256, PS256) that fits the key, signed by the public key in its `jwk` header
//! (which must hold no private member), whose RFC 7638 thumbprint is the token's `cnf.jkt`;
//! its claims name the request (`htm`, and `htu` compared without query and fragment), carry
//! a fresh `iat` (within the window), a `jti` not seen before (a replay cache bounded in
//! memory) and `ath`, the hash of the access token presented with it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use crate::error::VerifyError;

/// The largest proof looked at, bytes.
pub const MAX_PROOF_BYTES: usize = 8 * 1024;

/// How far a proof's `iat` may be from now by default, seconds.
pub const DEFAULT_PROOF_WINDOW_SECS: i64 = 60;

/// How many `jti`s the replay cache holds by default.
pub const DEFAULT_REPLAY_CACHE: usize = 100_000;

/// The `jti`s of proofs seen within the window. Bounded: past `capacity` the oldest entry is
/// forgotten first (expired ones go as soon as they are looked past).
#[derive(Debug)]
pub(crate) struct ReplayCache {
    capacity: usize,
    seen: Mutex<Seen>,
}

/// Each key with when it may be forgotten, and the keys in the order they came.
type Seen = (HashMap<String, i64>, VecDeque<(i64, String)>);

impl ReplayCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            seen: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    /// Records `jti` (forgettable after `until`); false when it was seen already.
    fn first_use(&self, jti: &str, until: i64, now: i64) -> bool {
        let mut guard = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (map, order) = &mut *guard;
        while let Some((t, _)) = order.front() {
            if *t >= now && map.len() < self.capacity {
                break;
            }
            if let Some((_, old)) = order.pop_front() {
                map.remove(&old);
            }
        }
        if map.contains_key(jti) {
            return false;
        }
        map.insert(jti.to_owned(), until);
        order.push_back((until, jti.to_owned()));
        true
    }
}

/// What was presented with the token: the `DPoP` header's proof and the request it came with.
#[derive(Debug, Clone, Copy)]
pub struct DpopRequest<'a> {
    /// The `DPoP` header: a compact JWS.
    pub proof: &'a str,
    /// The request's method, e.g. `GET`.
    pub method: &'a str,
    /// The request's URL as the client addressed it, e.g. `https://api.example/v1/items`.
    pub url: &'a str,
}

fn bad(what: &'static str) -> VerifyError {
    VerifyError::InvalidProof(what)
}

/// Checks DPoP proofs where a token is asked for (RFC 9449 §4.3, §5): at a token endpoint
/// the proof carries no `ath`, and its key is the one the token will be bound to.
#[derive(Debug)]
pub struct DpopVerifier {
    window: i64,
    replays: ReplayCache,
}

impl DpopVerifier {
    /// Proofs whose `iat` is within `window_secs` of now, their `jti`s remembered (at most
    /// `replay_cache` of them) so that each is used once.
    pub fn new(window_secs: u32, replay_cache: usize) -> Self {
        Self {
            window: i64::from(window_secs),
            replays: ReplayCache::new(replay_cache),
        }
    }

    /// Verifies the proof of a token request (`htm` and `htu` those of `req`, fresh) at time
    /// `now`, without using it up: call [`DpopVerifier::accept`] once the request is
    /// authenticated, so that unauthenticated floods of proofs cannot churn the replay cache.
    pub fn token_request(&self, req: &DpopRequest<'_>, now: i64) -> Result<DpopProof, VerifyError> {
        verify(req, None, None, now, self.window)
    }

    /// Uses the proof up: [`VerifyError::ReplayedProof`] if it was used before.
    pub fn accept(&self, proof: &DpopProof, now: i64) -> Result<(), VerifyError> {
        if self.replays.first_use(&proof.replay_key, proof.until, now) {
            Ok(())
        } else {
            Err(VerifyError::ReplayedProof)
        }
    }
}

/// A DPoP proof that verified, not yet used up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopProof {
    /// The RFC 7638 thumbprint of its key: the token's `cnf.jkt`.
    pub jkt: String,
    replay_key: String,
    until: i64,
}

/// Checks `req` for an access token bound to the key with thumbprint `jkt`.
pub(crate) fn check(
    req: &DpopRequest<'_>,
    access_token: &str,
    jkt: &taskpass_core::Confirmation,
    now: i64,
    window: i64,
    cache: &ReplayCache,
) -> Result<(), VerifyError> {
    let proof = verify(req, Some(access_token), Some(jkt), now, window)?;
    if !cache.first_use(&proof.replay_key, proof.until, now) {
        return Err(VerifyError::ReplayedProof);
    }
    Ok(())
}

/// Checks a proof: with `access_token`, its `ath` must be that token's hash; with `jkt`, its
/// key must be that one. Returns it, not yet used up.
fn verify(
    req: &DpopRequest<'_>,
    access_token: Option<&str>,
    jkt: Option<&taskpass_core::Confirmation>,
    now: i64,
    window: i64,
) -> Result<DpopProof, VerifyError> {
    if req.proof.len() > MAX_PROOF_BYTES {
        return Err(bad("size"));
    }
    let mut parts = req.proof.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("format"));
    };
    let header = object(h).ok_or(bad("header"))?;
    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err(bad("typ"));
    }
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("ES256") => Algorithm::ES256,
        Some("EdDSA") => Algorithm::EdDSA,
        Some("RS256") => Algorithm::RS256,
        Some("PS256") => Algorithm::PS256,
        _ => return Err(bad("alg")),
    };
    let jwk = header
        .get("jwk")
        .and_then(Value::as_object)
        .ok_or(bad("jwk"))?;
    let (key, thumbprint) = public_key(jwk, alg)?;
    if jkt.is_some_and(|j| !j.matches_key(&thumbprint)) {
        return Err(VerifyError::WrongHolder);
    }
    let signing_input = &req.proof[..h.len() + 1 + p.len()];
    let valid = jsonwebtoken::crypto::verify(s, signing_input.as_bytes(), &key, alg)
        .map_err(|_| bad("signature"))?;
    if !valid {
        return Err(bad("signature"));
    }
    let claims = object(p).ok_or(bad("claims"))?;
    let text = |name: &'static str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .ok_or(bad(name))
    };
    let jti = text("jti")?;
    if jti.len() > 256 {
        return Err(bad("jti"));
    }
    if text("htm")? != req.method {
        return Err(bad("htm"));
    }
    let htu = normalize_url(text("htu")?).ok_or(bad("htu"))?;
    if Some(htu) != normalize_url(req.url) {
        return Err(bad("htu"));
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or(bad("iat"))?;
    if (now - iat).abs() > window {
        return Err(bad("iat"));
    }
    if let Some(token) = access_token {
        let ath = taskpass_core::sha256_b64url(token.as_bytes());
        if text("ath")? != ath {
            return Err(bad("ath"));
        }
    }
    // Per key: one client's jti cannot collide with another's.
    Ok(DpopProof {
        replay_key: format!("{thumbprint} {jti}"),
        until: iat + window,
        jkt: thumbprint,
    })
}

/// A base64url part holding a JSON object without repeated names.
fn object(b64: &str) -> Option<Map<String, Value>> {
    let json = URL_SAFE_NO_PAD.decode(b64).ok()?;
    match taskpass_core::jwt::strict_json(&json).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// The verification key of a public JWK for `alg`, and its RFC 7638 thumbprint.
fn public_key(
    jwk: &Map<String, Value>,
    alg: Algorithm,
) -> Result<(DecodingKey, String), VerifyError> {
    const PRIVATE: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
    if PRIVATE.iter().any(|m| jwk.contains_key(*m)) {
        return Err(bad("jwk"));
    }
    let member = |name: &str| {
        jwk.get(name)
            .and_then(Value::as_str)
            .filter(|v| URL_SAFE_NO_PAD.decode(v).is_ok())
            .ok_or(bad("jwk"))
    };
    let kty = jwk.get("kty").and_then(Value::as_str).ok_or(bad("jwk"))?;
    // RFC 7638 §3.2: the required members only, in lexicographic order, no whitespace.
    let canonical = |pairs: &[(&str, &str)]| {
        let mut m = Map::new();
        for (k, v) in pairs {
            m.insert((*k).to_owned(), Value::String((*v).to_owned()));
        }
        taskpass_core::sha256_b64url(Value::Object(m).to_string().as_bytes())
    };
    let crv = jwk.get("crv").and_then(Value::as_str);
    match (kty, crv, alg) {
        ("EC", Some("P-256"), Algorithm::ES256) => {
            let (x, y) = (member("x")?, member("y")?);
            let key = DecodingKey::from_ec_components(x, y).map_err(|_| bad("jwk"))?;
            Ok((
                key,
                canonical(&[("crv", "P-256"), ("kty", "EC"), ("x", x), ("y", y)]),
            ))
        }
        ("OKP", Some("Ed25519"), Algorithm::EdDSA) => {
            let x = member("x")?;
            let key = DecodingKey::from_ed_components(x).map_err(|_| bad("jwk"))?;
            Ok((
                key,
                canonical(&[("crv", "Ed25519"), ("kty", "OKP"), ("x", x)]),
            ))
        }
        ("RSA", _, Algorithm::RS256 | Algorithm::PS256) => {
            let (n, e) = (member("n")?, member("e")?);
            let bits = URL_SAFE_NO_PAD
                .decode(n)
                .map(|b| {
                    let b: Vec<u8> = b.into_iter().skip_while(|x| *x == 0).collect();
                    b.first()
                        .map_or(0, |f| b.len() * 8 - f.leading_zeros() as usize)
                })
                .unwrap_or(0);
            if bits < 2048 {
                return Err(bad("jwk"));
            }
            let key = DecodingKey::from_rsa_components(n, e).map_err(|_| bad("jwk"))?;
            Ok((key, canonical(&[("e", e), ("kty", "RSA"), ("n", n)])))
        }
        _ => Err(bad("alg")),
    }
}

/// `htu` as RFC 9449 §4.3 compares it: scheme and host lowercase, the default port dropped,
/// no query or fragment. `None` for what is not an http(s) URL.
fn normalize_url(url: &str) -> Option<String> {
    let url = url.split(['?', '#']).next()?;
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let mut authority = authority.to_ascii_lowercase();
    let default = if scheme == "https" { ":443" } else { ":80" };
    if authority.ends_with(default) {
        authority.truncate(authority.len() - default.len());
    }
    Some(format!("{scheme}://{authority}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_compare_without_query_fragment_or_default_port() {
        let n = |u| normalize_url(u);
        assert_eq!(
            n("https://API.example:443/a?b=1#c"),
            n("https://api.example/a")
        );
        assert_eq!(n("https://api.example"), n("https://api.example/"));
        assert_ne!(n("https://api.example/a"), n("https://api.example/b"));
        assert_ne!(n("https://api.example:8443/a"), n("https://api.example/a"));
        assert_eq!(n("ftp://x/a"), None);
        assert_eq!(n("https://user@x/a"), None);
    }

    #[test]
    fn the_replay_cache_is_bounded_and_forgets_expired_entries() {
        let c = ReplayCache::new(2);
        assert!(c.first_use("a", 100, 10));
        assert!(!c.first_use("a", 100, 10), "a replay");
        assert!(c.first_use("b", 100, 10));
        assert!(c.first_use("c", 100, 10), "full: the oldest goes");
        assert!(c.first_use("a", 100, 10));
        let c = ReplayCache::new(10);
        assert!(c.first_use("x", 50, 10));
        assert!(
            c.first_use("y", 200, 60),
            "x expired at 50 and is forgotten"
        );
        assert!(c.first_use("x", 200, 60));
    }
}
