//! The Zeek DNS corpus (tests/corpus/zeek-dns) and tshark's view of it, shared by the live
//! replay (tests/corpus.rs) and the offline one (tests/replay.rs): the capture files, tshark's
//! dissection of their in-scope queries and responses, the sensor daemon fed the corpus with
//! tcpreplay through a veth, and the comparison of the sensor's JSON lines with tshark.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use sensor_testkit::{
    daemon,
    daemon::Daemon,
    netns::{Topology, unique},
    pcap,
};
use serde_json::Value;

use crate::sensor_bin;

pub fn corpus() -> Vec<PathBuf> {
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

/// One row per DNS message of `file` that `filter` selects, with these fields first: the
/// client's address (IPv4, IPv6), the server's port (UDP, TCP), opcode, QDCOUNT, QNAME, QTYPE,
/// malformed, TCP payload length, DNS length; then `extra`. `response` picks the direction
/// (the client is the source of a query, the destination of a response). Repeated fields are
/// joined with `,`.
pub fn tshark_rows(file: &Path, response: bool, extra: &[&str]) -> Vec<Vec<String>> {
    let (client, port) = if response {
        (["ip.dst", "ipv6.dst"], ["udp.srcport", "tcp.srcport"])
    } else {
        (["ip.src", "ipv6.src"], ["udp.dstport", "tcp.dstport"])
    };
    let mut fields = vec![client[0], client[1], port[0], port[1]];
    fields.extend(["dns.flags.opcode", "dns.count.queries", "dns.qry.name"]);
    fields.extend(["dns.qry.type", "_ws.malformed", "tcp.len", "dns.length"]);
    fields.extend_from_slice(extra);
    let filter = format!("dns.flags.response == {}", u8::from(response));
    let mut c = Command::new("tshark");
    c.arg("-r").arg(file).args(["-Y", &filter, "-T", "fields"]);
    c.args(["-E", "separator=\t", "-E", "aggregator=,"]);
    for f in fields {
        c.args(["-e", f]);
    }
    let out = c.output().expect("run tshark (apt package tshark)");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

/// A field of a row from [`tshark_rows`] ("" when absent).
pub fn field(row: &[String], i: usize) -> &str {
    row.get(i).map_or("", String::as_str)
}

/// The client of a row, and whether the message is in the sensor's scope: to or from port 53,
/// opcode QUERY, one question, a QNAME without a compression pointer (tshark writes such names
/// as `<...>`), and over TCP the whole message in one segment (a message split over segments,
/// which tshark reassembles, is counted as `tcp_no_question`: a length prefix that does not fit
/// its segment is not trusted).
pub fn scope(row: &[String]) -> (&str, bool) {
    let get = |i| field(row, i);
    let client = if get(0).is_empty() { get(1) } else { get(0) };
    let port = if get(2).is_empty() { get(3) } else { get(2) };
    let in_scope = port == "53"
        && get(4) == "0"
        && get(5) == "1"
        && !get(6).is_empty()
        && !get(6).starts_with('<')
        && (get(3).is_empty()
            || get(9).parse::<u32>().ok() >= get(10).parse::<u32>().ok().map(|l| l + 2));
    (client, in_scope)
}

/// (client, lower-case name, QTYPE number) of every in-scope query tshark shows (see [`scope`])
/// that tshark does not find malformed.
pub fn tshark_queries(file: &Path) -> Vec<(String, String, u16)> {
    let mut found = Vec::new();
    for row in tshark_rows(file, false, &[]) {
        let (client, in_scope) = scope(&row);
        if in_scope && field(&row, 8).is_empty() {
            found.push((
                client.to_owned(),
                field(&row, 6).to_ascii_lowercase(),
                field(&row, 7).parse().expect("qtype"),
            ));
        }
    }
    found
}

/// What the sensor must report for a response, as tshark sees it: (client, lower-case name,
/// QTYPE name, RCODE name, the answer section's A/AAAA addresses sorted, or `None` when the
/// message is longer than the 1,024 bytes a record carries, or tshark finds it malformed, so
/// only its header is compared).
pub type ResponseKey = (String, String, String, String, Option<Vec<String>>);

/// Every in-scope response tshark shows (see [`scope`]). One tshark calls malformed for its
/// records' contents (an RDATA field of the wrong length) is still a response with a valid
/// header and question: the sensor reports it.
pub fn tshark_responses(file: &Path) -> Vec<ResponseKey> {
    let extra = ["dns.flags.rcode", "dns.count.answers", "dns.resp.type"];
    let extra = [&extra[..], &["dns.a", "dns.aaaa", "udp.length"]].concat();
    let mut found = Vec::new();
    for row in tshark_rows(file, true, &extra) {
        let (client, in_scope) = scope(&row);
        if !in_scope {
            continue;
        }
        let get = |i| field(&row, i);
        let list = |i| -> Vec<&str> { get(i).split(',').filter(|s| !s.is_empty()).collect() };
        let malformed = !get(8).is_empty();
        let msg_len = if get(3).is_empty() {
            get(16).parse::<usize>().expect("udp.length") - 8
        } else {
            get(10).parse().expect("dns.length")
        };
        // The answer section's records come first among dns.resp.*, and its A and AAAA records
        // first among dns.a and dns.aaaa.
        let answers: usize = get(12).parse().expect("dns.count.answers");
        let types = list(13);
        let in_answers = |t: &str| types.iter().take(answers).filter(|x| **x == t).count();
        let mut ips: Vec<String> = list(14)
            .into_iter()
            .take(in_answers("1"))
            .chain(list(15).into_iter().take(in_answers("28")))
            .map(str::to_owned)
            .collect();
        ips.sort();
        ips.dedup();
        let rcode = match get(11) {
            "0" => "NOERROR",
            "1" => "FORMERR",
            "2" => "SERVFAIL",
            "3" => "NXDOMAIN",
            "4" => "NOTIMP",
            "5" => "REFUSED",
            other => panic!("an RCODE the corpus was not expected to hold: {other}"),
        };
        found.push((
            client.to_owned(),
            get(6).to_ascii_lowercase(),
            sensor_model::query::qtype_name(get(7).parse().expect("qtype")),
            rcode.to_owned(),
            (msg_len <= 1024 && !malformed).then_some(ips),
        ));
    }
    found
}

/// The in-scope queries of `files` as tshark shows them: (client, name, QTYPE name) → count.
pub fn expected_queries(files: &[PathBuf]) -> BTreeMap<(String, String, String), usize> {
    let mut expected = BTreeMap::new();
    for f in files {
        for (client, name, qtype) in tshark_queries(f) {
            *expected
                .entry((client, name, sensor_model::query::qtype_name(qtype)))
                .or_default() += 1;
        }
    }
    expected
}

/// The in-scope responses of `files` as tshark shows them, with counts.
pub fn expected_responses(files: &[PathBuf]) -> BTreeMap<ResponseKey, usize> {
    let mut expected = BTreeMap::new();
    for f in files {
        for r in tshark_responses(f) {
            *expected.entry(r).or_default() += 1;
        }
    }
    expected
}

/// The frames of `files` in order, fed to a sensor daemon attached to a veth with tcpreplay.
/// Returns its JSON lines and its kernel counters (`sensor stats --json`) once every frame
/// reached the program, and how many frames were sent.
pub fn live_replay(files: &[PathBuf]) -> (Vec<String>, Value, usize) {
    let frames: Vec<Vec<u8>> = files
        .iter()
        .flat_map(|f| pcap::ethernet_frames(f))
        .collect();
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
             [capture]\ninterfaces = [\"{}\"]\n[pdns]\npath = \"{}\"\n",
            topo.host_if,
            dir.path().join("pdns.sqlite").display()
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
        let s = daemon::stats_json(sensor_bin(), &config);
        if s["packets"].as_u64() >= Some(frames.len() as u64) || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let lines = daemon.stop();
    (lines, counters, frames.len())
}

/// Asserts that the sensor's JSON `lines` report exactly the in-scope queries and responses
/// tshark shows (`expected`, `expected_responses`): the same clients, names, types, response
/// codes and answer addresses, nothing more.
pub fn assert_lines_match_tshark(
    lines: &[String],
    expected: &BTreeMap<(String, String, String), usize>,
    expected_responses: &BTreeMap<ResponseKey, usize>,
) {
    let mut got: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    let mut got_responses: BTreeMap<ResponseKey, usize> = BTreeMap::new();
    for l in lines {
        let d: Value = serde_json::from_str(l).expect("JSON line");
        if d["dns"]["type"] == "answer" {
            let full = d["dns"]["answers"].as_array().unwrap().len()
                == d["dns"]["answers_count"].as_u64().unwrap() as usize;
            let mut ips: Vec<String> = d["dns"]["resolved_ip"]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default();
            ips.sort();
            let key = (
                d["source"]["ip"].as_str().unwrap().to_owned(),
                d["dns"]["question"]["name"].as_str().unwrap().to_owned(),
                d["dns"]["question"]["type"].as_str().unwrap().to_owned(),
                d["dns"]["response_code"].as_str().unwrap().to_owned(),
                full.then_some(ips),
            );
            *got_responses.entry(key).or_default() += 1;
            continue;
        }
        let key = (
            d["source"]["ip"].as_str().unwrap().to_owned(),
            d["dns"]["question"]["name"].as_str().unwrap().to_owned(),
            d["dns"]["question"]["type"].as_str().unwrap().to_owned(),
        );
        *got.entry(key).or_default() += 1;
    }
    assert_eq!(
        &got, expected,
        "the sensor reports exactly the in-scope queries tshark shows"
    );
    // Messages longer than a record's 1,024 bytes, and those tshark finds malformed: only their
    // header fields are compared (tshark's key has no addresses for them).
    let long: std::collections::BTreeSet<_> = expected_responses
        .keys()
        .filter(|k| k.4.is_none())
        .map(|k| (k.0.clone(), k.1.clone(), k.2.clone(), k.3.clone()))
        .collect();
    let got_responses: BTreeMap<ResponseKey, usize> =
        got_responses
            .into_iter()
            .fold(BTreeMap::new(), |mut m, (mut k, n)| {
                if long.contains(&(k.0.clone(), k.1.clone(), k.2.clone(), k.3.clone())) {
                    k.4 = None;
                }
                *m.entry(k).or_default() += n;
                m
            });
    assert_eq!(
        &got_responses, expected_responses,
        "the sensor reports exactly the in-scope responses tshark shows, with the same response \
         codes and answer addresses"
    );
}
