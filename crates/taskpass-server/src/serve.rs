//! Starting and stopping the broker: bind, bootstrap the data dir, serve gRPC and HTTPS,
//! sweep expired tasks, drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use taskpass_attest::{OidcOptions, OidcVerifier};
use taskpass_core::{Clock, SystemClock};
use taskpass_proto::v1 as pb;
use taskpass_store::{RedbStore, Store, StoreOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::config::Config;
use crate::grpc::Services;
use crate::keys::KeyRing;
use crate::metrics::Metrics;
use crate::pki::{self, files};

/// How long in-flight RPCs get to finish after shutdown is asked for.
pub const GRACE: Duration = Duration::from_secs(10);

/// How often the server certificate is re-issued (it is valid for 90 days).
pub const CERT_RENEWAL: Duration = Duration::from_secs(24 * 3600);

/// Largest gRPC message accepted.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A running broker.
#[derive(Debug)]
pub struct RunningBroker {
    /// The bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// The bound HTTPS address.
    pub http_addr: SocketAddr,
    /// The tokens' `iss`.
    pub issuer: String,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    broker: Arc<Broker>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningBroker {
    /// The broker state, for in-process callers (the bench tool, tests).
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Stops accepting, lets in-flight RPCs finish (within [`GRACE`]), stops the background
    /// tasks and closes the store.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        match tokio::time::timeout(GRACE, self.grpc).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
            Err(_) => tracing::warn!("in-flight RPCs did not finish within the grace period"),
            _ => {}
        }
        for t in self.tasks {
            t.abort();
        }
        tracing::info!("broker stopped");
    }

    /// Runs until `signal` completes, then shuts down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }
}

/// Binds the configured addresses and starts the broker.
pub async fn launch(config: Config) -> anyhow::Result<RunningBroker> {
    let grpc = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (server.listen): {e}", config.listen))?;
    let http = TcpListener::bind(config.http_listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {} (server.http_listen): {e}",
            config.http_listen
        )
    })?;
    serve(grpc, http, config, Arc::new(SystemClock)).await
}

