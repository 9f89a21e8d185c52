//! The Taskpass domain: agent identities, tasks, access-token claims, the TTL and scope
//! arithmetic, authorisation decisions and the audit hash chain.
//!
//! This crate does no I/O and has no async: it is a set of types that can only hold valid
//! values (parsed at the edges) and pure functions over them. The store, the attestation
//! verifiers, the server and the CLI are built around it.
//!
//! ```
//! use taskpass_core::{AgentName, TrustDomain};
//! let td = TrustDomain::parse("example.org").unwrap();
//! let name = AgentName::parse("billing-bot").unwrap();
//! assert_eq!(td.agent_id(&name).as_str(), "spiffe://example.org/agent/billing-bot");
//! ```

mod agent;
mod audit;
mod certificate;
mod clock;
mod decision;
mod error;
mod ids;
mod json;
pub mod jwt;
mod operator;
mod policy;
mod policy_set;
mod revocation;
mod revocation_set;
mod scope;
mod task;
mod token;

pub use agent::{Agent, AgentState, AllowList, Binding, MAX_LABELS, parse_labels};
pub use audit::{AuditEntry, AuditOutcome, ChainProblem, GENESIS_HASH, verify_chain};
pub use certificate::{
    CertificateHolder, CertificateRecord, PrincipalKind, holder_key, is_canonical_serial,
    operator_holder_key,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use decision::{
    AllowListsOnly, Decision, Denial, DenialKind, Policies, PolicyAction, PolicyContext,
    PolicyQuery, PolicyResource, User, Verdict,
};
pub use error::ParseError;
pub use ids::{AgentId, AgentName, ApprovalId, SpiffeId, TaskId, TokenId, TrustDomain};
pub use json::canonical_json;
pub use operator::{Operator, Permission, Permissions, RoleName, Roles};
pub use policy::{
    DecisionContext, IssueGrant, IssueRequest, Limits, StartGrant, StartRequest, decide_issue,
    decide_start_task,
};
pub use policy_set::{PolicyFile, PolicyOrigin, PolicySetRecord};
pub use revocation::{RevocationEvent, RevocationKind};
pub use revocation_set::{RevocationSet, known_reason};
pub use scope::{Audience, Purpose, Scope, ScopeSet, limits as input_limits};
pub use task::{Approval, Task, TaskState};
pub use token::{
    AccessClaims, Actor, Confirmation, STATUS_LIST_SIZE, StatusListRef, TokenRecord, TokenStatus,
    certificate_thumbprint, is_thumbprint, sha256_b64url,
};
