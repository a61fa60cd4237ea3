//! The export files served by the daemon's EDL server next to the PAN-OS list: each on its own
//! URL path with the EDL's protection (allowed clients at accept, Basic auth, ETag/304), the same
//! entries as the EDL in its vendor's format, a path nobody configured is 404, a hand-edited file
//! that does not parse is not served, and the fetch records name the list each firewall got (in
//! `/metrics` and `sensor blocklist show --json`). Needs root and iproute2; fails without them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use std::{
    collections::BTreeSet,
    process::Command,
    time::{Duration, Instant},
};

use common::sensor_bin;
use reqwest::{StatusCode, header};
use sensor_blocklist::{
    neverblock::NeverBlock,
    store::{PolicySection, Store, Verdict},
};
use sensor_model::verdict::{Confidence, Severity};
use sensor_testkit::{
    daemon::Daemon,
    netns::{Topology, unique},
    osmem::free_port,
};
use serde_json::Value;

const PASSWORD: &str = "feed-pw";

/// The addresses of each format, read by its grammar.
fn edl_addrs(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn checkpoint_addrs(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            assert_eq!(cells[2], "IP", "{l}");
            cells[1].to_owned()
        })
        .collect()
}

fn mikrotik_addrs(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(":do { add list=\"dns-sensor-block\" address="))
        .map(|r| r.split(' ').next().unwrap().to_owned())
        .collect()
}

