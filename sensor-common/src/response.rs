//! The record the XDP program writes into the ring buffer for each DNS response.
//!
//! A response record starts with the same 64-byte header as a query's [`Event`] (addresses and
//! ports as the packet carries them: the *server* is the source), with
//! [`RECORD_RESPONSE`] in `kind`; then [`ResponseInfo`], what the program itself took from the
//! message (the header's flags and counts, and the first [`MAX_ADDRS`] A/AAAA answers with their
//! TTLs, the values it acts on); then the first bytes of the DNS message, so that userspace can
//! decode every answer (names, CNAME chains, other types) with a full DNS library.
//!
//! [`Event`]: crate::Event

use crate::event::HEADER_LEN;

/// `Event::kind` of a query record.
pub const RECORD_QUERY: u8 = 0;
/// `Event::kind` of a response record.
pub const RECORD_RESPONSE: u8 = 1;

/// Most A/AAAA answers the program reads from one response.
pub const MAX_ADDRS: usize = 8;
/// Most answer records the program walks in one response (CNAMEs come before the addresses
/// they lead to, so this is larger than [`MAX_ADDRS`]).
pub const MAX_ANSWER_RRS: usize = 16;

/// The answer walk went through every answer record (ANCOUNT of them).
pub const WALK_COMPLETE: u8 = 0;
/// More answer records than [`MAX_ANSWER_RRS`]: the rest were not walked.
pub const WALK_LIMIT: u8 = 1;
/// The message ends inside an answer record (a truncated datagram, or ANCOUNT larger than
/// what follows).
pub const WALK_TRUNCATED: u8 = 2;
/// An owner name that is malformed: a compression pointer that does not point strictly
/// backwards (before itself, into the message), a label longer than 63 bytes or an owner
/// name longer than 255 bytes.
pub const WALK_BAD_NAME: u8 = 3;

/// What the XDP program read from a response, after the 64-byte header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseInfo {
    /// The DNS header's flags word (QR, opcode, AA, TC, RD, RA, Z, AD, CD, RCODE), host order.
    pub flags: u16,
    /// ANCOUNT, NSCOUNT and ARCOUNT as the header gives them.
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
    /// Length of the DNS message (UDP length, IP length or TCP length prefix, whichever ends
    /// first, and no further than the frame).
    pub msg_len: u16,
    /// Bytes of the message in the record's `msg` (`min(msg_len, room)`); the question is
    /// always among them.
    pub copied: u16,
    /// Answer records walked, at most [`MAX_ANSWER_RRS`].
    pub answers_walked: u8,
    /// Valid entries of `addrs` and `ttls`.
    pub addr_count: u8,
    /// CNAME records among the answers walked.
    pub cnames: u8,
    /// How the walk ended: `WALK_COMPLETE`, `WALK_LIMIT`, `WALK_TRUNCATED`, `WALK_BAD_NAME`.
    pub walk: u8,
    /// Bit `i` set: `addrs[i]` came from an AAAA record (else an A record, mapped into IPv6).
    pub aaaa_mask: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 15],
    /// TTLs of the answers in `addrs`.
    pub ttls: [u32; MAX_ADDRS],
    /// A/AAAA answer addresses in answer order (IPv4 mapped into IPv6, see `aaaa_mask`).
    pub addrs: [[u8; 16]; MAX_ADDRS],
}

/// Offset of [`ResponseInfo`] in a response record.
pub const INFO_OFF: usize = HEADER_LEN;
/// Offset of the message bytes in a response record: the header and the info.
pub const MSG_OFF: usize = HEADER_LEN + core::mem::size_of::<ResponseInfo>();

/// The message rooms of the three record classes the program sends, smallest first: a record is
/// `MSG_OFF + room` bytes, with the smallest room that holds the message (the largest holds
/// its first `MAX_MSG_ROOM` bytes). Powers of two, so that a mask bounds the copy.
pub const MSG_ROOMS: [usize; 3] = [128, 512, 1024];
/// The largest message room.
pub const MAX_MSG_ROOM: usize = MSG_ROOMS[2];
/// The longest response record.
pub const MAX_RESPONSE_RECORD: usize = MSG_OFF + MAX_MSG_ROOM;

/// Whether `len` is a valid length for a response record whose info says `copied` message
/// bytes: a multiple of 8, holding the copied bytes, no longer than the largest class.
#[inline(always)]
pub const fn is_response_len(len: usize, copied: usize) -> bool {
    len.is_multiple_of(8) && len >= MSG_OFF + copied && len <= MAX_RESPONSE_RECORD
}

const _: () = assert!(core::mem::size_of::<ResponseInfo>() == 192);
const _: () = assert!(MSG_OFF == 256);
const _: () = assert!(core::mem::offset_of!(ResponseInfo, ttls) == 32);
const _: () = assert!(core::mem::offset_of!(ResponseInfo, addrs) == 64);
const _: () = assert!(MSG_ROOMS[0].is_power_of_two());
const _: () = assert!(MSG_ROOMS[1].is_power_of_two());
const _: () = assert!(MSG_ROOMS[2].is_power_of_two());
// The question (header, a 255-byte name, QTYPE and QCLASS) always fits in the largest room.
const _: () = assert!(12 + crate::MAX_NAME_LEN + 4 <= MAX_MSG_ROOM);

#[cfg(feature = "user")]
// SAFETY: repr(C), no implicit padding (size and offsets pinned above), integers and byte
// arrays only: every bit pattern is valid.
unsafe impl aya::Pod for ResponseInfo {}
