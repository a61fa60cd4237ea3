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
//!
//! The server faces the firewall's network, so it runs behind `sensor_outputs::httpd` (the
//! allowed-clients check and the failed-auth throttle at accept, before TLS; connection caps;
//! header-read and idle timeouts), refuses to start open or with Basic auth in clear unless the
//! config opts in, and records who fetched what ([`crate::fetches`]).
//!
//! The same server hands out the FortiGate, Check Point and MikroTik export files on their own
//! `url_path` ([`serve_lists`], [`ListKind`]): those firewalls fetch over HTTP(S) too, and one
//! server keeps one set of checks (allowed clients, throttle, auth, TLS, limits) and one place
//! that sees every firewall's fetches. Each path has its own served copy, checked in its format
//! before it is served ([`ListKind::validate_text`]); a path nobody configured is 404.

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
    extract::{ConnectInfo, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::Engine;
use ipnet::IpNet;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::{
    edl_auth::AuthThrottle,
    edl_tls::CertSource,
    fetches::{FetchTracker, FirewallSection, Outcome},
    store::{Entry, fnv1a64},
};
use sensor_model::{
    error::{ConfigError, parse_nets},
    secret::SecretSource,
};

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
    /// Clients (IPs or CIDRs) allowed to connect; empty = any client. Others are closed at
    /// accept, before any TLS handshake.
    pub allowed_clients: Vec<String>,
    /// Serve with neither `basic_auth_user` nor `allowed_clients` (anyone who reaches the port
    /// reads the list). Off: such a config is refused at start.
    pub allow_open: bool,
    /// Accept Basic auth over plain HTTP (the password crosses the network readable). Off: a
    /// config with a user and no TLS is refused at start.
    pub allow_basic_auth_over_http: bool,
    /// Failed authentications from one address within `auth_throttle_secs` after which its
    /// connections are refused for `auth_throttle_secs`.
    pub auth_failure_limit: u32,
    pub auth_throttle_secs: u64,
    /// PEM certificate chain and private key: both set = HTTPS, neither = plain HTTP. Re-read on
    /// SIGHUP; a path starting with `$CREDENTIALS_DIRECTORY/` is read from systemd's
    /// credentials directory (`LoadCredential=`).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `[blocklist.edl.limits]`: timeouts, connection caps, request size.
    pub limits: sensor_outputs::httpd::ServerLimits,
    /// `[[blocklist.edl.firewalls]]`: firewalls expected to fetch, tracked and alerted on.
    pub firewalls: Vec<FirewallSection>,
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
            allow_open: false,
            allow_basic_auth_over_http: false,
            auth_failure_limit: 10,
            auth_throttle_secs: 300,
            tls_cert: None,
            tls_key: None,
            limits: Default::default(),
            firewalls: Vec::new(),
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
        check_url_path("blocklist.edl.url_path", &self.url_path)?;
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
        let allowed = parse_nets("blocklist.edl.allowed_clients", &self.allowed_clients)?;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid(
                "blocklist.edl.tls_key",
                "set both tls_cert and tls_key, or neither".to_owned(),
            ));
        }
        self.limits.validate("blocklist.edl.limits")?;
        if self.auth_failure_limit == 0 || !(1..=86_400).contains(&self.auth_throttle_secs) {
            return Err(invalid(
                "blocklist.edl.auth_throttle_secs",
                "auth_failure_limit must be at least 1 and auth_throttle_secs 1..=86400".to_owned(),
            ));
        }
        crate::fetches::validate(&self.firewalls)?;
        if let Some(f) = self.firewalls.iter().find(|f| {
            !allowed.is_empty()
                && !allowed
                    .iter()
                    .any(|n| n.contains(&f.address.to_canonical()))
        }) {
            return Err(invalid(
                "blocklist.edl.firewalls",
                format!(
                    "{} ({}) is not in allowed_clients: its fetches would be refused",
                    f.name, f.address
                ),
            ));
        }
        if self.listen.trim().is_empty() {
            return Ok(());
        }
        if self.basic_auth_user.is_empty() && allowed.is_empty() && !self.allow_open {
            return Err(invalid(
                "blocklist.edl.allow_open",
                "the list would be served to anyone: set allowed_clients and/or basic_auth_user, or allow_open = true".to_owned(),
            ));
        }
        if !self.basic_auth_user.is_empty()
            && self.tls_cert.is_none()
            && !self.allow_basic_auth_over_http
        {
            return Err(invalid(
                "blocklist.edl.allow_basic_auth_over_http",
                "Basic auth over plain HTTP sends the password in clear: set tls_cert and tls_key, or allow_basic_auth_over_http = true".to_owned(),
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

/// Checks a URL path the server routes on. Only unreserved characters (RFC 3986) and '/': the
/// router reads `{`, `}`, `*` and `:` as captures and wildcards, and panics on some of them.
pub fn check_url_path(key: &'static str, path: &str) -> Result<(), ConfigError> {
    if !path.starts_with('/')
        || path.contains("//")
        || !path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~/".contains(c))
    {
        return Err(ConfigError::Invalid {
            key,
            message: format!(
                "{path:?} must start with / and hold only letters, digits, '-', '.', '_', '~' and single '/'"
            ),
        });
    }
    Ok(())
}

/// The lists the server can hand out: the PAN-OS EDL and the export files firewalls fetch.
/// Also the `list` of a fetch record and of the `edl_list_fetches_total` metric (four values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListKind {
    /// The PAN-OS EDL (`[blocklist.edl]`).
    Edl,
    /// The FortiGate external threat feed (`[blocklist.export.fortigate]`).
    Fortigate,
    /// The Check Point IoC feed (`[blocklist.export.checkpoint]`).
    Checkpoint,
    /// The MikroTik RouterOS script (`[blocklist.export.mikrotik]`).
    Mikrotik,
}

impl ListKind {
    pub const ALL: [ListKind; 4] = [
        ListKind::Edl,
        ListKind::Fortigate,
        ListKind::Checkpoint,
        ListKind::Mikrotik,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ListKind::Edl => "edl",
            ListKind::Fortigate => "fortigate",
            ListKind::Checkpoint => "checkpoint",
            ListKind::Mikrotik => "mikrotik",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The `Content-Type` served: FortiOS and RouterOS read plain text, Check Point's feed is a
    /// CSV file (sk132193).
    pub fn content_type(self) -> &'static str {
        match self {
            ListKind::Checkpoint => "text/csv; charset=utf-8",
            _ => "text/plain; charset=utf-8",
        }
    }

    /// Checks a list file before it is served (an operator may have edited it by hand): it must
    /// parse in its format and cover no protected or operator-decided address. Returns the
    /// number of entries, or the first problem with its line number.
    pub fn validate_text(
        self,
        text: &str,
        never: &crate::neverblock::NeverBlock,
    ) -> Result<usize, String> {
        let nets = match self {
            ListKind::Edl => parse_text(text)?,
            ListKind::Fortigate => crate::export::fortigate::parse(text)?,
            ListKind::Checkpoint => crate::export::checkpoint::parse(text)?,
            ListKind::Mikrotik => crate::export::mikrotik::parse(text)?,
        };
        check_protected(&nets, never)
    }
}

/// The EDL text: one address per line with its expiry and severity as a comment. Most severe
/// first, then most recently confirmed, then most confident (then by address, so the text is
/// stable): a firewall that stops reading at its entry limit keeps the entries that matter most.
pub fn render(entries: &[Entry]) -> String {
    let mut order: Vec<&Entry> = entries.iter().collect();
    order.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(b.last_malicious.cmp(&a.last_malicious))
            .then(b.confidence.cmp(&a.confidence))
            .then(a.ip.cmp(&b.ip))
    });
    let mut out = String::with_capacity(entries.len() * 48);
    for e in order {
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

/// Writes the EDL file when its text changes (the command line's publication; the daemon's
/// file watcher serves it). Returns whether it changed.
pub fn write_file(path: &Path, text: &str) -> Result<bool, EdlError> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(false);
    }
    let io = |source| EdlError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    sensor_model::files::write_atomic(path, text).map_err(io)?;
    Ok(true)
}

