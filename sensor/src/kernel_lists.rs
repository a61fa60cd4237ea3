//! The kernel's CLIENT_ALLOW and BLOCKLIST as the config file has them, installed at start and
//! again on SIGHUP (`systemctl reload`), in place: the program stays attached, entries that stay
//! keep their hit counters and are never missing for a moment (see `PrefixMap::replace_all`).

use std::{path::PathBuf, sync::Mutex, time::Duration};

use sensor_common::{AllowValue, BlockValue};

use crate::config::Config;

use sensor_blocklist::{
    publish::{self, KernelTarget},
    resolved::{intel::ResolvedIntel, unlisted::UnlistedFileAt},
};
use sensor_kernel::lists::PrefixMap;

use sensor_model::reload::{Reload, ReloadCounters, ReloadError};

/// Installs the config's `filter.client_allow`, and the blocklist re-planned with the rules in
/// force now (stored entries not yet expired, `blocklist.entries` with holes for protected and
/// operator-decided addresses). Returns how many entries each map holds. A corrupt or
/// unreadable state file is an error naming it.
pub fn install(
    config: &Config,
    allow: &mut PrefixMap<AllowValue>,
    block: &mut PrefixMap<BlockValue>,
) -> anyhow::Result<(usize, usize)> {
    let allowed = config.client_allow();
    allow.replace_all(&allowed)?;
    let (_, published) = publish::replan(
        &config.blocklist,
        &config.rule_inputs(),
        time::OffsetDateTime::now_utc(),
        None,
        KernelTarget::Map(block),
        true,
    )?;
    Ok((allowed.len(), published.kernel.map_or(0, |k| k.total)))
}

/// Blocking by resolution as the config has it: DEST_PROTECT first (every protected address and
/// operator decision, so nothing protected is blocked even for a moment), then the listed
/// names (`blocklist.resolved.names`; none when it is off, so a kept map from an earlier run
/// stops acting). Returns how many names are listed.
pub fn install_resolved(config: &Config, pin_dir: &std::path::Path) -> anyhow::Result<usize> {
    use sensor_kernel::lists::resolved::ResolvedMaps;
    protect_resolved(config, pin_dir)?;
    let section = &config.blocklist.resolved;
    let mut maps = ResolvedMaps::open_pinned(pin_dir)?;
    let listings = if section.enabled {
        let mut l = section.listings();
        // Names listed on a verdict by an earlier run (kept maps) stay until their expiry: the
        // worker takes them over; the feeds' are listed again by the worker from the files.
        l.extend(kept_verdicts(&maps)?);
        l
    } else {
        Vec::new()
    };
    Ok(maps.set_names(&listings)?)
}

/// The unexpired verdict listings in BAD_NAMES (whole names only: a name cut to the text
/// BAD_NAMES keeps cannot be listed again and is left to lapse).
fn kept_verdicts(
    maps: &sensor_kernel::lists::resolved::ResolvedMaps,
) -> anyhow::Result<Vec<sensor_kernel::lists::resolved::Listing>> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
    Ok(maps
        .names()?
        .into_iter()
        .filter(|n| {
            n.sources.contains(&"verdict") && n.expires_unix > now && !n.name.ends_with('…')
        })
        .map(|n| sensor_kernel::lists::resolved::Listing {
            name: n.name,
            expires_unix: n.expires_unix,
            exact: n.exact,
            source: sensor_common::resolved::NAME_FROM_VERDICT,
        })
        .collect())
}

