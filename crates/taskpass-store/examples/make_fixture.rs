//! Writes the format-compatibility fixture `tests/fixtures/store-v<N>.redb.gz`: a small store
//! in the current schema, to be kept and opened by every later version.
//!
//! `cargo run -p taskpass-store --example make_fixture` (only when the schema version changes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;

use taskpass_core::{
    Agent, AgentName, AgentState, AllowList, Audience, AuditEntry, Binding, Purpose, ScopeSet,
    SpiffeId, Task, TaskId, TaskState, TokenId, TokenRecord, TrustDomain,
};
use taskpass_store::{EndTask, RedbStore, SCHEMA_VERSION, Store, StoreOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let store = RedbStore::open(&path, StoreOptions::default()).unwrap();
        let name = AgentName::parse("fixture-bot").unwrap();
        let agent = Agent {
            id: TrustDomain::parse("example.org").unwrap().agent_id(&name),
            name,
            owner: "owner".into(),
            purpose: "format fixture".into(),
            tenant: "t".into(),
            environment: "e".into(),
            labels: Vec::new(),
            state: AgentState::Active,
            bindings: vec![
                Binding::Oidc {
                    issuer: "https://issuer.example".into(),
                    subject: "sub".into(),
                },
                Binding::X509 {
                    spiffe_id: SpiffeId::parse("spiffe://example.org/agent/fixture-bot").unwrap(),
                },
            ],
            allow: AllowList {
                audiences: Audience::parse_list(&["https://api.example"]).unwrap(),
                scopes: ScopeSet::parse(&["read", "write"]).unwrap(),
                max_ttl_seconds: Some(600),
                approval_scopes: ScopeSet::parse(&["admin"]).unwrap(),
            },
            review_every_days: 90,
            created_at: 1_700_000_000,
            updated_at: 1_700_000_000,
        };
        store
            .register_agent(
                agent.clone(),
                AuditEntry::draft(1_700_000_000, "op", "agent.register"),
            )
            .await
            .unwrap();
        for (i, complete) in [(1u128, true), (2, false)] {
            let task = Task {
                id: TaskId::from_ulid(ulid::Ulid::from_parts(1_700_000_000_000, i)),
                agent: agent.id.clone(),
                state: TaskState::Open,
                purpose: Purpose::parse("fixture task").unwrap(),
                audiences: agent.allow.audiences.clone(),
                scopes: agent.allow.scopes.clone(),
                created_at: 1_700_000_000,
                expires_at: 4_000_000_000,
                ended_at: None,
                on_behalf_of: None,
                approval_id: None,
                approved_by: None,
                user: None,
                approval: None,
                implicit: false,
            };
            store
                .create_task(
                    task.clone(),
                    AuditEntry::draft(1_700_000_000, "agent", "start_task"),
                )
                .await
                .unwrap();
            let token = TokenRecord {
                id: TokenId::from_ulid(ulid::Ulid::from_parts(1_700_000_000_001, i)),
                task: task.id,
                agent: agent.id.clone(),
                audience: agent.allow.audiences[0].clone(),
                scopes: task.scopes.clone(),
                issued_at: 1_700_000_001,
                expires_at: 3_999_999_999,
                revoked_at: None,
                status_index: None,
                certificate: None,
            };
            store
                .record_token(
                    token,
                    AuditEntry::draft(1_700_000_001, "agent", "issue_token"),
                )
                .await
                .unwrap();
            if complete {
                store
                    .end_task(EndTask {
                        task: task.id,
                        owner: Some(agent.id.clone()),
                        state: TaskState::Completed,
                        reason: "task_completed".into(),
                        now: 1_700_000_002,
                        audit: AuditEntry::draft(1_700_000_002, "agent", "complete_task"),
                    })
                    .await
                    .unwrap();
            }
        }
    }
    let bytes = std::fs::read(&path).unwrap();
    let out = format!(
        "{}/tests/fixtures/store-v{SCHEMA_VERSION}.redb.gz",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&out).unwrap(),
        flate2::Compression::best(),
    );
    gz.write_all(&bytes).unwrap();
    gz.finish().unwrap();
    println!("wrote {out}");
}
