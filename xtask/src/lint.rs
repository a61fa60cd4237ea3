//! `cargo xtask lint-ebpf`: clippy on the eBPF crate for its own target.
//!
//! `cargo clippy --workspace` only sees sensor-ebpf's host stub (`fn main`); the XDP program is
//! compiled only for bpfel-unknown-none. So, like aya-template's test.sh, clippy runs a second
//! time on the eBPF crate alone, for that target, with the pinned nightly and the exact flags of
//! the build (both come from sensor-build), and with the workspace lints plus `-D warnings`.

use std::path::Path;

use anyhow::{Context as _, Result};

use crate::{cmd, setup};

/// Clippy on sensor-ebpf for bpfel-unknown-none; fails on any warning. Installs the pinned
/// nightly and its clippy first if they are missing (bpf-linker is not needed: nothing links).
pub fn clippy_ebpf(ws: &Path) -> Result<()> {
    setup::pinned_nightly()?;
    // The same target directory as `cargo xtask build-ebpf`: `core` and the dependencies are
    // built (checked) once for the target.
    let target_dir = crate::target_dir(ws).join("ebpf/ebpf-target");
    cmd::run_to_stderr(
        sensor_build::ebpf_cargo(ws, "clippy", std::env::consts::ARCH, &target_dir)
            .args(["--", "-D", "warnings"]),
    )
    .context("clippy on sensor-ebpf (bpfel-unknown-none)")
}
