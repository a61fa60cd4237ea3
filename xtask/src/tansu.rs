//! tansu, the Apache Kafka compatible broker the Kafka sink's tests and bench run against.
//!
//! `cargo install` builds it in about 8 minutes on 2 cores, so it is installed once into a
//! versioned cache directory and skipped when the binary is there. The features: `libsql` (the
//! SQLite storage engine, which keeps topics across a broker restart) and `dynostore` (the memory
//! engine); a plain `cargo install tansu` has no storage engine at all. The tests find the binary
//! at the same path (`sensor_testkit::tansu::install_root`), or through `DNS_SENSOR_TANSU`.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::cmd;

/// Keep in step with `sensor_testkit::tansu::VERSION`.
const VERSION: &str = "0.6.0";
const FEATURES: &str = "dynostore,libsql";

fn root() -> Result<PathBuf> {
    Ok(crate::home_dir()?
        .join(".cache/dns-sensor")
        .join(format!("tansu-{VERSION}")))
}

pub fn install() -> Result<()> {
    let root = root()?;
    let bin = root.join("bin/tansu");
    if bin.is_file() {
        eprintln!("ok: tansu {VERSION} present ({})", bin.display());
        return Ok(());
    }
    eprintln!(
        "installing tansu {VERSION} into {} (cargo install, about 8 minutes)",
        root.display()
    );
    // A target dir of its own, so this build neither waits on nor fills the workspace's.
    let target = crate::home_dir()?
        .join(".cache/dns-sensor")
        .join(format!("tansu-{VERSION}-build"));
    cmd::run_to_stderr(
        Command::new("cargo")
            .env("CARGO_TARGET_DIR", &target)
            .args(["install", "tansu", "--locked", "--version", VERSION])
            .args(["--features", FEATURES])
            .arg("--root")
            .arg(&root),
    )?;
    if !bin.is_file() {
        anyhow::bail!(
            "cargo install tansu finished but {} is missing",
            bin.display()
        );
    }
    // The build tree is only needed for a rebuild; it is large.
    std::fs::remove_dir_all(&target)
        .with_context(|| format!("cannot remove {}", target.display()))?;
    eprintln!("ok: tansu {VERSION} installed ({})", bin.display());
    Ok(())
}
