//! Building blocks for the tests and benchmarks: crafted packets, network namespaces, a DNS
//! responder. Part of the library so that `tests/` and the bench command share one copy.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support, never in the product: a failed unwrap or expect fails the test or bench that called it, with its message"
)]

pub mod collect_bench;
pub mod daemon;
pub mod edl_flood;
pub mod fake_threatbook;
pub mod fake_wecom;
pub mod fault_proxy;
pub mod fuzzing;
pub mod fw_bench;
pub mod fwns;
pub mod http_stub;
pub mod intel_bench;
pub mod kernel_fuzz;
pub mod logs;
pub mod netns;
pub mod osmem;
pub mod packet;
pub mod pcap;
pub mod pdns_bench;
pub mod ports;
pub mod responder;
#[cfg(feature = "kafka")]
pub mod soak;
#[cfg(feature = "kafka")]
pub mod tansu;
pub mod traffic;
