//! The store through its public API: aggregation, per-day counts, domain ranges, retention,
//! reopening, bad input, corrupt files, a reader beside the writer, and a writer killed with
//! SIGKILL mid-stream.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use std::{
    io::{BufRead as _, BufReader},
    net::IpAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sensor_pdns::{
    Answer, AnswerData, DAY_SECS, Observation, PdnsError, RTYPE_A, RTYPE_AAAA, RTYPE_CNAME,
    Retention, Store,
};

/// 2026-12-01T00:00:00Z.
const DAY0: i64 = 1_796_083_200;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn obs(ts: i64, client: &str, name: &str, answers: &[(&str, u32)]) -> Observation {
    Observation {
        ts_unix_secs: ts,
        client: ip(client),
        name: name.into(),
        answers: answers
            .iter()
            .map(|&(a, ttl)| match a.parse::<IpAddr>() {
                Ok(addr) => Answer {
                    rtype: if addr.is_ipv4() { RTYPE_A } else { RTYPE_AAAA },
                    data: AnswerData::Ip(addr),
                    ttl,
                },
                Err(_) => Answer {
                    rtype: RTYPE_CNAME,
                    data: AnswerData::Name(a.into()),
                    ttl,
                },
            })
            .collect(),
    }
}

fn open(dir: &Path, days: u32) -> Store {
    Store::open(&dir.join("pdns.sqlite"), Retention::days(days).unwrap()).unwrap()
}

#[test]
fn repeated_tuples_update_counts_and_last_seen_instead_of_adding_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 30);
    let batch: Vec<_> = (0..1000)
        .map(|i| {
            obs(
                DAY0 + 100 + i,
                "10.0.0.1",
                "www.example.com",
                &[("192.0.2.1", 300)],
            )
        })
        .collect();
    let stats = store.ingest(&batch).unwrap();
    assert_eq!(
        (stats.observations, stats.answers, stats.rows),
        (1000, 1000, 2)
    );
    // A second batch: the same tuple later the same day, a second client, a second answer.
    store
        .ingest(&[
            obs(
                DAY0 + 5000,
                "10.0.0.1",
                "www.example.com",
                &[("192.0.2.1", 60)],
            ),
            obs(
                DAY0 + 6000,
                "10.0.0.2",
                "www.example.com",
                &[("192.0.2.2", 60)],
            ),
        ])
        .unwrap();
    let s = store.stats().unwrap();
    assert_eq!(
        (s.names, s.clients, s.seen_rows, s.answer_rows),
        (1, 2, 2, 2)
    );

    let r = store.by_name("www.example.com", 0).unwrap();
    assert_eq!(r.answers.len(), 2);
    let a = &r.answers[0];
    assert_eq!(a.data, AnswerData::Ip(ip("192.0.2.1")));
    assert_eq!(
        (a.seen.first_seen, a.seen.last_seen),
        (DAY0 + 100, DAY0 + 5000)
    );
    assert_eq!(a.seen.count, 1001);
    assert_eq!(a.ttl, 60, "the TTL of the latest sighting");
    let c1 = r
        .clients
        .iter()
        .find(|c| c.client == ip("10.0.0.1"))
        .unwrap();
    assert_eq!(c1.seen.count, 1001);
    assert_eq!(c1.seen.last_seen, DAY0 + 5000);
    let c2 = r
        .clients
        .iter()
        .find(|c| c.client == ip("10.0.0.2"))
        .unwrap();
    assert_eq!((c2.seen.count, c2.seen.first_seen), (1, DAY0 + 6000));
}

