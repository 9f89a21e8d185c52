//! Validators are registered principals: `taskpass validator add` issues a client certificate
//! for `spiffe://<td>/validator/NAME` bound to audiences; Introspect answers a validator only for
//! tokens addressed to those (RFC 7662 §2.1); Introspect and WatchRevocations refuse callers
//! without a validator's or an operator's certificate, unless the stream is configured open;
//! a revoked validator is refused from its next call, on the connection it already has.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::Duration;

use taskpass_e2e::*;
use taskpass_proto::v1 as pb;
use taskpass_testkit::workspace_bin;
use tonic::Code;

const OTHER: &str = "https://other.example";

/// A live token for [`API`] and one for [`OTHER`], from an agent allowed both.
async fn tokens(env: &mut Env) -> (String, String) {
    env.admin
        .register_agent(pb::RegisterAgentRequest {
            agent: Some(pb::Agent {
                name: "two-apis".into(),
                owner: "team".into(),
                purpose: "validators test".into(),
                oidc: vec![pb::OidcBinding {
                    issuer: env.issuer.issuer().into(),
                    subject: "sub-two".into(),
                }],
                audiences: vec![API.into(), OTHER.into()],
                scopes: vec!["read".into()],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let task = env
        .agent
        .start_task(pb::StartTaskRequest {
            attestation: att(&env.issuer, "sub-two"),
            purpose: "validators".into(),
            audiences: vec![API.into(), OTHER.into()],
            scopes: vec!["read".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let one = |aud: &'static str| {
        let mut agent = env.agent.clone();
        let attestation = att(&env.issuer, "sub-two");
        let task_id = task.task_id.clone();
        async move {
            agent
                .issue_token(pb::IssueTokenRequest {
                    attestation,
                    task_id,
                    audience: aud.into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .access_token
        }
    };
    let api = one(API).await;
    let other = one(OTHER).await;
    (api, other)
}

async fn introspect(
    val: &mut pb::validation_service_client::ValidationServiceClient<tonic::transport::Channel>,
    token: &str,
) -> Result<pb::IntrospectResponse, tonic::Status> {
    val.introspect(pb::IntrospectRequest {
        token: token.into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_validator_introspects_its_own_audiences_only() {
    let mut env = Env::start().await.unwrap();
    let (api_token, other_token) = tokens(&mut env).await;
    let (cert, key) = add_validator(&mut env.admin, "api-gw", &[API])
        .await
        .unwrap();
    let mut val = validation_as(&env.broker, &cert, &key).await.unwrap();

    let mine = introspect(&mut val, &api_token).await.unwrap();
    assert!(mine.active, "{mine:?}");
    assert_eq!(mine.aud, API);
    // Another audience's token: inactive, and nothing about it is told.
    let theirs = introspect(&mut val, &other_token).await.unwrap();
    assert!(!theirs.active);
    assert_eq!(theirs.inactive_reason, "wrong_audience");
    assert!(theirs.sub.is_empty() && theirs.token_id.is_empty() && theirs.scopes.is_empty());
    // A bad token is still just inactive.
    let junk = introspect(&mut val, "a.b.c").await.unwrap();
    assert_eq!(junk.inactive_reason, "malformed");

    // An operator who may read tokens sees every audience.
    assert!(introspect(&mut env.val, &other_token).await.unwrap().active);

    // A validator is not an operator.
    let mut as_admin = pb::admin_service_client::AdminServiceClient::new(
        taskpass_proto::connect(
            &env.broker.grpc_url,
            &env.broker.ca_pem,
            Some((&cert, &key)),
        )
        .await
        .unwrap(),
    );
    let err = as_admin
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // The validator and its audiences are listed.
    let list = env
        .admin
        .list_validators(pb::ListValidatorsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .certificates;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].validator, "api-gw");
    assert_eq!(list[0].spiffe_id, "spiffe://example.org/validator/api-gw");
    assert_eq!(list[0].audiences, vec![API.to_owned()]);
}

#[tokio::test]
async fn introspect_and_the_stream_refuse_callers_without_a_principal() {
    let mut env = Env::start().await.unwrap();
    let (api_token, _) = tokens(&mut env).await;
    let mut anon = env.broker.validation_anonymous().await.unwrap();

    let err = introspect(&mut anon, &api_token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("validator add"), "{err:?}");
    let err = anon
        .watch_revocations(pb::WatchRevocationsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // The keys stay public.
    assert!(
        anon.get_jwks(pb::GetJwksRequest {})
            .await
            .unwrap()
            .into_inner()
            .jwks_json
            .contains("keys")
    );

    // An agent's certificate from the broker's own CA proves no validator.
    let (agent_cert, key) = certified_agent(&mut env.admin, "certified").await.unwrap();
    let mut as_agent = validation_as(&env.broker, &agent_cert.certificate_pem, &key)
        .await
        .unwrap();
    let err = introspect(&mut as_agent, &api_token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // An approver can read tokens; nobody without that permission can.
    let (key, csr) = key_and_csr().unwrap();
    let approver = env
        .admin
        .issue_operator_certificate(pb::IssueOperatorCertificateRequest {
            name: "appr".into(),
            role: "approver".into(),
            csr_pem: csr,
            days: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let mut as_approver = validation_as(&env.broker, &approver.certificate_pem, &key)
        .await
        .unwrap();
    assert!(
        introspect(&mut as_approver, &api_token)
            .await
            .unwrap()
            .active
    );
}

#[tokio::test]
async fn the_stream_can_be_opened_to_anyone() {
    let env = Env::start_with("[validation]\nopen_revocation_stream = true\n")
        .await
        .unwrap();
    let mut anon = env.broker.validation_anonymous().await.unwrap();
    anon.watch_revocations(pb::WatchRevocationsRequest::default())
        .await
        .unwrap();
    // Introspect still needs a principal.
    let err = introspect(&mut anon, "a.b.c").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // An unknown key in the table is refused at start.
    let bad = taskpass_testkit::TestBroker::start_with(
        &env.issuer,
        "[validation]\nopen_revocation_streams = true\n",
    )
    .await;
    assert!(bad.is_err(), "an unknown [validation] key must be refused");
}

#[tokio::test]
async fn a_revoked_validator_is_refused_on_its_open_connection() {
    let mut env = Env::start().await.unwrap();
    let (api_token, _) = tokens(&mut env).await;
    let (cert, key) = add_validator(&mut env.admin, "leaky", &[API])
        .await
        .unwrap();
    let mut val = validation_as(&env.broker, &cert, &key).await.unwrap();
    assert!(introspect(&mut val, &api_token).await.unwrap().active);
    let mut watch = val
        .watch_revocations(pb::WatchRevocationsRequest::default())
        .await
        .unwrap()
        .into_inner();

    let revoked = env
        .admin
        .revoke_validator(pb::RevokeValidatorRequest {
            name: "leaky".into(),
            reason: "key leaked".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .revoked;
    assert_eq!(revoked.len(), 1);
    let err = introspect(&mut val, &api_token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("revoked"), "{err:?}");
    let err = val
        .watch_revocations(pb::WatchRevocationsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // Its own revocation reaches the stream it already had.
    let ev = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.kind, pb::RevocationKind::Certificate as i32);
    assert_eq!(ev.id, revoked[0].serial);
    // A second revoke finds nothing live; bad names are refused.
    let err = env
        .admin
        .revoke_validator(pb::RevokeValidatorRequest {
            name: "leaky".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    for (name, audiences, code) in [
        ("Bad Name", vec![API], Code::InvalidArgument),
        ("no-audience", vec![], Code::InvalidArgument),
        ("bad-audience", vec!["has space"], Code::InvalidArgument),
    ] {
        let err = add_validator(&mut env.admin, name, &audiences)
            .await
            .unwrap_err();
        let status = err.downcast_ref::<tonic::Status>().unwrap();
        assert_eq!(status.code(), code, "{name}: {status:?}");
    }
}

#[tokio::test]
async fn heartbeats_say_the_stream_is_current() {
    let mut env = Env::start().await.unwrap();
    let (_, _) = tokens(&mut env).await;
    // One revocation in the log before the stream opens.
    let tasks = env
        .admin
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    env.admin
        .revoke_task(pb::RevokeTaskRequest {
            task_id: tasks[0].task_id.clone(),
            reason: "test".into(),
        })
        .await
        .unwrap();
    let mut watch = env
        .val
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: 0,
            heartbeat_seconds: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.kind, pb::RevocationKind::Task as i32);
    // Caught up: a heartbeat at once, naming the last sequence sent.
    let beat = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(beat.kind, pb::RevocationKind::Unspecified as i32);
    assert_eq!(beat.sequence, first.sequence);
    assert!(beat.id.is_empty());
    // And again while nothing happens.
    let again = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(again.kind, pb::RevocationKind::Unspecified as i32);
    assert_eq!(again.sequence, first.sequence);
}

#[tokio::test]
async fn the_cli_adds_lists_and_revokes_validators() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = Env::start().await.unwrap();
    let dir = env.broker.data_dir().to_path_buf();
    let out = tempfile::tempdir().unwrap();
    let taskpass = |args: &[&str]| {
        Command::new(workspace_bin("taskpass").unwrap())
            .arg("--data-dir")
            .arg(&dir)
            .args(args)
            .output()
            .unwrap()
    };
    let outs = out.path().to_str().unwrap();
    let added = taskpass(&[
        "validator",
        "add",
        "billing",
        "--audience",
        API,
        "--audience",
        OTHER,
        "--out",
        outs,
        "--output",
        "json",
    ]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let added: serde_json::Value = serde_json::from_slice(&added.stdout).unwrap();
    assert_eq!(added["validator"], "spiffe://example.org/validator/billing");
    let key = out.path().join("billing-key.pem");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(out.path().join("ca.pem").exists());
    // The credential works.
    let mut val = validation_as(
        &env.broker,
        &std::fs::read_to_string(out.path().join("billing.pem")).unwrap(),
        &std::fs::read_to_string(&key).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        introspect(&mut val, "a.b.c").await.unwrap().inactive_reason,
        "malformed"
    );

    let list = taskpass(&["validator", "list", "--output", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list[0]["audiences"], serde_json::json!([API, OTHER]));
    let text = String::from_utf8(taskpass(&["validator", "list"]).stdout).unwrap();
    assert!(
        text.contains("validator/billing") && text.contains("audiences="),
        "{text}"
    );
    // An audience is required.
    let none = taskpass(&["validator", "add", "x", "--out", outs]);
    assert!(!none.status.success());

    let revoked = taskpass(&["validator", "revoke", "billing"]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    assert!(String::from_utf8_lossy(&revoked.stdout).contains("revoked"));
    let err = introspect(&mut val, "a.b.c").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let again = taskpass(&["validator", "revoke", "billing"]);
    assert!(!again.status.success());
}
