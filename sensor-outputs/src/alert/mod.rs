//! Alerts: malicious hits to the security team's WeCom group (and to generic JSON webhooks), as
//! the seed's Python consumer did with `sendwechat(jobnumber, client_ip, resource)`, without its
//! failure modes: the robot's 20 messages a minute are never exceeded, a burst becomes a few
//! digests instead of being dropped, and one client asking for one name all day is one alert
//! with a count.
//!
//! Flow: [`Alerter::submit`] (non-blocking, bounded queue, drops counted) → dispatcher task
//! (suppression per (client, name) and window, owner from the [`Inventory`]) → one backlog and
//! worker per sink ([`sink`]: sliding-window budget, composing, retries).
//!
//! Times: `Instant`s come from `tokio::time`, so tests run the budget and the windows on paused
//! time, exactly and without sleeping.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::{Instant, sleep_until},
};
use tracing::{debug, info};

use sensor_model::{
    error::ConfigError,
    secret::SecretSource,
    verdict::{Assessment, Verdict},
};

use sensor_intel::inventory::{Asset, Inventory, InventoryError};

mod budget;
pub mod format;
pub mod hits;
pub mod notice;
mod sink;
mod suppress;
mod webhook;
pub mod wecom;

use format::TimeFmt;
/// For the fuzz targets (`testkit::fuzzing`), which check how answers are classified.
pub use sink::SendError;
use sink::{Failures, Sink, SinkQueue, Transport};
use suppress::{Observed, Suppressor};

/// One malicious answer for one client: what the pipeline hands to [`Alerter::submit`].
#[derive(Debug, Clone)]
pub struct Hit {
    pub client: IpAddr,
    /// The queried name (normalised or not: suppression compares it normalised).
    pub name: String,
    /// Query type as text, e.g. `A`, `AAAA`, `TXT`.
    pub qtype: String,
    pub assessment: Arc<Assessment>,
    /// When the query was seen (UTC).
    pub seen: OffsetDateTime,
    /// The sensor's name (`[sensor] name`).
    pub sensor: String,
}

/// What travels through the submit queue: one hit, or a group of `count` hits of one pair seen
/// from `hit.seen` to `last_seen` (one queue slot either way).
#[derive(Debug, Clone)]
pub(crate) struct Sighting {
    pub(crate) hit: Hit,
    pub(crate) last_seen: OffsetDateTime,
    pub(crate) count: u64,
}

