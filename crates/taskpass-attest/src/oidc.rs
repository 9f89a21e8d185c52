//! The OIDC attestation verifier.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::Validation;
use jsonwebtoken::errors::ErrorKind;
use rustls_pki_types::CertificateDer;
use serde_json::{Map, Value};
use taskpass_core::Clock;
use tokio::task::JoinHandle;

use crate::cache::{self, AttestationCache};
use crate::config::is_https_url;
use crate::error::{quoted, quoted_list};
use crate::fetch::{Fetcher, read_ca_file};
use crate::jwks::{KeySet, Lookup, VerifyingKey};
use crate::jws::{self, Unverified, numeric_date};
use crate::{
    AttestError, AttestationMethod, AttestedIdentity, Attestor, Evidence, OidcIssuerConfig,
    OidcOptions,
};

/// Verifies OIDC ID tokens from the configured issuers (RFC 8725 rules: algorithms pinned per
/// key, no token-supplied keys, `aud`/`iss`/`exp`/`nbf`/`iat` checked against the injected
/// clock with a small leeway), remembering successes until each token's `exp`.
///
/// Built with [`OidcVerifier::new`]; keys from `jwks_file` are read then, remote keys on first
/// use and whenever a token names an unknown key (at most once per
/// [`OidcOptions::min_refetch_interval`] per issuer), and periodically once
/// [`OidcVerifier::spawn_refresh`] runs.
pub struct OidcVerifier {
    issuers: HashMap<String, Issuer>,
    options: OidcOptions,
    clock: Arc<dyn Clock>,
    cache: AttestationCache,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut issuers: Vec<&str> = self.issuers.keys().map(String::as_str).collect();
        issuers.sort_unstable();
        f.debug_struct("OidcVerifier")
            .field("issuers", &issuers)
            .field("options", &self.options)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// One configured issuer and its keys.
struct Issuer {
    config: OidcIssuerConfig,
    /// `None` for a static `jwks_file`.
    fetcher: Option<Fetcher>,
    /// `None` until the first successful load.
    keys: RwLock<Option<Arc<KeySet>>>,
    /// Held while fetching, so concurrent callers wait for one fetch instead of starting many.
    refresh: tokio::sync::Mutex<RefreshState>,
}

#[derive(Debug, Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    /// The key set URL found by discovery (forgotten when fetching from it fails).
    discovered_jwks_uri: Option<String>,
    last_error: Option<String>,
}

/// What a refresh did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refreshed {
    /// Rate-limited or static: nothing fetched.
    Skipped,
    /// Fetched; `lost_key` when a previously known key disappeared.
    Fetched { lost_key: bool },
}

impl Issuer {
    fn current(&self) -> Option<Arc<KeySet>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn name(&self) -> &str {
        &self.config.issuer
    }

