//! Builds the XDP program (sensor-ebpf) into OUT_DIR, where `sensor-kernel/src/loader.rs` embeds it.
//! `cargo xtask build-ebpf` calls the same function (crate sensor-build): one build path.
#![expect(
    clippy::expect_used,
    reason = "cargo always sets these variables for a build script; without one, stop with its name"
)]

use std::path::Path;

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
    let workspace = Path::new(&manifest)
        .parent()
        .expect("sensor-kernel/ is inside the workspace");
    for dir in ["sensor-ebpf", "sensor-common", "sensor-build"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    let out = std::env::var("OUT_DIR").expect("set by cargo");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("set by cargo");
    if let Err(e) = sensor_build::build_ebpf(workspace, Path::new(&out), &arch) {
        eprintln!("{e}");
        std::process::exit(1);
    }
}
