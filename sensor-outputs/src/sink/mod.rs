//! Sinks after the enrichment stage: Kafka (every kept event), Elasticsearch (malicious hits),
//! the passive DNS store (answers) and the JSON-lines output, behind one [`Sink`] trait and a [`Fanout`] over a list of them.
//! Each has its own bounded queue; offering never blocks the pipeline, and every drop is counted
//! with its sink and reason.

pub mod elastic;
pub mod kafka;
pub mod pdns;

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
    pub fn line(&self, encoder: &mut LineEncoder, clock: &WallClock) -> Bytes {
        self.line
            .get_or_init(|| {
                let q = &self.event.query;
                encoder.scratch.clear();
                encoder.encoder.encode(
                    q,
                    self.event.intel.as_deref(),
                    clock.unix_ns(q.ts_mono_ns),
                    &mut encoder.scratch,
                );
                encoder.take_line()
            })
            .clone()
    }
}

/// Bytes of one arena chunk: about fifty lines.
const LINE_CHUNK: usize = 16 * 1024;

/// An [`Encoder`] and the buffers its lines go into. A line is encoded into a reused scratch
/// buffer and copied into a shared chunk that many lines' `Bytes` point into, so an event
/// costs no allocation of its own. Measured: one `Vec` per line (allocated by the encoding
/// thread, freed by another) cost the daemon about 10% more CPU per query in `sensor-bench
/// live` (malloc_consolidate, page faults) than the old writer's reused buffer.
pub struct LineEncoder {
    pub encoder: Encoder,
    scratch: Vec<u8>,
    arena: bytes::BytesMut,
}

impl LineEncoder {
    pub fn new(encoder: Encoder) -> Self {
        Self {
            encoder,
            scratch: Vec::with_capacity(1024),
            arena: bytes::BytesMut::new(),
        }
    }

    /// Calls `f` with the event's line. When no one else holds the event (this is its last
    /// sink, the usual case of a sensor writing JSON lines only) and no sink encoded it yet,
    /// the line is encoded into the reused scratch buffer and never becomes shared `Bytes`:
    /// nothing else can ask for it.
    pub fn with_line<R>(
        &mut self,
        event: &SharedEvent,
        clock: &WallClock,
        f: impl FnOnce(&[u8]) -> R,
    ) -> R {
        if Arc::strong_count(event) == 1 && event.line.get().is_none() {
            let q = &event.event.query;
            self.scratch.clear();
            self.encoder.encode(
                q,
                event.event.intel.as_deref(),
                clock.unix_ns(q.ts_mono_ns),
                &mut self.scratch,
            );
            return f(&self.scratch);
        }
        f(&event.line(self, clock))
    }

    fn take_line(&mut self) -> Bytes {
        let n = self.scratch.len();
        if self.arena.capacity() - self.arena.len() < n {
            // The old chunk lives on while lines in it are still queued somewhere.
            self.arena = bytes::BytesMut::with_capacity(LINE_CHUNK.max(n));
        }
        self.arena.extend_from_slice(&self.scratch);
        self.arena.split().freeze()
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
                answer: None,
            },
            intel: None,
        }
    }

    #[test]
    fn the_last_holder_gets_the_same_line_without_sharing_it() {
        let interfaces = HashMap::from([(1, "eth0".to_owned())]);
        let clock = WallClock::new();
        let mut enc = LineEncoder::new(Encoder::new("s1", &interfaces));
        let alone = Shared::new(query());
        let direct = enc.with_line(&alone, &clock, <[u8]>::to_vec);
        assert!(
            alone.line.get().is_none(),
            "not stored: no one else can ask"
        );
        let held = Shared::new(query());
        let other = held.clone();
        let shared = enc.with_line(&held, &clock, <[u8]>::to_vec);
        assert_eq!(direct, shared);
        assert!(other.line.get().is_some(), "stored for the other holder");
    }

    #[test]
    fn lines_of_one_encoder_share_a_chunk() {
        let interfaces = HashMap::from([(1, "eth0".to_owned())]);
        let clock = WallClock::new();
        let mut enc = LineEncoder::new(Encoder::new("s1", &interfaces));
        let (x, y) = (Shared::new(query()), Shared::new(query()));
        let (a, b) = (x.line(&mut enc, &clock), y.line(&mut enc, &clock));
        // Back to back in one allocation: no allocation of its own per line.
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
        assert_eq!(a, b);
    }

    #[test]
    fn a_line_is_encoded_once_and_shared() {
        let interfaces = HashMap::from([(1, "eth0".to_owned())]);
        let clock = WallClock::new();
        let (mut first, mut second) = (
            LineEncoder::new(Encoder::new("s1", &interfaces)),
            LineEncoder::new(Encoder::new("s1", &interfaces)),
        );
        let shared = Shared::new(query());
        let a = shared.line(&mut first, &clock);
        let b = shared.line(&mut second, &clock);
        // The same buffer, not an equal copy.
        assert_eq!(a.as_ptr(), b.as_ptr());
        let mut direct = Vec::new();
        let q = &shared.event.query;
        first
            .encoder
            .encode(q, None, clock.unix_ns(q.ts_mono_ns), &mut direct);
        assert_eq!(&a[..], &direct[..]);
        assert!(a.ends_with(b"\n"));
    }
}
