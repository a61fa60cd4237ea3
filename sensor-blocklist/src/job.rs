//! One run of the nightly job, and the daemon's schedule.
//!
//! Order matters for safety: a failed collection leaves the store, the EDL file and the kernel
//! map as they were, byte for byte. A failed reputation lookup costs only its address (kept
//! pending for the next night): a provider outage delays verdicts, it does not freeze the list.
//! Addresses with too little evidence are never looked up; a plan that grows or shrinks the list
//! too much, or lists more new addresses than allowed a night, needs `--force`.

use std::{net::IpAddr, path::PathBuf, sync::Arc};

use serde_json::json;
use time::{Date, OffsetDateTime};

use sensor_intel::{
    batch::Batcher,
    threatbook::{ThreatBook, ThreatBookSection},
};
use sensor_kernel::lists::blocklist as kernel;
use sensor_outputs::alert::AlertsSection;

use crate::{
    collect::{Collected, Reader},
    config::BlocklistSection,
    edl::{self, EdlList},
    export::ExportReport,
    lock::StateLock,
    publish::{self, KernelTarget, Rules},
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
    /// `filter.client_allow` and the configured endpoints: never blocked.
    pub rules: crate::publish::RuleInputs,
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
    #[error("not published, the last list stays in force: {0}")]
    Publish(#[from] publish::PublishError),
    #[error("not published, the last list stays in force: {0}")]
    Lock(#[from] crate::lock::LockError),
}

/// What one run did.
#[derive(Debug)]
pub struct Report {
    pub day: Date,
    pub alerts: u64,
    pub distinct_ips: usize,
    pub unparsable: u64,
    pub never_blocked: usize,
    /// Below `min_alerts` / `min_devices`: not looked up.
    pub insufficient_evidence: usize,
    /// Pending addresses from earlier nights asked again.
    pub retried: usize,
    pub lookups: LookupStats,
    /// Over `max_additions_per_night`: held for approval.
    pub held: Vec<IpAddr>,
    pub malicious: usize,
    pub summary: Summary,
    pub results: (PathBuf, PathBuf),
    pub edl_changed: bool,
    /// `None` when no sensor was running (the next start installs the list).
    pub kernel: Option<kernel::InstallReport>,
    /// `[blocklist.export]`: one outcome per configured export.
    pub exports: ExportReport,
}

impl Report {
    /// The summary sent to the alert channel.
    pub fn markdown(&self, sensor: &str) -> String {
        let s = &self.summary;
        format!(
            "**DNS sensor `{sensor}`: nightly blocklist for {day}**\n\
             > alerts: {alerts} from {ips} distinct IPs ({never} never-block, {unparsable} unparsable)\n\
             > evidence: {thin} below min_alerts/min_devices (not looked up)\n\
             > reputation: {asked} asked ({retried} retried), {cached} from cache, {failed} failed \
             (retried next night){first_error}, {malicious} malicious\n\
             > list: {total} entries (was {previous}): +{added} new, {renewed} renewed, \
             {expired} expired, {cleared} cleared, {below} below thresholds, {over} over the cap, \
             {held} held for approval (`sensor blocklist run --force` lists them)\n\
             > kernel: {kernel}{exports}",
            day = self.day,
            alerts = self.alerts,
            ips = self.distinct_ips,
            never = self.never_blocked,
            unparsable = self.unparsable,
            thin = self.insufficient_evidence,
            asked = self.lookups.asked,
            retried = self.retried,
            cached = self.lookups.cached,
            failed = self.lookups.failed,
            first_error = self
                .lookups
                .first_error
                .as_ref()
                .map(|e| format!(": {}", e.replace(['\n', '`', '*'], " ")))
                .unwrap_or_default(),
            malicious = self.malicious,
            total = s.total,
            previous = s.previous,
            added = s.added,
            renewed = s.renewed,
            expired = s.expired,
            cleared = s.cleared,
            below = s.below_threshold,
            over = s.over_cap,
            held = s.held_for_approval,
            kernel = match &self.kernel {
                Some(k) => format!("{k:?}"),
                None => "no sensor running; installed at its next start".into(),
            },
            exports = self.exports_line(),
        )
    }

    /// `\n> exports: nft 12 ok, ipset FAILED (...)`, or nothing when none is configured.
    fn exports_line(&self) -> String {
        if self.exports.outcomes.is_empty() {
            return String::new();
        }
        let parts: Vec<String> = self
            .exports
            .outcomes
            .iter()
            .map(|o| match &o.error {
                None => format!("{} {} ok", o.target, o.written),
                Some(e) => format!("{} FAILED ({e})", o.target),
            })
            .collect();
        format!("\n> exports: {}", parts.join(", "))
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "kind": "blocklist_run",
            "day": self.day.to_string(),
            "alerts": self.alerts,
            "distinct_ips": self.distinct_ips,
            "never_blocked": self.never_blocked,
            "unparsable": self.unparsable,
            "insufficient_evidence": self.insufficient_evidence,
            "asked": self.lookups.asked,
            "retried": self.retried,
            "cached": self.lookups.cached,
            "failed": self.lookups.failed,
            "first_error": self.lookups.first_error,
            "held_for_approval": self.held.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
            "malicious": self.malicious,
            "summary": self.summary,
            "edl_changed": self.edl_changed,
            "exports": self.exports,
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

    // 2. Never-block filter, before any lookup: the rules in force now (protected addresses,
    // the operator's overrides). Read again under the lock before publishing.
    let never = Rules::current(b, &ctx.rules, now.unix_timestamp())?.never;
    let (blockable, skipped): (Vec<IpAddr>, Vec<IpAddr>) =
        collected.ips.keys().partition(|ip| never.blockable(**ip));
    // Evidence before any lookup: enough alerts from enough devices (quota is money, and one
    // alert is a weak reason to block).
    let pol = &b.policy;
    let (mut ask, thin): (Vec<IpAddr>, Vec<IpAddr>) = blockable.into_iter().partition(|ip| {
        collected.ips.get(ip).is_some_and(|seen| {
            seen.alerts >= pol.min_alerts && seen.devices.len() >= pol.min_devices
        })
    });

    // 3. Reputation (cached across nights). A failed lookup costs only its address: it stays
    // pending and is asked again next night; everything answered is used tonight.
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
    let retried: Vec<IpAddr> = cache
        .pending()
        .filter(|ip| never.blockable(**ip) && !ask.contains(ip))
        .copied()
        .collect();
    ask.extend(&retried);
    let (verdicts, lookups) = cache.check(&batcher, &ask, now, &b.reputation).await;
    cache.save().map_err(io("saving the reputation cache"))?;
    if lookups.failed > 0 {
        tracing::warn!(
            failed = lookups.failed,
            asked = lookups.asked,
            error = lookups.first_error.as_deref().unwrap_or(""),
            "blocklist: some reputation lookups failed; those addresses are retried next night"
        );
    }

    // 4. The next list, under the state lock with the rules read again: an unblock or allow
    // typed while the lookups ran is honoured.
    let lock = StateLock::acquire(state, publish::LOCK_WAIT)?;
    let rules = Rules::current(b, &ctx.rules, now.unix_timestamp())?;
    let never = &rules.never;
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
    let plan = store.plan(now, &vs, never, &b.policy, force)?;

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
            } else if plan.held.contains(ip) {
                "held_for_approval".into()
            } else if thin.contains(ip) {
                "insufficient_evidence".into()
            } else if !verdicts.contains_key(ip) {
                "lookup_failed_retry_next_night".into()
            } else {
                "not_listed".into()
            };
            Row::new(*ip, seen, verdicts.get(ip), outcome)
        })
        .collect();
    let results = results::write(&b.results_dir, day, &rows).map_err(io("writing the results"))?;
    let published = publish::publish(
        b,
        &mut store,
        &plan,
        &rules,
        edl_list,
        KernelTarget::Pinned(&ctx.pin_dir),
        true,
        true,
    )?;
    drop(lock);
    let report = Report {
        day,
        alerts: collected.alerts,
        distinct_ips: collected.ips.len(),
        unparsable: collected.unparsable,
        never_blocked: skipped.len(),
        insufficient_evidence: thin.len(),
        retried: retried.len(),
        lookups,
        held: plan.held.clone(),
        malicious,
        summary: plan.summary,
        results,
        edl_changed: published.edl_changed,
        kernel: published.kernel,
        exports: published.exports.clone().unwrap_or_default(),
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
