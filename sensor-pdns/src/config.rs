//! `[pdns]`: the passive DNS store.

use std::path::PathBuf;

use sensor_model::error::ConfigError;
use serde::Deserialize;

use crate::store::Retention;

/// `[pdns]`: where the store lives and how long it keeps what it saw.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PdnsSection {
    /// Keep the store (name → answers → clients, with first/last seen and daily counts).
    pub enabled: bool,
    /// The SQLite file; its directory also holds the write-ahead log (`-wal`, `-shm`).
    pub path: PathBuf,
    /// Days kept, today included; older days are dropped by the daily prune.
    pub retention_days: u32,
    /// Retro-hunt: when a name turns malicious later (a domain feed gains it, a verdict says
    /// so, the operator lists it in `blocklist.resolved.names`), every client the store saw
    /// resolving it within `retention_days` gets a backdated alert (needs `[alerts]`).
    pub retro_hunt: bool,
}

impl Default for PdnsSection {
    fn default() -> Self {
        Self {
            enabled: true,
            path: PathBuf::from(sensor_model::paths::PDNS_STORE),
            retention_days: 30,
            retro_hunt: true,
        }
    }
}

impl PdnsSection {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "pdns.path",
                message: "must not be empty".into(),
            });
        }
        self.retention()?;
        Ok(())
    }

    pub fn retention(&self) -> Result<Retention, ConfigError> {
        Retention::days(self.retention_days).ok_or_else(|| ConfigError::Invalid {
            key: "pdns.retention_days",
            message: format!(
                "{} is not between 1 and {}",
                self.retention_days,
                Retention::MAX_DAYS
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_retention_are_refused() {
        let e = toml::from_str::<PdnsSection>("retention = 3").unwrap_err();
        assert!(e.to_string().contains("retention"), "{e}");
        let s: PdnsSection = toml::from_str("retention_days = 0").unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("pdns.retention_days"), "{e}");
        let s: PdnsSection = toml::from_str("").unwrap();
        assert_eq!(s, PdnsSection::default());
        s.validate().unwrap();
    }
}
