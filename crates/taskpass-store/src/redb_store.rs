use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use async_trait::async_trait;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use taskpass_core::{
    Agent, AgentId, AgentName, AgentState, AuditEntry, AuditOutcome, Binding, CertificateRecord,
    GENESIS_HASH, PolicySetRecord, PrincipalKind, RevocationEvent, RevocationKind, Task, TaskId,
    TaskState, TokenId, TokenRecord, verify_chain,
};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::cache::{Changes, RecordCache};
use crate::tables::*;
use crate::{
    AuditDraft, AuditVerification, ChangeAgentState, ChangedAgent, DecideApproval, EndTask,
    EndedTask, IssueCertificate, RevokeCertificate, Store, StoreError, StoreStats,
};

/// Tuning for [`RedbStore`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// redb's page cache, bytes. Bounds the store's share of the broker's memory.
    pub cache_size_bytes: usize,
    /// Most commands applied in one transaction.
    pub max_batch: usize,
    /// Commands that may wait for the writer before callers are slowed down.
    pub queue_depth: usize,
    /// Under concurrent load (the previous commit ended less than four times this ago and more
    /// than one command is arriving at a time), how long the writer waits for more commands
    /// before committing a small batch. Every commit costs about a millisecond of CPU whatever
    /// its size, so a short wait buys much larger batches; an idle store, or a single caller
    /// writing one command at a time, commits at once. Zero turns it off.
    pub coalesce: std::time::Duration,
    /// Agents, and open tasks, kept decoded in memory (each up to this many) so that agent
    /// calls read them without a transaction. Zero turns the cache off.
    pub cached_records: usize,
    /// Revocations the live feed holds for its slowest subscriber; one that falls further
    /// behind sees `Lagged` (the broker then cuts it off, to resume from its cursor).
    pub revocation_feed: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_size_bytes: 64 << 20,
            max_batch: 1024,
            queue_depth: 8192,
            coalesce: std::time::Duration::from_micros(500),
            cached_records: 20_000,
            revocation_feed: 4096,
        }
    }
}

/// The embedded store: one redb file, one writer thread that groups commits. Clones share
/// the same file and writer; when the last clone is dropped the writer finishes its queue and
/// the file is closed before the drop returns.
#[derive(Debug, Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

/// What the writer has done, for metrics.
#[derive(Debug, Default)]
struct WriterStats {
    commits: AtomicU64,
    commands: AtomicU64,
    micros: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    stats: Arc<WriterStats>,
    cache: Arc<RecordCache>,
    db: DbSlot,
    health: Arc<Health>,
    /// The operators' lane, then the agents' lane (see `writer.rs`).
    lanes: Option<(mpsc::Sender<Job>, mpsc::Sender<Job>)>,
    revocations: broadcast::Sender<RevocationEvent>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.lanes.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug)]
enum Command {
    RegisterAgent(Agent, AuditDraft),
    UpdateAgent(Agent, AuditDraft),
    ChangeAgentState(ChangeAgentState),
    CreateTask(Box<Task>, AuditDraft),
    /// A task and its one token, in one write (the token endpoint's implicit tasks).
    CreateTaskWithToken(Box<(Task, AuditDraft, TokenRecord, AuditDraft)>),
    EndTask(EndTask),
    ExpireTasks(i64),
    RecordToken(TokenRecord, AuditDraft),
    RevokeToken {
        id: TokenId,
        reason: String,
        now: i64,
        audit: AuditDraft,
    },
    AppendAudit(AuditDraft),
    AppendAudits(Vec<AuditDraft>),
    RecordCertificate(IssueCertificate),
    RevokeCertificate(RevokeCertificate),
    RecordPolicySet(Box<PolicySetRecord>, AuditDraft),
    DecideApproval(DecideApproval),
}

#[derive(Debug)]
enum Outcome {
    Agent(Agent),
    ChangedAgent(ChangedAgent),
    Task(Task),
    Ended(EndedTask),
    Expired(Vec<EndedTask>),
    RevokedToken(TokenRecord, RevocationEvent),
    Certificate(CertificateRecord),
    RevokedCertificate(CertificateRecord, RevocationEvent),
    PolicySet(Box<PolicySetRecord>),
    Done,
}

#[derive(Debug)]
struct Job {
    cmd: Command,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

#[derive(Debug, Clone)]
struct Heads {
    audit_seq: u64,
    audit_hash: String,
    revocation_seq: u64,
}

fn open_db(path: &Path, cache_size_bytes: usize) -> Result<Database, StoreError> {
    let db = Database::builder()
        .set_cache_size(cache_size_bytes)
        .create(path)?;
    restrict_permissions(path)?;
    Ok(db)
}

impl RedbStore {
    /// Opens (or creates) the store file at `path` and starts its writer thread. The file is
    /// made private (0600). Must be called inside a tokio runtime only for the async methods;
    /// opening itself is blocking.
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let db = open_db(path, options.cache_size_bytes)?;
        let heads = init_schema(&db)?;
        let cache = Arc::new(RecordCache::new(options.cached_records));
        warm_cache(&db, &cache, options.cached_records)?;
        let db = Arc::new(db);
        let slot: DbSlot = Arc::new(std::sync::RwLock::new(Some(Arc::clone(&db))));
        let depth = options.queue_depth.max(1);
        let (priority_tx, priority) = mpsc::channel(depth.min(1024));
        let (agent_tx, agent) = mpsc::channel(depth);
        let (revocations, _) = broadcast::channel(options.revocation_feed.max(1));
        let stats = Arc::new(WriterStats::default());
        let health = Arc::new(Health::default());
        let writer = Writer {
            path: path.to_path_buf(),
            cache_size_bytes: options.cache_size_bytes,
            cached_records: options.cached_records,
            slot: Arc::clone(&slot),
            db: Some(db),
            heads,
            cache: Arc::clone(&cache),
            events_out: revocations.clone(),
            stats: Arc::clone(&stats),
            health: Arc::clone(&health),
            max_batch: options.max_batch.max(1),
            coalesce: options.coalesce,
        };
        let thread = thread::Builder::new()
            .name("taskpass-store-writer".into())
            .spawn(move || writer.run(Lanes { priority, agent }))
            .map_err(|e| StoreError::Engine(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                stats,
                cache,
                db: slot,
                health,
                lanes: Some((priority_tx, agent_tx)),
                revocations,
                thread: Some(thread),
            }),
        })
    }

    async fn submit(&self, cmd: Command) -> Result<Outcome, StoreError> {
        // While the file cannot be written, refuse at once rather than queue behind a probe.
        if let Some(why) = self.inner.health.failure() {
            return Err(StoreError::Unwritable(why));
        }
        let (reply, rx) = oneshot::channel();
        let (priority, agent) = self.inner.lanes.as_ref().ok_or(StoreError::Closed)?;
        let lane = match cmd.lane() {
            Lane::Priority => priority,
            Lane::Agent => agent,
        };
        lane.send(Job { cmd, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The open file, unless the writer is reopening it after a failure.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        let slot = self
            .inner
            .db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match slot.as_ref() {
            Some(db) => Ok(Arc::clone(db)),
            None => Err(StoreError::Unwritable(
                self.inner
                    .health
                    .failure()
                    .unwrap_or_else(|| "the store file is being reopened".into()),
            )),
        }
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db()?.begin_read()?;
        f(&txn)
    }
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| StoreError::Engine(format!("cannot make {} private: {e}", path.display())))
}

#[cfg(not(unix))]
fn restrict_permissions(_: &Path) -> Result<(), StoreError> {
    Ok(())
}