#[test]
fn counts_are_kept_per_day_and_since_narrows_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 30);
    let mut batch = Vec::new();
    for (day, n) in [(0, 2), (1, 5), (3, 1)] {
        for i in 0..n {
            batch.push(obs(
                DAY0 + day * DAY_SECS + 60 * i,
                "10.0.0.1",
                "a.example",
                &[("192.0.2.1", 300)],
            ));
        }
    }
    // Out of order, across midnight, in one batch.
    batch.reverse();
    store.ingest(&batch).unwrap();
    let r = store.by_name("a.example", 0).unwrap();
    let per_day: Vec<_> = r.clients[0]
        .seen
        .per_day
        .iter()
        .map(|d| ((d.day - DAY0) / DAY_SECS, d.count))
        .collect();
    assert_eq!(per_day, [(0, 2), (1, 5), (3, 1)]);
    assert_eq!(r.clients[0].seen.count, 8);
    assert_eq!(r.answers[0].seen.per_day.len(), 3);

    // From the middle of day 1: days 1 and 3 count; first seen stays the true first.
    let r = store.by_name("a.example", DAY0 + DAY_SECS + 10).unwrap();
    assert_eq!(r.clients[0].seen.count, 6);
    assert_eq!(r.clients[0].seen.first_seen, DAY0);
    // After the last sighting: nothing.
    let r = store.by_name("a.example", DAY0 + 4 * DAY_SECS).unwrap();
    assert!(r.clients.is_empty() && r.answers.is_empty());
}

#[test]
fn a_domain_covers_itself_and_its_subdomains_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 30);
    let names = [
        ("evil.example", "10.0.0.1"),
        ("a.b.evil.example", "10.0.0.2"),
        ("notevil.example", "10.0.0.3"),
        ("evil-x.example", "10.0.0.4"),
        ("evil.example.com", "10.0.0.5"),
        ("example", "10.0.0.6"),
    ];
    let batch: Vec<_> = names
        .iter()
        .map(|&(n, c)| obs(DAY0, c, n, &[("192.0.2.9", 300)]))
        .collect();
    store.ingest(&batch).unwrap();

    let r = store.by_domain("evil.example", 0).unwrap();
    let mut got: Vec<_> = r.clients.iter().map(|c| c.name.as_str()).collect();
    got.sort();
    assert_eq!(got, ["a.b.evil.example", "evil.example"]);
    assert_eq!(r.answers.len(), 2);

    // What a person types (upper case, trailing dot) means the same.
    let mut hunt = store.clients_of("Evil.Example.", 0).unwrap();
    hunt.sort();
    assert_eq!(
        hunt,
        [
            (ip("10.0.0.1"), "evil.example".to_string(), DAY0, DAY0, 1),
            (
                ip("10.0.0.2"),
                "a.b.evil.example".to_string(),
                DAY0,
                DAY0,
                1
            ),
        ]
    );
    // by_name is exact.
    assert_eq!(store.by_name("evil.example", 0).unwrap().clients.len(), 1);
    // The root covers everything.
    assert_eq!(store.by_domain(".", 0).unwrap().clients.len(), names.len());
}

#[test]
fn lookups_by_address_and_by_client() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 30);
    store
        .ingest(&[
            obs(
                DAY0,
                "10.0.0.1",
                "a.example",
                &[("cdn.example.net", 60), ("192.0.2.7", 60)],
            ),
            obs(DAY0 + 1, "10.0.0.2", "b.example", &[("192.0.2.7", 60)]),
            obs(DAY0 + 2, "10.0.0.2", "c.example", &[("2001:db8::7", 60)]),
            obs(DAY0 + 3, "::ffff:10.0.0.3", "c.example", &[]),
        ])
        .unwrap();
    let r = store.by_ip(ip("192.0.2.7"), 0).unwrap();
    let names: Vec<_> = r.answers.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["a.example", "b.example"]);
    assert_eq!(r.clients.len(), 2);
    let r = store.by_ip(ip("2001:db8::7"), 0).unwrap();
    assert_eq!(r.answers[0].rtype, RTYPE_AAAA);
    assert_eq!(r.clients.len(), 2, "both clients of c.example");

    let r = store.by_name("a.example", 0).unwrap();
    assert!(r.answers.iter().any(|a| a.rtype == RTYPE_CNAME
        && a.data == AnswerData::Name("cdn.example.net".into())));

    let r = store.by_client(ip("10.0.0.2"), 0).unwrap();
    let names: Vec<_> = r.clients.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["b.example", "c.example"]);
    // An IPv4-mapped client is the IPv4 client; a name without answers still records it.
    let r = store.by_client(ip("10.0.0.3"), 0).unwrap();
    assert_eq!(r.clients.len(), 1);
    assert!(
        store
            .by_client(ip("10.9.9.9"), 0)
            .unwrap()
            .clients
            .is_empty()
    );
}

