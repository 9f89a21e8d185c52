//! The OIDC attestation verifier on arbitrary tokens: refused without a panic.
#![no_main]

use std::sync::{Arc, LazyLock};

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair};
use taskpass_attest::{OidcIssuerConfig, OidcOptions, OidcVerifier};

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
});

static VERIFIER: LazyLock<Arc<OidcVerifier>> = LazyLock::new(|| {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
    let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA"}]});
    let path = std::env::temp_dir().join(format!("taskpass-fuzz-jwks-{}.json", std::process::id()));
    std::fs::write(&path, jwks.to_string()).unwrap();
    let config = OidcIssuerConfig {
        issuer: "https://issuer.fuzz".into(),
        audiences: vec!["taskpass".into()],
        jwks_uri: None,
        jwks_file: Some(path),
        ca_file: None,
    };
    RT.block_on(OidcVerifier::new(
        vec![config],
        OidcOptions::default(),
        Arc::new(taskpass_core::SystemClock),
    ))
    .unwrap()
});

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    assert!(RT.block_on(VERIFIER.verify(token)).is_err());
});
