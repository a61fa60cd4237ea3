//! UDP and TCP to a watched DNS port.

use crate::{
    Outcome,
    cursor::Packet,
    ip::{IPPROTO_TCP, IPPROTO_UDP, L3},
};
use sensor_common::{Counter, MAX_DNS_PORTS};

/// Ports watched for DNS queries, set by the loader (`.rodata`, frozen, so the verifier sees
/// constants). Unused slots are 0, which no valid destination port can match.
#[unsafe(no_mangle)]
static DNS_PORTS: [u16; MAX_DNS_PORTS] = [53, 0, 0, 0, 0, 0, 0, 0];

pub struct L4 {
    pub src_port: u16,
    pub dst_port: u16,
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
    match l3.proto {
        IPPROTO_UDP => {
            let h = pkt.bytes::<8>(l3.l4_off).ok_or(Counter::BadL4)?;
            let dst_port = u16::from_be_bytes([h[2], h[3]]);
            if !watched(dst_port) {
                return Err(Counter::NotDns);
            }
            Ok(L4 {
                src_port: u16::from_be_bytes([h[0], h[1]]),
                dst_port,
                dns_off: l3.l4_off + 8,
                proto: IPPROTO_UDP,
            })
        }
        IPPROTO_TCP => {
            let h = pkt.bytes::<20>(l3.l4_off).ok_or(Counter::BadL4)?;
            let dst_port = u16::from_be_bytes([h[2], h[3]]);
            if !watched(dst_port) {
                return Err(Counter::NotDns);
            }
            let doff = (h[12] >> 4) as usize;
            if doff < 5 {
                return Err(Counter::BadL4);
            }
            let payload = l3.l4_off + doff * 4;
            // SYN, ACK, FIN, or a later segment of a stream: no length prefix + header here.
            if pkt.at::<14>(payload).is_none() {
                return Err(Counter::TcpNoQuestion);
            }
            Ok(L4 {
                src_port: u16::from_be_bytes([h[0], h[1]]),
                dst_port,
                dns_off: payload + 2,
                proto: IPPROTO_TCP,
            })
        }
        _ => Err(Counter::NotDns),
    }
}
