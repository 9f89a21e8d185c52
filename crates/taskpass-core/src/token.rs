use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, TaskId, TokenId};
use crate::scope::{Audience, ScopeSet};

/// What the broker keeps about an issued token (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The `jti`.
    pub id: TokenId,
    /// The `txn`.
    pub task: TaskId,
    /// The `client_id`.
    pub agent: AgentId,
    /// The `aud`.
    pub audience: Audience,
    /// The `scope`.
    pub scopes: ScopeSet,
    /// The `iat`.
    pub issued_at: i64,
    /// The `exp`.
    pub expires_at: i64,
    /// When an operator revoked this one token.
    pub revoked_at: Option<i64>,
}

/// The `act` claim: who is acting when the token's subject is a user (RFC 8693 §4.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The acting agent's id.
    pub sub: String,
}

/// The claims of a Taskpass access token (RFC 9068 profile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The broker's issuer URL.
    pub iss: String,
    /// The agent id, or the user when acting for one.
    pub sub: String,
    /// One audience.
    pub aud: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Not before, Unix seconds.
    pub nbf: i64,
    /// The token id.
    pub jti: String,
    /// Always the agent id.
    pub client_id: String,
    /// Space-separated scopes.
    pub scope: String,
    /// The task id.
    pub txn: String,
    /// Present when acting for a user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    /// Confirmation (RFC 7800): present when the token is bound to a certificate or key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<serde_json::Map<String, serde_json::Value>>,
}

impl AccessClaims {
    /// The claims for `record`, issued by `issuer`, for a task acting for `on_behalf_of`.
    pub fn for_record(issuer: &str, record: &TokenRecord, on_behalf_of: Option<&str>) -> Self {
        let agent = record.agent.as_str().to_owned();
        let (sub, act) = match on_behalf_of {
            Some(user) => (user.to_owned(), Some(Actor { sub: agent.clone() })),
            None => (agent.clone(), None),
        };
        Self {
            iss: issuer.to_owned(),
            sub,
            aud: record.audience.as_str().to_owned(),
            exp: record.expires_at,
            iat: record.issued_at,
            nbf: record.issued_at,
            jti: record.id.to_string(),
            client_id: agent,
            scope: record.scopes.to_claim(),
            txn: record.task.to_string(),
            act,
            cnf: None,
        }
    }

    /// The `scope` claim as a list, in claim order.
    pub fn scopes(&self) -> Vec<String> {
        self.scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}
