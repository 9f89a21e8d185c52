//! `taskpass bench`: drives IssueToken over gRPC+TLS on loopback against a real `taskpassd`
//! child process, and in the same run measures a trivial gRPC+TLS RPC (the health check) with
//! the same client and concurrency, and the raw Ed25519 JWT signing rate, so the figures can
//! be read as ratios that hold on any machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, ensure};
use clap::Args;
use serde_json::json;
use taskpass_core::{
    AccessClaims, AgentName, Audience, ScopeSet, TaskId, TokenId, TokenRecord, TrustDomain,
};
use taskpass_proto::v1 as pb;
use taskpass_testkit::{ATTESTATION_AUDIENCE, DevIssuer, TestBroker};
use tonic::transport::Channel;

use crate::Output;

/// Load-tool settings.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// IssueToken calls to make (and echo calls for the baseline).
    #[arg(long, default_value_t = 50_000)]
    pub requests: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// TLS connections the requests are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Seconds spent measuring the raw signing rate.
    #[arg(long, default_value_t = 2.0)]
    pub sign_seconds: f64,
    /// Measure echo then IssueToken this many times against the same broker and report the
    /// round with the median IssueToken p99 (each round is listed too): on a shared, noisy
    /// machine one round can mislead.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// After the closed-loop runs, issue tokens at this fixed rate per second (open loop):
    /// each call starts on its schedule whatever the earlier answers, at most --concurrency in
    /// flight, and its latency counts from its scheduled start, so a stall shows in every call
    /// it delays (no coordinated omission). This is latency at a given load; the closed loop
    /// measures the most the broker can do. 0 (the default) skips it.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Instead of the benchmarks, run a steady paced load for this many seconds (tasks
    /// started, tokens issued, tasks completed or revoked by an operator) and print the
    /// broker's memory and the store's size every 10 s. 0 (the default) runs the benchmarks.
    #[arg(long, default_value_t = 0)]
    pub soak: u64,
    /// Also measure IssueToken under mTLS attestation (an agent with a certificate from the
    /// broker's CA, over connections that present it) in each round, and report its rate as a
    /// ratio of the OIDC-attested rate of the same round.
    #[arg(long)]
    pub mtls: bool,
    /// Task cycles per second in the soak (each: StartTask, 3 IssueToken, CompleteTask or an
    /// operator's RevokeTask), spread over --concurrency workers.
    #[arg(long, default_value_t = 100.0)]
    pub soak_rate: f64,
    /// Instead of the IssueToken benchmarks, measure what validators see: verify() against
    /// raw Ed25519 verification (for --sign-seconds each), revocation propagation to a live
    /// verifier, and fan-out to many revocation streams.
    #[arg(long)]
    pub validators: bool,
    /// Instead of the IssueToken benchmarks, measure the OAuth token endpoint over HTTPS
    /// (jwt-bearer, keep-alive, --connections connections, each a worker) against gRPC
    /// IssueToken in the same run.
    #[arg(long)]
    pub oauth: bool,
    /// Instead of the IssueToken benchmarks, measure what Cedar costs: decisions against 100
    /// policies for 1,000 agents (p50, p99), then IssueToken against a broker without
    /// policies and one with them, alternating (at least 2 rounds), as a ratio.
    #[arg(long)]
    pub policies: bool,
    /// With --oauth: also measure node oidc-provider doing client_credentials on this machine,
    /// from this directory (`bench/oidc-provider`; its npm packages are installed if missing).
    #[arg(long, value_name = "DIR")]
    pub peer: Option<std::path::PathBuf>,
    /// Task completions timed for the propagation figure (--validators).
    #[arg(long, default_value_t = 1000)]
    pub revocations: usize,
    /// Revocation streams held open for the fan-out figure (--validators).
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
}

pub(crate) struct Run {
    pub(crate) rate: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) errors: u64,
    /// CPU time per request, microseconds: the broker's, and this client's.
    pub(crate) broker_cpu_us: f64,
    pub(crate) client_cpu_us: f64,
}

