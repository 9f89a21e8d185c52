//! DPoP-bound tokens end to end: IssueToken with `dpop_jkt` binds the token to the agent's key
//! (`cnf.jkt`), Introspect reports it, and a validator accepts it only with a proof by that key.
#![allow(clippy::unwrap_used)]

use taskpass_e2e::*;
use taskpass_proto::v1 as pb;
use taskpass_verify::{DpopRequest, Holder, KeySet, Verifier, VerifyError};
use tonic::Code;

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
    let proof = key.proof("GET", url, Some(&token), "e2e-1");
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
    let stolen = thief.proof("GET", url, Some(&token), "e2e-2");
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

#[tokio::test]
async fn the_layer_takes_dpop_tokens_with_the_dpop_scheme_and_a_proof() {
    use taskpass_testkit::http_get;
    let mut env = Env::start().await.unwrap();
    register(&mut env.admin, &env.issuer, "dpop-web", "sub-dpop-web")
        .await
        .unwrap();
    let task = start(&mut env.agent, &env.issuer, "sub-dpop-web", &["read"])
        .await
        .unwrap();
    let key = DpopKey::new();
    let token = env
        .agent
        .issue_token(pb::IssueTokenRequest {
            attestation: att(&env.issuer, "sub-dpop-web"),
            task_id: task.task_id.clone(),
            audience: API.into(),
            dpop_jkt: key.jkt(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let jwks = env
        .val
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .jwks_json;
    let v = std::sync::Arc::new(Verifier::new(
        taskpass_testkit::BROKER_ISSUER,
        KeySet::from_json(&jwks).unwrap(),
    ));
    let app = axum::Router::new()
        .route(
            "/v1/things",
            axum::routing::get(
                |axum::extract::Extension(t): axum::extract::Extension<
                    taskpass_verify::VerifiedToken,
                >| async move { t.token_id },
            ),
        )
        .layer(taskpass_verify::middleware::BearerLayer::new(v, API));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/things", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    // The proof names the API as its clients address it: the audience's origin and the path.
    let htu = format!("{API}/v1/things");
    let dpop_auth = format!("DPoP {token}");

    let proof = key.proof("GET", &htu, Some(&token), "web-1");
    let ok = http_get(&url, &[("authorization", &dpop_auth), ("dpop", &proof)])
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
    // The same proof again: a replay.
    let replay = http_get(&url, &[("authorization", &dpop_auth), ("dpop", &proof)])
        .await
        .unwrap();
    assert_eq!(replay.status, 401);
    assert!(replay.body.contains("already used"), "{}", replay.body);
    // The DPoP scheme without a proof, a proof for another URL or method, the Bearer scheme.
    let none = http_get(&url, &[("authorization", &dpop_auth)])
        .await
        .unwrap();
    assert_eq!(none.status, 401);
    let elsewhere = key.proof("GET", &format!("{API}/v1/other"), Some(&token), "web-2");
    let a = http_get(&url, &[("authorization", &dpop_auth), ("dpop", &elsewhere)])
        .await
        .unwrap();
    assert_eq!(a.status, 401, "{}", a.body);
    let post = key.proof("POST", &htu, Some(&token), "web-3");
    let a = http_get(&url, &[("authorization", &dpop_auth), ("dpop", &post)])
        .await
        .unwrap();
    assert_eq!(a.status, 401, "{}", a.body);
    let proof = key.proof("GET", &htu, Some(&token), "web-4");
    let bearer = http_get(
        &url,
        &[
            ("authorization", &format!("Bearer {token}")),
            ("dpop", &proof),
        ],
    )
    .await
    .unwrap();
    assert_eq!(bearer.status, 401, "{}", bearer.body);
    // Without any proof at all, a bound token is not a bearer token.
    let bare = http_get(&url, &[("authorization", &format!("Bearer {token}"))])
        .await
        .unwrap();
    assert_eq!(bare.status, 401, "{}", bare.body);
}
