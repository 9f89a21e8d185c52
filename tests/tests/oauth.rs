//! The OAuth 2 token endpoint over real HTTPS: the RFC 8414 metadata, each grant
//! (jwt-bearer, token exchange in an open task and without, client_credentials by client
//! certificate and by JWT-SVID assertion), DPoP-bound tokens, and every bad input answered
//! with its RFC 6749 error, JSON, never cached, and changing nothing.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use taskpass_e2e::*;
use taskpass_proto::v1 as pb;
use taskpass_testkit::{ATTESTATION_AUDIENCE, BROKER_ISSUER, HttpAnswer, HttpsRequest};
use taskpass_verify::{KeySet, Verifier};
use tonic::Code;

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const JWT_SPIFFE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe";

fn form(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{k}={}", pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn pct(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Endpoint {
    url: String,
    ca_pem: String,
}

impl Endpoint {
    fn of(env: &Env) -> Self {
        Self {
            url: format!("{}/oauth/token", env.broker.http_url),
            ca_pem: env.broker.ca_pem.clone(),
        }
    }

    async fn post_raw(
        &self,
        body: &[u8],
        headers: &[(&str, &str)],
        identity: Option<(&str, &str)>,
    ) -> HttpAnswer {
        HttpsRequest {
            method: "POST",
            url: &self.url,
            ca_pem: &self.ca_pem,
            identity,
            headers,
            body,
        }
        .send()
        .await
        .unwrap()
    }

    async fn post(&self, params: &[(&str, &str)]) -> (u16, Value) {
        let a = self
            .post_raw(
                form(params).as_bytes(),
                &[("content-type", "application/x-www-form-urlencoded")],
                None,
            )
            .await;
        answer(a)
    }
}

/// Status and JSON body; every answer is JSON and never cached.
fn answer(a: HttpAnswer) -> (u16, Value) {
    assert_eq!(
        a.headers.get("content-type").unwrap(),
        "application/json",
        "{a:?}"
    );
    assert_eq!(a.headers.get("cache-control").unwrap(), "no-store", "{a:?}");
    if a.status == 401 {
        assert!(a.headers.contains_key("www-authenticate"), "{a:?}");
    }
    let v: Value = serde_json::from_str(&a.body).unwrap();
    if a.status != 200 {
        assert!(
            v["error"].is_string() && v["error_description"].is_string(),
            "{v}"
        );
    }
    (a.status, v)
}

async fn keys(env: &Env) -> KeySet {
    let (_, jwks) = taskpass_testkit::https_get(
        &format!("{}/.well-known/jwks.json", env.broker.http_url),
        &env.broker.ca_pem,
    )
    .await
    .unwrap();
    KeySet::from_json(&jwks).unwrap()
}

