//! The store format is a contract: a store written by an earlier version (kept, gzipped, in
//! `tests/fixtures/`) opens, reads and keeps working in this one.
#![allow(clippy::unwrap_used)]

use std::io::Read;

use taskpass_core::{AgentName, Binding, RevocationKind, SpiffeId, TaskId, TaskState, TokenId};
use taskpass_store::{RedbStore, Store, StoreOptions};

fn unpack(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let gz = std::fs::File::open(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut bytes)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// Schema 1 (OIDC bindings only) migrates to schema 2 on open, in one transaction.
#[tokio::test]
async fn opens_and_migrates_a_v1_store() {
    let (_dir, path) = unpack("store-v1.redb.gz");
    let oidc_only = vec![Binding::Oidc {
        issuer: "https://issuer.example".into(),
        subject: "sub".into(),
    }];
    opens_the_fixture(&path, &oidc_only).await;
    // Migrated once: it opens again as schema 2 with the same contents.
    let store = RedbStore::open(&path, StoreOptions::default()).unwrap();
    let agent = store
        .agent(&AgentName::parse("fixture-bot").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(agent.bindings, oidc_only);
}

#[tokio::test]
async fn opens_a_v2_store() {
    let (_dir, path) = unpack("store-v2.redb.gz");
    let x509 = Binding::X509 {
        spiffe_id: SpiffeId::parse("spiffe://example.org/agent/fixture-bot").unwrap(),
    };
    let both = vec![
        Binding::Oidc {
            issuer: "https://issuer.example".into(),
            subject: "sub".into(),
        },
        x509,
    ];
    opens_the_fixture(&path, &both).await;
}

/// The fixture's contents (see `examples/make_fixture.rs`), and that it keeps working.
async fn opens_the_fixture(path: &std::path::Path, bindings: &[Binding]) {
    let store = RedbStore::open(path, StoreOptions::default()).unwrap();
    let agent = store
        .agent(&AgentName::parse("fixture-bot").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(agent.bindings, bindings);
    for b in bindings {
        assert_eq!(
            store.agent_by_binding(b).await.unwrap().unwrap().name,
            agent.name,
            "{b}"
        );
    }
    assert_eq!(agent.id.as_str(), "spiffe://example.org/agent/fixture-bot");
    assert_eq!(agent.allow.max_ttl_seconds, Some(600));
    assert_eq!(
        store
            .agent_by_binding(&Binding::Oidc {
                issuer: "https://issuer.example".into(),
                subject: "sub".into(),
            })
            .await
            .unwrap()
            .unwrap()
            .name,
        agent.name
    );

    let done = TaskId::from_ulid(ulid::Ulid::from_parts(1_700_000_000_000, 1));
    let open = TaskId::from_ulid(ulid::Ulid::from_parts(1_700_000_000_000, 2));
    assert_eq!(
        store.task(&done).await.unwrap().unwrap().state,
        TaskState::Completed
    );
    assert_eq!(
        store.task(&open).await.unwrap().unwrap().state,
        TaskState::Open
    );
    let tok = TokenId::from_ulid(ulid::Ulid::from_parts(1_700_000_000_001, 2));
    assert_eq!(store.token(&tok).await.unwrap().unwrap().task, open);
    assert_eq!(store.list_tokens(Some(&open), 10).await.unwrap().len(), 1);
    let revs = store.revocations_after(0, 10).await.unwrap();
    assert_eq!(revs.len(), 1);
    assert_eq!(
        (revs[0].kind, revs[0].id.as_str()),
        (RevocationKind::Task, done.to_string().as_str())
    );
    let v = store.verify_audit().await.unwrap();
    assert!(v.problem.is_none(), "{v:?}");
    assert_eq!(v.entries, 6);

    // And it keeps working: the chain and the log continue where they were.
    let ended = store
        .end_task(taskpass_store::EndTask {
            task: open,
            owner: Some(agent.id.clone()),
            state: TaskState::Completed,
            reason: "task_completed".into(),
            now: 1_700_000_100,
            audit: taskpass_core::AuditEntry::draft(1_700_000_100, "agent", "complete_task"),
        })
        .await
        .unwrap();
    assert_eq!(ended.revoked_tokens, 1);
    assert_eq!(ended.revocation.sequence, 2);
    let v = store.verify_audit().await.unwrap();
    assert!(v.problem.is_none());
    assert_eq!(v.entries, 7);
}
