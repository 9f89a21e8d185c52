//! The broker's request handling, independent of gRPC plumbing: attest the caller, parse the
//! request into domain values, ask `taskpass-core` for the decision, record it durably, answer.

use std::sync::Arc;

use taskpass_attest::{
    AttestError, AttestationMethod, Attestor, CertificateIdentity, Evidence, X509Verifier,
};
use taskpass_core::{
    AccessClaims, Agent, AgentState, Audience, AuditEntry, AuditOutcome, Binding, Clock,
    Confirmation, Decision, DecisionContext, Denial, DenialKind, IssueRequest, Limits, Purpose,
    ScopeSet, StartRequest, Task, TaskId, TaskState, TokenId, TokenRecord, TrustDomain,
    decide_issue, decide_start_task,
};
use taskpass_proto::v1 as pb;
use taskpass_store::{EndTask, Store};

use crate::error::ApiError;
use crate::keys::{KeyRing, MAX_TOKEN_BYTES};
use crate::metrics::Metrics;
use crate::refusals::{Refusal, Refusals};

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
    /// The trust domains some certificate authority of this broker may vouch for.
    pub(crate) x509_trust_domains: Vec<String>,
    /// Agents' client certificates: the broker's CA and the `[[attestation.x509]]` CAs.
    pub(crate) agent_certs: Arc<X509Verifier>,
    /// Operators' and validators' client certificates: the broker's own CA, and nothing else.
    pub(crate) own_certs: Arc<X509Verifier>,
    /// Revoked certificates of the broker's CA that have not expired.
    pub(crate) revoked_serials: crate::certificates::RevokedSerials,
    /// The data dir (its CA signs agent certificates; the key is read when needed).
    pub(crate) data_dir: std::path::PathBuf,
    /// The broker's CA, PEM.
    pub(crate) ca_pem: String,
    /// Agent certificate lifetimes, hours: (default, max).
    pub(crate) certificate_hours: (u32, u32),
    /// Becomes true when the broker shuts down: long-lived streams end on it.
    pub(crate) shutdown: tokio::sync::watch::Receiver<bool>,
    /// Per-agent request rate limit.
    pub(crate) rate: Option<crate::ratelimit::RateLimiter>,
    /// Refusals that follow from bad input, audited in aggregate.
    pub(crate) refusals: Arc<Refusals>,
    /// What clients hold open: connections and revocation streams.
    pub(crate) conns: Connections,
    /// `[validation] open_revocation_stream`: anyone may follow WatchRevocations.
    pub(crate) open_revocation_stream: bool,
    /// The token status lists.
    pub(crate) status: crate::status::StatusLists,
    /// DPoP proofs presented at the token endpoint (RFC 9449 §4.3), each used once.
    pub(crate) token_proofs: taskpass_verify::DpopVerifier,
    /// Operator roles and what each grants.
    pub(crate) roles: taskpass_core::Roles,
    /// The policy set in force (replaced whole, atomically, by `policy apply`).
    pub(crate) policies: crate::policies::ActivePolicies,
    /// How long a task waits for an approval before it is denied, seconds.
    pub(crate) approval_timeout: u32,
    /// The verifier of users' tokens, when `[[delegation.oidc]]` names issuers.
    pub(crate) delegation: Option<crate::delegation::Delegation>,
    /// Task ids whose task just changed: WatchTask streams wake on them.
    pub(crate) task_changes: tokio::sync::broadcast::Sender<TaskId>,
}

/// The caps on what clients hold open.
#[derive(Debug)]
pub(crate) struct Connections {
    /// gRPC connections.
    pub(crate) grpc: Arc<crate::conn::Admission>,
    /// HTTPS connections.
    pub(crate) https: Arc<crate::conn::Admission>,
    /// WatchRevocations streams.
    pub(crate) watches: Arc<WatchSlots>,
}

/// Live WatchRevocations streams: at most `total`, at most `per_address` from one client
/// and at most `per_connection` on one connection.
#[derive(Debug)]
pub(crate) struct WatchSlots {
    total: usize,
    per_address: usize,
    per_connection: usize,
    live: std::sync::atomic::AtomicUsize,
    by_address: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    refused: std::sync::atomic::AtomicU64,
}

/// One live stream's place, given back when the stream ends.
#[derive(Debug)]
pub(crate) struct WatchSlot {
    slots: Arc<WatchSlots>,
    conn: Option<Arc<crate::conn::ConnState>>,
}

