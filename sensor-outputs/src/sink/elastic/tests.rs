//! Unit tests of the config, the document and the counters (the tests against a server are in
//! tests/elastic.rs).

use std::path::Path;

use super::*;
use sensor_model::{
    query::Query,
    verdict::{Assessment, Confidence, Finding, Severity, Verdict},
};

#[test]
fn defaults_validate_and_parse() {
    let d = ElasticSection::default();
    d.validate().unwrap();
    let parsed: ElasticSection = toml::from_str("").unwrap();
    assert_eq!(parsed, d);
    assert!(toml::from_str::<ElasticSection>("nope = 1").is_err());
    let full: ElasticSection = toml::from_str(
        r#"
        urls = ["https://es1:9200", "https://es2:9200"]
        index = "hits-%Y.%m"
        events = "all"
        username = "sensor"
        password = { env = "ES_PASSWORD" }
        ca_file = "/etc/ssl/es-ca.pem"
        "#,
    )
    .unwrap();
    full.validate().unwrap();
    assert_eq!(full.events, EventFilter::All);
}

#[test]
fn validate_names_the_key() {
    let key = |s: ElasticSection| match s.validate() {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("{other:?}"),
    };
    let base = ElasticSection::default;
    assert_eq!(
        key(ElasticSection {
            urls: vec![],
            ..base()
        }),
        "elasticsearch.urls"
    );
    let with_creds = ElasticSection {
        urls: vec!["http://admin:canary-pw@es:9200".into()],
        ..base()
    };
    let err = with_creds.validate().unwrap_err().to_string();
    assert!(
        err.contains("elasticsearch.urls") && !err.contains("canary-pw"),
        "{err}"
    );
    assert_eq!(
        key(ElasticSection {
            index: "Bad-%Y".into(),
            ..base()
        }),
        "elasticsearch.index"
    );
    assert_eq!(
        key(ElasticSection {
            queue_size: 0,
            ..base()
        }),
        "elasticsearch.queue_size"
    );
    assert_eq!(
        key(ElasticSection {
            username: Some("u".into()),
            ..base()
        }),
        "elasticsearch.password"
    );
    let secret = || {
        Some(SecretSource {
            env: Some("X".into()),
            file: None,
        })
    };
    assert_eq!(
        key(ElasticSection {
            username: Some("u".into()),
            password: secret(),
            api_key: secret(),
            ..base()
        }),
        "elasticsearch.api_key"
    );
}

fn query(src: &str, name: &str, ts: u64) -> Query {
    Query {
        ts_mono_ns: ts,
        ifindex: 1,
        vlan_outer: 0,
        vlan_inner: 0,
        src: src.parse().unwrap(),
        dst: "10.0.0.53".parse().unwrap(),
        src_port: 40000,
        dst_port: 53,
        transport: sensor_common::Transport::Udp,
        dns_id: 7,
        qtype: 1,
        qclass: 1,
        name: name.into(),
        answer: None,
    }
}

fn malicious() -> Arc<Assessment> {
    Arc::new(Assessment {
        verdict: Verdict::Malicious,
        findings: vec![Finding {
            provider: "threatbook".into(),
            malicious: true,
            severity: Some(Severity::High),
            confidence: Some(Confidence::Medium),
            judgments: vec!["C2".into()],
            tags: vec!["APT:Lazarus".into()],
            permalink: Some("https://x.threatbook.com/v5/domain/evil.example".into()),
            ip_context: None,
        }],
        errors: vec![],
    })
}

