//! The whole story against a real `taskpassd`: register, attest, start, issue, verify offline
//! (JWKS over HTTPS) and by introspection, follow revocations live, complete, audit.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use taskpass_e2e::*;
use taskpass_proto::v1 as pb;
use taskpass_testkit::{BROKER_ISSUER, DevIssuer, TestBroker, https_get};
use tokio_stream::StreamExt;

#[tokio::test]
async fn whole_story() {
    let Env {
        issuer,
        broker,
        mut admin,
        mut agent,
        mut val,
    } = Env::start().await.unwrap();

    let a = register(&mut admin, &issuer, "story-bot", "sub-story")
        .await
        .unwrap();
    assert_eq!(a.agent_id, "spiffe://example.org/agent/story-bot");

    let task = start(&mut agent, &issuer, "sub-story", &["read", "write"])
        .await
        .unwrap();
    assert_eq!(task.state, pb::TaskState::Open as i32);
    assert_eq!(task.agent_id, a.agent_id);
    assert_eq!(
        task.expires_at - task.created_at,
        3600,
        "default task duration"
    );

    let t1 = issue(&mut agent, &issuer, "sub-story", &task.task_id)
        .await
        .unwrap();
    assert_eq!(t1.scopes, ["read", "write"]);
    let narrow = agent
        .issue_token(pb::IssueTokenRequest {
            attestation: att(&issuer, "sub-story"),
            task_id: task.task_id.clone(),
            audience: API.into(),
            scopes: vec!["read".into()],
            ttl_seconds: 10_000,
            dpop_jkt: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(narrow.scopes, ["read"]);

    // Offline verification with the SDK, keys from the HTTPS JWKS endpoint.
    let (status, jwks) = https_get(
        &format!("{}/.well-known/jwks.json", broker.http_url),
        &broker.ca_pem,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let verifier = taskpass_verify::Verifier::new(
        BROKER_ISSUER,
        taskpass_verify::KeySet::from_json(&jwks).unwrap(),
    );
    let v = verifier.verify(&t1.access_token, API).unwrap();
    assert_eq!(v.client_id, a.agent_id);
    assert_eq!(v.subject, a.agent_id);
    assert_eq!(v.task_id, task.task_id);
    assert_eq!(v.token_id, t1.token_id);
    assert_eq!(v.expires_at, t1.expires_at);
    assert_eq!(v.expires_at - v.issued_at, 300, "default TTL");
    let vn = verifier.verify(&narrow.access_token, API).unwrap();
    assert_eq!(
        vn.expires_at - vn.issued_at,
        600,
        "clamped to the agent's max TTL"
    );
    assert!(
        verifier
            .verify(&t1.access_token, "https://other.example")
            .is_err()
    );

    // Header and claims exactly as the SPEC says.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = t1.access_token.split('.').collect();
    let header: serde_json::Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt");
    assert!(header["kid"].is_string());
    let claims: serde_json::Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    let mut keys: Vec<&str> = claims
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "aud",
            "client_id",
            "exp",
            "iat",
            "iss",
            "jti",
            "nbf",
            "scope",
            "status",
            "sub",
            "txn"
        ]
    );
    assert_eq!(claims["iss"], BROKER_ISSUER);
    let status = &claims["status"]["status_list"];
    assert!(status["idx"].is_u64(), "{status}");
    assert!(
        status["uri"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{BROKER_ISSUER}/statuslists/")),
        "{status}"
    );
    assert_eq!(claims["aud"], API);
    assert_eq!(claims["scope"], "read write");

    // RFC 8414 metadata, health, the same JWKS over gRPC.
    let (status, meta) = https_get(
        &format!("{}/.well-known/oauth-authorization-server", broker.http_url),
        &broker.ca_pem,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["issuer"], BROKER_ISSUER);
    assert!(
        meta["jwks_uri"]
            .as_str()
            .unwrap()
            .ends_with("/.well-known/jwks.json")
    );
    assert_eq!(
        https_get(&format!("{}/healthz", broker.http_url), &broker.ca_pem)
            .await
            .unwrap()
            .0,
        200
    );
    let grpc_jwks = val
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .jwks_json;
    assert_eq!(grpc_jwks, jwks);

    let intro = val
        .introspect(pb::IntrospectRequest {
            token: t1.access_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(intro.active, "{intro:?}");
    assert_eq!(intro.client_id, a.agent_id);
    assert_eq!(intro.task_id, task.task_id);
    assert_eq!(intro.aud, API);
    assert_eq!(intro.scopes, ["read", "write"]);
    assert_eq!(intro.token_id, t1.token_id);

    // A validator follows revocations; completing the task reaches it within a second.
    let mut watch = val
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let started = Instant::now();
    let done = agent
        .complete_task(pb::CompleteTaskRequest {
            attestation: att(&issuer, "sub-story"),
            task_id: task.task_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.revoked_tokens, 2);
    assert_eq!(done.task.unwrap().state, pb::TaskState::Completed as i32);
    let ev = tokio::time::timeout(Duration::from_secs(1), watch.next())
        .await
        .expect("revocation within 1 s")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(ev.kind, pb::RevocationKind::Task as i32);
    assert_eq!(ev.id, task.task_id);
    assert_eq!(ev.reason, "task_completed");
    assert!(ev.not_after >= t1.expires_at);

    for tok in [&t1.access_token, &narrow.access_token] {
        let intro = val
            .introspect(pb::IntrospectRequest { token: tok.clone() })
            .await
            .unwrap()
            .into_inner();
        assert!(!intro.active);
        assert_eq!(intro.inactive_reason, "task_completed");
    }
    let got = agent
        .get_task(pb::GetTaskRequest {
            attestation: att(&issuer, "sub-story"),
            task_id: task.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(got.state, pb::TaskState::Completed as i32);
    let again = issue(&mut agent, &issuer, "sub-story", &task.task_id)
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);

    // A late subscriber replays the backlog from the durable log.
    let mut late = val
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(1), late.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.sequence, ev.sequence);

    // A cursor past the log's head means the broker's log is not the one the validator saw.
    let beyond = val
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: 999,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(beyond.code(), tonic::Code::OutOfRange, "{beyond:?}");
    assert!(beyond.message().contains("start again from 0"));

    // Introspection of garbage is an answer, not an error.
    for (tok, reason) in [
        ("", "malformed"),
        ("a.b.c", "malformed"),
        (&*"x".repeat(20_000), "malformed"),
    ] {
        let r = val
            .introspect(pb::IntrospectRequest { token: tok.into() })
            .await
            .unwrap()
            .into_inner();
        assert!(!r.active);
        assert_eq!(r.inactive_reason, reason);
    }
    let mut forged = t1.access_token.clone();
    let n = forged.len();
    forged.replace_range(
        n - 4..,
        if forged.ends_with("AAAA") {
            "BBBB"
        } else {
            "AAAA"
        },
    );
    let r = val
        .introspect(pb::IntrospectRequest { token: forged })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.inactive_reason, "bad_signature");

    // The audit log has every decision and verifies; metrics count the RPCs.
    let tail = admin
        .tail_audit(pb::TailAuditRequest { limit: 100 })
        .await
        .unwrap()
        .into_inner()
        .entries;
    // An operator's read is audited too, before it runs: this tail is the last entry.
    let (this_read, tail) = tail.split_last().unwrap();
    assert_eq!(
        (this_read.action.as_str(), this_read.detail.as_str()),
        ("operator.read", "rpc=TailAudit permission=audit:read")
    );
    let actions: Vec<&str> = tail.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "operator.bootstrap",
            "agent.register",
            "start_task",
            "issue_token",
            "issue_token",
            "complete_task",
            "issue_token"
        ]
    );
    assert_eq!(tail.last().unwrap().outcome, "deny");
    let v = admin
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok);
    assert_eq!(v.entries, 9, "with the two reads");
    let (_, metrics) = https_get(&format!("{}/metrics", broker.http_url), &broker.ca_pem)
        .await
        .unwrap();
    assert!(
        metrics.contains("taskpass_rpc_requests_total{method=\"IssueToken\",code=\"OK\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "taskpass_rpc_requests_total{method=\"IssueToken\",code=\"FAILED_PRECONDITION\"} 1"
    ));
    assert!(metrics.contains("taskpass_store_tokens 2"));
}

#[tokio::test]
async fn deadline_expires_the_task_and_its_tokens() {
    let Env {
        issuer,
        broker: _broker,
        mut admin,
        mut agent,
        mut val,
    } = Env::start().await.unwrap();
    register(&mut admin, &issuer, "short", "sub-short")
        .await
        .unwrap();
    let task = agent
        .start_task(pb::StartTaskRequest {
            attestation: att(&issuer, "sub-short"),
            purpose: "quick".into(),
            audiences: vec![API.into()],
            scopes: vec!["read".into()],
            max_duration_seconds: 2,
            subject_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let tok = issue(&mut agent, &issuer, "sub-short", &task.task_id)
        .await
        .unwrap();
    assert!(
        tok.expires_at <= task.expires_at,
        "no token outlives its task"
    );
    let mut watch = val
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ev = tokio::time::timeout(Duration::from_secs(6), watch.next())
        .await
        .expect("sweeper revokes")
        .unwrap()
        .unwrap();
    assert_eq!(ev.id, task.task_id);
    assert_eq!(ev.reason, "task_expired");
    let r = val
        .introspect(pb::IntrospectRequest {
            token: tok.access_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.active);
    assert!(
        r.inactive_reason == "expired" || r.inactive_reason == "task_expired",
        "{r:?}"
    );
    let t = agent
        .get_task(pb::GetTaskRequest {
            attestation: att(&issuer, "sub-short"),
            task_id: task.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(t.state, pb::TaskState::Expired as i32);
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let issuer = DevIssuer::start().await.unwrap();
    let broker = TestBroker::start(&issuer).await.unwrap();
    let ch = taskpass_proto::connect(&broker.grpc_url, &broker.ca_pem, None)
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in [
        "",
        "taskpass.v1.AgentService",
        "taskpass.v1.ValidationService",
        "taskpass.v1.AdminService",
    ] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("{resp:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "taskpass.v1.AgentService",
        "taskpass.v1.ValidationService",
        "taskpass.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
}
