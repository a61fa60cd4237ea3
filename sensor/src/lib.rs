//! The DNS sensor's userspace: config, loader, ring-buffer reader, decoder, JSON output.
//!
//! Stages, in the order events flow: [`loader`] (kernel program and maps) → [`reader`] (ring
//! buffer) → [`decode`] (owned events) → [`output`] (JSON lines).

pub mod alert;
pub mod blocklist;
pub mod bpffs;
pub mod check;
pub mod clock;
pub mod config;
pub mod decode;
pub mod domainset;
pub mod encode;
pub mod enrich;
pub mod intel;
pub mod inventory;
pub mod kernel_lists;
pub mod loader;
pub mod metrics;
pub mod output;
pub mod prefixes;
pub mod privileges;
pub mod reader;
pub mod reload;
pub mod run;
pub mod secret;
pub mod sink;
pub mod stats;
pub mod telemetry;
pub mod testkit;
pub mod trust;
