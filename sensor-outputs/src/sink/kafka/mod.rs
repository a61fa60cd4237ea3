//! Kafka sink: every kept event as one ECS JSON document (the JSON line of [`Encoder`] without
//! its newline), keyed by the client IP, produced with librdkafka (rdkafka).
//!
//! Parts: [`config`] (`[kafka]`), [`producer`] (the producer task, librdkafka's delivery reports,
//! the health check), [`spool`] (the optional on-disk spool).
//!
//! Stages and their bounds: `offer` never waits. It counts the event, filters it by verdict, and
//! puts it on a bounded channel (`queue_size`; full → dropped `queue/queue_full`). The producer
//! task encodes it and hands it to librdkafka, whose queue holds `producer_queue_size` messages
//! (batching, in flight, waiting out a broker outage). When that queue stays full for
//! `queue_full_retry_ms`, the event goes to the spool (when configured), else it is dropped
//! (`producer/queue_full`). A message that librdkafka fails (its `message_timeout_ms` ran out
//! while the broker was down, or the sink shut down) goes to the spool too, unless the error
//! is permanent (e.g. the message is too large, or authorization failed): then it is dropped,
//! counted as `delivery/delivery_failed:<librdkafka error code>`. A full spool drops with
//! `spool/spool_full`. While the spool holds records, new events are appended behind them, and
//! the records are replayed in order whenever the brokers answer and librdkafka has room.
//!
//! At every moment
//! `events_in + spool_recovered = filtered_out + delivered + dropped + in_flight + spool_pending`
//! (`spool_recovered`: records found in the spool at start; `in_flight`: in the channel, the
//! producer task or librdkafka). After `shutdown` `in_flight` is 0. [`KafkaCounters::imbalance`]
//! computes the difference.
//!
//! [`Encoder`]: sensor_model::encode::Encoder

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub mod config;
#[cfg(feature = "kafka")]
mod producer;
#[cfg(feature = "kafka")]
mod sink;
pub mod spool;

pub use config::{Acks, Compression, EventFilter, KafkaSection, SpoolSection};

/// The sink's counters and gauges. Counters only grow.
#[derive(Debug, Default)]
pub struct KafkaCounters {
    /// Events offered to the sink.
    pub events_in: AtomicU64,
    /// Events whose verdict `events` does not keep.
    pub filtered_out: AtomicU64,
    /// Messages the brokers acknowledged (replayed ones included).
    pub delivered: AtomicU64,
    /// Records appended to the spool (a record can be appended again if its replay fails).
    pub spooled: AtomicU64,
    /// Records read from the spool and handed to librdkafka.
    pub replayed: AtomicU64,
    /// Records found in the spool at start (left by an earlier run).
    pub spool_recovered: AtomicU64,
    /// Gauge: events accepted and without a final outcome, not in the spool.
    pub in_flight: AtomicU64,
    /// Gauge: records in the spool not yet replayed.
    pub spool_pending: AtomicU64,
    /// Gauge: bytes of the spool's segment files.
    pub spool_bytes: AtomicU64,
    /// Spool writes that failed (I/O errors; the event is counted `spool/spool_error`).
    pub spool_errors: AtomicU64,
    /// Gauge: the last health check or delivery reached the brokers and found the topic.
    pub broker_up: AtomicBool,
    pub(crate) dropped: crate::sink::Drops,
}

impl KafkaCounters {
    /// Every drop, whatever its stage and reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.total()
    }

    /// Drops by (stage, reason).
    pub fn dropped(&self) -> Vec<((&'static str, String), u64)> {
        self.dropped.snapshot()
    }

    /// `events_in + spool_recovered - (filtered_out + delivered + dropped + in_flight +
    /// spool_pending)`: zero whenever no event is between two counters (idle, or after
    /// `shutdown`).
    pub fn imbalance(&self) -> i128 {
        let get = |a: &AtomicU64| i128::from(a.load(Ordering::SeqCst));
        get(&self.events_in) + get(&self.spool_recovered)
            - get(&self.filtered_out)
            - get(&self.delivered)
            - i128::from(self.dropped_total())
            - get(&self.in_flight)
            - get(&self.spool_pending)
    }
}

#[cfg(feature = "kafka")]
pub use sink::KafkaSink;

#[cfg(test)]
#[cfg(feature = "kafka")]
mod tests;
