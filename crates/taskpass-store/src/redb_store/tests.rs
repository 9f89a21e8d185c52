#![allow(clippy::unwrap_used)]

use super::*;
use taskpass_core::{AllowList, Audience, Binding, Purpose, ScopeSet, TrustDomain};

fn draft(action: &str) -> AuditDraft {
    AuditEntry::draft(1, "test", action)
}

fn agent(name: &str, subject: &str) -> Agent {
    let name = AgentName::parse(name).unwrap();
    Agent {
        id: TrustDomain::parse("example.org").unwrap().agent_id(&name),
        name,
        owner: "o".into(),
        purpose: "p".into(),
        tenant: String::new(),
        environment: String::new(),
        labels: Vec::new(),
        state: AgentState::Active,
        bindings: vec![Binding::Oidc {
            issuer: "https://issuer".into(),
            subject: subject.into(),
        }],
        allow: AllowList {
            audiences: Audience::parse_list(&["api"]).unwrap(),
            scopes: ScopeSet::parse(&["read"]).unwrap(),
            max_ttl_seconds: None,
            approval_scopes: ScopeSet::default(),
        },
        review_every_days: 0,
        created_at: 0,
        updated_at: 0,
    }
}

fn task(agent: &Agent, now: i64, secs: i64) -> Task {
    Task {
        id: TaskId::from_ulid(ulid::Ulid::new()),
        agent: agent.id.clone(),
        state: TaskState::Open,
        purpose: Purpose::parse("p").unwrap(),
        audiences: Audience::parse_list(&["api"]).unwrap(),
        scopes: ScopeSet::parse(&["read"]).unwrap(),
        created_at: now,
        expires_at: now + secs,
        ended_at: None,
        on_behalf_of: None,
        approval_id: None,
        approved_by: None,
        user: None,
        approval: None,
        implicit: false,
    }
}

fn token(task: &Task, now: i64, ttl: i64) -> TokenRecord {
    TokenRecord {
        id: TokenId::from_ulid(ulid::Ulid::new()),
        task: task.id,
        agent: task.agent.clone(),
        audience: Audience::parse("api").unwrap(),
        scopes: task.scopes.clone(),
        issued_at: now,
        expires_at: now + ttl,
        revoked_at: None,
        status_index: None,
        certificate: None,
    }
}

fn end(task: &Task, owner: Option<&AgentId>, now: i64) -> EndTask {
    EndTask {
        task: task.id,
        owner: owner.cloned(),
        state: TaskState::Completed,
        reason: "task_completed".into(),
        now,
        audit: draft("complete_task"),
    }
}

