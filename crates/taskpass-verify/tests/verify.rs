//! Every rule of `Verifier`, with real Ed25519 and P-256 signatures.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ring::hmac;
use serde_json::{Value, json};
use taskpass_core::{AccessClaims, Actor, Confirmation};
use taskpass_verify::{Holder, MAX_TOKEN_BYTES, Verifier, VerifyError};

fn check(verifier: &Verifier, token: &str) -> Result<taskpass_verify::VerifiedToken, VerifyError> {
    verifier.verify_at(token, AUDIENCE, NOW)
}

#[test]
fn valid_token_verifies_and_fields_match() {
    let signer = Signer::ed25519("k1");
    let verified = check(&verifier(&signer), &signer.token(&claims())).unwrap();

    assert_eq!(verified.subject, AGENT);
    assert_eq!(verified.client_id, AGENT);
    assert_eq!(verified.task_id, TASK);
    assert_eq!(verified.token_id, TOKEN_ID);
    assert_eq!(verified.audience, AUDIENCE);
    assert_eq!(verified.scopes, ["invoices:read", "invoices:write"]);
    assert_eq!(verified.issued_at, NOW);
    assert_eq!(verified.expires_at, NOW + 300);
    assert_eq!(verified.actor, None);
    assert!(verified.has_scope("invoices:read"));
    assert!(!verified.has_scope("invoices"));
    assert!(!verified.has_scope("admin"));
    let expected: AccessClaims = serde_json::from_value(claims()).unwrap();
    assert_eq!(verified.claims, expected);
}

#[test]
fn es256_token_verifies() {
    let signer = Signer::es256("ec1");
    let verified = check(&verifier(&signer), &signer.token(&claims())).unwrap();
    assert_eq!(verified.task_id, TASK);
}

#[test]
fn verify_uses_the_system_clock() {
    let signer = Signer::ed25519("k1");
    let verifier = verifier(&signer);
    // NOW is in the past: the token is long expired by the wall clock.
    assert_eq!(
        verifier.verify(&signer.token(&claims()), AUDIENCE),
        Err(VerifyError::Expired)
    );
    let now = taskpass_core::Clock::now(&taskpass_core::SystemClock);
    let mut fresh = claims_with("exp", json!(now + 60));
    fresh["iat"] = json!(now);
    fresh["nbf"] = json!(now);
    assert!(verifier.verify(&signer.token(&fresh), AUDIENCE).is_ok());
}

#[test]
fn act_sets_the_actor() {
    let signer = Signer::ed25519("k1");
    let mut claims = claims_with("act", json!({ "sub": AGENT }));
    claims["sub"] = json!("user:alice");
    let verified = check(&verifier(&signer), &signer.token(&claims)).unwrap();
    assert_eq!(verified.subject, "user:alice");
    assert_eq!(verified.client_id, AGENT);
    assert_eq!(verified.actor.as_deref(), Some(AGENT));
    assert_eq!(
        verified.claims.act,
        Some(Actor {
            sub: AGENT.to_owned(),
            sub_profile: None,
        })
    );
}

/// RFC 8705: a certificate-bound token passes only with the certificate it is bound to.
#[test]
fn a_bound_token_needs_its_certificate() {
    let signer = Signer::ed25519("k1");
    let v = verifier(&signer);
    let cert = b"the DER of the agent's certificate";
    let other = b"the DER of another certificate";
    let cnf = json!({ "x5t#S256": taskpass_core::certificate_thumbprint(cert) });
    let token = signer.token(&claims_with("cnf", cnf));

    let held = v
        .verify_held_at(&token, AUDIENCE, Holder::Certificate(cert), NOW)
        .unwrap();
    assert_eq!(
        held.claims.cnf,
        Some(Confirmation::Certificate(
            taskpass_core::certificate_thumbprint(cert)
        ))
    );
    assert_eq!(
        v.verify_held_at(&token, AUDIENCE, Holder::Certificate(other), NOW),
        Err(VerifyError::WrongHolder)
    );
    let err = check(&v, &token).unwrap_err();
    assert_eq!(
        err,
        VerifyError::ProofRequired,
        "a bound token without its proof"
    );
    assert_eq!(err.reason(), "proof_required");
    assert_eq!(
        v.verify_held_at(&token, AUDIENCE, Holder::Nothing, NOW),
        Err(VerifyError::ProofRequired)
    );

    // A key-bound (DPoP) token is not fulfilled by a certificate.
    let jkt = taskpass_core::certificate_thumbprint(b"stands in for a JWK thumbprint");
    let dpop = signer.token(&claims_with("cnf", json!({ "jkt": jkt })));
    assert_eq!(
        v.verify_held_at(&dpop, AUDIENCE, Holder::Certificate(cert), NOW),
        Err(VerifyError::WrongHolder)
    );
    assert_eq!(check(&v, &dpop), Err(VerifyError::ProofRequired));

    // An unbound token is accepted whoever presents it.
    let plain = signer.token(&claims());
    assert!(
        v.verify_held_at(&plain, AUDIENCE, Holder::Certificate(cert), NOW)
            .is_ok()
    );
}