/// Starts blocking by resolution's worker (names from the feeds and the verdicts, the answer
/// fallback) and retro-hunt, when either is on: blocking needs `blocklist.resolved.enabled`;
/// retro-hunt needs `pdns.retro_hunt`, the passive DNS store and an alerter. `None` when neither
/// runs.
pub fn start_resolved_intel(
    config: &Config,
    pin_dir: &std::path::Path,
    intel: &sensor_intel::setup::Intel,
    hunter: Option<sensor_outputs::sink::pdns::Hunter>,
    alerts: Option<std::sync::Arc<dyn sensor_intel::enrich::HitSink>>,
) -> anyhow::Result<Option<std::sync::Arc<ResolvedIntel>>> {
    use sensor_blocklist::resolved::intel::{Retro, Settings};
    let section = &config.blocklist.resolved;
    let retro = match (config.pdns.retro_hunt, hunter, alerts) {
        (true, Some(hunter), Some(alerts)) => Some(Retro {
            hunter,
            alerts,
            window_secs: i64::from(config.pdns.retention_days) * 86_400,
        }),
        (true, None, _) if config.capture.responses => {
            tracing::info!("retro-hunt is off: the passive DNS store is off (`pdns.enabled`)");
            None
        }
        (true, Some(_), None) => {
            tracing::info!(
                "retro-hunt is off: no alert channel (`[alerts]`) to send its alerts to"
            );
            None
        }
        _ => None,
    };
    if !section.enabled && retro.is_none() {
        return Ok(None);
    }
    let maps = if section.enabled {
        Some(sensor_kernel::lists::resolved::ResolvedMaps::open_pinned(
            pin_dir,
        )?)
    } else {
        None
    };
    let hunting = retro.is_some();
    let (worker, listed) = ResolvedIntel::start(Settings {
        maps,
        min_secs: section.min_secs,
        max_secs: section.max_secs,
        from_feeds: section.feeds,
        from_verdicts: section.verdicts,
        verdict_secs: section.verdict_secs,
        operator: if section.enabled {
            section.listings()
        } else {
            Vec::new()
        },
        feeds: intel.feeds.clone(),
        verdicts: intel.verdicts.clone(),
        unlisted: UnlistedFileAt::new(&config.blocklist.policy.state_dir),
        retro,
        runtime: tokio::runtime::Handle::current(),
    })?;
    tracing::info!(
        blocking = section.enabled,
        retro_hunt = hunting,
        listed,
        "blocking by resolution: names from the config, the feeds and the verdicts"
    );
    Ok(Some(std::sync::Arc::new(worker)))
}

/// DEST_PROTECT as the rules have it now (protected addresses, operator decisions), removing
/// the destinations it covers and lapsed ones.
fn protect_resolved(config: &Config, pin_dir: &std::path::Path) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let rules =
        sensor_blocklist::publish::Rules::current(&config.blocklist, &config.rule_inputs(), now)?;
    sensor_blocklist::resolved::sync(pin_dir, &rules.never.hard_holes(), now.max(0) as u64)?;
    Ok(())
}

/// The kernel lists of a private program that nobody else sees (`sensor replay`): the same
/// entries [`install`] and [`install_resolved`] put in the daemon's maps (client allowlist,
/// the stored blocklist re-planned with today's rules plus `blocklist.entries`, the protected
/// addresses and listed names of blocking by resolution), computed without writing anything:
/// no state, EDL or export file, no state lock. Returns how many entries each list holds.
pub fn install_private(
    config: &Config,
    allow: &mut PrefixMap<AllowValue>,
    block: &mut PrefixMap<BlockValue>,
    resolved: &mut sensor_kernel::lists::resolved::ResolvedMaps,
) -> anyhow::Result<(usize, usize, usize)> {
    use sensor_blocklist::{publish, store::Store};
    let allowed = config.client_allow();
    allow.replace_all(&allowed)?;
    let now = time::OffsetDateTime::now_utc();
    let section = &config.blocklist;
    let rules = publish::Rules::current(section, &config.rule_inputs(), now.unix_timestamp())?;
    // Read only: the state file is replaced by rename, so a read never sees half of one.
    let store = Store::load(&section.policy.state_dir)?;
    let entries = store
        .plan(now, &[], &rules.never, &section.policy, true)
        .map(|p| p.kernel_entries())
        .unwrap_or_else(|_| store.entries().map(|e| e.kernel_entry()).collect());
    let (always, _) = publish::static_entries(section, &rules.never);
    let installed = sensor_kernel::lists::blocklist::install_into(block, &entries, &always)?;
    resolved.set_protected(&rules.never.hard_holes())?;
    let names = if section.resolved.enabled {
        resolved.set_names(&section.resolved.listings())?
    } else {
        0
    };
    Ok((allowed.len(), installed.total, names))
}