#[tokio::test]
async fn lifecycle_is_durable_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let a = agent("bot", "sub-1");
    let t = task(&a, 1000, 600);
    let recorded: Vec<TokenRecord>;
    {
        let store = RedbStore::open(&path, StoreOptions::default()).unwrap();
        store
            .register_agent(a.clone(), draft("register"))
            .await
            .unwrap();
        let dup = store.register_agent(a.clone(), draft("register")).await;
        assert!(matches!(dup, Err(StoreError::AlreadyExists { .. })));
        let mut other = agent("other", "sub-1");
        other.name = AgentName::parse("other").unwrap();
        let clash = store.register_agent(other, draft("register")).await;
        assert!(
            matches!(clash, Err(StoreError::AlreadyExists { what }) if what.contains("bound to agent bot"))
        );
        assert_eq!(
            store
                .agent_by_binding(&Binding::Oidc {
                    issuer: "https://issuer".into(),
                    subject: "sub-1".into(),
                })
                .await
                .unwrap()
                .unwrap()
                .name,
            a.name
        );
        store.create_task(t.clone(), draft("start")).await.unwrap();

        // Many concurrent writers: grouped into few commits, all acknowledged.
        let mut handles = Vec::new();
        for _ in 0..200 {
            let s = store.clone();
            let rec = token(&t, 1001, 300);
            handles.push(tokio::spawn(async move {
                s.record_token(rec.clone(), draft("issue"))
                    .await
                    .map(|()| rec)
            }));
        }
        let mut recs = Vec::new();
        for h in handles {
            recs.push(h.await.unwrap().unwrap());
        }
        recorded = recs;
        let mut rx = store.subscribe_revocations();
        let ended = store.end_task(end(&t, Some(&a.id), 1100)).await.unwrap();
        assert_eq!(ended.revoked_tokens, 200);
        assert_eq!(ended.task.state, TaskState::Completed);
        assert_eq!(ended.revocation.sequence, 1);
        assert_eq!(ended.revocation.not_after, 1301);
        assert_eq!(rx.recv().await.unwrap(), ended.revocation);
        // No token after the end, even with an issue time before it.
        let late = store
            .record_token(token(&t, 1050, 10), draft("issue"))
            .await;
        assert!(matches!(late, Err(StoreError::Precondition(_))));
        let again = store.end_task(end(&t, Some(&a.id), 1101)).await;
        assert!(matches!(again, Err(StoreError::Precondition(_))));
    }
    // Reopen: everything acknowledged is there, the chain verifies and continues.
    let store = RedbStore::open(&path, StoreOptions::default()).unwrap();
    for rec in &recorded {
        assert_eq!(store.token(&rec.id).await.unwrap().as_ref(), Some(rec));
    }
    assert_eq!(
        store.task(&t.id).await.unwrap().unwrap().state,
        TaskState::Completed
    );
    assert_eq!(
        store.list_tokens(Some(&t.id), 1000).await.unwrap().len(),
        200
    );
    assert_eq!(store.list_tasks(Some(&a.id), 10).await.unwrap().len(), 1);
    let v = store.verify_audit().await.unwrap();
    assert!(v.problem.is_none(), "{v:?}");
    // register, dup (deny), clash (deny), start, 200 issues, complete, late (deny), again (deny)
    assert_eq!(v.entries, 207);
    let tail = store.audit_tail(3).await.unwrap();
    assert_eq!(tail.len(), 3);
    assert_eq!(tail[2].outcome, AuditOutcome::Deny);
    store.append_audit(draft("after-restart")).await.unwrap();
    let v = store.verify_audit().await.unwrap();
    assert!(v.problem.is_none());
    assert_eq!(store.revocations_after(0, 10).await.unwrap().len(), 1);
    assert!(store.revocations_after(1, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn other_agents_task_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("s.redb"), StoreOptions::default()).unwrap();
    let a = agent("a", "s-a");
    let b = agent("b", "s-b");
    store.register_agent(a.clone(), draft("r")).await.unwrap();
    store.register_agent(b.clone(), draft("r")).await.unwrap();
    let t = task(&a, 0, 100);
    store.create_task(t.clone(), draft("s")).await.unwrap();
    let r = store.end_task(end(&t, Some(&b.id), 1)).await;
    assert!(matches!(r, Err(StoreError::NotFound { .. })));
    let mut forged = token(&t, 1, 10);
    forged.agent = b.id.clone();
    let r = store.record_token(forged, draft("i")).await;
    assert!(matches!(r, Err(StoreError::NotFound { .. })));
}

#[tokio::test]
async fn sweeper_expires_and_offboarding_revokes() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("s.redb"), StoreOptions::default()).unwrap();
    let a = agent("a", "s-a");
    store.register_agent(a.clone(), draft("r")).await.unwrap();
    let short = task(&a, 0, 10);
    let long = task(&a, 0, 1000);
    store.create_task(short.clone(), draft("s")).await.unwrap();
    store.create_task(long.clone(), draft("s")).await.unwrap();
    store
        .record_token(token(&short, 1, 5), draft("i"))
        .await
        .unwrap();
    assert!(store.expire_tasks(9).await.unwrap().is_empty());
    let ended = store.expire_tasks(10).await.unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].task.state, TaskState::Expired);
    assert!(store.expire_tasks(11).await.unwrap().is_empty());

    let changed = store
        .change_agent_state(ChangeAgentState {
            name: a.name.clone(),
            state: AgentState::Offboarded,
            now: 20,
            max_ttl_seconds: 900,
            audit: draft("offboard"),
        })
        .await
        .unwrap();
    assert_eq!(changed.revoked_tasks, 1);
    assert_eq!(
        store.task(&long.id).await.unwrap().unwrap().state,
        TaskState::Revoked
    );
    let revs = store.revocations_after(0, 10).await.unwrap();
    let kinds: Vec<_> = revs.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            RevocationKind::Task,
            RevocationKind::Task,
            RevocationKind::Agent
        ]
    );
    assert_eq!(
        revs.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // The identity is free again; the offboarded agent stays offboarded.
    assert!(
        store
            .agent_by_binding(&Binding::Oidc {
                issuer: "https://issuer".into(),
                subject: "s-a".into(),
            })
            .await
            .unwrap()
            .is_none()
    );
    let r = store
        .change_agent_state(ChangeAgentState {
            name: a.name.clone(),
            state: AgentState::Active,
            now: 30,
            max_ttl_seconds: 900,
            audit: draft("resume"),
        })
        .await;
    assert!(matches!(r, Err(StoreError::Precondition(_))));
    let r = store.create_task(task(&a, 30, 10), draft("s")).await;
    assert!(matches!(r, Err(StoreError::Precondition(_))));
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    drop(RedbStore::open(&path, StoreOptions::default()).unwrap());
    // Wait for the writer thread of the first handle to let go of the file.
    let db = loop {
        match Database::create(&path) {
            Ok(db) => break db,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    };
    let txn = db.begin_write().unwrap();
    txn.open_table(META)
        .unwrap()
        .insert(META_SCHEMA_VERSION, SCHEMA_VERSION + 1)
        .unwrap();
    txn.commit().unwrap();
    drop(db);
    let err = RedbStore::open(&path, StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedSchema { .. }), "{err}");
    assert!(err.to_string().contains("upgrade taskpassd"));
}

