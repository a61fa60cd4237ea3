//! The nightly job end to end against real servers: the test Elasticsearch server seeded with a
//! day of alerts from three devices (different field names) plus the days around it, and the
//! fake ThreatBook answering IP reputation. Checks the results files, the EDL file, what was
//! asked, and that a failing provider degrades a night (the failed address is retried the next
//! night) instead of freezing the list.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use std::{net::IpAddr, path::Path};

use sensor_blocklist::job;

use sensor::config::Config;

use sensor_testkit::{
    fake_threatbook::{FakeIpInfo, FakeMode, FakeThreatBook, FakeVerdict},
    fake_wecom::FakeWeCom,
    osmem::{Client, Osmem},
};
use serde_json::{Value, json};
use time::macros::{date, datetime};

const KEY: &str = "canary-tb-blocklist-55e1";

async fn seed(es: &Client) {
    // NGFW: `source.ip` mapped as ip. WAF: `src_ip` dynamically mapped (text + .keyword).
    // IDS: `attacker` as keyword. Times in UTC; the day is 2026-11-23 in Asia/Shanghai, i.e.
    // 2026-11-22T16:00Z to 2026-11-23T16:00Z.
    let (s, v) = es
        .request(
            reqwest::Method::PUT,
            "ngfw-2026.11",
            Some(&json!({"mappings": {"properties": {
                "source": {"properties": {"ip": {"type": "ip"}}},
                "@timestamp": {"type": "date"}}}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = es
        .request(
            reqwest::Method::PUT,
            "ids-2026.11",
            Some(&json!({"mappings": {"properties": {
                "attacker": {"type": "keyword"}, "ts": {"type": "date"}}}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let docs: Vec<(&str, Value)> = vec![
        // In the day.
        (
            "ngfw-2026.11",
            json!({"@timestamp": "2026-11-22T16:00:00Z", "source": {"ip": "80.82.77.139"}}),
        ),
        (
            "ngfw-2026.11",
            json!({"@timestamp": "2026-11-23T03:00:00Z", "source": {"ip": "80.82.77.139"}}),
        ),
        (
            "ngfw-2026.11",
            json!({"@timestamp": "2026-11-23T04:00:00Z", "source": {"ip": "45.33.32.156"}}),
        ),
        (
            "ngfw-2026.11",
            json!({"@timestamp": "2026-11-23T05:00:00Z", "source": {"ip": "10.1.2.3"}}),
        ),
        (
            "waf-2026.11",
            json!({"@timestamp": "2026-11-23T06:00:00Z", "src_ip": "45.33.32.156"}),
        ),
        (
            "waf-2026.11",
            json!({"@timestamp": "2026-11-23T07:00:00Z", "src_ip": "198.18.0.1"}),
        ),
        (
            "waf-2026.11",
            json!({"@timestamp": "2026-11-23T08:00:00Z", "src_ip": "-"}),
        ),
        (
            "waf-2026.11",
            json!({"@timestamp": "2026-11-23T09:00:00Z", "src_ip": "2a01:4f8::77"}),
        ),
        (
            "ids-2026.11",
            json!({"ts": "2026-11-23T10:00:00Z", "attacker": "91.240.118.5"}),
        ),
        (
            "ids-2026.11",
            json!({"ts": "2026-11-23T15:59:59Z", "attacker": "185.220.101.4"}),
        ),
        // The day before and the day after (Shanghai): ignored.
        (
            "ngfw-2026.11",
            json!({"@timestamp": "2026-11-22T15:59:59Z", "source": {"ip": "8.8.4.4"}}),
        ),
        (
            "ids-2026.11",
            json!({"ts": "2026-11-23T16:00:00Z", "attacker": "1.0.0.1"}),
        ),
    ];
    for (index, doc) in docs {
        let (s, v) = es
            .request(reqwest::Method::POST, &format!("{index}/_doc"), Some(&doc))
            .await;
        assert!(s == 200 || s == 201, "{v}");
    }
    for i in ["ngfw-2026.11", "waf-2026.11", "ids-2026.11"] {
        es.refresh(i).await;
    }
}

fn config(dir: &Path, es: &str, tb: &str, hook: &str) -> Config {
    std::fs::write(dir.join("tb.key"), KEY).unwrap();
    let text = format!(
        r#"
[sensor]
name = "bl-job-{pid}"
pin_root = "{dir}/nopins"

[intel.threatbook]
base_url = "{tb}"
api_key = {{ file = "{dir}/tb.key" }}
[intel.threatbook.limits]
batch_window_ms = 5

[filter]
client_allow = ["198.51.100.0/24"]

[blocklist]
results_dir = "{dir}/results"

[blocklist.elasticsearch]
url = "{es}"
page_size = 2

[[blocklist.sources]]
index = "ngfw-*"
field = "source.ip"
device = "NGFW"

[[blocklist.sources]]
index = "waf-*"
field = "src_ip"
device = "WAF"

[[blocklist.sources]]
index = "ids-*"
field = "attacker"
device = "IDS"
timestamp_field = "ts"

[blocklist.policy]
state_dir = "{dir}/state"
allow = ["91.240.118.0/24"]
# Seed 003's rule, chosen explicitly: any source the intel calls malicious, one alert is enough.
min_alerts = 1

[blocklist.edl]
path = "{dir}/edl.txt"

[blocklist.export.fortigate]
path = "{dir}/export/fortigate.txt"

[blocklist.export.checkpoint]
path = "{dir}/export/checkpoint.csv"

[blocklist.export.mikrotik]
path = "{dir}/export/mikrotik.rsc"

[[alerts.webhook]]
url = "{hook}"
"#,
        pid = std::process::id(),
        dir = dir.display(),
    );
    Config::from_toml(&text, "test").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_of_alerts_becomes_results_and_an_edl_and_a_failing_provider_degrades_the_night() {
    let server = Osmem::start();
    let es = Client::new(&server.url());
    seed(&es).await;
    let tb = FakeThreatBook::start(KEY).await.unwrap();
    let info = FakeIpInfo {
        carrier: "Linode".into(),
        country: "United States".into(),
        asn_number: Some(63949),
        asn_info: "LINODE-AP".into(),
        ..Default::default()
    };
    tb.set_ip(
        "80.82.77.139".parse().unwrap(),
        FakeVerdict::malicious("Scanner"),
        info.clone(),
    );
    tb.set_ip(
        "45.33.32.156".parse().unwrap(),
        FakeVerdict::malicious("Brute Force"),
        info.clone(),
    );
    tb.set_ip(
        "2a01:4f8::77".parse().unwrap(),
        FakeVerdict {
            confidence_level: "low".into(),
            ..FakeVerdict::malicious("Spam")
        },
        info.clone(),
    );
    tb.set_ip("185.220.101.4".parse().unwrap(), FakeVerdict::clean(), info);

    let dir = tempfile::tempdir().unwrap();
    let hook = FakeWeCom::start("unused").await;
    let cfg = config(dir.path(), &server.url(), tb.base_url(), &hook.json_url());
    let now = datetime!(2026-11-24 18:30 UTC); // 02:30 on the 25th in Shanghai
    let report = job::run_once(
        &cfg.job_context(),
        Some(date!(2026 - 11 - 23)),
        false,
        now,
        None,
    )
    .await
    .expect("the job runs");

    // Collected: 10 alerts of the day (the other two are outside it), 7 distinct parsable IPs.
    assert_eq!(report.alerts, 10, "{report:?}");
    assert_eq!(report.unparsable, 1);
    assert_eq!(report.distinct_ips, 7);
    // Never asked about: 10.1.2.3 (private), 198.18.0.1 (benchmarking range),
    // 91.240.118.5 (configured allowlist).
    assert_eq!(report.never_blocked, 3);
    let asked: Vec<IpAddr> = tb
        .requests()
        .iter()
        .flat_map(|r| r.resources.iter().map(|s| s.parse().unwrap()))
        .collect();
    let mut asked_sorted = asked.clone();
    asked_sorted.sort();
    let want: Vec<IpAddr> = [
        "45.33.32.156",
        "185.220.101.4",
        "80.82.77.139",
        "2a01:4f8::77",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(asked_sorted, want_sorted);
    assert!(
        tb.requests()
            .iter()
            .all(|r| r.path == "/v3/scene/ip_reputation" && r.key_ok)
    );

    // The EDL: the two malicious IPs at or above the thresholds, nothing else.
    let edl = std::fs::read_to_string(dir.path().join("edl.txt")).unwrap();
    let listed: Vec<&str> = edl
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(listed, ["45.33.32.156", "80.82.77.139"], "{edl}");
    assert_eq!(report.summary.added, 2);
    assert_eq!(report.summary.below_threshold, 1);

    // The same list went to every configured export, each with its reason where it fits.
    assert_eq!(report.exports.failed(), 0, "{:?}", report.exports);
    assert_eq!(report.exports.outcomes.len(), 3);
    let export =
        |name: &str| std::fs::read_to_string(dir.path().join("export").join(name)).unwrap();
    assert_eq!(export("fortigate.txt"), "45.33.32.156\n80.82.77.139\n");
    let cp = export("checkpoint.csv");
    assert!(
        cp.starts_with("# UNIQ-NAME,VALUE,TYPE,CONFIDENCE,SEVERITY,PRODUCT,COMMENT\n"),
        "{cp}"
    );
    assert!(
        cp.contains("dns-sensor_45.33.32.156,45.33.32.156,IP,"),
        "{cp}"
    );
    assert_eq!(cp.lines().count(), 3, "{cp}");
    let rsc = export("mikrotik.rsc");
    assert!(rsc.contains("address=80.82.77.139 timeout="), "{rsc}");
    assert!(rsc.contains("nightly intel severity "), "{rsc}");
    let exports_before: Vec<String> = ["fortigate.txt", "checkpoint.csv", "mikrotik.rsc"]
        .iter()
        .map(|n| export(n))
        .collect();

    // The night's summary went to the alert channel.
    hook.wait_for(std::time::Duration::from_secs(10), |r| !r.is_empty())
        .await;
    let notice = hook.received()[0].body.clone().expect("JSON body");
    assert_eq!(notice["notice"]["kind"], "blocklist_run", "{notice}");
    assert_eq!(notice["notice"]["summary"]["added"], 2, "{notice}");
    assert_eq!(notice["notice"]["distinct_ips"], 7, "{notice}");

    // The results, CSV and JSON lines, one row per collected IP.
    let jsonl = std::fs::read_to_string(&report.results.1).unwrap();
    let rows: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 7);
    let row = |ip: &str| rows.iter().find(|r| r["ip"] == ip).unwrap().clone();
    let r = row("45.33.32.156");
    assert_eq!(r["outcome"], "listed");
    assert_eq!(r["alerts"], 2);
    assert_eq!(r["devices"], json!(["NGFW", "WAF"]));
    assert_eq!(r["severity"], "high");
    assert_eq!(r["carrier"], "Linode");
    assert_eq!(r["asn"], 63949);
    assert_eq!(row("80.82.77.139")["first_alert"], "2026-11-22T16:00:00Z");
    assert_eq!(row("10.1.2.3")["outcome"], "never_block:private (RFC 1918)");
    assert_eq!(row("2a01:4f8::77")["outcome"], "not_listed");
    assert_eq!(row("185.220.101.4")["is_malicious"], false);
    let csv = std::fs::read_to_string(&report.results.0).unwrap();
    assert_eq!(csv.lines().count(), 8, "{csv}");
    assert!(csv.starts_with("ip,outcome,is_malicious,confidence_level,severity"));

    // Verdicts are reused across nights: a re-run within their lifetime asks nothing.
    tb.clear_requests();
    let again = job::run_once(
        &cfg.job_context(),
        Some(date!(2026 - 11 - 23)),
        false,
        now + time::Duration::hours(1),
        None,
    )
    .await
    .unwrap();
    assert_eq!(again.lookups.asked, 0, "{again:?}");
    assert_eq!(tb.request_count(), 0);
    assert!(!again.edl_changed);

    // Four days later the clean address's cached verdict has expired and the provider fails
    // for it: the night degrades, it does not freeze. The cached malicious verdicts still
    // renew their entries, the failed address is reported and kept pending, nothing listed is
    // lost.
    let _ = exports_before;
    let fortigate_before = export("fortigate.txt");
    tb.set_ip(
        "185.220.101.4".parse().unwrap(),
        FakeVerdict::malicious("C2"),
        FakeIpInfo::default(),
    );
    tb.set_mode(FakeMode::ResponseCode(-5));
    let later = now + time::Duration::days(4);
    let degraded = job::run_once(
        &cfg.job_context(),
        Some(date!(2026 - 11 - 23)),
        false,
        later,
        None,
    )
    .await
    .expect("a failed lookup degrades the night instead of failing it");
    assert_eq!(degraded.lookups.asked, 1, "{degraded:?}");
    assert_eq!(degraded.lookups.failed, 1, "{degraded:?}");
    assert!(degraded.lookups.first_error.is_some());
    assert_eq!(degraded.summary.renewed, 2, "{degraded:?}");
    assert_eq!(degraded.summary.total, 2);
    assert_eq!(
        export("fortigate.txt"),
        fortigate_before,
        "the same addresses"
    );
    let rows: Vec<Value> = std::fs::read_to_string(&degraded.results.1)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let failed_row = rows.iter().find(|r| r["ip"] == "185.220.101.4").unwrap();
    assert_eq!(failed_row["outcome"], "lookup_failed_retry_next_night");

    // The next night the provider is back: the pending address is asked again although it did
    // not alert that day, and listed.
    tb.set_mode(FakeMode::Normal);
    tb.clear_requests();
    let next = job::run_once(
        &cfg.job_context(),
        Some(date!(2026 - 11 - 24)),
        false,
        later + time::Duration::days(1),
        None,
    )
    .await
    .unwrap();
    assert_eq!(next.retried, 1, "{next:?}");
    assert_eq!(next.lookups.failed, 0);
    assert!(
        std::fs::read_to_string(dir.path().join("edl.txt"))
            .unwrap()
            .contains("185.220.101.4"),
        "listed once its verdict came"
    );
}
