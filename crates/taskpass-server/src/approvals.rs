//! Human approval: the tasks that wait for one, an approver's answer (never the agent's own
//! owner's), and WatchTask, the stream an agent waits on.

use std::sync::Arc;
use std::time::Duration;

use taskpass_core::{Approval, AuditEntry, Operator, Task, TaskId, TaskState};
use taskpass_proto::v1 as pb;
use taskpass_store::DecideApproval;

use crate::admin::text;
use crate::broker::{Broker, Caller, task_to_pb};
use crate::error::ApiError;

/// How often a WatchTask stream re-reads its task when nothing woke it.
const WATCH_POLL: Duration = Duration::from_secs(2);

fn approval_to_pb(t: &Task, agent_name: &str, owner: &str) -> Option<pb::Approval> {
    let a = t.approval.as_ref()?;
    Some(pb::Approval {
        approval_id: a.id.clone(),
        task_id: t.id.to_string(),
        agent_id: t.agent.to_string(),
        agent_name: agent_name.to_owned(),
        owner: owner.to_owned(),
        purpose: t.purpose.as_str().to_owned(),
        audiences: t.audiences.iter().map(|x| x.as_str().to_owned()).collect(),
        scopes: t.scopes.to_strings(),
        why: a.why.clone(),
        policy_ids: a.policies.clone(),
        requested_at: a.requested_at,
        expires_at: t.expires_at,
        task_seconds: a.task_seconds,
    })
}

/// Separation of duties: whether the operator is the agent's owner. The owner is free text
/// (a person, a team, an address), so the operator's name is compared with it whole, and
/// with the local part of an address, ignoring case.
fn is_owner(owner: &str, op: &Operator) -> bool {
    let name = op.id.rsplit('/').next().unwrap_or_default().to_lowercase();
    let owner = owner.trim().to_lowercase();
    !name.is_empty()
        && (owner == name
            || owner == op.id.to_lowercase()
            || owner
                .split_once('@')
                .is_some_and(|(local, _)| local == name))
}

impl Broker {
    /// ListApprovals: the tasks waiting for a human, oldest first.
    pub(crate) async fn list_approvals(
        &self,
        _op: &Operator,
        req: pb::ListApprovalsRequest,
    ) -> Result<Vec<pb::Approval>, ApiError> {
        let now = self.now();
        let tasks = self
            .store
            .pending_approvals(crate::admin::limit(req.limit, 100))
            .await?;
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks
            .iter()
            .filter(|t| t.effective_state(now) == TaskState::PendingApproval)
        {
            let agent = self.agent_of(t.agent.as_str()).await?;
            let (name, owner) = agent
                .as_ref()
                .map(|a| (a.name.as_str(), a.owner.as_str()))
                .unwrap_or_default();
            out.extend(approval_to_pb(t, name, owner));
        }
        Ok(out)
    }

    /// DecideApproval: approve or deny, by an approver who does not own the agent.
    pub(crate) async fn decide_approval(
        &self,
        op: &Operator,
        req: pb::DecideApprovalRequest,
    ) -> Result<pb::Task, ApiError> {
        let id = req.approval_id.trim();
        if !Approval::is_id(id) {
            return Err(ApiError::InvalidArgument(format!(
                "approval id {:?} is not of the form appr_<ULID>: copy it from `taskpass approval list`",
                crate::admin::shown(id)
            )));
        }
        let reason = text("reason", &req.reason, !req.approve).map_err(|e| {
            if req.approve {
                e
            } else {
                ApiError::InvalidArgument(
                    "a denial needs --reason: the agent's owner reads it".into(),
                )
            }
        })?;
        let now = self.now();
        let task = self.store.task_by_approval(id).await?.ok_or_else(|| {
            ApiError::NotFound(format!(
                "approval {id} is not pending (decided, expired or unknown)"
            ))
        })?;
        let agent = self.agent_of(task.agent.as_str()).await?.ok_or_else(|| {
            ApiError::FailedPrecondition(format!("the agent of approval {id} no longer exists"))
        })?;
        let action = if req.approve {
            "approval.approve"
        } else {
            "approval.deny"
        };
        if is_owner(&agent.owner, op) {
            let why = format!(
                "{} owns agent {} (owner {:?}): the approver must be someone else (separation of duties)",
                op.id, agent.name, agent.owner
            );
            let mut a = AuditEntry::draft(now, &op.id, action);
            a.outcome = taskpass_core::AuditOutcome::Deny;
            a.reason = "approver_owns_agent".into();
            a.agent_id = agent.id.to_string();
            a.task_id = task.id.to_string();
            a.detail = format!("approval={id}");
            self.store.append_audit(a).await?;
            return Err(ApiError::PermissionDenied(why));
        }
        let mut a = AuditEntry::draft(now, &op.id, action);
        a.reason = if req.approve {
            "approved".into()
        } else {
            "denied".into()
        };
        a.detail = format!("approval={id} reason={reason:?}");
        let decided = self
            .store
            .decide_approval(DecideApproval {
                approval_id: id.to_owned(),
                approve: req.approve,
                by: op.id.clone(),
                reason,
                now,
                audit: a,
            })
            .await
            .map_err(|e| match e {
                taskpass_store::StoreError::NotFound { .. } => ApiError::NotFound(format!(
                    "approval {id} is not pending (decided, expired or unknown)"
                )),
                other => other.into(),
            })?;
        tracing::info!(approval = id, task_id = %decided.id, approver = %op.id, approve = req.approve, "approval decided");
        let _ = self.task_changes.send(decided.id);
        Ok(task_to_pb(&decided, now))
    }

