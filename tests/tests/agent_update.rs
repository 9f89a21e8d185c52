//! `UpdateAgent`: bindings, allow-lists and description change in one audited step, validated
//! as at registration; a binding moves with its index, so the old identity attests no more.
#![allow(clippy::unwrap_used)]

use taskpass_e2e::*;
use taskpass_proto::v1 as pb;
use tonic::Code;

fn list(v: &[&str]) -> Option<pb::StringList> {
    Some(pb::StringList {
        values: v.iter().map(|s| (*s).to_owned()).collect(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_changes_bindings_and_allow_lists_and_is_audited() {
    let mut env = Env::start().await.unwrap();
    register(&mut env.admin, &env.issuer, "mover", "sub-old")
        .await
        .unwrap();
    register(&mut env.admin, &env.issuer, "other", "sub-other")
        .await
        .unwrap();
    start(&mut env.agent, &env.issuer, "sub-old", &["read"])
        .await
        .unwrap();

    let updated = env
        .admin
        .update_agent(pb::UpdateAgentRequest {
            name: "mover".into(),
            owner: Some("new-team".into()),
            scopes: list(&["read"]),
            oidc: Some(pb::OidcBindingList {
                values: vec![pb::OidcBinding {
                    issuer: env.issuer.issuer().to_owned(),
                    subject: "sub-new".into(),
                }],
            }),
            x509: list(&["spiffe://example.org/agent/mover"]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert_eq!(updated.owner, "new-team");
    assert_eq!(updated.scopes, vec!["read"]);
    assert_eq!(updated.x509, vec!["spiffe://example.org/agent/mover"]);
    assert_eq!(updated.oidc.len(), 1);
    assert_eq!(updated.state, pb::AgentState::Active as i32);

    // The old identity attests no more; the new one does, within the new allow-list.
    let err = start(&mut env.agent, &env.issuer, "sub-old", &["read"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    start(&mut env.agent, &env.issuer, "sub-new", &["read"])
        .await
        .unwrap();
    let err = start(&mut env.agent, &env.issuer, "sub-new", &["write"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Audited once, with before and after.
    let entries = env
        .admin
        .tail_audit(pb::TailAuditRequest { limit: 10_000 })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let e = entries
        .iter()
        .find(|e| e.action == "agent.update")
        .expect("an agent.update entry");
    assert!(
        e.detail.contains(r#"owner="team-e2e"->"new-team""#),
        "{}",
        e.detail
    );
    assert!(e.detail.contains("bindings="), "{}", e.detail);
    assert!(e.detail.contains(r#""scopes":["read"]}"#), "{}", e.detail);

    // Refused, changing nothing: another agent's identity, no identity at all, bad values,
    // an unknown agent.
    let before = env
        .admin
        .get_agent(pb::GetAgentRequest {
            name: "mover".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    let cases: Vec<(pb::UpdateAgentRequest, Code)> = vec![
        (
            pb::UpdateAgentRequest {
                name: "mover".into(),
                oidc: Some(pb::OidcBindingList {
                    values: vec![pb::OidcBinding {
                        issuer: env.issuer.issuer().to_owned(),
                        subject: "sub-other".into(),
                    }],
                }),
                ..Default::default()
            },
            Code::AlreadyExists,
        ),
        (
            pb::UpdateAgentRequest {
                name: "mover".into(),
                oidc: Some(pb::OidcBindingList { values: vec![] }),
                x509: list(&[]),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            pb::UpdateAgentRequest {
                name: "mover".into(),
                scopes: list(&["bad scope"]),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            pb::UpdateAgentRequest {
                name: "mover".into(),
                max_ttl_seconds: Some(1_000_000),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            pb::UpdateAgentRequest {
                name: "nobody".into(),
                owner: Some("x".into()),
                ..Default::default()
            },
            Code::NotFound,
        ),
    ];
    for (req, code) in cases {
        let err = env.admin.update_agent(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{req:?}: {err:?}");
    }
    let after = env
        .admin
        .get_agent(pb::GetAgentRequest {
            name: "mover".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert_eq!(before, after);

    // An offboarded agent cannot be changed.
    env.admin
        .set_agent_state(pb::SetAgentStateRequest {
            name: "mover".into(),
            state: pb::AgentState::Offboarded.into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    let err = env
        .admin
        .update_agent(pb::UpdateAgentRequest {
            name: "mover".into(),
            owner: Some("x".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
}
