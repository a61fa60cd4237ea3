//! Config checks, and the counters with brokers that cannot be reached (no broker needed; the
//! tests with a broker are in `tests/kafka.rs`).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use super::*;
use sensor_model::{
    enriched::Enriched,
    query::Query,
    verdict::{Assessment, Verdict},
};

fn parse(toml_text: &str) -> Result<KafkaSection, String> {
    toml::from_str::<KafkaSection>(toml_text).map_err(|e| e.to_string())
}

#[test]
fn defaults_are_sound_and_valid() {
    let d = KafkaSection::default();
    assert_eq!(parse("").unwrap(), d);
    d.validate().unwrap();
    assert_eq!(d.compression, Compression::Lz4);
    assert!(d.idempotence);
    assert_eq!(d.acks, Acks::All);
    assert_eq!(d.events, EventFilter::ALL);
}

#[test]
fn events_presets_and_lists() {
    let all = parse("events = \"all\"").unwrap().events;
    let mal = parse("events = \"malicious\"").unwrap().events;
    let nc = parse("events = \"not_clean\"").unwrap().events;
    let list = parse("events = [\"malicious\", \"unknown\"]")
        .unwrap()
        .events;
    let verdicts = [
        None,
        Some(Verdict::Malicious),
        Some(Verdict::Clean),
        Some(Verdict::Unknown),
        Some(Verdict::Trusted),
    ];
    let keeps = |f: EventFilter| verdicts.map(|v| f.keeps(v));
    assert_eq!(keeps(all), [true; 5]);
    assert_eq!(keeps(mal), [false, true, false, false, false]);
    // Intel off: nothing is known clean, so not_clean keeps the event.
    assert_eq!(keeps(nc), [true, true, false, true, true]);
    assert_eq!(keeps(list), [false, true, false, true, false]);
    let err = parse("events = \"bad\"").unwrap_err();
    assert!(err.contains("kafka.events"), "{err}");
    let err = parse("events = [\"malicious\", \"evil\"]").unwrap_err();
    assert!(err.contains("unknown verdict \"evil\""), "{err}");
    assert!(parse("events = []").unwrap_err().contains("empty"));
}

#[test]
fn unknown_keys_and_bad_values_name_the_key() {
    assert!(parse("brokerz = []").unwrap_err().contains("brokerz"));
    let bad = |text: &str, key: &str| {
        let err = parse(text).unwrap().validate().unwrap_err().to_string();
        assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    };
    bad("brokers = []", "kafka.brokers");
    bad("brokers = [\"kafka\"]", "kafka.brokers");
    bad("brokers = [\"a:1,b:2\"]", "kafka.brokers");
    bad("topic = \"a b\"", "kafka.topic");
    bad("queue_size = 0", "kafka.queue_size");
    bad("acks = \"leader\"", "kafka.acks");
    bad("[properties]\n\"linger.ms\" = \"7\"", "kafka.properties");
    bad(
        "[properties]\n\"sasl.password\" = \"hunter2\"",
        "kafka.properties",
    );
    bad("[secrets]\n\"sasl.password\" = {}", "kafka.secrets");
    bad(
        "[spool]\npath = \"/tmp/x\"\nmax_bytes = 10",
        "kafka.spool.max_bytes",
    );
    parse("acks = \"leader\"\nidempotence = false")
        .unwrap()
        .validate()
        .unwrap();
}

#[test]
fn secrets_come_from_files_and_properties_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw");
    std::fs::write(&path, "s3cret\n").unwrap();
    let text = format!(
        "[properties]\n\"security.protocol\" = \"sasl_plaintext\"\n\"sasl.mechanism\" = \
         \"PLAIN\"\n\"sasl.username\" = \"sensor\"\n[secrets]\n\"sasl.password\" = {{ file = \
         {path:?} }}\n"
    );
    let cfg = parse(&text).unwrap();
    cfg.validate().unwrap();
    assert!(!format!("{cfg:?}").contains("s3cret"));
    let c = cfg.client_config().unwrap();
    assert_eq!(c.get("sasl.password"), Some("s3cret"));
    assert_eq!(c.get("security.protocol"), Some("sasl_plaintext"));
    assert_eq!(c.get("compression.type"), Some("lz4"));
    assert_eq!(c.get("enable.idempotence"), Some("true"));
    // To a broker off the loopback, the password needs TLS, or an explicit yes.
    let remote = text.replace(
        "[properties]",
        "brokers = [\"kafka1.corp:9092\"]\n[properties]",
    );
    let err = parse(&remote).unwrap().validate().unwrap_err().to_string();
    assert!(
        err.contains("`kafka.secrets`") && err.contains("allow_insecure_plaintext"),
        "{err}"
    );
    assert!(!err.contains('\n') && !err.contains("s3cret"), "{err}");
    parse(&remote.replace(
        "[properties]",
        "allow_insecure_plaintext = true\n[properties]",
    ))
    .unwrap()
    .validate()
    .unwrap();
    parse(&remote.replace("sasl_plaintext", "sasl_ssl"))
        .unwrap()
        .validate()
        .unwrap();
    // A missing secret is a one-line error naming the key, without any value.
    let cfg = parse("[secrets]\n\"sasl.password\" = { env = \"KAFKA_TEST_UNSET_VAR_X\" }").unwrap();
    let err = cfg.client_config().unwrap_err().to_string();
    assert!(err.contains("`kafka.secrets`"), "{err}");
}