fn init_schema(db: &Database) -> Result<Heads, StoreError> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        let found = meta.get(META_SCHEMA_VERSION)?.map(|v| v.value());
        match found {
            None => {
                meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION)?;
            }
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::UnsupportedSchema {
                    found: v,
                    supported: SCHEMA_VERSION,
                });
            }
            Some(SCHEMA_VERSION) => {}
            // Older versions migrate here, one step at a time, in this transaction: a crash
            // midway leaves the file as it was.
            Some(v) => {
                if v < 2 {
                    migrate_v1_to_v2(&txn)?;
                }
                tracing::info!(from = v, to = SCHEMA_VERSION, "store schema migrated");
                meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION)?;
            }
        }
        // Create every table so readers never meet a missing one.
        txn.open_table(AGENTS)?;
        txn.open_table(BINDINGS)?;
        txn.open_table(TASKS)?;
        txn.open_table(TASKS_BY_AGENT)?;
        txn.open_table(OPEN_TASK_DEADLINES)?;
        txn.open_table(TOKENS)?;
        txn.open_table(TOKENS_BY_TASK)?;
        txn.open_table(REVOCATIONS)?;
        txn.open_table(AUDIT)?;
        txn.open_table(CERTIFICATES)?;
        txn.open_table(CERTIFICATES_BY_HOLDER)?;
        txn.open_table(STATUS_INDEX)?;
        txn.open_table(POLICY_SETS)?;
        txn.open_table(PENDING_APPROVALS)?;
    }
    let heads = {
        let audit = txn.open_table(AUDIT)?;
        let (audit_seq, audit_hash) = match audit.last()? {
            Some((k, v)) => {
                let e: AuditEntry = decode("audit", v.value())?;
                (k.value(), e.hash)
            }
            None => (0, GENESIS_HASH.to_owned()),
        };
        let revocation_seq = txn
            .open_table(REVOCATIONS)?
            .last()?
            .map(|(k, _)| k.value())
            .unwrap_or(0);
        Heads {
            audit_seq,
            audit_hash,
            revocation_seq,
        }
    };
    txn.commit()?;
    Ok(heads)
}

/// Schema 1 → 2: an agent's `oidc` list becomes `bindings` (tagged by kind), and the
/// `oidc_bindings` index becomes the `bindings` index of every kind.
fn migrate_v1_to_v2(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut agents = txn.open_table(AGENTS)?;
    let mut rewritten = Vec::new();
    for row in agents.iter()? {
        let (k, v) = row?;
        let mut record: serde_json::Map<String, serde_json::Value> =
            decode("agent (schema 1)", v.value())?;
        let oidc = record.remove("oidc").unwrap_or_default();
        let bindings: Vec<Binding> = match oidc {
            serde_json::Value::Array(list) => list
                .into_iter()
                .map(|b| {
                    let get = |f: &str| b.get(f).and_then(|x| x.as_str()).map(str::to_owned);
                    match (get("issuer"), get("subject")) {
                        (Some(issuer), Some(subject)) => Ok(Binding::Oidc { issuer, subject }),
                        _ => Err(StoreError::Corrupt {
                            what: "agents",
                            detail: format!("agent {} has a malformed OIDC binding", k.value()),
                        }),
                    }
                })
                .collect::<Result<_, _>>()?,
            _ => Vec::new(),
        };
        let bindings = serde_json::to_value(&bindings).map_err(|e| StoreError::Encode {
            what: "agent bindings",
            detail: e.to_string(),
        })?;
        record.insert("bindings".into(), bindings);
        // It must read as a schema-2 agent before it is written back.
        let agent: Agent =
            serde_json::from_value(serde_json::Value::Object(record)).map_err(|e| {
                StoreError::Corrupt {
                    what: "agents",
                    detail: format!("agent {} after migration: {e}", k.value()),
                }
            })?;
        rewritten.push(agent);
    }
    for agent in &rewritten {
        agents.insert(agent.name.as_str(), encode("agent", agent)?.as_slice())?;
    }
    let mut bindings = txn.open_table(BINDINGS)?;
    {
        let old = txn.open_table(OIDC_BINDINGS_V1)?;
        for row in old.iter()? {
            let (k, v) = row?;
            let (issuer, subject) = k.value();
            bindings.insert(("oidc", issuer, subject), v.value())?;
        }
    }
    txn.delete_table(OIDC_BINDINGS_V1)?;
    Ok(())
}

/// The revocations after `after` up to and including `upto`, oldest first.
fn read_revocations(
    db: &Database,
    after: u64,
    upto: u64,
) -> Result<Vec<RevocationEvent>, StoreError> {
    let txn = db.begin_read()?;
    let mut out = Vec::new();
    for row in txn.open_table(REVOCATIONS)?.range(after + 1..=upto)? {
        let (_, v) = row?;
        out.push(decode("revocation", v.value())?);
    }
    Ok(out)
}

/// Loads the agents and open tasks into the cache, up to its capacity.
fn warm_cache(db: &Database, cache: &RecordCache, capacity: usize) -> Result<(), StoreError> {
    let txn = db.begin_read()?;
    let mut changes = Changes::default();
    for row in txn.open_table(AGENTS)?.iter()?.take(capacity) {
        let (k, v) = row?;
        let agent: Agent = decode("agent", v.value())?;
        changes.agents.insert(k.value().to_owned(), Arc::new(agent));
    }
    let tasks = txn.open_table(TASKS)?;
    for row in txn.open_table(OPEN_TASK_DEADLINES)?.iter()?.take(capacity) {
        let (k, _) = row?;
        let id = k.value().1;
        if let Some(task) = get_json::<Task>(&tasks, "task", id)? {
            changes.tasks.insert(id.to_owned(), Arc::new(task));
        }
    }
    cache.apply(changes);
    Ok(())
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

fn encode<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Encode {
        what,
        detail: e.to_string(),
    })
}

struct Tables<'t> {
    agents: Table<'t, &'static str, &'static [u8]>,
    bindings: Table<'t, (&'static str, &'static str, &'static str), &'static str>,
    tasks: Table<'t, &'static str, &'static [u8]>,
    tasks_by_agent: Table<'t, (&'static str, &'static str), ()>,
    deadlines: Table<'t, (i64, &'static str), ()>,
    tokens: Table<'t, &'static str, &'static [u8]>,
    tokens_by_task: Table<'t, (&'static str, &'static str), ()>,
    revocations: Table<'t, u64, &'static [u8]>,
    audit: Table<'t, u64, &'static [u8]>,
    certificates: Table<'t, &'static str, &'static [u8]>,
    certificates_by_holder: Table<'t, (&'static str, &'static str), ()>,
    status_index: Table<'t, u64, &'static str>,
    policy_sets: Table<'t, u64, &'static [u8]>,
    pending_approvals: Table<'t, &'static str, &'static str>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            agents: txn.open_table(AGENTS)?,
            bindings: txn.open_table(BINDINGS)?,
            tasks: txn.open_table(TASKS)?,
            tasks_by_agent: txn.open_table(TASKS_BY_AGENT)?,
            deadlines: txn.open_table(OPEN_TASK_DEADLINES)?,
            tokens: txn.open_table(TOKENS)?,
            tokens_by_task: txn.open_table(TOKENS_BY_TASK)?,
            revocations: txn.open_table(REVOCATIONS)?,
            audit: txn.open_table(AUDIT)?,
            certificates: txn.open_table(CERTIFICATES)?,
            certificates_by_holder: txn.open_table(CERTIFICATES_BY_HOLDER)?,
            status_index: txn.open_table(STATUS_INDEX)?,
            policy_sets: txn.open_table(POLICY_SETS)?,
            pending_approvals: txn.open_table(PENDING_APPROVALS)?,
        })
    }
}