#[test]
fn export_feeds_are_served_like_the_edl_with_auth_allowed_clients_etags_and_fetch_records() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let topo = Topology::new(false);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The stored list: two addresses the nightly run listed.
    let policy = PolicySection {
        state_dir: d.join("state"),
        change_floor: 10,
        ..PolicySection::default()
    };
    let mut store = Store::load(&policy.state_dir).unwrap();
    let verdicts: Vec<Verdict> = ["45.33.32.156", "185.220.101.4"]
        .iter()
        .map(|ip| Verdict {
            ip: ip.parse().unwrap(),
            malicious: true,
            confidence: Some(Confidence::High),
            severity: Some(Severity::High),
        })
        .collect();
    let plan = store
        .plan(
            time::OffsetDateTime::now_utc(),
            &verdicts,
            &NeverBlock::new(&[], &[]),
            &policy,
            false,
        )
        .unwrap();
    store.commit(&plan).unwrap();
    std::fs::write(d.join("pw"), PASSWORD).unwrap();

    let (metrics_port, edl_port) = (free_port(), free_port());
    let name = unique("edlx");
    let config = d.join("sensor.toml");
    std::fs::write(
        &config,
        format!(
            r#"[sensor]
name = "{name}"
pin_root = "/sys/fs/bpf/dns-sensor-test-{name}"

[capture]
interfaces = ["{iface}"]

[metrics]
listen = "127.0.0.1:{metrics_port}"
allowed_clients = ["127.0.0.1"]

[blocklist.policy]
state_dir = "{dir}/state"
change_floor = 10

[blocklist.edl]
path = "{dir}/edl.txt"
listen = "127.0.0.1:{edl_port}"
allowed_clients = ["127.0.0.1"]
basic_auth_user = "fw"
basic_auth_password = {{ file = "{dir}/pw" }}
allow_basic_auth_over_http = true

[[blocklist.edl.firewalls]]
name = "border"
address = "127.0.0.1"

[blocklist.export.fortigate]
path = "{dir}/export/fortigate.txt"
url_path = "/feeds/fortigate.txt"

[blocklist.export.checkpoint]
path = "{dir}/export/checkpoint.csv"
url_path = "/feeds/checkpoint.csv"

[blocklist.export.mikrotik]
path = "{dir}/export/mikrotik.rsc"
url_path = "/feeds/mikrotik.rsc"
"#,
            iface = topo.host_if,
            dir = d.display(),
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(sensor_bin(), &config, d);
    daemon.wait_for_log("EDL server listening", Duration::from_secs(30));
    let base = format!("http://127.0.0.1:{edl_port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let get = |path: &str, auth: bool, etag: Option<&str>| {
        rt.block_on(async {
            let mut r = client.get(format!("{base}{path}"));
            if auth {
                r = r.basic_auth("fw", Some(PASSWORD));
            }
            if let Some(e) = etag {
                r = r.header(header::IF_NONE_MATCH, e);
            }
            let r = r.send().await.unwrap();
            let status = r.status();
            let h = r.headers().clone();
            (status, h, r.text().await.unwrap())
        })
    };

    let (status, _, edl) = get("/blocklist.txt", true, None);
    assert_eq!(status, StatusCode::OK, "{edl}");
    let expected = edl_addrs(&edl);
    assert_eq!(
        expected,
        BTreeSet::from(["45.33.32.156".to_owned(), "185.220.101.4".to_owned()])
    );
    for (path, content_type, addrs) in [
        (
            "/feeds/fortigate.txt",
            "text/plain",
            edl_addrs as fn(&str) -> BTreeSet<String>,
        ),
        ("/feeds/checkpoint.csv", "text/csv", checkpoint_addrs),
        ("/feeds/mikrotik.rsc", "text/plain", mikrotik_addrs),
    ] {
        // With auth: the same entries as the EDL, in the vendor's format.
        let (status, h, body) = get(path, true, None);
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(addrs(&body), expected, "{path}:\n{body}");
        assert!(
            h[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(content_type),
            "{path}: {h:?}"
        );
        assert!(h.contains_key(header::LAST_MODIFIED), "{path}");
        // ETag: the version the firewall has is answered with 304 and no body.
        let etag = h[header::ETAG].to_str().unwrap().to_owned();
        let (status, h304, body) = get(path, true, Some(&etag));
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{path}");
        assert!(body.is_empty());
        assert_eq!(h304[header::ETAG].to_str().unwrap(), etag);
        // Without auth: 401 with the challenge, and nothing of the list.
        let (status, h, body) = get(path, false, None);
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(h.contains_key(header::WWW_AUTHENTICATE));
        assert!(!body.contains("45.33.32.156"));
    }
    // A path nobody configured.
    let (status, _, _) = get("/feeds/other.txt", true, None);
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A client outside allowed_clients is closed at accept, whatever the path.
    let refused = rt.block_on(async {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, 7]))
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
            .get(format!("{base}/feeds/fortigate.txt"))
            .basic_auth("fw", Some(PASSWORD))
            .send()
            .await
    });
    assert!(refused.is_err(), "{refused:?}");

    // A hand edit that parses is served; one that does not leaves the served feed as it was.
    let feed = d.join("export/fortigate.txt");
    let edited = format!(
        "{}203.0.113.0/24\n",
        std::fs::read_to_string(&feed).unwrap()
    );
    std::fs::write(&feed, &edited).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while get("/feeds/fortigate.txt", true, None).2 != edited {
        assert!(Instant::now() < deadline, "the hand edit is not served");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(&feed, "not an address\n").unwrap();
    daemon.wait_for_log("is not an address, subnet or range", Duration::from_secs(5));
    assert_eq!(get("/feeds/fortigate.txt", true, None).2, edited);

    // The last fetch was of the MikroTik script: the firewall's record says so, and the
    // per-list counters saw each list.
    let (status, _, _) = get("/feeds/mikrotik.rsc", true, None);
    assert_eq!(status, StatusCode::OK);
    let metrics = rt.block_on(async {
        reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let value = |key: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{key} in:\n{metrics}"))
    };
    assert_eq!(
        value("dns_sensor_edl_list_fetches_total{list=\"checkpoint\",result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        value("dns_sensor_edl_list_fetches_total{list=\"checkpoint\",result=\"not_modified\"}"),
        1.0
    );
    assert_eq!(
        value("dns_sensor_edl_list_fetches_total{list=\"mikrotik\",result=\"unauthorized\"}"),
        1.0
    );
    assert_eq!(
        value("dns_sensor_edl_fetch_current{firewall=\"border\"}"),
        1.0,
        "compared against the MikroTik script's version"
    );
    // `sensor blocklist show --json`: the kernel entries and the fetch records in one object.
    let deadline = Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let out = Command::new(sensor_bin())
            .args(["blocklist", "show", "--json", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let border = v["fetches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "border")
            .cloned();
        if border.as_ref().is_some_and(|b| b["list"] == "mikrotik") {
            break v;
        }
        assert!(Instant::now() < deadline, "no fetch record in:\n{v}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(shown["kernel"].is_array(), "{shown}");
    let border = shown["fetches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "border")
        .unwrap();
    assert_eq!(border["address"], "127.0.0.1", "{shown}");
    assert!(border["successes"].as_u64().unwrap() >= 5, "{shown}");
    assert!(border["unauthorized"].as_u64().unwrap() >= 3, "{shown}");
    drop(daemon);
}

/// An export file that is not there (here its export cannot write it) is answered with 503,
/// like an EDL not yet published, and counted as `unavailable` for the firewall; the EDL itself
/// is served as usual.
#[test]
fn a_missing_export_file_is_503_not_an_empty_list() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let topo = Topology::new(false);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("edl.txt"), "45.33.32.156\n").unwrap();
    // A file where the export's directory should be.
    std::fs::write(d.join("blocker"), "").unwrap();
    let edl_port = free_port();
    let name = unique("edlm");
    let config = d.join("sensor.toml");
    std::fs::write(
        &config,
        format!(
            r#"[sensor]
name = "{name}"
pin_root = "/sys/fs/bpf/dns-sensor-test-{name}"

[capture]
interfaces = ["{iface}"]

[blocklist.edl]
path = "{dir}/edl.txt"
listen = "127.0.0.1:{edl_port}"
allowed_clients = ["127.0.0.1"]

[blocklist.export.fortigate]
path = "{dir}/blocker/fortigate.txt"
url_path = "/fortigate.txt"
"#,
            iface = topo.host_if,
            dir = d.display(),
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(sensor_bin(), &config, d);
    daemon.wait_for_log("EDL server listening", Duration::from_secs(30));
    let get = |path: &str| {
        rt.block_on(async {
            let r = reqwest::get(format!("http://127.0.0.1:{edl_port}{path}"))
                .await
                .unwrap();
            (r.status(), r.text().await.unwrap())
        })
    };
    let (status, body) = get("/fortigate.txt");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(!body.contains("45.33.32.156"));
    assert_eq!(
        get("/blocklist.txt"),
        (StatusCode::OK, "45.33.32.156\n".into())
    );
    drop(daemon);
}
