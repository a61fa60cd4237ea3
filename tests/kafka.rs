//! The Kafka sink against a real broker (tansu, installed by `cargo xtask setup --test-deps`;
//! these tests fail, never skip, when it is missing): exact documents and keys, a 30 s broker
//! outage at 5,000 events/s, the spool across an outage and across a restart of the sink, and a
//! start while the broker is down. Every test checks that the counters add up.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use sensor_model::{
    clock::WallClock,
    encode::Encoder,
    enriched::Enriched,
    verdict::{Assessment, Verdict},
};

use sensor_outputs::sink::kafka::{
    EventFilter, KafkaCounters, KafkaSection, KafkaSink, SpoolSection,
};

use sensor_testkit::{
    tansu,
    tansu::{Record, Storage, Tansu},
};

fn interfaces() -> HashMap<u32, String> {
    HashMap::from([(1, "eth0".to_owned())])
}

fn start(cfg: &KafkaSection) -> KafkaSink {
    KafkaSink::start(cfg, "sensor-test", &interfaces(), Arc::default()).expect("sink starts")
}

fn section(t: &Tansu, topic: &str) -> KafkaSection {
    KafkaSection {
        brokers: vec![t.bootstrap()],
        topic: topic.into(),
        ..Default::default()
    }
}

/// The `host<i>.example.com` numbers in what was read, with duplicates counted.
fn numbers(records: &[Record]) -> (HashSet<u64>, usize) {
    let mut seen = HashSet::new();
    let mut dups = 0;
    for r in records {
        let doc: serde_json::Value = serde_json::from_slice(&r.payload).expect("JSON document");
        let name = doc["dns"]["question"]["name"].as_str().expect("name");
        let i: u64 = name
            .strip_prefix("host")
            .and_then(|s| s.strip_suffix(".example.com"))
            .and_then(|s| s.parse().ok())
            .expect("a test name");
        if !seen.insert(i) {
            dups += 1;
        }
    }
    (seen, dups)
}

