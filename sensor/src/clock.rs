//! Converts the kernel's monotonic timestamps into wall-clock time.

use nix::time::{ClockId, clock_gettime};

/// Wall clock = monotonic timestamp + (realtime − monotonic), the offset re-read on `resync` so
/// that NTP steps show up in later events.
pub struct WallClock {
    offset_ns: i128,
}

fn ns(id: ClockId) -> i128 {
    let t = clock_gettime(id).expect("CLOCK_REALTIME and CLOCK_MONOTONIC always exist");
    t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128
}

impl WallClock {
    pub fn new() -> Self {
        let mut c = Self { offset_ns: 0 };
        c.resync();
        c
    }

    pub fn resync(&mut self) {
        let mono = ns(ClockId::CLOCK_MONOTONIC);
        let real = ns(ClockId::CLOCK_REALTIME);
        self.offset_ns = real - mono;
    }

    /// Unix time in nanoseconds of a `bpf_ktime_get_ns()` value.
    pub fn unix_ns(&self, mono_ns: u64) -> i128 {
        mono_ns as i128 + self.offset_ns
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}
