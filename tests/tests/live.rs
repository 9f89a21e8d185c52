//! `taskpass-verify` following a real broker live: revocation of a token, a task, an agent and
//! a certificate reaches a running verifier over the real stream; the broker killed and
//! restarted mid-stream, the verifier resumes from its cursor without missing an event; the
//! staleness budget fails closed and the state shows in the status and the metrics.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use taskpass_e2e::*;
use taskpass_proto::v1 as pb;
use taskpass_testkit::BROKER_ISSUER;
use taskpass_verify::{Fallback, Holder, LiveConfig, Verifier, VerifyError};

async fn live_verifier(env: &mut Env, budget: Duration, fallback: Fallback) -> Arc<Verifier> {
    let (cert, key) = add_validator(&mut env.admin, "live-api", &[API])
        .await
        .unwrap();
    let config = LiveConfig::new(
        env.broker.grpc_url.clone(),
        BROKER_ISSUER,
        env.broker.ca_pem.clone(),
        cert,
        key,
    )
    .with_staleness_budget(budget)
    .with_fallback(fallback);
    Verifier::connect(config).await.unwrap()
}

/// Waits (at most 5 s) until `check` holds; returns how long it took.
async fn within(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: not within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

fn refused_for(v: &Verifier, token: &str, reason: &str) -> bool {
    matches!(v.verify(token, API), Err(e) if e.reason() == reason)
}

async fn token_for(env: &mut Env, subject: &str) -> (pb::Task, String) {
    let task = start(&mut env.agent, &env.issuer, subject, &["read"])
        .await
        .unwrap();
    let t = issue(&mut env.agent, &env.issuer, subject, &task.task_id)
        .await
        .unwrap();
    (task, t.access_token)
}

#[tokio::test]
async fn every_kind_of_revocation_reaches_a_running_verifier() {
    let mut env = Env::start().await.unwrap();
    register(&mut env.admin, &env.issuer, "live-bot", "sub-live")
        .await
        .unwrap();
    let v = live_verifier(&mut env, Duration::from_secs(10), Fallback::FailClosed).await;
    assert!(v.revocation_status().unwrap().current);

    // A token.
    let (_, token) = token_for(&mut env, "sub-live").await;
    v.verify(&token, API).unwrap();
    let id = v.verify(&token, API).unwrap().token_id;
    env.admin
        .revoke_token(pb::RevokeTokenRequest {
            token_id: id,
            reason: "leaked".into(),
        })
        .await
        .unwrap();
    within("token revocation", || refused_for(&v, &token, "revoked")).await;

    // A task, with its other tokens.
    let (task, token) = token_for(&mut env, "sub-live").await;
    let second = issue(&mut env.agent, &env.issuer, "sub-live", &task.task_id)
        .await
        .unwrap()
        .access_token;
    v.verify(&second, API).unwrap();
    env.agent
        .complete_task(pb::CompleteTaskRequest {
            attestation: att(&env.issuer, "sub-live"),
            task_id: task.task_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    within("task completion", || {
        refused_for(&v, &token, "task_completed") && refused_for(&v, &second, "task_completed")
    })
    .await;

    // An agent: every task at once, one entry.
    let (_, a) = token_for(&mut env, "sub-live").await;
    let (_, b) = token_for(&mut env, "sub-live").await;
    let before = v.revocation_status().unwrap().tracked;
    env.admin
        .set_agent_state(pb::SetAgentStateRequest {
            name: "live-bot".into(),
            state: pb::AgentState::Offboarded.into(),
            reason: "done".into(),
        })
        .await
        .unwrap();
    within("offboarding", || {
        refused_for(&v, &a, "agent_offboarded") || refused_for(&v, &a, "task_revoked")
    })
    .await;
    within("offboarding, second task", || v.verify(&b, API).is_err()).await;
    // One entry per open task (three: the first token's task stayed open) and one for the
    // agent, however many tokens they had.
    let s = v.revocation_status().unwrap();
    assert_eq!(s.tracked, before + 4, "{s:?}");
    assert!(
        v.metrics_text()
            .contains("taskpass_verifier_revocations_current 1")
    );
}

#[tokio::test]
async fn a_certificate_revocation_refuses_the_tokens_bound_to_it() {
    let mut env = Env::start().await.unwrap();
    let (cert, key) = certified_agent(&mut env.admin, "bound").await.unwrap();
    let mut agent = pb::agent_service_client::AgentServiceClient::new(
        taskpass_proto::connect(
            &env.broker.grpc_url,
            &env.broker.ca_pem,
            Some((&cert.certificate_pem, &key)),
        )
        .await
        .unwrap(),
    );
    let mtls = || {
        Some(pb::Attestation {
            method: Some(pb::attestation::Method::Mtls(pb::MtlsAttestation {})),
        })
    };
    let task = agent
        .start_task(pb::StartTaskRequest {
            attestation: mtls(),
            purpose: "bound".into(),
            audiences: vec![API.into()],
            scopes: vec!["read".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let token = agent
        .issue_token(pb::IssueTokenRequest {
            attestation: mtls(),
            task_id: task.task_id,
            audience: API.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let v = live_verifier(&mut env, Duration::from_secs(10), Fallback::FailClosed).await;
    use rustls_pki_types::pem::PemObject as _;
    let der =
        rustls_pki_types::CertificateDer::from_pem_slice(cert.certificate_pem.as_bytes()).unwrap();
    v.verify_held(&token, API, Holder::Certificate(&der))
        .unwrap();
    env.admin
        .revoke_certificate(pb::RevokeCertificateRequest {
            serial: cert.serial,
            reason: "key leaked".into(),
        })
        .await
        .unwrap();
    within("certificate revocation", || {
        matches!(
            v.verify_held(&token, API, Holder::Certificate(&der)),
            Err(VerifyError::Revoked("certificate_revoked"))
        )
    })
    .await;
}

#[tokio::test]
async fn the_verifier_resumes_from_its_cursor_after_the_broker_restarts() {
    let mut env = Env::start().await.unwrap();
    env.broker.pin_ports().unwrap();
    register(&mut env.admin, &env.issuer, "resumer", "sub-resume")
        .await
        .unwrap();
    let v = live_verifier(&mut env, Duration::from_secs(30), Fallback::FailClosed).await;
    let mut tokens = Vec::new();
    for _ in 0..6 {
        tokens.push(token_for(&mut env, "sub-resume").await);
    }
    // One revocation before the crash.
    env.admin
        .revoke_task(pb::RevokeTaskRequest {
            task_id: tokens[0].0.task_id.clone(),
            reason: "before".into(),
        })
        .await
        .unwrap();
    within("first revocation", || v.verify(&tokens[0].1, API).is_err()).await;
    let cursor = v.revocation_status().unwrap().cursor;

    env.broker.kill9().unwrap();
    within("the stream to notice", || {
        !v.revocation_status().unwrap().connected
    })
    .await;
    env.broker.restart().await.unwrap();
    // Revocations made right after the restart, while the verifier is still backing off:
    // it must get every one of them from its cursor.
    let mut admin = env.broker.admin().await.unwrap();
    for (task, _) in &tokens[1..5] {
        admin
            .revoke_task(pb::RevokeTaskRequest {
                task_id: task.task_id.clone(),
                reason: "after".into(),
            })
            .await
            .unwrap();
    }
    within("every revocation after the restart", || {
        tokens[1..5]
            .iter()
            .all(|(_, t)| refused_for(&v, t, "task_revoked"))
    })
    .await;
    let s = v.revocation_status().unwrap();
    assert_eq!(s.cursor, cursor + 4, "{s:?}");
    assert!(s.reconnects >= 1, "{s:?}");
    assert!(s.current, "{s:?}");
    // The one never revoked still passes.
    v.verify(&tokens[5].1, API).unwrap();
}

#[tokio::test]
async fn past_the_staleness_budget_verification_fails_closed() {
    let mut env = Env::start().await.unwrap();
    register(&mut env.admin, &env.issuer, "stale-bot", "sub-stale")
        .await
        .unwrap();
    let (_, token) = token_for(&mut env, "sub-stale").await;
    let v = live_verifier(&mut env, Duration::from_secs(2), Fallback::Introspect).await;
    v.verify(&token, API).unwrap();
    v.verify_request(&token, API, Holder::Nothing)
        .await
        .unwrap();

    env.broker.kill9().unwrap();
    // Within the budget the last known state still holds...
    v.verify(&token, API).unwrap();
    // ...past it, nothing passes.
    let waited = within("staleness", || {
        matches!(v.verify(&token, API), Err(VerifyError::Stale))
    })
    .await;
    assert!(waited >= Duration::from_secs(1), "stale after {waited:?}");
    let s = v.revocation_status().unwrap();
    assert!(!s.current && !s.connected, "{s:?}");
    assert!(s.last_error.is_some(), "{s:?}");
    assert!(
        v.metrics_text()
            .contains("taskpass_verifier_revocations_current 0")
    );
    // The Introspect fallback cannot reach the broker either: still refused.
    let err = v
        .verify_request(&token, API, Holder::Nothing)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "broker_unavailable", "{err:?}");
}

#[tokio::test]
async fn a_verifier_without_a_validator_credential_cannot_connect() {
    let env = Env::start().await.unwrap();
    // A self-signed certificate the broker never issued: refused, and connect says so
    // rather than returning a verifier that refuses everything.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["x".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let config = LiveConfig::new(
        env.broker.grpc_url.clone(),
        BROKER_ISSUER,
        env.broker.ca_pem.clone(),
        cert.pem(),
        key.serialize_pem(),
    );
    let err = Verifier::connect(config).await.unwrap_err();
    assert_eq!(err.reason(), "broker_unavailable", "{err:?}");
}
