//! Request-time decisions of StartTask and IssueToken: a pure function of (agent, request,
//! context). The allow-lists are the first gate; the policy engine of the context decides on
//! top; the answer has the one [`Decision`] shape.

use std::fmt;

use crate::agent::{Agent, AgentState};
use crate::decision::{
    Decision, Denial, DenialKind, Policies, PolicyAction, PolicyContext, PolicyQuery,
    PolicyResource, User, Verdict,
};
use crate::scope::{Audience, Purpose, ScopeSet};
use crate::task::{Task, TaskState};

/// What a decision is taken against besides the request: the time, the broker's bounds and
/// the policy engine.
#[derive(Debug, Clone, Copy)]
pub struct DecisionContext<'a> {
    /// Unix seconds.
    pub now: i64,
    /// The broker-wide bounds on lifetimes.
    pub limits: &'a Limits,
    /// The policy engine ([`crate::AllowListsOnly`] when none is configured).
    pub policies: &'a dyn Policies,
}

/// The broker-wide bounds on lifetimes, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Token TTL when the request names none.
    pub default_ttl_seconds: u32,
    /// Largest token TTL.
    pub max_ttl_seconds: u32,
    /// Task duration when the request names none.
    pub default_task_seconds: u32,
    /// Largest task duration.
    pub max_task_seconds: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_ttl_seconds: 300,
            max_ttl_seconds: 900,
            default_task_seconds: 3600,
            max_task_seconds: 86400,
        }
    }
}

/// A parsed StartTask request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    /// What the task is for.
    pub purpose: Purpose,
    /// Downstream APIs it will call.
    pub audiences: Vec<Audience>,
    /// The scopes it needs.
    pub scopes: ScopeSet,
    /// Requested duration; 0 means the default.
    pub max_duration_seconds: u32,
    /// True when the request carries a user's token to act for.
    pub on_behalf_of_requested: bool,
    /// The user it acts for, once their token is verified.
    pub user: Option<User>,
}

/// What StartTask grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartGrant {
    /// Granted audiences.
    pub audiences: Vec<Audience>,
    /// Granted scopes.
    pub scopes: ScopeSet,
    /// The task's deadline, Unix seconds.
    pub expires_at: i64,
}

/// A parsed IssueToken request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRequest {
    /// The one audience of the token.
    pub audience: Audience,
    /// Requested scopes; empty means all the task's scopes.
    pub scopes: ScopeSet,
    /// Requested TTL; 0 means the default.
    pub ttl_seconds: u32,
}

/// What IssueToken grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueGrant {
    /// The token's audience.
    pub audience: Audience,
    /// The token's scopes.
    pub scopes: ScopeSet,
    /// `iat` and `nbf`.
    pub issued_at: i64,
    /// `exp`.
    pub expires_at: i64,
}

fn require_active(agent: &Agent) -> Result<(), Denial> {
    match agent.state {
        AgentState::Active => Ok(()),
        state => Err(Denial::new(
            DenialKind::FailedPrecondition,
            "agent_not_active",
            format!(
                "agent {} is {}: an operator must resume it first",
                agent.name,
                state.as_str()
            ),
        )),
    }
}

fn list(scopes: impl Iterator<Item = impl fmt::Display>) -> String {
    scopes.map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
}

/// The resources a request for `audiences` and `scopes` acts on: each audience, each scope.
fn resources<'a>(audiences: &'a [Audience], scopes: &'a ScopeSet) -> Vec<PolicyResource<'a>> {
    audiences
        .iter()
        .map(PolicyResource::Audience)
        .chain(scopes.iter().map(PolicyResource::Scope))
        .collect()
}

/// The policy engine's verdict, in the decision's shape: `allow_lists` plus the permitting
/// policies as reasons, or the denial naming the policies.
fn ask<G>(policies: &dyn Policies, q: &PolicyQuery<'_>, grant: G) -> Decision<G> {
    let reasons = |ids: Vec<String>| {
        std::iter::once("allow_lists".to_owned())
            .chain(ids.into_iter().map(|id| format!("policy:{id}")))
            .collect()
    };
    match policies.evaluate(q) {
        Verdict::Allow { policies } => Decision::Allow {
            grant,
            reasons: reasons(policies),
        },
        Verdict::NeedsApproval { policies } => Decision::NeedsApproval {
            grant,
            why: format!(
                "policy {} requires a human's approval for {} by agent {}",
                policies.join(", "),
                q.action.as_str(),
                q.agent.name
            ),
            policies,
        },
        Verdict::Deny {
            rule,
            policies,
            message,
        } => Decision::Deny(Denial {
            kind: DenialKind::PermissionDenied,
            rule,
            policies,
            message,
        }),
    }
}

