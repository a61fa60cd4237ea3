//! XDP program of the DNS sensor, and its TC egress twin.
//!
//! Per packet: Ethernet/VLAN → IPv4/IPv6 → source in BLOCKLIST? (drop) → destination in
//! DEST_BLOCK? (drop) → UDP/TCP to or from a DNS port → DNS header gate → QNAME walk → client in
//! CLIENT_ALLOW? (count) → a query record into the ring buffer; or, for a response from a DNS
//! port, the answer walk → a listed name's answers into DEST_BLOCK → a response record.
//! Every path ends in exactly one outcome counter. The action is chosen in one place
//! (`dns_sensor`): XDP_DROP for a blocklisted source or a blocked destination, and otherwise XDP_PASS (inline mode, fail
//! open) or XDP_DROP (mirror mode, the packet is a copy and has been read).
//!
//! `dns_egress` (TC, clsact egress, `capture.egress`) runs the same parser with the same maps
//! on what leaves an interface, so a sensor on a DNS server reports the answers it sends. It
//! skips the two drop checks and never gives a verdict (see `program::dns_egress`). The parser
//! is generic over the context (`cursor::Ctx`): each program is its own monomorphised copy, and
//! the XDP one is the code it was before.
// Built for real only for target_arch = "bpf"; for the host (a workspace member, checked by
// clippy) the binary is an empty stub.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The bpfel target has no `AtomicU64::fetch_add`; the intrinsic lowers to BPF_ATOMIC_ADD.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    expect(
        internal_features,
        reason = "atomic_xadd is the only 64-bit atomic add on bpfel"
    )
)]

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("sensor-ebpf is an XDP program: build it with `cargo xtask build-ebpf`");
}

#[cfg(target_arch = "bpf")]
mod answers;
#[cfg(target_arch = "bpf")]
mod cursor;
#[cfg(target_arch = "bpf")]
mod dns;
#[cfg(target_arch = "bpf")]
mod ethernet;
#[cfg(target_arch = "bpf")]
mod ip;
#[cfg(target_arch = "bpf")]
mod program;
#[cfg(target_arch = "bpf")]
mod resolved;
#[cfg(target_arch = "bpf")]
mod rewrite;
#[cfg(target_arch = "bpf")]
mod transport;

/// Why a packet's path ended: the outcome counter to increment.
#[cfg(target_arch = "bpf")]
pub type Outcome = sensor_common::Counter;
