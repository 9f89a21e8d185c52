//! The gRPC request messages as the broker receives them: arbitrary bytes decoded as each
//! agent, validation and admin request (the same bytes as every type: field numbers and wire
//! types overlap, so one input often decodes as several), then the decoded fields run through
//! the taskpass-core parsers and policy decisions the broker applies. No panic, and what is
//! accepted holds: values within their limits, ids in canonical form, grants within the
//! allow-lists and lifetimes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use taskpass_core::{
    Agent, AgentName, AgentState, AllowList, AllowListsOnly, Audience, Binding, Decision,
    DecisionContext, IssueRequest, Limits, Purpose, ScopeSet, StartRequest, Task, TaskId,
    TaskState, TrustDomain, decide_issue, decide_start_task, input_limits,
};
use taskpass_proto::v1 as pb;

const NOW: i64 = 1_700_000_000;

/// Decoded messages encode and decode back to themselves.
fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(m: &M) {
    let again = M::decode(m.encode_to_vec().as_slice()).expect("re-encoded message decodes");
    assert_eq!(&again, m);
}

fn task_id(s: &str) -> Option<TaskId> {
    let id = TaskId::parse(s).ok()?;
    // Only the canonical spelling names a task (issue 7 item 5).
    assert_eq!(id.to_string(), s, "non-canonical task id accepted");
    Some(id)
}

fn purpose(s: &str) -> Option<Purpose> {
    let p = Purpose::parse(s).ok()?;
    let t = p.as_str();
    assert!(!t.is_empty() && t.len() <= input_limits::PURPOSE_LEN);
    assert_eq!(t, t.trim());
    assert!(!t.chars().any(char::is_control));
    Some(p)
}

fn audiences(items: &[String]) -> Option<Vec<Audience>> {
    let list = Audience::parse_list(items).ok()?;
    assert!(list.len() <= input_limits::AUDIENCES && list.len() <= items.len());
    for (i, a) in list.iter().enumerate() {
        assert!(items.iter().any(|s| s == a.as_str()));
        assert!(!list[..i].contains(a), "duplicate audience kept");
    }
    Some(list)
}

fn scopes(items: &[String]) -> Option<ScopeSet> {
    let set = ScopeSet::parse(items).ok()?;
    assert!(set.len() <= input_limits::SCOPES && set.len() <= items.len());
    assert_eq!(
        ScopeSet::parse_claim(&set.to_claim()).ok(),
        Some(set.clone())
    );
    Some(set)
}

fn known_agent(td: &TrustDomain) -> Agent {
    let name = AgentName::parse("deployer").unwrap();
    let list = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    Agent {
        id: td.agent_id(&name),
        name,
        owner: "team".into(),
        purpose: "deploys".into(),
        tenant: String::new(),
        environment: String::new(),
        labels: Vec::new(),
        state: AgentState::Active,
        bindings: vec![Binding::Oidc {
            issuer: "https://issuer.fuzz".into(),
            subject: "repo:acme/deploy".into(),
        }],
        allow: AllowList {
            audiences: Audience::parse_list(&list(&["api", "billing"])).unwrap(),
            scopes: ScopeSet::parse(&list(&["read", "write", "admin"])).unwrap(),
            max_ttl_seconds: Some(600),
            approval_scopes: ScopeSet::parse(&list(&["admin"])).unwrap(),
        },
        review_every_days: 0,
        created_at: NOW,
        updated_at: NOW,
    }
}

/// RegisterAgent's parsing, as the admin service does it (bindings' text checks aside).
fn registered_agent(td: &TrustDomain, a: pb::Agent, limits: &Limits) -> Option<Agent> {
    let name = AgentName::parse(&a.name).ok()?;
    assert_eq!(name.as_str(), a.name);
    let max_ttl_seconds = match a.max_ttl_seconds {
        0 => None,
        n if n > limits.max_ttl_seconds => return None,
        n => Some(n),
    };
    Some(Agent {
        id: td.agent_id(&name),
        name,
        owner: a.owner,
        purpose: a.purpose,
        tenant: a.tenant,
        environment: a.environment,
        labels: taskpass_core::parse_labels(&a.labels).ok()?,
        state: AgentState::Active,
        bindings: a
            .oidc
            .into_iter()
            .map(|b| {
                Some(Binding::Oidc {
                    issuer: b.issuer,
                    subject: b.subject,
                })
            })
            .chain(a.x509.iter().map(|id| {
                let spiffe_id = taskpass_core::SpiffeId::parse(id).ok()?;
                assert_eq!(spiffe_id.as_str(), id, "only canonical SPIFFE ids parse");
                Some(Binding::X509 { spiffe_id })
            }))
            .collect::<Option<Vec<_>>>()?,
        allow: AllowList {
            audiences: audiences(&a.audiences)?,
            scopes: scopes(&a.scopes)?,
            max_ttl_seconds,
            approval_scopes: scopes(&a.approval_scopes)?,
        },
        review_every_days: a.review_every_days,
        created_at: NOW,
        updated_at: NOW,
    })
}

