//! The packaged config does not write every query to the journal under systemd: with
//! `output.kind = "stdout"` and stdout being the journal (`JOURNAL_STREAM`, as systemd sets it),
//! the real sensor, attached in a namespace the test creates, captures a `dig` query (counted by
//! the kernel) but writes no JSON line, and says why once; with `output.journal = true` the same
//! setup writes the line. Needs root, iproute2 and dig; fails without them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use std::{net::IpAddr, time::Duration};

use common::sensor_bin;
use sensor_testkit::{
    daemon::{self, Daemon},
    netns::{Topology, unique},
    responder::Responder,
};

/// Runs the sensor with stdout posing as the journal, sends one query, and returns the JSON
/// lines written, the kernel's event count and the sensor's stderr.
fn run(journal_key: &str) -> (Vec<String>, u64, Vec<String>) {
    let topo = Topology::new(false);
    let server = IpAddr::V4(topo.v4(1));
    let _responder = Responder::start(&[server]);
    let dir = tempfile::tempdir().unwrap();
    let name = unique("journal");
    let config = dir.path().join("sensor.toml");
    std::fs::write(
        &config,
        format!(
            "[sensor]\nname = \"{name}\"\npin_root = \"/sys/fs/bpf/dns-sensor-test-{name}\"\n\n\
             [capture]\ninterfaces = [\"{}\"]\n\n[output]\nkind = \"stdout\"\n{journal_key}\n",
            topo.host_if
        ),
    )
    .unwrap();
    let mut d = Daemon::start_as_journal(sensor_bin(), &config, dir.path());
    let out = topo
        .command("dig")
        .args([
            "+tries=1",
            "+timeout=2",
            &format!("@{server}"),
            "journal-test.example.cn",
            "A",
        ])
        .output()
        .expect("run dig (apt package dnsutils)");
    assert!(
        out.status.success(),
        "dig: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The kernel saw it; give the reader and the writer a moment to pass it on (polled).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let events = loop {
        let n = daemon::stats_json(sensor_bin(), &config)["events"]
            .as_u64()
            .unwrap();
        if n >= 1 || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let lines = d.stop();
    (lines, events, d.stderr_seen.clone())
}

#[test]
fn queries_stay_out_of_the_journal_unless_asked_for() {
    let (lines, events, stderr) = run("");
    assert_eq!(events, 1, "the query was captured");
    assert!(
        lines.is_empty(),
        "JSON lines went to the journal: {lines:?}"
    );
    let said = stderr
        .iter()
        .filter(|l| l.contains("stdout is the systemd journal"))
        .count();
    assert_eq!(said, 1, "{stderr:#?}");

    // Asked for explicitly: the same journal stream gets the line.
    let (lines, events, _) = run("journal = true");
    assert_eq!(events, 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("journal-test.example.cn"), "{lines:?}");
}