#[test]
fn document_shape() {
    let inv = Inventory::parse(
        b"cidr_or_ip,owner,employee_id,hostname,department\n10.1.2.34,Zhang San,12345,fin-pc-034,Finance\n",
        Path::new("inv.csv"),
    )
    .unwrap();
    let mut b = document::Builder::new(
        "sensor-1",
        &HashMap::from([(1, "eth0".to_owned())]),
        document::IndexPattern::parse("security_check_url-%Y.%m.%d").unwrap(),
        Arc::new(arc_swap::ArcSwap::from_pointee(inv)),
    );
    let e = Enriched {
        query: query("10.1.2.34", "evil.example", 1),
        intel: Some(malicious()),
    };
    let mut out = Vec::new();
    b.item(&e, &mut out);
    let text = String::from_utf8(out).unwrap();
    let mut lines = text.lines();
    let action: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let doc: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert!(lines.next().is_none());
    let id = action["create"]["_id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert_eq!(id, document::doc_id("sensor-1", &e));
    let ts = doc["@timestamp"].as_str().unwrap();
    let index = action["create"]["_index"].as_str().unwrap();
    assert_eq!(
        index,
        format!(
            "security_check_url-{}.{}.{}",
            &ts[..4],
            &ts[5..7],
            &ts[8..10]
        )
    );
    assert_eq!(doc["event"]["kind"], "alert");
    assert_eq!(doc["source"]["ip"], "10.1.2.34");
    assert_eq!(doc["dns"]["question"]["name"], "evil.example");
    assert_eq!(doc["dns"]["question"]["type"], "A");
    assert_eq!(doc["threat"]["indicator"]["type"], "domain-name");
    assert_eq!(doc["threat"]["indicator"]["url"]["domain"], "evil.example");
    assert_eq!(doc["threat"]["indicator"]["provider"][0], "threatbook");
    assert_eq!(doc["threat"]["indicator"]["confidence"], "Medium");
    assert_eq!(doc["intel"]["verdict"], "malicious");
    assert_eq!(doc["intel"]["severity"], "high");
    assert_eq!(doc["intel"]["judgments"][0], "C2");
    assert_eq!(doc["intel"]["findings"][0]["provider"], "threatbook");
    assert_eq!(doc["user"]["name"], "Zhang San");
    assert_eq!(doc["user"]["id"], "12345");
    assert_eq!(doc["user"]["group"]["name"], "Finance");
    assert_eq!(doc["host"]["hostname"], "fin-pc-034");
    assert_eq!(doc["observer"]["name"], "sensor-1");
    assert_eq!(doc["observer"]["ingress"]["interface"]["name"], "eth0");

    // Another client, another time: another id; the same event: the same id.
    let other = Enriched {
        query: query("10.1.2.35", "evil.example", 1),
        intel: None,
    };
    assert_ne!(document::doc_id("sensor-1", &other), id);
    assert_ne!(document::doc_id("sensor-2", &e), id);
    let mut out = Vec::new();
    b.item(&other, &mut out);
    let doc: serde_json::Value =
        serde_json::from_str(String::from_utf8(out).unwrap().lines().nth(1).unwrap()).unwrap();
    assert!(doc.get("user").is_none() && doc.get("threat").is_none());
    assert_eq!(doc["event"]["kind"], "event");
}

/// The worker is stuck installing the template (nothing listens), so the queue fills: the
/// overflow is counted, the shutdown counts the rest, and the counters add up.
#[tokio::test]
async fn queue_full_and_shutdown_are_counted() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = ElasticSection {
        urls: vec![format!("http://127.0.0.1:{port}")],
        queue_size: 5,
        retry_initial_ms: 10,
        retry_max_ms: 20,
        ..Default::default()
    };
    let sink = ElasticSink::start(
        &cfg,
        "s",
        &HashMap::new(),
        Arc::new(arc_swap::ArcSwap::from_pointee(Inventory::default())),
    )
    .unwrap();
    for i in 0..10 {
        sink.offer(&Enriched {
            query: query("10.0.0.1", "evil.example", i),
            intel: Some(malicious()),
        });
    }
    for i in 0..3 {
        sink.offer(&Enriched {
            query: query("10.0.0.1", "fine.example", i),
            intel: None,
        });
    }
    let c = sink.counters();
    assert_eq!(c.events_in.load(Ordering::SeqCst), 13);
    assert_eq!(c.filtered_out.load(Ordering::SeqCst), 3);
    assert_eq!(c.dropped_by_reason("queue_full"), 5);
    assert_eq!(c.in_flight.load(Ordering::SeqCst), 5);
    assert_eq!(c.imbalance(), 0);
    let m = sink.metrics();
    let get = |name: &str| {
        m.iter()
            .find(|x| x.name == name)
            .unwrap_or_else(|| panic!("{name}"))
            .value
    };
    assert_eq!(get("elasticsearch_queued"), 5.0);
    assert_eq!(get("elasticsearch_template_installed"), 0.0);
    assert_eq!(get("elasticsearch_server_up"), 0.0);
    sink.shutdown(Duration::from_millis(200)).await;
    assert_eq!(c.dropped_by_reason("shutdown"), 5);
    assert_eq!(c.in_flight.load(Ordering::SeqCst), 0);
    assert_eq!(c.imbalance(), 0);
    assert!(c.template_errors.load(Ordering::SeqCst) >= 1);
}
