//! The intel benchmark (issue "Threat intel, verdict cache ..."): events per second through the
//! trust filter and the verdict cache when every name is cached, and through the whole intel
//! path against the fake ThreatBook at 50 ms latency, beside the seed's design (20 threads, one
//! blocking call per event) on the same events.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use time::OffsetDateTime;
use tokio::sync::mpsc;

use sensor_model::{
    query::Query,
    secret::{Secret, SecretSource},
    verdict::Assessment,
};

use sensor_intel::{
    Provider,
    batch::{Batcher, Limits},
    cache::{CacheSection, Source, VerdictCache},
    egress::{Egress, EgressSection},
    enrich::{EnrichCounters, EnrichSettings, Enricher, HitSink, TrustedEvents},
    feeds::{FeedConfig, FeedKind, LocalFeeds},
    threatbook::{ThreatBook, ThreatBookSection},
    trust::{TrustFilter, TrustSection},
};

use crate::fake_threatbook::{FakeThreatBook, FakeVerdict};

/// Counts hits; the bench measures the stage, not the alerter.
#[derive(Default)]
struct CountHits(AtomicU64);

impl HitSink for CountHits {
    fn hit(
        &self,
        _: IpAddr,
        _: &str,
        _: u16,
        _: &Arc<Assessment>,
        _: OffsetDateTime,
        _: OffsetDateTime,
        count: u64,
    ) {
        self.0.fetch_add(count, Ordering::Relaxed);
    }
}

fn query(i: usize, name: &str) -> Query {
    Query {
        ts_mono_ns: i as u64,
        ifindex: 1,
        vlan_outer: 0,
        vlan_inner: 0,
        src: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i as u32 % 5000))),
        dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 53)),
        src_port: 40000,
        dst_port: 53,
        transport: sensor_common::Transport::Udp,
        dns_id: i as u16,
        qtype: 1,
        qclass: 1,
        name: name.to_owned(),
        answer: None,
    }
}

fn settings() -> EnrichSettings {
    EnrichSettings {
        trusted_events: TrustedEvents::Drop,
        max_pending_events: 1 << 20,
        max_wait_ms: 60_000,
        recheck_secs: 3600,
        max_deferred_names: 100_000,
    }
}

/// Names `n` distinct names, one in ten of them listed as malicious by the caller.
fn names(n: usize) -> Vec<String> {
    (0..n)
        // Not under a special-use zone (`example.com` is one): the egress rules must let them
        // through to the cache, as real names.
        .map(|i| format!("host{i}.corp-{}.bench-site.net", i % 97))
        .collect()
}

/// Result of the cache-hit run.
pub struct HitPath {
    pub events: usize,
    pub seconds: f64,
    pub trusted_entries: usize,
    /// Internal domains of the `[intel.egress]` rules checked per event (`None`: no rules).
    pub egress_internal: Option<usize>,
}

