//! A local fake of the WeCom group robot API, for the alert tests.
//!
//! It follows the documented wire format (see `alert::wecom`): `POST /cgi-bin/webhook/send?key=…`
//! with `{"msgtype":"markdown","markdown":{"content":"…"}}`, answered with HTTP 200 and
//! `{"errcode":…,"errmsg":"…"}`:
//! - wrong or missing key → `93000` "invalid webhook url";
//! - told to throttle ([`FakeWeCom::throttle_next`]) → `45009` "api freq out of limit";
//! - more than 20 requests with the right key in any 60 s → `45009` as well, and the request is
//!   counted in [`FakeWeCom::rate_violations`], so a test sees a client that broke the budget;
//! - a body that is not JSON or has no known `msgtype` → `40008` "invalid message type";
//! - markdown content over 4096 bytes → `40058` "markdown.content exceed max length 4096".
//!
//! It also serves `POST /json`, a generic JSON webhook that records the body and headers and
//! answers 200 (or a status set with [`FakeWeCom::json_status_next`]).
//!
//! Every request is recorded with its arrival time on tokio's clock, so tests on paused time
//! see exact times. The key is never recorded, only whether it matched. Dropping the handle
//! stops the server.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use serde_json::{Value, json};
use tokio::{sync::Notify, task::JoinHandle, time::Instant};

/// The robot's documented rate: 20 messages in a minute.
pub const MAX_PER_MINUTE: usize = 20;
/// The documented limit of `markdown.content`, in bytes.
pub const MAX_MARKDOWN_BYTES: usize = 4096;

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Arrival, on tokio's clock.
    pub at: Instant,
    /// `robot` (`/cgi-bin/webhook/send`) or `json` (`/json`).
    pub endpoint: &'static str,
    /// Whether the `key` query parameter matched (robot requests).
    pub key_ok: bool,
    pub msgtype: Option<String>,
    /// `markdown.content` or `text.content` (robot requests).
    pub content: String,
    /// The parsed body, when it was JSON.
    pub body: Option<Value>,
    /// Request headers (`/json` requests).
    pub headers: Vec<(String, String)>,
    /// What the fake answered: the `errcode` for robot requests, the HTTP status for `/json`.
    pub answer: i64,
    /// The request was over 20 in a minute (answered 45009 by the limiter, not on request).
    pub rate_violation: bool,
}

#[derive(Default)]
struct Inner {
    key: String,
    received: Vec<Received>,
    /// Arrival times of robot requests with the right key in the last minute.
    window: VecDeque<Instant>,
    throttle_next: usize,
    json_status_next: VecDeque<u16>,
}

struct Shared {
    inner: Mutex<Inner>,
    changed: Notify,
}

pub struct FakeWeCom {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for FakeWeCom {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeWeCom {
    /// Starts the fake on 127.0.0.1 (an ephemeral port), accepting `key`.
    pub async fn start(key: &str) -> Self {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                key: key.to_owned(),
                ..Inner::default()
            }),
            changed: Notify::new(),
        });
        let app = Router::new()
            .route("/cgi-bin/webhook/send", post(robot))
            .route("/json", post(json_hook))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, task }
    }

    /// The API base URL, for `base_url` in `[[alerts.wecom]]`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The generic JSON webhook's URL, for `url` in `[[alerts.webhook]]`.
    pub fn json_url(&self) -> String {
        format!("http://{}/json", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers the next `n` robot requests (with the right key) with 45009.
    pub fn throttle_next(&self, n: usize) {
        self.lock().throttle_next = n;
    }

    /// Answers the next `/json` requests with these HTTP statuses, in order.
    pub fn json_status_next(&self, statuses: &[u16]) {
        self.lock().json_status_next.extend(statuses);
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// Robot messages accepted (errcode 0).
    pub fn accepted(&self) -> Vec<Received> {
        self.lock()
            .received
            .iter()
            .filter(|r| r.endpoint == "robot" && r.answer == 0)
            .cloned()
            .collect()
    }

    /// Requests refused for being over 20 a minute.
    pub fn rate_violations(&self) -> usize {
        self.lock()
            .received
            .iter()
            .filter(|r| r.rate_violation)
            .count()
    }

    /// Waits until `done` holds for the requests received so far; panics after `timeout` on
    /// tokio's clock (auto-advanced under paused time, so a generous timeout costs nothing).
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            // Registered before checking, so a request landing in between is not missed.
            changed.as_mut().enable();
            if done(&self.lock().received) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let n = self.lock().received.len();
                panic!("fake WeCom: condition not met within {timeout:?} ({n} requests)");
            }
        }
    }
}

fn answer(errcode: i64, errmsg: &str) -> Json<Value> {
    Json(json!({ "errcode": errcode, "errmsg": errmsg }))
}

async fn robot(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Json<Value> {
    let now = Instant::now();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let msgtype = parsed
        .as_ref()
        .and_then(|b| b.get("msgtype"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let content = match (&parsed, msgtype.as_deref()) {
        (Some(b), Some(t @ ("markdown" | "text"))) => b
            .get(t)
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    };
    let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
    let key_ok = query.get("key").is_some_and(|k| *k == inner.key);
    let mut rate_violation = false;
    let (code, msg) = if !key_ok {
        (93000, "invalid webhook url")
    } else {
        // Every request with the right key counts, whatever the answer: the client's budget
        // must count its retries too.
        while inner
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            inner.window.pop_front();
        }
        let over = inner.window.len() >= MAX_PER_MINUTE;
        inner.window.push_back(now);
        if inner.throttle_next > 0 {
            inner.throttle_next -= 1;
            (45009, "api freq out of limit")
        } else if over {
            rate_violation = true;
            (45009, "api freq out of limit")
        } else {
            match (&msgtype, &content) {
                (Some(_), Some(c)) if c.len() > MAX_MARKDOWN_BYTES => (
                    40058,
                    "markdown.content exceed max length 4096. invalid Request Parameter",
                ),
                (Some(_), Some(_)) => (0, "ok"),
                _ => (40008, "invalid message type"),
            }
        }
    };
    inner.received.push(Received {
        at: now,
        endpoint: "robot",
        key_ok,
        msgtype,
        content: content.unwrap_or_default(),
        body: parsed,
        headers: Vec::new(),
        answer: code,
        rate_violation,
    });
    drop(inner);
    shared.changed.notify_waiters();
    answer(code, msg)
}

async fn json_hook(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Json<Value>) {
    let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
    let status = inner.json_status_next.pop_front().unwrap_or(200);
    inner.received.push(Received {
        at: Instant::now(),
        endpoint: "json",
        key_ok: true,
        msgtype: None,
        content: String::from_utf8_lossy(&body).into_owned(),
        body: serde_json::from_slice(&body).ok(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        answer: i64::from(status),
        rate_violation: false,
    });
    drop(inner);
    shared.changed.notify_waiters();
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(json!({ "ok": status == 200 })),
    )
}
