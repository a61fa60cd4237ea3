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

use sensor_intel::{LookupError, batch::Batcher};

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
}

/// The night's lookups: how many came from the cache and how many were asked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LookupStats {
    pub cached: usize,
    pub asked: usize,
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
        Ok(Self { path, verdicts })
    }

    /// Writes the cache atomically (temp file, fsync, rename).
    pub fn save(&self) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(&self.verdicts).map_err(std::io::Error::other)?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        sensor_model::files::write_atomic(&self.path, &bytes)
    }

    pub fn len(&self) -> usize {
        self.verdicts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.verdicts.is_empty()
    }

    /// Verdicts for `ips`: from the cache while fresh, the rest asked through `batcher`. Any
    /// failed lookup fails the whole call (what was answered is kept in the cache): the caller
    /// must then keep the last good list.
    pub async fn check(
        &mut self,
        batcher: &Batcher<IpAddr>,
        ips: &[IpAddr],
        now: OffsetDateTime,
        cfg: &ReputationSection,
    ) -> Result<(BTreeMap<IpAddr, IpVerdict>, LookupStats), LookupError> {
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
        let stats = LookupStats {
            cached: out.len(),
            asked: ask.len(),
        };
        let answers = futures::future::join_all(ask.iter().map(|&ip| batcher.lookup(ip))).await;
        let mut failure = None;
        for (ip, answer) in ask.into_iter().zip(answers) {
            match answer {
                Ok(f) => {
                    let v = IpVerdict::from_finding(f, now);
                    self.verdicts.insert(ip, v.clone());
                    out.insert(ip, v);
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        // Forget verdicts nobody will reuse, so the file does not grow for ever.
        self.verdicts.retain(|_, v| {
            now - v.checked
                < StdDuration::from_secs(
                    u64::from(cfg.malicious_ttl_days.max(cfg.clean_ttl_days)) * 86_400,
                )
        });
        match failure {
            Some(e) => Err(e),
            None => Ok((out, stats)),
        }
    }
}