    /// Refetches the key set unless one was attempted less than `min_interval` ago (`force`
    /// ignores that). On failure the previous keys stay in use.
    async fn refresh(&self, force: bool, min_interval: Duration) -> Result<Refreshed, String> {
        let Some(fetcher) = &self.fetcher else {
            return Ok(Refreshed::Skipped);
        };
        let mut state = self.refresh.lock().await;
        if !force
            && state
                .last_attempt
                .is_some_and(|t| t.elapsed() < min_interval)
        {
            return match (self.current(), &state.last_error) {
                (None, Some(e)) => Err(e.clone()),
                (None, None) => Err("the key set is not loaded yet".to_owned()),
                (Some(_), _) => Ok(Refreshed::Skipped),
            };
        }
        state.last_attempt = Some(Instant::now());
        match self.fetch(fetcher, &mut state).await {
            Ok(set) => {
                state.last_error = None;
                let new_kids: HashSet<Option<&str>> = set.kids().into_iter().collect();
                let mut slot = self.keys.write().unwrap_or_else(PoisonError::into_inner);
                let lost_key = slot
                    .as_ref()
                    .is_some_and(|old| old.kids().iter().any(|k| !new_kids.contains(k)));
                tracing::info!(
                    issuer = %self.name(),
                    kids = ?set.kids(),
                    "attestation issuer keys loaded"
                );
                *slot = Some(Arc::new(set));
                Ok(Refreshed::Fetched { lost_key })
            }
            Err(e) => {
                tracing::warn!(issuer = %self.name(), error = %e, "attestation issuer keys not refreshed");
                state.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    async fn fetch(&self, fetcher: &Fetcher, state: &mut RefreshState) -> Result<KeySet, String> {
        let (jwks_uri, discovered) = match (&self.config.jwks_uri, &state.discovered_jwks_uri) {
            (Some(uri), _) => (uri.clone(), false),
            (None, Some(uri)) => (uri.clone(), true),
            (None, None) => {
                let uri = self.discover(fetcher).await?;
                state.discovered_jwks_uri = Some(uri.clone());
                (uri, true)
            }
        };
        let doc = fetcher.get_json(&jwks_uri).await.inspect_err(|_| {
            if discovered {
                // Rediscover next time: the issuer may have moved its keys.
                state.discovered_jwks_uri = None;
            }
        })?;
        KeySet::from_jwks(&doc).map_err(|e| format!("{jwks_uri}: {e}"))
    }

    /// OIDC discovery: only `issuer` (which must match exactly) and `jwks_uri` are needed.
    async fn discover(&self, fetcher: &Fetcher) -> Result<String, String> {
        let issuer = self.name();
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        tracing::debug!(%issuer, %url, "fetching OIDC discovery document");
        let doc = fetcher.get_json(&url).await?;
        let found = doc
            .get("issuer")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the discovery document at {url} has no \"issuer\""))?;
        if found != issuer {
            return Err(format!(
                "the discovery document at {url} names issuer {}, not the configured {}: set \
                 issuer to exactly the value the issuer publishes (trailing slash included)",
                quoted(found),
                quoted(issuer)
            ));
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the discovery document at {url} has no \"jwks_uri\""))?;
        if !is_https_url(jwks_uri) {
            return Err(format!(
                "the discovery document at {url} gives jwks_uri {}, which is not https://",
                quoted(jwks_uri)
            ));
        }
        Ok(jwks_uri.to_owned())
    }
}

