//! Revocation from the broker's token status lists (draft-ietf-oauth-status-list-19) instead
//! of the revocation stream: for validators that cannot or will not hold a gRPC stream and a
//! validator credential. Everything here is public: the JWKS and the lists.
//!
//! A token names its list (`status.status_list.uri`, which must be the broker's
//! `<issuer>/statuslists/<n>`: nothing else is ever fetched) and its index in it. The list is
//! fetched over HTTPS, verified (signature by a key of the JWKS, `typ` statuslist+jwt, `iss`,
//! `sub` equal to the uri, `iat`, `exp`), cached for its `ttl` and read: 0 is valid, anything
//! else refuses the token. Revocations reach this verifier within a list's `ttl` (30 s from a
//! Taskpass broker) rather than within the stream's milliseconds: the price of needing
//! nothing but HTTPS.
//!
//! When a list cannot be fetched again, the copy held is used for at most the staleness
//! budget beyond its `ttl` (and never beyond its `exp`); after that every token on it is
//! refused ([`VerifyError::Stale`]).

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use taskpass_core::jwt::SignedToken;
use taskpass_core::{AccessClaims, Clock as _, SystemClock};

use crate::error::VerifyError;
use crate::keys::KeySet;
use crate::live::{MIN_KEY_REFETCH, RevocationStatus};

/// The largest Status List Token read, bytes.
pub const MAX_STATUS_LIST_TOKEN_BYTES: usize = 256 * 1024;

/// The largest decompressed list kept, bytes (8 million one-bit statuses).
pub const MAX_STATUS_LIST_BYTES: usize = 1024 * 1024;

/// The most lists cached at once.
const MAX_CACHED_LISTS: usize = 1024;

/// How long a failed fetch of a list is not tried again: its callers get the failure (or the
/// copy within the budget) at once.
const FETCH_BACKOFF: Duration = Duration::from_secs(1);

/// The longest a list is cached, whatever its `ttl` says.
const MAX_TTL: Duration = Duration::from_secs(300);

/// A verified Status List Token: the statuses of the tokens it covers.
#[derive(Clone, PartialEq, Eq)]
pub struct StatusList {
    uri: String,
    bits: u8,
    statuses: Vec<u8>,
    ttl: Duration,
    expires_at: i64,
}

impl std::fmt::Debug for StatusList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusList")
            .field("uri", &self.uri)
            .field("bits", &self.bits)
            .field("len", &self.len())
            .field("ttl", &self.ttl)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why a Status List Token was not accepted: the rule, never its content.
fn bad(why: &str) -> VerifyError {
    VerifyError::Unavailable(format!("the status list is not acceptable: {why}"))
}

