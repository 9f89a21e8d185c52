//! DPoP-bound tokens (RFC 9449): accepted only with a fresh proof, signed by the key the token
//! is bound to, for the request it comes with; every field wrong and a replay are refused.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use taskpass_verify::{DpopRequest, Holder, Verifier, VerifyError};

const URL: &str = "https://billing.example.org/v1/invoices";

/// The RFC 7638 thumbprint of a signer's public key.
fn jkt(key: &Signer) -> String {
    let jwk = key.jwk();
    let canonical = match jwk["kty"].as_str().unwrap() {
        "EC" => json!({"crv": jwk["crv"], "kty": "EC", "x": jwk["x"], "y": jwk["y"]}),
        _ => json!({"crv": jwk["crv"], "kty": "OKP", "x": jwk["x"]}),
    };
    // serde_json writes object members sorted (no preserve_order): RFC 7638's order.
    taskpass_core::sha256_b64url(canonical.to_string().as_bytes())
}

fn public_jwk(key: &Signer) -> Value {
    let mut jwk = key.jwk();
    let m = jwk.as_object_mut().unwrap();
    m.remove("kid");
    m.remove("use");
    m.remove("alg");
    jwk
}

fn header(key: &Signer) -> Value {
    let alg = key.header()["alg"].clone();
    json!({"typ": "dpop+jwt", "alg": alg, "jwk": public_jwk(key)})
}

fn proof_claims(token: &str, jti: &str) -> Value {
    json!({
        "jti": jti, "htm": "POST", "htu": URL, "iat": NOW,
        "ath": taskpass_core::sha256_b64url(token.as_bytes()),
    })
}

fn check(v: &Verifier, token: &str, proof: &str) -> Result<(), VerifyError> {
    let req = DpopRequest {
        proof,
        method: "POST",
        url: URL,
    };
    v.verify_held_at(token, AUDIENCE, Holder::Dpop(req), NOW)
        .map(|_| ())
}

#[test]
fn a_key_bound_token_needs_a_proof_by_its_key() {
    let broker = Signer::ed25519("k1");
    let v = verifier(&broker);
    for client in [Signer::es256("client"), Signer::ed25519("client")] {
        let token = broker.token(&claims_with("cnf", json!({ "jkt": jkt(&client) })));
        let ok = client.sign(&header(&client), &proof_claims(&token, "jti-1"));
        check(&v, &token, &ok).unwrap();
        // Replayed: refused.
        assert_eq!(check(&v, &token, &ok), Err(VerifyError::ReplayedProof));
        // Query and fragment are not part of the comparison; a default port neither.
        let mut c = proof_claims(&token, "jti-2");
        c["htu"] = json!("https://BILLING.example.org:443/v1/invoices?page=2");
        check(&v, &token, &client.sign(&header(&client), &c)).unwrap();
        // Without a proof, or with the certificate path: refused.
        assert_eq!(
            v.verify_at(&token, AUDIENCE, NOW).unwrap_err(),
            VerifyError::ProofRequired
        );
        assert_eq!(
            v.verify_held_at(&token, AUDIENCE, Holder::Certificate(b"der"), NOW)
                .unwrap_err(),
            VerifyError::WrongHolder
        );
    }
}

