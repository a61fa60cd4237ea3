//! The Debian package: built by cargo-deb from `[package.metadata.deb]` (from the test build of
//! the binary, so the suite never pays for a second, release build), installed with `dpkg -i`,
//! checked (files, conffile, user, unit enabled, `systemd-analyze verify`, `sensor check-config`),
//! installed again over itself (the upgrade path of the maintainer scripts), and purged. Needs
//! root, dpkg, cargo-deb (`cargo xtask setup --test-deps`) and systemd-analyze; fails without
//! them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use common::sensor_bin;
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

const PACKAGE: &str = "dns-sensor";
const UNIT_PATH: &str = "/lib/systemd/system/dns-sensor.service";
const CONFIG_PATH: &str = "/etc/dns-sensor/sensor.toml";
const ENABLED_LINK: &str = "/etc/systemd/system/multi-user.target.wants/dns-sensor.service";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Runs a command; returns (success, stdout, stderr).
fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn must(program: &str, args: &[&str]) -> String {
    let (ok, stdout, stderr) = run(program, args);
    assert!(ok, "{program} {}: {stdout}{stderr}", args.join(" "));
    stdout
}

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", PACKAGE])
        .1
        .contains("ok installed")
}

fn user_exists(name: &str) -> bool {
    run("getent", &["passwd", name]).0
}

/// Purges the package and removes the user the package created, also when the test fails.
struct Purge {
    user_was_there: bool,
}

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", PACKAGE]);
        if !self.user_was_there {
            let _ = run("userdel", &[PACKAGE]);
            let _ = run("groupdel", &[PACKAGE]);
        }
    }
}

#[test]
fn the_package_installs_verifies_and_purges() {
    assert!(
        !installed(),
        "{PACKAGE} is already installed on this host; the test would purge it"
    );
    let _purge = Purge {
        user_was_there: user_exists(PACKAGE),
    };

    // The binary cargo built for this test run is the one packaged (cargo-deb maps the
    // asset target/release/sensor to the profile's directory).
    let bin = sensor_bin();
    assert!(bin.ends_with("debug/sensor"), "{}", bin.display());
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = out_dir.path().display().to_string();
    let manifest = repo().join("sensor/Cargo.toml").display().to_string();
    let stdout = must(
        "cargo",
        &[
            "deb",
            "--manifest-path",
            &manifest,
            "--no-build",
            "--profile",
            "dev",
            "--strip",
            "--fast",
            "--quiet",
            "--output",
            &out,
        ],
    );
    let deb = stdout
        .lines()
        .find(|l| l.ends_with(".deb"))
        .unwrap_or_else(|| panic!("cargo deb printed no path: {stdout}"))
        .to_owned();

    must("dpkg", &["-i", &deb]);
    assert!(installed());

    // The unit and the config byte for byte as the repository ships them; the binary (stripped
    // by cargo-deb) runs.
    let on_disk = std::fs::metadata("/usr/bin/sensor").expect("/usr/bin/sensor");
    assert_eq!(on_disk.permissions().mode() & 0o777, 0o755);
    assert_eq!(
        std::fs::read_to_string(UNIT_PATH).expect("unit installed"),
        std::fs::read_to_string(repo().join("packaging/dns-sensor.service")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(CONFIG_PATH).expect("config installed"),
        std::fs::read_to_string(repo().join("config/sensor.example.toml")).unwrap()
    );
    let conffiles = must("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]);
    assert!(conffiles.contains(CONFIG_PATH), "{conffiles}");
    let version = must("/usr/bin/sensor", &["--version"]);
    assert!(version.starts_with("sensor "), "{version}");

    // The static system user, no login; the root-only credentials directory.
    let entry = must("getent", &["passwd", PACKAGE]);
    let fields: Vec<&str> = entry.trim().split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "a system user: {entry}");
    assert_eq!(fields[5], "/var/lib/dns-sensor", "{entry}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{entry}");
    let creds = std::fs::metadata("/etc/dns-sensor/credentials").expect("credentials dir");
    assert_eq!(creds.permissions().mode() & 0o777, 0o700);
    assert!(
        Path::new(ENABLED_LINK).exists(),
        "enabled (deb-systemd-helper) without systemd as PID 1"
    );

    let (ok, stdout, stderr) = run("systemd-analyze", &["verify", UNIT_PATH]);
    assert!(
        ok && stdout.is_empty() && stderr.is_empty(),
        "systemd-analyze verify: {stdout}{stderr}"
    );
    // --no-interfaces: the shipped config names eth0 as a placeholder the operator replaces;
    // the test host's interface names are not part of what the package promises.
    must(
        "/usr/bin/sensor",
        &["check-config", "--no-interfaces", CONFIG_PATH],
    );

    // Installing over itself takes the upgrade path: the user and directory exist already.
    must("dpkg", &["-i", &deb]);
    assert_eq!(must("getent", &["passwd", PACKAGE]), entry, "the same user");

    must("dpkg", &["--purge", PACKAGE]);
    assert!(!installed());
    for gone in [
        "/usr/bin/sensor",
        UNIT_PATH,
        CONFIG_PATH,
        ENABLED_LINK,
        "/etc/dns-sensor",
    ] {
        assert!(
            std::fs::symlink_metadata(gone).is_err(),
            "{gone} removed by the purge"
        );
    }
}
