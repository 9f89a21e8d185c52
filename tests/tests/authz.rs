#![allow(clippy::unwrap_used)]
//! Authorisation against a real `taskpassd`: deny by default, no escalation, isolation between
//! agents, malformed input, the operators' API, agent lifecycle and operator revocations.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher as _, Hasher as _};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use taskpass_e2e::*;
use taskpass_proto::v1 as pb;
use taskpass_testkit::{DevIssuer, TestBroker};
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::Channel;

type AdminClient = pb::admin_service_client::AdminServiceClient<Channel>;
type ValidationClient = pb::validation_service_client::ValidationServiceClient<Channel>;

const OTHER_API: &str = "https://other.example";

fn start_req(
    issuer: &DevIssuer,
    subject: &str,
    audiences: &[&str],
    scopes: &[&str],
) -> pb::StartTaskRequest {
    pb::StartTaskRequest {
        attestation: att(issuer, subject),
        purpose: "authz test".into(),
        audiences: audiences.iter().map(|s| (*s).to_owned()).collect(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        max_duration_seconds: 0,
        subject_token: String::new(),
    }
}

fn issue_req(
    issuer: &DevIssuer,
    subject: &str,
    task_id: &str,
    audience: &str,
    scopes: &[&str],
    ttl_seconds: u32,
) -> pb::IssueTokenRequest {
    pb::IssueTokenRequest {
        attestation: att(issuer, subject),
        task_id: task_id.into(),
        audience: audience.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ttl_seconds,
        dpop_jkt: String::new(),
    }
}

/// The claims of one of our access tokens (not verified: the tests only read lifetimes).
fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// A syntactically valid task id that names no task: `task_` and a random ULID.
fn random_task_id() -> String {
    const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut bits: u128 = 0;
    for _ in 0..2 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(0x5eed);
        bits = (bits << 64) | u128::from(h.finish());
    }
    // 26 characters of 5 bits = 130 bits; the first character carries only 3 (at most '7').
    let mut out = String::from("task_");
    for i in (0..26).rev() {
        let v = if i == 25 {
            (bits >> 125) & 0x7
        } else {
            (bits >> (i * 5)) & 0x1f
        };
        out.push(char::from(CROCKFORD[usize::try_from(v).unwrap()]));
    }
    out
}

