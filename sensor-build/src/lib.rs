//! The one way the XDP object is built.
//!
//! aya-build would do the same, but it overwrites the eBPF crate's rustflags, and the program
//! needs one more: `+allows-misaligned-mem-access`. Packet headers sit at any alignment, and
//! without the feature LLVM's BPF backend turns every `read_unaligned` of a u16/u32/u64 into
//! byte loads and shifts (measured: the query path cost 7x the no-op floor instead of the
//! target 3x). The kernel allows unaligned packet loads on architectures with efficient
//! unaligned access (x86-64, arm64), which is what the sensor runs on.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot run `rustup run nightly cargo` ({0}); run `cargo xtask setup`")]
    Spawn(std::io::Error),
    #[error(
        "building sensor-ebpf failed ({0}); `cargo xtask setup` installs the nightly rust-src and bpf-linker it needs"
    )]
    Failed(std::process::ExitStatus),
    #[error("copying the object to {path}: {source}")]
    Copy {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The flags every build of the object uses.
pub fn rustflags(arch: &str) -> Vec<String> {
    vec![
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
        "-Ctarget-feature=+allows-misaligned-mem-access".into(),
    ]
}

/// Builds `sensor-ebpf` from `workspace` for bpfel-unknown-none with the nightly toolchain and
/// bpf-linker (found on PATH), and copies the object to `out_dir/sensor-ebpf`.
pub fn build_ebpf(workspace: &Path, out_dir: &Path, arch: &str) -> Result<PathBuf, BuildError> {
    let target_dir = out_dir.join("ebpf-target");
    let status = Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--package",
            "sensor-ebpf",
            "--bins",
        ])
        .args([
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(workspace)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags(arch).join("\x1f"))
        // Set by an outer cargo or rustup for the host build; they must not leak into this one.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .status()
        .map_err(BuildError::Spawn)?;
    if !status.success() {
        return Err(BuildError::Failed(status));
    }
    let built = target_dir.join("bpfel-unknown-none/release/sensor-ebpf");
    let dest = out_dir.join("sensor-ebpf");
    std::fs::copy(&built, &dest).map_err(|source| BuildError::Copy {
        path: dest.clone(),
        source,
    })?;
    Ok(dest)
}
