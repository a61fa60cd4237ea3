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
    /// Offset of the network header.
    pub l3_off: usize,
    pub vlan_outer: u16,
    pub vlan_inner: u16,
}

#[inline(always)]
fn is_vlan(proto: u16) -> bool {
    proto == ETH_P_8021Q || proto == ETH_P_8021AD
}

#[inline(always)]
pub fn parse(pkt: &Packet) -> Result<L2, Outcome> {
    let mut proto = u16::from_be(pkt.load::<u16>(12).ok_or(Counter::BadEthernet)?);
    let mut l2 = L2 {
        proto,
        l3_off: ETH_HLEN,
        vlan_outer: 0,
        vlan_inner: 0,
    };
    if is_vlan(proto) {
        // TCI and the next ethertype in one load.
        let tag = u32::from_be(pkt.load::<u32>(ETH_HLEN).ok_or(Counter::BadEthernet)?);
        l2.vlan_outer = (tag >> 16) as u16 & 0x0fff;
        proto = tag as u16;
        l2.l3_off += 4;
        if is_vlan(proto) {
            let tag = u32::from_be(pkt.load::<u32>(ETH_HLEN + 4).ok_or(Counter::BadEthernet)?);
            l2.vlan_inner = (tag >> 16) as u16 & 0x0fff;
            proto = tag as u16;
            l2.l3_off += 4;
        }
    }
    if proto != ETH_P_IP && proto != ETH_P_IPV6 {
        // Includes a third VLAN tag: out of scope, counted, passed.
        return Err(Counter::NotIp);
    }
    l2.proto = proto;
    Ok(l2)
}
