//! Types that cross the kernel/user boundary.
//!
//! Everything here is `#[repr(C)]` with explicit padding fields so that no byte of a record is
//! left uninitialised (the verifier rejects reads of uninitialised stack, and userspace would
//! otherwise see garbage). Sizes are pinned by `const` asserts: a change of layout fails the build
//! of both sides instead of silently misreading records.
#![no_std]

pub mod counters;
pub mod event;
pub mod maps;
pub mod resolved;
pub mod response;

pub use counters::{Counter, Counters};
pub use event::{Event, Family, Transport};
pub use maps::{
    AllowValue, BlockValue, LpmAddr, PREFIX_FILTER_WORDS, bucket_of_first_word, ipv4_mapped,
    is_ipv4_mapped, prefix_filter_bucket,
};
pub use response::ResponseInfo;

/// Longest DNS name in wire format (RFC 1035 §2.3.4), including the root label.
pub const MAX_NAME_LEN: usize = 255;
/// Longest label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: u8 = 63;
/// Most labels a 255-byte name can hold (one length byte plus at least one byte each, plus root).
pub const MAX_LABELS: usize = 128;
/// Most IPv6 extension headers the XDP program walks before giving up (counted, passed).
pub const MAX_IPV6_EXT_HEADERS: usize = 6;
/// Most DNS messages the program reads from one TCP segment (messages pipelined one after the
/// other, each with its length prefix); further ones are counted (`tcp_pipeline_limit`).
pub const MAX_TCP_MESSAGES: usize = 4;
/// Most DNS ports the program watches (set at load time).
pub const MAX_DNS_PORTS: usize = 8;
/// Ring buffer size in bytes (a power of two and a multiple of the page size): about 26k events.
pub const RING_BYTES: u32 = 8 << 20;
/// Entries the LPM tries can hold.
pub const BLOCKLIST_CAPACITY: u32 = 1 << 20;
pub const CLIENT_ALLOW_CAPACITY: u32 = 1 << 16;

/// XDP program mode, set at load time.
pub const MODE_INLINE: u32 = 0;
/// A SPAN/mirror copy: packets are dropped after they have been read.
pub const MODE_MIRROR: u32 = 1;

/// Map names as the kernel (and `bpftool`) shows them.
pub mod map_names {
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const BLOCKLIST: &str = "BLOCKLIST";
    pub const CLIENT_ALLOW: &str = "CLIENT_ALLOW";
    pub const BLOCK_FILTER: &str = "BLOCK_FILTER";
    pub const ALLOW_FILTER: &str = "ALLOW_FILTER";
    /// Per-CPU scratch space of the program (header offsets handed to the DNS stage).
    pub const SCRATCH: &str = "SCRATCH";
    /// Blocking by resolution (see `resolved`): listed names, their filter and hash base, the
    /// blocked destinations and what must never be blocked.
    pub const BAD_NAMES: &str = "BAD_NAMES";
    pub const NAME_FILTER: &str = "NAME_FILTER";
    pub const NAME_HASH: &str = "NAME_HASH";
    pub const DEST_BLOCK: &str = "DEST_BLOCK";
    pub const DEST_PROTECT: &str = "DEST_PROTECT";
    /// Program arrays holding the continuation programs that read the second and later
    /// messages of a TCP segment (tail calls; one per program type: XDP, TC egress).
    pub const NEXT_XDP: &str = "NEXT_XDP";
    pub const NEXT_TC: &str = "NEXT_TC";
}

/// Name of the XDP program in the object.
pub const PROGRAM_NAME: &str = "dns_sensor";
/// The continuation programs (`NEXT_XDP`, `NEXT_TC`): the DNS stage on the next message of a
/// TCP segment, tail-called by the program of the same type.
pub const NEXT_PROGRAM_NAME: &str = "dns_sensor_next";
pub const EGRESS_NEXT_PROGRAM_NAME: &str = "dns_egress_next";
/// Name of the TC egress program in the same object (`capture.egress`): the same parser and
/// maps on what leaves an interface; it never drops.
pub const EGRESS_PROGRAM_NAME: &str = "dns_egress";
/// A program in the same object that only returns XDP_PASS: the benchmark's floor.
pub const NOOP_PROGRAM_NAME: &str = "noop";
