//! The record the XDP program writes into the ring buffer for each DNS query.

/// Address family of the event's addresses.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4 = 4,
    Ipv6 = 6,
}

/// Transport the query came on.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp = 17,
    Tcp = 6,
}

/// One DNS query seen by the XDP program.
///
/// Addresses are 16 bytes: IPv4 is mapped into IPv6 (`::ffff:a.b.c.d`) and `family` says which
/// it was, so one layout serves both. Enum-like fields are plain integers (`u8`) because a Rust
/// enum read from kernel memory could hold an invalid discriminant.
/// `qname` holds the QNAME in wire format (length-prefixed labels, ending with the root label),
/// `qname_len` bytes of it are valid (1..=255); the rest is unspecified.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the packet was seen.
    pub ts_mono_ns: u64,
    /// Interface the packet arrived on.
    pub ifindex: u32,
    /// Outer and inner VLAN ids (0 when absent).
    pub vlan_outer: u16,
    pub vlan_inner: u16,
    /// Client (source) and server (destination) address, network byte order.
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// Ports in host byte order.
    pub src_port: u16,
    pub dst_port: u16,
    /// DNS transaction id, QTYPE and QCLASS in host byte order.
    pub dns_id: u16,
    pub qtype: u16,
    pub qclass: u16,
    /// [`Family`] as a number.
    pub family: u8,
    /// [`Transport`] as a number (IP protocol number).
    pub transport: u8,
    /// Valid bytes in `qname`.
    pub qname_len: u16,
    /// Explicit padding to an 8-byte boundary; always zero.
    pub _pad: [u8; 2],
    pub qname: [u8; 256],
}

const _: () = assert!(core::mem::size_of::<Event>() == 320);
const _: () = assert!(core::mem::align_of::<Event>() == 8);
const _: () = assert!(core::mem::offset_of!(Event, qname) == 64);

#[cfg(feature = "user")]
// SAFETY: Event is repr(C), has no implicit padding (size pinned above), and every bit pattern
// is a valid value of each field (integers and byte arrays only).
unsafe impl aya::Pod for Event {}
