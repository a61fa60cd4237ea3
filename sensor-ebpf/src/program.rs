//! The program, its maps and the one place that picks the XDP action.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{
        BPF_RB_NO_WAKEUP,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    btf_maps::{Array, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use sensor_common::{
    AllowValue, BLOCKLIST_CAPACITY, BlockValue, CLIENT_ALLOW_CAPACITY, Counter, Counters, Event,
    LpmAddr, MODE_MIRROR, PREFIX_FILTER_WORDS, RING_BYTES,
    event::{HEADER_LEN, SHORT_QNAME_LEN, SHORT_RECORD_LEN},
};

use crate::{Outcome, cursor::Packet, dns, ethernet, ip, transport};

#[btf_map]
static EVENTS: RingBuf<Event, { RING_BYTES as usize }> = RingBuf::new();

#[btf_map]
static COUNTERS: PerCpuArray<Counters, 1> = PerCpuArray::new();

#[btf_map]
static BLOCKLIST: LpmTrie<LpmAddr, BlockValue, { BLOCKLIST_CAPACITY as usize }> = LpmTrie::new();

#[btf_map]
static CLIENT_ALLOW: LpmTrie<LpmAddr, AllowValue, { CLIENT_ALLOW_CAPACITY as usize }> =
    LpmTrie::new();

#[btf_map]
static BLOCK_FILTER: Array<u64, { PREFIX_FILTER_WORDS as usize }> = Array::new();

#[btf_map]
static ALLOW_FILTER: Array<u64, { PREFIX_FILTER_WORDS as usize }> = Array::new();

/// The record's header, and what the DNS stage needs from the header stages.
///
/// The stages write the record's header fields straight into `ev` (its first
/// [`HEADER_LEN`] bytes; `ev.qname` is not used), and the record takes them with eight 8-byte
/// copies once it is reserved. They are passed through memory on purpose: every header path
/// (VLANs, IPv4 options, IPv6 extension headers, UDP/TCP) reaches the QNAME walk with different
/// exact offsets and constants, and the verifier would walk the 127-iteration label loop once
/// per path (over its 1M-instruction limit). Read back from a map (volatile, so LLVM keeps
/// nothing in registers across the walk), the values are plain scalars and all paths share one
/// verifier state.
#[repr(C)]
#[derive(Clone, Copy)]
struct Scratch {
    ev: Event,
    /// Offset of the DNS header in the packet.
    dns_off: u32,
    _pad: u32,
    /// `bpf_jiffies64()` when `ev.ts_mono_ns` was last read from the coarse clock.
    clock_jiffies: u64,
}

const _: () = assert!(core::mem::offset_of!(Event, ifindex) == 8);
const _: () = assert!(core::mem::offset_of!(Event, src_port) == 48);

#[btf_map]
static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// Offsets beyond this are not DNS the program parses (the verifier needs a bound).
const MAX_OFFSET: usize = 0x3fff;

/// 1: stamp events with `bpf_ktime_get_ns` (nanoseconds); 0: with the coarse clock (one
/// scheduler tick, 1-4 ms). On the virtual machines measured here the precise clock read cost
/// about 85 ns per event, more than the rest of the query path; see BENCHMARKS.md.
#[unsafe(no_mangle)]
static PRECISE_TIMESTAMPS: u32 = 0;

/// `MODE_INLINE` or `MODE_MIRROR`, set by the loader in `.rodata`.
#[unsafe(no_mangle)]
static MODE: u32 = 0;

#[xdp]
pub fn dns_sensor(ctx: XdpContext) -> u32 {
    let Some(counters) = COUNTERS.get_ptr_mut(0) else {
        // Cannot happen (slot 0 of a one-slot array always exists); fail open.
        return XDP_PASS;
    };
    let counters = counters.cast::<u64>();
    bump(counters, Counter::Packets);
    let outcome = match process(&ctx, counters) {
        Ok(o) | Err(o) => o,
    };
    bump(counters, outcome);
    if outcome == Counter::Blocked {
        return XDP_DROP;
    }
    // SAFETY: plain read of a static; volatile because the loader rewrites it before loading.
    if unsafe { core::ptr::read_volatile(&MODE) } == MODE_MIRROR {
        XDP_DROP
    } else {
        XDP_PASS
    }
}

/// Returns XDP_PASS and nothing else: the floor the benchmark compares `dns_sensor` with,
/// built in the same object with the same flags. The sensor never loads it.
#[xdp]
pub fn noop(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[inline(always)]
fn bump(counters: *mut u64, c: Counter) {
    // SAFETY: `counters` points to this CPU's `Counters`, a repr(C) struct of COUNTER_COUNT u64
    // fields (size pinned in sensor-common), so index `c` is in bounds. Per-CPU memory is only
    // touched by this CPU while the program runs (no preemption in XDP), so no atomics needed.
    unsafe { *counters.add(c as usize) += 1 }
}

/// A clear filter bit proves that no trie entry can match the address (see sensor-common).
#[inline(always)]
fn may_match(filter: &Array<u64, { PREFIX_FILTER_WORDS as usize }>, bucket: u32) -> bool {
    match filter.get(bucket >> 6) {
        Some(word) => (*word >> (bucket & 63)) & 1 != 0,
        None => true,
    }
}

/// The /128 LPM key of an address, built in an 8-byte-aligned buffer: `Key` is packed (a 4-byte
/// prefix length, then the data), and the verifier rejects the misaligned stack stores LLVM
/// emits for a bare `Key` on the stack. Bytes 4..24 of the buffer are the key.
#[inline(always)]
fn key_buf(lo: u64, hi: u64) -> [u64; 3] {
    [u64::from(128u32.to_le()) << 32, lo, hi]
}

/// The key inside a buffer from [`key_buf`].
#[inline(always)]
fn key_of(buf: &[u64; 3]) -> &Key<LpmAddr> {
    // SAFETY: bytes 4..24 of the 24-byte buffer hold a Key<LpmAddr> (repr(C, packed), align 1,
    // 20 bytes): the prefix length then the address, laid out by key_buf.
    unsafe { &*buf.as_ptr().cast::<u8>().add(4).cast::<Key<LpmAddr>>() }
}

#[inline(always)]
fn process(ctx: &XdpContext, counters: *mut u64) -> Result<Outcome, Outcome> {
    let pkt = Packet::new(ctx);
    let l2 = ethernet::parse(&pkt)?;
    // A tag with VLAN id 0 (priority tag) counts too: any tag moves the network header.
    if l2.l3_off > 14 {
        bump(counters, Counter::Vlan);
    }
    let mut l3 = if l2.proto == ethernet::ETH_P_IP {
        bump(counters, Counter::Ipv4);
        ip::parse_v4(&pkt, l2.l3_off)?
    } else {
        bump(counters, Counter::Ipv6);
        ip::parse_v6(&pkt, l2.l3_off)?
    };

    if may_match(&BLOCK_FILTER, l3.bucket) {
        let [lo, hi] = ip::src(&pkt, &l3);
        if let Some(v) = BLOCKLIST.get(key_of(&key_buf(lo, hi))) {
            // SAFETY: `v` points into the trie node in kernel memory, valid for this program run.
            // Entries are shared by all CPUs, so the hit counter is only ever changed atomically
            // (here) and read by userspace through the map API; it is never read through `v`.
            unsafe {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                    core::ptr::from_ref(&v.packets).cast_mut(),
                    1,
                )
            };
            return Ok(Counter::Blocked);
        }
    }
    // After the blocklist: a blocklisted source is dropped whatever its extension headers.
    if l3.family == 6 {
        ip::walk_ext(&pkt, &mut l3)?;
    }
    if l3.fragment {
        return Err(Counter::Fragment);
    }
    let l4 = transport::parse(&pkt, &l3)?;
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Err(Counter::NotDns);
    };
    let [src_lo, src_hi] = ip::src(&pkt, &l3);
    let [dst_lo, dst_hi] = ip::dst(&pkt, &l3);
    let (vlan_outer, vlan_inner) = ethernet::vlan_ids(&pkt, l2.l3_off);
    // SAFETY: `scratch` is this CPU's slot of a one-slot per-CPU array (non-null, aligned,
    // valid for the run); this only takes the address of its `ev` field.
    let ev = unsafe { core::ptr::addr_of_mut!((*scratch).ev) };
    // SAFETY: `scratch` (and `ev` inside it) is valid for the run and not shared with other
    // CPUs (XDP runs without preemption). Everything read back below is read with volatile
    // loads, so the values really go through memory. Bytes 8..48 of the record are five
    // aligned u64s (offsets pinned above); every field is plain data.
    unsafe {
        let words = ev.cast::<u64>();
        words.add(1).write(
            u64::from(ctx.ingress_ifindex() as u32)
                | (u64::from(vlan_outer) << 32)
                | (u64::from(vlan_inner) << 48),
        );
        words.add(2).write(src_lo);
        words.add(3).write(src_hi);
        words.add(4).write(dst_lo);
        words.add(5).write(dst_hi);
        (*ev).src_port = u16::from_be(l4.ports as u16);
        (*ev).dst_port = u16::from_be((l4.ports >> 16) as u16);
        (*ev).family = l3.family;
        (*ev).transport = l4.proto;
        (*scratch).dns_off = l4.dns_off as u32;
    }
    /// A volatile read of a field of this CPU's scratch slot.
    #[inline(always)]
    fn vol<T: Copy>(p: *const T) -> T {
        // SAFETY: every caller passes a field of this CPU's scratch slot, written above.
        unsafe { core::ptr::read_volatile(p) }
    }
    // SAFETY: only takes the address of a field of this CPU's scratch slot (valid, see above).
    let dns_off = vol(unsafe { core::ptr::addr_of!((*scratch).dns_off) }) as usize;
    // Larger offsets are refused, and the mask bounds the value for the verifier whatever
    // order LLVM puts the check and the loads in.
    if dns_off > MAX_OFFSET {
        return Err(Counter::DnsTruncated);
    }
    // SAFETY: only takes the address of a field of the header in this CPU's scratch slot.
    let tcp = vol(unsafe { core::ptr::addr_of!((*ev).transport) }) == ip::IPPROTO_TCP;
    let q = dns::parse(&pkt, dns_off & MAX_OFFSET, tcp)?;
    bump(counters, Counter::DnsQueries);

    // SAFETY: as above.
    let family = vol(unsafe { core::ptr::addr_of!((*ev).family) });
    // SAFETY: words 2 and 3 of the header (the source address, written above) are inside the
    // record, which is 8-byte aligned; `add` stays inside it and `vol` reads them.
    let (src_lo, src_hi) = unsafe {
        let words = ev.cast::<u64>();
        (vol(words.add(2)), vol(words.add(3)))
    };
    let bucket = sensor_common::bucket_of_first_word(
        family == 4,
        u32::from_be(src_lo as u32),
        u32::from_be((src_hi >> 32) as u32),
    );
    if may_match(&ALLOW_FILTER, bucket)
        && let Some(v) = CLIENT_ALLOW.get(key_of(&key_buf(src_lo, src_hi)))
    {
        // SAFETY: as for BLOCKLIST above: shared kernel memory, only changed atomically.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                core::ptr::from_ref(&v.queries).cast_mut(),
                1,
            )
        };
        return Ok(Counter::Allowlisted);
    }

    let name_len = q.name_len & 0xff;
    // SAFETY: `ev` is the header in this CPU's scratch slot (see above).
    unsafe {
        // SAFETY (read_volatile): a plain read of a static the loader sets.
        if core::ptr::read_volatile(&PRECISE_TIMESTAMPS) != 0 {
            (*ev).ts_mono_ns = bpf_ktime_get_ns();
        } else {
            coarse_ns(scratch);
        }
        (*ev).dns_id = q.id;
        (*ev).qtype = q.qtype;
        (*ev).qclass = q.qclass;
        (*ev).qname_len = name_len as u16;
        (*ev)._pad = [0; 2];
    }
    // A record is only as long as its class needs (see `Event`): fewer ring cache lines for
    // nearly every name. Each class is its own reservation: the verifier wants a constant size.
    if name_len < SHORT_QNAME_LEN {
        emit::<ShortRecord>(ctx, ev, q.name_off)
    } else {
        emit::<Event>(ctx, ev, q.name_off)
    }
}

