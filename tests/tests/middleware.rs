//! The tower layer in front of real servers: the example axum API on loopback over real HTTP,
//! and a tonic server over real HTTP/2. Its 401/403/400/503 answers carry RFC 6750
//! `WWW-Authenticate` challenges and JSON bodies; it serves RFC 9728 metadata and names it in
//! every 401; a revoked token is refused once the stream brings the revocation.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use taskpass_e2e::*;
use taskpass_proto::v1 as pb;
use taskpass_testkit::{BROKER_ISSUER, HttpAnswer, http_get};
use taskpass_verify::middleware::BearerLayer;
use taskpass_verify::{LiveConfig, Verifier};

async fn setup(budget: Duration) -> (Env, Arc<Verifier>) {
    let mut env = Env::start().await.unwrap();
    env.admin
        .register_agent(pb::RegisterAgentRequest {
            agent: Some(pb::Agent {
                name: "caller".into(),
                owner: "team".into(),
                purpose: "middleware test".into(),
                oidc: vec![pb::OidcBinding {
                    issuer: env.issuer.issuer().into(),
                    subject: "sub-mw".into(),
                }],
                audiences: vec![API.into()],
                scopes: vec!["read".into(), protected_api::READ_SCOPE.into()],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let (cert, key) = add_validator(&mut env.admin, "mw", &[API]).await.unwrap();
    let v = Verifier::connect(
        LiveConfig::new(
            env.broker.grpc_url.clone(),
            BROKER_ISSUER,
            env.broker.ca_pem.clone(),
            cert,
            key,
        )
        .with_staleness_budget(budget),
    )
    .await
    .unwrap();
    (env, v)
}

async fn token(env: &mut Env, scopes: &[&str]) -> (pb::Task, String) {
    let task = start(&mut env.agent, &env.issuer, "sub-mw", scopes)
        .await
        .unwrap();
    let t = issue(&mut env.agent, &env.issuer, "sub-mw", &task.task_id)
        .await
        .unwrap();
    (task, t.access_token)
}

async fn serve_axum(v: Arc<Verifier>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, protected_api::app(v, API)).await });
    base
}

fn challenge(a: &HttpAnswer) -> String {
    a.headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn json(a: &HttpAnswer) -> serde_json::Value {
    serde_json::from_str(&a.body).unwrap()
}

const METADATA: &str = "https://api.example/.well-known/oauth-protected-resource";

#[tokio::test]
async fn the_layer_answers_as_rfc_6750_and_9728_say() {
    let (mut env, v) = setup(Duration::from_secs(2)).await;
    let base = serve_axum(Arc::clone(&v)).await;
    let tickets = format!("{base}/tickets");

    // No token: 401, a challenge naming the metadata, no error code (RFC 6750 §3.1).
    let a = http_get(&tickets, &[]).await.unwrap();
    assert_eq!(a.status, 401);
    assert_eq!(
        challenge(&a),
        format!("Bearer resource_metadata=\"{METADATA}\"")
    );

    // The metadata itself needs no token.
    let m = http_get(&format!("{base}/.well-known/oauth-protected-resource"), &[])
        .await
        .unwrap();
    assert_eq!(m.status, 200);
    let m = json(&m);
    assert_eq!(m["resource"], API);
    assert_eq!(
        m["authorization_servers"],
        serde_json::json!([BROKER_ISSUER])
    );
    assert_eq!(m["scopes_supported"], serde_json::json!(["tickets:read"]));

    // A forged token: 401 invalid_token, with why, and a JSON body.
    let a = http_get(&tickets, &[("authorization", "Bearer a.b.c")])
        .await
        .unwrap();
    assert_eq!(a.status, 401);
    let c = challenge(&a);
    assert!(
        c.starts_with("Bearer error=\"invalid_token\", error_description=\""),
        "{c}"
    );
    assert!(
        c.ends_with(&format!("resource_metadata=\"{METADATA}\"")),
        "{c}"
    );
    assert_eq!(json(&a)["error"], "invalid_token");
    assert_eq!(a.headers["cache-control"], "no-store");

    // Not a bearer token at all: 400 invalid_request.
    for bad in ["Basic dXNlcjpwYXNz", "Bearer", "token-without-scheme"] {
        let a = http_get(&tickets, &[("authorization", bad)]).await.unwrap();
        assert!(a.status == 400 || a.status == 401, "{bad}: {}", a.status);
        if a.status == 400 {
            assert!(challenge(&a).contains("error=\"invalid_request\""), "{bad}");
        }
    }

    // A good token without the scope: 403 insufficient_scope naming it.
    let (_, read_only) = token(&mut env, &["read"]).await;
    let a = http_get(
        &tickets,
        &[("authorization", &format!("Bearer {read_only}"))],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 403);
    let c = challenge(&a);
    assert!(c.contains("error=\"insufficient_scope\""), "{c}");
    assert!(c.contains("scope=\"tickets:read\""), "{c}");
    assert_eq!(json(&a)["error"], "insufficient_scope");

    // The right token: served, with its claims in the handler.
    let (task, good) = token(&mut env, &["tickets:read"]).await;
    let bearer = format!("Bearer {good}");
    let a = http_get(&tickets, &[("authorization", &bearer)])
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(json(&a)["task"], task.task_id.as_str());
    // The scheme is case-insensitive (RFC 7235).
    let a = http_get(&tickets, &[("authorization", &format!("bearer {good}"))])
        .await
        .unwrap();
    assert_eq!(a.status, 200);

    // Revoked: refused as soon as the stream says so.
    env.admin
        .revoke_task(pb::RevokeTaskRequest {
            task_id: task.task_id.clone(),
            reason: "test".into(),
        })
        .await
        .unwrap();
    let start = Instant::now();
    let a = loop {
        let a = http_get(&tickets, &[("authorization", &bearer)])
            .await
            .unwrap();
        if a.status != 200 || start.elapsed() > Duration::from_secs(5) {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert_eq!(a.status, 401);
    assert!(challenge(&a).contains("task_revoked"), "{}", challenge(&a));

    // The metrics say the state is current; then the broker goes away and, past the
    // budget, nothing is served: 503 with Retry-After, not blamed on the token.
    let m = http_get(&format!("{base}/metrics"), &[]).await.unwrap();
    assert!(
        m.body.contains("taskpass_verifier_revocations_current 1"),
        "{}",
        m.body
    );
    let (_, fresh) = token(&mut env, &["tickets:read"]).await;
    env.broker.kill9().unwrap();
    let fresh = format!("Bearer {fresh}");
    let start = Instant::now();
    let a = loop {
        let a = http_get(&tickets, &[("authorization", &fresh)])
            .await
            .unwrap();
        if a.status != 200 || start.elapsed() > Duration::from_secs(10) {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.headers["retry-after"], "1");
    assert!(a.headers.get("www-authenticate").is_none());
    let m = http_get(&format!("{base}/metrics"), &[]).await.unwrap();
    assert!(
        m.body.contains("taskpass_verifier_revocations_current 0"),
        "{}",
        m.body
    );
}

#[tokio::test]
async fn a_tonic_server_behind_the_layer_answers_in_grpc_statuses() {
    let (mut env, v) = setup(Duration::from_secs(10)).await;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layer = BearerLayer::new(v, API).require_scope("tickets:read");
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = tonic_health::pb::health_client::HealthClient::new(channel);
    let check = |token: Option<String>| {
        let mut client = client.clone();
        async move {
            let mut req = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            });
            if let Some(t) = token {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            client.check(req).await
        }
    };
    let err = check(None).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = check(Some("a.b.c".into())).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("malformed"), "{err:?}");
    let (_, read_only) = token(&mut env, &["read"]).await;
    let err = check(Some(read_only)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let (_, good) = token(&mut env, &["tickets:read"]).await;
    check(Some(good)).await.unwrap();
}
