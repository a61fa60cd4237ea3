//! `cargo xtask fuzz [TARGET...] [--seconds N]`: runs the cargo-fuzz targets of `fuzz/` one
//! after the other (one libFuzzer process each: `-jobs=1 -workers=1`, the machines have few
//! cores), `N` seconds each (default 600), then minimises each corpus (`cargo fuzz cmin`).
//! Installs cargo-fuzz when it is missing. Not part of `cargo xtask test` (it takes an hour and
//! a half for every target); `tests/fuzz_corpus.rs` replays the committed corpora instead.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, setup};

#[derive(clap::Args)]
pub struct Args {
    /// Targets to run (files of fuzz/fuzz_targets without `.rs`); default: all of them.
    targets: Vec<String>,
    /// Seconds per target.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Keep each corpus as the run left it (skip `cargo fuzz cmin`).
    #[arg(long)]
    no_cmin: bool,
}

pub fn fuzz(ws: &Path, args: Args) -> Result<()> {
    // The fuzz build compiles the sensor library, whose build script builds the XDP object: the
    // same nightly rust-src and bpf-linker as any build.
    setup::setup(false)?;
    cargo_fuzz()?;
    let fuzz_dir = ws.join("fuzz");
    let all = targets(&fuzz_dir)?;
    let chosen = if args.targets.is_empty() {
        all
    } else {
        for t in &args.targets {
            if !all.contains(t) {
                bail!("no fuzz target {t:?}; there are: {}", all.join(", "));
            }
        }
        args.targets
    };
    // One build for every target (release, with debug assertions and overflow checks).
    cmd::run(&mut cargo_fuzz_cmd(&fuzz_dir, "build"))?;
    for target in &chosen {
        let corpus = fuzz_dir.join("corpus").join(target);
        fs::create_dir_all(&corpus)
            .with_context(|| format!("cannot create {}", corpus.display()))?;
        // libFuzzer writes fuzz-0.log into its working directory in -jobs mode.
        let logs = fuzz_dir.join("target/logs").join(target);
        fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
        eprintln!("fuzzing {target} for {} s", args.seconds);
        let run = cmd::run(
            cargo_fuzz_cmd(&fuzz_dir, "run")
                .current_dir(&logs)
                .arg(target)
                .arg("--")
                .arg(format!("-max_total_time={}", args.seconds))
                // A unit taking two minutes is a hang; 10 s fired on inputs that take
                // milliseconds while neighbours loaded the shared machine (load 20 on 2 cores).
                .args([
                    "-jobs=1",
                    "-workers=1",
                    "-timeout=120",
                    "-print_final_stats=1",
                ]),
        );
        let log = logs.join("fuzz-0.log");
        if let Ok(text) = fs::read_to_string(&log) {
            for line in text.lines().filter(|l| is_summary(l)) {
                eprintln!("{target}: {line}");
            }
        }
        run.with_context(|| {
            format!(
                "fuzz target {target} failed (log: {}; the input is under fuzz/artifacts/{target}/)",
                log.display()
            )
        })?;
        if !args.no_cmin {
            // Keeps every covered edge; without hit counts as features (`-use_counters=0`) the
            // corpus is a few hundred files instead of thousands (measured: list_file 2,788
            // files and 1.3 MB with them, 445 files and 63 KB without, the same 2,048 edges).
            cmd::run(
                cargo_fuzz_cmd(&fuzz_dir, "cmin")
                    .arg(target)
                    .args(["--", "-use_counters=0"]),
            )?;
        }
        let files = fs::read_dir(&corpus)
            .with_context(|| format!("cannot read {}", corpus.display()))?
            .count();
        eprintln!("{target}: corpus {} holds {files} files", corpus.display());
    }
    Ok(())
}

/// `cargo +<pinned nightly> fuzz SUBCOMMAND --sanitizer address --fuzz-dir FUZZ_DIR` (cargo-fuzz
/// needs nightly for its coverage instrumentation; the nightly is the one pinned for the eBPF
/// build, so a new nightly cannot break fuzzing either).
///
/// Under AddressSanitizer: the fuzz crate depends on the decoding crates through
/// `sensor-testkit` without its `kafka` feature, so no librdkafka (whose configure step cannot
/// link an ASan-instrumented zstd) is built, and ASan watches the one `unsafe` the targets
/// guard (`sensor_kernel::decode::record`'s copy into an `Event`). Every subcommand gets the same
/// flags, or cargo would rebuild everything between them.
fn cargo_fuzz_cmd(fuzz_dir: &Path, subcommand: &str) -> Command {
    let mut c = Command::new("cargo");
    c.arg(format!("+{}", sensor_build::NIGHTLY))
        .args(["fuzz", subcommand, "--sanitizer", "address", "--fuzz-dir"])
        .arg(fuzz_dir)
        .current_dir(fuzz_dir);
    c
}

/// The libFuzzer lines worth keeping: the final status line and the final stats.
fn is_summary(line: &str) -> bool {
    line.contains("DONE")
        || line.starts_with("Done ")
        || line.starts_with("stat::")
        || line.contains("ERROR")
        || line.contains("Test unit written")
}

/// Fuzz targets: the files of `fuzz/fuzz_targets`.
fn targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter_map(|p: PathBuf| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    names.sort();
    Ok(names)
}

/// Installs cargo-fuzz unless it runs.
fn cargo_fuzz() -> Result<()> {
    match cmd::output(Command::new("cargo-fuzz").arg("--version")) {
        Ok(version) => {
            eprintln!("ok: cargo-fuzz present ({})", version.trim());
            return Ok(());
        }
        Err(err) if err.downcast_ref::<cmd::ProgramNotFound>().is_some() => {}
        Err(err) => return Err(err.context("cargo-fuzz is installed but does not run")),
    }
    eprintln!("installing cargo-fuzz");
    cmd::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    let version = cmd::output(Command::new("cargo-fuzz").arg("--version"))
        .context("cargo-fuzz was installed but does not run")?;
    eprintln!("ok: cargo-fuzz installed ({})", version.trim());
    Ok(())
}
