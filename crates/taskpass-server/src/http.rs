//! The HTTPS endpoints: JWKS, status lists, the OAuth token endpoint and its RFC 8414
//! metadata (`oauth/`), health and Prometheus metrics.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::broker::Broker;

/// The routes.
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route(crate::oauth::METADATA_PATH, get(crate::oauth::metadata))
        // RFC 8414 §3.1 path insertion, for an issuer with a path (behind a proxy).
        .route(
            &format!("{}/{{*issuer_path}}", crate::oauth::METADATA_PATH),
            get(crate::oauth::metadata_inserted),
        )
        .route(
            crate::oauth::TOKEN_PATH,
            axum::routing::post(crate::oauth::token),
        )
        .route("/statuslists/{n}", get(status_list))
        .merge(crate::agent_http::routes())
        .merge(crate::authzen::routes())
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

async fn status_list(
    State(b): State<Arc<Broker>>,
    axum::extract::Path(n): axum::extract::Path<String>,
) -> axum::response::Response {
    let not_found = || (StatusCode::NOT_FOUND, "no such status list\n").into_response();
    // Canonical decimal only: one URL per list.
    let Some(n) = n.parse::<u64>().ok().filter(|v| v.to_string() == n) else {
        return not_found();
    };
    match b.status_list(n).await {
        Ok(Some(jwt)) => (
            [
                (
                    header::CONTENT_TYPE,
                    "application/statuslist+jwt".to_owned(),
                ),
                (
                    header::CACHE_CONTROL,
                    format!("public, max-age={}", b.status_list_ttl()),
                ),
            ],
            jwt,
        )
            .into_response(),
        Ok(None) => not_found(),
        Err(e) => {
            tracing::error!(error = %e, "cannot build a status list");
            (StatusCode::SERVICE_UNAVAILABLE, "status list unavailable\n").into_response()
        }
    }
}

async fn healthz(State(b): State<Arc<Broker>>) -> impl IntoResponse {
    if let Some(why) = b.store().write_failure() {
        tracing::warn!(error = %why, "health check: the store cannot write");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store cannot write: {why}\n"),
        );
    }
    match b.store().stats().await {
        Ok(_) => (StatusCode::OK, "ok\n".to_owned()),
        Err(e) => {
            tracing::error!(error = %e, "health check: store unreadable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable\n".to_owned(),
            )
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
        (
            "taskpass_store_writable",
            "1 while the store can write, 0 while it cannot (full disk, I/O errors).",
            if b.store().write_failure().is_some() {
                0.0
            } else {
                1.0
            },
        ),
        (
            "taskpass_grpc_connections",
            "Open gRPC connections, handshakes included.",
            b.conns.grpc.open() as f64,
        ),
        (
            "taskpass_grpc_connections_refused_total",
            "gRPC connections refused by limits.max_connections(_per_address).",
            b.conns.grpc.refused() as f64,
        ),
        (
            "taskpass_https_connections",
            "Open HTTPS connections, handshakes included.",
            b.conns.https.open() as f64,
        ),
        (
            "taskpass_https_connections_refused_total",
            "HTTPS connections refused by limits.max_connections(_per_address).",
            b.conns.https.refused() as f64,
        ),
        (
            "taskpass_watch_streams",
            "Live WatchRevocations streams.",
            b.conns.watches.live() as f64,
        ),
        (
            "taskpass_watch_streams_refused_total",
            "WatchRevocations streams refused by limits.watch_subscribers(_per_connection).",
            b.conns.watches.refused() as f64,
        ),
    ];
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        b.metrics().render(&extra),
    )
}
