//! A fake ThreatBook v3 server for tests: `/v3/scene/dns` and `/v3/scene/ip_reputation` on
//! `127.0.0.1:0`, answering in the documented wire format (see [`sensor_intel::threatbook`] for
//! the sources). It renders its answers with `serde_json::json!` rather than the client's types,
//! so a mistake in the client's reading of the format is not mirrored here.
//!
//! Driven at runtime through [`FakeThreatBook`]: the expected key, the malicious indicators, a
//! forced `response_code`, an HTTP 500 mode and a delay per request. Every request is recorded
//! (path, resources, key check, arrival time, in-flight count) so tests can assert call counts,
//! batch sizes, concurrency and rate. Dropping the handle stops the server.
//!
//! Behaviour where the documentation is silent (chosen, not verified): a name it knows nothing
//! about is absent from `data.domains`; an unknown IP gets a clean verdict (`is_malicious: false`,
//! `severity: "info"`) with empty `basic` and `asn`; more than 100 resources and an HTTP method
//! other than GET or POST get `-2`; an unknown `/v3/...` path gets `-2` `Invalid API Method`.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

/// ThreatBook's documented limit of resources per request.
pub const MAX_RESOURCES: usize = 100;

/// One indicator's verdict, as the fake will answer it.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeVerdict {
    pub is_malicious: bool,
    /// `info`, `low`, `medium`, `high` or `critical`.
    pub severity: String,
    /// `low`, `medium` or `high`.
    pub confidence_level: String,
    pub judgments: Vec<String>,
    /// `(tags_type, tags)` pairs.
    pub tags_classes: Vec<(String, Vec<String>)>,
    /// Only `/v3/scene/dns` answers carry a permalink; `None` leaves it out.
    pub permalink: Option<String>,
}

impl FakeVerdict {
    /// A malicious, high-confidence, high-severity verdict with one judgment.
    pub fn malicious(judgment: &str) -> Self {
        Self {
            is_malicious: true,
            severity: "high".into(),
            confidence_level: "high".into(),
            judgments: vec![judgment.into()],
            tags_classes: Vec::new(),
            permalink: None,
        }
    }

    /// The verdict for something ThreatBook knows and considers harmless.
    pub fn clean() -> Self {
        Self {
            is_malicious: false,
            severity: "info".into(),
            confidence_level: "low".into(),
            judgments: Vec::new(),
            tags_classes: Vec::new(),
            permalink: None,
        }
    }

    fn to_json(&self) -> Value {
        let tags: Vec<Value> = self
            .tags_classes
            .iter()
            .map(|(kind, tags)| json!({ "tags_type": kind, "tags": tags }))
            .collect();
        let mut v = json!({
            "is_malicious": self.is_malicious,
            "severity": self.severity,
            "confidence_level": self.confidence_level,
            "judgments": self.judgments,
            "tags_classes": tags,
        });
        if let (Some(link), Some(obj)) = (&self.permalink, v.as_object_mut()) {
            obj.insert("permalink".into(), json!(link));
        }
        v
    }
}

/// The `basic` and `asn` parts of an IP reputation answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FakeIpInfo {
    pub carrier: String,
    pub country: String,
    pub province: String,
    pub city: String,
    pub asn_number: Option<u32>,
    pub asn_info: String,
}

/// How the fake answers every request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FakeMode {
    /// Per the documented rules: key check, parameter checks, verdicts.
    #[default]
    Normal,
    /// Every request gets this `response_code` (with its documented `verbose_msg`).
    ResponseCode(i64),
    /// Every request gets HTTP 500 with a plain-text body (a broken front end, no JSON).
    Http500,
}

/// One request as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The `resource` parameter split at commas (empty when missing).
    pub resources: Vec<String>,
    /// The `lang` parameter, when given.
    pub lang: Option<String>,
    /// The `apikey` parameter matched the expected key.
    pub key_ok: bool,
    pub arrived: Instant,
    /// Requests in flight when this one arrived, itself included.
    pub in_flight: usize,
}

