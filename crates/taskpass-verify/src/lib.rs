//! The Taskpass validator SDK: a downstream API verifies the access tokens agents present,
//! offline, against the broker's JWKS.
//!
//! A token is accepted only if it is a compact JWS of type `at+jwt`, signed (`EdDSA`, or
//! `ES256`) by a key of the broker's key set under the algorithm that key is pinned to, issued
//! by the configured issuer, for the caller's own audience, and within its lifetime. Everything
//! else is a [`VerifyError`] whose [`reason`](VerifyError::reason) is a short stable string in
//! the vocabulary of the broker's introspection reasons (`malformed`, `bad_signature`,
//! `unknown_key`, `expired`, ...). Both read tokens with one profile (`taskpass_core::jwt`),
//! so they never disagree on what a token says.
//!
//! A token bound to its holder (`cnf`, issued to agents that attested with a client
//! certificate) passes only [`Verifier::verify_held`] with the certificate the caller showed
//! on its mTLS connection; [`Verifier::verify`] refuses it ([`VerifyError::ProofRequired`]),
//! so that a leaked bound token is useless. A token bound to a DPoP key (`cnf.jkt`) passes only
//! with [`Holder::Dpop`]: a proof by that key for the request, checked as RFC 9449 says.
//!
//! Revocation is the other half: follow `WatchRevocations` and reject the token ids, tasks
//! and agents it names.
//!
//! ```
//! use taskpass_verify::{KeySet, Verifier, VerifyError};
//!
//! // The broker's `/.well-known/jwks.json`.
//! let jwks = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","alg":"EdDSA","use":"sig",
//!               "x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
//! let verifier = Verifier::new("https://taskpass.example.org", KeySet::from_json(jwks)?);
//!
//! # let bearer = "not-a-token";
//! match verifier.verify(bearer, "https://billing.example.org") {
//!     Ok(token) if token.has_scope("invoices:read") => { /* serve token.subject */ }
//!     Ok(_) => { /* 403: scope not granted */ }
//!     Err(e) => assert_eq!(e.reason(), "malformed"), // 401, log e.reason()
//! }
//! # Ok::<(), VerifyError>(())
//! ```

mod dpop;
mod error;
mod keys;
#[cfg(feature = "live")]
mod live;
#[cfg(feature = "tower")]
pub mod middleware;
#[cfg(feature = "status-list")]
mod status_list;
#[cfg(feature = "status-list")]
mod tools;
mod verifier;

pub use dpop::{
    DEFAULT_PROOF_WINDOW_SECS, DEFAULT_REPLAY_CACHE, DpopProof, DpopRequest, DpopVerifier,
    MAX_PROOF_BYTES,
};
pub use error::VerifyError;
pub use keys::{KeySet, MAX_JWKS_BYTES, MAX_JWKS_KEYS};
#[cfg(feature = "live")]
pub use live::{
    DEFAULT_STALENESS_BUDGET, Fallback, INTROSPECT_CACHE_ENTRIES, INTROSPECT_CACHE_TTL, LiveConfig,
    MIN_KEY_REFETCH, RevocationStatus,
};
#[cfg(feature = "status-list")]
pub use status_list::{
    MAX_STATUS_LIST_BYTES, MAX_STATUS_LIST_TOKEN_BYTES, StatusList, StatusListConfig,
};
#[cfg(feature = "status-list")]
pub use tools::{ToolAuthorizer, ToolDecision};
pub use verifier::{
    DEFAULT_LEEWAY_SECS, DEFAULT_MAX_LIFETIME_SECS, Holder, MAX_TOKEN_BYTES, VerifiedToken,
    Verifier,
};
