//! The Cedar engine through the core's decisions: the example policies of `deploy/policies/`
//! allow and deny what they say, denials name their policy, bad sets are refused whole.
#![allow(clippy::unwrap_used)]

use taskpass_core::{
    Agent, AgentName, AgentState, AllowList, Audience, Binding, Decision, DecisionContext, Denial,
    Limits, Policies, Purpose, ScopeSet, StartGrant, StartRequest, TrustDomain, decide_start_task,
};
use taskpass_policy::{PolicyEngine, PolicySource};

const BASE: &str = include_str!("../../../deploy/policies/base.cedar");
const HOURS: &str = include_str!("../../../deploy/policies/business-hours.cedar");
const TENANT: &str = include_str!("../../../deploy/policies/tenant-audiences.cedar");
const NO_DELETE: &str = include_str!("../../../deploy/policies/production-no-delete.cedar");

/// Wednesday 2026-12-02 10:00 UTC, and 22:00 the same day, and Saturday 10:00.
const WED_10: i64 = 1_796_205_600;
const WED_22: i64 = WED_10 + 12 * 3600;
const SAT_10: i64 = WED_10 + 3 * 86_400;

fn agent(name: &str, tenant: &str, environment: &str) -> Agent {
    let name = AgentName::parse(name).unwrap();
    Agent {
        id: TrustDomain::parse("example.org").unwrap().agent_id(&name),
        name,
        owner: "team".into(),
        purpose: "p".into(),
        tenant: tenant.into(),
        environment: environment.into(),
        labels: Vec::new(),
        state: AgentState::Active,
        bindings: vec![Binding::Oidc {
            issuer: "i".into(),
            subject: "s".into(),
        }],
        allow: AllowList {
            audiences: Audience::parse_list(&[
                "https://api.acme.example",
                "https://api.globex.example",
            ])
            .unwrap(),
            scopes: ScopeSet::parse(&["payments:write", "repo:read", "repo:delete"]).unwrap(),
            max_ttl_seconds: None,
            approval_scopes: ScopeSet::default(),
        },
        review_every_days: 0,
        created_at: 0,
        updated_at: 0,
    }
}

fn engine(files: &[(&str, &str)]) -> PolicyEngine {
    let sources: Vec<PolicySource> = files
        .iter()
        .map(|(n, t)| PolicySource::new(*n, *t))
        .collect();
    PolicyEngine::compile(&sources).unwrap()
}

fn start(
    e: &dyn Policies,
    a: &Agent,
    aud: &[&str],
    scopes: &[&str],
    now: i64,
) -> Decision<StartGrant> {
    let req = StartRequest {
        purpose: Purpose::parse("test").unwrap(),
        audiences: Audience::parse_list(aud).unwrap(),
        scopes: ScopeSet::parse(scopes).unwrap(),
        max_duration_seconds: 0,
        on_behalf_of_requested: false,
        user: None,
    };
    let limits = Limits::default();
    decide_start_task(
        a,
        &req,
        &DecisionContext {
            now,
            limits: &limits,
            policies: e,
        },
    )
}

fn allowed(d: &Decision<StartGrant>) -> &[String] {
    match d {
        Decision::Allow { reasons, .. } => reasons,
        other => panic!("not allowed: {other:?}"),
    }
}

fn denied(d: Decision<StartGrant>) -> Denial {
    match d {
        Decision::Deny(d) => d,
        other => panic!("not denied: {other:?}"),
    }
}

const ACME: &str = "https://api.acme.example";
const GLOBEX: &str = "https://api.globex.example";

#[test]
fn the_base_policy_permits_within_the_allow_lists() {
    let e = engine(&[("base.cedar", BASE)]);
    let a = agent("bot", "", "");
    let d = start(&e, &a, &[ACME], &["repo:read"], WED_10);
    assert_eq!(allowed(&d), ["allow_lists", "policy:within-allow-lists"]);
    // The allow-lists stay the first gate: Cedar never widens them.
    let d = denied(start(&e, &a, &["https://evil.example"], &[], WED_10));
    assert_eq!(d.rule, "audience_not_allowed");
}

#[test]
fn without_a_permit_everything_is_denied() {
    let e = engine(&[("no-delete.cedar", NO_DELETE)]);
    let d = denied(start(
        &e,
        &agent("bot", "", ""),
        &[ACME],
        &["repo:read"],
        WED_10,
    ));
    assert_eq!(d.rule, "no_policy_permits");
    assert!(d.policies.is_empty());
    assert!(
        d.message.contains("no policy permits StartTask"),
        "{}",
        d.message
    );
}

