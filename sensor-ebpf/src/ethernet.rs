//! Ethernet II with up to two VLAN tags (802.1Q 0x8100, 802.1ad 0x88a8).

use crate::{Outcome, cursor::Packet};
use sensor_common::Counter;

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
pub fn parse(pkt: &Packet) -> Result<L2, Outcome> {
    let mut proto = pkt.be16(12).ok_or(Counter::BadEthernet)?;
    let mut off = ETH_HLEN;
    let mut vlans = [0u16; 2];
    let mut i = 0;
    while i < 2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        let tag = pkt.bytes::<4>(off).ok_or(Counter::BadEthernet)?;
        vlans[i] = u16::from_be_bytes([tag[0], tag[1]]) & 0x0fff;
        proto = u16::from_be_bytes([tag[2], tag[3]]);
        off += 4;
        i += 1;
    }
    if proto != ETH_P_IP && proto != ETH_P_IPV6 {
        // Includes a third VLAN tag: out of scope, counted, passed.
        return Err(Counter::NotIp);
    }
    Ok(L2 {
        proto,
        l3_off: off,
        vlan_outer: vlans[0],
        vlan_inner: vlans[1],
    })
}
