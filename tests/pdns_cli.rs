//! `sensor pdns` through the built binary, against a store a writer in this process holds open
//! (as the daemon would): tables, JSON, and one-line errors naming the path.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use std::{net::IpAddr, path::Path, process::Command};

use sensor_pdns::{Answer, AnswerData, Observation, RTYPE_A, Retention, Store};

/// 2026-12-01T00:00:00Z.
const DAY0: i64 = 1_796_083_200;

fn obs(ts: i64, client: &str, name: &str, addr: &str) -> Observation {
    Observation {
        ts_unix_secs: ts,
        client: client.parse().unwrap(),
        name: name.into(),
        answers: vec![Answer {
            rtype: RTYPE_A,
            data: AnswerData::Ip(addr.parse::<IpAddr>().unwrap()),
            ttl: 300,
        }],
    }
}

fn sensor(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(common::sensor_bin())
        .args(["pdns"])
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn config(dir: &Path, store: &Path) -> std::path::PathBuf {
    let path = dir.join(format!(
        "sensor-{}.toml",
        store.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(
        &path,
        format!("[pdns]\npath = {:?}\nretention_days = 30\n", store),
    )
    .unwrap();
    path
}

#[test]
fn pdns_reads_beside_a_writer_and_prints_tables_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pdns.sqlite");
    // The writer stays open for the whole test, as the daemon would.
    let mut writer = Store::open(&path, Retention::days(30).unwrap()).unwrap();
    writer
        .ingest(&[
            obs(DAY0 + 61, "10.0.0.7", "a.evil.example", "192.0.2.1"),
            obs(DAY0 + 62, "10.0.0.8", "evil.example", "192.0.2.1"),
            obs(DAY0 + 63, "10.0.0.9", "notevil.example", "192.0.2.2"),
        ])
        .unwrap();
    let cfg = config(dir.path(), &path);

    let (ok, out, err) = sensor(&cfg, &["domain", "Evil.Example."]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "\
answers (2):
NAME            TYPE  DATA       TTL  FIRST SEEN (UTC)     LAST SEEN (UTC)      COUNT  DAYS
evil.example    A     192.0.2.1  300  2026-12-01 00:01:02  2026-12-01 00:01:02  1      1
a.evil.example  A     192.0.2.1  300  2026-12-01 00:01:01  2026-12-01 00:01:01  1      1

clients (2):
NAME            CLIENT    FIRST SEEN (UTC)     LAST SEEN (UTC)      COUNT  DAYS
evil.example    10.0.0.8  2026-12-01 00:01:02  2026-12-01 00:01:02  1      1
a.evil.example  10.0.0.7  2026-12-01 00:01:01  2026-12-01 00:01:01  1      1
"
    );

    // A commit after the reader's first look is in its next one.
    writer
        .ingest(&[obs(
            DAY0 + 86_400,
            "10.0.0.7",
            "a.evil.example",
            "192.0.2.1",
        )])
        .unwrap();
    let (ok, out, err) = sensor(
        &cfg,
        &["ip", "192.0.2.1", "--json", "--since", "2026-12-01"],
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["query"]["since"], "2026-12-01T00:00:00Z");
    assert_eq!(v["answers"].as_array().unwrap().len(), 2);
    let a = &v["clients"][1];
    assert_eq!(a["client"], "10.0.0.7");
    assert_eq!(a["count"], 2);
    assert_eq!(a["per_day"].as_array().unwrap().len(), 2);

    let (ok, out, _) = sensor(&cfg, &["client", "10.0.0.9"]);
    assert!(ok);
    assert!(
        out.contains("notevil.example") && !out.contains("answers"),
        "{out}"
    );

    let (ok, out, _) = sensor(&cfg, &["name", "evil.example", "--since", "2026-12-02"]);
    assert!(ok);
    assert_eq!(
        out,
        "nothing seen for name evil.example since 2026-12-02 00:00:00 UTC\n"
    );
}

#[test]
fn pdns_errors_are_one_line_naming_the_path_or_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sqlite");
    let (ok, _, err) = sensor(&config(dir.path(), &missing), &["name", "a.example"]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(missing.to_str().unwrap()), "{err}");

    let garbage = dir.path().join("garbage.sqlite");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    let (ok, _, err) = sensor(&config(dir.path(), &garbage), &["name", "a.example"]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(garbage.to_str().unwrap()) && err.contains("not a database"),
        "{err}"
    );

    let good = dir.path().join("good.sqlite");
    drop(Store::open(&good, Retention::days(30).unwrap()).unwrap());
    let cfg = config(dir.path(), &good);
    for (args, want) in [
        (&["ip", "10.0.0.300"][..], "not an IP address"),
        (&["name", "a..b"][..], "empty label"),
        (
            &["name", "a.example", "--since", "yesterday-ish"][..],
            "--since",
        ),
    ] {
        let (ok, _, err) = sensor(&cfg, args);
        assert!(!ok, "{args:?}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
