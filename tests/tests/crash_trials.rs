//! Crash safety, repeated: in each trial several agents issue tokens and complete tasks at
//! once, the broker is killed with SIGKILL at a moment drawn at random, and restarted. Every
//! token acknowledged before the kill is still recorded (Introspect never says
//! `unknown_token`) and every acknowledged completion still holds.
//!
//! `TASKPASS_CRASH_TRIALS` sets the number of trials (default 5, as in CI; `tests/crash-trials.sh`
//! runs 100).
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use taskpass_e2e::*;
use taskpass_proto::v1 as pb;

#[derive(Debug, Default)]
struct Acked {
    tokens: Vec<pb::IssueTokenResponse>,
    completed: Vec<String>,
}

/// A small xorshift generator seeded from the clock: each run draws other moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn agent_loop(
    mut agent: pb::agent_service_client::AgentServiceClient<tonic::transport::Channel>,
    token: String,
    acked: Arc<Mutex<Acked>>,
) {
    loop {
        let Ok(task) = agent
            .start_task(pb::StartTaskRequest {
                attestation: att_token(token.clone()),
                purpose: "crash trial".into(),
                audiences: vec![API.into()],
                scopes: vec!["read".into()],
                ..Default::default()
            })
            .await
        else {
            return;
        };
        let Some(task) = task.into_inner().task else {
            return;
        };
        for _ in 0..4 {
            match agent
                .issue_token(pb::IssueTokenRequest {
                    attestation: att_token(token.clone()),
                    task_id: task.task_id.clone(),
                    audience: API.into(),
                    ..Default::default()
                })
                .await
            {
                Ok(r) => acked.lock().unwrap().tokens.push(r.into_inner()),
                Err(_) => return,
            }
        }
        match agent
            .complete_task(pb::CompleteTaskRequest {
                attestation: att_token(token.clone()),
                task_id: task.task_id.clone(),
                ..Default::default()
            })
            .await
        {
            Ok(_) => acked.lock().unwrap().completed.push(task.task_id),
            Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_kill9_loses_nothing_acknowledged() {
    let trials: usize = std::env::var("TASKPASS_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash trials: {trials}, seed {seed}");
    let mut rng = Rng(seed);
    let Env {
        issuer,
        mut broker,
        mut admin,
        ..
    } = Env::start().await.unwrap();
    let subjects = ["sub-c1", "sub-c2", "sub-c3"];
    for (i, s) in subjects.iter().enumerate() {
        register(&mut admin, &issuer, &format!("crash-{i}"), s)
            .await
            .unwrap();
    }
    let mut all = Acked::default();
    for trial in 0..trials {
        let acked: Arc<Mutex<Acked>> = Arc::default();
        let mut workers = Vec::new();
        for s in subjects {
            let token = issuer.token(s, taskpass_testkit::ATTESTATION_AUDIENCE, 600);
            for _ in 0..4 {
                let ch = taskpass_proto::connect(&broker.grpc_url, &broker.ca_pem, None)
                    .await
                    .unwrap();
                workers.push(tokio::spawn(agent_loop(
                    pb::agent_service_client::AgentServiceClient::new(ch),
                    token.clone(),
                    Arc::clone(&acked),
                )));
            }
        }
        // Kill at a random moment between 100 and 1600 ms into the load.
        let at = Duration::from_millis(100 + rng.next() % 1500);
        tokio::time::sleep(at).await;
        broker.kill9().unwrap();
        for w in workers {
            let _ = w.await;
        }
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        eprintln!(
            "trial {trial}: killed at {at:?} after {} tokens and {} completions",
            acked.tokens.len(),
            acked.completed.len()
        );
        let this_trial = acked.tokens.len();
        all.tokens.extend(acked.tokens);
        all.completed.extend(acked.completed);
        let t0 = Instant::now();
        broker.restart().await.unwrap();
        assert!(t0.elapsed() < Duration::from_secs(30));

        // Every acknowledged token and completion of this trial, and a sample of 200 of the
        // earlier trials' (all of them each time would make 100 trials quadratic). Earlier
        // tokens may have expired (their TTL is minutes; 100 trials take longer): for those
        // the token record and the task's state are read instead.
        let mut val = broker.validation().await.unwrap();
        admin = broker.admin().await.unwrap();
        let completed: HashSet<&String> = all.completed.iter().collect();
        let mut states = std::collections::HashMap::new();
        let earlier = all.tokens.len() - this_trial;
        let sample: Vec<usize> = (0..200.min(earlier))
            .map(|_| (rng.next() as usize) % earlier)
            .chain(earlier..all.tokens.len())
            .collect();
        for i in sample {
            let t = &all.tokens[i];
            let r = val
                .introspect(pb::IntrospectRequest {
                    token: t.access_token.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_ne!(
                r.inactive_reason, "unknown_token",
                "trial {trial}: acknowledged token {} was lost",
                t.token_id
            );
            let task_id = claims_txn(&t.access_token);
            if r.inactive_reason == "expired" {
                let records = admin
                    .list_tokens(pb::ListTokensRequest {
                        task_id: task_id.clone(),
                        limit: 100,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .tokens;
                assert!(
                    records.iter().any(|r| r.token_id == t.token_id),
                    "trial {trial}: acknowledged token {} was lost",
                    t.token_id
                );
                if completed.contains(&task_id) {
                    if states.is_empty() {
                        for i in 0..subjects.len() {
                            let tasks = admin
                                .list_tasks(pb::ListTasksRequest {
                                    agent: format!("crash-{i}"),
                                    limit: 10_000,
                                })
                                .await
                                .unwrap()
                                .into_inner()
                                .tasks;
                            states.extend(tasks.into_iter().map(|t| (t.task_id, t.state)));
                        }
                    }
                    assert_eq!(
                        states.get(&task_id).copied(),
                        Some(pb::TaskState::Completed as i32),
                        "trial {trial}: acknowledged completion of {task_id} was lost"
                    );
                }
            } else if completed.contains(&task_id) {
                assert_eq!(
                    r.inactive_reason, "task_completed",
                    "trial {trial}: token {} of a completed task: {r:?}",
                    t.token_id
                );
            }
        }
        // (A completion holds when its tokens say `task_completed`, or its task is COMPLETED:
        // checked above. Every completed task had its four tokens acknowledged first.)
        let v = admin
            .verify_audit(pb::VerifyAuditRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(v.ok, "trial {trial}: {}", v.problem);
    }
    assert!(
        all.tokens.len() >= trials * 10,
        "the load was too light to mean anything: {} tokens",
        all.tokens.len()
    );
}

/// The `txn` claim (task id) of an access token.
fn claims_txn(token: &str) -> String {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["txn"].as_str().unwrap().to_owned()
}
