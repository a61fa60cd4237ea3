//! The passive DNS sink: every answer with addresses or names goes into the store
//! (`sensor-pdns`), from a writer thread of its own that commits a batch every
//! [`COMMIT_EVERY`] (a commit waits for the disk; the pipeline never does). The store is opened
//! at the first answer, so a sensor that sees no responses creates nothing. A failing store is
//! retried at the next commit and every observation it could not keep is counted.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use sensor_model::clock::WallClock;
use sensor_pdns::{
    Answer, AnswerData, Batch, Observation, Resolved, Retention, Store, config::PdnsSection,
};

use super::{Drops, SharedEvent, Sink, SinkError};
use crate::metrics::Metric;

/// How often the writer commits what it gathered (a crash loses at most this much).
pub const COMMIT_EVERY: Duration = Duration::from_secs(2);
/// Observations queued for the writer at most; more are dropped and counted.
const QUEUE: usize = 100_000;

#[derive(Default)]
struct Counters {
    events_in: AtomicU64,
    filtered_out: AtomicU64,
    committed: AtomicU64,
    commits: AtomicU64,
    dropped: Drops,
}

/// What the writer thread takes: observations, and retro-hunt questions. A question is
/// answered after the observations queued before it are committed, so it sees every answer
/// the sink was offered before the name turned malicious.
enum Msg {
    Observation(Observation),
    Hunt(Hunt),
}

/// Retro-hunt: the clients that resolved any of these names since `since` (Unix seconds).
struct Hunt {
    /// `(name, exact)`: `exact` keeps the name itself, else its subdomains are included.
    names: Vec<(String, bool)>,
    since: i64,
    reply: mpsc::SyncSender<Result<Vec<Resolved>, String>>,
}

/// Asks the passive DNS writer who resolved a name (retro-hunt). Cheap to clone.
#[derive(Clone)]
pub struct Hunter {
    tx: SyncSender<Msg>,
}

impl std::fmt::Debug for Hunter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hunter").finish_non_exhaustive()
    }
}

/// Why a retro-hunt question got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HuntError {
    #[error("the passive DNS writer has stopped")]
    Stopped,
    #[error("passive DNS store: {0}")]
    Store(String),
}

impl Hunter {
    /// Every (client, name, first seen, last seen, count) for `names` seen at or after
    /// `since`. Blocks until the writer has committed what was queued before and answered:
    /// call it from a blocking thread.
    pub fn clients_of(
        &self,
        names: Vec<(String, bool)>,
        since: i64,
    ) -> Result<Vec<Resolved>, HuntError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Msg::Hunt(Hunt {
                names,
                since,
                reply,
            }))
            .map_err(|_| HuntError::Stopped)?;
        rx.recv()
            .map_err(|_| HuntError::Stopped)?
            .map_err(HuntError::Store)
    }
}

pub struct PdnsSink {
    tx: Mutex<Option<SyncSender<Msg>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
    clock: WallClock,
}

impl PdnsSink {
    pub fn start(section: &PdnsSection) -> Result<Self, SinkError> {
        let retention = section.retention().map_err(|e| SinkError::Config {
            key: "pdns.retention_days",
            message: e.to_string(),
        })?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let counters = Arc::new(Counters::default());
        let writer = {
            let counters = counters.clone();
            let path = section.path.clone();
            std::thread::Builder::new()
                .name("pdns-writer".into())
                .spawn(move || write(rx, path, retention, &counters))
                .map_err(|e| SinkError::Start {
                    sink: "pdns",
                    message: e.to_string(),
                })?
        };
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            counters,
            clock: WallClock::new(),
        })
    }

    /// The retro-hunt handle (`None` once the sink has shut down).
    pub fn hunter(&self) -> Option<Hunter> {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        tx.as_ref().map(|tx| Hunter { tx: tx.clone() })
    }
}

/// The observation an answer makes: its client, name and the A, AAAA and CNAME records.
fn observation(e: &SharedEvent, clock: &WallClock) -> Option<Observation> {
    let q = &e.event.query;
    let answered = q.answer.as_ref()?;
    let answers: Vec<Answer> = answered
        .answers
        .iter()
        .filter_map(|a| {
            let data = match (a.rtype, a.ip) {
                (1 | 28, Some(ip)) => AnswerData::Ip(ip),
                (5, _) => AnswerData::Name(a.data.clone()),
                _ => return None,
            };
            Some(Answer {
                rtype: a.rtype,
                data,
                ttl: a.ttl,
            })
        })
        .collect();
    if answers.is_empty() {
        return None;
    }
    let ts = clock.unix_ns(q.ts_mono_ns).div_euclid(1_000_000_000);
    Some(Observation {
        ts_unix_secs: i64::try_from(ts).unwrap_or(0),
        client: q.src,
        name: q.name.clone(),
        answers,
    })
}

