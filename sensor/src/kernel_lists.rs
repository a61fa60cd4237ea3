//! The kernel's CLIENT_ALLOW and BLOCKLIST as the config file has them, installed at start and
//! again on SIGHUP (`systemctl reload`), in place: the program stays attached, entries that stay
//! keep their hit counters and are never missing for a moment (see `PrefixMap::replace_all`).

use std::{path::PathBuf, sync::Mutex, time::Duration};

use sensor_common::{AllowValue, BlockValue};

use crate::config::Config;

use sensor_kernel::lists::PrefixMap;

use sensor_model::reload::{Reload, ReloadCounters, ReloadError};

/// Installs the config's `filter.client_allow`, and `blocklist.entries` beside the stored
/// nightly list (entries not yet expired). Returns how many entries each map holds.
pub fn install(
    config: &Config,
    allow: &mut PrefixMap<AllowValue>,
    block: &mut PrefixMap<BlockValue>,
) -> Result<(usize, usize), sensor_kernel::lists::PrefixError> {
    let allowed = config.client_allow();
    allow.replace_all(&allowed)?;
    let blocked = match sensor_blocklist::daemon::install_stored(&config.blocklist, block) {
        Some(report) => report.total,
        None => {
            let static_entries = config.blocklist();
            block.replace_all(&static_entries)?;
            static_entries.len()
        }
    };
    Ok((allowed.len(), blocked))
}

/// Re-reads the config file on SIGHUP and installs its kernel lists.
pub struct KernelLists {
    files: [PathBuf; 1],
    /// The config the daemon started with: other keys that changed are reported as needing a
    /// restart rather than half-applied.
    started_with: Config,
    maps: Mutex<(PrefixMap<AllowValue>, PrefixMap<BlockValue>)>,
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
    ) -> Self {
        Self {
            files: [config_file],
            started_with,
            maps: Mutex::new((allow, block)),
            counters: ReloadCounters::default(),
        }
    }

    fn apply(&self) -> Result<usize, ReloadError> {
        let new = Config::from_file(&self.files[0]).map_err(|e| ReloadError::Other(Box::new(e)))?;
        let mut rest = new.clone();
        rest.filter = self.started_with.filter.clone();
        rest.blocklist.entries = self.started_with.blocklist.entries.clone();
        // `--interface` replaces the file's interfaces at start; that is not a change.
        rest.capture.interfaces = self.started_with.capture.interfaces.clone();
        if rest != self.started_with {
            tracing::warn!(
                file = %self.files[0].display(),
                "the config changed beyond filter.client_allow and blocklist.entries; those other changes take effect at the next start"
            );
        }
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        let (allow, block) = &mut *maps;
        let (a, b) = install(&new, allow, block).map_err(|e| ReloadError::Other(Box::new(e)))?;
        tracing::info!(
            client_allow = a,
            blocklist = b,
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
