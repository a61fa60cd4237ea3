//! Suppression: one alert per (client, name) pair per window, repeats counted.
//!
//! The first hit of a pair raises an alert; later hits within the window only update the pair's
//! [`PairStats`] (count, last seen), which the alert shares, so an alert still waiting for send
//! budget goes out with the current count. When the window ends, repeats that no message has
//! shown yet raise one "still active" alert carrying the count.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use super::{Alert, AlertKind, PairStats, Sighting};
use sensor_intel::inventory::Asset;

type PairKey = (IpAddr, String);

struct Tracked {
    alert: Arc<Alert>,
    deadline: Instant,
}

/// What a hit did.
pub(crate) enum Observed {
    /// First hit of the pair in its window: send this alert.
    New(Arc<Alert>),
    /// A repeat, counted.
    Repeat,
}

pub(crate) struct Suppressor {
    window: Duration,
    max_tracked: usize,
    pairs: HashMap<PairKey, Tracked>,
    /// Pairs in the order their windows end (the window is the same for all, so insertion order
    /// is deadline order).
    order: VecDeque<(Instant, PairKey)>,
}

impl Suppressor {
    pub(crate) fn new(window: Duration, max_tracked: usize) -> Self {
        Self {
            window,
            max_tracked: max_tracked.max(1),
            pairs: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records a sighting (one hit, or `count` hits of one pair) at `now`. `owner` is called
    /// only for a pair that raises an alert.
    pub(crate) fn observe(
        &mut self,
        sighting: Sighting,
        owner: impl FnOnce(IpAddr) -> Option<Arc<Asset>>,
        now: Instant,
        evicted: &mut Vec<Arc<Alert>>,
    ) -> Observed {
        let Sighting {
            hit,
            last_seen,
            count,
        } = sighting;
        let count = count.max(1);
        let last_seen = last_seen.max(hit.seen);
        let key = (hit.client, sensor_model::verdict::normalise(&hit.name));
        if let Some(tracked) = self.pairs.get(&key)
            && tracked.deadline > now
        {
            let mut stats = lock(&tracked.alert.stats);
            stats.count += count;
            stats.first_seen = stats.first_seen.min(hit.seen);
            stats.last_seen = stats.last_seen.max(last_seen);
            return Observed::Repeat;
        }
        // Not tracked, or its window ended and `expire` has not run yet: close it first so its
        // repeats are reported before the new alert.
        if let Some(old) = self.pairs.remove(&key) {
            evicted.extend(still_active(&old.alert));
        }
        while self.pairs.len() >= self.max_tracked {
            // Memory stays bounded under a flood of distinct pairs: the oldest pair's window is
            // closed early (its repeats are reported; a later hit alerts again).
            let Some((_, old_key)) = self.order.pop_front() else {
                break;
            };
            if let Some(old) = self.pairs.remove(&old_key) {
                evicted.extend(still_active(&old.alert));
            }
        }
        let alert = Arc::new(Alert {
            kind: AlertKind::First,
            client: hit.client,
            owner: owner(hit.client),
            stats: Arc::new(Mutex::new(PairStats {
                first_seen: hit.seen,
                last_seen,
                count,
                shown: 0,
            })),
            name: hit.name,
            qtype: hit.qtype,
            sensor: hit.sensor,
            assessment: hit.assessment,
        });
        let deadline = now + self.window;
        self.order.push_back((deadline, key.clone()));
        self.pairs.insert(
            key,
            Tracked {
                alert: Arc::clone(&alert),
                deadline,
            },
        );
        Observed::New(alert)
    }

    /// When the next window ends.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.order.front().map(|(d, _)| *d)
    }

    /// Closes the windows ended by `now`; returns "still active" alerts for pairs with repeats
    /// no message has shown.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Arc<Alert>> {
        let mut out = Vec::new();
        while let Some((deadline, key)) = self.order.pop_front() {
            if deadline > now {
                self.order.push_front((deadline, key));
                break;
            }
            // The entry may have been replaced (window ended, pair alerted again): only the
            // tracked window with this deadline is closed here.
            if self.pairs.get(&key).is_some_and(|t| t.deadline == deadline)
                && let Some(old) = self.pairs.remove(&key)
            {
                out.extend(still_active(&old.alert));
            }
        }
        out
    }

    /// Closes every window (shutdown), reporting unshown repeats.
    pub(crate) fn drain(&mut self) -> Vec<Arc<Alert>> {
        self.order.clear();
        let mut out: Vec<Arc<Alert>> = self
            .pairs
            .drain()
            .filter_map(|(_, t)| still_active(&t.alert))
            .collect();
        out.sort_by_key(|a| lock(&a.stats).first_seen);
        out
    }

    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.pairs.len()
    }
}

/// A "still active" alert for a pair whose count went beyond what a message showed. An alert
/// no message has shown yet needs none: it is still queued and will show the current count.
fn still_active(first: &Arc<Alert>) -> Option<Arc<Alert>> {
    let stats = lock(&first.stats);
    (stats.shown > 0 && stats.count > stats.shown).then(|| {
        Arc::new(Alert {
            kind: AlertKind::StillActive,
            ..(**first).clone()
        })
    })
}