impl OidcVerifier {
    /// Builds a verifier for `issuers`: validates the configuration (every problem is reported
    /// at once), reads each `jwks_file` and `ca_file` now, and leaves remote keys to be fetched on
    /// first use.
    pub async fn new(
        issuers: Vec<OidcIssuerConfig>,
        options: OidcOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, AttestError> {
        // jsonwebtoken picks its crypto backend from a process-wide default. Name aws-lc
        // explicitly so a second backend enabled elsewhere in a build cannot leave it undecided
        // (which panics). Already installed is fine.
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();

        let mut problems: Vec<String> = issuers
            .iter()
            .flat_map(|c| c.validate_in(options.config_table))
            .collect();
        let mut seen = HashSet::new();
        for c in &issuers {
            if !seen.insert(c.issuer.as_str()) {
                problems.push(format!(
                    "{} issuer {:?} is configured twice: merge the entries",
                    options.config_table, c.issuer
                ));
            }
        }
        if options.max_token_bytes == 0 {
            problems.push("the attestation token size limit must be positive".to_owned());
        }
        if !problems.is_empty() {
            return Err(AttestError::Config { problems });
        }

        let system_roots = if issuers.iter().any(|c| c.jwks_file.is_none()) {
            system_roots().await
        } else {
            Vec::new()
        };
        let mut built = HashMap::with_capacity(issuers.len());
        for config in issuers {
            let at = format!("{} issuer {:?}", options.config_table, config.issuer);
            let (fetcher, keys) = if let Some(path) = &config.jwks_file {
                match read_jwks_file(path).await {
                    Ok(set) => (None, Some(Arc::new(set))),
                    Err(e) => {
                        problems.push(format!("{at}: {e}"));
                        continue;
                    }
                }
            } else {
                let extra = match &config.ca_file {
                    Some(path) => match read_ca_file(path).await {
                        Ok(certs) => certs,
                        Err(e) => {
                            problems.push(format!("{at}: {e}"));
                            continue;
                        }
                    },
                    None => Vec::new(),
                };
                match Fetcher::new(&system_roots, extra, options.http_timeout) {
                    Ok(f) => (Some(f), None),
                    Err(e) => {
                        problems.push(format!("{at}: {e}"));
                        continue;
                    }
                }
            };
            let issuer = Issuer {
                config,
                fetcher,
                keys: RwLock::new(keys),
                refresh: tokio::sync::Mutex::new(RefreshState::default()),
            };
            built.insert(issuer.config.issuer.clone(), issuer);
        }
        if !problems.is_empty() {
            return Err(AttestError::Config { problems });
        }
        Ok(Arc::new(Self {
            issuers: built,
            cache: AttestationCache::new(options.cache_capacity),
            options,
            clock,
        }))
    }

    /// Verifies an OIDC ID token and returns the identity it proves.
    pub async fn verify(&self, token: &str) -> Result<AttestedIdentity, AttestError> {
        if token.len() > self.options.max_token_bytes {
            return Err(AttestError::TooLarge {
                size: token.len(),
                limit: self.options.max_token_bytes,
            });
        }
        let now = self.clock.now();
        let digest = cache::digest(token);
        if let Some(identity) = self.cache.get(&digest, now) {
            return Ok(identity);
        }
        let unverified = jws::parse(token)?;
        let Some(issuer) = self.issuers.get(&unverified.iss) else {
            tracing::debug!(issuer = %quoted(&unverified.iss), "attestation from untrusted issuer");
            return Err(AttestError::UntrustedIssuer {
                issuer: quoted(&unverified.iss),
            });
        };
        let result = self.verify_with(issuer, &unverified, token, now).await;
        match &result {
            Ok(identity) => {
                tracing::debug!(
                    issuer = %issuer.name(),
                    kid = ?unverified.kid,
                    expires_at = identity.expires_at,
                    "attestation verified"
                );
                self.cache.insert(digest, identity.clone(), now);
            }
            Err(e) => tracing::debug!(
                issuer = %issuer.name(),
                kid = ?unverified.kid,
                reason = e.reason(),
                "attestation refused"
            ),
        }
        result
    }

    /// Verifies a token like [`OidcVerifier::verify`] and returns its claims as well, without
    /// the cache (for tokens whose claims matter, such as a user's token to act for).
    pub async fn verify_claims(
        &self,
        token: &str,
    ) -> Result<(AttestedIdentity, Map<String, Value>), AttestError> {
        if token.len() > self.options.max_token_bytes {
            return Err(AttestError::TooLarge {
                size: token.len(),
                limit: self.options.max_token_bytes,
            });
        }
        let now = self.clock.now();
        let unverified = jws::parse(token)?;
        let Some(issuer) = self.issuers.get(&unverified.iss) else {
            return Err(AttestError::UntrustedIssuer {
                issuer: quoted(&unverified.iss),
            });
        };
        let keys = self.keys_for(issuer, &unverified).await?;
        let Lookup::Found(key) =
            keys.lookup(issuer.name(), unverified.kid.as_deref(), unverified.alg)?
        else {
            return Err(unknown_key(issuer, &unverified));
        };
        let claims = decode(issuer, key, token)?;
        let identity = self.check_claims(issuer, &claims, now)?;
        Ok((identity, claims))
    }

    async fn verify_with(
        &self,
        issuer: &Issuer,
        unverified: &Unverified,
        token: &str,
        now: i64,
    ) -> Result<AttestedIdentity, AttestError> {
        let keys = self.keys_for(issuer, unverified).await?;
        let Lookup::Found(key) =
            keys.lookup(issuer.name(), unverified.kid.as_deref(), unverified.alg)?
        else {
            return Err(unknown_key(issuer, unverified));
        };
        let claims = decode(issuer, key, token)?;
        self.check_claims(issuer, &claims, now)
    }

    /// The issuer's key set, holding a key for the token's `kid` and `alg`; fetches the set if
    /// it was never loaded, and refetches once (rate-limited) if the `kid` is unknown.
    async fn keys_for(
        &self,
        issuer: &Issuer,
        unverified: &Unverified,
    ) -> Result<Arc<KeySet>, AttestError> {
        let min = self.options.min_refetch_interval;
        let unavailable = |detail: String| AttestError::KeysUnavailable {
            issuer: quoted(issuer.name()),
            detail,
        };
        let mut keys = match issuer.current() {
            Some(keys) => keys,
            None => {
                self.refreshed(issuer, issuer.refresh(false, min).await)
                    .map_err(unavailable)?;
                issuer
                    .current()
                    .ok_or_else(|| unavailable("the key set is not loaded yet".to_owned()))?
            }
        };
        let kid = unverified.kid.as_deref();
        if let Lookup::Unknown = keys.lookup(issuer.name(), kid, unverified.alg)? {
            if issuer.fetcher.is_none() {
                return Err(unknown_key(issuer, unverified));
            }
            tracing::debug!(issuer = %issuer.name(), ?kid, "unknown key id: refetching keys");
            if let Err(e) = self.refreshed(issuer, issuer.refresh(false, min).await) {
                tracing::debug!(issuer = %issuer.name(), error = %e, "refetch failed");
            }
            if let Some(fresh) = issuer.current() {
                keys = fresh;
            }
            if let Lookup::Unknown = keys.lookup(issuer.name(), kid, unverified.alg)? {
                return Err(unknown_key(issuer, unverified));
            }
        }
        Ok(keys)
    }

    /// Drops remembered attestations of an issuer that lost a key.
    fn refreshed(
        &self,
        issuer: &Issuer,
        result: Result<Refreshed, String>,
    ) -> Result<Refreshed, String> {
        if let Ok(Refreshed::Fetched { lost_key: true }) = result {
            self.cache.forget_issuer(issuer.name());
        }
        result
    }

    fn check_claims(
        &self,
        issuer: &Issuer,
        claims: &Map<String, Value>,
        now: i64,
    ) -> Result<AttestedIdentity, AttestError> {
        let leeway = self.options.leeway_seconds;
        let slack = i64::from(leeway);
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(AttestError::MissingClaim { claim: "sub" }),
        };
        let exp = numeric_date(claims, "exp")?.ok_or(AttestError::MissingClaim { claim: "exp" })?;
        if now >= exp.saturating_add(slack) {
            return Err(AttestError::Expired { exp, now, leeway });
        }
        if let Some(nbf) = numeric_date(claims, "nbf")?
            && nbf > now.saturating_add(slack)
        {
            return Err(AttestError::NotYetValid { nbf, now, leeway });
        }
        if let Some(iat) = numeric_date(claims, "iat")?
            && iat > now.saturating_add(slack)
        {
            return Err(AttestError::IssuedInFuture { iat, now, leeway });
        }
        Ok(AttestedIdentity {
            method: AttestationMethod::Oidc {
                issuer: issuer.config.issuer.clone(),
                subject,
            },
            expires_at: exp,
        })
    }

