//! Attestation tokens that get past the signature check: the input picks a signing key (two
//! keys of one issuer, one of another, one nobody trusts) and edits a valid header and claim
//! set; the harness signs the result and the OIDC verifier must refuse it without a panic, or
//! accept only an identity that holds: a valid signature by a key of the issuer it names, one
//! of that issuer's audiences, and times that cover the clock (with the leeway).
#![no_main]

mod common;

use std::sync::{Arc, LazyLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::{Compact, Dict, Doc, Encoding, NOW, Signature};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde_json::{Map, Value, json};
use taskpass_attest::{
    AttestationMethod, Attestor, Evidence, OidcIssuerConfig, OidcOptions, OidcVerifier,
};

const ISSUER_A: &str = "https://issuer.fuzz";
const ISSUER_B: &str = "https://other.fuzz";
const AUDIENCES_A: &[&str] = &["taskpass"];
const AUDIENCES_B: &[&str] = &["taskpass", "taskpass-b"];
const SUBJECT: &str = "repo:acme/deploy:ref:refs/heads/main";

/// Who signs the token.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum Signer {
    /// Issuer A's Ed25519 key `a1`.
    A1,
    /// Issuer A's P-256 key `a2`.
    A2,
    /// Issuer B's only key `b1` (Ed25519).
    B1,
    /// An Ed25519 key in no key set, presented as `a1` of issuer A.
    Untrusted,
}

impl Signer {
    /// (issuer, kid, alg) of the unedited token.
    fn claims_to_be(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::A1 | Self::Untrusted => (ISSUER_A, "a1", "EdDSA"),
            Self::A2 => (ISSUER_A, "a2", "ES256"),
            Self::B1 => (ISSUER_B, "b1", "EdDSA"),
        }
    }
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    verifier: Arc<OidcVerifier>,
    a1: Ed25519KeyPair,
    a2: EcdsaKeyPair,
    b1: Ed25519KeyPair,
    untrusted: Ed25519KeyPair,
    rng: SystemRandom,
}

fn okp(kid: &str, pair: &Ed25519KeyPair) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA", "use": "sig",
           "x": B64.encode(pair.public_key().as_ref())})
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let rng = SystemRandom::new();
    let ed = |seed| Ed25519KeyPair::from_pkcs8_maybe_unchecked(&common::ed25519_pkcs8(seed));
    let (a1, b1, untrusted) = (ed(1).unwrap(), ed(2).unwrap(), ed(3).unwrap());
    let p256 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let a2 =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, p256.as_ref(), &rng).unwrap();
    // Uncompressed point: 0x04, x, y.
    let point = a2.public_key().as_ref();
    let ec = json!({"kty": "EC", "crv": "P-256", "kid": "a2", "alg": "ES256",
                    "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])});

    let dir = std::env::temp_dir();
    let write = |name: &str, keys: Vec<Value>| {
        let path = dir.join(format!("taskpass-fuzz-{}-{name}.json", std::process::id()));
        std::fs::write(&path, json!({ "keys": keys }).to_string()).unwrap();
        path
    };
    let file_a = write("a", vec![okp("a1", &a1), ec]);
    let file_b = write("b", vec![okp("b1", &b1)]);
    let issuer = |issuer: &str, audiences: &[&str], file| OidcIssuerConfig {
        issuer: issuer.into(),
        audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
        jwks_uri: None,
        jwks_file: Some(file),
        ca_file: None,
    };
    let configs = vec![
        issuer(ISSUER_A, AUDIENCES_A, file_a.clone()),
        issuer(ISSUER_B, AUDIENCES_B, file_b.clone()),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let clock = Arc::new(taskpass_core::ManualClock::new(NOW));
    let verifier = rt
        .block_on(OidcVerifier::new(configs, OidcOptions::default(), clock))
        .unwrap();
    // The key files are read once, by `new`.
    let _ = std::fs::remove_file(file_a);
    let _ = std::fs::remove_file(file_b);
    Fixture {
        rt,
        verifier,
        a1,
        a2,
        b1,
        untrusted,
        rng,
    }
});

const HEADER_NAMES: &[&str] = &[
    "alg", "kid", "typ", "crit", "jku", "jwk", "x5u", "x5c", "cty", "b64", "zip",
];
const HEADER_VALUES: &[&str] = &[
    "EdDSA", "ES256", "RS256", "none", "HS256", "a1", "a2", "b1", "JWT", "", "Ed25519",
];
const CLAIM_NAMES: &[&str] = &[
    "iss", "sub", "aud", "exp", "iat", "nbf", "azp", "jti", "email",
];
const CLAIM_VALUES: &[&str] = &[
    ISSUER_A,
    ISSUER_B,
    "taskpass",
    "taskpass-b",
    SUBJECT,
    "",
    "https://issuer.fuzz/",
    "https://evil.fuzz",
    "TASKPASS",
];

#[derive(Arbitrary, Debug)]
struct Input {
    signer: Signer,
    claims: Doc,
    header: Doc,
    compact: Compact,
}

/// A NumericDate as the verifier reads it: integers, or finite numbers rounded down.
fn seconds(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite())
            .map(|f| f.floor() as i64)
    })
}