#[test]
fn every_wrong_field_is_refused() {
    let broker = Signer::ed25519("k1");
    let v = verifier(&broker);
    let client = Signer::es256("client");
    let other = Signer::es256("other");
    let token = broker.token(&claims_with("cnf", json!({ "jkt": jkt(&client) })));
    let mut n = 0;
    let mut jti = || {
        n += 1;
        format!("case-{n}")
    };

    let with = |edit: &dyn Fn(&mut Value), jti: String| {
        let mut c = proof_claims(&token, &jti);
        edit(&mut c);
        client.sign(&header(&client), &c)
    };
    type Edit = Box<dyn Fn(&mut Value)>;
    let claim_cases: Vec<(&str, Edit)> = vec![
        ("htm", Box::new(|c| c["htm"] = json!("GET"))),
        (
            "htu",
            Box::new(|c| c["htu"] = json!("https://billing.example.org/v1/other")),
        ),
        (
            "htu",
            Box::new(|c| c["htu"] = json!("http://billing.example.org/v1/invoices")),
        ),
        ("iat", Box::new(|c| c["iat"] = json!(NOW - 3600))),
        ("iat", Box::new(|c| c["iat"] = json!(NOW + 3600))),
        ("iat", Box::new(|c| c["iat"] = json!("now"))),
        ("jti", Box::new(|c| c["jti"] = json!(""))),
        (
            "jti",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
        ),
        (
            "ath",
            Box::new(|c| c["ath"] = json!(taskpass_core::sha256_b64url(b"another token"))),
        ),
        (
            "ath",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("ath");
            }),
        ),
    ];
    for (field, edit) in &claim_cases {
        let proof = with(edit.as_ref(), jti());
        assert_eq!(
            check(&v, &token, &proof),
            Err(VerifyError::InvalidProof(field)),
            "{field}"
        );
    }

    let claims = || proof_claims(&token, "header-case");
    let mut h = header(&client);
    h["typ"] = json!("JWT");
    assert_eq!(
        check(&v, &token, &client.sign(&h, &claims())),
        Err(VerifyError::InvalidProof("typ"))
    );
    for alg in ["none", "HS256", "ES384"] {
        let mut h = header(&client);
        h["alg"] = json!(alg);
        assert_eq!(
            check(&v, &token, &client.sign(&h, &claims())),
            Err(VerifyError::InvalidProof("alg")),
            "{alg}"
        );
    }
    // A private member in the jwk.
    let mut h = header(&client);
    h["jwk"]["d"] = json!(b64(b"secret"));
    assert_eq!(
        check(&v, &token, &client.sign(&h, &claims())),
        Err(VerifyError::InvalidProof("jwk"))
    );
    // No jwk.
    let mut h = header(&client);
    h.as_object_mut().unwrap().remove("jwk");
    assert_eq!(
        check(&v, &token, &client.sign(&h, &claims())),
        Err(VerifyError::InvalidProof("jwk"))
    );
    // Signed by another key than the one in the header.
    assert_eq!(
        check(&v, &token, &other.sign(&header(&client), &claims())),
        Err(VerifyError::InvalidProof("signature"))
    );
    // A proof by another key (its own jwk): not the key the token is bound to.
    assert_eq!(
        check(&v, &token, &other.sign(&header(&other), &claims())),
        Err(VerifyError::WrongHolder)
    );
    // Not a JWS, oversized.
    for bad in ["x".to_owned(), "a.b".into(), "x".repeat(9000)] {
        assert!(matches!(
            check(&v, &token, &bad),
            Err(VerifyError::InvalidProof(_))
        ));
    }
    // A name given twice in the proof's claims.
    let twice = format!(
        r#"{{"jti":"dup","jti":"dup2","htm":"POST","htu":"{URL}","iat":{NOW},"ath":"{}"}}"#,
        taskpass_core::sha256_b64url(token.as_bytes())
    );
    let proof = client.sign_parts(
        &b64(header(&client).to_string().as_bytes()),
        &b64(twice.as_bytes()),
    );
    assert_eq!(
        check(&v, &token, &proof),
        Err(VerifyError::InvalidProof("claims"))
    );
    assert_eq!(
        VerifyError::InvalidProof("htm").reason(),
        "invalid_dpop_proof"
    );
    assert_eq!(VerifyError::ReplayedProof.reason(), "replayed_dpop_proof");
}

#[test]
fn an_unbound_token_needs_no_proof() {
    let broker = Signer::ed25519("k1");
    let v = verifier(&broker);
    let token = broker.token(&claims());
    assert!(check(&v, &token, "not even a proof").is_ok());
}
