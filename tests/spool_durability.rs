//! The Kafka spool's durability claims, observed in the system calls it makes: this test runs
//! itself (as a child process doing real spool work on a real file system) under `strace`, and
//! reads the order of `openat`, `write`, `fsync`/`fdatasync` and `rename` from the trace.
//!
//! Claimed (sensor-outputs `sink::kafka::spool`): a new segment's directory entry is fsynced
//! before records are written to it; the cursor is written to `cursor.tmp`, fdatasynced, renamed
//! over `cursor`, and then the directory is fsynced, so a power loss cannot roll the rename back.
//! Needs `/usr/bin/strace` (installed on the test machines); a missing strace fails the test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use std::{path::Path, process::Command};

use sensor_outputs::sink::kafka::spool::{MIN_MAX_BYTES, Spool};

/// Set in the child: the spool directory to work in.
const CHILD_ENV: &str = "SENSOR_SPOOL_STRACE_CHILD";
const TEST_NAME: &str = "segment_creation_and_cursor_rename_are_followed_by_a_directory_fsync";

/// What the child does under strace: one segment with records, all read and acknowledged, then
/// the cursor written by `sync`.
fn child_work(dir: &Path) {
    let (mut spool, _) = Spool::open(dir, MIN_MAX_BYTES).unwrap();
    for i in 0..5u32 {
        spool
            .append(b"10.0.0.1", format!("doc{i}").as_bytes())
            .unwrap();
    }
    spool.sync().unwrap();
    while spool.peek().unwrap().is_some() {
        let r = spool.take().unwrap();
        spool.ack(r.segment);
    }
    // Nothing outstanding: the cursor moves past the records.
    spool.append(b"10.0.0.1", b"after").unwrap();
    spool.sync().unwrap();
}

/// One traced call: its name, its arguments (with `-y` fds shown as `N</path>`) and result.
#[derive(Debug)]
struct Call {
    name: String,
    args: String,
    result: String,
}

fn parse(trace: &str) -> Vec<Call> {
    trace
        .lines()
        .filter_map(|line| {
            // "PID name(args) = result"; unfinished/resumed pairs do not occur for these calls
            // in a single-threaded child, and other lines (signals, exits) are skipped.
            let line = line.split_once(' ').map_or(line, |(_, rest)| rest).trim();
            // strace pads short calls with spaces before " = ".
            let (call, result) = line.rsplit_once(" = ")?;
            let (name, args) = call.trim_end().strip_suffix(')')?.split_once('(')?;
            Some(Call {
                name: name.to_owned(),
                args: args.to_owned(),
                result: result.to_owned(),
            })
        })
        .collect()
}

/// `fsync`/`fdatasync` of a file descriptor whose path (from `-y`) is `path`.
fn is_sync_of(c: &Call, path: &str) -> bool {
    (c.name == "fsync" || c.name == "fdatasync")
        && c.args.ends_with(&format!("<{path}>"))
        && c.result.starts_with('0')
}

fn is_write_to(c: &Call, path: &str) -> bool {
    matches!(c.name.as_str(), "write" | "writev" | "pwrite64")
        && c.args.contains(&format!("<{path}>,"))
}

#[test]
fn segment_creation_and_cursor_rename_are_followed_by_a_directory_fsync() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child_work(Path::new(&dir));
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    // Canonical, because strace -y prints resolved paths.
    let dir = scratch.path().canonicalize().unwrap().join("spool");
    let trace_file = scratch.path().join("trace");
    let out = Command::new("strace")
        .args(["-f", "-y", "-qq", "-s", "256", "-o"])
        .arg(&trace_file)
        .args([
            "-e",
            "trace=openat,write,writev,pwrite64,fsync,fdatasync,rename,renameat,renameat2",
        ])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &dir)
        .output()
        .expect("running strace (apt install strace)");
    assert!(
        out.status.success(),
        "the traced child failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = parse(&std::fs::read_to_string(&trace_file).unwrap());
    let dir_s = dir.display().to_string();
    let seg0 = dir.join("00000000000000000000.seg").display().to_string();
    let tmp = dir.join("cursor.tmp").display().to_string();
    let cursor = dir.join("cursor").display().to_string();

    // 1. The segment is created, the directory fsynced, and only then written.
    let created = calls
        .iter()
        .position(|c| {
            c.name == "openat"
                && c.args.contains(&format!("\"{seg0}\""))
                && c.args.contains("O_CREAT")
        })
        .unwrap_or_else(|| panic!("no creation of {seg0} in {calls:#?}"));
    let first_write = calls
        .iter()
        .position(|c| is_write_to(c, &seg0))
        .unwrap_or_else(|| panic!("no write to {seg0}"));
    assert!(
        calls[created..first_write]
            .iter()
            .any(|c| is_sync_of(c, &dir_s)),
        "no fsync of {dir_s} between creating {seg0} and writing it: {:#?}",
        &calls[created..=first_write]
    );
    // Appends are fdatasynced by `sync`.
    assert!(
        calls[first_write..].iter().any(|c| is_sync_of(c, &seg0)),
        "the segment's records were never synced"
    );

    // 2. The cursor, every time: written to cursor.tmp, synced, renamed, and the directory
    // fsynced next, before any other traced call (other than opening the directory to sync it).
    let renames: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            c.name.starts_with("rename")
                && c.args.contains(&format!("\"{tmp}\""))
                && c.args.contains(&format!("\"{cursor}\""))
                && c.result.starts_with('0')
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        renames.len(),
        2,
        "the child writes the cursor twice (after the appends, after the reads): {calls:#?}"
    );
    for &rename in &renames {
        let tmp_write = calls[..rename]
            .iter()
            .rposition(|c| is_write_to(c, &tmp))
            .expect("the cursor was written to cursor.tmp before the rename");
        assert!(
            calls[tmp_write..rename].iter().any(|c| is_sync_of(c, &tmp)),
            "cursor.tmp renamed before it was synced: {:#?}",
            &calls[tmp_write..=rename]
        );
        let next = calls[rename + 1..]
            .iter()
            .find(|c| !(c.name == "openat" && c.args.contains(&format!("\"{dir_s}\""))));
        assert!(
            next.is_some_and(|c| is_sync_of(c, &dir_s)),
            "the cursor rename is not followed by an fsync of {dir_s}: {:#?}",
            &calls[rename..(rename + 4).min(calls.len())]
        );
    }
    // And the cursor on disk is the one renamed into place.
    assert_eq!(
        std::fs::read_to_string(dir.join("cursor")).unwrap().trim(),
        "1 0",
        "segment 0 read, acknowledged and deleted: reading resumes at the start of segment 1"
    );
}
