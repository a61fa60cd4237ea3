//! `cargo xtask test`: what `.ci/run` calls. Installs the test tools, then runs the workspace's
//! tests; with --lint, clippy and rustfmt first (cheap, and they fail fast).

use std::{ffi::OsString, path::Path, process::Command};

use anyhow::Result;

use crate::{cmd, setup};

pub fn test(ws: &Path, lint: bool, cargo_args: Vec<OsString>) -> Result<()> {
    cmd::require_root("the test suite (it creates network namespaces and loads BPF programs)")?;
    setup::setup(true)?;

    let cargo = |args: &[&str]| {
        let mut c = Command::new("cargo");
        c.current_dir(ws).args(args);
        c
    };
    if lint {
        cmd::run(&mut cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        cmd::run(&mut cargo(&["fmt", "--all", "--check"]))?;
    }
    cmd::run(cargo(&["test", "--workspace"]).args(cargo_args))
}
