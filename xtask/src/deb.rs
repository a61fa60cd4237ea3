//! `cargo xtask deb`: the Debian package (binary, systemd unit, example config as the conffile,
//! maintainer scripts), built by cargo-deb from `[package.metadata.deb]` in sensor/Cargo.toml.
//! cargo-deb is installed on first use (and by `cargo xtask setup --test-deps`, for the
//! package test).

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::cmd;

/// Pinned: the package test runs `cargo deb --no-build --profile dev` on the test build, which
/// this version accepts with a warning and a later one may refuse.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Installs cargo-deb unless this version is present.
pub fn install() -> Result<()> {
    match cmd::output(Command::new("cargo-deb").arg("--version")) {
        Ok(v) if v.split_whitespace().nth(1) == Some(CARGO_DEB_VERSION) => {
            eprintln!("ok: cargo-deb present ({})", v.trim());
            return Ok(());
        }
        Ok(v) => eprintln!(
            "installing cargo-deb {CARGO_DEB_VERSION} (found {})",
            v.trim()
        ),
        Err(_) => eprintln!("installing cargo-deb {CARGO_DEB_VERSION}"),
    }
    cmd::run_to_stderr(Command::new("cargo").args([
        "install",
        "cargo-deb",
        "--locked",
        "--version",
        CARGO_DEB_VERSION,
    ]))?;
    let v = cmd::output(Command::new("cargo-deb").arg("--version"))
        .context("cargo-deb was installed but does not run")?;
    eprintln!("ok: cargo-deb installed ({})", v.trim());
    Ok(())
}

/// Builds the release sensor and the package (cargo's and cargo-deb's progress on stderr as
/// it happens); prints the .deb's path on stdout.
pub fn deb(ws: &Path) -> Result<()> {
    crate::setup::setup(false)?;
    install()?;
    let dir = crate::target_dir(ws).join("debian");
    cmd::run(
        Command::new("cargo")
            .current_dir(ws)
            // --strip: the release profile keeps line tables for profiling (debug = 1), which
            // would ship a 140 MB binary.
            .args([
                "deb",
                "--package",
                "sensor",
                "--locked",
                "--strip",
                "--output",
            ])
            .arg(&dir)
            // cargo-deb prints the path too; stdout stays the one line printed below.
            .stdout(std::io::stderr()),
    )?;
    // cargo-deb names it <package>_<version>-<revision>_<arch>.deb; the newest is this build's.
    let newest = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".deb"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .with_context(|| format!("cargo deb left no .deb in {}", dir.display()))?;
    println!("{}", newest.1.display());
    Ok(())
}
