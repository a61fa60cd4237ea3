//! Builds the XDP program (sensor-ebpf) for bpfel-unknown-none with the nightly toolchain and
//! bpf-linker, with BTF, into OUT_DIR; `src/loader.rs` embeds it. `cargo xtask build-ebpf` calls
//! the same aya-build function with the same arguments, so there is one build path.
fn main() -> anyhow::Result<()> {
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sensor-ebpf",
            root_dir: "../sensor-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