/// Decides a StartTask request of an attested agent.
pub fn decide_start_task(
    agent: &Agent,
    req: &StartRequest,
    ctx: &DecisionContext<'_>,
) -> Decision<StartGrant> {
    match start_allow_lists(agent, req, ctx) {
        Ok(grant) => {
            let resources = resources(&req.audiences, &req.scopes);
            let q = PolicyQuery {
                agent,
                action: PolicyAction::StartTask,
                resources: &resources,
                context: PolicyContext {
                    purpose: req.purpose.as_str(),
                    scopes: &req.scopes,
                    audiences: &req.audiences,
                    ttl_seconds: 0,
                    user: req.user.as_ref(),
                    now: ctx.now,
                    approved: false,
                    arguments: None,
                },
            };
            let decision = ask(ctx.policies, &q, grant);
            let needs = req.scopes.intersection(&agent.allow.approval_scopes);
            match decision {
                Decision::Allow { grant, .. } if !needs.is_empty() => Decision::NeedsApproval {
                    grant,
                    why: format!(
                        "scope {} is one of agent {}'s approval scopes",
                        list(needs.iter()),
                        agent.name
                    ),
                    policies: Vec::new(),
                },
                d => d,
            }
        }
        Err(d) => Decision::Deny(d),
    }
}

/// The allow-lists' part of StartTask: the first gate.
fn start_allow_lists(
    agent: &Agent,
    req: &StartRequest,
    ctx: &DecisionContext<'_>,
) -> Result<StartGrant, Denial> {
    require_active(agent)?;
    if req.on_behalf_of_requested && req.user.is_none() {
        return Err(Denial::new(
            DenialKind::Unsupported,
            "delegation_not_enabled",
            "on-behalf-of delegation (subject_token) is not enabled on this broker; start the task without it",
        ));
    }
    if req.audiences.is_empty() {
        return Err(Denial::new(
            DenialKind::InvalidArgument,
            "audience_required",
            "a task needs at least one audience",
        ));
    }
    let denied: Vec<&Audience> = req
        .audiences
        .iter()
        .filter(|a| !agent.may_use_audience(a))
        .collect();
    if !denied.is_empty() {
        return Err(Denial::new(
            DenialKind::PermissionDenied,
            "audience_not_allowed",
            format!(
                "audience {} is not on agent {}'s allow-list",
                list(denied.iter()),
                agent.name
            ),
        ));
    }
    if !req.scopes.is_subset(&agent.allow.scopes) {
        return Err(Denial::new(
            DenialKind::PermissionDenied,
            "scope_not_allowed",
            format!(
                "scope {} is not on agent {}'s allow-list",
                list(req.scopes.not_in(&agent.allow.scopes)),
                agent.name
            ),
        ));
    }
    // On behalf of a user: the user's rights bound the task, and never cross tenants.
    let scopes = match &req.user {
        None => req.scopes.clone(),
        Some(user) => delegated_scopes(agent, user, &req.scopes)?,
    };
    let duration = match req.max_duration_seconds {
        0 => ctx.limits.default_task_seconds,
        d => d,
    }
    .min(ctx.limits.max_task_seconds)
    .max(1);
    Ok(StartGrant {
        audiences: req.audiences.clone(),
        scopes,
        expires_at: ctx.now.saturating_add(i64::from(duration)),
    })
}

/// RFC 8693 delegation: granted = requested ∩ the agent's allow-list (checked before) ∩ the
/// user's scopes; the user's `may_act`, when present, must name the agent; an agent of a
/// tenant acts only for users of that tenant.
fn delegated_scopes(agent: &Agent, user: &User, requested: &ScopeSet) -> Result<ScopeSet, Denial> {
    if let Some(may_act) = &user.may_act
        && may_act != agent.id.as_str()
    {
        return Err(Denial::new(
            DenialKind::PermissionDenied,
            "may_act_mismatch",
            format!(
                "the user's token lets {may_act} act for them (may_act), not agent {}",
                agent.name
            ),
        ));
    }
    if !agent.tenant.is_empty() && user.tenant != agent.tenant {
        return Err(Denial::new(
            DenialKind::PermissionDenied,
            "tenant_mismatch",
            format!(
                "agent {} serves tenant {:?}; the user belongs to tenant {:?}",
                agent.name, agent.tenant, user.tenant
            ),
        ));
    }
    let granted = requested.intersection(&user.scopes);
    if !requested.is_empty() && granted.is_empty() {
        return Err(Denial::new(
            DenialKind::PermissionDenied,
            "user_lacks_scopes",
            format!(
                "the user holds none of the scopes asked for ({})",
                list(requested.iter())
            ),
        ));
    }
    Ok(granted)
}

