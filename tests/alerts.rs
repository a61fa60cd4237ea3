//! The alert stage end to end against a local fake WeCom robot (and its JSON webhook endpoint),
//! on tokio's paused clock: the budget and the suppression windows are checked exactly, and a
//! minute of virtual time costs nothing.
//!
//! Every wait here is for a condition (a message arriving, the stage shutting down), never a
//! sleep standing in for one; the virtual sleeps in `spread_hits` only space the hits out.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use std::{path::Path, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use sensor_intel::inventory::Inventory;
use sensor_model::{
    secret::SecretSource,
    verdict::{Assessment, Confidence, Finding, Severity, Verdict},
};
use sensor_outputs::alert::{
    AlertStats, Alerter, AlertsSection, HeaderSource, Hit, WeComSink, WebhookSink,
};
use sensor_testkit::fake_wecom::{FakeWeCom, Received};
use time::OffsetDateTime;
use tokio::time::Instant;

const KEY: &str = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa";
const WAIT: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------------
// Helpers

use sensor_testkit::logs::capture as logs;

fn key_file(dir: &Path, key: &str) -> SecretSource {
    let path = dir.join(format!("key-{}", key.len()));
    std::fs::write(&path, format!("{key}\n")).unwrap();
    SecretSource {
        env: None,
        file: Some(path),
    }
}

fn wecom(base_url: String, key: SecretSource) -> WeComSink {
    WeComSink {
        key,
        base_url,
        ..WeComSink::default()
    }
}

fn assessment(severity: Severity) -> Arc<Assessment> {
    Arc::new(Assessment {
        verdict: Verdict::Malicious,
        findings: vec![Finding {
            provider: "threatbook".into(),
            malicious: true,
            severity: Some(severity),
            confidence: Some(Confidence::High),
            judgments: vec!["C2".into()],
            tags: vec!["Botnet:Mirai".into()],
            permalink: Some("https://x.threatbook.com/v5/domain/evil.example".into()),
            ip_context: None,
        }],
        errors: vec![],
    })
}

fn hit(client: &str, name: &str) -> Hit {
    Hit {
        client: client.parse().unwrap(),
        name: name.into(),
        qtype: "A".into(),
        assessment: assessment(Severity::High),
        seen: OffsetDateTime::now_utc(),
        sensor: "edge-1".into(),
    }
}

fn empty_inventory() -> Arc<ArcSwap<Inventory>> {
    Arc::new(ArcSwap::from_pointee(Inventory::default()))
}

/// The alerts a message shows, as text units: a digest has one line per name, a detailed
/// message one `###` section per alert.
fn units(content: &str) -> Vec<&str> {
    if content.starts_with("### DNS 告警汇总") {
        content.lines().filter(|l| l.starts_with("- ")).collect()
    } else {
        content
            .split("### ")
            .filter(|s| !s.trim().is_empty())
            .collect()
    }
}

/// Whether some unit of the message shows the (client, name) pair. The client must be a whole
/// token (10.0.0.1 is not 10.0.0.12).
fn shows(content: &str, client: &str, name: &str) -> bool {
    let name = format!("`{name}`");
    units(content).iter().any(|u| {
        u.contains(&name)
            && u.split(|c: char| c.is_whitespace() || ";:(),*".contains(c))
                .any(|t| t == client)
    })
}

fn robot(received: &[Received]) -> Vec<&Received> {
    received.iter().filter(|r| r.endpoint == "robot").collect()
}

/// At most `max` robot requests in any 60 s.
fn assert_budget(received: &[Received], max: usize) {
    let times: Vec<Instant> = robot(received).iter().map(|r| r.at).collect();
    for (i, t) in times.iter().enumerate() {
        let n = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(60))
            .count();
        assert!(n <= max, "{n} requests within 60 s from request {i}");
    }
}

