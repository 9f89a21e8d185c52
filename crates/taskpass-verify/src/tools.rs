//! Tool-call authorisation for gateways and MCP servers: asks the broker's AuthZEN endpoint
//! (`POST /access/v1/evaluation`) whether the holder of a token may call a tool with these
//! arguments, as a registered validator (its client certificate).
//!
//! ```no_run
//! # async fn f(token: &str) -> Result<(), taskpass_verify::VerifyError> {
//! let tools = taskpass_verify::ToolAuthorizer::new(
//!     "https://taskpass.example.org",
//!     &std::fs::read_to_string("ca.pem").unwrap(),
//!     (&std::fs::read_to_string("mcp-git.pem").unwrap(), &std::fs::read_to_string("mcp-git-key.pem").unwrap()),
//! )?;
//! let d = tools.evaluate(token, "git_push", &serde_json::json!({"force": true})).await?;
//! if !d.allowed { /* refuse the call, citing d.reason and d.policies */ }
//! # Ok(()) }
//! ```

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::error::VerifyError;

/// The largest answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The broker's answer to one tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ToolDecision {
    /// Whether the call may go ahead.
    pub allowed: bool,
    /// `allowed`, the rule that refused (`policy_forbids`, `no_policy_permits`,
    /// `approval_required`, …) or why the token is not active (`revoked`, `task_completed`, …).
    pub reason: String,
    /// The ids of the policies that decided it.
    pub policies: Vec<String>,
    /// What a person can do about a refusal.
    pub message: String,
}

/// A client of the broker's AuthZEN endpoint.
pub struct ToolAuthorizer {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: String,
    timeout: Duration,
}

impl std::fmt::Debug for ToolAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolAuthorizer")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl ToolAuthorizer {
    /// A client of the broker at `broker_url` (its HTTPS listener, e.g. the issuer URL),
    /// trusting `ca_pem` and presenting the validator credential `identity` (certificate
    /// PEM, key PEM; from `taskpass validator add`).
    pub fn new(
        broker_url: &str,
        ca_pem: &str,
        identity: (&str, &str),
    ) -> Result<Self, VerifyError> {
        let base = broker_url.trim_end_matches('/');
        if !base.starts_with("https://") {
            return Err(VerifyError::Unavailable(format!(
                "the broker URL {base:?} must be https://"
            )));
        }
        let connector = crate::status_list::connector(Some(ca_pem), Some(identity))?;
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            url: format!("{base}/access/v1/evaluation"),
            timeout: Duration::from_secs(5),
        })
    }

    /// Whether the holder of `token` may call `tool` with `arguments` (a JSON object). A
    /// broker that cannot be asked is an error: the caller must refuse the call (fail closed).
    pub async fn evaluate(
        &self,
        token: &str,
        tool: &str,
        arguments: &Value,
    ) -> Result<ToolDecision, VerifyError> {
        let body = json!({
            "subject": {"type": "access_token", "id": token},
            "action": {"name": "CallTool"},
            "resource": {"type": "tool", "id": tool},
            "context": {"arguments": arguments},
        })
        .to_string();
        let req = http::Request::post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| VerifyError::Unavailable(format!("the evaluation request: {e}")))?;
        let unavailable = |e: String| VerifyError::Unavailable(format!("AuthZEN evaluation: {e}"));
        // One deadline for the whole exchange: a broker that sends headers and stalls is cut
        // off too.
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| unavailable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, VerifyError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| unavailable("the broker did not answer in time".into()))??;
        let doc: Value = serde_json::from_slice(&bytes)
            .map_err(|_| unavailable(format!("the broker answered {status} without JSON")))?;
        if !status.is_success() {
            let message = doc["error"]["message"].as_str().unwrap_or("no message");
            return Err(unavailable(format!(
                "the broker answered {status}: {message}"
            )));
        }
        let allowed = doc["decision"]
            .as_bool()
            .ok_or_else(|| unavailable("the answer has no boolean decision".into()))?;
        let ctx = &doc["context"];
        Ok(ToolDecision {
            allowed,
            reason: ctx["reason"].as_str().unwrap_or_default().to_owned(),
            policies: ctx["policies"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            message: ctx["message"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// [`ToolAuthorizer::evaluate`] for the token of a request the tower layer let through
    /// (`Authorization: Bearer …` or `DPoP …`): a request without one is refused.
    pub async fn evaluate_request<B>(
        &self,
        req: &http::Request<B>,
        tool: &str,
        arguments: &Value,
    ) -> Result<ToolDecision, VerifyError> {
        let token = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| {
                scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("dpop")
            })
            .map(|(_, t)| t.trim())
            .ok_or(VerifyError::Malformed)?;
        self.evaluate(token, tool, arguments).await
    }
}
