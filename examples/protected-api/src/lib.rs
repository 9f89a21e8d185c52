//! A downstream API protected by Taskpass: every route but `/metrics` sits behind
//! [`BearerLayer`], which verifies the agent's token against the broker's keys, refuses it
//! within the revocation stream's latency once revoked, and serves RFC 9728 metadata. The
//! handlers only read the verified claims.
//!
//! `/mcp` is a minimal MCP server (streamable HTTP, stateless, JSON answers: `initialize`,
//! `tools/list`, `tools/call` of `lookup_ticket`) behind the same layer: what an MCP server
//! built on the layer needs to accept Taskpass tokens is the layer, nothing more.

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
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
    let protected = Router::new()
        .route("/tickets", get(tickets))
        .route("/mcp", axum::routing::post(mcp).get(no_stream))
        .layer(layer);
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

/// The MCP protocol revision answered when the client names none.
const MCP_VERSION: &str = "2025-06-18";

/// One JSON-RPC message of MCP's streamable HTTP transport, answered as JSON.
async fn mcp(Extension(token): Extension<VerifiedToken>, Json(msg): Json<Value>) -> Response {
    let Some(id) = msg.get("id").cloned() else {
        // A notification (`notifications/initialized`, ...): accepted, no answer.
        return StatusCode::ACCEPTED.into_response();
    };
    let params = msg.get("params").cloned().unwrap_or(Value::Null);
    let result = match msg.get("method").and_then(Value::as_str) {
        Some("initialize") => Ok(json!({
            "protocolVersion": params.get("protocolVersion").and_then(Value::as_str).unwrap_or(MCP_VERSION),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "tickets", "version": "0.1.0"},
        })),
        Some("ping") => Ok(json!({})),
        Some("tools/list") => Ok(json!({"tools": [{
            "name": "lookup_ticket",
            "description": "Looks a ticket up.",
            "inputSchema": {"type": "object", "properties": {"ticket_id": {"type": "string"}}, "required": ["ticket_id"]},
        }]})),
        Some("tools/call") if params["name"] == "lookup_ticket" => {
            let id = params["arguments"]["ticket_id"].as_str().unwrap_or("?");
            Ok(json!({"content": [{"type": "text",
                "text": format!("ticket {id}: printer on fire (asked by {})", token.client_id)}]}))
        }
        Some("tools/call") => Err((-32602, "unknown tool")),
        _ => Err((-32601, "method not found")),
    };
    let answer = match result {
        Ok(r) => json!({"jsonrpc": "2.0", "id": id, "result": r}),
        Err((code, message)) => {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
        }
    };
    Json(answer).into_response()
}

/// No server-initiated stream: this server only answers.
async fn no_stream() -> StatusCode {
    StatusCode::METHOD_NOT_ALLOWED
}

async fn metrics(State(verifier): State<Arc<Verifier>>) -> String {
    verifier.metrics_text()
}
