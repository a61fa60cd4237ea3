//! `cargo fuzz run config`: the body is `sensor_testkit::fuzzing::config`, which
//! `tests/fuzz_corpus.rs` also runs over this target's corpus.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sensor_testkit::fuzzing::config(data));
