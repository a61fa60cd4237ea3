//! One destination (a WeCom robot or a webhook): its backlog, its budget, and the one retry
//! policy every destination shares.
//!
//! The worker waits until there is something to send *and* the budget has a slot, and only then
//! composes the message, so everything that arrived while it waited goes into that message
//! (which is how a burst becomes a few digests instead of a queue of single alerts).

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{Notify, watch},
    time::{Instant, sleep_until},
};
use tracing::{debug, warn};

use sensor_model::retry::Backoff;

use super::{
    Alert, Counters,
    budget::Budget,
    format::{Composed, Overflow, TimeFmt, compose_json, compose_markdown},
    webhook::WebhookClient,
    wecom::WeComClient,
};

/// Attempts for one message on transport errors, 5xx and WeCom "system busy" (WeCom's error
/// code page advises at most 3 retries).
const MAX_ATTEMPTS: u32 = 4;
/// Back-off after a transport error: 1 s, doubling per attempt, with jitter. The cap is the
/// wait before the last of [`MAX_ATTEMPTS`], so it never shortens a wait.
const BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(1 << (MAX_ATTEMPTS - 2)),
};
/// Wait after a throttling answer: 5 s, doubling up to a minute, without jitter. WeCom gives
/// no Retry-After; its window is a minute, so a minute always clears it.
const THROTTLE: Backoff = Backoff {
    initial: Duration::from_secs(5),
    max: Duration::from_secs(60),
};

/// Why a request failed, classified for the retry policy.
#[derive(Debug)]
pub enum SendError {
    /// The destination says "too many": wait and retry, however often (nothing is lost).
    Throttled { reason: String },
    /// May succeed later: retried [`MAX_ATTEMPTS`] times with back-off.
    Retriable { reason: String, detail: String },
    /// Will not succeed by retrying (wrong key, message refused).
    Final { reason: String, detail: String },
}

impl SendError {
    /// A transport error, without its URL (it may carry a key).
    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        let e = e.without_url();
        let reason = if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connect"
        } else {
            "transport"
        };
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        if e.is_decode() || e.is_body() {
            Self::Retriable {
                reason: "body".into(),
                detail,
            }
        } else {
            Self::Retriable {
                reason: reason.into(),
                detail,
            }
        }
    }

    pub fn from_status(status: reqwest::StatusCode) -> Self {
        let reason = status_reason(status).to_owned();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            Self::Throttled { reason }
        } else if status.is_server_error() || status == reqwest::StatusCode::REQUEST_TIMEOUT {
            Self::Retriable {
                reason,
                detail: status.to_string(),
            }
        } else if status.is_redirection() {
            // Clients carrying a secret never follow redirects (sensor_model::http).
            Self::Final {
                reason,
                detail: format!("{status}: redirect not followed (the request carries a secret)"),
            }
        } else {
            Self::Final {
                reason,
                detail: status.to_string(),
            }
        }
    }
}

/// The failure reason of an HTTP status, from a fixed set (it becomes a metric label and the
/// server picks the status): the statuses that mean something different to an operator by
/// name, the rest by class; the detail keeps the exact status.
fn status_reason(status: reqwest::StatusCode) -> &'static str {
    const NAMED: [(u16, &str); 7] = [
        (400, "http_400"),
        (401, "http_401"),
        (403, "http_403"),
        (404, "http_404"),
        (408, "http_408"),
        (413, "http_413"),
        (429, "http_429"),
    ];
    let code = status.as_u16();
    if let Some((_, name)) = NAMED.iter().find(|(c, _)| *c == code) {
        return name;
    }
    match code {
        300..=399 => "http_3xx",
        400..=499 => "http_4xx",
        500..=599 => "http_5xx",
        _ => "http_other",
    }
}

/// Where a sink sends.
pub(crate) enum Transport {
    WeCom {
        client: WeComClient,
        mentions: Vec<String>,
    },
    Webhook {
        client: WebhookClient,
        max_batch: usize,
    },
}

