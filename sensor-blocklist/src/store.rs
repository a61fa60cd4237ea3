//! The blocklist store: which IPs are listed, until when, and the safety checks a new list must
//! pass before it is published.
//!
//! State is one JSON file (`<state_dir>/state.json`, written atomically); a missing file is an
//! empty list. One night's run is [`Store::plan`] (pure: the new list and what changed, or why it
//! is refused) and then [`Store::commit`] (persist). A run whose intel provider failed must not
//! reach `plan` at all, so the last good list stays in force byte for byte; and `plan` itself
//! never drops an entry just because no verdict came for it: an IP not re-checked keeps its
//! expiry.
//!
//! Rules of one plan, in order:
//! 1. Old entries now never-blocked (the allowlist grew) are removed; lapsed ones expire.
//! 2. Verdicts are merged per address (IPv4-mapped IPv6 counts as IPv4). A never-blocked address
//!    is skipped. A malicious verdict at or above both thresholds lists the address, or renews
//!    it: expiry = now + `expiry_days` + a spread of 0..`spread_days` taken from a hash of the
//!    address, so it is stable across runs and one night's batch does not lapse at once. A
//!    malicious verdict below a threshold changes nothing. A clean verdict removes the address.
//!    A missing confidence or severity counts as the lowest grade.
//! 3. At the cap (`max_entries`) the entries kept are those with the highest severity, then the
//!    most recent malicious verdict, then the highest confidence (then the lowest address, so the
//!    choice is deterministic); the rest are dropped from the state and counted.
//! 4. A list that shrinks or grows by more than `max_change_fraction` of the previous one (and by
//!    more than `change_floor` entries) is refused unless forced.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::neverblock::NeverBlock;
use sensor_model::{
    error::{ConfigError, parse_nets},
    verdict::{Confidence, Finding, Severity},
};

const DAY: i64 = 86_400;
const STATE_FILE: &str = "state.json";
const STATE_VERSION: u32 = 1;

/// `[blocklist.policy]`: thresholds, expiry and the safety limits of the nightly list.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// Days an entry stays listed after its last malicious verdict.
    pub expiry_days: u32,
    /// Expiries are spread over this many extra days (0..N, from a hash of the address) so that
    /// one night's batch does not lapse at once. 0 = no spread.
    pub spread_days: u32,
    /// Lowest ThreatBook `confidence_level` listed: `low`, `medium` or `high`.
    pub min_confidence: Confidence,
    /// Lowest `severity` listed: `info`, `low`, `medium`, `high` or `critical`.
    pub min_severity: Severity,
    /// Most entries in the list. At the cap the highest severity and most recent are kept.
    /// Firewalls limit EDL entries per model, for all their IP lists together, and skip what is
    /// beyond the limit (PAN-OS 7.1 web interface help, Objects > External Dynamic Lists: 50,000
    /// IP addresses in total on most platforms, 150,000 on PA-5000/PA-7000; later releases give
    /// per-model tables). The default leaves room for the firewall's other lists.
    pub max_entries: usize,
    /// A new list whose size differs from the previous one by more than this fraction of it is
    /// not published without `--force`.
    pub max_change_fraction: f64,
    /// Changes of at most this many entries always pass the fraction check (so the first small
    /// lists can be published).
    pub change_floor: usize,
    /// Evidence before an address is even looked up: at least this many alerts on the day...
    pub min_alerts: u64,
    /// ...from at least this many distinct alerting devices. `min_alerts = 1` with
    /// `min_devices = 1` lists any source the intel calls malicious (what seed 003 did).
    pub min_devices: usize,
    /// Most addresses newly listed in one night; the rest (lowest severity and confidence
    /// first) are held and reported for approval (`sensor blocklist run --force` lists them).
    pub max_additions_per_night: usize,
    /// Never-block CIDRs: own offices, partners, resolvers, CDNs.
    pub allow: Vec<String>,
    /// Where the store keeps its state (`state.json`).
    pub state_dir: PathBuf,
}

