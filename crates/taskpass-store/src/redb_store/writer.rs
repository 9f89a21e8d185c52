//! The writer thread: takes every command waiting (the operators' lane first), applies them in
//! one transaction, commits once, then answers each caller and publishes the revocations.
//!
//! Two lanes feed it. Agents' writes (tasks, tokens, completions, denials) queue in one; the
//! operators' and the broker's own (registrations, state changes, revocations, expiry) in the
//! other, which is always drained first: a flood of agent calls can fill its own queue but
//! never delays an operator's revoke by more than the commit in progress.
//!
//! When a commit fails with an I/O error (a full disk, EIO), redb latches the file: every later
//! call fails until it is reopened. The writer then answers every waiting caller with
//! [`StoreError::Unwritable`], marks the store unwritable (callers are refused at once, without
//! queueing, and the health check reports it), closes the file, and once a second reopens it
//! (redb repairs it) and makes a small durable probe commit. When the probe commits, the cache
//! and the log heads are reloaded from the file and writes are accepted again. Nothing that
//! was acknowledged is lost: a write is acknowledged only after its commit returned.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::Database;
use taskpass_core::RevocationEvent;
use tokio::sync::{broadcast, mpsc};

use super::{Command, Heads, Job, WriterStats, apply_batch, init_schema, open_db, warm_cache};
use crate::StoreError;
use crate::cache::RecordCache;

/// A grouped commit slower than this is logged.
const SLOW_COMMIT: Duration = Duration::from_millis(25);

/// How often an unwritable store is reopened and probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How much room the probe must find before writes are accepted again.
const PROBE_BYTES: usize = 1 << 20;

/// The file as readers see it: `None` while the writer reopens it.
pub(super) type DbSlot = Arc<RwLock<Option<Arc<Database>>>>;

/// Which queue a command waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// Agents' writes: bounded, and served after the other lane.
    Agent,
    /// Operators' and the broker's own writes.
    Priority,
}

impl Command {
    pub(super) fn lane(&self) -> Lane {
        match self {
            Command::CreateTask(..)
            | Command::CreateTaskWithToken(..)
            | Command::RecordToken(..)
            | Command::AppendAudit(_)
            | Command::AppendAudits(_) => Lane::Agent,
            Command::EndTask(e) if e.owner.is_some() => Lane::Agent,
            Command::RegisterAgent(..)
            | Command::UpdateAgent(..)
            | Command::ChangeAgentState(_)
            | Command::EndTask(_)
            | Command::ExpireTasks(_)
            | Command::RevokeToken { .. }
            | Command::RecordCertificate(_)
            | Command::RevokeCertificate(_)
            | Command::RecordPolicySet(..)
            | Command::DecideApproval(_) => Lane::Priority,
        }
    }
}

/// Whether the store can write, shared by the writer, every caller and the health check.
#[derive(Debug, Default)]
pub(super) struct Health {
    failure: Mutex<Option<String>>,
}

impl Health {
    /// Why the store cannot write, while it cannot.
    pub(super) fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, why: Option<String>) {
        *self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = why;
    }
}

/// What the writer thread owns.
pub(super) struct Writer {
    pub(super) path: PathBuf,
    pub(super) cache_size_bytes: usize,
    pub(super) cached_records: usize,
    pub(super) slot: DbSlot,
    pub(super) db: Option<Arc<Database>>,
    pub(super) heads: Heads,
    pub(super) cache: Arc<RecordCache>,
    pub(super) events_out: broadcast::Sender<RevocationEvent>,
    pub(super) stats: Arc<WriterStats>,
    pub(super) health: Arc<Health>,
    pub(super) max_batch: usize,
    pub(super) coalesce: Duration,
}

/// Both lanes' receiving ends.
pub(super) struct Lanes {
    pub(super) priority: mpsc::Receiver<Job>,
    pub(super) agent: mpsc::Receiver<Job>,
}

impl Lanes {
    /// The next job, the priority lane first; `None` once both lanes are closed and empty.
    async fn next(&mut self) -> Option<Job> {
        tokio::select! {
            biased;
            Some(j) = self.priority.recv() => Some(j),
            Some(j) = self.agent.recv() => Some(j),
            else => None,
        }
    }

