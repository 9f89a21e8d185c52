//! A minimal HTTPS GET for tests and the demo, trusting one CA.

use std::sync::Arc;

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

/// GETs `url` (`https://host:port/path`), trusting only `ca_pem`; returns (status, body).
pub async fn https_get(url: &str, ca_pem: &str) -> anyhow::Result<(u16, String)> {
    let a = HttpsRequest {
        method: "GET",
        url,
        ca_pem,
        identity: None,
        headers: &[],
        body: &[],
    }
    .send()
    .await?;
    Ok((a.status, a.body))
}

/// What [`http_get`] got back.
#[derive(Debug)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: http::HeaderMap,
    /// The body, as text.
    pub body: String,
}

/// GETs a plain `http://host:port/path` on loopback with these extra headers.
pub async fn http_get(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<HttpAnswer> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    let host = uri.host().context("URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, format!("{host}:{port}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = sender
        .send_request(req.body(Empty::<bytes::Bytes>::new())?)
        .await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(HttpAnswer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// One HTTPS request over HTTP/1.1, trusting only `ca_pem`, with a client certificate when
/// `identity` is `(cert_pem, key_pem)`; `body` is sent as is.
#[derive(Debug, Clone, Copy)]
pub struct HttpsRequest<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// `https://host:port/path`.
    pub url: &'a str,
    /// The CA to trust.
    pub ca_pem: &'a str,
    /// A client certificate and its key, PEM.
    pub identity: Option<(&'a str, &'a str)>,
    /// Extra headers.
    pub headers: &'a [(&'a str, &'a str)],
    /// The body.
    pub body: &'a [u8],
}

impl HttpsRequest<'_> {
    /// Sends it and reads the whole answer.
    pub async fn send(&self) -> anyhow::Result<HttpAnswer> {
        let uri: hyper::Uri = self
            .url
            .parse()
            .with_context(|| format!("bad URL {}", self.url))?;
        let host = uri.host().context("URL has no host")?.to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut cfg = match self.identity {
            Some((cert, key)) => builder.with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>()?,
                rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())?,
            )?,
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let name = ServerName::try_from(host.clone())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(self.method)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(hyper::header::HOST, format!("{host}:{port}"));
        for (name, value) in self.headers {
            req = req.header(*name, *value);
        }
        let resp =
            sender
                .send_request(req.body(http_body_util::Full::new(
                    bytes::Bytes::copy_from_slice(self.body),
                ))?)
                .await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(HttpAnswer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// POSTs a form (`application/x-www-form-urlencoded`) over HTTPS.
pub async fn https_post_form(
    url: &str,
    ca_pem: &str,
    params: &[(&str, &str)],
) -> anyhow::Result<HttpAnswer> {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    HttpsRequest {
        method: "POST",
        url,
        ca_pem,
        identity: None,
        headers: &[("content-type", "application/x-www-form-urlencoded")],
        body: body.as_bytes(),
    }
    .send()
    .await
}