    /// Starts refetching every remote issuer's keys now and then every
    /// [`OidcOptions::refresh_interval`]; a failed refresh keeps the previous keys. The task
    /// ends when the verifier is dropped; abort the handle to stop it sooner. Call it within a
    /// Tokio runtime.
    pub fn spawn_refresh(self: &Arc<Self>) -> JoinHandle<()> {
        let verifier = Arc::downgrade(self);
        let period = self.options.refresh_interval.max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(verifier) = verifier.upgrade() else {
                    return;
                };
                for issuer in verifier.issuers.values().filter(|i| i.fetcher.is_some()) {
                    // Failures are logged inside and leave the previous keys in place.
                    let _ = verifier.refreshed(issuer, issuer.refresh(true, Duration::ZERO).await);
                }
            }
        })
    }
}

#[async_trait::async_trait]
impl Attestor for OidcVerifier {
    async fn attest(&self, evidence: &Evidence<'_>) -> Result<AttestedIdentity, AttestError> {
        match evidence {
            Evidence::OidcToken(token) => self.verify(token).await,
        }
    }
}

fn unknown_key(issuer: &Issuer, unverified: &Unverified) -> AttestError {
    AttestError::UnknownKey {
        issuer: quoted(issuer.name()),
        kid: unverified
            .kid
            .as_deref()
            .map_or_else(|| "none".to_owned(), quoted),
    }
}