async fn introspect(val: &mut ValidationClient, token: &str) -> pb::IntrospectResponse {
    val.introspect(pb::IntrospectRequest {
        token: token.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn set_state(
    admin: &mut AdminClient,
    name: &str,
    state: pb::AgentState,
) -> Result<pb::SetAgentStateResponse, tonic::Status> {
    Ok(admin
        .set_agent_state(pb::SetAgentStateRequest {
            name: name.into(),
            state: state.into(),
            reason: "authz e2e".into(),
        })
        .await?
        .into_inner())
}

async fn tail(admin: &mut AdminClient) -> Vec<pb::AuditEntry> {
    admin
        .tail_audit(pb::TailAuditRequest { limit: 1000 })
        .await
        .unwrap()
        .into_inner()
        .entries
}

async fn assert_audit_verifies(admin: &mut AdminClient) {
    let v = admin
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "audit chain broken: {v:?}");
}

/// Reads revocation events (from sequence 0) until `want` matches one, within 5 s.
async fn wait_for_event(
    val: &mut ValidationClient,
    want: impl Fn(&pb::RevocationEvent) -> bool,
) -> pb::RevocationEvent {
    let mut watch = val
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ev = tokio::time::timeout_at(deadline, watch.next())
            .await
            .expect("the revocation event is streamed within 5 s")
            .expect("the stream stays open")
            .unwrap();
        if want(&ev) {
            return ev;
        }
    }
}

fn new_agent(name: &str, issuer: &DevIssuer, subject: &str) -> pb::RegisterAgentRequest {
    pb::RegisterAgentRequest {
        agent: Some(pb::Agent {
            name: name.into(),
            owner: "team-e2e".into(),
            purpose: "authz test".into(),
            oidc: vec![pb::OidcBinding {
                issuer: issuer.issuer().into(),
                subject: subject.into(),
            }],
            audiences: vec![API.into()],
            scopes: vec!["read".into()],
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn allow_lists_deny_by_default_and_never_escalate() {
    let Env {
        issuer,
        broker: _broker,
        mut admin,
        mut agent,
        ..
    } = Env::start().await.unwrap();
    register(&mut admin, &issuer, "authz-a", "sub-a")
        .await
        .unwrap();

    // StartTask: a scope not on the allow-list.
    let s = agent
        .start_task(start_req(&issuer, "sub-a", &[API], &["read", "admin"]))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("admin"), "{s:?}");
    assert!(s.message().contains("scope_not_allowed"), "{s:?}");
    // An audience not on the allow-list.
    let s = agent
        .start_task(start_req(&issuer, "sub-a", &[API, OTHER_API], &["read"]))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains(OTHER_API), "{s:?}");
    assert!(s.message().contains("audience_not_allowed"), "{s:?}");
    // Both denials are in the audit log.
    let entries = tail(&mut admin).await;
    for rule in ["scope_not_allowed", "audience_not_allowed"] {
        let e = entries
            .iter()
            .find(|e| e.reason.contains(rule))
            .unwrap_or_else(|| panic!("no audit entry for {rule}: {entries:?}"));
        assert_eq!(e.outcome, "deny");
        assert_eq!(e.action, "start_task");
        assert_eq!(e.agent_id, "spiffe://example.org/agent/authz-a");
    }
    // Nothing was created by the denials.
    let tasks = admin
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(tasks.is_empty(), "{tasks:?}");

    // IssueToken cannot widen the task: the task has `read`, the agent may have `write`.
    let task = start(&mut agent, &issuer, "sub-a", &["read"])
        .await
        .unwrap();
    assert_eq!(task.scopes, ["read"]);
    let s = agent
        .issue_token(issue_req(
            &issuer,
            "sub-a",
            &task.task_id,
            API,
            &["write"],
            0,
        ))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("scope_not_in_task"), "{s:?}");
    assert!(s.message().contains("write"), "{s:?}");
    let s = agent
        .issue_token(issue_req(
            &issuer,
            "sub-a",
            &task.task_id,
            OTHER_API,
            &[],
            0,
        ))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("audience_not_in_task"), "{s:?}");
    let entries = tail(&mut admin).await;
    for rule in ["scope_not_in_task", "audience_not_in_task"] {
        let e = entries
            .iter()
            .find(|e| e.reason.contains(rule))
            .unwrap_or_else(|| panic!("no audit entry for {rule}: {entries:?}"));
        assert_eq!(e.outcome, "deny");
        assert_eq!(e.action, "issue_token");
        assert_eq!(e.task_id, task.task_id);
    }

    // TTL: a huge request is clamped to the agent's max (600 s in `register`).
    let t = agent
        .issue_token(issue_req(
            &issuer,
            "sub-a",
            &task.task_id,
            API,
            &[],
            100_000,
        ))
        .await
        .unwrap()
        .into_inner();
    let c = claims(&t.access_token);
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 600);
    assert_eq!(c["exp"].as_i64().unwrap(), t.expires_at);
    assert!(t.expires_at <= task.expires_at);

    // ... and never beyond the task's deadline.
    let short = agent
        .start_task(pb::StartTaskRequest {
            max_duration_seconds: 60,
            ..start_req(&issuer, "sub-a", &[API], &["read"])
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let t = agent
        .issue_token(issue_req(
            &issuer,
            "sub-a",
            &short.task_id,
            API,
            &[],
            100_000,
        ))
        .await
        .unwrap()
        .into_inner();
    let c = claims(&t.access_token);
    assert_eq!(t.expires_at, short.expires_at, "clamped to the deadline");
    assert_eq!(c["exp"].as_i64().unwrap(), short.expires_at);
    assert!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap() <= 60);

    assert_audit_verifies(&mut admin).await;
}

#[tokio::test]
async fn another_agents_task_is_not_found() {
    let Env {
        issuer,
        broker: _broker,
        mut admin,
        mut agent,
        ..
    } = Env::start().await.unwrap();
    register(&mut admin, &issuer, "iso-a", "sub-a")
        .await
        .unwrap();
    register(&mut admin, &issuer, "iso-b", "sub-b")
        .await
        .unwrap();
    let task = start(&mut agent, &issuer, "sub-a", &["read"])
        .await
        .unwrap();
    let a_id = task.task_id.clone();
    let missing = random_task_id();
    assert_ne!(missing, a_id);

    let shape = |s: &tonic::Status, id: &str| {
        assert_eq!(s.code(), Code::NotFound, "{s:?}");
        s.message().replace(id, "<task>")
    };
    let mut shapes = Vec::new();
    for id in [a_id.as_str(), missing.as_str()] {
        let get = agent
            .get_task(pb::GetTaskRequest {
                attestation: att(&issuer, "sub-b"),
                task_id: id.into(),
            })
            .await
            .unwrap_err();
        let iss = agent
            .issue_token(issue_req(&issuer, "sub-b", id, API, &[], 0))
            .await
            .unwrap_err();
        let done = agent
            .complete_task(pb::CompleteTaskRequest {
                attestation: att(&issuer, "sub-b"),
                task_id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        shapes.push([shape(&get, id), shape(&iss, id), shape(&done, id)]);
    }
    assert_eq!(
        shapes[0], shapes[1],
        "another agent's task must look exactly like a missing one"
    );

    // A's task is untouched: still open, still issuing, still completable by A.
    let got = agent
        .get_task(pb::GetTaskRequest {
            attestation: att(&issuer, "sub-a"),
            task_id: a_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(got.state, pb::TaskState::Open as i32);
    issue(&mut agent, &issuer, "sub-a", &a_id).await.unwrap();
    let tokens = admin
        .list_tokens(pb::ListTokensRequest {
            task_id: a_id.clone(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(tokens.len(), 1, "B obtained no token for A's task");
    // The probes are decisions too: denied and audited, attributed to agent B, in the
    // refusal tally (one entry per action and rule, with a count) at its next interval.
    let mut probes = 0;
    let mut tail = Vec::new();
    for _ in 0..100 {
        tail = admin
            .tail_audit(pb::TailAuditRequest { limit: 100 })
            .await
            .unwrap()
            .into_inner()
            .entries;
        probes = tail
            .iter()
            .filter(|e| {
                e.outcome == "deny"
                    && e.actor == "spiffe://example.org/agent/iso-b"
                    && e.reason == "task_not_found"
                    && e.detail.starts_with("count=")
            })
            .count();
        if probes >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        probes, 3,
        "B's probes (get, issue, complete) are audited: {tail:?}"
    );
    assert_audit_verifies(&mut admin).await;
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument() {
    let Env {
        issuer,
        broker: _broker,
        mut admin,
        mut agent,
        ..
    } = Env::start().await.unwrap();
    register(&mut admin, &issuer, "bad-input", "sub-a")
        .await
        .unwrap();
    let task = start(&mut agent, &issuer, "sub-a", &["read"])
        .await
        .unwrap();

    // task_id that is not `task_` + ULID.
    let s = agent
        .issue_token(issue_req(&issuer, "sub-a", "nope", API, &[], 0))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("task_id"), "{s:?}");
    for s in [
        agent
            .get_task(pb::GetTaskRequest {
                attestation: att(&issuer, "sub-a"),
                task_id: "nope".into(),
            })
            .await
            .unwrap_err(),
        agent
            .complete_task(pb::CompleteTaskRequest {
                attestation: att(&issuer, "sub-a"),
                task_id: "nope".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    }

    let many: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let cases: Vec<(&str, pb::StartTaskRequest, &str)> = vec![
        (
            "scope with a space",
            start_req(&issuer, "sub-a", &[API], &["read write"]),
            "scope",
        ),
        (
            "scope with a quote",
            start_req(&issuer, "sub-a", &[API], &["re\"ad"]),
            "scope",
        ),
        (
            "no audiences",
            start_req(&issuer, "sub-a", &[], &["read"]),
            "audience",
        ),
        (
            "audience with a space",
            start_req(&issuer, "sub-a", &["https://api example"], &["read"]),
            "audience",
        ),
        (
            "empty purpose",
            pb::StartTaskRequest {
                purpose: String::new(),
                ..start_req(&issuer, "sub-a", &[API], &["read"])
            },
            "purpose",
        ),
    ];
    for (case, req, fragment) in cases {
        let s = agent.start_task(req).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{case}: {s:?}");
        assert!(s.message().contains(fragment), "{case}: {s:?}");
    }
    // Size limits are RESOURCE_EXHAUSTED and name the field.
    let long_purpose = "p".repeat(1025);
    for (case, req, fragment) in [
        (
            "65 scopes",
            start_req(&issuer, "sub-a", &[API], &many),
            "scopes",
        ),
        (
            "1025-byte purpose",
            pb::StartTaskRequest {
                purpose: long_purpose,
                ..start_req(&issuer, "sub-a", &[API], &["read"])
            },
            "purpose",
        ),
    ] {
        let s = agent.start_task(req).await.unwrap_err();
        assert_eq!(s.code(), Code::ResourceExhausted, "{case}: {s:?}");
        assert!(s.message().contains(fragment), "{case}: {s:?}");
    }
    // The same rules hold for IssueToken.
    for (case, req) in [
        (
            "issue: scope with a space",
            issue_req(&issuer, "sub-a", &task.task_id, API, &["read write"], 0),
        ),
        (
            "issue: audience with a space",
            issue_req(&issuer, "sub-a", &task.task_id, "a b", &[], 0),
        ),
        (
            "issue: empty audience",
            issue_req(&issuer, "sub-a", &task.task_id, "", &[], 0),
        ),
    ] {
        let s = agent.issue_token(req).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{case}: {s:?}");
    }

    // Delegation (subject_token) is not enabled on this broker yet.
    let s = agent
        .start_task(pb::StartTaskRequest {
            subject_token: "eyJhbGciOiJSUzI1NiJ9.e30.c2ln".into(),
            ..start_req(&issuer, "sub-a", &[API], &["read"])
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("delegation_not_enabled"), "{s:?}");
    assert!(!s.message().contains("eyJhbGciOiJSUzI1NiJ9"), "{s:?}");

    // Only the one valid task exists.
    let tasks = admin
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_audit_verifies(&mut admin).await;
}

#[tokio::test]
async fn admin_api_needs_an_operator_and_validates_registrations() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let issuer = DevIssuer::start().await.unwrap();
    let untrusted = DevIssuer::start().await.unwrap();
    let broker = TestBroker::start(&issuer).await.unwrap();
    let mut admin = broker.admin().await.unwrap();

    // No client certificate: refused, for reads and writes alike.
    let mut anon = broker.admin_without_cert().await.unwrap();
    let s = anon
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert!(s.message().contains("certificate"), "{s:?}");
    let s = anon
        .register_agent(new_agent("sneaky", &issuer, "sub-sneaky"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    let s = anon
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");

    admin
        .register_agent(new_agent("reg-a", &issuer, "sub-a"))
        .await
        .unwrap();
    let s = admin
        .register_agent(new_agent("reg-u", &untrusted, "sub-u"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("not trusted"), "{s:?}");
    let s = admin
        .register_agent(new_agent("reg-a", &issuer, "sub-other"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::AlreadyExists, "duplicate name: {s:?}");
    let s = admin
        .register_agent(new_agent("reg-b", &issuer, "sub-a"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::AlreadyExists, "identity reuse: {s:?}");
    assert!(s.message().contains("reg-a"), "{s:?}");
    let s = admin
        .register_agent(new_agent("Bad_Name", &issuer, "sub-bad"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("name"), "{s:?}");
    let mut too_long = new_agent("reg-ttl", &issuer, "sub-ttl");
    too_long.agent.as_mut().unwrap().max_ttl_seconds = 901;
    let s = admin.register_agent(too_long).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("900"), "{s:?}");

    // Only reg-a exists; reg-b's refused identity still attests reg-a.
    let agents = admin
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    let names: Vec<&str> = agents.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["reg-a"]);
    let mut agent = broker.agent().await.unwrap();
    let task = start(&mut agent, &issuer, "sub-a", &["read"])
        .await
        .unwrap();
    assert_eq!(task.agent_id, "spiffe://example.org/agent/reg-a");
    assert_audit_verifies(&mut admin).await;
}

#[tokio::test]
async fn suspend_resume_offboard() {
    let Env {
        issuer,
        broker: _broker,
        mut admin,
        mut agent,
        mut val,
    } = Env::start().await.unwrap();
    let a = register(&mut admin, &issuer, "life-a", "sub-a")
        .await
        .unwrap();
    let task = start(&mut agent, &issuer, "sub-a", &["read"])
        .await
        .unwrap();
    let tok = issue(&mut agent, &issuer, "sub-a", &task.task_id)
        .await
        .unwrap();
    assert!(introspect(&mut val, &tok.access_token).await.active);

    // Suspend: the open task is revoked with its tokens, and no new task starts.
    let r = set_state(&mut admin, "life-a", pb::AgentState::Suspended)
        .await
        .unwrap();
    assert_eq!(r.revoked_tasks, 1);
    assert_eq!(r.agent.unwrap().state, pb::AgentState::Suspended as i32);
    let i = introspect(&mut val, &tok.access_token).await;
    assert!(!i.active);
    assert!(
        i.inactive_reason == "task_revoked" || i.inactive_reason == "agent_suspended",
        "{i:?}"
    );
    let s = start(&mut agent, &issuer, "sub-a", &["read"])
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("suspended"), "{s:?}");
    let s = issue(&mut agent, &issuer, "sub-a", &task.task_id)
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    // GetTask and CompleteTask of a suspended agent: FAILED_PRECONDITION too (SPEC, Errors).
    let s = agent
        .get_task(pb::GetTaskRequest {
            attestation: att(&issuer, "sub-a"),
            task_id: task.task_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("suspended"), "{s:?}");
    let s = agent
        .complete_task(pb::CompleteTaskRequest {
            attestation: att(&issuer, "sub-a"),
            task_id: task.task_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("suspended"), "{s:?}");

    // Resume: tasks start again (the revoked one stays revoked).
    let r = set_state(&mut admin, "life-a", pb::AgentState::Active)
        .await
        .unwrap();
    assert_eq!(r.agent.unwrap().state, pb::AgentState::Active as i32);
    let task2 = start(&mut agent, &issuer, "sub-a", &["read"])
        .await
        .unwrap();
    let tok2 = issue(&mut agent, &issuer, "sub-a", &task2.task_id)
        .await
        .unwrap();
    assert!(introspect(&mut val, &tok2.access_token).await.active);
    assert!(!introspect(&mut val, &tok.access_token).await.active);

    // Offboard: an AGENT revocation is streamed, tokens die, the binding is gone.
    let r = set_state(&mut admin, "life-a", pb::AgentState::Offboarded)
        .await
        .unwrap();
    assert_eq!(r.revoked_tasks, 1);
    let ev = wait_for_event(&mut val, |e| e.kind == pb::RevocationKind::Agent as i32).await;
    assert_eq!(ev.id, a.agent_id);
    assert_eq!(ev.reason, "agent_offboarded");
    assert!(ev.not_after >= tok2.expires_at);
    let i = introspect(&mut val, &tok2.access_token).await;
    assert!(!i.active);
    assert!(
        i.inactive_reason == "task_revoked" || i.inactive_reason == "agent_offboarded",
        "{i:?}"
    );
    let s = start(&mut agent, &issuer, "sub-a", &["read"])
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert!(s.message().contains("matches no registered agent"), "{s:?}");
    let s = issue(&mut agent, &issuer, "sub-a", &task2.task_id)
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");

    // Offboarding is final.
    for state in [pb::AgentState::Active, pb::AgentState::Suspended] {
        let s = set_state(&mut admin, "life-a", state).await.unwrap_err();
        assert_eq!(s.code(), Code::FailedPrecondition, "{state:?}: {s:?}");
    }
    let got = admin
        .get_agent(pb::GetAgentRequest {
            name: "life-a".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert_eq!(got.state, pb::AgentState::Offboarded as i32);
    let actions: Vec<String> = tail(&mut admin)
        .await
        .into_iter()
        .map(|e| e.action)
        .collect();
    for a in ["agent.suspend", "agent.resume", "agent.offboard"] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} not audited: {actions:?}"
        );
    }
    assert_audit_verifies(&mut admin).await;
}

#[tokio::test]
async fn operator_revokes_a_token_and_a_task() {
    let Env {
        issuer,
        broker: _broker,
        mut admin,
        mut agent,
        mut val,
    } = Env::start().await.unwrap();
    register(&mut admin, &issuer, "rev-a", "sub-a")
        .await
        .unwrap();
    let task = start(&mut agent, &issuer, "sub-a", &["read"])
        .await
        .unwrap();
    let t1 = issue(&mut agent, &issuer, "sub-a", &task.task_id)
        .await
        .unwrap();
    let t2 = issue(&mut agent, &issuer, "sub-a", &task.task_id)
        .await
        .unwrap();
    let t3 = issue(&mut agent, &issuer, "sub-a", &task.task_id)
        .await
        .unwrap();

    // One token: it dies, its siblings live.
    let info = admin
        .revoke_token(pb::RevokeTokenRequest {
            token_id: t1.token_id.clone(),
            reason: "leaked in a log".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert!(info.revoked);
    assert_eq!(info.task_id, task.task_id);
    let i = introspect(&mut val, &t1.access_token).await;
    assert!(!i.active);
    assert_eq!(i.inactive_reason, "revoked");
    assert!(introspect(&mut val, &t2.access_token).await.active);
    let ev = wait_for_event(&mut val, |e| e.kind == pb::RevocationKind::Token as i32).await;
    assert_eq!(ev.id, t1.token_id);
    assert!(ev.not_after >= t1.expires_at);
    let s = admin
        .revoke_token(pb::RevokeTokenRequest {
            token_id: t1.token_id.clone(),
            reason: "again".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");

    // The whole task: every remaining token dies, the agent cannot complete it.
    let r = admin
        .revoke_task(pb::RevokeTaskRequest {
            task_id: task.task_id.clone(),
            reason: "incident".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revoked_tokens, 2);
    assert_eq!(r.task.unwrap().state, pb::TaskState::Revoked as i32);
    for t in [&t2, &t3] {
        let i = introspect(&mut val, &t.access_token).await;
        assert!(!i.active);
        assert_eq!(i.inactive_reason, "task_revoked");
    }
    assert!(!introspect(&mut val, &t1.access_token).await.active);
    let ev = wait_for_event(&mut val, |e| e.kind == pb::RevocationKind::Task as i32).await;
    assert_eq!(ev.id, task.task_id);
    assert_eq!(ev.reason, "task_revoked");
    let s = agent
        .complete_task(pb::CompleteTaskRequest {
            attestation: att(&issuer, "sub-a"),
            task_id: task.task_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    let s = issue(&mut agent, &issuer, "sub-a", &task.task_id)
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    let s = admin
        .revoke_task(pb::RevokeTaskRequest {
            task_id: task.task_id.clone(),
            reason: "again".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert_audit_verifies(&mut admin).await;
}

#[tokio::test]
async fn agents_are_rate_limited_one_by_one() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let issuer = DevIssuer::start().await.unwrap();
    let broker = TestBroker::start_with(
        &issuer,
        "[limits]\nagent_requests_per_second = 1\nagent_burst = 3\n",
    )
    .await
    .unwrap();
    let mut admin = broker.admin().await.unwrap();
    let mut agent = broker.agent().await.unwrap();
    register(&mut admin, &issuer, "noisy", "sub-noisy")
        .await
        .unwrap();
    register(&mut admin, &issuer, "quiet", "sub-quiet")
        .await
        .unwrap();
    let task = start(&mut agent, &issuer, "sub-noisy", &["read"])
        .await
        .unwrap();
    issue(&mut agent, &issuer, "sub-noisy", &task.task_id)
        .await
        .unwrap();
    issue(&mut agent, &issuer, "sub-noisy", &task.task_id)
        .await
        .unwrap();
    let limited = issue(&mut agent, &issuer, "sub-noisy", &task.task_id)
        .await
        .unwrap_err();
    assert_eq!(
        limited.code(),
        tonic::Code::ResourceExhausted,
        "{limited:?}"
    );
    assert!(
        limited.message().contains("rate limit"),
        "{}",
        limited.message()
    );
    // Another agent has its own bucket.
    start(&mut agent, &issuer, "sub-quiet", &["read"])
        .await
        .unwrap();
}
