//! The one shape of every request-time decision: (principal, action, resource, context) →
//! allow with its reasons, deny with the rule and the policies that said no, or needs a
//! human's approval. The allow-lists are the first gate ([`crate::decide_start_task`],
//! [`crate::decide_issue`]); a [`Policies`] engine (Cedar, in `taskpass-policy`) decides on
//! top, as a pure function the core calls through this trait.

use std::fmt;

use crate::agent::Agent;
use crate::scope::{Audience, Scope, ScopeSet};

/// How a denial maps onto the API's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DenialKind {
    /// The request is malformed.
    InvalidArgument,
    /// Policy or allow-lists say no.
    PermissionDenied,
    /// The agent or task is not in a state that allows it.
    FailedPrecondition,
    /// The feature asked for is not available on this broker.
    Unsupported,
}

/// A decision that says no, with the rule that said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// How it maps onto the API's error codes.
    pub kind: DenialKind,
    /// A stable name for the rule, e.g. `audience_not_allowed`; written to the audit log.
    pub rule: &'static str,
    /// The ids of the policies that decided it (empty when an allow-list or a state did).
    pub policies: Vec<String>,
    /// What a person can do about it.
    pub message: String,
}

impl Denial {
    pub(crate) fn new(kind: DenialKind, rule: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            rule,
            policies: Vec::new(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (rule {}", self.message, self.rule)?;
        if !self.policies.is_empty() {
            write!(f, "; policy {}", self.policies.join(", "))?;
        }
        f.write_str(")")
    }
}

/// What a decision comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<G> {
    /// Go ahead with `grant`.
    Allow {
        /// What is granted.
        grant: G,
        /// Why: `allow_lists`, then `policy:<id>` for each policy that permitted it.
        reasons: Vec<String>,
    },
    /// It may go ahead with `grant` once a human approves.
    NeedsApproval {
        /// What will be granted on approval.
        grant: G,
        /// Why approval is needed, for the approver and the audit log.
        why: String,
        /// The policies that asked for it (empty when the agent's approval scopes did).
        policies: Vec<String>,
    },
    /// No.
    Deny(Denial),
}

impl<G> Decision<G> {
    /// The denial, if it is one.
    pub fn denial(&self) -> Option<&Denial> {
        match self {
            Self::Deny(d) => Some(d),
            _ => None,
        }
    }
}

/// The actions policies decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PolicyAction {
    /// An agent opens a task.
    StartTask,
    /// An agent asks for a token within its task.
    IssueToken,
    /// The holder of a token calls a tool of an MCP server or gateway.
    CallTool,
}

impl PolicyAction {
    /// The Cedar action's id.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StartTask => "StartTask",
            Self::IssueToken => "IssueToken",
            Self::CallTool => "CallTool",
        }
    }
}

/// What a request acts on. A request for several audiences and scopes is decided once per
/// audience and once per scope: each must be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyResource<'a> {
    /// A downstream API.
    Audience(&'a Audience),
    /// A scope.
    Scope(&'a Scope),
    /// A tool of the API `audience`.
    Tool {
        /// The tool's name.
        name: &'a str,
        /// The API that serves it (the token's audience).
        audience: &'a Audience,
    },
}

/// The user a task acts for, as their verified token says (on-behalf-of delegation).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    /// Its subject at its issuer (`sub`).
    pub subject: String,
    /// The issuer of its token.
    pub issuer: String,
    /// Its tenant (from the configured claim), or empty.
    pub tenant: String,
    /// Its groups, when its issuer provides them.
    pub groups: Vec<String>,
    /// The scopes it holds (from the scope claim, or its groups mapped to scopes).
    pub scopes: ScopeSet,
    /// The token's `may_act.sub`, when it names who may act for the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub may_act: Option<String>,
}

/// The context of a request, as policies see it.
#[derive(Debug, Clone, Copy)]
pub struct PolicyContext<'a> {
    /// The task's purpose.
    pub purpose: &'a str,
    /// The scopes asked for (StartTask) or to be in the token (IssueToken, CallTool).
    pub scopes: &'a ScopeSet,
    /// The audiences asked for (StartTask) or the token's one (IssueToken, CallTool).
    pub audiences: &'a [Audience],
    /// The token TTL asked for, seconds (0 when none applies).
    pub ttl_seconds: u32,
    /// The user the task acts for.
    pub user: Option<&'a User>,
    /// The time of the request, Unix seconds.
    pub now: i64,
    /// True when a human approved the task.
    pub approved: bool,
    /// The tool call's arguments (CallTool), a JSON object.
    pub arguments: Option<&'a serde_json::Value>,
}

/// One question to a policy engine.
#[derive(Debug, Clone, Copy)]
pub struct PolicyQuery<'a> {
    /// The agent asking (the principal).
    pub agent: &'a Agent,
    /// What it asks to do.
    pub action: PolicyAction,
    /// What it acts on; each must be allowed.
    pub resources: &'a [PolicyResource<'a>],
    /// The rest of what is known.
    pub context: PolicyContext<'a>,
}

/// A policy engine's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every resource is permitted.
    Allow {
        /// The ids of the policies that permitted it.
        policies: Vec<String>,
    },
    /// Permitted, by a policy that asks for a human's approval (`@approval("required")`).
    NeedsApproval {
        /// The ids of the policies that ask for approval.
        policies: Vec<String>,
    },
    /// Some resource is not permitted.
    Deny {
        /// `policy_forbids` (a forbid matched), `no_policy_permits` (deny by default) or
        /// `policy_error` (a policy could not be evaluated: fail closed).
        rule: &'static str,
        /// The ids of the policies that forbade it (or failed).
        policies: Vec<String>,
        /// What a person can do about it.
        message: String,
    },
}

/// A policy engine: a pure function of the query. Engines must fail closed: a policy that
/// cannot be evaluated denies.
pub trait Policies: fmt::Debug + Send + Sync {
    /// Decides `q`.
    fn evaluate(&self, q: &PolicyQuery<'_>) -> Verdict;
}

/// No policy engine: the allow-lists decide alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowListsOnly;

impl Policies for AllowListsOnly {
    fn evaluate(&self, _: &PolicyQuery<'_>) -> Verdict {
        Verdict::Allow {
            policies: Vec::new(),
        }
    }
}