impl From<Hit> for Sighting {
    fn from(hit: Hit) -> Self {
        Self {
            last_seen: hit.seen,
            count: 1,
            hit,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// `[alerts]`: where alerts go and how often.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsSection {
    /// One alert per (client, name) pair per this many seconds; repeats within it are counted
    /// and reported when it ends. Default 3600.
    pub suppress_window_secs: u64,
    /// Hits waiting between the pipeline and the alert task; beyond it hits are dropped and
    /// counted (`queue_full_drops`), so a stuck sink never stalls the pipeline. Default 4096.
    pub queue_size: usize,
    /// Alerts each sink keeps waiting for its budget; beyond it alerts are only counted, in the
    /// next message's overflow line. Default 10000.
    pub backlog_size: usize,
    /// Asset inventory CSV (see [`sensor_intel::inventory`]) naming each client's owner. Default none.
    pub inventory: Option<PathBuf>,
    /// UTC offset for times in messages: `UTC`, or `±HH:MM` (`+08:00` for China). Default `UTC`:
    /// a wrong offset would mislead silently, while UTC is never wrong and every message names
    /// the offset it uses; the event store's `@timestamp` is UTC too.
    pub time_zone: String,
    /// WeCom group robots.
    pub wecom: Vec<WeComSink>,
    /// Generic JSON webhooks.
    pub webhook: Vec<WebhookSink>,
}

impl Default for AlertsSection {
    fn default() -> Self {
        Self {
            suppress_window_secs: 3600,
            queue_size: 4096,
            backlog_size: 10_000,
            inventory: None,
            time_zone: "UTC".into(),
            wecom: Vec::new(),
            webhook: Vec::new(),
        }
    }
}

/// WeCom's documented limit for one group robot: 20 messages a minute.
pub const WECOM_MAX_PER_MINUTE: u32 = 20;

/// `[[alerts.wecom]]`: one group robot.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WeComSink {
    /// Name in logs and counters. Default `wecom-<n>` (1-based position).
    pub name: Option<String>,
    /// The robot's key (the `key=` of its webhook URL): `{ env = "VAR" }` or `{ file = "…" }`.
    pub key: SecretSource,
    /// API base URL. Default `https://qyapi.weixin.qq.com`. The key travels in its query
    /// string: `http://` is refused except to a loopback host or with `allow_insecure_http`.
    pub base_url: String,
    /// Accept a plain `http://` `base_url` on a non-loopback host (the key then crosses the
    /// network in clear). Default false.
    pub allow_insecure_http: bool,
    /// Messages per sliding minute, retries included; 1 to 20. Default 20. Lower it when
    /// something else posts through the same robot. Messages are also paced at least
    /// 61 s / (max_per_minute − 1) apart (3.2 s at 20), so that hits arriving over any one
    /// minute end up in at most `max_per_minute` messages.
    pub max_per_minute: u32,
    /// WeCom user IDs to mention in every message (`<@userid>` in markdown). Default none.
    pub mention_userids: Vec<String>,
    /// Request timeout. Default 10.
    pub timeout_secs: u64,
}

impl Default for WeComSink {
    fn default() -> Self {
        Self {
            name: None,
            key: SecretSource::default(),
            base_url: "https://qyapi.weixin.qq.com".into(),
            allow_insecure_http: false,
            max_per_minute: WECOM_MAX_PER_MINUTE,
            mention_userids: Vec::new(),
            timeout_secs: 10,
        }
    }
}

/// A header value in config: plain text, or a secret (`{ env = "VAR" }` / `{ file = "…" }`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum HeaderSource {
    Value(String),
    Secret(SecretSource),
}

/// `[[alerts.webhook]]`: a generic JSON webhook.
///
/// Each request is `POST url` with `Content-Type: application/json` and this body:
///
/// ```json
/// {
///   "source": "dns-sensor",
///   "alerts": [{
///     "kind": "first",                      // or "still_active": repeats after an alert
///     "client": "10.1.2.34", "name": "evil.example", "qtype": "A",
///     "severity": "high", "confidence": "high",   // null when no provider graded it
///     "judgments": ["C2"], "tags": ["APT:Example"],
///     "first_seen": "2026-11-24T15:00:00Z", "last_seen": "2026-11-24T15:04:10Z", "count": 3,
///     "owner": { "network": "10.1.2.34/32", "owner": "Zhang San", "employee_id": "12345",
///                "hostname": "fin-pc-034", "department": "Finance" },   // or null
///     "sensor": "edge-1",
///     "findings": [{ "provider": "threatbook", "severity": "high", "confidence": "high",
///                    "judgments": ["C2"], "tags": [], "permalink": "https://…" }]
///   }],
///   // only after something could not be listed: alerts over the backlog (with the counts of
///   // the first 1000 names), hits dropped because the submit queue was full
///   "overflow": { "alerts": 12, "names": { "evil.example": 12 }, "dropped_hits": 0 }
/// }
/// ```
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSink {
    /// Name in logs and counters. Default `webhook-<n>`.
    pub name: Option<String>,
    /// `https://` URL (`http://` only to a loopback host or with `allow_insecure_http`: chat
    /// webhooks carry a token in the URL or a header). Required. Kept out of logs, errors and
    /// debug output (only its host is shown).
    pub url: String,
    /// Accept a plain `http://` `url` on a non-loopback host. Default false.
    pub allow_insecure_http: bool,
    /// Extra request headers, e.g. `Authorization = { env = "SOAR_TOKEN" }`. Default none.
    pub headers: BTreeMap<String, HeaderSource>,
    /// Requests per sliding minute, retries included. Default 60.
    pub max_per_minute: u32,
    /// Alerts per request at most. Default 100.
    pub max_batch: usize,
    /// Request timeout. Default 10.
    pub timeout_secs: u64,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Chat webhooks often carry their token in the URL (path or query): only the host is
        // shown.
        let host = reqwest::Url::parse(&self.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned));
        f.debug_struct("WebhookSink")
            .field("name", &self.name)
            .field("url_host", &host)
            .field("allow_insecure_http", &self.allow_insecure_http)
            .field("headers", &self.headers)
            .field("max_per_minute", &self.max_per_minute)
            .field("max_batch", &self.max_batch)
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