/// True for the errors that leave the transaction half-written: the whole batch must abort.
fn is_fatal(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Engine(_)
            | StoreError::Unwritable(_)
            | StoreError::Corrupt { .. }
            | StoreError::Closed
    )
}

type BatchResult = (Vec<Result<Outcome, StoreError>>, Changes);

fn apply_batch(
    db: &Database,
    batch: &[Job],
    heads: &mut Heads,
    events: &mut Vec<RevocationEvent>,
    cache: &RecordCache,
) -> Result<BatchResult, StoreError> {
    let txn = db.begin_write()?;
    let mut results = Vec::with_capacity(batch.len());
    let mut rec = Records {
        cache,
        changes: Changes::default(),
    };
    {
        let mut t = Tables::open(&txn)?;
        for job in batch {
            match apply(&mut t, &mut rec, heads, &job.cmd, events) {
                Err(e) if is_fatal(&e) => return Err(e),
                Err(e) => {
                    // A refused command still leaves its decision in the audit log.
                    if let Some(draft) = audit_draft(&job.cmd) {
                        let mut denied = draft.clone();
                        denied.outcome = AuditOutcome::Deny;
                        denied.reason = e.to_string();
                        append_audit(&mut t, heads, denied)?;
                    }
                    results.push(Err(e));
                }
                Ok(o) => results.push(Ok(o)),
            }
        }
    }
    txn.commit()?;
    Ok((results, rec.changes))
}

/// The agents and tasks as this batch sees them: its own writes first, then the cache (the
/// committed state), then the file. Every agent and task the batch writes goes through here,
/// so the cache learns of it once the batch commits.
struct Records<'c> {
    cache: &'c RecordCache,
    changes: Changes,
}

impl Records<'_> {
    fn agent(&mut self, t: &Tables<'_>, name: &str) -> Result<Option<Arc<Agent>>, StoreError> {
        if let Some(a) = self.changes.agents.get(name) {
            return Ok(Some(Arc::clone(a)));
        }
        if let Some(a) = self.cache.agent(name) {
            return Ok(Some(a));
        }
        let Some(agent) = get_json::<Agent>(&t.agents, "agent", name)? else {
            return Ok(None);
        };
        let agent = Arc::new(agent);
        self.changes
            .agents
            .insert(name.to_owned(), Arc::clone(&agent));
        Ok(Some(agent))
    }

    /// The agent, which must exist and be active.
    fn active_agent(&mut self, t: &Tables<'_>, id: &AgentId) -> Result<Arc<Agent>, StoreError> {
        let agent = self
            .agent(t, agent_name_of(id))?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("agent {id}"),
            })?;
        if agent.state != AgentState::Active {
            return Err(StoreError::Precondition(format!(
                "agent {} is {}",
                agent.name,
                agent.state.as_str()
            )));
        }
        Ok(agent)
    }

    fn task(&mut self, t: &Tables<'_>, id: &str) -> Result<Option<Arc<Task>>, StoreError> {
        if let Some(task) = self.changes.tasks.get(id) {
            return Ok(Some(Arc::clone(task)));
        }
        if let Some(task) = self.cache.task(id) {
            return Ok(Some(task));
        }
        let Some(task) = get_json::<Task>(&t.tasks, "task", id)? else {
            return Ok(None);
        };
        let task = Arc::new(task);
        self.changes.tasks.insert(id.to_owned(), Arc::clone(&task));
        Ok(Some(task))
    }

    fn put_agent(&mut self, t: &mut Tables<'_>, agent: Agent) -> Result<(), StoreError> {
        t.agents
            .insert(agent.name.as_str(), encode("agent", &agent)?.as_slice())?;
        self.changes
            .agents
            .insert(agent.name.to_string(), Arc::new(agent));
        Ok(())
    }

    fn put_task(&mut self, t: &mut Tables<'_>, id: &str, task: Task) -> Result<(), StoreError> {
        t.tasks.insert(id, encode("task", &task)?.as_slice())?;
        self.changes.tasks.insert(id.to_owned(), Arc::new(task));
        Ok(())
    }
}

fn audit_draft(cmd: &Command) -> Option<&AuditDraft> {
    match cmd {
        Command::RegisterAgent(_, a)
        | Command::UpdateAgent(_, a)
        | Command::CreateTask(_, a)
        | Command::RecordToken(_, a)
        | Command::AppendAudit(a)
        | Command::RevokeToken { audit: a, .. } => Some(a),
        Command::AppendAudits(_) => None,
        Command::CreateTaskWithToken(pair) => Some(&pair.1),
        Command::ChangeAgentState(c) => Some(&c.audit),
        Command::RecordCertificate(c) => Some(&c.audit),
        Command::RevokeCertificate(c) => Some(&c.audit),
        Command::RecordPolicySet(_, a) => Some(a),
        Command::DecideApproval(d) => Some(&d.audit),
        Command::EndTask(e) => Some(&e.audit),
        Command::ExpireTasks(_) => None,
    }
}

fn append_audit(
    t: &mut Tables<'_>,
    heads: &mut Heads,
    draft: AuditDraft,
) -> Result<(), StoreError> {
    let seq = heads.audit_seq + 1;
    let entry = draft
        .seal(seq, &heads.audit_hash)
        .map_err(|e| StoreError::Encode {
            what: "audit entry",
            detail: e.to_string(),
        })?;
    t.audit
        .insert(seq, encode("audit entry", &entry)?.as_slice())?;
    heads.audit_seq = seq;
    heads.audit_hash = entry.hash;
    Ok(())
}

fn append_revocation(
    t: &mut Tables<'_>,
    heads: &mut Heads,
    events: &mut Vec<RevocationEvent>,
    mut event: RevocationEvent,
) -> Result<RevocationEvent, StoreError> {
    let seq = heads.revocation_seq + 1;
    event.sequence = seq;
    t.revocations
        .insert(seq, encode("revocation", &event)?.as_slice())?;
    heads.revocation_seq = seq;
    events.push(event.clone());
    Ok(event)
}

fn get_json<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    what: &'static str,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match table.get(key)? {
        Some(v) => decode(what, v.value()).map(Some),
        None => Ok(None),
    }
}

fn agent_name_of(id: &AgentId) -> &str {
    id.as_str().rsplit('/').next().unwrap_or_default()
}

fn create_task(
    t: &mut Tables<'_>,
    rec: &mut Records<'_>,
    heads: &mut Heads,
    task: &Task,
    audit: &AuditDraft,
) -> Result<Outcome, StoreError> {
    rec.active_agent(t, &task.agent)?;
    let id = task.id.to_string();
    // Every check before the first write: a refusal must leave nothing behind.
    let approval = match (task.state, task.approval_id.as_deref()) {
        (TaskState::PendingApproval, Some(a)) => Some(a),
        (TaskState::PendingApproval, None) => {
            return Err(StoreError::Precondition(format!(
                "task {id} waits for approval without an id"
            )));
        }
        _ => None,
    };
    rec.put_task(t, &id, task.clone())?;
    t.tasks_by_agent
        .insert((task.agent.as_str(), id.as_str()), ())?;
    if matches!(task.state, TaskState::Open | TaskState::PendingApproval) {
        t.deadlines.insert((task.expires_at, id.as_str()), ())?;
    }
    if let Some(approval) = approval {
        t.pending_approvals.insert(approval, id.as_str())?;
    }
    append_audit(t, heads, audit.clone())?;
    Ok(Outcome::Task(task.clone()))
}

