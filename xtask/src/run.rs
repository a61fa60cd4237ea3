//! `cargo xtask run`: build the release daemon and run it in the foreground.

use std::{ffi::OsString, os::unix::process::CommandExt as _, path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::{cmd, setup};

pub fn run(ws: &Path, args: Vec<OsString>) -> Result<()> {
    // Check first: building for minutes and then failing on attach helps nobody.
    cmd::require_root("the sensor (it loads and attaches XDP programs)")?;
    setup::setup(false)?;
    // sensor/build.rs builds and embeds the eBPF object as part of this.
    cmd::run(
        Command::new("cargo")
            .current_dir(ws)
            .args(["build", "--release", "-p", "sensor"]),
    )?;

    let args = if args.is_empty() {
        // Absolute, so `cargo xtask run` works from any directory of the workspace.
        vec![
            "--config".into(),
            ws.join("config/sensor.example.toml").into_os_string(),
        ]
    } else {
        args
    };
    let mut sensor = Command::new(crate::target_dir(ws).join("release/sensor"));
    sensor.arg("run").args(args);
    // exec: the sensor gets our pid, signals (Ctrl-C) and terminal, and its exit status is
    // ours. It only returns on failure.
    let err = sensor.exec();
    Err(err).with_context(|| format!("cannot exec `{}`", cmd::describe(&sensor)))
}