/// Decides an IssueToken request for `task` of the attested `agent`. The caller has already
/// checked that the task belongs to the agent (another agent's task is NOT_FOUND).
pub fn decide_issue(
    agent: &Agent,
    task: &Task,
    req: &IssueRequest,
    ctx: &DecisionContext<'_>,
) -> Decision<IssueGrant> {
    let grant = match issue_allow_lists(agent, task, req, ctx) {
        Ok(g) => g,
        Err(d) => return Decision::Deny(d),
    };
    let resources = resources(std::slice::from_ref(&grant.audience), &grant.scopes);
    let ttl = u32::try_from(grant.expires_at - grant.issued_at).unwrap_or(u32::MAX);
    let q = PolicyQuery {
        agent,
        action: PolicyAction::IssueToken,
        resources: &resources,
        context: PolicyContext {
            purpose: task.purpose.as_str(),
            scopes: &grant.scopes,
            audiences: std::slice::from_ref(&grant.audience),
            ttl_seconds: ttl,
            user: task.user.as_ref(),
            now: ctx.now,
            approved: task.approved_by.is_some(),
            arguments: None,
        },
    };
    // What the approver saw when the task started: the policies that asked for approval.
    let approved_for = |policies: &[String]| {
        task.approved_by.is_some()
            && task
                .approval
                .as_ref()
                .is_some_and(|a| policies.iter().all(|p| a.policies.contains(p)))
    };
    match ask(ctx.policies, &q, grant.clone()) {
        // The task was approved, and for these policies: what it was approved for is granted.
        // A policy that asks for approval of tokens the approver was never shown still asks.
        Decision::NeedsApproval { policies, .. } if approved_for(&policies) => Decision::Allow {
            grant,
            reasons: std::iter::once("approved".to_owned())
                .chain(policies.into_iter().map(|id| format!("policy:{id}")))
                .collect(),
        },
        Decision::NeedsApproval { policies, .. } => Decision::Deny(Denial {
            kind: DenialKind::PermissionDenied,
            rule: "approval_required",
            message: format!(
                "this token needs a human's approval and task {} was not approved: start a task that asks for these scopes, so that it is sent for approval",
                task.id
            ),
            policies,
        }),
        d => d,
    }
}

/// The allow-lists' and the task's part of IssueToken: the first gate.
fn issue_allow_lists(
    agent: &Agent,
    task: &Task,
    req: &IssueRequest,
    ctx: &DecisionContext<'_>,
) -> Result<IssueGrant, Denial> {
    let (now, limits) = (ctx.now, ctx.limits);
    require_active(agent)?;
    let state = task.effective_state(now);
    if state == TaskState::PendingApproval {
        return Err(Denial::new(
            DenialKind::FailedPrecondition,
            "task_pending_approval",
            format!(
                "task {} waits for a human's approval: wait for it with GetTask or WatchTask, then ask again",
                task.id
            ),
        ));
    }
    if state != TaskState::Open {
        return Err(Denial::new(
            DenialKind::FailedPrecondition,
            "task_not_open",
            format!(
                "task {} is {}: start a new task to get tokens",
                task.id,
                state.as_str()
            ),
        ));
    }
    if task.implicit {
        return Err(Denial::new(
            DenialKind::FailedPrecondition,
            "task_is_implicit",
            format!(
                "task {} was opened by the token endpoint for one token: start a task to get more",
                task.id
            ),
        ));
    }
    if !task.audiences.contains(&req.audience) {
        return Err(Denial::new(
            DenialKind::PermissionDenied,
            "audience_not_in_task",
            format!(
                "audience {} was not requested when task {} started",
                req.audience, task.id
            ),
        ));
    }
    if !agent.may_use_audience(&req.audience) {
        return Err(Denial::new(
            DenialKind::PermissionDenied,
            "audience_not_allowed",
            format!(
                "audience {} is no longer on agent {}'s allow-list",
                req.audience, agent.name
            ),
        ));
    }
    let scopes = if req.scopes.is_empty() {
        task.scopes.clone()
    } else {
        req.scopes.clone()
    };
    if !scopes.is_subset(&task.scopes) {
        return Err(Denial::new(
            DenialKind::PermissionDenied,
            "scope_not_in_task",
            format!(
                "scope {} was not granted to task {}",
                list(scopes.not_in(&task.scopes)),
                task.id
            ),
        ));
    }
    if !scopes.is_subset(&agent.allow.scopes) {
        return Err(Denial::new(
            DenialKind::PermissionDenied,
            "scope_not_allowed",
            format!(
                "scope {} is no longer on agent {}'s allow-list",
                list(scopes.not_in(&agent.allow.scopes)),
                agent.name
            ),
        ));
    }
    let ttl = effective_ttl(req.ttl_seconds, agent.allow.max_ttl_seconds, limits);
    let expires_at = now.saturating_add(i64::from(ttl)).min(task.expires_at);
    Ok(IssueGrant {
        audience: req.audience.clone(),
        scopes,
        issued_at: now,
        expires_at,
    })
}

