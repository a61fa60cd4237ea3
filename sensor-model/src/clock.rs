//! Converts the kernel's monotonic timestamps into wall-clock time.
//!
//! One offset (realtime − monotonic) for the whole process, so every sink stamps one event
//! with the same `@timestamp`: the JSON line, the Kafka document and the Elasticsearch hit of a
//! query agree to the nanosecond. Reading the two clocks is not atomic, so each reading of the
//! offset differs by some hundred nanoseconds of jitter; a re-sync only moves the shared offset
//! when it changed by more than [`STEP_NS`] (an NTP step or accumulated slew).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use nix::time::{ClockId, clock_gettime};

/// Offset changes smaller than this are reading jitter, not a clock change.
const STEP_NS: i64 = 1_000_000;

/// realtime − monotonic in ns; 0 until first set (no real clock is at the epoch of boot).
static OFFSET_NS: AtomicI64 = AtomicI64::new(0);

/// Set by [`WallClock::use_capture_time`]: the timestamps are Unix time already (a replayed
/// capture's frame times), so the offset stays 0 and no re-sync moves it.
static CAPTURE_TIME: AtomicBool = AtomicBool::new(false);

#[expect(
    clippy::expect_used,
    reason = "clock_gettime fails only for a clock id the kernel lacks; these two exist on every Linux"
)]
fn ns(id: ClockId) -> i64 {
    let t = clock_gettime(id).expect("CLOCK_REALTIME and CLOCK_MONOTONIC always exist");
    t.tv_sec() * 1_000_000_000 + t.tv_nsec()
}

/// A handle on the process-wide offset.
pub struct WallClock(());

impl WallClock {
    pub fn new() -> Self {
        let c = Self(());
        if !CAPTURE_TIME.load(Ordering::Relaxed) && OFFSET_NS.load(Ordering::Relaxed) == 0 {
            c.resync();
        }
        c
    }

    /// Reads the clocks again; moves the shared offset when the wall clock really changed.
    pub fn resync(&self) {
        if CAPTURE_TIME.load(Ordering::Relaxed) {
            return;
        }
        let mono = ns(ClockId::CLOCK_MONOTONIC);
        let real = ns(ClockId::CLOCK_REALTIME);
        let fresh = real - mono;
        let old = OFFSET_NS.load(Ordering::Relaxed);
        if old == 0 || (fresh - old).abs() > STEP_NS {
            OFFSET_NS.store(fresh, Ordering::Relaxed);
        }
    }

    /// For the whole process: every timestamp handed to [`WallClock::unix_ns`] is already Unix
    /// time in nanoseconds. `sensor replay` stamps each record with its frame's capture time
    /// (the kernel's clock says when the replay ran, not when the packet was seen); with this
    /// every stage that turns a timestamp into a date (the documents, the enricher's first and
    /// last seen, the passive DNS days) uses the capture's time unchanged. Call it before any
    /// stage starts; it is never undone.
    pub fn use_capture_time() {
        CAPTURE_TIME.store(true, Ordering::Relaxed);
        OFFSET_NS.store(0, Ordering::Relaxed);
    }

    /// Unix time in nanoseconds of a `bpf_ktime_get_ns()` value.
    pub fn unix_ns(&self, mono_ns: u64) -> i128 {
        mono_ns as i128 + OFFSET_NS.load(Ordering::Relaxed) as i128
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}
