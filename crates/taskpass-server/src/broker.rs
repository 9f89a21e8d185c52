//! The broker's request handling, independent of gRPC plumbing: attest the caller, parse the
//! request into domain values, ask `taskpass-core` for the decision, record it durably, answer.

use std::sync::Arc;

use taskpass_attest::{AttestationMethod, Attestor, Evidence};
use taskpass_core::{
    AccessClaims, Agent, AgentState, Audience, AuditEntry, AuditOutcome, Clock, IssueRequest,
    Limits, Purpose, ScopeSet, StartRequest, Task, TaskId, TaskState, TokenId, TokenRecord,
    TrustDomain, decide_issue, decide_start_task,
};
use taskpass_proto::v1 as pb;
use taskpass_store::{EndTask, Store};

use crate::error::ApiError;
use crate::keys::{KeyRing, MAX_TOKEN_BYTES};
use crate::metrics::Metrics;

/// The largest attestation token accepted.
pub const MAX_ATTESTATION_BYTES: usize = 16 * 1024;

/// Everything a request handler needs.
#[derive(Debug)]
pub struct Broker {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) attestor: Arc<dyn Attestor>,
    pub(crate) keys: Arc<KeyRing>,
    pub(crate) issuer: String,
    pub(crate) trust_domain: TrustDomain,
    pub(crate) limits: Limits,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) trusted_issuers: Vec<String>,
    /// Becomes true when the broker shuts down: long-lived streams end on it.
    pub(crate) shutdown: tokio::sync::watch::Receiver<bool>,
    /// Per-agent request rate limit.
    pub(crate) rate: Option<crate::ratelimit::RateLimiter>,
}

pub(crate) fn task_to_pb(t: &Task, now: i64) -> pb::Task {
    let state = match t.effective_state(now) {
        TaskState::Open => pb::TaskState::Open,
        TaskState::PendingApproval => pb::TaskState::PendingApproval,
        TaskState::Completed => pb::TaskState::Completed,
        TaskState::Expired => pb::TaskState::Expired,
        TaskState::Revoked => pb::TaskState::Revoked,
        TaskState::Denied => pb::TaskState::Denied,
        _ => pb::TaskState::Unspecified,
    };
    pb::Task {
        task_id: t.id.to_string(),
        agent_id: t.agent.to_string(),
        state: state.into(),
        purpose: t.purpose.as_str().to_owned(),
        audiences: t.audiences.iter().map(|a| a.as_str().to_owned()).collect(),
        scopes: t.scopes.to_strings(),
        created_at: t.created_at,
        expires_at: t.expires_at,
        on_behalf_of: t.on_behalf_of.clone().unwrap_or_default(),
        approval_id: t.approval_id.clone().unwrap_or_default(),
    }
}

fn parse_task_id(s: &str) -> Result<TaskId, ApiError> {
    TaskId::parse(s).map_err(|e| ApiError::field("task_id", e))
}

