//! DPoP-bound tokens end to end: IssueToken with `dpop_jkt` binds the token to the agent's key
//! (`cnf.jkt`), Introspect reports it, and a validator accepts it only with a proof by that key.
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::json;
use taskpass_e2e::*;
use taskpass_proto::v1 as pb;
use taskpass_verify::{DpopRequest, Holder, KeySet, Verifier, VerifyError};
use tonic::Code;

struct DpopKey {
    pair: EcdsaKeyPair,
}

impl DpopKey {
    fn new() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Self {
            pair: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .unwrap(),
        }
    }
    fn jwk(&self) -> serde_json::Value {
        let p = self.pair.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])})
    }
    fn jkt(&self) -> String {
        taskpass_core::sha256_b64url(self.jwk().to_string().as_bytes())
    }
    fn proof(&self, method: &str, url: &str, token: &str, jti: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let h = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()});
        let c = json!({"jti": jti, "htm": method, "htu": url, "iat": now,
                       "ath": taskpass_core::sha256_b64url(token.as_bytes())});
        let input = format!(
            "{}.{}",
            B64.encode(h.to_string()),
            B64.encode(c.to_string())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpop_bound_token_is_accepted_only_with_a_proof_by_its_key() {
    let mut env = Env::start().await.unwrap();
    register(&mut env.admin, &env.issuer, "dpop-bot", "sub-dpop")
        .await
        .unwrap();
    let task = start(&mut env.agent, &env.issuer, "sub-dpop", &["read"])
        .await
        .unwrap();
    let key = DpopKey::new();
    let issue = |jkt: String| pb::IssueTokenRequest {
        attestation: att(&env.issuer, "sub-dpop"),
        task_id: task.task_id.clone(),
        audience: API.into(),
        dpop_jkt: jkt,
        ..Default::default()
    };
    let token = env
        .agent
        .issue_token(issue(key.jkt()))
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let info = env
        .val
        .introspect(pb::IntrospectRequest {
            token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(info.active);
    assert_eq!(info.cnf_jkt, key.jkt());
    assert!(info.cnf_x5t_s256.is_empty());

    let jwks = env
        .val
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .jwks_json;
    let v = Verifier::new(
        taskpass_testkit::BROKER_ISSUER,
        KeySet::from_json(&jwks).unwrap(),
    );
    let url = "https://api.example/v1/things";
    let proof = key.proof("GET", url, &token, "e2e-1");
    let req = DpopRequest {
        proof: &proof,
        method: "GET",
        url,
    };
    v.verify_held(&token, API, Holder::Dpop(req)).unwrap();
    assert_eq!(
        v.verify_held(&token, API, Holder::Dpop(req)).unwrap_err(),
        VerifyError::ReplayedProof
    );
    let thief = DpopKey::new();
    let stolen = thief.proof("GET", url, &token, "e2e-2");
    assert_eq!(
        v.verify_held(
            &token,
            API,
            Holder::Dpop(DpopRequest {
                proof: &stolen,
                method: "GET",
                url
            })
        )
        .unwrap_err(),
        VerifyError::WrongHolder
    );
    assert_eq!(
        v.verify(&token, API).unwrap_err(),
        VerifyError::ProofRequired
    );

    // A malformed thumbprint is refused, changing nothing.
    for bad in [
        "abc",
        "not a thumbprint at all, not at all, no!!",
        &"A".repeat(44),
    ] {
        let err = env.agent.issue_token(issue(bad.into())).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err:?}");
        assert!(err.message().contains("dpop_jkt"), "{err:?}");
    }
}