#[test]
fn prune_drops_days_before_the_retention_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 3);
    let d = |n: i64| DAY0 + n * DAY_SECS;
    store
        .ingest(&[
            // Only before the window: goes, with its name.
            obs(d(0) + 5, "10.0.0.1", "old.example", &[("192.0.2.1", 60)]),
            // Before and inside: keeps day 3 and starts there.
            obs(d(1) + 5, "10.0.0.1", "both.example", &[("192.0.2.2", 60)]),
            obs(d(3) + 7, "10.0.0.1", "both.example", &[("192.0.2.2", 60)]),
            // Inside only: untouched.
            obs(d(2) + 9, "10.0.0.2", "new.example", &[("192.0.2.3", 60)]),
        ])
        .unwrap();
    // Today is day 4: the window is days 2, 3, 4.
    let p = store.prune(d(4) + 100).unwrap();
    assert_eq!(p.kept_from, d(2));
    assert_eq!(p.rows_deleted, 2, "old.example's seen and answer rows");
    assert_eq!(p.rows_trimmed, 2, "both.example's seen and answer rows");
    assert_eq!(p.names_deleted, 1);

    let old = store.by_name("old.example", 0).unwrap();
    assert!(old.clients.is_empty() && old.answers.is_empty());
    let both = store.by_name("both.example", 0).unwrap();
    let seen = &both.clients[0].seen;
    assert_eq!(seen.first_seen, d(3), "starts at its first retained day");
    assert_eq!(seen.last_seen, d(3) + 7);
    assert_eq!(seen.count, 1);
    assert_eq!(seen.per_day.len(), 1);
    let new = store.by_name("new.example", 0).unwrap();
    assert_eq!(new.clients[0].seen.first_seen, d(2) + 9);
    assert_eq!(store.stats().unwrap().names, 2);

    // A name pruned away can come back.
    store
        .ingest(&[obs(d(4), "10.0.0.1", "old.example", &[("192.0.2.1", 60)])])
        .unwrap();
    assert_eq!(
        store.by_name("old.example", 0).unwrap().clients[0]
            .seen
            .count,
        1
    );
}

#[test]
fn a_reopened_store_has_everything_and_keeps_counting() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path(), 30);
        store
            .ingest(&[obs(DAY0, "10.0.0.1", "a.example", &[("192.0.2.1", 60)])])
            .unwrap();
    }
    let mut store = open(dir.path(), 30);
    store
        .ingest(&[obs(DAY0 + 1, "10.0.0.1", "a.example", &[("192.0.2.1", 60)])])
        .unwrap();
    let r = store.by_name("a.example", 0).unwrap();
    assert_eq!(r.clients[0].seen.count, 2);
    assert_eq!(r.answers[0].seen.count, 2);
    assert_eq!(store.stats().unwrap().seen_rows, 1);
}

#[test]
fn bad_observations_refuse_the_whole_batch_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 30);
    let good = obs(DAY0, "10.0.0.1", "a.example", &[("192.0.2.1", 60)]);
    let cases: Vec<(Observation, &str)> = vec![
        (obs(DAY0, "10.0.0.1", "A.example", &[]), "lower case"),
        (obs(DAY0, "10.0.0.1", "a.example.", &[]), "trailing dot"),
        (obs(DAY0, "10.0.0.1", "", &[]), "empty"),
        (obs(-1, "10.0.0.1", "a.example", &[]), "timestamp -1"),
        (
            Observation {
                answers: vec![Answer {
                    rtype: RTYPE_A,
                    data: AnswerData::Ip(ip("2001:db8::1")),
                    ttl: 1,
                }],
                ..good.clone()
            },
            "answer 0: type 1 (A) needs an IPv4 address",
        ),
        (
            Observation {
                answers: vec![Answer {
                    rtype: 16,
                    data: AnswerData::Name("x".into()),
                    ttl: 1,
                }],
                ..good.clone()
            },
            "type 16 is not kept",
        ),
        (
            obs(DAY0, "10.0.0.1", "a.example", &[("Bad..target", 1)]),
            "CNAME target",
        ),
    ];
    for (bad, want) in cases {
        let e = store.ingest(&[good.clone(), bad]).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, PdnsError::Observation { index: 1, .. }),
            "{msg}"
        );
        assert!(
            msg.starts_with("observation 1: ") && msg.contains(want),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
    }
    let s = store.stats().unwrap();
    assert_eq!(
        (s.names, s.seen_rows, s.answer_rows),
        (0, 0, 0),
        "nothing written"
    );
    let e = store.by_name("a..b", 0).unwrap_err().to_string();
    assert!(e.contains("empty label"), "{e}");
}

