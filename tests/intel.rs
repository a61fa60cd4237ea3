//! The intel path end to end in one process: enrichment stage → verdict cache → batcher →
//! ThreatBook client → the fake ThreatBook server (real HTTP on loopback).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::ArcSwap;
use sensor_common::Transport;
use sensor_intel::{
    batch::{Batcher, Limits},
    cache::{CacheSection, Source, VerdictCache},
    enrich::{EnrichCounters, EnrichSettings, Enricher, HitSink, TrustedEvents},
    inventory::Inventory,
    threatbook::{ThreatBook, ThreatBookSection},
};
use sensor_model::{
    encode::Encoder,
    enriched::Enriched,
    query::Query,
    secret::{Secret, SecretSource},
    verdict::{Assessment, Verdict},
};
use sensor_outputs::alert::{Alerter, AlertsSection, hits::AlertHits};
use sensor_testkit::{
    fake_threatbook::{FakeMode, FakeThreatBook, FakeVerdict},
    fake_wecom::{FakeWeCom, Received},
};
use time::OffsetDateTime;
use tokio::sync::mpsc;

const CANARY: &str = "canary-key-7f3a9c1e";

use sensor_testkit::logs::capture as logs;

#[derive(Default)]
struct Hits(Mutex<Vec<(IpAddr, String, u64)>>);

impl HitSink for Hits {
    fn hit(
        &self,
        client: IpAddr,
        name: &str,
        _qtype: u16,
        a: &Arc<Assessment>,
        _first: OffsetDateTime,
        _last: OffsetDateTime,
        count: u64,
    ) {
        assert_eq!(a.verdict, Verdict::Malicious);
        self.0
            .lock()
            .unwrap()
            .push((client, name.to_owned(), count));
    }
}

fn query(i: usize, name: &str) -> Query {
    Query {
        ts_mono_ns: 1_000_000 + i as u64,
        ifindex: 1,
        vlan_outer: 0,
        vlan_inner: 0,
        src: IpAddr::V4(Ipv4Addr::new(
            10,
            1,
            (i / 250 % 250) as u8,
            (i % 250) as u8 + 1,
        )),
        dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 53)),
        src_port: 40000,
        dst_port: 53,
        transport: Transport::Udp,
        dns_id: i as u16,
        qtype: 1,
        qclass: 1,
        name: name.into(),
        answer: None,
    }
}

fn client_of(name_index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        10,
        9,
        (name_index / 250) as u8,
        (name_index % 250) as u8 + 1,
    ))
}

