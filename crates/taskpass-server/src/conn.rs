//! Connections on both listeners: who may connect (caps in total and per client address),
//! and serving each accepted TLS connection with hyper under the `[limits]` settings.
//!
//! gRPC connections are HTTP/2 with `SETTINGS_MAX_CONCURRENT_STREAMS`, a bounded header list,
//! a bounded send buffer per stream, hyper's limit on locally reset streams kept on
//! (RUSTSEC-2024-0003), keepalive pings that close dead peers, and an idle timeout: a
//! connection with no request in flight for that long is closed gracefully. HTTPS connections
//! have a short header-read timeout (a request trickling in is cut off), a per-request
//! deadline, the same idle timeout (shorter by default) and a maximum age.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;
use tower::Service;

use crate::config::LimitsSection;

/// The connection caps of one listener.
#[derive(Debug)]
pub struct Admission {
    listener: &'static str,
    max_total: usize,
    max_per_address: usize,
    open: Mutex<Open>,
    refused: AtomicU64,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// A connection's place under the caps, given back when it is dropped.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    /// Caps for the listener named `listener` (for logs).
    pub fn new(listener: &'static str, max_total: u32, max_per_address: u32) -> Arc<Self> {
        Arc::new(Self {
            listener,
            max_total: usize::try_from(max_total).unwrap_or(usize::MAX),
            max_per_address: usize::try_from(max_per_address).unwrap_or(usize::MAX),
            open: Mutex::new(Open::default()),
            refused: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for a new connection from `ip`, or `None` when a cap is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        let ip = client_key(ip);
        let mut open = self.lock();
        let mine = open.by_address.get(&ip).copied().unwrap_or(0);
        if open.total >= self.max_total || mine >= self.max_per_address {
            drop(open);
            let n = self.refused.fetch_add(1, Ordering::Relaxed);
            // One line per thousand refusals: a flood must not flood the log either.
            if n.is_multiple_of(1000) {
                tracing::warn!(
                    listener = self.listener,
                    %ip,
                    refused = n + 1,
                    "connection refused: limits.max_connections or limits.max_connections_per_address reached"
                );
            }
            return None;
        }
        open.total += 1;
        *open.by_address.entry(ip).or_insert(0) += 1;
        Some(Permit {
            admission: Arc::clone(self),
            ip,
        })
    }

    /// Connections open now (including those still in their TLS handshake).
    pub fn open(&self) -> usize {
        self.lock().total
    }

    /// Connections refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Permit {
    /// The client the connection counts against (see [`client_key`]).
    pub fn client(&self) -> IpAddr {
        self.ip
    }
}

/// The address a client's connections and streams are counted under: an IPv4 address as
/// it is (an IPv4-mapped IPv6 address as its IPv4 form), an IPv6 address by its /64, the
/// smallest block a host is usually given, so that one host cannot take a fresh place per
/// address it can pick.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.admission.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.by_address.remove(&self.ip);
            }
        }
    }
}

/// A TLS connection that finished its handshake in time, with its place under the caps.
#[derive(Debug)]
pub struct Accepted {
    /// The stream.
    pub stream: TlsStream<TcpStream>,
    /// Released when the connection ends.
    pub permit: Permit,
}

/// What the requests of one connection share: how many are in flight (for the idle
/// timeout), who the client is and how many revocation streams it holds (for their caps).
#[derive(Debug)]
pub struct ConnState {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
    /// The client, as [`client_key`] counts it.
    pub client: IpAddr,
    /// Live WatchRevocations streams on this connection.
    pub watches: AtomicUsize,
    /// What the client certificate proves as an agent's, verified on first use.
    pub agent_certificate: std::sync::OnceLock<
        Result<taskpass_attest::CertificateIdentity, taskpass_attest::AttestError>,
    >,
    /// Set once the broker found that certificate in its records (broker-issued ones).
    pub agent_certificate_recorded: std::sync::OnceLock<()>,
    /// The operator or validator the client certificate proved, on first use.
    pub(crate) principal: std::sync::OnceLock<crate::principals::Proven>,
}

impl ConnState {
    fn new(client: IpAddr) -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            client,
            watches: AtomicUsize::new(0),
            agent_certificate: std::sync::OnceLock::new(),
            agent_certificate_recorded: std::sync::OnceLock::new(),
            principal: std::sync::OnceLock::new(),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    /// How long the connection has had nothing in flight, if it has nothing now.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(
            self.idle_since
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .elapsed(),
        )
    }
}

/// One request (or response stream) in flight; dropped when its response body ends.
#[derive(Debug)]
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self
                .0
                .idle_since
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        }
    }
}

