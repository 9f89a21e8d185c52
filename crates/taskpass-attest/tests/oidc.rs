//! The OIDC verifier against a real loopback issuer over HTTPS (taskpass-testkit's DevIssuer):
//! discovery, key sources, the RFC 8725 rules, forgeries, rotation, rate limits and the cache.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use taskpass_attest::{
    AttestError, AttestationMethod, Attestor, Evidence, OidcIssuerConfig, OidcOptions, OidcVerifier,
};
use taskpass_core::ManualClock;
use taskpass_testkit::{DevIssuer, TokenAlg, TokenSpec};
use tempfile::TempDir;

const AUD: &str = "taskpass";
const SUB: &str = "system:serviceaccount:agents:billing-bot";

fn unix_now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

struct Fixture {
    issuer: DevIssuer,
    verifier: Arc<OidcVerifier>,
    clock: ManualClock,
    _dir: TempDir,
}

impl Fixture {
    fn claims(&self) -> Value {
        self.issuer.claims(SUB, AUD, 300)
    }

    /// A token with the standard claims, changed by `edit`.
    fn token_with_claims(&self, edit: impl FnOnce(&mut Map<String, Value>)) -> String {
        let mut claims = self.claims();
        edit(claims.as_object_mut().unwrap());
        self.issuer.token_with(TokenSpec {
            claims,
            ..TokenSpec::default()
        })
    }

    async fn refused(&self, token: &str) -> AttestError {
        self.verifier
            .verify(token)
            .await
            .expect_err("the token must be refused")
    }
}

/// Discovery from the issuer URL, trusting the issuer's CA through `ca_file`.
fn config(issuer: &DevIssuer, dir: &TempDir) -> OidcIssuerConfig {
    let ca = dir.path().join("issuer-ca.pem");
    issuer.write_ca(&ca).unwrap();
    OidcIssuerConfig {
        issuer: issuer.issuer().to_owned(),
        audiences: vec!["other-broker".into(), AUD.into()],
        jwks_uri: None,
        jwks_file: None,
        ca_file: Some(ca),
    }
}

async fn fixture_with(options: OidcOptions) -> Fixture {
    let issuer = DevIssuer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(unix_now());
    let verifier = OidcVerifier::new(
        vec![config(&issuer, &dir)],
        options,
        Arc::new(clock.clone()),
    )
    .await
    .unwrap();
    Fixture {
        issuer,
        verifier,
        clock,
        _dir: dir,
    }
}

async fn fixture() -> Fixture {
    fixture_with(OidcOptions::default()).await
}

#[tokio::test]
async fn accepts_rs256_es256_eddsa_via_discovery() {
    let f = fixture().await;
    for alg in [TokenAlg::Rs256, TokenAlg::Es256, TokenAlg::EdDsa] {
        let claims = f.claims();
        let exp = claims["exp"].as_i64().unwrap();
        let token = f.issuer.token_with(TokenSpec {
            alg,
            claims,
            ..TokenSpec::default()
        });
        let id = f
            .verifier
            .verify(&token)
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(
            id.method,
            AttestationMethod::Oidc {
                issuer: f.issuer.issuer().to_owned(),
                subject: SUB.into()
            }
        );
        assert_eq!(id.expires_at, exp);
    }
    // Through the trait, as the server will call it.
    let token = f.issuer.token(SUB, AUD, 60);
    let id = f
        .verifier
        .attest(&Evidence::OidcToken(&token))
        .await
        .unwrap();
    assert!(matches!(id.method, AttestationMethod::Oidc { .. }));
    assert_eq!(f.issuer.jwks_fetches(), 1, "keys fetched once and kept");
}

#[tokio::test]
async fn audience_may_be_an_array_and_must_match() {
    let f = fixture().await;
    let token = f.token_with_claims(|c| {
        c.insert("aud".into(), json!(["someone-else", AUD]));
    });
    f.verifier.verify(&token).await.unwrap();

    let token = f.token_with_claims(|c| {
        c.insert("aud".into(), json!("someone-else"));
    });
    let e = f.refused(&token).await;
    assert_eq!(e.reason(), "wrong_audience");
    assert!(e.to_string().contains("\"taskpass\""), "{e}");

    let token = f.token_with_claims(|c| {
        c.insert("aud".into(), json!(["a", "b"]));
    });
    assert_eq!(f.refused(&token).await.reason(), "wrong_audience");

    let token = f.token_with_claims(|c| {
        c.remove("aud");
    });
    assert_eq!(f.refused(&token).await.reason(), "missing_claim");
}

