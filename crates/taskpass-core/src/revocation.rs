use serde::{Deserialize, Serialize};

/// What a revocation covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RevocationKind {
    /// One token, by `jti`.
    Token,
    /// Every token of a task, by `txn`.
    Task,
    /// Every token of an agent, by `client_id`.
    Agent,
    /// A client certificate, by serial (lowercase hex): it attests nothing any more.
    Certificate,
}

/// One entry of the numbered, durable revocation log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationEvent {
    /// Position in the log, from 1, without gaps.
    pub sequence: u64,
    /// What is revoked.
    pub kind: RevocationKind,
    /// The token id, task id or agent id.
    pub id: String,
    /// Unix seconds.
    pub revoked_at: i64,
    /// After this no token it covers can be valid.
    pub not_after: i64,
    /// Why, e.g. `task_completed`.
    pub reason: String,
    /// For a certificate: its `x5t#S256`, which the tokens bound to it carry in `cnf`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub thumbprint: String,
}
