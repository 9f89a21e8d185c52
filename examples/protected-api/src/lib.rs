//! A downstream API protected by Taskpass: every route but `/metrics` sits behind
//! [`BearerLayer`], which verifies the agent's token against the broker's keys, refuses it
//! within the revocation stream's latency once revoked, and serves RFC 9728 metadata. The
//! handlers only read the verified claims.

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use taskpass_verify::middleware::{BearerLayer, ResourceMetadata};
use taskpass_verify::{VerifiedToken, Verifier};

/// The scope `GET /tickets` needs.
pub const READ_SCOPE: &str = "tickets:read";

/// The API's routes: `GET /tickets` (scope `tickets:read`), the protected-resource
/// metadata, and `GET /metrics` (the verifier's revocation state, no token needed).
pub fn app(verifier: Arc<Verifier>, audience: &str) -> Router {
    let layer = BearerLayer::new(Arc::clone(&verifier), audience)
        .require_scope(READ_SCOPE)
        .with_resource_metadata(ResourceMetadata {
            resource: audience.to_owned(),
            authorization_servers: vec![verifier.issuer().to_owned()],
            scopes_supported: vec![READ_SCOPE.to_owned()],
        });
    let protected = Router::new().route("/tickets", get(tickets)).layer(layer);
    let open = Router::new()
        .route("/metrics", get(metrics))
        .with_state(verifier);
    open.merge(protected)
}

async fn tickets(Extension(token): Extension<VerifiedToken>) -> Json<Value> {
    Json(json!({
        "tickets": [
            {"id": 4711, "title": "Printer on fire", "state": "open"},
            {"id": 4712, "title": "VPN drops every hour", "state": "open"},
        ],
        "served_to": token.client_id,
        "task": token.task_id,
    }))
}

async fn metrics(State(verifier): State<Arc<Verifier>>) -> String {
    verifier.metrics_text()
}