/// A short record (see `Event`): the header and up to `SHORT_QNAME_LEN` name bytes.
type ShortRecord = [u64; SHORT_RECORD_LEN / 8];

/// Reserves a record of type `R` (an [`Event`] or a prefix of one whose QNAME room is a power
/// of two larger than the name: the caller picks `R` by `qname_len`), fills it with the header
/// from `ev` and the QNAME (`qname_len` bytes at `name_off` in the packet), and submits it.
#[inline(always)]
fn emit<R: 'static>(
    ctx: &XdpContext,
    ev: *const Event,
    name_off: usize,
) -> Result<Outcome, Outcome> {
    let room = core::mem::size_of::<R>() - HEADER_LEN;
    const { assert!((core::mem::size_of::<R>() - HEADER_LEN).is_power_of_two()) };
    // The name's length read back from memory and masked to the record's room: the mask is a
    // no-op (the caller chose R by this length), but LLVM cannot know that of a volatile read,
    // so it stays, and it is what bounds the copy for the verifier. A mask on the caller's value
    // would be folded away by LLVM, which knows the branch it is on.
    // SAFETY: `ev` is the header in this CPU's scratch slot (see `process`).
    let name_len =
        usize::from(unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ev).qname_len)) })
            & (room - 1);
    let Some(mut entry) = EVENTS.reserve_untyped::<R>(0) else {
        return Err(Counter::RingFull);
    };
    let rec = entry.as_mut_ptr().cast::<u64>();
    // SAFETY: `rec` points to a reserved, exclusively owned, 8-byte aligned ring buffer record
    // of size_of::<R>() >= HEADER_LEN bytes; `ev` is the header in this CPU's scratch slot
    // (see `process`), read with volatile loads so the values go through memory.
    unsafe {
        let head = ev.cast::<u64>();
        let mut i = 0;
        while i < HEADER_LEN / 8 {
            rec.add(i).write(core::ptr::read_volatile(head.add(i)));
            i += 1;
        }
    }
    // SAFETY: the record has `room` bytes after the header and `name_len < room`, a power of
    // two, so `name_len` rounded up to 8 fits.
    copy_name(ctx, name_off, name_len, unsafe {
        rec.cast::<u8>().add(HEADER_LEN)
    });
    // No wakeup: userspace drains on a short timer instead. A wakeup per record (the default
    // when the reader has caught up) costs an irq_work and a reader wakeup per query, which
    // measured at several microseconds per query on a live veth (BENCHMARKS.md).
    entry.submit(BPF_RB_NO_WAKEUP as u64);
    Ok(Counter::Events)
}

