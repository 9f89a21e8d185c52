//! Starting and stopping the broker: bind, bootstrap the data dir, serve gRPC and HTTPS,
//! sweep expired tasks, drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use taskpass_attest::{AttestError, OidcOptions, OidcVerifier};
use taskpass_core::{Clock, SystemClock};
use taskpass_proto::v1 as pb;
use taskpass_store::{RedbStore, Store, StoreError, StoreOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::config::Config;
use crate::conn::{Admission, GrpcSettings, HttpsSettings};
use crate::grpc::Services;
use crate::keys::KeyRing;
use crate::metrics::Metrics;
use crate::pki::{self, PkiError, files};
use crate::tls::TlsError;

/// Why the broker could not start. Each message names what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr} ({key}): {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The config key that named it.
        key: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The data dir's CA, keys or credentials.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The attestation configuration.
    #[error(transparent)]
    Attestation(#[from] AttestError),
    /// Anything else the start-up needed from the system.
    #[error("{what}: {detail}")]
    Other {
        /// What was being done.
        what: &'static str,
        /// What failed.
        detail: String,
    },
}

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
    grpc: JoinHandle<()>,
    refusals: Arc<crate::refusals::Refusals>,
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
        if tokio::time::timeout(GRACE, self.grpc).await.is_err() {
            tracing::warn!("in-flight RPCs did not finish within the grace period");
        }
        for t in self.tasks {
            t.abort();
        }
        // The refusals counted since the last interval are decisions too.
        let drafts = self.refusals.take(self.broker.now());
        if let Err(e) = self.broker.store.append_audits(drafts).await {
            tracing::warn!(error = %e, "could not write the last refusal tally");
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
pub async fn launch(config: Config) -> Result<RunningBroker, StartError> {
    let grpc = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            key: "server.listen",
            source,
        })?;
    let http = TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.http_listen,
            key: "server.http_listen",
            source,
        })?;
    serve(grpc, http, config, Arc::new(SystemClock)).await
}