/// CPU time (ns) used so far by the threads of a process, from `/proc/PID/task/*/schedstat`.
/// Not available off Linux: zero.
pub(crate) fn cpu_ns(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// One RPC against the broker: true when it succeeded.
type Call = Arc<
    dyn Fn(Channel) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
        + Send
        + Sync,
>;

/// How calls are started.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Load {
    /// Each of `concurrency` workers starts its next call when the last one answers.
    Closed,
    /// Calls start on a fixed schedule, this many per second, at most `concurrency` at once.
    Open(f64),
}

pub(crate) async fn drive<F, Fut>(
    channels: &[Channel],
    concurrency: usize,
    broker_pid: u32,
    (n, load): (u64, Load),
    call: F,
) -> Run
where
    F: Fn(Channel) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let call: Call = Arc::new(move |ch| Box::pin(call(ch)));
    let errors = Arc::new(AtomicU64::new(0));
    let broker_pid = broker_pid.to_string();
    let cpu_before = (cpu_ns(&broker_pid), cpu_ns("self"));
    let start = Instant::now();
    let all = match load {
        Load::Closed => closed_loop(channels, concurrency, n, &call, &errors).await,
        Load::Open(rate) => open_loop(channels, concurrency, (n, rate), &call, &errors).await,
    };
    summarize(
        all,
        start.elapsed().as_secs_f64(),
        errors.load(Ordering::Relaxed),
        (&broker_pid, cpu_before),
    )
}

/// The figures of a run: latencies (µs, one per call), how long it took, the calls that
/// failed, and the server's pid with the CPU times (server, this process) read before it.
pub(crate) fn summarize(
    mut all: Vec<u32>,
    elapsed: f64,
    errors: u64,
    (server_pid, cpu_before): (&str, (u64, u64)),
) -> Run {
    #[expect(clippy::cast_precision_loss, reason = "rates are approximate")]
    let per_request = |before: u64, after: u64| {
        after.saturating_sub(before) as f64 / 1000.0 / all.len().max(1) as f64
    };
    let broker_cpu_us = per_request(cpu_before.0, cpu_ns(server_pid));
    let client_cpu_us = per_request(cpu_before.1, cpu_ns("self"));
    all.sort_unstable();
    let pct = |p: f64| {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "index into a sorted sample"
        )]
        let i = ((all.len() as f64 - 1.0) * p).round() as usize;
        f64::from(all.get(i).copied().unwrap_or(0)) / 1000.0
    };
    #[expect(clippy::cast_precision_loss, reason = "rates are approximate")]
    let rate = all.len() as f64 / elapsed;
    Run {
        rate,
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
        max_ms: pct(1.0),
        errors,
        broker_cpu_us,
        client_cpu_us,
    }
}