/// Checks the signature with `key` (its pinned algorithm only), then `iss`, `aud` and the
/// presence of `exp`, `iss`, `sub`, `aud`. Times are checked by the caller against its clock.
fn decode(
    issuer: &Issuer,
    key: &VerifyingKey,
    token: &str,
) -> Result<Map<String, Value>, AttestError> {
    let mut validation = Validation::new(key.alg);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation.set_issuer(&[issuer.config.issuer.as_str()]);
    validation.set_audience(&issuer.config.audiences);
    validation.validate_aud = true;
    // jsonwebtoken reads the system clock; times are checked against the injected one instead.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    let kid = || key.kid.as_deref().map_or_else(|| "none".to_owned(), quoted);
    match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
        Ok(data) => Ok(data.claims),
        Err(e) => Err(match e.kind() {
            ErrorKind::InvalidSignature => AttestError::BadSignature {
                issuer: quoted(issuer.name()),
                kid: kid(),
            },
            ErrorKind::InvalidAudience => AttestError::WrongAudience {
                issuer: quoted(issuer.name()),
                expected: quoted_list(&issuer.config.audiences),
            },
            ErrorKind::InvalidIssuer => AttestError::UntrustedIssuer {
                issuer: quoted(issuer.name()),
            },
            ErrorKind::MissingRequiredClaim(claim) => AttestError::MissingClaim {
                claim: match claim.as_str() {
                    "exp" => "exp",
                    "iss" => "iss",
                    "sub" => "sub",
                    _ => "aud",
                },
            },
            ErrorKind::InvalidAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm => AttestError::AlgNotAllowed {
                alg: quoted(&format!("{:?}", key.alg)),
            },
            ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::Provider(_) => {
                tracing::warn!(issuer = %issuer.name(), kid = ?key.kid, "issuer key cannot verify");
                AttestError::BadSignature {
                    issuer: quoted(issuer.name()),
                    kid: kid(),
                }
            }
            _ => AttestError::Malformed("the token could not be decoded"),
        }),
    }
}

/// The system's trust roots; load errors are ignored (an issuer may rely on its `ca_file`).
async fn system_roots() -> Vec<CertificateDer<'static>> {
    match tokio::task::spawn_blocking(rustls_native_certs::load_native_certs).await {
        Ok(result) => {
            if !result.errors.is_empty() {
                tracing::debug!(
                    errors = result.errors.len(),
                    "some system trust roots not loaded"
                );
            }
            result.certs
        }
        Err(_) => Vec::new(),
    }
}

async fn read_jwks_file(path: &Path) -> Result<KeySet, String> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read jwks_file {}: {e}", path.display()))?;
    let doc: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("jwks_file {} is not JSON: {e}", path.display()))?;
    KeySet::from_jwks(&doc).map_err(|e| format!("jwks_file {}: {e}", path.display()))
}

// The verifier is shared across request tasks.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<OidcVerifier>();
};
