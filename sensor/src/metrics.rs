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
