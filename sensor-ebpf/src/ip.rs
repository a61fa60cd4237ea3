//! IPv4 (with options) and IPv6 (with a bounded walk over extension headers).

use crate::{Outcome, cursor::Packet};
use sensor_common::{Counter, LpmAddr, MAX_IPV6_EXT_HEADERS, ipv4_mapped};

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

pub struct L3 {
    pub src: LpmAddr,
    pub dst: LpmAddr,
    /// 4 or 6.
    pub family: u8,
    /// Transport protocol (after IPv6 extension headers).
    pub proto: u8,
    /// Offset of the transport header.
    pub l4_off: usize,
    /// Not the first fragment (IPv4) or any fragment (IPv6): no transport header to read.
    pub fragment: bool,
}

#[inline(always)]
pub fn parse_v4(pkt: &Packet, off: usize) -> Result<L3, Outcome> {
    let h = pkt.bytes::<20>(off).ok_or(Counter::BadIpv4)?;
    let ihl = (h[0] & 0x0f) as usize;
    if h[0] >> 4 != 4 || ihl < 5 {
        return Err(Counter::BadIpv4);
    }
    let hlen = ihl * 4;
    // Options: the header must be all there even though they are not read.
    if pkt.at::<1>(off + hlen - 1).is_none() {
        return Err(Counter::BadIpv4);
    }
    let frag_off = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    Ok(L3 {
        src: ipv4_mapped([h[12], h[13], h[14], h[15]]),
        dst: ipv4_mapped([h[16], h[17], h[18], h[19]]),
        family: 4,
        proto: h[9],
        l4_off: off + hlen,
        fragment: frag_off != 0,
    })
}

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

#[inline(always)]
pub fn parse_v6(pkt: &Packet, off: usize) -> Result<L3, Outcome> {
    let h = pkt.bytes::<40>(off).ok_or(Counter::BadIpv6)?;
    if h[0] >> 4 != 6 {
        return Err(Counter::BadIpv6);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    dst.copy_from_slice(&h[24..40]);
    let mut next = h[6];
    let mut l4_off = off + 40;
    let mut fragment = false;
    let mut walked = 0;
    // Constant bound: the verifier proves termination; a longer chain is counted and passed.
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH | NEXTHDR_FRAGMENT => {}
            _ => break,
        }
        let e = pkt.bytes::<2>(l4_off).ok_or(Counter::BadIpv6)?;
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
    if walked == MAX_IPV6_EXT_HEADERS
        && matches!(
            next,
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH | NEXTHDR_FRAGMENT
        )
        && !fragment
    {
        return Err(Counter::Ipv6ExtLimit);
    }
    Ok(L3 {
        src,
        dst,
        family: 6,
        proto: next,
        l4_off,
        fragment,
    })
}
