//! jsonwebtoken 11 picks its crypto backend from its features; with exactly `aws_lc_rs` it
//! must select it automatically (it panics at first use when it cannot). This runs in its own
//! process, before anything installs a provider.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

#[test]
fn aws_lc_is_selected_without_installing_it() {
    let signer = Signer::ed25519("k1");
    let token = signer.token(&claims());
    let key = DecodingKey::from_ed_components(signer.jwk()["x"].as_str().unwrap()).unwrap();
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.validate_exp = false;
    validation.set_audience(&[AUDIENCE]);
    let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).unwrap();
    assert_eq!(data.claims["txn"], TASK);
    // The feature-inferred provider is now the process default: installing another fails.
    assert!(
        jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER
            .install_default()
            .is_err()
    );
}
