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

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

/// The `sensor` binary of this build profile, built (or found up to date) on first use.
pub fn sensor_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/deps/<test>-<hash>: the binary sits in target/<profile>.
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in target/<profile>/deps");
        let mut build = Command::new(option_env!("CARGO").unwrap_or("cargo"));
        build.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "--quiet",
            "--package",
            "sensor",
            "--bin",
            "sensor",
        ]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let target_dir = profile_dir.parent().expect("target/<profile> has a parent");
        build.arg("--target-dir").arg(target_dir);
        let status = build
            .status()
            .expect("running cargo build for the sensor binary");
        assert!(status.success(), "cargo build -p sensor failed: {status}");
        let bin = profile_dir.join("sensor");
        assert!(bin.is_file(), "{} was not built", bin.display());
        bin
    })
}