/// StartTask's parsing and decision; the task it would open.
fn start_task(agent: &Agent, req: &pb::StartTaskRequest, limits: &Limits) -> Option<Task> {
    let parsed = StartRequest {
        purpose: purpose(&req.purpose)?,
        audiences: audiences(&req.audiences)?,
        scopes: scopes(&req.scopes)?,
        max_duration_seconds: req.max_duration_seconds,
        on_behalf_of_requested: !req.subject_token.is_empty(),
        user: None,
    };
    let ctx = DecisionContext {
        now: NOW,
        limits,
        policies: &AllowListsOnly,
    };
    let Decision::Allow { grant, .. } = decide_start_task(agent, &parsed, &ctx) else {
        return None;
    };
    assert!(!grant.audiences.is_empty());
    assert!(grant.audiences.iter().all(|a| agent.may_use_audience(a)));
    assert!(grant.scopes.is_subset(&agent.allow.scopes));
    assert!(
        grant
            .scopes
            .intersection(&agent.allow.approval_scopes)
            .is_empty()
    );
    assert!(NOW < grant.expires_at);
    assert!(grant.expires_at <= NOW + i64::from(limits.max_task_seconds));
    Some(Task {
        id: some_task_id(1),
        agent: agent.id.clone(),
        state: TaskState::Open,
        purpose: parsed.purpose,
        audiences: grant.audiences,
        scopes: grant.scopes,
        created_at: NOW,
        expires_at: grant.expires_at,
        ended_at: None,
        on_behalf_of: None,
        approval_id: None,
        approved_by: None,
        user: None,
        approval: None,
        implicit: false,
    })
}

fn some_task_id(n: u8) -> TaskId {
    TaskId::parse(&format!("task_01HZY8W4C8V5N6J6R0B1B5X2Q{n}")).unwrap()
}

/// IssueToken's parsing and decision for `task`.
fn issue_token(agent: &Agent, task: &Task, req: &pb::IssueTokenRequest, limits: &Limits) {
    let _ = task_id(&req.task_id);
    let (Ok(audience), Some(scopes)) = (Audience::parse(&req.audience), scopes(&req.scopes)) else {
        return;
    };
    let parsed = IssueRequest {
        audience,
        scopes,
        ttl_seconds: req.ttl_seconds,
    };
    let ctx = DecisionContext {
        now: NOW,
        limits,
        policies: &AllowListsOnly,
    };
    let Decision::Allow { grant, .. } = decide_issue(agent, task, &parsed, &ctx) else {
        return;
    };
    assert!(task.audiences.contains(&grant.audience));
    assert!(agent.may_use_audience(&grant.audience));
    assert!(grant.scopes.is_subset(&task.scopes));
    assert!(grant.scopes.is_subset(&agent.allow.scopes));
    assert_eq!(grant.issued_at, NOW);
    assert!(NOW < grant.expires_at && grant.expires_at <= task.expires_at);
    let ttl = grant.expires_at - NOW;
    assert!(ttl <= i64::from(limits.max_ttl_seconds));
    if let Some(max) = agent.allow.max_ttl_seconds {
        assert!(ttl <= i64::from(max).max(1));
    }
}

fuzz_target!(|data: &[u8]| {
    let td = TrustDomain::parse("fuzz.example").unwrap();
    let limits = Limits::default();
    let known = known_agent(&td);

    let registered = pb::RegisterAgentRequest::decode(data).ok().and_then(|req| {
        round_trip(&req);
        registered_agent(&td, req.agent.unwrap_or_default(), &limits)
    });
    let agents: Vec<&Agent> = std::iter::once(&known).chain(registered.as_ref()).collect();

    let mut tasks = Vec::new();
    if let Ok(req) = pb::StartTaskRequest::decode(data) {
        round_trip(&req);
        for agent in &agents {
            tasks.extend(start_task(agent, &req, &limits).map(|t| (*agent, t)));
        }
    }
    if let Ok(req) = pb::IssueTokenRequest::decode(data) {
        round_trip(&req);
        // A task this input opened (the same bytes often decode as both requests), and one
        // of the known agent.
        let open = Task {
            id: some_task_id(2),
            agent: known.id.clone(),
            state: TaskState::Open,
            purpose: Purpose::parse("fuzzing").unwrap(),
            audiences: vec![Audience::parse("api").unwrap()],
            scopes: ScopeSet::parse(&["read", "write"]).unwrap(),
            created_at: NOW - 10,
            expires_at: NOW + 3600,
            ended_at: None,
            on_behalf_of: None,
            approval_id: None,
            approved_by: None,
            user: None,
            approval: None,
            implicit: false,
        };
        tasks.push((&known, open));
        for (agent, task) in &tasks {
            issue_token(agent, task, &req, &limits);
        }
    }
    if let Ok(req) = pb::CompleteTaskRequest::decode(data) {
        round_trip(&req);
        let _ = task_id(&req.task_id);
    }
    if let Ok(req) = pb::GetTaskRequest::decode(data) {
        round_trip(&req);
        let _ = task_id(&req.task_id);
    }
    if let Ok(req) = pb::IntrospectRequest::decode(data) {
        round_trip(&req);
    }
    if let Ok(req) = pb::WatchRevocationsRequest::decode(data) {
        round_trip(&req);
    }
});
