//! The External Dynamic List: the text file a Palo Alto firewall (or any firewall that reads a
//! plain IP list) fetches, written atomically and served over HTTP(S).
//!
//! Format (PAN-OS "Formatting Guidelines for an External Dynamic List", IP address list,
//! <https://docs.paloaltonetworks.com/pan-os/9-1/pan-os-admin/policy/use-an-external-dynamic-list-in-policy/formatting-guidelines-for-an-external-dynamic-list/ip-address-list.html>):
//! one entry per line, `[IP address, IP/Mask, or IP start range-IP end range] [space] [comment]`.
//! We write one address per line followed by a short comment (`expires YYYY-MM-DD severity S`),
//! no comment-only lines, `\n` line ends, lines far under any length limit (< 80 bytes), and
//! nothing else, so other vendors' plain-list readers that cut at the first space read it too.
//!
//! A firewall that cannot fetch the list keeps enforcing its last copy, but PAN-OS stops
//! enforcing an EDL whose authentication fails (PAN-OS admin guide, "External Dynamic List"):
//! so the server answers 503 (not an empty list) before anything is published, and a wrong
//! password on either side unblocks everything on that firewall.
//!
//! The server keeps the current list in memory (bytes, ETag, Last-Modified) behind one
//! `ArcSwap`: a request takes one snapshot, so every response is a whole list, the old or the new,
//! never a mix. [`EdlList::publish`] writes the file first (temp file, fsync, rename, fsync of the
//! directory) and then swaps the served copy.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwapOption;
use axum::{
    Router,
    body::Bytes,
    extract::{ConnectInfo, State, connect_info::Connected},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
    serve::{IncomingStream, Listener},
};
use base64::Engine;
use ipnet::IpNet;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, rustls, server::TlsStream};

use crate::store::{Entry, fnv1a64};
use sensor_model::{
    error::{ConfigError, parse_nets},
    secret::SecretSource,
};

/// How long a client may take for its TLS handshake before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const REALM: &str = "Basic realm=\"dns-sensor blocklist\", charset=\"UTF-8\"";

/// `[blocklist.edl]`: the EDL file and its HTTP server.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EdlSection {
    /// The list file, replaced atomically on every publication.
    pub path: PathBuf,
    /// Address the server listens on, e.g. `0.0.0.0:8443`; empty = not served.
    pub listen: String,
    /// The URL path of the list.
    pub url_path: String,
    /// Basic-auth user; empty = no authentication.
    pub basic_auth_user: String,
    /// Basic-auth password source (`{ env = "VAR" }` or `{ file = "/path" }`), required with a
    /// user.
    pub basic_auth_password: SecretSource,
    /// Clients (IPs or CIDRs) allowed to fetch the list; empty = any client. Others get 403.
    pub allowed_clients: Vec<String>,
    /// PEM certificate chain and private key: both set = HTTPS, neither = plain HTTP.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for EdlSection {
    fn default() -> Self {
        Self {
            path: PathBuf::from(sensor_model::paths::EDL_FILE),
            listen: String::new(),
            url_path: "/blocklist.txt".into(),
            basic_auth_user: String::new(),
            basic_auth_password: SecretSource::default(),
            allowed_clients: Vec::new(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl EdlSection {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
        if self.path.as_os_str().is_empty() || self.path.file_name().is_none() {
            return Err(invalid("blocklist.edl.path", "must name a file".to_owned()));
        }
        self.listen_addr()?;
        if !self.url_path.starts_with('/') || self.url_path.contains(char::is_whitespace) {
            return Err(invalid(
                "blocklist.edl.url_path",
                format!("{:?} must start with / and hold no spaces", self.url_path),
            ));
        }
        if self.basic_auth_user.contains(':') {
            return Err(invalid(
                "blocklist.edl.basic_auth_user",
                "must not contain ':' (RFC 7617)".to_owned(),
            ));
        }
        if self.basic_auth_user.is_empty() != self.basic_auth_password.is_unset() {
            return Err(invalid(
                "blocklist.edl.basic_auth_password",
                "set both basic_auth_user and basic_auth_password, or neither".to_owned(),
            ));
        }
        if self.basic_auth_password.env.is_some() && self.basic_auth_password.file.is_some() {
            return Err(invalid(
                "blocklist.edl.basic_auth_password",
                "set either `env` or `file`, not both".to_owned(),
            ));
        }
        parse_nets("blocklist.edl.allowed_clients", &self.allowed_clients)?;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid(
                "blocklist.edl.tls_key",
                "set both tls_cert and tls_key, or neither".to_owned(),
            ));
        }
        Ok(())
    }

    /// The listen address, `None` when the list is not served.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.listen.trim().is_empty() {
            return Ok(None);
        }
        self.listen
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| ConfigError::Invalid {
                key: "blocklist.edl.listen",
                message: format!("{:?} is not an address:port", self.listen),
            })
    }
}

