//! A fault-injecting HTTP proxy in front of a test search server, for the Elasticsearch sink
//! tests. It forwards every request unchanged, except `_bulk` requests, which it can:
//! - answer without forwarding, with a status queued by [`FaultProxy::fail_next_bulk`] (429,
//!   503, ...);
//! - turn into a partial failure: a rule set with [`FaultProxy::set_item_rule`] decides per item
//!   (by its `_id`, how often the proxy saw that `_id` before, and its document) to forward it
//!   or to answer it with an error item (`status` and `error.type`) that the server never sees;
//!   the answer merges both in the request's order, as a real bulk answer would;
//! - forward the request and then lose the answer ([`FaultProxy::lose_next_bulk_answers`]),
//!   replying 502, so the client retries items that are in fact indexed.
//!
//! It records, per `_id`, how often it saw the item, forwarded it, and how often the server
//! answered `201 created` for it, so a test can prove each document was indexed exactly once.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// What the rule sees of one bulk item.
pub struct ItemView<'a> {
    pub id: &'a str,
    /// How many bulk requests carried this `_id` before this one.
    pub seen_before: u32,
    pub doc: &'a Value,
}

/// What the proxy does with one bulk item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemAction {
    Forward,
    /// Answer with this status and `error.type`; the server never sees the item.
    Fail {
        status: u16,
        kind: String,
    },
}

type Rule = Box<dyn Fn(&ItemView) -> ItemAction + Send + Sync>;

#[derive(Default)]
struct Inner {
    fail_next: VecDeque<u16>,
    lose_next: u32,
    rule: Option<Rule>,
    seen: HashMap<String, u32>,
    forwarded: HashMap<String, u32>,
    created: HashMap<String, u32>,
    bulk_requests: u64,
    injected_failures: u64,
}

/// What the proxy recorded.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub bulk_requests: u64,
    /// Whole bulk requests answered with an injected status or a lost answer.
    pub injected_failures: u64,
    /// Per `_id`: bulk requests that carried it.
    pub seen: HashMap<String, u32>,
    /// Per `_id`: times forwarded to the server.
    pub forwarded: HashMap<String, u32>,
    /// Per `_id`: times the server answered 201 (created).
    pub created: HashMap<String, u32>,
}

