//! `cargo xtask setup`: install what the build and the tests need, idempotently.
//!
//! Every item is checked first and skipped when present, so CI can run this on every run. One
//! line per item: "ok: X present" or "installing X".

use std::{
    env,
    ffi::OsStr,
    fs,
    io::ErrorKind,
    os::unix::{ffi::OsStrExt as _, fs::symlink},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use sensor_build::{BPF_LINKER_VERSION, NIGHTLY};

use crate::cmd;

/// Needed to build and run: bpftool for inspection; libssl-dev and pkg-config for librdkafka's TLS
/// (the Kafka sink's `ssl` feature links the system OpenSSL).
const BUILD_PACKAGES: &[&str] = &["bpftool", "libssl-dev", "pkg-config"];

/// Only for the tests: real DNS clients, replay and capture tools, and `ip netns`.
const TEST_PACKAGES: &[&str] = &[
    "dnsutils",
    // tests/responses.rs: the client's HTTP requests to addresses blocked by resolution.
    "curl",
    "tcpreplay",
    "tshark",
    "tcpdump",
    "knot-dnsutils",
    "iproute2",
    // tests/service.rs: the sensor's system calls against the unit's SystemCallFilter=, and
    // systemd-analyze (verify, syscall-filter) without systemd as PID 1.
    "strace",
    "systemd",
    // tests/blocklist_firewall.rs and `sensor-bench firewall-export`: the host exports against
    // the real nft and ipset, and iptables rules that match an ipset.
    "nftables",
    "ipset",
    "iptables",
    // tests/responses.rs: a real recursive resolver serving a local zone behind a gateway.
    "unbound",
];

const BPFFS: &str = "/sys/fs/bpf";

pub fn setup(test_deps: bool) -> Result<()> {
    pinned_nightly()?;
    bpf_linker()?;
    let mut packages = BUILD_PACKAGES.to_vec();
    if test_deps {
        packages.extend_from_slice(TEST_PACKAGES);
    }
    debian_packages(&packages)?;
    // Without --test-deps the daemon mounts bpffs itself when it needs to pin.
    if test_deps {
        bpffs()?;
        crate::osmem::install()?;
        crate::tansu::install()?;
        // The package test builds the .deb with cargo-deb.
        crate::deb::install()?;
    }
    Ok(())
}

/// Components of the pinned nightly: rust-src for `-Z build-std=core` (the eBPF crate builds
/// `core` from source), clippy for `cargo xtask lint-ebpf`.
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "clippy"];

/// The eBPF object is built with the nightly pinned in sensor-build ([`NIGHTLY`]), which needs
/// its rust-src; its clippy lints the eBPF crate.
pub fn pinned_nightly() -> Result<()> {
    let toolchains = cmd::output(Command::new("rustup").args(["toolchain", "list"]))?;
    if toolchains.lines().any(is_pinned_nightly) {
        eprintln!("ok: {NIGHTLY} toolchain present");
    } else {
        eprintln!("installing {NIGHTLY} toolchain");
        cmd::run_to_stderr(
            Command::new("rustup")
                .args(["toolchain", "install", NIGHTLY, "--profile", "minimal"])
                .args(NIGHTLY_COMPONENTS.iter().flat_map(|c| ["--component", c])),
        )?;
    }

    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))?;
    for &component in NIGHTLY_COMPONENTS {
        if installed.lines().any(|l| is_component(l, component)) {
            eprintln!("ok: {component} ({NIGHTLY}) present");
        } else {
            eprintln!("installing {component} ({NIGHTLY})");
            cmd::run_to_stderr(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                NIGHTLY,
            ]))?;
        }
    }
    Ok(())
}

/// A `rustup toolchain list` line for the pinned nightly: "nightly-2026-05-20-<host> (...)".
fn is_pinned_nightly(line: &str) -> bool {
    let name = line.split_whitespace().next().unwrap_or_default();
    name == NIGHTLY
        || name
            .strip_prefix(NIGHTLY)
            .is_some_and(|host| host.starts_with('-'))
}

/// A `rustup component list --installed` line for `component`: "rust-src" (no target suffix)
/// or "clippy-x86_64-unknown-linux-gnu".
fn is_component(line: &str, component: &str) -> bool {
    let name = line.split_whitespace().next().unwrap_or_default();
    name == component
        || name
            .strip_prefix(component)
            .is_some_and(|host| host.starts_with('-'))
}

