//! The one way the XDP object is built.
//!
//! aya-build would do the same, but it overwrites the eBPF crate's rustflags, and the program
//! needs one more: `+allows-misaligned-mem-access`. Packet headers sit at any alignment, and
//! without the feature LLVM's BPF backend turns every `read_unaligned` of a u16/u32/u64 into
//! byte loads and shifts (measured: the query path cost 7x the no-op floor instead of the
//! target 3x). The kernel allows unaligned packet loads on architectures with efficient
//! unaligned access (x86-64, arm64), which is what the sensor runs on.

use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    process::Command,
};

/// The rustup toolchain that builds the object, pinned by date so that a given commit always
/// gives the same object (the moving `nightly` changes LLVM and codegen under it). This is the
/// one place the pin is stated: `cargo xtask setup` installs this toolchain (with rust-src and
/// clippy) and builds bpf-linker against its LLVM, and `cargo xtask lint-ebpf` runs its clippy.
///
/// rustup's dated nightlies carry the date they were published, one day after the rustc commit
/// date that `rustc -vV` prints: nightly-2026-05-20 is rustc 1.97.0-nightly (e50aa6fba
/// 2026-05-19), LLVM 22.1.4. To move it, change the date, run `cargo xtask setup` (it installs
/// the toolchain and, if the LLVM major changed, rebuilds bpf-linker) and measure again.
pub const NIGHTLY: &str = "nightly-2026-05-20";

/// The bpf-linker release `cargo xtask setup` installs (`cargo install --locked`), built with
/// the LLVM of [`NIGHTLY`]; setup reinstalls it when another version is found.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot run `rustup run {nightly} cargo` ({0}); run `cargo xtask setup`", nightly = NIGHTLY)]
    Spawn(std::io::Error),
    #[error(
        "building sensor-ebpf failed ({0}); `cargo xtask setup` installs the {nightly} toolchain, its rust-src and the bpf-linker it needs",
        nightly = NIGHTLY
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

/// `rustup run NIGHTLY cargo SUBCOMMAND` for the eBPF crate alone, for bpfel-unknown-none in
/// release with `-Z build-std=core` and [`rustflags`], run from `workspace` with `target_dir`.
/// `cargo xtask lint-ebpf` runs clippy through it, so clippy sees exactly what the build
/// compiles; the caller adds the subcommand's own arguments.
pub fn ebpf_cargo(workspace: &Path, subcommand: &str, arch: &str, target_dir: &Path) -> Command {
    let mut cargo = Command::new("rustup");
    cargo
        .args([
            "run",
            NIGHTLY,
            "cargo",
            subcommand,
            "--package",
            "sensor-ebpf",
        ])
        .args([
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags(arch).join("\x1f"))
        // Set by an outer cargo or rustup for the host build; they must not leak into this one.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS");
    cargo
}

/// Builds `sensor-ebpf` from `workspace` for bpfel-unknown-none with the [`NIGHTLY`] toolchain
/// and bpf-linker (found on PATH), and copies the object to `out_dir/sensor-ebpf`.
pub fn build_ebpf(workspace: &Path, out_dir: &Path, arch: &str) -> Result<PathBuf, BuildError> {
    let target_dir = out_dir.join("ebpf-target");
    // Cargo reports on stderr; anything a tool prints on stdout goes there too. Our stdout is
    // sensor/build.rs's, which cargo reads as `cargo:` directives, or `cargo xtask build-ebpf`'s,
    // which carries only the object's path.
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(BuildError::Spawn)?;
    let status = ebpf_cargo(workspace, "build", arch, &target_dir)
        .arg("--bins")
        .stdout(stderr)
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
