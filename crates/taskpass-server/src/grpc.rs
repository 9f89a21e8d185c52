//! The tonic services: thin wrappers that time each RPC, open its tracing span, call the
//! broker and map errors in one place.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use taskpass_core::{RevocationEvent, RevocationKind};
use taskpass_proto::v1 as pb;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::broker::{Broker, Caller};
use crate::error::ApiError;

/// The longest a call may take before it is answered DEADLINE_EXCEEDED (a stream's
/// setup, not its life).
const RPC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// One service struct implements all three tonic service traits.
#[derive(Debug, Clone)]
pub struct Services {
    broker: Arc<Broker>,
}

impl Services {
    /// Wraps a broker.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }

    async fn run<T>(
        &self,
        rpc: &'static str,
        fut: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<Response<T>, Status> {
        let start = Instant::now();
        let span = tracing::info_span!(
            "rpc",
            method = rpc,
            agent_id = tracing::field::Empty,
            task_id = tracing::field::Empty
        );
        // VerifyAudit reads the whole log: its time grows with the log, not with load.
        let limit = if rpc == "VerifyAudit" {
            std::time::Duration::from_secs(3600)
        } else {
            RPC_TIMEOUT
        };
        let r = match tokio::time::timeout(limit, fut.instrument(span.clone())).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::DeadlineExceeded(format!(
                "the broker did not answer within {} s",
                limit.as_secs()
            ))),
        };
        let code = match &r {
            Ok(_) => Code::Ok,
            Err(e) => e.code(),
        };
        self.broker.metrics.observe(rpc, code, start.elapsed());
        if let Err(e) = &r {
            span.in_scope(|| tracing::info!(code = ?code, error = %e, "rpc failed"));
        }
        r.map(Response::new).map_err(Status::from)
    }

    fn caller<T>(req: &Request<T>) -> Caller {
        Caller {
            addr: req.remote_addr(),
            certs: req.peer_certs(),
            conn: req
                .extensions()
                .get::<Arc<crate::conn::ConnState>>()
                .cloned(),
        }
    }

    /// An AdminService call: the caller is admitted as an operator with the permission the
    /// one table (`permissions.rs`) maps `rpc` to, before `f` runs.
    async fn admin<R, T, F, Fut>(
        &self,
        rpc: &'static str,
        req: Request<R>,
        f: F,
    ) -> Result<Response<T>, Status>
    where
        F: FnOnce(taskpass_core::Operator, R) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let caller = Self::caller(&req);
        self.run(rpc, async move {
            let op = self.broker.admit(&caller, rpc).await?;
            f(op, req.into_inner()).await
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for Services {
    async fn start_task(
        &self,
        req: Request<pb::StartTaskRequest>,
    ) -> Result<Response<pb::StartTaskResponse>, Status> {
        let b = &self.broker;
        let caller = Self::caller(&req);
        self.run("StartTask", async {
            Ok(pb::StartTaskResponse {
                task: Some(b.start_task(&caller, req.into_inner()).await?),
            })
        })
        .await
    }

    async fn issue_token(
        &self,
        req: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let caller = Self::caller(&req);
        self.run(
            "IssueToken",
            self.broker.issue_token(&caller, req.into_inner()),
        )
        .await
    }

    async fn complete_task(
        &self,
        req: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::CompleteTaskResponse>, Status> {
        let caller = Self::caller(&req);
        self.run(
            "CompleteTask",
            self.broker.complete_task(&caller, req.into_inner()),
        )
        .await
    }

    async fn get_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let b = &self.broker;
        let caller = Self::caller(&req);
        self.run("GetTask", async {
            Ok(pb::GetTaskResponse {
                task: Some(b.get_task(&caller, req.into_inner()).await?),
            })
        })
        .await
    }

    type WatchTaskStream = TaskStream;

    async fn watch_task(
        &self,
        req: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<TaskStream>, Status> {
        let caller = Self::caller(&req);
        let broker = Arc::clone(&self.broker);
        self.run("WatchTask", async move {
            let watch = broker.watch_task(&caller, req.into_inner()).await?;
            let stream = futures::stream::unfold(watch, |mut w| async move {
                w.next().await.map(|item| (item.map_err(Status::from), w))
            });
            Ok(Box::pin(stream) as TaskStream)
        })
        .await
    }

    async fn renew_certificate(
        &self,
        req: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::RenewCertificateResponse>, Status> {
        let caller = Self::caller(&req);
        self.run(
            "RenewCertificate",
            self.broker.renew_certificate(&caller, req.into_inner()),
        )
        .await
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RevocationEvent, Status>> + Send>>;
type TaskStream = Pin<Box<dyn Stream<Item = Result<pb::Task, Status>> + Send>>;

fn event_to_pb(e: &RevocationEvent) -> pb::RevocationEvent {
    let kind = match e.kind {
        RevocationKind::Token => pb::RevocationKind::Token,
        RevocationKind::Task => pb::RevocationKind::Task,
        RevocationKind::Agent => pb::RevocationKind::Agent,
        RevocationKind::Certificate => pb::RevocationKind::Certificate,
        _ => pb::RevocationKind::Unspecified,
    };
    pb::RevocationEvent {
        sequence: e.sequence,
        kind: kind.into(),
        id: e.id.clone(),
        revoked_at: e.revoked_at,
        not_after: e.not_after,
        reason: e.reason.clone(),
        thumbprint: e.thumbprint.clone(),
    }
}

/// Events read from the durable log per read while a subscriber catches up.
const BACKLOG_PAGE: usize = 64;

/// One subscriber's position. The stream is pulled, not pushed: the next event is read only
/// when hyper asks for it, which it does only while the client's flow-control window has
/// room. A subscriber that does not read therefore costs one page of events and the little
/// hyper buffers, never a growing queue; the durable log is read a page at a time.
struct Follower {
    broker: Arc<Broker>,
    cursor: u64,
    page: std::collections::VecDeque<RevocationEvent>,
    catching_up: bool,
    live: tokio::sync::broadcast::Receiver<RevocationEvent>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    done: bool,
    /// When the client last took an event (polled us): a stream that lags while it is being
    /// read (a burst larger than the live feed holds) re-reads the log; one that lags
    /// because nobody reads it is cut off.
    last_taken: std::time::Instant,
    /// How long the stream may stay silent before a heartbeat, when the client asked for them.
    heartbeat: Option<std::time::Duration>,
    /// When the next heartbeat is due (set once caught up: the first one says so).
    next_beat: Option<tokio::time::Instant>,
    _slot: crate::broker::WatchSlot,
}

/// A lagging stream whose client took an event more recently than this is reading.
const READING: std::time::Duration = std::time::Duration::from_secs(2);

impl Follower {
    /// The next event after the cursor, without gaps or repeats; `None` at the end.
    async fn next(&mut self) -> Option<Result<pb::RevocationEvent, Status>> {
        if self.done {
            return None;
        }
        loop {
            if let Some(e) = self.page.pop_front() {
                return Some(Ok(self.sent(&e)));
            }
            if self.catching_up {
                match self
                    .broker
                    .store
                    .revocations_after(self.cursor, BACKLOG_PAGE)
                    .await
                {
                    Ok(batch) if batch.is_empty() => {
                        // Caught up: what the live feed held meanwhile is in the log already.
                        // A fresh receiver cannot have lagged; an event committed between the
                        // read and now shows as a gap, which sends us back to the log.
                        self.live = self.live.resubscribe();
                        self.catching_up = false;
                        if self.heartbeat.is_some() && self.next_beat.is_none() {
                            return Some(Ok(self.beat()));
                        }
                    }
                    Ok(batch) => self.page.extend(batch),
                    Err(e) => {
                        self.done = true;
                        return Some(Err(ApiError::from(e).into()));
                    }
                }
                continue;
            }
            tokio::select! {
                ev = self.live.recv() => match ev {
                    Ok(e) if e.sequence <= self.cursor => {}
                    Ok(e) if e.sequence == self.cursor + 1 => return Some(Ok(self.sent(&e))),
                    // A gap (a commit published out of order): read the log again.
                    Ok(_) => self.catching_up = true,
                    // The subscriber did not read while the live feed moved on by more than
                    // it holds: cut it off, naming where to resume.
                    Err(RecvError::Lagged(_)) if self.last_taken.elapsed() < READING => {
                        self.catching_up = true;
                    }
                    Err(RecvError::Lagged(_)) => {
                        self.done = true;
                        return Some(Err(Status::resource_exhausted(format!(
                            "too slow: this revocation stream fell behind the live feed; resume from sequence {}",
                            self.cursor
                        ))));
                    }
                    Err(RecvError::Closed) => return None,
                },
                () = beat(self.next_beat) => return Some(Ok(self.beat())),
                _ = self.shutdown.changed() => return None,
            }
        }
    }

    /// Moves the cursor to `e`, which is being sent.
    fn sent(&mut self, e: &RevocationEvent) -> pb::RevocationEvent {
        self.cursor = e.sequence;
        self.last_taken = std::time::Instant::now();
        self.rearm();
        event_to_pb(e)
    }

    /// A heartbeat: "nothing after `cursor` yet".
    fn beat(&mut self) -> pb::RevocationEvent {
        self.last_taken = std::time::Instant::now();
        self.rearm();
        pb::RevocationEvent {
            sequence: self.cursor,
            kind: pb::RevocationKind::Unspecified.into(),
            revoked_at: taskpass_core::Clock::now(&*self.broker.clock),
            ..Default::default()
        }
    }

    fn rearm(&mut self) {
        if let Some(every) = self.heartbeat
            && (self.next_beat.is_some() || !self.catching_up)
        {
            self.next_beat = Some(tokio::time::Instant::now() + every);
        }
    }
}

/// Resolves when the heartbeat is due; never when there is none.
async fn beat(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[tonic::async_trait]
impl pb::validation_service_server::ValidationService for Services {
    async fn introspect(
        &self,
        req: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        let caller = Self::caller(&req);
        let b = &self.broker;
        self.run("Introspect", async {
            let reader = b.reader(&caller, "Introspect").await?;
            b.introspect(&reader, &req.get_ref().token).await
        })
        .await
    }

    async fn get_jwks(
        &self,
        _req: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        let b = &self.broker;
        self.run("GetJwks", async {
            Ok(pb::GetJwksResponse {
                jwks_json: b.jwks_json(),
            })
        })
        .await
    }

    type WatchRevocationsStream = EventStream;

    async fn watch_revocations(
        &self,
        req: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let after = req.get_ref().after_sequence;
        let heartbeat = match req.get_ref().heartbeat_seconds {
            0 => None,
            s => Some(std::time::Duration::from_secs(u64::from(s.clamp(1, 60)))),
        };
        let caller = Self::caller(&req);
        let broker = Arc::clone(&self.broker);
        self.run("WatchRevocations", async move {
            if !broker.open_revocation_stream {
                broker.reader(&caller, "WatchRevocations").await?;
            }
            let slot = broker.conns.watches.take(caller.conn)?;
            // Subscribe before reading the log so nothing committed in between is missed.
            let live = broker.store.subscribe_revocations();
            let head = broker.store.last_revocation_sequence().await?;
            if after > head {
                return Err(ApiError::OutOfRange(format!(
                    "after_sequence {after} is beyond the newest revocation ({head}): this broker's log was reset or restored from a backup; start again from 0"
                )));
            }
            let follower = Follower {
                shutdown: broker.shutdown.clone(),
                broker,
                cursor: after,
                page: std::collections::VecDeque::new(),
                catching_up: true,
                live,
                done: false,
                last_taken: std::time::Instant::now(),
                heartbeat,
                next_beat: None,
                _slot: slot,
            };
            let stream = futures::stream::unfold(follower, |mut f| async move {
                f.next().await.map(|item| (item, f))
            });
            Ok(Box::pin(stream) as EventStream)
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for Services {
    async fn register_agent(
        &self,
        req: Request<pb::RegisterAgentRequest>,
    ) -> Result<Response<pb::RegisterAgentResponse>, Status> {
        self.admin("RegisterAgent", req, |op, req| async move {
            let agent = self.broker.register_agent(&op, req).await?;
            Ok(pb::RegisterAgentResponse { agent: Some(agent) })
        })
        .await
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.admin("ListAgents", req, |op, _req| async move {
            Ok(pb::ListAgentsResponse {
                agents: self.broker.list_agents(&op).await?,
            })
        })
        .await
    }

    async fn get_agent(
        &self,
        req: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        self.admin("GetAgent", req, |op, req| async move {
            Ok(pb::GetAgentResponse {
                agent: Some(self.broker.get_agent(&op, &req.name).await?),
            })
        })
        .await
    }

    async fn set_agent_state(
        &self,
        req: Request<pb::SetAgentStateRequest>,
    ) -> Result<Response<pb::SetAgentStateResponse>, Status> {
        self.admin("SetAgentState", req, |op, req| async move {
            self.broker.set_agent_state(&op, req).await
        })
        .await
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        self.admin("ListTasks", req, |op, req| async move {
            Ok(pb::ListTasksResponse {
                tasks: self.broker.list_tasks(&op, req).await?,
            })
        })
        .await
    }

    async fn revoke_task(
        &self,
        req: Request<pb::RevokeTaskRequest>,
    ) -> Result<Response<pb::RevokeTaskResponse>, Status> {
        self.admin("RevokeTask", req, |op, req| async move {
            self.broker.revoke_task(&op, req).await
        })
        .await
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.admin("ListTokens", req, |op, req| async move {
            Ok(pb::ListTokensResponse {
                tokens: self.broker.list_tokens(&op, req).await?,
            })
        })
        .await
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        self.admin("RevokeToken", req, |op, req| async move {
            Ok(pb::RevokeTokenResponse {
                token: Some(self.broker.revoke_token(&op, req).await?),
            })
        })
        .await
    }

    async fn update_agent(
        &self,
        req: Request<pb::UpdateAgentRequest>,
    ) -> Result<Response<pb::UpdateAgentResponse>, Status> {
        self.admin("UpdateAgent", req, |op, req| async move {
            Ok(pb::UpdateAgentResponse {
                agent: Some(self.broker.update_agent(&op, req).await?),
            })
        })
        .await
    }

    async fn issue_operator_certificate(
        &self,
        req: Request<pb::IssueOperatorCertificateRequest>,
    ) -> Result<Response<pb::IssueOperatorCertificateResponse>, Status> {
        self.admin("IssueOperatorCertificate", req, |op, req| async move {
            self.broker.issue_operator_certificate(&op, req).await
        })
        .await
    }

    async fn list_operators(
        &self,
        req: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, Status> {
        self.admin("ListOperators", req, |op, req| async move {
            Ok(pb::ListOperatorsResponse {
                certificates: self.broker.list_operators(&op, req).await?,
            })
        })
        .await
    }

    async fn revoke_operator(
        &self,
        req: Request<pb::RevokeOperatorRequest>,
    ) -> Result<Response<pb::RevokeOperatorResponse>, Status> {
        self.admin("RevokeOperator", req, |op, req| async move {
            Ok(pb::RevokeOperatorResponse {
                revoked: self.broker.revoke_operator(&op, req).await?,
            })
        })
        .await
    }

    async fn issue_agent_certificate(
        &self,
        req: Request<pb::IssueAgentCertificateRequest>,
    ) -> Result<Response<pb::IssueAgentCertificateResponse>, Status> {
        self.admin("IssueAgentCertificate", req, |op, req| async move {
            self.broker.issue_agent_certificate(&op, req).await
        })
        .await
    }

    async fn list_certificates(
        &self,
        req: Request<pb::ListCertificatesRequest>,
    ) -> Result<Response<pb::ListCertificatesResponse>, Status> {
        self.admin("ListCertificates", req, |op, req| async move {
            Ok(pb::ListCertificatesResponse {
                certificates: self.broker.list_certificates(&op, req).await?,
            })
        })
        .await
    }

    async fn revoke_certificate(
        &self,
        req: Request<pb::RevokeCertificateRequest>,
    ) -> Result<Response<pb::RevokeCertificateResponse>, Status> {
        self.admin("RevokeCertificate", req, |op, req| async move {
            self.broker.revoke_certificate(&op, req).await
        })
        .await
    }

    async fn add_validator(
        &self,
        req: Request<pb::AddValidatorRequest>,
    ) -> Result<Response<pb::AddValidatorResponse>, Status> {
        self.admin("AddValidator", req, |op, req| async move {
            self.broker.add_validator(&op, req).await
        })
        .await
    }

    async fn list_validators(
        &self,
        req: Request<pb::ListValidatorsRequest>,
    ) -> Result<Response<pb::ListValidatorsResponse>, Status> {
        self.admin("ListValidators", req, |op, req| async move {
            Ok(pb::ListValidatorsResponse {
                certificates: self.broker.list_validators(&op, req).await?,
            })
        })
        .await
    }

    async fn revoke_validator(
        &self,
        req: Request<pb::RevokeValidatorRequest>,
    ) -> Result<Response<pb::RevokeValidatorResponse>, Status> {
        self.admin("RevokeValidator", req, |op, req| async move {
            Ok(pb::RevokeValidatorResponse {
                revoked: self.broker.revoke_validator(&op, req).await?,
            })
        })
        .await
    }

    async fn apply_policies(
        &self,
        req: Request<pb::ApplyPoliciesRequest>,
    ) -> Result<Response<pb::ApplyPoliciesResponse>, Status> {
        self.admin("ApplyPolicies", req, |op, req| async move {
            Ok(pb::ApplyPoliciesResponse {
                set: Some(self.broker.apply_policies(&op, req).await?),
            })
        })
        .await
    }

    async fn get_policies(
        &self,
        req: Request<pb::GetPoliciesRequest>,
    ) -> Result<Response<pb::GetPoliciesResponse>, Status> {
        self.admin("GetPolicies", req, |op, _req| async move {
            Ok(self.broker.get_policies(&op))
        })
        .await
    }

    async fn list_policy_sets(
        &self,
        req: Request<pb::ListPolicySetsRequest>,
    ) -> Result<Response<pb::ListPolicySetsResponse>, Status> {
        self.admin("ListPolicySets", req, |op, req| async move {
            Ok(pb::ListPolicySetsResponse {
                sets: self.broker.list_policy_sets(&op, req).await?,
            })
        })
        .await
    }

    async fn list_approvals(
        &self,
        req: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        self.admin("ListApprovals", req, |op, req| async move {
            Ok(pb::ListApprovalsResponse {
                approvals: self.broker.list_approvals(&op, req).await?,
            })
        })
        .await
    }

    async fn decide_approval(
        &self,
        req: Request<pb::DecideApprovalRequest>,
    ) -> Result<Response<pb::DecideApprovalResponse>, Status> {
        self.admin("DecideApproval", req, |op, req| async move {
            Ok(pb::DecideApprovalResponse {
                task: Some(self.broker.decide_approval(&op, req).await?),
            })
        })
        .await
    }

    async fn tail_audit(
        &self,
        req: Request<pb::TailAuditRequest>,
    ) -> Result<Response<pb::TailAuditResponse>, Status> {
        self.admin("TailAudit", req, |op, req| async move {
            Ok(pb::TailAuditResponse {
                entries: self.broker.tail_audit(&op, req).await?,
            })
        })
        .await
    }

    async fn verify_audit(
        &self,
        req: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        self.admin("VerifyAudit", req, |op, _req| async move {
            self.broker.verify_audit(&op).await
        })
        .await
    }
}
