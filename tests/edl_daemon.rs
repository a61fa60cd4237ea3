//! The EDL inside the running daemon: fetches tracked per firewall (in `/metrics` and
//! `sensor blocklist show`), the alert when a configured firewall stays silent, the metrics
//! server behind its own accept checks, and `/healthz` telling the truth (200 with every check
//! named while capture works, 503 naming the program once its interface is gone). Needs root
//! and iproute2; fails without them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::sensor_bin;
use sensor_testkit::{
    daemon::Daemon,
    fake_wecom::FakeWeCom,
    netns::{Topology, sh, unique},
    osmem::free_port,
};

#[test]
fn fetches_are_tracked_a_silent_firewall_alerts_and_healthz_tells_the_truth() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let topo = Topology::new(false);
    let hook = rt.block_on(FakeWeCom::start("unused"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("edl.txt"),
        "45.33.32.156 expires 2026-12-24 severity high\n",
    )
    .unwrap();
    let (metrics_port, edl_port) = (free_port(), free_port());
    let name = unique("edld");
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

[blocklist.edl]
path = "{dir}/edl.txt"
listen = "127.0.0.1:{edl_port}"
allowed_clients = ["127.0.0.0/8"]

[[blocklist.edl.firewalls]]
name = "pa-busy"
address = "127.0.0.1"

[[blocklist.edl.firewalls]]
name = "pa-quiet"
address = "127.0.0.9"
max_silence_secs = 10

[[alerts.webhook]]
url = "{hook}"
"#,
            iface = topo.host_if,
            dir = d.display(),
            hook = hook.json_url(),
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(sensor_bin(), &config, d);
    daemon.wait_for_log("EDL server listening", Duration::from_secs(30));
    let edl_url = format!("http://127.0.0.1:{edl_port}/blocklist.txt");
    let get = |url: &str| {
        rt.block_on(async {
            let r = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap()
                .get(url)
                .send()
                .await?;
            let status = r.status();
            Ok::<_, reqwest::Error>((status, r.text().await?))
        })
    };
    let (status, body) = get(&edl_url).unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("45.33.32.156"), "{body}");

    // The fetch, per firewall, in /metrics.
    let (status, metrics) = get(&format!("http://127.0.0.1:{metrics_port}/metrics")).unwrap();
    assert_eq!(status, 200);
    let value = |key: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{key} in:\n{metrics}"))
    };
    assert_eq!(
        value("dns_sensor_edl_fetches_total{firewall=\"pa-busy\",result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        value("dns_sensor_edl_fetch_current{firewall=\"pa-busy\"}"),
        1.0
    );
    assert_eq!(
        value("dns_sensor_edl_fetch_current{firewall=\"pa-quiet\"}"),
        0.0
    );
    assert_eq!(
        value("dns_sensor_edl_fetch_last_success_timestamp_seconds{firewall=\"pa-quiet\"}"),
        0.0
    );
    assert!(
        value("dns_sensor_edl_fetch_last_success_timestamp_seconds{firewall=\"pa-busy\"}") > 1.7e9
    );
    assert_eq!(
        value("dns_sensor_http_connections_accepted_total{server=\"edl\"}"),
        1.0
    );

    // /healthz: every check named, all passing.
    let (status, health) = get(&format!("http://127.0.0.1:{metrics_port}/healthz")).unwrap();
    assert_eq!(status, 200, "{health}");
    for check in ["program: ok", "reader: ok", "output: ok", "edl: ok"] {
        assert!(health.contains(check), "{check} in:\n{health}");
    }

    // pa-quiet never fetches: one alert after its 10 s (the check runs every 15 s).
    rt.block_on(hook.wait_for(Duration::from_secs(45), |r| !r.is_empty()));
    let alert = hook.received()[0].body.clone().expect("JSON body");
    assert_eq!(alert["notice"]["kind"], "edl_fetch_silent", "{alert}");
    assert_eq!(alert["notice"]["firewall"], "pa-quiet", "{alert}");
    assert_eq!(hook.received().len(), 1, "pa-busy fetched: no alert for it");

    // `sensor blocklist show` lists both firewalls with what they did.
    let deadline = Instant::now() + Duration::from_secs(30);
    let show = loop {
        let out = Command::new(sensor_bin())
            .args(["blocklist", "show", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        if text.contains("pa-busy") && text.contains("pa-quiet") {
            break text;
        }
        assert!(Instant::now() < deadline, "no fetch table in:\n{text}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let busy = show.lines().find(|l| l.starts_with("pa-busy")).unwrap();
    let quiet = show.lines().find(|l| l.starts_with("pa-quiet")).unwrap();
    assert!(
        busy.contains("127.0.0.1") && !busy.contains("never"),
        "{show}"
    );
    assert!(quiet.contains("never"), "{show}");
    // The JSON form carries the same records next to the kernel's entries.
    let out = Command::new(sensor_bin())
        .args(["blocklist", "show", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(shown["kernel"].is_array(), "{shown}");
    let fetches = shown["fetches"].as_array().unwrap();
    let record = |name: &str| {
        fetches
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {shown}"))
    };
    assert_eq!(record("pa-busy")["address"], "127.0.0.1", "{shown}");
    assert_eq!(record("pa-busy")["list"], "edl", "{shown}");
    assert!(
        record("pa-busy")["successes"].as_u64() >= Some(1),
        "{shown}"
    );
    assert!(record("pa-busy")["last_success_unix"].as_i64() > Some(1_700_000_000));
    assert!(record("pa-quiet")["last_success_unix"].is_null(), "{shown}");

    // The metrics port closes clients outside its allowed list at accept.
    let other = rt.block_on(async {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, 7]))
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
            .send()
            .await
    });
    assert!(other.is_err(), "{other:?}");

    // The capture interface goes away: /healthz says so, with 503.
    sh("ip", &["link", "del", &topo.host_if]);
    let (status, health) = get(&format!("http://127.0.0.1:{metrics_port}/healthz")).unwrap();
    assert_eq!(status, 503, "{health}");
    assert!(
        health.contains(&format!("program: FAILING: {} is gone", topo.host_if)),
        "{health}"
    );
    assert!(health.contains("reader: ok"), "{health}");
    let lines = daemon.stop();
    assert!(lines.is_empty() || lines.iter().all(|l| l.starts_with('{')));
    assert!(
        daemon
            .stderr_seen
            .iter()
            .any(|l| l.contains("firewall has not fetched the EDL")),
        "the silence is logged too"
    );
}

/// Configs that served the EDL open, sent Basic auth in clear, or had a path the router cannot
/// take: the start stops with one line naming the key (no panic), and `check-config` says the
/// same.
#[test]
fn unsafe_edl_configs_stop_the_start_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "secret").unwrap();
    for (edl, key) in [
        ("listen = \"0.0.0.0:8443\"", "blocklist.edl.allow_open"),
        (
            &*format!(
                "listen = \"0.0.0.0:8443\"\nbasic_auth_user = \"fw\"\nbasic_auth_password = {{ file = \"{}\" }}",
                pw.display()
            ),
            "blocklist.edl.allow_basic_auth_over_http",
        ),
        (
            "listen = \"127.0.0.1:8443\"\nallowed_clients = [\"127.0.0.1\"]\nurl_path = \"/{list}\"",
            "blocklist.edl.url_path",
        ),
        (
            "listen = \"127.0.0.1:8443\"\nallowed_clients = [\"127.0.0.1\"]\n[blocklist.edl.limits]\nmax_connections = 0",
            "blocklist.edl.limits",
        ),
    ] {
        let config = dir.path().join("sensor.toml");
        std::fs::write(
            &config,
            format!("[capture]\ninterfaces = [\"lo\"]\n\n[blocklist.edl]\n{edl}\n"),
        )
        .unwrap();
        for args in [&["run", "--config"][..], &["check-config"][..]] {
            let out = Command::new(sensor_bin())
                .args(args)
                .arg(&config)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} {edl}");
            assert!(stderr.contains(key), "{args:?} {edl}: {stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
            assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        }
    }
}

/// HTTPS with the certificate and key handed over as systemd credentials
/// (`$CREDENTIALS_DIRECTORY/...` in the config): a renewed pair is served after SIGHUP, without
/// a restart.
#[test]
fn tls_pair_from_the_credentials_directory_is_reread_on_sighup() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let topo = Topology::new(false);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let creds = d.join("credentials");
    std::fs::create_dir(&creds).unwrap();
    let self_signed = |cn: &str| {
        sh(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                &format!("/CN={cn}"),
                "-addext",
                "subjectAltName=DNS:localhost",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-keyout",
                &creds.join("secret_edl.key").display().to_string(),
                "-out",
                &creds.join("secret_edl.crt").display().to_string(),
            ],
        );
        std::fs::read(creds.join("secret_edl.crt")).unwrap()
    };
    let first = self_signed("first");
    std::fs::write(d.join("edl.txt"), "45.33.32.156\n").unwrap();
    let (edl_port, metrics_port, closed_port) = (free_port(), free_port(), free_port());
    let name = unique("edlt");
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
tls_cert = "$CREDENTIALS_DIRECTORY/secret_edl.crt"
tls_key = "$CREDENTIALS_DIRECTORY/secret_edl.key"

