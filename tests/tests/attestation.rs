#![allow(clippy::unwrap_used)]
//! Every bad attestation is UNAUTHENTICATED (or RESOURCE_EXHAUSTED when too large) and changes
//! nothing, against a real `taskpassd` trusting a real loopback OIDC issuer.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use taskpass_e2e::*;
use taskpass_proto::v1 as pb;
use taskpass_testkit::{ATTESTATION_AUDIENCE, DevIssuer, TestBroker, TokenAlg, TokenSpec};
use tonic::Code;
use tonic::transport::Channel;

type AgentClient = pb::agent_service_client::AgentServiceClient<Channel>;
type AdminClient = pb::admin_service_client::AdminServiceClient<Channel>;

const SUB: &str = "sub-a";

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

/// Standard valid claims for `sub` at `issuer`, with `edit` applied.
fn claims(issuer: &DevIssuer, sub: &str, edit: impl FnOnce(&mut Map<String, Value>)) -> Value {
    let mut c = issuer.claims(sub, ATTESTATION_AUDIENCE, 300);
    edit(c.as_object_mut().unwrap());
    c
}

/// An RS256 token signed by `issuer` with exactly `claims`.
fn signed(issuer: &DevIssuer, claims: Value) -> String {
    issuer.token_with(TokenSpec {
        claims,
        ..TokenSpec::default()
    })
}

/// A valid RS256 token for `sub` with one extra header parameter.
fn with_header(issuer: &DevIssuer, name: &str, value: Value) -> String {
    let mut extra_header = Map::new();
    extra_header.insert(name.into(), value);
    issuer.token_with(TokenSpec {
        claims: issuer.claims(SUB, ATTESTATION_AUDIENCE, 300),
        extra_header,
        ..TokenSpec::default()
    })
}