/// Re-reads the config file on SIGHUP and installs its kernel lists.
pub struct KernelLists {
    files: [PathBuf; 1],
    /// The config the daemon started with: other keys that changed are reported as needing a
    /// restart rather than half-applied.
    started_with: Config,
    maps: Mutex<(PrefixMap<AllowValue>, PrefixMap<BlockValue>)>,
    /// Where the program's maps are pinned (blocking by resolution's are opened there).
    pin_dir: PathBuf,
    /// The rules the sweep, the nightly run and the EDL check apply: updated with what was
    /// installed, so they keep it rather than the start's.
    live: sensor_blocklist::daemon::Live,
    /// Blocking by resolution's worker, which owns the names when it runs (the operator's are
    /// handed to it, so the feeds' and the verdicts' stay listed).
    resolved: Option<std::sync::Arc<ResolvedIntel>>,
    pub counters: ReloadCounters,
}

impl std::fmt::Debug for KernelLists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelLists")
            .field("file", &self.files[0])
            .finish_non_exhaustive()
    }
}

impl KernelLists {
    pub fn new(
        config_file: PathBuf,
        started_with: Config,
        allow: PrefixMap<AllowValue>,
        block: PrefixMap<BlockValue>,
        live: sensor_blocklist::daemon::Live,
        resolved: Option<std::sync::Arc<ResolvedIntel>>,
    ) -> Self {
        Self {
            pin_dir: started_with.pin_dir(),
            files: [config_file],
            started_with,
            maps: Mutex::new((allow, block)),
            live,
            resolved,
            counters: ReloadCounters::default(),
        }
    }

    fn apply(&self) -> Result<usize, ReloadError> {
        let new = Config::from_file(&self.files[0]).map_err(|e| ReloadError::Other(Box::new(e)))?;
        let mut rest = new.clone();
        rest.filter = self.started_with.filter.clone();
        rest.blocklist.entries = self.started_with.blocklist.entries.clone();
        // `[blocklist.export]` is applied by `install` below too.
        rest.blocklist.export = self.started_with.blocklist.export.clone();
        // `--interface` replaces the file's interfaces at start; that is not a change.
        rest.capture.interfaces = self.started_with.capture.interfaces.clone();
        rest.blocklist.resolved.names = self.started_with.blocklist.resolved.names.clone();
        if rest != self.started_with {
            tracing::warn!(
                file = %self.files[0].display(),
                "the config changed beyond filter.client_allow and blocklist.entries; those other changes take effect at the next start"
            );
        }
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        let (allow, block) = &mut *maps;
        let (a, b) = install(&new, allow, block).map_err(|e| ReloadError::Other(e.into()))?;
        // `blocklist.resolved.names` is reloaded too (the bounds and the switch need a start:
        // they are baked into the program).
        let mut names_cfg = new.clone();
        names_cfg.blocklist.resolved.enabled = self.started_with.blocklist.resolved.enabled;
        let n = match &self.resolved {
            Some(worker) if names_cfg.blocklist.resolved.enabled => {
                protect_resolved(&names_cfg, &self.pin_dir)
                    .map_err(|e| ReloadError::Other(e.into()))?;
                worker.operator(names_cfg.blocklist.resolved.listings());
                names_cfg.blocklist.resolved.names.len()
            }
            _ => install_resolved(&names_cfg, &self.pin_dir)
                .map_err(|e| ReloadError::Other(e.into()))?,
        };
        let (entries, rules) = (new.blocklist.entries.clone(), new.rule_inputs());
        self.live.rcu(|ctx| {
            let mut ctx = (**ctx).clone();
            ctx.blocklist.entries = entries.clone();
            ctx.rules.client_allow = rules.client_allow.clone();
            ctx
        });
        tracing::info!(
            client_allow = a,
            blocklist = b,
            resolved_names = n,
            "kernel lists reloaded from the config"
        );
        Ok(a + b)
    }
}

impl Reload for KernelLists {
    fn name(&self) -> &str {
        "kernel-lists"
    }
    fn files(&self) -> &[PathBuf] {
        &self.files
    }
    /// Only on SIGHUP: a config file is edited in several steps, and applying a half-edited
    /// allowlist would be worse than waiting for the operator's reload.
    fn poll_interval(&self) -> Option<Duration> {
        None
    }
    fn reload(&self) -> Result<usize, ReloadError> {
        let started = std::time::Instant::now();
        let result = self.apply();
        self.counters.record("kernel-lists", started, &result);
        result
    }
}
