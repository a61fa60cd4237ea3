//! Elasticsearch sink: malicious hits (or every event) as ECS documents in a daily index, through
//! the `_bulk` API.
//!
//! Parts: [`ElasticSection`] (the `[elasticsearch]` config), [`client`] (nodes, authentication,
//! TLS: the one Elasticsearch client, which the nightly job's alert reader uses too),
//! [`document`] (the document, its `_id` and its index name), [`template`] (the index template
//! installed at start), [`worker`] (batching, bulk requests, retries).
//!
//! Delivery: `offer` never waits. It counts the event, filters it, and puts it on a bounded queue
//! (full → counted drop `queue/queue_full`). One worker task installs the template (retrying in
//! the background while events queue), then builds documents and sends them in bulk requests cut
//! by size and by time. Each item is a `create` with a deterministic `_id`, so a retried item can
//! never make a second copy: a `409` on it means it is already indexed (`already_indexed`).
//! Whole-request failures (transport, 429, 5xx) retry the request with jittered exponential
//! back-off; in a partial failure only the items with retriable statuses (429, 5xx) are sent
//! again, the others are counted by the server's `error.type`. After `max_retries`, the rest is
//! counted `retries_exhausted`. At every moment
//! `events_in = filtered_out + indexed + already_indexed + dropped + in_flight`.
//!
//! Servers: only `GET /`, `PUT _index_template/<name>` and `POST _bulk` with plain
//! `application/json` / `application/x-ndjson` bodies, which Elasticsearch 7.8+ (composable
//! templates), 8 and 9 and OpenSearch 1 to 3 all accept the same way. The tests run against
//! osmem-server (OpenSearch API 3.x).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::SinkError;
use crate::metrics::Metric;
use sensor_intel::inventory::Inventory;
use sensor_model::{enriched::Enriched, error::ConfigError, secret::SecretSource};

pub mod client;
pub mod document;
pub mod template;
mod worker;

/// For the fuzz targets (`testkit::fuzzing`).
pub use worker::{BulkAnswer, read_bulk_answer};

/// Which events the sink writes.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum EventFilter {
    /// Only events whose name some provider called malicious (the seed's `security_check_url`).
    #[default]
    Malicious,
    /// Every event that reaches the sink (the Kafka sink is usually the better place for these).
    All,
}