enum Outgoing {
    Markdown(String),
    Json(serde_json::Value),
}

/// A sink's backlog: alerts waiting for budget, shared with the dispatcher that fills it.
pub(crate) struct SinkQueue {
    state: Mutex<QueueState>,
    notify: Notify,
    capacity: usize,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Arc<Alert>>,
    overflow: Overflow,
    closed: bool,
}

impl SinkQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(QueueState::default()),
            notify: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an alert. Over capacity it is counted into the overflow line of the next message
    /// instead, so memory stays bounded and the loss is visible in the chat.
    pub(crate) fn push(&self, alert: Arc<Alert>, counters: &Counters) {
        {
            let mut st = self.lock();
            if st.items.len() >= self.capacity {
                st.overflow.add(&alert.name);
                Counters::inc(&counters.backlog_overflow);
            } else {
                st.items.push_back(alert);
            }
        }
        // A stored permit wakes the worker even if it is not waiting yet.
        self.notify.notify_one();
    }

    /// Notes hits dropped at submit, for the next message.
    pub(crate) fn note_dropped(&self, hits: u64) {
        self.lock().overflow.dropped_hits += hits;
        self.notify.notify_one();
    }

    /// No more alerts will come: the worker drains what is queued and stops.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }
}

pub(crate) struct Sink {
    pub(crate) name: String,
    pub(crate) transport: Transport,
    pub(crate) budget: Budget,
    pub(crate) queue: Arc<SinkQueue>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) time: TimeFmt,
    /// Set at shutdown: the instant after which nothing more is attempted.
    pub(crate) deadline: watch::Receiver<Option<Instant>>,
}

impl Sink {
    pub(crate) async fn run(mut self) {
        loop {
            // 1. Something to send?
            loop {
                let (empty, closed) = {
                    let st = self.queue.lock();
                    (st.items.is_empty() && st.overflow.is_empty(), st.closed)
                };
                if !empty {
                    break;
                }
                if closed {
                    return;
                }
                self.queue.notify.notified().await;
            }
            // 2. A slot in the budget (alerts keep arriving meanwhile).
            let at = self.budget.ready_at(Instant::now());
            if !self.wait_until(at).await {
                break;
            }
            // 3. Compose from everything queued by now, and deliver.
            let composed = self.compose();
            let n = composed.alerts as u64;
            let mut outcome = Delivery::Delivered;
            for message in composed.messages {
                outcome = self.deliver(&message).await;
                if outcome != Delivery::Delivered {
                    break;
                }
                Counters::inc(&self.counters.messages_sent);
                if composed.digest {
                    Counters::inc(&self.counters.digests_sent);
                }
            }
            match outcome {
                Delivery::Delivered => Counters::add(&self.counters.alerts_delivered, n),
                // The failure itself was counted by reason in `deliver`.
                Delivery::Failed => Counters::add(&self.counters.alerts_undelivered, n),
                Delivery::Deadline => {
                    Counters::add(&self.counters.alerts_undelivered, n);
                    self.counters.failure("shutdown", 1);
                }
            }
        }
        // Past the shutdown deadline: what is left is counted, not sent.
        let left = {
            let mut st = self.queue.lock();
            let n = st.items.len() as u64 + st.overflow.alerts;
            st.items.clear();
            st.overflow = Overflow::default();
            n
        };
        if left > 0 {
            Counters::add(&self.counters.alerts_undelivered, left);
            warn!(sink = %self.name, alerts = left, "shutdown deadline reached: alerts not sent");
        }
    }

    fn compose(&mut self) -> ComposedOut {
        let mut st = self.queue.lock();
        let QueueState {
            items, overflow, ..
        } = &mut *st;
        match &self.transport {
            Transport::WeCom { mentions, .. } => {
                let Composed {
                    messages,
                    alerts,
                    digest,
                } = compose_markdown(items, overflow, &self.time, mentions);
                ComposedOut {
                    messages: messages.into_iter().map(Outgoing::Markdown).collect(),
                    alerts,
                    digest,
                }
            }
            Transport::Webhook { max_batch, .. } => {
                let (body, alerts) = compose_json(items, overflow, *max_batch);
                ComposedOut {
                    messages: vec![Outgoing::Json(body)],
                    alerts,
                    digest: alerts > 1,
                }
            }
        }
    }

