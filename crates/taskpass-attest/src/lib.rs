//! Attestation verification for the Taskpass broker: turns the proof an agent presents on a call
//! into a verified identity, or says precisely why not.
//!
//! The proof is the verified client certificate of the mTLS connection ([`X509Verifier`]:
//! one SPIFFE URI SAN, from a certificate authority that may vouch for its trust domain) or
//! an OIDC ID token from a trusted workload issuer (a Kubernetes projected
//! service-account token, GitHub Actions, a cloud IdP); [`OidcVerifier`] checks it following
//! RFC 8725: RS256, ES256 or EdDSA only, the algorithm pinned per published key, no key taken
//! from the token, `iss`/`aud`/`exp`/`nbf`/`iat` checked against an injected clock with a small
//! leeway. Keys come from a static file, a JWKS URL or OIDC discovery, fetched over HTTPS only.
//!
//! ```no_run
//! use std::sync::Arc;
//! use taskpass_attest::{OidcIssuerConfig, OidcOptions, OidcVerifier};
//!
//! # async fn run(token: &str) -> Result<(), taskpass_attest::AttestError> {
//! let issuer = OidcIssuerConfig {
//!     issuer: "https://kubernetes.default.svc".into(),
//!     audiences: vec!["taskpass".into()],
//!     jwks_uri: None, // found by discovery
//!     jwks_file: None,
//!     ca_file: Some("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt".into()),
//! };
//! let clock = Arc::new(taskpass_core::SystemClock);
//! let verifier = OidcVerifier::new(vec![issuer], OidcOptions::default(), clock).await?;
//! let refresh = verifier.spawn_refresh(); // abort on shutdown
//! let identity = verifier.verify(token).await?;
//! println!("{:?} until {}", identity.method, identity.expires_at);
//! # refresh.abort();
//! # Ok(()) }
//! ```

mod cache;
mod config;
mod error;
mod fetch;
mod identity;
mod jwks;
mod jws;
mod oidc;
mod x509;

pub use config::{OidcIssuerConfig, OidcOptions};
pub use error::AttestError;
pub use identity::{AttestationMethod, AttestedIdentity, Attestor, Evidence};
pub use oidc::OidcVerifier;
pub use x509::{Authority, CertificateIdentity, MAX_CHAIN, MIN_RSA_BITS, X509Verifier};
