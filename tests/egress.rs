//! Data that leaves the building, end to end over real HTTP on loopback:
//! - the intel stack built from config (`sensor_intel::setup::build`) sends no special-use,
//!   reverse or internal name to the fake ThreatBook, and one client cannot spend the quota;
//!   every event still goes out, marked `not_looked_up`;
//! - clients that carry a secret follow no redirect (the secret never reaches the second host);
//! - answers are read only up to their cap (Elasticsearch, WeCom), with a clear error.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::Duration,
};

use sensor_common::Transport;
use sensor_intel::{
    IntelSection,
    egress::Skip,
    enrich::{EnrichCounters, EnrichSettings, Enricher, TrustedEvents},
    threatbook::ThreatBookSection,
    trust::TrustSection,
};
use sensor_model::{
    encode::Encoder,
    enriched::Enriched,
    query::Query,
    secret::SecretSource,
    verdict::{Assessment, Verdict},
};
use sensor_testkit::{
    fake_threatbook::{FakeThreatBook, FakeVerdict},
    http_stub::{Answer, HttpStub},
};
use tokio::sync::mpsc;

const KEY: &str = "canary-egress-5b1e";

fn query(i: usize, src: IpAddr, name: &str) -> Query {
    Query {
        ts_mono_ns: 1_000_000 + i as u64,
        ifindex: 1,
        vlan_outer: 0,
        vlan_inner: 0,
        src,
        dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 53)),
        src_port: 40000,
        dst_port: 53,
        transport: Transport::Udp,
        dns_id: i as u16,
        qtype: 1,
        qclass: 1,
        name: name.into(),
        answer: None,
    }
}

struct Stack {
    fake: FakeThreatBook,
    counters: Arc<EnrichCounters>,
    egress: Arc<sensor_intel::egress::Egress>,
    tx: mpsc::Sender<Query>,
    rx: mpsc::Receiver<Enriched>,
    _dir: tempfile::TempDir,
}

/// The intel stack as the daemon builds it from config: ThreatBook (the fake), a local feed,
/// `[intel.egress]` from `egress_toml`.
async fn stack(egress_toml: &str) -> Stack {
    sensor_testkit::logs::capture();
    let fake = FakeThreatBook::start(KEY).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("threatbook_key");
    std::fs::write(&key, KEY).unwrap();
    let feed = dir.path().join("feed.txt");
    std::fs::write(&feed, "evil.corp.example.cn\n").unwrap();
    let mut intel: IntelSection = toml::from_str(&format!(
        "[egress]\n{egress_toml}\n[[feeds]]\nname = \"local\"\nkind = \"domains\"\npath = {:?}\n",
        feed.display().to_string()
    ))
    .unwrap();
    let mut tb = ThreatBookSection {
        base_url: fake.base_url().to_owned(),
        api_key: SecretSource {
            env: None,
            file: Some(key),
        },
        ..ThreatBookSection::default()
    };
    tb.limits.batch_window_ms = 5;
    tb.limits.requests_per_second = 1000.0;
    intel.threatbook = Some(tb);
    intel.validate().unwrap();
    let built = sensor_intel::setup::build(&TrustSection::default(), &intel).unwrap();
    let counters = Arc::new(EnrichCounters::default());
    let egress = built.egress.clone().expect("egress rules with a provider");
    let enricher = Enricher {
        settings: EnrichSettings {
            trusted_events: TrustedEvents::Drop,
            max_pending_events: 100_000,
            max_wait_ms: 10_000,
            recheck_secs: 3600,
            max_deferred_names: 100_000,
        },
        trust: None,
        verdicts: built.verdicts.clone(),
        ip_feeds: None,
        egress: built.egress.clone(),
        hits: None,
        counters: counters.clone(),
    };
    let (tx, in_rx) = mpsc::channel(10_000);
    let (out_tx, rx) = mpsc::channel(10_000);
    tokio::spawn(enricher.run(in_rx, out_tx));
    Stack {
        fake,
        counters,
        egress,
        tx,
        rx,
        _dir: dir,
    }
}

/// Receives `n` events, failing after 20 s.
async fn take(rx: &mut mpsc::Receiver<Enriched>, n: usize) -> Vec<Enriched> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while out.len() < n {
            out.push(rx.recv().await.expect("enricher ended early"));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {n} events within 20 s", out.len()));
    out
}

/// Every name the fake ThreatBook was asked about.
fn asked(fake: &FakeThreatBook) -> BTreeSet<String> {
    fake.requests()
        .into_iter()
        .flat_map(|r| r.resources)
        .collect()
}

