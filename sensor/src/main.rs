//! The `sensor` command (see `sensor::cli`).

fn main() -> std::process::ExitCode {
    sensor::cli::main()
}
