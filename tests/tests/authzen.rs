#![allow(clippy::unwrap_used)]
//! AuthZEN tool-call authorisation against a real `taskpassd`: a registered validator asks
//! `POST /access/v1/evaluation` (and the batch form) whether the holder of a Taskpass token
//! may call a tool; the policy set decides with the tool, the token's scopes and the call's
//! arguments; an inactive token is a "no"; callers without a validator or operator
//! certificate, other audiences' validators and malformed requests are refused.

use serde_json::{Value, json};
use taskpass_e2e::*;
use taskpass_proto::v1 as pb;
use taskpass_testkit::{DevIssuer, HttpsRequest, TestBroker};

const POLICY: &str = r#"
@id("base") permit (principal, action, resource);

@id("no-force-push")
forbid (principal, action == Taskpass::Action::"CallTool", resource == Taskpass::Tool::"git_push")
when { context.arguments like "*\"force\":true*" };

@id("deletes-need-write")
forbid (principal, action == Taskpass::Action::"CallTool", resource == Taskpass::Tool::"delete_file")
unless { context.scopes.contains("write") };
"#;

async fn post(
    broker: &TestBroker,
    path: &str,
    identity: Option<(&str, &str)>,
    body: &Value,
) -> (u16, Value) {
    let url = format!("{}{path}", broker.http_url);
    let body = body.to_string();
    let a = HttpsRequest {
        method: "POST",
        url: &url,
        ca_pem: &broker.ca_pem,
        identity,
        headers: &[("content-type", "application/json")],
        body: body.as_bytes(),
    }
    .send()
    .await
    .unwrap();
    (
        a.status,
        serde_json::from_str(&a.body).unwrap_or(Value::Null),
    )
}

fn ask(token: &str, tool: &str, arguments: Value) -> Value {
    json!({
        "subject": {"type": "access_token", "id": token},
        "action": {"name": "CallTool"},
        "resource": {"type": "tool", "id": tool},
        "context": {"arguments": arguments},
    })
}