/// A binding the SDK cannot check is refused, never read as no binding.
#[test]
fn an_unknown_binding_is_refused() {
    let signer = Signer::ed25519("k1");
    let v = verifier(&signer);
    let good = taskpass_core::certificate_thumbprint(b"x");
    for cnf in [
        json!({}),
        json!({ "x5t#S256": "abc" }),
        json!({ "x5t": good }),
        json!({ "jwk": { "kty": "OKP" } }),
        json!({ "x5t#S256": good, "jkt": good }),
        json!({ "x5t#S256": 1 }),
        json!({ "x5t#S256": format!("{good}=") }),
    ] {
        let token = signer.token(&claims_with("cnf", cnf.clone()));
        assert_eq!(
            check(&v, &token),
            Err(VerifyError::InvalidClaim("cnf")),
            "{cnf}"
        );
    }
}

#[test]
fn expiry_honours_the_leeway() {
    let signer = Signer::ed25519("k1");
    let token = signer.token(&claims());
    let exp = NOW + 300;
    let default = verifier(&signer);
    assert!(default.verify_at(&token, AUDIENCE, exp + 4).is_ok());
    assert_eq!(
        default.verify_at(&token, AUDIENCE, exp + 5),
        Err(VerifyError::Expired)
    );
    assert_eq!(
        default.verify_at(&token, AUDIENCE, exp + 3600),
        Err(VerifyError::Expired)
    );

    let strict = verifier(&signer).with_leeway(0);
    assert!(strict.verify_at(&token, AUDIENCE, exp - 1).is_ok());
    assert_eq!(
        strict.verify_at(&token, AUDIENCE, exp),
        Err(VerifyError::Expired)
    );
}

#[test]
fn nbf_in_the_future_is_not_yet_valid() {
    let signer = Signer::ed25519("k1");
    let v = verifier(&signer).with_leeway(0);
    let token = signer.token(&claims_with("nbf", json!(NOW + 60)));
    assert_eq!(
        v.verify_at(&token, AUDIENCE, NOW),
        Err(VerifyError::NotYetValid)
    );
    assert!(v.verify_at(&token, AUDIENCE, NOW + 60).is_ok());
    // Within the default leeway of 5 s.
    let token = signer.token(&claims_with("nbf", json!(NOW + 5)));
    assert!(verifier(&signer).verify_at(&token, AUDIENCE, NOW).is_ok());
}

#[test]
fn iat_in_the_future_is_not_yet_valid() {
    let signer = Signer::ed25519("k1");
    let token = signer.token(&claims_with("iat", json!(NOW + 60)));
    assert_eq!(
        check(&verifier(&signer), &token),
        Err(VerifyError::NotYetValid)
    );
}

#[test]
fn impossible_lifetime_is_invalid() {
    let signer = Signer::ed25519("k1");
    let token = signer.token(&claims_with("exp", json!(NOW)));
    assert_eq!(
        check(&verifier(&signer), &token),
        Err(VerifyError::InvalidClaim("exp"))
    );
}

