//! Taskpass's durable state: agents, tasks, token records, the numbered revocation log and the
//! hash-chained audit log, behind the [`Store`] trait.
//!
//! [`RedbStore`] is the embedded default: one redb file in the data dir. Every write is a
//! *command* sent to one writer thread, which applies all the commands waiting at that moment
//! in one transaction and commits once (one fsync for the batch), then answers each caller.
//! A method that returns `Ok` has therefore been made durable. Each command re-checks its
//! preconditions inside the transaction (an agent still active, a task still open), so a
//! token can never be recorded for a task that completed a moment earlier. Operators' writes
//! and revocations wait in a queue of their own that the writer serves first, so agents'
//! writes cannot hold them up; a full disk makes writes fail with
//! [`StoreError::Unwritable`] until the file takes writes again, never a lost write.
//!
//! ```no_run
//! # async fn f() -> Result<(), taskpass_store::StoreError> {
//! use taskpass_store::{RedbStore, Store, StoreOptions};
//! let store = RedbStore::open("taskpass-data/store.redb", StoreOptions::default())?;
//! let agents = store.list_agents().await?;
//! # Ok(()) }
//! ```

mod cache;
mod error;
mod redb_store;
mod tables;

use std::fmt;

use async_trait::async_trait;
use taskpass_core::{
    Agent, AgentId, AgentName, AgentState, AuditEntry, Binding, CertificateRecord, PolicySetRecord,
    PrincipalKind, RevocationEvent, Task, TaskId, TaskState, TokenId, TokenRecord,
};
use tokio::sync::broadcast;

pub use error::StoreError;
pub use redb_store::{RedbStore, StoreOptions};
pub use tables::SCHEMA_VERSION;

/// The audit entry that a write appends, without its position and hashes (the store assigns
/// those as it appends).
pub type AuditDraft = AuditEntry;

/// Who ends a task and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndTask {
    /// The task.
    pub task: TaskId,
    /// When set, the task must belong to this agent (else [`StoreError::NotFound`]).
    pub owner: Option<AgentId>,
    /// The final state: completed, revoked or expired.
    pub state: TaskState,
    /// The revocation reason, e.g. `task_completed`.
    pub reason: String,
    /// Unix seconds.
    pub now: i64,
    /// The audit entry to append.
    pub audit: AuditDraft,
}

/// A human's answer to a task waiting for approval.
#[derive(Debug, Clone)]
pub struct DecideApproval {
    /// The approval's id (`appr_…`).
    pub approval_id: String,
    /// Approve (the task opens, its deadline counted from now) or deny (it ends denied).
    pub approve: bool,
    /// The approver's identity.
    pub by: String,
    /// The approver's reason.
    pub reason: String,
    /// Unix seconds.
    pub now: i64,
    /// The audit entry to append.
    pub audit: AuditDraft,
}

/// The outcome of ending a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedTask {
    /// The task in its final state.
    pub task: Task,
    /// How many unexpired, unrevoked tokens it had.
    pub revoked_tokens: u32,
    /// The revocation appended to the log.
    pub revocation: RevocationEvent,
}

/// A change of an agent's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeAgentState {
    /// The agent.
    pub name: AgentName,
    /// The new state.
    pub state: AgentState,
    /// Unix seconds.
    pub now: i64,
    /// The longest any token can live (the broker's max TTL): bounds `not_after`.
    pub max_ttl_seconds: u32,
    /// The audit entry to append.
    pub audit: AuditDraft,
}

/// A certificate the broker's CA issued, to record.
#[derive(Debug, Clone)]
pub struct IssueCertificate {
    /// The agent it was issued to, which must be active (and is bound to its identity);
    /// `None` for an operator's.
    pub agent: Option<AgentName>,
    /// The record (its `subject` is what the certificate names).
    pub record: CertificateRecord,
    /// The audit entry to append.
    pub audit: AuditDraft,
}

