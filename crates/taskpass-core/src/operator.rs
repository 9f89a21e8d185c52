use serde::{Deserialize, Serialize};

/// An operator's role: a named bundle of permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Role {
    /// Registers and offboards agents, revokes; everything but approving its own requests.
    Admin,
    /// Approves or denies high-impact requests; reads.
    Approver,
    /// Reads agents, tasks, tokens and the audit log.
    Auditor,
}

impl Role {
    /// Parses the role's lowercase name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "approver" => Some(Self::Approver),
            "auditor" => Some(Self::Auditor),
            _ => None,
        }
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Approver => "approver",
            Self::Auditor => "auditor",
        }
    }

    /// True when the role grants `p`.
    pub fn permits(self, p: Permission) -> bool {
        use Permission::*;
        match self {
            Self::Admin => true,
            Self::Approver => matches!(p, ReadAgents | ReadTasks | ReadTokens | Approve),
            Self::Auditor => matches!(p, ReadAgents | ReadTasks | ReadTokens | ReadAudit),
        }
    }
}

/// What an admin RPC needs. Each RPC checks exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Permission {
    /// Register agents and change their allow-lists.
    ManageAgents,
    /// Suspend, resume and offboard agents.
    ChangeAgentState,
    /// Read agents.
    ReadAgents,
    /// Read tasks.
    ReadTasks,
    /// Read token records.
    ReadTokens,
    /// Revoke tasks and tokens.
    Revoke,
    /// Read and verify the audit log.
    ReadAudit,
    /// Approve or deny pending requests.
    Approve,
    /// Issue, list and revoke operators' certificates.
    ManageOperators,
    /// Add, list and revoke validators.
    ManageValidators,
}

impl Permission {
    /// The lowercase name, for error messages and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ManageAgents => "manage_agents",
            Self::ChangeAgentState => "change_agent_state",
            Self::ReadAgents => "read_agents",
            Self::ReadTasks => "read_tasks",
            Self::ReadTokens => "read_tokens",
            Self::Revoke => "revoke",
            Self::ReadAudit => "read_audit",
            Self::Approve => "approve",
            Self::ManageOperators => "manage_operators",
            Self::ManageValidators => "manage_validators",
        }
    }
}

/// An authenticated operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// Its identity, e.g. `spiffe://example.org/operator/admin/bootstrap`.
    pub id: String,
    /// Its role.
    pub role: Role,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        assert!(Role::Admin.permits(Permission::Revoke));
        assert!(!Role::Auditor.permits(Permission::Revoke));
        assert!(Role::Auditor.permits(Permission::ReadAudit));
        assert!(!Role::Approver.permits(Permission::ReadAudit));
        assert_eq!(Role::parse("auditor"), Some(Role::Auditor));
        assert_eq!(Role::parse("root"), None);
    }
}
