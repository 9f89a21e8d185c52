//! The two verifiers of Taskpass access tokens: the broker's own (introspection) and the
//! validator SDK's. Arbitrary input must be refused without a panic.
#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair};

static KEYS: LazyLock<(taskpass_server::KeyRing, taskpass_verify::Verifier)> =
    LazyLock::new(|| {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let ring = taskpass_server::KeyRing::from_pkcs8(pkcs8.as_ref()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x,
        "kid": ring.active_kid(), "alg": "EdDSA", "use": "sig"}]});
        let keys = taskpass_verify::KeySet::from_json(&jwks.to_string()).unwrap();
        (
            ring,
            taskpass_verify::Verifier::new("https://fuzz.example", keys),
        )
    });

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let (ring, verifier) = &*KEYS;
    assert!(ring.verify(token).is_err());
    assert!(verifier.verify_at(token, "api", 1).is_err());
});
