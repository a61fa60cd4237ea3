//! One run of the nightly job, and the daemon's schedule.
//!
//! Order matters for safety: the list changes only after every step before it succeeded. A
//! failed collection or reputation lookup leaves the store, the EDL file and the kernel map as
//! they were, byte for byte; a plan that grows or shrinks the list too much is refused unless
//! forced.

use std::{net::IpAddr, path::PathBuf, sync::Arc};

use serde_json::json;
use time::{Date, OffsetDateTime};

use ipnet::IpNet;
use sensor_intel::{
    batch::Batcher,
    threatbook::{ThreatBook, ThreatBookSection},
};
use sensor_kernel::lists::blocklist as kernel;
use sensor_model::files::write_atomic;
use sensor_outputs::alert::AlertsSection;

use crate::{
    collect::{Collected, Reader},
    config::BlocklistSection,
    edl::{self, EdlList},
    neverblock::NeverBlock,
    reputation::{LookupStats, ReputationCache},
    results::{self, Row},
    store::{self, Store, Summary},
};

/// What a run needs from the sensor's config; the composition root builds it, so this crate
/// never sees the root config.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// `[blocklist]`.
    pub blocklist: BlocklistSection,
    /// `[intel.threatbook]`: the IP reputation provider.
    pub threatbook: Option<ThreatBookSection>,
    /// `filter.client_allow`: never blocked.
    pub client_allow: Vec<IpNet>,
    /// `[alerts]`: where the run's summary goes.
    pub alerts: AlertsSection,
    /// `sensor.name`, in the summary.
    pub sensor_name: String,
    /// The running sensor's pin directory: its `BLOCKLIST` gets the new list.
    pub pin_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("config key `{key}`: {message}")]
    Config { key: &'static str, message: String },
    #[error("collecting alerts: {0}")]
    Collect(#[from] crate::collect::CollectError),
    #[error("IP reputation failed, the last list stays in force: {0}")]
    Reputation(#[from] sensor_intel::LookupError),
    #[error("not published, the last list stays in force: {0}")]
    Refused(#[from] store::Refused),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("EDL: {0}")]
    Edl(#[from] edl::EdlError),
    #[error("kernel map: {0}")]
    Kernel(#[from] kernel::KernelError),
}

/// What one run did.
#[derive(Debug)]
pub struct Report {
    pub day: Date,
    pub alerts: u64,
    pub distinct_ips: usize,
    pub unparsable: u64,
    pub never_blocked: usize,
    pub lookups: LookupStats,
    pub malicious: usize,
    pub summary: Summary,
    pub results: (PathBuf, PathBuf),
    pub edl_changed: bool,
    /// `None` when no sensor was running (the next start installs the list).
    pub kernel: Option<kernel::InstallReport>,
}

impl Report {
    /// The summary sent to the alert channel.
    pub fn markdown(&self, sensor: &str) -> String {
        let s = &self.summary;
        format!(
            "**DNS sensor `{sensor}`: nightly blocklist for {day}**\n\
             > alerts: {alerts} from {ips} distinct IPs ({never} never-block, {unparsable} unparsable)\n\
             > reputation: {asked} asked, {cached} from cache, {malicious} malicious\n\
             > list: {total} entries (was {previous}): +{added} new, {renewed} renewed, \
             {expired} expired, {cleared} cleared, {below} below thresholds, {over} over the cap\n\
             > kernel: {kernel}",
            day = self.day,
            alerts = self.alerts,
            ips = self.distinct_ips,
            never = self.never_blocked,
            unparsable = self.unparsable,
            asked = self.lookups.asked,
            cached = self.lookups.cached,
            malicious = self.malicious,
            total = s.total,
            previous = s.previous,
            added = s.added,
            renewed = s.renewed,
            expired = s.expired,
            cleared = s.cleared,
            below = s.below_threshold,
            over = s.over_cap,
            kernel = match &self.kernel {
                Some(k) => format!("{k:?}"),
                None => "no sensor running; installed at its next start".into(),
            },
        )
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "kind": "blocklist_run",
            "day": self.day.to_string(),
            "alerts": self.alerts,
            "distinct_ips": self.distinct_ips,
            "never_blocked": self.never_blocked,
            "unparsable": self.unparsable,
            "asked": self.lookups.asked,
            "cached": self.lookups.cached,
            "malicious": self.malicious,
            "summary": self.summary,
            "edl_changed": self.edl_changed,
        })
    }
}

/// Runs the job once for `day` (default: the previous day in the schedule's zone).
/// `edl` is the daemon's served list (the CLI passes `None`: it writes the file, and a running
/// daemon picks the change up).
pub async fn run_once(
    ctx: &JobContext,
    day: Option<Date>,
    force: bool,
    now: OffsetDateTime,
    edl_list: Option<&EdlList>,
) -> Result<Report, JobError> {
    let b = &ctx.blocklist;
    let schedule = b.schedule.parse().map_err(|e| JobError::Config {
        key: "blocklist.schedule",
        message: e.to_string(),
    })?;
    let day = day.unwrap_or_else(|| schedule.previous_day(now));
    let (from, to) = schedule.day_bounds(day);
    if b.sources.is_empty() {
        return Err(JobError::Config {
            key: "blocklist.sources",
            message: "no alert source configured ([[blocklist.sources]])".into(),
        });
    }
    let Some(tb) = &ctx.threatbook else {
        return Err(JobError::Config {
            key: "intel.threatbook",
            message: "the nightly blocklist asks ThreatBook's IP reputation: configure it".into(),
        });
    };

    // 1. The day's distinct source IPs.
    let collected: Collected = Reader::new(&b.elasticsearch)?
        .collect(&b.sources, from, to)
        .await?;
    tracing::info!(
        %day, alerts = collected.alerts, ips = collected.ips.len(), pages = collected.pages,
        "blocklist: alerts collected"
    );

    // 2. Never-block filter, before any lookup.
    let never = NeverBlock::new(&ctx.client_allow, &b.policy.allow_nets());
    let (ask, skipped): (Vec<IpAddr>, Vec<IpAddr>) =
        collected.ips.keys().partition(|ip| never.blockable(**ip));

    // 3. Reputation (cached across nights). A failure stops here: nothing changes.
    let client = ThreatBook::from_section(tb).map_err(|e| JobError::Config {
        key: "intel.threatbook",
        message: e.to_string(),
    })?;
    let batcher = Batcher::<IpAddr>::spawn(Arc::new(client), tb.limits.clone());
    let state = &b.policy.state_dir;
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| JobError::Io { what, source }
    };
    let mut cache = ReputationCache::load(state).map_err(io("reading the reputation cache"))?;
    let checked = cache.check(&batcher, &ask, now, &b.reputation).await;
    cache.save().map_err(io("saving the reputation cache"))?;
    let (verdicts, lookups) = checked?;

    // 4. The next list.
    let mut store = Store::load(state)?;
    let vs: Vec<store::Verdict> = verdicts
        .iter()
        .map(|(ip, v)| store::Verdict {
            ip: *ip,
            malicious: v.is_malicious,
            confidence: v.confidence_level,
            severity: v.severity,
        })
        .collect();
    let malicious = vs.iter().filter(|v| v.malicious).count();
    let plan = store.plan(now, &vs, &never, &b.policy, force)?;

    // 5. The day's results, then publish: store, EDL file, kernel map.
    let listed: std::collections::BTreeSet<IpAddr> = plan.entries.iter().map(|e| e.ip).collect();
    let rows: Vec<Row> = collected
        .ips
        .iter()
        .map(|(ip, seen)| {
            let outcome = if let Some(r) = never.reason(*ip) {
                format!("never_block:{r}")
            } else if listed.contains(ip) {
                "listed".into()
            } else {
                "not_listed".into()
            };
            Row::new(*ip, seen, verdicts.get(ip), outcome)
        })
        .collect();
    let results = results::write(&b.results_dir, day, &rows).map_err(io("writing the results"))?;
    store.commit(&plan)?;
    let text = edl::render(&plan.entries);
    let edl_changed = match edl_list {
        Some(list) => list.publish(&text)?,
        None => {
            let old = std::fs::read_to_string(&b.edl.path).ok();
            if old.as_deref() != Some(text.as_str()) {
                if let Some(dir) = b.edl.path.parent() {
                    std::fs::create_dir_all(dir).map_err(io("creating the EDL directory"))?;
                }
                write_atomic(&b.edl.path, &text).map_err(io("writing the EDL file"))?;
                true
            } else {
                false
            }
        }
    };
    let pin_dir = &ctx.pin_dir;
    let kernel = if pin_dir.join(sensor_common::map_names::BLOCKLIST).exists() {
        Some(kernel::install(
            pin_dir,
            &plan.kernel_entries(),
            &b.static_entries(),
        )?)
    } else {
        None
    };
    let report = Report {
        day,
        alerts: collected.alerts,
        distinct_ips: collected.ips.len(),
        unparsable: collected.unparsable,
        never_blocked: skipped.len(),
        lookups,
        malicious,
        summary: plan.summary,
        results,
        edl_changed,
        kernel,
    };
    let failures = sensor_outputs::alert::notice::send(
        &ctx.alerts,
        &report.markdown(&ctx.sensor_name),
        &report.json(),
    )
    .await;
    for f in failures {
        tracing::warn!(sink = %f, "blocklist summary not sent");
    }
    Ok(report)
}