/// Starts the broker on bound listeners (port 0 in tests).
pub async fn serve(
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    config: Config,
    clock: Arc<dyn Clock>,
) -> Result<RunningBroker, StartError> {
    let local = |l: &TcpListener| {
        l.local_addr().map_err(|e| StartError::Other {
            what: "the bound address",
            detail: e.to_string(),
        })
    };
    let grpc_addr = local(&grpc_listener)?;
    let http_addr = local(&http_listener)?;
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
        revocation_feed: usize::try_from(config.caps.watch_lag_events).unwrap_or(4096),
        ..StoreOptions::default()
    };
    let store: Arc<dyn Store> = Arc::new(
        tokio::task::spawn_blocking(move || RedbStore::open(store_path, store_options))
            .await
            .map_err(|e| StartError::Other {
                what: "opening the store",
                detail: e.to_string(),
            })??,
    );
    crate::operators::record_bootstrap_admin(
        store.as_ref(),
        &config.trust_domain,
        dir,
        pki.first_admin.as_ref(),
        clock.now(),
    )
    .await?;
    let oidc = OidcVerifier::new(
        config.oidc.clone(),
        OidcOptions {
            leeway_seconds: config.leeway_seconds,
            ..OidcOptions::default()
        },
        Arc::clone(&clock),
    )
    .await?;
    // Client certificates: the broker's CA vouches for operators and for its own trust
    // domain's agents; each [[attestation.x509]] CA for the agents of the domains it names.
    let broker_ca = crate::tls::certs("the broker's CA (ca.pem)", &pki.ca_pem)?;
    let own = || crate::broker::own_authority(&broker_ca, &config.trust_domain);
    let mut agent_authorities = vec![own()];
    let mut agent_roots = broker_ca.clone();
    for x in &config.x509 {
        let pem = std::fs::read_to_string(&x.ca_file).map_err(|e| StartError::Other {
            what: "reading an attestation.x509 ca_file",
            detail: format!("{}: {e}", x.ca_file.display()),
        })?;
        let roots = crate::tls::certs("attestation.x509 ca_file", &pem)?;
        agent_roots.extend(roots.iter().cloned());
        agent_authorities.push(taskpass_attest::Authority {
            name: format!("the CA in {}", x.ca_file.display()),
            roots,
            trust_domains: x.trust_domains.clone(),
        });
    }
    let x509_trust_domains = agent_authorities
        .iter()
        .flat_map(|a| a.trust_domains.iter().cloned())
        .collect();
    let agent_certs = Arc::new(taskpass_attest::X509Verifier::new(agent_authorities)?);
    let own_certs = Arc::new(taskpass_attest::X509Verifier::new(vec![own()])?);
    let issuer = config
        .issuer
        .clone()
        .unwrap_or_else(|| format!("https://{http_addr}"));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let refusals = Arc::new(crate::refusals::Refusals::new(
        usize::try_from(config.caps.refusal_audit_keys).unwrap_or(usize::MAX),
    ));
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
        x509_trust_domains,
        agent_certs,
        own_certs,
        revoked_serials: crate::certificates::RevokedSerials::new(
            store.revoked_certificates(clock.now()).await?,
        ),
        data_dir: dir.clone(),
        ca_pem: pki.ca_pem.clone(),
        certificate_hours: config.certificate_hours,
        shutdown: shutdown_rx.clone(),
        rate: config
            .agent_rate
            .map(|(rps, burst)| crate::ratelimit::RateLimiter::new(rps, burst)),
        refusals: Arc::clone(&refusals),
        open_revocation_stream: config.validation.open_revocation_stream,
        status: crate::status::StatusLists::new(
            &issuer,
            config.validation.status_list_ttl_seconds,
            store.last_status_index().await?,
        ),
        token_proofs: taskpass_verify::DpopVerifier::new(
            u32::try_from(taskpass_verify::DEFAULT_PROOF_WINDOW_SECS).unwrap_or(60),
            taskpass_verify::DEFAULT_REPLAY_CACHE,
        ),
        roles: config.roles.clone(),
        approval_timeout: config.approval_timeout_seconds,
        delegation: crate::delegation::Delegation::new(
            config.delegation.clone(),
            config.leeway_seconds,
            Arc::clone(&clock),
        )
        .await?,
        task_changes: tokio::sync::broadcast::channel(1024).0,
        policies: crate::policies::ActivePolicies::load(&*store, &config.policy_files, clock.now())
            .await?,
        conns: crate::broker::Connections {
            grpc: Admission::new(
                "grpc",
                config.caps.max_connections,
                config.caps.max_connections_per_address,
            ),
            https: Admission::new(
                "https",
                config.caps.max_connections,
                config.caps.max_connections_per_address,
            ),
            watches: crate::broker::WatchSlots::new(
                config.caps.watch_subscribers,
                config.caps.watch_subscribers_per_address,
                config.caps.watch_subscribers_per_connection,
            ),
        },
    });

    let mut tasks = vec![oidc.spawn_refresh()];

    // Refusals counted since the last interval become one audit entry each, in one commit.
    tasks.push(tokio::spawn(flush_refusals(
        Arc::clone(&refusals),
        Arc::clone(&store),
        Arc::clone(&clock),
        Duration::from_secs(u64::from(config.caps.refusal_audit_interval_seconds)),
    )));

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
                let renewed = server
                    .issue()
                    .map_err(|e| e.to_string())
                    .and_then(|(chain, key)| certs.replace(&chain, &key).map_err(|e| e.to_string()));
                match renewed {
                    Ok(()) => tracing::info!("renewed the server certificate"),
                    Err(e) => tracing::error!(error = %e, "server certificate renewal failed; retrying at the next interval"),
                }
            }
        }));
    }

    // HTTPS.
    let caps = &config.caps;
    let handshake = Duration::from_secs(u64::from(caps.handshake_timeout_seconds));
    // Client certificates as on the gRPC listener: the token endpoint's tls_client_auth
    // verifies them (agents' against their CAs), nothing else reads them.
    let http_tls = crate::tls::server_config(&agent_roots, &certs, &[b"h2", b"http/1.1"])?;
    tasks.push(tokio::spawn(crate::conn::serve_https(
        crate::tls::incoming(
            http_listener,
            http_tls,
            Arc::clone(&broker.conns.https),
            handshake,
        ),
        crate::http::router(Arc::clone(&broker)),
        HttpsSettings::from_limits(caps),
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
        .build_v1()
        .map_err(|e| StartError::Other {
            what: "gRPC reflection",
            detail: e.to_string(),
        })?;
    let routes = tonic::service::Routes::new(health_service)
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
        )
        .prepare();
    let routes = tower::ServiceBuilder::new()
        .map_response(size_limit_is_resource_exhausted)
        .service(routes);
    let grpc_tls = crate::tls::server_config(&agent_roots, &certs, &[b"h2"])?;
    let grpc = tokio::spawn(crate::conn::serve_grpc(
        crate::tls::incoming(
            grpc_listener,
            grpc_tls,
            Arc::clone(&broker.conns.grpc),
            handshake,
        ),
        routes,
        GrpcSettings::from_limits(caps),
        shutdown_rx,
    ));

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
        refusals,
    })
}

/// Every `every`, writes the refusals counted since the last time. Drafts that cannot be
/// written (the store cannot write) are put back and written with the next interval's.
async fn flush_refusals(
    refusals: Arc<crate::refusals::Refusals>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let drafts = refusals.take(clock.now());
        if drafts.is_empty() {
            continue;
        }
        let n = drafts.len();
        if let Err(e) = store.append_audits(drafts.clone()).await {
            tracing::warn!(error = %e, entries = n, "cannot write the refusal tally yet; keeping it");
            refusals.restore(drafts);
        }
    }
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
) -> Result<(), StartError> {
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
