//! The real `taskpass` binary against a real `taskpassd`: the operator verbs, `--output json`,
//! exit codes, `audit verify` catching an edited store, and `taskpass demo`.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use taskpass_e2e::*;
use taskpass_testkit::{DevIssuer, TestBroker, workspace_bin};

fn taskpass(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(workspace_bin("taskpass").unwrap())
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_validator_bench_measures_a_real_broker() {
    // A small run: the shape of the figures, not their values.
    let out = Command::new(workspace_bin("taskpass").unwrap())
        .args([
            "bench",
            "--validators",
            "--revocations",
            "20",
            "--streams",
            "150",
            "--sign-seconds",
            "0.1",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    let doc = json(&out);
    for key in [
        "raw_ed25519_verify_per_s",
        "verify_offline_per_s",
        "verify_live_per_s",
        "ratio_verify_live_to_raw",
        "propagation_p99_ms",
        "fanout_p99_ms",
        "fanout_from_call_p99_ms",
    ] {
        assert!(doc[key].as_f64().unwrap() > 0.0, "{key}: {doc}");
    }
    assert_eq!(doc["propagation_revocations"], 20);
    assert_eq!(doc["fanout_streams"], 150);
}

#[tokio::test]
async fn operator_verbs() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let issuer = DevIssuer::start().await.unwrap();
    let mut broker = TestBroker::start(&issuer).await.unwrap();
    let dir = broker.data_dir().to_path_buf();
    let oidc = format!("{}=sub-cli", issuer.issuer());

    let reg = json(&taskpass(
        &dir,
        &[
            "agent",
            "register",
            "cli-bot",
            "--owner",
            "ops",
            "--purpose",
            "cli test",
            "--oidc",
            &oidc,
            "--audience",
            API,
            "--scope",
            "read",
            "--scope",
            "write",
            "--max-ttl",
            "120",
            "--output",
            "json",
        ],
    ));
    assert_eq!(reg["agent_id"], "spiffe://example.org/agent/cli-bot");
    assert_eq!(reg["max_ttl_seconds"], 120);
    // Global flags also before the subcommand.
    let list = Command::new(workspace_bin("taskpass").unwrap())
        .args(["--output", "json", "--data-dir"])
        .arg(&dir)
        .args(["agent", "list"])
        .output()
        .unwrap();
    assert_eq!(json(&list).as_array().unwrap().len(), 1);
    let text = taskpass(&dir, &["agent", "list"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("cli-bot"));

    let mut agent = broker.agent().await.unwrap();
    let task = start(&mut agent, &issuer, "sub-cli", &["read"])
        .await
        .unwrap();
    let tok = issue(&mut agent, &issuer, "sub-cli", &task.task_id)
        .await
        .unwrap();
    let tasks = json(&taskpass(
        &dir,
        &["task", "list", "--agent", "cli-bot", "--output", "json"],
    ));
    assert_eq!(tasks[0]["task_id"], task.task_id);
    assert_eq!(tasks[0]["state"], "open");
    let tokens = json(&taskpass(
        &dir,
        &["token", "list", "--task", &task.task_id, "--output", "json"],
    ));
    assert_eq!(tokens[0]["token_id"], tok.token_id);
    assert!(
        !tokens.to_string().contains(&tok.access_token),
        "token lists never show tokens"
    );
    let revoked = json(&taskpass(
        &dir,
        &["token", "revoke", &tok.token_id, "--output", "json"],
    ));
    assert_eq!(revoked["revoked"], true);
    let r = json(&taskpass(
        &dir,
        &["task", "revoke", &task.task_id, "--output", "json"],
    ));
    assert_eq!(r["task"]["state"], "revoked");

    // Errors: non-zero exit, the gRPC code and the broker's message on stderr.
    let missing = taskpass(&dir, &["agent", "show", "nosuch"]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("NOT_FOUND") && err.contains("agent nosuch not found"),
        "{err}"
    );
    let bad = taskpass(
        &dir,
        &[
            "agent",
            "register",
            "Bad_Name",
            "--owner",
            "o",
            "--purpose",
            "p",
            "--oidc",
            &oidc,
        ],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("INVALID_ARGUMENT"));
    let off = json(&taskpass(
        &dir,
        &["agent", "offboard", "cli-bot", "--output", "json"],
    ));
    assert_eq!(off["agent"]["state"], "offboarded");
    let again = taskpass(&dir, &["agent", "resume", "cli-bot"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("FAILED_PRECONDITION"));

    let tail = json(&taskpass(&dir, &["audit", "tail", "--output", "json"]));
    let actions: Vec<&str> = tail
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"agent.offboard") && actions.contains(&"token.revoke"),
        "{actions:?}"
    );
    let ok = json(&taskpass(&dir, &["audit", "verify", "--output", "json"]));
    assert_eq!(ok["ok"], true);

    // Edit one audit entry in the store file behind the broker's back: verify must fail.
    broker.kill9().unwrap();
    {
        const AUDIT: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit");
        let db = redb::Database::create(dir.join("store.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(AUDIT).unwrap();
            let mut entry: serde_json::Value =
                serde_json::from_slice(redb::ReadableTable::get(&t, 2).unwrap().unwrap().value())
                    .unwrap();
            entry["detail"] = "nothing to see here".into();
            t.insert(2, serde_json::to_vec(&entry).unwrap().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    broker.restart().await.unwrap();
    let broken = taskpass(broker.data_dir(), &["audit", "verify"]);
    assert!(
        !broken.status.success(),
        "audit verify must fail on an edited log"
    );
    let err = String::from_utf8_lossy(&broken.stderr);
    assert!(err.contains("broken at entry 2"), "{err}");
}

#[test]
fn demo_tells_the_whole_story() {
    let out = Command::new(workspace_bin("taskpass").unwrap())
        .args(["demo", "--output", "json"])
        .output()
        .unwrap();
    let doc = json(&out);
    assert_eq!(doc["ok"], true);
    let steps = doc["steps"].as_array().unwrap();
    assert!(steps.len() >= 8);
    let text = Command::new(workspace_bin("taskpass").unwrap())
        .arg("demo")
        .output()
        .unwrap();
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Introspect: inactive (task_completed)"),
        "{text}"
    );
    assert!(text.contains("chain intact"));
}

#[test]
fn bench_measures_a_real_broker() {
    // A small run: the figures are not checked (timing is for benchmarks), their shape is.
    let out = Command::new(workspace_bin("taskpass").unwrap())
        .args([
            "bench",
            "--requests",
            "300",
            "--concurrency",
            "8",
            "--connections",
            "2",
            "--rounds",
            "3",
            "--sign-seconds",
            "0.1",
            "--rate",
            "1000",
            "--mtls",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    let doc = json(&out);
    // Under mTLS attestation too, and its rate as a ratio of the OIDC one.
    assert_eq!(doc["issue_token_mtls"]["errors"], 0);
    assert!(doc["ratio_mtls_to_oidc"].as_f64().unwrap() > 0.0);
    // The paced run starts call i at i/1000 s: 300 calls cannot finish sooner than 0.299 s.
    let paced = &doc["issue_token_paced"];
    assert_eq!(paced["offered_rate"], 1000.0);
    assert_eq!(paced["errors"], 0);
    let rate = paced["rate"].as_f64().unwrap();
    assert!(
        rate > 0.0 && rate <= 1000.0 * 300.0 / 299.0,
        "paced at {rate}/s"
    );
    let rounds = doc["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    let p99s: Vec<f64> = rounds
        .iter()
        .map(|r| r["issue_token"]["p99_ms"].as_f64().unwrap())
        .collect();
    let reported = doc["issue_token"]["p99_ms"].as_f64().unwrap();
    let mut sorted = p99s.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(reported, sorted[1], "the median round is reported");
    for r in rounds {
        assert_eq!(r["issue_token"]["errors"], 0);
        assert_eq!(r["echo"]["errors"], 0);
        assert!(r["issue_token"]["rate"].as_f64().unwrap() > 0.0);
        assert!(
            r["issue_token"]["broker_cpu_us_per_request"]
                .as_f64()
                .unwrap()
                > 0.0
        );
    }
    assert!(doc["raw_sign_per_core"].as_f64().unwrap() > 0.0);
    assert!(doc["store_commits"].as_f64().unwrap() > 0.0);
    assert!(doc["broker_peak_rss_mb"].as_u64().unwrap() > 0);
}

#[test]
fn bench_refuses_a_bad_rate() {
    for rate in ["-5", "NaN", "inf"] {
        let out = Command::new(workspace_bin("taskpass").unwrap())
            .args(["bench", &format!("--rate={rate}")])
            .output()
            .unwrap();
        assert!(!out.status.success(), "--rate {rate} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--rate"), "{err}");
    }
}

#[tokio::test]
async fn operator_roles_are_permission_bundles() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let issuer = DevIssuer::start().await.unwrap();
    let broker = TestBroker::start(&issuer).await.unwrap();
    let dir = broker.data_dir().to_path_buf();
    let out = tempfile::tempdir().unwrap();
    let outs = out.path().to_str().unwrap();
    for (name, role) in [("alice", "auditor"), ("bob", "approver")] {
        let r = json(&taskpass(
            &dir,
            &[
                "operator", "issue", name, "--role", role, "--out", outs, "--output", "json",
            ],
        ));
        assert_eq!(
            r["operator"],
            format!("spiffe://example.org/operator/{role}/{name}")
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.path().join("alice-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let bad_role = taskpass(
        &dir,
        &["operator", "issue", "eve", "--role", "root", "--out", outs],
    );
    assert!(!bad_role.status.success());

    let as_op = |name: &str, args: &[&str]| {
        Command::new(workspace_bin("taskpass").unwrap())
            .args(["--server", &broker.grpc_url, "--ca"])
            .arg(dir.join("ca.pem"))
            .arg("--cert")
            .arg(out.path().join(format!("{name}.pem")))
            .arg("--key")
            .arg(out.path().join(format!("{name}-key.pem")))
            .args(args)
            .output()
            .unwrap()
    };
    // The auditor reads everything and changes nothing.
    assert!(as_op("alice", &["agent", "list"]).status.success());
    assert!(as_op("alice", &["audit", "verify"]).status.success());
    let denied = as_op(
        "alice",
        &["task", "revoke", "task_01HZZZZZZZZZZZZZZZZZZZZZZZ"],
    );
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(
        err.contains("PERMISSION_DENIED") && err.contains("lacks permission tasks:revoke"),
        "{err}"
    );
    let denied = as_op("alice", &["agent", "offboard", "anyone"]);
    assert!(String::from_utf8_lossy(&denied.stderr).contains("lacks permission agents:state"));
    // The approver may not read the audit log.
    let denied = as_op("bob", &["audit", "tail"]);
    assert!(String::from_utf8_lossy(&denied.stderr).contains("lacks permission audit:read"));

    // Each refusal is a decision in the audit log, naming the operator and the permission.
    let tail = json(&taskpass(&dir, &["audit", "tail", "--output", "json"]));
    let refusals: Vec<&serde_json::Value> = tail
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "operator.authorize" && e["outcome"] == "deny")
        .collect();
    assert_eq!(refusals.len(), 3, "{tail}");
    assert_eq!(
        refusals[0]["actor"],
        "spiffe://example.org/operator/auditor/alice"
    );
    assert_eq!(refusals[2]["detail"], "rpc=TailAudit permission=audit:read");

    // A certificate from another CA does not get through the TLS handshake.
    let other = taskpass_testkit::TestCa::new("stranger").unwrap();
    let (cert, key) = other.server_cert(&["localhost"], &[]).unwrap();
    std::fs::write(out.path().join("mallory.pem"), cert).unwrap();
    std::fs::write(out.path().join("mallory-key.pem"), key).unwrap();
    let refused = as_op("mallory", &["agent", "list"]);
    assert!(!refused.status.success());
}

/// Hostile request strings reach the audit log only canonical or escaped: ids that are not
/// canonical ULIDs are refused (they would alias a real task), and `audit tail` prints no
/// control character, so it cannot be made to clear the screen or print a forged line.
#[tokio::test]
async fn audit_holds_canonical_ids_and_tail_prints_no_escapes() {
    let Env {
        issuer,
        broker,
        mut admin,
        mut agent,
        ..
    } = Env::start().await.unwrap();
    register(&mut admin, &issuer, "esc-bot", "sub-esc")
        .await
        .unwrap();
    let task = start(&mut agent, &issuer, "sub-esc", &["read"])
        .await
        .unwrap();
    let rest = &task.task_id["task_".len()..];
    // Under the 64-byte id limit, so that it is refused as malformed, not as too long.
    let forged = "task_\u{1b}[2J\u{1b}[H\n#1 0 allow issue_token x reason=forged";
    for alias in [
        format!("task_{}", rest.to_lowercase()),
        format!("task_{}", rest.replacen('0', "O", 1)),
        format!("task_{}{}", char::from(rest.as_bytes()[0] + 8), &rest[1..]),
        forged.to_owned(),
    ] {
        for code in [
            agent
                .get_task(taskpass_proto::v1::GetTaskRequest {
                    attestation: att(&issuer, "sub-esc"),
                    task_id: alias.clone(),
                })
                .await
                .unwrap_err()
                .code(),
            issue(&mut agent, &issuer, "sub-esc", &alias)
                .await
                .unwrap_err()
                .code(),
        ] {
            assert_eq!(code, tonic::Code::InvalidArgument, "{alias:?}");
        }
    }
    // The real id still works; its aliases changed nothing.
    issue(&mut agent, &issuer, "sub-esc", &task.task_id)
        .await
        .unwrap();
    let tail = tallied(&mut admin, |e| e.reason == "malformed_request")
        .await
        .unwrap();
    for e in &tail {
        assert!(
            e.task_id.is_empty() || e.task_id == task.task_id,
            "only canonical ids are stored: {e:?}"
        );
    }
    let out = taskpass(broker.data_dir(), &["audit", "tail"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("malformed_request"), "{text}");
    for line in text.lines() {
        assert!(
            line.starts_with('#'),
            "a line that is not an entry: {line:?}"
        );
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }
    assert!(!text.contains("reason=forged\n"), "{text}");
}

#[test]
fn soak_reports_memory_and_store_size() {
    // A short soak: two samples of the series, every cycle answered.
    let out = Command::new(workspace_bin("taskpass").unwrap())
        .args([
            "bench",
            "--soak",
            "21",
            "--soak-rate",
            "20",
            "--concurrency",
            "4",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    let doc = json(&out);
    let series = doc["series"].as_array().unwrap();
    assert!(series.len() >= 2, "{doc}");
    let last = series.last().unwrap();
    assert!(last["broker_rss_mb"].as_f64().unwrap() > 1.0, "{doc}");
    assert!(last["store_mb"].as_f64().unwrap() > 0.0, "{doc}");
    assert!(last["tasks"].as_u64().unwrap() >= 100, "{doc}");
    assert_eq!(last["errors"], 0, "{doc}");
    assert!(last["revoked"].as_u64().unwrap() > 0, "{doc}");
    assert!(
        last["tokens"].as_u64().unwrap() >= 3 * last["completed"].as_u64().unwrap(),
        "{doc}"
    );
}

/// `agent register --x509`, `agent cert issue|list|revoke`: the key is made by the CLI and
/// written 0600, and the certificate attests over mTLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_certificate_verbs() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let issuer = DevIssuer::start().await.unwrap();
    let broker = TestBroker::start(&issuer).await.unwrap();
    let dir = broker.data_dir().to_path_buf();
    let id = "spiffe://example.org/agent/cert-cli";
    let reg = json(&taskpass(
        &dir,
        &[
            "agent",
            "register",
            "cert-cli",
            "--owner",
            "ops",
            "--purpose",
            "cli test",
            "--x509",
            id,
            "--audience",
            API,
            "--scope",
            "read",
            "--output",
            "json",
        ],
    ));
    assert_eq!(reg["x509"][0], id);
    assert_eq!(reg["oidc"].as_array().unwrap().len(), 0);

    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().to_str().unwrap();
    let issued = json(&taskpass(
        &dir,
        &[
            "agent", "cert", "issue", "cert-cli", "--out", out, "--hours", "2", "--output", "json",
        ],
    ));
    assert_eq!(issued["spiffe_id"], id);
    let serial = issued["serial"].as_str().unwrap().to_owned();
    let key_path = out_dir.path().join("cert-cli-key.pem");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the key file is private");
    }
    let cert = std::fs::read_to_string(out_dir.path().join("cert-cli.pem")).unwrap();
    let key = std::fs::read_to_string(&key_path).unwrap();
    let ch = taskpass_proto::connect(&broker.grpc_url, &broker.ca_pem, Some((&cert, &key)))
        .await
        .unwrap();
    let mut agent = taskpass_proto::v1::agent_service_client::AgentServiceClient::new(ch);
    let mtls = || {
        Some(taskpass_proto::v1::Attestation {
            method: Some(taskpass_proto::v1::attestation::Method::Mtls(
                taskpass_proto::v1::MtlsAttestation {},
            )),
        })
    };
    let task = agent
        .start_task(taskpass_proto::v1::StartTaskRequest {
            attestation: mtls(),
            purpose: "cli cert".into(),
            audiences: vec![API.into()],
            scopes: vec!["read".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(task.agent_id, id);

    let list = json(&taskpass(
        &dir,
        &["agent", "cert", "list", "cert-cli", "--output", "json"],
    ));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["serial"], serial.as_str());
    let text = taskpass(
        &dir,
        &["agent", "cert", "revoke", &serial, "--reason", "rotated"],
    );
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let list = json(&taskpass(
        &dir,
        &["agent", "cert", "list", "cert-cli", "--output", "json"],
    ));
    assert_eq!(list[0]["revoked"], true);
    let again = agent
        .get_task(taskpass_proto::v1::GetTaskRequest {
            attestation: mtls(),
            task_id: task.task_id,
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::Unauthenticated);
    // An unknown serial is a clear error.
    let bad = taskpass(&dir, &["agent", "cert", "revoke", "NOT-HEX"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("lowercase hex"));
}

/// Operator credentials: 30 days by default, never more than 90, listed, revoked by name or
/// serial (refused on the next call); a deleted admin.pem is not replaced on restart, and
/// `taskpassd --recover-admin` makes a new admin while the broker is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_lifecycle() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let issuer = DevIssuer::start().await.unwrap();
    let mut broker = TestBroker::start(&issuer).await.unwrap();
    let dir = broker.data_dir().to_path_buf();
    let out = tempfile::tempdir().unwrap();
    let outs = out.path().to_str().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    let carol = json(&taskpass(
        &dir,
        &[
            "operator", "issue", "carol", "--role", "auditor", "--out", outs, "--output", "json",
        ],
    ));
    let days = (carol["expires_at"].as_i64().unwrap() - now) / 86_400;
    assert!((29..=30).contains(&days), "30 days by default, got {days}");
    let too_long = taskpass(
        &dir,
        &[
            "operator", "issue", "dave", "--role", "admin", "--days", "91", "--out", outs,
        ],
    );
    assert!(!too_long.status.success(), "more than 90 days is refused");

    let list = json(&taskpass(&dir, &["operator", "list", "--output", "json"]));
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["operator"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"bootstrap") && names.contains(&"carol"),
        "{names:?}"
    );

    let as_op = |url: &str, name: &str, args: &[&str]| {
        Command::new(workspace_bin("taskpass").unwrap())
            .args(["--server", url, "--ca"])
            .arg(dir.join("ca.pem"))
            .arg("--cert")
            .arg(out.path().join(format!("{name}.pem")))
            .arg("--key")
            .arg(out.path().join(format!("{name}-key.pem")))
            .args(args)
            .output()
            .unwrap()
    };
    assert!(
        as_op(&broker.grpc_url, "carol", &["agent", "list"])
            .status
            .success()
    );
    // An auditor sees who has access, and may not grant it.
    assert!(
        as_op(&broker.grpc_url, "carol", &["operator", "list"])
            .status
            .success()
    );
    let denied = as_op(
        &broker.grpc_url,
        "carol",
        &[
            "operator",
            "issue",
            "mallory",
            "--role",
            "admin",
            "--out",
            "/nonexistent",
        ],
    );
    assert!(String::from_utf8_lossy(&denied.stderr).contains("lacks permission operators:write"));
    let revoked = json(&taskpass(
        &dir,
        &[
            "operator",
            "revoke",
            "carol",
            "--reason",
            "left the team",
            "--output",
            "json",
        ],
    ));
    assert_eq!(revoked.as_array().unwrap().len(), 1);
    let refused = as_op(&broker.grpc_url, "carol", &["agent", "list"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("revoked"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let nobody = taskpass(&dir, &["operator", "revoke", "nobody"]);
    assert!(!nobody.status.success());

    // A deleted admin.pem is not silently replaced by a new full admin.
    std::fs::remove_file(dir.join("admin.pem")).unwrap();
    std::fs::remove_file(dir.join("admin-key.pem")).unwrap();
    broker.restart().await.unwrap();
    assert!(!dir.join("admin.pem").exists());
    assert!(!dir.join("admin-key.pem").exists());
    // Re-bootstrap: refused while the broker runs (its store is locked), done once stopped.
    let config = broker.config_path();
    let recover = |out_dir: &Path| {
        Command::new(workspace_bin("taskpassd").unwrap())
            .arg("--config")
            .arg(&config)
            .args(["--recover-admin", "rescue", "--out"])
            .arg(out_dir)
            .output()
            .unwrap()
    };
    let busy = recover(out.path());
    assert!(
        !busy.status.success(),
        "the store is in use by the running broker"
    );
    assert!(broker.terminate().unwrap());
    let done = recover(out.path());
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    broker.restart().await.unwrap();
    let list = as_op(
        &broker.grpc_url,
        "rescue",
        &["operator", "list", "--output", "json"],
    );
    let list = json(&list);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|c| c["operator"] == "rescue" && c["role"] == "admin")
    );
    // The recovery is in the audit log.
    let tail = json(&as_op(
        &broker.grpc_url,
        "rescue",
        &["audit", "tail", "--output", "json"],
    ));
    assert!(
        tail.as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "operator.recover")
    );
}

/// A data dir whose store holds no operator certificate (as one from before they were
/// recorded) keeps its admin: the existing admin.pem is recorded at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_admin_credential_is_recorded_on_upgrade() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let issuer = DevIssuer::start().await.unwrap();
    let mut broker = TestBroker::start(&issuer).await.unwrap();
    let dir = broker.data_dir().to_path_buf();
    assert!(broker.terminate().unwrap());
    std::fs::remove_file(dir.join("store.redb")).unwrap();
    broker.restart().await.unwrap();
    let list = json(&taskpass(&dir, &["operator", "list", "--output", "json"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["operator"], "bootstrap");
}

/// A custom role from `[roles.NAME]` grants what it lists and nothing else; a role the config
/// no longer defines grants nothing (fail closed), though its certificate still authenticates.
#[tokio::test]
async fn custom_roles_come_from_the_config() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let issuer = DevIssuer::start().await.unwrap();
    let roles =
        "[roles.oncall]\npermissions = [\"tasks:read\", \"tasks:revoke\", \"tokens:revoke\"]\n";
    let mut broker = TestBroker::start_with(&issuer, roles).await.unwrap();
    let dir = broker.data_dir().to_path_buf();
    let out = tempfile::tempdir().unwrap();
    let outs = out.path().to_str().unwrap();
    let undefined = taskpass(
        &dir,
        &["operator", "issue", "eve", "--role", "sre", "--out", outs],
    );
    let err = String::from_utf8_lossy(&undefined.stderr);
    assert!(
        err.contains("role \"sre\" is not defined") && err.contains("oncall"),
        "{err}"
    );
    json(&taskpass(
        &dir,
        &[
            "operator", "issue", "olga", "--role", "oncall", "--out", outs, "--output", "json",
        ],
    ));
    let as_olga = |url: &str, args: &[&str]| {
        Command::new(workspace_bin("taskpass").unwrap())
            .args(["--server", url, "--ca"])
            .arg(dir.join("ca.pem"))
            .arg("--cert")
            .arg(out.path().join("olga.pem"))
            .arg("--key")
            .arg(out.path().join("olga-key.pem"))
            .args(args)
            .output()
            .unwrap()
    };
    assert!(
        as_olga(&broker.grpc_url, &["task", "list"])
            .status
            .success()
    );
    let denied = as_olga(&broker.grpc_url, &["agent", "list"]);
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(
        err.contains("role oncall, which lacks permission agents:read"),
        "{err}"
    );

    // The role is dropped from the config: the same certificate now may do nothing.
    let config = std::fs::read_to_string(broker.config_path()).unwrap();
    std::fs::write(broker.config_path(), config.replace(roles, "")).unwrap();
    broker.restart().await.unwrap();
    let denied = as_olga(&broker.grpc_url, &["task", "list"]);
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(
        err.contains("PERMISSION_DENIED")
            && err.contains("does not define")
            && err.contains("permission tasks:read is missing"),
        "{err}"
    );
}
