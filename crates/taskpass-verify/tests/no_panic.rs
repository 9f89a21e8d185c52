//! No input makes verification or key parsing panic.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use proptest::prelude::*;
use taskpass_verify::KeySet;

proptest! {
    #[test]
    fn verify_never_panics_on_any_string(token in "\\PC*") {
        let signer = Signer::ed25519("k1");
        let v = verifier(&signer);
        let _ = v.verify_at(&token, AUDIENCE, NOW);
        let _ = v.verify(&token, AUDIENCE);
    }

    #[test]
    fn verify_never_panics_on_three_dotted_parts(
        h in prop::collection::vec(any::<u8>(), 0..200),
        p in prop::collection::vec(any::<u8>(), 0..200),
        s in prop::collection::vec(any::<u8>(), 0..80),
        now in any::<i64>(),
        leeway in any::<u64>(),
    ) {
        let signer = Signer::ed25519("k1");
        let v = verifier(&signer).with_leeway(leeway);
        let token = format!("{}.{}.{}", b64(&h), b64(&p), b64(&s));
        let _ = v.verify_at(&token, AUDIENCE, now);
    }

    #[test]
    fn verify_never_panics_on_signed_arbitrary_claims(
        name in "[a-z_]{1,10}",
        value in prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "\\PC*".prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
        ],
        now in any::<i64>(),
    ) {
        let signer = Signer::ed25519("k1");
        let v = verifier(&signer);
        let token = signer.token(&claims_with(&name, value));
        let _ = v.verify_at(&token, AUDIENCE, now);
    }

    #[test]
    fn key_set_never_panics(json in "\\PC*") {
        let _ = KeySet::from_json(&json);
        let _ = KeySet::from_json(&format!(r#"{{"keys":[{json}]}}"#));
    }
}
