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

use crate::admin::operator_from_certs;
use crate::broker::Broker;
use crate::error::ApiError;

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
        let r = fut.instrument(span.clone()).await;
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

    fn operator<T>(&self, req: &Request<T>) -> Result<taskpass_core::Operator, ApiError> {
        operator_from_certs(&self.broker, req.peer_certs().as_ref())
    }
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for Services {
    async fn start_task(
        &self,
        req: Request<pb::StartTaskRequest>,
    ) -> Result<Response<pb::StartTaskResponse>, Status> {
        let b = &self.broker;
        self.run("StartTask", async {
            Ok(pb::StartTaskResponse {
                task: Some(b.start_task(req.into_inner()).await?),
            })
        })
        .await
    }

    async fn issue_token(
        &self,
        req: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        self.run("IssueToken", self.broker.issue_token(req.into_inner()))
            .await
    }

    async fn complete_task(
        &self,
        req: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::CompleteTaskResponse>, Status> {
        self.run("CompleteTask", self.broker.complete_task(req.into_inner()))
            .await
    }

    async fn get_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let b = &self.broker;
        self.run("GetTask", async {
            Ok(pb::GetTaskResponse {
                task: Some(b.get_task(req.into_inner()).await?),
            })
        })
        .await
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RevocationEvent, Status>> + Send>>;

fn event_to_pb(e: &RevocationEvent) -> pb::RevocationEvent {
    let kind = match e.kind {
        RevocationKind::Token => pb::RevocationKind::Token,
        RevocationKind::Task => pb::RevocationKind::Task,
        RevocationKind::Agent => pb::RevocationKind::Agent,
        _ => pb::RevocationKind::Unspecified,
    };
    pb::RevocationEvent {
        sequence: e.sequence,
        kind: kind.into(),
        id: e.id.clone(),
        revoked_at: e.revoked_at,
        not_after: e.not_after,
        reason: e.reason.clone(),
    }
}

/// Sends the backlog after `cursor`, then live events, without gaps or repeats.
async fn follow_revocations(
    broker: Arc<Broker>,
    mut cursor: u64,
    tx: tokio::sync::mpsc::Sender<Result<pb::RevocationEvent, Status>>,
) {
    // Subscribe before reading the backlog so nothing committed in between is missed.
    let mut live = broker.store.subscribe_revocations();
    let mut shutdown = broker.shutdown.clone();
    loop {
        // Catch up from the durable log.
        loop {
            match broker.store.revocations_after(cursor, 1000).await {
                Ok(batch) if batch.is_empty() => break,
                Ok(batch) => {
                    for e in &batch {
                        cursor = e.sequence;
                        if tx.send(Ok(event_to_pb(e))).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(ApiError::from(e).into())).await;
                    return;
                }
            }
        }
        // Then follow the live feed until it lags, when the log is read again.
        loop {
            tokio::select! {
                ev = live.recv() => match ev {
                    Ok(e) if e.sequence <= cursor => {}
                    Ok(e) if e.sequence == cursor + 1 => {
                        cursor = e.sequence;
                        if tx.send(Ok(event_to_pb(&e))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return,
                },
                () = tx.closed() => return,
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[tonic::async_trait]
impl pb::validation_service_server::ValidationService for Services {
    async fn introspect(
        &self,
        req: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        self.run("Introspect", self.broker.introspect(&req.get_ref().token))
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
        let broker = Arc::clone(&self.broker);
        self.run("WatchRevocations", async move {
            let head = broker.store.last_revocation_sequence().await?;
            if after > head {
                return Err(ApiError::OutOfRange(format!(
                    "after_sequence {after} is beyond the newest revocation ({head}): this broker's log was reset or restored from a backup; start again from 0"
                )));
            }
            let (tx, rx) = tokio::sync::mpsc::channel(256);
            tokio::spawn(follow_revocations(broker, after, tx));
            Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as EventStream)
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
        self.run("RegisterAgent", async {
            let op = self.operator(&req)?;
            let agent = self.broker.register_agent(&op, req.into_inner()).await?;
            Ok(pb::RegisterAgentResponse { agent: Some(agent) })
        })
        .await
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.run("ListAgents", async {
            let op = self.operator(&req)?;
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
        self.run("GetAgent", async {
            let op = self.operator(&req)?;
            Ok(pb::GetAgentResponse {
                agent: Some(self.broker.get_agent(&op, &req.get_ref().name).await?),
            })
        })
        .await
    }

    async fn set_agent_state(
        &self,
        req: Request<pb::SetAgentStateRequest>,
    ) -> Result<Response<pb::SetAgentStateResponse>, Status> {
        self.run("SetAgentState", async {
            let op = self.operator(&req)?;
            self.broker.set_agent_state(&op, req.into_inner()).await
        })
        .await
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        self.run("ListTasks", async {
            let op = self.operator(&req)?;
            Ok(pb::ListTasksResponse {
                tasks: self.broker.list_tasks(&op, req.into_inner()).await?,
            })
        })
        .await
    }

    async fn revoke_task(
        &self,
        req: Request<pb::RevokeTaskRequest>,
    ) -> Result<Response<pb::RevokeTaskResponse>, Status> {
        self.run("RevokeTask", async {
            let op = self.operator(&req)?;
            self.broker.revoke_task(&op, req.into_inner()).await
        })
        .await
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.run("ListTokens", async {
            let op = self.operator(&req)?;
            Ok(pb::ListTokensResponse {
                tokens: self.broker.list_tokens(&op, req.into_inner()).await?,
            })
        })
        .await
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        self.run("RevokeToken", async {
            let op = self.operator(&req)?;
            Ok(pb::RevokeTokenResponse {
                token: Some(self.broker.revoke_token(&op, req.into_inner()).await?),
            })
        })
        .await
    }

    async fn tail_audit(
        &self,
        req: Request<pb::TailAuditRequest>,
    ) -> Result<Response<pb::TailAuditResponse>, Status> {
        self.run("TailAudit", async {
            let op = self.operator(&req)?;
            Ok(pb::TailAuditResponse {
                entries: self.broker.tail_audit(&op, req.into_inner()).await?,
            })
        })
        .await
    }

    async fn verify_audit(
        &self,
        req: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        self.run("VerifyAudit", async {
            let op = self.operator(&req)?;
            self.broker.verify_audit(&op).await
        })
        .await
    }
}
