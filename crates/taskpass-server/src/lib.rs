//! The Taskpass broker: the gRPC services (agents, validators, operators) over TLS, the HTTPS
//! endpoints (JWKS, metadata, health, metrics), the data-dir PKI and signing keys, and the
//! task-expiry sweeper. `taskpassd` is a thin binary over [`launch`].
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! let cwd = std::env::current_dir()?;
//! let config = taskpass_server::ConfigFile::dev().validate(&cwd)?;
//! let broker = taskpass_server::launch(config).await?;
//! println!("gRPC on {}", broker.grpc_addr);
//! broker.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

mod admin;
mod agent_http;
mod approvals;
mod authzen;
mod broker;
mod certificates;
mod config;
mod conn;
mod delegation;
mod error;
mod grpc;
mod http;
mod keys;
mod metrics;
mod oauth;
mod operators;
mod permissions;
mod pki;
mod policies;
mod principals;
mod ratelimit;
mod refusals;
mod serve;
mod status;
mod tls;
mod validators;

pub use broker::{Broker, MAX_ATTESTATION_BYTES};
pub use config::{
    AttestationSection, Config, ConfigError, ConfigFile, LimitsSection, ServerSection,
    TokensSection, X509AuthorityConfig,
};
pub use error::ApiError;
pub use keys::{KeyRing, MAX_TOKEN_BYTES};
pub use operators::recover_admin;
pub use pki::{
    BrokerPki, IssuedCertificate, PkiError, files, issue_from_csr, issue_operator, load_issuer,
    operator_uri, write_file,
};
pub use serve::{GRACE, MAX_MESSAGE_BYTES, RunningBroker, StartError, launch, serve};
pub use tls::{GrpcStream, TlsError};
