//! `cargo xtask build-ebpf`: build the XDP object on its own, e.g. to inspect it with bpftool or
//! llvm-objdump without building the daemon.
//!
//! It calls the same `sensor_build::build_ebpf` as sensor/build.rs, with the same flags, so
//! there is one build path and no second set of flags to keep in sync.

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::setup;

pub fn build_ebpf(ws: &Path) -> Result<PathBuf> {
    setup::setup(false)?;

    let out_dir = crate::target_dir(ws).join("ebpf");
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let object = sensor_build::build_ebpf(ws, &out_dir, std::env::consts::ARCH)
        .context("building the eBPF object")?;
    check_elf(&object)?;
    println!("{}", object.display());
    Ok(object)
}

/// A cheap guard against a stale or truncated copy: the object must exist and be ELF.
fn check_elf(object: &Path) -> Result<()> {
    let mut magic = [0_u8; 4];
    fs::File::open(object)
        .and_then(|mut f| f.read_exact(&mut magic))
        .with_context(|| format!("eBPF object {} missing or unreadable", object.display()))?;
    if magic != *b"\x7fELF" {
        bail!("eBPF object {} is not an ELF file", object.display());
    }
    Ok(())
}
