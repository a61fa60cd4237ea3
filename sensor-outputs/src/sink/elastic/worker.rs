//! The worker task: installs the template, cuts bulk requests by size and time, sends them, and
//! retries what may succeed later.
//!
//! Retry policy (one place): a transport error, a 429 or a 5xx answer to the whole request, or
//! an answer that is not a readable bulk response, sends the whole request again; in a bulk
//! answer, items with 429 or 5xx are sent again, 201 is `indexed`, 409 is `already_indexed`
//! (the `_id` exists: an earlier attempt got through), anything else is dropped and counted by
//! the item's `error.type`. A non-retriable answer to the whole request (400, 401, 403, 413, …)
//! drops its items as `http_<status>`. Every retry waits a jittered exponential back-off; after
//! `max_retries` the rest is `retries_exhausted`.

use std::{
    collections::HashSet,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use serde::Deserialize;
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use super::{ElasticCounters, ElasticSection, client::EsClient, document::Builder, template};
use sensor_model::retry::Backoff;

/// One bulk item: its action and document lines.
struct Item(Vec<u8>);

#[derive(Deserialize)]
struct BulkHead {
    errors: bool,
}

#[derive(Deserialize)]
struct BulkResponse {
    items: Vec<ItemWrap>,
}

/// `{"create": {...}}` (or `index` from a proxy or an older server).
#[derive(Deserialize)]
struct ItemWrap {
    #[serde(alias = "index")]
    create: ItemResult,
}

/// One item's outcome in a bulk answer.
#[derive(Debug, Deserialize)]
pub struct ItemResult {
    pub status: u16,
    pub error: Option<ItemError>,
}

#[derive(Debug, Deserialize)]
pub struct ItemError {
    #[serde(rename = "type")]
    pub kind: String,
}

/// What a 2xx `_bulk` answer says about the items sent.
#[derive(Debug)]
pub enum BulkAnswer {
    /// `"errors": false`: every item is indexed.
    AllIndexed,
    /// One result per item sent, in order.
    Items(Vec<ItemResult>),
    /// Not a bulk answer, or not one result per item: why.
    Unreadable(String),
}

/// Reads a 2xx `_bulk` answer to `sent` items.
pub fn read_bulk_answer(answer: &[u8], sent: usize) -> BulkAnswer {
    match serde_json::from_slice::<BulkHead>(answer) {
        Ok(head) if !head.errors => return BulkAnswer::AllIndexed,
        Ok(_) => {}
        Err(e) => return BulkAnswer::Unreadable(e.to_string()),
    }
    match serde_json::from_slice::<BulkResponse>(answer) {
        Ok(r) if r.items.len() == sent => {
            BulkAnswer::Items(r.items.into_iter().map(|w| w.create).collect())
        }
        Ok(r) => BulkAnswer::Unreadable(format!(
            "the answer has {} items for {sent} sent",
            r.items.len()
        )),
        Err(e) => BulkAnswer::Unreadable(e.to_string()),
    }
}

fn retriable(status: u16) -> bool {
    status == 429 || (500..600).contains(&status)
}

/// Waits until the shutdown deadline has passed. A dropped sender (the sink handle dropped
/// without `shutdown`) never stops the worker: the closed queue ends it after delivery.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

pub(super) struct Worker {
    client: EsClient,
    builder: Builder,
    counters: Arc<ElasticCounters>,
    stop: watch::Receiver<bool>,
    max_docs: usize,
    max_bytes: usize,
    flush: Duration,
    max_retries: u32,
    backoff: Backoff,
    template: Option<(String, Vec<u8>)>,
    /// Drop reasons already logged (each is logged once at WARN, then only counted).
    logged: HashSet<String>,
}

/// Whether delivery went on or the shutdown deadline cut it.
#[derive(PartialEq, Eq)]
enum Flow {
    Go,
    Stopped,
}

impl Worker {
    pub(super) fn new(
        cfg: &ElasticSection,
        client: EsClient,
        builder: Builder,
        counters: Arc<ElasticCounters>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let pattern = super::document::IndexPattern::parse(&cfg.index)
            .map(|p| p.template_pattern())
            .unwrap_or_default();
        Self {
            client,
            builder,
            counters,
            stop,
            max_docs: cfg.bulk_max_docs,
            max_bytes: cfg.bulk_max_bytes,
            flush: Duration::from_millis(cfg.flush_interval_ms),
            max_retries: cfg.max_retries,
            backoff: Backoff {
                initial: Duration::from_millis(cfg.retry_initial_ms),
                max: Duration::from_millis(cfg.retry_max_ms),
            },
            template: cfg.install_template.then(|| {
                (
                    cfg.template_name.clone(),
                    template::body(&pattern).to_string().into_bytes(),
                )
            }),
            logged: HashSet::new(),
        }
    }

    /// A final outcome other than success for `n` items.
    fn drop_items(&mut self, stage: &'static str, reason: &str, n: usize) {
        if n == 0 {
            return;
        }
        let c = &self.counters;
        c.dropped.add(stage, reason, n as u64);
        c.in_flight.fetch_sub(n as u64, Ordering::SeqCst);
        if self.logged.len() < 2 * crate::sink::MAX_REASONS && self.logged.insert(reason.to_owned())
        {
            tracing::warn!(
                stage,
                reason,
                documents = n,
                "elasticsearch: documents dropped (first of this reason; see elasticsearch_dropped)"
            );
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<crate::sink::SharedEvent>) {
        let mut stop = self.stop.clone();
        if self.template.is_some() && self.install_template(&mut stop).await == Flow::Stopped {
            self.drain_stopped(&mut rx, Vec::new());
            return;
        }
        let mut batch: Vec<Item> = Vec::new();
        let mut bytes = 0usize;
        let mut deadline = Instant::now();
        loop {
            let next = tokio::select! {
                biased;
                _ = stopped(&mut stop) => {
                    self.drain_stopped(&mut rx, batch);
                    return;
                }
                e = rx.recv() => e,
                _ = tokio::time::sleep_until(deadline), if !batch.is_empty() => {
                    bytes = 0;
                    if self.deliver(std::mem::take(&mut batch), &mut stop).await == Flow::Stopped {
                        self.drain_stopped(&mut rx, Vec::new());
                        return;
                    }
                    continue;
                }
            };
            let Some(event) = next else { break };
            if batch.is_empty() {
                deadline = Instant::now() + self.flush;
                self.builder.resync();
            }
            let mut item = Vec::with_capacity(1024);
            self.builder.item(&event.event, &mut item);
            if !batch.is_empty() && bytes + item.len() > self.max_bytes {
                bytes = 0;
                deadline = Instant::now() + self.flush;
                if self.deliver(std::mem::take(&mut batch), &mut stop).await == Flow::Stopped {
                    self.drain_stopped(&mut rx, vec![Item(item)]);
                    return;
                }
            }
            bytes += item.len();
            batch.push(Item(item));
            if batch.len() >= self.max_docs || bytes >= self.max_bytes {
                bytes = 0;
                if self.deliver(std::mem::take(&mut batch), &mut stop).await == Flow::Stopped {
                    self.drain_stopped(&mut rx, Vec::new());
                    return;
                }
            }
        }
        // The queue is closed and empty: deliver the last batch.
        if !batch.is_empty() && self.deliver(batch, &mut stop).await == Flow::Stopped {
            self.drain_stopped(&mut rx, Vec::new());
        }
    }

    /// The shutdown deadline passed: everything still held is dropped as `shutdown`.
    fn drain_stopped(
        &mut self,
        rx: &mut mpsc::Receiver<crate::sink::SharedEvent>,
        batch: Vec<Item>,
    ) {
        self.drop_items("bulk", "shutdown", batch.len());
        rx.close();
        let mut queued = 0;
        while rx.try_recv().is_ok() {
            queued += 1;
        }
        self.drop_items("queue", "shutdown", queued);
    }

    /// Puts the template, retrying in the background until the server answers. A refusal that
    /// retrying cannot fix (401, 403, 400) is logged and indexing goes on without the template.
    async fn install_template(&mut self, stop: &mut watch::Receiver<bool>) -> Flow {
        let Some((name, body)) = self.template.clone() else {
            return Flow::Go;
        };
        let path = format!("_index_template/{name}");
        let mut attempt = 0u32;
        loop {
            let sent = tokio::select! {
                biased;
                _ = stopped(stop) => return Flow::Stopped,
                r = self.client.send(reqwest::Method::PUT, &path, Some(("application/json", body.clone()))) => r,
            };
            let c = &self.counters;
            let problem = match sent {
                Ok((status, _)) if status.is_success() => {
                    c.server_up.store(true, Ordering::Relaxed);
                    c.template_installed.store(true, Ordering::Relaxed);
                    tracing::info!(template = %name, attempts = attempt + 1, "elasticsearch: index template installed");
                    return Flow::Go;
                }
                Ok((status, body)) if !retriable(status.as_u16()) => {
                    c.server_up.store(true, Ordering::Relaxed);
                    c.template_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        template = %name,
                        status = status.as_u16(),
                        answer = %sensor_model::text::one_line(&String::from_utf8_lossy(&body), 300),
                        "elasticsearch: index template refused; indexing without it (new indices \
                         get dynamic mappings: install it by hand or grant manage_index_templates)"
                    );
                    return Flow::Go;
                }
                Ok((status, _)) => {
                    c.server_up.store(status.as_u16() == 429, Ordering::Relaxed);
                    format!("HTTP {}", status.as_u16())
                }
                Err(t) => {
                    c.server_up.store(false, Ordering::Relaxed);
                    t.to_string()
                }
            };
            c.template_errors.fetch_add(1, Ordering::Relaxed);
            if attempt == 0 {
                tracing::warn!(
                    error = %problem,
                    "elasticsearch: cannot install the index template; retrying in the background, \
                     events queue meanwhile (up to queue_size)"
                );
            } else {
                tracing::debug!(error = %problem, attempt, "elasticsearch: template retry failed");
            }
            attempt = attempt.saturating_add(1);
            let wait = self.backoff.delay(attempt);
            tokio::select! {
                biased;
                _ = stopped(stop) => return Flow::Stopped,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Sends `pending` until every item has a final outcome, or the deadline passes.
    async fn deliver(&mut self, mut pending: Vec<Item>, stop: &mut watch::Receiver<bool>) -> Flow {
        let mut attempt = 0u32;
        let mut was_down = false;
        loop {
            let mut body = Vec::with_capacity(pending.iter().map(|i| i.0.len()).sum());
            pending.iter().for_each(|i| body.extend_from_slice(&i.0));
            self.counters.bulk_requests.fetch_add(1, Ordering::Relaxed);
            let sent = tokio::select! {
                biased;
                _ = stopped(stop) => {
                    self.drop_items("bulk", "shutdown", pending.len());
                    return Flow::Stopped;
                }
                r = self.client.send(reqwest::Method::POST, "_bulk", Some(("application/x-ndjson", body))) => r,
            };
            // Items to send again, and whether that is a whole-request retry.
            let (again, whole): (Vec<Item>, bool) = match sent {
                Err(t) => {
                    self.counters.server_up.store(false, Ordering::Relaxed);
                    if !was_down {
                        tracing::warn!(node = %t.node, error = %t.message, "elasticsearch: bulk request failed; retrying");
                        was_down = true;
                    }
                    (pending, true)
                }
                Ok((status, answer)) => {
                    let code = status.as_u16();
                    self.counters.server_up.store(code < 500, Ordering::Relaxed);
                    if retriable(code) {
                        if !was_down {
                            tracing::warn!(
                                status = code,
                                "elasticsearch: bulk request refused; retrying"
                            );
                            was_down = true;
                        }
                        (pending, true)
                    } else if !status.is_success() {
                        tracing::warn!(
                            status = code,
                            answer = %sensor_model::text::one_line(&String::from_utf8_lossy(&answer), 300),
                            "elasticsearch: bulk request rejected"
                        );
                        self.drop_items("bulk", &format!("http_{code}"), pending.len());
                        return Flow::Go;
                    } else {
                        match self.outcomes(pending, &answer) {
                            Ok(again) => (again, false),
                            Err(pending) => (pending, true),
                        }
                    }
                }
            };
            if again.is_empty() {
                if was_down {
                    tracing::info!("elasticsearch: bulk requests succeed again");
                }
                return Flow::Go;
            }
            if attempt >= self.max_retries {
                self.drop_items("bulk", "retries_exhausted", again.len());
                return Flow::Go;
            }
            attempt += 1;
            if whole {
                self.counters
                    .request_retries
                    .fetch_add(1, Ordering::Relaxed);
            } else {
                self.counters
                    .item_retries
                    .fetch_add(again.len() as u64, Ordering::Relaxed);
            }
            let wait = self.backoff.delay(attempt);
            tokio::select! {
                biased;
                _ = stopped(stop) => {
                    self.drop_items("bulk", "shutdown", again.len());
                    return Flow::Stopped;
                }
                _ = tokio::time::sleep(wait) => {}
            }
            pending = again;
        }
    }

    /// Counts the items of a 2xx bulk answer; returns those to retry, or every item back when
    /// the answer cannot be read (sending again is safe: `create` refuses a copy).
    fn outcomes(&mut self, pending: Vec<Item>, answer: &[u8]) -> Result<Vec<Item>, Vec<Item>> {
        let c = &self.counters;
        let items = match read_bulk_answer(answer, pending.len()) {
            BulkAnswer::AllIndexed => {
                c.indexed.fetch_add(pending.len() as u64, Ordering::Relaxed);
                c.in_flight
                    .fetch_sub(pending.len() as u64, Ordering::SeqCst);
                return Ok(Vec::new());
            }
            BulkAnswer::Items(items) => items,
            BulkAnswer::Unreadable(why) => {
                tracing::warn!(error = %sensor_model::text::one_line(&why.to_string(), 300), "elasticsearch: unreadable bulk answer; retrying");
                return Err(pending);
            }
        };
        let mut again = Vec::new();
        let (mut indexed, mut already) = (0u64, 0u64);
        let mut failed: Vec<String> = Vec::new();
        for (item, r) in pending.into_iter().zip(items) {
            match r.status {
                200 | 201 => indexed += 1,
                409 => already += 1,
                s if retriable(s) => again.push(item),
                s => failed.push(
                    r.error
                        .map_or_else(|| format!("http_{s}"), |e| error_kind(&e.kind)),
                ),
            }
        }
        c.indexed.fetch_add(indexed, Ordering::Relaxed);
        c.already_indexed.fetch_add(already, Ordering::Relaxed);
        c.in_flight.fetch_sub(indexed + already, Ordering::SeqCst);
        failed.sort_unstable();
        for reason in failed.chunk_by(|a, b| a == b) {
            self.drop_items("bulk", &reason[0], reason.len());
        }
        Ok(again)
    }
}

/// An item's error type as a drop reason: it becomes a metric label and a log field, and the
/// server chose it. Elasticsearch's types are snake_case words (`mapper_parsing_exception`);
/// anything else is `other_error`.
fn error_kind(kind: &str) -> String {
    let plain = !kind.is_empty()
        && kind.len() <= 64
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain {
        kind.to_owned()
    } else {
        "other_error".to_owned()
    }
}

#[cfg(test)]
mod error_kind_tests {
    #[test]
    fn server_chosen_error_types_are_plain_labels() {
        assert_eq!(
            super::error_kind("mapper_parsing_exception"),
            "mapper_parsing_exception"
        );
        for odd in ["", "a\nb", "Evil{label=\"x\"}", &"x".repeat(65)] {
            assert_eq!(super::error_kind(odd), "other_error", "{odd:?}");
        }
    }
}
