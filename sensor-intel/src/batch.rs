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
    /// Requests per day; 0 means no limit. Counted from the sensor's start (a restart starts
    /// counting again; the provider's own quota answer then opens the breaker). Default 10000:
    /// stated rather than unlimited, so the per-client budget (`[intel.egress]`) has a quota to
    /// be a share of; set it to the quota of your ThreatBook contract.
    pub daily_quota: u64,
    /// The provider's time zone as hours east of UTC: its day, and so its quota, turns at its
    /// midnight (ThreatBook: China Standard Time, +8).
    pub quota_utc_offset_hours: i8,
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
            daily_quota: 10_000,
            quota_utc_offset_hours: 8,
            timeout_ms: 5_000,
            breaker_failures: 5,
            breaker_backoff_ms: 10_000,
            breaker_max_backoff_ms: 300_000,
        }
    }
}

use std::{
    collections::VecDeque,
    hash::Hash,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use tokio::{
    sync::{Semaphore, mpsc, oneshot},
    time::Instant,
};

use crate::{Answers, LookupError, Provider};
use sensor_model::verdict::Finding;

/// Something a provider can be asked about: a domain name or an IP address.
pub trait Indicator: Clone + Eq + Hash + Send + Sync + 'static {
    fn call<'a>(
        provider: &'a dyn Provider,
        items: &'a [Self],
    ) -> BoxFuture<'a, Result<Answers<Self>, LookupError>>;
}

impl Indicator for String {
    fn call<'a>(
        provider: &'a dyn Provider,
        items: &'a [Self],
    ) -> BoxFuture<'a, Result<Answers<Self>, LookupError>> {
        provider.lookup_domains(items)
    }
}

impl Indicator for IpAddr {
    fn call<'a>(
        provider: &'a dyn Provider,
        items: &'a [Self],
    ) -> BoxFuture<'a, Result<Answers<Self>, LookupError>> {
        provider.lookup_ips(items)
    }
}

/// One provider's answer about one indicator: `None` when it knows nothing of it.
pub type Reply = Result<Option<Finding>, LookupError>;

struct Request<K> {
    item: K,
    reply: oneshot::Sender<Reply>,
}

/// Counters of one batcher.
#[derive(Debug, Default)]
pub struct BatchCounters {
    /// Requests sent to the provider.
    pub calls: AtomicU64,
    /// Indicators carried by those requests.
    pub items: AtomicU64,
    /// Largest batch sent.
    pub max_batch: AtomicU64,
    /// Failed requests, indexed like [`REASONS`].
    pub errors: [AtomicU64; REASONS.len()],
    /// Times the breaker opened.
    pub breaker_opened: AtomicU64,
    /// Indicators answered `circuit_open` without a call.
    pub rejected_circuit_open: AtomicU64,
    /// Indicators answered `rate_limited` because the daily quota was used up.
    pub rejected_quota: AtomicU64,
    /// Requests in flight now, and the most ever.
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
}

/// Labels of [`BatchCounters::errors`], as [`LookupError::reason`] gives them.
pub const REASONS: [&str; 8] = [
    "access",
    "request",
    "rate_limited",
    "server",
    "timeout",
    "transport",
    "protocol",
    "circuit_open",
];

impl BatchCounters {
    fn error(&self, e: &LookupError) {
        if let Some(i) = REASONS.iter().position(|r| *r == e.reason()) {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every counter with its name, for logs and metrics.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut v = vec![
            ("calls".to_owned(), get(&self.calls)),
            ("items".to_owned(), get(&self.items)),
            ("max_batch".to_owned(), get(&self.max_batch)),
            ("breaker_opened".to_owned(), get(&self.breaker_opened)),
            (
                "rejected_circuit_open".to_owned(),
                get(&self.rejected_circuit_open),
            ),
            ("rejected_quota".to_owned(), get(&self.rejected_quota)),
            ("max_in_flight".to_owned(), get(&self.max_in_flight)),
        ];
        for (r, c) in REASONS.iter().zip(&self.errors) {
            v.push((format!("errors_{r}"), get(c)));
        }
        v
    }
}

/// Batches lookups of one kind of indicator for one remote provider and sends them within the
/// configured limits. Cheap to clone; the task ends when every clone is dropped.
pub struct Batcher<K> {
    tx: mpsc::Sender<Request<K>>,
    provider: String,
    counters: Arc<BatchCounters>,
    breaker: Arc<Mutex<Breaker>>,
}

impl<K> Clone for Batcher<K> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            provider: self.provider.clone(),
            counters: self.counters.clone(),
            breaker: self.breaker.clone(),
        }
    }
}