#[tokio::test]
async fn unsigned_and_hmac_confusion_tokens_are_refused() {
    let f = fixture().await;
    let none = f.issuer.token_with(TokenSpec {
        alg: TokenAlg::None_,
        claims: f.claims(),
        ..TokenSpec::default()
    });
    assert!(none.ends_with('.'));
    assert_eq!(f.refused(&none).await.reason(), "alg_not_allowed");

    let hs = f.issuer.token_with(TokenSpec {
        alg: TokenAlg::Hs256WithPublicKey,
        claims: f.claims(),
        ..TokenSpec::default()
    });
    assert_eq!(f.refused(&hs).await.reason(), "alg_not_allowed");

    // HS256 naming the symmetric entry the issuer publishes: still refused.
    let hs = f.issuer.token_with(TokenSpec {
        alg: TokenAlg::Hs256WithPublicKey,
        kid: Some("hmac-1".into()),
        claims: f.claims(),
        ..TokenSpec::default()
    });
    assert_eq!(f.refused(&hs).await.reason(), "alg_not_allowed");
}

#[tokio::test]
async fn forged_signatures_are_refused() {
    let f = fixture().await;
    for alg in [TokenAlg::Rs256, TokenAlg::Es256, TokenAlg::EdDsa] {
        let forged = f.issuer.token_with(TokenSpec {
            alg,
            claims: f.claims(),
            sign_with_foreign_key: true,
            ..TokenSpec::default()
        });
        let e = f.refused(&forged).await;
        assert_eq!(e.reason(), "bad_signature", "{alg:?}: {e}");
    }
    // A genuine signature over other claims: swap the payload.
    let real = f.issuer.token(SUB, AUD, 60);
    let other = f.issuer.token("someone-else", AUD, 60);
    let mut r: Vec<&str> = real.split('.').collect();
    let o: Vec<&str> = other.split('.').collect();
    r[1] = o[1];
    assert_eq!(f.refused(&r.join(".")).await.reason(), "bad_signature");
}