/// The EDL text: one address per line with its expiry and severity as a comment.
pub fn render(entries: &[Entry]) -> String {
    let mut out = String::with_capacity(entries.len() * 48);
    for e in entries {
        out.push_str(&IpNet::from(e.ip.to_canonical()).addr().to_string());
        if let Ok(t) = time::OffsetDateTime::from_unix_timestamp(e.expires) {
            let d = t.date();
            out.push_str(&format!(
                " expires {:04}-{:02}-{:02}",
                d.year(),
                u8::from(d.month()),
                d.day()
            ));
        }
        if let Some(s) = e.severity {
            out.push_str(" severity ");
            out.push_str(severity_name(s));
        }
        out.push('\n');
    }
    out
}

fn severity_name(s: sensor_model::verdict::Severity) -> &'static str {
    use sensor_model::verdict::Severity::*;
    match s {
        Info => "info",
        Low => "low",
        Medium => "medium",
        High => "high",
        Critical => "critical",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EdlError {
    #[error("EDL file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("EDL server: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("EDL server TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// One version of the list as it is served.
#[derive(Debug)]
pub struct Served {
    pub body: Bytes,
    /// Strong ETag, quoted.
    pub etag: String,
    /// Whole seconds (HTTP dates have no more).
    pub last_modified: SystemTime,
}

impl Served {
    fn new(body: Bytes, last_modified: SystemTime) -> Self {
        let etag = format!("\"{:016x}-{:x}\"", fnv1a64(&body), body.len());
        Self {
            body,
            etag,
            last_modified: whole_seconds(last_modified),
        }
    }
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// The EDL file and the copy in memory that the server hands out. Clones share both.
#[derive(Clone)]
pub struct EdlList {
    path: PathBuf,
    current: Arc<ArcSwapOption<Served>>,
    publishing: Arc<Mutex<()>>,
}

impl EdlList {
    /// Opens the list at `path`; an existing file (the last good list) is served as it is, with
    /// its modification time as Last-Modified.
    pub fn open(path: &Path) -> Result<Self, EdlError> {
        let io = |source| EdlError::Io {
            path: path.to_owned(),
            source,
        };
        let current = match std::fs::read(path) {
            Ok(bytes) => {
                let mtime = std::fs::metadata(path)
                    .and_then(|m| m.modified())
                    .map_err(io)?;
                Some(Arc::new(Served::new(Bytes::from(bytes), mtime)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        Ok(Self {
            path: path.to_owned(),
            current: Arc::new(ArcSwapOption::from(current)),
            publishing: Arc::new(Mutex::new(())),
        })
    }

    /// Writes `text` to the file atomically, then serves it. Publishing the text already served
    /// changes nothing (same ETag and Last-Modified, so firewalls get 304). Returns whether the
    /// list changed.
    pub fn publish(&self, text: &str) -> Result<bool, EdlError> {
        let _one_at_a_time = self.publishing.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current.load_full();
        if let Some(old) = &old
            && old.body == text.as_bytes()
            && self.path.exists()
        {
            return Ok(false);
        }
        sensor_model::files::write_atomic(&self.path, text).map_err(|source| EdlError::Io {
            path: self.path.clone(),
            source,
        })?;
        // Last-Modified moves forward by at least a second, so If-Modified-Since never mistakes
        // a list published within the same second for the one a client already has.
        let mut when = whole_seconds(SystemTime::now());
        if let Some(old) = &old
            && when <= old.last_modified
        {
            when = old.last_modified + Duration::from_secs(1);
        }
        self.current.store(Some(Arc::new(Served::new(
            Bytes::copy_from_slice(text.as_bytes()),
            when,
        ))));
        Ok(true)
    }

    /// The list being served, if any.
    pub fn current(&self) -> Option<Arc<Served>> {
        self.current.load_full()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The remote address of a connection, for both listeners.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// Hands axum connections whose TLS handshake is done. Handshakes run in their own tasks (with
/// a timeout), so a client that stalls in its handshake holds up nobody.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    r = tcp.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::debug!(error = %e, "EDL server: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    () = tx.closed() => return,
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "EDL server: TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "EDL server: TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { ready, local })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(x) => x,
            // The accept task is gone (it ends only when this listener is dropped).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, EdlError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|e| EdlError::Tls(format!("certificate {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(EdlError::Tls(format!(
            "certificate {}: no certificate in the file",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| EdlError::Tls(format!("key {}: {e}", key.display())))?;
    // The provider is named, not taken from the process default, which is ambiguous when more
    // than one rustls provider is compiled in.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EdlError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| EdlError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

struct AppState {
    list: EdlList,
    allowed: Vec<IpNet>,
    /// The expected `Authorization` value, `Basic <base64(user:password)>`.
    auth: Option<String>,
}

/// A running EDL server.
pub struct EdlServer {
    pub local_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// Serves `list` as `section` says (call only when `section.listen` is set), until `shutdown`
/// completes. Binds before returning, so a bad address or certificate is reported at once.
pub async fn serve(
    section: &EdlSection,
    list: EdlList,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<EdlServer, EdlError> {
    section.validate()?;
    let addr = section.listen_addr()?.ok_or(ConfigError::Invalid {
        key: "blocklist.edl.listen",
        message: "no address to serve the list on".into(),
    })?;
    let auth = if section.basic_auth_user.is_empty() {
        None
    } else {
        let password = section
            .basic_auth_password
            .resolve("blocklist.edl.basic_auth_password")?;
        let token = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            section.basic_auth_user,
            password.expose()
        ));
        Some(format!("Basic {token}"))
    };
    let tls = match (&section.tls_cert, &section.tls_key) {
        (Some(c), Some(k)) => Some(tls_acceptor(c, k)?),
        _ => None,
    };
    let state = Arc::new(AppState {
        list,
        allowed: parse_nets("blocklist.edl.allowed_clients", &section.allowed_clients)?,
        auth,
    });
    let router = Router::new()
        .route(&section.url_path, get(handle))
        .with_state(state);
    let app = router.into_make_service_with_connect_info::<Peer>();
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|source| EdlError::Bind { addr, source })?;
    let local_addr = tcp
        .local_addr()
        .map_err(|source| EdlError::Bind { addr, source })?;
    let tls_on = tls.is_some();
    let task = match tls {
        Some(acceptor) => {
            let listener = TlsListener::new(tcp, acceptor)
                .map_err(|source| EdlError::Bind { addr, source })?;
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::warn!(error = %e, "EDL server stopped");
                }
            })
        }
        None => tokio::spawn(async move {
            if let Err(e) = axum::serve(tcp, app).with_graceful_shutdown(shutdown).await {
                tracing::warn!(error = %e, "EDL server stopped");
            }
        }),
    };
    tracing::info!(address = %local_addr, tls = tls_on, path = %section.url_path, "EDL server listening");
    Ok(EdlServer { local_addr, task })
}

async fn handle(
    State(state): State<Arc<AppState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    let ip: IpAddr = peer.ip().to_canonical();
    if !state.allowed.is_empty() && !state.allowed.iter().any(|n| n.contains(&ip)) {
        tracing::debug!(%peer, "EDL request from a client not in allowed_clients");
        return (StatusCode::FORBIDDEN, "forbidden\n").into_response();
    }
    if let Some(expected) = &state.auth {
        let given = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !auth_matches(given, expected.as_bytes()) {
            tracing::debug!(%peer, "EDL request without valid credentials");
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, REALM)],
                "authentication required\n",
            )
                .into_response();
        }
    }
    // One snapshot for the whole response.
    let Some(served) = state.list.current() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no list published yet\n").into_response();
    };
    let last_modified = httpdate::fmt_http_date(served.last_modified);
    let not_modified = match headers.get(header::IF_NONE_MATCH) {
        // If-None-Match wins over If-Modified-Since (RFC 9110 §13.1.3).
        Some(inm) => etag_matches(inm.as_bytes(), &served.etag),
        None => headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .is_some_and(|since| served.last_modified <= since),
    };
    let common = [
        (header::ETAG, served.etag.clone()),
        (header::LAST_MODIFIED, last_modified),
        (header::CACHE_CONTROL, "no-cache".to_owned()),
    ];
    if not_modified {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        StatusCode::OK,
        common,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        served.body.clone(),
    )
        .into_response()
}