/// Stamps the record in `scratch` with the coarse clock, read once per jiffy per CPU. The
/// coarse clock only moves at a tick, so within one jiffy every read returns the same value;
/// the record's `ts_mono_ns` still holds the value read in jiffy `clock_jiffies` (nothing else
/// writes it while timestamps are coarse). `bpf_jiffies64` is inlined by the verifier (two
/// instructions), while `bpf_ktime_get_coarse_ns` is a helper call of about 10 ns here (three
/// returns through the SRSO return thunk). The kernel advances jiffies just before the
/// timekeeper, so a read in that window keeps the previous tick's time for the rest of the
/// jiffy: at most one more tick of lag than the coarse clock itself.
#[inline(always)]
fn coarse_ns(scratch: *mut Scratch) {
    // SAFETY: `scratch` is this CPU's slot of SCRATCH (see `process`); XDP runs without
    // preemption, so nothing else touches it during the run.
    unsafe {
        let j = bpf_jiffies64();
        if (*scratch).clock_jiffies != j {
            (*scratch).ev.ts_mono_ns = bpf_ktime_get_coarse_ns();
            (*scratch).clock_jiffies = j;
        }
    }
}

/// Copies the QNAME (`len` bytes at `off`, 1..=255, known to be inside the packet and followed
/// by the four bytes of QTYPE and QCLASS) to `dst`, eight bytes at a time.
/// `bpf_xdp_load_bytes` did the same in one call but cost about 60 ns per event here
/// (BENCHMARKS.md). Because QTYPE and QCLASS follow the name, an 8-byte load is inside the
/// packet while at least four name bytes are left, and a 4-byte load covers the last one to
/// three; what lands past `len` is unspecified by the record's contract. The packet checks
/// never fail; the verifier needs them.
///
/// `dst` must be 8-byte aligned with room for `len` rounded up to 8 bytes: in the loop
/// `i + 4 <= len` and `i` is a multiple of 8, so the 8-byte store ends at `len + 4` rounded
/// down to 8 at most; after it `i < len`, so the 4-byte store ends at `i + 4 <= len + 3`, also
/// within `len` rounded up to 8. (For `len <= 64`, everything stays in 64 bytes; for
/// `len <= 255`, in 256.)
#[inline(always)]
fn copy_name(ctx: &XdpContext, off: usize, len: usize, dst: *mut u8) {
    let pkt = Packet::opaque(ctx);
    let mut i = 0usize;
    while i + 4 <= len {
        let Some(chunk) = pkt.load::<u64>(off + i) else {
            return;
        };
        // SAFETY: see above; aligned because `dst` is and `i` is a multiple of 8.
        unsafe { dst.add(i).cast::<u64>().write(chunk) };
        i += 8;
    }
    if i < len
        && let Some(w) = pkt.load::<u32>(off + i)
    {
        // SAFETY: see above.
        unsafe { dst.add(i).cast::<u32>().write(w) };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