/// Latencies in microseconds, one per call.
async fn closed_loop(
    channels: &[Channel],
    concurrency: usize,
    n: u64,
    call: &Call,
    errors: &Arc<AtomicU64>,
) -> Vec<u32> {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(concurrency);
    for w in 0..concurrency.max(1) {
        let ch = channels[w % channels.len()].clone();
        let (call, next, errors) = (Arc::clone(call), Arc::clone(&next), Arc::clone(errors));
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let t = Instant::now();
                if !call(ch.clone()).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                lat.push(micros_since(t));
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for w in workers {
        all.extend(w.await.unwrap_or_default());
    }
    all
}

/// Latencies in microseconds from each call's scheduled start, one per call.
async fn open_loop(
    channels: &[Channel],
    concurrency: usize,
    (n, rate): (u64, f64),
    call: &Call,
    errors: &Arc<AtomicU64>,
) -> Vec<u32> {
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let start = tokio::time::Instant::now();
    let mut calls = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for i in 0..n {
        #[expect(clippy::cast_precision_loss, reason = "a schedule in seconds")]
        let due = start + std::time::Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        // Waiting for a free slot is part of this call's latency: it counts from `due`.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let ch = channels[usize::try_from(i).unwrap_or(0) % channels.len()].clone();
        let (call, errors) = (Arc::clone(call), Arc::clone(errors));
        calls.push(tokio::spawn(async move {
            if !call(ch).await {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            drop(slot);
            micros_since(due.into_std())
        }));
    }
    let mut all = Vec::with_capacity(calls.len());
    for c in calls {
        all.push(c.await.unwrap_or(u32::MAX));
    }
    all
}

/// A channel to the broker like `taskpass_proto::connect`'s, but with the TLS stream wrapped in
/// [`taskpass_server::GrpcStream`], as the broker wraps its side: requests under 1 KiB (an
/// IssueToken request is about 700 bytes) are copied into h2's buffer and leave together
/// instead of one `writev` each, so the load tool takes less of the CPU it shares with the
/// broker. tonic refuses an `https` URI with a connector of our own, so the channel is
/// addressed `http://HOST:PORT` and does TLS itself; the broker ignores the scheme.
pub(crate) async fn connect(
    url: &str,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> anyhow::Result<Channel> {
    use rustls_pki_types::pem::PemObject;
    let uri: http::Uri = url.parse().context("the broker URL")?;
    let host = uri.host().context("the broker URL has no host")?.to_owned();
    let port = uri.port_u16().context("the broker URL has no port")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let mut tls = match identity {
        Some((cert, key)) => tls.with_client_auth_cert(
            rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()?,
            rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())?,
        )?,
        None => tls.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let name = rustls_pki_types::ServerName::try_from(host.clone())?;
    let addr = format!("{host}:{port}");
    let connector = tower::service_fn(move |_: http::Uri| {
        let (tls, name, addr) = (tls.clone(), name.clone(), addr.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(taskpass_server::GrpcStream(
                stream,
            )))
        }
    });
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}"))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect_with_connector(connector)
            .await?,
    )
}

pub(crate) fn micros_since(t: Instant) -> u32 {
    u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX)
}

fn raw_signing_rate(seconds: f64) -> anyhow::Result<f64> {
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("key generation failed"))?;
    let keys = taskpass_server::KeyRing::from_pkcs8(pkcs8.as_ref()).map_err(anyhow::Error::msg)?;
    let td = TrustDomain::parse("bench.local")?;
    let agent = td.agent_id(&AgentName::parse("bench")?);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..100 {
            // The same work the broker does per token: build the record and claims, sign.
            let record = TokenRecord {
                id: TokenId::from_ulid(ulid_now()),
                task: TaskId::from_ulid(ulid_now()),
                agent: agent.clone(),
                audience: Audience::parse("https://api.example")?,
                scopes: ScopeSet::parse(&["read"])?,
                issued_at: 1,
                expires_at: 2,
                revoked_at: None,
                status_index: None,
                certificate: None,
            };
            let claims = AccessClaims::for_record("https://bench", &record, None);
            let _ = std::hint::black_box(keys.sign(&claims));
            n += 1;
        }
    }
    #[expect(clippy::cast_precision_loss, reason = "rates are approximate")]
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn ulid_now() -> ulid::Ulid {
    ulid::Ulid::new()
}

pub(crate) fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub(crate) fn run_json(r: &Run) -> serde_json::Value {
    json!({"rate": r.rate, "p50_ms": r.p50_ms, "p90_ms": r.p90_ms, "p99_ms": r.p99_ms,
           "p999_ms": r.p999_ms, "max_ms": r.max_ms, "errors": r.errors,
           "broker_cpu_us_per_request": r.broker_cpu_us,
           "client_cpu_us_per_request": r.client_cpu_us})
}

pub(crate) fn run_line(name: &str, unit: &str, r: &Run) -> String {
    format!(
        "  {name:<16} {:>9.0} {unit:<9} p50 {:>6.2}  p90 {:>6.2}  p99 {:>6.2}  p99.9 {:>6.2}  max {:>7.2} ms   errors {}\n  {:<16} CPU per call: broker {:.1} µs, client {:.1} µs",
        r.rate,
        r.p50_ms,
        r.p90_ms,
        r.p99_ms,
        r.p999_ms,
        r.max_ms,
        r.errors,
        "",
        r.broker_cpu_us,
        r.client_cpu_us
    )
}

