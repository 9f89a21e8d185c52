use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, ApprovalId, TaskId};
use crate::scope::{Audience, Purpose, ScopeSet};

/// The state of a task. Only `Open` tasks get tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskState {
    /// Tokens may be issued.
    Open,
    /// Waiting for a human's approval.
    PendingApproval,
    /// The agent completed it; its tokens are revoked.
    Completed,
    /// Its deadline passed; its tokens are revoked.
    Expired,
    /// An operator revoked it (or its agent); its tokens are revoked.
    Revoked,
    /// An approver denied it.
    Denied,
}

impl TaskState {
    /// The lowercase name used in the CLI and as an introspection reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::PendingApproval => "pending_approval",
            Self::Completed => "completed",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::Denied => "denied",
        }
    }

    /// True for the states a task never leaves.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Expired | Self::Revoked | Self::Denied
        )
    }
}

/// One unit of intended work: the unit of authorisation and of revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Its id.
    pub id: TaskId,
    /// The agent that started it; only that agent may see or use it.
    pub agent: AgentId,
    /// State.
    pub state: TaskState,
    /// What it is for.
    pub purpose: Purpose,
    /// The downstream APIs it may get tokens for.
    pub audiences: Vec<Audience>,
    /// The scopes granted.
    pub scopes: ScopeSet,
    /// Unix seconds.
    pub created_at: i64,
    /// The deadline, Unix seconds. No token outlives it.
    pub expires_at: i64,
    /// When it left the open state, Unix seconds.
    pub ended_at: Option<i64>,
    /// The user it acts for, if any.
    pub on_behalf_of: Option<String>,
    /// The approval request, while pending.
    pub approval_id: Option<String>,
    /// The approver who approved it, when it needed approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// The user it acts for, as verified when it started (`on_behalf_of` is its subject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<crate::decision::User>,
    /// The approval it waited for (or waits for), when it needed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// Opened by the OAuth token endpoint for one grant without a `task_id`: it holds that
    /// one token (its deadline is the token's expiry) and takes no other.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub implicit: bool,
}

impl Task {
    /// The state as seen at `now`: an open task past its deadline is expired even before the
    /// sweeper has recorded it.
    pub fn effective_state(&self, now: i64) -> TaskState {
        match self.state {
            TaskState::Open if now >= self.expires_at => TaskState::Expired,
            // While pending, the deadline is the approval's: unanswered, it is denied.
            TaskState::PendingApproval if now >= self.expires_at => TaskState::Denied,
            s => s,
        }
    }
}

/// A task's request for a human's approval, and its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Its id, `appr_<ULID>`: what approvers name.
    pub id: String,
    /// Why approval is needed (the approval scopes, or the policies asking for it).
    pub why: String,
    /// The ids of the policies that asked for it (empty when the agent's approval scopes did).
    pub policies: Vec<String>,
    /// When it was asked for, Unix seconds.
    pub requested_at: i64,
    /// How long the task runs once approved, seconds.
    pub task_seconds: u32,
    /// The operator who decided, once decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// When, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<i64>,
    /// The approver's reason (required to deny), or `approval_expired`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl Approval {
    /// True for a well-formed approval id: `appr_` and a canonical ULID ([`ApprovalId`]).
    pub fn is_id(s: &str) -> bool {
        ApprovalId::parse(s).is_ok()
    }

    /// A new approval id.
    pub fn new_id(ulid: ulid::Ulid) -> String {
        ApprovalId::from_ulid(ulid).to_string()
    }
}
