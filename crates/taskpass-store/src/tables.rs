//! The on-disk format: one definition per table. Values are JSON of the `taskpass-core`
//! records; keys are chosen so that inserts append (ULID ids, sequence numbers).

use redb::TableDefinition;

/// The schema version this build writes. Bump it with a migration in `RedbStore::open`.
pub const SCHEMA_VERSION: u64 = 2;

/// `schema_version` and other single values.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Agent name → Agent.
pub(crate) const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
/// A binding's key (kind, part, part: see `Binding::key`) → agent name, for the agents that
/// are not offboarded. Schema 2.
pub(crate) const BINDINGS: TableDefinition<(&str, &str, &str), &str> =
    TableDefinition::new("bindings");
/// Schema 1's (OIDC issuer, subject) → agent name; migrated into `BINDINGS` and deleted.
pub(crate) const OIDC_BINDINGS_V1: TableDefinition<(&str, &str), &str> =
    TableDefinition::new("oidc_bindings");
/// Task id → Task.
pub(crate) const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
/// (agent id, task id) → ().
pub(crate) const TASKS_BY_AGENT: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("tasks_by_agent");
/// (deadline, task id) → () for open tasks only: what the sweeper scans.
pub(crate) const OPEN_TASK_DEADLINES: TableDefinition<(i64, &str), ()> =
    TableDefinition::new("open_task_deadlines");
/// Token id → TokenRecord.
pub(crate) const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
/// (task id, token id) → ().
pub(crate) const TOKENS_BY_TASK: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("tokens_by_task");
/// Serial (lowercase hex) → CertificateRecord, for certificates the broker's CA issued.
pub(crate) const CERTIFICATES: TableDefinition<&str, &[u8]> = TableDefinition::new("certificates");
/// (holder key, serial) → ().
pub(crate) const CERTIFICATES_BY_HOLDER: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("certificates_by_holder");
/// Sequence → RevocationEvent.
/// Status-list index → token id: which token holds each position of the status lists.
pub(crate) const STATUS_INDEX: TableDefinition<u64, &str> = TableDefinition::new("status_index");

pub(crate) const REVOCATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("revocations");
/// Approval id → task id, for the tasks waiting for a human's approval.
pub(crate) const PENDING_APPROVALS: TableDefinition<&str, &str> =
    TableDefinition::new("pending_approvals");
/// Version → PolicySetRecord: every policy set put in force, the newest in force now.
pub(crate) const POLICY_SETS: TableDefinition<u64, &[u8]> = TableDefinition::new("policy_sets");
/// Sequence → AuditEntry.
pub(crate) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

pub(crate) const META_SCHEMA_VERSION: &str = "schema_version";
/// `meta` key: when the writer last proved, after a failed commit, that the file takes
/// writes again (Unix seconds).
pub(crate) const META_LAST_PROBE: &str = "last_write_probe";
