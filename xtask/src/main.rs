//! `cargo xtask`: the developer and CI entry point (setup, build-ebpf, run, test, bench).
//!
//! Each subcommand lives in its own module. Errors end up as one line on stderr; when a spawned
//! command fails, xtask exits with that command's exit code so CI sees the real status.

mod bench;
mod build_ebpf;
mod cmd;
mod deb;
mod fuzz;
mod lint;
mod osmem;
mod run;
mod setup;
mod tansu;
mod test;

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer commands for the DNS sensor workspace"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build (and with --test-deps, the tests) need; skip what is present.
    Setup {
        /// Also install the Debian tools the tests drive (dig, tshark, ...), mount bpffs, and
        /// install tansu (the Kafka broker of the tests, cached under ~/.cache/dns-sensor).
        #[arg(long)]
        test_deps: bool,
    },
    /// Build the XDP object exactly as sensor/build.rs does, into target/ebpf; print its path.
    BuildEbpf,
    /// Clippy on the eBPF crate for bpfel-unknown-none with the pinned nightly and the build's
    /// flags, `-D warnings` (the workspace clippy only sees its host stub).
    LintEbpf,
    /// Build the sensor (release) and run `sensor run ARGS...` (needs root).
    Run {
        /// Arguments for `sensor run`; default: --config config/sensor.example.toml.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Build the release sensor and run the benchmarks (needs root): `micro`, then `live`.
    Bench {
        /// Arguments for `sensor-bench`, e.g. `-- micro --repeat 4000000`.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Build the release sensor and its Debian package (cargo-deb, installed when missing);
    /// print the .deb's path.
    Deb,
    /// Run the cargo-fuzz targets of fuzz/ one after the other (installs cargo-fuzz if missing).
    Fuzz(fuzz::Args),
    /// Install test dependencies and run `cargo test --workspace` (needs root).
    Test {
        /// First run `cargo clippy --workspace --all-targets -- -D warnings` and
        /// `cargo fmt --all --check`.
        #[arg(long)]
        lint: bool,
        /// Extra arguments for `cargo test --workspace`, e.g.
        /// `cargo xtask test -- -p sensor -- --nocapture`.
        #[arg(last = true)]
        cargo_args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` keeps the whole context chain on one line.
            eprintln!("error: {err:#}");
            let code = err
                .downcast_ref::<cmd::CommandFailed>()
                .map_or(1, cmd::CommandFailed::exit_code);
            ExitCode::from(code)
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    put_cargo_bin_on_path()?;
    let ws = workspace_root();
    match command {
        Command::Setup { test_deps } => setup::setup(test_deps),
        Command::BuildEbpf => build_ebpf::build_ebpf(&ws).map(|_| ()),
        Command::LintEbpf => lint::clippy_ebpf(&ws),
        Command::Run { args } => run::run(&ws, args),
        Command::Bench { args } => bench::bench(&ws, args),
        Command::Test { lint, cargo_args } => test::test(&ws, lint, cargo_args),
        Command::Fuzz(args) => fuzz::fuzz(&ws, args),
        Command::Deb => deb::deb(&ws),
    }
}

/// The workspace root: xtask's own manifest dir is `<root>/xtask`.
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The directory cargo builds into (CARGO_TARGET_DIR when set, else `<root>/target`).
fn target_dir(ws: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => ws.join(dir),
        _ => ws.join("target"),
    }
}

/// `cargo install` puts bpf-linker into `$CARGO_HOME/bin` (default `~/.cargo/bin`), and sensor-build
/// (in this process and in sensor/build.rs under the cargo we spawn) looks it up on PATH, which a
/// fresh shell or CI runner may not have. Prepend it so every child sees the same bpf-linker.
fn put_cargo_bin_on_path() -> Result<()> {
    let cargo_bin = cargo_home()?.join("bin");
    let old = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&old).next().as_deref() == Some(cargo_bin.as_path()) {
        return Ok(());
    }
    let new = env::join_paths(std::iter::once(cargo_bin).chain(env::split_paths(&old)))
        .context("cannot put $CARGO_HOME/bin on PATH")?;
    // SAFETY: called at the start of `dispatch`, before this process spawns any thread (xtask
    // never starts threads; child processes are separate), so nothing reads the environment
    // concurrently.
    unsafe { env::set_var("PATH", new) };
    Ok(())
}

/// `$CARGO_HOME`, defaulting like cargo does to `$HOME/.cargo`.
fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    Ok(home_dir()?.join(".cargo"))
}

fn home_dir() -> Result<PathBuf> {
    env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set")
}
