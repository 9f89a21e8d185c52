//! Following the broker live: its keys (GetJwks, on a timer and on an unknown `kid`), its
//! revocation log (WatchRevocations from a cursor, with heartbeats, resumed after any break
//! without missing an event), the staleness budget, and the Introspect fallback.
//!
//! A [`Verifier`](crate::Verifier) built with [`Verifier::connect`](crate::Verifier::connect)
//! keeps every revocation until its `not_after` and refuses the tokens it covers. When it has
//! not heard from the broker for longer than the budget it can no longer vouch for a token:
//! it refuses every one ([`VerifyError::Stale`]), or, with [`Fallback::Introspect`], asks the
//! broker about each (cached briefly).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use taskpass_core::{AccessClaims, Clock as _, SystemClock};
use taskpass_proto::v1 as pb;
use tonic::transport::Channel;

use crate::error::VerifyError;
use crate::keys::KeySet;
use taskpass_core::{RevocationKind, RevocationSet, known_reason};

type Client = pb::validation_service_client::ValidationServiceClient<Channel>;

/// An Introspect answer and when it came.
type Answer = (Instant, Result<(), VerifyError>);

/// The default staleness budget: how long the verifier may go without hearing from the
/// broker before it stops vouching for tokens.
pub const DEFAULT_STALENESS_BUDGET: Duration = Duration::from_secs(10);

/// The least time between two key fetches triggered by unknown `kid`s.
pub const MIN_KEY_REFETCH: Duration = Duration::from_secs(10);

/// How long an Introspect answer is reused while the stream is down.
pub const INTROSPECT_CACHE_TTL: Duration = Duration::from_secs(5);

/// The most Introspect answers kept.
pub const INTROSPECT_CACHE_ENTRIES: usize = 4096;

/// What to do with a token while the revocation state is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Fallback {
    /// Refuse it ([`VerifyError::Stale`]): the default, and the only safe choice when the
    /// broker may be unreachable for long.
    #[default]
    FailClosed,
    /// Ask the broker's Introspect about it (answers are cached for
    /// [`INTROSPECT_CACHE_TTL`]); only [`Verifier::verify_request`](crate::Verifier::verify_request)
    /// can, the synchronous calls fail closed.
    Introspect,
}

/// How to reach and follow the broker.
#[derive(Clone)]
#[non_exhaustive]
pub struct LiveConfig {
    /// The broker's gRPC URL, `https://host:port`.
    pub broker: String,
    /// The issuer its tokens carry (`iss`).
    pub issuer: String,
    /// The broker's CA (`ca.pem`, also written by `taskpass validator add`).
    pub ca_pem: String,
    /// This validator's certificate, from `taskpass validator add`.
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
    /// See [`DEFAULT_STALENESS_BUDGET`].
    pub staleness_budget: Duration,
    /// See [`Fallback`].
    pub fallback: Fallback,
    /// How often the keys are fetched again anyway (default 5 minutes).
    pub key_refresh: Duration,
    /// How long [`Verifier::connect`](crate::Verifier::connect) waits for the stream to
    /// catch up before it gives up (default 10 s).
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for LiveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("LiveConfig")
            .field("broker", &self.broker)
            .field("issuer", &self.issuer)
            .field("staleness_budget", &self.staleness_budget)
            .field("fallback", &self.fallback)
            .field("key_refresh", &self.key_refresh)
            .finish_non_exhaustive()
    }
}

