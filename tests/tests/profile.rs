//! One verification profile: the same table of crafted tokens, signed with the broker's own
//! key where the case needs it, is refused for the same reason by the broker's Introspect and by
//! the validator SDK.
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::Ed25519KeyPair;
use serde_json::{Value, json};
use taskpass_e2e::*;
use taskpass_proto::v1 as pb;
use taskpass_verify::{KeySet, Verifier};

enum Sig {
    Broker,
    Other,
    None,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspect_and_the_sdk_refuse_the_same_tokens_for_the_same_reasons() {
    let mut env = Env::start().await.unwrap();
    let pkcs8 = std::fs::read(env.broker.data_dir().join("signing-key.p8")).unwrap();
    let broker_key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).unwrap();
    let rng = ring::rand::SystemRandom::new();
    let other =
        Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
    let jwks = env
        .val
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .jwks_json;
    let kid = serde_json::from_str::<Value>(&jwks).unwrap()["keys"][0]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    // The SDK as strict as the broker is with its own tokens: no leeway, its max TTL (900 s).
    let sdk = Verifier::new(
        taskpass_testkit::BROKER_ISSUER,
        KeySet::from_json(&jwks).unwrap(),
    )
    .with_leeway(0)
    .with_max_lifetime(900);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let header = |edit: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut h = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid});
        edit(h.as_object_mut().unwrap());
        h.to_string()
    };
    let claims = |edit: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = json!({
            "iss": taskpass_testkit::BROKER_ISSUER,
            "sub": "spiffe://example.org/agent/crafted", "client_id": "spiffe://example.org/agent/crafted",
            "aud": API, "exp": now + 300, "iat": now - 100, "nbf": now - 100,
            "jti": "tok_01HZZZZZZZZZZZZZZZZZZZZZZZ", "scope": "read",
            "txn": "task_01HZZZZZZZZZZZZZZZZZZZZZZZ",
        });
        edit(c.as_object_mut().unwrap());
        c.to_string()
    };
    let sign = |h: &str, c: &str, sig: &Sig| {
        let input = format!("{}.{}", B64.encode(h), B64.encode(c));
        let s = match sig {
            Sig::Broker => B64.encode(broker_key.sign(input.as_bytes())),
            Sig::Other => B64.encode(other.sign(input.as_bytes())),
            Sig::None => String::new(),
        };
        format!("{input}.{s}")
    };
    let none = |_: &mut serde_json::Map<String, Value>| {};
    let cases: Vec<(&str, String, String, Sig, &str)> = vec![
        (
            "alg none",
            header(&|h| {
                h.insert("alg".into(), json!("none"));
            }),
            claims(&none),
            Sig::None,
            "bad_signature",
        ),
        (
            "alg HS256",
            header(&|h| {
                h.insert("alg".into(), json!("HS256"));
            }),
            claims(&none),
            Sig::Broker,
            "bad_signature",
        ),
        (
            "typ JWT",
            header(&|h| {
                h.insert("typ".into(), json!("JWT"));
            }),
            claims(&none),
            Sig::Broker,
            "malformed",
        ),
        (
            "crit header",
            header(&|h| {
                h.insert("crit".into(), json!(["exp"]));
            }),
            claims(&none),
            Sig::Broker,
            "malformed",
        ),
        (
            "jwk header",
            header(&|h| {
                h.insert("jwk".into(), json!({"kty": "OKP"}));
            }),
            claims(&none),
            Sig::Broker,
            "malformed",
        ),
        (
            "no kid",
            header(&|h| {
                h.remove("kid");
            }),
            claims(&none),
            Sig::Broker,
            "malformed",
        ),
        (
            "unknown kid",
            header(&|h| {
                h.insert("kid".into(), json!("someone-else"));
            }),
            claims(&none),
            Sig::Broker,
            "unknown_key",
        ),
        (
            "another key",
            header(&none),
            claims(&none),
            Sig::Other,
            "bad_signature",
        ),
        (
            "wrong issuer",
            header(&none),
            claims(&|c| {
                c.insert("iss".into(), json!("https://evil.example"));
            }),
            Sig::Broker,
            "wrong_issuer",
        ),
        (
            "expired",
            header(&none),
            claims(&|c| {
                c.insert("exp".into(), json!(now - 10));
            }),
            Sig::Broker,
            "expired",
        ),
        (
            "not yet valid",
            header(&none),
            claims(&|c| {
                c.insert("nbf".into(), json!(now + 100));
            }),
            Sig::Broker,
            "not_yet_valid",
        ),
        (
            "issued in the future",
            header(&none),
            claims(&|c| {
                c.insert("iat".into(), json!(now + 100));
            }),
            Sig::Broker,
            "not_yet_valid",
        ),
        (
            "longer than the max TTL",
            header(&none),
            claims(&|c| {
                c.insert("exp".into(), json!(now + 5000));
            }),
            Sig::Broker,
            "malformed",
        ),
        (
            "act null",
            header(&none),
            claims(&|c| {
                c.insert("act".into(), Value::Null);
            }),
            Sig::Broker,
            "malformed",
        ),
        (
            "unknown cnf",
            header(&none),
            claims(&|c| {
                c.insert("cnf".into(), json!({"x5t": "abc"}));
            }),
            Sig::Broker,
            "malformed",
        ),
        (
            "no jti",
            header(&none),
            claims(&|c| {
                c.remove("jti");
            }),
            Sig::Broker,
            "malformed",
        ),
        (
            "exp not a number",
            header(&none),
            claims(&|c| {
                c.insert("exp".into(), json!("soon"));
            }),
            Sig::Broker,
            "malformed",
        ),
        (
            "aud an array",
            header(&none),
            claims(&|c| {
                c.insert("aud".into(), json!([API]));
            }),
            Sig::Broker,
            "malformed",
        ),
        (
            "a claim twice",
            header(&none),
            claims(&none).replacen('{', &format!(r#"{{"aud":"{API}","#), 1),
            Sig::Broker,
            "malformed",
        ),
        (
            "a header name twice",
            header(&none).replacen('{', r#"{"alg":"EdDSA","#, 1),
            claims(&none),
            Sig::Broker,
            "malformed",
        ),
    ];
    for (case, h, c, sig, expected) in &cases {
        let token = sign(h, c, sig);
        let by_sdk = sdk.verify_at(&token, API, now).unwrap_err().reason();
        let by_broker = env
            .val
            .introspect(pb::IntrospectRequest {
                token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!by_broker.active, "{case}");
        assert_eq!(by_sdk, *expected, "{case}: the SDK");
        assert_eq!(by_broker.inactive_reason, *expected, "{case}: Introspect");
    }
    // The untouched token is valid to the SDK (and unknown to the broker's records, which only
    // Introspect can tell).
    let good = sign(&header(&none), &claims(&none), &Sig::Broker);
    sdk.verify_at(&good, API, now).unwrap();
    let r = env
        .val
        .introspect(pb::IntrospectRequest { token: good })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.inactive_reason, "unknown_token");
    let _ = &mut env;
}
