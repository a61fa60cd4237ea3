//! `sensor replay`: the corpus (tests/corpus/zeek-dns) run offline through the real kernel
//! program (BPF_PROG_TEST_RUN) gives the same records as the live replay into a veth
//! (tests/corpus.rs's path), field by field; the records agree with tshark's dissection; each
//! record's `@timestamp` is its frame's capture time as tshark reads it (`frame.time_epoch`)
//! and `event.duration` is the capture time between query and response; pcapng and
//! nanosecond pcap give byte-identical output; a garbage or truncated file is a one-line error
//! and a nonzero exit. Needs root, tcpreplay, tshark and editcap; fails without them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use common::{
    sensor_bin,
    tshark::{
        assert_lines_match_tshark, corpus, expected_queries, expected_responses, live_replay,
    },
};
use serde_json::Value;

/// A config for `sensor replay` whose passive DNS store stays in `dir`.
fn config(dir: &Path) -> PathBuf {
    let path = dir.join("replay.toml");
    std::fs::write(
        &path,
        format!(
            "[sensor]\nname = \"replay-test\"\n[pdns]\npath = \"{}\"\n",
            dir.join("pdns.sqlite").display()
        ),
    )
    .unwrap();
    path
}

fn replay(config: &Path, files: &[PathBuf]) -> Output {
    Command::new(sensor_bin())
        .args(["replay", "--json", "--config"])
        .arg(config)
        .args(files)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run sensor replay")
}

fn lines(out: &Output) -> Vec<String> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The last line of stderr: the summary (`--json`) or the error.
fn last_stderr_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

/// A record without what legitimately differs between two runs: the time (live, the moment
/// tcpreplay sent the frame; offline, the capture's), the response time measured on it, and
/// the observer's name and interface (each run's own sensor and device).
fn comparable(line: &str) -> String {
    let mut d: Value = serde_json::from_str(line).expect("JSON line");
    let o = d.as_object_mut().unwrap();
    o.remove("@timestamp");
    o["event"].as_object_mut().unwrap().remove("duration");
    let observer = o["observer"].as_object_mut().unwrap();
    observer.remove("name");
    observer["ingress"]
        .as_object_mut()
        .unwrap()
        .remove("interface");
    d.to_string()
}

fn multiset(lines: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in lines {
        *m.entry(comparable(l)).or_default() += 1;
    }
    m
}

/// "1630515059.405143000" → Unix nanoseconds.
fn epoch_ns(s: &str) -> i128 {
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let frac = format!("{frac:0<9}");
    sec.parse::<i128>().unwrap() * 1_000_000_000 + frac[..9].parse::<i128>().unwrap()
}

/// A DNS message by (source, source port, destination, destination port, DNS id, is response).
type MessageKey = (String, u16, String, u16, u16, bool);

/// The capture time of every DNS message tshark dissects in `files`, by [`MessageKey`].
fn frame_times(files: &[PathBuf]) -> HashMap<MessageKey, Vec<i128>> {
    let mut out: HashMap<MessageKey, Vec<i128>> = HashMap::new();
    for f in files {
        let o = Command::new("tshark")
            .arg("-r")
            .arg(f)
            .args(["-Y", "dns", "-T", "fields", "-E", "separator=\t"])
            .args(["-E", "aggregator=,", "-e", "frame.time_epoch"])
            .args([
                "-e", "ip.src", "-e", "ipv6.src", "-e", "ip.dst", "-e", "ipv6.dst",
            ])
            .args(["-e", "udp.srcport", "-e", "tcp.srcport"])
            .args(["-e", "udp.dstport", "-e", "tcp.dstport"])
            .args(["-e", "dns.id", "-e", "dns.flags.response"])
            .output()
            .expect("run tshark");
        assert!(o.status.success(), "tshark on {}", f.display());
        for row in String::from_utf8_lossy(&o.stdout).lines() {
            let c: Vec<&str> = row.split('\t').collect();
            let first = |i: usize| c[i].split(',').next().unwrap_or("");
            let either = |a: usize, b: usize| {
                if first(a).is_empty() {
                    first(b)
                } else {
                    first(a)
                }
            };
            let (Ok(sport), Ok(dport)) = (either(5, 6).parse(), either(7, 8).parse()) else {
                continue;
            };
            let Ok(id) = u16::from_str_radix(first(9).trim_start_matches("0x"), 16) else {
                continue;
            };
            let key = (
                either(1, 2).to_owned(),
                sport,
                either(3, 4).to_owned(),
                dport,
                id,
                first(10) == "1" || first(10) == "True",
            );
            out.entry(key).or_default().push(epoch_ns(c[0]));
        }
    }
    out
}

