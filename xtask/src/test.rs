//! `cargo xtask test`: what `.ci/run` calls (with `--lint`). Installs the test tools, then runs
//! the workspace's tests; with --lint, clippy (the host workspace, then the eBPF crate for its
//! own target) and rustfmt first (cheap, and they fail fast).

use std::{ffi::OsString, path::Path, process::Command};

use anyhow::Result;

use crate::{cmd, lint, setup};

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
        lint::clippy_ebpf(ws)?;
        cmd::run(&mut cargo(&["fmt", "--all", "--check"]))?;
    }
    // The integration tests (crate `sensor-tests`) run the `sensor` binary, which cargo does not
    // build for another package's tests: build it first (their helper builds it too, a no-op
    // then, so a test never runs a stale binary).
    cmd::run(&mut cargo(&[
        "build",
        "--package",
        "sensor",
        "--bin",
        "sensor",
    ]))?;
    cmd::run(cargo(&["test", "--workspace"]).args(cargo_args))
}