#[tokio::test]
async fn store_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let _s = RedbStore::open(&path, StoreOptions::default()).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// What the broker reads on every call, as one value to compare.
async fn reads(
    store: &RedbStore,
    agents: &[&Agent],
    tasks: &[&Task],
) -> Vec<(Option<Agent>, Option<Agent>, Vec<Option<Task>>)> {
    let mut out = Vec::new();
    for a in agents {
        let by_name = store.agent(&a.name).await.unwrap();
        let by_oidc = store.agent_by_binding(&a.bindings[0]).await.unwrap();
        let mut ts = Vec::new();
        for t in tasks {
            ts.push(store.task(&t.id).await.unwrap());
        }
        out.push((by_name, by_oidc, ts));
    }
    out
}

#[tokio::test]
async fn cached_reads_match_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let (a, b, c) = (agent("a", "s-a"), agent("b", "s-b"), agent("c", "s-c"));
    let (ta, tb, tc) = (task(&a, 0, 1000), task(&b, 0, 1000), task(&c, 0, 1000));
    let ta2 = task(&a, 0, 1000);
    let cached;
    {
        let store = RedbStore::open(&path, StoreOptions::default()).unwrap();
        for x in [&a, &b, &c] {
            store.register_agent(x.clone(), draft("r")).await.unwrap();
        }
        for t in [&ta, &ta2, &tb, &tc] {
            store.create_task(t.clone(), draft("s")).await.unwrap();
        }
        // Tokens race the end of their task, most of them in the same batches as the end: each
        // is either recorded before it (and counted among its revoked tokens) or refused.
        let mut handles = Vec::new();
        let mut ending = None;
        for i in 0..64 {
            let s = store.clone();
            let rec = token(&ta, 10, 100);
            handles.push(tokio::spawn(async move {
                s.record_token(rec, draft("i")).await.is_ok()
            }));
            if i == 32 {
                let s = store.clone();
                let e = end(&ta, Some(&a.id), 10);
                ending = Some(tokio::spawn(async move { s.end_task(e).await.unwrap() }));
            }
        }
        let mut ok = 0;
        for h in handles {
            ok += usize::from(h.await.unwrap());
        }
        let ended = ending.unwrap().await.unwrap();
        let listed = store.list_tokens(Some(&ta.id), 1000).await.unwrap().len();
        assert_eq!(ok, listed, "every acknowledged token is recorded");
        assert_eq!(
            ended.revoked_tokens as usize, listed,
            "no token was recorded after the end"
        );
        let late = store.record_token(token(&ta, 11, 100), draft("i")).await;
        assert!(matches!(late, Err(StoreError::Precondition(_))));

        store
            .change_agent_state(ChangeAgentState {
                name: b.name.clone(),
                state: AgentState::Suspended,
                now: 20,
                max_ttl_seconds: 900,
                audit: draft("suspend"),
            })
            .await
            .unwrap();
        store
            .change_agent_state(ChangeAgentState {
                name: c.name.clone(),
                state: AgentState::Offboarded,
                now: 20,
                max_ttl_seconds: 900,
                audit: draft("offboard"),
            })
            .await
            .unwrap();
        let r = store.record_token(token(&tb, 21, 100), draft("i")).await;
        assert!(matches!(r, Err(StoreError::Precondition(_))));
        // Three agents (one offboarded, unbound) and the one task still open.
        assert_eq!(store.inner.cache.len(), (3, 1));
        cached = reads(&store, &[&a, &b, &c], &[&ta, &ta2, &tb, &tc]).await;
    }
    let uncached = RedbStore::open(
        &path,
        StoreOptions {
            cached_records: 0,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    assert_eq!(uncached.inner.cache.len(), (0, 0));
    let from_file = reads(&uncached, &[&a, &b, &c], &[&ta, &ta2, &tb, &tc]).await;
    assert_eq!(cached, from_file);
    drop(uncached);
    // A reopened store starts from the file too.
    let warm = RedbStore::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(warm.inner.cache.len(), (3, 1));
    assert_eq!(
        reads(&warm, &[&a, &b, &c], &[&ta, &ta2, &tb, &tc]).await,
        from_file
    );
    let states: Vec<_> = from_file[0]
        .2
        .iter()
        .map(|t| t.as_ref().unwrap().state)
        .collect();
    assert_eq!(
        states,
        [
            TaskState::Completed,
            TaskState::Open,
            TaskState::Revoked,
            TaskState::Revoked
        ]
    );
    assert!(from_file[2].1.is_none(), "offboarded identity is unbound");
    assert_eq!(
        from_file[1].0.as_ref().unwrap().state,
        AgentState::Suspended
    );
}

#[tokio::test]
async fn a_task_and_its_token_are_written_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store = RedbStore::open(&path, StoreOptions::default()).unwrap();
    let a = agent("bot", "sub-1");
    store
        .register_agent(a.clone(), draft("register"))
        .await
        .unwrap();
    let mut t = task(&a, 1000, 300);
    t.implicit = true;
    let mut rec = token(&t, 1000, 300);
    rec.status_index = Some(7);
    let made = store
        .create_task_with_token(t.clone(), draft("start"), rec.clone(), draft("issue"))
        .await
        .unwrap();
    assert!(made.implicit);
    assert!(store.task(&t.id).await.unwrap().unwrap().implicit);
    assert_eq!(store.token(&rec.id).await.unwrap().unwrap(), rec);
    let before = store.stats().await.unwrap();

    // The position is taken: neither the task nor the token is written.
    let t2 = task(&a, 1000, 300);
    let mut rec2 = token(&t2, 1000, 300);
    rec2.status_index = Some(7);
    let e = store
        .create_task_with_token(t2.clone(), draft("start"), rec2.clone(), draft("issue"))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Precondition(_)), "{e:?}");
    assert!(store.task(&t2.id).await.unwrap().is_none());
    assert!(store.token(&rec2.id).await.unwrap().is_none());
    // A token for another task, or issued after the task's deadline: refused too.
    let t3 = task(&a, 1000, 300);
    let e = store
        .create_task_with_token(
            t3.clone(),
            draft("start"),
            token(&t2, 1000, 300),
            draft("issue"),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Precondition(_)), "{e:?}");
    let e = store
        .create_task_with_token(
            t3.clone(),
            draft("start"),
            token(&t3, 1300, 60),
            draft("issue"),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Precondition(_)), "{e:?}");
    assert!(store.task(&t3.id).await.unwrap().is_none());
    let after = store.stats().await.unwrap();
    assert_eq!((before.tasks, before.tokens), (after.tasks, after.tokens));
}