impl StatusList {
    /// Verifies `jwt`, served at `uri`, as a Status List Token of `issuer` signed by one of
    /// `keys`, at time `now` (Unix seconds) with `leeway` seconds of clock skew.
    ///
    /// An unknown `kid` is [`VerifyError::UnknownKey`] (fetch the keys again); anything else
    /// wrong is [`VerifyError::Unavailable`] naming the rule, as the list cannot be used.
    pub fn verify(
        jwt: &str,
        keys: &KeySet,
        issuer: &str,
        uri: &str,
        now: i64,
        leeway: u64,
    ) -> Result<Self, VerifyError> {
        let signed =
            SignedToken::parse_as(jwt.trim(), "statuslist+jwt", MAX_STATUS_LIST_TOKEN_BYTES)
                .map_err(|e| {
                    use taskpass_core::jwt::ProfileError as P;
                    bad(&match e {
                        P::TooLarge => "it is larger than the size limit".to_owned(),
                        P::ForbiddenHeader(name) => {
                            format!("its header parameter `{name}` is not allowed")
                        }
                        P::WrongType => "its type is not statuslist+jwt".to_owned(),
                        P::UnsupportedAlgorithm => "its algorithm is not accepted".to_owned(),
                        P::MissingKeyId => "its header has no key id".to_owned(),
                        _ => "it is malformed".to_owned(),
                    })
                })?;
        let key = keys.get(&signed.kid).ok_or(VerifyError::UnknownKey)?;
        if key.alg != crate::verifier::jwt_alg(signed.alg) {
            return Err(bad("its algorithm is not the one its key is pinned to"));
        }
        let valid = jsonwebtoken::crypto::verify(
            signed.signature_b64,
            signed.signing_input.as_bytes(),
            &key.key,
            key.alg,
        )
        .map_err(|_| bad("its signature is invalid"))?;
        if !valid {
            return Err(bad("its signature is invalid"));
        }
        let claims = signed
            .payload()
            .map_err(|_| bad("its payload is malformed"))?;
        let string = |name: &str| claims.get(name).and_then(Value::as_str);
        let int = |name: &str| claims.get(name).and_then(Value::as_i64);
        if string("iss") != Some(issuer) {
            return Err(bad("its issuer is not the trusted issuer"));
        }
        if string("sub") != Some(uri) {
            return Err(bad("its sub is not the uri it was fetched from"));
        }
        let leeway = i64::try_from(leeway).unwrap_or(i64::MAX);
        let iat = int("iat").ok_or_else(|| bad("iat is missing"))?;
        let exp = int("exp").ok_or_else(|| bad("exp is missing"))?;
        if iat > now.saturating_add(leeway) {
            return Err(bad("it is issued in the future"));
        }
        if now.saturating_sub(leeway) >= exp {
            return Err(bad("it has expired"));
        }
        let ttl = match claims.get("ttl") {
            None => MAX_TTL,
            Some(v) => v
                .as_u64()
                .filter(|t| *t > 0)
                .map(Duration::from_secs)
                .ok_or_else(|| bad("ttl is not a positive integer"))?
                .min(MAX_TTL),
        };
        let list = claims
            .get("status_list")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("status_list is missing"))?;
        let bits = match list.get("bits").and_then(Value::as_u64) {
            Some(b @ (1 | 2 | 4 | 8)) => u8::try_from(b).unwrap_or(1),
            _ => return Err(bad("bits is not 1, 2, 4 or 8")),
        };
        let lst = list
            .get("lst")
            .and_then(Value::as_str)
            .and_then(|l| URL_SAFE_NO_PAD.decode(l).ok())
            .ok_or_else(|| bad("lst is not base64url"))?;
        let mut statuses = Vec::new();
        flate2::read::ZlibDecoder::new(lst.as_slice())
            .take(u64::try_from(MAX_STATUS_LIST_BYTES).unwrap_or(u64::MAX) + 1)
            .read_to_end(&mut statuses)
            .map_err(|_| bad("lst is not ZLIB-compressed"))?;
        if statuses.len() > MAX_STATUS_LIST_BYTES {
            return Err(bad("the list is larger than the size limit"));
        }
        Ok(Self {
            uri: uri.to_owned(),
            bits,
            statuses,
            ttl,
            expires_at: exp,
        })
    }

    /// The status at `idx` (0 valid, 1 invalid, 2 suspended, 3 and above application
    /// specific), or `None` beyond the end of the list.
    pub fn status(&self, idx: u64) -> Option<u8> {
        let bit = idx.checked_mul(u64::from(self.bits))?;
        let byte = self.statuses.get(usize::try_from(bit / 8).ok()?)?;
        let mask = u8::try_from((1u16 << self.bits) - 1).unwrap_or(u8::MAX);
        Some((byte >> (bit % 8)) & mask)
    }

    /// How many statuses the list holds.
    pub fn len(&self) -> usize {
        self.statuses.len() * 8 / usize::from(self.bits)
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.statuses.is_empty()
    }

    /// How long it may be cached (its `ttl`, at most 5 minutes).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Refuses `claims` unless the list says its token is valid.
    fn check(&self, idx: u64) -> Result<(), VerifyError> {
        match self.status(idx) {
            Some(0) => Ok(()),
            Some(2) => Err(VerifyError::Revoked("suspended")),
            Some(_) => Err(VerifyError::Revoked("revoked")),
            None => Err(VerifyError::InvalidClaim("status")),
        }
    }
}

