//! Counters of the path from the ring buffer to the JSON-lines output, shared by the reader
//! (kernel crate) and the writer (outputs crate), reported as one metric family.

use std::sync::atomic::{AtomicU64, Ordering};

/// Userspace counters of the reader and output stages.
#[derive(Debug, Default)]
pub struct StageCounters {
    /// Records taken from the ring buffer.
    pub records_read: AtomicU64,
    /// Records that did not decode (counted, logged at debug level).
    pub decode_errors: AtomicU64,
    /// Queries dropped because the output queue was full.
    pub output_queue_full: AtomicU64,
    /// JSON lines written.
    pub written: AtomicU64,
    /// JSON lines that could not be written (I/O error), counted by the output stage.
    pub write_errors: AtomicU64,
    /// Responses paired with their query (their documents carry `event.duration`).
    pub responses_paired: AtomicU64,
    /// Responses to a query the sensor did not see (reported without a duration).
    pub responses_unpaired: AtomicU64,
    /// Queries that got no response within `capture.response_timeout`.
    pub queries_unanswered: AtomicU64,
    /// Queries not remembered for pairing because the table was full.
    pub pairing_full: AtomicU64,
}

impl StageCounters {
    pub fn snapshot(&self) -> [(&'static str, u64); 9] {
        [
            ("records_read", self.records_read.load(Ordering::Relaxed)),
            ("decode_errors", self.decode_errors.load(Ordering::Relaxed)),
            (
                "output_queue_full",
                self.output_queue_full.load(Ordering::Relaxed),
            ),
            ("written", self.written.load(Ordering::Relaxed)),
            ("write_errors", self.write_errors.load(Ordering::Relaxed)),
            (
                "responses_paired",
                self.responses_paired.load(Ordering::Relaxed),
            ),
            (
                "responses_unpaired",
                self.responses_unpaired.load(Ordering::Relaxed),
            ),
            (
                "queries_unanswered",
                self.queries_unanswered.load(Ordering::Relaxed),
            ),
            ("pairing_full", self.pairing_full.load(Ordering::Relaxed)),
        ]
    }
}