/// `[elasticsearch]`: where hits are indexed. Off unless the section is present.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ElasticSection {
    /// Nodes, `http://host:port` or `https://host:port` (an optional path prefix for a proxy is
    /// kept). Requests go round-robin; a node that fails is skipped on the retry. Credentials
    /// belong in `username`/`password` or `api_key`, never in the URL. Default
    /// `["http://127.0.0.1:9200"]`.
    pub urls: Vec<String>,
    /// Index name pattern. `%Y` (4-digit year), `%m` (month 01-12), `%d` (day 01-31) are
    /// replaced with the date of the event's `@timestamp` in UTC; `%%` is a literal `%`; no
    /// other `%` sequence is allowed. The text before the first `%` followed by `*` is the
    /// template's index pattern. Default `security_check_url-%Y.%m.%d` (the seed's
    /// `security_check_url-YYYY.MM.DD`).
    pub index: String,
    /// `malicious` (default): only hits. `all`: every event that reaches the sink.
    pub events: EventFilter,
    /// Events waiting for the worker; beyond it they are dropped and counted (`queue_full`).
    /// Default 10000.
    pub queue_size: usize,
    /// Most documents in one bulk request. Default 1000.
    pub bulk_max_docs: usize,
    /// Most bytes of one bulk request body (a single larger document still goes alone).
    /// Default 5242880 (5 MiB).
    pub bulk_max_bytes: usize,
    /// A partial bulk is sent when its first document has waited this long. Default 1000.
    pub flush_interval_ms: u64,
    /// Retries of a request (or of its retriable items) after the first attempt; then the
    /// documents are dropped and counted `retries_exhausted`. Default 5.
    pub max_retries: u32,
    /// First back-off; doubles per retry, up to `retry_max_ms`, each scaled by a random factor
    /// in [0.5, 1). Default 200.
    pub retry_initial_ms: u64,
    /// Longest back-off. Default 10000.
    pub retry_max_ms: u64,
    /// Time limit of one HTTP request (connect included). Default 30000.
    pub request_timeout_ms: u64,
    /// Basic authentication user (with `password`). Default: none.
    pub username: Option<String>,
    /// Basic authentication password: `{ env = "VAR" }` or `{ file = "/path" }`.
    pub password: Option<SecretSource>,
    /// API key instead of basic authentication, sent as `Authorization: ApiKey <value>`: the
    /// base64 `id:api_key` ("encoded") form that Elasticsearch returns and Kibana shows:
    /// `{ env = "VAR" }` or `{ file = "/path" }`.
    pub api_key: Option<SecretSource>,
    /// A PEM bundle of the CA certificates that signed the nodes' certificates; when set, the
    /// client trusts only these CAs (not the system's roots). Default: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Accept plain `http://` node URLs on non-loopback hosts although `password` or `api_key`
    /// is set (the credential then crosses the network in clear). Default false.
    pub allow_insecure_http: bool,
    /// The most bytes of one answer read (bulk results, errors); a larger answer is an error,
    /// never buffered whole. Default 67108864 (64 MiB).
    pub max_response_bytes: usize,
    /// Name of the composable index template. Default `dns-sensor-hits`.
    pub template_name: String,
    /// Install (overwrite) the template at start. Default true. Needs the
    /// `manage_index_templates` privilege; set false when the cluster's admins manage it.
    pub install_template: bool,
}

impl Default for ElasticSection {
    fn default() -> Self {
        Self {
            urls: vec!["http://127.0.0.1:9200".into()],
            index: "security_check_url-%Y.%m.%d".into(),
            events: EventFilter::Malicious,
            queue_size: 10_000,
            bulk_max_docs: 1000,
            bulk_max_bytes: 5 * 1024 * 1024,
            flush_interval_ms: 1000,
            max_retries: 5,
            retry_initial_ms: 200,
            retry_max_ms: 10_000,
            request_timeout_ms: 30_000,
            username: None,
            password: None,
            api_key: None,
            ca_file: None,
            allow_insecure_http: false,
            max_response_bytes: client::DEFAULT_MAX_RESPONSE_BYTES,
            template_name: "dns-sensor-hits".into(),
            install_template: true,
        }
    }
}

/// The keys `[elasticsearch]` errors name.
const KEYS: client::EsKeys = client::EsKeys {
    urls: "elasticsearch.urls",
    username: "elasticsearch.username",
    password: "elasticsearch.password",
    api_key: "elasticsearch.api_key",
    ca_file: "elasticsearch.ca_file",
};

