//! Real keys and real signatures for the tests: ring signs, the crate under test verifies.
#![allow(dead_code, reason = "each test binary uses a different part")]
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use serde_json::{Value, json};
use taskpass_verify::{KeySet, Verifier};

pub const ISSUER: &str = "https://taskpass.example.org";
pub const AUDIENCE: &str = "https://billing.example.org";
pub const AGENT: &str = "spiffe://example.org/agent/billing-bot";
pub const TASK: &str = "task_01HZX3J8Q9C2V7N4M5K6P7R8S9";
pub const TOKEN_ID: &str = "tok_01HZX3J8Q9C2V7N4M5K6P7R8SA";
pub const NOW: i64 = 1_700_000_000;

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

enum Private {
    Ed(Ed25519KeyPair),
    Es(EcdsaKeyPair),
}

/// A signing key as the broker holds it.
pub struct Signer {
    pub kid: String,
    key: Private,
}

impl Signer {
    pub fn ed25519(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Self {
            kid: kid.to_owned(),
            key: Private::Ed(key),
        }
    }

    pub fn es256(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Self {
            kid: kid.to_owned(),
            key: Private::Es(key),
        }
    }

    pub fn public_key(&self) -> Vec<u8> {
        match &self.key {
            Private::Ed(k) => k.public_key().as_ref().to_vec(),
            Private::Es(k) => k.public_key().as_ref().to_vec(),
        }
    }

    /// The public JWK, as the broker publishes it.
    pub fn jwk(&self) -> Value {
        let public = self.public_key();
        match &self.key {
            Private::Ed(_) => json!({
                "kty": "OKP", "crv": "Ed25519", "x": b64(&public),
                "kid": self.kid, "alg": "EdDSA", "use": "sig",
            }),
            Private::Es(_) => json!({
                "kty": "EC", "crv": "P-256", "x": b64(&public[1..33]), "y": b64(&public[33..65]),
                "kid": self.kid, "alg": "ES256", "use": "sig",
            }),
        }
    }

    pub fn jwks(&self) -> String {
        jwks(&[self.jwk()])
    }

    pub fn key_set(&self) -> KeySet {
        KeySet::from_json(&self.jwks()).unwrap()
    }

    /// The broker's header for this key.
    pub fn header(&self) -> Value {
        let alg = match self.key {
            Private::Ed(_) => "EdDSA",
            Private::Es(_) => "ES256",
        };
        json!({ "alg": alg, "typ": "at+jwt", "kid": self.kid })
    }

    /// A compact JWS of `header` and `claims` signed with this key.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        self.sign_parts(
            &b64(header.to_string().as_bytes()),
            &b64(claims.to_string().as_bytes()),
        )
    }

    /// Signs already encoded parts (for headers or payloads that are not JSON).
    pub fn sign_parts(&self, header: &str, payload: &str) -> String {
        let input = format!("{header}.{payload}");
        let signature = match &self.key {
            Private::Ed(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
            Private::Es(k) => k
                .sign(&SystemRandom::new(), input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", b64(&signature))
    }

    /// A token with the broker's header and `claims`.
    pub fn token(&self, claims: &Value) -> String {
        self.sign(&self.header(), claims)
    }
}

pub fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// The claims the broker issues for a five-minute token at [`NOW`].
pub fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "sub": AGENT,
        "aud": AUDIENCE,
        "exp": NOW + 300,
        "iat": NOW,
        "nbf": NOW,
        "jti": TOKEN_ID,
        "client_id": AGENT,
        "scope": "invoices:read invoices:write",
        "txn": TASK,
    })
}

/// [`claims`] with `name` set to `value`, or removed when `value` is null.
pub fn claims_with(name: &str, value: Value) -> Value {
    let mut claims = claims();
    let map = claims.as_object_mut().unwrap();
    if value.is_null() {
        map.remove(name);
    } else {
        map.insert(name.to_owned(), value);
    }
    claims
}

/// [`Signer::header`] with `name` set to `value`, or removed when `value` is null.
pub fn header_with(signer: &Signer, name: &str, value: Value) -> Value {
    let mut header = signer.header();
    let map = header.as_object_mut().unwrap();
    if value.is_null() {
        map.remove(name);
    } else {
        map.insert(name.to_owned(), value);
    }
    header
}

pub fn verifier(signer: &Signer) -> Verifier {
    Verifier::new(ISSUER, signer.key_set())
}
