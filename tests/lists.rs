//! Lists reloaded on a real SIGHUP. A binary of its own: the signal goes to this process, whose
//! only handler for it is the one under test (no root, no kernel features needed).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use std::{
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use sensor_intel::{
    feeds::{FeedConfig, FeedKind, LocalFeeds},
    trust::{TrustFilter, TrustSection},
};

use sensor_model::{
    reload::{Watcher, sighup},
    verdict::{Confidence, Severity},
};

fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the new list");
    std::fs::rename(&tmp, path).expect("rename it over the old one");
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_trust_lists_and_feeds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let trusted = dir.path().join("trusted.txt");
    let c2 = dir.path().join("c2.txt");
    std::fs::write(&trusted, "old.example\n").expect("write");
    std::fs::write(&c2, "old-c2.example\n").expect("write");

    // No polling: only the signal can make these reload.
    let trust = Arc::new(
        TrustFilter::new(&TrustSection {
            domains: vec!["baidu.com".into()],
            files: vec![trusted.clone()],
            reload_interval_ms: 0,
        })
        .expect("trust lists load"),
    );
    let feeds = LocalFeeds::load(&[FeedConfig {
        name: "c2".into(),
        kind: FeedKind::Domains,
        path: c2.clone(),
        severity: Severity::High,
        confidence: Confidence::High,
        reload_interval_ms: 0,
    }])
    .expect("feeds load");

    let mut reloaders = feeds.reloaders();
    reloaders.push(trust.clone());
    let watcher = Watcher::new(reloaders);
    let counters = watcher.counters();
    let signals = sighup().expect("install the SIGHUP handler");
    let task = tokio::spawn(watcher.run(signals));

    replace(&trusted, "new.example\n");
    replace(&c2, "new-c2.example\n");
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).expect("raise SIGHUP");
    until("the reload on SIGHUP", || {
        trust.is_trusted("www.new.example") && !feeds.match_domain("x.new-c2.example").is_empty()
    })
    .await;
    assert!(!trust.is_trusted("old.example"));
    assert!(trust.is_trusted("www.baidu.com"), "config names stay");
    assert!(feeds.match_domain("old-c2.example").is_empty());
    assert_eq!(counters.signals.load(Ordering::Relaxed), 1);

    // A bad file on the next SIGHUP: reported, counted, and the list in force stays.
    replace(&trusted, "newer.example\nnot valid\n");
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).expect("raise SIGHUP");
    until("the failed reload", || {
        trust.counters().failed.load(Ordering::Relaxed) == 1
    })
    .await;
    assert!(trust.is_trusted("new.example"));
    assert!(!trust.is_trusted("newer.example"));
    task.abort();
}