/// A response body that keeps its request counted as in flight until it ends (a
/// WatchRevocations stream is in flight for as long as it streams).
#[derive(Debug)]
struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The HTTP/2 and timing settings of the gRPC listener.
#[derive(Debug, Clone, Copy)]
pub struct GrpcSettings {
    max_concurrent_streams: u32,
    max_header_list_bytes: u32,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
    idle_timeout: Duration,
    max_local_error_resets: usize,
}

impl GrpcSettings {
    /// From the `[limits]` table.
    pub fn from_limits(l: &LimitsSection) -> Self {
        Self {
            max_concurrent_streams: l.max_concurrent_streams,
            max_header_list_bytes: l.max_header_list_bytes,
            keepalive_interval: Duration::from_secs(u64::from(l.keepalive_interval_seconds)),
            keepalive_timeout: Duration::from_secs(u64::from(l.keepalive_timeout_seconds)),
            idle_timeout: Duration::from_secs(u64::from(l.idle_timeout_seconds)),
            max_local_error_resets: usize::try_from(l.max_local_error_resets).unwrap_or(1024),
        }
    }
}

/// The largest amount of response data hyper buffers per gRPC stream for a peer that does
/// not read (hyper's default is 400 KiB): bounds what unread revocation streams cost.
const GRPC_SEND_BUFFER: usize = 64 * 1024;

/// How long an idle gRPC connection has to close after its GOAWAY.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How often connections check whether they have been idle too long.
fn idle_check(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

/// Serves gRPC on each accepted connection until `shutdown`; then every connection is
/// closed gracefully and this returns once they all ended.
pub async fn serve_grpc<I, S>(
    incoming: I,
    routes: S,
    settings: GrpcSettings,
    shutdown: watch::Receiver<bool>,
) where
    I: Stream<Item = Accepted> + Unpin,
    S: Service<
            http::Request<Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    each_connection(incoming, shutdown, move |accepted, stop| {
        serve_grpc_connection(accepted, routes.clone(), settings, stop)
    })
    .await;
}

/// Runs `serve` on each accepted connection until `shutdown` (or the end of `incoming`), then
/// waits for the connections, each of which closes gracefully on the same signal.
async fn each_connection<I, F, Fut>(mut incoming: I, mut shutdown: watch::Receiver<bool>, serve: F)
where
    I: Stream<Item = Accepted> + Unpin,
    F: Fn(Accepted, watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = incoming.next() => match a {
                Some(a) => a,
                None => break,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = shutdown.changed() => break,
        };
        conns.spawn(serve(accepted, shutdown.clone()));
    }
    drop(incoming);
    while conns.join_next().await.is_some() {}
}

async fn serve_grpc_connection<S>(
    accepted: Accepted,
    routes: S,
    settings: GrpcSettings,
    mut shutdown: watch::Receiver<bool>,
) where
    S: Service<
            http::Request<Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let Accepted { stream, permit } = accepted;
    let stream = crate::tls::GrpcStream(stream);
    // The peer's address and verified certificates, as tonic's own server would attach them.
    let info = stream.connect_info();
    let state = ConnState::new(permit.client());
    let svc = {
        let state = Arc::clone(&state);
        tower::service_fn(move |mut req: http::Request<Incoming>| {
            req.extensions_mut().insert(info.clone());
            req.extensions_mut().insert(Arc::clone(&state));
            let in_flight = state.begin();
            let fut = routes.clone().call(req);
            async move {
                let resp = fut.await?;
                Ok::<_, Infallible>(resp.map(|inner| Tracked {
                    inner,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(settings.max_header_list_bytes)
        .max_local_error_reset_streams(settings.max_local_error_resets)
        .max_send_buf_size(GRPC_SEND_BUFFER)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
    tokio::pin!(conn);
    let mut tick = tokio::time::interval(idle_check(settings.idle_timeout));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // After a graceful close (GOAWAY) the peer gets this long to finish; one that never sent
    // the HTTP/2 preface, or ignores the GOAWAY, is then dropped.
    let mut closing: Option<(Instant, Duration)> = None;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "gRPC connection ended with an error");
                }
                break;
            }
            _ = tick.tick() => {
                if let Some((since, grace)) = closing {
                    if since.elapsed() >= grace {
                        tracing::debug!("dropping a gRPC connection that did not close after GOAWAY");
                        break;
                    }
                } else if state.idle_for().is_some_and(|d| d >= settings.idle_timeout) {
                    tracing::debug!("closing an idle gRPC connection (limits.idle_timeout_seconds)");
                    conn.as_mut().graceful_shutdown();
                    closing = Some((Instant::now(), IDLE_CLOSE_GRACE));
                }
            }
            _ = shutdown.changed(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                // Less than the broker's own wait, so that it sees the connections end.
                closing = Some((Instant::now(), crate::serve::GRACE.saturating_sub(Duration::from_secs(3))));
            }
        }
    }
    drop(permit);
}

/// The timing settings of the HTTPS listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpsSettings {
    header_timeout: Duration,
    request_timeout: Duration,
    idle_timeout: Duration,
    max_age: Duration,
}

