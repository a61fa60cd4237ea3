//! Sinks after the enrichment stage: Kafka (every kept event), Elasticsearch (malicious hits)
//! and the JSON-lines output, behind one [`Sink`] trait and a [`Fanout`] over a list of them.
//! Each has its own bounded queue; offering never blocks the pipeline, and every drop is counted
//! with its sink and reason.

pub mod elastic;
pub mod kafka;

/// Why a sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("config key `{key}`: {message}")]
    Config { key: &'static str, message: String },
    #[error("{sink}: {message}")]
    Start { sink: &'static str, message: String },
}

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use sensor_model::enriched::Enriched;
use tokio::sync::mpsc;

use crate::metrics::Metric;

/// What every output is to the fan-out: it takes events without ever waiting (a full queue is
/// a counted drop), reports its own metrics, and delivers what it holds when the sensor stops.
/// Kafka, Elasticsearch and the JSON-lines output implement it; the fan-out holds a list of
/// them and names none.
pub trait Sink: Send + Sync {
    /// Name for logs (`kafka`, `elasticsearch`, `output`).
    fn name(&self) -> &'static str;
    /// Takes one event; never blocks the pipeline.
    fn offer(&self, event: &Enriched);
    /// The sink's metrics (its counters; every drop by stage and reason).
    fn metrics(&self) -> Vec<Metric>;
    /// Delivers what is queued within `grace`, then stops. Called once, after the fan-out has
    /// stopped and the metrics collectors have let go of their handles.
    fn shutdown(self: Arc<Self>, grace: Duration) -> BoxFuture<'static, ()>;
}

/// Hands each enriched event to every sink, in the order given.
pub struct Fanout {
    sinks: Vec<Arc<dyn Sink>>,
}

impl Fanout {
    pub fn new(sinks: Vec<Arc<dyn Sink>>) -> Self {
        Self { sinks }
    }

    /// The sinks, for their metrics collectors.
    pub fn sinks(&self) -> &[Arc<dyn Sink>] {
        &self.sinks
    }

    /// Runs until `rx` closes; returns the sinks for their shutdown.
    pub async fn run(self, mut rx: mpsc::Receiver<Enriched>) -> Self {
        while let Some(e) = rx.recv().await {
            for sink in &self.sinks {
                sink.offer(&e);
            }
        }
        self
    }

    /// Shuts every sink down in order, each within `grace`.
    pub async fn shutdown(self, grace: Duration) {
        for sink in self.sinks {
            let name = sink.name();
            tracing::debug!(sink = name, "stopping");
            sink.shutdown(grace).await;
        }
    }
}

/// A sink's final outcomes other than delivered, by (stage, reason): the labels of its
/// `<sink>_dropped` metric. Reasons given by a server are capped, so a misbehaving one cannot
/// grow the label set without bound.
#[derive(Debug, Default)]
pub(crate) struct Drops(Mutex<BTreeMap<(&'static str, String), u64>>);

/// Distinct reasons kept before further ones are counted as `other`.
pub(crate) const MAX_REASONS: usize = 64;

impl Drops {
    pub(crate) fn add(&self, stage: &'static str, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (stage, reason.to_owned());
        if map.contains_key(&key) || map.len() < MAX_REASONS {
            *map.entry(key).or_default() += n;
        } else {
            *map.entry((stage, "other".into())).or_default() += n;
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<((&'static str, String), u64)> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    pub(crate) fn total(&self) -> u64 {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.values().sum()
    }
}

/// The counters every sink's intake touches.
pub(crate) struct IntakeCounters<'a> {
    pub events_in: &'a AtomicU64,
    pub filtered_out: &'a AtomicU64,
    pub in_flight: &'a AtomicU64,
    pub dropped: &'a Drops,
}

/// A sink's `offer`: counts the event, drops what the sink does not keep (`wanted` false), and
/// queues the rest without waiting; a full or closed queue is a counted drop (stage `queue`).
/// `in_flight` is raised before the send, so the sink's task can never finish an event that
/// is not yet counted in flight.
pub(crate) fn intake(
    event: &Enriched,
    wanted: bool,
    tx: &mpsc::Sender<Enriched>,
    c: IntakeCounters<'_>,
) {
    c.events_in.fetch_add(1, Ordering::Relaxed);
    if !wanted {
        c.filtered_out.fetch_add(1, Ordering::Relaxed);
        return;
    }
    c.in_flight.fetch_add(1, Ordering::SeqCst);
    if let Err(e) = tx.try_send(event.clone()) {
        let reason = match e {
            mpsc::error::TrySendError::Full(_) => "queue_full",
            mpsc::error::TrySendError::Closed(_) => "closed",
        };
        c.dropped.add("queue", reason, 1);
        c.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
