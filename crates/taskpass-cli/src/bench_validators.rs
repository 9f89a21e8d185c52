//! `taskpass bench --validators`: what a downstream API sees, against a real `taskpassd`.
//!
//! - `verify()` throughput (offline, and live with the revocation check) as a ratio to raw
//!   Ed25519 verification of the same signature with aws-lc-rs (the library the SDK verifies
//!   with), on the same machine;
//! - revocation propagation: from CompleteTask returning to a live verifier refusing the
//!   task's token, over `--revocations` tasks, p50 and p99;
//! - fan-out: `--streams` WatchRevocations streams held open at once; for each of 20
//!   revocations, the time until every stream has it, p50 and p99, and the broker's memory per
//!   stream.
//!
//! All clients share the bench's one thread: the figures include the client side's work.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::json;
use taskpass_proto::v1 as pb;
use taskpass_testkit::{ATTESTATION_AUDIENCE, BROKER_ISSUER, DevIssuer, TestBroker, https_get};
use taskpass_verify::{KeySet, LiveConfig, Verifier, VerifyError};

use crate::Output;
use crate::bench::proc_status_kb;

const API: &str = "https://api.example";

/// Revocation streams per connection in the fan-out.
const PER_CONNECTION: usize = 100;

/// Runs the validator benchmarks.
pub async fn run(
    revocations: usize,
    streams: usize,
    seconds: f64,
    output: Output,
) -> anyhow::Result<()> {
    let eprint = |s: &str| {
        if output == Output::Text {
            eprintln!("{s}");
        }
    };
    let issuer = DevIssuer::start().await?;
    let limits = format!(
        "[limits]\nagent_requests_per_second = 0\nwatch_subscribers = {}\nwatch_subscribers_per_address = {}\nwatch_subscribers_per_connection = {PER_CONNECTION}\nmax_concurrent_streams = {}\n",
        streams + 16,
        streams + 16,
        PER_CONNECTION + 28,
    );
    let broker = TestBroker::start_with(&issuer, &limits).await?;
    let pid = broker.pid().context("broker has no pid")?;
    let mut admin = broker.admin().await?;
    crate::bench::register_bench_agent(&mut admin, &issuer, "validator bench", &["read"]).await?;
    let att = || {
        Some(pb::Attestation {
            method: Some(pb::attestation::Method::OidcToken(issuer.token(
                "bench-agent",
                ATTESTATION_AUDIENCE,
                3600,
            ))),
        })
    };
    let mut agent = broker.agent().await?;
    let tasks_agent = agent.clone();
    let open_task = || {
        let mut agent = tasks_agent.clone();
        let att = att();
        async move {
            let task = agent
                .start_task(pb::StartTaskRequest {
                    attestation: att.clone(),
                    purpose: "bench".into(),
                    audiences: vec![API.into()],
                    scopes: vec!["read".into()],
                    ..Default::default()
                })
                .await?
                .into_inner()
                .task
                .context("no task")?;
            let token = agent
                .issue_token(pb::IssueTokenRequest {
                    attestation: att,
                    task_id: task.task_id.clone(),
                    audience: API.into(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .access_token;
            anyhow::Ok((task.task_id, token))
        }
    };

    // 1. verify() against raw Ed25519.
    let (_, token) = open_task().await?;
    let (_, jwks) = https_get(
        &format!("{}/.well-known/jwks.json", broker.http_url),
        &broker.ca_pem,
    )
    .await?;
    let offline = Verifier::new(BROKER_ISSUER, KeySet::from_json(&jwks)?);
    offline.verify(&token, API)?;
    let (cert, key) = validator_credential(&mut admin).await?;
    let live = Verifier::connect(LiveConfig::new(
        broker.grpc_url.clone(),
        BROKER_ISSUER,
        broker.ca_pem.clone(),
        cert.clone(),
        key.clone(),
    ))
    .await?;
    live.verify(&token, API)?;
    eprint("verify() vs raw Ed25519 verification…");
    let raw = raw_verify_rate(&token, &jwks, seconds)?;
    let offline_rate = rate(seconds, || offline.verify(&token, API).is_ok());
    let live_rate = rate(seconds, || live.verify(&token, API).is_ok());

    // 2. Propagation to one live verifier.
    eprint(&format!("propagation over {revocations} task completions…"));
    let mut pending = Vec::with_capacity(revocations);
    for _ in 0..revocations {
        pending.push(open_task().await?);
    }
    let mut propagation = Vec::with_capacity(revocations);
    for (task_id, token) in &pending {
        ensure!(live.verify(token, API).is_ok(), "a fresh token was refused");
        agent
            .complete_task(pb::CompleteTaskRequest {
                attestation: att(),
                task_id: task_id.clone(),
                ..Default::default()
            })
            .await?;
        let done = Instant::now();
        loop {
            match live.verify(token, API) {
                Err(VerifyError::Revoked(_)) => break,
                Ok(_) => {}
                Err(e) => anyhow::bail!("unexpected refusal while waiting: {e}"),
            }
            ensure!(
                done.elapsed() < Duration::from_secs(5),
                "a revocation took more than 5 s to reach the verifier"
            );
            tokio::task::yield_now().await;
        }
        propagation.push(done.elapsed());
    }
    drop(live);

    // 3. Fan-out to many streams.
    eprint(&format!("fan-out to {streams} streams…"));
    let rss_before = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    let per_conn = PER_CONNECTION;
    let mut channels = Vec::new();
    for _ in 0..streams.div_ceil(per_conn) {
        channels.push(
            taskpass_proto::connect(&broker.grpc_url, &broker.ca_pem, Some((&cert, &key))).await?,
        );
    }
    let received = Arc::new(AtomicUsize::new(0));
    let head = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..streams {
        let mut client = pb::validation_service_client::ValidationServiceClient::new(
            channels[i / per_conn].clone(),
        );
        let mut stream = client
            .watch_revocations(pb::WatchRevocationsRequest {
                after_sequence: 0,
                heartbeat_seconds: 0,
            })
            .await?
            .into_inner();
        let (received, head) = (Arc::clone(&received), Arc::clone(&head));
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(ev)) = stream.message().await {
                if ev.sequence == head.load(Ordering::Acquire) {
                    received.fetch_add(1, Ordering::AcqRel);
                }
            }
        }));
    }
    // Let every stream catch up with the log first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    let mut fanout = Vec::new();
    let mut fanout_from_call = Vec::new();
    for _ in 0..20 {
        let (task_id, _) = open_task().await?;
        received.store(0, Ordering::Release);
        // The sequence this revocation will get: one after the newest.
        let seq = current_head(&broker).await? + 1;
        head.store(seq, Ordering::Release);
        let sent = Instant::now();
        agent
            .complete_task(pb::CompleteTaskRequest {
                attestation: att(),
                task_id,
                ..Default::default()
            })
            .await?;
        let done = Instant::now();
        while received.load(Ordering::Acquire) < streams {
            ensure!(
                done.elapsed() < Duration::from_secs(10),
                "only {} of {streams} streams got a revocation within 10 s",
                received.load(Ordering::Acquire)
            );
            tokio::task::yield_now().await;
        }
        fanout.push(done.elapsed());
        fanout_from_call.push(sent.elapsed());
    }
    for t in tasks {
        t.abort();
    }

    let (p50, p99) = percentiles(&mut propagation);
    let (f50, f99) = percentiles(&mut fanout);
    let (c50, c99) = percentiles(&mut fanout_from_call);
    let per_stream_kb = rss_after.saturating_sub(rss_before) as f64 / streams as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match output {
        Output::Json => println!(
            "{}",
            json!({
                "raw_ed25519_verify_per_s": raw,
                "verify_offline_per_s": offline_rate,
                "verify_live_per_s": live_rate,
                "ratio_verify_offline_to_raw": offline_rate / raw,
                "ratio_verify_live_to_raw": live_rate / raw,
                "propagation_revocations": revocations,
                "propagation_p50_ms": ms(p50),
                "propagation_p99_ms": ms(p99),
                "fanout_streams": streams,
                "fanout_p50_ms": ms(f50),
                "fanout_p99_ms": ms(f99),
                "fanout_from_call_p50_ms": ms(c50),
                "fanout_from_call_p99_ms": ms(c99),
                "broker_kb_per_stream": per_stream_kb,
            })
        ),
        Output::Text => {
            println!("  raw Ed25519 verify   {raw:>9.0} /s (aws-lc-rs, the same signature)");
            println!("  verify() offline     {offline_rate:>9.0} /s");
            println!("  verify() live        {live_rate:>9.0} /s (with the revocation check)");
            println!("  ratio verify offline / raw {:.3}", offline_rate / raw);
            println!("  ratio verify live / raw    {:.3}", live_rate / raw);
            println!(
                "  propagation (CompleteTask returned → verifier refuses), {revocations} revocations: p50 {:.2} ms, p99 {:.2} ms",
                ms(p50),
                ms(p99)
            );
            println!(
                "  fan-out to {streams} streams, 20 revocations: all streams have it after p50 {:.2} ms, p99 {:.2} ms",
                ms(f50),
                ms(f99)
            );
            println!(
                "    counted from the CompleteTask call instead (its own round trip included): p50 {:.2} ms, p99 {:.2} ms",
                ms(c50),
                ms(c99)
            );
            println!("  broker memory per open stream {per_stream_kb:.1} KiB");
        }
    }
    Ok(())
}