/// A position is given once: a second token there would share its status.
fn status_index_free(t: &Tables<'_>, token: &TokenRecord) -> Result<(), StoreError> {
    if let Some(i) = token.status_index
        && t.status_index.get(i)?.is_some()
    {
        return Err(StoreError::Precondition(format!(
            "status index {i} is taken"
        )));
    }
    Ok(())
}

fn record_token(
    t: &mut Tables<'_>,
    rec: &mut Records<'_>,
    heads: &mut Heads,
    token: &TokenRecord,
    audit: &AuditDraft,
) -> Result<Outcome, StoreError> {
    rec.active_agent(t, &token.agent)?;
    let task_id = token.task.to_string();
    let task = rec
        .task(t, &task_id)?
        .filter(|task| task.agent == token.agent)
        .ok_or_else(|| StoreError::NotFound {
            what: format!("task {task_id}"),
        })?;
    let state = task.effective_state(token.issued_at);
    if state != TaskState::Open {
        return Err(StoreError::Precondition(format!(
            "task {task_id} is {}",
            state.as_str()
        )));
    }
    let id = token.id.to_string();
    status_index_free(t, token)?;
    t.tokens
        .insert(id.as_str(), encode("token", token)?.as_slice())?;
    t.tokens_by_task
        .insert((task_id.as_str(), id.as_str()), ())?;
    if let Some(i) = token.status_index {
        t.status_index.insert(i, id.as_str())?;
    }
    append_audit(t, heads, audit.clone())?;
    Ok(Outcome::Done)
}