/// `rustc +NIGHTLY ARGS`: stdout of the pinned nightly's rustc.
fn nightly_rustc(args: &[&str]) -> Result<String> {
    cmd::output(
        Command::new("rustup")
            .args(["run", NIGHTLY, "rustc"])
            .args(args),
    )
}

/// bpf-linker must link against the same LLVM major as the nightly rustc that emits the
/// bitcode. No system LLVM of that version exists, so it links against the nightly's own
/// libLLVM, found through a prefix of symlinks (the binary's RUNPATH).
///
/// The installed bpf-linker is kept when it runs, is [`BPF_LINKER_VERSION`], and needs exactly
/// the libLLVM (by soname) that the pinned nightly ships; otherwise it is reinstalled.
fn bpf_linker() -> Result<()> {
    let vv = nightly_rustc(&["-vV"])?;
    let major = llvm_major(&vv)
        .with_context(|| format!("`rustc +{NIGHTLY} -vV` printed no \"LLVM version: N.x\" line"))?;
    let sysroot = nightly_rustc(&["--print", "sysroot"])?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = nightly_libllvm(&sysroot_lib, major)?;
    let soname = libllvm
        .file_name()
        .context("libLLVM path has no file name")?
        .to_owned();
    let prefix = crate::home_dir()?
        .join(".cache/dns-sensor")
        .join(format!("llvm-{major}"));
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("cannot create {}", prefix_lib.display()))?;
    // Always (cheap): an installed bpf-linker loads libLLVM through these links, so they must
    // point into the pinned nightly, not into one that `rustup update` may remove. libLLVM.so is
    // what bpf-linker's build links with (-lLLVM); the soname link is what the built binary
    // loads at run time through its RUNPATH (the prefix's lib dir).
    replace_symlink(&libllvm, &prefix_lib.join("libLLVM.so"))?;
    replace_symlink(&libllvm, &prefix_lib.join(&soname))?;

    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    // Why the installed one must go; None when there is none. Running it (not just finding it)
    // also catches a broken dynamic link.
    let reinstall = match cmd::output(Command::new("bpf-linker").arg("--version")) {
        Ok(version) if version.trim() != wanted => Some(format!(
            "found {}, want {BPF_LINKER_VERSION}",
            version.trim()
        )),
        Ok(_) if !needs_libllvm(&soname)? => Some(format!(
            "it does not link {} of {NIGHTLY}",
            soname.to_string_lossy()
        )),
        Ok(version) => {
            eprintln!("ok: {} present (LLVM {major})", version.trim());
            return Ok(());
        }
        Err(err) if err.downcast_ref::<cmd::ProgramNotFound>().is_some() => None,
        Err(err) => Some(format!("{err:#}")),
    };
    match &reinstall {
        Some(why) => eprintln!("installing {wanted} (LLVM {major}; reinstalling: {why})"),
        None => eprintln!("installing {wanted} (LLVM {major})"),
    }

    let mut install = Command::new("cargo");
    install
        .env("LLVM_PREFIX", &prefix)
        .args(["install", "bpf-linker", "--locked", "--version"])
        .arg(format!("={BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{major}"));
    // Without --force, cargo would say "already installed" and keep the wrong binary.
    if reinstall.is_some() {
        install.arg("--force");
    }
    cmd::run_to_stderr(&mut install)?;

    let version = cmd::output(Command::new("bpf-linker").arg("--version"))
        .context("bpf-linker was installed but does not run")?;
    if !needs_libllvm(&soname)? {
        bail!(
            "bpf-linker was installed but does not link {}",
            soname.to_string_lossy()
        );
    }
    eprintln!("ok: {} installed (LLVM {major})", version.trim());
    Ok(())
}

/// Whether the bpf-linker on PATH needs the shared library `soname` (the pinned nightly's
/// libLLVM). The soname is a DT_NEEDED string in the binary's dynamic string table, and it
/// names LLVM's version and the rustc release ("libLLVM.so.22.1-rust-1.97.0-nightly"), so a
/// bpf-linker built for another LLVM does not contain it. A byte search is enough for that.
fn needs_libllvm(soname: &OsStr) -> Result<bool> {
    let path_var = env::var_os("PATH").unwrap_or_default();
    let path = env::split_paths(&path_var)
        .map(|dir| dir.join("bpf-linker"))
        .find(|p| p.is_file())
        .context("bpf-linker ran but is not found on PATH")?;
    let binary = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut needle = soname.as_bytes().to_vec();
    needle.push(0);
    Ok(binary.windows(needle.len()).any(|w| w == needle.as_slice()))
}

