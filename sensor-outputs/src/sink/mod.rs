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
    sync::OnceLock,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures::future::BoxFuture;
use sensor_model::{clock::WallClock, encode::Encoder, enriched::Enriched};
use tokio::sync::mpsc;

use crate::metrics::Metric;

/// One event as the fan-out hands it to every sink: shared (each sink's queue holds a pointer,
/// not a copy), with its ECS JSON line encoded at most once, by the first sink that writes it,
/// and handed to the others as the same bytes.
#[derive(Debug)]
pub struct Shared {
    pub event: Enriched,
    line: OnceLock<Bytes>,
}

/// What the sinks' queues hold.
pub type SharedEvent = Arc<Shared>;

impl Shared {
    pub fn new(event: Enriched) -> SharedEvent {
        Arc::new(Self {
            event,
            line: OnceLock::new(),
        })
    }

    /// The event's JSON line, newline included, as [`Encoder`] writes it. Every sink's encoder
    /// is built from the same observer and interface names (the pipeline's), so which sink
    /// encodes first does not change the bytes; `clock` is the process-wide wall clock.
    pub fn line(&self, encoder: &mut Encoder, clock: &WallClock) -> Bytes {
        self.line
            .get_or_init(|| {
                let q = &self.event.query;
                let mut out = Vec::with_capacity(512);
                encoder.encode(
                    q,
                    self.event.intel.as_deref(),
                    clock.unix_ns(q.ts_mono_ns),
                    &mut out,
                );
                Bytes::from(out)
            })
            .clone()
    }
}

/// What every output is to the fan-out: it takes events without ever waiting (a full queue is
/// a counted drop), reports its own metrics, and delivers what it holds when the sensor stops.
/// Kafka, Elasticsearch and the JSON-lines output implement it; the fan-out holds a list of
/// them and names none.
pub trait Sink: Send + Sync {
    /// Name for logs (`kafka`, `elasticsearch`, `output`).
    fn name(&self) -> &'static str;
    /// Takes one event; never blocks the pipeline.
    fn offer(&self, event: &SharedEvent);
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
            let shared = Shared::new(e);
            for sink in &self.sinks {
                sink.offer(&shared);
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
    event: &SharedEvent,
    wanted: bool,
    tx: &mpsc::Sender<SharedEvent>,
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

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, net::IpAddr};

    use sensor_model::query::Query;

    use super::*;

    fn query() -> Enriched {
        Enriched {
            query: Query {
                ts_mono_ns: 5,
                ifindex: 1,
                vlan_outer: 0,
                vlan_inner: 0,
                src: IpAddr::from([10, 0, 0, 1]),
                dst: IpAddr::from([10, 0, 0, 53]),
                src_port: 40000,
                dst_port: 53,
                transport: sensor_common::Transport::Udp,
                dns_id: 7,
                qtype: 1,
                qclass: 1,
                name: "www.example.com".into(),
            },
            intel: None,
        }
    }

    #[test]
    fn a_line_is_encoded_once_and_shared() {
        let interfaces = HashMap::from([(1, "eth0".to_owned())]);
        let clock = WallClock::new();
        let (mut first, mut second) = (
            Encoder::new("s1", &interfaces),
            Encoder::new("s1", &interfaces),
        );
        let shared = Shared::new(query());
        let a = shared.line(&mut first, &clock);
        let b = shared.line(&mut second, &clock);
        // The same buffer, not an equal copy.
        assert_eq!(a.as_ptr(), b.as_ptr());
        let mut direct = Vec::new();
        let q = &shared.event.query;
        first.encode(q, None, clock.unix_ns(q.ts_mono_ns), &mut direct);
        assert_eq!(&a[..], &direct[..]);
        assert!(a.ends_with(b"\n"));
    }
}
