//! One agent floods CompleteTask with random task ids: the refusals are audited in aggregate
//! (a few entries, not one per call), they cost the store no write, and an operator's revoke
//! made during the flood is answered at once.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use taskpass_e2e::*;
use taskpass_proto::v1 as pb;
use tonic::Code;

/// A canonical task id that names no task.
fn random_task_id(n: u64) -> String {
    const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed;
    let mut out = String::from("task_0");
    for _ in 0..25 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(char::from(CROCKFORD[(x % 32) as usize]));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_task_flood_is_tallied_and_does_not_delay_an_operator() {
    let Env {
        issuer,
        broker,
        mut admin,
        mut agent,
        ..
    } = Env::start_with(
        "[limits]\nagent_requests_per_second = 500\nagent_burst = 1000\nrefusal_audit_interval_seconds = 1\n",
    )
    .await
    .unwrap();
    register(&mut admin, &issuer, "flooder", "sub-flood")
        .await
        .unwrap();
    register(&mut admin, &issuer, "worker", "sub-work")
        .await
        .unwrap();
    let victim = start(&mut agent, &issuer, "sub-work", &["read"])
        .await
        .unwrap();
    let victim_token = issue(&mut agent, &issuer, "sub-work", &victim.task_id)
        .await
        .unwrap();
    let second = start(&mut agent, &issuer, "sub-work", &["read"])
        .await
        .unwrap();
    let second_token = issue(&mut agent, &issuer, "sub-work", &second.task_id)
        .await
        .unwrap();
    let before = audit_len(&mut admin).await.unwrap();

    // 48 callers over 4 connections, for 8 seconds.
    let token = issuer.token("sub-flood", taskpass_testkit::ATTESTATION_AUDIENCE, 300);
    let refused = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(8);
    let mut workers = Vec::new();
    for c in 0..4u64 {
        let ch = taskpass_proto::connect(&broker.grpc_url, &broker.ca_pem, None)
            .await
            .unwrap();
        for w in 0..12u64 {
            let (ch, token) = (ch.clone(), token.clone());
            let (refused, other) = (Arc::clone(&refused), Arc::clone(&other));
            workers.push(tokio::spawn(async move {
                let mut client = pb::agent_service_client::AgentServiceClient::new(ch);
                let mut n = (c * 12 + w) << 32;
                while Instant::now() < until {
                    n += 1;
                    let r = client
                        .complete_task(pb::CompleteTaskRequest {
                            attestation: att_token(token.clone()),
                            task_id: random_task_id(n),
                            ..Default::default()
                        })
                        .await;
                    match r {
                        Err(s) if matches!(s.code(), Code::NotFound | Code::ResourceExhausted) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            other.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
    }

    // In the middle of the flood, an operator revokes a task and a token.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t0 = Instant::now();
    let r = admin
        .revoke_task(pb::RevokeTaskRequest {
            task_id: victim.task_id.clone(),
            reason: "flood test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let revoke_task_took = t0.elapsed();
    assert_eq!(r.revoked_tokens, 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = Instant::now();
    admin
        .revoke_token(pb::RevokeTokenRequest {
            token_id: second_token.token_id.clone(),
            reason: "flood test".into(),
        })
        .await
        .unwrap();
    let revoke_token_took = t0.elapsed();
    for w in workers {
        w.await.unwrap();
    }
    let refused = refused.load(Ordering::Relaxed);
    assert_eq!(
        other.load(Ordering::Relaxed),
        0,
        "every flood call is refused"
    );
    assert!(refused > 1000, "the flood was a flood: {refused} calls");
    // Behaviour, not a benchmark: the bound is generous for a shared 2-core machine, and the
    // revoke is what the issue names ("well under 2 s").
    assert!(
        revoke_task_took < Duration::from_secs(2),
        "task revoke during the flood took {revoke_task_took:?}"
    );
    assert!(
        revoke_token_took < Duration::from_secs(2),
        "token revoke during the flood took {revoke_token_took:?}"
    );

    // Every refusal is counted in the audit log, in a few entries.
    let flooder = "spiffe://example.org/agent/flooder";
    let mut counted = 0;
    let mut tail = Vec::new();
    for _ in 0..50 {
        tail = admin
            .tail_audit(pb::TailAuditRequest { limit: 10_000 })
            .await
            .unwrap()
            .into_inner()
            .entries;
        counted = tail
            .iter()
            .filter(|e| is_tally(e) && e.actor == flooder && e.action == "complete_task")
            .map(tally_count)
            .sum::<u64>();
        if counted >= refused {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(counted, refused, "every refusal is counted once");
    let after = audit_len(&mut admin).await.unwrap();
    assert!(
        after - before <= 300,
        "the flood added {} audit entries for {refused} refusals",
        after - before
    );
    for rule in ["task_not_found", "rate_limited"] {
        assert!(
            tail.iter().any(|e| is_tally(e) && e.reason == rule),
            "no tally for {rule}: {tail:?}"
        );
    }
    // The operator's revocations are there, one entry each, and took effect.
    assert!(
        tail.iter()
            .any(|e| e.action == "task.revoke" && e.task_id == victim.task_id)
    );
    let mut val = broker.validation().await.unwrap();
    for t in [&victim_token, &second_token] {
        let i = val
            .introspect(pb::IntrospectRequest {
                token: t.access_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!i.active, "{i:?}");
    }
    let v = admin
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{v:?}");
}
