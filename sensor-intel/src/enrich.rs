//! The enrichment stage: trusted-domain filter, then the verdict of every other name.
//!
//! Runs between the ring-buffer reader and the sinks. A name whose verdict is cached goes on at
//! once; a miss waits (up to `intel.max_wait_ms`) for its one shared lookup, so the event can
//! carry the verdict. It never stalls the reader: beyond `intel.max_pending_events` waiting
//! events, or after the wait, events go on with `unknown` and the name is remembered
//! ("deferred"); deferred names are checked again every `intel.recheck_secs` while a provider is
//! reachable, and a malicious answer then still alerts for every client that asked.

use std::{
    collections::{HashMap, hash_map::Entry},
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Deserialize;
use time::OffsetDateTime;

use tokio::sync::mpsc;

use sensor_model::{
    clock::WallClock,
    query::Query,
    verdict::{Assessment, Verdict},
};

use crate::{
    cache::{Source, VerdictCache},
    egress::{Egress, Skip},
    feeds::LocalFeeds,
    trust::TrustFilter,
};
use sensor_model::enriched::Enriched;

/// What happens to queries for trusted names or from trusted clients.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TrustedEvents {
    /// Not written anywhere (counted), as the seed's Logstash filter did: they are most of the
    /// traffic and carry no risk.
    #[default]
    Drop,
    /// Written with the verdict `trusted`, but never looked up.
    Keep,
}

/// How events wait for verdicts (from `[intel]`, see [`crate::IntelSection`]).
#[derive(Debug, Clone, PartialEq)]
pub struct EnrichSettings {
    pub trusted_events: TrustedEvents,
    pub max_pending_events: usize,
    pub max_wait_ms: u64,
    pub recheck_secs: u64,
    pub max_deferred_names: usize,
}

/// Where malicious hits go (the alerter). One call per (client, name) sighting group.
pub trait HitSink: Send + Sync {
    #[expect(
        clippy::too_many_arguments,
        reason = "one sighting group: the client, the name and its type, the verdict, the first and last sighting and the count; a struct would only rename them"
    )]
    fn hit(
        &self,
        client: IpAddr,
        name: &str,
        qtype: u16,
        assessment: &Arc<Assessment>,
        first_seen: OffsetDateTime,
        last_seen: OffsetDateTime,
        count: u64,
    );
}

/// Counters of the stage.
#[derive(Debug, Default)]
pub struct EnrichCounters {
    pub events_in: AtomicU64,
    pub trusted: AtomicU64,
    /// Events that waited for a lookup.
    pub waited: AtomicU64,
    /// Events that went on as `unknown` because too many were waiting.
    pub wait_overflow: AtomicU64,
    /// Lookups that outlived `max_wait_ms` (their events went on as `unknown`).
    pub wait_timeouts: AtomicU64,
    /// Verdicts that arrived after their events had gone on.
    pub late_verdicts: AtomicU64,
    pub rechecks: AtomicU64,
    /// Deferred names later found malicious (and alerted).
    pub deferred_resolved_malicious: AtomicU64,
    pub deferred_overflow: AtomicU64,
    pub hits: AtomicU64,
    /// Events dropped because the sink queue was full.
    pub sink_queue_full: AtomicU64,
}

impl EnrichCounters {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("events_in", get(&self.events_in)),
            ("trusted", get(&self.trusted)),
            ("waited", get(&self.waited)),
            ("wait_overflow", get(&self.wait_overflow)),
            ("wait_timeouts", get(&self.wait_timeouts)),
            ("late_verdicts", get(&self.late_verdicts)),
            ("rechecks", get(&self.rechecks)),
            (
                "deferred_resolved_malicious",
                get(&self.deferred_resolved_malicious),
            ),
            ("deferred_overflow", get(&self.deferred_overflow)),
            ("hits", get(&self.hits)),
            ("sink_queue_full", get(&self.sink_queue_full)),
        ]
    }
}

/// Who asked for a deferred name.
struct Sighting {
    qtype: u16,
    first: OffsetDateTime,
    last: OffsetDateTime,
    count: u64,
}

/// A lookup that finished: `late` when its events already went on.
struct Done {
    name: Arc<str>,
    assessment: Arc<Assessment>,
    late: bool,
}

/// Clients per deferred name, bounded per name so one popular name cannot fill memory.
const MAX_CLIENTS_PER_NAME: usize = 1024;

