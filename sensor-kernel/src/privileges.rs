//! Checks the capabilities the sensor needs before it touches the kernel, so a missing one is
//! one clear line instead of an EPERM or a verifier log from deep inside a load.
//!
//! The set is the one found by test (tests/service.rs runs the sensor as a non-root user with
//! exactly these, then without each one), and it is the set packaging/dns-sensor.service grants.
//! What the kernel (6.18) says without each, had this check not stopped the sensor first:
//! - CAP_BPF: map creation fails with EPERM (LPM tries are not an unprivileged map type).
//! - CAP_PERFMON: BPF_PROG_LOAD fails with EACCES, the verifier refusing packet-pointer
//!   arithmetic: "pointer arithmetic with it prohibited for !root".
//! - CAP_NET_ADMIN: BPF_PROG_LOAD fails with EPERM (XDP is a network-admin program type).

/// Capability numbers from linux/capability.h.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// One capability the sensor needs: its name and why, as the error message says it.
struct Needed {
    name: &'static str,
    cap: u32,
    /// The kernel accepts CAP_SYS_ADMIN instead (bpf_capable(), perfmon_capable()).
    sys_admin_counts: bool,
    why: &'static str,
}

const NEEDED: [Needed; 3] = [
    Needed {
        name: "CAP_BPF",
        cap: CAP_BPF,
        sys_admin_counts: true,
        why: "to create the BPF maps",
    },
    Needed {
        name: "CAP_PERFMON",
        cap: CAP_PERFMON,
        sys_admin_counts: true,
        why: "for the verifier to allow packet pointer arithmetic",
    },
    Needed {
        name: "CAP_NET_ADMIN",
        cap: CAP_NET_ADMIN,
        sys_admin_counts: false,
        why: "to load an XDP program",
    },
];

/// The capabilities the sensor needs, by name (the unit grants exactly these).
pub const REQUIRED: [&str; 3] = ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"];

#[derive(Debug, thiserror::Error)]
#[error(
    "missing privileges: {missing} (effective capabilities {effective:#x}); the sensor needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (or root)"
)]
pub struct MissingPrivileges {
    /// Each missing capability with why it is needed, comma-separated.
    pub missing: String,
    pub effective: u64,
}

fn effective() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status_mask(&status, "CapEff:")
}

/// A capability set from a `/proc/<pid>/status` text (`key` as `CapEff:`), 0 when absent.
pub(crate) fn status_mask(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// Fails with every missing capability named, each with the reason the sensor needs it.
pub fn check() -> Result<(), MissingPrivileges> {
    check_mask(effective())
}

fn check_mask(eff: u64) -> Result<(), MissingPrivileges> {
    let has = |c: u32| eff & (1u64 << c) != 0;
    let missing: Vec<String> = NEEDED
        .iter()
        .filter(|n| !(has(n.cap) || (n.sys_admin_counts && has(CAP_SYS_ADMIN))))
        .map(|n| format!("{} ({})", n.name, n.why))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingPrivileges {
            missing: missing.join(", "),
            effective: eff,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = (1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN);

    #[test]
    fn the_three_are_enough_and_each_is_named_when_missing() {
        assert!(check_mask(ALL).is_ok());
        for (n, name) in NEEDED.iter().zip(REQUIRED) {
            assert_eq!(n.name, name);
            let err = check_mask(ALL & !(1 << n.cap)).unwrap_err();
            assert!(err.missing.starts_with(name), "{err}");
            assert_eq!(err.missing.matches("CAP_").count(), 1, "{err}");
        }
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_and_perfmon_only() {
        let err = check_mask(1 << CAP_SYS_ADMIN).unwrap_err();
        assert!(err.missing.starts_with("CAP_NET_ADMIN"), "{err}");
        assert!(check_mask((1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN)).is_ok());
    }
}
