//! The verdict cache: one lookup per name per verdict lifetime.
//!
//! Keyed by the normalised name. Malicious, clean and unknown verdicts live for their own
//! configured time; the capacity is bounded (moka evicts by TinyLFU). Concurrent misses for one
//! name share one lookup (moka's `get_with` runs one init future per key), and each remote
//! provider's lookups go through its [`Batcher`], which batches them and enforces its limits.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Deserialize;

use crate::{Provider, batch::Batcher};
use sensor_model::verdict::{Assessment, Finding, Verdict};

/// `[intel.cache]`: verdict lifetimes and capacity.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// Names held at most; the least useful are evicted first.
    pub capacity: u64,
    /// Lifetime of a malicious verdict.
    pub malicious_ttl_secs: u64,
    /// Lifetime of a clean verdict.
    pub clean_ttl_secs: u64,
    /// Lifetime of an unknown verdict (a provider failed or was not called): short, so the name
    /// is looked up again soon.
    pub unknown_ttl_secs: u64,
}

impl Default for CacheSection {
    fn default() -> Self {
        Self {
            capacity: 1_000_000,
            malicious_ttl_secs: 86_400,
            clean_ttl_secs: 21_600,
            unknown_ttl_secs: 60,
        }
    }
}

/// Counters of the cache.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Lookups actually run (one per name per lifetime, however many events asked).
    pub lookups: AtomicU64,
    pub malicious: AtomicU64,
    pub clean: AtomicU64,
    pub unknown: AtomicU64,
}

impl CacheCounters {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("hits", get(&self.hits)),
            ("misses", get(&self.misses)),
            ("lookups", get(&self.lookups)),
            ("verdicts_malicious", get(&self.malicious)),
            ("verdicts_clean", get(&self.clean)),
            ("verdicts_unknown", get(&self.unknown)),
        ]
    }
}

struct Lifetimes {
    malicious: Duration,
    clean: Duration,
    unknown: Duration,
}

impl moka::Expiry<Arc<str>, Arc<Assessment>> for Lifetimes {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Arc<Assessment>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(match value.verdict {
            Verdict::Malicious => self.malicious,
            Verdict::Clean | Verdict::Trusted => self.clean,
            Verdict::Unknown | Verdict::NotLookedUp => self.unknown,
        })
    }

    /// A replaced entry (a re-check of an unknown name) gets its new verdict's lifetime.
    fn expire_after_update(
        &self,
        key: &Arc<str>,
        value: &Arc<Assessment>,
        now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, now)
    }
}

/// Where a name is looked up: local providers directly, remote ones through their batcher.
#[derive(Clone)]
pub enum Source {
    Local(Arc<dyn Provider>),
    Remote(Batcher<String>),
}

impl Source {
    pub fn name(&self) -> String {
        match self {
            Self::Local(p) => p.name().to_owned(),
            Self::Remote(b) => b.provider_name().to_owned(),
        }
    }
}

/// Verdicts by name, looked up on a miss.
pub struct VerdictCache {
    cache: moka::future::Cache<Arc<str>, Arc<Assessment>>,
    sources: Arc<[Source]>,
    /// The local sources alone, for names that must not leave the building.
    local: Arc<[Source]>,
    counters: Arc<CacheCounters>,
}

impl VerdictCache {
    pub fn new(cfg: &CacheSection, sources: Vec<Source>) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(cfg.capacity)
            .expire_after(Lifetimes {
                malicious: Duration::from_secs(cfg.malicious_ttl_secs),
                clean: Duration::from_secs(cfg.clean_ttl_secs),
                unknown: Duration::from_secs(cfg.unknown_ttl_secs),
            })
            .build();
        let local: Vec<Source> = sources
            .iter()
            .filter(|s| matches!(s, Source::Local(_)))
            .cloned()
            .collect();
        Self {
            cache,
            sources: sources.into(),
            local: local.into(),
            counters: Arc::default(),
        }
    }

    pub fn counters(&self) -> &Arc<CacheCounters> {
        &self.counters
    }

    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// The cached verdict, if any (the hot path: no lookup, no allocation).
    pub async fn get(&self, name: &str) -> Option<Arc<Assessment>> {
        let hit = self.cache.get(name).await;
        let c = if hit.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        c.fetch_add(1, Ordering::Relaxed);
        hit
    }

    /// The cached verdict, if any, without counting a hit or a miss (for consumers beside the
    /// enrichment stage, whose lookups would skew the cache's hit rate).
    pub async fn peek(&self, name: &str) -> Option<Arc<Assessment>> {
        self.cache.get(name).await
    }

    /// The verdict for `name`, looked up when it is not cached. Concurrent calls for one name
    /// make one lookup.
    pub async fn lookup(&self, name: Arc<str>) -> Arc<Assessment> {
        let sources = self.sources.clone();
        let counters = self.counters.clone();
        let key = name.clone();
        self.cache
            .get_with(key, async move {
                counters.lookups.fetch_add(1, Ordering::Relaxed);
                let a = Arc::new(assess(&sources, &name).await);
                match a.verdict {
                    Verdict::Malicious => &counters.malicious,
                    Verdict::Clean | Verdict::Trusted => &counters.clean,
                    Verdict::Unknown | Verdict::NotLookedUp => &counters.unknown,
                }
                .fetch_add(1, Ordering::Relaxed);
                a
            })
            .await
    }

    /// What the local feeds say about `name`, without asking any remote provider and without
    /// caching: for names that must not leave the building. `Some` when a feed lists it.
    pub async fn lookup_local(&self, name: &str) -> Option<Assessment> {
        if self.local.is_empty() {
            return None;
        }
        let a = assess(&self.local, &Arc::from(name)).await;
        (a.verdict == Verdict::Malicious).then_some(a)
    }

    /// Looks `name` up again now, replacing what is cached (a re-check of an unknown verdict).
    pub async fn recheck(&self, name: Arc<str>) -> Arc<Assessment> {
        self.cache.invalidate(&name).await;
        self.lookup(name).await
    }

    /// Forgets every verdict (a local feed changed).
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }

    /// Names cached now, for metrics. Blocks while moka applies pending writes: call it from
    /// a blocking thread (the metrics collectors run on one).
    pub fn entry_count_blocking(&self) -> u64 {
        futures::executor::block_on(self.cache.run_pending_tasks());
        self.cache.entry_count()
    }

    /// Names cached now (approximate: moka applies writes lazily).
    pub async fn len(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }

    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }
}

