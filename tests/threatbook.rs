//! The ThreatBook client against the fake ThreatBook server: answer mapping, every
//! `response_code`, HTTP 500, timeouts, connection errors, and an API key that never shows up in
//! an error. Runs without privileges.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use std::{net::IpAddr, sync::Arc, time::Duration};

use sensor_model::{
    secret::Secret,
    verdict::{Confidence, IpContext, Severity},
};

use sensor_intel::{
    LookupError, Provider,
    threatbook::{ThreatBook, ThreatBookSection},
};

use sensor_testkit::fake_threatbook::{FakeIpInfo, FakeMode, FakeThreatBook, FakeVerdict};

const KEY: &str = "test-key-0001";

/// Bounds every wait on the fake, so a broken test fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(10);

async fn fake() -> FakeThreatBook {
    FakeThreatBook::start(KEY)
        .await
        .expect("fake threatbook starts")
}

fn client_with(fake: &FakeThreatBook, key: &str, timeout_ms: u64) -> ThreatBook {
    let mut section = ThreatBookSection {
        base_url: fake.base_url().to_owned(),
        ..ThreatBookSection::default()
    };
    section.limits.timeout_ms = timeout_ms;
    ThreatBook::new(&section, Secret::new(key)).expect("client builds")
}

fn client(fake: &FakeThreatBook) -> ThreatBook {
    client_with(fake, KEY, 5_000)
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

async fn domain_error(tb: &ThreatBook) -> LookupError {
    tb.lookup_domains(&names(&["a.example"]))
        .await
        .expect_err("the call fails")
}

#[tokio::test]
async fn batch_answer_maps_to_findings() {
    let fake = fake().await;
    fake.set_domain(
        "c2.example",
        FakeVerdict {
            severity: "critical".into(),
            judgments: vec!["C2".into(), "Botnet".into()],
            tags_classes: vec![("gangs".into(), vec!["SilverFox".into()])],
            permalink: Some("https://x.threatbook.com/v5/domain/c2.example".into()),
            ..FakeVerdict::malicious("C2")
        },
    );
    fake.set_domain("known-good.example", FakeVerdict::clean());
    let tb = client(&fake);

    let asked = names(&["c2.example", "known-good.example", "never-seen.example"]);
    let answers = tb.lookup_domains(&asked).await.expect("lookup works");

    assert_eq!(
        answers.len(),
        2,
        "a name ThreatBook does not list gets no finding"
    );
    let bad = &answers["c2.example"];
    assert_eq!(bad.provider, "threatbook");
    assert!(bad.malicious);
    assert_eq!(bad.severity, Some(Severity::Critical));
    assert_eq!(bad.confidence, Some(Confidence::High));
    assert_eq!(bad.judgments, ["C2", "Botnet"]);
    assert_eq!(bad.tags, ["gangs:SilverFox"]);
    assert_eq!(
        bad.permalink.as_deref(),
        Some("https://x.threatbook.com/v5/domain/c2.example")
    );
    assert!(!answers["known-good.example"].malicious);

    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "one call for the batch");
    let r = &requests[0];
    assert_eq!(r.path, "/v3/scene/dns");
    assert_eq!(r.method, "POST");
    assert_eq!(r.resources, asked);
    assert_eq!(r.lang.as_deref(), Some("en"));
    assert!(r.key_ok);
}