#[tokio::test]
async fn the_metadata_advertises_the_token_endpoint() {
    let env = Env::start().await.unwrap();
    for path in ["/.well-known/oauth-authorization-server"] {
        let (status, body) = taskpass_testkit::https_get(
            &format!("{}{path}", env.broker.http_url),
            &env.broker.ca_pem,
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{path}");
        let m: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(m["issuer"], BROKER_ISSUER);
        assert_eq!(m["token_endpoint"], format!("{BROKER_ISSUER}/oauth/token"));
        let grants: Vec<&str> = m["grant_types_supported"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(grants, [JWT_BEARER, TOKEN_EXCHANGE, "client_credentials"]);
        let auth = m["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap();
        assert!(auth.contains(&"tls_client_auth".into()), "{m}");
        assert!(auth.contains(&"spiffe_jwt".into()), "{m}");
        assert!(
            m["dpop_signing_alg_values_supported"]
                .as_array()
                .unwrap()
                .contains(&"ES256".into())
        );
    }
    // Path insertion names an issuer with that path; this one has none.
    let (status, _) = taskpass_testkit::https_get(
        &format!(
            "{}/.well-known/oauth-authorization-server/other",
            env.broker.http_url
        ),
        &env.broker.ca_pem,
    )
    .await
    .unwrap();
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_jwt_bearer_grant_opens_an_implicit_task_for_one_token() {
    let mut env = Env::start().await.unwrap();
    register(&mut env.admin, &env.issuer, "oauth-bot", "sub-oauth")
        .await
        .unwrap();
    let ep = Endpoint::of(&env);
    let assertion = env.issuer.token("sub-oauth", ATTESTATION_AUDIENCE, 300);
    let (status, t) = ep
        .post(&[
            ("grant_type", JWT_BEARER),
            ("assertion", &assertion),
            ("resource", API),
            ("scope", "read"),
        ])
        .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["scope"], "read");
    let expires_in = t["expires_in"].as_i64().unwrap();
    assert!(expires_in > 0 && expires_in <= 600, "{t}");
    let token = t["access_token"].as_str().unwrap();
    let v = Verifier::new(BROKER_ISSUER, keys(&env).await);
    let claims = v.verify(token, API).unwrap();
    assert_eq!(claims.task_id, t["task_id"]);
    assert_eq!(claims.token_id, t["token_id"]);
    assert_eq!(claims.scopes, ["read"]);

    // The implicit task: visible to the agent, its deadline the token's expiry, closed to
    // any other token.
    let task = env
        .agent
        .get_task(pb::GetTaskRequest {
            attestation: att(&env.issuer, "sub-oauth"),
            task_id: claims.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert!(task.implicit);
    assert_eq!(task.expires_at, claims.expires_at);
    assert_eq!(task.audiences, [API]);
    let e = env
        .agent
        .issue_token(pb::IssueTokenRequest {
            attestation: att(&env.issuer, "sub-oauth"),
            task_id: claims.task_id.clone(),
            audience: API.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("token endpoint"), "{e:?}");
    let (status, e) = ep
        .post(&[
            ("grant_type", JWT_BEARER),
            ("assertion", &assertion),
            ("resource", API),
            ("task_id", &claims.task_id),
        ])
        .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("invalid_grant")),
        "{e}"
    );

    // Audited as StartTask and IssueToken are, and revocable as any task.
    let audit = env
        .admin
        .tail_audit(pb::TailAuditRequest { limit: 20 })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let ours: Vec<_> = audit
        .iter()
        .filter(|a| a.task_id == claims.task_id)
        .collect();
    assert!(
        ours.iter()
            .any(|a| a.action == "start_task" && a.detail.contains("implicit=true")),
        "{ours:?}"
    );
    assert!(
        ours.iter().any(|a| a.action == "issue_token"
            && a.token_id == claims.token_id
            && a.detail
                .contains("grant=urn:ietf:params:oauth:grant-type:jwt-bearer")),
        "{ours:?}"
    );
    env.admin
        .revoke_task(pb::RevokeTaskRequest {
            task_id: claims.task_id.clone(),
            reason: "test".into(),
        })
        .await
        .unwrap();
    let i = env
        .val
        .introspect(pb::IntrospectRequest {
            token: token.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!i.active, "{i:?}");
}

#[tokio::test]
async fn token_exchange_mints_in_an_open_task_or_an_implicit_one() {
    let mut env = Env::start().await.unwrap();
    register(&mut env.admin, &env.issuer, "tx-bot", "sub-tx")
        .await
        .unwrap();
    let task = start(&mut env.agent, &env.issuer, "sub-tx", &["read", "write"])
        .await
        .unwrap();
    let ep = Endpoint::of(&env);
    let subject = env.issuer.token("sub-tx", ATTESTATION_AUDIENCE, 300);
    let (status, t) = ep
        .post(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", &subject),
            ("subject_token_type", JWT_TYPE),
            ("resource", API),
            ("task_id", &task.task_id),
        ])
        .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(
        t["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(t["task_id"], task.task_id.as_str());
    // No scope asked: the task's.
    assert_eq!(t["scope"], "read write");
    // The task completes: the exchanged token goes with it.
    env.agent
        .complete_task(pb::CompleteTaskRequest {
            attestation: att(&env.issuer, "sub-tx"),
            task_id: task.task_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let i = env
        .val
        .introspect(pb::IntrospectRequest {
            token: t["access_token"].as_str().unwrap().into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!i.active);
    assert_eq!(i.inactive_reason, "task_completed");
    // Into the completed task: refused.
    let (status, e) = ep
        .post(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", &subject),
            ("subject_token_type", JWT_TYPE),
            ("resource", API),
            ("task_id", &task.task_id),
        ])
        .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("invalid_grant")),
        "{e}"
    );
    // Without task_id: an implicit task, with the audience parameter of RFC 8693.
    let (status, t) = ep
        .post(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", &subject),
            ("subject_token_type", JWT_TYPE),
            ("audience", API),
            ("scope", "write"),
        ])
        .await;
    assert_eq!(status, 200, "{t}");
    assert_ne!(t["task_id"], task.task_id.as_str());
    // Acting for a user is a policy decision this broker does not enable yet.
    let (status, e) = ep
        .post(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", "user-token"),
            ("subject_token_type", JWT_TYPE),
            ("actor_token", &subject),
            ("actor_token_type", JWT_TYPE),
            ("resource", API),
            ("scope", "read"),
        ])
        .await;
    // RFC 8693 §2.2.2: a subject or actor token unacceptable by policy is invalid_request.
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("invalid_request")),
        "{e}"
    );
    assert!(
        e["error_description"]
            .as_str()
            .unwrap()
            .contains("delegation"),
        "{e}"
    );
}

#[tokio::test]
async fn client_credentials_by_certificate_binds_the_token_to_it() {
    let mut env = Env::start().await.unwrap();
    let (cert, key) = certified_agent(&mut env.admin, "cc-bot").await.unwrap();
    let ep = Endpoint::of(&env);
    let body = form(&[
        ("grant_type", "client_credentials"),
        ("resource", API),
        ("scope", "read"),
        ("client_id", "cc-bot"),
    ]);
    let headers = [("content-type", "application/x-www-form-urlencoded")];
    let (status, t) = answer(
        ep.post_raw(
            body.as_bytes(),
            &headers,
            Some((&cert.certificate_pem, &key)),
        )
        .await,
    );
    assert_eq!(status, 200, "{t}");
    let token = t["access_token"].as_str().unwrap();
    let claims = taskpass_core::jwt::SignedToken::parse(token)
        .unwrap()
        .claims()
        .unwrap();
    assert!(claims.cnf.is_some(), "bound to the certificate");
    let v = Verifier::new(BROKER_ISSUER, keys(&env).await);
    assert_eq!(
        v.verify(token, API).unwrap_err(),
        taskpass_verify::VerifyError::ProofRequired
    );
    // Without the certificate: no client authentication at all.
    let (status, e) = answer(ep.post_raw(body.as_bytes(), &headers, None).await);
    assert_eq!(
        (status, e["error"].as_str()),
        (401, Some("invalid_client")),
        "{e}"
    );
    // A client_id that is not the certificate's agent.
    let other = form(&[
        ("grant_type", "client_credentials"),
        ("resource", API),
        ("scope", "read"),
        ("client_id", "someone-else"),
    ]);
    let (status, e) = answer(
        ep.post_raw(
            other.as_bytes(),
            &headers,
            Some((&cert.certificate_pem, &key)),
        )
        .await,
    );
    assert_eq!(
        (status, e["error"].as_str()),
        (401, Some("invalid_client")),
        "{e}"
    );
}

#[tokio::test]
async fn client_credentials_by_jwt_svid_and_dpop_bound_tokens() {
    let mut env = Env::start().await.unwrap();
    register(
        &mut env.admin,
        &env.issuer,
        "svid-bot",
        "spiffe://example.org/ns/a/sa/b",
    )
    .await
    .unwrap();
    let ep = Endpoint::of(&env);
    let svid = env
        .issuer
        .token("spiffe://example.org/ns/a/sa/b", ATTESTATION_AUDIENCE, 300);
    let (status, t) = ep
        .post(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_SPIFFE),
            ("client_assertion", &svid),
            ("resource", API),
            ("scope", "read"),
        ])
        .await;
    assert_eq!(status, 200, "{t}");
    let (status, e) = ep
        .post(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_SPIFFE),
            ("client_assertion", &format!("{svid}x")),
            ("resource", API),
            ("scope", "read"),
        ])
        .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (401, Some("invalid_client")),
        "{e}"
    );

    // DPoP: the proof's key binds the token; a proof is used once, for this endpoint only.
    let key = DpopKey::new();
    let htu = format!("{BROKER_ISSUER}/oauth/token");
    let body = form(&[
        ("grant_type", JWT_BEARER),
        ("assertion", &svid),
        ("resource", API),
        ("scope", "read"),
    ]);
    let proof = key.proof("POST", &htu, None, "p-1");
    let headers = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("dpop", proof.as_str()),
    ];
    let (status, t) = answer(ep.post_raw(body.as_bytes(), &headers, None).await);
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["token_type"], "DPoP");
    let claims = taskpass_core::jwt::SignedToken::parse(t["access_token"].as_str().unwrap())
        .unwrap()
        .claims()
        .unwrap();
    assert_eq!(
        claims.cnf,
        Some(taskpass_core::Confirmation::Key(key.jkt()))
    );
    let (status, e) = answer(ep.post_raw(body.as_bytes(), &headers, None).await);
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("invalid_dpop_proof")),
        "replayed: {e}"
    );
    for bad in [
        key.proof("POST", "https://elsewhere.example/oauth/token", None, "p-2"),
        key.proof("GET", &htu, None, "p-3"),
        "not-a-proof".into(),
    ] {
        let headers = [
            ("content-type", "application/x-www-form-urlencoded"),
            ("dpop", bad.as_str()),
        ];
        let (status, e) = answer(ep.post_raw(body.as_bytes(), &headers, None).await);
        assert_eq!(
            (status, e["error"].as_str()),
            (400, Some("invalid_dpop_proof")),
            "{e}"
        );
    }
}

