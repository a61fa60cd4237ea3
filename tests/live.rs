//! The sensor attached to a veth in a network namespace the test creates, with real `dig`
//! queries from the client namespace. Needs root, iproute2, dig and bpftool; fails without them.

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
    daemon,
    daemon::Daemon,
    netns::{Topology, sh, unique},
    responder::{Responder, Seen},
};
use serde_json::{Value, json};

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    pin_dir: PathBuf,
    name: String,
}

fn write_config(
    dir: &Path,
    interface: &str,
    allow: &[String],
    block: &[String],
    extra: &str,
) -> Setup {
    let name = unique("live");
    let pin_root = format!("/sys/fs/bpf/dns-sensor-test-{name}");
    let config = dir.join("sensor.toml");
    let text = format!(
        "[sensor]\nname = \"{name}\"\npin_root = \"{pin_root}\"\n\n[capture]\ninterfaces = [\"{interface}\"]\n\n\
         [filter]\nclient_allow = {allow:?}\n\n[blocklist]\nentries = {block:?}\n{extra}"
    );
    std::fs::write(&config, text).expect("write config");
    Setup {
        _dir: tempfile::tempdir().expect("tempdir"),
        config,
        pin_dir: PathBuf::from(pin_root).join(&name),
        name,
    }
}

fn dig(topo: &Topology, args: &[&str]) -> std::process::Output {
    let mut c = topo.command("dig");
    c.args(["+tries=1", "+timeout=2"]).args(args);
    c.output().expect("run dig (apt package dnsutils)")
}

/// The document the sensor must write for a query the responder saw.
fn expected_doc(s: &Seen, server: IpAddr, interface: &str, observer: &str, qtype: &str) -> Value {
    json!({
        "event": {"kind": "event", "category": ["network"], "type": ["protocol"], "dataset": "dns"},
        "source": {"ip": s.client.ip().to_string(), "port": s.client.port()},
        "destination": {"ip": server.to_string(), "port": 53},
        "network": {
            "transport": if s.tcp { "tcp" } else { "udp" },
            "type": if server.is_ipv4() { "ipv4" } else { "ipv6" },
            "protocol": "dns",
        },
        "dns": {"id": s.id, "type": "query", "question": {"name": s.name, "type": qtype, "class": "IN"}},
        "observer": {"name": observer, "ingress": {"interface": {"name": interface}}},
    })
}

fn xdp_attached(interface: &str) -> bool {
    sh("ip", &["link", "show", "dev", interface]).contains("xdp")
}