pub(crate) fn event(i: u32, verdict: Option<Verdict>) -> Enriched {
    Enriched {
        query: Query {
            ts_mono_ns: 1_000_000 + u64::from(i),
            ifindex: 1,
            vlan_outer: 0,
            vlan_inner: 0,
            src: IpAddr::from([10, 0, (i >> 8) as u8, i as u8]),
            dst: IpAddr::from([10, 0, 0, 53]),
            src_port: 40000,
            dst_port: 53,
            transport: sensor_common::Transport::Udp,
            dns_id: i as u16,
            qtype: 1,
            qclass: 1,
            name: format!("n{i}.example.com"),
            answer: None,
        },
        intel: verdict.map(|verdict| {
            Arc::new(Assessment {
                verdict,
                findings: Vec::new(),
                errors: Vec::new(),
            })
        }),
    }
}

/// A port nothing listens on.
fn dead_broker() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr.to_string()
}

fn sink(cfg: &KafkaSection) -> KafkaSink {
    KafkaSink::start(
        cfg,
        "test",
        &HashMap::from([(1, "eth0".to_owned())]),
        Default::default(),
    )
    .unwrap()
}

/// Brokers down, no spool: start does not fail, every event ends filtered, queue-full or
/// shutdown, and the counters add up at every step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_without_spool_counts_every_event() {
    let cfg = KafkaSection {
        brokers: vec![dead_broker()],
        events: EventFilter::NOT_CLEAN,
        queue_size: 100,
        producer_queue_size: 300,
        queue_full_retry_ms: 5,
        ..Default::default()
    };
    let s = sink(&cfg);
    let c = s.counters();
    for i in 0..2000 {
        let v = if i % 4 == 0 {
            Some(Verdict::Clean)
        } else {
            None
        };
        s.offer(&event(i, v));
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.imbalance(), 0);
    assert_eq!(c.filtered_out.load(Ordering::SeqCst), 500);
    assert!(!c.broker_up.load(Ordering::SeqCst));
    s.shutdown(Duration::from_millis(100)).await;
    assert_eq!(c.imbalance(), 0);
    assert_eq!(c.in_flight.load(Ordering::SeqCst), 0);
    assert_eq!(c.delivered.load(Ordering::SeqCst), 0);
    let dropped = c.dropped();
    let by = |stage: &str, reason: &str| {
        dropped
            .iter()
            .find(|((s, r), _)| *s == stage && r == reason)
            .map_or(0, |(_, n)| *n)
    };
    // librdkafka held up to 300; the rest overflowed one of the two queues.
    assert_eq!(by("shutdown", "shutdown"), 300, "{dropped:?}");
    assert_eq!(c.dropped_total(), 1500, "{dropped:?}");
}

/// Brokers down, with a spool: nothing is dropped; a second start finds every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_with_spool_keeps_everything_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = KafkaSection {
        brokers: vec![dead_broker()],
        queue_size: 10_000,
        producer_queue_size: 200,
        queue_full_retry_ms: 5,
        spool: Some(SpoolSection {
            path: dir.path().join("spool"),
            max_bytes: 64 << 20,
        }),
        ..Default::default()
    };
    let s = sink(&cfg);
    let c = s.counters();
    for i in 0..3000 {
        s.offer(&event(i, None));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.imbalance(), 0);
    s.shutdown(Duration::from_millis(100)).await;
    assert_eq!(c.imbalance(), 0);
    assert_eq!(c.dropped_total(), 0, "{:?}", c.dropped());
    assert_eq!(c.spool_pending.load(Ordering::SeqCst), 3000);
    assert!(c.spool_bytes.load(Ordering::SeqCst) > 0);

    let s = sink(&cfg);
    let c = s.counters();
    assert_eq!(c.spool_recovered.load(Ordering::SeqCst), 3000);
    assert_eq!(c.imbalance(), 0);
    s.shutdown(Duration::from_millis(100)).await;
    assert_eq!(c.spool_pending.load(Ordering::SeqCst), 3000);
    assert_eq!(c.imbalance(), 0);
}

/// Two sinks pointed at one spool directory: the second refuses to start, with one line naming
/// the key and the directory; once the first has shut down, it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sink_on_the_same_spool_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    let cfg = KafkaSection {
        brokers: vec![dead_broker()],
        spool: Some(SpoolSection {
            path: path.clone(),
            max_bytes: 64 << 20,
        }),
        ..Default::default()
    };
    let first = sink(&cfg);
    let Err(err) = KafkaSink::start(
        &cfg,
        "test",
        &HashMap::from([(1, "eth0".to_owned())]),
        Default::default(),
    ) else {
        panic!("a second sink opened a spool the first holds");
    };
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "kafka.spool.path {}: already in use",
            path.display()
        )),
        "{text}"
    );
    assert!(!text.contains('\n'), "{text}");
    first.shutdown(Duration::from_millis(100)).await;
    sink(&cfg).shutdown(Duration::from_millis(100)).await;
}
