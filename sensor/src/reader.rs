//! Reads the ring buffer asynchronously and hands decoded queries to the output stage.
//!
//! The reader never waits on the output: when the queue is full the query is dropped and
//! counted (`output_queue_full`), so the ring buffer keeps draining and the kernel never has to
//! drop because userspace stalled behind a slow disk or pipe.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::decode::{self, Query};

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

/// Takes every record currently in the ring buffer.
pub fn drain(
    ring: &mut RingBuf<MapData>,
    tx: &mpsc::Sender<Query>,
    counters: &StageCounters,
) -> usize {
    let mut n = 0;
    while let Some(item) = ring.next() {
        n += 1;
        counters.records_read.fetch_add(1, Ordering::Relaxed);
        let query = decode::record(&item).and_then(|ev| Query::from_event(&ev));
        drop(item);
        match query {
            Ok(q) => {
                if tx.try_send(q).is_err() {
                    counters.output_queue_full.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                counters.decode_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "undecodable ring buffer record");
            }
        }
    }
    n
}

/// Reads until `stop` fires, then returns the ring buffer so the caller can drain what is left
/// after the program has been detached.
pub async fn run(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Query>,
    counters: Arc<StageCounters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<(RingBuf<MapData>, mpsc::Sender<Query>)> {
    #[expect(
        deprecated,
        reason = "tokio 1.54 deprecates AsyncFd::new for fd-by-value types without offering the \
                  replacement yet; the RingBuf owns its fd for the AsyncFd's whole life, so the \
                  I/O-safety concern does not apply"
    )]
    let mut fd = AsyncFd::new(ring)?;
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &tx, &counters);
                guard.clear_ready();
            }
            _ = stop.changed() => break,
        }
    }
    Ok((fd.into_inner(), tx))
}
