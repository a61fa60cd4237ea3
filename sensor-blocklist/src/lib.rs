//! The nightly blocklist job: the previous day's security alerts in Elasticsearch → distinct
//! source IPs → never-block filter → IP reputation → a blocklist store with expiries → an EDL
//! file served to the border firewall, and the same list in the kernel's `BLOCKLIST` map.
//!
//! Stages, one module each: [`collect`] (composite aggregations), [`neverblock`],
//! [`reputation`] (ThreatBook through the batcher, cached across nights), [`store`] (expiry,
//! thresholds, safety checks), [`results`] (the day's CSV and JSON lines), [`edl`] (the file and
//! its HTTP server, with [`edl_auth`], [`edl_tls`] and [`fetches`]), [`job`] (one run),
//! [`schedule`] and [`daemon`] (the job inside the sensor), [`export`] (the same list for
//! FortiGate, Check Point, MikroTik, and this host's nftables and ipset). Installing into
//! `BLOCKLIST` is `sensor_kernel::lists::blocklist`.
//!
//! The top library layer: depends on the model, kernel, intel and outputs crates; only the
//! `sensor` binary depends on it.

pub mod collect;
pub mod config;
pub mod daemon;
pub mod edl;
pub mod edl_auth;
pub mod edl_tls;
pub mod export;
pub mod fetches;
pub mod job;
pub mod lock;
pub mod neverblock;
pub mod operator;
pub mod overrides;
pub mod protect;
pub mod publish;
pub mod reputation;
pub mod resolved;
pub mod results;
pub mod schedule;
pub mod store;
