//! The DNS header gate and the QNAME walk.

use crate::{Outcome, cursor::Packet};
use sensor_common::{Counter, MAX_LABEL_LEN, MAX_LABELS, MAX_NAME_LEN};

pub struct Query {
    pub id: u16,
    pub qtype: u16,
    pub qclass: u16,
    /// Offset of the QNAME in the packet.
    pub name_off: usize,
    /// Wire length of the QNAME including the root label (1..=255).
    pub name_len: usize,
}

const HEADER_LEN: usize = 12;

#[inline(always)]
pub fn parse(pkt: &Packet, off: usize, tcp: bool) -> Result<Query, Outcome> {
    // For TCP the segment must hold the whole question; anything less is not ours to parse.
    let short = if tcp {
        Counter::TcpNoQuestion
    } else {
        Counter::DnsTruncated
    };
    let h = pkt.bytes::<HEADER_LEN>(off).ok_or(short)?;
    if h[2] & 0x80 != 0 {
        return Err(Counter::DnsResponse);
    }
    if (h[2] >> 3) & 0x0f != 0 {
        return Err(Counter::DnsOpcode);
    }
    if h[4] != 0 || h[5] != 1 {
        return Err(Counter::DnsQdcount);
    }
    let name_off = off + HEADER_LEN;
    // `pos` is the offset of the next length byte inside the name. Each label moves it by
    // 1 + len with len <= 63, and it never exceeds MAX_NAME_LEN, so every offset is bounded
    // for the verifier and the loop has a constant trip count.
    let mut pos: usize = 0;
    let mut done = false;
    for _ in 0..MAX_LABELS {
        let len = pkt.u8(name_off + pos).ok_or(short)?;
        if len == 0 {
            pos += 1;
            done = true;
            break;
        }
        if len & 0xc0 == 0xc0 {
            return Err(Counter::DnsCompression);
        }
        if len > MAX_LABEL_LEN {
            return Err(Counter::DnsLabelTooLong);
        }
        pos += len as usize + 1;
        // The root label still has to fit.
        if pos >= MAX_NAME_LEN {
            return Err(Counter::DnsNameTooLong);
        }
    }
    if !done {
        return Err(Counter::DnsNameTooLong);
    }
    let q = pkt.bytes::<4>(name_off + pos).ok_or(short)?;
    Ok(Query {
        id: u16::from_be_bytes([h[0], h[1]]),
        qtype: u16::from_be_bytes([q[0], q[1]]),
        qclass: u16::from_be_bytes([q[2], q[3]]),
        name_off,
        name_len: pos,
    })
}