impl Default for WebhookSink {
    fn default() -> Self {
        Self {
            name: None,
            url: String::new(),
            allow_insecure_http: false,
            headers: BTreeMap::new(),
            max_per_minute: 60,
            max_batch: 100,
            timeout_secs: 10,
        }
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Both sinks carry a credential (the robot key, a token in the URL or a header): the shared
/// rule of `sensor_model::http::check_url`. The URL itself is never echoed.
fn http_url(key: &'static str, url: &str, allow_insecure_http: bool) -> Result<(), ConfigError> {
    sensor_model::http::check_url(key, url, allow_insecure_http).map(drop)
}

impl AlertsSection {
    /// Checks what serde cannot. Secrets are not read here (see [`Alerter::spawn`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.suppress_window_secs == 0 {
            return Err(invalid("alerts.suppress_window_secs", "must be at least 1"));
        }
        if self.queue_size == 0 {
            return Err(invalid("alerts.queue_size", "must be at least 1"));
        }
        if self.backlog_size == 0 {
            return Err(invalid("alerts.backlog_size", "must be at least 1"));
        }
        if format::parse_offset(&self.time_zone).is_none() {
            return Err(invalid(
                "alerts.time_zone",
                format!(
                    "{:?} is not `UTC` or an offset like `+08:00`",
                    self.time_zone
                ),
            ));
        }
        for (i, w) in self.wecom.iter().enumerate() {
            let name = w.name.clone().unwrap_or_else(|| format!("wecom-{}", i + 1));
            if w.key.is_unset() {
                return Err(invalid(
                    "alerts.wecom.key",
                    format!("{name}: set `key = {{ env = \"VAR\" }}` or `{{ file = \"...\" }}`"),
                ));
            }
            if !(1..=WECOM_MAX_PER_MINUTE).contains(&w.max_per_minute) {
                return Err(invalid(
                    "alerts.wecom.max_per_minute",
                    format!(
                        "{name}: {} is outside 1..={WECOM_MAX_PER_MINUTE} (WeCom allows a robot 20 messages a minute)",
                        w.max_per_minute
                    ),
                ));
            }
            http_url("alerts.wecom.base_url", &w.base_url, w.allow_insecure_http)?;
            if w.timeout_secs == 0 {
                return Err(invalid("alerts.wecom.timeout_secs", "must be at least 1"));
            }
            for id in &w.mention_userids {
                let ok = !id.is_empty()
                    && id.len() <= 64
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
                if !ok {
                    return Err(invalid(
                        "alerts.wecom.mention_userids",
                        format!("{name}: {id:?} is not a WeCom user ID (1-64 of [A-Za-z0-9._-@])"),
                    ));
                }
            }
        }
        for (i, w) in self.webhook.iter().enumerate() {
            let name = w
                .name
                .clone()
                .unwrap_or_else(|| format!("webhook-{}", i + 1));
            http_url("alerts.webhook.url", &w.url, w.allow_insecure_http)?;
            if w.max_per_minute == 0 {
                return Err(invalid(
                    "alerts.webhook.max_per_minute",
                    format!("{name}: must be at least 1"),
                ));
            }
            if w.max_batch == 0 {
                return Err(invalid(
                    "alerts.webhook.max_batch",
                    format!("{name}: must be at least 1"),
                ));
            }
            if w.timeout_secs == 0 {
                return Err(invalid(
                    "alerts.webhook.timeout_secs",
                    format!("{name}: must be at least 1"),
                ));
            }
            for h in w.headers.keys() {
                if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    return Err(invalid(
                        "alerts.webhook.headers",
                        format!("{name}: {h:?} is not a valid header name"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The configured inventory, or an empty one when none is configured.
    pub fn load_inventory(&self) -> Result<Inventory, InventoryError> {
        match &self.inventory {
            Some(path) => Inventory::load(path),
            None => Ok(Inventory::default()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Counters

/// Counters of the alert stage, shared by the handle, the dispatcher and the sinks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    hits_in: AtomicU64,
    not_malicious: AtomicU64,
    queue_full_drops: AtomicU64,
    closed_drops: AtomicU64,
    suppressed_repeats: AtomicU64,
    alerts_raised: AtomicU64,
    still_active_raised: AtomicU64,
    messages_sent: AtomicU64,
    digests_sent: AtomicU64,
    alerts_delivered: AtomicU64,
    alerts_undelivered: AtomicU64,
    retries: AtomicU64,
    throttled: AtomicU64,
    backlog_overflow: AtomicU64,
    send_failures: Mutex<Failures>,
}

impl Counters {
    fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    fn failure(&self, reason: &str, n: u64) {
        let mut f = self.send_failures.lock().unwrap_or_else(|e| e.into_inner());
        *f.entry(reason.to_owned()).or_default() += n;
    }

    fn snapshot(&self) -> AlertStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AlertStats {
            hits_in: g(&self.hits_in),
            not_malicious: g(&self.not_malicious),
            queue_full_drops: g(&self.queue_full_drops),
            closed_drops: g(&self.closed_drops),
            suppressed_repeats: g(&self.suppressed_repeats),
            alerts_raised: g(&self.alerts_raised),
            still_active_raised: g(&self.still_active_raised),
            messages_sent: g(&self.messages_sent),
            digests_sent: g(&self.digests_sent),
            alerts_delivered: g(&self.alerts_delivered),
            alerts_undelivered: g(&self.alerts_undelivered),
            retries: g(&self.retries),
            throttled: g(&self.throttled),
            backlog_overflow: g(&self.backlog_overflow),
            send_failures: self
                .send_failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// A snapshot of the alert counters. Alert counts are per sink delivery: with two sinks, one
/// alert delivered to both counts twice in `alerts_delivered`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AlertStats {
    /// Hits submitted (accepted or not; a group counts as its hits).
    pub hits_in: u64,
    /// Submitted hits whose verdict was not malicious (ignored).
    pub not_malicious: u64,
    /// Hits dropped because the submit queue was full.
    pub queue_full_drops: u64,
    /// Hits submitted after shutdown.
    pub closed_drops: u64,
    /// Repeats of a (client, name) pair within its window: counted, not alerted.
    pub suppressed_repeats: u64,
    /// Alerts raised (first hit of a pair in a window).
    pub alerts_raised: u64,
    /// "Still active" alerts raised for repeats at the end of a window.
    pub still_active_raised: u64,
    /// Messages (requests) accepted by a sink, digests included.
    pub messages_sent: u64,
    /// Of those, digests (several alerts in one message).
    pub digests_sent: u64,
    /// Alerts carried by accepted messages.
    pub alerts_delivered: u64,
    /// Alerts in messages that failed for good, or left at the shutdown deadline.
    pub alerts_undelivered: u64,
    /// Retries after transport errors, 5xx, or WeCom "busy".
    pub retries: u64,
    /// Throttling answers (WeCom 45009, HTTP 429), each followed by a wait and a retry.
    pub throttled: u64,
    /// Alerts over a sink's backlog, reported only as counts.
    pub backlog_overflow: u64,
    /// Messages that failed for good, by reason (`errcode_93000`, `errcode_40058`, `http_404`,
    /// `timeout`, `connect`, `protocol`, `shutdown` for one cut short by the shutdown deadline).
    pub send_failures: BTreeMap<String, u64>,
}

/// Reads the alert counters; cheap to clone (for the metrics endpoint).
#[derive(Debug, Clone)]
pub struct StatsHandle(Arc<Counters>);

impl StatsHandle {
    pub fn snapshot(&self) -> AlertStats {
        self.0.snapshot()
    }
}

// ---------------------------------------------------------------------------------------------
// The alert, as the dispatcher and the sinks share it

/// Numbers of one (client, name) pair in its window. Shared by the suppressor, which counts,
/// and the messages, which show it and record what they showed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PairStats {
    pub(crate) first_seen: OffsetDateTime,
    pub(crate) last_seen: OffsetDateTime,
    pub(crate) count: u64,
    /// The highest count a message has carried.
    pub(crate) shown: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum AlertKind {
    /// First hit of the pair in its window.
    First,
    /// Repeats no message has shown, at the end of the window.
    StillActive,
}

#[derive(Debug, Clone)]
pub(crate) struct Alert {
    pub(crate) kind: AlertKind,
    pub(crate) client: IpAddr,
    pub(crate) name: String,
    pub(crate) qtype: String,
    pub(crate) sensor: String,
    pub(crate) assessment: Arc<Assessment>,
    pub(crate) owner: Option<Arc<Asset>>,
    pub(crate) stats: Arc<Mutex<PairStats>>,
}

// ---------------------------------------------------------------------------------------------
// The handle

/// Errors from starting the alert stage.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("alert sink {sink}: {message}")]
    Sink { sink: String, message: String },
}

/// How many (client, name) pairs are tracked at most; beyond it the oldest window is closed
/// early (its repeats reported), so a flood of distinct pairs cannot exhaust memory.
const MAX_TRACKED_PAIRS: usize = 100_000;
/// Shutdown grace when the handle is dropped without [`Alerter::shutdown`].
const DROP_GRACE: Duration = Duration::from_secs(10);

/// Submits hits to the alert stage; cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct AlertSubmitter {
    tx: mpsc::Sender<Sighting>,
    counters: Arc<Counters>,
}

impl AlertSubmitter {
    /// Queues a hit without waiting. Returns false (and counts the drop) when the queue is full
    /// or the stage has shut down: the event pipeline must never wait on a chat robot.
    pub fn submit(&self, hit: Hit) -> bool {
        self.send(hit.into())
    }

    /// Queues `count` hits of one (client, name) pair at once, the first seen at `hit.seen`
    /// and the last at `last_seen`: one queue slot instead of `count`, with the same effect on
    /// alerts and counters as submitting each hit (counted hits, repeats, drops).
    pub fn submit_group(&self, hit: Hit, last_seen: OffsetDateTime, count: u64) -> bool {
        self.send(Sighting {
            hit,
            last_seen,
            count: count.max(1),
        })
    }

    fn send(&self, sighting: Sighting) -> bool {
        let n = sighting.count;
        Counters::add(&self.counters.hits_in, n);
        match self.tx.try_send(sighting) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                Counters::add(&self.counters.queue_full_drops, n);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Counters::add(&self.counters.closed_drops, n);
                false
            }
        }
    }
}

/// The alert stage: a handle to its tasks. Dropping it without [`Alerter::shutdown`] starts the
/// same shutdown with a grace of 10 s (submitters still held then count their hits as drops).
#[derive(Debug)]
pub struct Alerter {
    submitter: AlertSubmitter,
    shutdown: Option<oneshot::Sender<Instant>>,
    task: Option<JoinHandle<()>>,
}

impl Alerter {
    /// Validates the section, reads the sinks' secrets and starts the tasks on the current
    /// tokio runtime. `inventory` is read for each new alert, so swapping in a reloaded one
    /// takes effect at once.
    pub fn spawn(
        config: &AlertsSection,
        inventory: Arc<ArcSwap<Inventory>>,
    ) -> Result<Self, AlertError> {
        config.validate()?;
        let counters = Arc::new(Counters::default());
        // `validate` above refused a zone `parse_offset` cannot read; the error stays for safety.
        let offset =
            format::parse_offset(&config.time_zone).ok_or_else(|| ConfigError::Invalid {
                key: "alerts.time_zone",
                message: format!("{:?} is not `UTC` or an offset", config.time_zone),
            })?;
        let time = TimeFmt { offset };
        let (deadline_tx, deadline_rx) = watch::channel(None);

        let mut sinks = Vec::new();
        for (i, w) in config.wecom.iter().enumerate() {
            let name = w.name.clone().unwrap_or_else(|| format!("wecom-{}", i + 1));
            let key = w.key.resolve("alerts.wecom.key")?;
            let client =
                wecom::WeComClient::new(&w.base_url, key, Duration::from_secs(w.timeout_secs))
                    .map_err(|message| AlertError::Sink {
                        sink: name.clone(),
                        message,
                    })?;
            sinks.push((
                name,
                Transport::WeCom {
                    client,
                    mentions: w.mention_userids.clone(),
                },
                w.max_per_minute as usize,
            ));
        }
        for (i, w) in config.webhook.iter().enumerate() {
            let name = w
                .name
                .clone()
                .unwrap_or_else(|| format!("webhook-{}", i + 1));
            let mut headers = Vec::new();
            for (h, v) in &w.headers {
                let value = match v {
                    HeaderSource::Value(v) => v.clone(),
                    HeaderSource::Secret(s) => {
                        s.resolve("alerts.webhook.headers")?.expose().to_owned()
                    }
                };
                headers.push((h.clone(), value));
            }
            let client =
                webhook::WebhookClient::new(&w.url, headers, Duration::from_secs(w.timeout_secs))
                    .map_err(|message| AlertError::Sink {
                    sink: name.clone(),
                    message,
                })?;
            sinks.push((
                name,
                Transport::Webhook {
                    client,
                    max_batch: w.max_batch,
                },
                w.max_per_minute as usize,
            ));
        }

        let mut queues = Vec::new();
        let mut workers = Vec::new();
        for (name, transport, max_per_minute) in sinks {
            let queue = Arc::new(SinkQueue::new(config.backlog_size));
            queues.push(Arc::clone(&queue));
            let sink = Sink {
                name,
                transport,
                budget: budget::Budget::new(max_per_minute, Duration::from_secs(60)),
                queue,
                counters: Arc::clone(&counters),
                time,
                deadline: deadline_rx.clone(),
            };
            workers.push(tokio::spawn(sink.run()));
        }

        let (tx, rx) = mpsc::channel(config.queue_size);
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let dispatcher = Dispatcher {
            suppressor: Suppressor::new(
                Duration::from_secs(config.suppress_window_secs),
                MAX_TRACKED_PAIRS,
            ),
            drops_reported: 0,
            queues,
            inventory,
            counters: Arc::clone(&counters),
        };
        let task = tokio::spawn(dispatcher.run(rx, shutdown_rx, deadline_tx, workers));
        info!(
            wecom = config.wecom.len(),
            webhook = config.webhook.len(),
            window_s = config.suppress_window_secs,
            "alerts started"
        );
        Ok(Self {
            submitter: AlertSubmitter { tx, counters },
            shutdown: Some(shutdown_tx),
            task: Some(task),
        })
    }

    /// See [`AlertSubmitter::submit`].
    pub fn submit(&self, hit: Hit) -> bool {
        self.submitter.submit(hit)
    }

    /// A clonable submitter for the pipeline's tasks.
    pub fn submitter(&self) -> AlertSubmitter {
        self.submitter.clone()
    }

    pub fn stats(&self) -> AlertStats {
        self.submitter.counters.snapshot()
    }

    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(Arc::clone(&self.submitter.counters))
    }

    /// Stops taking hits, reports repeats still counted in open windows, and sends what is
    /// queued, within `grace` (the budget still holds: a large backlog may need minutes). What
    /// is left at the deadline is counted in `alerts_undelivered`. Returns the final counters.
    pub async fn shutdown(mut self, grace: Duration) -> AlertStats {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(Instant::now() + grace);
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.stats()
    }
}

struct Dispatcher {
    suppressor: Suppressor,
    /// Submit-queue drops already reported to the sinks.
    drops_reported: u64,
    queues: Vec<Arc<SinkQueue>>,
    inventory: Arc<ArcSwap<Inventory>>,
    counters: Arc<Counters>,
}

impl Dispatcher {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Sighting>,
        mut shutdown: oneshot::Receiver<Instant>,
        deadline: watch::Sender<Option<Instant>>,
        workers: Vec<JoinHandle<()>>,
    ) {
        let end = loop {
            self.report_drops();
            let next = self.suppressor.next_deadline();
            tokio::select! {
                biased;
                d = &mut shutdown => break d.unwrap_or_else(|_| Instant::now() + DROP_GRACE),
                hit = rx.recv() => match hit {
                    Some(hit) => self.hit(hit),
                    None => break Instant::now() + DROP_GRACE,
                },
                () = sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    for alert in self.suppressor.expire(Instant::now()) {
                        self.raise(alert);
                    }
                }
            }
        };
        // Hits already queued are still handled; later submits are counted as closed drops.
        rx.close();
        while let Ok(hit) = rx.try_recv() {
            self.hit(hit);
        }
        for alert in self.suppressor.drain() {
            self.raise(alert);
        }
        self.report_drops();
        let _ = deadline.send(Some(end));
        for q in &self.queues {
            q.close();
        }
        for w in workers {
            let _ = w.await;
        }
        debug!("alerts stopped");
    }

    /// Hits dropped at submit never reach suppression; the chat still learns how many there
    /// were, in the next message.
    fn report_drops(&mut self) {
        let drops = self.counters.queue_full_drops.load(Ordering::Relaxed);
        if drops > self.drops_reported {
            for q in &self.queues {
                q.note_dropped(drops - self.drops_reported);
            }
            self.drops_reported = drops;
        }
    }

    fn hit(&mut self, sighting: Sighting) {
        let n = sighting.count;
        if sighting.hit.assessment.verdict != Verdict::Malicious {
            Counters::add(&self.counters.not_malicious, n);
            return;
        }
        let inventory = &self.inventory;
        let mut evicted = Vec::new();
        let observed = self.suppressor.observe(
            sighting,
            |ip| inventory.load().lookup_shared(ip).cloned(),
            Instant::now(),
            &mut evicted,
        );
        for alert in evicted {
            self.raise(alert);
        }
        match observed {
            Observed::New(alert) => {
                Counters::add(&self.counters.suppressed_repeats, n - 1);
                self.raise(alert);
            }
            Observed::Repeat => Counters::add(&self.counters.suppressed_repeats, n),
        }
    }

    fn raise(&self, alert: Arc<Alert>) {
        let counter = match alert.kind {
            AlertKind::First => &self.counters.alerts_raised,
            AlertKind::StillActive => &self.counters.still_active_raised,
        };
        Counters::inc(counter);
        for q in &self.queues {
            q.push(Arc::clone(&alert), &self.counters);
        }
    }
}

#[cfg(test)]
mod tests;
