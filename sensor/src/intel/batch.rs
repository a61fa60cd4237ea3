//! Per-provider request shaping: misses are batched, and calls are limited (concurrency,
//! requests per second, daily quota, timeout) and guarded by a circuit breaker.

use serde::Deserialize;

/// `[intel.<provider>.limits]`: how hard the sensor may call a remote provider. Every limit is
/// enforced before a request is sent, so none is ever exceeded.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Names per request (ThreatBook accepts at most 100).
    pub batch_size: usize,
    /// How long a miss waits for others to join its batch.
    pub batch_window_ms: u64,
    /// Requests in flight at once.
    pub max_concurrency: usize,
    /// Requests started per second (a token bucket with a burst of one second's worth).
    pub requests_per_second: f64,
    /// Requests per day (midnight to midnight, local time of the host); 0 means no limit.
    pub daily_quota: u64,
    /// Every request is abandoned after this long.
    pub timeout_ms: u64,
    /// Consecutive failures (rate limit, server error, timeout, transport) that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one trial request; doubles on each failed trial.
    pub breaker_backoff_ms: u64,
    /// Upper bound for the doubling back-off.
    pub breaker_max_backoff_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            batch_size: 100,
            batch_window_ms: 20,
            max_concurrency: 4,
            requests_per_second: 5.0,
            daily_quota: 0,
            timeout_ms: 5_000,
            breaker_failures: 5,
            breaker_backoff_ms: 10_000,
            breaker_max_backoff_ms: 300_000,
        }
    }
}
