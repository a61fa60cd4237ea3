//! The `sensor` program: the command line ([`cli`], one module per subcommand), the root
//! [`config`], the one composition root that builds, runs and shuts down the stages
//! ([`pipeline`]), the config checks a start needs ([`check`]), the kernel
//! lists re-read from the config on SIGHUP ([`kernel_lists`]) and the metrics every stage
//! reports ([`telemetry`]), and the capture files `sensor replay` reads ([`capture`]).
//!
//! The only crate that sees the root [`config::Config`]: every layer below takes its own section.

pub mod capture;
pub mod check;
pub mod cli;
pub mod config;
pub mod kernel_lists;
pub mod pipeline;
pub mod telemetry;