fn pairs(n: usize) -> Vec<(String, String)> {
    // 125 names, 4 clients each: many distinct names and clients, every pair distinct.
    (0..n)
        .map(|i| {
            (
                format!("10.{}.{}.{}", 20 + i % 4, i / 250, i % 250),
                format!("c2-{:03}.evil.example", i % 125),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Budget and digests

async fn five_hundred(spread: Option<Duration>) -> (FakeWeCom, AlertStats) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeWeCom::start(KEY).await;
    let config = AlertsSection {
        wecom: vec![wecom(fake.base_url(), key_file(dir.path(), KEY))],
        ..AlertsSection::default()
    };
    let alerter = Alerter::spawn(&config, empty_inventory()).unwrap();
    let all = pairs(500);
    for (client, name) in &all {
        assert!(alerter.submit(hit(client, name)));
        if let Some(gap) = spread {
            tokio::time::sleep(gap).await;
        }
    }
    fake.wait_for(WAIT, |r| {
        let accepted: Vec<&Received> = r.iter().filter(|m| m.answer == 0).collect();
        all.iter()
            .all(|(c, n)| accepted.iter().any(|m| shows(&m.content, c, n)))
    })
    .await;
    let stats = alerter.shutdown(Duration::from_secs(600)).await;
    (fake, stats)
}

fn check_five_hundred(fake: &FakeWeCom, stats: &AlertStats) {
    let received = fake.received();
    let accepted = fake.accepted();
    assert!(accepted.len() <= 20, "{} messages", accepted.len());
    assert_eq!(robot(&received).len(), accepted.len(), "no retries needed");
    assert_eq!(fake.rate_violations(), 0);
    assert_budget(&received, 20);
    // Every pair in exactly one message.
    for (c, n) in pairs(500) {
        let k = accepted
            .iter()
            .filter(|m| shows(&m.content, &c, &n))
            .count();
        assert_eq!(k, 1, "{c} {n} shown {k} times");
    }
    assert_eq!(stats.hits_in, 500);
    assert_eq!(stats.alerts_raised, 500);
    assert_eq!(stats.alerts_delivered, 500);
    assert_eq!(stats.messages_sent as usize, accepted.len());
    assert!(stats.digests_sent >= 1);
    assert_eq!(
        stats.queue_full_drops + stats.alerts_undelivered + stats.retries,
        0
    );
    assert!(stats.send_failures.is_empty(), "{:?}", stats.send_failures);
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_500_hits_fits_in_20_messages() {
    logs();
    let (fake, stats) = five_hundred(None).await;
    check_five_hundred(&fake, &stats);
}

#[tokio::test(start_paused = true)]
async fn five_hundred_hits_spread_over_a_minute_fit_in_20_messages() {
    logs();
    // 500 hits, one every 119 ms: the last arrives 59.4 s after the first.
    let (fake, stats) = five_hundred(Some(Duration::from_millis(119))).await;
    check_five_hundred(&fake, &stats);
    // They were not all held for one digest: alerts went out while hits kept coming.
    assert!(fake.accepted().len() >= 10, "{}", fake.accepted().len());
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_at_its_deadline_and_counts_what_is_left() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeWeCom::start(KEY).await;
    let config = AlertsSection {
        wecom: vec![wecom(fake.base_url(), key_file(dir.path(), KEY))],
        ..AlertsSection::default()
    };
    let alerter = Alerter::spawn(&config, empty_inventory()).unwrap();
    for (client, name) in pairs(500) {
        alerter.submit(hit(&client, &name));
    }
    let start = Instant::now();
    // 500 alerts need several digests 3.2 s apart: 5 s is not enough for all.
    let stats = alerter.shutdown(Duration::from_secs(5)).await;
    assert!(Instant::now() - start <= Duration::from_secs(5));
    assert!(
        fake.received()
            .iter()
            .all(|r| r.at - start <= Duration::from_secs(5))
    );
    assert!(stats.alerts_undelivered > 0);
    assert_eq!(stats.alerts_delivered + stats.alerts_undelivered, 500);
    assert_eq!(stats.messages_sent as usize, fake.accepted().len());
}

#[tokio::test(start_paused = true)]
async fn a_full_submit_queue_drops_without_waiting_and_the_chat_is_told() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeWeCom::start(KEY).await;
    let config = AlertsSection {
        queue_size: 10,
        wecom: vec![wecom(fake.base_url(), key_file(dir.path(), KEY))],
        ..AlertsSection::default()
    };
    let alerter = Alerter::spawn(&config, empty_inventory()).unwrap();
    // The test holds the only thread: the alert task cannot run until the loop ends, so the
    // queue fills after 10 and every later submit returns at once.
    let accepted: Vec<bool> = (0..100)
        .map(|i| alerter.submit(hit(&format!("10.0.2.{i}"), "flood.example")))
        .collect();
    assert_eq!(accepted.iter().filter(|a| **a).count(), 10);
    assert!(accepted[..10].iter().all(|a| *a));
    let stats = alerter.shutdown(Duration::from_secs(60)).await;
    assert_eq!(stats.hits_in, 100);
    assert_eq!(stats.queue_full_drops, 90);
    assert_eq!(stats.alerts_delivered, 10);
    let messages = fake.accepted();
    assert!(
        messages
            .iter()
            .any(|m| m.content.contains("90 hits were dropped")),
        "{messages:?}"
    );
    for i in 0..10 {
        let client = format!("10.0.2.{i}");
        assert!(
            messages
                .iter()
                .any(|m| shows(&m.content, &client, "flood.example"))
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Suppression

#[tokio::test(start_paused = true)]
async fn a_pair_alerts_once_per_window_and_repeats_are_reported_with_their_count() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeWeCom::start(KEY).await;
    let config = AlertsSection {
        wecom: vec![wecom(fake.base_url(), key_file(dir.path(), KEY))],
        ..AlertsSection::default()
    };
    let alerter = Alerter::spawn(&config, empty_inventory()).unwrap();
    let start = Instant::now();

    alerter.submit(hit("10.0.0.7", "evil.example"));
    fake.wait_for(WAIT, |r| r.len() == 1).await;
    for _ in 0..4 {
        alerter.submit(hit("10.0.0.7", "EVIL.example."));
    }
    // Another client for the same name is its own pair; once it is shown, the repeats before it
    // have been handled.
    alerter.submit(hit("10.0.0.8", "evil.example"));
    fake.wait_for(WAIT, |r| r.len() == 2).await;
    let messages = fake.accepted();
    assert!(shows(&messages[0].content, "10.0.0.7", "evil.example"));
    assert!(messages[0].content.contains("**Count 次数**: 1"));
    assert!(!shows(&messages[1].content, "10.0.0.7", "evil.example"));
    assert!(shows(&messages[1].content, "10.0.0.8", "evil.example"));
    assert_eq!(alerter.stats().suppressed_repeats, 4);

    // The window ends an hour after the first alert: the repeats come with their count.
    fake.wait_for(WAIT * 2, |r| r.len() == 3).await;
    let third = &fake.accepted()[2];
    let elapsed = third.at.duration_since(start);
    assert!(
        elapsed >= Duration::from_secs(3600) && elapsed < Duration::from_secs(3610),
        "{elapsed:?}"
    );
    assert!(third.content.contains("still active"), "{}", third.content);
    assert!(shows(&third.content, "10.0.0.7", "evil.example"));
    assert!(
        third
            .content
            .contains("**Count 次数**: 5 (4 since the last message)"),
        "{}",
        third.content
    );

    // After the window, the pair alerts again.
    alerter.submit(hit("10.0.0.7", "evil.example"));
    fake.wait_for(WAIT, |r| r.len() == 4).await;
    let fourth = &fake.accepted()[3];
    assert!(
        fourth.content.contains("malicious domain") && fourth.content.contains("**Count 次数**: 1")
    );
    let stats = alerter.shutdown(Duration::from_secs(60)).await;
    assert_eq!(stats.alerts_raised, 3);
    assert_eq!(stats.still_active_raised, 1);
    assert_eq!(fake.accepted().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn shutdown_reports_repeats_of_open_windows() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeWeCom::start(KEY).await;
    let config = AlertsSection {
        wecom: vec![wecom(fake.base_url(), key_file(dir.path(), KEY))],
        ..AlertsSection::default()
    };
    let alerter = Alerter::spawn(&config, empty_inventory()).unwrap();
    alerter.submit(hit("10.0.0.9", "evil.example"));
    fake.wait_for(WAIT, |r| r.len() == 1).await;
    alerter.submit(hit("10.0.0.9", "evil.example"));
    alerter.submit(hit("10.0.0.9", "evil.example"));
    let submitter = alerter.submitter();
    let stats = alerter.shutdown(Duration::from_secs(60)).await;
    let messages = fake.accepted();
    assert_eq!(messages.len(), 2);
    assert!(
        messages[1]
            .content
            .contains("**Count 次数**: 3 (2 since the last message)")
    );
    assert_eq!(stats.suppressed_repeats, 2);
    assert_eq!(stats.alerts_undelivered, 0);
    // Hits after shutdown are counted, not queued.
    assert!(!submitter.submit(hit("10.0.0.9", "evil.example")));
}

#[tokio::test(start_paused = true)]
async fn a_group_of_hits_takes_one_queue_slot_and_alerts_with_its_count() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeWeCom::start(KEY).await;
    let config = AlertsSection {
        queue_size: 1,
        wecom: vec![wecom(fake.base_url(), key_file(dir.path(), KEY))],
        ..AlertsSection::default()
    };
    let alerter = Alerter::spawn(&config, empty_inventory()).unwrap();
    let h = hit("10.0.0.5", "group.example");
    let last = h.seen + time::Duration::minutes(3);
    assert!(alerter.submitter().submit_group(h, last, 1000));
    let stats = alerter.shutdown(Duration::from_secs(60)).await;
    let messages = fake.accepted();
    assert_eq!(messages.len(), 1);
    assert!(messages[0].content.contains("**Count 次数**: 1000"));
    assert_eq!(stats.hits_in, 1000);
    assert_eq!(stats.suppressed_repeats, 999);
    assert_eq!(stats.alerts_raised, 1);
}

// ---------------------------------------------------------------------------------------------
// Throttling, splitting, owners, webhook

#[tokio::test(start_paused = true)]
async fn throttling_answers_wait_and_retry_and_lose_nothing() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeWeCom::start(KEY).await;
    let config = AlertsSection {
        wecom: vec![wecom(fake.base_url(), key_file(dir.path(), KEY))],
        ..AlertsSection::default()
    };
    let alerter = Alerter::spawn(&config, empty_inventory()).unwrap();
    fake.throttle_next(3);
    alerter.submit(hit("10.0.0.1", "first.example"));
    // Hits keep coming while the robot is throttled.
    fake.wait_for(WAIT, |r| r.len() == 2).await;
    for i in 0..30 {
        alerter.submit(hit(&format!("10.0.1.{i}"), "later.example"));
    }
    fake.wait_for(WAIT, |r| {
        let accepted: Vec<&Received> = r.iter().filter(|m| m.answer == 0).collect();
        accepted
            .iter()
            .any(|m| shows(&m.content, "10.0.0.1", "first.example"))
            && (0..30).all(|i| {
                accepted
                    .iter()
                    .any(|m| shows(&m.content, &format!("10.0.1.{i}"), "later.example"))
            })
    })
    .await;
    let stats = alerter.shutdown(Duration::from_secs(60)).await;
    let received = fake.received();
    let answers: Vec<i64> = received.iter().map(|r| r.answer).collect();
    assert_eq!(&answers[..4], &[45009, 45009, 45009, 0], "{answers:?}");
    // Waits of 5, 10 and 20 s (at least: the pace may add to them).
    let gaps: Vec<Duration> = received
        .windows(2)
        .take(3)
        .map(|w| w[1].at - w[0].at)
        .collect();
    for (gap, min) in gaps.iter().zip([5, 10, 20]) {
        assert!(*gap >= Duration::from_secs(min), "{gaps:?}");
    }
    assert_eq!(stats.throttled, 3);
    assert_eq!(stats.alerts_delivered, 31);
    assert_eq!(stats.alerts_undelivered, 0);
    assert!(stats.send_failures.is_empty());
    assert_eq!(fake.rate_violations(), 0);
    assert_budget(&received, 20);
}

#[tokio::test(start_paused = true)]
async fn an_alert_longer_than_4096_bytes_is_split() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeWeCom::start(KEY).await;
    let config = AlertsSection {
        wecom: vec![wecom(fake.base_url(), key_file(dir.path(), KEY))],
        ..AlertsSection::default()
    };
    let alerter = Alerter::spawn(&config, empty_inventory()).unwrap();
    let mut findings = Vec::new();
    for i in 0..12 {
        findings.push(Finding {
            provider: format!("feed:{i}"),
            malicious: true,
            severity: Some(Severity::Critical),
            confidence: Some(Confidence::High),
            judgments: (0..8)
                .map(|j| format!("判定{i}-{j}-{}", "恶".repeat(20)))
                .collect(),
            tags: (0..8)
                .map(|j| format!("标签{i}-{j}-{}", "意".repeat(20)))
                .collect(),
            permalink: Some(format!("https://intel.example/{i}/{}", "x".repeat(300))),
            ip_context: None,
        });
    }
    let mut h = hit("10.0.0.1", "long.example");
    h.assessment = Arc::new(Assessment {
        verdict: Verdict::Malicious,
        findings,
        errors: vec![],
    });
    alerter.submit(h);
    let stats = alerter.shutdown(Duration::from_secs(600)).await;
    let received = fake.received();
    assert!(received.len() >= 2, "{} messages", received.len());
    assert!(
        received.iter().all(|r| r.answer == 0),
        "40058 means too long"
    );
    assert!(received.iter().all(|r| r.content.len() <= 4096));
    let whole: String = received.iter().map(|r| r.content.as_str()).collect();
    assert!(whole.contains("https://intel.example/11/"));
    assert_eq!(stats.messages_sent as usize, received.len());
    assert_eq!(stats.alerts_delivered, 1);
}

#[tokio::test(start_paused = true)]
async fn the_owner_from_the_inventory_is_named_and_reloads_apply() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("inventory.csv");
    std::fs::write(
        &csv,
        "cidr_or_ip,owner,employee_id,hostname,department\n\
         10.1.0.0/16,,,,财务部\n\
         10.1.2.34,张三,12345,fin-pc-034,财务部\n",
    )
    .unwrap();
    let fake = FakeWeCom::start(KEY).await;
    let config = AlertsSection {
        inventory: Some(csv.clone()),
        time_zone: "+08:00".into(),
        wecom: vec![wecom(fake.base_url(), key_file(dir.path(), KEY))],
        ..AlertsSection::default()
    };
    let inventory = Arc::new(ArcSwap::from_pointee(config.load_inventory().unwrap()));
    let alerter = Alerter::spawn(&config, Arc::clone(&inventory)).unwrap();
    alerter.submit(hit("10.1.2.34", "evil.example"));
    fake.wait_for(WAIT, |r| r.len() == 1).await;
    let m = &fake.accepted()[0].content;
    for want in [
        "张三",
        "工号 Employee ID **12345**",
        "fin-pc-034",
        "财务部",
        "UTC+08:00",
    ] {
        assert!(m.contains(want), "{want:?} missing:\n{m}");
    }

    // The host changes hands; the reloaded inventory applies to the next alert.
    std::fs::write(
        &csv,
        "cidr_or_ip,owner,employee_id,hostname,department\n10.1.2.34,李四,23456,fin-pc-034,财务部\n",
    )
    .unwrap();
    inventory.store(Arc::new(Inventory::load(&csv).unwrap()));
    alerter.submit(hit("10.1.2.34", "other.example"));
    fake.wait_for(WAIT, |r| r.len() == 2).await;
    let m = &fake.accepted()[1].content;
    assert!(m.contains("李四") && m.contains("23456"), "{m}");
    alerter.shutdown(Duration::from_secs(60)).await;
}

#[tokio::test(start_paused = true)]
async fn the_generic_webhook_receives_json() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeWeCom::start(KEY).await;
    let mut headers = std::collections::BTreeMap::new();
    headers.insert(
        "Authorization".to_owned(),
        HeaderSource::Secret(key_file(dir.path(), "Bearer soar-token")),
    );
    headers.insert(
        "X-Source".to_owned(),
        HeaderSource::Value("dns-sensor".into()),
    );
    let config = AlertsSection {
        webhook: vec![WebhookSink {
            url: fake.json_url(),
            headers,
            ..WebhookSink::default()
        }],
        ..AlertsSection::default()
    };
    let alerter = Alerter::spawn(&config, empty_inventory()).unwrap();
    // One 503 first: retried after a back-off.
    fake.json_status_next(&[503]);
    for i in 0..3 {
        alerter.submit(hit(&format!("10.0.0.{i}"), "evil.example"));
    }
    let stats = alerter.shutdown(Duration::from_secs(60)).await;
    let received = fake.received();
    assert_eq!(received[0].answer, 503);
    let ok: Vec<&Received> = received.iter().filter(|r| r.answer == 200).collect();
    let alerts: Vec<&serde_json::Value> = ok
        .iter()
        .flat_map(|r| r.body.as_ref().unwrap()["alerts"].as_array().unwrap())
        .collect();
    assert_eq!(alerts.len(), 3);
    let mut clients: Vec<&str> = alerts
        .iter()
        .map(|a| a["client"].as_str().unwrap())
        .collect();
    clients.sort();
    assert_eq!(clients, ["10.0.0.0", "10.0.0.1", "10.0.0.2"]);
    let a = alerts[0];
    assert_eq!(a["name"], "evil.example");
    assert_eq!(a["severity"], "high");
    assert_eq!(a["confidence"], "high");
    assert_eq!(a["judgments"][0], "C2");
    assert_eq!(a["count"], 1);
    assert_eq!(a["kind"], "first");
    assert!(a["first_seen"].as_str().unwrap().ends_with('Z'));
    let h = &ok[0].headers;
    assert!(h.contains(&("authorization".into(), "Bearer soar-token".into())));
    assert!(h.contains(&("x-source".into(), "dns-sensor".into())));
    assert!(
        h.iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("application/json"))
    );
    assert_eq!(stats.retries, 1);
    assert_eq!(stats.alerts_delivered, 3);
}