impl ElasticSection {
    /// The connection settings of [`client::EsClient`]: a connect timeout of at most 10 s
    /// within `request_timeout_ms`.
    pub fn connection(&self) -> client::EsConnection<'_> {
        let timeout = Duration::from_millis(self.request_timeout_ms);
        client::EsConnection {
            urls: &self.urls,
            username: self.username.as_deref(),
            password: self.password.as_ref(),
            api_key: self.api_key.as_ref(),
            ca_file: self.ca_file.as_deref(),
            timeout,
            connect_timeout: Some(timeout.min(Duration::from_secs(10))),
            allow_insecure_http: self.allow_insecure_http,
            max_response_bytes: self.max_response_bytes,
            keys: &KEYS,
        }
    }

    /// Checks what serde cannot: URLs, the index pattern, limits, credentials. Errors name the
    /// key as `elasticsearch.<key>`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        if self.urls.is_empty() {
            return invalid("elasticsearch.urls", "needs at least one node URL".into());
        }
        for u in &self.urls {
            let url = match reqwest::Url::parse(u) {
                Ok(url) => url,
                // The URL itself may hold a password: do not repeat it.
                Err(e) => return invalid("elasticsearch.urls", format!("a URL is invalid: {e}")),
            };
            if !url.username().is_empty() || url.password().is_some() {
                return invalid(
                    "elasticsearch.urls",
                    "credentials in a URL are not allowed (they would end up in logs): use \
                     `username`/`password` or `api_key`"
                        .into(),
                );
            }
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return invalid(
                    "elasticsearch.urls",
                    format!("{u:?} is not http://host:port or https://host:port"),
                );
            }
            if url.query().is_some() || url.fragment().is_some() {
                return invalid(
                    "elasticsearch.urls",
                    format!("{u:?} must not have a query or fragment"),
                );
            }
            if self.password.is_some() || self.api_key.is_some() {
                sensor_model::http::check_url("elasticsearch.urls", u, self.allow_insecure_http)?;
            }
        }
        document::IndexPattern::parse(&self.index).map_err(|message| ConfigError::Invalid {
            key: "elasticsearch.index",
            message,
        })?;
        for (key, v) in [
            ("elasticsearch.queue_size", self.queue_size as u64),
            ("elasticsearch.bulk_max_docs", self.bulk_max_docs as u64),
            ("elasticsearch.bulk_max_bytes", self.bulk_max_bytes as u64),
            ("elasticsearch.flush_interval_ms", self.flush_interval_ms),
            ("elasticsearch.retry_initial_ms", self.retry_initial_ms),
            ("elasticsearch.request_timeout_ms", self.request_timeout_ms),
            (
                "elasticsearch.max_response_bytes",
                self.max_response_bytes as u64,
            ),
        ] {
            if v == 0 {
                return invalid(key, "must be greater than 0".into());
            }
        }
        if self.retry_max_ms < self.retry_initial_ms {
            return invalid(
                "elasticsearch.retry_max_ms",
                "must be at least retry_initial_ms".into(),
            );
        }
        match (&self.username, &self.password, &self.api_key) {
            (Some(_), Some(_), None) | (None, None, _) => {}
            (Some(_), None, _) => {
                return invalid("elasticsearch.password", "required with `username`".into());
            }
            (None, Some(_), _) => {
                return invalid("elasticsearch.username", "required with `password`".into());
            }
            (Some(_), Some(_), Some(_)) => {
                return invalid(
                    "elasticsearch.api_key",
                    "set either `api_key` or `username`/`password`, not both".into(),
                );
            }
        }
        for (key, src) in [
            ("elasticsearch.password", &self.password),
            ("elasticsearch.api_key", &self.api_key),
        ] {
            if let Some(src) = src
                && (src.is_unset() || (src.env.is_some() && src.file.is_some()))
            {
                return invalid(key, "set exactly one of `env` or `file`".into());
            }
        }
        let t = &self.template_name;
        if t.is_empty()
            || t.len() > 255
            || !t
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
        {
            return invalid(
                "elasticsearch.template_name",
                format!("{t:?} must be 1-255 characters of [a-z0-9_.-]"),
            );
        }
        Ok(())
    }
}

/// The sink's counters and gauges. Counters only grow; `in_flight` is every accepted event
/// without a final outcome yet (queued, in a batch, or waiting for a retry).
#[derive(Debug, Default)]
pub struct ElasticCounters {
    pub events_in: AtomicU64,
    pub filtered_out: AtomicU64,
    /// Created by a bulk item (status 201).
    pub indexed: AtomicU64,
    /// A `create` answered 409: a document with this `_id` is already in the index (an earlier
    /// attempt whose answer was lost, or the same event offered twice).
    pub already_indexed: AtomicU64,
    pub in_flight: AtomicU64,
    /// Bulk requests sent (retries included).
    pub bulk_requests: AtomicU64,
    /// Whole-request retries (transport error, 429, 5xx, unreadable answer).
    pub request_retries: AtomicU64,
    /// Items sent again after a partial failure.
    pub item_retries: AtomicU64,
    /// Template install attempts that failed.
    pub template_errors: AtomicU64,
    pub template_installed: AtomicBool,
    /// The last request reached a node and got an answer other than 5xx.
    pub server_up: AtomicBool,
    pub(crate) dropped: crate::sink::Drops,
}

