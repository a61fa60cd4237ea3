//! `[blocklist]`: the kernel's static entries, and the nightly job's sections.

use std::path::PathBuf;

use ipnet::IpNet;
use sensor_model::error::parse_nets;
use serde::Deserialize;

/// `[blocklist]`: sources dropped in the kernel.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BlocklistSection {
    /// Sources (IPs or CIDRs) whose packets are dropped by XDP.
    pub entries: Vec<String>,
    /// Keep the pinned BLOCKLIST map when the sensor stops, and reuse it on the next start.
    pub keep_on_exit: bool,
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
    /// Where each night's results (CSV and JSON lines) are written.
    pub results_dir: PathBuf,
}

impl Default for BlocklistSection {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            keep_on_exit: false,
            schedule: Default::default(),
            sources: Vec::new(),
            elasticsearch: Default::default(),
            reputation: Default::default(),
            policy: Default::default(),
            edl: Default::default(),
            results_dir: PathBuf::from(sensor_model::paths::BLOCKLIST_RESULTS_DIR),
        }
    }
}

impl BlocklistSection {
    /// `entries` as networks (validated at load: an invalid one never gets here).
    pub fn static_entries(&self) -> Vec<IpNet> {
        parse_nets("blocklist.entries", &self.entries).unwrap_or_default()
    }
}