async fn validator_credential(
    admin: &mut pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
) -> anyhow::Result<(String, String)> {
    let (csr, key) = crate::conn::key_and_csr()?;
    let r = admin
        .add_validator(pb::AddValidatorRequest {
            name: "bench-api".into(),
            audiences: vec![API.into()],
            csr_pem: csr,
            days: 1,
        })
        .await?
        .into_inner();
    Ok((r.certificate_pem, key))
}

/// The newest revocation's sequence: the last event a stream from 0 delivers before a
/// heartbeat.
async fn current_head(broker: &TestBroker) -> anyhow::Result<u64> {
    let mut v = broker.validation().await?;
    let mut s = v
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: 0,
            heartbeat_seconds: 1,
        })
        .await?
        .into_inner();
    loop {
        let ev = s.message().await?.context("stream ended")?;
        if ev.kind == pb::RevocationKind::Unspecified as i32 {
            return Ok(ev.sequence);
        }
    }
}

/// Calls per second of `f` over `seconds`.
fn rate(seconds: f64, mut f: impl FnMut() -> bool) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..100 {
            std::hint::black_box(f());
            n += 1;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Raw Ed25519 verifications per second of the token's own signature.
fn raw_verify_rate(token: &str, jwks: &str, seconds: f64) -> anyhow::Result<f64> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let doc: serde_json::Value = serde_json::from_str(jwks)?;
    let x = doc["keys"][0]["x"].as_str().context("no key")?;
    let public = b64.decode(x)?;
    let (input, sig) = token.rsplit_once('.').context("not a JWS")?;
    let sig = b64.decode(sig)?;
    // aws-lc-rs: the library taskpass-verify's jsonwebtoken verifies with.
    let key = aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, public);
    ensure!(
        key.verify(input.as_bytes(), &sig).is_ok(),
        "raw verify failed"
    );
    Ok(rate(seconds, || key.verify(input.as_bytes(), &sig).is_ok()))
}

fn percentiles(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    let at = |q: f64| {
        let i = ((v.len() as f64 * q).ceil() as usize).saturating_sub(1);
        v.get(i.min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    (at(0.50), at(0.99))
}