/// The alerts carried by the webhook requests received so far.
fn alerts_in(reqs: &[Received]) -> Vec<serde_json::Value> {
    reqs.iter()
        .filter_map(|r| r.body.as_ref())
        .flat_map(|b| b["alerts"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn settings(recheck_secs: u64) -> EnrichSettings {
    EnrichSettings {
        trusted_events: TrustedEvents::Drop,
        max_pending_events: 200_000,
        max_wait_ms: 10_000,
        recheck_secs,
        max_deferred_names: 100_000,
    }
}

struct Rig {
    fake: FakeThreatBook,
    verdicts: Arc<VerdictCache>,
    batcher: Batcher<String>,
    hits: Arc<Hits>,
    counters: Arc<EnrichCounters>,
    tx: mpsc::Sender<Query>,
    rx: mpsc::Receiver<Enriched>,
}

async fn rig(limits: Limits, recheck_secs: u64, sink: Option<Arc<dyn HitSink>>) -> Rig {
    logs();
    let fake = FakeThreatBook::start(CANARY).await.unwrap();
    let section = ThreatBookSection {
        base_url: fake.base_url().to_owned(),
        api_key: SecretSource {
            env: Some("UNUSED".into()),
            file: None,
        },
        limits: limits.clone(),
        ..ThreatBookSection::default()
    };
    let client = ThreatBook::new(&section, Secret::new(CANARY)).unwrap();
    let batcher = Batcher::spawn(Arc::new(client), limits);
    let verdicts = Arc::new(VerdictCache::new(
        &CacheSection::default(),
        vec![Source::Remote(batcher.clone())],
    ));
    let hits = Arc::new(Hits::default());
    let counters = Arc::new(EnrichCounters::default());
    let enricher = Enricher {
        settings: settings(recheck_secs),
        trust: None,
        verdicts: Some(verdicts.clone()),
        ip_feeds: None,
        egress: None,
        hits: Some(sink.unwrap_or_else(|| hits.clone())),
        counters: counters.clone(),
    };
    let (tx, in_rx) = mpsc::channel(200_000);
    let (out_tx, rx) = mpsc::channel(200_000);
    tokio::spawn(enricher.run(in_rx, out_tx));
    Rig {
        fake,
        verdicts,
        batcher,
        hits,
        counters,
        tx,
        rx,
    }
}

/// Encodes what came out, as the output stage would, to check the JSON and look for the key.
fn encode_all(events: &[Enriched]) -> String {
    let mut enc = Encoder::new("test", &HashMap::from([(1, "eth0".to_owned())]));
    let mut out = Vec::new();
    for e in events {
        enc.encode(&e.query, e.intel.as_deref(), 0, &mut out);
    }
    String::from_utf8(out).unwrap()
}

async fn take(rx: &mut mpsc::Receiver<Enriched>, n: usize) -> Vec<Enriched> {
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let e = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("events keep flowing")
            .expect("stage running");
        v.push(e);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_events_over_a_thousand_names_make_ten_calls() {
    // A 100 ms window: the tests run unoptimised, where the stage takes far longer than the
    // default 20 ms to see 1,000 new names (the release build does it in about a millisecond).
    let limits = Limits {
        batch_window_ms: 100,
        ..Limits::default()
    };
    // The real alert stage, posting to a generic JSON webhook (the fake's `/json` endpoint).
    let hook = FakeWeCom::start("unused").await;
    let alerts_cfg: AlertsSection = toml::from_str(&format!(
        "suppress_window_secs = 3600\nqueue_size = 20000\n[[webhook]]\nurl = \"{}\"\n",
        hook.json_url()
    ))
    .unwrap();
    let alerter = Alerter::spawn(
        &alerts_cfg,
        Arc::new(ArcSwap::from_pointee(Inventory::default())),
    )
    .unwrap();
    let sink = Arc::new(AlertHits {
        submitter: alerter.submitter(),
        sensor: "test".into(),
    });
    let mut r = rig(limits, 30, Some(sink)).await;
    let names: Vec<String> = (0..1000).map(|i| format!("host{i}.example.com")).collect();
    let bad = |i: usize| i.is_multiple_of(10);
    for (i, n) in names.iter().enumerate() {
        if bad(i) {
            r.fake.set_domain(n, FakeVerdict::malicious("C2"));
        }
    }
    let producer = {
        let tx = r.tx.clone();
        let names = names.clone();
        tokio::spawn(async move {
            for i in 0..100_000 {
                let mut q = query(i, &names[i % 1000]);
                // One client per name, so each malicious name makes one (client, name) pair.
                q.src = client_of(i % 1000);
                tx.send(q).await.unwrap();
            }
        })
    };
    let events = take(&mut r.rx, 100_000).await;
    producer.await.unwrap();

    let mut per_verdict: HashMap<Verdict, usize> = HashMap::new();
    for e in &events {
        let i: usize = e.query.name[4..e.query.name.find('.').unwrap()]
            .parse()
            .unwrap();
        let v = e.intel.as_ref().unwrap().verdict;
        assert_eq!(
            v,
            if bad(i) {
                Verdict::Malicious
            } else {
                Verdict::Clean
            },
            "{}",
            e.query.name
        );
        *per_verdict.entry(v).or_default() += 1;
    }
    assert_eq!(per_verdict[&Verdict::Malicious], 10_000);
    let requests = r.fake.requests();
    assert!(
        requests.len() <= 10,
        "{} intel calls for 1,000 names",
        requests.len()
    );
    assert!(
        requests
            .iter()
            .all(|q| q.resources.len() <= 100 && q.key_ok)
    );
    assert_eq!(
        requests.iter().map(|q| q.resources.len()).sum::<usize>(),
        1000
    );
    assert_eq!(r.verdicts.len().await, 1000);
    assert_eq!(
        r.verdicts
            .counters()
            .lookups
            .load(std::sync::atomic::Ordering::Relaxed),
        1000
    );
    // Every malicious event reaches the alerter, which alerts each pair once and counts the
    // repeats.
    hook.wait_for(Duration::from_secs(120), |reqs| {
        alerts_in(reqs)
            .iter()
            .filter(|a| a["kind"] == "first")
            .count()
            >= 100
    })
    .await;
    let alerts = alerts_in(&hook.received());
    let first: Vec<&serde_json::Value> = alerts.iter().filter(|a| a["kind"] == "first").collect();
    assert_eq!(first.len(), 100, "one alert per malicious name");
    for i in (0..1000).filter(|&i| bad(i)) {
        let a: Vec<_> = first.iter().filter(|a| a["name"] == names[i]).collect();
        assert_eq!(a.len(), 1, "{} alerted {} times", names[i], a.len());
        assert_eq!(a[0]["client"], client_of(i).to_string());
    }
    let stats = alerter.stats();
    assert_eq!(stats.hits_in, 10_000, "{stats:?}");
    assert_eq!(stats.alerts_raised, 100, "{stats:?}");
    assert_eq!(stats.suppressed_repeats, 9_900, "{stats:?}");
    assert_eq!(stats.queue_full_drops, 0, "{stats:?}");
    let json = encode_all(&events[..2000]);
    assert!(json.contains(r#""intel":{"verdict":"malicious","severity":"high","confidence":"high","providers":["threatbook"],"judgments":["C2"]}"#), "{}", &json[..2000]);
    assert!(json.contains(r#""intel":{"verdict":"clean"}"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_down_events_flow_unknown_breaker_stops_calls_and_names_are_checked_after() {
    let limits = Limits {
        breaker_failures: 2,
        breaker_backoff_ms: 500,
        batch_window_ms: 5,
        ..Limits::default()
    };
    let mut r = rig(limits, 1, None).await;
    r.fake
        .set_domain("evil.example.net", FakeVerdict::malicious("Botnet"));
    r.fake.set_mode(FakeMode::ResponseCode(-4));

    // While the provider answers -4: every event still comes out, as `unknown`.
    for round in 0..3 {
        for i in 0..50 {
            let name = if i == 7 {
                "evil.example.net".to_owned()
            } else {
                format!("n{round}-{i}.example.org")
            };
            r.tx.send(query(i, &name)).await.unwrap();
        }
        let events = take(&mut r.rx, 50).await;
        assert!(
            events
                .iter()
                .all(|e| e.intel.as_ref().unwrap().verdict == Verdict::Unknown)
        );
    }
    assert!(r.batcher.is_open(), "the breaker opened");
    let calls_while_open = r.fake.request_count();
    assert!(calls_while_open <= 3, "{calls_while_open} calls");
    // More events while open: no call reaches the provider.
    for i in 0..50 {
        r.tx.send(query(i, &format!("m{i}.example.org")))
            .await
            .unwrap();
    }
    take(&mut r.rx, 50).await;
    assert_eq!(r.fake.request_count(), calls_while_open);

    // The provider recovers: the deferred names are checked, and the malicious one alerts for
    // the client that asked, though its events went out long ago.
    r.fake.set_mode(FakeMode::Normal);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if r.hits
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.1 == "evil.example.net")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no alert after recovery"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hits = r.hits.0.lock().unwrap().clone();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].0, query(7, "").src);
    assert_eq!(
        hits[0].2, 3,
        "asked three times while the provider was down"
    );
    let checked: usize = r.fake.requests()[calls_while_open..]
        .iter()
        .map(|q| {
            q.resources
                .iter()
                .filter(|n| *n == "evil.example.net")
                .count()
        })
        .sum();
    assert!(checked >= 1);
    assert!(
        r.counters
            .rechecks
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert_eq!(
        r.verdicts.get("evil.example.net").await.unwrap().verdict,
        Verdict::Malicious
    );

    // The key appears nowhere: not in logs, not in what was written.
    let logs = String::from_utf8(logs().lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("rate or quota limit"),
        "the -4 answers were logged"
    );
    assert!(!logs.contains(CANARY), "API key in the logs");
    r.tx.send(query(1, "evil.example.net")).await.unwrap();
    let out = take(&mut r.rx, 1).await;
    let json = encode_all(&out);
    assert!(json.contains(r#""verdict":"malicious""#));
    assert!(!json.contains(CANARY));
    for e in out {
        assert!(!format!("{:?}", e.intel).contains(CANARY));
    }
}

/// An answer to a malicious name is not a second alert for the name (its query alerted); an
/// answer whose address is on an IP feed is an alert of its own (the name said nothing), and
/// its document says `alert`.
#[tokio::test]
async fn an_answer_alerts_only_for_an_address_on_an_ip_feed() {
    use sensor_intel::feeds::{FeedConfig, FeedKind, LocalFeeds};
    use sensor_model::{
        response::{Answer, Answered},
        verdict::{Confidence, Severity},
    };
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("c2-ips.txt");
    std::fs::write(&list, "192.0.2.66\n").unwrap();
    let names = dir.path().join("c2-names.txt");
    std::fs::write(&names, "c2.example\n").unwrap();
    let feed = |name: &str, kind, path| FeedConfig {
        name: name.into(),
        kind,
        path,
        severity: Severity::High,
        confidence: Confidence::High,
        reload_interval_ms: 0,
    };
    let feeds = LocalFeeds::load(&[
        feed("c2-ips", FeedKind::Ips, list),
        feed("c2-names", FeedKind::Domains, names),
    ])
    .unwrap();
    let feeds = Arc::new(feeds);
    // As the daemon sets it up (sensor-intel setup): the feeds are the verdict cache's local
    // sources, and the IP feeds are also checked against addresses.
    let verdicts = Arc::new(VerdictCache::new(
        &CacheSection::default(),
        feeds.providers().into_iter().map(Source::Local).collect(),
    ));
    let hits = Arc::new(Hits::default());
    let enricher = Enricher {
        settings: settings(30),
        trust: None,
        verdicts: Some(verdicts),
        ip_feeds: Some(feeds),
        egress: None,
        hits: Some(hits.clone()),
        counters: Arc::new(EnrichCounters::default()),
    };
    let (tx, in_rx) = mpsc::channel(16);
    let (out_tx, mut rx) = mpsc::channel(16);
    tokio::spawn(enricher.run(in_rx, out_tx));
    let answer = |i: usize, name: &str, addr: [u8; 4]| {
        let mut q = query(i, name);
        q.answer = Some(Box::new(Answered {
            flags: 0x8180,
            ancount: 1,
            nscount: 0,
            arcount: 0,
            answers: vec![Answer {
                name: name.into(),
                rtype: 1,
                class: 1,
                ttl: 60,
                data: Ipv4Addr::from(addr).to_string(),
                ip: Some(IpAddr::from(addr)),
            }],
            answers_complete: true,
            duration_ns: Some(1_000),
            detected: false,
        }));
        q
    };
    tx.send(query(1, "fresh.example")).await.unwrap();
    tx.send(answer(1, "fresh.example", [192, 0, 2, 1]))
        .await
        .unwrap();
    tx.send(answer(2, "fresh.example", [192, 0, 2, 66]))
        .await
        .unwrap();
    tx.send(query(3, "c2.example")).await.unwrap();
    tx.send(answer(3, "c2.example", [198, 51, 100, 7]))
        .await
        .unwrap();
    let out = take(&mut rx, 5).await;
    let kinds: Vec<bool> = out
        .iter()
        .map(|e| e.query.is_alert(e.intel.as_deref()))
        .collect();
    assert_eq!(kinds, [false, false, true, true, false]);
    assert!(out[2].query.answer.as_ref().unwrap().detected);
    // The answer to c2.example still carries the verdict, for the analyst.
    assert_eq!(out[4].intel.as_ref().unwrap().verdict, Verdict::Malicious);
    assert_eq!(
        *hits.0.lock().unwrap(),
        [
            (query(2, "x").src, "fresh.example".to_owned(), 1),
            (query(3, "x").src, "c2.example".to_owned(), 1)
        ]
    );
    let lines = encode_all(&out);
    let events: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["event", "event", "alert", "alert", "event"]);
}
