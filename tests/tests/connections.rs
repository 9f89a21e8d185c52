//! Connection limits on both listeners, tried as an attacker would from 127.0.0.2 while a
//! legitimate client on 127.0.0.1 is served: a thousand idle TLS connections from one
//! address, connections that never finish their handshake, a request trickling in, idle
//! keep-alive connections; and the HTTP/2 settings the gRPC port advertises.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use taskpass_e2e::*;
use taskpass_proto::v1 as pb;
use taskpass_testkit::https_get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("https://").parse().unwrap()
}

async fn tcp_from(local: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(local, 0))?;
    s.connect(to).await
}

fn tls_config(ca_pem: &str, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(cfg)
}

/// A TLS connection from `local`, or the error that ended it.
async fn tls_from(
    local: IpAddr,
    to: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(local, to).await?;
    let name = ServerName::try_from(to.ip().to_string()).unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(Arc::clone(cfg)).connect(name, tcp),
    )
    .await
    .unwrap_or_else(|_| Err(std::io::Error::other("handshake timed out")))
}

/// Whether the server closes `s` within `within` (reads end or fail).
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(s: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_lock_out_the_https_listener() {
    let env = Env::start_with(
        "[limits]\nagent_requests_per_second = 0\nhttps_idle_timeout_seconds = 2\nhttps_header_timeout_seconds = 2\nhandshake_timeout_seconds = 2\n",
    )
    .await
    .unwrap();
    let http = addr_of(&env.broker.http_url);
    let cfg = tls_config(&env.broker.ca_pem, b"http/1.1");
    let attacker: IpAddr = "127.0.0.2".parse().unwrap();

    // A thousand idle TLS connections from one address: at most 64 get through.
    let mut idle = Vec::new();
    let mut refused = 0;
    for _ in 0..1000 {
        match tls_from(attacker, http, &cfg).await {
            Ok(s) => idle.push(s),
            Err(_) => refused += 1,
        }
    }
    // A refused connection may still finish the client's half of the handshake before the
    // close arrives; what counts is that the server keeps at most 64 of them open.
    let mut open = 0;
    for s in &mut idle {
        if !closed_within(s, Duration::from_millis(20)).await {
            open += 1;
        }
    }
    assert!(open <= 64, "{open} connections from one address held open");
    assert!(
        refused + (1000 - open) >= 936,
        "refused {refused}, open {open}"
    );
    // Everyone else is served meanwhile.
    for path in [
        "/.well-known/jwks.json",
        "/.well-known/oauth-authorization-server",
        "/healthz",
    ] {
        let (code, _) = https_get(
            &format!("{}{path}", env.broker.http_url),
            &env.broker.ca_pem,
        )
        .await
        .unwrap();
        assert_eq!(code, 200, "{path}");
    }
    // The idle ones are closed by the server (limits.https_idle_timeout_seconds = 2).
    for s in idle.iter_mut().take(8) {
        assert!(
            closed_within(s, Duration::from_secs(10)).await,
            "an idle connection stayed open"
        );
    }
    drop(idle);

    // A request trickling in is cut off (limits.https_header_timeout_seconds = 2).
    let mut slow = tls_from(attacker, http, &cfg).await.unwrap();
    let started = Instant::now();
    let mut cut = false;
    for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
        if slow.write_all(&[*b]).await.is_err() || slow.flush().await.is_err() {
            cut = true;
            break;
        }
        if closed_within(&mut slow, Duration::from_millis(500)).await {
            cut = true;
            break;
        }
    }
    assert!(cut, "a trickling request was not cut off");
    assert!(started.elapsed() < Duration::from_secs(20));

    // A connection that never sends a ClientHello is closed (handshake_timeout_seconds = 2).
    let mut mute = tcp_from(attacker, http).await.unwrap();
    assert!(
        closed_within(&mut mute, Duration::from_secs(10)).await,
        "a mute connection stayed open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_lock_out_the_grpc_listener() {
    let env =
        Env::start_with("[limits]\nagent_requests_per_second = 0\nidle_timeout_seconds = 2\n")
            .await
            .unwrap();
    let grpc = addr_of(&env.broker.grpc_url);
    let cfg = tls_config(&env.broker.ca_pem, b"h2");
    let attacker: IpAddr = "127.0.0.2".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = tls_from(attacker, grpc, &cfg).await {
            held.push(s);
        }
    }
    let mut open = 0;
    for s in &mut held {
        if !closed_within(s, Duration::from_millis(20)).await {
            open += 1;
        }
    }
    assert!(
        open <= 64,
        "{open} gRPC connections from one address held open"
    );
    // The legitimate client is served.
    let mut val = env.val.clone();
    val.get_jwks(pb::GetJwksRequest {}).await.unwrap();

    // The HTTP/2 settings: a bounded number of concurrent streams.
    let tls = tls_from("127.0.0.1".parse().unwrap(), grpc, &cfg)
        .await
        .unwrap();
    let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    client = client.ready().await.unwrap();
    // The server's SETTINGS arrive just after the handshake.
    let mut max = client.current_max_send_streams();
    for _ in 0..100 {
        if max <= 100_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        max = client.current_max_send_streams();
    }
    assert_eq!(max, 256, "SETTINGS_MAX_CONCURRENT_STREAMS");
    drop(client);

    // Connections with nothing in flight are closed (idle_timeout_seconds = 2).
    for s in held.iter_mut().take(8) {
        assert!(
            closed_within(s, Duration::from_secs(10)).await,
            "an idle gRPC connection stayed open"
        );
    }
}