/// Waits until every accepted event has a final outcome or is in the spool.
async fn settle(c: &KafkaCounters, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while c.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn dropped_summary(c: &KafkaCounters) -> String {
    format!(
        "in {} filtered {} delivered {} dropped {:?} in_flight {} spooled {} replayed {} \
         pending {} recovered {}",
        c.events_in.load(Ordering::SeqCst),
        c.filtered_out.load(Ordering::SeqCst),
        c.delivered.load(Ordering::SeqCst),
        c.dropped(),
        c.in_flight.load(Ordering::SeqCst),
        c.spooled.load(Ordering::SeqCst),
        c.replayed.load(Ordering::SeqCst),
        c.spool_pending.load(Ordering::SeqCst),
        c.spool_recovered.load(Ordering::SeqCst),
    )
}

/// (a) Documents are the encoder's JSON lines without the newline, byte for byte, keyed by the
/// client IP; the verdict filter applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_land_exactly_as_encoded() {
    let t = Tansu::start(Storage::Memory);
    t.create_topic("dns", 3).await;
    let cfg = KafkaSection {
        events: EventFilter::NOT_CLEAN,
        ..section(&t, "dns")
    };
    let sink = start(&cfg);
    let c = sink.counters();
    let verdict = |i: u64| match i % 4 {
        0 => None,
        1 => Some(Verdict::Clean),
        2 => Some(Verdict::Unknown),
        _ => Some(Verdict::Malicious),
    };
    let events: Vec<Enriched> = (0..200u64)
        .map(|i| {
            let mut e = tansu::event(i);
            e.intel = verdict(i).map(|v| {
                Arc::new(Assessment {
                    verdict: v,
                    findings: Vec::new(),
                    errors: Vec::new(),
                })
            });
            e
        })
        .collect();
    for e in &events {
        sink.offer(e);
    }
    wait_for("delivery", Duration::from_secs(30), || {
        c.delivered.load(Ordering::SeqCst) >= 150
    })
    .await;
    sink.shutdown(Duration::from_secs(5)).await;
    assert_eq!(c.imbalance(), 0, "{}", dropped_summary(&c));
    assert_eq!(c.filtered_out.load(Ordering::SeqCst), 50);
    assert_eq!(c.delivered.load(Ordering::SeqCst), 150);
    assert_eq!(c.dropped_total(), 0);

    let got = tokio::task::spawn_blocking({
        let reader = t.reader("dns");
        move || reader.read(150, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(got.len(), 150);
    let clock = WallClock::new();
    let mut encoder = Encoder::new("sensor-test", &interfaces());
    let mut by_number: HashMap<u64, &Record> = HashMap::new();
    for r in &got {
        let (set, _) = numbers(std::slice::from_ref(r));
        by_number.insert(*set.iter().next().unwrap(), r);
    }
    for (i, e) in events.iter().enumerate() {
        let i = i as u64;
        if verdict(i) == Some(Verdict::Clean) {
            assert!(!by_number.contains_key(&i), "clean event {i} was produced");
            continue;
        }
        let r = by_number
            .get(&i)
            .unwrap_or_else(|| panic!("event {i} missing"));
        assert_eq!(
            r.key.as_deref(),
            Some(e.query.src.to_string().as_bytes()),
            "key of event {i}"
        );
        // The sink's clock and ours read realtime − monotonic at different moments: take the
        // timestamp from the document, check it is ours within 50 ms, then compare every byte.
        let doc: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        let ts = time::OffsetDateTime::parse(
            doc["@timestamp"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let unix_ns = ts.unix_timestamp_nanos();
        let ours = clock.unix_ns(e.query.ts_mono_ns);
        assert!(
            (unix_ns - ours).abs() < 50_000_000,
            "timestamp of event {i}"
        );
        let mut want = Vec::new();
        encoder.encode(&e.query, e.intel.as_deref(), unix_ns, &mut want);
        assert_eq!(want.pop(), Some(b'\n'));
        assert_eq!(
            String::from_utf8(r.payload.clone()).unwrap(),
            String::from_utf8(want).unwrap(),
            "document of event {i}"
        );
    }
}

/// Offers `rate` events/s (numbered from `first`) until `stop` says so; returns how many.
async fn offer_at(
    sink: &KafkaSink,
    first: u64,
    rate: u64,
    duration: Duration,
    mut at: impl FnMut(Duration),
) -> u64 {
    let t0 = Instant::now();
    let mut n = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while t0.elapsed() < duration {
        tick.tick().await;
        let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
        while n < due {
            sink.offer(&tansu::event(first + n));
            n += 1;
        }
        at(t0.elapsed());
    }
    n
}

/// (b) The broker is unreachable for 30 s while events flow at 5,000/s, then back: with a
/// memory queue larger than the outage (200,000 messages > 150,000), nothing is lost, and the
/// counters add up exactly. (The outage is a cut proxy: see `Tansu::start_proxied`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_of_30s_at_5000_per_s_loses_nothing_within_the_queue() {
    let t = Tansu::start_proxied(Storage::Memory);
    t.create_topic("outage", 3).await;
    let cfg = KafkaSection {
        producer_queue_size: 200_000,
        ..section(&t, "outage")
    };
    let sink = start(&cfg);
    let c = sink.counters();
    let mut stopped = false;
    let mut restarted = false;
    let mut stop_at = None;
    let n = offer_at(&sink, 0, 5000, Duration::from_secs(40), |elapsed| {
        if !stopped && elapsed >= Duration::from_secs(5) {
            t.cut();
            stopped = true;
            stop_at = Some(Instant::now());
        }
        if stopped && !restarted && stop_at.is_some_and(|s| s.elapsed() >= Duration::from_secs(30))
        {
            t.heal();
            restarted = true;
        }
    })
    .await;
    assert!(restarted, "the 40 s of traffic ended before the restart");
    assert!(n >= 190_000, "offered only {n}");
    settle(&c, Duration::from_secs(60)).await;
    let summary = dropped_summary(&c);
    sink.shutdown(Duration::from_secs(10)).await;
    assert_eq!(c.imbalance(), 0, "{summary}");
    assert_eq!(c.events_in.load(Ordering::SeqCst), n);
    assert_eq!(c.dropped_total(), 0, "{summary}");
    assert_eq!(c.delivered.load(Ordering::SeqCst), n, "{summary}");

    let got = tokio::task::spawn_blocking({
        let reader = t.reader("outage");
        let n = n as usize;
        move || reader.read(n, Duration::from_secs(60))
    })
    .await
    .unwrap();
    let (seen, dups) = numbers(&got);
    let missing: Vec<u64> = (0..n).filter(|i| !seen.contains(i)).take(10).collect();
    assert!(
        missing.is_empty(),
        "missing events, e.g. {missing:?} ({summary})"
    );
    assert_eq!(dups, 0, "duplicates in the topic ({summary})");
}

/// (c) With the spool: an outage longer than the memory queues lose nothing up to the cap, and
/// what is left in the spool when the sink stops is replayed by the next sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_rides_out_an_outage_and_a_sink_restart() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let t = Tansu::start_proxied(Storage::Memory);
    t.create_topic("spooled", 3).await;
    let cfg = KafkaSection {
        queue_size: 1000,
        producer_queue_size: 2000,
        // Messages waiting for the stopped broker fail after 3 s and go to the spool.
        message_timeout_ms: 3000,
        queue_full_retry_ms: 10,
        // With idempotence, librdkafka's producer delivers nothing more to tansu 0.6 after its
        // messages timed out (every replayed record fails again): see the report.
        idempotence: false,
        spool: Some(SpoolSection {
            path: dir.path().join("spool"),
            max_bytes: 256 << 20,
        }),
        ..section(&t, "spooled")
    };

    // Part 1: 10 s outage at 5,000/s = 50,000 events, 25 times the memory queue.
    let sink = start(&cfg);
    let c = sink.counters();
    let mut phase = 0;
    let n1 = offer_at(&sink, 0, 5000, Duration::from_secs(14), |elapsed| {
        if phase == 0 && elapsed >= Duration::from_secs(2) {
            t.cut();
            phase = 1;
        }
        if phase == 1 && elapsed >= Duration::from_secs(12) {
            t.heal();
            phase = 2;
        }
    })
    .await;
    assert_eq!(phase, 2);
    let mut polls = 0u32;
    wait_for("the spool to drain", Duration::from_secs(120), || {
        polls += 1;
        if polls.is_multiple_of(100) {
            eprintln!("{}", dropped_summary(&c));
        }
        c.spool_pending.load(Ordering::SeqCst) == 0 && c.in_flight.load(Ordering::SeqCst) == 0
    })
    .await;
    let summary = dropped_summary(&c);
    assert_eq!(c.imbalance(), 0, "{summary}");
    assert_eq!(c.dropped_total(), 0, "{summary}");
    assert!(c.spooled.load(Ordering::SeqCst) > 10_000, "{summary}");
    assert_eq!(c.delivered.load(Ordering::SeqCst), n1, "{summary}");

    // Part 2: the broker goes away, events arrive, the sink stops: they stay in the spool,
    // and a new sink (after the broker is back) replays them.
    t.cut();
    let n2 = 5000u64;
    for i in 0..n2 {
        sink.offer(&tansu::event(n1 + i));
        // Within the channel's 1,000: the producer task moves them on between batches.
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    sink.shutdown(Duration::from_secs(1)).await;
    let summary = dropped_summary(&c);
    assert_eq!(c.imbalance(), 0, "{summary}");
    assert_eq!(c.in_flight.load(Ordering::SeqCst), 0, "{summary}");
    assert_eq!(c.dropped_total(), 0, "{summary}");
    assert_eq!(c.spool_pending.load(Ordering::SeqCst), n2, "{summary}");

    t.heal();
    let sink = start(&cfg);
    let c = sink.counters();
    assert_eq!(c.spool_recovered.load(Ordering::SeqCst), n2);
    wait_for("the replay", Duration::from_secs(60), || {
        c.delivered.load(Ordering::SeqCst) == n2
    })
    .await;
    sink.shutdown(Duration::from_secs(5)).await;
    let summary = dropped_summary(&c);
    assert_eq!(c.imbalance(), 0, "{summary}");
    assert_eq!(c.spool_pending.load(Ordering::SeqCst), 0, "{summary}");
    assert_eq!(c.spool_bytes.load(Ordering::SeqCst), 0, "{summary}");

    let total = (n1 + n2) as usize;
    let got = tokio::task::spawn_blocking({
        let reader = t.reader("spooled");
        move || reader.read(total, Duration::from_secs(60))
    })
    .await
    .unwrap();
    let (seen, dups) = numbers(&got);
    let missing: Vec<u64> = (0..n1 + n2)
        .filter(|i| !seen.contains(i))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "missing events, e.g. {missing:?} ({summary})"
    );
    eprintln!("spool test: {} records read, {dups} duplicates", got.len());
}

/// Collects the formatted log lines of the test's thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// (d) The broker is down when the sink starts: one clear warning, no failure, and the events
/// are delivered once it comes up.
#[tokio::test(flavor = "current_thread")]
async fn start_with_the_broker_down_then_deliver() {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut t = Tansu::stopped(Storage::Memory);
    let sink = start(&section(&t, "late"));
    let c = sink.counters();
    for i in 0..100 {
        sink.offer(&tansu::event(i));
    }
    wait_for("the warning", Duration::from_secs(20), || {
        String::from_utf8_lossy(&logs.0.lock().unwrap()).contains("kafka: cannot reach brokers")
    })
    .await;
    assert!(!c.broker_up.load(Ordering::SeqCst));
    assert_eq!(c.imbalance(), 0);

    t.restart();
    t.create_topic("late", 1).await;
    wait_for("delivery", Duration::from_secs(60), || {
        c.delivered.load(Ordering::SeqCst) == 100
    })
    .await;
    wait_for("the health check", Duration::from_secs(15), || {
        String::from_utf8_lossy(&logs.0.lock().unwrap()).contains("kafka: brokers reachable")
    })
    .await;
    assert!(c.broker_up.load(Ordering::SeqCst));
    sink.shutdown(Duration::from_secs(5)).await;
    assert_eq!(c.imbalance(), 0, "{}", dropped_summary(&c));
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    let warnings = text
        .lines()
        .filter(|l| l.contains("kafka: cannot reach brokers"))
        .count();
    assert_eq!(warnings, 1, "{text}");
    let got = t.reader("late").read(100, Duration::from_secs(30));
    assert_eq!(numbers(&got).0.len(), 100);
}
