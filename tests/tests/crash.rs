//! kill -9 during a burst of IssueToken calls, restart on the same data dir: every token that
//! was acknowledged is still recorded, and every revocation still holds.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use taskpass_e2e::*;
use taskpass_proto::v1 as pb;

use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_burst_loses_nothing_acknowledged() {
    let Env {
        issuer,
        mut broker,
        mut admin,
        mut agent,
        ..
    } = Env::start().await.unwrap();
    register(&mut admin, &issuer, "crashy", "sub-crash")
        .await
        .unwrap();

    // Revocations made before the crash.
    let done = start(&mut agent, &issuer, "sub-crash", &["read"])
        .await
        .unwrap();
    let done_tok = issue(&mut agent, &issuer, "sub-crash", &done.task_id)
        .await
        .unwrap();
    agent
        .complete_task(pb::CompleteTaskRequest {
            attestation: att(&issuer, "sub-crash"),
            task_id: done.task_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let task = start(&mut agent, &issuer, "sub-crash", &["read"])
        .await
        .unwrap();
    let revoked_tok = issue(&mut agent, &issuer, "sub-crash", &task.task_id)
        .await
        .unwrap();
    admin
        .revoke_token(pb::RevokeTokenRequest {
            token_id: revoked_tok.token_id.clone(),
            reason: "test".into(),
        })
        .await
        .unwrap();

    // The burst: 48 callers over 4 connections, each remembering what was acknowledged.
    let acked: Arc<Mutex<Vec<pb::IssueTokenResponse>>> = Arc::default();
    let token = issuer.token("sub-crash", taskpass_testkit::ATTESTATION_AUDIENCE, 300);
    let mut workers = Vec::new();
    for w in 0..48 {
        let ch = taskpass_proto::connect(&broker.grpc_url, &broker.ca_pem, None)
            .await
            .unwrap();
        let _ = w;
        let acked = Arc::clone(&acked);
        let (token, task_id) = (token.clone(), task.task_id.clone());
        workers.push(tokio::spawn(async move {
            let mut client = pb::agent_service_client::AgentServiceClient::new(ch);
            loop {
                let r = client
                    .issue_token(pb::IssueTokenRequest {
                        attestation: att_token(token.clone()),
                        task_id: task_id.clone(),
                        audience: API.into(),
                        scopes: vec![],
                        ttl_seconds: 0,
                        dpop_jkt: String::new(),
                    })
                    .await;
                match r {
                    Ok(resp) => acked.lock().unwrap().push(resp.into_inner()),
                    Err(_) => return,
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 1500 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.kill9().unwrap();
    for w in workers {
        let _ = w.await;
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.len() >= 100,
        "the burst was acknowledged only {} times",
        acked.len()
    );

    broker.restart().await.unwrap();
    let mut admin = broker.admin().await.unwrap();
    let mut val = broker.validation().await.unwrap();
    let recorded = admin
        .list_tokens(pb::ListTokensRequest {
            task_id: task.task_id.clone(),
            limit: 10_000,
        })
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let recorded: std::collections::HashSet<String> =
        recorded.into_iter().map(|t| t.token_id).collect();
    for a in &acked {
        assert!(
            recorded.contains(&a.token_id),
            "acknowledged token {} was lost",
            a.token_id
        );
    }
    // Spot-check acknowledged tokens end to end, the newest ones first (closest to the kill).
    for a in acked.iter().rev().take(200) {
        let r = val
            .introspect(pb::IntrospectRequest {
                token: a.access_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            r.active,
            "{} after restart: {}",
            a.token_id, r.inactive_reason
        );
    }
    let r = val
        .introspect(pb::IntrospectRequest {
            token: done_tok.access_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.inactive_reason, "task_completed");
    let r = val
        .introspect(pb::IntrospectRequest {
            token: revoked_tok.access_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.inactive_reason, "revoked");

    // The revocation log survived, numbered without gaps.
    let mut watch = val
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(2), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(2), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.sequence, first.id.as_str()),
        (1, done.task_id.as_str())
    );
    assert_eq!(
        (second.sequence, second.id.as_str()),
        (2, revoked_tok.token_id.as_str())
    );

    // The audit chain is intact and continues.
    let v = admin
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{}", v.problem);
    assert!(v.entries >= 6 + acked.len() as u64);
    let mut agent = broker.agent().await.unwrap();
    issue(&mut agent, &issuer, "sub-crash", &task.task_id)
        .await
        .unwrap();
    assert!(broker.terminate().unwrap(), "SIGTERM exits cleanly");
}