#[test]
fn payments_only_in_business_hours() {
    let e = engine(&[("base.cedar", BASE), ("business-hours.cedar", HOURS)]);
    let a = agent("bot", "", "");
    allowed(&start(&e, &a, &[ACME], &["payments:write"], WED_10));
    for when in [WED_22, SAT_10] {
        let d = denied(start(&e, &a, &[ACME], &["payments:write"], when));
        assert_eq!(d.rule, "policy_forbids");
        assert_eq!(d.policies, ["payments-in-business-hours"]);
        assert!(
            d.to_string().contains("policy payments-in-business-hours"),
            "{d}"
        );
        assert!(d.message.contains("scope payments:write"), "{}", d.message);
    }
    // Other scopes at any hour.
    allowed(&start(&e, &a, &[ACME], &["repo:read"], SAT_10));
}

#[test]
fn a_tenant_only_on_its_own_audiences() {
    let e = engine(&[("base.cedar", BASE), ("tenant-audiences.cedar", TENANT)]);
    let acme = agent("acme-bot", "acme", "");
    allowed(&start(&e, &acme, &[ACME], &["repo:read"], WED_10));
    let d = denied(start(&e, &acme, &[ACME, GLOBEX], &["repo:read"], WED_10));
    assert_eq!(d.policies, ["acme-only-acme-audiences"]);
    assert!(d.message.contains(GLOBEX), "{}", d.message);
    // Another tenant's agent is not bound by it.
    allowed(&start(
        &e,
        &agent("globex-bot", "globex", ""),
        &[GLOBEX],
        &[],
        WED_10,
    ));
}

#[test]
fn production_agents_never_get_delete() {
    let e = engine(&[
        ("base.cedar", BASE),
        ("production-no-delete.cedar", NO_DELETE),
    ]);
    let prod = agent("prod-bot", "", "production");
    allowed(&start(&e, &prod, &[ACME], &["repo:read"], WED_10));
    let d = denied(start(
        &e,
        &prod,
        &[ACME],
        &["repo:read", "repo:delete"],
        WED_10,
    ));
    assert_eq!(d.policies, ["production-never-delete"]);
    allowed(&start(
        &e,
        &agent("dev-bot", "", "staging"),
        &[ACME],
        &["repo:delete"],
        WED_10,
    ));
}

#[test]
fn all_examples_together() {
    let e = engine(&[
        ("base.cedar", BASE),
        ("business-hours.cedar", HOURS),
        ("tenant-audiences.cedar", TENANT),
        ("production-no-delete.cedar", NO_DELETE),
    ]);
    assert_eq!(e.ids().len(), 4);
    let prod = agent("acme-prod", "acme", "production");
    allowed(&start(&e, &prod, &[ACME], &["payments:write"], WED_10));
    let d = denied(start(&e, &prod, &[ACME], &["repo:delete"], WED_10));
    assert_eq!(d.rule, "policy_forbids");
}

