//! Checks the capabilities the sensor needs before it touches the kernel, so a missing one is
//! one clear line instead of an EPERM from deep inside a load.

/// Capability numbers from linux/capability.h.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
#[error(
    "missing privileges: {missing} (effective capabilities {effective:#x}); run as root or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"
)]
pub struct MissingPrivileges {
    pub missing: String,
    pub effective: u64,
}

fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Loading XDP with BTF maps needs CAP_BPF (or CAP_SYS_ADMIN), CAP_PERFMON for the packet
/// pointer arithmetic the verifier allows only to it (or CAP_SYS_ADMIN), and CAP_NET_ADMIN to
/// attach to an interface.
pub fn check() -> Result<(), MissingPrivileges> {
    let eff = effective();
    let has = |c: u32| eff & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingPrivileges {
            missing: missing.join(", "),
            effective: eff,
        })
    }
}