/// What a refused attestation must not change: the audit log (but for the refusal tally's
/// own entries, which count refusals) and the task list.
async fn snapshot(admin: &mut AdminClient) -> (u64, Vec<pb::Task>) {
    let tasks = admin
        .list_tasks(pb::ListTasksRequest {
            agent: String::new(),
            limit: 1000,
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    (audit_len_without_tallies(admin).await.unwrap(), tasks)
}

fn token_of(attestation: Option<&pb::Attestation>) -> &str {
    match attestation.and_then(|a| a.method.as_ref()) {
        Some(pb::attestation::Method::OidcToken(t)) => t,
        _ => "",
    }
}

/// Asserts that `status` has `code` and leaks no part of `token`.
fn assert_refused(case: &str, status: &tonic::Status, code: Code, token: &str) {
    assert_eq!(status.code(), code, "{case}: {status:?}");
    let msg = status.message();
    assert!(!msg.is_empty(), "{case}: an actionable message is expected");
    if !token.is_empty() {
        assert!(!msg.contains(token), "{case}: the message echoes the token");
        for part in token.split('.').filter(|p| p.len() >= 16) {
            assert!(
                !msg.contains(part),
                "{case}: the message echoes a token segment: {msg}"
            );
        }
    }
}

/// Calls StartTask, IssueToken, GetTask and CompleteTask (on the real `task_id`) with
/// `attestation`; each must fail with `code` and a message containing `fragment`.
async fn refused_everywhere(
    agent: &mut AgentClient,
    case: &str,
    attestation: Option<pb::Attestation>,
    task_id: &str,
    code: Code,
    fragment: &str,
) {
    let token = token_of(attestation.as_ref()).to_owned();
    let s = agent
        .start_task(pb::StartTaskRequest {
            attestation: attestation.clone(),
            purpose: "should never start".into(),
            audiences: vec![API.into()],
            scopes: vec!["read".into()],
            max_duration_seconds: 0,
            subject_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_refused(case, &s, code, &token);
    assert!(
        s.message().contains(fragment),
        "{case}: expected {fragment:?} in {:?}",
        s.message()
    );
    let s = agent
        .issue_token(pb::IssueTokenRequest {
            attestation: attestation.clone(),
            task_id: task_id.into(),
            audience: API.into(),
            scopes: vec![],
            ttl_seconds: 0,
            dpop_jkt: String::new(),
        })
        .await
        .unwrap_err();
    assert_refused(case, &s, code, &token);
    let s = agent
        .get_task(pb::GetTaskRequest {
            attestation: attestation.clone(),
            task_id: task_id.into(),
        })
        .await
        .unwrap_err();
    assert_refused(case, &s, code, &token);
    let s = agent
        .complete_task(pb::CompleteTaskRequest {
            attestation,
            task_id: task_id.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_refused(case, &s, code, &token);
}

/// A read-only call that succeeds only when the attestation is accepted.
async fn accepted(agent: &mut AgentClient, case: &str, token: String, task_id: &str) {
    let r = agent
        .get_task(pb::GetTaskRequest {
            attestation: att_token(token),
            task_id: task_id.into(),
        })
        .await;
    match r {
        Ok(t) => assert_eq!(t.into_inner().task.unwrap().task_id, task_id, "{case}"),
        Err(s) => panic!("{case}: expected acceptance, got {s:?}"),
    }
}

async fn assert_audit_verifies(admin: &mut AdminClient) {
    let v = admin
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "audit chain broken: {v:?}");
}

#[tokio::test]
async fn every_bad_attestation_is_refused_and_changes_nothing() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let issuer = DevIssuer::start().await.unwrap();
    let other = DevIssuer::start().await.unwrap();
    let broker = TestBroker::start(&issuer).await.unwrap();
    let mut admin = broker.admin().await.unwrap();
    let mut agent = broker.agent().await.unwrap();
    register(&mut admin, &issuer, "att-a", SUB).await.unwrap();
    let task = start(&mut agent, &issuer, SUB, &["read"]).await.unwrap();
    let task_id = task.task_id.clone();

    let before = snapshot(&mut admin).await;
    let n = now();
    let valid_header = b64(r#"{"alg":"RS256","typ":"JWT","kid":"rsa-1"}"#);
    let valid_claims = b64(&issuer.claims(SUB, ATTESTATION_AUDIENCE, 300).to_string());
    let oidc = |t: String| att_token(t);

    let cases: Vec<(&str, Option<pb::Attestation>, &str)> = vec![
        ("no attestation", None, "missing"),
        (
            "attestation without a method",
            Some(pb::Attestation { method: None }),
            "missing",
        ),
        (
            "mTLS attestation on a connection without a client certificate",
            Some(pb::Attestation {
                method: Some(pb::attestation::Method::Mtls(pb::MtlsAttestation {})),
            }),
            "no client certificate",
        ),
        ("empty token", oidc(String::new()), "malformed"),
        ("garbage", oidc("abc".into()), "malformed"),
        (
            "two parts",
            oidc(format!("{valid_header}.{valid_claims}")),
            "malformed",
        ),
        (
            "bad base64",
            oidc(format!("{valid_header}.!!not*base64!!.c2lnbmF0dXJl")),
            "malformed",
        ),
        (
            "header not JSON",
            oidc(format!(
                "{}.{valid_claims}.c2lnbmF0dXJl",
                b64("this is not json")
            )),
            "malformed",
        ),
        (
            "alg none",
            oidc(issuer.token_with(TokenSpec {
                alg: TokenAlg::None_,
                claims: issuer.claims(SUB, ATTESTATION_AUDIENCE, 300),
                ..TokenSpec::default()
            })),
            "not allowed",
        ),
        (
            "HS256 keyed with the RSA public key",
            oidc(issuer.token_with(TokenSpec {
                alg: TokenAlg::Hs256WithPublicKey,
                claims: issuer.claims(SUB, ATTESTATION_AUDIENCE, 300),
                ..TokenSpec::default()
            })),
            "not allowed",
        ),
        (
            "forged signature, real kid",
            oidc(issuer.token_with(TokenSpec {
                claims: issuer.claims(SUB, ATTESTATION_AUDIENCE, 300),
                sign_with_foreign_key: true,
                ..TokenSpec::default()
            })),
            "signature",
        ),
        (
            "unknown kid",
            oidc(issuer.token_with(TokenSpec {
                kid: Some("no-such-kid".into()),
                claims: issuer.claims(SUB, ATTESTATION_AUDIENCE, 300),
                ..TokenSpec::default()
            })),
            "not among",
        ),
        (
            "issuer not configured",
            oidc(other.token(SUB, ATTESTATION_AUDIENCE, 300)),
            "not trusted",
        ),
        (
            "trusted iss, signed by another issuer's key (same kid)",
            oidc(signed(
                &other,
                issuer.claims(SUB, ATTESTATION_AUDIENCE, 300),
            )),
            "signature",
        ),
        (
            "wrong aud",
            oidc(issuer.token(SUB, "other", 300)),
            "audience",
        ),
        (
            "missing aud",
            oidc(signed(
                &issuer,
                claims(&issuer, SUB, |c| {
                    c.remove("aud");
                }),
            )),
            "aud",
        ),
        (
            "missing exp",
            oidc(signed(
                &issuer,
                claims(&issuer, SUB, |c| {
                    c.remove("exp");
                }),
            )),
            "exp",
        ),
        (
            "missing sub",
            oidc(signed(
                &issuer,
                claims(&issuer, SUB, |c| {
                    c.remove("sub");
                }),
            )),
            "sub",
        ),
        (
            "expired beyond the leeway",
            oidc(signed(
                &issuer,
                claims(&issuer, SUB, |c| {
                    c.insert("iat".into(), json!(n - 600));
                    c.insert("nbf".into(), json!(n - 600));
                    c.insert("exp".into(), json!(n - 120));
                }),
            )),
            "expired",
        ),
        (
            "nbf in the future",
            oidc(signed(
                &issuer,
                claims(&issuer, SUB, |c| {
                    c.insert("nbf".into(), json!(n + 120));
                    c.insert("exp".into(), json!(n + 600));
                }),
            )),
            "not valid before",
        ),
        (
            "iat in the future",
            oidc(signed(
                &issuer,
                claims(&issuer, SUB, |c| {
                    c.insert("iat".into(), json!(n + 120));
                    c.insert("exp".into(), json!(n + 600));
                }),
            )),
            "future",
        ),
        (
            "header crit",
            oidc(with_header(&issuer, "crit", json!(["exp"]))),
            "crit",
        ),
        (
            "header jku",
            oidc(with_header(
                &issuer,
                "jku",
                json!("https://attacker.example/jwks"),
            )),
            "jku",
        ),
        (
            "header x5u",
            oidc(with_header(
                &issuer,
                "x5u",
                json!("https://attacker.example/cert.pem"),
            )),
            "x5u",
        ),
        (
            "header jwk",
            oidc(with_header(
                &issuer,
                "jwk",
                json!({"kty": "oct", "k": "c2VjcmV0"}),
            )),
            "jwk",
        ),
        (
            "header x5c",
            oidc(with_header(&issuer, "x5c", json!(["MIIBIjANBg"]))),
            "x5c",
        ),
        (
            "valid token for an unregistered subject",
            oidc(issuer.token("sub-nobody", ATTESTATION_AUDIENCE, 300)),
            "matches no registered agent",
        ),
    ];
    for (case, attestation, fragment) in cases {
        refused_everywhere(
            &mut agent,
            case,
            attestation,
            &task_id,
            Code::Unauthenticated,
            fragment,
        )
        .await;
    }

    // Size limits: RESOURCE_EXHAUSTED, never INTERNAL.
    let huge = format!(
        "{valid_header}.{}.c2lnbmF0dXJl",
        b64(&"x".repeat(17 * 1024))
    );
    assert!(huge.len() > 16 * 1024);
    refused_everywhere(
        &mut agent,
        "oversized token",
        oidc(huge),
        &task_id,
        Code::ResourceExhausted,
        "larger than",
    )
    .await;

    // Positive controls (read-only GetTask, so the snapshot still holds).
    let mut aud_array = issuer.claims(SUB, ATTESTATION_AUDIENCE, 300);
    aud_array["aud"] = json!(["other", ATTESTATION_AUDIENCE]);
    accepted(
        &mut agent,
        "aud array containing taskpass",
        signed(&issuer, aud_array),
        &task_id,
    )
    .await;
    accepted(
        &mut agent,
        "expired within the leeway",
        signed(
            &issuer,
            claims(&issuer, SUB, |c| {
                c.insert("iat".into(), json!(n - 300));
                c.insert("nbf".into(), json!(n - 300));
                c.insert("exp".into(), json!(n - 10));
            }),
        ),
        &task_id,
    )
    .await;
    for alg in [TokenAlg::Es256, TokenAlg::EdDsa, TokenAlg::Rs256] {
        accepted(
            &mut agent,
            &format!("{alg:?}"),
            issuer.token_with(TokenSpec {
                alg,
                claims: issuer.claims(SUB, ATTESTATION_AUDIENCE, 300),
                ..TokenSpec::default()
            }),
            &task_id,
        )
        .await;
    }

    let after = snapshot(&mut admin).await;
    assert_eq!(
        after.0, before.0,
        "refused attestations wrote audit entries"
    );
    assert_eq!(after.1, before.1, "refused attestations changed tasks");
    // ... and they are audited in aggregate, under the caller's address.
    let tail = tallied(&mut admin, |e| {
        e.actor == "source:127.0.0.1" && e.reason == "attestation_refused"
    })
    .await
    .unwrap();
    let refused: u64 = tail
        .iter()
        .filter(|e| is_tally(e) && e.actor == "source:127.0.0.1")
        .map(tally_count)
        .sum();
    assert!(refused >= 10, "refusals counted: {refused} in {tail:?}");
    // The real task is untouched and still issues.
    issue(&mut agent, &issuer, SUB, &task_id).await.unwrap();
    assert_audit_verifies(&mut admin).await;
}

#[tokio::test]
async fn es256_and_eddsa_attestations_start_tasks() {
    let Env {
        issuer,
        broker: _broker,
        mut admin,
        mut agent,
        ..
    } = Env::start().await.unwrap();
    register(&mut admin, &issuer, "att-algs", SUB)
        .await
        .unwrap();
    for alg in [TokenAlg::Es256, TokenAlg::EdDsa] {
        let token = issuer.token_with(TokenSpec {
            alg,
            claims: issuer.claims(SUB, ATTESTATION_AUDIENCE, 300),
            ..TokenSpec::default()
        });
        let task = agent
            .start_task(pb::StartTaskRequest {
                attestation: att_token(token.clone()),
                purpose: format!("{alg:?} attested"),
                audiences: vec![API.into()],
                scopes: vec!["read".into()],
                max_duration_seconds: 0,
                subject_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap();
        assert_eq!(task.state, pb::TaskState::Open as i32);
        let t = agent
            .issue_token(pb::IssueTokenRequest {
                attestation: att_token(token),
                task_id: task.task_id,
                audience: API.into(),
                scopes: vec![],
                ttl_seconds: 0,
                dpop_jkt: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(t.scopes, ["read"]);
    }
    assert_audit_verifies(&mut admin).await;
}

#[tokio::test]
async fn rotated_issuer_key_is_fetched_on_unknown_kid() {
    let Env {
        issuer,
        broker: _broker,
        mut admin,
        mut agent,
        ..
    } = Env::start().await.unwrap();
    register(&mut admin, &issuer, "att-rotate", SUB)
        .await
        .unwrap();
    let task = start(&mut agent, &issuer, SUB, &["read"]).await.unwrap();
    let fetches = issuer.jwks_fetches();
    assert!(fetches >= 1, "the broker fetched the issuer's keys");

    issuer.rotate();
    let token = issuer.token(SUB, ATTESTATION_AUDIENCE, 300);
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], "rsa-2");
    // The broker refetches the JWKS when a token names an unknown kid, rate-limited to one
    // fetch per issuer per 10 s (so forged kids cannot make it hammer the issuer): until then
    // the caller gets UNAUTHENTICATED "retry shortly".
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match agent
            .get_task(pb::GetTaskRequest {
                attestation: att_token(token.clone()),
                task_id: task.task_id.clone(),
            })
            .await
        {
            Ok(_) => break,
            Err(s) => {
                assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
                assert!(s.message().contains("retry shortly"), "{s:?}");
                assert!(
                    Instant::now() < deadline,
                    "the rotated key was never fetched: {s:?}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(issuer.jwks_fetches() > fetches, "the JWKS was refetched");
    // The new key starts tasks too, and so do the rotated EC and Ed25519 keys.
    start(&mut agent, &issuer, SUB, &["read"]).await.unwrap();
    for alg in [TokenAlg::Es256, TokenAlg::EdDsa] {
        accepted(
            &mut agent,
            &format!("rotated {alg:?}"),
            issuer.token_with(TokenSpec {
                alg,
                claims: issuer.claims(SUB, ATTESTATION_AUDIENCE, 300),
                ..TokenSpec::default()
            }),
            &task.task_id,
        )
        .await;
    }
    assert_audit_verifies(&mut admin).await;
}

#[tokio::test]
async fn replayed_attestation_is_refused_once_expired() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let issuer = DevIssuer::start().await.unwrap();
    // `[attestation]` after `[[attestation.oidc]]` is valid TOML (it defines the super-table
    // the array implicitly created); with no leeway the expiry is observable within seconds.
    let broker = TestBroker::start_with(&issuer, "[attestation]\nleeway_seconds = 0\n")
        .await
        .unwrap();
    let mut admin = broker.admin().await.unwrap();
    let mut agent = broker.agent().await.unwrap();
    register(&mut admin, &issuer, "att-replay", SUB)
        .await
        .unwrap();

    let token = issuer.token(SUB, ATTESTATION_AUDIENCE, 2);
    // Reusing the same platform token across calls is accepted by design: it is the workload's
    // own OIDC token, valid until its `exp`, and is re-presented on every call (it is never a
    // one-time credential and is never stored by the broker beyond a verification cache).
    let task = agent
        .start_task(pb::StartTaskRequest {
            attestation: att_token(token.clone()),
            purpose: "replay".into(),
            audiences: vec![API.into()],
            scopes: vec!["read".into()],
            max_duration_seconds: 0,
            subject_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    accepted(
        &mut agent,
        "replay before exp",
        token.clone(),
        &task.task_id,
    )
    .await;
    accepted(
        &mut agent,
        "replay before exp",
        token.clone(),
        &task.task_id,
    )
    .await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = snapshot(&mut admin).await;
    refused_everywhere(
        &mut agent,
        "replayed after exp (leeway 0)",
        att_token(token),
        &task.task_id,
        Code::Unauthenticated,
        "expired",
    )
    .await;
    let after = snapshot(&mut admin).await;
    assert_eq!(after, before, "a refused replay changed something");
    // A fresh token still works.
    issue(&mut agent, &issuer, SUB, &task.task_id)
        .await
        .unwrap();
    assert_audit_verifies(&mut admin).await;
}

#[tokio::test]
async fn oversized_request_message_is_resource_exhausted() {
    let Env {
        issuer,
        broker: _broker,
        mut admin,
        mut agent,
        ..
    } = Env::start().await.unwrap();
    register(&mut admin, &issuer, "att-big", SUB).await.unwrap();
    let before = snapshot(&mut admin).await;
    // A 100 KiB purpose makes the whole message larger than the broker's 64 KiB limit.
    let s = agent
        .start_task(pb::StartTaskRequest {
            attestation: att(&issuer, SUB),
            purpose: "p".repeat(100 * 1024),
            audiences: vec![API.into()],
            scopes: vec!["read".into()],
            max_duration_seconds: 0,
            subject_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("65536"), "{s:?}");
    assert_eq!(snapshot(&mut admin).await, before);
    // The connection and the broker are fine afterwards.
    start(&mut agent, &issuer, SUB, &["read"]).await.unwrap();
    assert_audit_verifies(&mut admin).await;
}