impl WatchSlots {
    pub(crate) fn new(total: u32, per_address: u32, per_connection: u32) -> Arc<Self> {
        let size = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        Arc::new(Self {
            total: size(total),
            per_address: size(per_address),
            per_connection: size(per_connection),
            live: std::sync::atomic::AtomicUsize::new(0),
            by_address: std::sync::Mutex::default(),
            refused: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn by_address(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, usize>> {
        self.by_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for one more stream on `conn`, or why not.
    pub(crate) fn take(
        self: &Arc<Self>,
        conn: Option<Arc<crate::conn::ConnState>>,
    ) -> Result<WatchSlot, ApiError> {
        use std::sync::atomic::Ordering;
        let refuse = |msg: String| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            Err(ApiError::ResourceExhausted(msg))
        };
        if self.live.fetch_add(1, Ordering::AcqRel) >= self.total {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return refuse(format!(
                "the broker serves at most {} watch streams (WatchRevocations and WatchTask) (limits.watch_subscribers): retry later",
                self.total
            ));
        }
        if let Some(c) = &conn
            && c.watches.fetch_add(1, Ordering::AcqRel) >= self.per_connection
        {
            c.watches.fetch_sub(1, Ordering::AcqRel);
            self.live.fetch_sub(1, Ordering::AcqRel);
            return refuse(format!(
                "at most {} watch streams per connection (limits.watch_subscribers_per_connection)",
                self.per_connection
            ));
        }
        if let Some(c) = &conn {
            let mut by_address = self.by_address();
            let mine = by_address.entry(c.client).or_insert(0);
            if *mine >= self.per_address {
                drop(by_address);
                c.watches.fetch_sub(1, Ordering::AcqRel);
                self.live.fetch_sub(1, Ordering::AcqRel);
                return refuse(format!(
                    "at most {} watch streams from one client address (limits.watch_subscribers_per_address)",
                    self.per_address
                ));
            }
            *mine += 1;
        }
        Ok(WatchSlot {
            slots: Arc::clone(self),
            conn,
        })
    }

    /// Streams live now.
    pub(crate) fn live(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Streams refused since start.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        if let Some(c) = &self.conn {
            c.watches.fetch_sub(1, Ordering::AcqRel);
            let mut by_address = self.slots.by_address();
            if let Some(n) = by_address.get_mut(&c.client) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    by_address.remove(&c.client);
                }
            }
        }
        self.slots.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How the broker's own CA is named among the authorities.
pub(crate) const BROKER_CA: &str = "the broker's CA";

/// The broker's own CA as an authority: it vouches for its own trust domain.
pub(crate) fn own_authority(
    ca: &[rustls_pki_types::CertificateDer<'static>],
    trust_domain: &TrustDomain,
) -> taskpass_attest::Authority {
    taskpass_attest::Authority {
        name: BROKER_CA.into(),
        roots: ca.to_vec(),
        trust_domains: vec![trust_domain.to_string()],
    }
}

/// Who is calling, as the connection shows it.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The peer's address.
    pub addr: Option<std::net::SocketAddr>,
    /// The client certificate chain the TLS handshake verified, leaf first.
    pub certs: Option<Arc<Vec<rustls_pki_types::CertificateDer<'static>>>>,
    /// The connection, which remembers what its certificate proved.
    pub conn: Option<Arc<crate::conn::ConnState>>,
}

/// What an agent asks a token for, as sent (parsed by [`Broker::mint`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenAsk<'a> {
    pub(crate) audience: &'a str,
    pub(crate) scopes: &'a [String],
    pub(crate) ttl_seconds: u32,
    /// RFC 7638 thumbprint of a DPoP key to bind the token to, or empty.
    pub(crate) dpop_jkt: &'a str,
}

/// A token decided and signed, not yet recorded.
#[derive(Debug)]
pub(crate) struct Minted {
    pub(crate) record: TokenRecord,
    pub(crate) audit: AuditEntry,
    pub(crate) response: pb::IssueTokenResponse,
    /// Bound to a DPoP key (`token_type` DPoP).
    pub(crate) bound_to_key: bool,
}

/// An attested caller: the agent, and the client certificate that proved it under mTLS
/// attestation (its tokens are bound to it).
#[derive(Debug)]
pub struct Attested {
    /// The agent the attestation proves.
    pub agent: Agent,
    /// The verified client certificate, under mTLS attestation.
    pub certificate: Option<CertificateIdentity>,
}

impl Caller {
    /// The audit actor of a caller not yet identified: its source address (without the
    /// port, so that one client's connections count together).
    fn source(&self) -> String {
        match self.addr {
            Some(a) => format!("source:{}", crate::conn::client_key(a.ip())),
            None => "source:unknown".into(),
        }
    }
}

/// The stable rule of an error that follows from bad input.
fn input_rule(e: &ApiError) -> &'static str {
    match e {
        ApiError::NotFound(_) => "task_not_found",
        ApiError::ResourceExhausted(_) => "request_too_large",
        ApiError::FailedPrecondition(_) => "task_not_open",
        _ => "malformed_request",
    }
}

/// A token the verification profile found active, with what it belongs to.
#[derive(Debug)]
pub(crate) struct ActiveToken {
    pub(crate) claims: AccessClaims,
    pub(crate) task: Task,
    pub(crate) agent: Agent,
}

/// Whether a decision that asks for approval may open a task that waits for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pending {
    /// StartTask and POST /v1/tasks: the agent can wait.
    Allowed,
    /// The token endpoint's implicit tasks: refused.
    Refused,
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
        implicit: t.implicit,
        approved_by: t.approved_by.clone().unwrap_or_default(),
        approval_why: t
            .approval
            .as_ref()
            .map(|a| a.why.clone())
            .unwrap_or_default(),
    }
}