fn verdict_of<'a>(events: &'a [Enriched], name: &str) -> &'a Assessment {
    events
        .iter()
        .find(|e| e.query.name == name)
        .and_then(|e| e.intel.as_deref())
        .unwrap_or_else(|| panic!("no event with a verdict for {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_use_reverse_and_internal_names_never_reach_the_provider() {
    let mut s = stack("internal_domains = [\"corp.example.cn\"]").await;
    s.fake
        .set_domain("c2.evil-example.net", FakeVerdict::malicious("C2"));
    let client = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 7));
    let names = [
        ("printer.local", Some(Skip::SpecialUse)),
        ("NAS.Home.Arpa.", Some(Skip::SpecialUse)),
        ("db.internal", Some(Skip::SpecialUse)),
        ("4.3.2.10.in-addr.arpa", Some(Skip::Reverse)),
        (
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
            Some(Skip::Reverse),
        ),
        ("mail.corp.example.cn", Some(Skip::Internal)),
        // Internal, but listed by a local feed: the feed (in memory) still judges it.
        ("evil.corp.example.cn", Some(Skip::Internal)),
        ("c2.evil-example.net", None),
        ("www.public-site.cn", None),
        // Not on a label boundary: a public name like any other.
        ("printer.notlocal", None),
    ];
    for (i, (name, _)) in names.iter().enumerate() {
        s.tx.send(query(i, client, name)).await.unwrap();
    }
    let events = take(&mut s.rx, names.len()).await;

    // Every event went out; the provider heard only the public names.
    assert_eq!(events.len(), names.len());
    assert_eq!(
        asked(&s.fake),
        BTreeSet::from([
            "c2.evil-example.net".to_owned(),
            "www.public-site.cn".to_owned(),
            "printer.notlocal".to_owned()
        ])
    );
    for (name, skip) in names {
        let a = verdict_of(&events, name);
        match (name, skip) {
            ("evil.corp.example.cn", _) => {
                assert_eq!(a.verdict, Verdict::Malicious);
                assert_eq!(a.findings[0].provider, "feed:local");
            }
            ("c2.evil-example.net", _) => assert_eq!(a.verdict, Verdict::Malicious),
            (_, None) => assert_eq!(a.verdict, Verdict::Clean, "{name}"),
            (_, Some(skip)) => {
                assert_eq!(a.verdict, Verdict::NotLookedUp, "{name}");
                assert_eq!(a.not_looked_up_reason(), Some(skip.as_str()), "{name}");
            }
        }
    }
    // Counted by reason.
    let c = &s.egress.counters;
    assert_eq!(c.get(Skip::SpecialUse), 3);
    assert_eq!(c.get(Skip::Reverse), 2);
    assert_eq!(c.get(Skip::Internal), 2);
    assert_eq!(c.get(Skip::ClientBudget), 0);
    // The document says so.
    let e = events
        .iter()
        .find(|e| e.query.name == "4.3.2.10.in-addr.arpa")
        .unwrap();
    let mut line = Vec::new();
    Encoder::new("t", &HashMap::new()).encode(&e.query, e.intel.as_deref(), 0, &mut line);
    let line = String::from_utf8(line).unwrap();
    assert!(
        line.contains(r#""intel":{"verdict":"not_looked_up","reason":"reverse"}"#),
        "{line}"
    );
    assert_eq!(
        s.counters
            .events_in
            .load(std::sync::atomic::Ordering::Relaxed),
        names.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_spend_the_quota_and_its_events_still_go_out() {
    let mut s = stack("client_new_names_per_day = 5").await;
    let noisy = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 66));
    let quiet = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 9));
    // The quiet client's names first, so they are cached before the noisy client asks one.
    for i in 0..3 {
        s.tx.send(query(i, quiet, &format!("site{i}.public-site.cn")))
            .await
            .unwrap();
    }
    take(&mut s.rx, 3).await;
    // 20 random subdomains (a DGA or a tunnel), then a name someone else already had looked up.
    for i in 0..20 {
        s.tx.send(query(
            100 + i,
            noisy,
            &format!("x{i:04}q.tunnel-example.net"),
        ))
        .await
        .unwrap();
    }
    s.tx.send(query(200, noisy, "site0.public-site.cn"))
        .await
        .unwrap();
    let events = take(&mut s.rx, 21).await;

    let sent: Vec<String> = asked(&s.fake)
        .into_iter()
        .filter(|n| n.ends_with("tunnel-example.net"))
        .collect();
    assert_eq!(sent.len(), 5, "the noisy client's budget: {sent:?}");
    let (refused, looked_up): (Vec<&Enriched>, Vec<&Enriched>) = events
        .iter()
        .filter(|e| e.query.name.ends_with("tunnel-example.net"))
        .partition(|e| e.intel.as_ref().unwrap().verdict == Verdict::NotLookedUp);
    assert_eq!((refused.len(), looked_up.len()), (15, 5));
    for e in &refused {
        assert_eq!(
            e.intel.as_ref().unwrap().not_looked_up_reason(),
            Some("client_budget")
        );
    }
    // A cached name costs nothing: answered from the cache even with the budget spent.
    assert_eq!(
        verdict_of(&events, "site0.public-site.cn").verdict,
        Verdict::Clean
    );
    assert_eq!(s.egress.counters.get(Skip::ClientBudget), 15);
    assert_eq!(s.egress.budget.per_day(), 5);

    // The quiet client is not affected by the noisy one.
    s.tx.send(query(300, quiet, "new.public-site.cn"))
        .await
        .unwrap();
    let e = take(&mut s.rx, 1).await;
    assert_eq!(e[0].intel.as_ref().unwrap().verdict, Verdict::Clean);
    assert!(asked(&s.fake).contains("new.public-site.cn"));
}

