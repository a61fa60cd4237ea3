//! osmem-server, the in-memory OpenSearch-compatible server the Elasticsearch sink's tests and
//! bench index into. No Elasticsearch or OpenSearch distribution installs here; the Python
//! package `osmem-server` ships a static binary at `osmem_server/bin/osmem-server` inside the
//! package. The tests find it the same way (`sensor_testkit::osmem::binary`), or through
//! `OSMEM_SERVER_BIN`.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::cmd;

/// Asks python3 where the installed package is; `None` when it is not installed.
fn find() -> Option<PathBuf> {
    let dir = cmd::output(Command::new("python3").args([
        "-c",
        "import os, osmem_server; print(os.path.dirname(osmem_server.__file__))",
    ]))
    .ok()?;
    let bin = PathBuf::from(dir.trim()).join("bin/osmem-server");
    bin.is_file().then_some(bin)
}

fn version(bin: &PathBuf) -> String {
    cmd::output(Command::new(bin).arg("-version"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|e| format!("does not run: {e:#}"))
}

pub fn install() -> Result<()> {
    if let Some(bin) = find() {
        eprintln!(
            "ok: osmem-server present ({}, {})",
            bin.display(),
            version(&bin)
        );
        return Ok(());
    }
    eprintln!("installing osmem-server (pip install osmem-server)");
    let pip = || {
        let mut c = Command::new("python3");
        c.args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "osmem-server",
        ]);
        c
    };
    if let Err(err) = cmd::run_to_stderr(&mut pip()) {
        // A distribution's own Python (PEP 668) refuses installs outside a venv; the package is
        // one static binary and a launcher, so installing it beside the system's is harmless.
        eprintln!("pip refused ({err:#}); retrying with --break-system-packages");
        cmd::run_to_stderr(pip().arg("--break-system-packages"))?;
    }
    let bin = find()
        .context("pip installed osmem-server but osmem_server/bin/osmem-server is missing")?;
    eprintln!(
        "ok: osmem-server installed ({}, {})",
        bin.display(),
        version(&bin)
    );
    Ok(())
}