/// Checks an EDL file before it is served (an operator may have edited it by hand): every
/// non-comment line must start with an address or CIDR, and none may be protected or decided
/// by the operator. Returns the number of entries, or the first problem with its line number.
pub fn validate_text(text: &str, never: &crate::neverblock::NeverBlock) -> Result<usize, String> {
    ListKind::Edl.validate_text(text, never)
}

/// The networks of an EDL text with their line numbers (1-based).
fn parse_text(text: &str) -> Result<Vec<(usize, IpNet)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        let net: IpNet = first
            .parse()
            .or_else(|_| first.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| format!("line {}: {first:?} is not an address or CIDR", i + 1))?;
        out.push((i + 1, net));
    }
    Ok(out)
}

/// The networks of an inclusive address range (`a-b`), for the protected-address check.
pub(crate) fn range_nets(a: IpAddr, b: IpAddr) -> Option<Vec<IpNet>> {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => {
            Some(ipnet::Ipv4Subnets::new(a, b, 0).map(IpNet::V4).collect())
        }
        (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => {
            Some(ipnet::Ipv6Subnets::new(a, b, 0).map(IpNet::V6).collect())
        }
        _ => None,
    }
}

/// Refuses networks that touch a protected or operator-decided address; returns how many
/// entries (lines) there are.
fn check_protected(
    nets: &[(usize, IpNet)],
    never: &crate::neverblock::NeverBlock,
) -> Result<usize, String> {
    let holes = never.hard_holes();
    for (line, net) in nets {
        let net = sensor_kernel::lists::canonical_net(&net.trunc());
        if let Some(h) = holes.iter().find(|h| h.contains(&net) || net.contains(*h)) {
            return Err(format!(
                "line {line}: {net} covers {h}, which must never be listed ({})",
                never.hard_reason(h.addr()).unwrap_or("protected")
            ));
        }
    }
    let mut lines: Vec<usize> = nets.iter().map(|(l, _)| *l).collect();
    lines.dedup();
    Ok(lines.len())
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
        self.swap(old.as_deref(), text);
        Ok(true)
    }

    /// A list whose file is written by someone else (an export, see [`crate::export`]): nothing
    /// is served until [`EdlList::serve_text`] hands over a checked text.
    pub fn unpublished(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            current: Arc::new(ArcSwapOption::empty()),
            publishing: Arc::new(Mutex::new(())),
        }
    }

    /// Serves `text` (read from the file and checked by the caller) without writing the file.
    /// The text already served changes nothing. Returns whether the served list changed.
    pub fn serve_text(&self, text: &str) -> bool {
        let _one_at_a_time = self.publishing.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current.load_full();
        if old.as_ref().is_some_and(|o| o.body == text.as_bytes()) {
            return false;
        }
        self.swap(old.as_deref(), text);
        true
    }

    fn swap(&self, old: Option<&Served>, text: &str) {
        // Last-Modified moves forward by at least a second, so If-Modified-Since never mistakes
        // a list published within the same second for the one a client already has.
        let mut when = whole_seconds(SystemTime::now());
        if let Some(old) = old
            && when <= old.last_modified
        {
            when = old.last_modified + Duration::from_secs(1);
        }
        self.current.store(Some(Arc::new(Served::new(
            Bytes::copy_from_slice(text.as_bytes()),
            when,
        ))));
    }

    /// The list being served, if any.
    pub fn current(&self) -> Option<Arc<Served>> {
        self.current.load_full()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

struct AppState {
    /// The expected `Authorization` value, `Basic <base64(user:password)>`.
    auth: Option<String>,
    throttle: Arc<AuthThrottle>,
    fetches: Arc<FetchTracker>,
}

/// One URL path: which list, and the shared checks.
struct RouteState {
    app: Arc<AppState>,
    kind: ListKind,
    list: EdlList,
}

/// A list served next to the EDL, on its own path (an export file, see [`crate::export`]).
#[derive(Clone)]
pub struct ExtraList {
    pub kind: ListKind,
    /// Its URL path; [`serve_lists`] checks it is valid and distinct from the others.
    pub url_path: String,
    /// The config key of `url_path`, for errors.
    pub key: &'static str,
    pub list: EdlList,
}

/// A running EDL server.
pub struct EdlServer {
    pub local_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
    pub stats: Arc<EdlStats>,
    /// The certificate source when serving HTTPS (re-read on SIGHUP: see
    /// [`crate::edl_tls::TlsReload`]).
    pub tls: Option<Arc<CertSource>>,
    /// The export lists served next to the EDL (to be kept current by their file watchers).
    pub extra: Vec<ExtraList>,
}

/// What the EDL server counts.
pub struct EdlStats {
    /// Accept-time refusals, connection caps and cuts.
    pub gate: Arc<sensor_outputs::httpd::Gate>,
    pub throttle: Arc<AuthThrottle>,
    pub fetches: Arc<FetchTracker>,
    lists: Vec<(ListKind, EdlList)>,
}

impl EdlStats {
    /// `/metrics` samples: connections, the throttle, fetches per firewall.
    pub fn metrics(&self, out: &mut Vec<sensor_outputs::metrics::Metric>) {
        use sensor_outputs::metrics::Metric;
        use std::sync::atomic::Ordering;
        self.gate.metrics(out);
        out.push(Metric::counter(
            "edl_auth_throttles",
            "Addresses throttled after repeated failed authentication.",
            self.throttle.throttled.load(Ordering::Relaxed),
        ));
        let current = |kind: ListKind| {
            self.lists
                .iter()
                .find(|(k, _)| *k == kind)
                .and_then(|(_, l)| l.current())
                .map(|c| c.etag.clone())
        };
        self.fetches.metrics(&current, out);
    }
}

/// Serves `list` as `section` says (call only when `section.listen` is set), until `shutdown`
/// completes. Binds before returning, so a bad address or certificate is reported at once.
/// Spawns on the current runtime: call it on the server thread
/// ([`sensor_outputs::httpd::ServerThread`]).
pub async fn serve(
    section: &EdlSection,
    list: EdlList,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<EdlServer, EdlError> {
    serve_lists(section, list, Vec::new(), shutdown).await
}

/// [`serve`], with `extra` lists on their own paths behind the same checks (allowed clients,
/// throttle, Basic auth, TLS, limits) and the same fetch records. A path nobody configured is
/// 404.
pub async fn serve_lists(
    section: &EdlSection,
    list: EdlList,
    extra: Vec<ExtraList>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<EdlServer, EdlError> {
    section.validate()?;
    let paths: Vec<(&'static str, &str)> =
        std::iter::once(("blocklist.edl.url_path", section.url_path.as_str()))
            .chain(extra.iter().map(|e| (e.key, e.url_path.as_str())))
            .collect();
    check_distinct_paths(&paths)?;
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
        (Some(c), Some(k)) => Some(CertSource::open(c, k)?),
        _ => None,
    };
    let acceptor = tls.as_ref().map(CertSource::acceptor).transpose()?;
    let throttle = Arc::new(AuthThrottle::new(
        section.auth_failure_limit,
        Duration::from_secs(section.auth_throttle_secs),
    ));
    let fetches = Arc::new(FetchTracker::new(
        section.firewalls.clone(),
        crate::fetches::state_file(&section.path),
    ));
    let gate = sensor_outputs::httpd::Gate::new(
        "edl",
        section.limits.clone(),
        parse_nets("blocklist.edl.allowed_clients", &section.allowed_clients)?,
        Some({
            let throttle = throttle.clone();
            Arc::new(move |ip| throttle.is_throttled(ip))
        }),
        section.firewalls.iter().map(|f| f.address).collect(),
    );
    let state = Arc::new(AppState {
        auth,
        throttle: throttle.clone(),
        fetches: fetches.clone(),
    });
    let lists: Vec<(ListKind, EdlList)> = std::iter::once((ListKind::Edl, list))
        .chain(extra.iter().map(|e| (e.kind, e.list.clone())))
        .collect();
    let mut router = Router::new();
    for ((_, path), (kind, list)) in paths.iter().zip(&lists) {
        router = router.merge(Router::new().route(path, get(handle)).with_state(Arc::new(
            RouteState {
                app: state.clone(),
                kind: *kind,
                list: list.clone(),
            },
        )));
    }
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|source| EdlError::Bind { addr, source })?;
    let local_addr = tcp
        .local_addr()
        .map_err(|source| EdlError::Bind { addr, source })?;
    let tls_on = acceptor.is_some();
    let task = tokio::spawn(sensor_outputs::httpd::serve(
        tcp,
        gate.clone(),
        acceptor,
        router,
        shutdown,
    ));
    for e in &extra {
        tracing::info!(list = e.kind.name(), path = %e.url_path, file = %e.list.path().display(), "serving an export list");
    }
    tracing::info!(address = %local_addr, tls = tls_on, path = %section.url_path, "EDL server listening");
    Ok(EdlServer {
        local_addr,
        task,
        stats: Arc::new(EdlStats {
            gate,
            throttle,
            fetches,
            lists,
        }),
        tls,
        extra,
    })
}

/// Every served path must be valid and different from the others (two lists on one path would
/// panic the router, or serve one firewall another's format). `paths`: (config key, path).
pub fn check_distinct_paths(paths: &[(&'static str, &str)]) -> Result<(), ConfigError> {
    for (i, (key, path)) in paths.iter().enumerate() {
        check_url_path(key, path)?;
        if let Some((other, _)) = paths[..i].iter().find(|(_, p)| p == path) {
            return Err(ConfigError::Invalid {
                key,
                message: format!("{path:?} is already the path of {other}"),
            });
        }
    }
    Ok(())
}

/// The user name of a Basic `Authorization` value, to tell firewalls apart (never logged).
fn basic_user(value: &[u8]) -> Option<String> {
    let b64 = value.strip_prefix(b"Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':').map(|(u, _)| u.to_owned())
}

async fn handle(
    State(route): State<Arc<RouteState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let state = &route.app;
    let kind = route.kind;
    let ip: IpAddr = peer.ip().to_canonical();
    let given = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    let user = basic_user(given);
    if let Some(expected) = &state.auth {
        if !auth_matches(given, expected.as_bytes()) {
            state.throttle.failed(ip);
            state
                .fetches
                .record(ip, user.as_deref(), kind, Outcome::Unauthorized, None);
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, REALM)],
                "authentication required\n",
            )
                .into_response();
        }
        state.throttle.succeeded(ip);
    }
    // One snapshot for the whole response.
    let Some(served) = route.list.current() else {
        state
            .fetches
            .record(ip, user.as_deref(), kind, Outcome::Unavailable, None);
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
    state.fetches.record(
        ip,
        user.as_deref(),
        kind,
        if not_modified {
            Outcome::NotModified
        } else {
            Outcome::Ok
        },
        Some(&served.etag),
    );
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
        [(header::CONTENT_TYPE, kind.content_type())],
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
        // Most severe first: a firewall that truncates keeps the entries that matter most.
        assert_eq!(
            text,
            "1.2.3.4 expires 2026-12-24 severity critical\n\
             45.33.32.156 expires 2026-12-24 severity high\n\
             2a00:1450::1 expires 2026-12-24\n"
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
             basic_auth_password = { env = \"EDL_PW\" }\nallowed_clients = [\"10.0.0.0/8\"]\n\
             tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"",
        )
        .unwrap();
        s.validate().unwrap();
        for (s, key) in [
            // Open: no auth, no allowed clients.
            (
                EdlSection {
                    listen: "0.0.0.0:8443".into(),
                    ..EdlSection::default()
                },
                "blocklist.edl.allow_open",
            ),
            // Basic auth without TLS.
            (
                EdlSection {
                    tls_cert: None,
                    tls_key: None,
                    ..s.clone()
                },
                "blocklist.edl.allow_basic_auth_over_http",
            ),
            (
                EdlSection {
                    url_path: "/{list}".into(),
                    ..s.clone()
                },
                "blocklist.edl.url_path",
            ),
            (
                EdlSection {
                    url_path: "/a/:b".into(),
                    ..s.clone()
                },
                "blocklist.edl.url_path",
            ),
            (
                EdlSection {
                    firewalls: vec![crate::fetches::FirewallSection {
                        name: "pa".into(),
                        address: "192.0.2.1".parse().unwrap(),
                        user: String::new(),
                        max_silence_secs: 3600,
                    }],
                    ..s.clone()
                },
                "blocklist.edl.firewalls",
            ),
        ] {
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        // Each opt-in is explicit.
        EdlSection {
            listen: "0.0.0.0:8443".into(),
            allow_open: true,
            ..EdlSection::default()
        }
        .validate()
        .unwrap();
        EdlSection {
            tls_cert: None,
            tls_key: None,
            allow_basic_auth_over_http: true,
            ..s
        }
        .validate()
        .unwrap();
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
