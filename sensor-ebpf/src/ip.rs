//! IPv4 (with options) and IPv6 (with a bounded walk over extension headers).
//!
//! Addresses are kept as four u32 words in memory (network) order, the layout of the LPM keys
//! and of the event record, so they are loaded and stored a word at a time.

use sensor_common::{Counter, MAX_IPV6_EXT_HEADERS};

use crate::{Outcome, cursor::Packet};

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// `::ffff:0:0/96` as the third word, in memory order.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

pub struct L3 {
    /// Source address (IPv4 mapped into IPv6), memory order.
    pub src: [u32; 4],
    /// Offset of the destination address in the packet.
    pub dst_off: usize,
    /// 4 or 6.
    pub family: u8,
    /// Transport protocol (after IPv6 extension headers).
    pub proto: u8,
    /// Offset of the transport header.
    pub l4_off: usize,
    /// Not the first fragment (IPv4) or any fragment (IPv6): no transport header to read.
    pub fragment: bool,
}

impl L3 {
    /// The prefix-filter bucket of the source address.
    #[inline(always)]
    pub fn src_bucket(&self) -> u32 {
        sensor_common::bucket_of_first_word(
            self.family == 4,
            u32::from_be(self.src[0]),
            u32::from_be(self.src[3]),
        )
    }
}

/// The destination address at `off` (IPv4 mapped into IPv6), memory order.
#[inline(always)]
pub fn dst(pkt: &Packet, ipv4: bool, off: usize) -> [u32; 4] {
    if ipv4 {
        [0, 0, V4_MAPPED_WORD, pkt.load::<u32>(off).unwrap_or(0)]
    } else {
        pkt.load::<[u32; 4]>(off).unwrap_or([0; 4])
    }
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
    let proto = pkt.load::<u8>(off + 9).ok_or(Counter::BadIpv4)?;
    let src = pkt.load::<u32>(off + 12).ok_or(Counter::BadIpv4)?;
    Ok(L3 {
        src: [0, 0, V4_MAPPED_WORD, src],
        dst_off: off + 16,
        family: 4,
        proto,
        l4_off: off + hlen,
        fragment: frag & 0x1fff != 0,
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

#[inline(always)]
pub fn parse_v6(pkt: &Packet, off: usize) -> Result<L3, Outcome> {
    if pkt.at::<40>(off).is_none() {
        return Err(Counter::BadIpv6);
    }
    let version = pkt.load::<u8>(off).ok_or(Counter::BadIpv6)?;
    if version >> 4 != 6 {
        return Err(Counter::BadIpv6);
    }
    let src = pkt.load::<[u32; 4]>(off + 8).ok_or(Counter::BadIpv6)?;
    let mut next = pkt.load::<u8>(off + 6).ok_or(Counter::BadIpv6)?;
    let mut l4_off = off + 40;
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
                fragment = true;
                8
            }
            NEXTHDR_AUTH => (e[1] as usize + 2) * 4,
            _ => (e[1] as usize + 1) * 8,
        };
        next = e[0];
        l4_off += len;
        walked += 1;
    }
    if walked == MAX_IPV6_EXT_HEADERS && !fragment && is_ext(next) {
        return Err(Counter::Ipv6ExtLimit);
    }
    Ok(L3 {
        src,
        dst_off: off + 24,
        family: 6,
        proto: next,
        l4_off,
        fragment,
    })
}
