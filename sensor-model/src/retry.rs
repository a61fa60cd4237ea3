//! The one retry policy: exponential back-off, capped, with jitter so that sensors (or
//! destinations) that failed together do not retry together.

use std::{
    hash::{BuildHasher as _, RandomState},
    time::{Duration, Instant},
};

/// Doublings after which the back-off stops growing even below `max` (a factor of about a
/// million), so the shift can never overflow.
const MAX_DOUBLINGS: u32 = 20;

/// `d` scaled by a random factor in [0.5, 1.0).
pub fn jitter(d: Duration) -> Duration {
    let r = RandomState::new().hash_one(Instant::now());
    d.mul_f64(0.5 + (r % 1000) as f64 / 2000.0)
}

/// Exponential back-off: `initial` before the first retry, doubling per retry up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait before retry number `attempt` (1 for the first retry; 0 counts as 1) without
    /// jitter: `initial · 2^(attempt-1)`, at most `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(MAX_DOUBLINGS);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// The wait before retry number `attempt`: [`Self::ceiling`] scaled by [`jitter`], so in
    /// `[ceiling / 2, ceiling)`.
    pub fn delay(&self, attempt: u32) -> Duration {
        jitter(self.ceiling(attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_half_to_whole() {
        let d = Duration::from_millis(1000);
        for _ in 0..1000 {
            let j = jitter(d);
            assert!(j >= d / 2 && j < d, "{j:?}");
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn doubles_from_initial() {
        let b = Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(100),
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(200));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(2), Duration::from_millis(400));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(6), Duration::from_millis(6400));
    }

    #[test]
    fn capped_at_max_and_never_overflows() {
        let b = Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
        };
        assert_eq!(b.ceiling(7), Duration::from_secs(10));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(10));
        let huge = Backoff {
            initial: Duration::MAX,
            max: Duration::MAX,
        };
        assert_eq!(huge.ceiling(50), Duration::MAX);
        // Doubling stops after 20 doublings even below the cap.
        let tiny = Backoff {
            initial: Duration::from_nanos(1),
            max: Duration::MAX,
        };
        assert_eq!(tiny.ceiling(100), Duration::from_nanos(1 << 20));
    }

    #[test]
    fn delay_is_the_jittered_ceiling() {
        let b = Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
        };
        for attempt in 1..10 {
            let c = b.ceiling(attempt);
            for _ in 0..100 {
                let d = b.delay(attempt);
                assert!(d >= c / 2 && d < c, "attempt {attempt}: {d:?} of {c:?}");
            }
        }
    }
}