impl Default for PolicySection {
    fn default() -> Self {
        Self {
            expiry_days: 30,
            spread_days: 7,
            min_confidence: Confidence::Medium,
            min_severity: Severity::Medium,
            max_entries: 10_000,
            max_change_fraction: 0.5,
            change_floor: 50,
            min_alerts: 2,
            min_devices: 1,
            max_additions_per_night: 500,
            allow: Vec::new(),
            state_dir: PathBuf::from(sensor_model::paths::BLOCKLIST_STATE_DIR),
        }
    }
}

impl PolicySection {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: &str| ConfigError::Invalid {
            key,
            message: message.into(),
        };
        if self.expiry_days == 0 || self.expiry_days > 3650 {
            return Err(invalid(
                "blocklist.policy.expiry_days",
                "must be 1 to 3650 days",
            ));
        }
        if self.spread_days > self.expiry_days {
            return Err(invalid(
                "blocklist.policy.spread_days",
                "must not exceed expiry_days",
            ));
        }
        if self.max_entries == 0 || self.max_entries > sensor_common::BLOCKLIST_CAPACITY as usize {
            return Err(ConfigError::Invalid {
                key: "blocklist.policy.max_entries",
                message: format!(
                    "must be 1 to {} (the kernel map's capacity)",
                    sensor_common::BLOCKLIST_CAPACITY
                ),
            });
        }
        if !(self.max_change_fraction.is_finite() && self.max_change_fraction > 0.0) {
            return Err(invalid(
                "blocklist.policy.max_change_fraction",
                "must be a number above 0 (0.5 = half the previous list)",
            ));
        }
        if self.min_alerts == 0 {
            return Err(invalid("blocklist.policy.min_alerts", "must be at least 1"));
        }
        if self.min_devices == 0 {
            return Err(invalid(
                "blocklist.policy.min_devices",
                "must be at least 1",
            ));
        }
        if self.max_additions_per_night == 0 {
            return Err(invalid(
                "blocklist.policy.max_additions_per_night",
                "must be at least 1",
            ));
        }
        parse_nets("blocklist.policy.allow", &self.allow)?;
        if self.state_dir.as_os_str().is_empty() {
            return Err(invalid("blocklist.policy.state_dir", "must not be empty"));
        }
        Ok(())
    }

    /// The allowlist as CIDRs (call after [`validate`](Self::validate)).
    pub fn allow_nets(&self) -> Vec<IpNet> {
        parse_nets("blocklist.policy.allow", &self.allow).unwrap_or_default()
    }
}

/// One reputation answer about one address, as the store needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ip: IpAddr,
    pub malicious: bool,
    pub confidence: Option<Confidence>,
    pub severity: Option<Severity>,
}

impl Verdict {
    pub fn from_finding(ip: IpAddr, f: &Finding) -> Self {
        Self {
            ip,
            malicious: f.malicious,
            confidence: f.confidence,
            severity: f.severity,
        }
    }
}

/// One listed address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub ip: IpAddr,
    /// When it was listed (Unix seconds); renewals keep it.
    pub first_listed: i64,
    /// The last malicious verdict that listed or renewed it (Unix seconds).
    pub last_malicious: i64,
    /// When it lapses unless renewed (Unix seconds).
    pub expires: i64,
    pub severity: Option<Severity>,
    pub confidence: Option<Confidence>,
}

impl Entry {
    /// The entry as the kernel map stores it.
    pub fn kernel_entry(&self) -> (IpNet, u64) {
        (IpNet::from(self.ip), self.expires.max(0) as u64)
    }
}