#[tokio::test]
async fn key_and_algorithm_are_pinned_together() {
    let f = fixture().await;
    // ES256 header naming the RSA key.
    let t = f.issuer.token_with(TokenSpec {
        alg: TokenAlg::Es256,
        kid: Some("rsa-1".into()),
        claims: f.claims(),
        ..TokenSpec::default()
    });
    assert_eq!(f.refused(&t).await.reason(), "alg_not_allowed");
    // The issuer publishes several keys: a token must say which.
    let t = f.issuer.token_with(TokenSpec {
        omit_kid: true,
        claims: f.claims(),
        ..TokenSpec::default()
    });
    assert_eq!(f.refused(&t).await.reason(), "missing_kid");
    // An encryption key (use=enc) is never a verification key, even with a valid signature.
    let t = f.issuer.token_with(TokenSpec {
        alg: TokenAlg::Es256,
        kid: Some("enc-1".into()),
        claims: f.claims(),
        sign_with_foreign_key: true,
        ..TokenSpec::default()
    });
    assert_eq!(f.refused(&t).await.reason(), "unknown_key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_refetches_at_most_once_per_interval() {
    let f = fixture_with(OidcOptions {
        min_refetch_interval: Duration::from_millis(400),
        ..OidcOptions::default()
    })
    .await;
    f.verifier
        .verify(&f.issuer.token(SUB, AUD, 60))
        .await
        .unwrap();
    assert_eq!(f.issuer.jwks_fetches(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let unknown = f.issuer.token_with(TokenSpec {
        kid: Some("no-such-key".into()),
        claims: f.claims(),
        ..TokenSpec::default()
    });
    for _ in 0..5 {
        let e = f.refused(&unknown).await;
        assert_eq!(e.reason(), "unknown_key");
        assert!(e.to_string().contains("\"no-such-key\""), "{e}");
    }
    assert_eq!(
        f.issuer.jwks_fetches(),
        2,
        "one refetch within the interval"
    );

    // Concurrent unknown kids after the interval: still a single fetch.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (v, t) = (f.verifier.clone(), unknown.clone());
        tasks.spawn(async move { v.verify(&t).await });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap().unwrap_err().reason(), "unknown_key");
    }
    assert_eq!(f.issuer.jwks_fetches(), 3);
}

#[tokio::test]
async fn rotated_keys_are_picked_up_on_unknown_kid() {
    let f = fixture_with(OidcOptions {
        min_refetch_interval: Duration::ZERO,
        ..OidcOptions::default()
    })
    .await;
    let old = f.issuer.token(SUB, AUD, 60);
    f.verifier.verify(&old).await.unwrap();
    f.issuer.rotate();
    for alg in [TokenAlg::Rs256, TokenAlg::Es256, TokenAlg::EdDsa] {
        let new = f.issuer.token_with(TokenSpec {
            alg,
            claims: f.claims(),
            ..TokenSpec::default()
        });
        let header: Value =
            serde_json::from_slice(&base64_url_decode(new.split('.').next().unwrap())).unwrap();
        assert!(header["kid"].as_str().unwrap().ends_with("-2"));
        f.verifier
            .verify(&new)
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
    }
    assert_eq!(
        f.issuer.jwks_fetches(),
        2,
        "one refetch served all three new kids"
    );
    // Old keys are still published: old tokens still verify.
    f.verifier.verify(&old).await.unwrap();
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

#[tokio::test]
async fn issuer_must_be_trusted_and_exact() {
    let f = fixture().await;
    let evil = f.token_with_claims(|c| {
        c.insert("iss".into(), json!("https://evil.example"));
    });
    let e = f.refused(&evil).await;
    assert_eq!(e.reason(), "untrusted_issuer");
    assert_eq!(
        e.to_string(),
        "attestation token issuer \"https://evil.example\" is not trusted by this broker: add \
         it under [[attestation.oidc]]"
    );
    let slash = f.token_with_claims(|c| {
        c.insert("iss".into(), json!(format!("{}/", f.issuer.issuer())));
    });
    assert_eq!(f.refused(&slash).await.reason(), "untrusted_issuer");
    let missing = f.token_with_claims(|c| {
        c.remove("iss");
    });
    assert_eq!(f.refused(&missing).await.reason(), "missing_claim");
    let not_string = f.token_with_claims(|c| {
        c.insert("iss".into(), json!([f.issuer.issuer()]));
    });
    assert_eq!(f.refused(&not_string).await.reason(), "missing_claim");
}

#[tokio::test]
async fn required_claims() {
    let f = fixture().await;
    for claim in ["exp", "sub"] {
        let t = f.token_with_claims(|c| {
            c.remove(claim);
        });
        let e = f.refused(&t).await;
        assert_eq!(e.reason(), "missing_claim", "{claim}");
        assert!(e.to_string().contains(claim), "{e}");
    }
    let t = f.token_with_claims(|c| {
        c.insert("exp".into(), json!("tomorrow"));
    });
    assert_eq!(f.refused(&t).await.reason(), "missing_claim");
    let t = f.token_with_claims(|c| {
        c.insert("sub".into(), json!(""));
    });
    assert_eq!(f.refused(&t).await.reason(), "missing_claim");
}

#[tokio::test]
async fn expiry_honours_the_leeway_only() {
    let f = fixture().await; // leeway 30 s
    let now = f.clock.now_for_test();
    let within = f.token_with_claims(|c| {
        c.insert("exp".into(), json!(now - 10));
        c.insert("iat".into(), json!(now - 100));
        c.insert("nbf".into(), json!(now - 100));
    });
    let id = f.verifier.verify(&within).await.unwrap();
    assert_eq!(id.expires_at, now - 10);
    let beyond = f.token_with_claims(|c| {
        c.insert("exp".into(), json!(now - 31));
    });
    let e = f.refused(&beyond).await;
    assert_eq!(e.reason(), "expired");
    assert!(e.to_string().contains("get a fresh token"), "{e}");
}

#[tokio::test]
async fn nbf_and_iat_in_the_future() {
    let f = fixture().await;
    let now = f.clock.now_for_test();
    for (claim, reason) in [("nbf", "not_yet_valid"), ("iat", "issued_in_future")] {
        let soon = f.token_with_claims(|c| {
            c.insert(claim.into(), json!(now + 20));
        });
        f.verifier
            .verify(&soon)
            .await
            .unwrap_or_else(|e| panic!("{claim} within leeway: {e}"));
        let later = f.token_with_claims(|c| {
            c.insert(claim.into(), json!(now + 60));
        });
        assert_eq!(f.refused(&later).await.reason(), reason);
    }
}

#[tokio::test]
async fn key_bearing_and_critical_headers_are_refused() {
    let f = fixture().await;
    let jwk: Value = serde_json::from_str(&f.issuer.jwks_json()).unwrap();
    for (name, value) in [
        ("crit", json!(["exp"])),
        ("jku", json!("https://evil.example/jwks")),
        ("x5u", json!("https://evil.example/cert.pem")),
        ("jwk", jwk["keys"][0].clone()),
        ("x5c", json!(["MIIB"])),
    ] {
        let mut extra = Map::new();
        extra.insert(name.into(), value);
        let t = f.issuer.token_with(TokenSpec {
            extra_header: extra,
            claims: f.claims(),
            ..TokenSpec::default()
        });
        let e = f.refused(&t).await;
        assert_eq!(e.reason(), "forbidden_header", "{name}");
        assert!(e.to_string().contains(name), "{e}");
    }
}

#[tokio::test]
async fn oversized_tokens_are_refused_before_parsing() {
    let f = fixture_with(OidcOptions {
        max_token_bytes: 4096,
        ..OidcOptions::default()
    })
    .await;
    let big = f.token_with_claims(|c| {
        c.insert("pad".into(), json!("x".repeat(5000)));
    });
    let e = f.refused(&big).await;
    assert!(
        matches!(e, AttestError::TooLarge { limit: 4096, .. }),
        "{e}"
    );
    assert_eq!(e.reason(), "too_large");
    // Garbage of that size is "too large", not "malformed": nothing was parsed.
    assert_eq!(f.refused(&"!".repeat(4097)).await.reason(), "too_large");
    assert_eq!(f.issuer.jwks_fetches(), 0);
}

#[tokio::test]
async fn malformed_inputs_are_refused() {
    let f = fixture().await;
    let good = f.issuer.token(SUB, AUD, 60);
    let parts: Vec<&str> = good.split('.').collect();
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let cases = [
        String::new(),
        "abc".into(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.extra"),
        format!("{}.{}.{}", "%%%", parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], "***", parts[2]),
        format!("{}.{}.{}", parts[0], parts[1], "!!"),
        format!("{}.{}.{}", b64("not json"), parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], b64("not json"), parts[2]),
        format!("{}.{}.{}", b64("\"a string\""), parts[1], parts[2]),
        format!("{}==.{}.{}", parts[0], parts[1], parts[2]),
        "\u{0}\u{1}\u{2}".into(),
        "..".into(),
        "ey.ey.ey".into(),
    ];
    for case in cases {
        let e = f.refused(&case).await;
        assert_eq!(e.reason(), "malformed", "{case:?}: {e}");
        assert!(
            !e.to_string().contains(parts[2]),
            "no token material in messages"
        );
    }
}

#[tokio::test]
async fn jwks_file_source_needs_no_network() {
    let issuer = DevIssuer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, issuer.jwks_json()).unwrap();
    let cfg = OidcIssuerConfig {
        jwks_file: Some(file),
        ca_file: None,
        ..config(&issuer, &dir)
    };
    let clock = Arc::new(ManualClock::new(unix_now()));
    let v = OidcVerifier::new(vec![cfg], OidcOptions::default(), clock)
        .await
        .unwrap();
    for alg in [TokenAlg::Rs256, TokenAlg::Es256, TokenAlg::EdDsa] {
        let t = issuer.token_with(TokenSpec {
            alg,
            claims: issuer.claims(SUB, AUD, 60),
            ..TokenSpec::default()
        });
        v.verify(&t).await.unwrap();
    }
    // Static keys: an unknown kid is not fetched for.
    let t = issuer.token_with(TokenSpec {
        kid: Some("nope".into()),
        claims: issuer.claims(SUB, AUD, 60),
        ..TokenSpec::default()
    });
    assert_eq!(v.verify(&t).await.unwrap_err().reason(), "unknown_key");
    assert_eq!(issuer.jwks_fetches(), 0);
}

