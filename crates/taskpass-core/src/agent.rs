use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, AgentName, SpiffeId};
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

/// One identity that proves an agent: each is bound to at most one agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Binding {
    /// An OIDC token from `issuer` (its `iss`, exactly) with `sub` `subject` (exactly).
    Oidc {
        /// The issuer's `iss`.
        issuer: String,
        /// The token's `sub`.
        subject: String,
    },
    /// An X.509 client certificate whose one URI SAN is `spiffe_id`, from a CA that may
    /// vouch for its trust domain.
    X509 {
        /// The certificate's SPIFFE id.
        spiffe_id: SpiffeId,
    },
}

impl Binding {
    /// The binding's kind, as stored and printed: `oidc` or `x509`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Oidc { .. } => "oidc",
            Self::X509 { .. } => "x509",
        }
    }

    /// The identity as a unique key: kind and up to two parts.
    pub fn key(&self) -> (&'static str, &str, &str) {
        match self {
            Self::Oidc { issuer, subject } => ("oidc", issuer, subject),
            Self::X509 { spiffe_id } => ("x509", spiffe_id.as_str(), ""),
        }
    }
}

impl std::fmt::Display for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Oidc { issuer, subject } => write!(f, "OIDC identity {issuer}={subject}"),
            Self::X509 { spiffe_id } => write!(f, "certificate identity {spiffe_id}"),
        }
    }
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
    /// Labels, `key=value`, sorted, keys unique ([`parse_labels`]): what policies match on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Lifecycle state.
    pub state: AgentState,
    /// The identities that prove it.
    #[serde(default)]
    pub bindings: Vec<Binding>,
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

/// The most labels an agent has.
pub const MAX_LABELS: usize = 32;

/// Agent labels as `key=value`: keys of 1 to 63 lowercase letters, digits, `.`, `_`, `-` and
/// `/`, each key once; values of at most 128 bytes without control characters. Returned
/// sorted by key.
pub fn parse_labels<S: AsRef<str>>(raw: &[S]) -> Result<Vec<String>, String> {
    if raw.len() > MAX_LABELS {
        return Err(format!("at most {MAX_LABELS} labels"));
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for l in raw {
        let l = l.as_ref();
        let Some((k, v)) = l.split_once('=') else {
            return Err(format!(
                "label {:?} is not key=value",
                crate::error::shown(l)
            ));
        };
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b));
        if !key_ok {
            return Err(format!(
                "label key {:?}: use 1 to 63 lowercase letters, digits, '.', '_', '-' and '/'",
                crate::error::shown(k)
            ));
        }
        if v.len() > 128 || v.chars().any(char::is_control) {
            return Err(format!(
                "label {k}: the value must be at most 128 bytes without control characters"
            ));
        }
        if out
            .iter()
            .any(|o| o.split_once('=').is_some_and(|(ok, _)| ok == k))
        {
            return Err(format!("label key {k} is given twice"));
        }
        out.push(l.to_owned());
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod label_tests {
    use super::parse_labels;

    #[test]
    fn labels() {
        assert_eq!(
            parse_labels(&["tier=gold", "app.kubernetes.io/name=bot"]).unwrap(),
            ["app.kubernetes.io/name=bot", "tier=gold"]
        );
        for bad in ["tier", "=x", "Tier=x", "a b=c", "k=\u{7}"] {
            assert!(parse_labels(&[bad]).is_err(), "{bad}");
        }
        assert!(parse_labels(&["k=1", "k=2"]).is_err());
        assert!(parse_labels(&vec!["k=1"; 33]).is_err());
    }
}
