//! The answer walk of a response: the owner name, type, class, TTL and data of each answer
//! record, keeping the A/AAAA addresses and their TTLs.
//!
//! Bounded twice for the verifier: at most [`MAX_ANSWER_RRS`] records, and each owner name at
//! most [`MAX_LABELS`] labels. Owner names are skipped, not followed: a compression pointer
//! ends a name, and it must point strictly backwards (to an offset before its own, as RFC 1035
//! §4.1.4's "prior occurrence" requires), so a message cannot loop a reader that does follow it.

use sensor_common::{
    MAX_LABEL_LEN, MAX_LABELS, MAX_NAME_LEN, ResponseInfo,
    response::{
        MAX_ADDRS, MAX_ANSWER_RRS, WALK_BAD_NAME, WALK_COMPLETE, WALK_LIMIT, WALK_TRUNCATED,
    },
};

use crate::{cursor::Packet, ip::V4_MAPPED_WORD};

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// Offsets beyond this are not parsed (the verifier needs a bound; no linear XDP frame is this
/// long).
const MAX_OFFSET: usize = 0x3fff;

/// Skips the owner name at `start`; returns the offset after it, or the walk status that ends
/// the walk. `dns_off` is the message's start (compression pointers are relative to it), `end`
/// its end.
#[inline(always)]
fn skip_name(pkt: &Packet, start: usize, dns_off: usize, end: usize) -> Result<usize, u8> {
    let mut pos = start;
    let mut i = 0;
    while i < MAX_LABELS {
        // Inside the message, not just the frame (bytes past its length are not DNS).
        if pos + 2 > end {
            return Err(WALK_TRUNCATED);
        }
        // Two bytes: a pointer needs both, a label has at least one more, and after the root
        // label comes the record's TYPE. (A 1-byte check is a form the verifier learns no
        // range from, see dns.rs.)
        let [len, next] = pkt.load::<[u8; 2]>(pos).ok_or(WALK_TRUNCATED)?;
        if len == 0 {
            return Ok(pos + 1);
        }
        if len & 0xc0 == 0xc0 {
            let target = (usize::from(len & 0x3f) << 8) | usize::from(next);
            // Strictly backwards: to an offset before the pointer's own.
            if dns_off + target >= pos {
                return Err(WALK_BAD_NAME);
            }
            return Ok(pos + 2);
        }
        if len > MAX_LABEL_LEN {
            return Err(WALK_BAD_NAME);
        }
        pos += usize::from(len) + 1;
        // The root label (or a pointer) still has to fit in 255 bytes.
        if pos - start >= MAX_NAME_LEN {
            return Err(WALK_BAD_NAME);
        }
        i += 1;
    }
    Err(WALK_BAD_NAME)
}

/// Walks the answer section that starts at `start` (right after the question) of the message
/// at `dns_off` ending at `dns_end`, writing what it finds into `info` (`answers_walked`,
/// `addr_count`, `addrs`, `ttls`, `aaaa_mask`, `cnames`, `walk`).
///
/// `pos_slot` is a scratch word: each record's start, and the offset after its owner name, go
/// through it (a volatile store and load), so that every path reaches the verifier as the same
/// state (an unknown offset below `MAX_OFFSET`) and each record is verified once, not once per
/// way the owner name before it could end. The address count and the CNAME count live in
/// `info` for the same reason. The caller passes `start` the same way.
///
/// # Safety
/// `info` and `pos_slot` point into this CPU's scratch slot (valid, aligned, not shared while
/// the program runs).
#[inline(always)]
pub unsafe fn walk(
    pkt: &Packet,
    info: *mut ResponseInfo,
    pos_slot: *mut u32,
    dns_off: usize,
    dns_end: usize,
    start: usize,
    ancount: u16,
) {
    // SAFETY: `info` points into this CPU's scratch slot (the function's contract); the same
    // holds for every access to `info` and `pos_slot` below.
    unsafe {
        (*info).answers_walked = 0;
        (*info).addr_count = 0;
        (*info).cnames = 0;
        (*info).aaaa_mask = 0;
    }
    let mut pos = start;
    let mut rr = 0usize;
    let status = loop {
        if rr == usize::from(ancount) {
            break WALK_COMPLETE;
        }
        if rr == MAX_ANSWER_RRS {
            break WALK_LIMIT;
        }
        if pos > MAX_OFFSET {
            break WALK_TRUNCATED;
        }
        // SAFETY: see above.
        pos = unsafe {
            core::ptr::write_volatile(pos_slot, pos as u32);
            core::ptr::read_volatile(pos_slot) as usize & MAX_OFFSET
        };
        pos = match skip_name(pkt, pos, dns_off, dns_end) {
            Ok(p) => p,
            Err(s) => break s,
        };
        if pos > MAX_OFFSET {
            break WALK_TRUNCATED;
        }
        // Through memory again: the name walk can end after any of its labels, and each way
        // would otherwise carry its own offset range into the rest of the record.
        // SAFETY: see above.
        pos = unsafe {
            core::ptr::write_volatile(pos_slot, pos as u32);
            core::ptr::read_volatile(pos_slot) as usize & MAX_OFFSET
        };
        // TYPE, CLASS, TTL (two halves) and RDLENGTH in one load.
        let Some(fixed) = pkt.load::<[u16; 5]>(pos) else {
            break WALK_TRUNCATED;
        };
        let rtype = u16::from_be(fixed[0]);
        let class = u16::from_be(fixed[1]);
        let ttl = (u32::from(u16::from_be(fixed[2])) << 16) | u32::from(u16::from_be(fixed[3]));
        let rdlen = usize::from(u16::from_be(fixed[4]));
        let rdata = pos + 10;
        if rdata + rdlen > dns_end {
            break WALK_TRUNCATED;
        }
        if rtype == TYPE_CNAME {
            // SAFETY: see above.
            unsafe {
                let c = core::ptr::read_volatile(&(*info).cnames);
                (*info).cnames = c.wrapping_add(1);
            }
        } else if class == CLASS_IN
            && ((rtype == TYPE_A && rdlen == 4) || (rtype == TYPE_AAAA && rdlen == 16))
        {
            // SAFETY: see above.
            let n = usize::from(unsafe { core::ptr::read_volatile(&(*info).addr_count) });
            if n < MAX_ADDRS {
                let words = if rtype == TYPE_A {
                    let Some(v4) = pkt.load::<u32>(rdata) else {
                        break WALK_TRUNCATED;
                    };
                    [0, u64::from(V4_MAPPED_WORD) | (u64::from(v4) << 32)]
                } else {
                    let Some(v6) = pkt.load::<[u64; 2]>(rdata) else {
                        break WALK_TRUNCATED;
                    };
                    v6
                };
                let n = n & (MAX_ADDRS - 1);
                // SAFETY: see above; `n < MAX_ADDRS` indexes the arrays, and the address is
                // written as the two u64 words of its 8-byte aligned 16 bytes (`addrs` is at
                // offset 64 of the 8-aligned info, pinned in sensor-common).
                unsafe {
                    let slot = (*info).addrs.as_mut_ptr().add(n).cast::<u64>();
                    slot.write(words[0]);
                    slot.add(1).write(words[1]);
                    (*info).ttls[n] = ttl;
                    if rtype == TYPE_AAAA {
                        (*info).aaaa_mask |= 1 << n;
                    }
                    (*info).addr_count = (n + 1) as u8;
                }
            }
        }
        pos = rdata + rdlen;
        rr += 1;
        // SAFETY: see above.
        unsafe { (*info).answers_walked = rr as u8 };
    };
    // SAFETY: see above.
    unsafe { (*info).walk = status };
}
