//! Shared fixtures for Taskpass tests and the demo: a test CA, a loopback OIDC issuer, a real
//! `taskpassd` process harness and an HTTPS GET.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let issuer = taskpass_testkit::DevIssuer::start().await?;
//! let token = issuer.token("system:serviceaccount:ns:bot", "taskpass", 300);
//! # Ok(()) }
//! ```

mod broker;
mod https;
mod issuer;
mod pki;

pub use broker::{ATTESTATION_AUDIENCE, BROKER_ISSUER, TestBroker, workspace_bin};
pub use https::{HttpAnswer, HttpsRequest, http_get, https_get, https_post_form};
pub use issuer::{DevIssuer, TokenAlg, TokenSpec};
pub use pki::TestCa;
