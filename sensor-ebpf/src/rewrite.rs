//! Rewriting a listed name's response into NXDOMAIN (`blocklist.resolved.rewrite =
//! "nxdomain"`, inline mode), as an RPZ would: XDP only, UDP only, after everything else the
//! run does (the answers were recorded and blocked from the original bytes).
//!
//! The message keeps its header and question: RCODE becomes 3 (NXDOMAIN), TC is cleared (the
//! rewritten message is whole; left set, it would send the client to TCP, where the real answer
//! is), the other flags stay, ANCOUNT = NSCOUNT = ARCOUNT = 0, and the frame is cut right after
//! the question. The IP and UDP lengths and the checksums are fixed.
//!
//! Every write happens *before* the cut, on the packet as it was, and nothing reads the packet
//! after `bpf_xdp_adjust_tail` (which invalidates every packet pointer): the lengths already
//! say where the datagram ends, so were the cut to fail the bytes left after it would be
//! trailing bytes the IP layer trims, and the client still gets a valid NXDOMAIN.
//!
//! The UDP checksum is summed anew over the pseudo-header and the kept datagram (at most 279
//! bytes: the UDP and DNS headers and the longest question), not updated incrementally: the
//! removed records are part of the old sum, and taking them out would mean summing them, up to
//! the whole frame. The IPv4 header checksum, where one word changes, is updated (RFC 1624).

use aya_ebpf::{helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use sensor_common::{
    Counter, MAX_NAME_LEN,
    response::{MAX_ADDRS, WALK_COMPLETE},
};

use crate::{
    cursor::{Ctx, Packet},
    program::{MAX_OFFSET, Scratch, bump},
};

/// 1: rewrite listed names' UDP responses into NXDOMAIN; 0: leave them (no cost: a `.rodata`
/// constant, the verifier prunes the code). Set by the loader (`blocklist.resolved.rewrite`),
/// only with blocking by resolution on.
#[unsafe(no_mangle)]
static RESOLVED_REWRITE: u32 = 0;

/// Whether the rewrite is on (see [`RESOLVED_REWRITE`]).
#[inline(always)]
pub fn enabled() -> bool {
    // SAFETY: a plain read of a static the loader sets; volatile so it is not folded.
    unsafe { core::ptr::read_volatile(&RESOLVED_REWRITE) != 0 }
}

/// u64 words of the checksum buffer: the UDP header, the DNS header and the longest question
/// (8 + 12 + 255 + 4 = 279 bytes), rounded up.
pub const CSUM_WORDS: usize = 40;
const CSUM_BYTES: usize = CSUM_WORDS * 8;
const _: () = assert!(8 + 12 + MAX_NAME_LEN + 4 <= CSUM_BYTES);

const RCODE_MASK: u16 = 0x000f;
const TC: u16 = 0x0200;
const NXDOMAIN: u16 = 3;
const IPPROTO_UDP: u16 = 17;

/// After the answers of a listed name's response were blocked (`resolved::block_if_listed`):
/// marks it for [`nxdomain`] when it is a NOERROR response over UDP whose answers were read
/// whole and none is protected. A TCP one, or one whose answers were not all read (a protected
/// address could be among those unread), is counted and left alone.
#[inline(always)]
pub fn decide(counters: *mut u64, scratch: *mut Scratch) {
    // SAFETY: fields of this CPU's scratch slot, written for this response by `process`, the
    // answer walk and `resolved::find_listed`/`block_answers`.
    let (found, protected, transport, flags, walk, addrs) = unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*scratch).listed_found)),
            core::ptr::read_volatile(core::ptr::addr_of!((*scratch).protected_hit)),
            core::ptr::read_volatile(core::ptr::addr_of!((*scratch).ev.transport)),
            core::ptr::read_volatile(core::ptr::addr_of!((*scratch).info.flags)),
            core::ptr::read_volatile(core::ptr::addr_of!((*scratch).info.walk)),
            core::ptr::read_volatile(core::ptr::addr_of!((*scratch).info.addr_count)),
        )
    };
    if found != 1 || protected != 0 || flags & RCODE_MASK != 0 {
        return;
    }
    if transport != crate::ip::IPPROTO_UDP
        || walk != WALK_COMPLETE
        || usize::from(addrs) >= MAX_ADDRS
    {
        bump(counters, Counter::ResolvedRewriteSkipped);
        return;
    }
    // SAFETY: as above.
    unsafe { core::ptr::addr_of_mut!((*scratch).rewrite).write_volatile(1) };
}