/// A certificate to revoke.
#[derive(Debug, Clone)]
pub struct RevokeCertificate {
    /// Its serial, lowercase hex.
    pub serial: String,
    /// Why.
    pub reason: String,
    /// Unix seconds.
    pub now: i64,
    /// The audit entry to append.
    pub audit: AuditDraft,
}

/// The outcome of a change of an agent's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedAgent {
    /// The agent after the change.
    pub agent: Agent,
    /// How many open tasks were revoked.
    pub revoked_tasks: u32,
}

/// The result of checking the audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerification {
    /// Entries checked.
    pub entries: u64,
    /// The last entry's hash.
    pub head_hash: String,
    /// The first broken entry, if any.
    pub problem: Option<taskpass_core::ChainProblem>,
}

/// Sizes, for the bench tool and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Agents registered.
    pub agents: u64,
    /// Tasks recorded.
    pub tasks: u64,
    /// Token records.
    pub tokens: u64,
    /// Revocation log entries.
    pub revocations: u64,
    /// Audit log entries.
    pub audit_entries: u64,
    /// Grouped commits made since the store was opened.
    pub commits: u64,
    /// Commands applied in those commits.
    pub commands: u64,
    /// Time spent applying and committing, microseconds.
    pub commit_micros: u64,
}

/// The broker's state. Every method that writes returns only once the write is durable.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Registers a new agent. Fails with `AlreadyExists` when the name or one of its
    /// bindings is taken.
    async fn register_agent(&self, agent: Agent, audit: AuditDraft) -> Result<Agent, StoreError>;

    /// Replaces an agent's description, allow-lists and bindings with `agent`'s (its state and
    /// creation time stay the store's). Fails with `AlreadyExists` when a new binding is
    /// another agent's, `Precondition` when the agent is offboarded. The audit entry's detail
    /// gains every changed field, before and after.
    async fn update_agent(&self, agent: Agent, audit: AuditDraft) -> Result<Agent, StoreError>;

    /// Changes an agent's state. Suspending or offboarding revokes its open tasks; offboarding
    /// also appends an agent revocation. An offboarded agent cannot change state again.
    async fn change_agent_state(
        &self,
        change: ChangeAgentState,
    ) -> Result<ChangedAgent, StoreError>;

    /// The agent with this name.
    async fn agent(&self, name: &AgentName) -> Result<Option<Agent>, StoreError>;

    /// The agent this identity is bound to (an offboarded agent's bindings are released).
    async fn agent_by_binding(&self, binding: &Binding) -> Result<Option<Agent>, StoreError>;

    /// Every agent, by name.
    async fn list_agents(&self) -> Result<Vec<Agent>, StoreError>;

    /// Records a certificate issued to an active agent, binding the agent to the
    /// certificate's identity if it is not bound to it yet (`AlreadyExists` when another
    /// agent is).
    async fn record_certificate(
        &self,
        issue: IssueCertificate,
    ) -> Result<CertificateRecord, StoreError>;

    /// The certificate with this serial.
    async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError>;

    /// The certificates of a holder (see `CertificateHolder::key`), newest serial last.
    async fn list_certificates(
        &self,
        holder: &str,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, StoreError>;

    /// Every operator's (or every validator's) certificates, by name then serial.
    async fn list_principal_certificates(
        &self,
        kind: PrincipalKind,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, StoreError>;

    /// Revokes a certificate and appends its revocation (kind `Certificate`).
    async fn revoke_certificate(
        &self,
        revoke: RevokeCertificate,
    ) -> Result<(CertificateRecord, RevocationEvent), StoreError>;

    /// The revoked certificates that have not expired at `now`.
    async fn revoked_certificates(&self, now: i64) -> Result<Vec<CertificateRecord>, StoreError>;

    /// Records a new task, after checking that its agent is still active.
    async fn create_task(&self, task: Task, audit: AuditDraft) -> Result<Task, StoreError>;

    /// Records a new task and its one token in one write (both or neither), after the
    /// checks of [`Store::create_task`] and [`Store::record_token`].
    async fn create_task_with_token(
        &self,
        task: Task,
        task_audit: AuditDraft,
        token: TokenRecord,
        token_audit: AuditDraft,
    ) -> Result<Task, StoreError>;

    /// The task with this id.
    async fn task(&self, id: &TaskId) -> Result<Option<Task>, StoreError>;

    /// The newest tasks, of one agent or all, newest first.
    async fn list_tasks(
        &self,
        agent: Option<&AgentId>,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError>;

    /// Ends an open task and revokes its tokens.
    async fn end_task(&self, end: EndTask) -> Result<EndedTask, StoreError>;

    /// Ends, as expired, every open task whose deadline is at or before `now`.
    async fn expire_tasks(&self, now: i64) -> Result<Vec<EndedTask>, StoreError>;

    /// Records an issued token, after checking that its agent is active and its task open.
    async fn record_token(&self, token: TokenRecord, audit: AuditDraft) -> Result<(), StoreError>;

    /// The tokens holding status-list positions `from..to`, by position.
    async fn status_entries(&self, from: u64, to: u64) -> Result<Vec<TokenRecord>, StoreError>;

    /// The highest status-list position given to a token, if any.
    async fn last_status_index(&self) -> Result<Option<u64>, StoreError>;

    /// The token record with this id.
    async fn token(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError>;

    /// The newest token records, of one task or all, newest first.
    async fn list_tokens(
        &self,
        task: Option<&TaskId>,
        limit: usize,
    ) -> Result<Vec<TokenRecord>, StoreError>;

    /// Revokes one token.
    async fn revoke_token(
        &self,
        id: TokenId,
        reason: String,
        now: i64,
        audit: AuditDraft,
    ) -> Result<(TokenRecord, RevocationEvent), StoreError>;

    /// Appends an audit entry on its own (denials, for instance).
    async fn append_audit(&self, audit: AuditDraft) -> Result<(), StoreError>;

    /// Appends several audit entries in one write (the broker's tallies of refusals).
    async fn append_audits(&self, audits: Vec<AuditDraft>) -> Result<(), StoreError>;

    /// Why the store cannot write now ([`StoreError::Unwritable`] for every write meanwhile),
    /// or `None` when it can. It recovers by itself once its file takes writes again.
    fn write_failure(&self) -> Option<String>;

    /// Revocations after `sequence`, oldest first, at most `limit`.
    async fn revocations_after(
        &self,
        sequence: u64,
        limit: usize,
    ) -> Result<Vec<RevocationEvent>, StoreError>;

    /// The sequence of the newest revocation (0 when the log is empty).
    async fn last_revocation_sequence(&self) -> Result<u64, StoreError>;

    /// Revocations appended from now on, as they commit.
    fn subscribe_revocations(&self) -> broadcast::Receiver<RevocationEvent>;

    /// The newest audit entries, oldest first.
    async fn audit_tail(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;

    /// Recomputes the whole audit chain.
    async fn verify_audit(&self) -> Result<AuditVerification, StoreError>;

    /// Counts.
    async fn stats(&self) -> Result<StoreStats, StoreError>;

    /// Records `set` as the next version (its `version` is replaced by the next number) with
    /// its audit entry, in one write; returns it as recorded.
    async fn record_policy_set(
        &self,
        set: PolicySetRecord,
        audit: AuditDraft,
    ) -> Result<PolicySetRecord, StoreError>;

    /// Answers a pending approval: fails with `NotFound` for an unknown id and
    /// `Precondition` when the task no longer waits (decided, expired, revoked) or its agent is
    /// not active. Returns the task as it is now.
    async fn decide_approval(&self, d: DecideApproval) -> Result<Task, StoreError>;

    /// The tasks waiting for approval, oldest first, at most `limit`.
    async fn pending_approvals(&self, limit: usize) -> Result<Vec<Task>, StoreError>;

    /// The task of an approval id.
    async fn task_by_approval(&self, approval_id: &str) -> Result<Option<Task>, StoreError>;

    /// The recorded policy sets, newest first, at most `limit`.
    async fn policy_sets(&self, limit: usize) -> Result<Vec<PolicySetRecord>, StoreError>;
}
