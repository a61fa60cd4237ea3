//! Differential fuzzing of the XDP program through BPF_PROG_TEST_RUN (tests/kernel_fuzz.rs): a
//! seeded frame [`generator`] and a userspace [`reference`] that predicts, from the
//! specification, what the program must do with each frame.

pub mod generator;
pub mod reference;
