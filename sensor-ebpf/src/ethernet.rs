//! Ethernet II with up to two VLAN tags (802.1Q 0x8100, 802.1ad 0x88a8).

use sensor_common::Counter;

use crate::{Outcome, cursor::Packet};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_HLEN: usize = 14;

pub struct L2 {
    /// Ethertype of the payload.
    pub proto: u16,
    /// Offset of the network header (14, 18 or 22: no, one or two VLAN tags).
    pub l3_off: usize,
}

#[inline(always)]
fn is_vlan(proto: u16) -> bool {
    proto == ETH_P_8021Q || proto == ETH_P_8021AD
}

#[inline(always)]
fn is_ip(proto: u16) -> bool {
    proto == ETH_P_IP || proto == ETH_P_IPV6
}

#[inline(always)]
pub fn parse(pkt: &Packet) -> Result<L2, Outcome> {
    let proto = u16::from_be(pkt.load::<u16>(12).ok_or(Counter::BadEthernet)?);
    // Untagged IP first: the common case takes two comparisons.
    if is_ip(proto) {
        return Ok(L2 {
            proto,
            l3_off: ETH_HLEN,
        });
    }
    if !is_vlan(proto) {
        return Err(Counter::NotIp);
    }
    // TCI and the next ethertype in one load.
    let proto = u16::from_be(pkt.load::<[u16; 2]>(ETH_HLEN).ok_or(Counter::BadEthernet)?[1]);
    let (proto, l3_off) = if is_vlan(proto) {
        let inner = u16::from_be(
            pkt.load::<[u16; 2]>(ETH_HLEN + 4)
                .ok_or(Counter::BadEthernet)?[1],
        );
        (inner, ETH_HLEN + 8)
    } else {
        (proto, ETH_HLEN + 4)
    };
    if !is_ip(proto) {
        // Includes a third VLAN tag: out of scope, counted, passed.
        return Err(Counter::NotIp);
    }
    Ok(L2 { proto, l3_off })
}

/// Outer and inner VLAN ids of a frame whose network header is at `l3_off` (0 when absent).
/// Read again only for DNS queries, so the other packets carry no tag state through the
/// program.
#[inline(always)]
pub fn vlan_ids(pkt: &Packet, l3_off: usize) -> (u16, u16) {
    let id = |off: usize| u16::from_be(pkt.load::<u16>(off).unwrap_or(0)) & 0x0fff;
    match l3_off {
        18 => (id(ETH_HLEN), 0),
        22 => (id(ETH_HLEN), id(ETH_HLEN + 4)),
        _ => (0, 0),
    }
}