#[test]
fn the_default_budget_is_derived_from_the_stated_quota() {
    let intel: IntelSection = toml::from_str("").unwrap();
    let tb = ThreatBookSection::default();
    assert_eq!(tb.limits.daily_quota, 10_000);
    assert_eq!(intel.egress.client_budget(tb.limits.daily_quota), 1_000);
}

/// A stub that redirects every request to `target`.
async fn redirecting_to(target: &HttpStub) -> HttpStub {
    HttpStub::start(Answer::Fixed {
        status: 302,
        headers: vec![format!("Location: {}/stolen", target.base_url())],
        body: Vec::new(),
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn clients_carrying_secrets_follow_no_redirect() {
    let elsewhere = HttpStub::start(Answer::Fixed {
        status: 200,
        headers: vec!["Content-Type: application/json".into()],
        body: br#"{"errcode":0,"errmsg":"ok"}"#.to_vec(),
    })
    .await
    .unwrap();
    let redirect = redirecting_to(&elsewhere).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, KEY).unwrap();
    let file = || SecretSource {
        env: None,
        file: Some(secret.clone()),
    };

    // WeCom robot and JSON webhook (the nightly notice path: the same clients as alerts).
    let alerts: sensor_outputs::alert::AlertsSection = toml::from_str(&format!(
        "[[wecom]]\nkey = {{ file = {:?} }}\nbase_url = {:?}\n\
         [[webhook]]\nurl = \"{}/hook\"\nheaders = {{ Authorization = {{ file = {:?} }} }}\n",
        secret.display().to_string(),
        redirect.base_url(),
        redirect.base_url(),
        secret.display().to_string(),
    ))
    .unwrap();
    alerts.validate().unwrap();
    let failures =
        sensor_outputs::alert::notice::send(&alerts, "test", &serde_json::json!({})).await;
    assert_eq!(failures.len(), 2, "{failures:?}");
    for f in &failures {
        assert!(
            f.contains("http_3xx") && f.contains("redirect not followed"),
            "{f}"
        );
        assert!(!f.contains(KEY), "{f}");
    }

    // Elasticsearch with basic auth.
    let urls = vec![redirect.base_url()];
    let keys = sensor_outputs::sink::elastic::client::EsKeys {
        urls: "t.urls",
        username: "t.username",
        password: "t.password",
        api_key: "t.api_key",
        ca_file: "t.ca_file",
    };
    let pw = file();
    let es = sensor_outputs::sink::elastic::client::EsClient::new(
        &sensor_outputs::sink::elastic::client::EsConnection {
            urls: &urls,
            username: Some("elastic"),
            password: Some(&pw),
            api_key: None,
            ca_file: None,
            timeout: Duration::from_secs(5),
            connect_timeout: None,
            allow_insecure_http: false,
            max_response_bytes: 1 << 20,
            keys: &keys,
        },
    )
    .unwrap();
    let (status, _) = es
        .send(reqwest::Method::GET, "_cluster/health", None)
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 302);

    // ThreatBook: the key is in the query string.
    let tb = sensor_intel::threatbook::ThreatBook::from_section(&ThreatBookSection {
        base_url: redirect.base_url(),
        api_key: file(),
        ..ThreatBookSection::default()
    })
    .unwrap();
    use sensor_intel::Provider;
    let err = tb
        .lookup_domains(&["www.public-site.cn".to_owned()])
        .await
        .unwrap_err();
    assert!(!err.to_string().contains(KEY), "{err}");

    // Four clients were redirected; none went where it was sent.
    assert_eq!(redirect.seen().len(), 4);
    assert!(
        elsewhere.seen().is_empty(),
        "a secret followed a redirect: {:?}",
        elsewhere.seen()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_elasticsearch_answer_is_cut_off_with_a_clear_error() {
    let endless = HttpStub::start(Answer::Endless {
        json_prefix: "{\"alerts\":{\"mappings\":{".into(),
    })
    .await
    .unwrap();
    let cap = 1 << 20;
    let reader = sensor_blocklist::collect::Reader::new(&sensor_blocklist::collect::ReadSection {
        url: endless.base_url(),
        max_response_bytes: cap,
        ..Default::default()
    })
    .unwrap();
    let day = time::OffsetDateTime::now_utc();
    let src: sensor_blocklist::collect::AlertSource =
        toml::from_str("index = \"ngfw-*\"\nfield = \"source.ip\"\ndevice = \"NGFW\"").unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        reader.collect(&[src], day - time::Duration::days(1), day),
    )
    .await
    .expect("the read ends at the cap, not when the server stops")
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!("answer larger than {cap} bytes")),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
    // The client stopped reading near the cap: what the server got out is bounded by the cap
    // plus the socket buffers, not the endless body.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = endless.body_bytes_sent();
    assert!(
        sent < 64 * cap as u64,
        "{sent} bytes sent for a {cap}-byte cap"
    );
}

#[tokio::test]
async fn an_oversized_wecom_answer_is_refused() {
    let big = HttpStub::start(Answer::Fixed {
        status: 200,
        headers: vec!["Content-Type: application/json".into()],
        body: format!("{{\"errcode\":0,\"errmsg\":\"{}\"}}", "x".repeat(1 << 20)).into_bytes(),
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("key");
    std::fs::write(&secret, KEY).unwrap();
    let alerts: sensor_outputs::alert::AlertsSection = toml::from_str(&format!(
        "[[wecom]]\nkey = {{ file = {:?} }}\nbase_url = {:?}\n",
        secret.display().to_string(),
        big.base_url(),
    ))
    .unwrap();
    let failures =
        sensor_outputs::alert::notice::send(&alerts, "test", &serde_json::json!({})).await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains("answer larger than 65536 bytes"),
        "{failures:?}"
    );
}

#[tokio::test]
async fn composite_paging_has_a_page_and_an_address_cap() {
    // Every request gets the same page: three addresses and an after_key, as a server that never
    // ends its paging (or a loop on our side) would answer.
    let page = HttpStub::start(Answer::Fixed {
        status: 200,
        headers: vec!["Content-Type: application/json".into()],
        body: serde_json::json!({"aggregations": {"ips": {
            "buckets": [
                {"key": {"ip": "203.0.113.1"}, "doc_count": 1},
                {"key": {"ip": "203.0.113.2"}, "doc_count": 1},
                {"key": {"ip": "203.0.113.3"}, "doc_count": 1},
            ],
            "after_key": {"ip": "203.0.113.3"},
        }}})
        .to_string()
        .into_bytes(),
    })
    .await
    .unwrap();
    let src: sensor_blocklist::collect::AlertSource =
        toml::from_str("index = \"ngfw-*\"\nfield = \"source.ip\"\ndevice = \"NGFW\"").unwrap();
    let day = time::OffsetDateTime::now_utc();
    let collect = |cfg: sensor_blocklist::collect::ReadSection| {
        let src = src.clone();
        async move {
            sensor_blocklist::collect::Reader::new(&cfg)
                .unwrap()
                .collect(&[src], day - time::Duration::days(1), day)
                .await
                .unwrap_err()
                .to_string()
        }
    };
    let base = sensor_blocklist::collect::ReadSection {
        url: page.base_url(),
        ..Default::default()
    };
    let err = collect(sensor_blocklist::collect::ReadSection {
        max_addresses: 2,
        ..base.clone()
    })
    .await;
    assert!(err.contains("max_addresses = 2"), "{err}");
    let err = collect(sensor_blocklist::collect::ReadSection {
        max_pages: 1,
        ..base.clone()
    })
    .await;
    assert!(err.contains("max_pages = 1"), "{err}");
    // With the default caps, the repeated after_key itself stops the loop.
    let err = collect(base).await;
    assert!(err.contains("same after_key twice"), "{err}");
    // 1 mapping + 1 page, 1 + 1, 1 + 2 requests: never more than the caps allow.
    assert_eq!(page.seen().len(), 7);
}
