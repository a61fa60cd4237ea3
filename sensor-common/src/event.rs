//! The record the XDP program writes into the ring buffer for each DNS query, and the 64-byte
//! header every record starts with (a response's too, see `response`).

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
///
/// **Records are variable-length.** A ring buffer record is the first `L` bytes of an `Event`,
/// where `L` is a multiple of 8 and [`record_len`]`(qname_len) <= L <= 320`
/// ([`is_record_len`]): the [`HEADER_LEN`]-byte header always, then at least the valid QNAME
/// bytes. The XDP program sends [`SHORT_RECORD_LEN`] bytes for a name shorter than
/// [`SHORT_QNAME_LEN`] (nearly every real name) and the whole `Event` otherwise:
/// a short record keeps the ring's cache lines per query down (BENCHMARKS.md, issue 2). Bytes
/// of the record after `qname_len` are unspecified, and a reader treats the bytes past the
/// record's end as absent (zero).
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
    /// [`RECORD_QUERY`] (this record) or [`RECORD_RESPONSE`] (a response record: this header,
    /// then `ResponseInfo` and the message, see `response`).
    ///
    /// [`RECORD_QUERY`]: crate::response::RECORD_QUERY
    /// [`RECORD_RESPONSE`]: crate::response::RECORD_RESPONSE
    pub kind: u8,
    /// Explicit padding to an 8-byte boundary; always zero.
    pub _pad: u8,
    pub qname: [u8; 256],
}

/// Bytes of an [`Event`] before `qname`: the part every record holds.
pub const HEADER_LEN: usize = 64;
/// Offset of `kind` in every record.
pub const KIND_OFF: usize = 62;

/// The shortest record that holds a QNAME of `qname_len` bytes: the header and the name,
/// rounded up to 8 bytes (72..=320 for `qname_len` in 1..=255).
#[inline(always)]
pub const fn record_len(qname_len: usize) -> usize {
    (HEADER_LEN + qname_len + 7) & !7
}

/// Whether a record of `len` bytes whose header says `qname_len` is well formed (see
/// [`Event`]): a multiple of 8, holding the header and the whole name, no longer than an
/// `Event`.
#[inline(always)]
pub const fn is_record_len(len: usize, qname_len: usize) -> bool {
    len.is_multiple_of(8) && len >= record_len(qname_len) && len <= core::mem::size_of::<Event>()
}

/// Length of the short records the XDP program sends for names shorter than
/// [`SHORT_QNAME_LEN`] bytes.
pub const SHORT_RECORD_LEN: usize = 128;
/// Longest QNAME (wire bytes) a short record holds.
pub const SHORT_QNAME_LEN: usize = SHORT_RECORD_LEN - HEADER_LEN;

const _: () = assert!(core::mem::size_of::<Event>() == 320);
const _: () = assert!(core::mem::align_of::<Event>() == 8);
const _: () = assert!(core::mem::offset_of!(Event, qname) == HEADER_LEN);
const _: () = assert!(core::mem::offset_of!(Event, qname_len) == 60);
const _: () = assert!(core::mem::offset_of!(Event, kind) == KIND_OFF);
const _: () = assert!(record_len(crate::MAX_NAME_LEN) == core::mem::size_of::<Event>());
const _: () = assert!(record_len(1) == 72);
const _: () = assert!(is_record_len(SHORT_RECORD_LEN, SHORT_QNAME_LEN));
const _: () = assert!(!is_record_len(SHORT_RECORD_LEN, SHORT_QNAME_LEN + 1));

#[cfg(feature = "user")]
// SAFETY: Event is repr(C), has no implicit padding (size pinned above), and every bit pattern
// is a valid value of each field (integers and byte arrays only).
unsafe impl aya::Pod for Event {}