#[tokio::test]
async fn ip_reputation_maps_basic_and_asn() {
    let fake = fake().await;
    let bad: IpAddr = "159.203.93.255".parse().unwrap();
    let unknown: IpAddr = "2001:db8::7".parse().unwrap();
    fake.set_ip(
        bad,
        FakeVerdict {
            severity: "low".into(),
            confidence_level: "low".into(),
            judgments: vec!["Zombie".into(), "IDC".into(), "Spam".into()],
            ..FakeVerdict::malicious("Zombie")
        },
        FakeIpInfo {
            carrier: "DigitalOcean, LLC".into(),
            country: "United States".into(),
            province: "New Jersey".into(),
            city: "Clifton".into(),
            asn_number: Some(14061),
            asn_info: "DIGITALOCEAN-ASN, US".into(),
        },
    );
    let tb = client(&fake);

    let answers = tb.lookup_ips(&[bad, unknown]).await.expect("lookup works");

    let f = &answers[&bad];
    assert!(f.malicious);
    assert_eq!(f.severity, Some(Severity::Low));
    assert_eq!(f.judgments, ["Zombie", "IDC", "Spam"]);
    assert_eq!(
        f.ip_context,
        Some(IpContext {
            carrier: Some("DigitalOcean, LLC".into()),
            country: Some("United States".into()),
            province: Some("New Jersey".into()),
            city: Some("Clifton".into()),
            asn: Some(14061),
            asn_info: Some("DIGITALOCEAN-ASN, US".into()),
        })
    );
    let clean = &answers[&unknown];
    assert!(!clean.malicious, "an IP with no intelligence answers clean");
    assert_eq!(clean.ip_context, Some(IpContext::default()));

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/v3/scene/ip_reputation");
    let mut sent = requests[0].resources.clone();
    sent.sort();
    assert_eq!(sent, ["159.203.93.255", "2001:db8::7"]);
}

#[tokio::test]
async fn every_response_code_maps_to_its_error() {
    let fake = fake().await;
    let tb = client(&fake);
    for (code, want) in [
        (-1, "access"),
        (-2, "request"),
        (-3, "request"),
        (-4, "rate_limited"),
        (-5, "server"),
        (-7, "protocol"),
    ] {
        fake.set_mode(FakeMode::ResponseCode(code));
        let e = domain_error(&tb).await;
        assert_eq!(e.reason(), want, "code {code}: {e}");
        if let LookupError::Request { code: got, .. } = e {
            assert_eq!(got, code);
        }
    }
}

#[tokio::test]
async fn a_wrong_key_is_an_access_error() {
    let fake = fake().await;
    let tb = client_with(&fake, "not-the-key", 5_000);
    let e = domain_error(&tb).await;
    assert!(matches!(e, LookupError::Access { .. }), "{e:?}");
    assert!(!fake.requests()[0].key_ok);
}

#[tokio::test]
async fn http_500_without_json_is_a_server_error() {
    let fake = fake().await;
    fake.set_mode(FakeMode::Http500);
    let e = domain_error(&client(&fake)).await;
    assert!(matches!(e, LookupError::Server { .. }), "{e:?}");
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout() {
    let fake = fake().await;
    fake.set_delay(Some(Duration::from_secs(30)));
    let tb = client_with(&fake, KEY, 200);
    let e = tokio::time::timeout(PATIENCE, domain_error(&tb))
        .await
        .expect("the client gives up on its own");
    assert_eq!(
        e,
        LookupError::Timeout {
            provider: "threatbook".into(),
            millis: 200
        }
    );
}

#[tokio::test]
async fn a_closed_port_is_a_transport_error() {
    let fake = fake().await;
    let tb = client(&fake);
    fake.stop().await;
    let e = domain_error(&tb).await;
    assert!(matches!(e, LookupError::Transport { .. }), "{e:?}");
}

#[tokio::test]
async fn the_api_key_never_appears_in_errors() {
    const CANARY: &str = "CANARY-5f1d2c9e-key";
    let fake = fake().await;
    let mut errors = Vec::new();

    // Refused key (the fake expects another one).
    let tb = client_with(&fake, CANARY, 300);
    errors.push(domain_error(&tb).await);
    // The key is right; every failure the server can produce.
    fake.set_api_key(CANARY);
    for code in [-1, -2, -3, -4, -5, 9] {
        fake.set_mode(FakeMode::ResponseCode(code));
        errors.push(domain_error(&tb).await);
    }
    fake.set_mode(FakeMode::Http500);
    errors.push(domain_error(&tb).await);
    fake.set_mode(FakeMode::Normal);
    fake.set_delay(Some(Duration::from_secs(30)));
    errors.push(domain_error(&tb).await);
    fake.set_delay(None);
    fake.stop().await;
    errors.push(domain_error(&tb).await);

    let reasons: Vec<&str> = errors.iter().map(LookupError::reason).collect();
    assert!(
        reasons.contains(&"transport") && reasons.contains(&"timeout"),
        "{reasons:?}"
    );
    for e in &errors {
        for text in [e.to_string(), format!("{e:?}")] {
            assert!(!text.contains(CANARY), "key leaked: {text}");
            assert!(!text.contains("apikey"), "URL leaked: {text}");
        }
    }
    assert!(!format!("{tb:?}").contains(CANARY));
}

#[tokio::test]
async fn oversized_batches_and_unsendable_names_are_not_sent() {
    let fake = fake().await;
    let tb = client(&fake);

    let many: Vec<String> = (0..101).map(|i| format!("n{i}.example")).collect();
    let e = tb.lookup_domains(&many).await.expect_err("too many");
    assert!(matches!(e, LookupError::Request { code: 0, .. }), "{e:?}");

    // A comma inside a name would add a resource of the sender's choosing.
    let answers = tb
        .lookup_domains(&names(&["a,b.example", "ok.example"]))
        .await
        .expect("lookup works");
    assert!(answers.is_empty());
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "only the second call went out");
    assert_eq!(requests[0].resources, ["ok.example"]);

    assert!(tb.lookup_domains(&[]).await.unwrap().is_empty());
    assert_eq!(fake.request_count(), 1, "an empty batch makes no call");
}

