//! The Elasticsearch sink against osmem-server (an in-memory OpenSearch-compatible server,
//! `cargo xtask setup --test-deps`), directly and through a fault-injecting proxy:
//! - hits land in the daily index named by the pattern, with `ip` and `keyword` mappings from
//!   the template, and a CIDR term query on `source.ip` finds them;
//! - 429s, lost answers and partial failures: each document is indexed exactly once, the bad
//!   ones are counted by reason, and the counters add up;
//! - the server is down at start: a warning, events queue, and arrive once it is up.
//!
//! A missing osmem-server fails the tests (it never skips them).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use std::{
    collections::HashMap,
    net::IpAddr,
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use arc_swap::ArcSwap;
use sensor_intel::inventory::Inventory;
use sensor_model::{
    enriched::Enriched,
    query::Query,
    secret::SecretSource,
    verdict::{Assessment, Confidence, Finding, Severity, Verdict},
};
use sensor_outputs::sink::elastic::{ElasticCounters, ElasticSection, ElasticSink};
use sensor_testkit::{
    fault_proxy::{FaultProxy, ItemAction},
    osmem,
    osmem::Osmem,
};
use serde_json::{Value, json};

const PASSWORD: &str = "canary-pw-5f3a";

// ---------------------------------------------------------------------------------------------
// Helpers

use sensor_testkit::logs::capture as logs;

fn mono_now() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

fn event(src: &str, name: &str, n: u64, malicious: bool) -> Enriched {
    Enriched {
        query: Query {
            ts_mono_ns: mono_now() + n,
            ifindex: 1,
            vlan_outer: 0,
            vlan_inner: 0,
            src: src.parse().unwrap(),
            dst: "10.0.0.53".parse().unwrap(),
            src_port: 40000 + (n % 20000) as u16,
            dst_port: 53,
            transport: sensor_common::Transport::Udp,
            dns_id: n as u16,
            qtype: 1,
            qclass: 1,
            name: name.into(),
            answer: None,
        },
        intel: Some(Arc::new(if malicious {
            Assessment {
                verdict: Verdict::Malicious,
                findings: vec![Finding {
                    provider: "threatbook".into(),
                    malicious: true,
                    severity: Some(Severity::High),
                    confidence: Some(Confidence::High),
                    judgments: vec!["C2".into()],
                    tags: vec!["Botnet".into()],
                    permalink: Some(format!("https://x.threatbook.com/v5/domain/{name}")),
                    ip_context: None,
                }],
                errors: vec![],
            }
        } else {
            Assessment {
                verdict: Verdict::Clean,
                findings: vec![],
                errors: vec![],
            }
        })),
    }
}

fn inventory() -> Arc<ArcSwap<Inventory>> {
    let inv = Inventory::parse(
        b"cidr_or_ip,owner,employee_id,hostname,department\n\
          10.1.2.34,Zhang San,12345,fin-pc-034,Finance\n",
        Path::new("inventory.csv"),
    )
    .unwrap();
    Arc::new(ArcSwap::from_pointee(inv))
}

fn section(url: String) -> ElasticSection {
    ElasticSection {
        urls: vec![url],
        flush_interval_ms: 50,
        retry_initial_ms: 10,
        retry_max_ms: 200,
        ..Default::default()
    }
}

fn start(cfg: &ElasticSection) -> ElasticSink {
    ElasticSink::start(
        cfg,
        "sensor-test",
        &HashMap::from([(1, "eth0".to_owned())]),
        inventory(),
    )
    .unwrap()
}

fn get(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(Ordering::SeqCst)
}

