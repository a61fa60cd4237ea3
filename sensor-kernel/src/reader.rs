//! Drains the ring buffer on a short timer and hands decoded queries and responses to the
//! output stage.
//!
//! The reader never waits on the output: when the queue is full the query is dropped and
//! counted (`output_queue_full`), so the ring buffer keeps draining and the kernel never has to
//! drop because userspace stalled behind a slow disk or pipe.

use std::sync::{Arc, atomic::Ordering};

use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc;

use sensor_model::counters::StageCounters;

use crate::{
    decode,
    pairing::{Paired, Pairing},
};

use sensor_model::{query::Query, response::Response};

/// Which clock a record's timestamp is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stamp {
    /// The kernel's own (`ts_mono_ns` as the program wrote it); unanswered queries expire by
    /// CLOCK_MONOTONIC now. The daemon.
    Kernel,
    /// Every record in the ring is from one frame of a capture, seen at this Unix time in
    /// nanoseconds: it replaces the kernel's timestamp (which only says when the replay ran),
    /// and pairing's clock is the capture's, so response times and the unanswered timeout
    /// are what they were on the wire. `sensor replay`.
    Capture(u64),
}

/// Takes every record currently in the ring buffer: queries go on as they are, responses
/// paired with their query (see [`Pairing`]) and turned into the client-side view.
pub fn drain(
    ring: &mut RingBuf<MapData>,
    tx: &mpsc::Sender<Query>,
    counters: &StageCounters,
    pairing: &mut Pairing,
) -> usize {
    drain_stamped(ring, tx, counters, pairing, Stamp::Kernel)
}

/// [`drain`] with the timestamps of `stamp`.
pub fn drain_stamped(
    ring: &mut RingBuf<MapData>,
    tx: &mpsc::Sender<Query>,
    counters: &StageCounters,
    pairing: &mut Pairing,
    stamp: Stamp,
) -> usize {
    // In capture time the frame's moment is known before its records are read: queries older
    // than the timeout at that moment were unanswered when this frame arrived, as they would
    // have been live (where the reader expires them on its timer before the response comes).
    let capture_ns = match stamp {
        Stamp::Kernel => None,
        Stamp::Capture(ns) => {
            pairing.expire(ns);
            Some(ns)
        }
    };
    let restamp = |mut q: Query| {
        if let Some(ns) = capture_ns {
            q.ts_mono_ns = ns;
        }
        q
    };
    let mut n = 0;
    while let Some(item) = ring.next() {
        n += 1;
        counters.records_read.fetch_add(1, Ordering::Relaxed);
        let record = decode::any(&item);
        drop(item);
        let event = match record {
            Ok(decode::Record::Query(ev)) => Query::from_event(&ev)
                .map(restamp)
                .inspect(|q| pairing.query(q)),
            Ok(decode::Record::Response { head, info, msg }) => {
                Response::from_parts(&head, &info, &msg).map(|r| {
                    let view = restamp(r.into_query(None));
                    match pairing.response(&view) {
                        Paired::Answered(ns) => with_duration(view, ns),
                        Paired::Unpaired => view,
                    }
                })
            }
            Err(e) => Err(e),
        };
        match event {
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
    if capture_ns.is_none() {
        pairing.expire(mono_ns());
    }
    let c = pairing.take_counts();
    for (counter, v) in [
        (&counters.responses_paired, c.paired),
        (&counters.responses_unpaired, c.unpaired),
        (&counters.queries_unanswered, c.unanswered),
        (&counters.pairing_full, c.full),
    ] {
        if v > 0 {
            counter.fetch_add(v, Ordering::Relaxed);
        }
    }
    n
}

fn with_duration(mut q: Query, ns: u64) -> Query {
    if let Some(a) = q.answer.as_mut() {
        a.duration_ns = Some(ns);
    }
    q
}

/// CLOCK_MONOTONIC, the clock of the kernel's timestamps (`bpf_ktime_get_ns` and the coarse
/// clock both count from boot, excluding suspend).
fn mono_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000) + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// How often the ring buffer is drained. The XDP program submits without wakeups (a wakeup
/// per record costs more than the rest of the path), so this bounds the delay of an event.
/// The ring holds about 26,000 records: at 400,000 queries/s that is 65 ms, far above this.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(5);

/// Drains every [`POLL_INTERVAL`] until `stop` fires, then returns the ring buffer so the
/// caller can drain what is left after the program has been detached.
pub async fn run(
    mut ring: RingBuf<MapData>,
    tx: mpsc::Sender<Query>,
    counters: Arc<StageCounters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<(RingBuf<MapData>, mpsc::Sender<Query>)> {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pairing = Pairing::new(
        std::time::Duration::from_secs(5),
        crate::pairing::DEFAULT_CAPACITY,
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {
                drain(&mut ring, &tx, &counters, &mut pairing);
            }
            _ = stop.changed() => break,
        }
    }
    Ok((ring, tx))
}
