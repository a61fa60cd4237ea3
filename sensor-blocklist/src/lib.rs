//! The nightly blocklist job: the previous day's security alerts in Elasticsearch → distinct
//! source IPs → never-block filter → IP reputation → a blocklist store with expiries → an EDL
//! file served to the border firewall, and the same list in the kernel's `BLOCKLIST` map.
//!
//! Stages, one module each: [`collect`] (composite aggregations), [`neverblock`],
//! [`reputation`] (ThreatBook through the batcher, cached across nights), [`store`] (expiry,
//! thresholds, safety checks), [`results`] (the day's CSV and JSON lines), [`edl`] (the file and
//! its HTTP server), [`job`] (one run), [`schedule`] and [`daemon`] (the job inside the
//! sensor). Installing into `BLOCKLIST` is `sensor_kernel::lists::blocklist`.
//!
//! The top library layer: depends on the model, kernel, intel and outputs crates; only the
//! `sensor` binary depends on it.

pub mod collect;
pub mod config;
pub mod daemon;
pub mod edl;
pub mod job;
pub mod neverblock;
pub mod reputation;
pub mod results;
pub mod schedule;
pub mod store;