impl LiveConfig {
    /// A configuration with the defaults: a 10 s budget, failing closed.
    pub fn new(
        broker: impl Into<String>,
        issuer: impl Into<String>,
        ca_pem: impl Into<String>,
        cert_pem: impl Into<String>,
        key_pem: impl Into<String>,
    ) -> Self {
        Self {
            broker: broker.into(),
            issuer: issuer.into(),
            ca_pem: ca_pem.into(),
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
            staleness_budget: DEFAULT_STALENESS_BUDGET,
            fallback: Fallback::FailClosed,
            key_refresh: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Sets the staleness budget.
    #[must_use]
    pub fn with_staleness_budget(mut self, budget: Duration) -> Self {
        self.staleness_budget = budget;
        self
    }

    /// Sets what happens to tokens while the state is stale.
    #[must_use]
    pub fn with_fallback(mut self, fallback: Fallback) -> Self {
        self.fallback = fallback;
        self
    }
}

/// Where the live revocation state stands: for health checks and alerts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RevocationStatus {
    /// Whether the broker was heard from within the staleness budget: tokens are checked
    /// against the revocations. When false they are refused (or introspected).
    pub current: bool,
    /// Whether the stream is open now.
    pub connected: bool,
    /// How long since the broker was last heard from (`None`: never).
    pub silent_for: Option<Duration>,
    /// The sequence of the last revocation received.
    pub cursor: u64,
    /// How many revocations are held (each until its `not_after`).
    pub tracked: usize,
    /// How many times the stream was opened again after a break.
    pub reconnects: u64,
    /// Why the stream last failed, if it did.
    pub last_error: Option<String>,
}

/// The state shared by the verifier and its background tasks.
pub(crate) struct Live {
    client: Client,
    budget: Duration,
    fallback: Fallback,
    revocations: RwLock<RevocationSet>,
    cursor: AtomicU64,
    start: Instant,
    /// Milliseconds after `start` when the broker was last heard from; 0 = never.
    heard_ms: AtomicU64,
    connected: AtomicBool,
    reconnects: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Wakes the key task early (an unknown `kid`).
    keys_wanted: tokio::sync::Notify,
    /// Counts key fetches, so a caller can wait for the next one.
    keys_fetched: tokio::sync::watch::Sender<u64>,
    last_key_fetch: Mutex<Option<Instant>>,
    introspected: Mutex<HashMap<String, Answer>>,
    tasks: Background,
}

/// Background tasks that stop when their owner goes.
#[derive(Debug, Default)]
pub(crate) struct Background(Mutex<Vec<tokio::task::AbortHandle>>);

impl Background {
    pub(crate) fn push(&self, task: tokio::task::AbortHandle) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task);
    }

    pub(crate) fn abort_all(&self) {
        for t in self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            t.abort();
        }
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// The handle a [`Verifier`](crate::Verifier) keeps: dropping the verifier stops the tasks.
#[derive(Debug)]
pub(crate) struct LiveHandle(pub(crate) Arc<Live>);

impl Drop for LiveHandle {
    fn drop(&mut self) {
        self.0.tasks.abort_all();
    }
}

impl Live {
    fn heard(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.heard_ms.store(ms.max(1), Ordering::Release);
    }

