//! `taskpass bench --oauth`: the OAuth token endpoint over HTTPS (jwt-bearer grant, HTTP/1.1
//! keep-alive, one worker per connection) against gRPC IssueToken in the same run, so the
//! figure is a ratio; with `--peer DIR`, node oidc-provider doing client_credentials over
//! HTTPS on the same machine, driven by the same client.
//!
//! What each does per token: the jwt-bearer grant verifies the assertion, opens an implicit
//! task and writes it with its token in one durable commit; IssueToken (and the token
//! exchange into an open task, also measured) writes the token alone; oidc-provider keeps its
//! tokens in memory (its default adapter): nothing it issues survives a restart.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use taskpass_proto::v1 as pb;
use taskpass_testkit::{ATTESTATION_AUDIENCE, DevIssuer, TestBroker};
use tonic::transport::Channel;

use crate::Output;
use crate::bench::{BenchArgs, Load, Run, cpu_ns, micros_since, run_json, run_line, summarize};

const API: &str = "https://api.example";

/// One HTTPS endpoint and the form each request posts.
#[derive(Clone)]
struct Target {
    host: String,
    port: u16,
    path: String,
    ca_pem: String,
    body: Bytes,
}

async fn http_sender(
    t: &Target,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(t.ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port)).await?;
    tcp.set_nodelay(true)?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(rustls_pki_types::ServerName::try_from(t.host.clone())?, tcp)
        .await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// `n` POSTs spread over `connections` keep-alive connections, one worker each; a call
/// succeeds on a 200 whose body holds an access token.
async fn drive_http(
    t: &Target,
    connections: usize,
    n: u64,
    server_pid: u32,
) -> anyhow::Result<Run> {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(http_sender(t).await?);
    }
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let pid = server_pid.to_string();
    let cpu_before = (cpu_ns(&pid), cpu_ns("self"));
    let start = Instant::now();
    let mut workers = Vec::new();
    for mut sender in senders {
        let (next, errors, t) = (Arc::clone(&next), Arc::clone(&errors), t.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let at = Instant::now();
                let req = http::Request::post(&t.path)
                    .header(http::header::HOST, format!("{}:{}", t.host, t.port))
                    .header(
                        http::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(Full::new(t.body.clone()));
                let ok = match req {
                    Ok(req) => match sender.send_request(req).await {
                        Ok(resp) => {
                            let status = resp.status();
                            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                            status == http::StatusCode::OK
                                && body
                                    .is_ok_and(|b| b.windows(14).any(|w| w == b"\"access_token\""))
                        }
                        Err(_) => false,
                    },
                    Err(_) => false,
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                    if sender.ready().await.is_err() {
                        break;
                    }
                }
                lat.push(micros_since(at));
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap_or_default());
    }
    Ok(summarize(
        all,
        start.elapsed().as_secs_f64(),
        errors.load(Ordering::Relaxed),
        (&pid, cpu_before),
    ))
}

fn form(params: &[(&str, &str)]) -> Bytes {
    Bytes::from(
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish(),
    )
}

/// gRPC IssueToken, closed loop, `connections` channels with one worker each.
async fn drive_grpc(
    broker: &TestBroker,
    connections: usize,
    n: u64,
    att: &pb::Attestation,
    task_id: &str,
) -> anyhow::Result<Run> {
    let mut channels: Vec<Channel> = Vec::new();
    for _ in 0..connections.min(8) {
        channels.push(crate::bench::connect(&broker.grpc_url, &broker.ca_pem, None).await?);
    }
    let call = crate::bench::issue_call(att.clone(), task_id.to_owned());
    let pid = broker.pid().context("broker has no pid")?;
    Ok(
        crate::bench::drive(&channels, connections, pid, (n, Load::Closed), move |ch| {
            call(ch)
        })
        .await,
    )
}

/// Starts node oidc-provider from `dir` over HTTPS with a certificate made here.
async fn start_peer(dir: &Path) -> anyhow::Result<(tokio::process::Child, Target)> {
    if !dir.join("node_modules/oidc-provider").exists() {
        let ok = tokio::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir)
            .status()
            .await?
            .success();
        ensure!(ok, "npm install in {} failed", dir.display());
    }
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])?.self_signed(&key)?;
    let tmp = tempfile::tempdir()?;
    std::fs::write(tmp.path().join("key.pem"), key.serialize_pem())?;
    std::fs::write(tmp.path().join("cert.pem"), cert.pem())?;
    let mut child = tokio::process::Command::new("node")
        .arg(dir.join("server.mjs"))
        .env("KEY_FILE", tmp.path().join("key.pem"))
        .env("CERT_FILE", tmp.path().join("cert.pem"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run node")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .context("oidc-provider did not start within 30 s")??
        .context("oidc-provider exited")?;
    let doc: serde_json::Value = serde_json::from_str(&line)?;
    let url: http::Uri = doc["token_endpoint"]
        .as_str()
        .context("no token_endpoint")?
        .parse()?;
    // The certificate is self-signed: it is its own CA.
    std::mem::forget(tmp);
    Ok((
        child,
        Target {
            host: url.host().unwrap_or("127.0.0.1").to_owned(),
            port: url.port_u16().unwrap_or(443),
            path: url.path().to_owned(),
            ca_pem: cert.pem(),
            body: form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "bench"),
                ("client_secret", "bench-secret-bench-secret-bench-secret"),
                ("scope", "read"),
                ("resource", API),
            ]),
        },
    ))
}