/// The running proxy; stops when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    upstream: String,
    http: reqwest::Client,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let shared = Shared {
            inner: inner.clone(),
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        };
        let app = Router::new().fallback(handle).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next bulk requests are answered with these statuses, one each, not forwarded.
    pub fn fail_next_bulk(&self, statuses: &[u16]) {
        self.lock().fail_next.extend(statuses);
    }

    /// The next `n` bulk requests are forwarded, but their answers replaced by a 502.
    pub fn lose_next_bulk_answers(&self, n: u32) {
        self.lock().lose_next += n;
    }

    /// Decides per item whether to forward it or fail it (replaces any earlier rule).
    pub fn set_item_rule(&self, rule: impl Fn(&ItemView) -> ItemAction + Send + Sync + 'static) {
        self.lock().rule = Some(Box::new(rule));
    }

    pub fn record(&self) -> Record {
        let i = self.lock();
        Record {
            bulk_requests: i.bulk_requests,
            injected_failures: i.injected_failures,
            seen: i.seen.clone(),
            forwarded: i.forwarded.clone(),
            created: i.created.clone(),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

async fn handle(
    State(s): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    if method == Method::POST && uri.path().ends_with("/_bulk") {
        return bulk(&s, &path, &headers, body).await;
    }
    forward(&s, method, &path, &headers, body.to_vec())
        .await
        .into_response()
}

/// Sends a request upstream; the status, content type and body of the answer.
async fn forward(
    s: &Shared,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Vec<u8>,
) -> (StatusCode, [(axum::http::HeaderName, String); 1], Vec<u8>) {
    let mut req = s.http.request(method, format!("{}{path}", s.upstream));
    for name in ["content-type", "authorization"] {
        if let Some(v) = headers.get(name) {
            req = req.header(name, v.as_bytes());
        }
    }
    let ct = axum::http::header::CONTENT_TYPE;
    match req.body(body).send().await {
        Ok(resp) => {
            let status = StatusCode::from_u16(resp.status().as_u16())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let kind = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_owned();
            let bytes = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
            (status, [(ct, kind)], bytes)
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            [(ct, "text/plain".into())],
            format!("proxy: {}", e.without_url()).into_bytes(),
        ),
    }
}

fn error_answer(status: u16) -> Response {
    let kind = match status {
        429 => "es_rejected_execution_exception",
        _ => "injected_failure",
    };
    let body = json!({
        "error": { "type": kind, "reason": "injected by the fault proxy" },
        "status": status,
    });
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn bulk(s: &Shared, path: &str, headers: &HeaderMap, body: Bytes) -> Response {
    // Parse the NDJSON into (action line, document line) pairs.
    let text = String::from_utf8_lossy(&body);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut items = Vec::new();
    for pair in lines.chunks(2) {
        let action: Value = serde_json::from_str(pair[0]).unwrap_or(Value::Null);
        let doc: Value = pair
            .get(1)
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or(Value::Null);
        let meta = action
            .get("create")
            .or_else(|| action.get("index"))
            .cloned()
            .unwrap_or(Value::Null);
        let id = meta["_id"].as_str().unwrap_or_default().to_owned();
        let index = meta["_index"].as_str().unwrap_or_default().to_owned();
        items.push((pair.join("\n"), id, index, doc));
    }

    // Decide, under the lock, what happens to the request and each item.
    let (injected, lose, actions) = {
        let mut i = lock(&s.inner);
        i.bulk_requests += 1;
        for (_, id, _, _) in &items {
            *i.seen.entry(id.clone()).or_default() += 1;
        }
        if let Some(status) = i.fail_next.pop_front() {
            i.injected_failures += 1;
            (Some(status), false, Vec::new())
        } else {
            let lose = i.lose_next > 0;
            if lose {
                i.lose_next -= 1;
                i.injected_failures += 1;
            }
            let actions: Vec<ItemAction> = items
                .iter()
                .map(|(_, id, _, doc)| {
                    let view = ItemView {
                        id,
                        seen_before: i.seen.get(id).copied().unwrap_or(1) - 1,
                        doc,
                    };
                    i.rule.as_ref().map_or(ItemAction::Forward, |r| r(&view))
                })
                .collect();
            for ((_, id, _, _), a) in items.iter().zip(&actions) {
                if *a == ItemAction::Forward {
                    *i.forwarded.entry(id.clone()).or_default() += 1;
                }
            }
            (None, lose, actions)
        }
    };
    if let Some(status) = injected {
        return error_answer(status);
    }

    let mut upstream_items: VecDeque<Value> = VecDeque::new();
    let mut took = 0;
    let forwarded: Vec<&str> = items
        .iter()
        .zip(&actions)
        .filter(|(_, a)| **a == ItemAction::Forward)
        .map(|((lines, ..), _)| lines.as_str())
        .collect();
    if !forwarded.is_empty() {
        let mut body = forwarded.join("\n");
        body.push('\n');
        let (status, _, answer) = forward(s, Method::POST, path, headers, body.into_bytes()).await;
        if !status.is_success() {
            return (status, answer).into_response();
        }
        let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        took = v["took"].as_u64().unwrap_or(0);
        upstream_items = v["items"].as_array().cloned().unwrap_or_default().into();
        let mut i = lock(&s.inner);
        for item in &upstream_items {
            let r = item.get("create").or_else(|| item.get("index"));
            if let Some(r) = r
                && r["status"].as_u64() == Some(201)
                && let Some(id) = r["_id"].as_str()
            {
                *i.created.entry(id.to_owned()).or_default() += 1;
            }
        }
    }
    if lose {
        return error_answer(502);
    }

    let mut out = Vec::with_capacity(items.len());
    let mut errors = false;
    for ((_, id, index, _), action) in items.iter().zip(actions) {
        let item = match action {
            ItemAction::Forward => upstream_items.pop_front().unwrap_or(Value::Null),
            ItemAction::Fail { status, kind } => json!({ "create": {
                "_index": index, "_id": id, "status": status,
                "error": { "type": kind, "reason": "injected by the fault proxy" },
            }}),
        };
        let status = item
            .get("create")
            .or_else(|| item.get("index"))
            .and_then(|r| r["status"].as_u64())
            .unwrap_or(500);
        errors |= !(200..300).contains(&status);
        out.push(item);
    }
    let answer = json!({ "took": took, "errors": errors, "items": out });
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
        .into_response()
}