#[derive(Debug, Default)]
struct Inner {
    api_key: String,
    domains: HashMap<String, FakeVerdict>,
    ips: HashMap<IpAddr, (FakeVerdict, FakeIpInfo)>,
    mode: FakeMode,
    delay: Option<Duration>,
    requests: Vec<RecordedRequest>,
    in_flight: usize,
    max_in_flight: usize,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    /// The number of requests recorded, for tests that wait for traffic.
    count: watch::Sender<usize>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the state from the others.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Handle of a running fake. Dropping it stops the server.
#[derive(Debug)]
pub struct FakeThreatBook {
    addr: SocketAddr,
    base_url: String,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FakeThreatBook {
    /// Starts a fake on `127.0.0.1:0` that accepts `api_key`. Needs a tokio runtime.
    pub async fn start(api_key: &str) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                api_key: api_key.into(),
                ..Inner::default()
            }),
            count: watch::channel(0).0,
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(e) = server.await {
                tracing::warn!(error = %e, "fake threatbook stopped with an error");
            }
        });
        Ok(Self {
            addr,
            base_url: format!("http://{addr}"),
            shared,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:<port>`, to use as `base_url`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The key requests must carry; others get `-1`.
    pub fn set_api_key(&self, key: &str) {
        self.shared.lock().api_key = key.into();
    }

    /// Makes `/v3/scene/dns` answer `name` (lower case, no trailing dot) with `verdict`.
    pub fn set_domain(&self, name: &str, verdict: FakeVerdict) {
        self.shared.lock().domains.insert(name.into(), verdict);
    }

    /// Makes `/v3/scene/ip_reputation` answer `ip` with `verdict` and `info`.
    pub fn set_ip(&self, ip: IpAddr, verdict: FakeVerdict, info: FakeIpInfo) {
        self.shared.lock().ips.insert(ip, (verdict, info));
    }

    pub fn set_mode(&self, mode: FakeMode) {
        self.shared.lock().mode = mode;
    }

    /// Delays every answer by `delay` (`None`: answer at once).
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.shared.lock().delay = delay;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// The most requests that were in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.lock().max_in_flight
    }

    /// Forgets the recorded requests and the in-flight high-water mark.
    pub fn clear_requests(&self) {
        let mut inner = self.shared.lock();
        inner.requests.clear();
        inner.max_in_flight = inner.in_flight;
        self.shared.count.send_replace(0);
    }

    /// Waits until at least `n` requests have been recorded since start (or the last clear).
    pub async fn wait_for_requests(&self, n: usize) {
        let mut rx = self.shared.count.subscribe();
        // The sender lives in `self.shared`, so the channel cannot close while we wait.
        // The closure reads only the watched count: taking the state lock there could deadlock
        // with a handler that holds it while publishing a new count.
        let _ = rx.wait_for(|&count| count >= n).await;
    }

    /// Stops the server and waits until its listener is closed.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            // Connections still open (a slow request) would hold graceful shutdown; tests that
            // stop the server want it gone, so cut them off.
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for FakeThreatBook {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Counts a request in flight until dropped, also when the client gives up and the handler's
/// future is dropped mid-delay.
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.in_flight = inner.in_flight.saturating_sub(1);
    }
}

/// The documented `verbose_msg` for each error code.
fn verbose_msg(code: i64) -> &'static str {
    match code {
        0 => "OK",
        1 => "Partial Success",
        2 => "No Data",
        -1 => "Invalid API Key",
        -2 => "Invalid Request",
        -3 => "Missing Parameter",
        -4 => "Frequent Limitation",
        -5 => "System Error",
        _ => "Unknown",
    }
}

fn envelope(code: i64, msg: &str, data: Option<Value>) -> Response {
    let mut body = json!({ "response_code": code, "verbose_msg": msg });
    if let (Some(data), Some(obj)) = (data, body.as_object_mut()) {
        obj.insert("data".into(), data);
    }
    Json(body).into_response()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let resources: Vec<String> = params
        .get("resource")
        .map(|r| {
            r.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let (mode, delay, key_ok, _guard) = {
        let mut inner = shared.lock();
        let key_ok = params.get("apikey").is_some_and(|k| *k == inner.api_key);
        inner.in_flight += 1;
        inner.max_in_flight = inner.max_in_flight.max(inner.in_flight);
        let record = RecordedRequest {
            method: method.to_string(),
            path: uri.path().to_owned(),
            resources: resources.clone(),
            lang: params.get("lang").cloned(),
            key_ok,
            arrived: Instant::now(),
            in_flight: inner.in_flight,
        };
        inner.requests.push(record);
        let n = inner.requests.len();
        shared.count.send_replace(n);
        (
            inner.mode,
            inner.delay,
            key_ok,
            InFlight(Arc::clone(&shared)),
        )
    };

    if let Some(delay) = delay {
        // The fake's latency, not synchronisation: this is what "slow" means.
        tokio::time::sleep(delay).await;
    }
    match mode {
        FakeMode::Http500 => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response();
        }
        FakeMode::ResponseCode(code) => return envelope(code, verbose_msg(code), None),
        FakeMode::Normal => {}
    }
    let is_dns = uri.path() == "/v3/scene/dns";
    let is_ip = uri.path() == "/v3/scene/ip_reputation";
    if !is_dns && !is_ip {
        return envelope(-2, "Invalid API Method", None);
    }
    if method != Method::GET && method != Method::POST {
        return envelope(-2, verbose_msg(-2), None);
    }
    if !key_ok {
        return envelope(-1, verbose_msg(-1), None);
    }
    if resources.is_empty() {
        return envelope(-3, verbose_msg(-3), None);
    }
    if resources.len() > MAX_RESOURCES {
        return envelope(-2, verbose_msg(-2), None);
    }

    let inner = shared.lock();
    let data = if is_dns {
        let domains: serde_json::Map<String, Value> = resources
            .iter()
            .filter_map(|r| inner.domains.get(r).map(|v| (r.clone(), v.to_json())))
            .collect();
        json!({ "domains": domains, "ips": {} })
    } else {
        let mut answers = serde_json::Map::new();
        for r in &resources {
            let Ok(ip) = r.parse::<IpAddr>() else {
                continue;
            };
            let (verdict, info) = inner
                .ips
                .get(&ip)
                .cloned()
                .unwrap_or_else(|| (FakeVerdict::clean(), FakeIpInfo::default()));
            let mut v = verdict.to_json();
            if let Some(obj) = v.as_object_mut() {
                obj.insert(
                    "basic".into(),
                    json!({
                        "carrier": info.carrier,
                        "location": {
                            "country": info.country,
                            "province": info.province,
                            "city": info.city,
                            "lng": "",
                            "lat": "",
                            "country_code": "",
                        },
                    }),
                );
                obj.insert(
                    "asn".into(),
                    json!({ "rank": 0, "info": info.asn_info, "number": info.asn_number }),
                );
                obj.insert("scene".into(), json!(""));
                obj.insert("update_time".into(), json!("2026-01-01 00:00:00"));
            }
            answers.insert(r.clone(), v);
        }
        Value::Object(answers)
    };
    envelope(0, verbose_msg(0), Some(data))
}