    /// WatchTask: the agent's task now, then at each change, until it is final.
    pub(crate) async fn watch_task(
        self: &Arc<Self>,
        caller: &Caller,
        req: pb::WatchTaskRequest,
    ) -> Result<TaskWatch, ApiError> {
        let agent = self
            .authenticate(caller, "watch_task", req.attestation.as_ref())
            .await?
            .agent;
        self.charge(&agent, "watch_task")?;
        let task = self
            .load_own_task(&agent, "watch_task", &req.task_id)
            .await?;
        let slot = self.conns.watches.take(caller.conn.clone())?;
        Ok(TaskWatch {
            broker: Arc::clone(self),
            id: task.id,
            agent: agent.id.to_string(),
            last: None,
            changes: self.task_changes.subscribe(),
            revocations: self.store.subscribe_revocations(),
            shutdown: self.shutdown.clone(),
            done: false,
            _slot: slot,
        })
    }
}

/// One WatchTask stream: it wakes on its task's approval, on a revocation of the task or its
/// agent, and every couple of seconds (expiry), and sends the task when it changed.
pub(crate) struct TaskWatch {
    broker: Arc<Broker>,
    id: TaskId,
    agent: String,
    last: Option<pb::Task>,
    changes: tokio::sync::broadcast::Receiver<TaskId>,
    revocations: tokio::sync::broadcast::Receiver<taskpass_core::RevocationEvent>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    done: bool,
    _slot: crate::broker::WatchSlot,
}

impl TaskWatch {
    /// The task's next state, or `None` once it was sent in a final state.
    pub(crate) async fn next(&mut self) -> Option<Result<pb::Task, ApiError>> {
        loop {
            if self.done {
                return None;
            }
            let now = self.broker.now();
            let task = match self.broker.store.task(&self.id).await {
                Ok(Some(t)) => t,
                Ok(None) => {
                    self.done = true;
                    return Some(Err(ApiError::NotFound(format!(
                        "task {} not found",
                        self.id
                    ))));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
            };
            let shown = task_to_pb(&task, now);
            if self.last.as_ref() != Some(&shown) {
                self.done = task.effective_state(now).is_final();
                self.last = Some(shown.clone());
                return Some(Ok(shown));
            }
            // Wait for something about this task (or its agent), or the next poll: events
            // about other tasks are skipped without reading the store.
            use tokio::sync::broadcast::error::RecvError;
            let me = self.id;
            let me_text = me.to_string();
            let poll = tokio::time::sleep(WATCH_POLL);
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    c = self.changes.recv() => match c {
                        Ok(id) if id != me => {}
                        Err(RecvError::Closed) => return None,
                        _ => break,
                    },
                    r = self.revocations.recv() => match r {
                        Ok(e) if e.id != me_text && e.id != self.agent => {}
                        Err(RecvError::Closed) => return None,
                        _ => break,
                    },
                    () = &mut poll => break,
                    _ = self.shutdown.changed() => return None,
                }
            }
        }
    }
}