/// Weak comparison of an If-None-Match list against our ETag (RFC 9110 §13.1.2).
fn etag_matches(header: &[u8], etag: &str) -> bool {
    let Ok(text) = std::str::from_utf8(header) else {
        return false;
    };
    text.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// Compares credentials in time independent of where they differ.
fn auth_matches(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_model::verdict::Severity;

    #[test]
    fn renders_one_address_per_line_with_a_comment() {
        let e = |ip: &str, sev| Entry {
            ip: ip.parse().unwrap(),
            first_listed: 0,
            last_malicious: 0,
            expires: time::macros::datetime!(2026-12-24 03:04 UTC).unix_timestamp(),
            severity: sev,
            confidence: None,
        };
        let text = render(&[
            e("45.33.32.156", Some(Severity::High)),
            e("2a00:1450::1", None),
            e("::ffff:1.2.3.4", Some(Severity::Critical)),
        ]);
        assert_eq!(
            text,
            "45.33.32.156 expires 2026-12-24 severity high\n\
             2a00:1450::1 expires 2026-12-24\n\
             1.2.3.4 expires 2026-12-24 severity critical\n"
        );
        assert_eq!(render(&[]), "");
    }

    #[test]
    fn publish_keeps_the_etag_of_an_unchanged_list_and_moves_last_modified_forward() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("edl.txt");
        let list = EdlList::open(&p).unwrap();
        assert!(list.current().is_none());
        assert!(list.publish("1.2.3.4\n").unwrap());
        let a = list.current().unwrap();
        assert!(!list.publish("1.2.3.4\n").unwrap());
        assert_eq!(list.current().unwrap().etag, a.etag);
        assert!(list.publish("5.6.7.8\n").unwrap());
        let b = list.current().unwrap();
        assert_ne!(b.etag, a.etag);
        assert!(b.last_modified > a.last_modified);
        // Reopened after a restart: the last good list is served.
        let again = EdlList::open(&p).unwrap();
        assert_eq!(again.current().unwrap().body, "5.6.7.8\n");
    }

    #[test]
    fn section_validation_names_the_key() {
        EdlSection::default().validate().unwrap();
        for (s, key) in [
            (
                EdlSection {
                    listen: "nope".into(),
                    ..EdlSection::default()
                },
                "blocklist.edl.listen",
            ),
            (
                EdlSection {
                    basic_auth_user: "fw".into(),
                    ..EdlSection::default()
                },
                "blocklist.edl.basic_auth_password",
            ),
            (
                EdlSection {
                    tls_cert: Some("/x".into()),
                    ..EdlSection::default()
                },
                "blocklist.edl.tls_key",
            ),
            (
                EdlSection {
                    allowed_clients: vec!["x".into()],
                    ..EdlSection::default()
                },
                "blocklist.edl.allowed_clients",
            ),
        ] {
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        let s: EdlSection = toml::from_str(
            "listen = \"127.0.0.1:0\"\nbasic_auth_user = \"fw\"\n\
             basic_auth_password = { env = \"EDL_PW\" }\nallowed_clients = [\"10.0.0.0/8\"]",
        )
        .unwrap();
        s.validate().unwrap();
    }

    #[test]
    fn etags_compare_weakly_and_credentials_exactly() {
        assert!(etag_matches(b"\"a\", W/\"b\"", "\"b\""));
        assert!(etag_matches(b"*", "\"b\""));
        assert!(!etag_matches(b"\"a\"", "\"b\""));
        assert!(auth_matches(b"Basic eA==", b"Basic eA=="));
        assert!(!auth_matches(b"Basic eB==", b"Basic eA=="));
        assert!(!auth_matches(b"Basic eA", b"Basic eA=="));
    }
}
