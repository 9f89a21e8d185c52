//! Parsing the broker's JWKS into a `KeySet`.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use taskpass_verify::{KeySet, MAX_JWKS_BYTES, VerifyError};

fn invalid(json: &str) -> String {
    match KeySet::from_json(json) {
        Err(VerifyError::InvalidKeySet(why)) => why,
        other => panic!("expected InvalidKeySet, got {other:?}"),
    }
}

#[test]
fn parses_ed25519_and_p256_keys() {
    let ed = Signer::ed25519("ed-1");
    let ec = Signer::es256("ec-1");
    let set = KeySet::from_json(&jwks(&[ec.jwk(), ed.jwk()])).unwrap();
    assert_eq!(set.len(), 2);
    assert!(!set.is_empty());
    assert_eq!(set.kids().collect::<Vec<_>>(), ["ec-1", "ed-1"]);
}

#[test]
fn alg_is_derived_when_absent() {
    let signer = Signer::ed25519("k1");
    let mut jwk = signer.jwk();
    jwk.as_object_mut().unwrap().remove("alg");
    jwk.as_object_mut().unwrap().remove("use");
    let v = taskpass_verify::Verifier::new(ISSUER, KeySet::from_json(&jwks(&[jwk])).unwrap());
    assert!(v.verify_at(&signer.token(&claims()), AUDIENCE, NOW).is_ok());
}

#[test]
fn skips_keys_it_must_not_use() {
    let good = Signer::ed25519("good");
    let x = good.jwk()["x"].clone();
    let skipped = [
        json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": "enc", "use": "enc" }),
        json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": "ops", "key_ops": ["encrypt"] }),
        json!({ "kty": "OKP", "crv": "Ed25519", "x": x }),
        json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": "" }),
        json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": "rs", "alg": "RS256" }),
        json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": "hs", "alg": "HS256" }),
        json!({ "kty": "OKP", "crv": "X25519", "x": x, "kid": "x25519" }),
        json!({ "kty": "OKP", "crv": "Ed448", "x": x, "kid": "ed448" }),
        json!({ "kty": "RSA", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1Wl",
                "e": "AQAB", "kid": "rsa", "alg": "RS256", "use": "sig" }),
        json!({ "kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256" }),
        json!({ "kty": "EC", "crv": "P-384", "x": x, "y": x, "kid": "p384" }),
        json!({ "kty": "EC", "crv": "secp256k1", "x": x, "y": x, "kid": "k256" }),
        json!({ "kty": "Unknown", "kid": "what" }),
    ];
    let mut keys = skipped.to_vec();
    keys.push(good.jwk());
    let set = KeySet::from_json(&jwks(&keys)).unwrap();
    assert_eq!(set.kids().collect::<Vec<_>>(), ["good"]);
}

#[test]
fn empty_set_is_allowed_and_rejects_everything() {
    let set = KeySet::from_json(r#"{"keys":[]}"#).unwrap();
    assert!(set.is_empty());
    let signer = Signer::ed25519("k1");
    let v = taskpass_verify::Verifier::new(ISSUER, set);
    assert_eq!(
        v.verify_at(&signer.token(&claims()), AUDIENCE, NOW),
        Err(VerifyError::UnknownKey)
    );
}

#[test]
fn rejects_documents_that_are_not_a_jwks() {
    for doc in [
        "",
        "not json",
        "{",
        "[]",
        "{}",
        r#"{"keys":{}}"#,
        r#"{"keys":"k"}"#,
        "null",
    ] {
        let err = KeySet::from_json(doc).unwrap_err();
        assert!(matches!(err, VerifyError::InvalidKeySet(_)), "{doc}");
        assert_eq!(err.reason(), "invalid_key_set");
    }
    assert!(invalid(&" ".repeat(MAX_JWKS_BYTES + 1)).contains("size limit"));
    let many = vec![json!({ "kty": "RSA" }); 101];
    assert!(invalid(&jwks(&many)).contains("too many"));
}

#[test]
fn rejects_broken_usable_keys_without_echoing_them() {
    let signer = Signer::ed25519("k1");
    let short = b64(&[7u8; 31]);
    let cases = [
        json!("a string"),
        json!({ "kty": "OKP", "crv": "Ed25519", "kid": "k" }),
        json!({ "kty": "OKP", "crv": "Ed25519", "kid": "k", "x": short }),
        json!({ "kty": "OKP", "crv": "Ed25519", "kid": "k", "x": "!!not-base64!!" }),
        json!({ "kty": "OKP", "crv": "Ed25519", "kid": "k", "x": 5 }),
        json!({ "kty": "EC", "crv": "P-256", "kid": "k", "x": signer.jwk()["x"] }),
        json!({ "kty": 1 }),
        json!({ "kty": "OKP", "crv": "Ed25519", "use": 1 }),
    ];
    for jwk in cases {
        let why = invalid(&jwks(&[jwk]));
        assert!(why.starts_with("key 0: "), "{why}");
        assert!(
            !why.contains(&short) && !why.contains("!!not-base64!!"),
            "{why}"
        );
    }
}

#[test]
fn rejects_private_keys_in_the_jwks() {
    let signer = Signer::ed25519("k1");
    let mut jwk = signer.jwk();
    jwk["d"] = json!(b64(&[9u8; 32]));
    let why = invalid(&jwks(&[jwk]));
    assert!(why.contains("private"), "{why}");
    assert!(!why.contains(&b64(&[9u8; 32])));
}

#[test]
fn rejects_duplicate_kids() {
    let a = Signer::ed25519("same");
    let b = Signer::ed25519("same");
    assert!(invalid(&jwks(&[a.jwk(), b.jwk()])).contains("duplicate kid"));
    // A skipped key does not count.
    let mut enc = b.jwk();
    enc["use"] = json!("enc");
    assert_eq!(KeySet::from_json(&jwks(&[a.jwk(), enc])).unwrap().len(), 1);
}

#[test]
fn debug_shows_no_key_material() {
    let signer = Signer::ed25519("k1");
    let debug = format!("{:?}", signer.key_set());
    assert!(debug.contains("k1") && debug.contains("EdDSA"), "{debug}");
    assert!(!debug.contains(signer.jwk()["x"].as_str().unwrap()));
}