/// Runs the benchmark.
pub async fn run(args: BenchArgs, output: Output) -> anyhow::Result<()> {
    ensure!(
        args.connections > 0 && args.concurrency > 0,
        "--connections and --concurrency must be at least 1"
    );
    ensure!(
        args.rate.is_finite() && args.rate >= 0.0,
        "--rate must be a number of calls per second, or 0 to skip the paced run"
    );
    if args.validators {
        ensure!(
            args.revocations > 0 && args.streams > 0,
            "--revocations and --streams must be at least 1"
        );
        return crate::bench_validators::run(
            args.revocations,
            args.streams,
            args.sign_seconds,
            output,
        )
        .await;
    }
    if args.oauth {
        return crate::bench_oauth::run(&args, output).await;
    }
    if args.policies {
        return crate::bench_policy::run(&args, output).await;
    }
    if args.soak > 0 {
        return crate::soak::run(args.soak, args.soak_rate, args.concurrency, output).await;
    }
    let issuer = DevIssuer::start().await?;
    let broker = TestBroker::start_with(&issuer, "[tokens]\nmax_task_seconds = 86400\n").await?;
    let pid = broker.pid().context("broker has no pid")?;
    let mut admin = broker.admin().await?;
    let subject = "bench-agent";
    register_bench_agent(&mut admin, &issuer, "load test", &["read", "write"]).await?;
    let att = pb::Attestation {
        method: Some(pb::attestation::Method::OidcToken(issuer.token(
            subject,
            ATTESTATION_AUDIENCE,
            3600,
        ))),
    };
    let (channels, task_id) = channels_and_task(&broker, args.connections, None, &att).await?;

    let mtls = if args.mtls {
        Some(mtls_setup(&mut admin, &broker, args.connections).await?)
    } else {
        None
    };

    let n = args.requests;
    let eprint = |s: &str| {
        if output == Output::Text {
            eprintln!("{s}");
        }
    };
    eprint(&format!(
        "echo baseline: {n} health checks, {} in flight over {} connections…",
        args.concurrency, args.connections
    ));
    let issue_call = {
        let call = issue_call(att.clone(), task_id.clone());
        move |ch: Channel| call(ch)
    };
    let mut rounds = Vec::new();
    let mut mtls_rounds: Vec<Run> = Vec::new();
    for round in 1..=args.rounds.max(1) {
        if args.rounds > 1 {
            eprint(&format!("round {round} of {}", args.rounds));
        }
        let echo = drive(
            &channels,
            args.concurrency,
            pid,
            (n, Load::Closed),
            |ch| async move {
                tonic_health::pb::health_client::HealthClient::new(ch)
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .is_ok()
            },
        )
        .await;

        eprint(&format!("IssueToken: {n} calls…"));
        let issue = drive(
            &channels,
            args.concurrency,
            pid,
            (n, Load::Closed),
            issue_call.clone(),
        )
        .await;
        if let Some((mtls_channels, call)) = &mtls {
            eprint(&format!("IssueToken under mTLS attestation: {n} calls…"));
            let call = call.clone();
            let m = drive(
                mtls_channels,
                args.concurrency,
                pid,
                (n, Load::Closed),
                move |ch| call(ch),
            )
            .await;
            mtls_rounds.push(m);
        }
        rounds.push((echo, issue));
    }
    let paced = if args.rate > 0.0 {
        eprint(&format!(
            "IssueToken at {:.0}/s (open loop, at most {} in flight): {n} calls…",
            args.rate, args.concurrency
        ));
        Some(
            drive(
                &channels,
                args.concurrency,
                pid,
                (n, Load::Open(args.rate)),
                issue_call,
            )
            .await,
        )
    } else {
        None
    };
    let errors: u64 = rounds.iter().map(|(e, i)| e.errors + i.errors).sum::<u64>()
        + paced.as_ref().map_or(0, |p| p.errors)
        + mtls_rounds.iter().map(|m| m.errors).sum::<u64>();
    let mut by_p99: Vec<usize> = (0..rounds.len()).collect();
    by_p99.sort_by(|a, b| rounds[*a].1.p99_ms.total_cmp(&rounds[*b].1.p99_ms));
    let median = by_p99[by_p99.len() / 2];
    let (echo, issue) = &rounds[median];
    let mtls_run = mtls_rounds.get(median);

    eprint("raw Ed25519 JWT signing, one core…");
    let sign = tokio::task::spawn_blocking({
        let s = args.sign_seconds;
        move || raw_signing_rate(s)
    })
    .await??;

    let (_, metrics) =
        taskpass_testkit::https_get(&format!("{}/metrics", broker.http_url), &broker.ca_pem)
            .await?;
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    };
    let commits = gauge("taskpass_store_commits_total ");
    let per_commit = gauge("taskpass_store_commands_total ") / commits.max(1.0);
    let commit_ms = gauge("taskpass_store_commit_seconds_total ") * 1000.0 / commits.max(1.0);
    let recorded = broker
        .admin()
        .await?
        .list_tokens(pb::ListTokensRequest {
            task_id: task_id.clone(),
            limit: 1,
        })
        .await?
        .into_inner()
        .tokens
        .len();
    let peak_rss_kb = proc_status_kb(pid, "VmHWM:").unwrap_or(0);
    let rss_kb = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    let store_bytes = std::fs::metadata(broker.data_dir().join("store.redb"))
        .map(|m| m.len())
        .unwrap_or(0);

    let doc = json!({
        "requests": n, "concurrency": args.concurrency, "connections": args.connections,
        "issue_token": run_json(issue),
        "echo": run_json(echo),
        "rounds": rounds.iter().map(|(e, i)| json!({
            "issue_token": run_json(i), "echo": run_json(e), "ratio_issue_to_echo": i.rate / e.rate,
        })).collect::<Vec<_>>(),
        "raw_sign_per_core": sign,
        "ratio_issue_to_echo": issue.rate / echo.rate,
        "issue_token_paced": paced.as_ref().map(|p| {
            let mut v = run_json(p);
            v["offered_rate"] = json!(args.rate);
            v
        }),
        "ratio_issue_to_raw_sign": issue.rate / sign,
        "issue_token_mtls": mtls_run.map(run_json),
        "ratio_mtls_to_oidc": mtls_run.map(|m| m.rate / issue.rate),
        "broker_peak_rss_mb": peak_rss_kb / 1024, "broker_rss_mb": rss_kb / 1024,
        "store_mb": store_bytes / (1 << 20),
        "store_commits": commits, "commands_per_commit": per_commit, "commit_ms_mean": commit_ms,
    });
    match output {
        Output::Json => println!("{doc}"),
        Output::Text => {
            println!(
                "requests {n}, {} in flight, {} TLS connections, loopback",
                args.concurrency, args.connections
            );
            if rounds.len() > 1 {
                for (k, (e, i)) in rounds.iter().enumerate() {
                    println!(
                        "  round {}: IssueToken {:.0} tokens/s p50 {:.2} p99 {:.2} ms, echo {:.0} RPC/s, ratio {:.3}",
                        k + 1,
                        i.rate,
                        i.p50_ms,
                        i.p99_ms,
                        e.rate,
                        i.rate / e.rate
                    );
                }
                println!("  the round with the median IssueToken p99:");
            }
            println!("{}", run_line("IssueToken", "tokens/s", issue));
            if let Some(p) = &paced {
                println!(
                    "{}",
                    run_line(&format!("  at {:.0}/s", args.rate), "tokens/s", p)
                );
            }
            if let Some(m) = mtls_run {
                println!("{}", run_line("IssueToken mTLS", "tokens/s", m));
                println!(
                    "  ratio IssueToken mTLS / OIDC {:.3} (same round)",
                    m.rate / issue.rate
                );
            }
            println!("{}", run_line("echo (health)", "RPC/s", echo));
            println!("  raw EdDSA sign   {sign:>9.0} JWT/s per core");
            println!(
                "  store: {commits:.0} grouped commits, {per_commit:.1} commands each, {commit_ms:.2} ms each (apply + commit)"
            );
            println!(
                "  ratio IssueToken / echo      {:.3}",
                issue.rate / echo.rate
            );
            println!("  ratio IssueToken / raw sign  {:.3}", issue.rate / sign);
            println!(
                "  broker peak RSS {} MB (now {} MB), store {} MB",
                peak_rss_kb / 1024,
                rss_kb / 1024,
                store_bytes / (1 << 20)
            );
        }
    }
    ensure!(recorded > 0, "no token was recorded");
    ensure!(errors == 0, "{errors} calls failed");
    Ok(())
}

