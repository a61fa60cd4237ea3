//! What every integration test shares: the `sensor` binary under test.
//!
//! The tests are their own crate (not the `sensor` package), so cargo does not build the binary
//! for them: [`sensor_bin`] builds it once per test process with the same profile, which is a
//! no-op when `cargo xtask test` already did, and never runs a stale binary.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

pub mod tshark;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

/// The `sensor` binary of this build profile, built (or found up to date) on first use.
pub fn sensor_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_sensor(profile_dir().file_name().is_some_and(|n| n == "release")))
}

/// The release `sensor` binary whatever this test's profile, for tests that measure what ships
/// (an unoptimised build is several times slower at TLS and HTTP).
pub fn sensor_release_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_sensor(true))
}

/// target/<profile> of this test binary (target/<profile>/deps/<test>-<hash>).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps")
        .to_owned()
}

fn build_sensor(release: bool) -> PathBuf {
    let target_dir = profile_dir()
        .parent()
        .expect("target/<profile> has a parent")
        .to_owned();
    let mut build = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    build.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "--quiet",
        "--package",
        "sensor",
        "--bin",
        "sensor",
    ]);
    if release {
        build.arg("--release");
    }
    build.arg("--target-dir").arg(&target_dir);
    let status = build
        .status()
        .expect("running cargo build for the sensor binary");
    assert!(status.success(), "cargo build -p sensor failed: {status}");
    let bin = target_dir
        .join(if release { "release" } else { "debug" })
        .join("sensor");
    assert!(bin.is_file(), "{} was not built", bin.display());
    bin
}

/// Removes a test's pin root, whatever a failed assertion left there (a pinned link too).
pub struct PinRoot(pub PathBuf);

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
