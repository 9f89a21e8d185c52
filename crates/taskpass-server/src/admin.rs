//! The operators' API: every call authenticated by an operator client certificate issued by
//! the broker's CA and checked against one named permission of the operator's role.

use taskpass_core::{
    Agent, AgentName, AgentState, AllowList, Audience, AuditEntry, AuditOutcome, Binding, Operator,
    ScopeSet, SpiffeId, TaskId, TaskState, TokenId, TokenRecord,
};
use taskpass_proto::v1 as pb;
use taskpass_store::{ChangeAgentState, EndTask};

use crate::broker::{Broker, task_to_pb};
use crate::error::ApiError;

const MAX_TEXT: usize = 1024;
const MAX_BINDINGS: usize = 16;

pub(crate) fn text(field: &str, s: &str, required: bool) -> Result<String, ApiError> {
    let s = s.trim();
    if required && s.is_empty() {
        return Err(ApiError::InvalidArgument(format!("{field} is required")));
    }
    if s.len() > MAX_TEXT || s.chars().any(char::is_control) {
        return Err(ApiError::InvalidArgument(format!(
            "{field} must be at most {MAX_TEXT} bytes without control characters"
        )));
    }
    Ok(s.to_owned())
}

fn agent_state_pb(s: AgentState) -> pb::AgentState {
    match s {
        AgentState::Active => pb::AgentState::Active,
        AgentState::Suspended => pb::AgentState::Suspended,
        AgentState::Offboarded => pb::AgentState::Offboarded,
        _ => pb::AgentState::Unspecified,
    }
}

pub(crate) fn agent_to_pb(a: &Agent) -> pb::Agent {
    pb::Agent {
        name: a.name.to_string(),
        agent_id: a.id.to_string(),
        owner: a.owner.clone(),
        purpose: a.purpose.clone(),
        tenant: a.tenant.clone(),
        environment: a.environment.clone(),
        labels: a.labels.clone(),
        state: agent_state_pb(a.state).into(),
        oidc: a
            .bindings
            .iter()
            .filter_map(|b| match b {
                Binding::Oidc { issuer, subject } => Some(pb::OidcBinding {
                    issuer: issuer.clone(),
                    subject: subject.clone(),
                }),
                _ => None,
            })
            .collect(),
        x509: a
            .bindings
            .iter()
            .filter_map(|b| match b {
                Binding::X509 { spiffe_id } => Some(spiffe_id.to_string()),
                _ => None,
            })
            .collect(),
        audiences: a.allow.audiences.iter().map(|x| x.to_string()).collect(),
        scopes: a.allow.scopes.to_strings(),
        max_ttl_seconds: a.allow.max_ttl_seconds.unwrap_or(0),
        approval_scopes: a.allow.approval_scopes.to_strings(),
        review_every_days: a.review_every_days,
        created_at: a.created_at,
        updated_at: a.updated_at,
    }
}

fn token_to_pb(t: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        token_id: t.id.to_string(),
        task_id: t.task.to_string(),
        agent_id: t.agent.to_string(),
        audience: t.audience.to_string(),
        scopes: t.scopes.to_strings(),
        issued_at: t.issued_at,
        expires_at: t.expires_at,
        revoked: t.revoked_at.is_some(),
    }
}

