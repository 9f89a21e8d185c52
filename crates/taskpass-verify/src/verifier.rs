use std::sync::{Arc, PoisonError, RwLock};

use jsonwebtoken::Algorithm;
use taskpass_core::jwt::{self, SignedToken, TokenAlg};
use taskpass_core::{AccessClaims, Clock as _, Confirmation, SystemClock};

use crate::error::VerifyError;
use crate::keys::KeySet;

/// The largest token [`Verifier::verify`] looks at, in bytes. Larger ones are rejected with
/// [`VerifyError::TooLarge`] before any parsing.
pub use taskpass_core::jwt::MAX_TOKEN_BYTES;

/// The clock skew a [`Verifier`] allows by default on `exp`, `nbf` and `iat`, in seconds.
///
/// The broker itself uses none when it issues tokens; a validator runs on another machine, so
/// a few seconds absorb the skew between the two clocks without noticeably extending a
/// token's life.
pub const DEFAULT_LEEWAY_SECS: u64 = 5;

/// The longest token lifetime (`exp` − `iat`) a [`Verifier`] accepts by default, seconds: the
/// longest a broker can be configured to issue. Set the broker's own `tokens.max_ttl_seconds`
/// with [`Verifier::with_max_lifetime`] to refuse anything longer.
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 86_400;

/// Verifies Taskpass access tokens offline, against the broker's keys.
///
/// Tokens are read with the one access-token profile the broker uses too
/// (`taskpass_core::jwt`): no member name repeated anywhere, every claim of its type.
///
/// Secure by default: only `EdDSA` and `ES256` signatures from the configured key set, each
/// key pinned to one algorithm; `typ` must be `at+jwt`; `kid` is required; `crit`, `jku`,
/// `jwk`, `x5u` and `x5c` headers are refused; `iss` must be the configured issuer, `aud` the
/// audience asked for, and `exp`, `nbf` and `iat` are checked with a small leeway
/// ([`DEFAULT_LEEWAY_SECS`]).
///
/// A `Verifier` is `Send + Sync`: share one (in an `Arc`) across requests and refresh its keys
/// with [`Verifier::replace_keys`] when the broker rotates them.
#[derive(Debug)]
pub struct Verifier {
    issuer: String,
    leeway: u64,
    keys: Arc<RwLock<Arc<KeySet>>>,
    dpop_window: i64,
    replays: crate::dpop::ReplayCache,
    max_lifetime: u64,
    #[cfg(feature = "live")]
    live: Option<crate::live::LiveHandle>,
    #[cfg(feature = "status-list")]
    lists: Option<crate::status_list::ListsHandle>,
}

impl Verifier {
    /// A verifier for tokens issued by `issuer` (the broker's `iss`, e.g.
    /// `https://taskpass.example.org`) and signed by one of `keys`.
    ///
    /// Also selects `jsonwebtoken`'s aws-lc-rs crypto provider as the process default if no
    /// provider was installed yet, so verification never depends on feature inference.
    pub fn new(issuer: impl Into<String>, keys: KeySet) -> Self {
        // An `Err` means a provider is already installed (the application's or ours).
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
        Self {
            issuer: issuer.into(),
            leeway: DEFAULT_LEEWAY_SECS,
            keys: Arc::new(RwLock::new(Arc::new(keys))),
            dpop_window: crate::dpop::DEFAULT_PROOF_WINDOW_SECS,
            replays: crate::dpop::ReplayCache::new(crate::dpop::DEFAULT_REPLAY_CACHE),
            max_lifetime: DEFAULT_MAX_LIFETIME_SECS,
            #[cfg(feature = "live")]
            live: None,
            #[cfg(feature = "status-list")]
            lists: None,
        }
    }

