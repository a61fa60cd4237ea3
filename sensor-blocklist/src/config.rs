//! `[blocklist]`: the kernel's static entries, and the nightly job's sections.

use std::path::PathBuf;

use ipnet::IpNet;
use sensor_model::error::{ConfigError, PrefixRails, parse_nets};
use serde::Deserialize;

/// `[blocklist]`: sources dropped in the kernel.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BlocklistSection {
    /// Sources (IPs or CIDRs) whose packets are dropped by XDP.
    pub entries: Vec<String>,
    /// Keep the pinned BLOCKLIST map when the sensor stops, and reuse it on the next start.
    pub keep_on_exit: bool,
    /// The widest prefix an entry may have (`{ v4 = 16, v6 = 32 }`): `0.0.0.0/0` would drop
    /// everything.
    pub widest_prefix: PrefixRails,
    /// Addresses that no list may ever hold, whatever the intel or a static entry says: the
    /// company's public ranges, partners. The sensor host's own addresses, its gateways and
    /// resolvers, every configured endpoint and the EDL's allowed clients are protected too,
    /// without being listed here.
    pub protect: Vec<String>,
    /// `[blocklist.schedule]`: when the daemon runs the nightly job.
    pub schedule: crate::schedule::ScheduleSection,
    /// `[[blocklist.sources]]`: where the security devices' alerts are.
    pub sources: Vec<crate::collect::AlertSource>,
    /// `[blocklist.elasticsearch]`: the log platform holding them.
    pub elasticsearch: crate::collect::ReadSection,
    /// `[blocklist.reputation]`: verdict reuse across nights.
    pub reputation: crate::reputation::ReputationSection,
    /// `[blocklist.policy]`: thresholds, expiry, safety limits, never-block list, state.
    pub policy: crate::store::PolicySection,
    /// `[blocklist.edl]`: the list file and its HTTP server.
    pub edl: crate::edl::EdlSection,
    /// `[blocklist.export]`: the same list for other firewalls and this host's packet filter.
    pub export: crate::export::ExportSection,
    /// Where each night's results (CSV and JSON lines) are written.
    pub results_dir: PathBuf,
    /// `[blocklist.resolved]`: blocking the addresses listed names resolve to.
    pub resolved: crate::resolved::ResolvedSection,
}

impl Default for BlocklistSection {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            keep_on_exit: false,
            widest_prefix: PrefixRails::default(),
            protect: Vec::new(),
            schedule: Default::default(),
            sources: Vec::new(),
            elasticsearch: Default::default(),
            reputation: Default::default(),
            policy: Default::default(),
            edl: Default::default(),
            export: Default::default(),
            results_dir: PathBuf::from(sensor_model::paths::BLOCKLIST_RESULTS_DIR),
            resolved: Default::default(),
        }
    }
}

impl BlocklistSection {
    /// Entries within the rails and clear of `protect` and the policy allowlist.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let entries = parse_nets("blocklist.entries", &self.entries)?;
        self.widest_prefix
            .check("blocklist.entries", "blocklist.widest_prefix", &entries)?;
        let protect = parse_nets("blocklist.protect", &self.protect)?;
        let allow = parse_nets("blocklist.policy.allow", &self.policy.allow)?;
        for e in &entries {
            for (key, p) in protect
                .iter()
                .map(|p| ("blocklist.protect", p))
                .chain(allow.iter().map(|a| ("blocklist.policy.allow", a)))
            {
                if e.contains(p) || p.contains(e) {
                    return Err(ConfigError::Invalid {
                        key: "blocklist.entries",
                        message: format!("{e} overlaps {p} in {key}: it can never be blocked"),
                    });
                }
            }
        }
        self.policy.validate()?;
        self.edl.validate()?;
        self.resolved.validate()?;
        self.validate_served()
    }

    /// Export files served on the EDL server: each path valid and distinct from the EDL's and
    /// from each other's, and a server to serve them on.
    fn validate_served(&self) -> Result<(), ConfigError> {
        let served = self.export.served();
        let mut paths = vec![("blocklist.edl.url_path", self.edl.url_path.as_str())];
        paths.extend(served.iter().map(|(_, key, path, _)| (*key, path.as_str())));
        crate::edl::check_distinct_paths(&paths)?;
        if let Some((_, key, _, _)) = served.first()
            && self.edl.listen.trim().is_empty()
        {
            return Err(ConfigError::Invalid {
                key,
                message: "is served by the EDL server: set blocklist.edl.listen too".into(),
            });
        }
        Ok(())
    }

    /// `protect` as networks (validated at load).
    pub fn protect_nets(&self) -> Vec<IpNet> {
        parse_nets("blocklist.protect", &self.protect).unwrap_or_default()
    }

    /// `entries` as networks (validated at load: an invalid one never gets here).
    pub fn static_entries(&self) -> Vec<IpNet> {
        parse_nets("blocklist.entries", &self.entries).unwrap_or_default()
    }
}
