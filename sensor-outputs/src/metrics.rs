//! Metrics: every counter of every stage as a snapshot of [`Metric`]s, served as Prometheus text
//! on `/metrics` (and `/healthz`) at `[metrics] listen`.

use std::borrow::Cow;

/// Counter (only grows) or gauge (goes up and down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One sample: a metric name (without the `dns_sensor_` prefix; counters without `_total`),
/// its help text, kind, labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: Cow<'static, str>,
    pub help: Cow<'static, str>,
    pub kind: Kind,
    pub labels: Vec<(Cow<'static, str>, String)>,
    pub value: f64,
}

impl Metric {
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Self {
            name: name.into(),
            help: help.into(),
            kind: Kind::Counter,
            labels: Vec::new(),
            value: value as f64,
        }
    }

    pub fn gauge(name: &'static str, help: &'static str, value: f64) -> Self {
        Self {
            name: name.into(),
            help: help.into(),
            kind: Kind::Gauge,
            labels: Vec::new(),
            value,
        }
    }

    pub fn label(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.labels.push((key.into(), value.into()));
        self
    }
}

use std::{net::SocketAddr, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use serde::Deserialize;

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// `host:port` serving `/metrics` (Prometheus text) and `/healthz`; empty: no endpoint.
    pub listen: String,
    /// Clients (IPs or CIDRs) allowed to connect; empty = any. Others are closed at accept.
    pub allowed_clients: Vec<String>,
    /// `[metrics.limits]`: timeouts and connection caps.
    pub limits: crate::httpd::ServerLimits,
}

impl MetricsSection {
    pub fn address(&self) -> Result<Option<SocketAddr>, sensor_model::error::ConfigError> {
        self.limits.validate("metrics.limits")?;
        sensor_model::error::parse_nets("metrics.allowed_clients", &self.allowed_clients)?;
        if self.listen.is_empty() {
            return Ok(None);
        }
        self.listen
            .parse()
            .map(Some)
            .map_err(|_| sensor_model::error::ConfigError::Invalid {
                key: "metrics.listen",
                message: format!(
                    "{:?} is not host:port (e.g. \"127.0.0.1:9153\")",
                    self.listen
                ),
            })
    }
}

/// One `/healthz` check: `Ok(detail)` when healthy, `Err(why)` when not.
type Check = Box<dyn Fn() -> Result<String, String> + Send + Sync>;

/// What `/healthz` asks: each stage says whether it works, and why not.
#[derive(Default)]
pub struct Health(Vec<(&'static str, Check)>);

impl Health {
    pub fn add(
        &mut self,
        name: &'static str,
        f: impl Fn() -> Result<String, String> + Send + Sync + 'static,
    ) {
        self.0.push((name, Box::new(f)));
    }

    /// Whether every check passed, and one line per check (`name: ok: detail` or
    /// `name: FAILING: why`).
    pub fn report(&self) -> (bool, String) {
        let mut ok = true;
        let mut text = String::new();
        for (name, f) in &self.0 {
            match f() {
                Ok(d) => text.push_str(&format!("{name}: ok: {d}\n")),
                Err(why) => {
                    ok = false;
                    text.push_str(&format!("{name}: FAILING: {why}\n"));
                }
            }
        }
        (ok, text)
    }
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Health({})", self.0.len())
    }
}

type Collect = Box<dyn Fn(&mut Vec<Metric>) + Send + Sync>;

/// Everything that contributes samples, asked on each scrape.
#[derive(Default)]
pub struct Sources(Vec<Collect>);

impl Sources {
    pub fn add(&mut self, f: impl Fn(&mut Vec<Metric>) + Send + Sync + 'static) {
        self.0.push(Box::new(f));
    }

    pub fn snapshot(&self) -> Vec<Metric> {
        let mut out = Vec::new();
        for f in &self.0 {
            f(&mut out);
        }
        out
    }

    /// The Prometheus text exposition (format 0.0.4) of a fresh snapshot, names prefixed
    /// `dns_sensor_`.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::with_prefix("dns_sensor");
        registry.register_collector(Box::new(Snapshot(self.clone())));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
        text
    }
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sources({})", self.0.len())
    }
}

#[derive(Debug)]
struct Snapshot(Arc<Sources>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = self.0.snapshot();
        // One descriptor per name, its samples together, in first-seen order.
        let mut names: Vec<&str> = Vec::new();
        for m in &samples {
            if !names.contains(&m.name.as_ref()) {
                names.push(&m.name);
            }
        }
        for name in names {
            let family: Vec<&Metric> = samples.iter().filter(|m| m.name == name).collect();
            let first = family[0];
            let kind = match first.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut metric = encoder.encode_descriptor(name, &first.help, None, kind)?;
            for m in family {
                let labels: Vec<(&str, &str)> = m
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_ref(), v.as_str()))
                    .collect();
                let sample = metric.encode_family(&labels)?;
                match m.kind {
                    Kind::Counter => ConstCounter::new(m.value).encode(sample)?,
                    Kind::Gauge => ConstGauge::new(m.value).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

/// The `/metrics` and `/healthz` routes. `/healthz` answers 200 when every check of `health`
/// passes and 503 otherwise, one line per check either way.
pub fn router(sources: Arc<Sources>, health: Arc<Health>) -> axum::Router {
    use axum::{Router, http::StatusCode, http::header, routing::get};
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let sources = sources.clone();
                async move {
                    // Collecting reads a pinned map and takes a few locks: off the async threads.
                    let text = tokio::task::spawn_blocking(move || sources.render())
                        .await
                        .unwrap_or_default();
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let health = health.clone();
                async move {
                    let (ok, text) = tokio::task::spawn_blocking(move || health.report())
                        .await
                        .unwrap_or((false, "health checks panicked\n".into()));
                    let status = if ok {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, text)
                }
            }),
        )
}

/// Serves `/metrics` and `/healthz` behind `gate` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gate: Arc<crate::httpd::Gate>,
    sources: Arc<Sources>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    crate::httpd::serve(listener, gate, None, router(sources, health), shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_that_parses() {
        let mut s = Sources::default();
        s.add(|out| {
            out.push(Metric::counter("events", "Events seen.", 42));
            out.push(Metric::counter("drops", "Drops by reason.", 3).label("reason", "queue_full"));
            out.push(
                Metric::counter("drops", "Drops by reason.", 4)
                    .label("reason", "delivery_failed:timeout"),
            );
            out.push(Metric::gauge("cache_hit_ratio", "Hits per lookup.", 0.5));
        });
        let text = Arc::new(s).render();
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let parsed = prometheus_parse::Scrape::parse(lines).unwrap();
        let get = |name: &str, label: Option<&str>| {
            parsed
                .samples
                .iter()
                .find(|x| {
                    x.metric == name && label.is_none_or(|l| x.labels.get("reason") == Some(l))
                })
                .map(|x| match x.value {
                    prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                    _ => f64::NAN,
                })
        };
        assert_eq!(get("dns_sensor_events_total", None), Some(42.0), "{text}");
        assert_eq!(get("dns_sensor_drops_total", Some("queue_full")), Some(3.0));
        assert_eq!(
            get("dns_sensor_drops_total", Some("delivery_failed:timeout")),
            Some(4.0),
            "{text}"
        );
        assert_eq!(get("dns_sensor_cache_hit_ratio", None), Some(0.5));
    }
}