/// What a task's opening records in the audit log's `detail`.
pub(crate) fn task_detail(task: &Task) -> String {
    let mut d = format!(
        "audiences={} scopes={} expires_at={}",
        task.audiences
            .iter()
            .map(Audience::as_str)
            .collect::<Vec<_>>()
            .join(","),
        task.scopes.to_claim().replace(' ', ","),
        task.expires_at
    );
    if let Some(u) = &task.user {
        d.push_str(&format!(
            " on_behalf_of={:?} user_issuer={:?} user_tenant={:?}",
            u.subject, u.issuer, u.tenant
        ));
    }
    if let Some(a) = &task.approval_id {
        d.push_str(&format!(" approval={a}"));
    }
    d
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

    /// The JOSE algorithm tokens are signed with.
    pub fn signing_alg(&self) -> &'static str {
        "EdDSA"
    }

    pub(crate) fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Verifies the attestation and finds the one agent it proves. Writes nothing; a refusal
    /// is counted in the refusal tally under the caller's source address.
    pub async fn authenticate(
        &self,
        caller: &Caller,
        action: &'static str,
        att: Option<&pb::Attestation>,
    ) -> Result<Attested, ApiError> {
        match self.attest(caller, att).await {
            Ok(attested) => {
                tracing::Span::current().record("agent_id", attested.agent.id.as_str());
                Ok(attested)
            }
            // The store failing is the broker's fault, not a refusal of the caller's input.
            Err(("store_error", e)) => Err(e),
            Err((rule, e)) => {
                self.refusals.record(
                    Refusal {
                        actor: &caller.source(),
                        agent_id: "",
                        action,
                        rule,
                        task_id: "",
                        message: &e.to_string(),
                    },
                    self.now(),
                );
                Err(e)
            }
        }
    }

    async fn attest(
        &self,
        caller: &Caller,
        att: Option<&pb::Attestation>,
    ) -> Result<Attested, (&'static str, ApiError)> {
        use pb::attestation::Method;
        let refused = |e| ("attestation_refused", e);
        let token = match att.and_then(|a| a.method.as_ref()) {
            None => {
                return Err(refused(ApiError::Unauthenticated(
                    "attestation is missing: send attestation.oidc_token with your platform's OIDC token, or attestation.mtls over a connection with the agent's client certificate".into(),
                )));
            }
            Some(Method::Mtls(_)) => {
                let id = self.client_certificate(caller).await.map_err(|e| {
                    tracing::info!(reason = e.reason(), error = %e, "attestation refused");
                    refused(ApiError::Unauthenticated(format!(
                        "attestation refused: {e}"
                    )))
                })?;
                let agent = self
                    .agent_bound_to(Binding::X509 {
                        spiffe_id: id.spiffe_id.clone(),
                    })
                    .await?;
                return Ok(Attested {
                    agent,
                    certificate: Some(id),
                });
            }
            Some(Method::OidcToken(t)) => t,
        };
        if token.len() > MAX_ATTESTATION_BYTES {
            return Err(refused(ApiError::ResourceExhausted(format!(
                "attestation token is larger than {MAX_ATTESTATION_BYTES} bytes"
            ))));
        }
        let identity = self
            .attestor
            .attest(&Evidence::OidcToken(token))
            .await
            .map_err(|e| {
                tracing::info!(reason = e.reason(), error = %e, "attestation refused");
                refused(match e {
                    // The broker cannot check it right now; the token may well be good. What
                    // failed (URLs, TLS) is for the operator's log, not for the caller.
                    AttestError::KeysUnavailable { issuer, .. } => ApiError::Unavailable(format!(
                        "attestation cannot be checked now: the keys of issuer {issuer} cannot be obtained; retry later"
                    )),
                    other => ApiError::Unauthenticated(format!("attestation refused: {other}")),
                })
            })?;
        let binding = match identity.method {
            AttestationMethod::Oidc { issuer, subject } => Binding::Oidc { issuer, subject },
            #[allow(unreachable_patterns, reason = "the enum is non_exhaustive")]
            _ => {
                return Err(refused(ApiError::Unauthenticated(
                    "attestation method not supported".into(),
                )));
            }
        };
        let agent = self.agent_bound_to(binding).await?;
        Ok(Attested {
            agent,
            certificate: None,
        })
    }

    /// The agent an attested identity is bound to.
    async fn agent_bound_to(&self, binding: Binding) -> Result<Agent, (&'static str, ApiError)> {
        let agent = self
            .store
            .agent_by_binding(&binding)
            .await
            .map_err(|e| ("store_error", e.into()))?;
        agent.ok_or_else(|| {
            (
                "no_matching_agent",
                ApiError::Unauthenticated(format!(
                    "attested {binding} matches no registered agent: an operator must register it"
                )),
            )
        })
    }

    /// What this connection's client certificate proves as an agent's: the chain is verified
    /// once per connection (it cannot change within it), a certificate of the broker's CA must
    /// be one the broker recorded, and expiry and revocation are checked on every call.
    pub(crate) async fn client_certificate(
        &self,
        caller: &Caller,
    ) -> Result<CertificateIdentity, AttestError> {
        let chain: &[rustls_pki_types::CertificateDer<'static>] =
            caller.certs.as_deref().map_or(&[], Vec::as_slice);
        let now = self.now();
        let verified = match &caller.conn {
            Some(conn) => conn
                .agent_certificate
                .get_or_init(|| self.agent_certs.verify(chain, now))
                .clone(),
            None => self.agent_certs.verify(chain, now),
        }?;
        let refuse = |reason: &'static str, detail: &str| AttestError::Certificate {
            reason,
            detail: detail.into(),
        };
        if verified.not_after <= now {
            return Err(refuse(
                "certificate_expired",
                "the client certificate has expired: renew it",
            ));
        }
        if verified.authority == BROKER_CA {
            if self.revoked_serials.contains(&verified.serial) {
                return Err(refuse(
                    "certificate_revoked",
                    "the client certificate has been revoked",
                ));
            }
            let recorded = caller
                .conn
                .as_ref()
                .is_some_and(|c| c.agent_certificate_recorded.get().is_some());
            if !recorded {
                let record = self
                    .store
                    .certificate(&verified.serial)
                    .await
                    .map_err(|e| {
                        tracing::error!(error = %e, "cannot read the certificate record");
                        refuse(
                            "certificate_unchecked",
                            "the broker cannot check the certificate right now: retry",
                        )
                    })?;
                match record {
                    Some(r)
                        if r.subject == verified.spiffe_id
                            && r.thumbprint == verified.thumbprint =>
                    {
                        if let Some(c) = &caller.conn {
                            let _ = c.agent_certificate_recorded.set(());
                        }
                    }
                    _ => {
                        return Err(refuse(
                            "certificate_unknown",
                            "the client certificate was not issued through this broker: get one with `taskpass agent cert issue`",
                        ));
                    }
                }
            }
        }
        Ok(verified)
    }

    /// Charges the agent's rate limit; every agent call is charged. Over it, the refusal is
    /// counted, not written.
    pub(crate) fn charge(&self, agent: &Agent, action: &'static str) -> Result<(), ApiError> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        rate.check(agent.id.as_str()).map_err(|wait| {
            let e = ApiError::RateLimited(format!(
                "agent {} is over its rate limit of {} requests per second: retry in {} ms",
                agent.name,
                rate.per_second(),
                wait.as_millis().max(1)
            ));
            self.refuse(agent, action, "rate_limited", "", e)
        })
    }

    /// Counts a refusal of an identified agent that follows from bad input, and returns it.
    fn refuse(
        &self,
        agent: &Agent,
        action: &'static str,
        rule: &'static str,
        task_id: &str,
        err: ApiError,
    ) -> ApiError {
        self.refusals.record(
            Refusal {
                actor: agent.id.as_str(),
                agent_id: agent.id.as_str(),
                action,
                rule,
                task_id,
                message: &err.to_string(),
            },
            self.now(),
        );
        err
    }

    /// Refuses a call of an agent that is not active (suspended): a policy decision, audited.
    async fn require_active(
        &self,
        agent: &Agent,
        action: &str,
        task: &str,
    ) -> Result<(), ApiError> {
        if agent.state == AgentState::Active {
            return Ok(());
        }
        let err = ApiError::FailedPrecondition(format!(
            "agent {} is {}: an operator must resume it (rule agent_not_active)",
            agent.name,
            agent.state.as_str()
        ));
        Err(self.deny(agent, action, task, err).await)
    }

    /// Audits a policy decision against an identified agent, then returns it.
    pub(crate) async fn deny(
        &self,
        agent: &Agent,
        action: &str,
        task: &str,
        err: ApiError,
    ) -> ApiError {
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

    /// The canonical task id and the agent's own task, or the refusal (counted).
    pub(crate) async fn load_own_task(
        &self,
        agent: &Agent,
        action: &'static str,
        raw: &str,
    ) -> Result<Task, ApiError> {
        let id =
            parse_task_id(raw).map_err(|e| self.refuse(agent, action, input_rule(&e), "", e))?;
        tracing::Span::current().record("task_id", id.to_string());
        self.own_task(agent, &id).await.map_err(|e| match e {
            ApiError::NotFound(_) => {
                self.refuse(agent, action, "task_not_found", &id.to_string(), e)
            }
            other => other,
        })
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
    pub async fn start_task(
        &self,
        caller: &Caller,
        req: pb::StartTaskRequest,
    ) -> Result<pb::Task, ApiError> {
        let agent = self
            .authenticate(caller, "start_task", req.attestation.as_ref())
            .await?
            .agent;
        self.charge(&agent, "start_task")?;
        let parsed = (|| {
            Ok::<_, ApiError>(StartRequest {
                purpose: Purpose::parse(&req.purpose).map_err(|e| ApiError::field("purpose", e))?,
                audiences: Audience::parse_list(&req.audiences)
                    .map_err(|e| ApiError::field("audiences", e))?,
                scopes: ScopeSet::parse(&req.scopes).map_err(|e| ApiError::field("scopes", e))?,
                max_duration_seconds: req.max_duration_seconds,
                on_behalf_of_requested: !req.subject_token.is_empty(),
                user: None,
            })
        })();
        let mut parsed = match parsed {
            Ok(p) => p,
            Err(e) => return Err(self.refuse(&agent, "start_task", input_rule(&e), "", e)),
        };
        parsed.user = self
            .on_behalf_of(&agent, Some(&req.subject_token), "start_task")
            .await?;
        let (task, audit) = self
            .open_task(&agent, parsed, "start_task", Pending::Allowed)
            .await?;
        let task = self.store.create_task(task, audit).await?;
        Ok(task_to_pb(&task, self.now()))
    }

    /// A new task for `agent` and its audit entry, decided but not yet recorded: open, or
    /// waiting for a human's approval when the decision asks for one and `pending` allows it.
    /// A denial is audited under `action`.
    pub(crate) async fn open_task(
        &self,
        agent: &Agent,
        parsed: StartRequest,
        action: &'static str,
        pending: Pending,
    ) -> Result<(Task, AuditEntry), ApiError> {
        let now = self.now();
        let policies = self.policies.current();
        let ctx = DecisionContext {
            now,
            limits: &self.limits,
            policies: &*policies.engine,
        };
        let mut approval = None;
        let (grant, reasons) = match decide_start_task(agent, &parsed, &ctx) {
            Decision::Allow { grant, reasons } => (grant, reasons),
            Decision::NeedsApproval { why, policies, .. } if pending == Pending::Refused => {
                let d = Denial {
                    kind: DenialKind::PermissionDenied,
                    rule: "approval_required",
                    policies,
                    message: format!(
                        "{why}; this endpoint cannot wait for an approval: start the task with StartTask or POST /v1/tasks, have it approved, then ask for tokens within it"
                    ),
                };
                return Err(self.deny(agent, action, "", d.into()).await);
            }
            Decision::NeedsApproval {
                grant,
                why,
                policies,
            } => {
                let reasons = std::iter::once("approval_required".to_owned())
                    .chain(policies.iter().map(|p| format!("policy:{p}")))
                    .collect();
                approval = Some(taskpass_core::Approval {
                    id: taskpass_core::Approval::new_id(ulid::Ulid::new()),
                    why,
                    policies,
                    requested_at: now,
                    task_seconds: u32::try_from(grant.expires_at.saturating_sub(now))
                        .unwrap_or(u32::MAX),
                    decided_by: None,
                    decided_at: None,
                    reason: String::new(),
                });
                (grant, reasons)
            }
            Decision::Deny(d) => {
                let rule = d.rule;
                let err = self.deny(agent, action, "", d.into()).await;
                tracing::info!(rule, action, "denied");
                return Err(err);
            }
        };
        let task = Task {
            id: TaskId::from_ulid(ulid::Ulid::new()),
            agent: agent.id.clone(),
            state: if approval.is_some() {
                TaskState::PendingApproval
            } else {
                TaskState::Open
            },
            purpose: parsed.purpose,
            audiences: grant.audiences,
            scopes: grant.scopes,
            created_at: now,
            // While pending, the deadline is the approval's; approved, the task runs its
            // granted duration from then.
            expires_at: if approval.is_some() {
                now.saturating_add(i64::from(self.approval_timeout))
            } else {
                grant.expires_at
            },
            ended_at: None,
            on_behalf_of: parsed.user.as_ref().map(|u| u.subject.clone()),
            approval_id: approval.as_ref().map(|a| a.id.clone()),
            approved_by: None,
            user: parsed.user,
            approval,
            implicit: false,
        };
        tracing::Span::current().record("task_id", task.id.to_string());
        let mut a = AuditEntry::draft(now, agent.id.as_str(), action);
        a.reason = reasons.join(" ");
        a.agent_id = agent.id.to_string();
        a.task_id = task.id.to_string();
        a.detail = task_detail(&task);
        Ok((task, a))
    }

    /// IssueToken.
    pub async fn issue_token(
        &self,
        caller: &Caller,
        req: pb::IssueTokenRequest,
    ) -> Result<pb::IssueTokenResponse, ApiError> {
        let Attested { agent, certificate } = self
            .authenticate(caller, "issue_token", req.attestation.as_ref())
            .await?;
        self.charge(&agent, "issue_token")?;
        let task = self
            .load_own_task(&agent, "issue_token", &req.task_id)
            .await?;
        let minted = self
            .mint(
                &agent,
                certificate.as_ref(),
                &task,
                TokenAsk {
                    audience: &req.audience,
                    scopes: &req.scopes,
                    ttl_seconds: req.ttl_seconds,
                    dpop_jkt: &req.dpop_jkt,
                },
                "issue_token",
            )
            .await?;
        // Durable before the token leaves: a crash after this point loses nothing acknowledged.
        self.store.record_token(minted.record, minted.audit).await?;
        Ok(minted.response)
    }

    /// A signed token for `task` and its audit entry, decided but not yet recorded: the
    /// caller records both before the token leaves. Refusals are counted (bad input) or
    /// audited (policy) under `action`.
    pub(crate) async fn mint(
        &self,
        agent: &Agent,
        certificate: Option<&CertificateIdentity>,
        task: &Task,
        ask: TokenAsk<'_>,
        action: &'static str,
    ) -> Result<Minted, ApiError> {
        let task_id = task.id.to_string();
        let cnf = certificate.map(|c| Confirmation::Certificate(c.thumbprint.clone()));
        let cnf = match (cnf, ask.dpop_jkt) {
            (cnf, "") => cnf,
            (Some(_), _) => {
                let e = ApiError::InvalidArgument(
                    "dpop_jkt cannot be used with mTLS attestation: those tokens are bound to the client certificate".into(),
                );
                return Err(self.refuse(agent, action, "malformed_request", &task_id, e));
            }
            (None, jkt) if taskpass_core::is_thumbprint(jkt) => {
                Some(Confirmation::Key(jkt.to_owned()))
            }
            (None, _) => {
                let e = ApiError::InvalidArgument(
                    "dpop_jkt must be the RFC 7638 SHA-256 thumbprint of the DPoP public key, base64url without padding (43 characters)".into(),
                );
                return Err(self.refuse(agent, action, "malformed_request", &task_id, e));
            }
        };
        let parsed = (|| {
            Ok::<_, ApiError>(IssueRequest {
                audience: Audience::parse(ask.audience)
                    .map_err(|e| ApiError::field("audience", e))?,
                scopes: ScopeSet::parse(ask.scopes).map_err(|e| ApiError::field("scopes", e))?,
                ttl_seconds: ask.ttl_seconds,
            })
        })();
        let parsed = match parsed {
            Ok(p) => p,
            Err(e) => {
                return Err(self.refuse(agent, action, input_rule(&e), &task_id, e));
            }
        };
        let now = self.now();
        let policies = self.policies.current();
        let ctx = DecisionContext {
            now,
            limits: &self.limits,
            policies: &*policies.engine,
        };
        let (grant, reasons) = match decide_issue(agent, task, &parsed, &ctx) {
            Decision::Allow { grant, reasons } => (grant, reasons),
            Decision::Deny(d) => {
                return Err(self.deny(agent, action, &task_id, d.into()).await);
            }
            Decision::NeedsApproval { .. } => {
                // decide_issue answers allow or deny only: an approval happens at StartTask.
                let e = ApiError::Internal("IssueToken decision asked for approval".into());
                return Err(e);
            }
        };
        let mut record = TokenRecord {
            id: TokenId::from_ulid(ulid::Ulid::new()),
            task: task.id,
            agent: agent.id.clone(),
            audience: grant.audience,
            scopes: grant.scopes,
            issued_at: grant.issued_at,
            expires_at: grant.expires_at,
            revoked_at: None,
            status_index: None,
            certificate: match &cnf {
                Some(Confirmation::Certificate(t)) => Some(t.clone()),
                _ => None,
            },
        };
        let (index, status) = self.status.allocate();
        record.status_index = Some(index);
        let mut claims =
            AccessClaims::for_record(&self.issuer, &record, task.on_behalf_of.as_deref());
        // RFC 8705: a token issued under mTLS attestation is bound to that certificate; RFC
        // 9449: one asked for with a DPoP key thumbprint is bound to that key.
        let bound_to_key = matches!(cnf, Some(Confirmation::Key(_)));
        claims.cnf = cnf;
        claims.status = Some(status);
        claims.approved_by.clone_from(&task.approved_by);
        let access_token = self.keys.sign(&claims)?;
        let mut a = AuditEntry::draft(now, agent.id.as_str(), action);
        a.reason = std::iter::once("task_grant")
            .chain(
                reasons
                    .iter()
                    .map(String::as_str)
                    .filter(|r| *r != "allow_lists"),
            )
            .collect::<Vec<_>>()
            .join(" ");
        a.agent_id = agent.id.to_string();
        a.task_id = task_id;
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
        Ok(Minted {
            record,
            audit: a,
            response,
            bound_to_key,
        })
    }

    /// CompleteTask.
    pub async fn complete_task(
        &self,
        caller: &Caller,
        req: pb::CompleteTaskRequest,
    ) -> Result<pb::CompleteTaskResponse, ApiError> {
        let agent = self
            .authenticate(caller, "complete_task", req.attestation.as_ref())
            .await?
            .agent;
        self.charge(&agent, "complete_task")?;
        // Read first, so that an unknown or closed task costs no write.
        let task = self
            .load_own_task(&agent, "complete_task", &req.task_id)
            .await?;
        let task_id = task.id.to_string();
        self.require_active(&agent, "complete_task", &task_id)
            .await?;
        let now = self.now();
        let state = task.effective_state(now);
        if state != TaskState::Open {
            let e = ApiError::FailedPrecondition(format!(
                "task {task_id} is {}: it cannot be completed",
                state.as_str()
            ));
            return Err(self.refuse(&agent, "complete_task", "task_not_open", &task_id, e));
        }
        let failure = req.failure.trim();
        if failure.len() > 256 || failure.chars().any(char::is_control) {
            let e = ApiError::InvalidArgument(
                "failure must be a short reason: at most 256 bytes, no control characters".into(),
            );
            return Err(self.refuse(&agent, "complete_task", "malformed_request", &task_id, e));
        }
        let mut a = AuditEntry::draft(now, agent.id.as_str(), "complete_task");
        a.agent_id = agent.id.to_string();
        a.task_id = task_id.clone();
        if req.failed {
            // The work failed; the task still completes and its tokens go with it.
            a.reason = "agent_failed".into();
            a.detail = format!("failure={failure:?}");
        } else {
            a.reason = "agent_completed".into();
        }
        let ended = self
            .store
            .end_task(EndTask {
                task: task.id,
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
    pub async fn get_task(
        &self,
        caller: &Caller,
        req: pb::GetTaskRequest,
    ) -> Result<pb::Task, ApiError> {
        let agent = self
            .authenticate(caller, "get_task", req.attestation.as_ref())
            .await?
            .agent;
        self.charge(&agent, "get_task")?;
        let task = self.load_own_task(&agent, "get_task", &req.task_id).await?;
        self.require_active(&agent, "get_task", &task.id.to_string())
            .await?;
        Ok(task_to_pb(&task, self.now()))
    }

    /// How long validators may cache a status list, seconds.
    pub fn status_list_ttl(&self) -> u64 {
        self.status.ttl()
    }

    /// The signed status list `n` (`GET /statuslists/{n}`), `None` when there is none.
    pub async fn status_list(&self, n: u64) -> Result<Option<String>, ApiError> {
        Ok(self
            .status
            .signed(n, &*self.store, &self.keys, &self.issuer, self.now())
            .await?)
    }

    /// A token checked by the one verification profile of the broker's own tokens: its
    /// claims, task and agent when it is active, else why not (an introspection reason).
    pub(crate) async fn check_token(
        &self,
        reader: &crate::principals::Principal,
        token: &str,
    ) -> Result<Result<ActiveToken, &'static str>, ApiError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Ok(Err("malformed"));
        }
        let claims = match self.keys.verify(token) {
            Ok(c) => c,
            Err(p) => return Ok(Err(p.as_str())),
        };
        let now = self.now();
        if claims.iss != self.issuer {
            return Ok(Err("wrong_issuer"));
        }
        if let crate::principals::Principal::Validator(v) = reader
            && !v.serves(&claims.aud)
        {
            return Ok(Err("wrong_audience"));
        }
        // The profile's time and lifetime checks, without leeway for our own tokens.
        match taskpass_core::jwt::check_times(&claims, now, 0) {
            Ok(()) => {}
            Err(taskpass_core::jwt::ProfileError::Expired) => return Ok(Err("expired")),
            Err(_) => return Ok(Err("not_yet_valid")),
        }
        if taskpass_core::jwt::check_lifetime(&claims, u64::from(self.limits.max_ttl_seconds))
            .is_err()
        {
            return Ok(Err("malformed"));
        }
        let (Ok(token_id), Ok(task_id)) = (TokenId::parse(&claims.jti), TaskId::parse(&claims.txn))
        else {
            return Ok(Err("malformed"));
        };
        match self.store.token(&token_id).await? {
            None => return Ok(Err("unknown_token")),
            Some(r) if r.revoked_at.is_some() => return Ok(Err("revoked")),
            Some(_) => {}
        }
        let Some(task) = self.store.task(&task_id).await? else {
            return Ok(Err("unknown_task"));
        };
        match task.effective_state(now) {
            TaskState::Open => {}
            TaskState::Completed => return Ok(Err("task_completed")),
            TaskState::Expired => return Ok(Err("task_expired")),
            TaskState::Revoked => return Ok(Err("task_revoked")),
            _ => return Ok(Err("task_not_open")),
        }
        let agent = match self.agent_of(&claims.client_id).await? {
            Some(a) if a.state == AgentState::Active => a,
            Some(a) if a.state == AgentState::Offboarded => return Ok(Err("agent_offboarded")),
            Some(a) if a.state == AgentState::Suspended => return Ok(Err("agent_suspended")),
            _ => return Ok(Err("unknown_agent")),
        };
        if let Some(Confirmation::Certificate(t)) = &claims.cnf
            && self.revoked_serials.contains_thumbprint(t)
        {
            return Ok(Err("certificate_revoked"));
        }
        Ok(Ok(ActiveToken {
            claims,
            task,
            agent,
        }))
    }

    /// The agent an agent id of this trust domain names, if it is registered.
    pub(crate) async fn agent_of(&self, id: &str) -> Result<Option<Agent>, ApiError> {
        let Some(name) = self.trust_domain.agent_name_of(id) else {
            return Ok(None);
        };
        Ok(self.store.agent(&name).await?)
    }

    /// Introspect: never an error for a bad token, only `active: false` with a reason. A
    /// validator learns about tokens for its own audiences only (RFC 7662 §2.1): any other is
    /// `wrong_audience`, before anything about its state is looked up.
    pub async fn introspect(
        &self,
        reader: &crate::principals::Principal,
        token: &str,
    ) -> Result<pb::IntrospectResponse, ApiError> {
        let claims = match self.check_token(reader, token).await? {
            Ok(active) => active.claims,
            Err(reason) => {
                return Ok(pb::IntrospectResponse {
                    active: false,
                    inactive_reason: reason.to_owned(),
                    ..Default::default()
                });
            }
        };
        let (cnf_x5t_s256, cnf_jkt) = match &claims.cnf {
            Some(Confirmation::Certificate(t)) => (t.clone(), String::new()),
            Some(Confirmation::Key(t)) => (String::new(), t.clone()),
            None => (String::new(), String::new()),
        };
        Ok(pb::IntrospectResponse {
            active: true,
            inactive_reason: String::new(),
            cnf_x5t_s256,
            cnf_jkt,
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