/// How to reach the broker's public endpoints.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StatusListConfig {
    /// The issuer its tokens carry (`iss`); their lists must be under `<issuer>/statuslists/`.
    pub issuer: String,
    /// Where the broker's HTTPS listener is reached (default: the issuer). The JWKS is read at
    /// `<base_url>/.well-known/jwks.json` and list `n` at `<base_url>/statuslists/<n>`.
    pub base_url: String,
    /// The CA to trust for it, PEM (the broker's `ca.pem`); `None`: the system's roots.
    pub ca_pem: Option<String>,
    /// How long past a list's `ttl` its copy is used while it cannot be fetched again
    /// (default 10 s).
    pub staleness_budget: Duration,
    /// How often the keys are fetched again anyway (default 5 minutes).
    pub key_refresh: Duration,
    /// The most one fetch may take (default 5 s).
    pub timeout: Duration,
}

impl StatusListConfig {
    /// Lists of `issuer`, fetched from the issuer itself, trusting the system's roots.
    pub fn new(issuer: impl Into<String>) -> Self {
        let issuer = issuer.into().trim_end_matches('/').to_owned();
        Self {
            base_url: issuer.clone(),
            issuer,
            ca_pem: None,
            staleness_budget: crate::live::DEFAULT_STALENESS_BUDGET,
            key_refresh: Duration::from_secs(300),
            timeout: Duration::from_secs(5),
        }
    }

    /// Fetches from `base_url` (`https://host:port`) instead of the issuer.
    #[must_use]
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into().trim_end_matches('/').to_owned();
        self
    }

    /// Trusts only this CA (PEM) for the fetches.
    #[must_use]
    pub fn with_ca_pem(mut self, ca_pem: impl Into<String>) -> Self {
        self.ca_pem = Some(ca_pem.into());
        self
    }

    /// Sets the staleness budget.
    #[must_use]
    pub fn with_staleness_budget(mut self, budget: Duration) -> Self {
        self.staleness_budget = budget;
        self
    }
}

struct Cached {
    at: Instant,
    list: StatusList,
    /// Milliseconds after the verifier's start when a token last asked for this list.
    used_ms: AtomicU64,
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// One list's fetch: held while it runs, and its last failure (when, why).
type FetchSlot = Arc<tokio::sync::Mutex<Option<(Instant, VerifyError)>>>;

/// The lists a verifier has read, and how it reads more.
pub(crate) struct Lists {
    client: HttpsClient,
    issuer: String,
    base_url: String,
    budget: Duration,
    timeout: Duration,
    leeway: u64,
    keys: Arc<RwLock<Arc<KeySet>>>,
    cache: RwLock<HashMap<u64, Arc<Cached>>>,
    /// One fetch per list at a time: a thousand requests on an expired list make one fetch,
    /// and its failure is remembered for [`FETCH_BACKOFF`] so that they do not each retry.
    fetching: Mutex<HashMap<u64, FetchSlot>>,
    last_key_fetch: Mutex<Instant>,
    start: Instant,
    /// Milliseconds after `start` of the last successful fetch; 0 = never.
    last_ok_ms: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    tasks: crate::live::Background,
}

impl std::fmt::Debug for Lists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lists")
            .field("base_url", &self.base_url)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// The handle a [`Verifier`](crate::Verifier) keeps: dropping it stops the key refresh.
#[derive(Debug)]
pub(crate) struct ListsHandle(pub(crate) Arc<Lists>);

impl Drop for ListsHandle {
    fn drop(&mut self) {
        self.0.tasks.abort_all();
    }
}

fn https_client(ca_pem: Option<&str>) -> Result<HttpsClient, VerifyError> {
    Ok(Client::builder(TokioExecutor::new()).build(connector(ca_pem, None)?))
}

/// An HTTPS-only connector trusting `ca_pem` (else the system roots), presenting `identity`
/// (certificate PEM, key PEM) when given.
pub(crate) fn connector(
    ca_pem: Option<&str>,
    identity: Option<(&str, &str)>,
) -> Result<HttpsConnector<HttpConnector>, VerifyError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| {
                    VerifyError::Unavailable(format!("the CA is not valid PEM: {e}"))
                })?;
                roots
                    .add(cert)
                    .map_err(|e| VerifyError::Unavailable(format!("the CA is not usable: {e}")))?;
            }
            if roots.is_empty() {
                return Err(VerifyError::Unavailable(
                    "the CA holds no PEM CERTIFICATE".into(),
                ));
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| VerifyError::Unavailable(format!("cannot configure TLS: {e}")))?
        .with_root_certificates(roots);
    let tls = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            use rustls_pki_types::PrivateKeyDer;
            let bad = |what: &str| {
                VerifyError::Unavailable(format!("the client {what} is not valid PEM"))
            };
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| bad("certificate"))?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|_| bad("key"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| VerifyError::Unavailable(format!("the client credential: {e}")))?
        }
    };
    Ok(HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build())
}

