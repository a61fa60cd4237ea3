//! The names blocking by resolution lists, from every source, and what happens when a name
//! turns malicious.
//!
//! Sources, each an entry's reason (`NAME_FROM_*` in BAD_NAMES):
//! - the operator's `blocklist.resolved.names` (reloaded on SIGHUP);
//! - every domain feed (`[[intel.feeds]]`, kind `domains`), re-listed when a feed reloads;
//! - the verdict cache: a name a provider (ThreatBook) judged malicious, listed for
//!   `verdict_secs` from the verdict (exact: the verdict is about that name).
//!
//! The operator's `sensor blocklist unlist NAME` outranks them all (see [`super::unlisted`]).
//!
//! The kernel blocks an answer only when its QNAME was listed before the answer passed. Two
//! cases it cannot see are handled here, in userspace, a few milliseconds later:
//! - a name listed *after* its answer passed (a verdict that came back after the answer, a
//!   feed update): the recent answers of the newly listed names are blocked when they are
//!   listed;
//! - an answer whose chain of CNAMEs reaches a listed name (`www.shop.example` → CNAME
//!   `x.evil.example`): the kernel checks the QNAME only.
//!
//! Retro-hunt: when a name turns malicious (a feed gains it, the operator lists it, a verdict
//! says so), every client the passive DNS store saw resolving it within its retention window
//! gets a backdated alert (first and last sighting, count) through the alerter, which adds the
//! client's owner from the inventory.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime},
};

use sensor_common::resolved::{NAME_FROM_CONFIG, NAME_FROM_FEED, NAME_FROM_VERDICT};
use sensor_intel::{
    cache::VerdictCache,
    domainset::{DomainSet, EntryKind, Pattern},
    enrich::HitSink,
    feeds::LocalFeeds,
};
use sensor_kernel::lists::resolved::{DestBlock, Listing, ResolvedMaps};
use sensor_model::verdict::{Assessment, Finding, Verdict};
use sensor_outputs::{metrics::Metric, sink::pdns::Hunter};
use time::OffsetDateTime;

use super::unlisted::{Unlisted, UnlistedFileAt};

/// How often feeds and the operator's decisions are checked for changes, and lapsed state
/// dropped. A feed change reaches the kernel (and the retro-hunt starts) within this plus the
/// feed's own `reload_interval_ms`.
pub const TICK: Duration = Duration::from_millis(500);
/// Messages waiting for the worker at most; more are dropped and counted.
const QUEUE: usize = 65_536;
/// Answers remembered for late listings at most.
const MAX_RECENT: usize = 200_000;
/// Longest an answer is remembered for a late listing (its block would have lapsed by then in
/// most cases: `max_secs` caps it further).
const MAX_RECENT_SECS: u64 = 3_600;
/// Names one change hunts at most (a feed that gains a million names at once is hunted for
/// the first ones, and the rest counted).
const MAX_HUNT_NAMES: usize = 10_000;

/// What the worker is told.
enum Msg {
    /// A name with a malicious assessment (every hit the enrichment stage reports, live or
    /// late); the worker checks the verdict cache: only the name's own verdict lists it.
    Verdict(String),
    /// An answer with addresses.
    Answer(Arc<RecentAnswer>),
    /// The operator's names, re-read on SIGHUP.
    Operator(Vec<Listing>),
}

/// An answer as remembered for late listings.
#[derive(Debug)]
pub struct RecentAnswer {
    pub name: String,
    /// The CNAME targets of the chain (names the answer went through).
    pub chain: Vec<String>,
    /// Addresses with their TTL.
    pub addresses: Vec<(IpAddr, u32)>,
    pub client: IpAddr,
    /// Unix seconds.
    pub seen_unix: u64,
}

/// How the worker is set up.
pub struct Settings {
    /// The kernel's maps when blocking by resolution is on (`None`: only retro-hunt runs).
    pub maps: Option<ResolvedMaps>,
    pub min_secs: u32,
    pub max_secs: u32,
    pub from_feeds: bool,
    pub from_verdicts: bool,
    pub verdict_secs: u32,
    pub operator: Vec<Listing>,
    pub feeds: Option<Arc<LocalFeeds>>,
    pub verdicts: Option<Arc<VerdictCache>>,
    pub unlisted: UnlistedFileAt,
    pub retro: Option<Retro>,
    /// For the verdict cache's (async) reads.
    pub runtime: tokio::runtime::Handle,
}