/// Registers agent `bench`, attested by `issuer`'s subject `bench-agent`, allowed
/// `https://api.example` with `scopes`.
pub(crate) async fn register_bench_agent(
    admin: &mut pb::admin_service_client::AdminServiceClient<Channel>,
    issuer: &DevIssuer,
    purpose: &str,
    scopes: &[&str],
) -> anyhow::Result<()> {
    admin
        .register_agent(pb::RegisterAgentRequest {
            agent: Some(pb::Agent {
                name: "bench".into(),
                owner: "bench".into(),
                purpose: purpose.into(),
                oidc: vec![pb::OidcBinding {
                    issuer: issuer.issuer().into(),
                    subject: "bench-agent".into(),
                }],
                audiences: vec!["https://api.example".into()],
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            }),
        })
        .await?;
    Ok(())
}

/// An agent that attests with a certificate from the broker's CA, its channels (each
/// presenting the certificate) and its IssueToken call.
async fn mtls_setup(
    admin: &mut pb::admin_service_client::AdminServiceClient<Channel>,
    broker: &TestBroker,
    connections: usize,
) -> anyhow::Result<(Vec<Channel>, Call)> {
    let name = "bench-mtls";
    admin
        .register_agent(pb::RegisterAgentRequest {
            agent: Some(pb::Agent {
                name: name.into(),
                owner: "bench".into(),
                purpose: "load test over mTLS".into(),
                x509: vec![format!("spiffe://example.org/agent/{name}")],
                audiences: vec!["https://api.example".into()],
                scopes: vec!["read".into(), "write".into()],
                ..Default::default()
            }),
        })
        .await?;
    let (csr, key) = crate::conn::key_and_csr()?;
    let cert = admin
        .issue_agent_certificate(pb::IssueAgentCertificateRequest {
            name: name.into(),
            csr_pem: csr,
            hours: 24,
        })
        .await?
        .into_inner()
        .certificate_pem;
    let att = crate::conn::mtls_attestation();
    let (channels, task_id) =
        channels_and_task(broker, connections, Some((&cert, &key)), &att).await?;
    let call = issue_call(att, task_id);
    Ok((channels, call))
}