/// A load through its own window (see `Packet::opaque`): LLVM drops a bounds check it can
/// prove from an earlier one ("the UDP header is inside, so the IP header before it is") and
/// the verifier, which cannot follow that proof, refuses the load. With the frame's end read
/// anew for each access, every check stays at its access.
#[inline(always)]
fn ld<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    Packet::opaque(ctx).load::<T>(off)
}

/// A store through its own window (see [`ld`]).
#[inline(always)]
fn st<T: Copy>(ctx: &XdpContext, off: usize, v: T) -> bool {
    Packet::opaque(ctx).store::<T>(off, v)
}

/// Folds a one's complement sum to 16 bits.
#[inline(always)]
fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Rewrites the UDP response whose offsets `response` left in `scratch` (`l3_off`, `dns_off`,
/// `q_end`, the family in `ev`) into NXDOMAIN and counts it. Leaves the packet unchanged (and
/// uncounted) when anything is not as the parse found it, which cannot happen, or for an IPv6
/// datagram with extension headers or a jumbogram (the pseudo-header would need the routing
/// header's final destination; no resolver sends such answers).
///
/// Sums are in the packet's byte order read as native words: a one's complement sum does not
/// depend on the order (RFC 1071 §2(B)), so the folded result is stored back as read.
#[inline(always)]
pub fn nxdomain(ctx: &XdpContext, counters: *mut u64, scratch: *mut Scratch) {
    // SAFETY: fields of this CPU's scratch slot, written by `process` and `response` for this
    // packet (see `program::process`).
    let (l3_off, dns_off, q_end, family) = unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*scratch).l3_off)) as usize & MAX_OFFSET,
            core::ptr::read_volatile(core::ptr::addr_of!((*scratch).dns_off)) as usize & MAX_OFFSET,
            core::ptr::read_volatile(core::ptr::addr_of!((*scratch).q_end)) as usize & MAX_OFFSET,
            core::ptr::read_volatile(core::ptr::addr_of!((*scratch).ev.family)),
        )
    };
    // The UDP header's offset read on its own, not computed from `dns_off`: LLVM would then
    // address its bytes from the DNS header's pointer with a negative offset, which the
    // verifier refuses for a packet pointer.
    // SAFETY: as above.
    let udp_off = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*scratch).l4_off)) }
        as usize
        & MAX_OFFSET;
    let frame_len = Packet::opaque(ctx).readable();
    // The question is inside the frame and after the header (the parse checked both).
    if q_end > frame_len
        || q_end < dns_off + 12 + 5
        || q_end < udp_off + 8 + 12 + 5
        || dns_off < l3_off + 28
    {
        return;
    }
    let udp_len = q_end - udp_off;
    if udp_len > CSUM_BYTES {
        return;
    }
    // Every check before the first write: the loads and stores after it are of bytes found
    // inside the frame here (the IP header, the UDP and DNS headers); their own checks are for
    // the verifier and never fail, so a packet is never left half rewritten.
    let Some(flags) = ld::<u16>(ctx, dns_off + 2) else {
        return;
    };
    let Some(old_csum) = ld::<u16>(ctx, udp_off + 6) else {
        return;
    };
    let v4 = family == 4;
    if v4 {
        if Packet::opaque(ctx).at::<20>(l3_off).is_none() {
            return;
        }
    } else {
        // No extension headers (the UDP header right after the fixed one), no jumbogram.
        let Some(plen) = ld::<u16>(ctx, l3_off + 4) else {
            return;
        };
        if udp_off != l3_off + 40 || plen == 0 || Packet::opaque(ctx).at::<40>(l3_off).is_none() {
            return;
        }
    }

    // The DNS header: the flags with RCODE 3 and TC clear, then no records.
    let f = (u16::from_be(flags) & !(RCODE_MASK | TC)) | NXDOMAIN;
    if !st::<u16>(ctx, dns_off + 2, f.to_be()) || !st::<[u16; 3]>(ctx, dns_off + 6, [0; 3]) {
        return;
    }
    // The UDP length, and the checksum field zeroed for the sum below.
    let udp_len_be = (udp_len as u16).to_be();
    if !st::<u16>(ctx, udp_off + 4, udp_len_be) || !st::<u16>(ctx, udp_off + 6, 0) {
        return;
    }
    // The IP length; and for IPv4 the header checksum, updated for that one word (RFC 1624
    // eqn. 3: HC' = ~(~HC + ~m + m')). The pseudo-header sum: the addresses, the protocol and
    // the UDP length.
    let mut sum: u64 = u64::from(IPPROTO_UDP.to_be()) + u64::from(udp_len_be);
    if v4 {
        let (Some(old_total), Some(hc), Some(addrs)) = (
            ld::<u16>(ctx, l3_off + 2),
            ld::<u16>(ctx, l3_off + 10),
            ld::<[u32; 2]>(ctx, l3_off + 12),
        ) else {
            return;
        };
        let total = ((q_end - l3_off) as u16).to_be();
        let hc = !fold(u64::from(!hc) + u64::from(!old_total) + u64::from(total));
        if !st::<u16>(ctx, l3_off + 2, total) || !st::<u16>(ctx, l3_off + 10, hc) {
            return;
        }
        sum += u64::from(addrs[0]) + u64::from(addrs[1]);
    } else {
        if !st::<u16>(ctx, l3_off + 4, udp_len_be) {
            return;
        }
        // The two addresses, a word at a time (the stack is nearly used up).
        let mut i = 0;
        while i < 8 {
            let Some(w) = ld::<u32>(ctx, l3_off + 8 + 4 * i) else {
                return;
            };
            sum += u64::from(w);
            i += 1;
        }
    }
    // A zero UDP checksum over IPv4 means "none" (RFC 768) and stays so; over IPv6 it is
    // mandatory (RFC 8200 §8.1).
    if !v4 || old_csum != 0 {
        // SAFETY: the buffer is a field of this CPU's scratch slot (valid, 8-byte aligned, not
        // shared while the program runs); zeroed first, so the bytes after the datagram (at
        // most 7, the odd last byte's pad among them) add nothing to the sum.
        let buf = unsafe { core::ptr::addr_of_mut!((*scratch).csum_buf).cast::<u64>() };
        let mut i = 0;
        while i < CSUM_WORDS {
            // SAFETY: as above, `i < CSUM_WORDS`.
            unsafe { buf.add(i).write_volatile(0) };
            i += 1;
        }
        // Read back from memory and bounded again for the verifier: the helper's length must be
        // provably in the buffer and above zero, and LLVM drops a zero check it can prove
        // (`udp_len` is at least 25) from a value it still knows.
        // SAFETY: a field of this CPU's scratch slot.
        let len = unsafe {
            let l = core::ptr::addr_of_mut!((*scratch).csum_len);
            l.write_volatile(udp_len as u32);
            l.read_volatile() as usize & 0x1ff
        };
        if len == 0 || len > CSUM_BYTES {
            return;
        }
        // SAFETY: `buf` is valid for CSUM_BYTES >= len bytes of writes (see above).
        if unsafe { ctx.load_bytes(udp_off as u32, buf.cast::<u8>(), len as u32) } != 0 {
            return;
        }
        let mut i = 0;
        while i < CSUM_WORDS {
            // SAFETY: as above.
            let w = unsafe { buf.add(i).read() };
            sum += (w & 0xffff_ffff) + (w >> 32);
            i += 1;
        }
        let c = !fold(sum);
        // A sum that comes out as zero is sent as all ones (zero means "no checksum").
        let c = if c == 0 { 0xffff } else { c };
        if !st::<u16>(ctx, udp_off + 6, c) {
            return;
        }
    }
    bump(counters, Counter::ResolvedRewritten);
    // Last: cut the frame after the question. Nothing reads the packet after this.
    let delta = q_end as i32 - frame_len as i32;
    if delta < 0 {
        // SAFETY: the program's own context; a negative delta only shrinks the frame (never
        // below the Ethernet header: `q_end` is past the IP and UDP headers). On failure the
        // frame keeps its length, and the IP and UDP lengths written above end the datagram.
        unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) };
    }
}
