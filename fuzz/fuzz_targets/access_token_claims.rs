//! Access tokens that get past the signature check: the input edits a valid header and claim
//! set (drops, duplicates, wrong types, odd numbers, other encodings), the harness signs the
//! result with the broker's key, and both verifiers (the broker's `KeyRing`, used for
//! introspection, and the validator SDK's `Verifier`) must refuse without a panic or accept
//! only claims that hold: a valid signature, our issuer, the audience asked for, times that
//! cover `now`, and the same claims from both.
#![no_main]

mod common;

use std::sync::LazyLock;

use base64::Engine;
use common::{Compact, Dict, Doc, Encoding, NOW, Signature, Text};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair};
use taskpass_server::KeyRing;
use taskpass_verify::{DEFAULT_LEEWAY_SECS, DEFAULT_MAX_LIFETIME_SECS, KeySet, Verifier};

const ISSUER: &str = "https://fuzz.example";
const AGENT: &str = "spiffe://fuzz.example/agent/a";
const TASK: &str = "task_01HZY8W4C8V5N6J6R0B1B5X2QK";
const TOKEN: &str = "tok_01HZY8W4C8V5N6J6R0B1B5X2QM";

struct Keys {
    ring: KeyRing,
    verifier: Verifier,
    signer: Ed25519KeyPair,
    forger: Ed25519KeyPair,
    header_values: Vec<&'static str>,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| {
    let pkcs8 = common::ed25519_pkcs8(7);
    let ring = KeyRing::from_pkcs8(&pkcs8).unwrap();
    let signer = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).unwrap();
    let forger = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&common::ed25519_pkcs8(8)).unwrap();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signer.public_key().as_ref());
    let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x,
        "kid": ring.active_kid(), "alg": "EdDSA", "use": "sig"}]});
    let verifier = Verifier::new(ISSUER, KeySet::from_json(&jwks.to_string()).unwrap());
    let kid: &'static str = Box::leak(ring.active_kid().to_owned().into_boxed_str());
    let header_values = vec![
        "EdDSA",
        "at+jwt",
        kid,
        "ES256",
        "none",
        "HS256",
        "application/at+jwt",
        "AT+JWT",
        "JWT",
        "",
        "Ed25519",
    ];
    Keys {
        ring,
        verifier,
        signer,
        forger,
        header_values,
    }
});

const HEADER_NAMES: &[&str] = &[
    "alg", "typ", "kid", "crit", "jku", "jwk", "x5u", "x5c", "cty", "b64", "zip",
];
const CLAIM_NAMES: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "client_id",
    "scope",
    "txn",
    "act",
    "cnf",
    "x5t#S256",
    "jkt",
];
const CLAIM_VALUES: &[&str] = &[
    "api",
    ISSUER,
    AGENT,
    TASK,
    TOKEN,
    "read write",
    "",
    "other",
    "https://fuzz.example/",
    "API",
    " read  write ",
    "spiffe://fuzz.example/agent/b",
    "task_01hzy8w4c8v5n6j6r0b1b5x2qk",
    "\u{0}",
];

/// The `now` of the validator's check.
#[derive(Arbitrary, Debug)]
enum When {
    Now,
    Offset(i32),
    Any(i64),
}

#[derive(Arbitrary, Debug)]
struct Input {
    claims: Doc,
    header: Doc,
    compact: Compact,
    audience: Text,
    now: When,
}

fn base_claims() -> Vec<(&'static str, String)> {
    let s = |v: &str| serde_json::Value::from(v).to_string();
    vec![
        ("iss", s(ISSUER)),
        ("sub", s(AGENT)),
        ("aud", s("api")),
        ("exp", (NOW + 300).to_string()),
        ("iat", NOW.to_string()),
        ("nbf", NOW.to_string()),
        ("jti", s(TOKEN)),
        ("client_id", s(AGENT)),
        ("scope", s("read write")),
        ("txn", s(TASK)),
    ]
}