#[test]
fn an_unopenable_store_is_one_line_naming_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.sqlite");
    std::fs::write(&garbage, vec![0x5a; 64 * 1024]).unwrap();
    let retention = Retention::days(30).unwrap();
    for e in [
        Store::open(&garbage, retention).unwrap_err(),
        Store::open_read_only(&garbage).unwrap_err(),
        Store::open_read_only(&dir.path().join("missing.sqlite")).unwrap_err(),
    ] {
        let msg = e.to_string();
        assert!(msg.starts_with("passive DNS store /"), "{msg}");
        assert!(msg.contains(dir.path().to_str().unwrap()), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
    assert!(
        Store::open(&garbage, retention)
            .unwrap_err()
            .to_string()
            .contains("not a database")
    );

    // Some other application's SQLite file is refused, not written into.
    let other = dir.path().join("other.sqlite");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t(x)")
        .unwrap();
    let msg = Store::open(&other, retention).unwrap_err().to_string();
    assert!(msg.contains("not a passive DNS store"), "{msg}");

    let damaged = dir.path().join("damaged.sqlite");
    {
        let mut s = Store::open(&damaged, retention).unwrap();
        let batch: Vec<_> = (0..2000)
            .map(|i| {
                obs(
                    DAY0,
                    "10.0.0.1",
                    &format!("n{i}.example"),
                    &[("192.0.2.1", 1)],
                )
            })
            .collect();
        s.ingest(&batch).unwrap();
        s.checkpoint().unwrap();
    }
    // Overwrite everything after the first page (the header stays): queries must fail with
    // an error, not panic or return made-up rows.
    let mut bytes = std::fs::read(&damaged).unwrap();
    for b in bytes.iter_mut().skip(4096) {
        *b = 0xa5;
    }
    std::fs::write(&damaged, bytes).unwrap();
    let failed = match Store::open_read_only(&damaged) {
        Err(e) => e.to_string(),
        Ok(s) => s.by_domain(".", 0).unwrap_err().to_string(),
    };
    assert!(failed.starts_with("passive DNS store /"), "{failed}");
}

#[test]
fn a_reader_in_another_connection_sees_each_commit_and_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = open(dir.path(), 30);
    writer
        .ingest(&[obs(DAY0, "10.0.0.1", "a.example", &[("192.0.2.1", 60)])])
        .unwrap();
    let mut reader = Store::open_read_only(&dir.path().join("pdns.sqlite")).unwrap();
    assert_eq!(
        reader.by_name("a.example", 0).unwrap().clients[0]
            .seen
            .count,
        1
    );
    writer
        .ingest(&[obs(DAY0 + 1, "10.0.0.1", "a.example", &[("192.0.2.1", 60)])])
        .unwrap();
    assert_eq!(
        reader.by_name("a.example", 0).unwrap().clients[0]
            .seen
            .count,
        2
    );
    let e = reader
        .ingest(&[obs(DAY0, "10.0.0.1", "a.example", &[])])
        .unwrap_err();
    assert!(matches!(e, PdnsError::ReadOnly { .. }), "{e}");
    assert!(matches!(
        reader.prune(DAY0).unwrap_err(),
        PdnsError::ReadOnly { .. }
    ));
}

// --- A writer killed mid-stream -------------------------------------------------------------

const CHILD_ENV: &str = "PDNS_CRASH_CHILD_STORE";
const FROM_ENV: &str = "PDNS_CRASH_CHILD_FROM";
const PER_BATCH: usize = 1_000;
const HOT: &str = "hot.crash.test";