/// `connections` channels (presenting `identity` when given) and a long task opened with `att`.
pub(crate) async fn channels_and_task(
    broker: &TestBroker,
    connections: usize,
    identity: Option<(&str, &str)>,
    att: &pb::Attestation,
) -> anyhow::Result<(Vec<Channel>, String)> {
    let mut channels = Vec::new();
    for _ in 0..connections {
        channels.push(connect(&broker.grpc_url, &broker.ca_pem, identity).await?);
    }
    let task = pb::agent_service_client::AgentServiceClient::new(channels[0].clone())
        .start_task(pb::StartTaskRequest {
            attestation: Some(att.clone()),
            purpose: "bench".into(),
            audiences: vec!["https://api.example".into()],
            scopes: vec!["read".into()],
            max_duration_seconds: 86400,
            subject_token: String::new(),
        })
        .await?
        .into_inner()
        .task
        .context("no task")?;
    Ok((channels, task.task_id))
}

/// One IssueToken call of the task, attested with `att`.
pub(crate) fn issue_call(att: pb::Attestation, task_id: String) -> Call {
    Arc::new(move |ch: Channel| {
        let req = pb::IssueTokenRequest {
            attestation: Some(att.clone()),
            task_id: task_id.clone(),
            audience: "https://api.example".into(),
            scopes: vec![],
            ttl_seconds: 300,
            dpop_jkt: String::new(),
        };
        Box::pin(async move {
            pb::agent_service_client::AgentServiceClient::new(ch)
                .issue_token(req)
                .await
                .is_ok()
        })
    })
}
