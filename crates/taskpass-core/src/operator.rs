//! Operators and what they may do: permissions, roles as named bundles of them, and the
//! authenticated operator an admin call runs as.
//!
//! A role is a name in the operator's certificate (`spiffe://<td>/operator/<role>/<name>`);
//! what it grants is looked up in the broker's [`Roles`] at every call, so a role dropped from
//! the config grants nothing from then on (fail closed).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ParseError;
use crate::ids::check_name;

/// What one admin call needs. Each admin RPC needs exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Permission {
    /// Read agents and their certificates.
    AgentsRead,
    /// Register agents, change their allow-lists, issue their certificates.
    AgentsWrite,
    /// Suspend, resume and offboard agents.
    AgentsState,
    /// Read tasks.
    TasksRead,
    /// Revoke tasks.
    TasksRevoke,
    /// Read token records; introspect tokens.
    TokensRead,
    /// Revoke tokens.
    TokensRevoke,
    /// Revoke agent certificates.
    CertificatesRevoke,
    /// Read and verify the audit log.
    AuditRead,
    /// List pending approvals.
    ApprovalsRead,
    /// Approve or deny pending requests.
    ApprovalsDecide,
    /// List operators' certificates.
    OperatorsRead,
    /// Issue and revoke operators' certificates.
    OperatorsWrite,
    /// List validators.
    ValidatorsRead,
    /// Add and revoke validators.
    ValidatorsWrite,
    /// Read the policy set and its history.
    PoliciesRead,
    /// Apply a policy set.
    PoliciesWrite,
}

impl Permission {
    /// Every permission, in a stable order.
    pub const ALL: [Permission; 17] = [
        Self::AgentsRead,
        Self::AgentsWrite,
        Self::AgentsState,
        Self::TasksRead,
        Self::TasksRevoke,
        Self::TokensRead,
        Self::TokensRevoke,
        Self::CertificatesRevoke,
        Self::AuditRead,
        Self::ApprovalsRead,
        Self::ApprovalsDecide,
        Self::OperatorsRead,
        Self::OperatorsWrite,
        Self::ValidatorsRead,
        Self::ValidatorsWrite,
        Self::PoliciesRead,
        Self::PoliciesWrite,
    ];

    /// The name used in config, error messages and the audit log, e.g. `agents:write`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentsRead => "agents:read",
            Self::AgentsWrite => "agents:write",
            Self::AgentsState => "agents:state",
            Self::TasksRead => "tasks:read",
            Self::TasksRevoke => "tasks:revoke",
            Self::TokensRead => "tokens:read",
            Self::TokensRevoke => "tokens:revoke",
            Self::CertificatesRevoke => "certificates:revoke",
            Self::AuditRead => "audit:read",
            Self::ApprovalsRead => "approvals:read",
            Self::ApprovalsDecide => "approvals:decide",
            Self::OperatorsRead => "operators:read",
            Self::OperatorsWrite => "operators:write",
            Self::ValidatorsRead => "validators:read",
            Self::ValidatorsWrite => "validators:write",
            Self::PoliciesRead => "policies:read",
            Self::PoliciesWrite => "policies:write",
        }
    }

    /// Parses a permission's name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// True for the permissions that only read.
    pub fn is_read(self) -> bool {
        self.as_str().ends_with(":read")
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of permissions.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Permissions(u32);

impl Permissions {
    /// No permission at all.
    pub const NONE: Self = Self(0);

    /// The set of `ps`.
    pub fn of(ps: impl IntoIterator<Item = Permission>) -> Self {
        Self(ps.into_iter().fold(0, |acc, p| acc | p.bit()))
    }

    /// Parses permission names; the error names the first unknown one.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        let mut out = Self::NONE;
        for n in names {
            let p = Permission::parse(n.as_ref()).ok_or_else(|| {
                format!(
                    "unknown permission {:?}: use one of {}",
                    n.as_ref(),
                    Permission::ALL.map(Permission::as_str).join(", ")
                )
            })?;
            out.0 |= p.bit();
        }
        Ok(out)
    }

    /// True when `p` is in the set.
    pub fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    /// The permissions in the set, in [`Permission::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(Permission::as_str))
            .finish()
    }
}

/// A role's name: a path segment of operator certificates (lowercase letters, digits, `-`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoleName(String);

impl RoleName {
    /// The built-in role that runs the broker: everything but deciding approvals.
    pub const ADMIN: &'static str = "admin";
    /// The built-in role that decides approvals.
    pub const APPROVER: &'static str = "approver";
    /// The built-in role that reads everything and changes nothing.
    pub const AUDITOR: &'static str = "auditor";