#[tokio::test]
async fn jwks_uri_source_skips_discovery() {
    let issuer = DevIssuer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // An issuer name whose discovery would fail (its document names 127.0.0.1): with jwks_uri
    // set, no discovery happens.
    let alias = format!("https://localhost:{}", issuer.addr().port());
    let cfg = OidcIssuerConfig {
        issuer: alias.clone(),
        jwks_uri: Some(issuer.jwks_uri()),
        ..config(&issuer, &dir)
    };
    let clock = Arc::new(ManualClock::new(unix_now()));
    let v = OidcVerifier::new(vec![cfg], OidcOptions::default(), clock)
        .await
        .unwrap();
    let mut claims = issuer.claims(SUB, AUD, 60);
    claims["iss"] = json!(alias);
    let id = v
        .verify(&issuer.token_with(TokenSpec {
            claims,
            ..TokenSpec::default()
        }))
        .await
        .unwrap();
    assert_eq!(
        id.method,
        AttestationMethod::Oidc {
            issuer: alias,
            subject: SUB.into()
        }
    );
    assert_eq!(issuer.jwks_fetches(), 1);
}

#[tokio::test]
async fn discovery_issuer_must_match_exactly() {
    let issuer = DevIssuer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Same server (the certificate names localhost too), but the document says 127.0.0.1.
    let alias = format!("https://localhost:{}", issuer.addr().port());
    let cfg = OidcIssuerConfig {
        issuer: alias.clone(),
        ..config(&issuer, &dir)
    };
    let clock = Arc::new(ManualClock::new(unix_now()));
    let v = OidcVerifier::new(vec![cfg], OidcOptions::default(), clock)
        .await
        .unwrap();
    let mut claims = issuer.claims(SUB, AUD, 60);
    claims["iss"] = json!(alias);
    let t = issuer.token_with(TokenSpec {
        claims,
        ..TokenSpec::default()
    });
    let e = v.verify(&t).await.unwrap_err();
    assert_eq!(e.reason(), "keys_unavailable");
    assert!(e.to_string().contains("names issuer"), "{e}");
    assert_eq!(
        issuer.jwks_fetches(),
        0,
        "keys never fetched from a mismatched document"
    );
}