impl HttpsSettings {
    /// From the `[limits]` table.
    pub fn from_limits(l: &LimitsSection) -> Self {
        Self {
            header_timeout: Duration::from_secs(u64::from(l.https_header_timeout_seconds)),
            request_timeout: Duration::from_secs(u64::from(l.https_request_timeout_seconds)),
            idle_timeout: Duration::from_secs(u64::from(l.https_idle_timeout_seconds)),
            max_age: Duration::from_secs(u64::from(l.https_max_connection_age_seconds)),
        }
    }
}

/// Serves `router` on each accepted HTTPS connection until `shutdown`.
pub async fn serve_https<I>(
    incoming: I,
    router: axum::Router,
    settings: HttpsSettings,
    shutdown: watch::Receiver<bool>,
) where
    I: Stream<Item = Accepted> + Unpin,
{
    each_connection(incoming, shutdown, move |accepted, stop| {
        serve_https_connection(accepted, router.clone(), settings, stop)
    })
    .await;
}

async fn serve_https_connection(
    accepted: Accepted,
    router: axum::Router,
    settings: HttpsSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let Accepted { stream, permit } = accepted;
    let state = ConnState::new(permit.client());
    // Who is calling, for the handlers that need it (the token endpoint). The certificates
    // are only those the handshake saw: nothing reads them without verifying them.
    let caller = crate::broker::Caller {
        addr: stream.get_ref().0.peer_addr().ok(),
        certs: stream
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| Arc::new(c.to_vec())),
        conn: Some(Arc::clone(&state)),
    };
    let svc = {
        let state = Arc::clone(&state);
        tower::service_fn(move |mut req: http::Request<Incoming>| {
            let in_flight = state.begin();
            req.extensions_mut().insert(caller.clone());
            let fut = router.clone().call(req);
            let deadline = settings.request_timeout;
            async move {
                match tokio::time::timeout(deadline, fut).await {
                    Ok(Ok(resp)) => Ok::<_, Infallible>(resp.map(|inner| Tracked {
                        inner,
                        _in_flight: in_flight,
                    })),
                    Ok(Err(never)) => match never {},
                    Err(_) => {
                        let mut resp =
                            http::Response::new(axum::body::Body::from("request took too long\n"));
                        *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                        Ok(resp.map(|inner| Tracked {
                            inner,
                            _in_flight: in_flight,
                        }))
                    }
                }
            }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(32)
        .keep_alive_interval(Some(settings.header_timeout))
        .keep_alive_timeout(settings.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
    tokio::pin!(conn);
    let born = Instant::now();
    let mut tick = tokio::time::interval(idle_check(settings.idle_timeout));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "https connection ended with an error");
                }
                break;
            }
            _ = tick.tick() => {
                if let Some(since) = closing {
                    // A peer that does not let a graceful close finish is dropped.
                    if since.elapsed() >= settings.header_timeout {
                        break;
                    }
                    continue;
                }
                let idle = state.idle_for().is_some_and(|d| d >= settings.idle_timeout);
                if idle || born.elapsed() >= settings.max_age {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now());
                }
            }
            _ = shutdown.changed(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
        }
    }
    drop(permit);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    type TestBody = http_body_util::Full<Bytes>;

    #[test]
    fn admission_caps_total_and_per_address() {
        let a = Admission::new("test", 3, 2);
        let one: IpAddr = "127.0.0.1".parse().unwrap();
        let two: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = a.admit(one).unwrap();
        let _p2 = a.admit(one).unwrap();
        assert!(a.admit(one).is_none(), "per address");
        let _p3 = a.admit(two).unwrap();
        assert!(a.admit(two).is_none(), "in total");
        assert_eq!(a.open(), 3);
        assert_eq!(a.refused(), 2);
        drop(p1);
        assert!(a.admit(one).is_some(), "a place is given back on drop");
    }

    #[test]
    fn clients_are_counted_by_ipv4_address_and_ipv6_slash_64() {
        let key = |s: &str| client_key(s.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        let a = Admission::new("test", 10, 1);
        let _p = a.admit("2001:db8::1".parse().unwrap()).unwrap();
        assert!(
            a.admit("2001:db8::2".parse().unwrap()).is_none(),
            "a second address in the same /64 is the same client"
        );
    }

    #[test]
    fn a_tracked_body_keeps_its_connection_busy() {
        let state = ConnState::new(IpAddr::from([127, 0, 0, 1]));
        assert!(state.idle_for().is_some());
        let body: Tracked<TestBody> = Tracked {
            inner: TestBody::new(Bytes::from_static(b"x")),
            _in_flight: state.begin(),
        };
        assert!(state.idle_for().is_none());
        drop(body);
        assert!(state.idle_for().is_some_and(|d| d < Duration::from_secs(5)));
    }
}
