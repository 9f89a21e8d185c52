use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, AgentName};
use crate::scope::{Audience, ScopeSet};

/// The lifecycle state of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AgentState {
    /// May attest, start tasks and get tokens.
    Active,
    /// Temporarily barred: calls fail with FAILED_PRECONDITION; open tasks stay revoked.
    Suspended,
    /// Gone for good: never attests again.
    Offboarded,
}

impl AgentState {
    /// The lowercase name used in the CLI and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Offboarded => "offboarded",
        }
    }
}

/// An OIDC issuer and subject pair that proves an agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OidcBinding {
    /// The issuer's `iss`, exactly.
    pub issuer: String,
    /// The token's `sub`, exactly.
    pub subject: String,
}

/// What an agent may ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowList {
    /// Audiences it may get tokens for.
    pub audiences: Vec<Audience>,
    /// Scopes it may be granted.
    pub scopes: ScopeSet,
    /// Largest token TTL in seconds; `None` means the broker's max.
    pub max_ttl_seconds: Option<u32>,
    /// Scopes that need a human's approval before they are granted.
    pub approval_scopes: ScopeSet,
}

/// A registered workload identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    /// Its registered name.
    pub name: AgentName,
    /// Its SPIFFE id.
    pub id: AgentId,
    /// The person or team accountable for it.
    pub owner: String,
    /// What it is for.
    pub purpose: String,
    /// The tenant it belongs to (may be empty).
    pub tenant: String,
    /// The environment it runs in (may be empty).
    pub environment: String,
    /// Lifecycle state.
    pub state: AgentState,
    /// The OIDC identities that prove it.
    pub oidc: Vec<OidcBinding>,
    /// What it may ask for.
    pub allow: AllowList,
    /// How often its owner must review it, in days (0 = never set).
    pub review_every_days: u32,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

impl Agent {
    /// True when `aud` is on the agent's audience allow-list.
    pub fn may_use_audience(&self, aud: &Audience) -> bool {
        self.allow.audiences.contains(aud)
    }
}
