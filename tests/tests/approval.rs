#![allow(clippy::unwrap_used)]
//! Human approval against a real `taskpassd`: a task asking for an approval scope waits as
//! PENDING_APPROVAL with no tokens; WatchTask reports the approver's answer within a second;
//! admin lacks approvals:decide and an approver may not approve their own agent; approved
//! tasks' tokens carry approved_by; denials need a reason; unanswered approvals expire into
//! DENIED; a policy's @approval("required") asks for one too.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use taskpass_e2e::*;
use taskpass_proto::v1 as pb;
use taskpass_testkit::{DevIssuer, TestBroker, workspace_bin};
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::Channel;

type Admin = pb::admin_service_client::AdminServiceClient<Channel>;

/// Issues an operator credential with the CLI and connects with it.
async fn operator(broker: &TestBroker, dir: &Path, name: &str, role: &str) -> Admin {
    let out = Command::new(workspace_bin("taskpass").unwrap())
        .arg("--data-dir")
        .arg(broker.data_dir())
        .args(["operator", "issue", name, "--role", role, "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert = std::fs::read_to_string(dir.join(format!("{name}.pem"))).unwrap();
    let key = std::fs::read_to_string(dir.join(format!("{name}-key.pem"))).unwrap();
    let ch = taskpass_proto::connect(&broker.grpc_url, &broker.ca_pem, Some((&cert, &key)))
        .await
        .unwrap();
    Admin::new(ch)
}

async fn register_payer(admin: &mut Admin, issuer: &DevIssuer, owner: &str) {
    admin
        .register_agent(pb::RegisterAgentRequest {
            agent: Some(pb::Agent {
                name: "pay-bot".into(),
                owner: owner.into(),
                purpose: "pays invoices".into(),
                oidc: vec![pb::OidcBinding {
                    issuer: issuer.issuer().into(),
                    subject: "payer".into(),
                }],
                audiences: vec![API.into()],
                scopes: vec![
                    "read".into(),
                    "payments:write".into(),
                    "transfer:write".into(),
                ],
                approval_scopes: vec!["payments:write".into()],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
}

fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn issue_req(issuer: &DevIssuer, task_id: &str) -> pb::IssueTokenRequest {
    pb::IssueTokenRequest {
        attestation: att(issuer, "payer"),
        task_id: task_id.into(),
        audience: API.into(),
        scopes: vec![],
        ttl_seconds: 0,
        dpop_jkt: String::new(),
    }
}

#[tokio::test]
async fn approval_flow_with_separation_of_duties() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let issuer = DevIssuer::start().await.unwrap();
    let broker = TestBroker::start(&issuer).await.unwrap();
    let creds = tempfile::tempdir().unwrap();
    let mut admin = broker.admin().await.unwrap();
    register_payer(&mut admin, &issuer, "alice@example.org").await;
    let mut alice = operator(&broker, creds.path(), "alice", "approver").await;
    let mut bob = operator(&broker, creds.path(), "bob", "approver").await;
    let mut agent = broker.agent().await.unwrap();

    // A task without the approval scope opens at once.
    let plain = start(&mut agent, &issuer, "payer", &["read"])
        .await
        .unwrap();
    assert_eq!(plain.state, pb::TaskState::Open as i32);

    // With it, the task waits; no token meanwhile.
    let task = start(&mut agent, &issuer, "payer", &["read", "payments:write"])
        .await
        .unwrap();
    assert_eq!(task.state, pb::TaskState::PendingApproval as i32);
    assert!(task.approval_id.starts_with("appr_"), "{task:?}");
    assert!(task.approval_why.contains("payments:write"), "{task:?}");
    let e = agent
        .issue_token(issue_req(&issuer, &task.task_id))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("waits for a human's approval"),
        "{}",
        e.message()
    );

    let mut watch = agent
        .watch_task(pb::WatchTaskRequest {
            attestation: att(&issuer, "payer"),
            task_id: task.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.state, pb::TaskState::PendingApproval as i32);

    // The approver sees what is asked and why.
    let list = bob
        .list_approvals(pb::ListApprovalsRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner()
        .approvals;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].approval_id, task.approval_id);
    assert_eq!(list[0].owner, "alice@example.org");
    assert_eq!(list[0].scopes, ["payments:write", "read"]);

    let decide = |approve: bool, reason: &str| pb::DecideApprovalRequest {
        approval_id: task.approval_id.clone(),
        approve,
        reason: reason.into(),
    };
    // admin registers agents and so does not approve them.
    let e = admin.decide_approval(decide(true, "")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("lacks permission approvals:decide"),
        "{}",
        e.message()
    );
    // The agent's owner may not approve it.
    let e = alice.decide_approval(decide(true, "")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("separation of duties"),
        "{}",
        e.message()
    );
    // Malformed and unknown ids.
    for bad in ["", "appr_x", "task_01HZZZZZZZZZZZZZZZZZZZZZZZ"] {
        let mut r = decide(true, "");
        r.approval_id = bad.into();
        assert_eq!(
            bob.decide_approval(r).await.unwrap_err().code(),
            Code::InvalidArgument,
            "{bad}"
        );
    }
    let mut r = decide(true, "");
    r.approval_id = "appr_01HZZZZZZZZZZZZZZZZZZZZZZZ".into();
    assert_eq!(
        bob.decide_approval(r).await.unwrap_err().code(),
        Code::NotFound
    );

    // Another approver approves: the watcher learns of it within a second.
    let approved = bob
        .decide_approval(decide(true, "invoice 42 checked"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.task.unwrap().state, pb::TaskState::Open as i32);
    let next = tokio::time::timeout(Duration::from_secs(1), watch.next())
        .await
        .expect("WatchTask reported the approval within a second")
        .unwrap()
        .unwrap();
    assert_eq!(next.state, pb::TaskState::Open as i32);
    assert_eq!(
        next.approved_by,
        "spiffe://example.org/operator/approver/bob"
    );
    let t = agent
        .issue_token(issue_req(&issuer, &task.task_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        claims(&t.access_token)["approved_by"],
        "spiffe://example.org/operator/approver/bob"
    );
    // Decided once: a second answer finds nothing pending.
    assert_eq!(
        bob.decide_approval(decide(false, "too late"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // Completing the task ends the stream with the final state.
    agent
        .complete_task(pb::CompleteTaskRequest {
            attestation: att(&issuer, "payer"),
            task_id: task.task_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let last = tokio::time::timeout(Duration::from_secs(3), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(last.state, pb::TaskState::Completed as i32);
    assert!(
        tokio::time::timeout(Duration::from_secs(3), watch.next())
            .await
            .unwrap()
            .is_none()
    );

    // A denial needs a reason, and ends the task denied.
    let task = start(&mut agent, &issuer, "payer", &["payments:write"])
        .await
        .unwrap();
    let deny = |reason: &str| pb::DecideApprovalRequest {
        approval_id: task.approval_id.clone(),
        approve: false,
        reason: reason.into(),
    };
    assert_eq!(
        bob.decide_approval(deny("")).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let denied = bob
        .decide_approval(deny("not this month"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied.task.unwrap().state, pb::TaskState::Denied as i32);
    let e = agent
        .issue_token(issue_req(&issuer, &task.task_id))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // Every step is in the audit log.
    let tail = admin
        .tail_audit(pb::TailAuditRequest { limit: 100 })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let has = |action: &str, outcome: &str, reason: &str| {
        tail.iter()
            .any(|e| e.action == action && e.outcome == outcome && e.reason == reason)
    };
    assert!(has("approval.approve", "deny", "approver_owns_agent"));
    assert!(has("approval.approve", "allow", "approved"));
    assert!(has("approval.deny", "allow", "denied"));
    assert!(
        tail.iter()
            .any(|e| e.action == "start_task" && e.reason == "approval_required")
    );
}

#[tokio::test]
async fn unanswered_approvals_expire_and_policies_can_ask_for_one() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let issuer = DevIssuer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("approvals.cedar");
    std::fs::write(
        &policy,
        "@id(\"base\") permit (principal, action, resource);\n\
         @id(\"transfers-need-a-human\") @approval(\"required\")\n\
         permit (principal, action == Taskpass::Action::\"StartTask\", resource == Taskpass::Scope::\"transfer:write\");\n",
    )
    .unwrap();
    let extra = format!(
        "[approval]\ntimeout_seconds = 1\n[policy]\nfiles = [\"{}\"]\n",
        policy.display()
    );
    let broker = TestBroker::start_with(&issuer, &extra).await.unwrap();
    let mut admin = broker.admin().await.unwrap();
    register_payer(&mut admin, &issuer, "team-payments").await;
    let mut agent = broker.agent().await.unwrap();

    let task = start(&mut agent, &issuer, "payer", &["transfer:write"])
        .await
        .unwrap();
    assert_eq!(task.state, pb::TaskState::PendingApproval as i32);
    assert!(
        task.approval_why.contains("transfers-need-a-human"),
        "{task:?}"
    );

    // Unanswered past the timeout: denied, and no longer listed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let now = agent
        .get_task(pb::GetTaskRequest {
            attestation: att(&issuer, "payer"),
            task_id: task.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(now.state, pb::TaskState::Denied as i32);
    let creds = tempfile::tempdir().unwrap();
    let mut bob = operator(&broker, creds.path(), "bob", "approver").await;
    let list = bob
        .list_approvals(pb::ListApprovalsRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner()
        .approvals;
    assert!(list.is_empty(), "{list:?}");
    let e = bob
        .decide_approval(pb::DecideApprovalRequest {
            approval_id: task.approval_id.clone(),
            approve: true,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let tail = admin
        .tail_audit(pb::TailAuditRequest { limit: 50 })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(
        tail.iter()
            .any(|e| e.action == "approval.expire" && e.task_id == task.task_id),
        "{tail:?}"
    );
}
