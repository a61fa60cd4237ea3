//! `[blocklist.resolved]`: blocking by what a client resolved. The XDP program blocks the
//! answer addresses of listed names itself (see `sensor_common::resolved`); this module holds
//! the section and keeps the kernel's view of *what must never be blocked* in step with the
//! rest of the blocklist: every protected address and every operator decision (`allow`,
//! `unblock`) goes into DEST_PROTECT, and destinations it covers are removed at once. So
//! `sensor blocklist unblock ADDR` undoes a block by resolution too, and keeps it undone.

pub mod intel;
pub mod sink;
pub mod unlisted;

use std::path::Path;

use ipnet::IpNet;
use sensor_kernel::lists::resolved::{Listing, Removed, ResolvedError, ResolvedMaps, wire_form};
use sensor_model::error::ConfigError;
use serde::Deserialize;

/// `[blocklist.resolved]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ResolvedSection {
    /// Drop packets to the addresses listed names resolve to, from the first packet after the
    /// answer (XDP; off by default: it blocks traffic, not just DNS).
    pub enabled: bool,
    /// Shortest life of a blocked destination, seconds: a shorter TTL is raised to it (clients
    /// and their resolvers keep answers longer than short TTLs say).
    pub min_secs: u32,
    /// Longest life, seconds: a longer TTL is cut to it.
    pub max_secs: u32,
    /// Names the operator lists (each covers its subdomains; `=name` covers the name only).
    pub names: Vec<String>,
    /// List every domain feed's names too (`[[intel.feeds]]` of kind `domains`, re-listed when
    /// a feed reloads).
    pub feeds: bool,
    /// List names the verdict cache judges malicious (ThreatBook), each for `verdict_secs`.
    pub verdicts: bool,
    /// How long a name listed on a verdict stays listed, seconds.
    pub verdict_secs: u32,
    /// What the client gets back for a listed name (`"none"`: the answer as the server sent
    /// it; `"nxdomain"`: the XDP program rewrites a UDP response into NXDOMAIN in place, as an
    /// RPZ would). `"nxdomain"` needs `enabled = true` and `capture.mode = "inline"`.
    pub rewrite: Rewrite,
}

/// `blocklist.resolved.rewrite`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rewrite {
    /// The response passes unchanged (its answer addresses are blocked all the same).
    #[default]
    None,
    /// A NOERROR response over UDP becomes NXDOMAIN: its question kept, no records.
    Nxdomain,
}

// By hand rather than derived: serde's "unknown variant" message does not say which key it is
// about, and the operator reads this one line in the log.
impl<'de> Deserialize<'de> for Rewrite {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "none" => Ok(Self::None),
            "nxdomain" => Ok(Self::Nxdomain),
            other => Err(serde::de::Error::custom(format!(
                "blocklist.resolved.rewrite must be \"none\" or \"nxdomain\", got {other:?}"
            ))),
        }
    }
}

impl Default for ResolvedSection {
    fn default() -> Self {
        Self {
            enabled: false,
            min_secs: 300,
            max_secs: 86_400,
            names: Vec::new(),
            feeds: true,
            verdicts: true,
            verdict_secs: 86_400,
            rewrite: Rewrite::None,
        }
    }
}

impl ResolvedSection {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.min_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "blocklist.resolved.min_secs",
                message: "must be at least 1".into(),
            });
        }
        if self.max_secs < self.min_secs || self.max_secs > 7 * 86_400 {
            return Err(ConfigError::Invalid {
                key: "blocklist.resolved.max_secs",
                message: format!(
                    "must be between min_secs ({}) and 604800 (a week)",
                    self.min_secs
                ),
            });
        }
        if self.rewrite == Rewrite::Nxdomain && !self.enabled {
            return Err(ConfigError::Invalid {
                key: "blocklist.resolved.rewrite",
                message: "\"nxdomain\" needs blocklist.resolved.enabled = true".into(),
            });
        }
        if self.verdict_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "blocklist.resolved.verdict_secs",
                message: "must be at least 1".into(),
            });
        }
        for n in &self.names {
            if wire_form(n.strip_prefix('=').unwrap_or(n)).is_none() {
                return Err(ConfigError::Invalid {
                    key: "blocklist.resolved.names",
                    message: format!("{n:?} is not a DNS name"),
                });
            }
        }
        Ok(())
    }

    /// Whether the program rewrites listed names' responses into NXDOMAIN.
    pub fn rewrites(&self) -> bool {
        self.enabled && self.rewrite == Rewrite::Nxdomain
    }

    /// The program's lifetime bounds when enabled.
    pub fn bounds(&self) -> Option<(u32, u32)> {
        self.enabled.then_some((self.min_secs, self.max_secs))
    }

    /// The operator's names as listings (never expiring).
    pub fn listings(&self) -> Vec<Listing> {
        self.names
            .iter()
            .map(|n| match n.strip_prefix('=') {
                Some(exact) => Listing {
                    name: exact.to_owned(),
                    expires_unix: 0,
                    exact: true,
                    source: sensor_common::resolved::NAME_FROM_CONFIG,
                },
                None => Listing {
                    name: n.clone(),
                    expires_unix: 0,
                    exact: false,
                    source: sensor_common::resolved::NAME_FROM_CONFIG,
                },
            })
            .collect()
    }
}

/// Protects `holes` (protected addresses and operator decisions) in the running sensor's
/// DEST_PROTECT, removing the destinations they cover, and removes lapsed destinations. `None`
/// when no sensor pinned the maps (not running, or an older sensor).
pub fn sync(pin_dir: &Path, holes: &[IpNet], now: u64) -> Result<Option<Removed>, ResolvedError> {
    if !pin_dir
        .join(sensor_common::map_names::DEST_PROTECT)
        .exists()
    {
        return Ok(None);
    }
    let mut maps = ResolvedMaps::open_pinned(pin_dir)?;
    let covered = maps.set_protected(holes)?;
    let lapsed = maps.sweep(now)?;
    Ok(Some(Removed {
        destinations: covered.destinations + lapsed.destinations,
        names: lapsed.names,
    }))
}