#[tokio::test]
async fn bad_requests_get_their_rfc_6749_error_and_change_nothing() {
    let mut env = Env::start().await.unwrap();
    register(&mut env.admin, &env.issuer, "bad-bot", "sub-bad")
        .await
        .unwrap();
    register(&mut env.admin, &env.issuer, "other-bot", "sub-other")
        .await
        .unwrap();
    let others = start(&mut env.agent, &env.issuer, "sub-other", &["read"])
        .await
        .unwrap();
    let before = env
        .admin
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tokens
        .len();
    let ep = Endpoint::of(&env);
    let good = env.issuer.token("sub-bad", ATTESTATION_AUDIENCE, 300);
    let expired = env.issuer.token("sub-bad", ATTESTATION_AUDIENCE, -120);
    let wrong_aud = env.issuer.token("sub-bad", "someone-else", 300);
    let unknown = env.issuer.token("sub-nobody", ATTESTATION_AUDIENCE, 300);
    let forged = {
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[2] = parts[2].chars().rev().collect();
        parts.join(".")
    };
    let base = |extra: &[(&'static str, &str)]| {
        let mut p: Vec<(&str, String)> = vec![
            ("grant_type", JWT_BEARER.into()),
            ("assertion", good.clone()),
            ("resource", API.into()),
            ("scope", "read".into()),
        ];
        for (k, v) in extra {
            p.retain(|(pk, _)| pk != k);
            if !v.is_empty() {
                p.push((k, (*v).to_owned()));
            }
        }
        p
    };
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "no grant_type",
            base(&[("grant_type", "")]),
            400,
            "invalid_request",
        ),
        (
            "unknown grant",
            base(&[("grant_type", "password")]),
            400,
            "unsupported_grant_type",
        ),
        (
            "no assertion",
            base(&[("assertion", "")]),
            400,
            "invalid_request",
        ),
        (
            "garbage assertion",
            base(&[("assertion", "garbage")]),
            400,
            "invalid_grant",
        ),
        (
            "expired assertion",
            base(&[("assertion", &expired)]),
            400,
            "invalid_grant",
        ),
        (
            "forged assertion",
            base(&[("assertion", &forged)]),
            400,
            "invalid_grant",
        ),
        (
            "assertion for another audience",
            base(&[("assertion", &wrong_aud)]),
            400,
            "invalid_grant",
        ),
        (
            "assertion of no agent",
            base(&[("assertion", &unknown)]),
            400,
            "invalid_grant",
        ),
        (
            "no resource",
            base(&[("resource", "")]),
            400,
            "invalid_target",
        ),
        (
            "resource not allowed",
            base(&[("resource", "https://db.example")]),
            400,
            "invalid_target",
        ),
        (
            "resource with fragment",
            base(&[("resource", "https://api.example#x")]),
            400,
            "invalid_target",
        ),
        (
            "scope escalation",
            base(&[("scope", "read admin")]),
            400,
            "invalid_scope",
        ),
        (
            "no scope, no task",
            base(&[("scope", "")]),
            400,
            "invalid_scope",
        ),
        (
            "malformed scope",
            base(&[("scope", "read \u{1}")]),
            400,
            "invalid_scope",
        ),
        (
            "another agent's task",
            base(&[("task_id", &others.task_id)]),
            400,
            "invalid_grant",
        ),
        (
            "malformed task_id",
            base(&[("task_id", "../x")]),
            400,
            "invalid_request",
        ),
        (
            "token exchange without its type",
            vec![
                ("grant_type", TOKEN_EXCHANGE.into()),
                ("subject_token", good.clone()),
                ("resource", API.into()),
                ("scope", "read".into()),
            ],
            400,
            "invalid_request",
        ),
        (
            "token exchange of an unknown type",
            vec![
                ("grant_type", TOKEN_EXCHANGE.into()),
                ("subject_token", good.clone()),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:saml2".into(),
                ),
                ("resource", API.into()),
                ("scope", "read".into()),
            ],
            400,
            "invalid_request",
        ),
        (
            "private_key_jwt",
            vec![
                ("grant_type", "client_credentials".into()),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ),
                ("client_assertion", good.clone()),
                ("resource", API.into()),
                ("scope", "read".into()),
            ],
            401,
            "invalid_client",
        ),
    ];
    for (name, params, status, error) in &cases {
        let p: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (got, body) = ep.post(&p).await;
        assert_eq!(
            (got, body["error"].as_str().unwrap()),
            (*status, *error),
            "{name}: {body}"
        );
        let d = body["error_description"].as_str().unwrap();
        assert!(
            !d.contains(&good) && !d.contains("eyJ"),
            "{name}: no token in {d}"
        );
    }

    let ct = [("content-type", "application/x-www-form-urlencoded")];
    let once = form(&[
        ("grant_type", JWT_BEARER),
        ("assertion", &good),
        ("resource", API),
        ("scope", "read"),
    ]);
    type RawCase<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, u16, &'a str);
    let raw_cases: Vec<RawCase> = vec![
        (
            "repeated parameter",
            format!("{once}&scope=write"),
            ct.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "two resources",
            format!("{once}&resource=https%3A%2F%2Fother.example"),
            ct.to_vec(),
            400,
            "invalid_target",
        ),
        (
            "JSON body",
            "{}".into(),
            vec![("content-type", "application/json")],
            400,
            "invalid_request",
        ),
        (
            "no content type",
            once.clone(),
            vec![],
            400,
            "invalid_request",
        ),
        (
            "client secret",
            once.clone(),
            vec![ct[0], ("authorization", "Basic YTpi")],
            401,
            "invalid_client",
        ),
        (
            "oversized body",
            format!("{once}&pad={}", "x".repeat(70 * 1024)),
            ct.to_vec(),
            413,
            "invalid_request",
        ),
        (
            "not UTF-8",
            "grant_type=%FF%FE".into(),
            ct.to_vec(),
            400,
            "unsupported_grant_type",
        ),
    ];
    for (name, body, headers, status, error) in &raw_cases {
        let (got, b) = answer(ep.post_raw(body.as_bytes(), headers, None).await);
        assert_eq!(
            (got, b["error"].as_str().unwrap()),
            (*status, *error),
            "{name}: {b}"
        );
    }
    // Nothing was issued, and no task opened for bad-bot.
    let after = env
        .admin
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tokens
        .len();
    assert_eq!(before, after);
    let tasks = env
        .admin
        .list_tasks(pb::ListTasksRequest {
            agent: "bad-bot".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(tasks.is_empty(), "{tasks:?}");
    // And a good request still works.
    let (status, t) = ep
        .post(&[
            ("grant_type", JWT_BEARER),
            ("assertion", &good),
            ("resource", API),
            ("scope", "read"),
        ])
        .await;
    assert_eq!(status, 200, "{t}");
}

#[tokio::test]
async fn the_endpoint_is_rate_limited_like_the_grpc_path() {
    let mut env = Env::start_with(
        "[limits]\nagent_requests_per_second = 1\nagent_burst = 1\nrefusal_audit_interval_seconds = 1\n",
    )
    .await
    .unwrap();
    register(&mut env.admin, &env.issuer, "fast-bot", "sub-fast")
        .await
        .unwrap();
    let ep = Endpoint::of(&env);
    let a = env.issuer.token("sub-fast", ATTESTATION_AUDIENCE, 300);
    let params = [
        ("grant_type", JWT_BEARER),
        ("assertion", a.as_str()),
        ("resource", API),
        ("scope", "read"),
    ];
    let mut limited = None;
    for _ in 0..5 {
        let raw = ep
            .post_raw(
                form(&params).as_bytes(),
                &[("content-type", "application/x-www-form-urlencoded")],
                None,
            )
            .await;
        if raw.status == 429 {
            limited = Some(raw);
            break;
        }
    }
    let raw = limited.expect("never rate limited");
    assert_eq!(raw.headers.get("retry-after").unwrap(), "1");
    let (_, e) = answer(raw);
    assert_eq!(e["error"], "temporarily_unavailable");
    assert!(
        e["error_description"]
            .as_str()
            .unwrap()
            .contains("rate limit"),
        "{e}"
    );
}
