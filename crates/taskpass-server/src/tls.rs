//! TLS for both listeners: rustls with the ring provider, TLS 1.2+ only, and optional client
//! certificates verified against the broker's CA (operators present one; agents need none).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::conn::{Accepted, Admission};

/// Why a TLS configuration or certificate could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM document could not be read.
    #[error("{what}: {detail}")]
    Pem {
        /// What was being read.
        what: &'static str,
        /// The parser's message.
        detail: String,
    },
    /// rustls refused the key, certificate or configuration.
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The certificates of a PEM document; an error when it holds none.
pub fn certs(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            detail: "no certificate found".into(),
        });
    }
    Ok(certs)
}

/// The current server certificate, swapped in place when it is renewed so that both
/// listeners pick up the new one on their next handshake.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
}

impl CertStore {
    /// Loads the first certificate.
    pub fn new(chain_pem: &str, key_pem: &str) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = RwLock::new(Arc::new(certified(&provider, chain_pem, key_pem)?));
        Ok(Arc::new(Self { current, provider }))
    }

    /// Replaces the certificate.
    pub fn replace(&self, chain_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let next = Arc::new(certified(&self.provider, chain_pem, key_pem)?);
        match self.current.write() {
            Ok(mut c) => *c = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        Ok(())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match self.current.read() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        })
    }
}

fn certified(
    provider: &CryptoProvider,
    chain_pem: &str,
    key_pem: &str,
) -> Result<CertifiedKey, TlsError> {
    // The key's parse error says nothing of the key; rustls' never prints key material.
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: "server key",
        detail: e.to_string(),
    })?;
    let signing = provider.key_provider.load_private_key(key)?;
    let chain = certs("server certificate chain", chain_pem)?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()?;
    Ok(ck)
}

/// The server config; `alpn` lists the protocols offered. A client certificate is optional;
/// `client_roots` are the CAs hinted to clients.
///
/// The handshake accepts any certificate whose key signs it; the chain is verified above TLS,
/// on every use, by the verifier of the identity it claims (`taskpass_attest::X509Verifier`:
/// operators and validators against the broker's CA alone, agents per `[[attestation.x509]]`).
/// So a bad agent certificate is answered with its reason rather than a TLS alert. Nothing may
/// read the peer certificates of a connection without verifying them.
pub fn server_config(
    client_roots: &[CertificateDer<'static>],
    certs_in_use: &Arc<CertStore>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in client_roots {
        roots.add(c.clone())?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .allow_unauthenticated()
            .build()?;
    let verifier: Arc<dyn ClientCertVerifier> =
        Arc::new(DeferredClientVerifier { hints: verifier });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::clone(certs_in_use) as Arc<dyn ResolvesServerCert>);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Accepts any client certificate whose key signs the handshake (see [`server_config`]);
/// root hints and signature checks are the WebPKI verifier's.
#[derive(Debug)]
struct DeferredClientVerifier {
    hints: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for DeferredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.hints.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Verified above TLS, by the verifier of the identity the certificate claims.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.hints.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.hints.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.hints.supported_verify_schemes()
    }
}

/// Accepts TCP connections and completes TLS handshakes concurrently; yields the streams
/// that finished their handshake within `handshake_timeout`. A connection over the caps of
/// `admission` is closed at once, before any TLS work; its place (held from accept, so that
/// slow handshakes count too) is given back when the connection ends. Failed handshakes are
/// logged at debug level and dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    admission: Arc<Admission>,
    handshake_timeout: Duration,
) -> ReceiverStream<Accepted> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors, for instance: wait rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let Some(permit) = admission.admit(peer.ip()) else {
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Accepted { stream, permit }).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A gRPC connection's TLS stream that tells h2 it cannot write vectored. h2 then copies a
/// data frame under 1 KiB (a token response is about 650 bytes) into its write buffer instead
/// of queueing it beside the buffer, and a queued frame is what makes h2 flush before it can
/// take the next one. So the responses of one grouped commit leave in one TLS record and one
/// `writev` per connection rather than one or two each; larger frames are still chained.
/// Generic so that a client (the load tool) can wrap its own TLS stream the same way.
#[derive(Debug)]
pub struct GrpcStream<S = TlsStream<TcpStream>>(pub S);

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for GrpcStream<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for GrpcStream<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl tonic::transport::server::Connected for GrpcStream {
    type ConnectInfo = <TlsStream<TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskpass_core::TrustDomain;
    use tokio_stream::StreamExt;

    async fn peer_cert(addr: std::net::SocketAddr, ca_pem: &str) -> Vec<u8> {
        let mut roots = RootCertStore::empty();
        for c in certs("CA", ca_pem).unwrap() {
            roots.add(c).unwrap();
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(
                rustls_pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0]
            .as_ref()
            .to_vec()
    }

    #[tokio::test]
    async fn renewed_certificate_is_served_without_restart() {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::parse("example.org").unwrap();
        let pki = crate::pki::bootstrap(dir.path(), &td, &[], &[]).unwrap();
        let store = CertStore::new(&pki.server_chain_pem, &pki.server_key_pem).unwrap();
        let roots = certs("CA", &pki.ca_pem).unwrap();
        let cfg = server_config(&roots, &store, &[b"http/1.1"]).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admission = Admission::new("test", 16, 16);
        let mut incoming = incoming(listener, cfg, admission, Duration::from_secs(5));
        tokio::spawn(async move { while incoming.next().await.is_some() {} });

        let first = peer_cert(addr, &pki.ca_pem).await;
        assert_eq!(first, peer_cert(addr, &pki.ca_pem).await);
        let (chain, key) = pki.server.issue().unwrap();
        store.replace(&chain, &key).unwrap();
        let second = peer_cert(addr, &pki.ca_pem).await;
        assert_ne!(first, second, "the renewed certificate is served");
        assert!(store.replace("not a pem", &key).is_err());
        assert_eq!(
            second,
            peer_cert(addr, &pki.ca_pem).await,
            "a bad renewal changes nothing"
        );
    }
}