/// "LLVM version: 22.1.4" -> 22.
fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next())
        .and_then(|m| m.parse().ok())
}

/// The nightly's shared LLVM, `libLLVM.so.<major>.<minor>-rust-<version>` (its soname).
fn nightly_libllvm(sysroot_lib: &Path, major: u32) -> Result<PathBuf> {
    let prefix = format!("libLLVM.so.{major}");
    let mut found: Vec<PathBuf> = fs::read_dir(sysroot_lib)
        .with_context(|| format!("cannot read {}", sysroot_lib.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.contains("-rust-"))
        })
        .collect();
    found.sort();
    found.pop().with_context(|| {
        format!(
            "no {prefix}*-rust-* in {}: the nightly ships no shared LLVM",
            sysroot_lib.display()
        )
    })
}

/// Point `link` at `target`, replacing whatever `link` was (so a stale nightly is forgotten).
fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    match fs::symlink_metadata(link) {
        Ok(_) => fs::remove_file(link)
            .with_context(|| format!("cannot remove old {}", link.display()))?,
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", link.display())),
    }
    symlink(target, link)
        .with_context(|| format!("cannot link {} -> {}", link.display(), target.display()))
}

/// Install the missing ones of `packages` with apt, in one `apt-get install`.
fn debian_packages(packages: &[&str]) -> Result<()> {
    let mut missing = Vec::new();
    for &package in packages {
        if dpkg_installed(package)? {
            eprintln!("ok: {package} present");
        } else {
            eprintln!("installing {package}");
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !cmd::is_root() {
        bail!(
            "installing Debian packages ({}) needs root",
            missing.join(" ")
        );
    }
    // tshark's package otherwise asks whether non-root users may capture, and waits forever.
    cmd::output_with_stdin(
        &mut Command::new("debconf-set-selections"),
        Some("wireshark-common wireshark-common/install-setuid boolean false\n"),
    )?;
    // A fresh machine has empty package lists; one update serves the whole install.
    cmd::run_to_stderr(Command::new("apt-get").arg("update"))?;
    cmd::run_to_stderr(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(&missing),
    )
}

fn dpkg_installed(package: &str) -> Result<bool> {
    // dpkg-query exits non-zero for a package it has never heard of: that is "not installed",
    // but a missing dpkg-query means this is no Debian system, which we report.
    let mut query = Command::new("dpkg-query");
    query.args(["-W", "-f=${Status}", package]);
    match cmd::output(&mut query) {
        Ok(status) => Ok(status.contains("install ok installed")),
        Err(err) if err.downcast_ref::<cmd::CommandFailed>().is_some() => Ok(false),
        Err(err) => Err(err.context("setup installs Debian packages with apt")),
    }
}

/// The tests pin maps under /sys/fs/bpf; a fresh machine has no bpffs there.
fn bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next(), fields.next(), fields.next());
        target == Some(BPFFS) && fstype == Some("bpf")
    });
    if mounted {
        eprintln!("ok: bpffs at {BPFFS} present");
        return Ok(());
    }
    eprintln!("installing bpffs at {BPFFS}");
    if !cmd::is_root() {
        bail!("mounting bpffs at {BPFFS} needs root");
    }
    cmd::run_to_stderr(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_rustc_vv() {
        let vv = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.0\n"), None);
    }

    #[test]
    fn pinned_nightly_only() {
        let host = format!("{NIGHTLY}-x86_64-unknown-linux-gnu");
        assert!(is_pinned_nightly(&host));
        assert!(is_pinned_nightly(&format!("{host} (active)")));
        assert!(!is_pinned_nightly("nightly-x86_64-unknown-linux-gnu"));
        assert!(!is_pinned_nightly(
            "nightly-2024-01-01-x86_64-unknown-linux-gnu"
        ));
        assert!(!is_pinned_nightly(
            "stable-x86_64-unknown-linux-gnu (default)"
        ));
    }

    #[test]
    fn components() {
        assert!(is_component("rust-src", "rust-src"));
        assert!(is_component("clippy-x86_64-unknown-linux-gnu", "clippy"));
        assert!(!is_component(
            "rust-std-x86_64-unknown-linux-gnu",
            "rust-src"
        ));
        assert!(!is_component("rustc-x86_64-unknown-linux-gnu", "rust"));
    }
}
