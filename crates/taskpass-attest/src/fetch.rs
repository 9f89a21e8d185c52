//! Fetching discovery documents and key sets: HTTPS only, bounded in size and time.

use std::error::Error as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::Value;

/// Largest discovery or JWKS document read.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// An HTTPS client trusting the system roots plus, optionally, one issuer's CA file.
#[derive(Clone)]
pub(crate) struct Fetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Reads the PEM certificates of a `ca_file`; an error names the file and says what is wrong.
pub(crate) async fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("ca_file {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "ca_file {} holds no PEM CERTIFICATE",
            path.display()
        ));
    }
    Ok(certs)
}

impl Fetcher {
    /// A client whose roots are `system` (already loaded; invalid ones skipped) plus `extra`,
    /// which must all be valid trust anchors.
    pub(crate) fn new(
        system: &[CertificateDer<'static>],
        extra: Vec<CertificateDer<'static>>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(system.iter().cloned());
        for cert in extra {
            roots
                .add(cert)
                .map_err(|e| format!("a ca_file certificate is not usable: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot configure TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { client, timeout })
    }

    /// GETs `url` (https only; redirects are not followed) and parses the body as JSON.
    pub(crate) async fn get_json(&self, url: &str) -> Result<Value, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| format!("{url:?} is not a valid URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("{url:?} is not an https:// URL"));
        }
        let request = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| format!("GET {url}: {e}"))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                // The client's own message is terse; the source chain says what failed
                // (connection refused, unknown certificate issuer, ...).
                let mut msg = format!("GET {url}: {e}");
                let mut source = e.source();
                while let Some(s) = source {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    source = s.source();
                }
                msg
            })?;
            let status = response.status();
            if status != http::StatusCode::OK {
                return Err(format!("GET {url}: HTTP status {status}, expected 200"));
            }
            let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| format!("GET {url}: reading the body: {e}"))?
                .to_bytes();
            serde_json::from_slice::<Value>(&body)
                .map_err(|e| format!("GET {url}: the body is not JSON: {e}"))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("GET {url}: no complete response within {:?}", self.timeout))?
    }
}