/// Polls `done` every 20 ms for up to `limit`.
async fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < until {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

fn assert_balanced(c: &ElasticCounters) {
    assert_eq!(
        c.imbalance(),
        0,
        "events_in {} != filtered {} + indexed {} + already {} + dropped {} + in flight {}",
        get(&c.events_in),
        get(&c.filtered_out),
        get(&c.indexed),
        get(&c.already_indexed),
        c.dropped_total(),
        get(&c.in_flight)
    );
}

/// `_index` and `_source` of every hit of `query` in `index`.
async fn hits(es: &osmem::Client, index: &str, query: Value) -> Vec<(String, Value)> {
    es.refresh(index).await;
    let (status, v) = es
        .request(
            reqwest::Method::POST,
            &format!("{index}/_search"),
            Some(&json!({ "query": query, "size": 1000 })),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v["hits"]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["_index"].as_str().unwrap().to_owned(),
                h["_source"].clone(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_land_in_the_daily_index_with_typed_fields() {
    let server = Osmem::start();
    let es = osmem::Client::new(&server.url());
    let sink = start(&section(server.url()));
    let c = sink.counters();
    sink.offer(&event("10.1.2.34", "evil.example", 1, true));
    sink.offer(&event("192.168.5.5", "c2.bad.test", 2, true));
    sink.offer(&event("2001:db8::5", "evil.example", 3, true));
    sink.offer(&event("10.1.2.34", "www.example.com", 4, false));
    sink.offer(&event("10.1.2.35", "www.example.org", 5, false));
    sink.shutdown(Duration::from_secs(20)).await;
    assert_eq!(get(&c.indexed), 3);
    assert_eq!(get(&c.filtered_out), 2);
    assert_eq!(c.dropped_total(), 0, "{:?}", c.dropped());
    assert!(c.template_installed.load(Ordering::SeqCst));
    assert_balanced(&c);

    let all = hits(&es, "security_check_url-*", json!({ "match_all": {} })).await;
    assert_eq!(all.len(), 3, "{all:?}");
    for (index, doc) in &all {
        let ts = doc["@timestamp"].as_str().unwrap();
        assert_eq!(
            index,
            &format!(
                "security_check_url-{}.{}.{}",
                &ts[..4],
                &ts[5..7],
                &ts[8..10]
            ),
            "the daily index is the UTC date of @timestamp"
        );
    }

    let index = &all[0].0;
    let m = es.mapping(index).await;
    let props = &m[index.as_str()]["mappings"]["properties"];
    assert_eq!(props["source"]["properties"]["ip"]["type"], "ip", "{m}");
    assert_eq!(props["destination"]["properties"]["ip"]["type"], "ip");
    assert_eq!(props["@timestamp"]["type"], "date");
    assert_eq!(props["source"]["properties"]["port"]["type"], "long");
    let dns = &props["dns"]["properties"]["question"]["properties"];
    assert_eq!(dns["name"]["type"], "keyword");
    assert_eq!(dns["type"]["type"], "keyword");
    let indicator = &props["threat"]["properties"]["indicator"]["properties"];
    assert_eq!(indicator["provider"]["type"], "keyword");
    assert_eq!(props["intel"]["properties"]["judgments"]["type"], "keyword");
    assert_eq!(props["user"]["properties"]["name"]["type"], "keyword");

    // A CIDR term query on the `ip` field finds the one IPv4 client in 10/8, with its owner.
    let found = hits(
        &es,
        "security_check_url-*",
        json!({ "term": { "source.ip": "10.0.0.0/8" } }),
    )
    .await;
    assert_eq!(found.len(), 1, "{found:?}");
    let doc = &found[0].1;
    assert_eq!(doc["dns"]["question"]["name"], "evil.example");
    assert_eq!(doc["event"]["kind"], "alert");
    assert_eq!(doc["threat"]["indicator"]["type"], "domain-name");
    assert_eq!(
        doc["threat"]["indicator"]["provider"],
        json!(["threatbook"])
    );
    assert_eq!(doc["threat"]["indicator"]["confidence"], "High");
    assert_eq!(doc["user"]["name"], "Zhang San");
    assert_eq!(doc["user"]["id"], "12345");
    assert_eq!(doc["host"]["hostname"], "fin-pc-034");
    assert_eq!(doc["intel"]["findings"][0]["judgments"], json!(["C2"]));
    let v6 = hits(
        &es,
        "security_check_url-*",
        json!({ "term": { "source.ip": "2001:db8::/32" } }),
    )
    .await;
    assert_eq!(v6.len(), 1);
    let names = hits(
        &es,
        "security_check_url-*",
        json!({ "term": { "dns.question.name": "evil.example" } }),
    )
    .await;
    assert_eq!(
        names.len(),
        2,
        "keyword: an exact term matches the whole name"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_index_each_document_once_and_count_the_bad_ones() {
    let server = Osmem::start();
    let proxy = FaultProxy::start(&server.url()).await;
    let es = osmem::Client::new(&server.url());
    // Three whole-request refusals, then one request whose answer is lost after the server
    // indexed it (its retry meets 409s), then partial failures decided per item.
    proxy.fail_next_bulk(&[429, 503, 429]);
    proxy.lose_next_bulk_answers(1);
    proxy.set_item_rule(|item| {
        let name = item.doc["dns"]["question"]["name"]
            .as_str()
            .unwrap_or_default();
        let fail = |status, kind: &str| ItemAction::Fail {
            status,
            kind: kind.into(),
        };
        if name.starts_with("bad-") {
            fail(400, "mapper_parsing_exception")
        } else if name.starts_with("flaky-") && item.seen_before < 3 {
            // Retriable item failures, on top of the whole-request ones.
            match item.seen_before {
                0 => fail(429, "es_rejected_execution_exception"),
                _ => fail(503, "unavailable_shards_exception"),
            }
        } else {
            ItemAction::Forward
        }
    });
    let cfg = ElasticSection {
        bulk_max_docs: 40,
        max_retries: 10,
        ..section(proxy.url())
    };
    let sink = start(&cfg);
    let c = sink.counters();
    let (total, bad) = (400u64, 25u64);
    for n in 0..total {
        let name = match n % 16 {
            0 if n / 16 < bad => format!("bad-{n}.evil.test"),
            1..=4 => format!("flaky-{n}.evil.test"),
            _ => format!("ok-{n}.evil.test"),
        };
        sink.offer(&event("10.9.0.1", &name, n, true));
    }
    sink.offer(&event("10.9.0.1", "clean.example", 9999, false));
    sink.shutdown(Duration::from_secs(60)).await;

    let good = total - bad;
    assert_eq!(
        get(&c.indexed) + get(&c.already_indexed),
        good,
        "dropped: {:?}",
        c.dropped()
    );
    assert_eq!(c.dropped_by_reason("mapper_parsing_exception"), bad);
    assert_eq!(c.dropped_total(), bad, "{:?}", c.dropped());
    assert_eq!(get(&c.filtered_out), 1);
    assert!(get(&c.request_retries) >= 4, "3 refusals and a lost answer");
    assert!(get(&c.item_retries) > 0);
    assert!(
        get(&c.already_indexed) > 0,
        "the lost answer's items were found indexed on retry"
    );
    assert_balanced(&c);

    // The server created each good document exactly once, and nothing else.
    let rec = proxy.record();
    assert_eq!(rec.injected_failures, 4);
    assert!(
        rec.created.values().all(|&n| n == 1),
        "a document was created twice"
    );
    assert_eq!(rec.created.len() as u64, good);
    assert_eq!(get(&c.indexed) + get(&c.already_indexed), good);
    let stored = hits(&es, "security_check_url-*", json!({ "match_all": {} })).await;
    assert_eq!(stored.len() as u64, good, "search count == sent - bad");
    let mut names: Vec<&str> = stored
        .iter()
        .map(|(_, d)| d["dns"]["question"]["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len() as u64, good, "no document twice");
    assert!(names.iter().all(|n| !n.starts_with("bad-")));

    let m = sink_metrics_after(&c);
    assert!(m.contains("mapper_parsing_exception"));
}

/// The counters as the metric labels would show them (the sink is gone after shutdown).
fn sink_metrics_after(c: &ElasticCounters) -> String {
    format!("{:?}", c.dropped())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_at_start_then_up() {
    let logs = logs();
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, PASSWORD).unwrap();
    let port = osmem::free_port();
    let cfg = ElasticSection {
        username: Some("admin".into()),
        password: Some(SecretSource {
            env: None,
            file: Some(pw),
        }),
        queue_size: 100,
        ..section(format!("http://127.0.0.1:{port}"))
    };
    let sink = start(&cfg);
    let c = sink.counters();
    for n in 0..50 {
        sink.offer(&event("10.1.2.34", &format!("down-{n}.evil.test"), n, true));
    }
    // Nothing listens: the worker warns once and retries; the events wait in the queue.
    assert!(
        wait_for(Duration::from_secs(5), || get(&c.template_errors) >= 2).await,
        "the template install is retried"
    );
    assert!(!c.server_up.load(Ordering::SeqCst));
    assert!(!c.template_installed.load(Ordering::SeqCst));
    assert_eq!(get(&c.in_flight), 50);
    assert_eq!(get(&c.indexed), 0);
    assert_balanced(&c);

    let server = Osmem::start_on(port);
    assert!(
        wait_for(Duration::from_secs(30), || get(&c.indexed) == 50).await,
        "indexed {} of 50 after the server came up; dropped {:?}",
        get(&c.indexed),
        c.dropped()
    );
    assert!(c.template_installed.load(Ordering::SeqCst));
    assert!(c.server_up.load(Ordering::SeqCst));
    sink.shutdown(Duration::from_secs(5)).await;
    assert_balanced(&c);
    assert_eq!(c.dropped_total(), 0);

    let es = osmem::Client::new(&server.url());
    let found = hits(
        &es,
        "security_check_url-*",
        json!({ "term": { "source.ip": "10.1.2.0/24" } }),
    )
    .await;
    assert_eq!(found.len(), 50);

    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        text.contains("cannot install the index template"),
        "a warning names the problem"
    );
    assert_eq!(
        text.matches("cannot install the index template").count(),
        1,
        "warned once, not per retry"
    );
    assert!(!text.contains(PASSWORD), "the password is never logged");
    let ip: IpAddr = found[0].1["source"]["ip"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ip, "10.1.2.34".parse::<IpAddr>().unwrap());
}

/// The benchmark (not run by default): `cargo test -p sensor --release --test elastic --
/// --ignored --nocapture bench`; `ES_BENCH_DOCS` sets the number of documents (200000).
#[test]
#[ignore = "benchmark"]
fn bench_documents_per_second() {
    let docs = std::env::var("ES_BENCH_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let b = osmem::bench_elastic(docs);
    println!(
        "elasticsearch sink: {} docs in {:.2} s = {:.0} docs/s indexed into osmem-server \
         ({} bulk requests; sink thread CPU {:.2} s = {:.1} us/doc); building alone {:.0} docs/s",
        b.docs,
        b.seconds,
        b.docs_per_second,
        b.bulk_requests,
        b.cpu_seconds,
        b.cpu_seconds * 1e6 / b.docs as f64,
        b.build_docs_per_second
    );
}