[metrics]
listen = "127.0.0.1:{metrics_port}"

# Nothing listens there: /healthz must say this sink does not deliver.
[elasticsearch]
urls = ["http://127.0.0.1:{closed_port}"]
"#,
            iface = topo.host_if,
            dir = d.display(),
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start_with_env(
        sensor_bin(),
        &config,
        d,
        &[("CREDENTIALS_DIRECTORY", creds.as_os_str())],
    );
    daemon.wait_for_log("EDL server listening", Duration::from_secs(30));
    let fetch = |pem: &[u8]| {
        rt.block_on(async {
            reqwest::Client::builder()
                .tls_certs_only([reqwest::Certificate::from_pem(pem).unwrap()])
                .resolve("localhost", ([127, 0, 0, 1], edl_port).into())
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap()
                .get(format!("https://localhost:{edl_port}/blocklist.txt"))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    assert_eq!(fetch(&first).unwrap(), 200);
    let second = self_signed("second");
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fetch(&second).is_err() {
        assert!(
            Instant::now() < deadline,
            "the renewed pair is not served after SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(fetch(&first).is_err(), "the old certificate is gone");

    // A sink that cannot deliver makes /healthz 503 and says which and why.
    let health = rt.block_on(async {
        let r = reqwest::get(format!("http://127.0.0.1:{metrics_port}/healthz"))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!(health.0, 503, "{}", health.1);
    assert!(
        health
            .1
            .contains("elasticsearch: FAILING: server not reached"),
        "{}",
        health.1
    );
    assert!(health.1.contains("program: ok"), "{}", health.1);
    drop(daemon);
}