/// Batch `b`: PER_BATCH names of its own, and one sighting of the shared hot tuple.
fn crash_batch(b: u64) -> Vec<Observation> {
    let ts = DAY0 + b as i64;
    let mut v: Vec<_> = (0..PER_BATCH)
        .map(|j| {
            let a = format!("10.{}.{}.{}", b % 256, j / 256, j % 256);
            obs(
                ts,
                "10.0.0.1",
                &format!("n{j}.b{b}.crash.test"),
                &[(&a, 60)],
            )
        })
        .collect();
    v.push(obs(ts, "10.0.0.2", HOT, &[("192.0.2.1", 60)]));
    v
}

/// The child's body: commits batches from `FROM_ENV` on and prints each number once it is
/// committed, until killed (bounded, should the parent die first).
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let from: u64 = std::env::var(FROM_ENV).unwrap().parse().unwrap();
    let mut store = Store::open(Path::new(&path), Retention::days(30).unwrap()).unwrap();
    for b in from..from + 100_000 {
        store.ingest(&crash_batch(b)).unwrap();
        println!("committed {b}");
    }
}

/// Checks the store holds the complete batches `0..n` for some `n >= reported + 1`, each
/// whole, and (once the writer is dead) nothing else: at most one batch committed whose line
/// was not printed yet. Returns `n`.
fn verify_batches(store: &Store, reported: u64, writer_dead: bool) -> u64 {
    let hot = store.by_name(HOT, 0).unwrap();
    let n = hot.clients.first().map_or(0, |c| c.seen.count);
    assert!(
        n > reported,
        "batch {reported} was reported committed, store has {n}"
    );
    if !writer_dead {
        // The writer goes on committing between these reads: check what `n` covers.
        for b in 0..n {
            let r = store.by_domain(&format!("b{b}.crash.test"), 0).unwrap();
            assert_eq!(
                r.clients.len(),
                PER_BATCH,
                "batch {b}: half-written or missing"
            );
        }
        return n;
    }
    assert!(
        n <= reported + 2,
        "store has {n} batches, {reported} reported"
    );
    assert_eq!(
        hot.answers[0].seen.count, n,
        "the hot answer counted once per batch"
    );
    for b in 0..n + 2 {
        let r = store.by_domain(&format!("b{b}.crash.test"), 0).unwrap();
        let want = if b < n { PER_BATCH } else { 0 };
        assert_eq!(r.clients.len(), want, "batch {b}: half-written or missing");
        assert_eq!(r.answers.len(), want, "batch {b}: half-written or missing");
    }
    n
}

#[test]
fn a_writer_killed_mid_stream_loses_no_committed_batch_and_leaves_no_half() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pdns.sqlite");
    let mut from = 0;
    // Each round kills a fresh child at a different point of a batch, into the store the last
    // round left. The delay after a reported commit is not a wait for anything: it chooses where
    // the kill lands, a tenth more of the child's batch period each round (building the batch,
    // aggregating it, the upserts, the WAL sync), so that some kills land inside a commit.
    for round in 0..11u32 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .env(FROM_ENV, from.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut reported = None;
        let (mut last_line, mut period) = (Instant::now(), Duration::ZERO);
        for line in lines.by_ref() {
            let line = line.unwrap();
            let Some(b) = line.strip_prefix("committed ") else {
                continue;
            };
            let b: u64 = b.parse().unwrap();
            reported = Some(b);
            period = last_line.elapsed();
            last_line = Instant::now();
            if b == from + 3 && round == 0 {
                // A reader in this process while the child writes: it sees at least what was
                // reported, and whole batches only.
                let reader = Store::open_read_only(&path).unwrap();
                verify_batches(&reader, b, false);
            }
            if b == from + 5 {
                break;
            }
        }
        std::thread::sleep(period * round / 10);
        // SIGKILL: no destructor, no flush, wherever the child is in its next batch.
        child.kill().unwrap();
        child.wait().unwrap();
        // Lines the child printed before it died are commits too.
        for line in lines {
            if let Some(b) = line.unwrap().strip_prefix("committed ") {
                reported = Some(b.parse().unwrap());
            }
        }
        let reported = reported.expect("the child committed nothing");
        let store = Store::open(&path, Retention::days(30).unwrap()).unwrap();
        from = verify_batches(&store, reported, true);
    }
}
