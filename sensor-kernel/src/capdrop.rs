//! Least privilege at run time: once the program is loaded and attached, its maps created and
//! pinned, the daemon gives up the capabilities that did it.
//!
//! What it still does afterwards needs none of them on the kernels we support (6.5 and newer
//! moved the `unprivileged_bpf_disabled` check into map creation and program load):
//! - map updates (SIGHUP, the nightly install, the minute sweep, operator unblocks) go through
//!   file descriptors it holds or opens from its own pins, which bpffs checks like files;
//! - the ring buffer is an mmap of a held descriptor, statistics are lookups;
//! - closing the link's descriptor detaches (fail-open), unlinking its own pins is file access.
//!
//! What it keeps, only when configured: CAP_NET_ADMIN for the nft and ipset exports (their
//! child processes get it as an ambient capability) and CAP_NET_BIND_SERVICE for a listener
//! on a port below 1024.
//!
//! Capabilities belong to threads. The drop happens on the thread that started the daemon
//! before any other thread exists (the runtime is single-threaded, the server, writer and Kafka
//! threads start later and inherit the reduced sets); [`drop_after_start`] then reads every
//! thread's sets from `/proc` and fails if one still holds more than was kept.

use std::collections::HashSet;

use caps::{CapSet, Capability, CapsHashSet};

use crate::privileges::status_mask as mask;

/// Why the capabilities could not be dropped: the daemon does not run with them.
#[derive(Debug, thiserror::Error)]
pub enum CapDropError {
    #[error("dropping capabilities ({step}): {source}")]
    Caps {
        step: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("dropping capabilities: no_new_privs: {0}")]
    NoNewPrivs(#[source] std::io::Error),
    #[error(
        "dropping capabilities: thread {tid} still has effective {effective:#x} / permitted {permitted:#x} (kept {kept:#x})"
    )]
    ThreadKept {
        tid: String,
        effective: u64,
        permitted: u64,
        kept: u64,
    },
}

/// What is kept after the drop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    /// CAP_NET_ADMIN, for child processes that change this host's packet filter.
    pub net_admin: bool,
    /// CAP_NET_BIND_SERVICE, for a listener on a port below 1024.
    pub net_bind_service: bool,
}

impl Keep {
    fn set(self) -> CapsHashSet {
        let mut s = HashSet::new();
        if self.net_admin {
            s.insert(Capability::CAP_NET_ADMIN);
        }
        if self.net_bind_service {
            s.insert(Capability::CAP_NET_BIND_SERVICE);
        }
        s
    }

    fn mask(self) -> u64 {
        self.set().iter().fold(0, |m, c| m | c.bitmask())
    }
}

/// The sets after the drop, as `/proc/self/status` shows them (hex masks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub effective: u64,
    pub permitted: u64,
    pub ambient: u64,
    pub bounding: u64,
    /// Threads checked.
    pub threads: usize,
}

fn step(step: &'static str) -> impl FnOnce(caps::errors::CapsError) -> CapDropError {
    move |source| CapDropError::Caps { step, source }
}

/// Drops every capability but `keep` from this thread, sets no_new_privs (so no program it
/// runs can gain any back), and checks every thread of the process.
pub fn drop_after_start(keep: Keep) -> Result<Dropped, CapDropError> {
    let kept = keep.set();
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes no pointers and only sets a flag on
    // this thread (inherited by threads and children created later).
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(CapDropError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    // The bounding set limits what an exec can grant (root runs nft with full capabilities
    // otherwise); lowering it needs CAP_SETPCAP, which root has and the service user does not
    // (systemd's CapabilityBoundingSet= already limits it there).
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::read(None, CapSet::Bounding).map_err(step("read bounding"))? {
            if !kept.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap).map_err(step("bounding"))?;
            }
        }
    }
    let permitted = caps::read(None, CapSet::Permitted).map_err(step("read permitted"))?;
    let inheritable = caps::read(None, CapSet::Inheritable).map_err(step("read inheritable"))?;
    let keep_now: CapsHashSet = kept.intersection(&permitted).copied().collect();
    // Ambient first (it may hold only what is permitted and inheritable), then inheritable,
    // effective, and permitted last: effective must stay within permitted at every call.
    let ambient: CapsHashSet = caps::read(None, CapSet::Ambient)
        .map_err(step("read ambient"))?
        .intersection(&keep_now)
        .copied()
        .collect();
    caps::clear(None, CapSet::Ambient).map_err(step("ambient"))?;
    let inh: CapsHashSet = keep_now.intersection(&inheritable).copied().collect();
    caps::set(None, CapSet::Inheritable, &inh).map_err(step("inheritable"))?;
    caps::set(None, CapSet::Effective, &keep_now).map_err(step("effective"))?;
    caps::set(None, CapSet::Permitted, &keep_now).map_err(step("permitted"))?;
    // Children of a non-root service get the kept capability only as an ambient one.
    for cap in &ambient {
        caps::raise(None, CapSet::Ambient, *cap).map_err(step("raise ambient"))?;
    }
    check_threads(keep.mask())
}

/// Reads every thread's sets: none may hold more than `kept`.
fn check_threads(kept: u64) -> Result<Dropped, CapDropError> {
    let mut threads = 0;
    let tasks = std::fs::read_dir("/proc/self/task").into_iter().flatten();
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            // A thread that ended meanwhile.
            continue;
        };
        let (effective, permitted) = (mask(&status, "CapEff:"), mask(&status, "CapPrm:"));
        if (effective | permitted) & !kept != 0 {
            return Err(CapDropError::ThreadKept {
                tid: task.file_name().to_string_lossy().into_owned(),
                effective,
                permitted,
                kept,
            });
        }
        threads += 1;
    }
    // The process's own line: its first thread, the one that dropped.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    Ok(Dropped {
        effective: mask(&status, "CapEff:"),
        permitted: mask(&status, "CapPrm:"),
        ambient: mask(&status, "CapAmb:"),
        bounding: mask(&status, "CapBnd:"),
        threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_read_from_the_status_lines() {
        let status = "Name:\tsensor\nCapInh:\t0000000000000000\nCapPrm:\t0000000000001000\n\
                      CapEff:\t0000000000001000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n";
        assert_eq!(mask(status, "CapEff:"), 1 << 12);
        assert_eq!(mask(status, "CapBnd:"), 0x1ff_ffff_ffff);
        assert_eq!(mask(status, "CapAmb:"), 0);
    }

    #[test]
    fn keep_masks_name_the_capabilities() {
        assert_eq!(Keep::default().mask(), 0);
        let k = Keep {
            net_admin: true,
            net_bind_service: true,
        };
        assert_eq!(k.mask(), (1 << 12) | (1 << 10));
    }
}