    fn silent_for(&self) -> Option<Duration> {
        match self.heard_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(
                self.start
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }

    fn is_current(&self) -> bool {
        self.silent_for().is_some_and(|s| s <= self.budget)
    }

    pub(crate) fn status(&self) -> RevocationStatus {
        RevocationStatus {
            current: self.is_current(),
            connected: self.connected.load(Ordering::Acquire),
            silent_for: self.silent_for(),
            cursor: self.cursor.load(Ordering::Acquire),
            tracked: self
                .revocations
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            reconnects: self.reconnects.load(Ordering::Acquire),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// Refuses a revoked token, or any token while the state is stale.
    pub(crate) fn check(&self, claims: &AccessClaims) -> Result<(), VerifyError> {
        if !self.is_current() {
            return Err(VerifyError::Stale);
        }
        self.revocations
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .check(claims)
            .map_err(VerifyError::Revoked)
    }

    pub(crate) fn fallback(&self) -> Fallback {
        self.fallback
    }

    /// Asks for the keys to be fetched again soon (non-blocking).
    pub(crate) fn want_keys(&self) {
        self.keys_wanted.notify_one();
    }

    /// Fetches the keys again unless that was done within [`MIN_KEY_REFETCH`], and waits (at
    /// most 2 s) for the fetch. True when new keys may have arrived.
    pub(crate) async fn refresh_keys(&self) -> bool {
        let recent = self
            .last_key_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|t| t.elapsed() < MIN_KEY_REFETCH);
        if recent {
            return false;
        }
        let mut rx = self.keys_fetched.subscribe();
        rx.borrow_and_update();
        self.keys_wanted.notify_one();
        tokio::time::timeout(Duration::from_secs(2), rx.changed())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The broker's Introspect about `token`, cached briefly.
    pub(crate) async fn introspect(&self, token: &str) -> Result<(), VerifyError> {
        let key = taskpass_core::sha256_b64url(token.as_bytes());
        let now = Instant::now();
        if let Some((at, r)) = self
            .introspected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            && now.duration_since(*at) < INTROSPECT_CACHE_TTL
        {
            return r.clone();
        }
        let answer = self
            .client
            .clone()
            .introspect(pb::IntrospectRequest {
                token: token.to_owned(),
            })
            .await
            .map_err(|s| VerifyError::Unavailable(format!("Introspect: {}", s.message())))?
            .into_inner();
        let r = if answer.active {
            Ok(())
        } else {
            Err(VerifyError::Inactive(inactive_reason(
                &answer.inactive_reason,
            )))
        };
        let mut cache = self
            .introspected
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= INTROSPECT_CACHE_ENTRIES {
            cache.retain(|_, (at, _)| now.duration_since(*at) < INTROSPECT_CACHE_TTL);
            if cache.len() >= INTROSPECT_CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, (now, r.clone()));
        r
    }

    fn apply(&self, ev: &pb::RevocationEvent, caught_up: &mut bool) {
        let kind = match pb::RevocationKind::try_from(ev.kind) {
            Ok(pb::RevocationKind::Unspecified) => {
                // A heartbeat: everything up to its sequence has been sent.
                *caught_up = true;
                self.heard();
                return;
            }
            Ok(pb::RevocationKind::Token) => Some(RevocationKind::Token),
            Ok(pb::RevocationKind::Task) => Some(RevocationKind::Task),
            Ok(pb::RevocationKind::Agent) => Some(RevocationKind::Agent),
            Ok(pb::RevocationKind::Certificate) => Some(RevocationKind::Certificate),
            // A kind this SDK does not know: it covers nothing we can check.
            Err(_) => None,
        };
        if ev.sequence <= self.cursor.load(Ordering::Acquire) {
            return;
        }
        if let Some(kind) = kind {
            // A certificate revocation names the serial; bound tokens carry the thumbprint.
            let event = taskpass_core::RevocationEvent {
                sequence: ev.sequence,
                kind,
                id: ev.id.clone(),
                revoked_at: ev.revoked_at,
                not_after: ev.not_after,
                reason: ev.reason.clone(),
                thumbprint: ev.thumbprint.clone(),
            };
            self.revocations
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .apply(&event, SystemClock.now());
        }
        self.cursor.store(ev.sequence, Ordering::Release);
        if *caught_up {
            self.heard();
        }
    }

    fn failed(&self, why: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(why);
    }
}

/// The broker's `inactive_reason`s, as `'static` strings.
fn inactive_reason(reason: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "expired",
        "not_yet_valid",
        "malformed",
        "bad_signature",
        "unknown_key",
        "wrong_issuer",
        "wrong_audience",
        "unknown_token",
        "unknown_task",
        "unknown_agent",
        "task_not_open",
        "certificate_revoked",
    ];
    KNOWN
        .iter()
        .find(|k| **k == reason)
        .copied()
        .unwrap_or_else(|| known_reason(RevocationKind::Token, reason))
}

/// Connects, fetches the keys and starts following; returns once the stream has caught up.
pub(crate) async fn start(config: &LiveConfig) -> Result<(Arc<Live>, KeySet), VerifyError> {
    let channel = taskpass_proto::connect(
        &config.broker,
        &config.ca_pem,
        Some((&config.cert_pem, &config.key_pem)),
    )
    .await
    .map_err(|e| VerifyError::Unavailable(format!("cannot connect to {}: {e}", config.broker)))?;
    let mut client = Client::new(channel);
    let keys = fetch_keys(&mut client).await?;
    let (keys_fetched, _) = tokio::sync::watch::channel(0);
    let live = Arc::new(Live {
        client,
        budget: config.staleness_budget,
        fallback: config.fallback,
        revocations: RwLock::new(RevocationSet::default()),
        cursor: AtomicU64::new(0),
        start: Instant::now(),
        heard_ms: AtomicU64::new(0),
        connected: AtomicBool::new(false),
        reconnects: AtomicU64::new(0),
        last_error: Mutex::new(None),
        keys_wanted: tokio::sync::Notify::new(),
        keys_fetched,
        last_key_fetch: Mutex::new(Some(Instant::now())),
        introspected: Mutex::new(HashMap::new()),
        tasks: Background::default(),
    });
    let follower = tokio::spawn(follow(Arc::downgrade(&live)));
    live.tasks.push(follower.abort_handle());
    let deadline = Instant::now() + config.connect_timeout;
    while !live.is_current() {
        if Instant::now() >= deadline {
            let why = live
                .status()
                .last_error
                .unwrap_or_else(|| "no answer".into());
            return Err(VerifyError::Unavailable(format!(
                "the revocation stream did not catch up within {} s: {why}",
                config.connect_timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((live, keys))
}

/// Starts the task that refreshes `keys` on a timer and on demand.
pub(crate) fn spawn_key_refresh(live: &Arc<Live>, keys: Arc<RwLock<Arc<KeySet>>>, every: Duration) {
    let weak = Arc::downgrade(live);
    let task = tokio::spawn(async move {
        loop {
            let Some(live) = weak.upgrade() else { return };
            let wanted = async {
                live.keys_wanted.notified().await;
                // Rate-limited: at most one fetch per MIN_KEY_REFETCH.
                let since = live
                    .last_key_fetch
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .map(|t| t.elapsed());
                if let Some(since) = since
                    && since < MIN_KEY_REFETCH
                {
                    tokio::time::sleep(MIN_KEY_REFETCH - since).await;
                }
            };
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = wanted => {}
            }
            let mut client = live.client.clone();
            *live
                .last_key_fetch
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            match fetch_keys(&mut client).await {
                Ok(set) => {
                    *keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
                }
                // Keep the keys we have: a broker that is down has not rotated them.
                Err(e) => {
                    tracing::warn!(error = %e, "taskpass-verify: cannot refresh the broker's keys")
                }
            }
            live.keys_fetched.send_modify(|n| *n += 1);
        }
    });
    live.tasks.push(task.abort_handle());
}

async fn fetch_keys(client: &mut Client) -> Result<KeySet, VerifyError> {
    let jwks = client
        .get_jwks(pb::GetJwksRequest {})
        .await
        .map_err(|s| VerifyError::Unavailable(format!("GetJwks: {}", s.message())))?
        .into_inner()
        .jwks_json;
    KeySet::from_json(&jwks)
}

/// How often the broker is asked to send a heartbeat, seconds.
const HEARTBEAT_SECS: u32 = 1;

/// Follows the revocation log for as long as the verifier lives, from its cursor, again
/// and again.
async fn follow(weak: std::sync::Weak<Live>) {
    let mut attempt: u32 = 0;
    let mut jitter = Jitter::new();
    loop {
        let Some(live) = weak.upgrade() else { return };
        let mut client = live.client.clone();
        let request = pb::WatchRevocationsRequest {
            after_sequence: live.cursor.load(Ordering::Acquire),
            heartbeat_seconds: HEARTBEAT_SECS,
        };
        // A stream silent for this long is dead even if its connection is not.
        let silence = live
            .budget
            .min(Duration::from_secs(u64::from(HEARTBEAT_SECS) * 3))
            .max(Duration::from_millis(500));
        drop(live);
        match client.watch_revocations(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                let mut caught_up = false;
                if let Some(live) = weak.upgrade() {
                    live.connected.store(true, Ordering::Release);
                }
                loop {
                    let next = tokio::time::timeout(silence, stream.message()).await;
                    let Some(live) = weak.upgrade() else { return };
                    match next {
                        Ok(Ok(Some(ev))) => {
                            live.apply(&ev, &mut caught_up);
                            if caught_up {
                                attempt = 0;
                            }
                        }
                        Ok(Ok(None)) => {
                            live.failed("the broker ended the stream".into());
                            break;
                        }
                        Ok(Err(status)) => {
                            live.failed(format!("{:?}: {}", status.code(), status.message()));
                            break;
                        }
                        Err(_) => {
                            live.failed(format!("no heartbeat for {} ms", silence.as_millis()));
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                let Some(live) = weak.upgrade() else { return };
                if status.code() == tonic::Code::OutOfRange {
                    // The broker's log is behind our cursor (restored from a backup): read it
                    // again from the start; what we hold stays revoked.
                    live.cursor.store(0, Ordering::Release);
                }
                live.failed(format!("{:?}: {}", status.code(), status.message()));
            }
        }
        if let Some(live) = weak.upgrade() {
            live.connected.store(false, Ordering::Release);
            live.reconnects.fetch_add(1, Ordering::AcqRel);
        }
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(jitter.backoff(attempt)).await;
    }
}

/// Exponential backoff from 50 ms to 5 s, each wait drawn uniformly from its upper half, so
/// that many validators cut off together do not come back together.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        let seed = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
                & u128::from(u64::MAX),
        )
        .unwrap_or(1);
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        // xorshift64: no cryptography needed, only spread.
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn backoff(&mut self, attempt: u32) -> Duration {
        let cap_ms = 50u64.saturating_mul(1u64 << attempt.min(10)).min(5_000);
        let half = cap_ms / 2;
        Duration::from_millis(half + self.next() % (half + 1))
    }
}

/// The state as Prometheus text, for the validator's own `/metrics`.
pub(crate) fn metrics_text(status: &RevocationStatus) -> String {
    format!(
        "# HELP taskpass_verifier_revocations_current 1 while the revocation state is within its staleness budget.\n\
         # TYPE taskpass_verifier_revocations_current gauge\n\
         taskpass_verifier_revocations_current {}\n\
         # HELP taskpass_verifier_revocation_stream_connected 1 while the revocation stream is open.\n\
         # TYPE taskpass_verifier_revocation_stream_connected gauge\n\
         taskpass_verifier_revocation_stream_connected {}\n\
         # HELP taskpass_verifier_revocations_silent_seconds Seconds since the broker was last heard from (-1: never).\n\
         # TYPE taskpass_verifier_revocations_silent_seconds gauge\n\
         taskpass_verifier_revocations_silent_seconds {}\n\
         # HELP taskpass_verifier_revocations_tracked Revocations held until their not_after.\n\
         # TYPE taskpass_verifier_revocations_tracked gauge\n\
         taskpass_verifier_revocations_tracked {}\n\
         # HELP taskpass_verifier_revocation_cursor Sequence of the last revocation received.\n\
         # TYPE taskpass_verifier_revocation_cursor gauge\n\
         taskpass_verifier_revocation_cursor {}\n\
         # HELP taskpass_verifier_stream_reconnects_total Times the revocation stream was opened again.\n\
         # TYPE taskpass_verifier_stream_reconnects_total counter\n\
         taskpass_verifier_stream_reconnects_total {}\n",
        u8::from(status.current),
        u8::from(status.connected),
        status
            .silent_for
            .map_or_else(|| "-1".to_owned(), |d| format!("{:.3}", d.as_secs_f64())),
        status.tracked,
        status.cursor,
        status.reconnects,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut j = Jitter::new();
        for attempt in 1..20 {
            let cap = 50u64.saturating_mul(1 << attempt.min(10)).min(5_000);
            let d = j.backoff(attempt);
            assert!(d.as_millis() >= u128::from(cap / 2) && d.as_millis() <= u128::from(cap));
        }
    }

    #[test]
    fn reasons_map_to_the_vocabulary() {
        assert_eq!(inactive_reason("task_completed"), "task_completed");
        assert_eq!(inactive_reason("expired"), "expired");
        assert_eq!(inactive_reason("something new"), "revoked");
    }
}