    /// Sleeps until `at`; false when the shutdown deadline comes first.
    async fn wait_until(&mut self, at: Instant) -> bool {
        loop {
            let deadline = *self.deadline.borrow_and_update();
            if let Some(d) = deadline
                && at > d
            {
                return false;
            }
            tokio::select! {
                () = sleep_until(at) => return true,
                changed = self.deadline.changed() => {
                    if changed.is_err() {
                        // The dispatcher is gone without a deadline: just wait.
                        sleep_until(at).await;
                        return true;
                    }
                }
            }
        }
    }

    /// Sends one message under the budget and the retry policy.
    async fn deliver(&mut self, message: &Outgoing) -> Delivery {
        let mut failures = 0u32;
        let mut throttles = 0u32;
        let mut not_before = Instant::now();
        loop {
            let at = self.budget.ready_at(Instant::now()).max(not_before);
            if !self.wait_until(at).await {
                return Delivery::Deadline;
            }
            // Every request counts against the budget, retries included.
            let now = Instant::now();
            self.budget.record(now);
            let result = match (&self.transport, message) {
                (Transport::WeCom { client, .. }, Outgoing::Markdown(text)) => {
                    client.send_markdown(text).await
                }
                (Transport::Webhook { client, .. }, Outgoing::Json(body)) => {
                    client.send_json(body).await
                }
                _ => unreachable!("messages are composed for their own transport"),
            };
            match result {
                Ok(()) => return Delivery::Delivered,
                Err(SendError::Throttled { reason }) => {
                    throttles += 1;
                    Counters::inc(&self.counters.throttled);
                    let wait = THROTTLE.ceiling(throttles);
                    debug!(sink = %self.name, %reason, wait_s = wait.as_secs(), "throttled; waiting to retry");
                    not_before = Instant::now() + wait;
                }
                Err(SendError::Retriable { reason, detail }) if failures + 1 < MAX_ATTEMPTS => {
                    failures += 1;
                    Counters::inc(&self.counters.retries);
                    let wait = BACKOFF.delay(failures);
                    debug!(sink = %self.name, %reason, %detail, attempt = failures, "send failed; retrying");
                    not_before = Instant::now() + wait;
                }
                Err(
                    SendError::Retriable { reason, detail } | SendError::Final { reason, detail },
                ) => {
                    self.counters.failure(&reason, 1);
                    warn!(sink = %self.name, %reason, %detail, "alert message not delivered");
                    return Delivery::Failed;
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Delivered,
    /// Failed for good; counted by reason.
    Failed,
    /// The shutdown deadline came first.
    Deadline,
}

struct ComposedOut {
    messages: Vec<Outgoing>,
    alerts: usize,
    digest: bool,
}

/// Failure counts by reason, for [`Counters`].
pub(crate) type Failures = BTreeMap<String, u64>;

#[cfg(test)]
mod status_tests {
    use super::*;

    /// The reason is a metric label: a fixed set whatever status the server picks.
    #[test]
    fn status_reasons_are_a_fixed_set() {
        let mut labels = std::collections::BTreeSet::new();
        for code in 100..=999u16 {
            let status = reqwest::StatusCode::from_u16(code).unwrap();
            labels.insert(status_reason(status));
        }
        assert_eq!(labels.len(), 11, "{labels:?}");
        let s = |c| status_reason(reqwest::StatusCode::from_u16(c).unwrap());
        assert_eq!(s(404), "http_404");
        assert_eq!(s(418), "http_4xx");
        assert_eq!(s(503), "http_5xx");
        assert_eq!(s(302), "http_3xx");
        assert_eq!(s(799), "http_other");
    }
}