impl ElasticCounters {
    /// Every drop, whatever its stage and reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.total()
    }

    /// Drops by (stage, reason).
    pub fn dropped(&self) -> Vec<((&'static str, String), u64)> {
        self.dropped.snapshot()
    }

    /// Drops with one reason, over every stage.
    pub fn dropped_by_reason(&self, reason: &str) -> u64 {
        self.dropped
            .snapshot()
            .into_iter()
            .filter(|((_, r), _)| r == reason)
            .map(|(_, n)| n)
            .sum()
    }

    /// `events_in - (filtered_out + indexed + already_indexed + dropped + in_flight)`: zero
    /// whenever no event is between two counters (e.g. after `shutdown`, or when idle).
    pub fn imbalance(&self) -> i128 {
        let get = |a: &AtomicU64| i128::from(a.load(Ordering::SeqCst));
        get(&self.events_in)
            - get(&self.filtered_out)
            - get(&self.indexed)
            - get(&self.already_indexed)
            - i128::from(self.dropped_total())
            - get(&self.in_flight)
    }
}

/// Handle of the running sink.
pub struct ElasticSink {
    tx: mpsc::Sender<super::SharedEvent>,
    filter: EventFilter,
    counters: Arc<ElasticCounters>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ElasticSink {
    /// Starts the sink's tasks on the current tokio runtime. Never waits for a server: the
    /// template is installed (and retried) by the worker. Fails only on a config the sink cannot
    /// use (an unreadable secret or CA file, an invalid setting).
    pub fn start(
        cfg: &ElasticSection,
        observer: &str,
        interfaces: &HashMap<u32, String>,
        inventory: Arc<arc_swap::ArcSwap<Inventory>>,
    ) -> Result<Self, SinkError> {
        let config_err = |e: ConfigError| match e {
            ConfigError::Invalid { key, message } => SinkError::Config { key, message },
            other => SinkError::Start {
                sink: "elasticsearch",
                message: other.to_string(),
            },
        };
        cfg.validate().map_err(config_err)?;
        let client = client::EsClient::new(&cfg.connection()).map_err(config_err)?;
        let counters = Arc::new(ElasticCounters::default());
        let (tx, rx) = mpsc::channel(cfg.queue_size);
        let (stop, stop_rx) = watch::channel(false);
        let builder = document::Builder::new(
            observer,
            interfaces,
            document::IndexPattern::parse(&cfg.index).map_err(|message| SinkError::Config {
                key: "elasticsearch.index",
                message,
            })?,
            inventory,
        );
        let w = worker::Worker::new(cfg, client, builder, counters.clone(), stop_rx);
        let task = tokio::spawn(w.run(rx));
        Ok(Self {
            tx,
            filter: cfg.events,
            counters,
            stop,
            task,
        })
    }

    /// Queues an event without waiting; a full queue counts a drop.
    pub fn offer(&self, event: &Enriched) {
        self.offer_shared(&super::Shared::new(event.clone()));
    }

    /// [`Self::offer`] for an event the fan-out shares with the other sinks.
    pub fn offer_shared(&self, shared: &super::SharedEvent) {
        let event = &shared.event;
        let wanted = match self.filter {
            EventFilter::All => true,
            // Alerts: a malicious query, or an answer that is a detection of its own.
            EventFilter::Malicious => event.query.is_alert(event.intel.as_deref()),
        };
        let c = &self.counters;
        super::intake(
            shared,
            wanted,
            &self.tx,
            super::IntakeCounters {
                events_in: &c.events_in,
                filtered_out: &c.filtered_out,
                in_flight: &c.in_flight,
                dropped: &c.dropped,
            },
        );
    }

    /// The counters, for tests and for the caller's own checks.
    pub fn counters(&self) -> Arc<ElasticCounters> {
        self.counters.clone()
    }

    /// Every counter and gauge of the sink, named `elasticsearch_…`.
    pub fn metrics(&self) -> Vec<Metric> {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = vec![
            Metric::counter(
                "elasticsearch_events_in",
                "Events offered to the Elasticsearch sink.",
                get(&c.events_in),
            ),
            Metric::counter(
                "elasticsearch_filtered_out",
                "Events the sink does not write (not malicious, with events = \"malicious\").",
                get(&c.filtered_out),
            ),
            Metric::counter(
                "elasticsearch_indexed",
                "Documents created in Elasticsearch.",
                get(&c.indexed),
            ),
            Metric::counter(
                "elasticsearch_already_indexed",
                "Documents a retry found already indexed (409 on create): not written twice.",
                get(&c.already_indexed),
            ),
            Metric::gauge(
                "elasticsearch_in_flight",
                "Events accepted by the sink without a final outcome yet.",
                get(&c.in_flight) as f64,
            ),
            Metric::gauge(
                "elasticsearch_queued",
                "Events in the sink's queue, waiting for the worker.",
                (self.tx.max_capacity() - self.tx.capacity()) as f64,
            ),
            Metric::counter(
                "elasticsearch_bulk_requests",
                "Bulk requests sent, retries included.",
                get(&c.bulk_requests),
            ),
            Metric::counter(
                "elasticsearch_retries",
                "Retries: whole bulk requests, or the retriable items of a partial failure.",
                get(&c.request_retries),
            )
            .label("kind", "request"),
            Metric::counter(
                "elasticsearch_retries",
                "Retries: whole bulk requests, or the retriable items of a partial failure.",
                get(&c.item_retries),
            )
            .label("kind", "item"),
            Metric::counter(
                "elasticsearch_template_errors",
                "Failed attempts to install the index template.",
                get(&c.template_errors),
            ),
            Metric::gauge(
                "elasticsearch_template_installed",
                "1 once the index template is installed.",
                f64::from(u8::from(c.template_installed.load(Ordering::Relaxed))),
            ),
            Metric::gauge(
                "elasticsearch_server_up",
                "1 when the last request got an answer other than 5xx from a node.",
                f64::from(u8::from(c.server_up.load(Ordering::Relaxed))),
            ),
        ];
        for ((stage, reason), n) in c.dropped.snapshot() {
            out.push(
                Metric::counter(
                    "elasticsearch_dropped",
                    "Events the sink gave up on, by stage and reason.",
                    n,
                )
                .label("stage", stage)
                .label("reason", reason),
            );
        }
        out
    }

    /// Delivers what is queued within `grace`, then counts the rest as dropped (`shutdown`).
    pub async fn shutdown(self, grace: Duration) {
        let Self {
            tx, stop, mut task, ..
        } = self;
        // The worker drains the queue once every sender is gone.
        drop(tx);
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            let _ = stop.send(true);
            // The worker counts what it still holds and returns at its next await point.
            let _ = task.await;
        }
    }
}

impl super::Sink for ElasticSink {
    fn name(&self) -> &'static str {
        "elasticsearch"
    }
    fn offer(&self, event: &super::SharedEvent) {
        self.offer_shared(event);
    }
    fn metrics(&self) -> Vec<Metric> {
        ElasticSink::metrics(self)
    }
    fn shutdown(self: Arc<Self>, grace: Duration) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            match Arc::try_unwrap(self) {
                Ok(sink) => sink.shutdown(grace).await,
                Err(_) => tracing::error!("elasticsearch: still shared at shutdown, not flushed"),
            }
        })
    }
}

#[cfg(test)]
mod tests;
