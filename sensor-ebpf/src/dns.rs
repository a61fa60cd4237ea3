//! The DNS header gate and the QNAME walk.

use crate::{Outcome, cursor::Packet};
use sensor_common::{Counter, MAX_LABEL_LEN, MAX_NAME_LEN};

/// A message's question, and what the header gate learned.
pub struct Query {
    pub id: u16,
    /// QR=1: a response (from a DNS port).
    pub response: bool,
    pub qtype: u16,
    pub qclass: u16,
    /// Offset of the QNAME in the packet.
    pub name_off: usize,
    /// Wire length of the QNAME including the root label (1..=255).
    pub name_len: usize,
}

const HEADER_LEN: usize = 12;

/// The header gate and the question of a message at `off`. `to_port`/`from_port`: the
/// destination/source port is a watched DNS port. A query must go to one and a response must
/// come from one.
#[inline(always)]
pub fn parse(
    pkt: &Packet,
    off: usize,
    tcp: bool,
    to_port: bool,
    from_port: bool,
) -> Result<Query, Outcome> {
    // For TCP the segment must hold the whole question; anything less is not ours to parse.
    let short = if tcp {
        Counter::TcpNoQuestion
    } else {
        Counter::DnsTruncated
    };
    // ID, flags and QDCOUNT in one bounds-checked load; the QNAME walk below checks the rest
    // of the header (it starts after it).
    let [id, flags, qdcount] = pkt.load::<[u16; 3]>(off).ok_or(short)?;
    let flags = flags as u8;
    let qdcount = u16::from_be(qdcount);
    let response = flags & 0x80 != 0;
    if response && !from_port {
        return Err(Counter::DnsResponse);
    }
    if !response && !to_port {
        return Err(Counter::DnsQueryFromPort);
    }
    if (flags >> 3) & 0x0f != 0 {
        return Err(Counter::DnsOpcode);
    }
    if qdcount != 1 {
        return Err(Counter::DnsQdcount);
    }
    let name_off = off + HEADER_LEN;
    // `pos` is the offset of the next length byte inside the name. Each label moves it by
    // 1 + len with 1 <= len <= 63, and it stays below MAX_NAME_LEN, so every offset is bounded
    // for the verifier and the loop ends within 127 labels; no label counter is needed.
    let mut pos: usize = 0;
    loop {
        // Two bytes, though only the length is used: a valid question always has them (a
        // label's first byte, or QTYPE after the root), and with a 1-byte check LLVM rewrites
        // `p + 1 > end` as `p >= end`, a form the verifier does not learn a range from.
        let len = pkt.load::<[u8; 2]>(name_off + pos).ok_or(short)?[0];
        if len == 0 {
            pos += 1;
            break;
        }
        // One comparison on the common path; the rare one tells the two failures apart.
        if len > MAX_LABEL_LEN {
            return Err(if len & 0xc0 == 0xc0 {
                Counter::DnsCompression
            } else {
                Counter::DnsLabelTooLong
            });
        }
        pos += len as usize + 1;
        // The root label still has to fit.
        if pos >= MAX_NAME_LEN {
            return Err(Counter::DnsNameTooLong);
        }
    }
    let q = pkt.load::<u32>(name_off + pos).ok_or(short)?;
    Ok(Query {
        id: u16::from_be(id),
        response,
        qtype: u16::from_be(q as u16),
        qclass: u16::from_be((q >> 16) as u16),
        name_off,
        name_len: pos,
    })
}
