//! AgentService over HTTPS and JSON, for runtimes without HTTP/2 gRPC (edge, serverless):
//! the same calls, semantics, errors and audit, documented in `docs/http-api.md`.
//!
//! | route | call |
//! |---|---|
//! | `POST /v1/tasks` | StartTask |
//! | `GET /v1/tasks/{task_id}` | GetTask |
//! | `POST /v1/tasks/{task_id}/tokens` | IssueToken |
//! | `POST /v1/tasks/{task_id}/complete` | CompleteTask |
//!
//! The agent attests with `Authorization: Bearer <platform JWT>` (its OIDC attestation) or,
//! without that header, with the client certificate of the connection (mTLS attestation).
//! Bodies are JSON objects, at most [`MAX_BODY_BYTES`], with no member unknown to the call.
//! Errors are `{"error": {"code": "PERMISSION_DENIED", "message": "…"}}` with the HTTP status
//! of [`ApiError::http_status`].

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt as _;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use taskpass_proto::v1 as pb;

use crate::broker::{Broker, Caller};
use crate::error::ApiError;

/// The largest JSON body read, bytes.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// The routes, under `/v1`.
pub(crate) fn routes() -> Router<Arc<Broker>> {
    Router::new()
        .route("/v1/tasks", post(start_task))
        .route("/v1/tasks/{task_id}", get(get_task))
        .route("/v1/tasks/{task_id}/tokens", post(issue_token))
        .route("/v1/tasks/{task_id}/complete", post(complete_task))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartTask {
    purpose: String,
    audiences: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    max_duration_seconds: u32,
    #[serde(default)]
    subject_token: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueToken {
    audience: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    ttl_seconds: u32,
    #[serde(default)]
    dpop_jkt: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteTask {
    /// The work failed: recorded in the audit log with `failure`.
    #[serde(default)]
    failed: bool,
    #[serde(default)]
    failure: String,
}

async fn start_task(State(b): State<Arc<Broker>>, req: Request<Body>) -> Response {
    call(
        &b,
        "http.StartTask",
        req,
        |b, caller, attestation, body: StartTask| async move {
            let task = b
                .start_task(
                    &caller,
                    pb::StartTaskRequest {
                        attestation,
                        purpose: body.purpose,
                        audiences: body.audiences,
                        scopes: body.scopes,
                        max_duration_seconds: body.max_duration_seconds,
                        subject_token: body.subject_token,
                    },
                )
                .await?;
            Ok(task_json(&task))
        },
    )
    .await
}

async fn get_task(
    State(b): State<Arc<Broker>>,
    Path(task_id): Path<String>,
    req: Request<Body>,
) -> Response {
    call(
        &b,
        "http.GetTask",
        req,
        |b, caller, attestation, Empty {}| async move {
            let task = b
                .get_task(
                    &caller,
                    pb::GetTaskRequest {
                        attestation,
                        task_id,
                    },
                )
                .await?;
            Ok(task_json(&task))
        },
    )
    .await
}

async fn issue_token(
    State(b): State<Arc<Broker>>,
    Path(task_id): Path<String>,
    req: Request<Body>,
) -> Response {
    call(
        &b,
        "http.IssueToken",
        req,
        |b, caller, attestation, body: IssueToken| async move {
            let t = b
                .issue_token(
                    &caller,
                    pb::IssueTokenRequest {
                        attestation,
                        task_id,
                        audience: body.audience,
                        scopes: body.scopes,
                        ttl_seconds: body.ttl_seconds,
                        dpop_jkt: body.dpop_jkt,
                    },
                )
                .await?;
            Ok(json!({
                "access_token": t.access_token,
                "token_id": t.token_id,
                "expires_at": t.expires_at,
                // Seconds left: a client caches it without trusting its own clock.
                "expires_in": (t.expires_at - b.now()).max(0),
                "scopes": t.scopes,
            }))
        },
    )
    .await
}

async fn complete_task(
    State(b): State<Arc<Broker>>,
    Path(task_id): Path<String>,
    req: Request<Body>,
) -> Response {
    call(
        &b,
        "http.CompleteTask",
        req,
        |b, caller, attestation, body: CompleteTask| async move {
            let done = b
                .complete_task(
                    &caller,
                    pb::CompleteTaskRequest {
                        attestation,
                        task_id,
                        failed: body.failed,
                        failure: body.failure,
                    },
                )
                .await?;
            Ok(json!({
                "task": done.task.as_ref().map(task_json),
                "revoked_tokens": done.revoked_tokens,
            }))
        },
    )
    .await
}

/// Reads the attestation and the body, runs `f` in a span, answers and counts the call.
async fn call<B, F, Fut>(b: &Arc<Broker>, rpc: &'static str, req: Request<Body>, f: F) -> Response
where
    B: DeserializeOwned,
    F: FnOnce(Arc<Broker>, Caller, Option<pb::Attestation>, B) -> Fut,
    Fut: std::future::Future<Output = Result<Value, ApiError>>,
{
    let start = Instant::now();
    let span = tracing::info_span!(
        "http",
        method = rpc,
        agent_id = tracing::field::Empty,
        task_id = tracing::field::Empty
    );
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_default();
    let (parts, body) = req.into_parts();
    let run = async {
        let attestation = attestation(&parts.headers)?;
        let body = read_body::<B>(&parts.headers, body).await?;
        f(Arc::clone(b), caller, attestation, body).await
    };
    let r = tracing::Instrument::instrument(run, span.clone()).await;
    let code = match &r {
        Ok(_) => tonic::Code::Ok,
        Err(e) => e.code(),
    };
    b.metrics().observe(rpc, code, start.elapsed());
    if let Err(e) = &r {
        span.in_scope(|| tracing::info!(code = ?code, error = %e, "http call failed"));
    }
    answer(r)
}

/// A call's JSON answer (200, `no-store`), or its error document.
pub(crate) fn answer(r: Result<Value, ApiError>) -> Response {
    match r {
        Ok(v) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            v.to_string(),
        )
            .into_response(),
        Err(e) => error_response(&e),
    }
}

/// `Authorization: Bearer <jwt>` is an OIDC attestation; no header, the connection's client
/// certificate.
fn attestation(headers: &HeaderMap) -> Result<Option<pb::Attestation>, ApiError> {
    use pb::attestation::Method;
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(Some(pb::Attestation {
            method: Some(Method::Mtls(pb::MtlsAttestation {})),
        }));
    };
    if values.next().is_some() {
        return Err(ApiError::InvalidArgument(
            "send one Authorization header".into(),
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthenticated("the Authorization header is not ASCII".into()))?;
    let token = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthenticated(
                "attestation: send Authorization: Bearer <your platform's OIDC token>, or connect with the agent's client certificate".into(),
            )
        })?;
    Ok(Some(pb::Attestation {
        method: Some(Method::OidcToken(token.to_owned())),
    }))
}

/// The JSON body of `req` (at most [`MAX_BODY_BYTES`], `application/json`).
pub(crate) async fn json_body(req: Request<Body>) -> Result<Value, ApiError> {
    let (parts, body) = req.into_parts();
    read_body::<Value>(&parts.headers, body).await
}

/// The JSON body as `B`; no body is `{}` (refused by the calls with required fields).
async fn read_body<B: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<B, ApiError> {
    let bytes = http_body_util::Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|_| {
            ApiError::ResourceExhausted(format!("the body is larger than {MAX_BODY_BYTES} bytes"))
        })?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return serde_json::from_slice::<B>(b"{}")
            .map_err(|e| ApiError::InvalidArgument(format!("the body: {e}")));
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::InvalidArgument(
            "the body must be application/json".into(),
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::InvalidArgument(format!("the body is not the call's JSON: {e}")))
}

fn error_response(e: &ApiError) -> Response {
    let message = match e {
        ApiError::Internal(detail) => {
            tracing::error!(detail = %detail, "internal error");
            "internal error in the broker; its log has the detail".to_owned()
        }
        other => other.to_string(),
    };
    let doc = json!({"error": {"code": code_name(e.code()), "message": message}});
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        doc.to_string(),
    )
        .into_response();
    if matches!(e, ApiError::RateLimited(_) | ApiError::Unavailable(_)) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"taskpass\""),
        );
    }
    resp
}

/// The gRPC code's canonical name, as the JSON error's `code`.
fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match c {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn task_json(t: &pb::Task) -> Value {
    let state = pb::TaskState::try_from(t.state)
        .map(|s| match s {
            pb::TaskState::Open => "open",
            pb::TaskState::PendingApproval => "pending_approval",
            pb::TaskState::Completed => "completed",
            pb::TaskState::Expired => "expired",
            pb::TaskState::Revoked => "revoked",
            pb::TaskState::Denied => "denied",
            pb::TaskState::Unspecified => "unspecified",
        })
        .unwrap_or("unspecified");
    json!({
        "task_id": t.task_id,
        "agent_id": t.agent_id,
        "state": state,
        "purpose": t.purpose,
        "audiences": t.audiences,
        "scopes": t.scopes,
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "on_behalf_of": t.on_behalf_of,
        "approval_id": t.approval_id,
        "approval_why": t.approval_why,
        "approved_by": t.approved_by,
        "implicit": t.implicit,
    })
}
