//! Replays every capture of tests/corpus/zeek-dns (real traces from Zeek's test suite) with
//! tcpreplay into a veth the sensor is attached to, and compares the sensor's records with
//! tshark's dissection of the same frames: every in-scope query tshark shows is reported with
//! the same client, name and type, nothing is invented, and every other packet is accounted
//! for by a kernel counter. Needs root, tcpreplay and tshark; fails without them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use common::sensor_bin;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use sensor_common::Counter;
use sensor_testkit::{
    daemon,
    daemon::Daemon,
    netns::{Topology, unique},
    pcap,
};
use serde_json::Value;

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus/zeek-dns");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "the corpus is there");
    files
}

/// (client, lower-case name, QTYPE number) of every query tshark shows that is in the sensor's
/// scope: a query (QR=0), opcode QUERY, one question, to port 53, not malformed, and a QNAME
/// without a compression pointer (tshark writes such names as `<...>`).
fn tshark_queries(file: &Path) -> Vec<(String, String, u16)> {
    let out = Command::new("tshark")
        .args(["-r"])
        .arg(file)
        .args([
            "-Y",
            "dns.flags.response == 0",
            "-T",
            "fields",
            "-E",
            "separator=\t",
        ])
        .args([
            "-e",
            "ip.src",
            "-e",
            "ipv6.src",
            "-e",
            "udp.dstport",
            "-e",
            "tcp.dstport",
        ])
        .args([
            "-e",
            "dns.flags.opcode",
            "-e",
            "dns.count.queries",
            "-e",
            "dns.qry.name",
        ])
        .args(["-e", "dns.qry.type", "-e", "_ws.malformed"])
        .output()
        .expect("run tshark (apt package tshark)");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let get = |i: usize| f.get(i).copied().unwrap_or("");
        let client = if get(0).is_empty() { get(1) } else { get(0) };
        let port = if get(2).is_empty() { get(3) } else { get(2) };
        let in_scope = port == "53"
            && get(4) == "0"
            && get(5) == "1"
            && get(8).is_empty()
            && !get(6).is_empty()
            && !get(6).starts_with('<');
        if in_scope {
            found.push((
                client.to_owned(),
                get(6).to_ascii_lowercase(),
                get(7).parse().expect("qtype"),
            ));
        }
    }
    found
}

fn stats(config: &Path) -> Value {
    daemon::stats_json(sensor_bin(), config)
}

#[test]
fn corpus_replay_matches_tshark() {
    let files = corpus();
    let mut frames = Vec::new();
    let mut expected: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for f in &files {
        frames.extend(pcap::ethernet_frames(f));
        for (client, name, qtype) in tshark_queries(f) {
            *expected
                .entry((client, name, sensor_model::query::qtype_name(qtype)))
                .or_default() += 1;
        }
    }
    let expected_total: usize = expected.values().sum();
    assert!(
        expected_total >= 25,
        "the corpus holds in-scope queries: {expected:#?}"
    );

    let topo = Topology::new(false);
    let largest = frames.iter().map(Vec::len).max().unwrap_or(0);
    assert!(
        largest <= 1514,
        "frames fit the veth's default MTU ({largest} bytes)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let replay = dir.path().join("corpus.pcap");
    pcap::write(&replay, &frames);
    let name = unique("corp");
    let config = dir.path().join("sensor.toml");
    std::fs::write(
        &config,
        format!(
            "[sensor]\nname = \"{name}\"\npin_root = \"/sys/fs/bpf/dns-sensor-test-{name}\"\n\
             [capture]\ninterfaces = [\"{}\"]\n",
            topo.host_if
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(sensor_bin(), &config, dir.path());
    topo.exec(&[
        "tcpreplay",
        "-q",
        "--topspeed",
        "-i",
        &topo.peer_if,
        &replay.display().to_string(),
    ]);

    // Wait until the program has seen every frame (veth delivers asynchronously).
    let deadline = Instant::now() + Duration::from_secs(30);
    let counters = loop {
        let s = stats(&config);
        if s["packets"].as_u64() >= Some(frames.len() as u64) || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let lines = daemon.stop();

    assert_eq!(
        counters["packets"],
        frames.len() as u64,
        "every replayed frame reached XDP, nothing else did: {counters}"
    );
    let outcomes: u64 = Counter::ALL
        .iter()
        .filter(|c| c.is_outcome())
        .map(|c| counters[c.name()].as_u64().unwrap())
        .sum();
    assert_eq!(
        outcomes,
        frames.len() as u64,
        "every packet accounted for by one counter: {counters}"
    );
    assert_eq!(counters["events"], expected_total as u64, "{counters}");

    let mut got: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for l in &lines {
        let d: Value = serde_json::from_str(l).expect("JSON line");
        let key = (
            d["source"]["ip"].as_str().unwrap().to_owned(),
            d["dns"]["question"]["name"].as_str().unwrap().to_owned(),
            d["dns"]["question"]["type"].as_str().unwrap().to_owned(),
        );
        *got.entry(key).or_default() += 1;
    }
    assert_eq!(
        got, expected,
        "the sensor reports exactly the in-scope queries tshark shows"
    );
}
