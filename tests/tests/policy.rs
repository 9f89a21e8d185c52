#![allow(clippy::unwrap_used)]
//! Cedar policies in a real `taskpassd`: loaded from `[policy] files`, deciding StartTask and
//! IssueToken on top of the allow-lists with the deciding policies named in the refusal and
//! the audit log; `taskpass policy apply` refusing a bad set whole (the old one stays in
//! force), versioning a good one, which outlives a restart; the permissions that guard it.

use std::path::Path;
use std::process::{Command, Output};

use taskpass_e2e::*;
use taskpass_proto::v1 as pb;
use taskpass_testkit::{DevIssuer, TestBroker, workspace_bin};
use tonic::Code;

fn taskpass(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(workspace_bin("taskpass").unwrap())
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .unwrap()
}

fn ok_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn repo() -> String {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .display()
        .to_string()
}

async fn register_prod(
    admin: &mut pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
    issuer: &DevIssuer,
) {
    admin
        .register_agent(pb::RegisterAgentRequest {
            agent: Some(pb::Agent {
                name: "prod-bot".into(),
                owner: "team-e2e".into(),
                purpose: "policy test".into(),
                environment: "production".into(),
                oidc: vec![pb::OidcBinding {
                    issuer: issuer.issuer().into(),
                    subject: "prod".into(),
                }],
                audiences: vec![API.into()],
                scopes: vec!["repo:read".into(), "repo:delete".into()],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn policies_decide_on_top_of_the_allow_lists() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let issuer = DevIssuer::start().await.unwrap();
    let repo = repo();
    let extra = format!(
        "[policy]\nfiles = [\"{repo}/deploy/policies/base.cedar\", \"{repo}/deploy/policies/production-no-delete.cedar\"]\n"
    );
    let mut broker = TestBroker::start_with(&issuer, &extra).await.unwrap();
    let mut admin = broker.admin().await.unwrap();
    let mut agent = broker.agent().await.unwrap();
    register_prod(&mut admin, &issuer).await;

    // Within the allow-lists and the policies: allowed, and the audit entry names the permit.
    let task = start(&mut agent, &issuer, "prod", &["repo:read"])
        .await
        .unwrap();
    // A production agent asking for a delete scope: refused, naming the policy.
    let e = start(&mut agent, &issuer, "prod", &["repo:read", "repo:delete"])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message()
            .contains("rule policy_forbids; policy production-never-delete"),
        "{}",
        e.message()
    );
    assert!(e.message().contains("scope repo:delete"), "{}", e.message());
    let tail = admin
        .tail_audit(pb::TailAuditRequest { limit: 10 })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let allowed = tail
        .iter()
        .find(|a| a.action == "start_task" && a.task_id == task.task_id)
        .unwrap();
    assert_eq!(allowed.reason, "allow_lists policy:within-allow-lists");
    let denied = tail
        .iter()
        .rev()
        .find(|a| a.action == "start_task" && a.outcome == "deny")
        .unwrap();
    assert!(
        denied.reason.contains("production-never-delete"),
        "{denied:?}"
    );

    // A bad set is refused whole; the set in force stays.
    let dir = broker.data_dir().to_path_buf();
    let files = tempfile::tempdir().unwrap();
    let bad = files.path().join("bad.cedar");
    std::fs::write(
        &bad,
        "permit (principal, action, resource) when { principal.nickname == \"x\" };",
    )
    .unwrap();
    let out = taskpass(&dir, &["policy", "apply", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("INVALID_ARGUMENT") && err.contains("nickname") && err.contains("unchanged"),
        "{err}"
    );
    let shown = ok_json(&taskpass(&dir, &["policy", "show", "--output", "json"]));
    assert_eq!(shown["version"], 1);
    assert_eq!(shown["origin"], "config");
    assert!(
        start(&mut agent, &issuer, "prod", &["repo:delete"])
            .await
            .is_err()
    );

    // A good set: a new version, in force at once; IssueToken is decided too.
    let ttl = files.path().join("short-tokens.cedar");
    std::fs::write(
        &ttl,
        "@id(\"tokens-at-most-a-minute\")\nforbid (principal, action == Taskpass::Action::\"IssueToken\", resource) when { context.ttl_seconds > 60 };",
    )
    .unwrap();
    let base = format!("{repo}/deploy/policies/base.cedar");
    let applied = ok_json(&taskpass(
        &dir,
        &[
            "policy",
            "apply",
            &base,
            ttl.to_str().unwrap(),
            "--output",
            "json",
        ],
    ));
    assert_eq!(applied["version"], 2);
    assert_eq!(
        applied["policy_ids"],
        serde_json::json!(["within-allow-lists", "tokens-at-most-a-minute"])
    );
    let task = start(&mut agent, &issuer, "prod", &["repo:delete"])
        .await
        .unwrap();
    let mut ask = pb::IssueTokenRequest {
        attestation: att(&issuer, "prod"),
        task_id: task.task_id.clone(),
        audience: API.into(),
        scopes: vec![],
        ttl_seconds: 300,
        dpop_jkt: String::new(),
    };
    let e = agent.issue_token(ask.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("tokens-at-most-a-minute"),
        "{}",
        e.message()
    );
    ask.ttl_seconds = 60;
    let t = agent.issue_token(ask).await.unwrap().into_inner();
    assert!(t.expires_at > 0);

    // The applied set outlives a restart (the config's files did not change).
    broker.restart().await.unwrap();
    let history = ok_json(&taskpass(&dir, &["policy", "history", "--output", "json"]));
    let versions: Vec<(u64, bool)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["version"].as_u64().unwrap(),
                s["active"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(versions, [(2, true), (1, false)]);
    let mut agent = broker.agent().await.unwrap();
    assert!(
        start(&mut agent, &issuer, "prod", &["repo:delete"])
            .await
            .is_ok()
    );

    // Labels, for policies to match on: set with the CLI, validated.
    let updated = ok_json(&taskpass(
        &dir,
        &[
            "agent",
            "update",
            "prod-bot",
            "--label",
            "team=payments",
            "--label",
            "tier=gold",
            "--output",
            "json",
        ],
    ));
    assert_eq!(
        updated["labels"],
        serde_json::json!(["team=payments", "tier=gold"])
    );
    let bad = taskpass(&dir, &["agent", "update", "prod-bot", "--label", "Team=x"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("label key"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // Who may: an auditor reads the set but may not apply one.
    let creds = tempfile::tempdir().unwrap();
    ok_json(&taskpass(
        &dir,
        &[
            "operator",
            "issue",
            "ann",
            "--role",
            "auditor",
            "--out",
            creds.path().to_str().unwrap(),
            "--output",
            "json",
        ],
    ));
    let as_ann = |args: &[&str]| {
        Command::new(workspace_bin("taskpass").unwrap())
            .args(["--server", &broker.grpc_url, "--ca"])
            .arg(dir.join("ca.pem"))
            .arg("--cert")
            .arg(creds.path().join("ann.pem"))
            .arg("--key")
            .arg(creds.path().join("ann-key.pem"))
            .args(args)
            .output()
            .unwrap()
    };
    assert!(as_ann(&["policy", "show"]).status.success());
    let denied = as_ann(&["policy", "apply", &base]);
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("lacks permission policies:write"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
}

#[tokio::test]
async fn a_broker_with_an_invalid_policy_file_does_not_start() {
    let issuer = DevIssuer::start().await.unwrap();
    let files = tempfile::tempdir().unwrap();
    let bad = files.path().join("bad.cedar");
    std::fs::write(&bad, "permit (principal, action, resource").unwrap();
    let extra = format!("[policy]\nfiles = [\"{}\"]\n", bad.display());
    let config = TestBroker::config_toml(&files.path().join("data"), &issuer, &extra).unwrap();
    let path = files.path().join("taskpass.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(workspace_bin("taskpassd").unwrap())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[policy] files") && err.contains("bad.cedar"),
        "{err}"
    );
}
