//! UDP and TCP to or from a watched DNS port.

use sensor_common::{Counter, MAX_DNS_PORTS};

use crate::{
    Outcome,
    cursor::Packet,
    ip::{IPPROTO_TCP, IPPROTO_UDP, L3},
};

/// Ports watched for DNS (queries go to them, responses come from them), set by the loader
/// (`.rodata`, frozen, so the verifier sees constants). Unused slots are 0, and the scan stops
/// at the first 0, so port 0 never matches.
#[unsafe(no_mangle)]
static DNS_PORTS: [u16; MAX_DNS_PORTS] = [53, 0, 0, 0, 0, 0, 0, 0];

pub struct L4 {
    /// Source and destination port as loaded (network order, source first in memory).
    pub ports: u32,
    /// The destination port is a watched DNS port (a query's way).
    pub to_port: bool,
    /// The source port is a watched DNS port (a response's way).
    pub from_port: bool,
    /// Offset of the DNS header (after TCP's two-byte length prefix).
    pub dns_off: usize,
    /// Offset of the end of the DNS message: the UDP length and the IP datagram's end for UDP,
    /// the length prefix for TCP. Nothing past it is parsed as DNS.
    pub dns_end: usize,
    /// IP protocol number.
    pub proto: u8,
}

/// The port (host order) is a watched DNS port.
#[inline(always)]
pub fn watched(port: u16) -> bool {
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
    // The first eight bytes in one load: the ports, and for UDP its length (a separate load of
    // the length would be a check LLVM drops as implied, and the verifier then refuses).
    let head = pkt.load::<u64>(l3.l4_off).ok_or(Counter::BadL4)?;
    let ports = head as u32;
    let to_port = watched(u16::from_be((ports >> 16) as u16));
    let from_port = watched(u16::from_be(ports as u16));
    if !to_port && !from_port {
        return Err(Counter::NotDns);
    }
    if l3.proto == IPPROTO_UDP {
        let len = u16::from_be((head >> 32) as u16) as usize;
        // 0 is a UDP jumbogram's (RFC 2675): the IP datagram bounds it.
        let udp_end = if len == 0 { l3.end } else { l3.l4_off + len };
        if len != 0 && len < 8 {
            return Err(Counter::BadL4);
        }
        return Ok(L4 {
            ports,
            to_port,
            from_port,
            dns_off: l3.l4_off + 8,
            dns_end: if udp_end < l3.end { udp_end } else { l3.end },
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
    // The length prefix must fit in what the segment carries: a prefix sent in a segment of
    // its own leaves the next segment starting with the DNS ID, which read as a length almost
    // never fits what follows (and a question that still does not fit in it is refused by the
    // DNS stage). Several messages may follow one another: this frames the first, and the
    // continuation program the rest (`program::next_message`).
    let len = u16::from_be(pkt.load::<u16>(payload).ok_or(Counter::TcpNoQuestion)?) as usize;
    let dns_end = payload + 2 + len;
    if dns_end > l3.end {
        return Err(Counter::TcpNoQuestion);
    }
    Ok(L4 {
        ports,
        to_port,
        from_port,
        dns_off: payload + 2,
        dns_end,
        proto: IPPROTO_TCP,
    })
}