    /// A verifier that follows the broker live: it fetches the keys over gRPC (again on a
    /// timer and on an unknown `kid`), follows WatchRevocations with its validator credential
    /// and refuses revoked tokens within the stream's latency, and refuses every token once it
    /// has not heard from the broker for longer than the staleness budget (or introspects
    /// them, see [`Fallback`](crate::Fallback)). Returns once the stream has caught up.
    ///
    /// Must be called within a Tokio runtime; the background tasks stop when the verifier is
    /// dropped.
    #[cfg(feature = "live")]
    pub async fn connect(config: crate::LiveConfig) -> Result<Arc<Self>, VerifyError> {
        let (live, keys) = crate::live::start(&config).await?;
        let mut v = Self::new(config.issuer.clone(), keys);
        crate::live::spawn_key_refresh(&live, Arc::clone(&v.keys), config.key_refresh);
        v.live = Some(crate::live::LiveHandle(live));
        Ok(Arc::new(v))
    }

    /// A verifier that checks revocation against the broker's token status lists
    /// (draft-ietf-oauth-status-list) instead of the stream: it needs no validator
    /// credential and no gRPC, only HTTPS to the broker's public endpoints. It reads the JWKS
    /// (again on a timer and on an unknown `kid`), and each list its tokens name, cached for
    /// the list's `ttl`: a revocation reaches it within that `ttl` (30 s from a Taskpass
    /// broker). Tokens without a `status` claim are refused. Returns once the keys are read.
    ///
    /// [`Verifier::verify_request`] fetches a list it does not hold fresh; the synchronous
    /// calls use only the lists held and refuse ([`VerifyError::Stale`]) a token whose list
    /// is not, while fetching it in the background.
    #[cfg(feature = "status-list")]
    pub async fn with_status_lists(
        config: crate::StatusListConfig,
    ) -> Result<Arc<Self>, VerifyError> {
        let (lists, keys) = crate::status_list::Lists::start(&config, DEFAULT_LEEWAY_SECS).await?;
        let mut v = Self::new(config.issuer.clone(), KeySet::default());
        v.keys = keys;
        v.lists = Some(crate::status_list::ListsHandle(lists));
        Ok(Arc::new(v))
    }

    /// Where the revocation state stands (`None` for an offline verifier): the stream's for a
    /// [`Verifier::connect`]ed one, the lists' for one built
    /// [`with_status_lists`](Verifier::with_status_lists).
    #[cfg(feature = "live")]
    pub fn revocation_status(&self) -> Option<crate::RevocationStatus> {
        #[cfg(feature = "status-list")]
        if let Some(lists) = &self.lists {
            return Some(lists.0.status());
        }
        self.live.as_ref().map(|l| l.0.status())
    }

    /// The live state as Prometheus text (empty for an offline verifier): serve it from the
    /// API's `/metrics` and alert on `taskpass_verifier_revocations_current == 0`.
    #[cfg(feature = "live")]
    pub fn metrics_text(&self) -> String {
        self.revocation_status()
            .map(|s| crate::live::metrics_text(&s))
            .unwrap_or_default()
    }

    /// Verifies a request's token like [`Verifier::verify_held`], and may wait on the broker
    /// to do better: on an unknown `kid` it fetches the keys again (rate-limited) and retries,
    /// and while the revocation state is stale with [`Fallback::Introspect`](crate::Fallback)
    /// it asks Introspect. What the middleware calls.
    #[cfg(feature = "live")]
    pub async fn verify_request(
        &self,
        token: &str,
        audience: &str,
        holder: Holder<'_>,
    ) -> Result<VerifiedToken, VerifyError> {
        let now = SystemClock.now();
        let verified = match self.verify_offline(token, audience, holder, now) {
            Err(VerifyError::UnknownKey) if self.refresh_keys().await => {
                self.verify_offline(token, audience, holder, SystemClock.now())?
            }
            other => other?,
        };
        #[cfg(feature = "status-list")]
        if let Some(lists) = &self.lists {
            lists.0.check(&verified.claims).await?;
            return Ok(verified);
        }
        let Some(live) = &self.live else {
            return Ok(verified);
        };
        match live.0.check(&verified.claims) {
            Err(VerifyError::Stale) if live.0.fallback() == crate::Fallback::Introspect => {
                live.0.introspect(token).await?;
                Ok(verified)
            }
            other => other.map(|()| verified),
        }
    }

    /// Fetches the keys again from whichever source this verifier follows (rate-limited);
    /// true when new keys may have arrived.
    #[cfg(feature = "live")]
    async fn refresh_keys(&self) -> bool {
        #[cfg(feature = "status-list")]
        if let Some(lists) = &self.lists {
            return lists.0.refresh_keys().await;
        }
        match &self.live {
            Some(live) => live.0.refresh_keys().await,
            None => false,
        }
    }