/// The writer thread: gathers observations, commits every [`COMMIT_EVERY`], prunes once a day,
/// and commits what it holds when the queue closes.
fn write(rx: mpsc::Receiver<Msg>, path: PathBuf, retention: Retention, c: &Counters) {
    let mut store: Option<Store> = None;
    let mut batch = Batch::new();
    let mut next_commit = Instant::now() + COMMIT_EVERY;
    let mut pruned_day = i64::MIN;
    let mut last_error: Option<String> = None;
    loop {
        let wait = next_commit.saturating_duration_since(Instant::now());
        let mut hunt = None;
        let closed = match rx.recv_timeout(wait) {
            Ok(Msg::Observation(o)) => {
                if let Err(e) = batch.add(&o) {
                    c.dropped.add("input", &e.to_string(), 1);
                }
                false
            }
            Ok(Msg::Hunt(h)) => {
                hunt = Some(h);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        if !closed && hunt.is_none() && Instant::now() < next_commit {
            continue;
        }
        next_commit = Instant::now() + COMMIT_EVERY;
        if !batch.is_empty() {
            let n = batch.len();
            let result = match &mut store {
                Some(s) => s.commit(&batch),
                None => Store::open(&path, retention).and_then(|mut s| {
                    let r = s.commit(&batch);
                    store = Some(s);
                    r
                }),
            };
            match result {
                Ok(_) => {
                    c.committed.fetch_add(n, Ordering::Relaxed);
                    c.commits.fetch_add(1, Ordering::Relaxed);
                    if last_error.take().is_some() {
                        tracing::info!(path = %path.display(), "passive DNS store writes again");
                    }
                }
                Err(e) => {
                    c.dropped.add("commit", "store_error", n);
                    let text = e.to_string();
                    // Once per kind of failure, not once per commit.
                    if last_error.as_deref() != Some(text.as_str()) {
                        tracing::warn!(error = %text, "passive DNS store: a batch was not kept");
                        last_error = Some(text);
                    }
                    // Open again next time (a full disk may have been cleared).
                    store = None;
                }
            }
            batch = Batch::new();
        }
        if let Some(h) = hunt {
            let answer = answer_hunt(&mut store, &path, retention, &h);
            // The asker may have given up (shutdown): nothing to do then.
            let _ = h.reply.send(answer);
        }
        let today = time::OffsetDateTime::now_utc()
            .unix_timestamp()
            .div_euclid(86_400);
        if let Some(s) = &mut store
            && today != pruned_day
        {
            pruned_day = today;
            if let Err(e) = s.prune(time::OffsetDateTime::now_utc().unix_timestamp()) {
                tracing::warn!(error = %e, "passive DNS store: the daily prune failed");
            }
        }
        if closed {
            return;
        }
    }
}

/// Runs a retro-hunt question on the store (opened now if no answer was committed yet: a store
/// left by an earlier run still holds the window).
fn answer_hunt(
    store: &mut Option<Store>,
    path: &std::path::Path,
    retention: Retention,
    h: &Hunt,
) -> Result<Vec<Resolved>, String> {
    if store.is_none() {
        if !path.exists() {
            return Ok(Vec::new());
        }
        *store = Some(Store::open(path, retention).map_err(|e| e.to_string())?);
    }
    let Some(s) = store.as_ref() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (name, exact) in &h.names {
        let rows = s.clients_of(name, h.since).map_err(|e| e.to_string())?;
        out.extend(rows.into_iter().filter(|r| !exact || r.1 == *name));
    }
    Ok(out)
}

impl Sink for PdnsSink {
    fn name(&self) -> &'static str {
        "pdns"
    }

    fn offer(&self, event: &SharedEvent) {
        let c = &self.counters;
        c.events_in.fetch_add(1, Ordering::Relaxed);
        let Some(o) = observation(event, &self.clock) else {
            c.filtered_out.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        match tx.as_ref().map(|t| t.try_send(Msg::Observation(o))) {
            Some(Ok(())) => {}
            Some(Err(TrySendError::Full(_))) => c.dropped.add("queue", "queue_full", 1),
            Some(Err(TrySendError::Disconnected(_))) | None => c.dropped.add("queue", "closed", 1),
        }
    }

    fn metrics(&self) -> Vec<Metric> {
        let c = &self.counters;
        let mut out = vec![
            Metric::counter(
                "pdns_events_in",
                "Events offered to the passive DNS sink.",
                c.events_in.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "pdns_filtered_out",
                "Events that are not answers with A, AAAA or CNAME records.",
                c.filtered_out.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "pdns_committed",
                "Observations committed to the passive DNS store.",
                c.committed.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "pdns_commits",
                "Transactions committed to the passive DNS store.",
                c.commits.load(Ordering::Relaxed),
            ),
        ];
        for ((stage, reason), n) in c.dropped.snapshot() {
            out.push(
                Metric::counter(
                    "pdns_dropped",
                    "Observations the passive DNS store did not keep, by stage and reason.",
                    n,
                )
                .label("stage", stage)
                .label("reason", reason),
            );
        }
        out
    }

    fn shutdown(self: Arc<Self>, grace: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            // Closing the queue makes the writer commit what it holds and stop.
            drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
            let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(w) = writer {
                let joined =
                    tokio::time::timeout(grace, tokio::task::spawn_blocking(move || w.join()));
                if joined.await.is_err() {
                    tracing::warn!("passive DNS store: the last commit did not finish in time");
                }
            }
        })
    }
}