// ---------------------------------------------------------------------------------------------
// Secrets

#[tokio::test(start_paused = true)]
async fn the_robot_key_appears_in_no_log_and_no_output() {
    let logs = logs();
    const CANARY: &str = "canary-5e0c0ffee-robot-key";
    let dir = tempfile::tempdir().unwrap();
    // The fake expects another key: every request is answered 93000.
    let fake = FakeWeCom::start(KEY).await;
    let key = key_file(dir.path(), CANARY);
    let mut headers = std::collections::BTreeMap::new();
    headers.insert(
        "Authorization".to_owned(),
        HeaderSource::Secret(key.clone()),
    );
    let config = AlertsSection {
        wecom: vec![
            wecom(fake.base_url(), key.clone()),
            // Nothing listens on port 1: connection refused, retried, then given up.
            wecom("http://127.0.0.1:1".into(), key.clone()),
        ],
        webhook: vec![WebhookSink {
            url: format!("http://127.0.0.1:1/hook?token={CANARY}"),
            headers,
            ..WebhookSink::default()
        }],
        ..AlertsSection::default()
    };
    let alerter = Alerter::spawn(&config, empty_inventory()).unwrap();
    let debug_handle = format!("{alerter:?} {config:?}");
    alerter.submit(hit("10.0.0.1", "evil.example"));
    let stats = alerter.shutdown(Duration::from_secs(120)).await;

    assert_eq!(
        stats.send_failures.get("errcode_93000"),
        Some(&1),
        "{stats:?}"
    );
    assert_eq!(stats.send_failures.get("connect"), Some(&2), "{stats:?}");
    let received = fake.received();
    assert_eq!(received.len(), 1);
    assert!(!received[0].key_ok);

    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logs.contains("errcode_93000") && logs.contains("Connection refused"),
        "the failures were logged"
    );
    // reqwest logs through `log`: its records are in the capture too, so they were searched.
    assert!(
        logs.contains("reqwest::connect"),
        "log records are captured"
    );
    for (what, text) in [
        ("logs", logs.as_str()),
        ("stats", &format!("{stats:?}")),
        ("handle and config", &debug_handle),
        (
            "messages",
            &received
                .iter()
                .map(|r| r.content.clone())
                .collect::<String>(),
        ),
    ] {
        assert!(!text.contains(CANARY), "the key leaked into {what}");
    }
}