    /// Adds what is waiting to `batch`, the priority lane first, up to `max`.
    fn drain(&mut self, batch: &mut Vec<Job>, max: usize) {
        for lane in [&mut self.priority, &mut self.agent] {
            while batch.len() < max {
                match lane.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
    }
}

impl Writer {
    pub(super) fn run(mut self, mut lanes: Lanes) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "store writer cannot start its runtime");
                return;
            }
        };
        let mut batch: Vec<Job> = Vec::with_capacity(self.max_batch);
        let mut last_commit = Instant::now();
        let mut last_batch = 0usize;
        while let Some(first) = rt.block_on(lanes.next()) {
            batch.push(first);
            lanes.drain(&mut batch, self.max_batch);
            let concurrent = batch.len() > 1 || last_batch > 1;
            let busy = concurrent && last_commit.elapsed() < self.coalesce * 4;
            last_batch = batch.len();
            if busy && !self.coalesce.is_zero() && batch.len() < self.max_batch {
                std::thread::sleep(self.coalesce);
                lanes.drain(&mut batch, self.max_batch);
            }
            self.commit(&mut batch);
            last_commit = Instant::now();
            if self.health.failure().is_some() {
                self.recover(&rt, &mut lanes);
            }
        }
        self.close();
    }

    /// Applies and commits one batch, then answers it.
    fn commit(&mut self, batch: &mut Vec<Job>) {
        let Some(db) = self.db.clone() else {
            let why = self
                .health
                .failure()
                .unwrap_or_else(|| "the file is closed".into());
            for job in batch.drain(..) {
                let _ = job.reply.send(Err(StoreError::Unwritable(why.clone())));
            }
            return;
        };
        let saved = self.heads.clone();
        let mut events = Vec::new();
        let started = Instant::now();
        let result = apply_batch(&db, batch, &mut self.heads, &mut events, &self.cache);
        let took = started.elapsed();
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .commands
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.stats.micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if took > SLOW_COMMIT {
            tracing::warn!(
                ms = took.as_millis(),
                commands = batch.len(),
                "slow store commit"
            );
        }
        match result {
            Ok((results, changes)) => {
                // Before any caller hears back, so that it reads its own write.
                self.cache.apply(changes);
                for e in events {
                    // No subscriber is fine: the log is durable and replayable.
                    let _ = self.events_out.send(e);
                }
                for (job, r) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(r);
                }
            }
            Err(e) => {
                self.heads = saved;
                let unwritable = matches!(e, StoreError::Unwritable(_));
                tracing::error!(error = %e, jobs = batch.len(), "store commit failed");
                let answer = match &e {
                    StoreError::Unwritable(why) => StoreError::Unwritable(why.clone()),
                    other => StoreError::Engine(other.to_string()),
                };
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(clone_error(&answer)));
                }
                if unwritable {
                    self.health.set(Some(match e {
                        StoreError::Unwritable(why) => why,
                        other => other.to_string(),
                    }));
                }
            }
        }
    }

    /// Until a probe commit succeeds: refuse what is queued, reopen the file, probe it.
    fn recover(&mut self, rt: &tokio::runtime::Runtime, lanes: &mut Lanes) {
        tracing::warn!(
            "the store cannot write: refusing writes, reopening and probing the file every second"
        );
        self.close();
        loop {
            let why = self.health.failure().unwrap_or_default();
            let mut refused = Vec::new();
            lanes.drain(&mut refused, usize::MAX);
            for job in refused {
                let _ = job.reply.send(Err(StoreError::Unwritable(why.clone())));
            }
            if self.db.is_none() {
                match self.reopen() {
                    Ok(()) => tracing::info!("reopened the store file"),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot reopen the store file yet");
                        self.health.set(Some(e.to_string()));
                    }
                }
            }
            if self.db.is_some() {
                match self.room().map(|()| self.probe()) {
                    Ok(Ok(())) => {
                        self.health.set(None);
                        tracing::info!("the store writes again");
                        return;
                    }
                    // No room yet: the file itself is fine and stays open for readers.
                    Err(why) => {
                        tracing::debug!(error = %why, "no room for the store yet");
                        self.health.set(Some(why));
                    }
                    // The commit failed: redb latched the file again; reopen it.
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "the store still cannot write");
                        self.health.set(Some(match e {
                            StoreError::Unwritable(why) => why,
                            other => other.to_string(),
                        }));
                        self.close();
                    }
                }
            }
            // Wait, refusing whatever arrives meanwhile; stop when the store is dropped.
            let deadline = Instant::now() + PROBE_EVERY;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match rt.block_on(async { tokio::time::timeout(left, lanes.next()).await }) {
                    Ok(Some(job)) => {
                        let why = self.health.failure().unwrap_or_default();
                        let _ = job.reply.send(Err(StoreError::Unwritable(why)));
                    }
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
        }
    }

    /// Takes the file away from readers and closes it, once no reader holds it.
    fn close(&mut self) {
        self.slot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(mut db) = self.db.take() else {
            return;
        };
        // Readers hold the file only for one read; the lock on it is released on the drop.
        for _ in 0..1000 {
            match Arc::try_unwrap(db) {
                Ok(d) => {
                    drop(d);
                    return;
                }
                Err(still_shared) => {
                    db = still_shared;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        tracing::warn!("a reader still holds the store file; closing it later");
        self.db = Some(db);
    }

    /// Opens the file again, reloads the log heads and the cache, and hands it to readers.
    fn reopen(&mut self) -> Result<(), StoreError> {
        let db = open_db(&self.path, self.cache_size_bytes)?;
        let announced = self.heads.revocation_seq;
        self.heads = init_schema(&db)?;
        // A commit reported failed (EIO at fsync) may have reached the disk after all: its
        // revocations are in the log but were never published. Publish them now.
        if self.heads.revocation_seq > announced {
            for e in super::read_revocations(&db, announced, self.heads.revocation_seq)? {
                let _ = self.events_out.send(e);
            }
        }
        self.cache.clear();
        warm_cache(&db, &self.cache, self.cached_records)?;
        let db = Arc::new(db);
        *self
            .slot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::clone(&db));
        self.db = Some(db);
        Ok(())
    }

    /// Whether [`PROBE_BYTES`] fit beside the file (written, synced, removed). A commit alone
    /// can succeed on a full disk by reusing pages the file already has, and the next real
    /// write would fail again.
    fn room(&self) -> Result<(), String> {
        let scratch = self.path.with_extension("probe");
        let room = (|| {
            use std::io::Write;
            let mut f = std::fs::File::create(&scratch)?;
            f.write_all(&vec![0u8; PROBE_BYTES])?;
            f.sync_data()
        })();
        let _ = std::fs::remove_file(&scratch);
        room.map_err(|e| format!("no room beside the store file: {e}"))
    }

    /// One small durable commit: with [`Writer::room`], the store can write again.
    fn probe(&self) -> Result<(), StoreError> {
        let db = self.db.as_ref().ok_or(StoreError::Closed)?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(crate::tables::META)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            meta.insert(crate::tables::META_LAST_PROBE, now)?;
        }
        txn.commit()?;
        Ok(())
    }
}

fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unwritable(why) => StoreError::Unwritable(why.clone()),
        other => StoreError::Engine(other.to_string()),
    }
}