#[tokio::test]
async fn the_fake_records_concurrency() {
    let fake = fake().await;
    fake.set_delay(Some(Duration::from_secs(30)));
    let tb = Arc::new(client_with(&fake, KEY, 60_000));
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let tb = Arc::clone(&tb);
            tokio::spawn(async move { tb.lookup_domains(&[format!("n{i}.example")]).await })
        })
        .collect();
    tokio::time::timeout(PATIENCE, fake.wait_for_requests(4))
        .await
        .expect("four requests arrive");
    assert_eq!(fake.max_in_flight(), 4);
    let requests = fake.requests();
    assert!(requests.windows(2).all(|w| w[0].arrived <= w[1].arrived));
    for t in tasks {
        t.abort();
    }
}

/// The fake enforces the documented request rules, so tests of the client cannot pass against
/// a server more lenient than ThreatBook.
#[tokio::test]
async fn the_fake_enforces_the_documented_rules() {
    let fake = fake().await;
    let http = reqwest::Client::new();
    let url = format!("{}/v3/scene/dns", fake.base_url());
    let code = |v: serde_json::Value| v["response_code"].as_i64().unwrap();

    let missing = http
        .post(&url)
        .query(&[("apikey", KEY)])
        .send()
        .await
        .unwrap();
    assert_eq!(code(missing.json().await.unwrap()), -3);

    let many: Vec<String> = (0..101).map(|i| format!("n{i}.example")).collect();
    let too_many = http
        .post(&url)
        .query(&[("apikey", KEY), ("resource", &many.join(","))])
        .send()
        .await
        .unwrap();
    assert_eq!(code(too_many.json().await.unwrap()), -2);

    let put = http
        .put(&url)
        .query(&[("apikey", KEY), ("resource", "a.example")])
        .send()
        .await
        .unwrap();
    assert_eq!(code(put.json().await.unwrap()), -2);

    let no_key = http
        .get(&url)
        .query(&[("resource", "a.example")])
        .send()
        .await
        .unwrap();
    assert_eq!(code(no_key.json().await.unwrap()), -1);

    let ok = http
        .get(&url)
        .query(&[("apikey", KEY), ("resource", "a.example")])
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(code(body.clone()), 0);
    assert_eq!(body["data"]["domains"], serde_json::json!({}));
    assert_eq!(fake.request_count(), 5);
}