impl Broker {
    /// The tokens' `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The current JWKS.
    pub fn jwks_json(&self) -> String {
        self.keys.jwks_json()
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Verifies the attestation and finds the one agent it proves. Changes nothing.
    pub async fn authenticate(&self, att: Option<&pb::Attestation>) -> Result<Agent, ApiError> {
        use pb::attestation::Method;
        let token = match att.and_then(|a| a.method.as_ref()) {
            None => {
                return Err(ApiError::Unauthenticated(
                    "attestation is missing: send attestation.oidc_token with your platform's OIDC token".into(),
                ));
            }
            Some(Method::Mtls(_)) => {
                return Err(ApiError::Unauthenticated(
                    "mTLS attestation is not enabled on this broker: attest with an OIDC token"
                        .into(),
                ));
            }
            Some(Method::OidcToken(t)) => t,
        };
        if token.len() > MAX_ATTESTATION_BYTES {
            return Err(ApiError::ResourceExhausted(format!(
                "attestation token is larger than {MAX_ATTESTATION_BYTES} bytes"
            )));
        }
        let identity = self
            .attestor
            .attest(&Evidence::OidcToken(token))
            .await
            .map_err(|e| {
                tracing::info!(reason = e.reason(), "attestation refused");
                if e.reason() == "keys_unavailable" {
                    // The broker cannot check it right now; the token may well be good.
                    ApiError::Unavailable(format!("attestation cannot be checked now: {e}"))
                } else {
                    ApiError::Unauthenticated(format!("attestation refused: {e}"))
                }
            })?;
        let (issuer, subject) = match &identity.method {
            AttestationMethod::Oidc { issuer, subject } => (issuer, subject),
            #[allow(unreachable_patterns, reason = "the enum is non_exhaustive")]
            _ => {
                return Err(ApiError::Unauthenticated(
                    "attestation method not supported".into(),
                ));
            }
        };
        let agent = self.store.agent_by_oidc(issuer, subject).await?.ok_or_else(|| {
            ApiError::Unauthenticated(format!(
                "attested identity (issuer {issuer}, subject {subject}) matches no registered agent: an operator must register it"
            ))
        })?;
        tracing::Span::current().record("agent_id", agent.id.as_str());
        Ok(agent)
    }

    /// Charges the agent's rate limit. Every agent call but CompleteTask is charged:
    /// revocation must never be throttled.
    fn charge(&self, agent: &Agent) -> Result<(), ApiError> {
        match &self.rate {
            Some(rate) => rate.check(agent.id.as_str()).map_err(|wait| {
                ApiError::ResourceExhausted(format!(
                    "agent {} is over its rate limit of {} requests per second: retry in {} ms",
                    agent.name,
                    rate.per_second(),
                    wait.as_millis().max(1)
                ))
            }),
            None => Ok(()),
        }
    }

    async fn deny(&self, agent: &Agent, action: &str, task: &str, err: ApiError) -> ApiError {
        let mut a = AuditEntry::draft(self.now(), agent.id.as_str(), action);
        a.outcome = AuditOutcome::Deny;
        a.reason = err.to_string();
        a.agent_id = agent.id.to_string();
        a.task_id = task.to_owned();
        if let Err(e) = self.store.append_audit(a).await {
            return e.into();
        }
        err
    }

    /// Finds a task of this agent; another agent's task is NOT_FOUND too.
    async fn own_task(&self, agent: &Agent, id: &TaskId) -> Result<Task, ApiError> {
        self.store
            .task(id)
            .await?
            .filter(|t| t.agent == agent.id)
            .ok_or_else(|| ApiError::NotFound(format!("task {id} not found for this agent")))
    }

    /// StartTask.
    pub async fn start_task(&self, req: pb::StartTaskRequest) -> Result<pb::Task, ApiError> {
        let agent = self.authenticate(req.attestation.as_ref()).await?;
        self.charge(&agent)?;
        let parsed = (|| {
            Ok::<_, ApiError>(StartRequest {
                purpose: Purpose::parse(&req.purpose).map_err(|e| ApiError::field("purpose", e))?,
                audiences: Audience::parse_list(&req.audiences)
                    .map_err(|e| ApiError::field("audiences", e))?,
                scopes: ScopeSet::parse(&req.scopes).map_err(|e| ApiError::field("scopes", e))?,
                max_duration_seconds: req.max_duration_seconds,
                on_behalf_of_requested: !req.subject_token.is_empty(),
            })
        })();
        let parsed = match parsed {
            Ok(p) => p,
            Err(e) => return Err(self.deny(&agent, "start_task", "", e).await),
        };
        let now = self.now();
        let grant = match decide_start_task(&agent, &parsed, now, &self.limits) {
            Ok(g) => g,
            Err(d) => {
                let rule = d.rule;
                let err = self.deny(&agent, "start_task", "", d.into()).await;
                tracing::info!(rule, "start_task denied");
                return Err(err);
            }
        };
        let task = Task {
            id: TaskId::from_ulid(ulid::Ulid::new()),
            agent: agent.id.clone(),
            state: TaskState::Open,
            purpose: parsed.purpose,
            audiences: grant.audiences,
            scopes: grant.scopes,
            created_at: now,
            expires_at: grant.expires_at,
            ended_at: None,
            on_behalf_of: None,
            approval_id: None,
        };
        tracing::Span::current().record("task_id", task.id.to_string());
        let mut a = AuditEntry::draft(now, agent.id.as_str(), "start_task");
        a.reason = "allow_lists".into();
        a.agent_id = agent.id.to_string();
        a.task_id = task.id.to_string();
        a.detail = format!(
            "audiences={} scopes={} expires_at={}",
            task.audiences
                .iter()
                .map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(","),
            task.scopes.to_claim().replace(' ', ","),
            task.expires_at
        );
        let task = self.store.create_task(task, a).await?;
        Ok(task_to_pb(&task, now))
    }

    /// IssueToken.
    pub async fn issue_token(
        &self,
        req: pb::IssueTokenRequest,
    ) -> Result<pb::IssueTokenResponse, ApiError> {
        let agent = self.authenticate(req.attestation.as_ref()).await?;
        self.charge(&agent)?;
        let task_id = match parse_task_id(&req.task_id) {
            Ok(id) => id,
            Err(e) => return Err(self.deny(&agent, "issue_token", "", e).await),
        };
        tracing::Span::current().record("task_id", req.task_id.as_str());
        let parsed = (|| {
            Ok::<_, ApiError>(IssueRequest {
                audience: Audience::parse(&req.audience)
                    .map_err(|e| ApiError::field("audience", e))?,
                scopes: ScopeSet::parse(&req.scopes).map_err(|e| ApiError::field("scopes", e))?,
                ttl_seconds: req.ttl_seconds,
            })
        })();
        let parsed = match parsed {
            Ok(p) => p,
            Err(e) => return Err(self.deny(&agent, "issue_token", &req.task_id, e).await),
        };
        let task = match self.own_task(&agent, &task_id).await {
            Ok(t) => t,
            Err(e) => return Err(self.deny(&agent, "issue_token", &req.task_id, e).await),
        };
        let now = self.now();
        let grant = match decide_issue(&agent, &task, &parsed, now, &self.limits) {
            Ok(g) => g,
            Err(d) => {
                return Err(self
                    .deny(&agent, "issue_token", &req.task_id, d.into())
                    .await);
            }
        };
        let record = TokenRecord {
            id: TokenId::from_ulid(ulid::Ulid::new()),
            task: task.id,
            agent: agent.id.clone(),
            audience: grant.audience,
            scopes: grant.scopes,
            issued_at: grant.issued_at,
            expires_at: grant.expires_at,
            revoked_at: None,
        };
        let claims = AccessClaims::for_record(&self.issuer, &record, task.on_behalf_of.as_deref());
        let access_token = self.keys.sign(&claims);
        let mut a = AuditEntry::draft(now, agent.id.as_str(), "issue_token");
        a.reason = "task_grant".into();
        a.agent_id = agent.id.to_string();
        a.task_id = req.task_id.clone();
        a.token_id = record.id.to_string();
        a.detail = format!(
            "aud={} scopes={} exp={}",
            record.audience,
            record.scopes.to_claim().replace(' ', ","),
            record.expires_at
        );
        let response = pb::IssueTokenResponse {
            access_token,
            token_id: record.id.to_string(),
            expires_at: record.expires_at,
            scopes: record.scopes.to_strings(),
        };
        // Durable before the token leaves: a crash after this point loses nothing acknowledged.
        self.store.record_token(record, a).await?;
        Ok(response)
    }

    /// CompleteTask.
    pub async fn complete_task(
        &self,
        req: pb::CompleteTaskRequest,
    ) -> Result<pb::CompleteTaskResponse, ApiError> {
        let agent = self.authenticate(req.attestation.as_ref()).await?;
        let task_id = parse_task_id(&req.task_id)?;
        tracing::Span::current().record("task_id", req.task_id.as_str());
        let now = self.now();
        let mut a = AuditEntry::draft(now, agent.id.as_str(), "complete_task");
        a.reason = "agent_completed".into();
        a.agent_id = agent.id.to_string();
        a.task_id = req.task_id.clone();
        let ended = self
            .store
            .end_task(EndTask {
                task: task_id,
                owner: Some(agent.id.clone()),
                state: TaskState::Completed,
                reason: "task_completed".into(),
                now,
                audit: a,
            })
            .await
            .map_err(|e| match e {
                taskpass_store::StoreError::NotFound { .. } => {
                    ApiError::NotFound(format!("task {task_id} not found for this agent"))
                }
                other => other.into(),
            })?;
        Ok(pb::CompleteTaskResponse {
            task: Some(task_to_pb(&ended.task, now)),
            revoked_tokens: ended.revoked_tokens,
        })
    }

    /// GetTask.
    pub async fn get_task(&self, req: pb::GetTaskRequest) -> Result<pb::Task, ApiError> {
        let agent = self.authenticate(req.attestation.as_ref()).await?;
        self.charge(&agent)?;
        let found = match parse_task_id(&req.task_id) {
            Ok(id) => self.own_task(&agent, &id).await,
            Err(e) => Err(e),
        };
        match found {
            Ok(task) => Ok(task_to_pb(&task, self.now())),
            Err(e) => Err(self.deny(&agent, "get_task", &req.task_id, e).await),
        }
    }

    /// Introspect: never an error for a bad token, only `active: false` with a reason.
    pub async fn introspect(&self, token: &str) -> Result<pb::IntrospectResponse, ApiError> {
        let inactive = |reason: &str| pb::IntrospectResponse {
            active: false,
            inactive_reason: reason.to_owned(),
            ..Default::default()
        };
        if token.len() > MAX_TOKEN_BYTES {
            return Ok(inactive("malformed"));
        }
        let claims = match self.keys.verify(token) {
            Ok(c) => c,
            Err(p) => return Ok(inactive(p.as_str())),
        };
        let now = self.now();
        if claims.iss != self.issuer {
            return Ok(inactive("wrong_issuer"));
        }
        if now >= claims.exp {
            return Ok(inactive("expired"));
        }
        if now < claims.nbf {
            return Ok(inactive("not_yet_valid"));
        }
        let (Ok(token_id), Ok(task_id)) = (TokenId::parse(&claims.jti), TaskId::parse(&claims.txn))
        else {
            return Ok(inactive("malformed"));
        };
        match self.store.token(&token_id).await? {
            None => return Ok(inactive("unknown_token")),
            Some(r) if r.revoked_at.is_some() => return Ok(inactive("revoked")),
            Some(_) => {}
        }
        let Some(task) = self.store.task(&task_id).await? else {
            return Ok(inactive("unknown_task"));
        };
        match task.effective_state(now) {
            TaskState::Open => {}
            TaskState::Completed => return Ok(inactive("task_completed")),
            TaskState::Expired => return Ok(inactive("task_expired")),
            TaskState::Revoked => return Ok(inactive("task_revoked")),
            _ => return Ok(inactive("task_not_open")),
        }
        let agent = match self.trust_domain.agent_name_of(&claims.client_id) {
            Some(name) => self.store.agent(&name).await?,
            None => None,
        };
        match agent.map(|a| a.state) {
            Some(AgentState::Active) => {}
            Some(AgentState::Offboarded) => return Ok(inactive("agent_offboarded")),
            Some(AgentState::Suspended) => return Ok(inactive("agent_suspended")),
            _ => return Ok(inactive("unknown_agent")),
        }
        Ok(pb::IntrospectResponse {
            active: true,
            inactive_reason: String::new(),
            act_sub: claims
                .act
                .as_ref()
                .map(|a| a.sub.clone())
                .unwrap_or_default(),
            scopes: claims.scopes(),
            sub: claims.sub,
            client_id: claims.client_id,
            task_id: claims.txn,
            aud: claims.aud,
            exp: claims.exp,
            token_id: claims.jti,
        })
    }
}