#[tokio::test]
async fn trailing_slash_issuer_discovers_correctly() {
    // The discovery URL is built without a doubled slash; the issuer still must match exactly,
    // so a configured trailing slash (absent from the document) is refused with a clear message.
    let issuer = DevIssuer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let slashed = format!("{}/", issuer.issuer());
    let cfg = OidcIssuerConfig {
        issuer: slashed.clone(),
        ..config(&issuer, &dir)
    };
    let v = OidcVerifier::new(
        vec![cfg],
        OidcOptions::default(),
        Arc::new(ManualClock::new(unix_now())),
    )
    .await
    .unwrap();
    let mut claims = issuer.claims(SUB, AUD, 60);
    claims["iss"] = json!(slashed);
    let e = v
        .verify(&issuer.token_with(TokenSpec {
            claims,
            ..TokenSpec::default()
        }))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("trailing slash"), "{e}");
}

#[tokio::test]
async fn keys_are_fetched_over_verified_https_only() {
    let issuer = DevIssuer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Without the issuer's CA the TLS handshake fails: no keys, nothing accepted.
    let cfg = OidcIssuerConfig {
        ca_file: None,
        ..config(&issuer, &dir)
    };
    let v = OidcVerifier::new(
        vec![cfg],
        OidcOptions::default(),
        Arc::new(ManualClock::new(unix_now())),
    )
    .await
    .unwrap();
    let e = v.verify(&issuer.token(SUB, AUD, 60)).await.unwrap_err();
    assert_eq!(e.reason(), "keys_unavailable");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    assert_eq!(issuer.jwks_fetches(), 0);
}

#[tokio::test]
async fn unreachable_issuer_is_keys_unavailable() {
    let issuer = DevIssuer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let cfg = OidcIssuerConfig {
        jwks_uri: Some(format!("https://127.0.0.1:{port}/jwks")),
        ..config(&issuer, &dir)
    };
    let v = OidcVerifier::new(
        vec![cfg],
        OidcOptions {
            http_timeout: Duration::from_secs(2),
            ..OidcOptions::default()
        },
        Arc::new(ManualClock::new(unix_now())),
    )
    .await
    .unwrap();
    let e = v.verify(&issuer.token(SUB, AUD, 60)).await.unwrap_err();
    assert_eq!(e.reason(), "keys_unavailable", "{e}");
}