fuzz_target!(|input: Input| {
    let keys = &*KEYS;
    let s = |v: &str| serde_json::Value::from(v).to_string();
    let base_header = [
        ("alg", s("EdDSA")),
        ("typ", s("at+jwt")),
        ("kid", s(keys.ring.active_kid())),
    ];
    let header = input.header.render(
        &base_header,
        &Dict {
            names: HEADER_NAMES,
            values: &keys.header_values,
        },
    );
    let claims = input.claims.render(
        &base_claims(),
        &Dict {
            names: CLAIM_NAMES,
            values: CLAIM_VALUES,
        },
    );
    let token = input.compact.token(
        &header,
        &claims,
        |m| keys.signer.sign(m).as_ref().to_vec(),
        |m| keys.forger.sign(m).as_ref().to_vec(),
    );
    let audience = input.audience.pick(CLAIM_VALUES);
    let now = match input.now {
        When::Now => NOW,
        When::Offset(d) => NOW.saturating_add(i64::from(d)),
        When::Any(t) => t,
    };

    let by_ring = keys.ring.verify(&token);
    let by_verifier = keys.verifier.verify_at(&token, audience, now);
    if common::debug_enabled() {
        eprintln!("token: {token}\naudience: {audience:?} now: {now}");
        eprintln!("header: {}", String::from_utf8_lossy(&header));
        eprintln!("claims: {}", String::from_utf8_lossy(&claims));
        eprintln!("KeyRing: {by_ring:?}\nVerifier: {by_verifier:?}");
    }

    if by_ring.is_ok() || by_verifier.is_ok() {
        assert!(
            input.compact.validly_signed(),
            "a token without the broker's signature was accepted"
        );
    }
    if let Ok(v) = &by_verifier {
        let c = &v.claims;
        let leeway = i64::try_from(DEFAULT_LEEWAY_SECS).unwrap();
        assert_eq!(c.iss, ISSUER);
        assert_eq!(c.aud, audience);
        assert_eq!(v.audience, audience);
        assert!(now.saturating_sub(leeway) < c.exp, "expired token accepted");
        assert!(c.nbf <= now.saturating_add(leeway), "token not yet valid");
        assert!(
            c.iat <= now.saturating_add(leeway),
            "token issued in the future"
        );
        assert!(c.exp > c.nbf && c.exp > c.iat);
        for (name, value) in [
            ("sub", &c.sub),
            ("client_id", &c.client_id),
            ("jti", &c.jti),
            ("txn", &c.txn),
        ] {
            assert!(!value.is_empty(), "empty {name} accepted");
        }
        assert_eq!(v.subject, c.sub);
        assert_eq!(v.task_id, c.txn);
        assert_eq!(v.token_id, c.jti);
        assert_eq!(v.expires_at, c.exp);
        assert!(v.scopes.iter().all(|s| !s.is_empty() && !s.contains(' ')));
        if let Some(act) = &c.act {
            assert!(!act.sub.is_empty(), "empty act.sub accepted");
        }
    }
    // One profile: what one reads, the other reads the same way.
    if by_verifier.is_ok() {
        assert!(
            by_ring.is_ok(),
            "Verifier accepted what KeyRing refused: {by_ring:?}"
        );
    }
    if let Ok(c) = &by_ring {
        let fits = c.iss == ISSUER
            && c.aud == audience
            && taskpass_core::jwt::check_times(c, now, DEFAULT_LEEWAY_SECS).is_ok()
            && taskpass_core::jwt::check_lifetime(c, DEFAULT_MAX_LIFETIME_SECS).is_ok();
        if fits {
            assert!(
                by_verifier.is_ok(),
                "KeyRing accepted what Verifier refused: {by_verifier:?}"
            );
        }
    }
    if let (Ok(ring_claims), Ok(v)) = (&by_ring, &by_verifier) {
        assert_eq!(
            ring_claims, &v.claims,
            "the two verifiers read different claims"
        );
    }

    // The harness must reach acceptance: the unedited token is valid for both.
    let plain = input.compact.header_encoding == Encoding::UrlNoPad
        && input.compact.payload_encoding == Encoding::UrlNoPad
        && input.compact.signature_encoding == Encoding::UrlNoPad
        && input.compact.signature == Signature::Valid
        && input.compact.tail.is_none();
    if plain && input.header.is_base() && input.claims.is_base() {
        assert!(
            by_ring.is_ok(),
            "KeyRing refused the valid token: {by_ring:?}"
        );
        if audience == "api" && matches!(input.now, When::Now) {
            assert!(
                by_verifier.is_ok(),
                "Verifier refused the valid token: {by_verifier:?}"
            );
        }
    }
});