/// Asks every source about `name` and combines: malicious if any says so; clean if all
/// answered; unknown otherwise.
async fn assess(sources: &[Source], name: &Arc<str>) -> Assessment {
    let asks = sources.iter().map(|s| async move {
        match s {
            Source::Local(p) => {
                let names = [name.to_string()];
                p.lookup_domains(&names)
                    .await
                    .map(|mut a| a.remove(name.as_ref()))
            }
            Source::Remote(b) => b.lookup(name.to_string()).await,
        }
    });
    let answers = futures::future::join_all(asks).await;
    let mut findings: Vec<Finding> = Vec::new();
    let mut errors = Vec::new();
    for answer in answers {
        match answer {
            Ok(Some(f)) if f.malicious => findings.push(f),
            Ok(_) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    let verdict = if !findings.is_empty() {
        Verdict::Malicious
    } else if errors.is_empty() {
        Verdict::Clean
    } else {
        Verdict::Unknown
    };
    Assessment {
        verdict,
        findings,
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Limits, tests::Scripted};

    fn cache(p: &Arc<Scripted>, limits: Limits) -> VerdictCache {
        VerdictCache::new(
            &CacheSection::default(),
            vec![Source::Remote(Batcher::spawn(p.clone(), limits))],
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_lookup_per_name_and_misses_batched() {
        let p = Arc::new(Scripted::default());
        let c = Arc::new(cache(
            &p,
            Limits {
                requests_per_second: 1000.0,
                // Generous: 100,000 tasks start unoptimised on a busy machine before the last
                // of the 1,000 names is asked.
                batch_window_ms: 500,
                ..Limits::default()
            },
        ));
        // 100,000 events over 1,000 names, all asked at once.
        let names: Vec<Arc<str>> = (0..1000)
            .map(|i| {
                Arc::from(format!(
                    "{}{i}.example",
                    if i % 10 == 0 { "bad" } else { "ok" }
                ))
            })
            .collect();
        let asks = (0..100_000).map(|i| {
            let c = c.clone();
            let n = names[i % 1000].clone();
            tokio::spawn(async move { c.lookup(n).await })
        });
        let verdicts = futures::future::join_all(asks).await;
        for (i, v) in verdicts.into_iter().enumerate() {
            let v = v.unwrap();
            let want = if (i % 1000) % 10 == 0 {
                Verdict::Malicious
            } else {
                Verdict::Clean
            };
            assert_eq!(v.verdict, want, "event {i}");
        }
        let calls = p.calls.lock().unwrap().len();
        assert!(calls <= 10, "{calls} calls for 1,000 names");
        assert_eq!(c.counters().lookups.load(Ordering::Relaxed), 1000);
        assert_eq!(c.len().await, 1000);
        // Now every event is a hit, and no call is made.
        for n in &names {
            assert!(c.get(n).await.is_some());
        }
        assert_eq!(p.calls.lock().unwrap().len(), calls);
    }

    #[tokio::test]
    async fn a_failed_lookup_is_unknown_and_rechecked() {
        let p = Arc::new(Scripted::default());
        p.mode.store(1, Ordering::SeqCst);
        let c = cache(
            &p,
            Limits {
                batch_window_ms: 1,
                ..Limits::default()
            },
        );
        let a = c.lookup("bad.example".into()).await;
        assert_eq!(a.verdict, Verdict::Unknown);
        assert_eq!(a.errors.len(), 1);
        assert!(a.errors[0].contains("server error"), "{:?}", a.errors);
        // Cached as unknown: no new call until it is re-checked.
        assert_eq!(
            c.get("bad.example").await.unwrap().verdict,
            Verdict::Unknown
        );
        p.mode.store(0, Ordering::SeqCst);
        let a = c.recheck("bad.example".into()).await;
        assert_eq!(a.verdict, Verdict::Malicious);
        assert_eq!(a.findings[0].judgments, ["C2"]);
        assert_eq!(p.calls.lock().unwrap().len(), 2);
    }
}
