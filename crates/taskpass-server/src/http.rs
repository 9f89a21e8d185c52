//! The HTTPS endpoints: JWKS, RFC 8414 metadata, health and Prometheus metrics.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio_stream::StreamExt;

use crate::broker::Broker;

const MAX_CONNECTIONS: usize = 1024;
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const MAX_CONNECTION_AGE: std::time::Duration = std::time::Duration::from_secs(300);

/// The routes.
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(broker)
}

async fn jwks(State(b): State<Arc<Broker>>) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/jwk-set+json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        b.jwks_json(),
    )
}

async fn metadata(State(b): State<Arc<Broker>>) -> impl IntoResponse {
    let doc = serde_json::json!({
        "issuer": b.issuer(),
        "jwks_uri": format!("{}/.well-known/jwks.json", b.issuer().trim_end_matches('/')),
        "token_endpoint_auth_methods_supported": ["none"],
        "response_types_supported": [],
        "grant_types_supported": [],
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
}

async fn healthz(State(b): State<Arc<Broker>>) -> impl IntoResponse {
    match b.store().stats().await {
        Ok(_) => (StatusCode::OK, "ok\n"),
        Err(e) => {
            tracing::error!(error = %e, "health check: store unreadable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
        }
    }
}

async fn metrics(State(b): State<Arc<Broker>>) -> impl IntoResponse {
    let stats = b.store().stats().await.unwrap_or_default();
    #[expect(
        clippy::cast_precision_loss,
        reason = "gauges are approximate by nature"
    )]
    let extra = [
        (
            "taskpass_store_agents",
            "Agents registered.",
            stats.agents as f64,
        ),
        (
            "taskpass_store_tasks",
            "Tasks recorded.",
            stats.tasks as f64,
        ),
        (
            "taskpass_store_tokens",
            "Token records.",
            stats.tokens as f64,
        ),
        (
            "taskpass_store_revocations",
            "Revocation log entries.",
            stats.revocations as f64,
        ),
        (
            "taskpass_store_audit_entries",
            "Audit log entries.",
            stats.audit_entries as f64,
        ),
        (
            "taskpass_store_commits_total",
            "Grouped commits since start.",
            stats.commits as f64,
        ),
        (
            "taskpass_store_commands_total",
            "Commands applied in grouped commits.",
            stats.commands as f64,
        ),
        (
            "taskpass_store_commit_seconds_total",
            "Time spent applying and committing.",
            stats.commit_micros as f64 / 1e6,
        ),
    ];
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        b.metrics().render(&extra),
    )
}

/// Serves `router` on TLS streams until `shutdown` fires.
pub async fn serve<S>(
    mut incoming: S,
    router: Router,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) where
    S: tokio_stream::Stream<
            Item = Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
        > + Unpin,
{
    // Bounded: slow or idle clients cannot pile up tasks and sockets.
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            s = incoming.next() => match s {
                Some(Ok(s)) => s,
                Some(Err(_)) => continue,
                None => return,
            },
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = std::sync::Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(
                "HTTPS connection limit ({MAX_CONNECTIONS}) reached: dropping a connection"
            );
            continue;
        };
        let svc = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Some(HEADER_TIMEOUT));
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                () = tokio::time::sleep(MAX_CONNECTION_AGE) => {
                    // Old enough: finish what is in flight, accept nothing new, then close.
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(HEADER_TIMEOUT, conn.as_mut())
                        .await
                        .unwrap_or(Ok(()))
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "https connection ended with an error");
            }
            drop(permit);
        });
    }
}