/// Starts the broker on bound listeners (port 0 in tests).
pub async fn serve(
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    config: Config,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<RunningBroker> {
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let dir = &config.data_dir;
    let pki = pki::bootstrap(
        dir,
        &config.trust_domain,
        &[grpc_addr.ip(), http_addr.ip()],
        &config.server_names,
    )?;
    let keys = Arc::new(KeyRing::load_or_create(&dir.join(files::SIGNING_KEY))?);
    let store_path = dir.join(files::STORE);
    let store_options = StoreOptions {
        cache_size_bytes: config.store_cache_bytes,
        ..StoreOptions::default()
    };
    let store: Arc<dyn Store> = Arc::new(
        tokio::task::spawn_blocking(move || RedbStore::open(store_path, store_options)).await??,
    );
    let oidc = OidcVerifier::new(
        config.oidc.clone(),
        OidcOptions {
            leeway_seconds: config.leeway_seconds,
            ..OidcOptions::default()
        },
        Arc::clone(&clock),
    )
    .await?;
    let issuer = config
        .issuer
        .clone()
        .unwrap_or_else(|| format!("https://{http_addr}"));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let broker = Arc::new(Broker {
        store: Arc::clone(&store),
        attestor: oidc.clone(),
        keys,
        issuer: issuer.clone(),
        trust_domain: config.trust_domain.clone(),
        limits: config.limits,
        clock: Arc::clone(&clock),
        metrics: Arc::new(Metrics::default()),
        trusted_issuers: config.oidc.iter().map(|o| o.issuer.clone()).collect(),
        shutdown: shutdown_rx.clone(),
        rate: config
            .agent_rate
            .map(|(rps, burst)| crate::ratelimit::RateLimiter::new(rps, burst)),
    });

    let mut tasks = vec![oidc.spawn_refresh()];

    // Sweeper: expire tasks past their deadline and revoke their tokens.
    {
        let store = Arc::clone(&store);
        let clock = Arc::clone(&clock);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match store.expire_tasks(clock.now()).await {
                    Ok(ended) if !ended.is_empty() => {
                        tracing::info!(count = ended.len(), "expired tasks past their deadline");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "expiry sweep failed"),
                }
            }
        }));
    }

    // One server certificate for both listeners, renewed daily (valid 90 days) without a restart.
    let certs = crate::tls::CertStore::new(&pki.server_chain_pem, &pki.server_key_pem)?;
    {
        let certs = Arc::clone(&certs);
        let server = pki.server;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(CERT_RENEWAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                match server.issue().map_err(anyhow::Error::from).and_then(|(chain, key)| certs.replace(&chain, &key)) {
                    Ok(()) => tracing::info!("renewed the server certificate"),
                    Err(e) => tracing::error!(error = %e, "server certificate renewal failed; retrying at the next interval"),
                }
            }
        }));
    }

    // HTTPS.
    let http_tls = crate::tls::server_config(&pki.ca_pem, &certs, &[b"h2", b"http/1.1"])?;
    tasks.push(tokio::spawn(crate::http::serve(
        crate::tls::incoming(http_listener, http_tls),
        crate::http::router(Arc::clone(&broker)),
        shutdown_rx.clone(),
    )));

    // gRPC.
    let services = Services::new(Arc::clone(&broker));
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::agent_service_server::AgentServiceServer<Services>>()
        .await;
    health
        .set_serving::<pb::validation_service_server::ValidationServiceServer<Services>>()
        .await;
    health
        .set_serving::<pb::admin_service_server::AdminServiceServer<Services>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(taskpass_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let grpc_tls = crate::tls::server_config(&pki.ca_pem, &certs, &[b"h2"])?;
    let incoming =
        tokio_stream::StreamExt::map(crate::tls::incoming(grpc_listener, grpc_tls), |s| {
            s.map(crate::tls::GrpcStream::from)
        });
    let mut stop = shutdown_rx;
    let router = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            size_limit_is_resource_exhausted,
        ))
        .timeout(Duration::from_secs(30))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            pb::agent_service_server::AgentServiceServer::new(services.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::validation_service_server::ValidationServiceServer::new(services.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::admin_service_server::AdminServiceServer::new(services)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        );
    let grpc = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = stop.changed().await;
    }));

    let ca_pem = pki.ca_pem;
    write_endpoint(
        dir,
        grpc_addr,
        http_addr,
        &issuer,
        config.trust_domain.as_str(),
    )?;
    tracing::info!(%grpc_addr, %http_addr, %issuer, data_dir = %dir.display(), "taskpassd ready");
    Ok(RunningBroker {
        grpc_addr,
        http_addr,
        issuer,
        ca_pem,
        broker,
        shutdown,
        tasks,
        grpc,
    })
}

/// tonic answers an over-limit request message with OUT_OF_RANGE; the contract says size
/// limits are RESOURCE_EXHAUSTED, so the one status is rewritten on its way out.
fn size_limit_is_resource_exhausted<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let h = resp.headers();
    let over_limit = h.get("grpc-status").is_some_and(|v| v == "11")
        && h.get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| {
                // tonic percent-encodes grpc-message (spaces as %20).
                m.replace("%20", " ").contains("message length too large")
            });
    if over_limit {
        let h = resp.headers_mut();
        h.insert("grpc-status", http::HeaderValue::from_static("8"));
        h.insert(
            "grpc-message",
            http::HeaderValue::from_static(
                "request message is larger than the broker accepts (65536 bytes)",
            ),
        );
    }
    resp
}

fn write_endpoint(
    dir: &std::path::Path,
    grpc: SocketAddr,
    http: SocketAddr,
    issuer: &str,
    trust_domain: &str,
) -> anyhow::Result<()> {
    // A wildcard listener is dialled locally on loopback (the certificate names it).
    let local = |a: SocketAddr| {
        if a.ip().is_unspecified() {
            let ip: std::net::IpAddr = if a.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            SocketAddr::new(ip, a.port())
        } else {
            a
        }
    };
    let doc = serde_json::json!({
        "grpc": format!("https://{}", local(grpc)),
        "http": format!("https://{}", local(http)),
        "issuer": issuer,
        "trust_domain": trust_domain,
        "pid": std::process::id(),
    });
    pki::write_file(&dir.join(files::ENDPOINT), doc.to_string().as_bytes(), true)?;
    Ok(())
}
