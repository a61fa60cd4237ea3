//! The operator's name-level undo for blocking by resolution: `sensor blocklist unlist NAME`
//! takes a listed name off BAD_NAMES (with the destinations blocked for it) and keeps it off,
//! whichever source lists it again (a feed, a verdict, the config), until the decision lapses or
//! `sensor blocklist relist NAME` revokes it.
//!
//! Kept in `<state_dir>/resolved-unlisted.json` beside the address overrides; the daemon
//! re-reads it when it changes, and every change is appended to the same audit log.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use crate::overrides::OverridesError;

const FILE: &str = "resolved-unlisted.json";

/// One decision about a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unlisted {
    /// Lower case, no trailing dot: the name as BAD_NAMES lists it.
    pub name: String,
    /// Unix seconds when it lapses; `None` = until revoked.
    pub until: Option<i64>,
    pub reason: String,
    pub by: String,
    pub at: i64,
}

impl Unlisted {
    pub fn active(&self, now: i64) -> bool {
        self.until.is_none_or(|u| u > now)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnlistedFile {
    version: u32,
    unlisted: Vec<Unlisted>,
}

/// The decisions file of a state directory.
#[derive(Debug, Clone)]
pub struct UnlistedFileAt {
    path: PathBuf,
}

impl UnlistedFileAt {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// When the file last changed (`None`: there is none), so the daemon re-reads only then.
    pub fn modified(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
    }

    /// Every decision (a missing file is none).
    pub fn load(&self) -> Result<Vec<Unlisted>, OverridesError> {
        let io = |source| OverridesError::Io {
            path: self.path.clone(),
            source,
        };
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice::<UnlistedFile>(&bytes)
                .map(|f| f.unlisted)
                .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io(e)),
        }
    }

    /// Writes the decisions atomically.
    pub fn save(&self, list: &[Unlisted]) -> Result<(), OverridesError> {
        let io = |source| OverridesError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let f = UnlistedFile {
            version: 1,
            unlisted: list.to_vec(),
        };
        let text = serde_json::to_vec_pretty(&f).map_err(|e| io(std::io::Error::other(e)))?;
        sensor_model::files::write_atomic(&self.path, &text).map_err(io)
    }
}

/// What `unlist` or `relist` did.
#[derive(Debug, Clone, Serialize)]
pub struct NameOutcome {
    pub action: &'static str,
    pub name: String,
    pub until: Option<i64>,
    pub reason: String,
    pub by: String,
    /// Taken off the running sensor's BAD_NAMES now (`unlist`; 0 when it was not listed or no
    /// sensor pinned its maps).
    pub names_removed: usize,
    /// Destinations blocked for the name, unblocked now.
    pub destinations_removed: usize,
}

/// Why a name decision was refused.
#[derive(Debug, thiserror::Error)]
pub enum NameDecisionError {
    #[error("--reason: say why (it goes into the audit log)")]
    NoReason,
    #[error("{0:?} is not a DNS name")]
    BadName(String),
    #[error("{0} has no unlist decision to revoke (see `sensor blocklist resolved`)")]
    NothingToRelist(String),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error(transparent)]
    File(#[from] OverridesError),
    #[error(transparent)]
    Maps(#[from] sensor_kernel::lists::resolved::ResolvedError),
}

/// What both commands start with: a reason, the name's canonical form, the state lock, the
/// decisions in force.
fn begin<'r>(
    state_dir: &Path,
    name: &str,
    reason: &'r str,
) -> Result<
    (
        &'r str,
        String,
        crate::lock::StateLock,
        UnlistedFileAt,
        Vec<Unlisted>,
    ),
    NameDecisionError,
> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(NameDecisionError::NoReason);
    }
    let lock = crate::lock::StateLock::acquire(state_dir, crate::publish::LOCK_WAIT)?;
    let file = UnlistedFileAt::new(state_dir);
    let list = file.load()?;
    Ok((reason, canonical(name), lock, file, list))
}

/// `sensor blocklist unlist NAME`: records the decision (audited), then takes the name and
/// the destinations blocked for it out of the running sensor's maps at once; the daemon keeps
/// it out of every re-listing until `until` (or for good).
pub fn unlist(
    state_dir: &Path,
    pin_dir: &Path,
    name: &str,
    until: Option<i64>,
    reason: &str,
    by: &str,
    now: i64,
) -> Result<NameOutcome, NameDecisionError> {
    let (reason, name, _lock, file, mut list) = begin(state_dir, name, reason)?;
    if sensor_kernel::lists::resolved::wire_form(&name).is_none() {
        return Err(NameDecisionError::BadName(name));
    }
    list.retain(|u| u.name != name);
    let d = Unlisted {
        name: name.clone(),
        until,
        reason: reason.to_owned(),
        by: by.to_owned(),
        at: now,
    };
    list.push(d);
    // The decision first: a daemon re-listing in between reads it before it lists again.
    file.save(&list)?;
    crate::overrides::audit(
        state_dir,
        &serde_json::json!({"at": now, "by": by, "action": "unlist", "name": name, "until": until, "reason": reason}),
    )?;
    let removed = if pin_dir.join(sensor_common::map_names::BAD_NAMES).exists() {
        sensor_kernel::lists::resolved::ResolvedMaps::open_pinned(pin_dir)?.remove_name(&name)?
    } else {
        Default::default()
    };
    Ok(NameOutcome {
        action: "unlist",
        name,
        until,
        reason: reason.to_owned(),
        by: by.to_owned(),
        names_removed: removed.names,
        destinations_removed: removed.destinations,
    })
}

/// `sensor blocklist relist NAME`: revokes the decision; the daemon lists the name again if
/// a source still lists it (within half a second).
pub fn relist(
    state_dir: &Path,
    name: &str,
    reason: &str,
    by: &str,
    now: i64,
) -> Result<NameOutcome, NameDecisionError> {
    let (reason, name, _lock, file, mut list) = begin(state_dir, name, reason)?;
    let before = list.len();
    list.retain(|u| u.name != name);
    if list.len() == before {
        return Err(NameDecisionError::NothingToRelist(name));
    }
    file.save(&list)?;
    crate::overrides::audit(
        state_dir,
        &serde_json::json!({"at": now, "by": by, "action": "relist", "name": name, "reason": reason}),
    )?;
    Ok(NameOutcome {
        action: "relist",
        name,
        until: None,
        reason: reason.to_owned(),
        by: by.to_owned(),
        names_removed: 0,
        destinations_removed: 0,
    })
}

/// The canonical form names are compared in.
pub fn canonical(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_round_trip_and_lapse() {
        let dir = tempfile::tempdir().unwrap();
        let f = UnlistedFileAt::new(dir.path());
        assert!(f.load().unwrap().is_empty());
        assert!(f.modified().is_none());
        let d = Unlisted {
            name: canonical("Evil.Example."),
            until: Some(100),
            reason: "false positive".into(),
            by: "alice".into(),
            at: 50,
        };
        f.save(std::slice::from_ref(&d)).unwrap();
        assert_eq!(f.load().unwrap(), std::slice::from_ref(&d));
        assert_eq!(d.name, "evil.example");
        assert!(d.active(99));
        assert!(!d.active(100));
    }
}