#[test]
fn wrong_audience() {
    let signer = Signer::ed25519("k1");
    let token = signer.token(&claims());
    let v = verifier(&signer);
    assert_eq!(
        v.verify_at(&token, "https://other.example.org", NOW),
        Err(VerifyError::WrongAudience)
    );
    assert_eq!(
        v.verify_at(&token, "", NOW),
        Err(VerifyError::WrongAudience)
    );
}

#[test]
fn audience_array_is_refused() {
    let signer = Signer::ed25519("k1");
    let token = signer.token(&claims_with("aud", json!([AUDIENCE, "https://other"])));
    assert_eq!(
        check(&verifier(&signer), &token),
        Err(VerifyError::InvalidClaim("aud"))
    );
}

#[test]
fn wrong_issuer() {
    let signer = Signer::ed25519("k1");
    let token = signer.token(&claims_with("iss", json!("https://evil.example.org")));
    assert_eq!(
        check(&verifier(&signer), &token),
        Err(VerifyError::WrongIssuer)
    );
    let token = signer.token(&claims_with("iss", json!([ISSUER])));
    assert_eq!(
        check(&verifier(&signer), &token),
        Err(VerifyError::InvalidClaim("iss"))
    );
}

#[test]
fn tampered_payload_is_a_bad_signature() {
    let signer = Signer::ed25519("k1");
    let token = signer.token(&claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = b64(claims_with("scope", json!("admin")).to_string().as_bytes());
    parts[1] = &forged;
    let err = check(&verifier(&signer), &parts.join(".")).unwrap_err();
    assert_eq!(err, VerifyError::BadSignature);
    assert_eq!(err.reason(), "bad_signature");
}

#[test]
fn tampered_signature_is_a_bad_signature() {
    let signer = Signer::ed25519("k1");
    let token = signer.token(&claims());
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut raw =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
    raw[0] ^= 1;
    let token = format!("{input}.{}", b64(&raw));
    assert_eq!(
        check(&verifier(&signer), &token),
        Err(VerifyError::BadSignature)
    );
    // No signature at all.
    assert_eq!(
        check(&verifier(&signer), &format!("{input}.")),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn another_key_with_the_same_kid_is_forged() {
    let signer = Signer::ed25519("k1");
    let attacker = Signer::ed25519("k1");
    let token = attacker.token(&claims());
    assert_eq!(
        check(&verifier(&signer), &token),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn unknown_kid() {
    let signer = Signer::ed25519("k1");
    let other = Signer::ed25519("k2");
    let err = check(&verifier(&signer), &other.token(&claims())).unwrap_err();
    assert_eq!(err, VerifyError::UnknownKey);
    assert_eq!(err.reason(), "unknown_key");
}

#[test]
fn missing_kid() {
    let signer = Signer::ed25519("k1");
    for kid in [Value::Null, json!("")] {
        let token = signer.sign(&header_with(&signer, "kid", kid), &claims());
        assert_eq!(
            check(&verifier(&signer), &token),
            Err(VerifyError::MissingKeyId)
        );
    }
}

#[test]
fn alg_none_is_refused() {
    let signer = Signer::ed25519("k1");
    for alg in ["none", "None", "NONE"] {
        let header = header_with(&signer, "alg", json!(alg));
        let unsigned = format!(
            "{}.{}.",
            b64(header.to_string().as_bytes()),
            b64(claims().to_string().as_bytes())
        );
        assert_eq!(
            check(&verifier(&signer), &unsigned),
            Err(VerifyError::UnsupportedAlgorithm)
        );
        let signed = signer.sign(&header, &claims());
        assert_eq!(
            check(&verifier(&signer), &signed),
            Err(VerifyError::UnsupportedAlgorithm)
        );
    }
}

#[test]
fn hmac_with_the_public_key_as_secret_is_refused() {
    let signer = Signer::ed25519("k1");
    let header = header_with(&signer, "alg", json!("HS256"));
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims().to_string().as_bytes())
    );
    // The classic confusion: the verifier's public key (raw, or as published) as HMAC secret.
    let x = b64(&signer.public_key());
    for secret in [signer.public_key(), x.into_bytes()] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
        let tag = hmac::sign(&key, input.as_bytes());
        let token = format!("{input}.{}", b64(tag.as_ref()));
        assert_eq!(
            check(&verifier(&signer), &token),
            Err(VerifyError::UnsupportedAlgorithm)
        );
    }
    for alg in [
        "HS384", "HS512", "RS256", "PS256", "ES384", "Ed25519", "eddsa",
    ] {
        let token = signer.sign(&header_with(&signer, "alg", json!(alg)), &claims());
        assert_eq!(
            check(&verifier(&signer), &token),
            Err(VerifyError::UnsupportedAlgorithm),
            "{alg}"
        );
    }
}

#[test]
fn header_alg_must_match_the_keys_pinned_alg() {
    // ES256 header against an Ed25519 key.
    let ed = Signer::ed25519("k1");
    let token = ed.sign(&header_with(&ed, "alg", json!("ES256")), &claims());
    assert_eq!(
        check(&verifier(&ed), &token),
        Err(VerifyError::UnsupportedAlgorithm)
    );

    // EdDSA header against a P-256 key.
    let ec = Signer::es256("k1");
    let token = ed.sign(&ed.header(), &claims());
    assert_eq!(
        check(&verifier(&ec), &token),
        Err(VerifyError::UnsupportedAlgorithm)
    );
}

#[test]
fn typ_must_be_at_jwt() {
    let signer = Signer::ed25519("k1");
    let v = verifier(&signer);
    for typ in [
        Value::Null,
        json!("JWT"),
        json!("jwt"),
        json!(""),
        json!("at+jwt+x"),
        json!(1),
    ] {
        let token = signer.sign(&header_with(&signer, "typ", typ.clone()), &claims());
        let expected = if typ.is_number() {
            VerifyError::Malformed
        } else {
            VerifyError::WrongType
        };
        assert_eq!(check(&v, &token), Err(expected), "{typ}");
    }
    for typ in [
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
        "Application/AT+JWT",
    ] {
        let token = signer.sign(&header_with(&signer, "typ", json!(typ)), &claims());
        assert!(check(&v, &token).is_ok(), "{typ}");
    }
}

#[test]
fn dangerous_headers_are_refused() {
    let signer = Signer::ed25519("k1");
    let v = verifier(&signer);
    let cases = [
        ("crit", json!(["exp"])),
        ("jku", json!("https://evil.example.org/jwks.json")),
        ("jwk", signer.jwk()),
        ("x5u", json!("https://evil.example.org/cert.pem")),
        ("x5c", json!(["MIIB"])),
        ("crit", json!(null)),
    ];
    for (name, value) in cases {
        let mut header = signer.header();
        header[name] = value;
        let token = signer.sign(&header, &claims());
        let err = check(&v, &token).unwrap_err();
        assert_eq!(err, VerifyError::ForbiddenHeader(name));
        assert_eq!(err.reason(), "malformed");
    }
}

#[test]
fn duplicate_header_members_are_malformed() {
    let signer = Signer::ed25519("k1");
    let header = r#"{"alg":"HS256","alg":"EdDSA","typ":"at+jwt","kid":"k1"}"#;
    let token = signer.sign_parts(
        &b64(header.as_bytes()),
        &b64(claims().to_string().as_bytes()),
    );
    assert_eq!(
        check(&verifier(&signer), &token),
        Err(VerifyError::Malformed)
    );
}

#[test]
fn oversized_token_is_refused_before_parsing() {
    let signer = Signer::ed25519("k1");
    let big = claims_with("pad", json!("x".repeat(MAX_TOKEN_BYTES)));
    let token = signer.token(&big);
    assert!(token.len() > MAX_TOKEN_BYTES);
    assert_eq!(
        check(&verifier(&signer), &token),
        Err(VerifyError::TooLarge)
    );
    assert_eq!(
        check(&verifier(&signer), &"a".repeat(MAX_TOKEN_BYTES + 1)),
        Err(VerifyError::TooLarge)
    );

    // Just under the limit is fine.
    let fits = claims_with("pad", json!("x".repeat(MAX_TOKEN_BYTES / 2)));
    assert!(check(&verifier(&signer), &signer.token(&fits)).is_ok());
}

#[test]
fn malformed_tokens() {
    let signer = Signer::ed25519("k1");
    let v = verifier(&signer);
    let good = signer.token(&claims());
    let (h, rest) = good.split_once('.').unwrap();
    let (p, s) = rest.split_once('.').unwrap();
    let cases = [
        String::new(),
        ".".to_owned(),
        "..".to_owned(),
        "...".to_owned(),
        format!("{h}.{p}"),
        format!("{h}.{p}.{s}.{s}"),
        format!("{h}.{p}.{s}."),
        format!(".{p}.{s}"),
        format!("{h}..{s}"),
        format!("{h}=.{p}.{s}"),
        format!("{h}+/.{p}.{s}"),
        format!("!!!.{p}.{s}"),
        format!("{}.{p}.{s}", b64(b"not json")),
        format!("{}.{p}.{s}", b64(b"[\"EdDSA\",\"at+jwt\",\"k1\"]")),
        format!("{}.{p}.{s}", b64(b"\"EdDSA\"")),
        format!("{}.{p}.{s}", b64(b"{}")),
        format!("{}.{p}.{s}", b64(&[0xff, 0xfe, 0x00])),
        "\u{0}\u{1}\u{2}".to_owned(),
        "eyJ.eyJ.eyJ".to_owned(),
        "🔑.🔑.🔑".to_owned(),
    ];
    for token in cases {
        let err = check(&v, &token).unwrap_err();
        assert_eq!(err, VerifyError::Malformed, "{token:?}");
        assert_eq!(err.reason(), "malformed");
    }
}

#[test]
fn signed_but_unparseable_payload_is_malformed() {
    let signer = Signer::ed25519("k1");
    let header = b64(signer.header().to_string().as_bytes());
    for payload in [b64(b"not json"), b64(b"[1,2]"), "***".to_owned()] {
        let token = signer.sign_parts(&header, &payload);
        assert_eq!(
            check(&verifier(&signer), &token),
            Err(VerifyError::Malformed),
            "{payload}"
        );
    }
}

/// JSON parsers disagree on which of two same-named members wins: the profile takes neither.
#[test]
fn a_name_given_twice_is_malformed() {
    let signer = Signer::ed25519("k1");
    let v = verifier(&signer);
    let claims = claims().to_string();
    let twice = |name: &str, first: &str| {
        let at = claims.find(&format!("\"{name}\"")).unwrap();
        format!("{}\"{name}\":{first},{}", &claims[..at], &claims[at..])
    };
    let header = b64(signer.header().to_string().as_bytes());
    for payload in [
        twice("aud", "\"https://other.example\""),
        twice("exp", "1"),
        twice("sub", "\"spiffe://example.org/agent/other\""),
        claims.replacen('{', r#"{"cnf":{"jkt":"a","jkt":"b"},"#, 1),
        claims.replacen('{', r#"{"act":null,"#, 1),
    ] {
        let token = signer.sign_parts(&header, &b64(payload.as_bytes()));
        let err = check(&v, &token).unwrap_err();
        assert_eq!(err.reason(), "malformed", "{payload}");
    }
    let mut dup_header = signer.header().to_string();
    dup_header.insert_str(1, r#""alg":"EdDSA","#);
    let token = signer.sign_parts(&b64(dup_header.as_bytes()), &b64(claims.as_bytes()));
    assert_eq!(check(&v, &token), Err(VerifyError::Malformed));
}

#[test]
fn missing_claims() {
    let signer = Signer::ed25519("k1");
    let v = verifier(&signer);
    for name in [
        "txn",
        "client_id",
        "jti",
        "scope",
        "iat",
        "exp",
        "nbf",
        "iss",
        "aud",
        "sub",
    ] {
        let token = signer.token(&claims_with(name, Value::Null));
        assert_eq!(
            check(&v, &token),
            Err(VerifyError::MissingClaim(name)),
            "{name}"
        );
    }
    for name in ["txn", "client_id", "jti", "sub"] {
        let token = signer.token(&claims_with(name, json!("")));
        assert_eq!(
            check(&v, &token),
            Err(VerifyError::MissingClaim(name)),
            "{name}"
        );
    }
}

#[test]
fn claims_of_the_wrong_type() {
    let signer = Signer::ed25519("k1");
    let v = verifier(&signer);
    let cases = [
        ("txn", json!(42)),
        ("client_id", json!({ "id": AGENT })),
        ("scope", json!(["invoices:read"])),
        ("iat", json!("now")),
        ("iat", json!(1.5)),
        ("act", json!(AGENT)),
        ("act", json!({ "sub": 1 })),
        ("act", json!({})),
        ("cnf", json!("thumbprint")),
    ];
    for (name, value) in cases {
        let token = signer.token(&claims_with(name, value.clone()));
        assert_eq!(
            check(&v, &token),
            Err(VerifyError::InvalidClaim(name)),
            "{name}: {value}"
        );
    }
}

#[test]
fn empty_scope_is_allowed() {
    let signer = Signer::ed25519("k1");
    let token = signer.token(&claims_with("scope", json!("")));
    let verified = check(&verifier(&signer), &token).unwrap();
    assert!(verified.scopes.is_empty());
    assert!(!verified.has_scope(""));
}

#[test]
fn reasons_match_introspection() {
    assert_eq!(VerifyError::Expired.reason(), "expired");
    assert_eq!(VerifyError::BadSignature.reason(), "bad_signature");
    assert_eq!(VerifyError::UnsupportedAlgorithm.reason(), "bad_signature");
    assert_eq!(VerifyError::UnknownKey.reason(), "unknown_key");
    assert_eq!(VerifyError::Malformed.reason(), "malformed");
    assert_eq!(VerifyError::TooLarge.reason(), "malformed");
    assert_eq!(VerifyError::MissingClaim("txn").reason(), "malformed");
    assert_eq!(VerifyError::NotYetValid.reason(), "not_yet_valid");
    assert_eq!(VerifyError::WrongIssuer.reason(), "wrong_issuer");
    assert_eq!(VerifyError::WrongAudience.reason(), "wrong_audience");
}

#[test]
fn errors_carry_no_token_material() {
    let signer = Signer::ed25519("secret-kid");
    let other = Signer::ed25519("other-kid");
    let v = verifier(&signer);
    let tokens = [
        other.token(&claims()),
        signer.token(&claims_with("iss", json!("https://evil"))),
        signer.token(&claims_with("txn", Value::Null)),
        Signer::ed25519("secret-kid").token(&claims()),
    ];
    for token in tokens {
        let message = check(&v, &token).unwrap_err().to_string();
        for part in token.split('.') {
            assert!(!message.contains(part), "{message}");
        }
        for needle in ["secret-kid", "other-kid", "evil", AGENT, TASK] {
            assert!(!message.contains(needle), "{message}");
        }
    }
}

#[test]
fn replace_keys_makes_a_new_kid_valid() {
    let old = Signer::ed25519("2024-01");
    let new = Signer::ed25519("2024-02");
    let v = verifier(&old);
    assert_eq!(
        check(&v, &new.token(&claims())),
        Err(VerifyError::UnknownKey)
    );

    v.replace_keys(taskpass_verify::KeySet::from_json(&jwks(&[old.jwk(), new.jwk()])).unwrap());
    assert!(check(&v, &new.token(&claims())).is_ok());
    assert!(check(&v, &old.token(&claims())).is_ok());

    v.replace_keys(new.key_set());
    assert!(check(&v, &new.token(&claims())).is_ok());
    assert_eq!(
        check(&v, &old.token(&claims())),
        Err(VerifyError::UnknownKey)
    );
}

#[test]
fn shared_across_threads() {
    let signer = Signer::ed25519("k1");
    let v = std::sync::Arc::new(verifier(&signer));
    let token = signer.token(&claims());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (v, token, keys) = (v.clone(), token.clone(), signer.key_set());
            std::thread::spawn(move || {
                for _ in 0..50 {
                    assert!(v.verify_at(&token, AUDIENCE, NOW).is_ok());
                    v.replace_keys(keys.clone());
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
}