/// min(requested or default, the agent's max, the global max), at least 1 second.
fn effective_ttl(requested: u32, agent_max: Option<u32>, limits: &Limits) -> u32 {
    let asked = if requested == 0 {
        limits.default_ttl_seconds
    } else {
        requested
    };
    asked
        .min(agent_max.unwrap_or(u32::MAX))
        .min(limits.max_ttl_seconds)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{AllowList, Binding};
    use crate::ids::{AgentName, TaskId, TrustDomain};
    use proptest::prelude::*;

    fn agent() -> Agent {
        let name = AgentName::parse("bot").unwrap();
        Agent {
            id: TrustDomain::parse("example.org").unwrap().agent_id(&name),
            name,
            owner: "team".into(),
            purpose: "p".into(),
            tenant: String::new(),
            environment: String::new(),
            labels: Vec::new(),
            state: AgentState::Active,
            bindings: vec![Binding::Oidc {
                issuer: "i".into(),
                subject: "s".into(),
            }],
            allow: AllowList {
                audiences: Audience::parse_list(&["api", "db"]).unwrap(),
                scopes: ScopeSet::parse(&["read", "write", "admin"]).unwrap(),
                max_ttl_seconds: Some(600),
                approval_scopes: ScopeSet::parse(&["admin"]).unwrap(),
            },
            review_every_days: 0,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn start(aud: &[&str], scopes: &[&str], dur: u32) -> StartRequest {
        StartRequest {
            purpose: Purpose::parse("x").unwrap(),
            audiences: Audience::parse_list(aud).unwrap(),
            scopes: ScopeSet::parse(scopes).unwrap(),
            max_duration_seconds: dur,
            on_behalf_of_requested: false,
            user: None,
        }
    }

    fn task(a: &Agent, g: &StartGrant) -> Task {
        Task {
            id: TaskId::from_ulid(ulid::Ulid::from_parts(1, 1)),
            agent: a.id.clone(),
            state: TaskState::Open,
            purpose: Purpose::parse("x").unwrap(),
            audiences: g.audiences.clone(),
            scopes: g.scopes.clone(),
            created_at: 1000,
            expires_at: g.expires_at,
            ended_at: None,
            on_behalf_of: None,
            approval_id: None,
            approved_by: None,
            user: None,
            approval: None,
            implicit: false,
        }
    }

    fn issue(aud: &str, scopes: &[&str], ttl: u32) -> IssueRequest {
        IssueRequest {
            audience: Audience::parse(aud).unwrap(),
            scopes: ScopeSet::parse(scopes).unwrap(),
            ttl_seconds: ttl,
        }
    }

    fn ctx(now: i64, l: &Limits) -> DecisionContext<'_> {
        DecisionContext {
            now,
            limits: l,
            policies: &crate::AllowListsOnly,
        }
    }

    fn ok<G: fmt::Debug>(d: Decision<G>) -> G {
        match d {
            Decision::Allow { grant, .. } => grant,
            other => panic!("not allowed: {other:?}"),
        }
    }

    fn no<G: fmt::Debug>(d: Decision<G>) -> Denial {
        match d {
            Decision::Deny(d) => d,
            other => panic!("not denied: {other:?}"),
        }
    }

    #[test]
    fn start_allow_lists() {
        let a = agent();
        let l = Limits::default();
        let g = ok(decide_start_task(
            &a,
            &start(&["api"], &["read"], 0),
            &ctx(1000, &l),
        ));
        assert_eq!(g.expires_at, 1000 + 3600);
        let d = no(decide_start_task(
            &a,
            &start(&["evil"], &["read"], 0),
            &ctx(1000, &l),
        ));
        assert_eq!(
            (d.kind, d.rule),
            (DenialKind::PermissionDenied, "audience_not_allowed")
        );
        let d = no(decide_start_task(
            &a,
            &start(&["api"], &["root"], 0),
            &ctx(1000, &l),
        ));
        assert_eq!(d.rule, "scope_not_allowed");
        assert!(d.message.contains("root"));
        match decide_start_task(&a, &start(&["api"], &["admin"], 0), &ctx(1000, &l)) {
            Decision::NeedsApproval { why, policies, .. } => {
                assert!(why.contains("admin"), "{why}");
                assert!(policies.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let d = no(decide_start_task(
            &a,
            &start(&[], &["read"], 0),
            &ctx(1000, &l),
        ));
        assert_eq!(d.kind, DenialKind::InvalidArgument);
        let g = ok(decide_start_task(
            &a,
            &start(&["api"], &["read"], 999_999),
            &ctx(0, &l),
        ));
        assert_eq!(g.expires_at, 86400);
        let mut s = a.clone();
        s.state = AgentState::Suspended;
        let d = no(decide_start_task(
            &s,
            &start(&["api"], &["read"], 0),
            &ctx(0, &l),
        ));
        assert_eq!(d.kind, DenialKind::FailedPrecondition);
    }

    #[test]
    fn issue_rules() {
        let a = agent();
        let l = Limits::default();
        let g = ok(decide_start_task(
            &a,
            &start(&["api"], &["read", "write"], 120),
            &ctx(1000, &l),
        ));
        let t = task(&a, &g);
        let ig = ok(decide_issue(&a, &t, &issue("api", &[], 0), &ctx(1000, &l)));
        assert_eq!(ig.scopes, t.scopes);
        assert_eq!(ig.expires_at, 1120, "clamped to the task deadline");
        let ig = ok(decide_issue(
            &a,
            &t,
            &issue("api", &["read"], 30),
            &ctx(1000, &l),
        ));
        assert_eq!(ig.expires_at, 1030);
        assert_eq!(ig.scopes.to_claim(), "read");
        let d = no(decide_issue(&a, &t, &issue("db", &[], 0), &ctx(1000, &l)));
        assert_eq!(d.rule, "audience_not_in_task");
        let d = no(decide_issue(
            &a,
            &t,
            &issue("api", &["admin"], 0),
            &ctx(1000, &l),
        ));
        assert_eq!(d.rule, "scope_not_in_task");
        let d = no(decide_issue(&a, &t, &issue("api", &[], 0), &ctx(1120, &l)));
        assert_eq!(
            (d.kind, d.rule),
            (DenialKind::FailedPrecondition, "task_not_open")
        );
        let mut done = t.clone();
        done.state = TaskState::Completed;
        assert!(
            decide_issue(&a, &done, &issue("api", &[], 0), &ctx(1000, &l))
                .denial()
                .is_some()
        );
        let mut shrunk = a.clone();
        shrunk.allow.scopes = ScopeSet::parse(&["read"]).unwrap();
        let d = no(decide_issue(
            &shrunk,
            &t,
            &issue("api", &["write"], 0),
            &ctx(1000, &l),
        ));
        assert_eq!(d.rule, "scope_not_allowed");
    }

    proptest! {
        #[test]
        fn ttl_never_exceeds_any_bound(req in 0u32..5000, agent_max in proptest::option::of(1u32..5000),
                                       max in 1u32..5000, default in 1u32..5000,
                                       now in 0i64..10_000, left in 1i64..10_000) {
            let l = Limits { default_ttl_seconds: default, max_ttl_seconds: max, ..Limits::default() };
            let mut a = agent();
            a.allow.max_ttl_seconds = agent_max;
            let g = StartGrant { audiences: Audience::parse_list(&["api"]).unwrap(),
                                 scopes: ScopeSet::default(), expires_at: now + left };
            let t = task(&a, &g);
            let ig = ok(decide_issue(&a, &t, &issue("api", &[], req), &ctx(now, &l)));
            let ttl = ig.expires_at - ig.issued_at;
            prop_assert!(ttl >= 1);
            prop_assert!(ttl <= i64::from(max));
            prop_assert!(ig.expires_at <= t.expires_at);
            if let Some(m) = agent_max { prop_assert!(ttl <= i64::from(m)); }
            if req != 0 { prop_assert!(ttl <= i64::from(req)); } else { prop_assert!(ttl <= i64::from(default)); }
        }
    }
}
