//! `cargo xtask bench`: build the release sensor and run the benchmark command, which prints
//! numbers (it is not a timed test). Without arguments: `micro`, `live`, then `intel`.

use std::{ffi::OsString, path::Path, process::Command};

use anyhow::Result;

use crate::{cmd, setup};

pub fn bench(ws: &Path, args: Vec<OsString>) -> Result<()> {
    cmd::require_root("the benchmarks (they load XDP programs and create namespaces)")?;
    setup::setup(true)?;
    cmd::run(Command::new("cargo").current_dir(ws).args([
        "build",
        "--release",
        "-p",
        "sensor",
        "-p",
        "sensor-testkit",
        "--bins",
    ]))?;
    let bin = crate::target_dir(ws).join("release/sensor-bench");
    let runs: Vec<Vec<OsString>> = if args.is_empty() {
        vec![
            vec!["micro".into()],
            vec!["live".into()],
            vec!["intel".into()],
        ]
    } else {
        vec![args]
    };
    for a in runs {
        cmd::run(Command::new(&bin).args(a))?;
    }
    Ok(())
}
