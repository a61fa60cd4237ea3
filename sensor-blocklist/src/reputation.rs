//! IP reputation for the nightly job: ThreatBook's `/v3/scene/ip_reputation` through the
//! batcher (batches, rate, quota, breaker), with verdicts kept across nights in the state
//! directory, so an IP checked yesterday is not paid for again within its lifetime.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration as StdDuration,
};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use sensor_model::verdict::{Confidence, Finding, Severity};

use sensor_intel::batch::Batcher;

/// `[blocklist.reputation]`: how long a verdict is reused across nights.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReputationSection {
    /// Days a malicious verdict is reused before the IP is checked again.
    pub malicious_ttl_days: u32,
    /// Days a clean (or unknown to the provider) verdict is reused.
    pub clean_ttl_days: u32,
}

impl Default for ReputationSection {
    fn default() -> Self {
        Self {
            malicious_ttl_days: 7,
            clean_ttl_days: 3,
        }
    }
}

/// What the provider said about one IP, as stored and as written to the results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpVerdict {
    pub is_malicious: bool,
    pub confidence_level: Option<Confidence>,
    pub severity: Option<Severity>,
    pub judgments: Vec<String>,
    pub tags: Vec<String>,
    pub carrier: Option<String>,
    pub location: Option<String>,
    pub asn: Option<u32>,
    pub asn_info: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub checked: OffsetDateTime,
}

impl IpVerdict {
    fn from_finding(f: Option<Finding>, checked: OffsetDateTime) -> Self {
        let Some(f) = f else {
            return Self {
                is_malicious: false,
                confidence_level: None,
                severity: None,
                judgments: Vec::new(),
                tags: Vec::new(),
                carrier: None,
                location: None,
                asn: None,
                asn_info: None,
                checked,
            };
        };
        let ctx = f.ip_context.unwrap_or_default();
        let location = [ctx.country, ctx.province, ctx.city]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" / ");
        Self {
            is_malicious: f.malicious,
            confidence_level: f.confidence,
            severity: f.severity,
            judgments: f.judgments,
            tags: f.tags,
            carrier: ctx.carrier.filter(|c| !c.is_empty()),
            location: (!location.is_empty()).then_some(location),
            asn: ctx.asn,
            asn_info: ctx.asn_info.filter(|c| !c.is_empty()),
            checked,
        }
    }
}

/// Verdicts by IP, persisted as JSON in the state directory.
#[derive(Debug, Default)]
pub struct ReputationCache {
    path: PathBuf,
    verdicts: BTreeMap<IpAddr, IpVerdict>,
    /// Addresses whose lookup failed on an earlier night: asked again on the next one, so a
    /// provider outage delays a verdict instead of losing it (`reputation-pending.json`).
    pending: std::collections::BTreeSet<IpAddr>,
    pending_path: PathBuf,
}

/// The night's lookups: how many came from the cache, how many were asked, how many failed
/// (kept pending for the next night) and the first failure.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LookupStats {
    pub cached: usize,
    pub asked: usize,
    pub failed: usize,
    pub first_error: Option<String>,
}

impl ReputationCache {
    /// Reads `<state_dir>/reputation.json` (missing: empty).
    pub fn load(state_dir: &Path) -> std::io::Result<Self> {
        let path = state_dir.join("reputation.json");
        let verdicts = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        let pending_path = state_dir.join("reputation-pending.json");
        let pending = match std::fs::read(&pending_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", pending_path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => return Err(e),
        };
        Ok(Self {
            path,
            verdicts,
            pending,
            pending_path,
        })
    }

    /// Addresses left without a verdict by an earlier night's failed lookups.
    pub fn pending(&self) -> impl Iterator<Item = &IpAddr> {
        self.pending.iter()
    }

    /// Writes the cache atomically (temp file, fsync, rename).
    pub fn save(&self) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(&self.verdicts).map_err(std::io::Error::other)?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        sensor_model::files::write_atomic(&self.path, &bytes)?;
        let pending = serde_json::to_vec(&self.pending).map_err(std::io::Error::other)?;
        sensor_model::files::write_atomic(&self.pending_path, &pending)
    }

    pub fn len(&self) -> usize {
        self.verdicts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.verdicts.is_empty()
    }

    /// Verdicts for `ips`: from the cache while fresh, the rest asked through `batcher`. A
    /// failed lookup costs only its own address: the others get their verdicts, and the failed
    /// ones are kept pending for the next night (see [`pending`](Self::pending)).
    pub async fn check(
        &mut self,
        batcher: &Batcher<IpAddr>,
        ips: &[IpAddr],
        now: OffsetDateTime,
        cfg: &ReputationSection,
    ) -> (BTreeMap<IpAddr, IpVerdict>, LookupStats) {
        let fresh = |v: &IpVerdict| {
            let days = if v.is_malicious {
                cfg.malicious_ttl_days
            } else {
                cfg.clean_ttl_days
            };
            now - v.checked < StdDuration::from_secs(u64::from(days) * 86_400)
        };
        let mut out = BTreeMap::new();
        let mut ask = Vec::new();
        for &ip in ips {
            match self.verdicts.get(&ip) {
                Some(v) if fresh(v) => {
                    out.insert(ip, v.clone());
                }
                _ => ask.push(ip),
            }
        }
        let mut stats = LookupStats {
            cached: out.len(),
            asked: ask.len(),
            ..LookupStats::default()
        };
        let answers = futures::future::join_all(ask.iter().map(|&ip| batcher.lookup(ip))).await;
        for (ip, answer) in ask.into_iter().zip(answers) {
            match answer {
                Ok(f) => {
                    let v = IpVerdict::from_finding(f, now);
                    self.verdicts.insert(ip, v.clone());
                    self.pending.remove(&ip);
                    out.insert(ip, v);
                }
                Err(e) => {
                    stats.failed += 1;
                    stats.first_error.get_or_insert_with(|| e.to_string());
                    self.pending.insert(ip);
                }
            }
        }
        // Cached answers settle pending addresses too.
        for ip in out.keys() {
            self.pending.remove(ip);
        }
        // Forget verdicts nobody will reuse, so the file does not grow for ever.
        self.verdicts.retain(|_, v| {
            now - v.checked
                < StdDuration::from_secs(
                    u64::from(cfg.malicious_ttl_days.max(cfg.clean_ttl_days)) * 86_400,
                )
        });
        (out, stats)
    }
}