/// What one plan changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Entries before and after.
    pub previous: usize,
    pub total: usize,
    /// Newly listed (or listed again after lapsing).
    pub added: usize,
    /// Listed before and renewed by a malicious verdict.
    pub renewed: usize,
    /// Listed before, no new verdict that changes it: old expiry kept.
    pub kept: usize,
    /// Lapsed and removed.
    pub expired: usize,
    /// Removed because a verdict said clean.
    pub cleared: usize,
    /// Old entries removed because they are now never-blocked.
    pub removed_never: usize,
    /// Verdicts (distinct addresses) skipped as never-blocked.
    pub never_blocked: usize,
    /// Malicious verdicts below `min_confidence` or `min_severity`.
    pub below_threshold: usize,
    /// Entries dropped at `max_entries`.
    pub over_cap: usize,
    /// New listings beyond `max_additions_per_night`, held for approval (see `Plan::held`).
    pub held_for_approval: usize,
    /// The change check was overridden with `--force`.
    pub forced: bool,
}

/// The next list: entries sorted by address, and what changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub entries: Vec<Entry>,
    pub summary: Summary,
    /// Addresses that qualified tonight but were over `max_additions_per_night`.
    pub held: Vec<IpAddr>,
}

impl Plan {
    /// The entries as `kernel::install` takes them.
    pub fn kernel_entries(&self) -> Vec<(IpNet, u64)> {
        self.entries.iter().map(Entry::kernel_entry).collect()
    }
}

/// Why a plan was not made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    #[error(
        "the list would shrink from {previous} to {next} entries, more than \
         blocklist.policy.max_change_fraction = {max_fraction} allows (rerun with --force if this \
         is intended)"
    )]
    Shrink {
        previous: usize,
        next: usize,
        max_fraction: f64,
    },
    #[error(
        "the list would grow from {previous} to {next} entries, more than \
         blocklist.policy.max_change_fraction = {max_fraction} allows (rerun with --force if this \
         is intended)"
    )]
    Grow {
        previous: usize,
        next: usize,
        max_fraction: f64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blocklist state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("blocklist state {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    entries: Vec<Entry>,
}

/// The listed addresses and where they are kept.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    entries: BTreeMap<IpAddr, Entry>,
}

/// The strongest of the verdicts about one address in one batch.
#[derive(Default)]
struct Merged {
    listed: Option<(Option<Severity>, Option<Confidence>)>,
    below: bool,
    clean: bool,
}