    /// Sets the clock skew allowed on `exp`, `nbf` and `iat`, in seconds (default
    /// [`DEFAULT_LEEWAY_SECS`]). Keep it small: it extends every token's life by as much.
    #[must_use]
    pub fn with_leeway(mut self, secs: u64) -> Self {
        self.leeway = secs;
        self
    }

    /// Sets how far a DPoP proof's `iat` may be from now (default
    /// [`DEFAULT_PROOF_WINDOW_SECS`](crate::DEFAULT_PROOF_WINDOW_SECS)) and how many proof
    /// `jti`s the replay cache holds (default
    /// [`DEFAULT_REPLAY_CACHE`](crate::DEFAULT_REPLAY_CACHE)).
    #[must_use]
    pub fn with_dpop(mut self, window_secs: u32, replay_cache: usize) -> Self {
        self.dpop_window = i64::from(window_secs);
        self.replays = crate::dpop::ReplayCache::new(replay_cache);
        self
    }

    /// Sets the longest token lifetime (`exp` − `iat`) accepted, seconds (default
    /// [`DEFAULT_MAX_LIFETIME_SECS`]): the broker's `tokens.max_ttl_seconds`.
    #[must_use]
    pub fn with_max_lifetime(mut self, secs: u64) -> Self {
        self.max_lifetime = secs;
        self
    }

    /// The issuer this verifier trusts.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Replaces the key set, e.g. after re-fetching the JWKS on an unknown `kid`. Verifications
    /// already running finish with the keys they started with.
    pub fn replace_keys(&self, keys: KeySet) {
        let mut guard = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        *guard = Arc::new(keys);
    }

    /// Verifies `token` for `audience` (the calling API's own audience) at the current time.
    /// A token bound to a certificate or key (`cnf`) is refused with
    /// [`VerifyError::ProofRequired`]: use [`Verifier::verify_held`] with what the caller
    /// presented.
    pub fn verify(&self, token: &str, audience: &str) -> Result<VerifiedToken, VerifyError> {
        self.verify_held_at(token, audience, Holder::Nothing, SystemClock.now())
    }

    /// Verifies `token` for `audience` as if the time were `now` (Unix seconds); bound tokens
    /// are refused as by [`Verifier::verify`].
    pub fn verify_at(
        &self,
        token: &str,
        audience: &str,
        now: i64,
    ) -> Result<VerifiedToken, VerifyError> {
        self.verify_held_at(token, audience, Holder::Nothing, now)
    }

    /// Verifies `token` for `audience`, presented by `holder`: a token bound to a certificate
    /// (`cnf.x5t#S256`, RFC 8705) is accepted only from the client that showed that
    /// certificate on the connection, one bound to a key (`cnf.jkt`, RFC 9449) only with a
    /// valid, fresh, unreplayed DPoP proof by that key for this request; an unbound token is
    /// accepted from anyone.
    pub fn verify_held(
        &self,
        token: &str,
        audience: &str,
        holder: Holder<'_>,
    ) -> Result<VerifiedToken, VerifyError> {
        self.verify_held_at(token, audience, holder, SystemClock.now())
    }

    /// [`Verifier::verify_held`] as if the time were `now` (Unix seconds).
    pub fn verify_held_at(
        &self,
        token: &str,
        audience: &str,
        holder: Holder<'_>,
        now: i64,
    ) -> Result<VerifiedToken, VerifyError> {
        let verified = self.verify_offline(token, audience, holder, now);
        #[cfg(feature = "status-list")]
        if let Some(lists) = &self.lists {
            let verified = verified?;
            lists.0.check_cached(&verified.claims)?;
            return Ok(verified);
        }
        #[cfg(feature = "live")]
        if let Some(live) = &self.live {
            let verified = match verified {
                Err(VerifyError::UnknownKey) => {
                    live.0.want_keys();
                    return Err(VerifyError::UnknownKey);
                }
                other => other?,
            };
            live.0.check(&verified.claims)?;
            return Ok(verified);
        }
        verified
    }

