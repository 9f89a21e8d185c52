//! Client certificates the broker's CA issues, as the broker records them: by serial, with
//! the identity they name, their lifetime and their revocation.

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, SpiffeId};
use crate::operator::RoleName;

/// Who a certificate was issued to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CertificateHolder {
    /// An agent.
    Agent {
        /// The agent's id.
        agent: AgentId,
    },
    /// An operator.
    Operator {
        /// Its name (the last segment of its SPIFFE id).
        name: String,
        /// Its role.
        role: RoleName,
    },
    /// A validator: a downstream API that introspects and follows revocations.
    Validator {
        /// Its name (the last segment of its SPIFFE id).
        name: String,
        /// The audiences it validates tokens for: Introspect answers it only for these.
        audiences: Vec<String>,
    },
}

impl CertificateHolder {
    /// The holder as one string, for indexes: the agent id, `operator:<name>` or
    /// `validator:<name>`.
    pub fn key(&self) -> String {
        match self {
            Self::Agent { agent } => agent.as_str().to_owned(),
            Self::Operator { name, .. } => holder_key(PrincipalKind::Operator, name),
            Self::Validator { name, .. } => holder_key(PrincipalKind::Validator, name),
        }
    }
}

/// The principals other than agents that the broker's CA issues certificates to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// Operators (`/operator/<role>/<name>`).
    Operator,
    /// Validators (`/validator/<name>`).
    Validator,
}

impl PrincipalKind {
    /// The lowercase name, the prefix of its holder keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Validator => "validator",
        }
    }
}

/// The index key of an operator's or a validator's certificates: `<kind>:<name>`.
pub fn holder_key(kind: PrincipalKind, name: &str) -> String {
    format!("{}:{name}", kind.as_str())
}

/// The index key of an operator's certificates.
pub fn operator_holder_key(name: &str) -> String {
    holder_key(PrincipalKind::Operator, name)
}

/// One issued certificate (never its key: the holder made that).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRecord {
    /// The serial number, lowercase hex.
    pub serial: String,
    /// The one URI SAN it carries.
    pub subject: SpiffeId,
    /// Who it was issued to.
    pub holder: CertificateHolder,
    /// `x5t#S256` of its DER, which bound tokens carry.
    pub thumbprint: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
    /// When it was revoked.
    #[serde(default)]
    pub revoked_at: Option<i64>,
    /// Why, when revoked.
    #[serde(default)]
    pub revoke_reason: String,
}

impl CertificateRecord {
    /// Whether it proves anything at `now`: not revoked and not expired.
    pub fn is_live(&self, now: i64) -> bool {
        self.revoked_at.is_none() && now < self.not_after
    }
}

/// Whether `s` is a serial as records hold them: 1 to 40 lowercase hex digits (RFC 5280
/// allows at most 20 octets).
pub fn is_canonical_serial(s: &str) -> bool {
    (1..=40).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
