//! The EDL's failed-authentication throttle: an address that fails Basic auth `limit` times
//! within `window` has its connections closed at accept for `window`, so guessing the password
//! costs the guesser time and costs the server one accept per try, not a request each.
//!
//! Why at accept: a refused connection never reaches TLS or HTTP parsing, which is what keeps a
//! failed-auth flood from taking the CPU the capture needs. Each failure is logged at info (the
//! throttle bounds them to `limit` per address per window) and the start of a throttle at warn.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Addresses tracked at most; beyond it, stale records are dropped first, and if none is stale
/// new addresses are not tracked (counted in `untracked`) rather than letting the map grow.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    since: Instant,
    count: u32,
    blocked_until: Option<Instant>,
}

/// Failed authentications per client address.
#[derive(Debug)]
pub struct AuthThrottle {
    limit: u32,
    window: Duration,
    map: Mutex<HashMap<IpAddr, Failures>>,
    /// Throttles started.
    pub throttled: AtomicU64,
    /// Failures not tracked because the map was full.
    pub untracked: AtomicU64,
}

impl AuthThrottle {
    /// `limit` failures within `window` throttle the address for `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit: limit.max(1),
            window,
            map: Mutex::new(HashMap::new()),
            throttled: AtomicU64::new(0),
            untracked: AtomicU64::new(0),
        }
    }

    /// Whether connections from `ip` are refused now.
    pub fn is_throttled(&self, ip: IpAddr) -> bool {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip.to_canonical())
            .and_then(|f| f.blocked_until)
            .is_some_and(|until| Instant::now() < until)
    }

    /// Records a failed authentication from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let ip = ip.to_canonical();
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            let window = self.window;
            map.retain(|_, f| {
                now.duration_since(f.since) < window || f.blocked_until.is_some_and(|u| now < u)
            });
            if map.len() >= MAX_TRACKED {
                self.untracked.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let f = map.entry(ip).or_insert(Failures {
            since: now,
            count: 0,
            blocked_until: None,
        });
        if now.duration_since(f.since) >= self.window {
            *f = Failures {
                since: now,
                count: 0,
                blocked_until: None,
            };
        }
        f.count += 1;
        tracing::info!(client = %ip, failures = f.count, "EDL request with missing or wrong credentials");
        if f.count >= self.limit && f.blocked_until.is_none() {
            f.blocked_until = Some(now + self.window);
            self.throttled.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                client = %ip,
                failures = f.count,
                refused_for_secs = self.window.as_secs(),
                "EDL: repeated failed authentication; refusing this address's connections"
            );
        }
    }

    /// Forgets `ip`'s failures (it authenticated).
    pub fn succeeded(&self, ip: IpAddr) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&ip.to_canonical());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_th_failure_throttles_for_the_window_and_success_forgets() {
        let t = AuthThrottle::new(3, Duration::from_millis(200));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        t.failed(a);
        t.failed(a);
        assert!(!t.is_throttled(a));
        t.failed(a);
        assert!(t.is_throttled(a));
        assert!(
            t.is_throttled("::ffff:10.0.0.1".parse().unwrap()),
            "mapped v6 is the same client"
        );
        assert!(!t.is_throttled(b));
        assert_eq!(t.throttled.load(Ordering::Relaxed), 1);
        std::thread::sleep(Duration::from_millis(250));
        assert!(!t.is_throttled(a), "the throttle ends");
        t.failed(b);
        t.succeeded(b);
        t.failed(b);
        t.failed(b);
        assert!(!t.is_throttled(b), "a success resets the count");
    }
}