fn apply(
    t: &mut Tables<'_>,
    rec: &mut Records<'_>,
    heads: &mut Heads,
    cmd: &Command,
    events: &mut Vec<RevocationEvent>,
) -> Result<Outcome, StoreError> {
    match cmd {
        Command::RegisterAgent(agent, audit) => {
            if t.agents.get(agent.name.as_str())?.is_some() {
                return Err(StoreError::AlreadyExists {
                    what: format!("agent {}", agent.name),
                });
            }
            for b in &agent.bindings {
                if let Some(owner) = t.bindings.get(b.key())? {
                    return Err(StoreError::AlreadyExists {
                        what: format!("{b} (bound to agent {})", owner.value()),
                    });
                }
            }
            rec.put_agent(t, agent.clone())?;
            for b in &agent.bindings {
                t.bindings.insert(b.key(), agent.name.as_str())?;
            }
            append_audit(t, heads, audit.clone())?;
            Ok(Outcome::Agent(agent.clone()))
        }
        Command::UpdateAgent(new, audit) => {
            let old: Agent = rec
                .agent(t, new.name.as_str())?
                .map(|a| (*a).clone())
                .ok_or_else(|| StoreError::NotFound {
                    what: format!("agent {}", new.name),
                })?;
            if old.state == AgentState::Offboarded {
                return Err(StoreError::Precondition(format!(
                    "agent {} is offboarded, which is final: register a new agent instead",
                    new.name
                )));
            }
            let mut agent = new.clone();
            agent.id = old.id.clone();
            agent.state = old.state;
            agent.created_at = old.created_at;
            for b in agent.bindings.iter().filter(|b| !old.bindings.contains(b)) {
                if let Some(owner) = t.bindings.get(b.key())? {
                    return Err(StoreError::AlreadyExists {
                        what: format!("{b} (bound to agent {})", owner.value()),
                    });
                }
            }
            for b in old.bindings.iter().filter(|b| !agent.bindings.contains(b)) {
                t.bindings.remove(b.key())?;
            }
            for b in agent.bindings.iter().filter(|b| !old.bindings.contains(b)) {
                t.bindings.insert(b.key(), agent.name.as_str())?;
            }
            let mut audit = audit.clone();
            audit.detail = format!("{} {}", audit.detail, changes(&old, &agent)?)
                .trim()
                .to_owned();
            rec.put_agent(t, agent.clone())?;
            append_audit(t, heads, audit)?;
            Ok(Outcome::Agent(agent))
        }
        Command::ChangeAgentState(c) => {
            let mut agent: Agent = rec
                .agent(t, c.name.as_str())?
                .map(|a| (*a).clone())
                .ok_or_else(|| StoreError::NotFound {
                    what: format!("agent {}", c.name),
                })?;
            if agent.state == AgentState::Offboarded {
                return Err(StoreError::Precondition(format!(
                    "agent {} is offboarded, which is final: register a new agent instead",
                    c.name
                )));
            }
            let mut revoked_tasks = 0u32;
            let mut revoked_certificates = 0u32;
            if matches!(c.state, AgentState::Suspended | AgentState::Offboarded) {
                let reason = if c.state == AgentState::Offboarded {
                    "agent_offboarded"
                } else {
                    "agent_suspended"
                };
                let ids: Vec<String> = {
                    let lo = (agent.id.as_str(), "");
                    let hi = (agent.id.as_str(), "~");
                    let mut ids = Vec::new();
                    for row in t.tasks_by_agent.range(lo..hi)? {
                        let (k, _) = row?;
                        ids.push(k.value().1.to_owned());
                    }
                    ids
                };
                for id in ids {
                    let task = rec.task(t, &id)?.ok_or_else(|| StoreError::Corrupt {
                        what: "tasks_by_agent",
                        detail: format!("index names missing task {id}"),
                    })?;
                    if !task.state.is_final() {
                        let task = (*task).clone();
                        end_task_in(
                            t,
                            rec,
                            heads,
                            events,
                            task,
                            TaskState::Revoked,
                            reason,
                            c.now,
                        )?;
                        revoked_tasks += 1;
                    }
                }
                if c.state == AgentState::Offboarded {
                    for b in &agent.bindings {
                        t.bindings.remove(b.key())?;
                    }
                    let revoked = revoke_holder_certificates(
                        t,
                        heads,
                        events,
                        agent.id.as_str(),
                        reason,
                        c.now,
                    )?;
                    if revoked > 0 {
                        revoked_certificates = revoked;
                    }
                    append_revocation(
                        t,
                        heads,
                        events,
                        RevocationEvent {
                            sequence: 0,
                            kind: RevocationKind::Agent,
                            id: agent.id.to_string(),
                            revoked_at: c.now,
                            not_after: c.now + i64::from(c.max_ttl_seconds),
                            reason: reason.to_owned(),
                            thumbprint: String::new(),
                        },
                    )?;
                }
            }
            agent.state = c.state;
            agent.updated_at = c.now;
            rec.put_agent(t, agent.clone())?;
            let mut audit = c.audit.clone();
            if revoked_tasks > 0 {
                audit.detail = format!("{} revoked_tasks={revoked_tasks}", audit.detail)
                    .trim()
                    .to_owned();
            }
            if revoked_certificates > 0 {
                audit.detail = format!(
                    "{} revoked_certificates={revoked_certificates}",
                    audit.detail
                )
                .trim()
                .to_owned();
            }
            append_audit(t, heads, audit)?;
            Ok(Outcome::ChangedAgent(ChangedAgent {
                agent,
                revoked_tasks,
            }))
        }
        Command::CreateTask(task, audit) => create_task(t, rec, heads, task, audit),
        Command::CreateTaskWithToken(pair) => {
            let (task, task_audit, token, token_audit) = &**pair;
            // Every check of both before any write: the pair is made whole or not at all.
            rec.active_agent(t, &task.agent)?;
            if token.task != task.id || token.agent != task.agent {
                return Err(StoreError::Precondition(
                    "the token is not for the task made with it".into(),
                ));
            }
            if task.effective_state(token.issued_at) != TaskState::Open {
                return Err(StoreError::Precondition(format!(
                    "task {} is not open when its token is issued",
                    task.id
                )));
            }
            status_index_free(t, token)?;
            let made = create_task(t, rec, heads, task, task_audit)?;
            // The task is written: a failure now must abort the whole batch (a fatal error
            // rolls the transaction back) rather than commit the task without its token.
            record_token(t, rec, heads, token, token_audit).map_err(|e| {
                if is_fatal(&e) {
                    e
                } else {
                    StoreError::Engine(format!("a task was written without its token: {e}"))
                }
            })?;
            Ok(made)
        }
        Command::EndTask(end) => {
            let id = end.task.to_string();
            let task: Task = rec
                .task(t, &id)?
                .filter(|task| end.owner.as_ref().is_none_or(|o| *o == task.agent))
                .map(|task| (*task).clone())
                .ok_or_else(|| StoreError::NotFound {
                    what: format!("task {id}"),
                })?;
            let state = task.effective_state(end.now);
            if state.is_final() {
                return Err(StoreError::Precondition(format!(
                    "task {id} is already {}",
                    state.as_str()
                )));
            }
            let ended = end_task_in(t, rec, heads, events, task, end.state, &end.reason, end.now)?;
            let mut audit = end.audit.clone();
            audit.detail = if audit.detail.is_empty() {
                format!("revoked_tokens={}", ended.revoked_tokens)
            } else {
                format!("{} revoked_tokens={}", audit.detail, ended.revoked_tokens)
            };
            append_audit(t, heads, audit)?;
            Ok(Outcome::Ended(ended))
        }
        Command::ExpireTasks(now) => {
            let due: Vec<String> = {
                let mut due = Vec::new();
                for row in t.deadlines.range(..=(*now, "~"))? {
                    let (k, _) = row?;
                    due.push(k.value().1.to_owned());
                    if due.len() >= 1000 {
                        break;
                    }
                }
                due
            };
            let mut ended = Vec::with_capacity(due.len());
            for id in due {
                let Some(task) = rec.task(t, &id)? else {
                    continue;
                };
                let mut task = (*task).clone();
                let agent = task.agent.to_string();
                // Unanswered in time, an approval is denied; an open task expires.
                let pending = task.state == TaskState::PendingApproval;
                let (state, reason, action, why) = if pending {
                    if let Some(a) = task.approval.as_mut() {
                        a.decided_at = Some(*now);
                        a.reason = "approval_expired".into();
                    }
                    (
                        TaskState::Denied,
                        "approval_expired",
                        "approval.expire",
                        "no approver answered in time",
                    )
                } else {
                    (
                        TaskState::Expired,
                        "task_expired",
                        "task.expire",
                        "task_deadline_passed",
                    )
                };
                let e = end_task_in(t, rec, heads, events, task, state, reason, *now)?;
                let mut audit = AuditEntry::draft(*now, "broker", action);
                audit.reason = why.into();
                audit.agent_id = agent;
                audit.task_id = id;
                audit.detail = format!("revoked_tokens={}", e.revoked_tokens);
                append_audit(t, heads, audit)?;
                ended.push(e);
            }
            Ok(Outcome::Expired(ended))
        }
        Command::RecordToken(token, audit) => record_token(t, rec, heads, token, audit),
        Command::RevokeToken {
            id,
            reason,
            now,
            audit,
        } => {
            let key = id.to_string();
            let mut token: TokenRecord =
                get_json(&t.tokens, "token", &key)?.ok_or_else(|| StoreError::NotFound {
                    what: format!("token {key}"),
                })?;
            if token.revoked_at.is_some() {
                return Err(StoreError::Precondition(format!(
                    "token {key} is already revoked"
                )));
            }
            token.revoked_at = Some(*now);
            t.tokens
                .insert(key.as_str(), encode("token", &token)?.as_slice())?;
            let event = append_revocation(
                t,
                heads,
                events,
                RevocationEvent {
                    sequence: 0,
                    kind: RevocationKind::Token,
                    id: key,
                    revoked_at: *now,
                    not_after: token.expires_at,
                    reason: reason.clone(),
                    thumbprint: String::new(),
                },
            )?;
            append_audit(t, heads, audit.clone())?;
            Ok(Outcome::RevokedToken(token, event))
        }
        Command::AppendAudit(audit) => {
            append_audit(t, heads, audit.clone())?;
            Ok(Outcome::Done)
        }
        Command::AppendAudits(audits) => {
            for a in audits {
                append_audit(t, heads, a.clone())?;
            }
            Ok(Outcome::Done)
        }
        Command::DecideApproval(d) => decide_approval(t, rec, heads, events, d),
        Command::RecordPolicySet(set, audit) => {
            let last = t.policy_sets.last()?.map(|(k, _)| k.value()).unwrap_or(0);
            let mut set = (**set).clone();
            set.version = last + 1;
            t.policy_sets
                .insert(set.version, encode("policy set", &set)?.as_slice())?;
            let mut audit = audit.clone();
            audit.detail = format!("version={} {}", set.version, audit.detail);
            append_audit(t, heads, audit)?;
            Ok(Outcome::PolicySet(Box::new(set)))
        }
        Command::RecordCertificate(c) => {
            if t.certificates.get(c.record.serial.as_str())?.is_some() {
                return Err(StoreError::AlreadyExists {
                    what: format!("certificate serial {}", c.record.serial),
                });
            }
            if let Some(name) = &c.agent {
                let mut agent: Agent = rec
                    .agent(t, name.as_str())?
                    .map(|a| (*a).clone())
                    .ok_or_else(|| StoreError::NotFound {
                        what: format!("agent {name}"),
                    })?;
                if agent.state != AgentState::Active {
                    return Err(StoreError::Precondition(format!(
                        "agent {name} is {}: certificates are issued to active agents only",
                        agent.state.as_str()
                    )));
                }
                let binding = Binding::X509 {
                    spiffe_id: c.record.subject.clone(),
                };
                if !agent.bindings.contains(&binding) {
                    if let Some(owner) = t.bindings.get(binding.key())? {
                        return Err(StoreError::AlreadyExists {
                            what: format!("{binding} (bound to agent {})", owner.value()),
                        });
                    }
                    t.bindings.insert(binding.key(), agent.name.as_str())?;
                    agent.bindings.push(binding);
                    agent.updated_at = c.record.issued_at;
                    rec.put_agent(t, agent)?;
                }
            }
            t.certificates.insert(
                c.record.serial.as_str(),
                encode("certificate", &c.record)?.as_slice(),
            )?;
            let holder = c.record.holder.key();
            t.certificates_by_holder
                .insert((holder.as_str(), c.record.serial.as_str()), ())?;
            append_audit(t, heads, c.audit.clone())?;
            Ok(Outcome::Certificate(c.record.clone()))
        }
        Command::RevokeCertificate(r) => {
            let mut cert: CertificateRecord = get_json(&t.certificates, "certificate", &r.serial)?
                .ok_or_else(|| StoreError::NotFound {
                    what: format!("certificate serial {}", r.serial),
                })?;
            if cert.revoked_at.is_some() {
                return Err(StoreError::Precondition(format!(
                    "certificate {} is already revoked",
                    r.serial
                )));
            }
            let event = revoke_certificate_in(t, heads, events, &mut cert, &r.reason, r.now)?;
            append_audit(t, heads, r.audit.clone())?;
            Ok(Outcome::RevokedCertificate(cert, event))
        }
    }
}