impl Store {
    /// Reads `<state_dir>/state.json`; a missing file is an empty store.
    pub fn load(state_dir: &Path) -> Result<Self, StoreError> {
        let path = state_dir.join(STATE_FILE);
        let entries = match std::fs::read(&path) {
            Ok(bytes) => {
                let state: StateFile =
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::Parse {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                if state.version != STATE_VERSION {
                    return Err(StoreError::Parse {
                        path,
                        message: format!("unknown version {}", state.version),
                    });
                }
                state.entries.into_iter().map(|e| (e.ip, e)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        Ok(Self {
            dir: state_dir.to_owned(),
            entries,
        })
    }

    /// The listed entries, sorted by address.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = &Entry> {
        self.entries.values()
    }

    /// The next list from tonight's verdicts (see the module documentation for the rules).
    pub fn plan(
        &self,
        now: OffsetDateTime,
        verdicts: &[Verdict],
        never: &NeverBlock,
        policy: &PolicySection,
        force: bool,
    ) -> Result<Plan, Refused> {
        let now = now.unix_timestamp();
        let mut s = Summary {
            previous: self.entries.len(),
            forced: force,
            ..Summary::default()
        };
        let mut next: BTreeMap<IpAddr, Entry> = BTreeMap::new();
        for (ip, e) in &self.entries {
            if !never.blockable(*ip) {
                s.removed_never += 1;
            } else if e.expires <= now {
                s.expired += 1;
            } else {
                next.insert(*ip, e.clone());
            }
        }

        let mut merged: BTreeMap<IpAddr, Merged> = BTreeMap::new();
        for v in verdicts {
            let m = merged.entry(v.ip.to_canonical()).or_default();
            if !v.malicious {
                m.clean = true;
            } else if v.confidence.unwrap_or(Confidence::Low) >= policy.min_confidence
                && v.severity.unwrap_or(Severity::Info) >= policy.min_severity
            {
                let cand = (v.severity, v.confidence);
                m.listed = Some(m.listed.map_or(cand, |old| old.max(cand)));
            } else {
                m.below = true;
            }
        }
        let mut touched = std::collections::BTreeSet::new();
        for (ip, m) in merged {
            if !never.blockable(ip) {
                s.never_blocked += 1;
                continue;
            }
            if let Some((severity, confidence)) = m.listed {
                let expires =
                    now + i64::from(policy.expiry_days) * DAY + spread_secs(ip, policy.spread_days);
                touched.insert(ip);
                match next.get_mut(&ip) {
                    Some(e) => {
                        s.renewed += 1;
                        e.last_malicious = now;
                        e.expires = e.expires.max(expires);
                        e.severity = severity;
                        e.confidence = confidence;
                    }
                    None => {
                        s.added += 1;
                        next.insert(
                            ip,
                            Entry {
                                ip,
                                first_listed: now,
                                last_malicious: now,
                                expires,
                                severity,
                                confidence,
                            },
                        );
                    }
                }
            } else if m.below {
                s.below_threshold += 1;
            } else if m.clean && next.remove(&ip).is_some() {
                s.cleared += 1;
            }
        }

        // A night that would list more new addresses than the operator allows holds the
        // excess (lowest severity, then confidence, first) for approval; --force lists them.
        let mut held = Vec::new();
        let new_ips: Vec<IpAddr> = touched
            .iter()
            .filter(|ip| self.entries.get(ip).is_none_or(|e| e.expires <= now))
            .copied()
            .collect();
        if !force && new_ips.len() > policy.max_additions_per_night {
            let mut ranked: Vec<&Entry> = new_ips.iter().filter_map(|ip| next.get(ip)).collect();
            ranked.sort_by(|a, b| {
                b.severity
                    .cmp(&a.severity)
                    .then(b.confidence.cmp(&a.confidence))
                    .then(a.ip.cmp(&b.ip))
            });
            held = ranked[policy.max_additions_per_night..]
                .iter()
                .map(|e| e.ip)
                .collect();
            for ip in &held {
                next.remove(ip);
                touched.remove(ip);
                s.added -= 1;
            }
            s.held_for_approval = held.len();
        }

        let mut entries: Vec<Entry> = next.into_values().collect();
        if entries.len() > policy.max_entries {
            entries.sort_by(|a, b| {
                b.severity
                    .cmp(&a.severity)
                    .then(b.last_malicious.cmp(&a.last_malicious))
                    .then(b.confidence.cmp(&a.confidence))
                    .then(a.ip.cmp(&b.ip))
            });
            s.over_cap = entries.len() - policy.max_entries;
            for dropped in entries.drain(policy.max_entries..) {
                if touched.remove(&dropped.ip) {
                    if self.entries.contains_key(&dropped.ip)
                        && self.entries[&dropped.ip].expires > now
                    {
                        s.renewed -= 1;
                    } else {
                        s.added -= 1;
                    }
                }
            }
            entries.sort_by_key(|a| a.ip);
        }
        s.total = entries.len();
        s.kept = entries.iter().filter(|e| !touched.contains(&e.ip)).count();

        if !force {
            let (prev, nxt) = (s.previous, s.total);
            let change = prev.abs_diff(nxt);
            if change > policy.change_floor
                && change as f64 > policy.max_change_fraction * prev as f64
            {
                return Err(if nxt < prev {
                    Refused::Shrink {
                        previous: prev,
                        next: nxt,
                        max_fraction: policy.max_change_fraction,
                    }
                } else {
                    Refused::Grow {
                        previous: prev,
                        next: nxt,
                        max_fraction: policy.max_change_fraction,
                    }
                });
            }
        }
        Ok(Plan {
            entries,
            summary: s,
            held,
        })
    }

    /// Makes `plan` the stored list, writing the state file atomically first.
    pub fn commit(&mut self, plan: &Plan) -> Result<(), StoreError> {
        let path = self.dir.join(STATE_FILE);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let state = StateFile {
            version: STATE_VERSION,
            entries: plan.entries.clone(),
        };
        let text = serde_json::to_vec_pretty(&state).map_err(|e| io(std::io::Error::other(e)))?;
        sensor_model::files::write_atomic(&path, &text).map_err(io)?;
        self.entries = plan.entries.iter().map(|e| (e.ip, e.clone())).collect();
        Ok(())
    }
}

/// Seconds added to an address's expiry: 0..=`spread_days` days, from a hash of the address.
/// FNV-1a, fixed here, so the spread of an address is the same in every run and version.
pub fn spread_secs(ip: IpAddr, spread_days: u32) -> i64 {
    if spread_days == 0 {
        return 0;
    }
    let h = match ip.to_canonical() {
        IpAddr::V4(a) => fnv1a64(&a.octets()),
        IpAddr::V6(a) => fnv1a64(&a.octets()),
    };
    (h % (u64::from(spread_days) * DAY as u64 + 1)) as i64
}

/// 64-bit FNV-1a: a stable, seedless hash (expiry spread, ETags).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use time::Duration;

    use super::*;

    fn never() -> NeverBlock {
        NeverBlock::new(
            &["45.0.0.0/24".parse().unwrap()],
            &["46.0.0.0/16".parse().unwrap()],
        )
    }

    fn bad(ip: &str, sev: Severity) -> Verdict {
        Verdict {
            ip: ip.parse().unwrap(),
            malicious: true,
            confidence: Some(Confidence::High),
            severity: Some(sev),
        }
    }

    fn t0() -> OffsetDateTime {
        time::macros::datetime!(2026-11-24 02:00 UTC)
    }

    fn policy() -> PolicySection {
        PolicySection {
            change_floor: 2,
            ..PolicySection::default()
        }
    }

    #[test]
    fn new_listings_beyond_the_nightly_cap_are_held_for_approval_and_force_lists_them() {
        let (_d, s) = store();
        let p = PolicySection {
            max_additions_per_night: 2,
            change_floor: 10,
            ..PolicySection::default()
        };
        let vs = [
            bad("47.0.0.1", Severity::Low),
            bad("47.0.0.2", Severity::Critical),
            bad("47.0.0.3", Severity::High),
            bad("47.0.0.4", Severity::Medium),
        ];
        let plan = s.plan(t0(), &vs, &never(), &p, false).unwrap();
        let listed: Vec<String> = plan.entries.iter().map(|e| e.ip.to_string()).collect();
        // Medium is the lowest listed severity by default, so Low is below threshold; of the
        // three that qualify, the two most severe are listed and the third is held.
        assert_eq!(listed, ["47.0.0.2", "47.0.0.3"]);
        assert_eq!(plan.held, ["47.0.0.4".parse::<IpAddr>().unwrap()]);
        assert_eq!(plan.summary.held_for_approval, 1);
        assert_eq!(plan.summary.added, 2);
        let forced = s.plan(t0(), &vs, &never(), &p, true).unwrap();
        assert_eq!(forced.entries.len(), 3);
        assert!(forced.held.is_empty());
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::load(dir.path()).unwrap();
        (dir, s)
    }

    #[test]
    fn defaults_validate_and_bad_values_name_their_key() {
        PolicySection::default().validate().unwrap();
        let e = PolicySection {
            max_change_fraction: 0.0,
            ..PolicySection::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("blocklist.policy.max_change_fraction")
        );
        let e = PolicySection {
            allow: vec!["10.0.0.1/8".into()],
            ..PolicySection::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("blocklist.policy.allow"), "{e}");
        let p: PolicySection = toml::from_str("expiry_days = 7\nmin_severity = \"high\"").unwrap();
        assert_eq!(p.min_severity, Severity::High);
        assert!(toml::from_str::<PolicySection>("expiry = 7").is_err());
    }

    #[test]
    fn expiry_renewal_and_lapse_follow_the_clock() {
        let (_d, mut st) = store();
        let p = PolicySection {
            spread_days: 0,
            ..policy()
        };
        let n = never();
        let plan = st
            .plan(t0(), &[bad("1.2.3.4", Severity::High)], &n, &p, false)
            .unwrap();
        assert_eq!(plan.summary.added, 1);
        assert_eq!(
            plan.entries[0].expires,
            (t0() + Duration::days(30)).unix_timestamp()
        );
        st.commit(&plan).unwrap();

        // Day 20: seen again, renewed to day 50; another address is listed.
        let day20 = t0() + Duration::days(20);
        let plan = st
            .plan(
                day20,
                &[
                    bad("1.2.3.4", Severity::High),
                    bad("5.6.7.8", Severity::Medium),
                ],
                &n,
                &p,
                false,
            )
            .unwrap();
        assert_eq!((plan.summary.renewed, plan.summary.added), (1, 1));
        assert_eq!(plan.entries[0].first_listed, t0().unix_timestamp());
        assert_eq!(
            plan.entries[0].expires,
            (t0() + Duration::days(50)).unix_timestamp()
        );
        st.commit(&plan).unwrap();

        // Day 49: no verdicts at all (nothing re-checked): everything kept as is.
        let plan = st
            .plan(t0() + Duration::days(49), &[], &n, &p, false)
            .unwrap();
        assert_eq!((plan.summary.kept, plan.summary.expired), (2, 0));
        // Day 50 + 1 s: both lapse (renewed or listed on day 20).
        let plan = st
            .plan(
                t0() + Duration::days(50) + Duration::seconds(1),
                &[],
                &n,
                &p,
                true,
            )
            .unwrap();
        assert_eq!((plan.summary.expired, plan.summary.total), (2, 0));

        // Reloaded from disk: the same entries.
        let again = Store::load(_d.path()).unwrap();
        assert_eq!(again.entries().count(), 2);
    }

    #[test]
    fn expiries_are_spread_and_stable() {
        let ips: Vec<IpAddr> = (0..1000u32).map(|i| v4(0x5100_0000 + i)).collect();
        let spreads: Vec<i64> = ips.iter().map(|ip| spread_secs(*ip, 7)).collect();
        assert!(spreads.iter().all(|s| (0..=7 * DAY).contains(s)));
        // Every day of the week gets part of the batch.
        for day in 0..7 {
            let n = spreads.iter().filter(|s| **s / DAY == day).count();
            assert!(n > 80, "day {day}: {n} of 1000");
        }
        assert_eq!(spread_secs(ips[3], 7), spreads[3], "stable");
        assert_eq!(
            spread_secs("::ffff:81.0.0.3".parse().unwrap(), 7),
            spreads[3],
            "mapped = IPv4"
        );
    }

    #[test]
    fn thresholds_clean_verdicts_and_never_block() {
        let (_d, mut st) = store();
        let n = never();
        let p = policy();
        let plan = st
            .plan(
                t0(),
                &[
                    bad("1.1.1.9", Severity::High),
                    bad("2.2.2.2", Severity::High),
                ],
                &n,
                &p,
                false,
            )
            .unwrap();
        st.commit(&plan).unwrap();
        let low = Verdict {
            confidence: Some(Confidence::Low),
            ..bad("3.3.3.3", Severity::Critical)
        };
        let info = bad("4.4.4.4", Severity::Low);
        let unknown = Verdict {
            confidence: None,
            ..bad("6.6.6.6", Severity::High)
        };
        let clean = Verdict {
            malicious: false,
            ..bad("2.2.2.2", Severity::Info)
        };
        let plan = st
            .plan(
                t0() + Duration::days(1),
                &[
                    low,
                    info,
                    unknown,
                    clean,
                    bad("10.0.0.1", Severity::Critical),
                    bad("45.0.0.9", Severity::Critical),
                    bad("46.0.99.1", Severity::Critical),
                ],
                &n,
                &p,
                false,
            )
            .unwrap();
        let ips: Vec<String> = plan.entries.iter().map(|e| e.ip.to_string()).collect();
        assert_eq!(ips, ["1.1.1.9"]);
        let s = &plan.summary;
        assert_eq!(
            (s.below_threshold, s.cleared, s.never_blocked, s.kept),
            (3, 1, 3, 1)
        );

        // The allowlist grows to cover a listed address: it leaves the list.
        let wider = NeverBlock::new(&[], &["1.1.1.0/24".parse().unwrap()]);
        let plan = st
            .plan(t0() + Duration::days(1), &[], &wider, &p, true)
            .unwrap();
        assert_eq!((plan.summary.removed_never, plan.summary.total), (1, 1));
    }

    #[test]
    fn too_large_a_change_is_refused_without_force() {
        let (_d, mut st) = store();
        let n = never();
        let p = PolicySection {
            change_floor: 3,
            max_change_fraction: 0.5,
            spread_days: 0,
            ..PolicySection::default()
        };
        let many: Vec<Verdict> = (1..=10)
            .map(|i| bad(&format!("9.0.0.{i}"), Severity::High))
            .collect();
        // From nothing to 10 is a growth over the floor.
        assert!(matches!(
            st.plan(t0(), &many, &n, &p, false),
            Err(Refused::Grow {
                previous: 0,
                next: 10,
                ..
            })
        ));
        let plan = st.plan(t0(), &many, &n, &p, true).unwrap();
        assert!(plan.summary.forced);
        st.commit(&plan).unwrap();
        // Ten clean verdicts empty the list: refused, and the store is unchanged.
        let cleans: Vec<Verdict> = many
            .iter()
            .map(|v| Verdict {
                malicious: false,
                ..v.clone()
            })
            .collect();
        let refused = st.plan(t0(), &cleans, &n, &p, false).unwrap_err();
        assert_eq!(
            refused,
            Refused::Shrink {
                previous: 10,
                next: 0,
                max_fraction: 0.5
            }
        );
        assert!(refused.to_string().contains("--force"));
        assert_eq!(st.entries().len(), 10);
        // A mass expiry is a shrink too.
        assert!(
            st.plan(t0() + Duration::days(31), &[], &n, &p, false)
                .is_err()
        );
        // Within the fraction: fine.
        assert!(st.plan(t0(), &cleans[..5], &n, &p, false).is_ok());
        assert!(st.plan(t0(), &cleans, &n, &p, true).is_ok());
    }

    #[test]
    fn the_cap_keeps_the_highest_severity_then_the_most_recent() {
        let (_d, mut st) = store();
        let n = never();
        let p = PolicySection {
            max_entries: 3,
            ..policy()
        };
        let plan = st
            .plan(
                t0(),
                &[
                    bad("9.0.0.1", Severity::Medium),
                    bad("9.0.0.2", Severity::Critical),
                ],
                &n,
                &p,
                true,
            )
            .unwrap();
        st.commit(&plan).unwrap();
        let plan = st
            .plan(
                t0() + Duration::days(1),
                &[
                    bad("9.0.0.3", Severity::Medium),
                    bad("9.0.0.4", Severity::High),
                ],
                &n,
                &p,
                true,
            )
            .unwrap();
        let ips: Vec<String> = plan.entries.iter().map(|e| e.ip.to_string()).collect();
        // 9.0.0.1 is medium and older than 9.0.0.3: it goes.
        assert_eq!(ips, ["9.0.0.2", "9.0.0.3", "9.0.0.4"]);
        let s = &plan.summary;
        assert_eq!((s.over_cap, s.added, s.kept, s.total), (1, 2, 1, 3));
    }

    fn v4(x: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(x))
    }

    fn v6(x: u128) -> IpAddr {
        IpAddr::V6(std::net::Ipv6Addr::from(x))
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        // Half from the special ranges and allowlists (worst case), half anywhere.
        let special = prop_oneof![
            any::<u32>().prop_map(|x| v4(0x0a00_0000 | (x & 0x00ff_ffff))),
            any::<u32>().prop_map(|x| v4(0xe000_0000 | (x & 0x1fff_ffff))),
            any::<u32>().prop_map(|x| v4(0x2d00_0000 | (x & 0xff))),
            any::<u32>().prop_map(|x| v4(0x2e00_0000 | (x & 0xffff))),
            any::<u32>().prop_map(|x| v4(0x6440_0000 | (x & 0x003f_ffff))),
            any::<u32>().prop_map(|x| v6(0xffff_0000_0000 | u128::from(x))),
            any::<u128>().prop_map(|x| v6((0xfc << 120) | (x >> 7))),
            any::<u128>().prop_map(|x| v6((0xfe80 << 112) | (x >> 10))),
            any::<u128>().prop_map(|x| v6((0x2001_0db8 << 96) | (x >> 32))),
            any::<u32>().prop_map(|x| v6((0x0064_ff9b << 96) | u128::from(x & 0x0aff_ffff))),
            any::<u32>().prop_map(|x| v6((0x2002 << 112) | (u128::from(x) << 80))),
        ];
        prop_oneof![
            special,
            any::<u32>().prop_map(v4),
            any::<u128>().prop_map(v6)
        ]
    }

    fn any_verdict() -> impl Strategy<Value = Verdict> {
        (
            any_ip(),
            any::<bool>(),
            prop::option::of(prop_oneof![
                Just(Confidence::Low),
                Just(Confidence::Medium),
                Just(Confidence::High)
            ]),
            prop::option::of(prop_oneof![
                Just(Severity::Info),
                Just(Severity::Low),
                Just(Severity::Medium),
                Just(Severity::High),
                Just(Severity::Critical)
            ]),
        )
            .prop_map(|(ip, malicious, confidence, severity)| Verdict {
                ip,
                malicious,
                confidence,
                severity,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever the alerts say, over several nights: no never-block address reaches the
        /// list, the EDL or the kernel entries.
        #[test]
        fn no_never_block_address_is_ever_listed(
            nights in prop::collection::vec(prop::collection::vec(any_verdict(), 0..60), 1..4),
            grow_allow in any::<bool>(),
        ) {
            let (_d, mut st) = store();
            let p = PolicySection { min_confidence: Confidence::Low, min_severity: Severity::Info,
                ..PolicySection::default() };
            let mut n = never();
            for (i, night) in nights.iter().enumerate() {
                if grow_allow && i == 1 {
                    n = NeverBlock::new(&["45.0.0.0/24".parse().unwrap()],
                        &["46.0.0.0/16".parse().unwrap(), "0.0.0.0/1".parse().unwrap()]);
                }
                let plan = st.plan(t0() + time::Duration::days(i as i64), night, &n, &p, true)
                    .unwrap();
                for e in &plan.entries {
                    prop_assert!(n.blockable(e.ip), "{} listed: {:?}", e.ip, n.reason(e.ip));
                }
                for (net, _) in plan.kernel_entries() {
                    prop_assert!(n.blockable_net(&net), "{net} in the kernel entries");
                }
                for line in crate::edl::render(&plan.entries).lines() {
                    let ip: IpAddr = line.split(' ').next().unwrap().parse().unwrap();
                    prop_assert!(n.blockable(ip), "{ip} in the EDL");
                }
                st.commit(&plan).unwrap();
            }
        }
    }
}
