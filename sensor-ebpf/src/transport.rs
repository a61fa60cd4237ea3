//! UDP and TCP to a watched DNS port.

use sensor_common::{Counter, MAX_DNS_PORTS};

use crate::{
    Outcome,
    cursor::Packet,
    ip::{IPPROTO_TCP, IPPROTO_UDP, L3},
};

/// Ports watched for DNS queries, set by the loader (`.rodata`, frozen, so the verifier sees
/// constants). Unused slots are 0, which no valid destination port can match.
#[unsafe(no_mangle)]
static DNS_PORTS: [u16; MAX_DNS_PORTS] = [53, 0, 0, 0, 0, 0, 0, 0];

pub struct L4 {
    /// Source and destination port as loaded (network order, source first in memory).
    pub ports: u32,
    /// Offset of the DNS header (after TCP's two-byte length prefix).
    pub dns_off: usize,
    /// IP protocol number.
    pub proto: u8,
}

#[inline(always)]
fn watched(port: u16) -> bool {
    let mut i = 0;
    while i < MAX_DNS_PORTS {
        // SAFETY: a plain read of a static; volatile so the compiler does not fold the default
        // value that the loader overwrites before the program is loaded.
        let p = unsafe { core::ptr::read_volatile(&DNS_PORTS[i]) };
        if p == 0 {
            break;
        }
        if p == port {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
pub fn parse(pkt: &Packet, l3: &L3) -> Result<L4, Outcome> {
    let hlen = match l3.proto {
        IPPROTO_UDP => 8,
        IPPROTO_TCP => 20,
        _ => return Err(Counter::NotDns),
    };
    if pkt.at::<8>(l3.l4_off).is_none() || (hlen == 20 && pkt.at::<20>(l3.l4_off).is_none()) {
        return Err(Counter::BadL4);
    }
    let ports = pkt.load::<u32>(l3.l4_off).ok_or(Counter::BadL4)?;
    let dst_port = u16::from_be((ports >> 16) as u16);
    if !watched(dst_port) {
        return Err(Counter::NotDns);
    }
    if l3.proto == IPPROTO_UDP {
        return Ok(L4 {
            ports,
            dns_off: l3.l4_off + 8,
            proto: IPPROTO_UDP,
        });
    }
    let doff = (pkt.load::<u8>(l3.l4_off + 12).ok_or(Counter::BadL4)? >> 4) as usize;
    if doff < 5 {
        return Err(Counter::BadL4);
    }
    let payload = l3.l4_off + doff * 4;
    // The options too: a header cut short is malformed, not a segment without a question.
    if pkt.at::<0>(payload).is_none() {
        return Err(Counter::BadL4);
    }
    // SYN, ACK, FIN, or a later segment of a stream: no length prefix + header here.
    if pkt.at::<14>(payload).is_none() {
        return Err(Counter::TcpNoQuestion);
    }
    Ok(L4 {
        ports,
        dns_off: payload + 2,
        proto: IPPROTO_TCP,
    })
}
