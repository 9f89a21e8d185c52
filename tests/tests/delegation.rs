#![allow(clippy::unwrap_used)]
//! On-behalf-of delegation against a real `taskpassd`: a user's token from a
//! `[[delegation.oidc]]` issuer bounds the task (requested ∩ allow-list ∩ the user's scopes),
//! tokens name the user as `sub` and the agent as `act` with `sub_profile` `ai_agent`; tenant
//! and `may_act` mismatches, expired, forged and wrong-issuer user tokens are refused; the
//! same agent serving two users of two tenants, interleaved, never carries one user's scopes
//! or identity into the other's tokens; the token endpoint takes subject_token + actor_token.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use taskpass_e2e::*;
use taskpass_proto::v1 as pb;
use taskpass_testkit::{DevIssuer, TestBroker, TokenSpec};
use tonic::Code;

const CRM: &str = "https://crm.example";

fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// A user's token from `idp` with extra claims.
fn user_token(idp: &DevIssuer, sub: &str, extra: serde_json::Value, ttl: i64) -> String {
    let mut c = idp.claims(sub, "taskpass", ttl);
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    idp.token_with(TokenSpec {
        claims: c,
        ..TokenSpec::default()
    })
}

struct World {
    issuer: DevIssuer,
    idp: DevIssuer,
    broker: TestBroker,
}

