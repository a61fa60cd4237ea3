//! The fuzz targets' corpora as a regression test on stable: every file of
//! `fuzz/corpus/<target>/` and `fuzz/artifacts/<target>/` (inputs that once failed, kept after
//! the fix) goes through the target's body in `sensor_testkit::fuzzing`, the same function the
//! `cargo fuzz` binary calls, without sanitizer or coverage instrumentation. Fast: no kernel, no
//! network, no root.
//!
//! `cargo test -p sensor --test fuzz_corpus -- --ignored write_seeds` writes the seed inputs of
//! [`fuzzing::seeds`] into the corpus folders (done once; `cargo fuzz cmin` keeps what adds
//! coverage).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
};

use sensor_testkit::fuzzing;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Files directly in `dir`, sorted; none when it does not exist.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `input` through `body`; the panic message when it fails.
fn run(body: fn(&[u8]), input: &[u8]) -> Option<String> {
    catch_unwind(AssertUnwindSafe(|| body(input)))
        .err()
        .map(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic without a message".into())
        })
}

#[test]
fn every_target_has_a_fuzz_binary_and_a_corpus() {
    let mut binaries: Vec<String> = files_in(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    binaries.sort();
    let mut names: Vec<String> = fuzzing::TARGETS
        .iter()
        .map(|(n, _)| (*n).to_owned())
        .collect();
    names.sort();
    assert_eq!(
        binaries, names,
        "fuzz/fuzz_targets/*.rs and fuzzing::TARGETS"
    );
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for name in &names {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
        let corpus = files_in(&fuzz_dir().join("corpus").join(name));
        assert!(
            corpus.len() >= 5,
            "fuzz/corpus/{name} holds {} files; run `cargo xtask fuzz {name}`",
            corpus.len()
        );
    }
}

#[test]
fn seeds_pass() {
    let mut failures = Vec::new();
    for (target, name, bytes) in fuzzing::seeds() {
        let (_, body) = fuzzing::TARGETS
            .iter()
            .find(|(n, _)| *n == target)
            .unwrap_or_else(|| panic!("seed {name} for unknown target {target}"));
        if let Some(msg) = run(*body, &bytes) {
            failures.push(format!("{target}/{name}: {msg}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn corpus_and_artifacts_pass() {
    let mut failures = Vec::new();
    let mut ran = 0;
    for (target, body) in fuzzing::TARGETS {
        for folder in ["corpus", "artifacts"] {
            for file in files_in(&fuzz_dir().join(folder).join(target)) {
                let bytes = std::fs::read(&file).expect("read");
                ran += 1;
                if let Some(msg) = run(*body, &bytes) {
                    failures.push(format!("{}: {msg}", file.display()));
                }
            }
        }
    }
    assert!(
        ran > 0,
        "no corpus files found under {}",
        fuzz_dir().display()
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Writes the seeds as `fuzz/corpus/<target>/seed-<name>`.
#[test]
#[ignore = "writes the seed corpus into the source tree; run by hand once"]
fn write_seeds() {
    for (target, name, bytes) in fuzzing::seeds() {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).expect("create the corpus folder");
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write a seed");
    }
}