/// The list number in `uri` if it is one of `issuer`'s lists, spelled canonically.
fn list_number(issuer: &str, uri: &str) -> Option<u64> {
    let n = uri.strip_prefix(issuer)?.strip_prefix("/statuslists/")?;
    let canonical =
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && (n == "0" || !n.starts_with('0'));
    canonical.then(|| n.parse().ok()).flatten()
}

impl Lists {
    /// Reads the keys and starts refreshing them; the lists are read as tokens name them.
    pub(crate) async fn start(
        config: &StatusListConfig,
        leeway: u64,
    ) -> Result<(Arc<Self>, Arc<RwLock<Arc<KeySet>>>), VerifyError> {
        let client = https_client(config.ca_pem.as_deref())?;
        let keys = Arc::new(RwLock::new(Arc::new(KeySet::default())));
        let lists = Arc::new(Self {
            client,
            issuer: config.issuer.clone(),
            base_url: config.base_url.clone(),
            budget: config.staleness_budget,
            timeout: config.timeout,
            leeway,
            keys: Arc::clone(&keys),
            cache: RwLock::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
            last_key_fetch: Mutex::new(Instant::now()),
            start: Instant::now(),
            last_ok_ms: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            tasks: crate::live::Background::default(),
        });
        lists.fetch_keys().await?;
        let weak = Arc::downgrade(&lists);
        let every = config.key_refresh;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(lists) = weak.upgrade() else { return };
                if let Err(e) = lists.fetch_keys().await {
                    tracing::warn!(error = %e, "taskpass-verify: cannot refresh the broker's keys");
                }
            }
        });
        lists.tasks.push(task.abort_handle());
        Ok((lists, keys))
    }

    /// GETs `path` under the base URL: 200 and a body within `limit`, or why not.
    async fn get(&self, path: &str, accept: &str, limit: usize) -> Result<Bytes, VerifyError> {
        let url = format!("{}{path}", self.base_url);
        let unavailable = |why: String| {
            self.failures.fetch_add(1, Ordering::AcqRel);
            let msg = format!("GET {url}: {why}");
            *self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(msg.clone());
            VerifyError::Unavailable(msg)
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|_| unavailable("not a valid URL".into()))?;
        let request = http::Request::get(uri)
            .header(http::header::ACCEPT, accept)
            .body(Empty::new())
            .map_err(|e| unavailable(e.to_string()))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                let mut msg = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    source = s.source();
                }
                msg
            })?;
            if response.status() != http::StatusCode::OK {
                return Err(format!("HTTP status {}, expected 200", response.status()));
            }
            Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .map_err(|e| format!("reading the body: {e}"))
        };
        let body = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| unavailable(format!("no complete answer within {:?}", self.timeout)))?
            .map_err(unavailable)?;
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ok_ms.store(ms.max(1), Ordering::Release);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        Ok(body)
    }

    async fn fetch_keys(&self) -> Result<(), VerifyError> {
        *self
            .last_key_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        let body = self
            .get(
                "/.well-known/jwks.json",
                "application/json",
                crate::MAX_JWKS_BYTES,
            )
            .await?;
        let json = std::str::from_utf8(&body)
            .map_err(|_| VerifyError::InvalidKeySet("the JWKS is not UTF-8".into()))?;
        let set = KeySet::from_json(json)?;
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Fetches the keys again unless that was done within [`MIN_KEY_REFETCH`]; true when it did.
    pub(crate) async fn refresh_keys(&self) -> bool {
        let recent = self
            .last_key_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
            < MIN_KEY_REFETCH;
        !recent && self.fetch_keys().await.is_ok()
    }

    /// The token's list number and index, or why it names no list we may read.
    fn locate(&self, claims: &AccessClaims) -> Result<(u64, u64), VerifyError> {
        let status = claims
            .status
            .as_ref()
            .ok_or(VerifyError::MissingClaim("status"))?;
        let n = list_number(&self.issuer, &status.status_list.uri)
            .ok_or(VerifyError::InvalidClaim("status"))?;
        Ok((n, status.status_list.idx))
    }

    /// The cached list `n` if it may still be used: within its `ttl`, or, when `fetch_failed`,
    /// within the staleness budget past it, and never beyond its `exp`.
    fn cached(&self, n: u64, fetch_failed: bool) -> Option<Arc<Cached>> {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        let c = cache.get(&n)?;
        c.used_ms.store(self.now_ms(), Ordering::Relaxed);
        let limit = if fetch_failed {
            c.list.ttl + self.budget
        } else {
            c.list.ttl
        };
        let live = c.at.elapsed() < limit && SystemClock.now() < c.list.expires_at;
        live.then(|| Arc::clone(c))
    }

    /// Checks `claims` against a cached list only (no waiting); a list not held fresh asks
    /// for a fetch in the background and refuses the token ([`VerifyError::Stale`]).
    pub(crate) fn check_cached(self: &Arc<Self>, claims: &AccessClaims) -> Result<(), VerifyError> {
        let (n, idx) = self.locate(claims)?;
        if let Some(c) = self.cached(n, false) {
            return c.list.check(idx);
        }
        self.refresh_in_background(n);
        match self.cached(n, true) {
            Some(c) => c.list.check(idx),
            None => Err(VerifyError::Stale),
        }
    }

    /// Starts a fetch of list `n` unless one is running.
    fn refresh_in_background(self: &Arc<Self>, n: u64) {
        let slot = self.slot(n);
        if slot.try_lock().is_err() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let me = Arc::clone(self);
            rt.spawn(async move { me.fetch(n).await });
        }
    }

    /// The fetch slot of list `n`.
    fn slot(&self, n: u64) -> FetchSlot {
        let mut slots = self.fetching.lock().unwrap_or_else(PoisonError::into_inner);
        if slots.len() > MAX_CACHED_LISTS && !slots.contains_key(&n) {
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        Arc::clone(slots.entry(n).or_default())
    }

    /// Checks `claims` against their list, fetching it when the copy held is too old; a copy
    /// within the staleness budget serves at once while it is fetched again in the background.
    pub(crate) async fn check(self: &Arc<Self>, claims: &AccessClaims) -> Result<(), VerifyError> {
        let (n, idx) = self.locate(claims)?;
        if let Some(c) = self.cached(n, false) {
            return c.list.check(idx);
        }
        if let Some(c) = self.cached(n, true) {
            self.refresh_in_background(n);
            return c.list.check(idx);
        }
        match self.fetch(n).await {
            Ok(list) => list.check(idx),
            Err(e) => match self.cached(n, true) {
                Some(c) => c.list.check(idx),
                None => {
                    tracing::warn!(error = %e, "taskpass-verify: cannot read a status list");
                    Err(VerifyError::Stale)
                }
            },
        }
    }

    /// Fetches list `n` (once, however many callers want it) and caches it.
    async fn fetch(&self, n: u64) -> Result<StatusList, VerifyError> {
        let slot = self.slot(n);
        let mut last_failure = slot.lock().await;
        // Another caller may have fetched it, or failed to, while this one waited.
        if let Some(c) = self.cached(n, false) {
            return Ok(c.list.clone());
        }
        if let Some((at, e)) = &*last_failure
            && at.elapsed() < FETCH_BACKOFF
        {
            return Err(e.clone());
        }
        let r = self.fetch_now(n).await;
        *last_failure = r.as_ref().err().map(|e| (Instant::now(), e.clone()));
        r
    }

    async fn fetch_now(&self, n: u64) -> Result<StatusList, VerifyError> {
        let body = self
            .get(
                &format!("/statuslists/{n}"),
                "application/statuslist+jwt",
                MAX_STATUS_LIST_TOKEN_BYTES,
            )
            .await?;
        let jwt = std::str::from_utf8(&body).map_err(|_| bad("it is not UTF-8"))?;
        let uri = format!("{}/statuslists/{n}", self.issuer);
        let verify = |keys: &KeySet| {
            StatusList::verify(
                jwt,
                keys,
                &self.issuer,
                &uri,
                SystemClock.now(),
                self.leeway,
            )
        };
        let keys = Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner));
        let list = match verify(&keys) {
            Err(VerifyError::UnknownKey) if self.refresh_keys().await => {
                let keys = Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner));
                verify(&keys)
            }
            other => other,
        }
        .inspect_err(|e| {
            *self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
        })?;
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_CACHED_LISTS
            && !cache.contains_key(&n)
            && let Some(oldest) = cache.iter().min_by_key(|(_, c)| c.at).map(|(k, _)| *k)
        {
            cache.remove(&oldest);
        }
        cache.insert(
            n,
            Arc::new(Cached {
                at: Instant::now(),
                list: list.clone(),
                used_ms: AtomicU64::new(self.now_ms()),
            }),
        );
        Ok(list)
    }

    /// Where the lists stand, in the shape of the live verifier's status: `current` while
    /// every list held is usable, `connected` while the last fetch succeeded, `tracked` the
    /// lists held, `reconnects` the failed fetches.
    pub(crate) fn status(&self) -> RevocationStatus {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        let now = SystemClock.now();
        let now_ms = self.now_ms();
        // Only the lists tokens still ask for count: one nobody uses may stay old.
        let current = cache
            .values()
            .filter(|c| {
                let idle =
                    Duration::from_millis(now_ms.saturating_sub(c.used_ms.load(Ordering::Relaxed)));
                idle < c.list.ttl + self.budget
            })
            .all(|c| c.at.elapsed() < c.list.ttl + self.budget && now < c.list.expires_at);
        let silent_for = match self.last_ok_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(
                self.start
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        };
        let last_error = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        RevocationStatus {
            current,
            connected: last_error.is_none(),
            silent_for,
            cursor: 0,
            tracked: cache.len(),
            reconnects: self.failures.load(Ordering::Acquire),
            last_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_issuers_canonical_list_urls_are_read() {
        let iss = "https://tp.example";
        assert_eq!(
            list_number(iss, "https://tp.example/statuslists/0"),
            Some(0)
        );
        assert_eq!(
            list_number(iss, "https://tp.example/statuslists/42"),
            Some(42)
        );
        for uri in [
            "https://tp.example/statuslists/042",
            "https://tp.example/statuslists/",
            "https://tp.example/statuslists/1/../../admin",
            "https://tp.example/statuslists/-1",
            "https://tp.example/statuslists/+1",
            "https://tp.example.evil/statuslists/1",
            "https://evil.example/statuslists/1",
            "http://tp.example/statuslists/1",
            "https://tp.example/statuslists/99999999999999999999999",
        ] {
            assert_eq!(list_number(iss, uri), None, "{uri}");
        }
    }

    fn list(bits: u8, bytes: Vec<u8>) -> StatusList {
        StatusList {
            uri: String::new(),
            bits,
            statuses: bytes,
            ttl: Duration::from_secs(30),
            expires_at: i64::MAX,
        }
    }

    #[test]
    fn statuses_are_read_from_the_least_significant_bits() {
        // The draft's own examples (§4.1): one bit, then two bits per status.
        let one = list(1, vec![0xb9, 0xa3]);
        let expect = [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1];
        for (i, e) in expect.iter().enumerate() {
            assert_eq!(one.status(i as u64), Some(*e), "index {i}");
        }
        assert_eq!(one.status(16), None);
        assert_eq!(one.len(), 16);
        let two = list(2, vec![0xc9, 0x44, 0xf9]);
        let expect = [1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3];
        for (i, e) in expect.iter().enumerate() {
            assert_eq!(two.status(i as u64), Some(*e), "index {i}");
        }
        assert_eq!(two.status(u64::MAX), None);
        assert_eq!(two.check(0), Err(VerifyError::Revoked("revoked")));
        assert_eq!(two.check(1), Err(VerifyError::Revoked("suspended")));
        assert_eq!(two.check(2), Ok(()));
        assert_eq!(two.check(12), Err(VerifyError::InvalidClaim("status")));
    }
}
