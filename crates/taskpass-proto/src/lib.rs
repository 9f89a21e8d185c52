//! Generated gRPC types and service stubs for the `taskpass.v1` API.
//!
//! The `.proto` files live in `proto/taskpass/v1/` at the top of the repository and are compiled
//! at build time by `protox`, so a fresh checkout builds with cargo alone.
//!
//! ```
//! use taskpass_proto::v1::{Attestation, attestation::Method};
//! let a = Attestation { method: Some(Method::OidcToken("eyJ...".into())) };
//! assert!(a.method.is_some());
//! ```

/// The `taskpass.v1` package.
#[allow(missing_debug_implementations, clippy::all, reason = "generated code")]
pub mod v1 {
    tonic::include_proto!("taskpass.v1");
}

/// The encoded `FileDescriptorSet` of every `taskpass.v1` file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/taskpass_descriptor.bin"));

/// Opens a gRPC channel to a broker at `url` (`https://host:port`), trusting `ca_pem` (the
/// broker's `ca.pem`) and presenting `identity` (certificate PEM, key PEM) when given: the
/// operators' credential for the admin API.
pub async fn connect(
    url: &str,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(url.to_owned())?
        .tls_config(tls)?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
}
