//! The one table of what each admin RPC needs, and the check that applies it.
//!
//! Every AdminService method goes through [`Broker::admit`] (the gRPC layer has no other way
//! to get an [`Operator`]), which looks the RPC up here: an RPC missing from the table is
//! refused, and a test holds the table equal to the service's methods in the proto.

use taskpass_core::{AuditEntry, AuditOutcome, Operator, Permission};

use crate::broker::{Broker, Caller};
use crate::error::ApiError;

/// Each AdminService RPC and the one permission it needs.
pub(crate) const ADMIN_RPCS: &[(&str, Permission)] = {
    use Permission::*;
    &[
        ("RegisterAgent", AgentsWrite),
        ("UpdateAgent", AgentsWrite),
        ("ListAgents", AgentsRead),
        ("GetAgent", AgentsRead),
        ("SetAgentState", AgentsState),
        ("ListTasks", TasksRead),
        ("RevokeTask", TasksRevoke),
        ("ListTokens", TokensRead),
        ("RevokeToken", TokensRevoke),
        ("TailAudit", AuditRead),
        ("VerifyAudit", AuditRead),
        ("IssueOperatorCertificate", OperatorsWrite),
        ("ListOperators", OperatorsRead),
        ("RevokeOperator", OperatorsWrite),
        ("IssueAgentCertificate", AgentsWrite),
        ("ListCertificates", AgentsRead),
        ("RevokeCertificate", CertificatesRevoke),
        ("AddValidator", ValidatorsWrite),
        ("ListValidators", ValidatorsRead),
        ("RevokeValidator", ValidatorsWrite),
        ("ApplyPolicies", PoliciesWrite),
        ("GetPolicies", PoliciesRead),
        ("ListPolicySets", PoliciesRead),
        ("ListApprovals", ApprovalsRead),
        ("DecideApproval", ApprovalsDecide),
    ]
};

/// The permission `rpc` needs; `None` for an RPC the table lacks.
pub(crate) fn permission_of(rpc: &str) -> Option<Permission> {
    ADMIN_RPCS.iter().find(|(r, _)| *r == rpc).map(|(_, p)| *p)
}

impl Broker {
    /// Authenticates the caller as an operator and checks the permission `rpc` needs. A
    /// refusal is a decision, so it is audited; so is every allowed read (changes are audited
    /// by what they change, with their details).
    pub(crate) async fn admit(&self, caller: &Caller, rpc: &str) -> Result<Operator, ApiError> {
        let op = self.operator(caller).await?;
        let Some(p) = permission_of(rpc) else {
            // Unreachable while the table test passes; closed, not open, if it ever is.
            return Err(self
                .refuse_operator(
                    &op,
                    rpc,
                    None,
                    format!("{rpc} has no permission mapped: refused"),
                )
                .await);
        };
        if !op.may(p) {
            let why = self.lacks(&op, p);
            return Err(self.refuse_operator(&op, rpc, Some(p), why).await);
        }
        if p.is_read() {
            let mut a = AuditEntry::draft(self.now(), &op.id, "operator.read");
            a.detail = format!("rpc={rpc} permission={p}");
            self.store.append_audit(a).await?;
        }
        Ok(op)
    }

    /// Checks one permission of an operator outside the admin API (Introspect,
    /// WatchRevocations, the AuthZEN evaluations), audited under `rpc`.
    pub(crate) async fn authorize(
        &self,
        op: &Operator,
        p: Permission,
        rpc: &str,
    ) -> Result<(), ApiError> {
        if op.may(p) {
            return Ok(());
        }
        let why = self.lacks(op, p);
        Err(self.refuse_operator(op, rpc, Some(p), why).await)
    }

    fn lacks(&self, op: &Operator, p: Permission) -> String {
        if self.roles.contains(&op.role) {
            format!(
                "operator {} has role {}, which lacks permission {p}",
                op.id, op.role
            )
        } else {
            format!(
                "operator {} has role {}, which this broker's config does not define (under [roles]): it grants nothing, so permission {p} is missing",
                op.id, op.role
            )
        }
    }

    async fn refuse_operator(
        &self,
        op: &Operator,
        rpc: &str,
        p: Option<Permission>,
        why: String,
    ) -> ApiError {
        let mut a = AuditEntry::draft(self.now(), &op.id, "operator.authorize");
        a.outcome = AuditOutcome::Deny;
        a.reason.clone_from(&why);
        a.detail = match p {
            Some(p) => format!("rpc={rpc} permission={p}"),
            None => format!("rpc={rpc}"),
        };
        match self.store.append_audit(a).await {
            Ok(_) => ApiError::PermissionDenied(why),
            Err(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use prost::Message;

    /// The table names exactly the AdminService methods of the proto: a new RPC without a
    /// permission fails here.
    #[test]
    fn every_admin_rpc_has_a_permission() {
        let set =
            prost_types::FileDescriptorSet::decode(taskpass_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut methods: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| &f.service)
            .filter(|s| s.name() == "AdminService")
            .flat_map(|s| &s.method)
            .map(|m| m.name().to_owned())
            .collect();
        methods.sort();
        let mut table: Vec<String> = ADMIN_RPCS.iter().map(|(r, _)| (*r).to_owned()).collect();
        table.sort();
        assert!(!methods.is_empty());
        assert_eq!(methods, table);
    }

    /// What each built-in role may call, RPC by RPC: each is refused what it lacks.
    #[test]
    fn each_role_is_refused_what_it_lacks() {
        use taskpass_core::{RoleName, Roles};
        let roles = Roles::builtin();
        let may = |role: &str| {
            let p = roles.permissions(&RoleName::parse(role).unwrap());
            ADMIN_RPCS
                .iter()
                .filter(|(_, need)| p.contains(*need))
                .map(|(rpc, _)| *rpc)
                .collect::<Vec<_>>()
        };
        let admin = may("admin");
        assert_eq!(admin.len(), ADMIN_RPCS.len() - 1);
        assert!(!admin.contains(&"DecideApproval"));
        let auditor = may("auditor");
        assert!(
            auditor.iter().all(|r| r.starts_with("List")
                || r.starts_with("Get")
                || *r == "TailAudit"
                || *r == "VerifyAudit"),
            "{auditor:?}"
        );
        assert!(auditor.contains(&"TailAudit") && !auditor.contains(&"ApplyPolicies"));
        let approver = may("approver");
        assert!(approver.contains(&"DecideApproval") && approver.contains(&"ListApprovals"));
        for never in [
            "RegisterAgent",
            "RevokeToken",
            "TailAudit",
            "ApplyPolicies",
            "IssueOperatorCertificate",
        ] {
            assert!(!approver.contains(&never), "{never}");
        }
        assert!(may("nobody").is_empty(), "an unknown role grants nothing");
    }

    #[test]
    fn unknown_rpc_has_none() {
        assert_eq!(permission_of("DropDatabase"), None);
        assert_eq!(permission_of("RevokeToken"), Some(Permission::TokensRevoke));
    }
}