pub(crate) fn lock(stats: &Mutex<PairStats>) -> std::sync::MutexGuard<'_, PairStats> {
    // The critical sections only copy numbers; a poisoned lock still holds valid numbers.
    stats.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use sensor_model::verdict::{Assessment, Verdict};

    fn hit(client: &str, name: &str, secs: i64) -> crate::alert::Hit {
        crate::alert::Hit {
            client: client.parse().unwrap(),
            name: name.into(),
            qtype: "A".into(),
            assessment: Arc::new(Assessment {
                verdict: Verdict::Malicious,
                findings: vec![],
                errors: vec![],
            }),
            seen: OffsetDateTime::from_unix_timestamp(1_700_000_000 + secs).unwrap(),
            sensor: "s".into(),
        }
    }

    fn new(o: Observed) -> Arc<Alert> {
        match o {
            Observed::New(a) => a,
            Observed::Repeat => panic!("expected a new alert"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_alert_per_pair_per_window_with_repeats_counted() {
        let mut s = Suppressor::new(Duration::from_secs(3600), 100);
        let t0 = Instant::now();
        let mut ev = Vec::new();
        let a = new(s.observe(
            hit("10.0.0.1", "evil.test", 0).into(),
            |_| None,
            t0,
            &mut ev,
        ));
        // A message showed it.
        lock(&a.stats).shown = 1;
        // Same pair (name case and trailing dot differ): repeat.
        for i in 1..5 {
            let o = s.observe(
                hit("10.0.0.1", "EVIL.test.", i).into(),
                |_| None,
                t0 + Duration::from_secs(i as u64),
                &mut ev,
            );
            assert!(matches!(o, Observed::Repeat));
        }
        // Another client, same name: its own alert.
        let b = new(s.observe(
            hit("10.0.0.2", "evil.test", 5).into(),
            |_| None,
            t0,
            &mut ev,
        ));
        lock(&b.stats).shown = 1;
        {
            let st = lock(&a.stats);
            assert_eq!(st.count, 5);
            assert_eq!(st.last_seen.unix_timestamp(), 1_700_000_004);
        }
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(3600)));
        assert!(s.expire(t0 + Duration::from_secs(3599)).is_empty());

        // Window ends: one "still active" alert for the pair with unshown repeats; the other
        // pair had a single hit and says nothing more.
        let out = s.expire(t0 + Duration::from_secs(3600));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].kind, AlertKind::StillActive);
        assert_eq!(lock(&out[0].stats).count, 5);
        assert_eq!(s.tracked(), 0);

        // After the window the pair alerts again.
        new(s.observe(
            hit("10.0.0.1", "evil.test", 4000).into(),
            |_| None,
            t0 + Duration::from_secs(3601),
            &mut ev,
        ));
        assert!(ev.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn shown_repeats_are_not_reported_again() {
        let mut s = Suppressor::new(Duration::from_secs(60), 100);
        let t0 = Instant::now();
        let mut ev = Vec::new();
        let a = new(s.observe(hit("10.0.0.1", "x.test", 0).into(), |_| None, t0, &mut ev));
        s.observe(hit("10.0.0.1", "x.test", 1).into(), |_| None, t0, &mut ev);
        // A message showed the alert after the repeat arrived (count 2).
        lock(&a.stats).shown = 2;
        assert!(s.expire(t0 + Duration::from_secs(60)).is_empty());
        // An alert no message has shown is still queued: it will carry the count itself.
        let b = new(s.observe(hit("10.0.0.9", "x.test", 0).into(), |_| None, t0, &mut ev));
        s.observe(hit("10.0.0.9", "x.test", 1).into(), |_| None, t0, &mut ev);
        assert_eq!(lock(&b.stats).count, 2);
        assert!(s.drain().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn tracking_is_bounded_and_evictions_report_repeats() {
        let mut s = Suppressor::new(Duration::from_secs(3600), 2);
        let t0 = Instant::now();
        let mut ev = Vec::new();
        let a = new(s.observe(hit("10.0.0.1", "a.test", 0).into(), |_| None, t0, &mut ev));
        lock(&a.stats).shown = 1;
        s.observe(hit("10.0.0.1", "a.test", 1).into(), |_| None, t0, &mut ev);
        new(s.observe(hit("10.0.0.2", "a.test", 0).into(), |_| None, t0, &mut ev));
        new(s.observe(hit("10.0.0.3", "a.test", 0).into(), |_| None, t0, &mut ev));
        assert_eq!(s.tracked(), 2);
        assert_eq!(ev.len(), 1, "the evicted pair's repeat is reported");
        assert_eq!(ev[0].client.to_string(), "10.0.0.1");
        let rest = s.drain();
        assert!(rest.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_counts_as_its_hits() {
        let mut s = Suppressor::new(Duration::from_secs(3600), 100);
        let t0 = Instant::now();
        let mut ev = Vec::new();
        let first = hit("10.0.0.1", "g.test", 0);
        let later = OffsetDateTime::from_unix_timestamp(1_700_000_100).unwrap();
        let a = new(s.observe(
            Sighting {
                hit: first.clone(),
                last_seen: later,
                count: 40,
            },
            |_| None,
            t0,
            &mut ev,
        ));
        let o = s.observe(
            Sighting {
                hit: first,
                last_seen: later,
                count: 2,
            },
            |_| None,
            t0,
            &mut ev,
        );
        assert!(matches!(o, Observed::Repeat));
        let st = lock(&a.stats);
        assert_eq!((st.count, st.last_seen), (42, later));
    }
}