    /// Every check but revocation.
    fn verify_offline(
        &self,
        token: &str,
        audience: &str,
        holder: Holder<'_>,
        now: i64,
    ) -> Result<VerifiedToken, VerifyError> {
        let verified = self.verify_unbound(token, audience, now)?;
        match (&verified.claims.cnf, holder) {
            (None, _) => {}
            (Some(cnf), Holder::Certificate(der)) => {
                if !cnf.matches_certificate(der) {
                    return Err(VerifyError::WrongHolder);
                }
            }
            (Some(cnf @ Confirmation::Key(_)), Holder::Dpop(req)) => {
                crate::dpop::check(&req, token, cnf, now, self.dpop_window, &self.replays)?;
            }
            (Some(Confirmation::Certificate(_)), Holder::Dpop(_)) => {
                return Err(VerifyError::WrongHolder);
            }
            (Some(_), Holder::Nothing) => return Err(VerifyError::ProofRequired),
        }
        Ok(verified)
    }

    /// Every check but the binding.
    fn verify_unbound(
        &self,
        token: &str,
        audience: &str,
        now: i64,
    ) -> Result<VerifiedToken, VerifyError> {
        let signed = SignedToken::parse(token)?;
        let keys = Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner));
        let key = keys.get(&signed.kid).ok_or(VerifyError::UnknownKey)?;
        if key.alg != jwt_alg(signed.alg) {
            return Err(VerifyError::UnsupportedAlgorithm);
        }
        let valid = jsonwebtoken::crypto::verify(
            signed.signature_b64,
            signed.signing_input.as_bytes(),
            &key.key,
            key.alg,
        )
        .map_err(|_| VerifyError::BadSignature)?;
        if !valid {
            return Err(VerifyError::BadSignature);
        }
        let claims = signed.claims()?;
        if claims.iss != self.issuer {
            return Err(VerifyError::WrongIssuer);
        }
        if claims.aud != audience {
            return Err(VerifyError::WrongAudience);
        }
        jwt::check_times(&claims, now, self.leeway)?;
        jwt::check_lifetime(&claims, self.max_lifetime)?;
        Ok(VerifiedToken::new(claims))
    }
}

pub(crate) fn jwt_alg(alg: TokenAlg) -> Algorithm {
    match alg {
        TokenAlg::EdDSA => Algorithm::EdDSA,
        TokenAlg::ES256 => Algorithm::ES256,
    }
}

/// What the caller presented beside the token, for bound tokens.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Holder<'a> {
    /// Nothing: only unbound tokens pass.
    Nothing,
    /// The client certificate (DER) the caller showed on its mTLS connection to the API.
    Certificate(&'a [u8]),
    /// A DPoP proof (RFC 9449) and the request it came with.
    Dpop(crate::DpopRequest<'a>),
}

/// A token that passed every check, with its claims.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedToken {
    /// `sub`: the agent id, or the user when the agent acts for one.
    pub subject: String,
    /// `client_id`: always the agent id.
    pub client_id: String,
    /// `txn`: the task the token was issued for.
    pub task_id: String,
    /// `jti`: the token id (what token revocations name).
    pub token_id: String,
    /// `aud`: the audience, equal to the one verified for.
    pub audience: String,
    /// `scope`, split on spaces.
    pub scopes: Vec<String>,
    /// `iat`, Unix seconds.
    pub issued_at: i64,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
    /// `act.sub`: the acting agent, when the token acts for a user.
    pub actor: Option<String>,
    /// Every claim, as issued.
    pub claims: AccessClaims,
}

impl VerifiedToken {
    fn new(claims: AccessClaims) -> Self {
        Self {
            subject: claims.sub.clone(),
            client_id: claims.client_id.clone(),
            task_id: claims.txn.clone(),
            token_id: claims.jti.clone(),
            audience: claims.aud.clone(),
            scopes: claims.scopes(),
            issued_at: claims.iat,
            expires_at: claims.exp,
            actor: claims.act.as_ref().map(|act| act.sub.clone()),
            claims,
        }
    }

    /// Whether the token grants `scope` (exact match).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Verifier>();
        assert_send_sync::<KeySet>();
        assert_send_sync::<VerifiedToken>();
    }
}