/// Every field that differs between two versions of an agent, `name=before->after`, as JSON
/// values (so that the audit line shows exactly what changed).
fn changes(old: &Agent, new: &Agent) -> Result<String, StoreError> {
    let enc = |a: &Agent| match serde_json::to_value(a) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(StoreError::Encode {
            what: "agent",
            detail: "not an object".into(),
        }),
        Err(e) => Err(StoreError::Encode {
            what: "agent",
            detail: e.to_string(),
        }),
    };
    let (old, new) = (enc(old)?, enc(new)?);
    let mut out = Vec::new();
    // Both agents' keys: a field left out when empty (labels) is a change when cleared.
    let mut keys: Vec<&String> = new.keys().chain(old.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        if k == "updated_at" {
            continue;
        }
        let after = new.get(k).unwrap_or(&serde_json::Value::Null);
        let before = old.get(k).unwrap_or(&serde_json::Value::Null);
        if before != after {
            out.push(format!(
                "{k}={}->{}",
                taskpass_core::canonical_json(before),
                taskpass_core::canonical_json(after)
            ));
        }
    }
    Ok(if out.is_empty() {
        "unchanged".into()
    } else {
        out.join(" ")
    })
}

/// The certificates whose (holder, serial) index keys fall in `range`, at most `limit`.
fn certificates_in(
    txn: &redb::ReadTransaction,
    range: std::ops::Range<(&str, &str)>,
    limit: usize,
) -> Result<Vec<CertificateRecord>, StoreError> {
    let certs = txn.open_table(CERTIFICATES)?;
    let mut out = Vec::new();
    for row in txn.open_table(CERTIFICATES_BY_HOLDER)?.range(range)? {
        let (k, _) = row?;
        let serial = k.value().1.to_owned();
        if let Some(c) = get_json(&certs, "certificate", &serial)? {
            out.push(c);
        }
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// Marks `cert` revoked and appends its revocation.
fn revoke_certificate_in(
    t: &mut Tables<'_>,
    heads: &mut Heads,
    events: &mut Vec<RevocationEvent>,
    cert: &mut CertificateRecord,
    reason: &str,
    now: i64,
) -> Result<RevocationEvent, StoreError> {
    cert.revoked_at = Some(now);
    cert.revoke_reason = reason.to_owned();
    t.certificates.insert(
        cert.serial.as_str(),
        encode("certificate", &*cert)?.as_slice(),
    )?;
    append_revocation(
        t,
        heads,
        events,
        RevocationEvent {
            sequence: 0,
            kind: RevocationKind::Certificate,
            id: cert.serial.clone(),
            revoked_at: now,
            not_after: cert.not_after,
            reason: reason.to_owned(),
            thumbprint: cert.thumbprint.clone(),
        },
    )
}

/// Revokes every live certificate of `holder`; returns how many.
fn revoke_holder_certificates(
    t: &mut Tables<'_>,
    heads: &mut Heads,
    events: &mut Vec<RevocationEvent>,
    holder: &str,
    reason: &str,
    now: i64,
) -> Result<u32, StoreError> {
    let serials: Vec<String> = {
        let mut out = Vec::new();
        for row in t
            .certificates_by_holder
            .range((holder, "")..(holder, "~"))?
        {
            let (k, _) = row?;
            out.push(k.value().1.to_owned());
        }
        out
    };
    let mut n = 0;
    for serial in serials {
        let mut cert: CertificateRecord = get_json(&t.certificates, "certificate", &serial)?
            .ok_or_else(|| StoreError::Corrupt {
                what: "certificates_by_holder",
                detail: format!("index names missing certificate {serial}"),
            })?;
        if cert.is_live(now) {
            revoke_certificate_in(t, heads, events, &mut cert, reason, now)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Answers a pending approval: opens the task (its deadline counted from now) or ends it
/// denied.
fn decide_approval(
    t: &mut Tables<'_>,
    rec: &mut Records<'_>,
    heads: &mut Heads,
    events: &mut Vec<RevocationEvent>,
    d: &DecideApproval,
) -> Result<Outcome, StoreError> {
    let not_found = || StoreError::NotFound {
        what: format!("approval {}", d.approval_id),
    };
    let id = t
        .pending_approvals
        .get(d.approval_id.as_str())?
        .map(|v| v.value().to_owned())
        .ok_or_else(not_found)?;
    let mut task: Task = rec
        .task(t, &id)?
        .map(|t| (*t).clone())
        .ok_or_else(not_found)?;
    let state = task.effective_state(d.now);
    if state != TaskState::PendingApproval {
        return Err(StoreError::Precondition(format!(
            "task {id} no longer waits for approval: it is {}",
            state.as_str()
        )));
    }
    let Some(approval) = task.approval.as_mut() else {
        return Err(StoreError::Precondition(format!(
            "task {id} waits for approval without its request"
        )));
    };
    approval.decided_by = Some(d.by.clone());
    approval.decided_at = Some(d.now);
    approval.reason.clone_from(&d.reason);
    let mut audit = d.audit.clone();
    audit.task_id.clone_from(&id);
    audit.agent_id = task.agent.to_string();
    if !d.approve {
        let ended = end_task_in(
            t,
            rec,
            heads,
            events,
            task,
            TaskState::Denied,
            "approval_denied",
            d.now,
        )?;
        append_audit(t, heads, audit)?;
        return Ok(Outcome::Task(ended.task));
    }
    rec.active_agent(t, &task.agent)?;
    let seconds = i64::from(approval.task_seconds.max(1));
    t.deadlines.remove((task.expires_at, id.as_str()))?;
    t.pending_approvals.remove(d.approval_id.as_str())?;
    task.state = TaskState::Open;
    task.approval_id = None;
    task.approved_by = Some(d.by.clone());
    task.expires_at = d.now.saturating_add(seconds);
    t.deadlines.insert((task.expires_at, id.as_str()), ())?;
    rec.put_task(t, &id, task.clone())?;
    append_audit(t, heads, audit)?;
    Ok(Outcome::Task(task))
}

/// Moves a task to a final state, counts its live tokens and appends its revocation.
#[allow(
    clippy::too_many_arguments,
    reason = "the writer's state, the task and what ends it"
)]
fn end_task_in(
    t: &mut Tables<'_>,
    rec: &mut Records<'_>,
    heads: &mut Heads,
    events: &mut Vec<RevocationEvent>,
    mut task: Task,
    state: TaskState,
    reason: &str,
    now: i64,
) -> Result<EndedTask, StoreError> {
    let id = task.id.to_string();
    let mut revoked_tokens = 0u32;
    let mut not_after = now;
    {
        let lo = (id.as_str(), "");
        let hi = (id.as_str(), "~");
        for row in t.tokens_by_task.range(lo..hi)? {
            let (k, _) = row?;
            let token_id = k.value().1;
            if let Some(v) = t.tokens.get(token_id)? {
                let rec: TokenRecord = decode("token", v.value())?;
                if rec.revoked_at.is_none() && rec.expires_at > now {
                    revoked_tokens += 1;
                    not_after = not_after.max(rec.expires_at);
                }
            }
        }
    }
    if matches!(task.state, TaskState::Open | TaskState::PendingApproval) {
        t.deadlines.remove((task.expires_at, id.as_str()))?;
    }
    if let Some(a) = task.approval_id.take() {
        t.pending_approvals.remove(a.as_str())?;
    }
    task.state = state;
    task.ended_at = Some(now);
    rec.put_task(t, &id, task.clone())?;
    let revocation = append_revocation(
        t,
        heads,
        events,
        RevocationEvent {
            sequence: 0,
            kind: RevocationKind::Task,
            id,
            revoked_at: now,
            not_after: not_after.min(task.expires_at.max(now)),
            reason: reason.to_owned(),
            thumbprint: String::new(),
        },
    )?;
    Ok(EndedTask {
        task,
        revoked_tokens,
        revocation,
    })
}

/// The newest `limit` records of `table`, newest first: all of them, or only those an
/// `(owner, id)` index lists under `owner` (ids are ULIDs, so key order is creation order).
fn newest<T: DeserializeOwned>(
    txn: &redb::ReadTransaction,
    table: redb::TableDefinition<&'static str, &'static [u8]>,
    index: redb::TableDefinition<(&'static str, &'static str), ()>,
    owner: Option<&str>,
    what: &'static str,
    limit: usize,
) -> Result<Vec<T>, StoreError> {
    let records = txn.open_table(table)?;
    let mut out = Vec::new();
    match owner {
        Some(owner) => {
            let index = txn.open_table(index)?;
            for row in index.range((owner, "")..(owner, "~"))?.rev() {
                let (k, _) = row?;
                if let Some(r) = get_json(&records, what, k.value().1)? {
                    out.push(r);
                }
                if out.len() >= limit {
                    break;
                }
            }
        }
        None => {
            for row in records.iter()?.rev().take(limit) {
                let (_, v) = row?;
                out.push(decode(what, v.value())?);
            }
        }
    }
    Ok(out)
}

macro_rules! expect_outcome {
    ($r:expr, $p:pat => $v:expr) => {
        match $r? {
            $p => Ok($v),
            other => Err(StoreError::Engine(format!(
                "writer answered with an unexpected outcome: {other:?}"
            ))),
        }
    };
}

#[async_trait]
impl Store for RedbStore {
    async fn register_agent(&self, agent: Agent, audit: AuditDraft) -> Result<Agent, StoreError> {
        expect_outcome!(self.submit(Command::RegisterAgent(agent, audit)).await, Outcome::Agent(a) => a)
    }

    async fn update_agent(&self, agent: Agent, audit: AuditDraft) -> Result<Agent, StoreError> {
        expect_outcome!(self.submit(Command::UpdateAgent(agent, audit)).await, Outcome::Agent(a) => a)
    }

    async fn change_agent_state(
        &self,
        change: ChangeAgentState,
    ) -> Result<ChangedAgent, StoreError> {
        expect_outcome!(self.submit(Command::ChangeAgentState(change)).await, Outcome::ChangedAgent(c) => c)
    }

    async fn agent(&self, name: &AgentName) -> Result<Option<Agent>, StoreError> {
        if let Some(a) = self.inner.cache.agent(name.as_str()) {
            return Ok(Some((*a).clone()));
        }
        self.read(|txn| get_json(&txn.open_table(AGENTS)?, "agent", name.as_str()))
    }

    async fn agent_by_binding(&self, binding: &Binding) -> Result<Option<Agent>, StoreError> {
        if let Some(a) = self.inner.cache.agent_by_binding(binding) {
            return Ok(Some((*a).clone()));
        }
        self.read(|txn| {
            let name = match txn.open_table(BINDINGS)?.get(binding.key())? {
                Some(n) => n.value().to_owned(),
                None => return Ok(None),
            };
            get_json(&txn.open_table(AGENTS)?, "agent", &name)
        })
    }

    async fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        self.read(|txn| {
            let mut out = Vec::new();
            for row in txn.open_table(AGENTS)?.iter()? {
                let (_, v) = row?;
                out.push(decode("agent", v.value())?);
            }
            Ok(out)
        })
    }

    async fn record_certificate(
        &self,
        issue: IssueCertificate,
    ) -> Result<CertificateRecord, StoreError> {
        expect_outcome!(self.submit(Command::RecordCertificate(issue)).await, Outcome::Certificate(c) => c)
    }

    async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError> {
        self.read(|txn| get_json(&txn.open_table(CERTIFICATES)?, "certificate", serial))
    }

    async fn list_certificates(
        &self,
        holder: &str,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        self.read(|txn| certificates_in(txn, (holder, "")..(holder, "~"), limit))
    }

    async fn list_principal_certificates(
        &self,
        kind: PrincipalKind,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        // "<kind>;" sorts right after every "<kind>:<name>".
        let lo = format!("{}:", kind.as_str());
        let hi = format!("{};", kind.as_str());
        self.read(move |txn| certificates_in(txn, (lo.as_str(), "")..(hi.as_str(), ""), limit))
    }

    async fn revoke_certificate(
        &self,
        revoke: RevokeCertificate,
    ) -> Result<(CertificateRecord, RevocationEvent), StoreError> {
        expect_outcome!(self.submit(Command::RevokeCertificate(revoke)).await, Outcome::RevokedCertificate(c, e) => (c, e))
    }

    async fn revoked_certificates(&self, now: i64) -> Result<Vec<CertificateRecord>, StoreError> {
        self.read(|txn| {
            let mut out = Vec::new();
            for row in txn.open_table(CERTIFICATES)?.iter()? {
                let (_, v) = row?;
                let c: CertificateRecord = decode("certificate", v.value())?;
                if c.revoked_at.is_some() && c.not_after > now {
                    out.push(c);
                }
            }
            Ok(out)
        })
    }

    async fn create_task(&self, task: Task, audit: AuditDraft) -> Result<Task, StoreError> {
        expect_outcome!(self.submit(Command::CreateTask(Box::new(task), audit)).await, Outcome::Task(t) => t)
    }

    async fn task(&self, id: &TaskId) -> Result<Option<Task>, StoreError> {
        let id = id.to_string();
        if let Some(t) = self.inner.cache.task(&id) {
            return Ok(Some((*t).clone()));
        }
        self.read(|txn| get_json(&txn.open_table(TASKS)?, "task", &id))
    }

    async fn list_tasks(
        &self,
        agent: Option<&AgentId>,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError> {
        let prefix = agent.map(AgentId::to_string);
        self.read(|txn| newest(txn, TASKS, TASKS_BY_AGENT, prefix.as_deref(), "task", limit))
    }

    async fn end_task(&self, end: EndTask) -> Result<EndedTask, StoreError> {
        expect_outcome!(self.submit(Command::EndTask(end)).await, Outcome::Ended(e) => e)
    }

    async fn expire_tasks(&self, now: i64) -> Result<Vec<EndedTask>, StoreError> {
        // Most sweeps find nothing: look before taking a place in the writer's queue.
        let due = self.read(|txn| {
            Ok(txn
                .open_table(OPEN_TASK_DEADLINES)?
                .first()?
                .is_some_and(|(k, _)| k.value().0 <= now))
        })?;
        if !due {
            return Ok(Vec::new());
        }
        expect_outcome!(self.submit(Command::ExpireTasks(now)).await, Outcome::Expired(e) => e)
    }

    async fn create_task_with_token(
        &self,
        task: Task,
        task_audit: AuditDraft,
        token: TokenRecord,
        token_audit: AuditDraft,
    ) -> Result<Task, StoreError> {
        expect_outcome!(
            self.submit(Command::CreateTaskWithToken(Box::new((task, task_audit, token, token_audit)))).await,
            Outcome::Task(t) => t
        )
    }

    async fn record_token(&self, token: TokenRecord, audit: AuditDraft) -> Result<(), StoreError> {
        expect_outcome!(self.submit(Command::RecordToken(token, audit)).await, Outcome::Done => ())
    }

    async fn token(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError> {
        self.read(|txn| get_json(&txn.open_table(TOKENS)?, "token", &id.to_string()))
    }

    async fn status_entries(&self, from: u64, to: u64) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(|txn| {
            let index = txn.open_table(STATUS_INDEX)?;
            let tokens = txn.open_table(TOKENS)?;
            let mut out = Vec::new();
            for row in index.range(from..to)? {
                let (_, id) = row?;
                let token: TokenRecord =
                    get_json(&tokens, "token", id.value())?.ok_or_else(|| StoreError::Corrupt {
                        what: "status_index",
                        detail: format!("names missing token {}", id.value()),
                    })?;
                out.push(token);
            }
            Ok(out)
        })
    }

    async fn last_status_index(&self) -> Result<Option<u64>, StoreError> {
        self.read(|txn| {
            Ok(txn
                .open_table(STATUS_INDEX)?
                .last()?
                .map(|(k, _)| k.value()))
        })
    }

    async fn list_tokens(
        &self,
        task: Option<&TaskId>,
        limit: usize,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let prefix = task.map(TaskId::to_string);
        self.read(|txn| {
            newest(
                txn,
                TOKENS,
                TOKENS_BY_TASK,
                prefix.as_deref(),
                "token",
                limit,
            )
        })
    }

    async fn revoke_token(
        &self,
        id: TokenId,
        reason: String,
        now: i64,
        audit: AuditDraft,
    ) -> Result<(TokenRecord, RevocationEvent), StoreError> {
        expect_outcome!(
            self.submit(Command::RevokeToken { id, reason, now, audit }).await,
            Outcome::RevokedToken(t, e) => (t, e)
        )
    }

    async fn append_audit(&self, audit: AuditDraft) -> Result<(), StoreError> {
        expect_outcome!(self.submit(Command::AppendAudit(audit)).await, Outcome::Done => ())
    }

    async fn append_audits(&self, audits: Vec<AuditDraft>) -> Result<(), StoreError> {
        if audits.is_empty() {
            return Ok(());
        }
        expect_outcome!(self.submit(Command::AppendAudits(audits)).await, Outcome::Done => ())
    }

    fn write_failure(&self) -> Option<String> {
        self.inner.health.failure()
    }

    async fn revocations_after(
        &self,
        sequence: u64,
        limit: usize,
    ) -> Result<Vec<RevocationEvent>, StoreError> {
        self.read(|txn| {
            let mut out = Vec::new();
            for row in txn
                .open_table(REVOCATIONS)?
                .range(sequence.saturating_add(1)..)?
                .take(limit)
            {
                let (_, v) = row?;
                out.push(decode("revocation", v.value())?);
            }
            Ok(out)
        })
    }

    async fn last_revocation_sequence(&self) -> Result<u64, StoreError> {
        self.read(|txn| {
            Ok(txn
                .open_table(REVOCATIONS)?
                .last()?
                .map(|(k, _)| k.value())
                .unwrap_or(0))
        })
    }

    fn subscribe_revocations(&self) -> broadcast::Receiver<RevocationEvent> {
        self.inner.revocations.subscribe()
    }

    async fn audit_tail(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(|txn| {
            let mut out = Vec::new();
            for row in txn.open_table(AUDIT)?.iter()?.rev().take(limit) {
                let (_, v) = row?;
                out.push(decode("audit", v.value())?);
            }
            out.reverse();
            Ok(out)
        })
    }

    async fn record_policy_set(
        &self,
        set: PolicySetRecord,
        audit: AuditDraft,
    ) -> Result<PolicySetRecord, StoreError> {
        expect_outcome!(
            self.submit(Command::RecordPolicySet(Box::new(set), audit)).await,
            Outcome::PolicySet(s) => *s
        )
    }

    async fn decide_approval(&self, d: DecideApproval) -> Result<Task, StoreError> {
        expect_outcome!(self.submit(Command::DecideApproval(d)).await, Outcome::Task(t) => t)
    }

    async fn pending_approvals(&self, limit: usize) -> Result<Vec<Task>, StoreError> {
        self.read(|txn| {
            let ids = txn.open_table(PENDING_APPROVALS)?;
            let tasks = txn.open_table(TASKS)?;
            let mut out: Vec<Task> = Vec::new();
            for row in ids.iter()?.take(limit) {
                let (_, task_id) = row?;
                if let Some(t) = get_json::<Task>(&tasks, "task", task_id.value())? {
                    out.push(t);
                }
            }
            Ok(out)
        })
    }

    async fn task_by_approval(&self, approval_id: &str) -> Result<Option<Task>, StoreError> {
        let approval_id = approval_id.to_owned();
        self.read(move |txn| {
            let Some(task_id) = txn
                .open_table(PENDING_APPROVALS)?
                .get(approval_id.as_str())?
                .map(|v| v.value().to_owned())
            else {
                return Ok(None);
            };
            get_json(&txn.open_table(TASKS)?, "task", &task_id)
        })
    }

    async fn policy_sets(&self, limit: usize) -> Result<Vec<PolicySetRecord>, StoreError> {
        self.read(|txn| {
            let mut out = Vec::new();
            for row in txn.open_table(POLICY_SETS)?.iter()?.rev().take(limit) {
                let (_, v) = row?;
                out.push(decode("policy set", v.value())?);
            }
            Ok(out)
        })
    }

    async fn verify_audit(&self) -> Result<AuditVerification, StoreError> {
        let db = self.db()?;
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read()?;
            let mut head = GENESIS_HASH.to_owned();
            let mut entries = 0u64;
            for row in txn.open_table(AUDIT)?.iter()? {
                let (k, v) = row?;
                let entry: AuditEntry = match serde_json::from_slice(v.value()) {
                    Ok(e) => e,
                    Err(e) => {
                        return Ok(AuditVerification {
                            entries,
                            head_hash: head,
                            problem: Some(taskpass_core::ChainProblem {
                                sequence: k.value(),
                                problem: format!("entry cannot be decoded: {e}"),
                            }),
                        });
                    }
                };
                match verify_chain([&entry], head.clone(), entries + 1) {
                    Ok(h) => head = h,
                    Err(p) => {
                        return Ok(AuditVerification {
                            entries,
                            head_hash: head,
                            problem: Some(p),
                        });
                    }
                }
                entries += 1;
            }
            Ok(AuditVerification {
                entries,
                head_hash: head,
                problem: None,
            })
        })
        .await
        .map_err(|e| StoreError::Engine(format!("audit verification task failed: {e}")))?
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.read(|txn| {
            Ok(StoreStats {
                agents: txn.open_table(AGENTS)?.len()?,
                tasks: txn.open_table(TASKS)?.len()?,
                tokens: txn.open_table(TOKENS)?.len()?,
                revocations: txn.open_table(REVOCATIONS)?.len()?,
                audit_entries: txn.open_table(AUDIT)?.len()?,
                commits: self.inner.stats.commits.load(Ordering::Relaxed),
                commands: self.inner.stats.commands.load(Ordering::Relaxed),
                commit_micros: self.inner.stats.micros.load(Ordering::Relaxed),
            })
        })
    }
}

#[cfg(test)]
mod tests;
mod writer;

use writer::{DbSlot, Health, Lane, Lanes, Writer};
