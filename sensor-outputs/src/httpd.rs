//! Serving HTTP to networks we do not control: the EDL (read by the border firewall) and
//! `/metrics` (read by scrapers) share this accept loop, because both ports face hosts that may
//! be hostile or broken, and a flood on either must not cost the sensor its capture.
//!
//! What a connection goes through, cheapest check first:
//! 1. at accept, before any byte is read and before any TLS handshake: the client must be in
//!    the allowed networks, not throttled (the EDL's failed-authentication throttle), under the
//!    per-client cap and under the total cap; otherwise the socket is closed at once (counted);
//! 2. over TLS, the handshake must finish within the header-read timeout;
//! 3. hyper's HTTP/1 connection: each request's header within the header-read timeout and
//!    under the header size cap (431 otherwise), no request body (413: these endpoints take
//!    none);
//! 4. a connection with no byte in either direction for the idle timeout is closed.
//!
//! [`ServerThread`] runs the servers on a thread and runtime of their own, so however busy they
//! are, the ring-buffer reader (on the main runtime) is never queued behind them.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::{Pin, pin},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::ConnectInfo,
    http::{HeaderValue, Request, Response, StatusCode, header},
};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use serde::Deserialize;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::metrics::Metric;
use sensor_model::error::ConfigError;

/// `[blocklist.edl.limits]`, `[metrics.limits]`: what one server grants its clients.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerLimits {
    /// Seconds a client has to send a whole request header, and over TLS to finish its
    /// handshake. A firewall or scraper sends its header in one packet; a slow trickle
    /// (slowloris) is cut here.
    pub header_read_timeout_secs: u64,
    /// Seconds without a byte in either direction after which a connection is closed
    /// (keep-alive connections between fetches included).
    pub idle_timeout_secs: u64,
    /// Open connections at most, all clients together; more are closed at accept.
    pub max_connections: usize,
    /// Open connections at most from one client address.
    pub max_connections_per_client: usize,
    /// Bytes at most in a request's start line and headers (431 above).
    pub max_request_header_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 10,
            idle_timeout_secs: 30,
            max_connections: 256,
            max_connections_per_client: 8,
            max_request_header_bytes: 8192,
        }
    }
}

impl ServerLimits {
    /// Checks the ranges; `key` names the table in the error (`blocklist.edl.limits`).
    pub fn validate(&self, key: &'static str) -> Result<(), ConfigError> {
        let bad = |message: String| Err(ConfigError::Invalid { key, message });
        if !(1..=300).contains(&self.header_read_timeout_secs) {
            return bad(format!(
                "header_read_timeout_secs = {} must be 1..=300",
                self.header_read_timeout_secs
            ));
        }
        if !(1..=3600).contains(&self.idle_timeout_secs) {
            return bad(format!(
                "idle_timeout_secs = {} must be 1..=3600",
                self.idle_timeout_secs
            ));
        }
        if !(1..=65_536).contains(&self.max_connections) {
            return bad(format!(
                "max_connections = {} must be 1..=65536",
                self.max_connections
            ));
        }
        if self.max_connections_per_client == 0
            || self.max_connections_per_client > self.max_connections
        {
            return bad(format!(
                "max_connections_per_client = {} must be 1..=max_connections ({})",
                self.max_connections_per_client, self.max_connections
            ));
        }
        if !(1024..=65_536).contains(&self.max_request_header_bytes) {
            return bad(format!(
                "max_request_header_bytes = {} must be 1024..=65536",
                self.max_request_header_bytes
            ));
        }
        Ok(())
    }

    fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

/// What happened to connections, for `/metrics`.
#[derive(Debug, Default)]
pub struct GateCounters {
    pub accepted: AtomicU64,
    pub refused_not_allowed: AtomicU64,
    pub refused_throttled: AtomicU64,
    pub refused_client_cap: AtomicU64,
    pub refused_total_cap: AtomicU64,
    pub accept_errors: AtomicU64,
    pub closed_handshake: AtomicU64,
    pub closed_header_timeout: AtomicU64,
    pub closed_idle: AtomicU64,
    pub closed_error: AtomicU64,
    pub refused_body: AtomicU64,
}

/// A predicate on the client's address checked at accept (the EDL's authentication throttle).
pub type Refuse = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// The accept-time checks and the connection caps of one server.
pub struct Gate {
    /// `edl` or `metrics`: the `server` label and the log field.
    name: &'static str,
    limits: ServerLimits,
    /// Empty: every address.
    allowed: Vec<IpNet>,
    refuse: Option<Refuse>,
    /// Addresses outside the total cap (the configured firewalls): a flood from elsewhere in
    /// the allowed networks cannot take their place. The per-client cap still holds.
    reserved: Vec<IpAddr>,
    slots: Arc<Semaphore>,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    pub counters: GateCounters,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

/// A connection's place under both caps; given back when the connection ends.
struct Permit {
    gate: Arc<Gate>,
    ip: IpAddr,
    /// None for a reserved address over the total cap.
    _slot: Option<OwnedSemaphorePermit>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut map = self
            .gate
            .per_client
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Gate {
    pub fn new(
        name: &'static str,
        limits: ServerLimits,
        allowed: Vec<IpNet>,
        refuse: Option<Refuse>,
        reserved: Vec<IpAddr>,
    ) -> Arc<Self> {
        Arc::new(Self {
            name,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            allowed,
            refuse,
            reserved: reserved.into_iter().map(|ip| ip.to_canonical()).collect(),
            per_client: Mutex::new(HashMap::new()),
            counters: GateCounters::default(),
        })
    }

    /// Whether `ip` may hold one more connection; counts a refusal.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        let ip = ip.to_canonical();
        let c = &self.counters;
        if !self.allowed.is_empty() && !self.allowed.iter().any(|n| n.contains(&ip)) {
            c.refused_not_allowed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self.refuse.as_ref().is_some_and(|f| f(ip)) {
            c.refused_throttled.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut map = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.limits.max_connections_per_client {
            c.refused_client_cap.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) if self.reserved.contains(&ip) => None,
            Err(_) => {
                if *n == 0 {
                    map.remove(&ip);
                }
                c.refused_total_cap.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        *n += 1;
        c.accepted.fetch_add(1, Ordering::Relaxed);
        Some(Permit {
            gate: self.clone(),
            ip,
            _slot: slot,
        })
    }

    /// Connections open now under the total cap.
    pub fn open(&self) -> usize {
        self.limits.max_connections - self.slots.available_permits()
    }

    /// `http_connections_*{server=...}` samples.
    pub fn metrics(&self, out: &mut Vec<Metric>) {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push(
            Metric::counter(
                "http_connections_accepted",
                "Connections that passed the accept-time checks.",
                get(&c.accepted),
            )
            .label("server", self.name),
        );
        for (reason, v) in [
            ("not_allowed", &c.refused_not_allowed),
            ("throttled", &c.refused_throttled),
            ("client_cap", &c.refused_client_cap),
            ("total_cap", &c.refused_total_cap),
            ("accept_error", &c.accept_errors),
        ] {
            out.push(
                Metric::counter(
                    "http_connections_refused",
                    "Connections closed at accept, before any byte was read, by reason.",
                    get(v),
                )
                .label("server", self.name)
                .label("reason", reason),
            );
        }
        for (reason, v) in [
            ("tls_handshake", &c.closed_handshake),
            ("header_timeout", &c.closed_header_timeout),
            ("idle", &c.closed_idle),
            ("error", &c.closed_error),
            ("request_body", &c.refused_body),
        ] {
            out.push(
                Metric::counter(
                    "http_connections_cut",
                    "Connections the server closed early, by reason.",
                    get(v),
                )
                .label("server", self.name)
                .label("reason", reason),
            );
        }
        out.push(
            Metric::gauge(
                "http_connections_open",
                "Connections open now.",
                self.open() as f64,
            )
            .label("server", self.name),
        );
    }
}

/// Accepts on `listener` until `shutdown` completes, each connection in its own task with
/// `router` behind the checks of `gate`. Handlers see the client as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    gate: Arc<Gate>,
    tls: Option<TlsAcceptor>,
    router: Router,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, mostly: wait instead of spinning on the error.
                    gate.counters.accept_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(server = gate.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        // Dropping the stream closes it: a refused client costs one accept and one close.
        let Some(permit) = gate.admit(peer.ip()) else {
            continue;
        };
        let (gate, tls, router) = (gate.clone(), tls.clone(), router.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            match tls {
                None => http(stream, peer, &gate, router).await,
                Some(acceptor) => {
                    match tokio::time::timeout(
                        gate.limits.header_read_timeout(),
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => http(tls, peer, &gate, router).await,
                        Ok(Err(e)) => {
                            gate.counters
                                .closed_handshake
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(server = gate.name, %peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            gate.counters
                                .closed_handshake
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(server = gate.name, %peer, "TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
}

/// One HTTP/1 connection, closed on the idle timeout.
async fn http<I>(io: I, peer: SocketAddr, gate: &Gate, router: Router)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = Watched {
        inner: io,
        activity: activity.clone(),
    };
    let refused_body = Arc::new(AtomicU64::new(0));
    let service = {
        let refused_body = refused_body.clone();
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let router = router.clone();
            let refused_body = refused_body.clone();
            async move {
                if has_body(&req) {
                    refused_body.fetch_add(1, Ordering::Relaxed);
                    let mut r = Response::new(Body::from("these endpoints take no request body\n"));
                    *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return Ok::<_, Infallible>(r);
                }
                req.extensions_mut().insert(ConnectInfo(peer));
                router.oneshot(req).await
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(gate.limits.header_read_timeout())
        .max_header_size(gate.limits.max_request_header_bytes)
        .keep_alive(true);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), service));
    let idle = gate.limits.idle_timeout();
    let c = &gate.counters;
    loop {
        let deadline = activity.last() + idle;
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    if e.is_timeout() {
                        c.closed_header_timeout.fetch_add(1, Ordering::Relaxed);
                    } else {
                        c.closed_error.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(server = gate.name, %peer, error = %e, "HTTP connection error");
                    }
                }
                break;
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                if activity.last().elapsed() >= idle {
                    c.closed_idle.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
    c.refused_body
        .fetch_add(refused_body.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// A request that says it has a body (a length above zero, or chunked).
fn has_body<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// When a connection last moved a byte.
struct Activity {
    base: Instant,
    millis: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            millis: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.millis.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.millis.load(Ordering::Relaxed))
    }
}

/// The connection's stream, noting each read or write that moved bytes.
struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A thread with its own tokio runtime for the HTTP servers: their accepts, handshakes and
/// requests never queue in front of the ring-buffer reader on the main runtime. Stopped (its
/// tasks dropped) when this is dropped.
pub struct ServerThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ServerThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerThread")
    }
}

impl ServerThread {
    pub fn start() -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("http-servers".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where to spawn the servers.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_defaults_validate_and_ranges_name_the_table() {
        ServerLimits::default().validate("metrics.limits").unwrap();
        let bad = ServerLimits {
            max_connections_per_client: 300,
            ..ServerLimits::default()
        };
        let e = bad.validate("metrics.limits").unwrap_err().to_string();
        assert!(
            e.contains("metrics.limits") && e.contains("max_connections_per_client"),
            "{e}"
        );
        let bad = ServerLimits {
            header_read_timeout_secs: 0,
            ..ServerLimits::default()
        };
        assert!(bad.validate("x").is_err());
    }

    #[test]
    fn the_gate_checks_allowed_throttled_and_both_caps() {
        let limits = ServerLimits {
            max_connections: 3,
            max_connections_per_client: 2,
            ..ServerLimits::default()
        };
        let gate = Gate::new(
            "test",
            limits,
            vec!["10.0.0.0/8".parse().unwrap()],
            Some(Arc::new(|ip: IpAddr| {
                ip == "10.9.9.9".parse::<IpAddr>().unwrap()
            })),
            vec!["10.0.0.7".parse().unwrap()],
        );
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(gate.admit("192.0.2.1".parse().unwrap()).is_none());
        assert!(gate.admit("10.9.9.9".parse().unwrap()).is_none());
        // IPv4-mapped IPv6 is the same client.
        let a1 = gate.admit("::ffff:10.0.0.1".parse().unwrap()).unwrap();
        let a2 = gate.admit(a).unwrap();
        assert!(gate.admit(a).is_none(), "per-client cap");
        let b1 = gate.admit(b).unwrap();
        assert!(gate.admit(b).is_none(), "total cap");
        let fw: IpAddr = "10.0.0.7".parse().unwrap();
        let f1 = gate
            .admit(fw)
            .expect("a reserved address passes the total cap");
        let f2 = gate.admit(fw).unwrap();
        assert!(gate.admit(fw).is_none(), "but not its per-client cap");
        drop((f1, f2));
        assert_eq!(gate.open(), 3);
        drop(a1);
        assert!(gate.admit(b).is_some(), "a freed slot is reusable");
        drop((a2, b1));
        assert_eq!(gate.open(), 0);
        assert!(gate.per_client.lock().unwrap().is_empty());
        let c = &gate.counters;
        assert_eq!(c.refused_not_allowed.load(Ordering::Relaxed), 1);
        assert_eq!(c.refused_throttled.load(Ordering::Relaxed), 1);
        assert_eq!(c.refused_client_cap.load(Ordering::Relaxed), 2);
        assert_eq!(c.refused_total_cap.load(Ordering::Relaxed), 1);
    }
}
