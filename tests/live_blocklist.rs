//! The nightly blocklist end to end with a running sensor: alerts in the test search server →
//! `sensor blocklist run` (fake ThreatBook) → the EDL served by the daemon over HTTP with basic
//! auth, the kernel's BLOCKLIST (`sensor blocklist show`), and in network namespaces the listed
//! source's packets dropped while another client's pass. Needs root, iproute2 and dig.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use common::sensor_bin;
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use sensor_testkit::{
    daemon::Daemon,
    fake_threatbook::{FakeIpInfo, FakeMode, FakeThreatBook, FakeVerdict},
    netns::{Topology, sh, unique},
    osmem::{Client, Osmem},
    responder::Responder,
};
use serde_json::Value;

const TB_KEY: &str = "canary-tb-live-bl-93d1";
const EDL_PASSWORD: &str = "canary-edl-pw-4c2b";
/// A public address (not in any never-block range) for the attacking client.
const ATTACKER: &str = "80.82.77.139";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

use sensor_testkit::ports::free_port;

#[test]
fn the_nightly_run_lists_an_attacker_in_the_served_edl_and_the_kernel_drops_it() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = Osmem::start();
    let es = Client::new(&server.url());
    rt.block_on(es.seed_alerts(
        "ngfw-live",
        &[
            (ATTACKER, "2026-11-23T03:00:00Z"),
            (ATTACKER, "2026-11-23T03:00:00Z"),
            ("45.33.32.156", "2026-11-23T03:00:00Z"),
        ],
    ));
    let tb = rt
        .block_on(FakeThreatBook::start(TB_KEY))
        .expect("fake ThreatBook");
    tb.set_ip(
        ATTACKER.parse().unwrap(),
        FakeVerdict::malicious("Brute Force"),
        FakeIpInfo::default(),
    );
    tb.set_ip(
        "45.33.32.156".parse().unwrap(),
        FakeVerdict::clean(),
        FakeIpInfo::default(),
    );

    let topo = Topology::new(false);
    let serverip = IpAddr::V4(topo.v4(1));
    let good_client = topo.v4(2);
    // The attacker's public address on the client side, routed back from the host side.
    topo.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{ATTACKER}/32"),
        "dev",
        &topo.peer_if,
    ]);
    sh(
        "ip",
        &[
            "route",
            "add",
            &format!("{ATTACKER}/32"),
            "dev",
            &topo.host_if,
        ],
    );
    let responder = Responder::start(&[serverip]);

    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let tb_key = write(d, "tb.key", TB_KEY);
    let edl_pw = write(d, "edl.pw", EDL_PASSWORD);
    let name = unique("live-bl");
    let edl_port = free_port();
    let config = write(
        d,
        "sensor.toml",
        &format!(
            r#"[sensor]
name = "{name}"
pin_root = "/sys/fs/bpf/dns-sensor-test-{name}"

[capture]
interfaces = ["{iface}"]

[intel.threatbook]
base_url = "{tb_url}"
api_key = {{ file = "{tb_key}" }}
[intel.threatbook.limits]
batch_window_ms = 5

[blocklist]
results_dir = "{dir}/results"

[blocklist.elasticsearch]
url = "{es_url}"

[[blocklist.sources]]
index = "ngfw-*"
field = "source.ip"
device = "NGFW"

[blocklist.policy]
state_dir = "{dir}/state"

[blocklist.edl]
path = "{dir}/edl.txt"
listen = "127.0.0.1:{edl_port}"
basic_auth_user = "firewall"
basic_auth_password = {{ file = "{edl_pw}" }}
# Loopback only, so the password never crosses a network.
allow_basic_auth_over_http = true
"#,
            iface = topo.host_if,
            tb_url = tb.base_url(),
            tb_key = tb_key.display(),
            es_url = server.url(),
            edl_pw = edl_pw.display(),
            dir = d.display(),
        ),
    );
    let mut daemon = Daemon::start(sensor_bin(), &config, d);
    let dig = |source: &str, qname: &str| {
        topo.command("dig")
            .args([
                "+tries=1",
                "+timeout=1",
                "-b",
                source,
                &format!("@{serverip}"),
                qname,
                "A",
            ])
            .output()
            .expect("run dig")
            .status
            .success()
    };
    assert!(
        dig(ATTACKER, "before.example"),
        "not blocked before the run"
    );

    // The nightly run, from the command line, for the alerts' day.
    let out = Command::new(sensor_bin())
        .args(["blocklist", "run", "--date", "2026-11-23", "--config"])
        .arg(&config)
        .output()
        .expect("sensor blocklist run");
    assert!(
        out.status.success(),
        "blocklist run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["summary"]["added"], 1, "{report}");

    // The kernel map has it (with its expiry), and the attacker's packets no longer arrive.
    let show = Command::new(sensor_bin())
        .args(["blocklist", "show", "--json", "--config"])
        .arg(&config)
        .output()
        .expect("sensor blocklist show");
    let shown: Value = serde_json::from_slice(&show.stdout).expect("show JSON");
    let entries = shown["kernel"].as_array().expect("array");
    assert_eq!(entries.len(), 1, "{shown}");
    assert_eq!(entries[0]["net"], format!("{ATTACKER}/32"), "{shown}");
    assert!(
        !dig(ATTACKER, "after.example"),
        "the listed source is dropped"
    );
    assert!(
        dig(&good_client.to_string(), "other.example"),
        "others pass"
    );
    assert!(responder.seen().iter().all(|s| s.name != "after.example"));

    // The daemon serves the new list (it re-reads the file the command wrote), with auth.
    let url = format!("http://127.0.0.1:{edl_port}/blocklist.txt");
    let body = rt.block_on(async {
        let http = reqwest::Client::new();
        let denied = http.get(&url).send().await.expect("GET").status();
        assert_eq!(denied, 401);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let r = http
                .get(&url)
                .basic_auth("firewall", Some(EDL_PASSWORD))
                .send()
                .await
                .expect("GET with auth");
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            if status == 200 && text.contains(ATTACKER) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "EDL not served: {status} {text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert_eq!(
        body.lines().filter(|l| !l.starts_with('#')).count(),
        1,
        "{body}"
    );
    assert!(!body.contains("45.33.32.156"));

    // The next night the provider is down: the run degrades (failures reported, retried next
    // night), and the served list and the kernel map stay as they were, byte for byte.
    tb.set_ip(
        "45.33.32.156".parse().unwrap(),
        FakeVerdict::malicious("C2"),
        FakeIpInfo::default(),
    );
    tb.set_mode(FakeMode::ResponseCode(-5));
    // The clean verdict is cached for days, so make the run ask again: drop the cache file.
    std::fs::remove_file(d.join("state/reputation.json")).expect("reputation cache exists");
    let out = Command::new(sensor_bin())
        .args(["blocklist", "run", "--date", "2026-11-23", "--config"])
        .arg(&config)
        .output()
        .expect("sensor blocklist run");
    // A failed lookup degrades the night: the run completes, reports the failures (retried
    // the next night), and lists nothing new; nothing listed is lost.
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("run report JSON");
    assert!(report["failed"].as_u64() >= Some(1), "{report}");
    assert_eq!(report["summary"]["added"], 0, "{report}");
    let show_after = Command::new(sensor_bin())
        .args(["blocklist", "show", "--json", "--config"])
        .arg(&config)
        .output()
        .expect("sensor blocklist show");
    let shown_after: Value = serde_json::from_slice(&show_after.stdout).expect("show JSON");
    assert_eq!(shown_after["kernel"][0]["net"], shown["kernel"][0]["net"]);
    assert_eq!(
        shown_after["kernel"][0]["expires_unix"],
        shown["kernel"][0]["expires_unix"]
    );
    assert_eq!(shown_after["kernel"].as_array().unwrap().len(), 1);
    let body_after = rt.block_on(async {
        reqwest::Client::new()
            .get(&url)
            .basic_auth("firewall", Some(EDL_PASSWORD))
            .send()
            .await
            .expect("GET")
            .text()
            .await
            .expect("body")
    });
    assert_eq!(body_after, body, "the served list is unchanged");

    let _ = daemon.stop();
    let logs = daemon.stderr_seen.join("\n");
    assert!(!logs.contains(TB_KEY) && !logs.contains(EDL_PASSWORD));
}