#[tokio::test]
async fn policy_sets_are_versioned_and_durable() {
    use taskpass_core::{PolicyFile, PolicyOrigin, PolicySetRecord};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let set = |text: &str| {
        let files = vec![PolicyFile {
            name: "a.cedar".into(),
            text: text.into(),
        }];
        PolicySetRecord {
            version: 0,
            digest: PolicySetRecord::digest_of(&files),
            files,
            policy_ids: vec!["a:1".into()],
            applied_at: 5,
            applied_by: "op".into(),
            origin: PolicyOrigin::Apply,
        }
    };
    {
        let s = RedbStore::open(&path, StoreOptions::default()).unwrap();
        assert!(s.policy_sets(10).await.unwrap().is_empty());
        let one = s
            .record_policy_set(
                set("permit (principal, action, resource);"),
                draft("policy.apply"),
            )
            .await
            .unwrap();
        assert_eq!(one.version, 1);
        let two = s
            .record_policy_set(set("// none"), draft("policy.apply"))
            .await
            .unwrap();
        assert_eq!(two.version, 2);
        let tail = s.audit_tail(1).await.unwrap();
        assert!(tail[0].detail.starts_with("version=2"), "{:?}", tail[0]);
    }
    // The writer thread of the first handle lets go of the file before the second opens it.
    let s = loop {
        match RedbStore::open(&path, StoreOptions::default()) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    };
    let all = s.policy_sets(10).await.unwrap();
    assert_eq!(all.iter().map(|p| p.version).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(
        all[1].files[0].text,
        "permit (principal, action, resource);"
    );
    assert_eq!(s.policy_sets(1).await.unwrap().len(), 1);
}