pub struct Enricher {
    pub settings: EnrichSettings,
    pub trust: Option<Arc<TrustFilter>>,
    pub verdicts: Option<Arc<VerdictCache>>,
    /// Local IP feeds, matched against each query's destination: a client asking a listed
    /// server (a rogue resolver, a DNS tunnel endpoint) is malicious whatever the name.
    pub ip_feeds: Option<Arc<LocalFeeds>>,
    /// What may be sent to remote providers (`[intel.egress]`); `None`: everything.
    pub egress: Option<Arc<Egress>>,
    pub hits: Option<Arc<dyn HitSink>>,
    pub counters: Arc<EnrichCounters>,
}

struct State {
    waiting: HashMap<Arc<str>, Vec<Query>>,
    pending_events: usize,
    deferred: HashMap<Arc<str>, HashMap<IpAddr, Sighting>>,
    rechecking: std::collections::HashSet<Arc<str>>,
    clock: WallClock,
    trusted: Arc<Assessment>,
}

impl Enricher {
    /// Runs until `rx` closes and every waiting event has gone on.
    pub async fn run(self, mut rx: mpsc::Receiver<Query>, tx: mpsc::Sender<Enriched>) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut st = State {
            waiting: HashMap::new(),
            pending_events: 0,
            deferred: HashMap::new(),
            rechecking: Default::default(),
            clock: WallClock::new(),
            trusted: Arc::new(Assessment {
                verdict: Verdict::Trusted,
                findings: Vec::new(),
                errors: Vec::new(),
            }),
        };
        let mut recheck =
            tokio::time::interval(Duration::from_secs(self.settings.recheck_secs.max(1)));
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut input_open = true;
        loop {
            tokio::select! {
                biased;
                Some(done) = done_rx.recv() => self.finished(&mut st, done, &tx),
                q = rx.recv(), if input_open => match q {
                    Some(q) => self.event(&mut st, q, &tx, &done_tx).await,
                    None => input_open = false,
                },
                _ = recheck.tick() => self.recheck(&mut st, &done_tx),
            }
            if !input_open && st.waiting.is_empty() {
                break;
            }
        }
        // Late verdicts still in the channel: their alerts matter even at shutdown.
        while let Ok(done) = done_rx.try_recv() {
            self.finished(&mut st, done, &tx);
        }
    }

    async fn event(
        &self,
        st: &mut State,
        q: Query,
        tx: &mpsc::Sender<Enriched>,
        done_tx: &mpsc::UnboundedSender<Done>,
    ) {
        self.counters.events_in.fetch_add(1, Ordering::Relaxed);
        if let Some(trust) = &self.trust
            && trust.is_trusted(&q.name)
        {
            self.counters.trusted.fetch_add(1, Ordering::Relaxed);
            if self.settings.trusted_events == TrustedEvents::Keep {
                let intel = self.verdicts.as_ref().map(|_| st.trusted.clone());
                self.emit(tx, Enriched { query: q, intel });
            }
            return;
        }
        let Some(verdicts) = &self.verdicts else {
            self.emit(
                tx,
                Enriched {
                    query: q,
                    intel: None,
                },
            );
            return;
        };
        // Special-use and internal names never leave the building: only the local feeds see them.
        if let Some(egress) = &self.egress
            && let Some(skip) = egress.zones.check(&q.name)
        {
            self.not_sent(st, q, skip, egress, verdicts, tx).await;
            return;
        }
        if let Some(a) = verdicts.get(&q.name).await {
            self.verdict(st, q, a, tx);
            return;
        }
        // A new name costs provider quota: charged to the client that asked, unless a lookup
        // for it is already on its way (then nothing more is sent).
        if let Some(egress) = &self.egress
            && !st.waiting.contains_key(q.name.as_str())
            && let Err(skip) = egress
                .budget
                .take(q.src, OffsetDateTime::now_utc().unix_timestamp())
        {
            self.not_sent(st, q, skip, egress, verdicts, tx).await;
            return;
        }
        if st.pending_events >= self.settings.max_pending_events {
            self.counters.wait_overflow.fetch_add(1, Ordering::Relaxed);
            let name: Arc<str> = q.name.as_str().into();
            if !st.waiting.contains_key(&name) {
                self.start_lookup(st, name.clone(), done_tx);
                st.waiting.insert(name, Vec::new());
            }
            let unknown = Arc::new(Assessment::unknown(vec!["too many events waiting".into()]));
            self.verdict(st, q, unknown, tx);
            return;
        }
        self.counters.waited.fetch_add(1, Ordering::Relaxed);
        st.pending_events += 1;
        let name: Arc<str> = q.name.as_str().into();
        match st.waiting.entry(name.clone()) {
            Entry::Occupied(mut e) => e.get_mut().push(q),
            Entry::Vacant(e) => {
                e.insert(vec![q]);
                self.start_lookup(st, name, done_tx);
            }
        }
    }

    /// An event whose name is not sent to remote providers: counted by reason, and sent on with
    /// what the local feeds say (malicious) or `not_looked_up`. Never deferred: a re-check
    /// would send it after all.
    async fn not_sent(
        &self,
        st: &mut State,
        q: Query,
        skip: Skip,
        egress: &Egress,
        verdicts: &VerdictCache,
        tx: &mpsc::Sender<Enriched>,
    ) {
        egress.counters.count(skip);
        let a = match verdicts.lookup_local(&q.name).await {
            Some(a) => Arc::new(a),
            None => egress.assessment(skip),
        };
        self.verdict(st, q, a, tx);
    }

    /// One task per name: the lookup, with the wait bound; the verdict is still delivered
    /// (as `late`) when it comes after the bound.
    fn start_lookup(&self, _st: &State, name: Arc<str>, done_tx: &mpsc::UnboundedSender<Done>) {
        let Some(verdicts) = self.verdicts.clone() else {
            return;
        };
        let done_tx = done_tx.clone();
        let wait = Duration::from_millis(self.settings.max_wait_ms);
        let counters = self.counters.clone();
        tokio::spawn(async move {
            let key = name.clone();
            let mut lookup = tokio::spawn(async move { verdicts.lookup(key).await });
            match tokio::time::timeout(wait, &mut lookup).await {
                Ok(Ok(assessment)) => {
                    let _ = done_tx.send(Done {
                        name,
                        assessment,
                        late: false,
                    });
                }
                Ok(Err(_)) => {
                    let _ = done_tx.send(Done {
                        name,
                        assessment: Arc::new(Assessment::unknown(vec!["lookup failed".into()])),
                        late: false,
                    });
                }
                Err(_) => {
                    counters.wait_timeouts.fetch_add(1, Ordering::Relaxed);
                    let _ = done_tx.send(Done {
                        name: name.clone(),
                        assessment: Arc::new(Assessment::unknown(vec![format!(
                            "no verdict within {} ms",
                            wait.as_millis()
                        )])),
                        late: false,
                    });
                    if let Ok(assessment) = lookup.await {
                        let _ = done_tx.send(Done {
                            name,
                            assessment,
                            late: true,
                        });
                    }
                }
            }
        });
    }

    fn finished(&self, st: &mut State, done: Done, tx: &mpsc::Sender<Enriched>) {
        if done.late {
            self.counters.late_verdicts.fetch_add(1, Ordering::Relaxed);
            st.rechecking.remove(&done.name);
            self.resolve_deferred(st, &done.name, &done.assessment);
            return;
        }
        let queries = st.waiting.remove(&done.name).unwrap_or_default();
        st.pending_events -= queries.len();
        // Events of this name that went on as `unknown` while it was looked up.
        self.resolve_deferred(st, &done.name, &done.assessment);
        for q in queries {
            self.verdict(st, q, done.assessment.clone(), tx);
        }
    }

    /// An event with its verdict: alert, remember for a re-check, and send on.
    fn verdict(
        &self,
        st: &mut State,
        mut q: Query,
        mut a: Arc<Assessment>,
        tx: &mpsc::Sender<Enriched>,
    ) {
        // An answer: the address it resolved to may be on an IP feed even when the name is
        // not; that is a detection of its own (the query said nothing).
        let mut answer_listed = false;
        if let Some(feeds) = &self.ip_feeds {
            let mut listed = feeds.match_ip(q.dst);
            if let Some(ans) = &q.answer {
                for ip in ans.resolved_ips() {
                    let hits = feeds.match_ip(ip);
                    answer_listed |= !hits.is_empty();
                    listed.extend(hits);
                }
            }
            if answer_listed && let Some(ans) = q.answer.as_mut() {
                ans.detected = true;
            }
            if !listed.is_empty() {
                let mut combined = (*a).clone();
                combined.verdict = Verdict::Malicious;
                combined.findings.extend(listed);
                a = Arc::new(combined);
            }
        }
        match a.verdict {
            Verdict::Malicious => {
                let seen = wall(&st.clock, q.ts_mono_ns);
                self.resolve_deferred(st, &q.name, &a);
                // The query already alerted for its name and server; an answer alerts only
                // for what it adds (an address on an IP feed).
                if q.answer.is_none() || answer_listed {
                    self.counters.hits.fetch_add(1, Ordering::Relaxed);
                    if let Some(h) = &self.hits {
                        h.hit(q.src, &q.name, q.qtype, &a, seen, seen, 1);
                    }
                }
            }
            // The query is the one deferred for a late verdict, not its answer.
            Verdict::Unknown if q.answer.is_some() => {}
            Verdict::Unknown => {
                let seen = wall(&st.clock, q.ts_mono_ns);
                self.defer(st, &q, seen)
            }
            Verdict::Clean | Verdict::Trusted => self.resolve_deferred(st, &q.name, &a),
            // Not looked up: says nothing about names deferred for other clients.
            Verdict::NotLookedUp => {}
        }
        self.emit(
            tx,
            Enriched {
                query: q,
                intel: Some(a),
            },
        );
    }

    fn defer(&self, st: &mut State, q: &Query, seen: OffsetDateTime) {
        let len = st.deferred.len();
        let clients = match st.deferred.get_mut(q.name.as_str()) {
            Some(c) => c,
            None if len >= self.settings.max_deferred_names => {
                self.counters
                    .deferred_overflow
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            None => st.deferred.entry(q.name.as_str().into()).or_default(),
        };
        let full = clients.len() >= MAX_CLIENTS_PER_NAME;
        match clients.get_mut(&q.src) {
            Some(s) => {
                s.count += 1;
                s.last = s.last.max(seen);
            }
            None if full => {
                self.counters
                    .deferred_overflow
                    .fetch_add(1, Ordering::Relaxed);
            }
            None => {
                clients.insert(
                    q.src,
                    Sighting {
                        qtype: q.qtype,
                        first: seen,
                        last: seen,
                        count: 1,
                    },
                );
            }
        }
    }

    /// A verdict for a deferred name: a malicious one alerts for every client that asked.
    fn resolve_deferred(&self, st: &mut State, name: &str, a: &Arc<Assessment>) {
        // Nearly always nothing is deferred: skip hashing the name on the hot path.
        if matches!(a.verdict, Verdict::Unknown | Verdict::NotLookedUp) || st.deferred.is_empty() {
            return;
        }
        let Some(clients) = st.deferred.remove(name) else {
            return;
        };
        if a.verdict != Verdict::Malicious {
            return;
        }
        self.counters
            .deferred_resolved_malicious
            .fetch_add(1, Ordering::Relaxed);
        for (client, s) in clients {
            self.counters.hits.fetch_add(s.count, Ordering::Relaxed);
            if let Some(h) = &self.hits {
                h.hit(client, name, s.qtype, a, s.first, s.last, s.count);
            }
        }
    }

    /// Looks deferred names up again, while at least one remote provider takes calls.
    fn recheck(&self, st: &mut State, done_tx: &mpsc::UnboundedSender<Done>) {
        let Some(verdicts) = &self.verdicts else {
            return;
        };
        if st.deferred.is_empty() {
            return;
        }
        let reachable = verdicts.sources().iter().any(|s| match s {
            Source::Local(_) => false,
            Source::Remote(b) => !b.is_open(),
        });
        if !reachable {
            return;
        }
        for name in st.deferred.keys() {
            if !st.rechecking.insert(name.clone()) {
                continue;
            }
            self.counters.rechecks.fetch_add(1, Ordering::Relaxed);
            let verdicts = verdicts.clone();
            let done_tx = done_tx.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let assessment = verdicts.recheck(name.clone()).await;
                let _ = done_tx.send(Done {
                    name,
                    assessment,
                    late: true,
                });
            });
        }
    }

    fn emit(&self, tx: &mpsc::Sender<Enriched>, e: Enriched) {
        if tx.try_send(e).is_err() {
            self.counters
                .sink_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn wall(clock: &WallClock, mono_ns: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(clock.unix_ns(mono_ns))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}