    /// Parses a role name.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        check_name("role name", s)?;
        Ok(Self(s.to_owned()))
    }

    /// The built-in admin role.
    pub fn admin() -> Self {
        Self(Self::ADMIN.to_owned())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RoleName {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        Self::parse(&s)
    }
}
impl From<RoleName> for String {
    fn from(v: RoleName) -> String {
        v.0
    }
}
impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The roles a broker knows: the three built in, and custom ones from its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles(BTreeMap<RoleName, Permissions>);

impl Default for Roles {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Roles {
    /// The built-in roles. `admin` has every permission but `approvals:decide`, so the people
    /// who register agents are not the ones who approve what those agents ask for.
    pub fn builtin() -> Self {
        use Permission::*;
        let reads = Permissions::of(Permission::ALL.into_iter().filter(|p| p.is_read()));
        let admin = Permissions::of(
            Permission::ALL
                .into_iter()
                .filter(|p| *p != ApprovalsDecide),
        );
        let approver = Permissions::of([
            AgentsRead,
            TasksRead,
            TokensRead,
            ApprovalsRead,
            ApprovalsDecide,
            PoliciesRead,
        ]);
        let mut m = BTreeMap::new();
        m.insert(RoleName(RoleName::ADMIN.into()), admin);
        m.insert(RoleName(RoleName::APPROVER.into()), approver);
        m.insert(RoleName(RoleName::AUDITOR.into()), reads);
        Self(m)
    }

    /// Adds a custom role. A built-in role cannot be redefined.
    pub fn define(&mut self, name: RoleName, permissions: Permissions) -> Result<(), String> {
        if Self::builtin().0.contains_key(&name) {
            return Err(format!(
                "role {name} is built in and cannot be redefined: give the custom role another name"
            ));
        }
        self.0.insert(name, permissions);
        Ok(())
    }

    /// What `role` grants: nothing when the role is unknown.
    pub fn permissions(&self, role: &RoleName) -> Permissions {
        self.0.get(role).copied().unwrap_or(Permissions::NONE)
    }

    /// True when the broker knows `role`.
    pub fn contains(&self, role: &RoleName) -> bool {
        self.0.contains_key(role)
    }

    /// The roles' names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &RoleName> {
        self.0.keys()
    }
}

/// An authenticated operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// Its identity, e.g. `spiffe://example.org/operator/admin/bootstrap`.
    pub id: String,
    /// Its role, as its certificate names it.
    pub role: RoleName,
    /// What the role grants on this broker now.
    pub permissions: Permissions,
}

impl Operator {
    /// True when the operator's role grants `p`.
    pub fn may(&self, p: Permission) -> bool {
        self.permissions.contains(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(s: &str) -> RoleName {
        RoleName::parse(s).unwrap()
    }

    #[test]
    fn builtin_roles() {
        let r = Roles::builtin();
        let admin = r.permissions(&role("admin"));
        assert!(admin.contains(Permission::TokensRevoke));
        assert!(
            !admin.contains(Permission::ApprovalsDecide),
            "separation of duties: admin does not approve"
        );
        let auditor = r.permissions(&role("auditor"));
        assert!(auditor.contains(Permission::AuditRead));
        assert!(auditor.iter().all(Permission::is_read));
        let approver = r.permissions(&role("approver"));
        assert!(approver.contains(Permission::ApprovalsDecide));
        assert!(!approver.contains(Permission::AuditRead));
        assert_eq!(r.permissions(&role("root")), Permissions::NONE);
    }

    #[test]
    fn custom_roles() {
        let mut r = Roles::builtin();
        let p = Permissions::parse(&["tokens:revoke", "tasks:revoke"]).unwrap();
        r.define(role("oncall"), p).unwrap();
        assert!(
            r.permissions(&role("oncall"))
                .contains(Permission::TasksRevoke)
        );
        assert!(
            !r.permissions(&role("oncall"))
                .contains(Permission::AgentsWrite)
        );
        assert!(r.define(role("admin"), p).is_err());
        let e = Permissions::parse(&["tokens:revoke", "root:all"]).unwrap_err();
        assert!(e.contains("root:all"), "{e}");
    }

    #[test]
    fn names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
        }
        assert!(RoleName::parse("Admin").is_err());
        assert!(RoleName::parse("a/b").is_err());
        let json = serde_json::to_string(&role("approver")).unwrap();
        assert_eq!(json, "\"approver\"", "stored as the old enum was");
        assert!(serde_json::from_str::<RoleName>("\"-x\"").is_err());
    }
}