impl<K: Indicator> Batcher<K> {
    /// Starts the batching task on the current tokio runtime.
    pub fn spawn(provider: Arc<dyn Provider>, limits: Limits) -> Self {
        let (tx, rx) = mpsc::channel(limits.batch_size.max(1) * 64);
        let counters = Arc::new(BatchCounters::default());
        let breaker = Arc::new(Mutex::new(Breaker::new(&limits)));
        let name = provider.name().to_owned();
        tokio::spawn(run(rx, provider, limits, counters.clone(), breaker.clone()));
        Self {
            tx,
            provider: name,
            counters,
            breaker,
        }
    }

    /// Asks the provider about `item`, in a batch with whatever else is asked meanwhile.
    pub async fn lookup(&self, item: K) -> Reply {
        let (reply, rx) = oneshot::channel();
        let gone = || LookupError::Protocol {
            provider: self.provider.clone(),
            message: "lookup task stopped".into(),
        };
        self.tx
            .send(Request { item, reply })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    pub fn provider_name(&self) -> &str {
        &self.provider
    }

    pub fn counters(&self) -> &Arc<BatchCounters> {
        &self.counters
    }

    /// True while the breaker refuses calls: open with its back-off running, or half-open with
    /// its trial in flight. Once the back-off has ended it is false: the next call is the trial.
    pub fn is_open(&self) -> bool {
        self.breaker
            .lock()
            .map(|b| !b.would_admit(Instant::now()))
            .unwrap_or(false)
    }
}

async fn run<K: Indicator>(
    mut rx: mpsc::Receiver<Request<K>>,
    provider: Arc<dyn Provider>,
    limits: Limits,
    counters: Arc<BatchCounters>,
    breaker: Arc<Mutex<Breaker>>,
) {
    let batch_size = limits.batch_size.clamp(1, provider.max_batch().max(1));
    let window = Duration::from_millis(limits.batch_window_ms);
    let timeout = Duration::from_millis(limits.timeout_ms.max(1));
    let permits = Arc::new(Semaphore::new(limits.max_concurrency.max(1)));
    let mut rate = RateGate::new(limits.requests_per_second);
    let mut quota = Quota::new(limits.daily_quota);
    let name = provider.name().to_owned();
    let mut open = true;
    while open {
        let Some(first) = rx.recv().await else { break };
        let mut batch = vec![first];
        let deadline = Instant::now() + window;
        while batch.len() < batch_size {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => batch.push(r),
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        // Wait for a concurrency slot and a rate token; names arriving meanwhile join this
        // batch while it has room (they would wait anyway), the rest fill the next one.
        let permit = {
            let wait = async {
                let permit = permits.clone().acquire_owned().await.ok();
                if breaker
                    .lock()
                    .map(|b| b.would_admit(Instant::now()))
                    .unwrap_or(true)
                {
                    rate.wait().await;
                }
                permit
            };
            let mut wait = std::pin::pin!(wait);
            loop {
                tokio::select! {
                    biased;
                    permit = &mut wait => break permit,
                    r = rx.recv(), if open && batch.len() < batch_size => match r {
                        Some(r) => batch.push(r),
                        None => open = false,
                    },
                }
            }
        };
        let Some(permit) = permit else { break };
        // The breaker may have opened while this batch waited: ask it now, just before the call.
        let admitted = breaker
            .lock()
            .map(|mut b| b.admit(Instant::now()))
            .unwrap_or(true);
        let refusal = if !admitted {
            counters
                .rejected_circuit_open
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            Some(LookupError::CircuitOpen {
                provider: name.clone(),
            })
        } else if !quota.try_take(time::OffsetDateTime::now_utc(), limits_offset(&limits)) {
            counters
                .rejected_quota
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            // No call is made: hand the trial back so the breaker does not stay half-open.
            if let Ok(mut b) = breaker.lock() {
                b.cancel_trial();
            }
            Some(LookupError::RateLimited {
                provider: name.clone(),
                message: format!("daily quota of {} requests used up", limits.daily_quota),
            })
        } else {
            None
        };
        if let Some(err) = refusal {
            for r in batch {
                let _ = r.reply.send(Err(err.clone()));
            }
            continue;
        }
        // De-duplicate: the verdict cache coalesces concurrent misses, but other callers may not.
        let mut items: Vec<K> = Vec::with_capacity(batch.len());
        for r in &batch {
            if !items.contains(&r.item) {
                items.push(r.item.clone());
            }
        }
        let provider = provider.clone();
        let counters = counters.clone();
        let breaker = breaker.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let _permit = permit;
            counters.calls.fetch_add(1, Ordering::Relaxed);
            counters
                .items
                .fetch_add(items.len() as u64, Ordering::Relaxed);
            counters
                .max_batch
                .fetch_max(items.len() as u64, Ordering::Relaxed);
            let now = counters.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            counters.max_in_flight.fetch_max(now, Ordering::Relaxed);
            let result =
                match tokio::time::timeout(timeout, K::call(provider.as_ref(), &items)).await {
                    Ok(r) => r,
                    Err(_) => Err(LookupError::Timeout {
                        provider: name.clone(),
                        millis: timeout.as_millis() as u64,
                    }),
                };
            counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            if let Ok(mut b) = breaker.lock() {
                let opened = b.record(&result, Instant::now());
                if opened {
                    counters.breaker_opened.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        provider = %name,
                        backoff_ms = b.backoff.as_millis() as u64,
                        "circuit breaker open: not calling the provider until the back-off ends"
                    );
                }
            }
            match result {
                Ok(mut answers) => {
                    for r in batch {
                        let _ = r.reply.send(Ok(answers.remove(&r.item)));
                    }
                }
                Err(e) => {
                    counters.error(&e);
                    if matches!(e, LookupError::Access { .. }) {
                        tracing::error!(provider = %name, error = %e, "the provider refuses our key or address: fix the account; calls are paused");
                    } else {
                        tracing::warn!(provider = %name, error = %e, items = batch.len(), "lookup failed");
                    }
                    for r in batch {
                        let _ = r.reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

fn limits_offset(limits: &Limits) -> i64 {
    i64::from(limits.quota_utc_offset_hours) * 3600
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One trial request is in flight; everything else is refused until it ends.
    HalfOpen,
}

/// Opens after `breaker_failures` consecutive failures; after the back-off one trial request
/// goes through: success closes it, failure reopens it with twice the back-off.
#[derive(Debug)]
struct Breaker {
    state: BreakerState,
    threshold: u32,
    base: Duration,
    max: Duration,
    backoff: Duration,
}

impl Breaker {
    fn new(limits: &Limits) -> Self {
        let base = Duration::from_millis(limits.breaker_backoff_ms.max(1));
        Self {
            state: BreakerState::Closed { failures: 0 },
            threshold: limits.breaker_failures.max(1),
            base,
            max: Duration::from_millis(limits.breaker_max_backoff_ms).max(base),
            backoff: base,
        }
    }

    /// Would [`Breaker::admit`] let a call through now? Changes nothing.
    fn would_admit(&self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } => now >= until,
            BreakerState::HalfOpen => false,
        }
    }

    /// Lets a call through, or not. An open breaker whose back-off has ended lets exactly one
    /// trial through and refuses everything else until that trial is recorded.
    fn admit(&mut self, now: Instant) -> bool {
        let ok = self.would_admit(now);
        if ok && matches!(self.state, BreakerState::Open { .. }) {
            self.state = BreakerState::HalfOpen;
        }
        ok
    }

    /// Undoes an admitted trial that was not sent after all.
    fn cancel_trial(&mut self) {
        if self.state == BreakerState::HalfOpen {
            self.state = BreakerState::Open {
                until: Instant::now(),
            };
        }
    }

    /// Records a call's outcome; true when this opened the breaker.
    fn record<T>(&mut self, result: &Result<T, LookupError>, now: Instant) -> bool {
        let failed = match result {
            Ok(_) => false,
            Err(e) => e.trips_breaker() || matches!(e, LookupError::Access { .. }),
        };
        let access = matches!(result, Err(LookupError::Access { .. }));
        match (self.state, failed) {
            (_, false) => {
                self.state = BreakerState::Closed { failures: 0 };
                self.backoff = self.base;
                false
            }
            (BreakerState::Closed { failures }, true) => {
                let failures = failures + 1;
                if failures >= self.threshold || access {
                    if access {
                        self.backoff = self.max;
                    }
                    self.state = BreakerState::Open {
                        until: now + self.backoff,
                    };
                    true
                } else {
                    self.state = BreakerState::Closed { failures };
                    false
                }
            }
            (BreakerState::HalfOpen, true) => {
                self.backoff = if access {
                    self.max
                } else {
                    (self.backoff * 2).min(self.max)
                };
                self.state = BreakerState::Open {
                    until: now + self.backoff,
                };
                true
            }
            // A call admitted before the breaker opened failed too: it stays open as it is.
            (BreakerState::Open { .. }, true) => false,
        }
    }
}

/// At most `n` request starts in any one-second window (`n` = floor of the rate, at least 1);
/// below one per second, starts are spaced by `1 / rate`.
struct RateGate {
    per_window: usize,
    window: Duration,
    starts: VecDeque<Instant>,
}

impl RateGate {
    fn new(rps: f64) -> Self {
        let (per_window, window) = if rps >= 1.0 {
            (rps.floor() as usize, Duration::from_secs(1))
        } else {
            (1, Duration::from_secs_f64(1.0 / rps.max(1e-6)))
        };
        Self {
            per_window,
            window,
            starts: VecDeque::with_capacity(per_window),
        }
    }

    async fn wait(&mut self) {
        if self.starts.len() >= self.per_window {
            let oldest = self.starts[self.starts.len() - self.per_window];
            tokio::time::sleep_until(oldest + self.window).await;
        }
        self.starts.push_back(Instant::now());
        while self.starts.len() > self.per_window {
            self.starts.pop_front();
        }
    }
}

/// Requests per provider day. The day turns at midnight in the provider's time zone
/// (`quota_utc_offset_hours`), which is when its quota resets, not the host's.
struct Quota {
    limit: u64,
    day: i64,
    used: u64,
}

impl Quota {
    fn new(limit: u64) -> Self {
        Self {
            limit,
            day: i64::MIN,
            used: 0,
        }
    }

    fn try_take(&mut self, now: time::OffsetDateTime, offset_secs: i64) -> bool {
        if self.limit == 0 {
            return true;
        }
        let day = (now.unix_timestamp() + offset_secs).div_euclid(86_400);
        if day != self.day {
            self.day = day;
            self.used = 0;
        }
        if self.used >= self.limit {
            return false;
        }
        self.used += 1;
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::AtomicI64;

    use super::*;
    use sensor_model::verdict::{Confidence, Severity};

    /// An in-process provider for the batcher's own tests: answers from a rule, records calls.
    #[derive(Debug, Default)]
    pub(crate) struct Scripted {
        pub calls: Mutex<Vec<(Instant, usize)>>,
        /// 0 ok, 1 server error, 2 access error.
        pub mode: AtomicI64,
        pub delay_ms: AtomicU64,
        pub in_flight: AtomicU64,
        pub max_in_flight: AtomicU64,
    }

    impl Provider for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }
        fn max_batch(&self) -> usize {
            100
        }
        fn lookup_domains<'a>(
            &'a self,
            names: &'a [String],
        ) -> BoxFuture<'a, Result<Answers<String>, LookupError>> {
            Box::pin(async move {
                self.calls
                    .lock()
                    .unwrap()
                    .push((Instant::now(), names.len()));
                let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                self.max_in_flight.fetch_max(n, Ordering::SeqCst);
                // Decrements when the call ends or is abandoned (a timeout drops this future).
                struct Leave<'a>(&'a AtomicU64);
                impl Drop for Leave<'_> {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _leave = Leave(&self.in_flight);
                let delay = self.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                match self.mode.load(Ordering::SeqCst) {
                    1 => {
                        return Err(LookupError::Server {
                            provider: "scripted".into(),
                            message: "boom".into(),
                        });
                    }
                    2 => {
                        return Err(LookupError::Access {
                            provider: "scripted".into(),
                            message: "bad key".into(),
                        });
                    }
                    _ => {}
                }
                Ok(names
                    .iter()
                    .filter(|n| n.starts_with("bad"))
                    .map(|n| (n.clone(), finding(n)))
                    .collect())
            })
        }
        fn lookup_ips<'a>(
            &'a self,
            _ips: &'a [IpAddr],
        ) -> BoxFuture<'a, Result<Answers<IpAddr>, LookupError>> {
            Box::pin(async { Ok(Answers::new()) })
        }
    }

    pub(crate) fn finding(name: &str) -> Finding {
        Finding {
            provider: "scripted".into(),
            malicious: true,
            severity: Some(Severity::High),
            confidence: Some(Confidence::High),
            judgments: vec!["C2".into()],
            tags: vec![name.into()],
            permalink: None,
            ip_context: None,
        }
    }

    fn limits() -> Limits {
        Limits {
            requests_per_second: 1000.0,
            ..Limits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn misses_are_batched_up_to_the_batch_size() {
        let p = Arc::new(Scripted::default());
        let b = Batcher::<String>::spawn(p.clone(), limits());
        let asks = (0..250).map(|i| {
            let b = b.clone();
            async move {
                b.lookup(format!("{}{i}", if i % 2 == 0 { "bad" } else { "ok" }))
                    .await
            }
        });
        let replies = futures::future::join_all(asks).await;
        for (i, r) in replies.iter().enumerate() {
            assert_eq!(r.as_ref().unwrap().is_some(), i % 2 == 0, "reply {i}");
        }
        let calls = p.calls.lock().unwrap();
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert!(calls.iter().all(|&(_, n)| n <= 100));
        assert_eq!(calls.iter().map(|c| c.1).sum::<usize>(), 250);
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_requests_per_second_than_the_limit() {
        let p = Arc::new(Scripted::default());
        let b = Batcher::<String>::spawn(
            p.clone(),
            Limits {
                batch_size: 1,
                requests_per_second: 5.0,
                ..Limits::default()
            },
        );
        let asks = (0..40).map(|i| {
            let b = b.clone();
            async move { b.lookup(format!("n{i}")).await }
        });
        futures::future::join_all(asks).await;
        let calls = p.calls.lock().unwrap();
        assert_eq!(calls.len(), 40);
        for (i, &(t, _)) in calls.iter().enumerate() {
            let in_window = calls[i..]
                .iter()
                .take_while(|&&(u, _)| u < t + Duration::from_secs(1))
                .count();
            assert!(in_window <= 5, "{in_window} calls within 1 s from call {i}");
        }
        // And the limit is used, not over-throttled: 40 calls at 5/s take about 8 s.
        let span = calls.last().unwrap().0 - calls[0].0;
        assert!(span < Duration::from_secs(9), "{span:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_cap_and_timeout_hold() {
        let p = Arc::new(Scripted::default());
        p.delay_ms.store(800, Ordering::SeqCst);
        let b = Batcher::<String>::spawn(
            p.clone(),
            Limits {
                batch_size: 1,
                max_concurrency: 2,
                timeout_ms: 500,
                breaker_failures: 1000,
                ..limits()
            },
        );
        let asks = (0..10).map(|i| {
            let b = b.clone();
            async move { b.lookup(format!("n{i}")).await }
        });
        let replies = futures::future::join_all(asks).await;
        assert!(
            replies
                .iter()
                .all(|r| matches!(r, Err(LookupError::Timeout { .. })))
        );
        assert_eq!(p.max_in_flight.load(Ordering::SeqCst), 2);
        assert_eq!(b.counters().errors[4].load(Ordering::Relaxed), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_stops_calls_then_trials_and_closes() {
        let p = Arc::new(Scripted::default());
        p.mode.store(1, Ordering::SeqCst);
        let b = Batcher::<String>::spawn(
            p.clone(),
            Limits {
                batch_size: 1,
                breaker_failures: 3,
                breaker_backoff_ms: 10_000,
                ..limits()
            },
        );
        for i in 0..3 {
            assert!(matches!(
                b.lookup(format!("n{i}")).await,
                Err(LookupError::Server { .. })
            ));
        }
        assert!(b.is_open());
        for i in 0..20 {
            assert!(matches!(
                b.lookup(format!("m{i}")).await,
                Err(LookupError::CircuitOpen { .. })
            ));
        }
        assert_eq!(p.calls.lock().unwrap().len(), 3, "no call while open");
        // After the back-off one trial goes through; it fails, so the back-off doubles.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(
            b.lookup("t1".into()).await,
            Err(LookupError::Server { .. })
        ));
        assert_eq!(p.calls.lock().unwrap().len(), 4);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(
            b.lookup("t2".into()).await,
            Err(LookupError::CircuitOpen { .. })
        ));
        // The provider recovers; the next trial succeeds and closes the breaker.
        p.mode.store(0, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.lookup("bad-x".into()).await.unwrap().is_some());
        assert!(!b.is_open());
        assert!(b.lookup("ok".into()).await.unwrap().is_none());
        assert_eq!(b.counters().breaker_opened.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn access_refusal_opens_the_breaker_at_once() {
        let p = Arc::new(Scripted::default());
        p.mode.store(2, Ordering::SeqCst);
        let b = Batcher::<String>::spawn(
            p.clone(),
            Limits {
                batch_size: 1,
                ..limits()
            },
        );
        assert!(matches!(
            b.lookup("a".into()).await,
            Err(LookupError::Access { .. })
        ));
        assert!(matches!(
            b.lookup("b".into()).await,
            Err(LookupError::CircuitOpen { .. })
        ));
        assert_eq!(p.calls.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn daily_quota_is_never_exceeded() {
        let p = Arc::new(Scripted::default());
        let b = Batcher::<String>::spawn(
            p.clone(),
            Limits {
                batch_size: 1,
                daily_quota: 3,
                ..limits()
            },
        );
        for i in 0..3 {
            assert!(b.lookup(format!("n{i}")).await.is_ok());
        }
        for i in 0..5 {
            assert!(matches!(
                b.lookup(format!("x{i}")).await,
                Err(LookupError::RateLimited { .. })
            ));
        }
        assert_eq!(p.calls.lock().unwrap().len(), 3);
        assert_eq!(b.counters().rejected_quota.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn quota_day_turns_at_the_providers_midnight() {
        let mut q = Quota::new(1);
        let t = |s: i64| time::OffsetDateTime::from_unix_timestamp(s).unwrap();
        // 2026-11-24 15:59:59 UTC is 23:59:59 in UTC+8; one second later a new day starts there.
        let before = 1_795_535_999;
        assert!(q.try_take(t(before), 8 * 3600));
        assert!(!q.try_take(t(before), 8 * 3600));
        assert!(q.try_take(t(before + 1), 8 * 3600));
    }
}
