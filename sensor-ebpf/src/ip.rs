//! IPv4 (with options) and IPv6 (with a bounded walk over extension headers).
//!
//! Addresses are read as two u64 words in memory (network) order, the layout of the LPM keys
//! and of the event record, and only where they are needed: the header stage keeps the
//! source's prefix-filter bucket.

use sensor_common::{Counter, MAX_IPV6_EXT_HEADERS};

use crate::{Outcome, cursor::Packet};

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// `::ffff:0:0/96` as the third word, in memory order.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

pub struct L3 {
    /// Prefix-filter bucket of the source address.
    pub bucket: u32,
    /// Offset of the network header.
    pub off: usize,
    /// 4 or 6.
    pub family: u8,
    /// Transport protocol (after IPv6 extension headers).
    pub proto: u8,
    /// Offset of the transport header.
    pub l4_off: usize,
    /// Not the first fragment (IPv4) or any fragment but an atomic one (IPv6): no transport
    /// header to read.
    pub fragment: bool,
    /// Offset of the end of the IP datagram as its header gives it (total length, payload
    /// length; `usize::MAX` for a jumbogram): bytes after it (Ethernet padding, trailers) are
    /// not part of the datagram, so never DNS. A scalar, only compared, never added to the
    /// packet pointer (the frame's own end bounds every load).
    pub end: usize,
}

/// An IPv4 address (memory order) mapped into IPv6, as two u64 words in memory order.
#[inline(always)]
fn mapped(v4: u32) -> [u64; 2] {
    [0, u64::from(V4_MAPPED_WORD) | (u64::from(v4) << 32)]
}

/// The address at `v4_off` (IPv4) or `v6_off` (IPv6) from the network header, as two u64 words
/// in memory order (IPv4 mapped into IPv6). The header stage checked these bytes are there;
/// the checks here are for the verifier.
#[inline(always)]
fn addr(pkt: &Packet, l3: &L3, v4_off: usize, v6_off: usize) -> [u64; 2] {
    if l3.family == 4 {
        mapped(pkt.load::<u32>(l3.off + v4_off).unwrap_or(0))
    } else {
        pkt.load::<[u64; 2]>(l3.off + v6_off).unwrap_or([0; 2])
    }
}

/// Source address, in the layout of the LPM keys and of the record.
#[inline(always)]
pub fn src(pkt: &Packet, l3: &L3) -> [u64; 2] {
    addr(pkt, l3, 12, 8)
}

/// Destination address, in the layout of the record.
#[inline(always)]
pub fn dst(pkt: &Packet, l3: &L3) -> [u64; 2] {
    addr(pkt, l3, 16, 24)
}

#[inline(always)]
pub fn parse_v4(pkt: &Packet, off: usize) -> Result<L3, Outcome> {
    // The fixed header must be there; load the fields the program uses.
    if pkt.at::<20>(off).is_none() {
        return Err(Counter::BadIpv4);
    }
    let vihl = pkt.load::<u8>(off).ok_or(Counter::BadIpv4)?;
    let ihl = (vihl & 0x0f) as usize;
    if vihl >> 4 != 4 || ihl < 5 {
        return Err(Counter::BadIpv4);
    }
    let hlen = ihl * 4;
    // Options: the header must be all there even though they are not read.
    if pkt.at::<1>(off + hlen - 1).is_none() {
        return Err(Counter::BadIpv4);
    }
    let frag = u16::from_be(pkt.load::<u16>(off + 6).ok_or(Counter::BadIpv4)?);
    let total = u16::from_be(pkt.load::<u16>(off + 2).ok_or(Counter::BadIpv4)?) as usize;
    // A datagram shorter than its own header is malformed.
    if total < hlen {
        return Err(Counter::BadIpv4);
    }
    let proto = pkt.load::<u8>(off + 9).ok_or(Counter::BadIpv4)?;
    let src = pkt.load::<u32>(off + 12).ok_or(Counter::BadIpv4)?;
    Ok(L3 {
        bucket: sensor_common::bucket_of_first_word(true, 0, u32::from_be(src)),
        off,
        family: 4,
        proto,
        l4_off: off + hlen,
        fragment: frag & 0x1fff != 0,
        end: off + total,
    })
}

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

#[inline(always)]
fn is_ext(next: u8) -> bool {
    matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH | NEXTHDR_FRAGMENT
    )
}

/// The fixed IPv6 header. The extension headers are walked by [`walk_ext`], after the
/// blocklist: a blocklisted source is dropped whatever its chain.
#[inline(always)]
pub fn parse_v6(pkt: &Packet, off: usize) -> Result<L3, Outcome> {
    if pkt.at::<40>(off).is_none() {
        return Err(Counter::BadIpv6);
    }
    let version = pkt.load::<u8>(off).ok_or(Counter::BadIpv6)?;
    if version >> 4 != 6 {
        return Err(Counter::BadIpv6);
    }
    let src0 = pkt.load::<u32>(off + 8).ok_or(Counter::BadIpv6)?;
    let next = pkt.load::<u8>(off + 6).ok_or(Counter::BadIpv6)?;
    let payload = u16::from_be(pkt.load::<u16>(off + 4).ok_or(Counter::BadIpv6)?) as usize;
    // 0 with a hop-by-hop header is a jumbogram (RFC 2675), bounded by the frame only.
    let end = if payload == 0 && next == NEXTHDR_HOP {
        usize::MAX
    } else {
        off + 40 + payload
    };
    Ok(L3 {
        bucket: sensor_common::bucket_of_first_word(false, u32::from_be(src0), 0),
        off,
        family: 6,
        proto: next,
        l4_off: off + 40,
        fragment: false,
        end,
    })
}

/// Walks the extension headers after an IPv6 header: sets the transport protocol, its offset
/// and the fragment flag.
#[inline(always)]
pub fn walk_ext(pkt: &Packet, l3: &mut L3) -> Result<(), Outcome> {
    let mut next = l3.proto;
    let mut l4_off = l3.l4_off;
    let mut fragment = false;
    let mut walked = 0;
    // Constant bound: the verifier proves termination; a longer chain is counted and passed.
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH | NEXTHDR_FRAGMENT => {}
            _ => break,
        }
        let e = pkt.load::<[u8; 2]>(l4_off).ok_or(Counter::BadIpv6)?;
        let len = match next {
            NEXTHDR_FRAGMENT => {
                // An atomic fragment (offset 0, no more fragments; RFC 6946) is a whole packet:
                // walk on to its transport header.
                let off_m = u16::from_be(pkt.load::<u16>(l4_off + 2).ok_or(Counter::BadIpv6)?);
                fragment = off_m & 0xfff9 != 0;
                8
            }
            NEXTHDR_AUTH => (e[1] as usize + 2) * 4,
            _ => (e[1] as usize + 1) * 8,
        };
        next = e[0];
        l4_off += len;
        walked += 1;
        // The whole header must be in the frame, not only the two bytes read.
        if pkt.at::<0>(l4_off).is_none() {
            return Err(Counter::BadIpv6);
        }
        // What follows a fragment header is the fragment's data, not more headers.
        if fragment {
            break;
        }
    }
    if walked == MAX_IPV6_EXT_HEADERS && !fragment && is_ext(next) {
        return Err(Counter::Ipv6ExtLimit);
    }
    l3.proto = next;
    l3.l4_off = l4_off;
    l3.fragment = fragment;
    Ok(())
}