fuzz_target!(|input: Input| {
    let f = &*FIXTURE;
    let s = |v: &str| Value::from(v).to_string();
    let (iss, kid, alg) = input.signer.claims_to_be();
    let header = input.header.render(
        &[("alg", s(alg)), ("kid", s(kid)), ("typ", s("JWT"))],
        &Dict {
            names: HEADER_NAMES,
            values: HEADER_VALUES,
        },
    );
    let base_claims = [
        ("iss", s(iss)),
        ("sub", s(SUBJECT)),
        ("aud", s("taskpass")),
        ("exp", (NOW + 600).to_string()),
        ("iat", NOW.to_string()),
        ("nbf", NOW.to_string()),
    ];
    let claims = input.claims.render(
        &base_claims,
        &Dict {
            names: CLAIM_NAMES,
            values: CLAIM_VALUES,
        },
    );
    let sign = |m: &[u8]| match input.signer {
        Signer::A1 => f.a1.sign(m).as_ref().to_vec(),
        Signer::A2 => f.a2.sign(&f.rng, m).unwrap().as_ref().to_vec(),
        Signer::B1 => f.b1.sign(m).as_ref().to_vec(),
        Signer::Untrusted => f.untrusted.sign(m).as_ref().to_vec(),
    };
    let forge = |m: &[u8]| f.untrusted.sign(m).as_ref().to_vec();
    let token = input.compact.token(&header, &claims, sign, forge);

    let result =
        f.rt.block_on(f.verifier.attest(&Evidence::OidcToken(&token)));
    if common::debug_enabled() {
        eprintln!("signer: {:?}\ntoken: {token}", input.signer);
        eprintln!("header: {}", String::from_utf8_lossy(&header));
        eprintln!("claims: {}", String::from_utf8_lossy(&claims));
        eprintln!("attest: {result:?}");
    }

    if let Ok(identity) = &result {
        assert!(
            input.compact.validly_signed() && input.signer != Signer::Untrusted,
            "a token without a trusted signature was accepted"
        );
        let (issuer, subject) = match &identity.method {
            AttestationMethod::Oidc { issuer, subject } => (issuer, subject),
            other => panic!("unexpected method {other:?}"),
        };
        let (signer_issuer, audiences) = match input.signer {
            Signer::B1 => (ISSUER_B, AUDIENCES_B),
            _ => (ISSUER_A, AUDIENCES_A),
        };
        assert_eq!(
            issuer, signer_issuer,
            "accepted under another issuer than its key's"
        );
        let payload: Map<String, Value> =
            serde_json::from_slice(&claims).expect("accepted claims are a JSON object");
        assert_eq!(payload.get("iss"), Some(&Value::from(issuer.as_str())));
        assert!(!subject.is_empty());
        assert_eq!(payload.get("sub"), Some(&Value::from(subject.as_str())));
        let aud_ok = match payload.get("aud") {
            Some(Value::String(a)) => audiences.contains(&a.as_str()),
            Some(Value::Array(list)) => list
                .iter()
                .any(|a| a.as_str().is_some_and(|a| audiences.contains(&a))),
            _ => false,
        };
        assert!(aud_ok, "accepted without one of the issuer's audiences");
        let leeway = i64::from(OidcOptions::default().leeway_seconds);
        let exp = payload.get("exp").and_then(seconds);
        assert_eq!(exp, Some(identity.expires_at));
        assert!(NOW < identity.expires_at.saturating_add(leeway), "expired");
        for name in ["nbf", "iat"] {
            if let Some(t) = payload.get(name) {
                let t = seconds(t).expect("accepted times are numbers");
                assert!(t <= NOW.saturating_add(leeway), "{name} in the future");
            }
        }
    }

    // The harness must reach acceptance: the unedited token of a trusted key is valid.
    let plain = input.compact.header_encoding == Encoding::UrlNoPad
        && input.compact.payload_encoding == Encoding::UrlNoPad
        && input.compact.signature_encoding == Encoding::UrlNoPad
        && input.compact.signature == Signature::Valid
        && input.compact.tail.is_none();
    if plain
        && input.signer != Signer::Untrusted
        && input.header.is_base()
        && input.claims.is_base()
    {
        assert!(result.is_ok(), "the valid token was refused: {result:?}");
    }
});