pub(crate) async fn run(args: &BenchArgs, output: Output) -> anyhow::Result<()> {
    let eprint = |s: &str| {
        if output == Output::Text {
            eprintln!("{s}");
        }
    };
    let issuer = DevIssuer::start().await?;
    let broker = TestBroker::start_with(
        &issuer,
        "[tokens]\nmax_task_seconds = 86400\n[limits]\nagent_requests_per_second = 0\nmax_connections_per_address = 1024\n",
    )
    .await?;
    let pid = broker.pid().context("broker has no pid")?;
    let mut admin = broker.admin().await?;
    crate::bench::register_bench_agent(&mut admin, &issuer, "token endpoint bench", &["read"])
        .await?;
    let assertion = issuer.token("bench-agent", ATTESTATION_AUDIENCE, 3600);
    let att = pb::Attestation {
        method: Some(pb::attestation::Method::OidcToken(assertion.clone())),
    };
    let task = pb::agent_service_client::AgentServiceClient::new(
        crate::bench::connect(&broker.grpc_url, &broker.ca_pem, None).await?,
    )
    .start_task(pb::StartTaskRequest {
        attestation: Some(att.clone()),
        purpose: "bench".into(),
        audiences: vec![API.into()],
        scopes: vec!["read".into()],
        max_duration_seconds: 86400,
        subject_token: String::new(),
    })
    .await?
    .into_inner()
    .task
    .context("no task")?;
    let uri: http::Uri = broker.http_url.parse()?;
    let endpoint = |body| Target {
        host: uri.host().unwrap_or("127.0.0.1").to_owned(),
        port: uri.port_u16().unwrap_or(443),
        path: "/oauth/token".into(),
        ca_pem: broker.ca_pem.clone(),
        body,
    };
    let jwt_bearer = endpoint(form(&[
        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
        ("assertion", &assertion),
        ("resource", API),
        ("scope", "read"),
    ]));
    let exchange = endpoint(form(&[
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", &assertion),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("resource", API),
        ("task_id", &task.task_id),
    ]));
    let (n, c) = (args.requests, args.connections.max(1));
    eprint(&format!("gRPC IssueToken: {n} calls, {c} in flight…"));
    let grpc = drive_grpc(&broker, c, n, &att, &task.task_id).await?;
    eprint(&format!(
        "token endpoint, jwt-bearer (implicit task): {n} POSTs over {c} keep-alive connections…"
    ));
    let oauth = drive_http(&jwt_bearer, c, n, pid).await?;
    eprint(&format!(
        "token endpoint, token exchange into the open task: {n} POSTs…"
    ));
    let oauth_task = drive_http(&exchange, c, n, pid).await?;
    let peer = match &args.peer {
        Some(dir) => {
            eprint(&format!(
                "node oidc-provider, client_credentials: {n} POSTs over {c} connections…"
            ));
            let (mut child, target) = start_peer(dir).await?;
            let peer_pid = child.id().unwrap_or(0);
            let r = drive_http(&target, c, n, peer_pid).await;
            let _ = child.kill().await;
            Some(r?)
        }
        None => None,
    };
    let doc = json!({
        "requests": n, "connections": c,
        "grpc_issue_token": run_json(&grpc),
        "oauth_jwt_bearer": run_json(&oauth),
        "oauth_token_exchange_in_task": run_json(&oauth_task),
        "ratio_jwt_bearer_to_grpc": oauth.rate / grpc.rate,
        "ratio_token_exchange_to_grpc": oauth_task.rate / grpc.rate,
        "oidc_provider_client_credentials": peer.as_ref().map(run_json),
        "oidc_provider_durable": false,
    });
    match output {
        Output::Json => println!("{doc}"),
        Output::Text => {
            println!(
                "requests {n}, {c} in flight (one per connection), HTTPS/gRPC over TLS on loopback"
            );
            println!("{}", run_line("gRPC IssueToken", "tokens/s", &grpc));
            println!("{}", run_line("OAuth jwt-bearer", "tokens/s", &oauth));
            println!("{}", run_line("OAuth exchange", "tokens/s", &oauth_task));
            println!(
                "  ratio jwt-bearer / IssueToken       {:.3}",
                oauth.rate / grpc.rate
            );
            println!(
                "  ratio token exchange / IssueToken   {:.3}",
                oauth_task.rate / grpc.rate
            );
            if let Some(p) = &peer {
                println!("{}", run_line("oidc-provider cc", "tokens/s", p));
                println!(
                    "  (oidc-provider keeps tokens in memory: not durable; every Taskpass token is)"
                );
                println!(
                    "  ratio jwt-bearer / oidc-provider    {:.3}",
                    oauth.rate / p.rate
                );
            }
        }
    }
    let errors =
        grpc.errors + oauth.errors + oauth_task.errors + peer.as_ref().map_or(0, |p| p.errors);
    ensure!(errors == 0, "{errors} calls failed");
    Ok(())
}