/// Retro-hunt's parts.
pub struct Retro {
    pub hunter: Hunter,
    /// The alerter's hit sink (owner from the inventory, suppression per client and name).
    pub alerts: Arc<dyn HitSink>,
    /// How far back (the store's retention).
    pub window_secs: i64,
}

#[derive(Debug, Default)]
struct Counters {
    listed_verdicts: AtomicU64,
    fallback_blocked: AtomicU64,
    fallback_protected: AtomicU64,
    fallback_full: AtomicU64,
    over_capacity: AtomicU64,
    queue_full: AtomicU64,
    errors: AtomicU64,
    hunts: AtomicU64,
    hunt_alerts: AtomicU64,
    hunt_errors: AtomicU64,
    hunt_skipped_names: AtomicU64,
    listed: AtomicU64,
}

/// The running worker: a handle to tell it things, and its metrics.
pub struct ResolvedIntel {
    /// Blocking by resolution is on: answers matter (with only retro-hunt running they do not,
    /// and the fan-out's sink hands none over).
    blocking: bool,
    tx: Mutex<Option<SyncSender<Msg>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for ResolvedIntel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedIntel").finish_non_exhaustive()
    }
}

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum IntelError {
    #[error(transparent)]
    Maps(#[from] sensor_kernel::lists::resolved::ResolvedError),
    #[error("{0}")]
    Unlisted(#[from] crate::overrides::OverridesError),
    #[error("starting the blocking-by-resolution worker: {0}")]
    Thread(std::io::Error),
}

impl ResolvedIntel {
    /// Lists every source's names now (before the program is attached, so nothing listed is
    /// missed), then starts the worker. Returns the handle and how many names are listed.
    pub fn start(settings: Settings) -> Result<(Self, usize), IntelError> {
        let counters = Arc::new(Counters::default());
        let blocking = settings.maps.is_some();
        let mut w = Worker::new(settings, counters.clone())?;
        let listed = w.sync()?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let worker = std::thread::Builder::new()
            .name("resolved-intel".into())
            .spawn(move || w.run(rx))
            .map_err(IntelError::Thread)?;
        Ok((
            Self {
                blocking,
                tx: Mutex::new(Some(tx)),
                worker: Mutex::new(Some(worker)),
                counters,
            },
            listed,
        ))
    }

    fn send(&self, m: Msg) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        match tx.as_ref().map(|t| t.try_send(m)) {
            Some(Ok(())) => {}
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => {
                self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Whether [`Self::answer`] wants answers (blocking by resolution is on).
    pub fn wants_answers(&self) -> bool {
        self.blocking
    }

    /// An answer seen by the fan-out (checked against the listings; remembered for late ones).
    pub fn answer(&self, a: RecentAnswer) {
        if !a.addresses.is_empty() {
            self.send(Msg::Answer(Arc::new(a)));
        }
    }

    /// A name the enrichment stage reported malicious.
    pub fn verdict(&self, name: &str) {
        self.send(Msg::Verdict(name.to_owned()));
    }

    /// The operator's names after a SIGHUP.
    pub fn operator(&self, names: Vec<Listing>) {
        self.send(Msg::Operator(names));
    }

    /// Stops the worker (after what is queued).
    pub fn stop(&self) {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(w) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = w.join();
        }
    }

    pub fn metrics(&self) -> Vec<Metric> {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            Metric::gauge(
                "resolved_names_listed",
                "Names blocking by resolution lists (every source).",
                g(&c.listed) as f64,
            ),
            Metric::counter(
                "resolved_verdicts_listed",
                "Names listed because the verdict cache judged them malicious.",
                g(&c.listed_verdicts),
            ),
            Metric::counter(
                "resolved_fallback_blocked",
                "Destinations blocked from userspace: answers of names listed after they passed, or whose CNAME chain reaches a listed name.",
                g(&c.fallback_blocked),
            ),
            Metric::counter(
                "resolved_fallback_protected",
                "Such destinations not blocked because they are protected.",
                g(&c.fallback_protected),
            ),
            Metric::counter(
                "resolved_fallback_full",
                "Such destinations not blocked because DEST_BLOCK is full.",
                g(&c.fallback_full),
            ),
            Metric::counter(
                "resolved_names_over_capacity",
                "Names not listed because BAD_NAMES is full (feeds are cut first).",
                g(&c.over_capacity),
            ),
            Metric::counter(
                "resolved_queue_full",
                "Answers and verdicts the blocking-by-resolution worker did not take (its queue was full).",
                g(&c.queue_full),
            ),
            Metric::counter(
                "resolved_errors",
                "Map updates of blocking by resolution that failed.",
                g(&c.errors),
            ),
            Metric::counter(
                "retro_hunts",
                "Retro-hunts run (a name turned malicious and the passive DNS store was asked who resolved it).",
                g(&c.hunts),
            ),
            Metric::counter(
                "retro_hunt_alerts",
                "Backdated alerts sent by retro-hunts (one per client and name).",
                g(&c.hunt_alerts),
            ),
            Metric::counter(
                "retro_hunt_errors",
                "Retro-hunts the passive DNS store could not answer.",
                g(&c.hunt_errors),
            ),
            Metric::counter(
                "retro_hunt_skipped_names",
                "Names not hunted because one change listed more than 10,000.",
                g(&c.hunt_skipped_names),
            ),
        ]
    }
}

/// Why a name is listed, for retro-hunt's alerts.
#[derive(Debug, Clone)]
enum Why {
    Operator,
    /// The feed's own finding (its name, severity and confidence).
    Feed(Box<Finding>),
    Verdict(Arc<Assessment>),
}

/// A newly listed name to hunt.
struct NewName {
    pattern: Pattern,
    why: Why,
}

struct Worker {
    s: Settings,
    counters: Arc<Counters>,
    operator: DomainSet,
    /// Generation of each feed when last copied.
    feed_generations: Vec<u64>,
    /// Every feed's entries when last copied, with the index of the feed that lists them
    /// (`None` before the first copy: nothing to compare with, so nothing is hunted at start).
    feed_entries: Option<HashMap<Pattern, usize>>,
    /// Names listed by verdicts, with their expiry (Unix seconds).
    verdicts: HashMap<String, u64>,
    unlisted: HashSet<String>,
    unlisted_modified: Option<SystemTime>,
    recent: HashMap<String, Vec<Arc<RecentAnswer>>>,
    recent_order: VecDeque<Arc<RecentAnswer>>,
    hunts: Option<SyncSender<Vec<NewName>>>,
    hunter_thread: Option<JoinHandle<()>>,
}

fn now_unix() -> u64 {
    OffsetDateTime::now_utc().unix_timestamp().max(0) as u64
}

fn listing(p: &Pattern, expires_unix: u64, source: u64) -> Listing {
    Listing {
        name: p.name.clone(),
        expires_unix,
        exact: p.kind == EntryKind::Exact,
        source,
    }
}

impl Worker {
    fn new(mut s: Settings, counters: Arc<Counters>) -> Result<Self, IntelError> {
        let mut verdicts = HashMap::new();
        // Verdict listings of an earlier run (kept maps) stay until their expiry; names longer
        // than the text BAD_NAMES keeps cannot be read back and are left to lapse.
        if let Some(maps) = &s.maps {
            let now = now_unix();
            for l in maps.names()? {
                if l.sources.contains(&"verdict") && l.expires_unix > now && !l.name.ends_with('…')
                {
                    verdicts.insert(l.name, l.expires_unix);
                }
            }
        }
        let (hunts, hunter_thread) = match s.retro.take() {
            Some(retro) => {
                let (tx, rx) = mpsc::sync_channel::<Vec<NewName>>(64);
                let counters = counters.clone();
                let t = std::thread::Builder::new()
                    .name("retro-hunt".into())
                    .spawn(move || hunt_loop(&retro, &rx, &counters))
                    .map_err(IntelError::Thread)?;
                (Some(tx), Some(t))
            }
            None => (None, None),
        };
        let mut w = Self {
            operator: DomainSet::new(),
            feed_generations: Vec::new(),
            feed_entries: None,
            verdicts,
            unlisted: HashSet::new(),
            unlisted_modified: None,
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            hunts,
            hunter_thread,
            counters,
            s,
        };
        w.operator = operator_set(&w.s.operator);
        w.read_unlisted()?;
        Ok(w)
    }

    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            match rx.recv_timeout(TICK) {
                Ok(Msg::Answer(a)) => self.answer(a),
                Ok(Msg::Verdict(name)) => self.verdict(&name),
                Ok(Msg::Operator(names)) => {
                    let old = std::mem::replace(&mut self.s.operator, names);
                    self.operator = operator_set(&self.s.operator);
                    let before: HashSet<(String, bool)> =
                        old.iter().map(|l| (l.name.clone(), l.exact)).collect();
                    let new: Vec<NewName> = self
                        .s
                        .operator
                        .iter()
                        .filter(|l| !before.contains(&(l.name.clone(), l.exact)))
                        .filter_map(pattern_of)
                        .map(|pattern| NewName {
                            pattern,
                            why: Why::Operator,
                        })
                        .collect();
                    self.resync_and_react(new);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.tick();
        }
        drop(self.hunts.take());
        if let Some(t) = self.hunter_thread.take() {
            let _ = t.join();
        }
    }

    /// Feed changes, the operator's decisions, lapsed verdicts and answers.
    fn tick(&mut self) {
        let now = now_unix();
        self.verdicts.retain(|_, e| *e > now);
        let keep = u64::from(self.s.max_secs).min(MAX_RECENT_SECS);
        while self
            .recent_order
            .front()
            .is_some_and(|a| a.seen_unix + keep <= now)
        {
            if let Some(a) = self.recent_order.pop_front() {
                self.forget(&a);
            }
        }
        let mut changed = false;
        if self.s.unlisted.modified() != self.unlisted_modified {
            match self.read_unlisted() {
                Ok(()) => changed = true,
                Err(e) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "blocking by resolution: the unlisted names were not re-read");
                }
            }
        }
        if self.feeds_moved() || changed {
            self.resync_and_react(Vec::new());
        }
    }

    fn feeds_moved(&self) -> bool {
        let Some(feeds) = self.s.feeds.as_ref().filter(|_| self.wants_feeds()) else {
            return false;
        };
        feeds
            .feeds()
            .iter()
            .map(|f| f.generation())
            .ne(self.feed_generations.iter().copied())
    }

    fn wants_feeds(&self) -> bool {
        self.s.from_feeds || self.hunts.is_some()
    }

    fn read_unlisted(&mut self) -> Result<(), IntelError> {
        let modified = self.s.unlisted.modified();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let list: Vec<Unlisted> = self.s.unlisted.load()?;
        self.unlisted = list
            .into_iter()
            .filter(|u| u.active(now))
            .map(|u| u.name)
            .collect();
        self.unlisted_modified = modified;
        Ok(())
    }

    /// Re-lists everything; the names that are new since the last copy of the feeds (and
    /// `extra`, the operator's new names) are hunted and their recent answers blocked.
    fn resync_and_react(&mut self, extra: Vec<NewName>) {
        let before = self.feed_entries.clone();
        if let Err(e) = self.sync() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "blocking by resolution: the names were not re-listed");
            return;
        }
        let mut new = extra;
        if let (Some(before), Some(after), Some(feeds)) =
            (before, &self.feed_entries, &self.s.feeds)
        {
            new.extend(
                after
                    .iter()
                    .filter(|(p, _)| !before.contains_key(*p))
                    .filter_map(|(p, i)| {
                        let finding = feeds.feeds().get(*i)?.match_domain(&p.name)?;
                        Some(NewName {
                            pattern: p.clone(),
                            why: Why::Feed(Box::new(finding)),
                        })
                    }),
            );
        }
        new.retain(|n| !self.unlisted.contains(&n.pattern.name));
        if new.is_empty() {
            return;
        }
        self.block_recent(&new);
        self.hunt(new);
    }

    /// Makes BAD_NAMES hold every source's names (when blocking is on) and copies the feeds.
    /// Returns how many names are listed.
    fn sync(&mut self) -> Result<usize, IntelError> {
        let now = now_unix();
        let mut wanted: Vec<Listing> = Vec::new();
        for l in &self.s.operator {
            let mut l = l.clone();
            l.source = NAME_FROM_CONFIG;
            wanted.push(l);
        }
        for (name, expires) in &self.verdicts {
            wanted.push(Listing {
                name: name.clone(),
                expires_unix: *expires,
                exact: true,
                source: NAME_FROM_VERDICT,
            });
        }
        if let Some(feeds) = self.s.feeds.clone().filter(|_| self.wants_feeds()) {
            let mut entries = HashMap::new();
            let mut generations = Vec::new();
            for (i, f) in feeds.feeds().iter().enumerate() {
                generations.push(f.generation());
                if let Some(patterns) = f.domains() {
                    for p in patterns {
                        entries.entry(p).or_insert(i);
                    }
                }
            }
            if self.s.from_feeds {
                wanted.extend(entries.keys().map(|p| listing(p, 0, NAME_FROM_FEED)));
            }
            self.feed_generations = generations;
            self.feed_entries = Some(entries);
        }
        wanted.retain(|l| {
            !self.unlisted.contains(&l.name) && (l.expires_unix == 0 || l.expires_unix > now)
        });
        let capacity = sensor_common::resolved::BAD_NAMES_CAPACITY as usize;
        if wanted.len() > capacity {
            // The operator's and the verdicts' come first in `wanted`: the feeds are cut.
            let cut = wanted.len() - capacity;
            self.counters
                .over_capacity
                .store(cut as u64, Ordering::Relaxed);
            tracing::warn!(
                wanted = wanted.len(),
                capacity,
                "blocking by resolution: more names than BAD_NAMES holds; the last feed entries are not listed"
            );
            wanted.truncate(capacity);
        } else {
            self.counters.over_capacity.store(0, Ordering::Relaxed);
        }
        let n = match &mut self.s.maps {
            Some(maps) => maps.set_names(&wanted)?,
            None => wanted.len(),
        };
        self.counters.listed.store(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// The entry that lists `name` (the operator's, a verdict's or a feed's: its name), or
    /// `None`; the operator's unlisted names list nothing.
    fn covers(&self, name: &str) -> Option<String> {
        if let Some(m) = self.operator.lookup(name)
            && !self.unlisted.contains(m.name)
        {
            return Some(m.name.to_owned());
        }
        if let Some(e) = self.verdicts.get(name)
            && *e > now_unix()
            && !self.unlisted.contains(name)
        {
            return Some(name.to_owned());
        }
        if !self.s.from_feeds {
            return None;
        }
        self.s.feeds.as_ref()?.feeds().iter().find_map(|f| {
            let m = f.matched_domain(name)?;
            let entry = m.trim_start_matches('=');
            (!self.unlisted.contains(entry)).then(|| entry.to_owned())
        })
    }

    fn answer(&mut self, a: Arc<RecentAnswer>) {
        if self.s.maps.is_some() {
            let listed = std::iter::once(&a.name)
                .chain(a.chain.iter())
                .find_map(|n| self.covers(n));
            if let Some(listed) = listed {
                self.block_answer(&a, &listed);
            }
        }
        if self.recent_order.len() >= MAX_RECENT
            && let Some(old) = self.recent_order.pop_front()
        {
            self.forget(&old);
        }
        for n in std::iter::once(&a.name).chain(a.chain.iter()) {
            self.recent.entry(n.clone()).or_default().push(a.clone());
        }
        self.recent_order.push_back(a);
    }

    fn forget(&mut self, a: &Arc<RecentAnswer>) {
        for n in std::iter::once(&a.name).chain(a.chain.iter()) {
            if let Some(v) = self.recent.get_mut(n) {
                v.retain(|x| !Arc::ptr_eq(x, a));
                if v.is_empty() {
                    self.recent.remove(n);
                }
            }
        }
    }

    /// Blocks an answer's addresses for `listed` (the entry listing its QNAME or a CNAME
    /// target: the reason `sensor blocklist resolved` shows, and what `unlist` undoes), each
    /// for its TTL bounded as the program bounds it, counted from when the answer was seen.
    fn block_answer(&mut self, a: &RecentAnswer, listed: &str) {
        let (min, max) = (u64::from(self.s.min_secs), u64::from(self.s.max_secs));
        let now = now_unix();
        let wanted: Vec<DestBlock> = a
            .addresses
            .iter()
            .map(|(ip, ttl)| DestBlock {
                address: *ip,
                name: listed.to_owned(),
                client: a.client,
                ttl: *ttl,
                expires_unix: a.seen_unix + u64::from(*ttl).clamp(min, max),
            })
            .filter(|d| d.expires_unix > now)
            .collect();
        let Some(maps) = &mut self.s.maps else {
            return;
        };
        match maps.block(&wanted, now) {
            Ok(o) => {
                let c = &self.counters;
                c.fallback_blocked
                    .fetch_add(o.inserted as u64, Ordering::Relaxed);
                c.fallback_protected
                    .fetch_add(o.protected as u64, Ordering::Relaxed);
                c.fallback_full.fetch_add(o.full as u64, Ordering::Relaxed);
                if o.inserted > 0 {
                    tracing::info!(
                        name = %a.name,
                        listed,
                        client = %a.client,
                        blocked = o.inserted,
                        "blocking by resolution: answer blocked from userspace (listed after it passed, or through a CNAME)"
                    );
                }
            }
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "blocking by resolution: an answer was not blocked");
            }
        }
    }

    /// The remembered answers the new names cover are blocked now.
    fn block_recent(&mut self, new: &[NewName]) {
        if self.s.maps.is_none() || self.recent.is_empty() {
            return;
        }
        let mut set = DomainSet::new();
        for n in new {
            let _ = set.insert(&n.pattern);
        }
        let hits: Vec<(Arc<RecentAnswer>, String)> = self
            .recent
            .iter()
            .filter_map(|(name, v)| Some((set.lookup(name)?.name.to_owned(), v)))
            .flat_map(|(entry, v)| v.iter().map(move |a| (a.clone(), entry.clone())))
            .collect();
        for (a, name) in hits {
            self.block_answer(&a, &name);
        }
    }

    /// A malicious hit: listed if the verdict cache says the *name* is malicious (not only its
    /// server or an answer address on an IP feed).
    fn verdict(&mut self, name: &str) {
        if !self.s.from_verdicts && self.hunts.is_none() {
            return;
        }
        let name = super::unlisted::canonical(name);
        if self.unlisted.contains(&name) || self.covers(&name).is_some() {
            return;
        }
        let Some(cache) = &self.s.verdicts else {
            return;
        };
        let assessment = {
            let cache = cache.clone();
            let n = name.clone();
            self.s.runtime.block_on(async move { cache.peek(&n).await })
        };
        let Some(assessment) = assessment.filter(|a| a.verdict == Verdict::Malicious) else {
            return;
        };
        let Ok(pattern) = Pattern::parse(&format!("={name}")) else {
            return;
        };
        if self.s.from_verdicts {
            let expires = now_unix() + u64::from(self.s.verdict_secs);
            let l = listing(&pattern, expires, NAME_FROM_VERDICT);
            if let Some(maps) = &mut self.s.maps {
                match maps.add_names(std::slice::from_ref(&l)) {
                    Ok(_) => {}
                    Err(e) => {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, name, "blocking by resolution: a malicious name was not listed");
                        return;
                    }
                }
            }
            self.verdicts.insert(name.clone(), expires);
            self.counters
                .listed_verdicts
                .fetch_add(1, Ordering::Relaxed);
            self.counters.listed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                name,
                expires_unix = expires,
                "blocking by resolution: listed on a malicious verdict"
            );
        }
        let new = vec![NewName {
            pattern,
            why: Why::Verdict(assessment),
        }];
        self.block_recent(&new);
        self.hunt(new);
    }

    fn hunt(&self, mut new: Vec<NewName>) {
        let Some(tx) = &self.hunts else {
            return;
        };
        if new.len() > MAX_HUNT_NAMES {
            self.counters
                .hunt_skipped_names
                .fetch_add((new.len() - MAX_HUNT_NAMES) as u64, Ordering::Relaxed);
            new.truncate(MAX_HUNT_NAMES);
        }
        if tx.try_send(new).is_err() {
            self.counters.hunt_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn pattern_of(l: &Listing) -> Option<Pattern> {
    let text = if l.exact {
        format!("={}", l.name)
    } else {
        l.name.clone()
    };
    Pattern::parse(&text).ok()
}

fn operator_set(names: &[Listing]) -> DomainSet {
    let mut set = DomainSet::new();
    for p in names.iter().filter_map(pattern_of) {
        let _ = set.insert(&p);
    }
    set
}

/// The retro-hunt thread: asks the passive DNS store, alerts for each (client, name).
fn hunt_loop(retro: &Retro, rx: &Receiver<Vec<NewName>>, c: &Counters) {
    while let Ok(names) = rx.recv() {
        let started = std::time::Instant::now();
        let since = OffsetDateTime::now_utc().unix_timestamp() - retro.window_secs;
        let asked: Vec<(String, bool)> = names
            .iter()
            .map(|n| (n.pattern.name.clone(), n.pattern.kind == EntryKind::Exact))
            .collect();
        c.hunts.fetch_add(1, Ordering::Relaxed);
        let rows = match retro.hunter.clients_of(asked, since) {
            Ok(rows) => rows,
            Err(e) => {
                c.hunt_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "retro-hunt: the passive DNS store did not answer");
                continue;
            }
        };
        let mut set = DomainSet::new();
        for n in &names {
            let _ = set.insert(&n.pattern);
        }
        let mut alerts = 0u64;
        for (client, name, first, last, count) in rows {
            // The most specific new entry covering the resolved name says why.
            let why = set.lookup(&name).and_then(|m| {
                names
                    .iter()
                    .find(|n| n.pattern.name == m.name && n.pattern.kind == m.kind)
                    .map(|n| &n.why)
            });
            let Some(why) = why else { continue };
            let assessment = retro_assessment(why);
            let at = |t: i64| {
                OffsetDateTime::from_unix_timestamp(t).unwrap_or(OffsetDateTime::UNIX_EPOCH)
            };
            retro.alerts.hit(
                client,
                &name,
                1,
                &assessment,
                at(first),
                at(last),
                count.max(1),
            );
            alerts += 1;
        }
        c.hunt_alerts.fetch_add(alerts, Ordering::Relaxed);
        tracing::info!(
            names = names.len(),
            alerts,
            ms = started.elapsed().as_millis() as u64,
            "retro-hunt: clients that resolved newly malicious names alerted (backdated)"
        );
    }
}

/// The assessment a backdated alert carries: the name's own findings (or one saying where the
/// listing came from), each tagged `retro-hunt`.
fn retro_assessment(why: &Why) -> Arc<Assessment> {
    let mut a = match why {
        Why::Verdict(a) if !a.findings.is_empty() => (**a).clone(),
        Why::Feed(f) => Assessment {
            verdict: Verdict::Malicious,
            findings: vec![(**f).clone()],
            errors: Vec::new(),
        },
        Why::Verdict(_) | Why::Operator => Assessment {
            verdict: Verdict::Malicious,
            findings: vec![Finding {
                provider: if matches!(why, Why::Operator) {
                    "blocklist.resolved.names".into()
                } else {
                    "verdict".into()
                },
                malicious: true,
                severity: None,
                confidence: None,
                judgments: Vec::new(),
                tags: Vec::new(),
                permalink: None,
                ip_context: None,
            }],
            errors: Vec::new(),
        },
    };
    a.verdict = Verdict::Malicious;
    for f in &mut a.findings {
        f.tags.push("retro-hunt".into());
    }
    Arc::new(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_intel::{
        cache::{CacheSection, Source},
        feeds::{FeedConfig, FeedKind},
    };
    use sensor_model::verdict::{Confidence, Severity};

    fn feed(dir: &std::path::Path, name: &str, lines: &str) -> FeedConfig {
        let path = dir.join(format!("{name}.txt"));
        std::fs::write(&path, lines).unwrap();
        FeedConfig {
            name: name.into(),
            kind: FeedKind::Domains,
            path,
            severity: Severity::High,
            confidence: Confidence::High,
            reload_interval_ms: 0,
        }
    }

    struct Setup {
        rt: tokio::runtime::Runtime,
        dir: tempfile::TempDir,
        feeds: Arc<LocalFeeds>,
        cache: Arc<VerdictCache>,
    }

    /// A domain feed (`feed.example`, `=exact.example`) that blocking by resolution lists, and
    /// a verdict cache whose only provider is another feed (`bad.example`), standing in for
    /// ThreatBook.
    fn setup() -> Setup {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let feeds = Arc::new(
            LocalFeeds::load(&[feed(dir.path(), "c2", "feed.example\n=exact.example\n")]).unwrap(),
        );
        let provider =
            Arc::new(LocalFeeds::load(&[feed(dir.path(), "tb", "bad.example\n")]).unwrap());
        let cache = Arc::new(VerdictCache::new(
            &CacheSection::default(),
            provider
                .providers()
                .into_iter()
                .map(Source::Local)
                .collect(),
        ));
        Setup {
            rt,
            dir,
            feeds,
            cache,
        }
    }

    fn worker(s: &Setup, operator: &[&str]) -> Worker {
        let operator = operator
            .iter()
            .map(|n| Listing {
                name: n.trim_start_matches('=').into(),
                expires_unix: 0,
                exact: n.starts_with('='),
                source: NAME_FROM_CONFIG,
            })
            .collect();
        let mut w = Worker::new(
            Settings {
                maps: None,
                min_secs: 60,
                max_secs: 600,
                from_feeds: true,
                from_verdicts: true,
                verdict_secs: 900,
                operator,
                feeds: Some(s.feeds.clone()),
                verdicts: Some(s.cache.clone()),
                unlisted: UnlistedFileAt::new(&s.dir.path().join("state")),
                retro: None,
                runtime: s.rt.handle().clone(),
            },
            Arc::default(),
        )
        .unwrap();
        w.sync().unwrap();
        w
    }

    #[test]
    fn every_source_lists_with_its_own_scope() {
        let s = setup();
        let w = worker(&s, &["op.example", "=only.example"]);
        assert_eq!(w.counters.listed.load(Ordering::Relaxed), 4);
        for (name, want) in [
            ("a.b.feed.example", Some("feed.example")),
            ("FEED.example", Some("feed.example")), // any case, as DNS names compare
            ("feed.example", Some("feed.example")),
            ("notfeed.example", None),
            ("exact.example", Some("exact.example")),
            ("www.exact.example", None),
            ("x.op.example", Some("op.example")),
            ("only.example", Some("only.example")),
            ("www.only.example", None),
            ("bad.example", None), // a provider's name is listed on its verdict, not before
        ] {
            assert_eq!(w.covers(name).as_deref(), want, "{name}");
        }
    }

    #[test]
    fn a_verdict_lists_only_a_name_the_cache_judges_malicious_itself() {
        let s = setup();
        let mut w = worker(&s, &[]);
        // A hit for a clean name (its server or an answer address was on an IP feed) or for a
        // name not looked up yet lists nothing.
        s.rt.block_on(s.cache.lookup("clean.example".into()));
        w.verdict("clean.example");
        w.verdict("never-looked-up.example");
        assert!(w.verdicts.is_empty());
        // The name's own malicious verdict lists it, exactly, for verdict_secs.
        s.rt.block_on(s.cache.lookup("bad.example".into()));
        let before = now_unix();
        w.verdict("Bad.Example.");
        let expires = w.verdicts["bad.example"];
        assert!((before + 900..=now_unix() + 900).contains(&expires));
        assert_eq!(w.covers("bad.example").as_deref(), Some("bad.example"));
        assert_eq!(w.covers("www.bad.example"), None);
        assert_eq!(w.counters.listed_verdicts.load(Ordering::Relaxed), 1);
        // A name a feed covers already is not listed twice.
        s.rt.block_on(s.cache.lookup("x.feed.example".into()));
        w.verdict("x.feed.example");
        assert_eq!(w.verdicts.len(), 1);
    }

    #[test]
    fn the_operators_unlist_outranks_every_source_until_it_lapses_or_is_revoked() {
        let s = setup();
        let mut w = worker(&s, &["op.example"]);
        let file = UnlistedFileAt::new(&s.dir.path().join("state"));
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let d = |name: &str, until| Unlisted {
            name: name.into(),
            until,
            reason: "test".into(),
            by: "test".into(),
            at: now,
        };
        file.save(&[d("feed.example", None), d("op.example", Some(now - 1))])
            .unwrap();
        w.tick();
        assert_eq!(w.covers("a.feed.example"), None, "unlisted");
        assert_eq!(
            w.covers("a.op.example").as_deref(),
            Some("op.example"),
            "a lapsed decision decides nothing"
        );
        assert_eq!(w.counters.listed.load(Ordering::Relaxed), 2);
        s.rt.block_on(s.cache.lookup("bad.example".into()));
        file.save(&[d("bad.example", None)]).unwrap();
        w.tick();
        w.verdict("bad.example");
        assert!(
            w.verdicts.is_empty(),
            "a verdict does not list an unlisted name"
        );
        assert_eq!(
            w.covers("a.feed.example").as_deref(),
            Some("feed.example"),
            "revoked"
        );
    }

    #[test]
    fn recent_answers_are_remembered_by_every_name_of_their_chain_and_forgotten() {
        let s = setup();
        let mut w = worker(&s, &[]);
        let a = Arc::new(RecentAnswer {
            name: "www.shop.example".into(),
            chain: vec!["x.cdn.example".into()],
            addresses: vec![("192.0.2.1".parse().unwrap(), 60)],
            client: "10.0.0.7".parse().unwrap(),
            seen_unix: 0,
        });
        w.answer(a.clone());
        assert_eq!(w.recent.len(), 2);
        assert!(Arc::ptr_eq(&w.recent["x.cdn.example"][0], &a));
        // Seen at 0: far older than an hour, dropped at the next tick.
        w.tick();
        assert!(w.recent.is_empty() && w.recent_order.is_empty());
    }
}
