//! Sinks after the enrichment stage: Kafka (every kept event) and Elasticsearch (malicious
//! hits). Each has its own bounded queue; offering never blocks the pipeline, and every drop is
//! counted with its sink and reason.

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
};

use tokio::sync::mpsc;

use crate::enrich::Enriched;

/// Hands each enriched event to every configured sink, then to the JSON-lines output.
pub struct Fanout {
    /// Shared with the metrics collectors; `run` takes them back for the shutdown.
    pub kafka: Option<Arc<kafka::KafkaSink>>,
    pub elastic: Option<Arc<elastic::ElasticSink>>,
    /// Events the JSON-lines output could not take (its queue was full).
    pub output_queue_full: Arc<AtomicU64>,
}

impl Fanout {
    /// Runs until `rx` closes; returns the sinks for their shutdown.
    pub async fn run(
        self,
        mut rx: mpsc::Receiver<Enriched>,
        output: Option<mpsc::Sender<Enriched>>,
    ) -> Self {
        while let Some(e) = rx.recv().await {
            if let Some(k) = &self.kafka {
                k.offer(&e);
            }
            if let Some(es) = &self.elastic {
                es.offer(&e);
            }
            if let Some(out) = &output
                && out.try_send(e).is_err()
            {
                self.output_queue_full.fetch_add(1, Ordering::Relaxed);
            }
        }
        self
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
