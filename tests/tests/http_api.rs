//! AgentService over HTTPS and JSON against the real broker: start, get, issue and complete
//! with the same semantics and errors as gRPC, attested by OIDC bearer or by the client
//! certificate, failures recorded, and bad input refused with the right code, changing nothing.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use taskpass_e2e::*;
use taskpass_proto::v1 as pb;
use taskpass_testkit::{ATTESTATION_AUDIENCE, BROKER_ISSUER, HttpsRequest};

struct Api {
    base: String,
    ca: String,
}

impl Api {
    fn of(env: &Env) -> Self {
        Self {
            base: env.broker.http_url.clone(),
            ca: env.broker.ca_pem.clone(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        identity: Option<(&str, &str)>,
        body: &str,
    ) -> (u16, Value) {
        let auth = bearer.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        let a = HttpsRequest {
            method,
            url: &format!("{}{path}", self.base),
            ca_pem: &self.ca,
            identity,
            headers: &headers,
            body: body.as_bytes(),
        }
        .send()
        .await
        .unwrap();
        assert_eq!(
            a.headers.get("content-type").unwrap(),
            "application/json",
            "{a:?}"
        );
        let v: Value = serde_json::from_str(&a.body).unwrap();
        if a.status != 200 {
            assert!(
                v["error"]["code"].is_string() && v["error"]["message"].is_string(),
                "{v}"
            );
        }
        (a.status, v)
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn the_json_api_does_what_grpc_does() {
    let mut env = Env::start().await.unwrap();
    register(&mut env.admin, &env.issuer, "json-bot", "sub-json")
        .await
        .unwrap();
    let api = Api::of(&env);
    let att = env.issuer.token("sub-json", ATTESTATION_AUDIENCE, 300);
    let (status, task) = api
        .call(
            "POST",
            "/v1/tasks",
            Some(&att),
            None,
            &json!({"purpose": "triage", "audiences": [API], "scopes": ["read"]}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{task}");
    assert_eq!(task["state"], "open");
    let id = task["task_id"].as_str().unwrap().to_owned();
    let (status, got) = api
        .call("GET", &format!("/v1/tasks/{id}"), Some(&att), None, "")
        .await;
    assert_eq!((status, &got["task_id"]), (200, &task["task_id"]), "{got}");
    let (status, t) = api
        .call(
            "POST",
            &format!("/v1/tasks/{id}/tokens"),
            Some(&att),
            None,
            &json!({"audience": API}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["scopes"], json!(["read"]));
    let token = t["access_token"].as_str().unwrap().to_owned();
    let claims = taskpass_core::jwt::SignedToken::parse(&token)
        .unwrap()
        .claims()
        .unwrap();
    assert_eq!(
        (claims.iss.as_str(), claims.txn.as_str()),
        (BROKER_ISSUER, id.as_str())
    );

    // Errors carry the gRPC code and message.
    let (status, e) = api
        .call(
            "POST",
            &format!("/v1/tasks/{id}/tokens"),
            Some(&att),
            None,
            &json!({"audience": "https://db.example"}).to_string(),
        )
        .await;
    assert_eq!((status, code(&e)), (403, "PERMISSION_DENIED"), "{e}");
    let (status, e) = api
        .call(
            "GET",
            "/v1/tasks/task_01HZY8W4C8V5N6J6R0B1B5X2QK",
            Some(&att),
            None,
            "",
        )
        .await;
    assert_eq!((status, code(&e)), (404, "NOT_FOUND"), "{e}");

    // Complete, recording a failure: the audit says so and the token is revoked.
    let (status, done) = api
        .call(
            "POST",
            &format!("/v1/tasks/{id}/complete"),
            Some(&att),
            None,
            &json!({"failed": true, "failure": "ValueError"}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["task"]["state"], "completed");
    assert_eq!(done["revoked_tokens"], 1);
    let i = env
        .val
        .introspect(pb::IntrospectRequest { token })
        .await
        .unwrap()
        .into_inner();
    assert!(!i.active);
    let audit = env
        .admin
        .tail_audit(pb::TailAuditRequest { limit: 10 })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let end = audit
        .iter()
        .find(|a| a.action == "complete_task" && a.task_id == id)
        .unwrap();
    assert_eq!(end.reason, "agent_failed");
    assert!(end.detail.contains("failure=\"ValueError\""), "{end:?}");
    let (status, e) = api
        .call(
            "POST",
            &format!("/v1/tasks/{id}/complete"),
            Some(&att),
            None,
            "",
        )
        .await;
    assert_eq!((status, code(&e)), (400, "FAILED_PRECONDITION"), "{e}");
}

#[tokio::test]
async fn the_client_certificate_attests_without_a_header() {
    let mut env = Env::start().await.unwrap();
    let (cert, key) = certified_agent(&mut env.admin, "json-mtls").await.unwrap();
    let api = Api::of(&env);
    let id = Some((cert.certificate_pem.as_str(), key.as_str()));
    let (status, task) = api
        .call(
            "POST",
            "/v1/tasks",
            None,
            id,
            &json!({"purpose": "p", "audiences": [API], "scopes": ["read"]}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{task}");
    let path = format!("/v1/tasks/{}/tokens", task["task_id"].as_str().unwrap());
    let (status, t) = api
        .call(
            "POST",
            &path,
            None,
            id,
            &json!({"audience": API}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{t}");
    let claims = taskpass_core::jwt::SignedToken::parse(t["access_token"].as_str().unwrap())
        .unwrap()
        .claims()
        .unwrap();
    assert!(claims.cnf.is_some(), "bound to the certificate");
    // Neither a header nor a certificate.
    let (status, e) = api
        .call(
            "POST",
            &path,
            None,
            None,
            &json!({"audience": API}).to_string(),
        )
        .await;
    assert_eq!((status, code(&e)), (401, "UNAUTHENTICATED"), "{e}");
}

#[tokio::test]
async fn bad_json_calls_are_refused_and_change_nothing() {
    let mut env = Env::start().await.unwrap();
    register(&mut env.admin, &env.issuer, "json-bad", "sub-jb")
        .await
        .unwrap();
    let api = Api::of(&env);
    let att = env.issuer.token("sub-jb", ATTESTATION_AUDIENCE, 300);
    let expired = env.issuer.token("sub-jb", ATTESTATION_AUDIENCE, -120);
    let good = json!({"purpose": "p", "audiences": [API], "scopes": ["read"]}).to_string();
    let big = json!({"purpose": "x".repeat(70 * 1024), "audiences": [API]}).to_string();
    let cases: Vec<(&str, Option<&str>, String, u16, &str)> = vec![
        ("no attestation", None, good.clone(), 401, "UNAUTHENTICATED"),
        (
            "expired attestation",
            Some(&expired),
            good.clone(),
            401,
            "UNAUTHENTICATED",
        ),
        (
            "garbage attestation",
            Some("garbage"),
            good.clone(),
            401,
            "UNAUTHENTICATED",
        ),
        ("not JSON", Some(&att), "{".into(), 400, "INVALID_ARGUMENT"),
        (
            "unknown member",
            Some(&att),
            json!({"purpose": "p", "audiences": [API], "admin": true}).to_string(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "missing member",
            Some(&att),
            json!({"audiences": [API]}).to_string(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "wrong type",
            Some(&att),
            json!({"purpose": 1, "audiences": [API]}).to_string(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "scope escalation",
            Some(&att),
            json!({"purpose": "p", "audiences": [API], "scopes": ["admin"]}).to_string(),
            403,
            "PERMISSION_DENIED",
        ),
        ("oversized", Some(&att), big, 413, "RESOURCE_EXHAUSTED"),
    ];
    for (name, bearer, body, status, c) in &cases {
        let (got, e) = api.call("POST", "/v1/tasks", *bearer, None, body).await;
        assert_eq!((got, code(&e)), (*status, *c), "{name}: {e}");
    }
    let tasks = env
        .admin
        .list_tasks(pb::ListTasksRequest {
            agent: "json-bad".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(tasks.is_empty(), "{tasks:?}");
    let (status, e) = api
        .call("GET", "/v1/tasks/..%2F..%2Fadmin", Some(&att), None, "")
        .await;
    assert_eq!((status, code(&e)), (400, "INVALID_ARGUMENT"), "{e}");
}
