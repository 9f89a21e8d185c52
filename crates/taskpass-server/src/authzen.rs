//! Tool-call authorisation for gateways and MCP servers: the OpenID AuthZEN Authorization API
//! 1.0 evaluation endpoints on the HTTPS listener, for registered validators (and operators
//! with `tokens:read`), deciding `CallTool` for a presented Taskpass token against the policy
//! set in force.
//!
//! `POST /access/v1/evaluation`:
//! ```json
//! {"subject": {"type": "access_token", "id": "<the Taskpass token>"},
//!  "action": {"name": "CallTool"},
//!  "resource": {"type": "tool", "id": "create_invoice"},
//!  "context": {"arguments": {"amount": 120}}}
//! ```
//! answers `{"decision": true|false, "context": {"reason": …, "policies": […], "message": …}}`.
//! `POST /access/v1/evaluations` takes the same defaults and an `evaluations` array whose items
//! override them, with `options.evaluations_semantic` `execute_all` (default),
//! `deny_on_first_deny` or `permit_on_first_permit`. The token is checked by the one
//! verification profile (as Introspect does: a validator only for its own audiences); the
//! agent is the principal, the tool (its parent the token's audience) the resource, the call's
//! arguments, the task's purpose and the token's scopes the context. Every evaluation is
//! audited (`authzen.evaluate`).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::Request;
use axum::response::Response;
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use taskpass_core::{
    Audience, AuditEntry, AuditOutcome, PolicyAction, PolicyContext, PolicyQuery, PolicyResource,
    ScopeSet, Verdict,
};

use crate::broker::{ActiveToken, Broker, Caller};
use crate::error::ApiError;

/// The most evaluations in one batch.
const MAX_EVALUATIONS: usize = 64;
/// The longest tool name.
const MAX_TOOL: usize = 256;

pub(crate) fn routes() -> Router<Arc<Broker>> {
    Router::new()
        .route("/access/v1/evaluation", post(evaluation))
        .route("/access/v1/evaluations", post(evaluations))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Subject {
    #[serde(rename = "type")]
    kind: String,
    id: String,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "AuthZEN allows it; Taskpass reads the token instead"
    )]
    properties: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Action {
    name: String,
    #[serde(default)]
    #[allow(dead_code, reason = "AuthZEN allows it; CallTool takes none")]
    properties: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Resource {
    #[serde(rename = "type")]
    kind: String,
    id: String,
    #[serde(default)]
    #[allow(dead_code, reason = "AuthZEN allows it; the tool is named by its id")]
    properties: Option<Map<String, Value>>,
}

/// One evaluation request, or a batch item (whose absent parts come from the batch).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Evaluation {
    subject: Option<Subject>,
    action: Option<Action>,
    resource: Option<Resource>,
    context: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default)]
    evaluations_semantic: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    subject: Option<Subject>,
    action: Option<Action>,
    resource: Option<Resource>,
    context: Option<Map<String, Value>>,
    evaluations: Vec<Evaluation>,
    #[serde(default)]
    options: Option<Options>,
}

/// The answer to one evaluation.
fn answer(decision: bool, reason: &str, policies: &[String], message: &str) -> Value {
    json!({"decision": decision, "context": {
        "reason": reason, "policies": policies, "message": message,
    }})
}

impl Broker {
    /// One evaluation by `reader`: malformed requests are errors; a token that is not active,
    /// or a tool the policies do not permit, is `decision: false` with the reason.
    async fn evaluate_tool_call(
        &self,
        reader: &crate::principals::Principal,
        e: Evaluation,
    ) -> Result<Value, ApiError> {
        let (Some(subject), Some(action), Some(resource)) = (e.subject, e.action, e.resource)
        else {
            return Err(ApiError::InvalidArgument(
                "an evaluation needs subject, action and resource".into(),
            ));
        };
        if subject.kind != "access_token" {
            return Err(ApiError::InvalidArgument(format!(
                "subject.type {:?}: Taskpass evaluates a presented token: send {{\"type\": \"access_token\", \"id\": \"<the token>\"}}",
                crate::admin::shown(&subject.kind)
            )));
        }
        if action.name != "CallTool" {
            return Err(ApiError::InvalidArgument(format!(
                "action.name {:?}: the only action evaluated here is CallTool",
                crate::admin::shown(&action.name)
            )));
        }
        if resource.kind != "tool"
            || resource.id.is_empty()
            || resource.id.len() > MAX_TOOL
            || resource.id.chars().any(char::is_control)
        {
            return Err(ApiError::InvalidArgument(format!(
                "resource: send {{\"type\": \"tool\", \"id\": \"<tool name, 1 to {MAX_TOOL} bytes>\"}}"
            )));
        }
        let arguments = match e.context.as_ref().and_then(|c| c.get("arguments")) {
            None => Value::Object(Map::new()),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => {
                return Err(ApiError::InvalidArgument(
                    "context.arguments must be a JSON object (the tool call's arguments)".into(),
                ));
            }
        };
        let reader_id = reader.id().to_owned();
        let now = self.now();
        let mut audit = AuditEntry::draft(now, &reader_id, "authzen.evaluate");
        audit.detail = format!("tool={:?}", resource.id);
        let (verdict, active) = match self.check_token(reader, &subject.id).await? {
            Err(reason) => {
                audit.outcome = AuditOutcome::Deny;
                audit.reason = format!("token_{reason}");
                self.store.append_audit(audit).await?;
                return Ok(answer(
                    false,
                    reason,
                    &[],
                    "the token is not active: the caller must not run the tool",
                ));
            }
            Ok(active) => (
                self.tool_verdict(&active, &resource.id, &arguments, now)?,
                active,
            ),
        };
        audit.agent_id = active.agent.id.to_string();
        audit.task_id = active.task.id.to_string();
        audit.token_id = active.claims.jti.clone();
        let out = match &verdict {
            Verdict::Allow { policies } => {
                audit.reason = std::iter::once("allowed".to_owned())
                    .chain(policies.iter().map(|p| format!("policy:{p}")))
                    .collect::<Vec<_>>()
                    .join(" ");
                answer(true, "allowed", policies, "")
            }
            Verdict::NeedsApproval { policies } => {
                audit.outcome = AuditOutcome::Deny;
                audit.reason = "approval_required".into();
                answer(
                    false,
                    "approval_required",
                    policies,
                    "this tool call needs a human's approval, which a tool call cannot wait for",
                )
            }
            Verdict::Deny {
                rule,
                policies,
                message,
            } => {
                audit.outcome = AuditOutcome::Deny;
                audit.reason = format!("{message} (rule {rule}; policy {})", policies.join(", "));
                answer(false, rule, policies, message)
            }
        };
        self.store.append_audit(audit).await?;
        Ok(out)
    }