#[tokio::test]
async fn configuration_errors_name_the_problem() {
    let issuer = DevIssuer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let clock = || Arc::new(ManualClock::new(0));
    let missing = dir.path().join("missing-ca.pem");
    let cfg = OidcIssuerConfig {
        ca_file: Some(missing.clone()),
        ..config(&issuer, &dir)
    };
    let e = OidcVerifier::new(vec![cfg], OidcOptions::default(), clock())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "config");
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );

    let not_pem = dir.path().join("not-pem.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let cfg = OidcIssuerConfig {
        ca_file: Some(not_pem.clone()),
        ..config(&issuer, &dir)
    };
    let e = OidcVerifier::new(vec![cfg], OidcOptions::default(), clock())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not-pem.pem"), "{e}");

    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, r#"{"keys":[{"kty":"oct","k":"AA"}]}"#).unwrap();
    let cfg = OidcIssuerConfig {
        jwks_file: Some(jwks),
        ..config(&issuer, &dir)
    };
    let e = OidcVerifier::new(vec![cfg], OidcOptions::default(), clock())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no usable signature key"), "{e}");

    let twice = vec![config(&issuer, &dir), config(&issuer, &dir)];
    let e = OidcVerifier::new(twice, OidcOptions::default(), clock())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("configured twice"), "{e}");
}

#[tokio::test]
async fn cached_attestation_expires_with_the_token() {
    let f = fixture().await;
    let token = f.issuer.token(SUB, AUD, 60);
    let first = f.verifier.verify(&token).await.unwrap();
    f.clock.advance(59);
    assert_eq!(
        f.verifier.verify(&token).await.unwrap(),
        first,
        "cache hit before exp"
    );
    f.clock.advance(20); // past exp, within the leeway: re-verified, still accepted
    f.verifier.verify(&token).await.unwrap();
    f.clock.advance(15); // past exp + leeway
    assert_eq!(f.refused(&token).await.reason(), "expired");
    assert_eq!(f.issuer.jwks_fetches(), 1);
}

#[tokio::test]
async fn refresh_task_refetches_and_stops_with_the_verifier() {
    let f = fixture_with(OidcOptions {
        refresh_interval: Duration::from_secs(1),
        ..OidcOptions::default()
    })
    .await;
    let handle = f.verifier.spawn_refresh();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        f.issuer.jwks_fetches() >= 2,
        "fetched at start and after one interval"
    );
    // Rotated keys are known without any unknown-kid refetch.
    f.issuer.rotate();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fetches = f.issuer.jwks_fetches();
    f.verifier
        .verify(&f.issuer.token(SUB, AUD, 60))
        .await
        .unwrap();
    assert_eq!(f.issuer.jwks_fetches(), fetches);
    let Fixture { verifier, .. } = f;
    drop(verifier);
    tokio::time::timeout(Duration::from_secs(3), handle)
        .await
        .unwrap()
        .unwrap();
}

trait NowForTest {
    fn now_for_test(&self) -> i64;
}
impl NowForTest for ManualClock {
    fn now_for_test(&self) -> i64 {
        taskpass_core::Clock::now(self)
    }
}

/// Builds a verifier with static keys and a runtime, for property tests (no network).
fn static_verifier() -> (tokio::runtime::Runtime, Arc<OidcVerifier>, String) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (v, token) = rt.block_on(async {
        let issuer = DevIssuer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwks.json");
        std::fs::write(&file, issuer.jwks_json()).unwrap();
        let cfg = OidcIssuerConfig {
            jwks_file: Some(file),
            ca_file: None,
            ..config(&issuer, &dir)
        };
        let v = OidcVerifier::new(
            vec![cfg],
            OidcOptions::default(),
            Arc::new(ManualClock::new(unix_now())),
        )
        .await
        .unwrap();
        (v, issuer.token(SUB, AUD, 600))
    });
    (rt, v, token)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048),
                                    dotted in "[A-Za-z0-9_\\-]{0,64}(\\.[A-Za-z0-9_\\-=]{0,64}){0,4}") {
        let (rt, v, _) = &*STATIC;
        let s = String::from_utf8_lossy(&bytes);
        prop_assert!(rt.block_on(v.verify(&s)).is_err());
        prop_assert!(rt.block_on(v.verify(&dotted)).is_err());
    }

    #[test]
    fn mutated_tokens_are_refused(index in 0usize..4096, replacement in "[A-Za-z0-9_\\-\\.]") {
        let (rt, v, token) = &*STATIC;
        let i = index % token.len();
        let mut mutated = token.clone();
        mutated.replace_range(i..=i, &replacement);
        if mutated != *token {
            prop_assert!(rt.block_on(v.verify(&mutated)).is_err(), "mutation at {} accepted", i);
        }
    }
}

static STATIC: std::sync::LazyLock<(tokio::runtime::Runtime, Arc<OidcVerifier>, String)> =
    std::sync::LazyLock::new(static_verifier);