/// Every name cached: trust filter (a list of `trusted_entries` suffixes, none matching) and a
/// cache hit per event, through the enrichment stage on one thread. With `egress_internal`, the
/// `[intel.egress]` rules too: the special-use and reverse zones plus that many internal
/// domains, none matching (the cost every event pays).
pub fn cache_hits(
    events: usize,
    trusted_entries: usize,
    egress_internal: Option<usize>,
) -> anyhow::Result<HitPath> {
    let dir = tempfile::tempdir()?;
    let trust_file = dir.path().join("trusted.txt");
    let mut list = String::with_capacity(trusted_entries * 24);
    for i in 0..trusted_entries {
        list.push_str(&format!("trusted{i}.example.net\n"));
    }
    std::fs::write(&trust_file, list)?;
    let feed_file = dir.path().join("bad.txt");
    let all = names(1000);
    std::fs::write(
        &feed_file,
        all.iter()
            .step_by(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
    )?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let trust = TrustFilter::new(&TrustSection {
            domains: Vec::new(),
            files: vec![trust_file],
            reload_interval_ms: 0,
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let feeds = LocalFeeds::load(&[FeedConfig {
            name: "bench".into(),
            kind: FeedKind::Domains,
            path: feed_file,
            severity: sensor_model::verdict::Severity::High,
            confidence: sensor_model::verdict::Confidence::High,
            reload_interval_ms: 0,
        }])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let verdicts = Arc::new(VerdictCache::new(
            &CacheSection::default(),
            feeds.providers().into_iter().map(Source::Local).collect(),
        ));
        for n in &all {
            verdicts.lookup(n.as_str().into()).await;
        }
        let (tx, rx) = mpsc::channel(events);
        for i in 0..events {
            tx.try_send(query(i, &all[i % all.len()]))?;
        }
        drop(tx);
        let egress = match egress_internal {
            None => None,
            Some(n) => Some(Arc::new(
                Egress::new(
                    &EgressSection {
                        internal_domains: (0..n)
                            .map(|i| format!("corp{i}.internal-bench.cn"))
                            .collect(),
                        ..EgressSection::default()
                    },
                    10_000,
                    8,
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            )),
        };
        let (out_tx, mut out_rx) = mpsc::channel(events);
        let enricher = Enricher {
            settings: settings(),
            trust: Some(Arc::new(trust)),
            verdicts: Some(verdicts),
            ip_feeds: None,
            egress,
            hits: Some(Arc::new(CountHits::default())),
            counters: Arc::new(EnrichCounters::default()),
        };
        let started = Instant::now();
        enricher.run(rx, out_tx).await;
        let seconds = started.elapsed().as_secs_f64();
        let mut out = 0;
        while out_rx.try_recv().is_ok() {
            out += 1;
        }
        anyhow::ensure!(out == events, "{out} of {events} events came out");
        Ok(HitPath {
            events,
            seconds,
            trusted_entries,
            egress_internal,
        })
    })
}

/// Result of the slow-provider comparison.
pub struct SlowProvider {
    pub events: usize,
    pub names: usize,
    pub latency_ms: u64,
    pub sensor_seconds: f64,
    pub sensor_calls: usize,
    pub seed_seconds: f64,
    pub seed_calls: usize,
    pub limits: Limits,
}

const KEY: &str = "bench-key";

/// `events` events over `distinct` names through the intel path with the fake provider
/// answering after `latency`; then the seed's design on the same events.
pub fn slow_provider(
    events: usize,
    distinct: usize,
    latency: Duration,
) -> anyhow::Result<SlowProvider> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let all = names(distinct);
    let list: Vec<Query> = (0..events)
        .map(|i| query(i, &all[(i * 7919) % distinct]))
        .collect();
    let limits = Limits::default();
    rt.block_on(async {
        let fake = FakeThreatBook::start(KEY).await?;
        for n in all.iter().step_by(10) {
            fake.set_domain(n, FakeVerdict::malicious("C2"));
        }
        fake.set_delay(Some(latency));
        let client = Arc::new(client(&fake, &limits)?);
        let base_url = fake.base_url().to_owned();

        // The sensor: batched, cached, limited.
        let verdicts = Arc::new(VerdictCache::new(
            &CacheSection::default(),
            vec![Source::Remote(Batcher::spawn(
                client.clone(),
                limits.clone(),
            ))],
        ));
        let (tx, rx) = mpsc::channel(events);
        let (out_tx, mut out_rx) = mpsc::channel(events);
        let enricher = Enricher {
            settings: settings(),
            trust: None,
            verdicts: Some(verdicts),
            ip_feeds: None,
            egress: None,
            hits: Some(Arc::new(CountHits::default())),
            counters: Arc::new(EnrichCounters::default()),
        };
        let started = Instant::now();
        let stage = tokio::spawn(enricher.run(rx, out_tx));
        for q in &list {
            tx.send(q.clone()).await?;
        }
        drop(tx);
        let mut out = 0;
        while out_rx.recv().await.is_some() {
            out += 1;
        }
        let sensor_seconds = started.elapsed().as_secs_f64();
        stage.await?;
        anyhow::ensure!(out == events, "{out} of {events} events came out");
        let sensor_calls = fake.request_count();
        fake.clear_requests();

        // The seed: 20 threads, each making one blocking call per event.
        let queue = Arc::new(Mutex::new(
            list.iter().map(|q| q.name.clone()).collect::<Vec<_>>(),
        ));
        let started = Instant::now();
        let workers: Vec<_> = (0..20)
            .map(|_| {
                let queue = queue.clone();
                let base_url = base_url.clone();
                let limits = limits.clone();
                std::thread::spawn(move || -> anyhow::Result<usize> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    // One client per thread: connections belong to the runtime that made them.
                    let client = rt.block_on(async { client_at(&base_url, &limits) })?;
                    let mut done = 0;
                    loop {
                        let Some(name) =
                            queue.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop()
                        else {
                            return Ok(done);
                        };
                        rt.block_on(client.lookup_domains(&[name]))?;
                        done += 1;
                    }
                })
            })
            .collect();
        let mut seed_events = 0;
        for w in workers {
            seed_events += w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
        }
        let seed_seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            seed_events == events,
            "seed handled {seed_events} of {events}"
        );
        Ok(SlowProvider {
            events,
            names: distinct,
            latency_ms: latency.as_millis() as u64,
            sensor_seconds,
            sensor_calls,
            seed_seconds,
            seed_calls: fake.request_count(),
            limits,
        })
    })
}

fn client(fake: &FakeThreatBook, limits: &Limits) -> anyhow::Result<ThreatBook> {
    client_at(fake.base_url(), limits)
}

fn client_at(base_url: &str, limits: &Limits) -> anyhow::Result<ThreatBook> {
    let section = ThreatBookSection {
        base_url: base_url.to_owned(),
        api_key: SecretSource {
            env: Some("UNUSED".into()),
            file: None,
        },
        limits: Limits {
            // The seed's calls each wait the full latency; the timeout must not cut them.
            timeout_ms: 60_000,
            ..limits.clone()
        },
        ..ThreatBookSection::default()
    };
    Ok(ThreatBook::new(&section, Secret::new(KEY))?)
}