    fn tool_verdict(
        &self,
        active: &ActiveToken,
        tool: &str,
        arguments: &Value,
        now: i64,
    ) -> Result<Verdict, ApiError> {
        let audience = Audience::parse(&active.claims.aud)
            .map_err(|e| ApiError::Internal(format!("an active token's audience: {e}")))?;
        let scopes = ScopeSet::parse(&active.claims.scopes())
            .map_err(|e| ApiError::Internal(format!("an active token's scopes: {e}")))?;
        let resources = [PolicyResource::Tool {
            name: tool,
            audience: &audience,
        }];
        let policies = self.policies.current();
        let ttl = u32::try_from(active.claims.exp.saturating_sub(now)).unwrap_or(0);
        Ok(policies.engine.evaluate(&PolicyQuery {
            agent: &active.agent,
            action: PolicyAction::CallTool,
            resources: &resources,
            context: PolicyContext {
                purpose: active.task.purpose.as_str(),
                scopes: &scopes,
                audiences: std::slice::from_ref(&audience),
                ttl_seconds: ttl,
                user: active.task.user.as_ref(),
                now,
                approved: active.task.approved_by.is_some(),
                arguments: Some(arguments),
            },
        }))
    }
}

/// Parses the JSON body of an AuthZEN call.
async fn body<T: serde::de::DeserializeOwned>(req: Request<Body>) -> Result<(Caller, T), ApiError> {
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_default();
    let value = crate::agent_http::json_body(req).await?;
    let parsed = serde_json::from_value(value)
        .map_err(|e| ApiError::InvalidArgument(format!("the request: {e}")))?;
    Ok((caller, parsed))
}

async fn serve<F, Fut>(b: &Arc<Broker>, rpc: &'static str, f: F) -> Response
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Value, ApiError>>,
{
    let start = Instant::now();
    let r = f().await;
    let code = match &r {
        Ok(_) => tonic::Code::Ok,
        Err(e) => e.code(),
    };
    b.metrics().observe(rpc, code, start.elapsed());
    crate::agent_http::answer(r)
}

async fn evaluation(State(b): State<Arc<Broker>>, req: Request<Body>) -> Response {
    let broker = Arc::clone(&b);
    serve(&b, "AuthzenEvaluation", || async move {
        let (caller, e): (Caller, Evaluation) = body(req).await?;
        let reader = broker.reader(&caller, "AuthZEN evaluation").await?;
        broker.evaluate_tool_call(&reader, e).await
    })
    .await
}

async fn evaluations(State(b): State<Arc<Broker>>, req: Request<Body>) -> Response {
    let broker = Arc::clone(&b);
    serve(&b, "AuthzenEvaluations", || async move {
        let (caller, batch): (Caller, Batch) = body(req).await?;
        let reader = broker.reader(&caller, "AuthZEN evaluations").await?;
        if batch.evaluations.len() > MAX_EVALUATIONS {
            return Err(ApiError::InvalidArgument(format!(
                "at most {MAX_EVALUATIONS} evaluations in one request"
            )));
        }
        let stop_on = match batch
            .options
            .and_then(|o| o.evaluations_semantic)
            .as_deref()
        {
            None | Some("execute_all") => None,
            Some("deny_on_first_deny") => Some(false),
            Some("permit_on_first_permit") => Some(true),
            Some(other) => {
                return Err(ApiError::InvalidArgument(format!(
                    "options.evaluations_semantic {:?}: use execute_all, deny_on_first_deny or permit_on_first_permit",
                    crate::admin::shown(other)
                )));
            }
        };
        let mut out = Vec::with_capacity(batch.evaluations.len());
        for item in batch.evaluations {
            let e = Evaluation {
                subject: item.subject.or_else(|| batch.subject.clone()),
                action: item.action.or_else(|| batch.action.clone()),
                resource: item.resource.or_else(|| batch.resource.clone()),
                context: item.context.or_else(|| batch.context.clone()),
            };
            let a = broker.evaluate_tool_call(&reader, e).await?;
            let decision = a["decision"].as_bool().unwrap_or(false);
            out.push(a);
            if stop_on == Some(decision) {
                break;
            }
        }
        Ok(json!({"evaluations": out}))
    })
    .await
}