/// At most 1,000 characters of `s`, for an audit detail or an error message.
pub(crate) fn shown(s: &str) -> String {
    match s.char_indices().nth(1000) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

pub(crate) fn limit(n: u32, default: usize) -> usize {
    match n {
        0 => default,
        n => usize::try_from(n).unwrap_or(default).min(10_000),
    }
}

impl Broker {
    /// The agent's identities, each one this broker can verify.
    fn parse_bindings(&self, a: &pb::Agent) -> Result<Vec<Binding>, ApiError> {
        if a.oidc.is_empty() && a.x509.is_empty() {
            return Err(ApiError::InvalidArgument(
                "an agent needs at least one attestation: --oidc ISSUER=SUBJECT or --x509 SPIFFE_ID"
                    .into(),
            ));
        }
        if a.oidc.len() + a.x509.len() > MAX_BINDINGS {
            return Err(ApiError::InvalidArgument(format!(
                "at most {MAX_BINDINGS} identities (--oidc and --x509) per agent"
            )));
        }
        let mut out = Vec::with_capacity(a.oidc.len() + a.x509.len());
        for b in &a.oidc {
            let issuer = text("oidc issuer", &b.issuer, true)?;
            let subject = text("oidc subject", &b.subject, true)?;
            if !self.trusted_issuers.contains(&issuer) {
                return Err(ApiError::FailedPrecondition(format!(
                    "OIDC issuer {issuer:?} is not trusted by this broker: add it under [[attestation.oidc]] first"
                )));
            }
            out.push(Binding::Oidc { issuer, subject });
        }
        for id in &a.x509 {
            let spiffe_id = SpiffeId::parse(id).map_err(|e| ApiError::field("x509", e))?;
            if !self
                .x509_trust_domains
                .iter()
                .any(|td| td == spiffe_id.trust_domain())
            {
                return Err(ApiError::FailedPrecondition(format!(
                    "no certificate authority of this broker may vouch for trust domain {:?}: add a CA for it under [[attestation.x509]] first",
                    spiffe_id.trust_domain()
                )));
            }
            // The broker's own operators and validators are never agents.
            if spiffe_id.trust_domain() == self.trust_domain.as_str()
                && !spiffe_id.path().starts_with("/agent/")
            {
                return Err(ApiError::InvalidArgument(format!(
                    "{spiffe_id} is not an agent identity: certificates of trust domain {} prove agents only under /agent/",
                    self.trust_domain
                )));
            }
            out.push(Binding::X509 { spiffe_id });
        }
        if let Some(dup) = out
            .iter()
            .enumerate()
            .find_map(|(i, b)| out[..i].contains(b).then_some(b))
        {
            return Err(ApiError::InvalidArgument(format!("{dup} is given twice")));
        }
        Ok(out)
    }

    fn parse_agent(&self, a: pb::Agent, now: i64) -> Result<Agent, ApiError> {
        let name = AgentName::parse(&a.name).map_err(|e| ApiError::field("name", e))?;
        let bindings = self.parse_bindings(&a)?;
        let max_ttl_seconds = match a.max_ttl_seconds {
            0 => None,
            n if n > self.limits.max_ttl_seconds => {
                return Err(ApiError::InvalidArgument(format!(
                    "max_ttl_seconds {n} is above the broker's max of {}",
                    self.limits.max_ttl_seconds
                )));
            }
            n => Some(n),
        };
        Ok(Agent {
            id: self.trust_domain.agent_id(&name),
            name,
            owner: text("owner", &a.owner, true)?,
            purpose: text("purpose", &a.purpose, true)?,
            tenant: text("tenant", &a.tenant, false)?,
            environment: text("environment", &a.environment, false)?,
            labels: taskpass_core::parse_labels(&a.labels).map_err(ApiError::InvalidArgument)?,
            state: AgentState::Active,
            bindings,
            allow: AllowList {
                audiences: Audience::parse_list(&a.audiences)
                    .map_err(|e| ApiError::field("audiences", e))?,
                scopes: ScopeSet::parse(&a.scopes).map_err(|e| ApiError::field("scopes", e))?,
                max_ttl_seconds,
                approval_scopes: ScopeSet::parse(&a.approval_scopes)
                    .map_err(|e| ApiError::field("approval_scopes", e))?,
            },
            review_every_days: a.review_every_days,
            created_at: now,
            updated_at: now,
        })
    }

    async fn load_agent(&self, name: &str) -> Result<Agent, ApiError> {
        let name = AgentName::parse(name).map_err(|e| ApiError::field("name", e))?;
        self.store
            .agent(&name)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("agent {name} not found")))
    }

    /// RegisterAgent.
    pub async fn register_agent(
        &self,
        op: &Operator,
        req: pb::RegisterAgentRequest,
    ) -> Result<pb::Agent, ApiError> {
        let now = self.now();
        let agent = self.parse_agent(req.agent.unwrap_or_default(), now)?;
        let mut a = AuditEntry::draft(now, &op.id, "agent.register");
        a.reason = format!("role {}", op.role.as_str());
        a.agent_id = agent.id.to_string();
        a.detail = format!(
            "owner={} audiences={} scopes={}",
            agent.owner,
            agent
                .allow
                .audiences
                .iter()
                .map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(","),
            agent.allow.scopes.to_claim().replace(' ', ",")
        );
        let agent = self.store.register_agent(agent, a).await?;
        Ok(agent_to_pb(&agent))
    }

    /// UpdateAgent: what the request sets replaces the agent's, validated as at registration.
    pub async fn update_agent(
        &self,
        op: &Operator,
        req: pb::UpdateAgentRequest,
    ) -> Result<pb::Agent, ApiError> {
        let current = self.load_agent(&req.name).await?;
        let mut a = agent_to_pb(&current);
        let set = |dst: &mut String, v: Option<String>| {
            if let Some(v) = v {
                *dst = v;
            }
        };
        set(&mut a.owner, req.owner);
        set(&mut a.purpose, req.purpose);
        set(&mut a.tenant, req.tenant);
        set(&mut a.environment, req.environment);
        if let Some(n) = req.max_ttl_seconds {
            a.max_ttl_seconds = n;
        }
        if let Some(n) = req.review_every_days {
            a.review_every_days = n;
        }
        if let Some(l) = req.audiences {
            a.audiences = l.values;
        }
        if let Some(l) = req.scopes {
            a.scopes = l.values;
        }
        if let Some(l) = req.approval_scopes {
            a.approval_scopes = l.values;
        }
        if let Some(l) = req.oidc {
            a.oidc = l.values;
        }
        if let Some(l) = req.x509 {
            a.x509 = l.values;
        }
        if let Some(l) = req.labels {
            a.labels = l.values;
        }
        let now = self.now();
        let mut agent = self.parse_agent(a, now)?;
        agent.created_at = current.created_at;
        let mut audit = AuditEntry::draft(now, &op.id, "agent.update");
        audit.reason = format!("role {}", op.role.as_str());
        audit.agent_id = agent.id.to_string();
        let agent = self.store.update_agent(agent, audit).await?;
        Ok(agent_to_pb(&agent))
    }

    /// ListAgents.
    pub async fn list_agents(&self, _op: &Operator) -> Result<Vec<pb::Agent>, ApiError> {
        Ok(self
            .store
            .list_agents()
            .await?
            .iter()
            .map(agent_to_pb)
            .collect())
    }

    /// GetAgent.
    pub async fn get_agent(&self, _op: &Operator, name: &str) -> Result<pb::Agent, ApiError> {
        Ok(agent_to_pb(&self.load_agent(name).await?))
    }

    /// SetAgentState: suspend, resume, offboard.
    pub async fn set_agent_state(
        &self,
        op: &Operator,
        req: pb::SetAgentStateRequest,
    ) -> Result<pb::SetAgentStateResponse, ApiError> {
        let state = match pb::AgentState::try_from(req.state) {
            Ok(pb::AgentState::Active) => AgentState::Active,
            Ok(pb::AgentState::Suspended) => AgentState::Suspended,
            Ok(pb::AgentState::Offboarded) => AgentState::Offboarded,
            _ => {
                return Err(ApiError::InvalidArgument(
                    "state must be ACTIVE, SUSPENDED or OFFBOARDED".into(),
                ));
            }
        };
        let agent = self.load_agent(&req.name).await?;
        let now = self.now();
        let action = match state {
            AgentState::Active => "agent.resume",
            AgentState::Suspended => "agent.suspend",
            _ => "agent.offboard",
        };
        let mut a = AuditEntry::draft(now, &op.id, action);
        a.reason = text("reason", &req.reason, false)?;
        a.agent_id = agent.id.to_string();
        let changed = self
            .store
            .change_agent_state(ChangeAgentState {
                name: agent.name,
                state,
                now,
                max_ttl_seconds: self.limits.max_ttl_seconds,
                audit: a,
            })
            .await?;
        Ok(pb::SetAgentStateResponse {
            agent: Some(agent_to_pb(&changed.agent)),
            revoked_tasks: changed.revoked_tasks,
        })
    }

    /// ListTasks.
    pub async fn list_tasks(
        &self,
        _op: &Operator,
        req: pb::ListTasksRequest,
    ) -> Result<Vec<pb::Task>, ApiError> {
        let agent = if req.agent.is_empty() {
            None
        } else {
            Some(self.load_agent(&req.agent).await?.id)
        };
        let now = self.now();
        Ok(self
            .store
            .list_tasks(agent.as_ref(), limit(req.limit, 100))
            .await?
            .iter()
            .map(|t| task_to_pb(t, now))
            .collect())
    }

    /// RevokeTask.
    pub async fn revoke_task(
        &self,
        op: &Operator,
        req: pb::RevokeTaskRequest,
    ) -> Result<pb::RevokeTaskResponse, ApiError> {
        let id = TaskId::parse(&req.task_id).map_err(|e| ApiError::field("task_id", e))?;
        let now = self.now();
        let mut a = AuditEntry::draft(now, &op.id, "task.revoke");
        a.reason = text("reason", &req.reason, false)?;
        a.task_id = id.to_string();
        if let Some(t) = self.store.task(&id).await? {
            a.agent_id = t.agent.to_string();
        }
        let ended = self
            .store
            .end_task(EndTask {
                task: id,
                owner: None,
                state: TaskState::Revoked,
                reason: "task_revoked".into(),
                now,
                audit: a,
            })
            .await?;
        Ok(pb::RevokeTaskResponse {
            task: Some(task_to_pb(&ended.task, now)),
            revoked_tokens: ended.revoked_tokens,
        })
    }

    /// ListTokens.
    pub async fn list_tokens(
        &self,
        _op: &Operator,
        req: pb::ListTokensRequest,
    ) -> Result<Vec<pb::TokenInfo>, ApiError> {
        let task = if req.task_id.is_empty() {
            None
        } else {
            Some(TaskId::parse(&req.task_id).map_err(|e| ApiError::field("task_id", e))?)
        };
        Ok(self
            .store
            .list_tokens(task.as_ref(), limit(req.limit, 100))
            .await?
            .iter()
            .map(token_to_pb)
            .collect())
    }

    /// RevokeToken.
    pub async fn revoke_token(
        &self,
        op: &Operator,
        req: pb::RevokeTokenRequest,
    ) -> Result<pb::TokenInfo, ApiError> {
        let id = TokenId::parse(&req.token_id).map_err(|e| ApiError::field("token_id", e))?;
        let now = self.now();
        let mut a = AuditEntry::draft(now, &op.id, "token.revoke");
        a.reason = text("reason", &req.reason, false)?;
        a.token_id = id.to_string();
        if let Some(t) = self.store.token(&id).await? {
            a.agent_id = t.agent.to_string();
            a.task_id = t.task.to_string();
        }
        let (record, _) = self
            .store
            .revoke_token(id, "token_revoked".into(), now, a)
            .await?;
        Ok(token_to_pb(&record))
    }

    /// TailAudit.
    pub async fn tail_audit(
        &self,
        _op: &Operator,
        req: pb::TailAuditRequest,
    ) -> Result<Vec<pb::AuditEntry>, ApiError> {
        Ok(self
            .store
            .audit_tail(limit(req.limit, 50))
            .await?
            .into_iter()
            .map(|e| pb::AuditEntry {
                sequence: e.sequence,
                time: e.time,
                actor: e.actor,
                action: e.action,
                outcome: match e.outcome {
                    AuditOutcome::Allow => "allow".into(),
                    _ => "deny".into(),
                },
                reason: e.reason,
                agent_id: e.agent_id,
                task_id: e.task_id,
                token_id: e.token_id,
                detail: e.detail,
                prev_hash: e.prev_hash,
                hash: e.hash,
            })
            .collect())
    }

    /// VerifyAudit.
    pub async fn verify_audit(&self, _op: &Operator) -> Result<pb::VerifyAuditResponse, ApiError> {
        let v = self.store.verify_audit().await?;
        Ok(pb::VerifyAuditResponse {
            ok: v.problem.is_none(),
            entries: v.entries,
            first_bad_sequence: v.problem.as_ref().map(|p| p.sequence).unwrap_or(0),
            problem: v.problem.map(|p| p.problem).unwrap_or_default(),
            head_hash: v.head_hash,
        })
    }
}
