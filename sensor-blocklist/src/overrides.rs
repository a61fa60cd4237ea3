//! The operator's decisions, which outrank every list: `unblock` (take an address or range off
//! every list now, and keep it off for a while) and `allow` (never list it, until revoked).
//!
//! Kept in `<state_dir>/overrides.json` beside the store, so the nightly run, the daemon's
//! installs and the operator commands all read the same file; every change is also appended to
//! `<state_dir>/audit.jsonl` (when, who, what, why), which is never rewritten.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use sensor_kernel::lists::canonical_net;

const FILE: &str = "overrides.json";
const AUDIT_FILE: &str = "audit.jsonl";
const VERSION: u32 = 1;

/// What an override does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Off every list until `until` (then intel may list it again).
    Unblock,
    /// Never listed, until revoked.
    Allow,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Unblock => "unblock",
            Kind::Allow => "allow",
        }
    }
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub net: IpNet,
    pub kind: Kind,
    /// Unix seconds when it lapses; `None` = until revoked.
    pub until: Option<i64>,
    pub reason: String,
    /// Who made it (the login behind sudo when there is one).
    pub by: String,
    /// When (Unix seconds).
    pub at: i64,
}

impl Override {
    pub fn active(&self, now: i64) -> bool {
        self.until.is_none_or(|u| u > now)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OverridesError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid overrides file ({message}); fix or remove it")]
    Parse { path: PathBuf, message: String },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverridesFile {
    version: u32,
    overrides: Vec<Override>,
}

/// The operator's overrides of one state directory.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    dir: PathBuf,
    list: Vec<Override>,
}

impl Overrides {
    /// Reads `<state_dir>/overrides.json`; a missing file is none.
    pub fn load(state_dir: &Path) -> Result<Self, OverridesError> {
        let path = state_dir.join(FILE);
        let list = match std::fs::read(&path) {
            Ok(bytes) => {
                let f: OverridesFile =
                    serde_json::from_slice(&bytes).map_err(|e| OverridesError::Parse {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                if f.version != VERSION {
                    return Err(OverridesError::Parse {
                        path,
                        message: format!("unknown version {}", f.version),
                    });
                }
                f.overrides
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(OverridesError::Io { path, source }),
        };
        Ok(Self {
            dir: state_dir.to_owned(),
            list,
        })
    }

    pub fn all(&self) -> &[Override] {
        &self.list
    }

    /// The networks of the overrides in force at `now`.
    pub fn active_nets(&self, now: i64) -> impl Iterator<Item = (&IpNet, Kind)> {
        self.list
            .iter()
            .filter(move |o| o.active(now))
            .map(|o| (&o.net, o.kind))
    }

    /// Adds (or replaces: one override per network and kind) a decision, saves, and audits it.
    pub fn add(&mut self, o: Override) -> Result<(), OverridesError> {
        let net = canonical_net(&o.net.trunc());
        let o = Override { net, ..o };
        self.list.retain(|x| !(x.net == net && x.kind == o.kind));
        self.list.push(o.clone());
        self.list
            .sort_by(|a, b| (a.net, a.kind.name()).cmp(&(b.net, b.kind.name())));
        self.save()?;
        self.audit(&serde_json::json!({
            "action": o.kind.name(), "net": o.net.to_string(), "until": o.until,
            "reason": o.reason, "by": o.by, "at": o.at,
        }))
    }

    /// Removes the overrides of exactly `net` (both kinds); returns what was removed.
    pub fn revoke(
        &mut self,
        net: &IpNet,
        reason: &str,
        by: &str,
        at: i64,
    ) -> Result<Vec<Override>, OverridesError> {
        let net = canonical_net(&net.trunc());
        let (gone, kept): (Vec<_>, Vec<_>) = self.list.drain(..).partition(|o| o.net == net);
        self.list = kept;
        if !gone.is_empty() {
            self.save()?;
            self.audit(&serde_json::json!({
                "action": "revoke", "net": net.to_string(),
                "revoked": gone.iter().map(|o| o.kind.name()).collect::<Vec<_>>(),
                "reason": reason, "by": by, "at": at,
            }))?;
        }
        Ok(gone)
    }

    /// Drops unblocks that lapsed more than a day ago (kept that long so `list` shows what just
    /// ended). Returns whether anything was dropped; the caller saves.
    pub fn prune(&mut self, now: i64) -> bool {
        let before = self.list.len();
        self.list
            .retain(|o| o.until.is_none_or(|u| u + 86_400 > now));
        before != self.list.len()
    }

    /// Writes the file atomically.
    pub fn save(&self) -> Result<(), OverridesError> {
        let path = self.dir.join(FILE);
        let io = |source| OverridesError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let f = OverridesFile {
            version: VERSION,
            overrides: self.list.clone(),
        };
        let text = serde_json::to_vec_pretty(&f).map_err(|e| io(std::io::Error::other(e)))?;
        sensor_model::files::write_atomic(&path, &text).map_err(io)
    }

    /// Appends one record to the audit log and syncs it: the record of a decision must outlive
    /// a crash right after it.
    pub fn audit(&self, record: &serde_json::Value) -> Result<(), OverridesError> {
        audit(&self.dir, record)
    }
}

/// Appends one JSON line to `<state_dir>/audit.jsonl` and syncs it.
pub fn audit(state_dir: &Path, record: &serde_json::Value) -> Result<(), OverridesError> {
    let path = state_dir.join(AUDIT_FILE);
    let io = |source| OverridesError::Io {
        path: path.clone(),
        source,
    };
    let mut f = sensor_model::files::open_append(&path).map_err(io)?;
    let mut line = record.to_string();
    line.push('\n');
    f.write_all(line.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(net: &str, kind: Kind, until: Option<i64>) -> Override {
        Override {
            net: net
                .parse()
                .unwrap_or_else(|_| IpNet::from(net.parse::<std::net::IpAddr>().unwrap())),
            kind,
            until,
            reason: "ticket 42".into(),
            by: "alice".into(),
            at: 1000,
        }
    }

    #[test]
    fn add_revoke_persist_and_audit() {
        let dir = tempfile::tempdir().unwrap();
        let mut ov = Overrides::load(dir.path()).unwrap();
        ov.add(o("198.51.100.7", Kind::Unblock, Some(2000)))
            .unwrap();
        ov.add(o("198.51.100.0/24", Kind::Allow, None)).unwrap();
        // Replacing the same network and kind keeps one.
        ov.add(o("198.51.100.7/32", Kind::Unblock, Some(3000)))
            .unwrap();
        let again = Overrides::load(dir.path()).unwrap();
        assert_eq!(again.all().len(), 2);
        let active: Vec<_> = again
            .active_nets(2500)
            .map(|(n, k)| (n.to_string(), k))
            .collect();
        assert_eq!(
            active,
            [
                ("198.51.100.0/24".to_string(), Kind::Allow),
                ("198.51.100.7/32".to_string(), Kind::Unblock)
            ]
        );
        assert_eq!(again.active_nets(3000).count(), 1, "the unblock lapsed");
        let mut again = again;
        let gone = again
            .revoke(&"198.51.100.0/24".parse().unwrap(), "done", "bob", 4000)
            .unwrap();
        assert_eq!(gone.len(), 1);
        let audit = std::fs::read_to_string(dir.path().join(AUDIT_FILE)).unwrap();
        let lines: Vec<serde_json::Value> = audit
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[3]["action"], "revoke");
        assert_eq!(lines[3]["by"], "bob");
        assert_eq!(lines[0]["reason"], "ticket 42");
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "{not json").unwrap();
        let e = Overrides::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("overrides.json") && !e.contains('\n'), "{e}");
    }
}