async fn world() -> World {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let issuer = DevIssuer::start().await.unwrap();
    let idp = DevIssuer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap().keep();
    let ca = dir.join("idp-ca.pem");
    idp.write_ca(&ca).unwrap();
    let extra = format!(
        "[[delegation.oidc]]\nissuer = \"{}\"\naudiences = [\"taskpass\"]\nca_file = \"{}\"\n",
        idp.issuer(),
        ca.display()
    );
    let broker = TestBroker::start_with(&issuer, &extra).await.unwrap();
    let mut admin = broker.admin().await.unwrap();
    for (name, subject, tenant) in [("helper", "helper", ""), ("acme-bot", "acme-bot", "acme")] {
        admin
            .register_agent(pb::RegisterAgentRequest {
                agent: Some(pb::Agent {
                    name: name.into(),
                    owner: "team-e2e".into(),
                    purpose: "acts for users".into(),
                    tenant: tenant.into(),
                    oidc: vec![pb::OidcBinding {
                        issuer: issuer.issuer().into(),
                        subject: subject.into(),
                    }],
                    audiences: vec![CRM.into()],
                    scopes: vec!["crm:read".into(), "crm:write".into(), "crm:delete".into()],
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }
    World {
        issuer,
        idp,
        broker,
    }
}

fn start_for(
    w: &World,
    agent: &str,
    scopes: &[&str],
    subject_token: String,
) -> pb::StartTaskRequest {
    pb::StartTaskRequest {
        attestation: att(&w.issuer, agent),
        purpose: "for a user".into(),
        audiences: vec![CRM.into()],
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        max_duration_seconds: 0,
        subject_token,
    }
}

async fn token_for(
    agent: &mut pb::agent_service_client::AgentServiceClient<tonic::transport::Channel>,
    w: &World,
    subject: &str,
    task_id: &str,
) -> serde_json::Value {
    let t = agent
        .issue_token(pb::IssueTokenRequest {
            attestation: att(&w.issuer, subject),
            task_id: task_id.into(),
            audience: CRM.into(),
            scopes: vec![],
            ttl_seconds: 0,
            dpop_jkt: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    claims(&t.access_token)
}

#[tokio::test]
async fn delegation_bounds_tasks_by_the_user() {
    let w = world().await;
    let mut agent = w.broker.agent().await.unwrap();
    let helper_id = "spiffe://example.org/agent/helper";

    // Granted = requested ∩ allow-list ∩ the user's scopes.
    let alice = user_token(
        &w.idp,
        "alice",
        json!({"scope": "crm:read crm:write", "tenant": "acme"}),
        300,
    );
    let task = agent
        .start_task(start_for(&w, "helper", &["crm:read", "crm:delete"], alice))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(task.scopes, ["crm:read"]);
    assert_eq!(task.on_behalf_of, "alice");
    let c = token_for(&mut agent, &w, "helper", &task.task_id).await;
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["client_id"], helper_id);
    assert_eq!(
        c["act"],
        json!({"sub": helper_id, "sub_profile": "ai_agent"})
    );
    assert_eq!(c["scope"], "crm:read");

    // Refusals, each audited and naming its rule.
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "acme-bot",
            user_token(
                &w.idp,
                "bob",
                json!({"scope": "crm:read", "tenant": "globex"}),
                300,
            ),
            "tenant_mismatch",
        ),
        (
            "helper",
            user_token(
                &w.idp,
                "carol",
                json!({"scope": "crm:read", "may_act": {"sub": "spiffe://example.org/agent/other"}}),
                300,
            ),
            "may_act_mismatch",
        ),
        (
            "helper",
            user_token(&w.idp, "dave", json!({"scope": "crm:delete"}), 300),
            "user_lacks_scopes",
        ),
        (
            "helper",
            user_token(&w.idp, "erin", json!({"scope": "crm:read"}), -120),
            "subject_token_refused",
        ),
        // A token from the agents' issuer is no user token.
        (
            "helper",
            w.issuer.token("frank", "taskpass", 300),
            "subject_token_refused",
        ),
        ("helper", "not.a.jwt".into(), "subject_token_refused"),
        (
            "helper",
            w.idp.token_with(TokenSpec {
                claims: w.idp.claims("gina", "taskpass", 300),
                sign_with_foreign_key: true,
                ..TokenSpec::default()
            }),
            "subject_token_refused",
        ),
        (
            "helper",
            user_token(
                &w.idp,
                "hal",
                json!({"scope": "crm:read", "aud": "someone-else"}),
                300,
            ),
            "subject_token_refused",
        ),
    ];
    for (who, token, rule) in cases {
        let e = agent
            .start_task(start_for(&w, who, &["crm:read"], token))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{rule}: {e:?}");
        assert!(e.message().contains(rule), "{rule}: {}", e.message());
    }
    // may_act naming the agent passes.
    let ok = user_token(
        &w.idp,
        "ivy",
        json!({"scope": "crm:read", "may_act": {"sub": helper_id}}),
        300,
    );
    assert!(
        agent
            .start_task(start_for(&w, "helper", &["crm:read"], ok))
            .await
            .is_ok()
    );
}

/// The drift test: one agent, two users of two tenants, their tasks interleaved.
#[tokio::test]
async fn two_users_in_two_tenants_never_drift() {
    let w = world().await;
    let mut agent = w.broker.agent().await.unwrap();
    let users = [
        ("alice", "acme", "crm:read"),
        ("bob", "globex", "crm:write"),
    ];
    let mut open: Vec<(usize, String)> = Vec::new();
    for round in 0..10 {
        for (i, (sub, tenant, scope)) in users.iter().enumerate() {
            let tok = user_token(&w.idp, sub, json!({"scope": scope, "tenant": tenant}), 300);
            let task = agent
                .start_task(start_for(&w, "helper", &["crm:read", "crm:write"], tok))
                .await
                .unwrap()
                .into_inner()
                .task
                .unwrap();
            assert_eq!(task.scopes, [*scope], "round {round}");
            open.push((i, task.task_id));
        }
        // Tokens of every open task, in an order that interleaves the users.
        for (i, task_id) in open.iter().rev() {
            let (sub, _, scope) = users[*i];
            let c = token_for(&mut agent, &w, "helper", task_id).await;
            assert_eq!(c["sub"], sub, "round {round}");
            assert_eq!(c["scope"], scope, "round {round}");
        }
    }
}

#[tokio::test]
async fn the_token_endpoint_takes_a_user_token_and_an_actor_token() {
    let w = world().await;
    let alice = user_token(&w.idp, "alice", json!({"scope": "crm:read"}), 300);
    let form = [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange".to_owned(),
        ),
        ("subject_token", alice),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:jwt".to_owned(),
        ),
        (
            "actor_token",
            w.issuer
                .token("helper", taskpass_testkit::ATTESTATION_AUDIENCE, 300),
        ),
        (
            "actor_token_type",
            "urn:ietf:params:oauth:token-type:jwt".to_owned(),
        ),
        ("resource", CRM.to_owned()),
        ("scope", "crm:read crm:write".to_owned()),
    ];
    let params: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let answer = taskpass_testkit::https_post_form(
        &format!("{}/oauth/token", w.broker.http_url),
        &w.broker.ca_pem,
        &params,
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let doc: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    let c = claims(doc["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["scope"], "crm:read");
    assert_eq!(c["act"]["sub_profile"], "ai_agent");
}