#[test]
fn dig_queries_become_exact_json_lines_allowlist_and_blocklist_apply() {
    let topo = Topology::new(true);
    let allowed = topo.add_client_v4(3);
    let blocked = topo.add_client_v4(4);
    let server4 = IpAddr::V4(topo.v4(1));
    let server6 = IpAddr::V6(topo.v6(1));
    let responder = Responder::start(&[server4, server6]);
    let dir = tempfile::tempdir().expect("tempdir");
    let setup = write_config(
        dir.path(),
        &topo.host_if,
        &[allowed.to_string()],
        &[blocked.to_string()],
        "",
    );
    let t0 = time::OffsetDateTime::now_utc();
    let mut daemon = Daemon::start(sensor_bin(), &setup.config, dir.path());
    assert!(xdp_attached(&topo.host_if), "program attached");

    let s4 = server4.to_string();
    let s6 = server6.to_string();
    let queries: [(&[&str], &str); 4] = [
        (&[&format!("@{s4}"), "WWW.Example.COM", "A"], "A"),
        (&[&format!("@{s6}"), "ipv6.example.org", "AAAA"], "AAAA"),
        (
            &["+tcp", &format!("@{s4}"), "txt.example.net", "TXT"],
            "TXT",
        ),
        (&["+tcp", &format!("@{s6}"), "example.com", "MX"], "MX"),
    ];
    for (args, _) in &queries {
        let out = dig(&topo, args);
        assert!(
            out.status.success(),
            "dig {args:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let out = dig(
        &topo,
        &[
            "-b",
            &allowed.to_string(),
            &format!("@{s4}"),
            "allowed.example",
            "A",
        ],
    );
    assert!(out.status.success(), "an allowlisted client's query passes");
    let out = dig(
        &topo,
        &[
            "-b",
            &blocked.to_string(),
            "+timeout=1",
            &format!("@{s4}"),
            "blocked.example",
            "A",
        ],
    );
    assert!(!out.status.success(), "a blocklisted source gets no answer");

    // While it runs: `sensor stats` and bpftool read the pinned maps.
    let stats = daemon::stats_json(sensor_bin(), &setup.config);
    assert_eq!(stats["events"], 4, "{stats}");
    assert_eq!(stats["allowlisted"], 1, "{stats}");
    assert_eq!(stats["blocked"], 1, "{stats}");
    for map in sensor_kernel::loader::ALL_MAPS {
        assert!(
            setup.pin_dir.join(map).exists(),
            "{map} is pinned while the sensor runs"
        );
    }
    let dump = sh(
        "bpftool",
        &[
            "-j",
            "map",
            "dump",
            "pinned",
            &setup.pin_dir.join("BLOCKLIST").display().to_string(),
        ],
    );
    let dump: Value = serde_json::from_str(&dump).expect("bpftool JSON");
    assert_eq!(dump[0]["formatted"]["value"]["packets"], 1, "{dump}");
    assert_eq!(dump[0]["formatted"]["key"]["prefix_len"], 128, "{dump}");

    let lines = daemon.stop();
    let t1 = time::OffsetDateTime::now_utc();
    let seen = responder.seen();
    assert!(
        seen.iter().all(|s| s.client.ip() != IpAddr::V4(blocked)),
        "blocked packets never arrived"
    );
    let from_sensor: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(
        from_sensor.len(),
        4,
        "one line per query, none for the allowlisted client: {lines:#?}"
    );
    for (doc, (_, qtype)) in from_sensor.iter().zip(&queries) {
        let name = doc["dns"]["question"]["name"].as_str().unwrap();
        let s = seen
            .iter()
            .find(|s| s.name == name && s.id == doc["dns"]["id"])
            .unwrap_or_else(|| panic!("{name} not seen by the server"));
        let server = if s.client.is_ipv4() { server4 } else { server6 };
        let mut doc = doc.clone();
        let ts = doc
            .as_object_mut()
            .unwrap()
            .remove("@timestamp")
            .expect("@timestamp");
        let ts = time::OffsetDateTime::parse(
            ts.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .expect("RFC 3339");
        assert!(
            ts >= t0 - Duration::from_millis(20) && ts <= t1,
            "timestamp {ts} within the test"
        );
        assert_eq!(
            doc,
            expected_doc(s, server, &topo.host_if, &setup.name, qtype)
        );
    }
    let names: Vec<&str> = from_sensor
        .iter()
        .map(|d| d["dns"]["question"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "www.example.com",
            "ipv6.example.org",
            "txt.example.net",
            "example.com"
        ]
    );

    // Stopped: detached and unpinned.
    assert!(!xdp_attached(&topo.host_if), "program detached");
    assert!(!setup.pin_dir.exists(), "pins removed");
    let summary = daemon.stderr_seen.join("\n");
    assert!(summary.contains("written=4"), "{summary}");
    // The program's diagnostics were read (aya-log), and it logged nothing: no packet logs.
    assert!(summary.contains("kernel_log=true"), "{summary}");
    assert!(!summary.contains("sensor_ebpf"), "{summary}");
}

fn expect_config_error(config_text: &str, needle: &str, as_nobody: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config_text).unwrap();
    let mut cmd = if as_nobody {
        let mut c = std::process::Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(sensor_bin());
        c
    } else {
        std::process::Command::new(sensor_bin())
    };
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = cmd
        .args(["run", "--config"])
        .arg(&path)
        .env("NO_COLOR", "1")
        .output()
        .expect("run sensor");
    assert!(!out.status.success(), "must fail: {config_text}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{needle:?} in {stderr}"
    );
}

#[test]
fn bad_config_and_missing_privileges_fail_with_one_line_and_leave_nothing_attached() {
    let topo = Topology::new(false);
    let name = unique("bad");
    let pin_root = format!("/sys/fs/bpf/dns-sensor-test-{name}");
    let base = format!(
        "[sensor]\nname = \"{name}\"\npin_root = \"{pin_root}\"\n[capture]\ninterfaces = [\"{}\"]\n",
        topo.host_if
    );
    expect_config_error(&format!("{base}bogus_key = 1\n"), "bogus_key", false);
    expect_config_error(
        &format!("{base}[filter]\nclient_allow = [\"10.0.0.0/33\"]\n"),
        "filter.client_allow",
        false,
    );
    expect_config_error(
        &format!("{base}[blocklist]\nentries = [\"not-an-ip\"]\n"),
        "blocklist.entries",
        false,
    );
    expect_config_error(
        &base.replace(&topo.host_if, "nosuchif0"),
        "unknown interface \"nosuchif0\"",
        false,
    );
    expect_config_error(&base, "missing privileges", true);
    assert!(!xdp_attached(&topo.host_if), "nothing attached");
    assert!(!Path::new(&pin_root).exists(), "nothing pinned");
}

/// `blocklist.keep_on_exit`: the pinned BLOCKLIST (with its hit counters) outlives the sensor,
/// the program does not (fail open), and the next start reuses the map.
#[test]
fn kept_blocklist_survives_a_restart_with_its_counters() {
    let topo = Topology::new(false);
    let blocked = topo.add_client_v4(4);
    let dir = tempfile::tempdir().expect("tempdir");
    let setup = write_config(
        dir.path(),
        &topo.host_if,
        &[],
        &[blocked.to_string()],
        "keep_on_exit = true\n",
    );
    let blocklist_pin = setup.pin_dir.join("BLOCKLIST");
    let hits = || {
        let dump = sh(
            "bpftool",
            &[
                "-j",
                "map",
                "dump",
                "pinned",
                &blocklist_pin.display().to_string(),
            ],
        );
        let dump: Value = serde_json::from_str(&dump).expect("bpftool JSON");
        dump[0]["formatted"]["value"]["packets"]
            .as_u64()
            .expect("one entry")
    };
    // Removes the kept pins even when an assertion below fails.
    struct Unpin(PathBuf);
    impl Drop for Unpin {
        fn drop(&mut self) {
            sensor_kernel::loader::unpin(&self.0, &[]);
        }
    }
    let _unpin = Unpin(setup.pin_dir.clone());

    // A server answers, so a failed query from the blocked source means it was dropped.
    let _server = Responder::start(&[IpAddr::V4(topo.v4(1))]);
    let server = format!("@{}", topo.v4(1));
    let answered_from = |client: &str| {
        dig(
            &topo,
            &["-b", client, "+timeout=1", &server, "x.example", "A"],
        )
        .status
        .success()
    };
    let mut daemon = Daemon::start(sensor_bin(), &setup.config, dir.path());
    assert!(!answered_from(&blocked.to_string()), "blocked");
    assert!(answered_from(&topo.v4(2).to_string()), "others pass");
    daemon.stop();
    assert!(
        !xdp_attached(&topo.host_if),
        "the program went with the process"
    );
    assert!(blocklist_pin.exists(), "BLOCKLIST kept");
    assert!(!setup.pin_dir.join("EVENTS").exists(), "other pins removed");
    assert_eq!(hits(), 1);

    let mut daemon = Daemon::start(sensor_bin(), &setup.config, dir.path());
    assert!(
        !answered_from(&blocked.to_string()),
        "still blocked after the restart"
    );
    assert_eq!(hits(), 2, "the restarted sensor counts into the same entry");
    daemon.stop();
}
