//! Operator commands run as the owner of the blocklist's state directory.
//!
//! The packaged daemon runs as `dns-sensor` and owns `/var/lib/dns-sensor`. A `sudo sensor
//! blocklist unblock ...` that wrote there as root would leave root-owned state the daemon can
//! no longer replace, and would follow whatever a compromised service user had planted there
//! with root's rights. So when root runs a command that writes the state, it first becomes the
//! directory's owner (user, group, no supplementary groups) and writes as that user. It needs
//! no capability afterwards: the pinned maps belong to the same user, and map updates through
//! pins need only file access (kernels 6.5 and newer).

use std::{os::unix::fs::MetadataExt as _, path::Path, sync::OnceLock};

use anyhow::Context as _;
use nix::unistd::{Gid, Uid, User};

/// Who typed the command, taken before any switch: the audit records the person, not the
/// service user the command then ran as.
static INVOKER: OnceLock<String> = OnceLock::new();

/// The login behind sudo when there is one, else the user name of the real uid.
fn login() -> String {
    if let Ok(u) = std::env::var("SUDO_USER")
        && !u.is_empty()
    {
        return u;
    }
    let uid = nix::unistd::getuid();
    User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| u.name)
}

/// Who ran the command, for the audit record.
pub fn invoker() -> String {
    INVOKER.get_or_init(login).clone()
}

/// Run as root over a state directory someone else owns: become that owner. Otherwise (not
/// root, a root-owned or missing directory) nothing changes. Call before any thread starts.
pub fn become_owner(state_dir: &Path) -> anyhow::Result<()> {
    let _ = invoker();
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let meta = match std::fs::symlink_metadata(state_dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "config key `blocklist.policy.state_dir`: {}",
                    state_dir.display()
                )
            });
        }
    };
    if !meta.is_dir() {
        anyhow::bail!(
            "config key `blocklist.policy.state_dir`: {} is not a directory (a symlink is refused)",
            state_dir.display()
        );
    }
    if meta.uid() == 0 {
        return Ok(());
    }
    let (uid, gid) = (Uid::from_raw(meta.uid()), Gid::from_raw(meta.gid()));
    let name = User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| u.name);
    // Groups first (they need root), then the uid, which gives up root for good: real,
    // effective and saved, so nothing can switch back. glibc applies each to every thread.
    nix::unistd::setgroups(&[gid])
        .and_then(|()| nix::unistd::setresgid(gid, gid, gid))
        .and_then(|()| nix::unistd::setresuid(uid, uid, uid))
        .with_context(|| {
            format!(
                "becoming {name}, the owner of {} (run the command as that user)",
                state_dir.display()
            )
        })?;
    tracing::info!(
        user = %name,
        state_dir = %state_dir.display(),
        "running as the owner of the state directory"
    );
    Ok(())
}
