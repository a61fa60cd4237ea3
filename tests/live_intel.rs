//! The live intel path: `dig` from a client namespace → XDP → sensor → fake ThreatBook says
//! malicious → a WeCom message naming the client and its owner, and the JSON line carries the
//! verdict. Needs root, iproute2 and dig; fails without them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use common::sensor_bin;
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use sensor_testkit::{
    daemon::Daemon,
    fake_threatbook::{FakeThreatBook, FakeVerdict},
    fake_wecom::FakeWeCom,
    netns::{Topology, unique},
    osmem::{Client as EsClient, Osmem},
    responder::Responder,
    tansu::{Storage, Tansu},
};
use serde_json::Value;

const TB_KEY: &str = "canary-tb-4d2f9e";
const WECOM_KEY: &str = "canary-wecom-8b1c7a";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn dig_a_malicious_name_alerts_wecom_with_the_owner_and_the_line_carries_the_verdict() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let tb = rt
        .block_on(FakeThreatBook::start(TB_KEY))
        .expect("fake ThreatBook");
    tb.set_domain(
        "c2.evil-example.net",
        FakeVerdict {
            tags_classes: vec![("virus_family".into(), vec!["Mirai".into()])],
            permalink: Some("https://x.threatbook.com/v5/domain/c2.evil-example.net".into()),
            ..FakeVerdict::malicious("C2")
        },
    );
    let wecom = rt.block_on(FakeWeCom::start(WECOM_KEY));
    // The real sinks: a Kafka-protocol broker and an OpenSearch-compatible server.
    let kafka = Tansu::start(Storage::Memory);
    rt.block_on(kafka.create_topic("dns-events", 1));
    let search = Osmem::start();

    let topo = Topology::new(false);
    let client = IpAddr::V4(topo.v4(2));
    let server = IpAddr::V4(topo.v4(1));
    let responder = Responder::start(&[server]);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let tb_key = write(d, "tb.key", TB_KEY);
    let wecom_key = write(d, "wecom.key", WECOM_KEY);
    let inventory = write(
        d,
        "assets.csv",
        &format!(
            "cidr_or_ip,owner,employee_id,hostname,department\n\
             10.0.0.0/8,,,,Head office\n{client},Zhang San,E10024,fin-pc-034,Finance\n"
        ),
    );
    let trusted = write(d, "trusted.txt", "# trusted\nbaidu.com\n");
    let name = unique("live-intel");
    let metrics_port = sensor_testkit::ports::free_port();
    let config = write(
        d,
        "sensor.toml",
        &format!(
            r#"[sensor]
name = "{name}"
pin_root = "/sys/fs/bpf/dns-sensor-test-{name}"

[capture]
interfaces = ["{iface}"]

[trust]
files = ["{trusted}"]

[intel]
max_wait_ms = 5000

[intel.threatbook]
base_url = "{tb_url}"
api_key = {{ file = "{tb_key}" }}

[intel.threatbook.limits]
batch_window_ms = 5

[alerts]
inventory = "{inventory}"
time_zone = "+08:00"

[[alerts.wecom]]
base_url = "{wecom_url}"
key = {{ file = "{wecom_key}" }}

[metrics]
listen = "127.0.0.1:{metrics_port}"

[kafka]
brokers = ["{kafka}"]
topic = "dns-events"
linger_ms = 1

[elasticsearch]
urls = ["{search}"]
flush_interval_ms = 100
"#,
            kafka = kafka.bootstrap(),
            search = search.url(),
            iface = topo.host_if,
            trusted = trusted.display(),
            tb_url = tb.base_url(),
            tb_key = tb_key.display(),
            inventory = inventory.display(),
            wecom_url = wecom.base_url(),
            wecom_key = wecom_key.display(),
        ),
    );
    let mut daemon = Daemon::start(sensor_bin(), &config, d);

    let dig = |qname: &str| {
        let out = topo
            .command("dig")
            .args(["+tries=1", "+timeout=2", &format!("@{server}"), qname, "A"])
            .output()
            .expect("run dig");
        assert!(out.status.success(), "dig {qname}");
    };
    dig("www.baidu.com");
    dig("clean.public-site.cn");
    dig("C2.Evil-Example.NET");
    // A special-use name ([intel.egress]): written, counted, never sent to ThreatBook.
    dig("printer.local");

    rt.block_on(wecom.wait_for(Duration::from_secs(30), |r| {
        r.iter().any(|m| m.content.contains("c2.evil-example.net"))
    }));
    // /metrics while it runs: parses as Prometheus text, and the numbers match what was sent.
    let metrics = rt.block_on(async {
        reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("body")
    });
    let health = rt.block_on(async {
        reqwest::get(format!("http://127.0.0.1:{metrics_port}/healthz"))
            .await
            .expect("GET /healthz")
            .status()
    });
    assert!(health.is_success());
    let scrape = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text");
    let value = |name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert_eq!(
        value("dns_sensor_kernel_events_total", None),
        4.0,
        "{metrics}"
    );
    assert_eq!(value("dns_sensor_reader_records_read_total", None), 4.0);
    assert_eq!(
        value(
            "dns_sensor_intel_not_sent_total",
            Some(("reason", "special_use"))
        ),
        1.0
    );
    assert_eq!(value("dns_sensor_enrich_trusted_total", None), 1.0);
    assert_eq!(value("dns_sensor_cache_lookups_total", None), 2.0);
    assert_eq!(
        value("dns_sensor_cache_verdicts_malicious_total", None),
        1.0
    );
    assert_eq!(value("dns_sensor_cache_entries", None), 2.0);
    assert_eq!(value("dns_sensor_alerts_raised_total", None), 1.0);
    assert_eq!(value("dns_sensor_alerts_messages_sent_total", None), 1.0);
    assert_eq!(
        value(
            "dns_sensor_intel_calls_total",
            Some(("provider", "threatbook"))
        ),
        tb.request_count() as f64
    );
    assert_eq!(
        value(
            "dns_sensor_queue_depth",
            Some(("queue", "reader_to_enrich"))
        ),
        0.0
    );
    assert!(!metrics.contains(TB_KEY) && !metrics.contains(WECOM_KEY));

    // The malicious hit is searchable in the day's index, with the owner, and the template
    // typed the fields.
    let es = EsClient::new(&search.url());
    let day = time::OffsetDateTime::now_utc().date();
    let index = format!(
        "security_check_url-{:04}.{:02}.{:02}",
        day.year(),
        u8::from(day.month()),
        day.day()
    );
    let hit = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            es.refresh(&index).await;
            let query = serde_json::json!({
                "query": {"term": {"source.ip": format!("{client}/32")}},
                "size": 10,
            });
            let (status, v) = es
                .request(
                    reqwest::Method::POST,
                    &format!("{index}/_search?ignore_unavailable=true"),
                    Some(&query),
                )
                .await;
            let hits: Vec<serde_json::Value> = v["hits"]["hits"]
                .as_array()
                .map(|h| h.iter().map(|x| x["_source"].clone()).collect())
                .unwrap_or_default();
            if status == 200 && !hits.is_empty() {
                return hits;
            }
            assert!(tokio::time::Instant::now() < deadline, "no hit in {index}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert_eq!(hit.len(), 1, "{hit:?}");
    assert_eq!(hit[0]["dns"]["question"]["name"], "c2.evil-example.net");
    assert_eq!(hit[0]["threat"]["indicator"]["type"], "domain-name");
    assert_eq!(hit[0]["user"]["id"], "E10024");
    let (_, mapping) =
        rt.block_on(es.request(reqwest::Method::GET, &format!("{index}/_mapping"), None));
    let props = &mapping[&index]["mappings"]["properties"];
    assert_eq!(
        props["source"]["properties"]["ip"]["type"], "ip",
        "{mapping}"
    );
    assert_eq!(
        props["dns"]["properties"]["question"]["properties"]["name"]["type"],
        "keyword"
    );

    let lines = daemon.stop();
    let logs = daemon.stderr_seen.join("\n");

    // Every written line is in Kafka too, byte for byte, keyed by the client's address.
    let records = kafka
        .reader("dns-events")
        .read(lines.len(), Duration::from_secs(30));
    assert_eq!(records.len(), lines.len(), "{records:?}");
    for line in &lines {
        let r = records
            .iter()
            .find(|r| r.payload == line.as_bytes())
            .unwrap_or_else(|| panic!("not in Kafka: {line}"));
        assert_eq!(r.key.as_deref(), Some(client.to_string().as_bytes()));
    }

    let messages = wecom.accepted();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    let m = &messages[0].content;
    for want in [
        &client.to_string(),
        "c2.evil-example.net",
        "Zhang San",
        "E10024",
        "fin-pc-034",
        "Finance",
        "C2",
        "high",
    ] {
        assert!(m.contains(want), "alert lacks {want:?}:\n{m}");
    }

    let docs: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(
        docs.len(),
        3,
        "the trusted query is not written: {lines:#?}"
    );
    let by_name = |n: &str| {
        docs.iter()
            .find(|d| d["dns"]["question"]["name"] == n)
            .unwrap_or_else(|| panic!("no line for {n}: {lines:#?}"))
    };
    let bad = by_name("c2.evil-example.net");
    assert_eq!(bad["source"]["ip"], client.to_string());
    assert_eq!(bad["event"]["kind"], "alert");
    assert_eq!(bad["intel"]["verdict"], "malicious");
    assert_eq!(bad["intel"]["providers"][0], "threatbook");
    assert_eq!(bad["intel"]["judgments"][0], "C2");
    assert_eq!(by_name("clean.public-site.cn")["intel"]["verdict"], "clean");
    let local = by_name("printer.local");
    assert_eq!(local["intel"]["verdict"], "not_looked_up");
    assert_eq!(local["intel"]["reason"], "special_use");
    assert!(
        tb.requests()
            .iter()
            .all(|r| r.resources.iter().all(|n| n != "printer.local")),
        "a .local name reached ThreatBook"
    );
    assert!(
        responder.seen().iter().any(|s| s.name == "www.baidu.com"),
        "the trusted query itself passed"
    );

    // The keys appear nowhere.
    for text in [logs.as_str(), &lines.join("\n"), m] {
        assert!(!text.contains(TB_KEY) && !text.contains(WECOM_KEY));
    }
    assert!(tb.requests().iter().all(|r| r.key_ok));
}
