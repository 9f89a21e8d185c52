//! `taskpass bench --soak SECONDS`: a steady paced load against a real `taskpassd` (tasks
//! started, tokens issued, tasks completed by their agent, one in ten revoked by an operator
//! instead), printing the broker's resident memory and the store file's size every 10 s, so
//! that memory can be seen to stay flat once warm.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::json;
use taskpass_proto::v1 as pb;
use taskpass_testkit::{ATTESTATION_AUDIENCE, DevIssuer, TestBroker};

use crate::Output;

/// Tokens issued per task in the soak.
const TOKENS_PER_TASK: usize = 3;

#[derive(Debug, Default)]
struct Counts {
    tasks: AtomicU64,
    tokens: AtomicU64,
    completed: AtomicU64,
    revoked: AtomicU64,
    errors: AtomicU64,
}

/// Runs the soak for `seconds` at `tasks_per_second` task cycles, `workers` at a time.
pub async fn run(
    seconds: u64,
    tasks_per_second: f64,
    workers: usize,
    output: Output,
) -> anyhow::Result<()> {
    ensure!(seconds > 0, "--soak must be at least 1 second");
    ensure!(
        tasks_per_second.is_finite() && tasks_per_second > 0.0,
        "--soak-rate must be a positive number of tasks per second"
    );
    let issuer = DevIssuer::start().await?;
    let broker = TestBroker::start(&issuer).await?;
    let pid = broker.pid().context("broker has no pid")?;
    let mut admin = broker.admin().await?;
    let subject = "soak-agent";
    admin
        .register_agent(pb::RegisterAgentRequest {
            agent: Some(pb::Agent {
                name: "soak".into(),
                owner: "bench".into(),
                purpose: "soak test".into(),
                oidc: vec![pb::OidcBinding {
                    issuer: issuer.issuer().into(),
                    subject: subject.into(),
                }],
                audiences: vec!["https://api.example".into()],
                scopes: vec!["read".into()],
                ..Default::default()
            }),
        })
        .await?;
    // One attestation for the whole run (the broker caches its verification, as it would an
    // agent's between refreshes).
    let token = issuer.token(
        subject,
        ATTESTATION_AUDIENCE,
        i64::try_from(seconds).unwrap_or(i64::MAX / 2) + 300,
    );
    let counts = Arc::new(Counts::default());
    let until = Instant::now() + Duration::from_secs(seconds);
    let workers = workers.max(1);
    let every = Duration::from_secs_f64(workers as f64 / tasks_per_second);
    let mut joins = Vec::new();
    for w in 0..workers {
        let agent = broker.agent().await?;
        let admin = broker.admin().await?;
        let counts = Arc::clone(&counts);
        let token = token.clone();
        joins.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            while Instant::now() < until {
                tick.tick().await;
                n += 1;
                let revoke = (n + w as u64).is_multiple_of(10);
                if cycle(agent.clone(), admin.clone(), &token, revoke, &counts)
                    .await
                    .is_err()
                {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let store = broker.data_dir().join("store.redb");
    let started = Instant::now();
    let mut series = Vec::new();
    let mut report = tokio::time::interval(Duration::from_secs(10));
    report.tick().await;
    let sample = |elapsed: u64| {
        let rss_kb = crate::bench::proc_status_kb(pid, "VmRSS:").unwrap_or(0);
        let store_bytes = std::fs::metadata(&store).map(|m| m.len()).unwrap_or(0);
        json!({
            "seconds": elapsed,
            "broker_rss_mb": rss_kb as f64 / 1024.0,
            "store_mb": store_bytes as f64 / (1024.0 * 1024.0),
            "tasks": counts.tasks.load(Ordering::Relaxed),
            "tokens": counts.tokens.load(Ordering::Relaxed),
            "completed": counts.completed.load(Ordering::Relaxed),
            "revoked": counts.revoked.load(Ordering::Relaxed),
            "errors": counts.errors.load(Ordering::Relaxed),
        })
    };
    if output == Output::Text {
        println!("seconds  broker_rss_mb  store_mb  tasks  tokens  completed  revoked  errors");
    }
    while Instant::now() < until {
        report.tick().await;
        let s = sample(started.elapsed().as_secs());
        if output == Output::Text {
            println!(
                "{:>7}  {:>13.1}  {:>8.1}  {:>5}  {:>6}  {:>9}  {:>7}  {:>6}",
                s["seconds"],
                s["broker_rss_mb"].as_f64().unwrap_or(0.0),
                s["store_mb"].as_f64().unwrap_or(0.0),
                s["tasks"],
                s["tokens"],
                s["completed"],
                s["revoked"],
                s["errors"]
            );
        }
        series.push(s);
    }
    for j in joins {
        let _ = j.await;
    }
    if output == Output::Json {
        println!(
            "{}",
            json!({
                "soak_seconds": seconds,
                "tasks_per_second": tasks_per_second,
                "tokens_per_task": TOKENS_PER_TASK,
                "series": series,
            })
        );
    }
    let errors = counts.errors.load(Ordering::Relaxed);
    ensure!(errors == 0, "{errors} soak cycles failed");
    Ok(())
}

/// One task: start it, issue its tokens, then complete it (or have an operator revoke it).
async fn cycle(
    mut agent: pb::agent_service_client::AgentServiceClient<tonic::transport::Channel>,
    mut admin: pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
    token: &str,
    revoke: bool,
    counts: &Counts,
) -> anyhow::Result<()> {
    let att = || {
        Some(pb::Attestation {
            method: Some(pb::attestation::Method::OidcToken(token.to_owned())),
        })
    };
    let task = agent
        .start_task(pb::StartTaskRequest {
            attestation: att(),
            purpose: "soak".into(),
            audiences: vec!["https://api.example".into()],
            scopes: vec!["read".into()],
            ..Default::default()
        })
        .await?
        .into_inner()
        .task
        .context("no task")?;
    counts.tasks.fetch_add(1, Ordering::Relaxed);
    for _ in 0..TOKENS_PER_TASK {
        agent
            .issue_token(pb::IssueTokenRequest {
                attestation: att(),
                task_id: task.task_id.clone(),
                audience: "https://api.example".into(),
                ..Default::default()
            })
            .await?;
        counts.tokens.fetch_add(1, Ordering::Relaxed);
    }
    if revoke {
        admin
            .revoke_task(pb::RevokeTaskRequest {
                task_id: task.task_id,
                reason: "soak".into(),
            })
            .await?;
        counts.revoked.fetch_add(1, Ordering::Relaxed);
    } else {
        agent
            .complete_task(pb::CompleteTaskRequest {
                attestation: att(),
                task_id: task.task_id,
                ..Default::default()
            })
            .await?;
        counts.completed.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