#[test]
fn approval_annotation_asks_for_a_human() {
    let e = engine(&[
        ("base.cedar", BASE),
        (
            "approval.cedar",
            r#"@id("payments-need-approval") @approval("required")
               permit (principal, action == Taskpass::Action::"StartTask", resource == Taskpass::Scope::"payments:write");"#,
        ),
    ]);
    let a = agent("bot", "", "");
    match start(&e, &a, &[ACME], &["payments:write"], WED_10) {
        Decision::NeedsApproval { policies, why, .. } => {
            assert_eq!(policies, ["payments-need-approval"]);
            assert!(why.contains("payments-need-approval"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    allowed(&start(&e, &a, &[ACME], &["repo:read"], WED_10));
}

#[test]
fn ids_are_given_and_must_be_unique() {
    let e = engine(&[(
        "deploy/policies/team.cedar",
        "permit (principal, action, resource);\nforbid (principal, action, resource) when { principal.owner == \"x\" };",
    )]);
    assert_eq!(e.ids(), ["team:1", "team:2"]);
    let dup = PolicyEngine::compile(&[
        PolicySource::new("a.cedar", BASE),
        PolicySource::new("b.cedar", BASE),
    ])
    .unwrap_err();
    assert!(dup.to_string().contains("within-allow-lists"), "{dup}");
}

#[test]
fn bad_sets_are_refused_whole_with_every_problem() {
    let cases = [
        (
            "syntax.cedar",
            "permit (principal, action resource);",
            "syntax.cedar",
        ),
        (
            "types.cedar",
            "permit (principal, action, resource) when { principal.owner == 1 };",
            "types",
        ),
        (
            "attr.cedar",
            "permit (principal, action, resource) when { principal.nickname == \"x\" };",
            "nickname",
        ),
        (
            "entity.cedar",
            "permit (principal == Taskpass::Robot::\"x\", action, resource);",
            "Robot",
        ),
        (
            "template.cedar",
            "permit (principal == ?principal, action, resource);",
            "templates",
        ),
        (
            "approval.cedar",
            "@approval(\"maybe\") permit (principal, action, resource);",
            "maybe",
        ),
        (
            "id.cedar",
            "@id(\"has space\") permit (principal, action, resource);",
            "has space",
        ),
    ];
    for (name, text, needle) in cases {
        let e = PolicyEngine::compile(&[
            PolicySource::new("base.cedar", BASE),
            PolicySource::new(name, text),
        ])
        .unwrap_err();
        assert!(e.to_string().contains(needle), "{name}: {e}");
    }
}

#[test]
fn the_schema_is_the_contract() {
    let s = taskpass_policy::schema_text();
    for name in [
        "namespace Taskpass",
        "entity Agent",
        "entity User",
        "entity Audience",
        "entity Scope",
        "entity Tool",
        "action StartTask",
        "CallTool",
        "\"purpose\": String",
        "\"scopes\": Set<String>",
        "\"audiences\": Set<String>",
    ] {
        assert!(s.contains(name), "{name}");
    }
}

/// The engine evaluates each request against the slices of the set its scope can match;
/// over many agents, tenants, resources and policy shapes its answers are Cedar's over the
/// whole set.
#[test]
fn the_slices_answer_as_the_whole_set() {
    use taskpass_core::{PolicyAction, PolicyContext, PolicyQuery, PolicyResource, Verdict};
    let mut text = String::from(
        "@id(\"base\") permit (principal, action, resource);\n\
         @id(\"blind\") forbid (principal, action == Taskpass::Action::\"IssueToken\", resource) when { principal.environment == \"x\" && context.ttl_seconds > 100 };\n\
         @id(\"reads\") forbid (principal, action, resource) when { resource == Taskpass::Scope::\"read\" && principal.name == \"a-3\" };\n",
    );
    for i in 0..6 {
        text.push_str(&format!(
            "@id(\"p{i}\") forbid (principal == Taskpass::Agent::\"spiffe://example.org/agent/a-{i}\", action, resource is Taskpass::Scope) when {{ resource.name like \"*:delete\" }};\n\
             @id(\"t{i}\") forbid (principal in Taskpass::Tenant::\"t-{i}\", action in [Taskpass::Action::\"StartTask\", Taskpass::Action::\"IssueToken\"], resource is Taskpass::Audience) unless {{ resource.url like \"https://*.t-{i}.example\" }};\n\
             @id(\"s{i}\") forbid (principal, action == Taskpass::Action::\"IssueToken\", resource == Taskpass::Scope::\"s-{i}:write\");\n\
             @id(\"k{i}\") forbid (principal, action == Taskpass::Action::\"CallTool\", resource in Taskpass::Audience::\"https://api.t-{i}.example\") when {{ context.arguments like \"*force*\" }};\n\
             @id(\"x{i}\") forbid (principal is Taskpass::Agent in Taskpass::Tenant::\"t-{i}\", action == Taskpass::Action::\"CallTool\", resource == Taskpass::Tool::\"drop-{i}\");\n"
        ));
    }
    let e = engine(&[("slices.cedar", &text)]);
    let args = serde_json::json!({"force": true});
    let none = serde_json::json!({});
    let mut checked = 0;
    for ai in 0..12 {
        let mut a = agent(
            &format!("a-{ai}"),
            &format!("t-{}", ai % 7),
            if ai % 2 == 0 { "x" } else { "" },
        );
        if ai == 11 {
            a.tenant = String::new();
        }
        for aud in 0..7 {
            let audience = Audience::parse(&format!("https://api.t-{aud}.example")).unwrap();
            let scopes =
                ScopeSet::parse(&["repo:delete", &format!("s-{aud}:write"), "read"]).unwrap();
            for action in [
                PolicyAction::StartTask,
                PolicyAction::IssueToken,
                PolicyAction::CallTool,
            ] {
                let tools = [format!("drop-{aud}"), "status".to_owned()];
                let mut resources: Vec<PolicyResource<'_>> = Vec::new();
                if action == PolicyAction::CallTool {
                    for t in &tools {
                        resources.push(PolicyResource::Tool {
                            name: t,
                            audience: &audience,
                        });
                    }
                } else {
                    resources.push(PolicyResource::Audience(&audience));
                    resources.extend(scopes.iter().map(PolicyResource::Scope));
                }
                for arguments in [&args, &none] {
                    for r in &resources {
                        let one = [*r];
                        let q = PolicyQuery {
                            agent: &a,
                            action,
                            resources: &one,
                            context: PolicyContext {
                                purpose: "p",
                                scopes: &scopes,
                                audiences: std::slice::from_ref(&audience),
                                ttl_seconds: 300,
                                user: None,
                                now: WED_10,
                                approved: false,
                                arguments: Some(arguments),
                            },
                        };
                        let whole = &e.decide_unsliced(&q).unwrap()[0];
                        let sliced = e.evaluate(&q);
                        match (&sliced, whole) {
                            (Verdict::Allow { policies }, (true, ids)) => assert_eq!(policies, ids),
                            (Verdict::Deny { policies, .. }, (false, ids)) => {
                                assert_eq!(policies, ids)
                            }
                            other => panic!("{q:?}: {other:?}"),
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 1000, "{checked}");
}

#[test]
fn policies_match_agent_labels() {
    let e = engine(&[
        ("base.cedar", BASE),
        (
            "labels.cedar",
            r#"@id("experimental-read-only") forbid (principal, action, resource is Taskpass::Scope)
               when { principal.labels.contains("tier=experimental") && !(resource.name like "*:read") };"#,
        ),
    ]);
    let mut a = agent("exp-bot", "", "");
    a.labels = taskpass_core::parse_labels(&["tier=experimental"]).unwrap();
    allowed(&start(&e, &a, &[ACME], &["repo:read"], WED_10));
    let d = denied(start(&e, &a, &[ACME], &["payments:write"], WED_10));
    assert_eq!(d.policies, ["experimental-read-only"]);
    a.labels = taskpass_core::parse_labels(&["tier=gold"]).unwrap();
    allowed(&start(&e, &a, &[ACME], &["payments:write"], WED_10));
}

/// An approval covers what the approver was shown: a token rule asking for approval that the
/// task's approval did not name still asks (and, since a token cannot wait, is refused).
#[test]
fn an_approval_covers_the_policies_it_was_asked_for() {
    use taskpass_core::{Approval, IssueRequest, Task, TaskId, TaskState, decide_issue};
    let e = engine(&[
        ("base.cedar", BASE),
        (
            "long.cedar",
            r#"@id("long-tokens") @approval("required")
               permit (principal, action == Taskpass::Action::"IssueToken", resource) when { context.ttl_seconds > 600 };"#,
        ),
    ]);
    let a = agent("bot", "", "");
    let limits = Limits::default();
    let ctx = DecisionContext {
        now: WED_10,
        limits: &limits,
        policies: &e,
    };
    let mut task = Task {
        id: TaskId::from_ulid(ulid::Ulid::from_parts(1, 1)),
        agent: a.id.clone(),
        state: TaskState::Open,
        purpose: Purpose::parse("p").unwrap(),
        audiences: Audience::parse_list(&[ACME]).unwrap(),
        scopes: ScopeSet::parse(&["repo:read"]).unwrap(),
        created_at: WED_10,
        expires_at: WED_10 + 3600,
        ended_at: None,
        on_behalf_of: None,
        approval_id: None,
        approved_by: Some("spiffe://example.org/operator/approver/bob".into()),
        user: None,
        approval: Some(Approval {
            id: "appr_01J0000000000000000000000A".into(),
            why: "approval scope".into(),
            policies: vec![],
            requested_at: WED_10,
            task_seconds: 3600,
            decided_by: None,
            decided_at: None,
            reason: String::new(),
        }),
        implicit: false,
    };
    let ask = |ttl| IssueRequest {
        audience: Audience::parse(ACME).unwrap(),
        scopes: ScopeSet::default(),
        ttl_seconds: ttl,
    };
    assert!(matches!(
        decide_issue(&a, &task, &ask(300), &ctx),
        Decision::Allow { .. }
    ));
    match decide_issue(&a, &task, &ask(900), &ctx) {
        Decision::Deny(d) => {
            assert_eq!(d.rule, "approval_required");
            assert_eq!(d.policies, ["long-tokens"]);
        }
        other => panic!("{other:?}"),
    }
    if let Some(ap) = task.approval.as_mut() {
        ap.policies = vec!["long-tokens".into()];
    }
    assert!(matches!(
        decide_issue(&a, &task, &ask(900), &ctx),
        Decision::Allow { .. }
    ));
}