fn doc_ns(d: &Value) -> i128 {
    time::OffsetDateTime::parse(
        d["@timestamp"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp_nanos()
}

#[test]
fn every_corpus_trace_replayed_offline_gives_the_live_records_at_capture_time() {
    let files = corpus();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());

    let out = replay(&cfg, &files);
    assert!(
        out.status.success(),
        "replay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let offline = lines(&out);
    let summary: Value = serde_json::from_str(&last_stderr_line(&out)).expect("JSON summary");
    let frames: usize = files
        .iter()
        .map(|f| sensor_testkit::pcap::ethernet_frames(f).len())
        .sum();
    assert_eq!(summary["frames_read"], frames as u64, "{summary}");
    assert_eq!(summary["frames_run"], frames as u64, "{summary}");
    assert_eq!(summary["kernel"]["packets"], frames as u64, "{summary}");
    assert_eq!(summary["written"], offline.len() as u64, "{summary}");

    // The same records as the live path, field by field.
    let (live, counters, live_frames) = live_replay(&files);
    assert_eq!(live_frames, frames);
    assert_eq!(
        multiset(&offline),
        multiset(&live),
        "offline and live records differ"
    );
    // The same kernel outcomes.
    for (name, v) in summary["kernel"].as_object().unwrap() {
        assert_eq!(&counters[name], v, "kernel counter {name}");
    }

    // And they agree with tshark.
    assert_lines_match_tshark(
        &offline,
        &expected_queries(&files),
        &expected_responses(&files),
    );

    // @timestamp is the frame's capture time; event.duration the capture time from the query.
    let times = frame_times(&files);
    let mut query_ns: HashMap<MessageKey, Vec<i128>> = HashMap::new();
    let mut durations = 0;
    for l in &offline {
        let d: Value = serde_json::from_str(l).unwrap();
        let ip = |side: &str| d[side]["ip"].as_str().unwrap().to_owned();
        let port = |side: &str| d[side]["port"].as_u64().unwrap() as u16;
        let id = d["dns"]["id"].as_u64().unwrap() as u16;
        let answer = d["dns"]["type"] == "answer";
        // `source` is the client in both kinds of line; a response was sent by the server.
        let key = if answer {
            (
                ip("destination"),
                port("destination"),
                ip("source"),
                port("source"),
                id,
                true,
            )
        } else {
            (
                ip("source"),
                port("source"),
                ip("destination"),
                port("destination"),
                id,
                false,
            )
        };
        let ts = doc_ns(&d);
        let seen = times
            .get(&key)
            .unwrap_or_else(|| panic!("tshark has no frame for {l}"));
        assert!(
            seen.contains(&ts),
            "@timestamp {ts} is not a capture time of its message {seen:?}: {l}"
        );
        if answer {
            if let Some(dur) = d["event"]["duration"].as_u64() {
                let q = (key.2, key.3, key.0, key.1, key.4, false);
                let asked = query_ns.get(&q).expect("a paired answer follows its query");
                assert!(
                    asked.contains(&(ts - i128::from(dur))),
                    "duration {dur} is not the capture time from the query: {l}"
                );
                durations += 1;
            }
        } else {
            query_ns.entry(key).or_default().push(ts);
        }
    }
    assert!(
        durations >= 10,
        "the corpus has paired answers ({durations})"
    );
}

#[test]
fn pcapng_and_nanosecond_pcap_give_the_same_output_as_pcap() {
    let files = corpus();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let convert = |format: &str| -> Vec<PathBuf> {
        files
            .iter()
            .map(|f| {
                let to = dir.path().join(format!(
                    "{}.{format}",
                    f.file_stem().unwrap().to_str().unwrap()
                ));
                let st = Command::new("editcap")
                    .args(["-F", format])
                    .arg(f)
                    .arg(&to)
                    .status()
                    .expect("editcap (tshark's package)");
                assert!(st.success(), "editcap -F {format} {}", f.display());
                to
            })
            .collect()
    };
    let pcap = replay(&cfg, &files);
    assert!(pcap.status.success());
    assert!(pcap.stdout.len() > 1000, "records were written");
    for format in ["pcapng", "nsecpcap"] {
        let converted = convert(format);
        assert_eq!(
            std::fs::read(&converted[0]).unwrap()[..4] == [0x0a, 0x0d, 0x0d, 0x0a],
            format == "pcapng",
            "editcap wrote {format}"
        );
        let out = replay(&cfg, &converted);
        assert!(
            out.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&pcap.stdout),
            "{format} gives the same lines as pcap"
        );
    }
}

#[test]
fn garbage_and_truncated_captures_are_a_one_line_error_and_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());

    let garbage = dir.path().join("garbage.pcap");
    std::fs::write(&garbage, b"this is not a capture file at all, just text\n").unwrap();
    let out = replay(&cfg, &[garbage]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with("error: ")
            && stderr.contains("garbage.pcap")
            && stderr.contains("not a pcap"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    // The last record cut short: the records before it are replayed, the cut one is counted,
    // and the run fails naming it in one line.
    let whole = corpus()
        .into_iter()
        .find(|f| f.ends_with("tm1t.pcap"))
        .unwrap();
    let bytes = std::fs::read(&whole).unwrap();
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let full = replay(&cfg, &[whole]);
    let out = replay(&cfg, &[cut]);
    assert!(!out.status.success());
    let last = last_stderr_line(&out);
    assert!(
        last.starts_with("error: replay incomplete: 1 malformed capture records")
            && last.contains("cut.pcap"),
        "{last}"
    );
    let summary: Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .rev()
            .nth(1)
            .unwrap(),
    )
    .expect("the summary before the error");
    assert_eq!(summary["malformed_records"], 1);
    let (got, all) = (lines(&out), lines(&full));
    assert_eq!(got.len() + 1, all.len(), "all but the cut frame's record");
    assert_eq!(got[..], all[..got.len()]);
}