#[tokio::test]
async fn validators_ask_whether_a_tool_call_is_allowed() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let issuer = DevIssuer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("tools.cedar");
    std::fs::write(&policy, POLICY).unwrap();
    let extra = format!("[policy]\nfiles = [\"{}\"]\n", policy.display());
    let broker = TestBroker::start_with(&issuer, &extra).await.unwrap();
    let mut admin = broker.admin().await.unwrap();
    register(&mut admin, &issuer, "coder", "coder")
        .await
        .unwrap();
    let (cert, key) = add_validator(&mut admin, "mcp-git", &[API]).await.unwrap();
    let (other_cert, other_key) =
        add_validator(&mut admin, "elsewhere", &["https://other.example"])
            .await
            .unwrap();
    let mut agent = broker.agent().await.unwrap();
    let reader = start(&mut agent, &issuer, "coder", &["read"])
        .await
        .unwrap();
    let read_token = issue(&mut agent, &issuer, "coder", &reader.task_id)
        .await
        .unwrap()
        .access_token;
    let writer = start(&mut agent, &issuer, "coder", &["read", "write"])
        .await
        .unwrap();
    let write_token = issue(&mut agent, &issuer, "coder", &writer.task_id)
        .await
        .unwrap()
        .access_token;
    let me = Some((cert.as_str(), key.as_str()));
    let eval = "/access/v1/evaluation";

    let (s, a) = post(
        &broker,
        eval,
        me,
        &ask(&read_token, "git_push", json!({"force": false})),
    )
    .await;
    assert_eq!((s, &a["decision"]), (200, &json!(true)), "{a}");
    let (_, a) = post(
        &broker,
        eval,
        me,
        &ask(
            &read_token,
            "git_push",
            json!({"branch": "main", "force": true}),
        ),
    )
    .await;
    assert_eq!(a["decision"], false, "{a}");
    assert_eq!(a["context"]["reason"], "policy_forbids");
    assert_eq!(a["context"]["policies"], json!(["no-force-push"]));
    let (_, a) = post(
        &broker,
        eval,
        me,
        &ask(&read_token, "delete_file", json!({})),
    )
    .await;
    assert_eq!(a["decision"], false, "{a}");
    let (_, a) = post(
        &broker,
        eval,
        me,
        &ask(&write_token, "delete_file", json!({})),
    )
    .await;
    assert_eq!(a["decision"], true, "{a}");

    // The batch form, with the request's parts as defaults and a semantic.
    let batch = json!({
        "subject": {"type": "access_token", "id": read_token},
        "action": {"name": "CallTool"},
        "evaluations": [
            {"resource": {"type": "tool", "id": "git_status"}},
            {"resource": {"type": "tool", "id": "delete_file"}},
            {"resource": {"type": "tool", "id": "git_log"}},
        ],
    });
    let (s, a) = post(&broker, "/access/v1/evaluations", me, &batch).await;
    assert_eq!(s, 200, "{a}");
    let decisions: Vec<&Value> = a["evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["decision"])
        .collect();
    assert_eq!(decisions, [&json!(true), &json!(false), &json!(true)]);
    let mut first_deny = batch.clone();
    first_deny["options"] = json!({"evaluations_semantic": "deny_on_first_deny"});
    let (_, a) = post(&broker, "/access/v1/evaluations", me, &first_deny).await;
    assert_eq!(a["evaluations"].as_array().unwrap().len(), 2, "{a}");

    // The SDK's helper asks the same endpoint.
    let tools =
        taskpass_verify::ToolAuthorizer::new(&broker.http_url, &broker.ca_pem, (&cert, &key))
            .unwrap();
    let d = tools
        .evaluate(&write_token, "delete_file", &json!({}))
        .await
        .unwrap();
    assert!(d.allowed, "{d:?}");
    let d = tools
        .evaluate(&read_token, "git_push", &json!({"force": true}))
        .await
        .unwrap();
    assert!(!d.allowed);
    assert_eq!(
        (d.reason.as_str(), d.policies.as_slice()),
        ("policy_forbids", ["no-force-push".to_owned()].as_slice())
    );
    let req = http::Request::get("/mcp")
        .header("authorization", format!("Bearer {write_token}"))
        .body(())
        .unwrap();
    assert!(
        tools
            .evaluate_request(&req, "git_status", &json!({}))
            .await
            .unwrap()
            .allowed
    );
    let bare = http::Request::get("/mcp").body(()).unwrap();
    assert!(
        tools
            .evaluate_request(&bare, "git_status", &json!({}))
            .await
            .is_err()
    );

    // A completed task's token: "no", whatever the tool.
    agent
        .complete_task(pb::CompleteTaskRequest {
            attestation: att(&issuer, "coder"),
            task_id: reader.task_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (_, a) = post(
        &broker,
        eval,
        me,
        &ask(&read_token, "git_status", json!({})),
    )
    .await;
    assert_eq!(a["decision"], false);
    assert_eq!(a["context"]["reason"], "task_completed");
    let (_, a) = post(
        &broker,
        eval,
        me,
        &ask("not.a.token", "git_status", json!({})),
    )
    .await;
    assert_eq!(a["decision"], false);

    // Who may ask: nobody without a certificate; a validator of other audiences learns nothing.
    let (s, _) = post(
        &broker,
        eval,
        None,
        &ask(&write_token, "git_status", json!({})),
    )
    .await;
    assert_eq!(s, 401);
    let (_, a) = post(
        &broker,
        eval,
        Some((other_cert.as_str(), other_key.as_str())),
        &ask(&write_token, "git_status", json!({})),
    )
    .await;
    assert_eq!(a["decision"], false);
    assert_eq!(a["context"]["reason"], "wrong_audience");

    // Malformed requests are 400s naming what to send.
    for bad in [
        json!({"subject": {"type": "user", "id": "alice"}, "action": {"name": "CallTool"}, "resource": {"type": "tool", "id": "x"}}),
        json!({"subject": {"type": "access_token", "id": write_token}, "action": {"name": "Delete"}, "resource": {"type": "tool", "id": "x"}}),
        json!({"subject": {"type": "access_token", "id": write_token}, "action": {"name": "CallTool"}, "resource": {"type": "file", "id": "x"}}),
        json!({"subject": {"type": "access_token", "id": write_token}, "action": {"name": "CallTool"}, "resource": {"type": "tool", "id": ""}}),
        json!({"subject": {"type": "access_token", "id": write_token}, "action": {"name": "CallTool"}, "resource": {"type": "tool", "id": "x"}, "context": {"arguments": [1]}}),
        json!({"subject": {"type": "access_token", "id": write_token}, "action": {"name": "CallTool"}, "resource": {"type": "tool", "id": "x"}, "surprise": 1}),
        json!({"action": {"name": "CallTool"}}),
    ] {
        let (s, a) = post(&broker, eval, me, &bad).await;
        assert_eq!(s, 400, "{bad} -> {a}");
    }
    let many = json!({"subject": {"type": "access_token", "id": write_token}, "action": {"name": "CallTool"},
                      "evaluations": vec![json!({"resource": {"type": "tool", "id": "x"}}); 65]});
    let (s, _) = post(&broker, "/access/v1/evaluations", me, &many).await;
    assert_eq!(s, 400);

    // Each evaluation is a decision in the audit log.
    let tail = admin
        .tail_audit(pb::TailAuditRequest { limit: 10_000 })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let evaluations: Vec<&pb::AuditEntry> = tail
        .iter()
        .filter(|e| e.action == "authzen.evaluate")
        .collect();
    assert!(evaluations.len() >= 10, "{}", evaluations.len());
    assert!(
        evaluations
            .iter()
            .any(|e| e.outcome == "deny" && e.reason.contains("no-force-push"))
    );
}
