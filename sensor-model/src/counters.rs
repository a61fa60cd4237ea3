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
}

impl StageCounters {
    pub fn snapshot(&self) -> [(&'static str, u64); 5] {
        [
            ("records_read", self.records_read.load(Ordering::Relaxed)),
            ("decode_errors", self.decode_errors.load(Ordering::Relaxed)),
            (
                "output_queue_full",
                self.output_queue_full.load(Ordering::Relaxed),
            ),
            ("written", self.written.load(Ordering::Relaxed)),
            ("write_errors", self.write_errors.load(Ordering::Relaxed)),
        ]
    }
}
