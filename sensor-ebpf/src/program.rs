//! The program, its maps and the one place that picks the XDP action.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_RB_NO_WAKEUP, TC_ACT_UNSPEC,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    btf_maps::{Array, LpmTrie, PerCpuArray, ProgramArray, RingBuf, lpm_trie::Key},
    helpers::{
        bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_ktime_get_tai_ns,
        bpf_skb_pull_data,
    },
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::error;
use sensor_common::{
    AllowValue, BLOCKLIST_CAPACITY, BlockValue, CLIENT_ALLOW_CAPACITY, Counter, Counters, Event,
    LpmAddr, MAX_TCP_MESSAGES, MODE_MIRROR, PREFIX_FILTER_WORDS, RING_BYTES, ResponseInfo,
    event::{HEADER_LEN, SHORT_QNAME_LEN, SHORT_RECORD_LEN},
    response::{
        MSG_OFF, MSG_ROOMS, RECORD_QUERY, RECORD_RESPONSE, WALK_COMPLETE, WALK_LIMIT,
        WALK_TRUNCATED,
    },
};

use crate::{
    Outcome, answers,
    cursor::{Ctx, Packet},
    dns, ethernet, ip, resolved, rewrite, transport,
};

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
pub(crate) struct Scratch {
    pub(crate) ev: Event,
    /// A response's [`ResponseInfo`], filled by the answer walk, copied into its record.
    pub(crate) info: ResponseInfo,
    /// Offset of the DNS header in the packet.
    pub(crate) dns_off: u32,
    /// Offset of the end of the DNS message (UDP length, IP length, TCP length prefix).
    dns_end: u32,
    /// The answer walk's position, passed through memory (see `answers::walk`).
    pub(crate) walk_pos: u32,
    /// Offset of the IP header (for the NXDOMAIN rewrite, see `rewrite::nxdomain`).
    pub(crate) l3_off: u32,
    /// `bpf_jiffies64()` when `ev.ts_mono_ns` was last read from the coarse clock.
    clock_jiffies: u64,
    /// Bit `i`: a label of the QNAME starts at byte `i` (see `resolved::on_response`).
    pub(crate) labels: [u64; 4],
    /// The name walk's position (see `resolved::find_listed`).
    pub(crate) name_pos: u32,
    /// 1: the response's QNAME is listed under the key `listed`.
    pub(crate) listed_found: u32,
    pub(crate) listed: u64,
    /// A DEST_BLOCK value being inserted (see `resolved::block_answers`).
    pub(crate) dest: sensor_common::resolved::DestValue,
    /// A TCP segment's next message: its offset (the end of the one before), the segment's
    /// end (the IP datagram's, saturated) and its index in the segment (see `next_message`).
    next_off: u32,
    seg_end: u32,
    msg_index: u32,
    /// The end of a response's question (for the NXDOMAIN rewrite, which cuts the message
    /// there).
    pub(crate) q_end: u32,
    /// 1: an answer address of this response is protected (DEST_PROTECT), so it is not
    /// rewritten (see `resolved::block_answers`).
    pub(crate) protected_hit: u32,
    /// 1: `dns_sensor` rewrites this response into NXDOMAIN once the rest of the run is done
    /// (see `rewrite::nxdomain`).
    pub(crate) rewrite: u32,
    /// Offset of the transport header (for the NXDOMAIN rewrite).
    pub(crate) l4_off: u32,
    /// The rewritten datagram's length, passed through memory (see `rewrite::nxdomain`).
    pub(crate) csum_len: u32,
    /// The rewritten UDP datagram and its pseudo-header are summed here (see `rewrite`).
    pub(crate) csum_buf: [u64; crate::rewrite::CSUM_WORDS],
}

// The answer addresses are read as aligned u64 words (see `resolved::block_answers`).
const _: () = assert!(core::mem::offset_of!(Scratch, info) % 8 == 0);

const _: () = assert!(core::mem::offset_of!(Event, ifindex) == 8);
const _: () = assert!(core::mem::offset_of!(Event, src_port) == 48);

#[btf_map]
static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// Offsets beyond this are not DNS the program parses (the verifier needs a bound).
pub(crate) const MAX_OFFSET: usize = 0x3fff;

/// 1: stamp events with `bpf_ktime_get_ns` (nanoseconds); 0: with the coarse clock (one
/// scheduler tick, 1-4 ms). On the virtual machines measured here the precise clock read cost
/// about 85 ns per event, more than the rest of the query path; see BENCHMARKS.md.
#[unsafe(no_mangle)]
static PRECISE_TIMESTAMPS: u32 = 0;

/// 1: report responses from a DNS port; 0: count them (`responses_off`) and send nothing.
/// Set by the loader (`capture.responses`).
#[unsafe(no_mangle)]
static REPORT_RESPONSES: u32 = 1;

/// `MODE_INLINE` or `MODE_MIRROR`, set by the loader in `.rodata`.
#[unsafe(no_mangle)]
static MODE: u32 = 0;

/// CLOCK_TAI minus CLOCK_REALTIME in seconds when the program was loaded (0 unless NTP set the
/// kernel's TAI offset, 37 since 2017 when it did). The kernel has no Unix-time helper, and a
/// BLOCKLIST entry's expiry is Unix seconds (what `bpftool` shows and operators read), so the
/// program takes `bpf_ktime_get_tai_ns` back to Unix time with it. It changes only at a leap
/// second (none are scheduled, and they end by 2035): an entry would lapse at most a second
/// late or early.
#[unsafe(no_mangle)]
static TAI_OFFSET_SECS: u64 = 0;

#[xdp]
pub fn dns_sensor(ctx: XdpContext) -> u32 {
    let Some(counters) = COUNTERS.get_ptr_mut(0) else {
        // Cannot happen (slot 0 of a one-slot array always exists); fail open. Logged (see
        // `missing_slot`): only a broken map or helper gets here, no packet can bring it about.
        missing_slot(&ctx, MissingSlot::Counters);
        return XDP_PASS;
    };
    let counters = counters.cast::<u64>();
    bump(counters, Counter::Packets);
    let mut seen = core::ptr::null_mut();
    let outcome = match process(&ctx, counters, &mut seen) {
        Ok(o) | Err(o) => o,
    };
    bump(counters, outcome);
    if outcome == Counter::Blocked || outcome == Counter::DestBlocked {
        return XDP_DROP;
    }
    // Last, once the record is sent and the answers blocked: both describe the response as
    // the server sent it. Inline mode only (a mirror's copy is dropped anyway; the config
    // refuses the combination).
    if resolved::enabled() && rewrite::enabled() && rewrite_pending(seen) && !mirror() {
        rewrite::nxdomain(&ctx, counters, seen);
    }
    if more_messages(seen) {
        pipeline(&ctx, counters, &NEXT_XDP, 1);
    }
    xdp_action()
}

/// Whether `response` marked this packet's response for the NXDOMAIN rewrite (`seen` as for
/// [`more_messages`]).
#[inline(always)]
fn rewrite_pending(seen: *mut Scratch) -> bool {
    // SAFETY: non-null, `seen` is this CPU's scratch slot (valid for the run), whose `rewrite`
    // `process` cleared for this packet; volatile, so it is read from memory.
    !seen.is_null()
        && unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*seen).rewrite)) } == 1
}

/// Whether `process` left a TCP segment's next message for the continuation (see `process`):
/// `seen` is null when no message was found, else this CPU's scratch slot.
#[inline(always)]
fn more_messages(seen: *mut Scratch) -> bool {
    // SAFETY: non-null, `seen` is this CPU's scratch slot (valid for the run), whose
    // `msg_index` `process` wrote for this packet; volatile, so it is read from memory.
    !seen.is_null()
        && unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*seen).msg_index)) } != 0
}

/// The action for a packet that is not dropped for its source or destination.
#[inline(always)]
fn xdp_action() -> u32 {
    if mirror() { XDP_DROP } else { XDP_PASS }
}

/// Mirror mode: the packets are copies.
#[inline(always)]
fn mirror() -> bool {
    // SAFETY: plain read of a static; volatile because the loader rewrites it before loading.
    unsafe { core::ptr::read_volatile(&MODE) == MODE_MIRROR }
}

/// Continuation programs, one per program type (a program array holds programs of the type
/// that calls into it): slot 0 is `dns_sensor_next` / `dns_egress_next`, set by the loader.
#[btf_map]
static NEXT_XDP: ProgramArray<1> = ProgramArray::new();

#[btf_map]
static NEXT_TC: ProgramArray<1> = ProgramArray::new();

/// Hands the next message of a TCP segment (its offset and the segment's end are in
/// `SCRATCH`) to the continuation program, the `index`th of the segment (1 for the second).
/// Tail calls, so that the DNS stage is verified once per program rather than once per message
/// (the XDP program alone takes half of the verifier's 1M-instruction budget): each
/// continuation parses one message and tail-calls the next. Returns only when the tail call
/// did not happen: past the bound, or with no continuation in `next`, both counted as
/// `tcp_pipeline_limit`. The loader always fills `next` and pins it; only the program of a
/// keep-blocking run that crashed finds it empty, between the next start's removal of the
/// stale pins and its take-over of the attachment.
#[inline(always)]
fn pipeline<C: Ctx>(ctx: &C, counters: *mut u64, next: &ProgramArray<1>, index: usize) {
    if index < MAX_TCP_MESSAGES {
        // SAFETY: `next` holds programs of this program's type taking the same context; a
        // successful call does not return (nothing here needs to run after it).
        unsafe { next.tail_call(ctx, 0) };
    }
    bump(counters, Counter::TcpPipelineLimit);
}

/// The DNS stage on the next message of a TCP segment (see `pipeline`), for the continuation
/// programs: the header stages ran in the program that tail-called this one, which left the
/// record's header, the message's offset, the segment's end and the message's index in this
/// CPU's `SCRATCH` slot (nothing runs on the CPU in between: a tail call is a jump).
#[inline(always)]
fn next_message<C: Ctx>(ctx: &C, counters: *mut u64, next: &ProgramArray<1>) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        missing_slot(ctx, MissingSlot::Scratch);
        return;
    };
    // SAFETY: fields of this CPU's scratch slot, written by the caller before its tail call.
    let (off, ip_end, index, src_port, dst_port) = unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*scratch).next_off)) as usize,
            core::ptr::read_volatile(core::ptr::addr_of!((*scratch).seg_end)) as usize,
            core::ptr::read_volatile(core::ptr::addr_of!((*scratch).msg_index)) as usize,
            core::ptr::read_volatile(core::ptr::addr_of!((*scratch).ev.src_port)),
            core::ptr::read_volatile(core::ptr::addr_of!((*scratch).ev.dst_port)),
        )
    };
    // The message's DNS header must be inside the parser's offset bound, like a first one's.
    if off + 2 > MAX_OFFSET {
        bump(counters, Counter::TcpPipelineLimit);
        return;
    }
    let off = off & MAX_OFFSET;
    let pkt = Packet::new(ctx);
    // As for the first message (`transport::parse`): the length prefix and the DNS header in
    // the segment, and the prefix must fit in it. Anything else is the start of a message
    // continued in the next segment (or bytes that are no message): not read.
    if pkt.at::<14>(off).is_none() {
        bump(counters, Counter::TcpPipelineSplit);
        return;
    }
    let Some(prefix) = pkt.load::<u16>(off) else {
        bump(counters, Counter::TcpPipelineSplit);
        return;
    };
    let dns_end = off + 2 + usize::from(u16::from_be(prefix));
    if dns_end > ip_end {
        bump(counters, Counter::TcpPipelineSplit);
        return;
    }
    bump(counters, Counter::TcpPipelined);
    // SAFETY: fields of this CPU's scratch slot.
    unsafe {
        (*scratch).dns_off = (off + 2) as u32;
        (*scratch).dns_end = dns_end as u32;
        (*scratch).next_off = dns_end as u32;
        (*scratch).msg_index = (index + 1) as u32;
    }
    let outcome = match message(
        ctx,
        counters,
        scratch,
        transport::watched(dst_port),
        transport::watched(src_port),
    ) {
        Ok(o) | Err(o) => o,
    };
    bump(counters, outcome);
    if dns_end < seg_end(&Packet::new(ctx), ip_end) {
        pipeline(ctx, counters, next, index + 1);
    }
}

/// The continuation of `dns_sensor` for the second and later messages of a TCP segment (see
/// `pipeline`); tail-called only, never attached.
#[xdp]
pub fn dns_sensor_next(ctx: XdpContext) -> u32 {
    if let Some(counters) = COUNTERS.get_ptr_mut(0) {
        next_message(&ctx, counters.cast::<u64>(), &NEXT_XDP);
    }
    xdp_action()
}

/// The continuation of `dns_egress` (see `dns_sensor_next`).
#[classifier]
pub fn dns_egress_next(ctx: TcContext) -> i32 {
    if let Some(counters) = COUNTERS.get_ptr_mut(0) {
        next_message(&ctx, counters.cast::<u64>(), &NEXT_TC);
    }
    TC_ACT_UNSPEC
}

/// Returns XDP_PASS and nothing else: the floor the benchmark compares `dns_sensor` with,
/// built in the same object with the same flags. The sensor never loads it.
#[xdp]
pub fn noop(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// The TC egress program (`capture.egress`): the same parse, maps and records as `dns_sensor`,
/// on what *leaves* an interface, so a sensor on a DNS server reports the responses it sends
/// (whose queries arrived through XDP), and a resolver's own queries upstream (whose responses
/// arrive through XDP). It observes only: no blocklist or destination check, and always
/// `TC_ACT_UNSPEC`, which is "no verdict" both for a TCX link (the next program runs, and the
/// packet passes after the last) and for a cls_bpf filter (the next filter runs). `TC_ACT_OK`
/// would end a TCX chain and skip the programs after this one; `TC_ACT_PIPE` too (TCX runs on
/// only after `TCX_NEXT`, which is `TC_ACT_UNSPEC`).
#[classifier]
pub fn dns_egress(ctx: TcContext) -> i32 {
    let Some(counters) = COUNTERS.get_ptr_mut(0) else {
        missing_slot(&ctx, MissingSlot::Counters);
        return TC_ACT_UNSPEC;
    };
    let counters = counters.cast::<u64>();
    bump(counters, Counter::Packets);
    pull_if_dns(&ctx);
    let mut seen = core::ptr::null_mut();
    let outcome = match process(&ctx, counters, &mut seen) {
        Ok(o) | Err(o) => o,
    };
    bump(counters, outcome);
    if more_messages(seen) {
        pipeline(&ctx, counters, &NEXT_TC, 1);
    }
    TC_ACT_UNSPEC
}

/// Most bytes of a packet made directly readable on egress: the parser reads nothing past
/// `MAX_OFFSET` anyway.
const PULL_MAX: u32 = MAX_OFFSET as u32 + 1;

/// Makes the first `min(len, PULL_MAX)` bytes of a DNS packet directly readable. An skb on
/// egress is often not linear: TCP keeps its payload in page fragments, and only the headers
/// are in the linear part that direct packet access sees, so without this a TCP DNS message
/// (and a large UDP one) would count as `tcp_no_question`/`dns_truncated`. Only for packets
/// to or from a DNS port (or whose headers are not readable): pulling copies the data (and
/// the head of a clone, as TCP's are), which bulk traffic must never pay. The bytes and the
/// packet are unchanged; a failed pull (no memory) leaves the packet as it was, and the parse
/// then counts it as cut short.
#[inline(always)]
fn pull_if_dns(ctx: &TcContext) {
    let pkt = Packet::new(ctx);
    let len = ctx.len();
    if pkt.readable() >= len as usize {
        return;
    }
    let Ok(l2) = ethernet::parse(&pkt) else {
        return;
    };
    let l3 = if l2.proto == ethernet::ETH_P_IP {
        ip::parse_v4(&pkt, l2.l3_off)
    } else {
        ip::parse_v6(&pkt, l2.l3_off)
    };
    let Ok(mut l3) = l3 else {
        return;
    };
    if l3.family == 6 && ip::walk_ext(&pkt, &mut l3).is_err() {
        return;
    }
    if l3.fragment {
        return;
    }
    if let Err(Counter::NotDns) = transport::parse(&pkt, &l3) {
        return;
    }
    let want = if len < PULL_MAX { len } else { PULL_MAX };
    // SAFETY: the program's own skb; the helper only moves bytes into the linear part (no
    // packet byte changes) and invalidates the packet pointers, which `process` reads anew.
    unsafe { bpf_skb_pull_data(ctx.skb.skb, want) };
}

/// A one-slot per-CPU array without its slot 0.
#[derive(Clone, Copy)]
enum MissingSlot {
    Counters,
    Scratch,
}

/// The program's only log lines (aya-log, read by the daemon's `klog`): a map lookup that
/// cannot fail failed, so a map or helper is broken. Nothing a sender controls leads here, so it
/// is never a per-packet line in normal operation; were a map broken for good, aya-log's own
/// ring would fill and further records be dropped there (the packet is handled all the same).
/// Out of line and cold, so the per-packet code is laid out as it is without the logging.
#[cold]
#[inline(never)]
fn missing_slot<C: EbpfContext>(ctx: &C, map: MissingSlot) {
    match map {
        MissingSlot::Counters => error!(ctx, "COUNTERS has no slot 0: packets pass uncounted"),
        MissingSlot::Scratch => error!(
            ctx,
            "SCRATCH has no slot 0: queries are counted as not_dns and make no events"
        ),
    }
}

#[inline(always)]
pub(crate) fn bump(counters: *mut u64, c: Counter) {
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
pub(crate) fn key_buf(lo: u64, hi: u64) -> [u64; 3] {
    [u64::from(128u32.to_le()) << 32, lo, hi]
}

/// The key inside a buffer from [`key_buf`].
#[inline(always)]
pub(crate) fn key_of(buf: &[u64; 3]) -> &Key<LpmAddr> {
    // SAFETY: bytes 4..24 of the 24-byte buffer hold a Key<LpmAddr> (repr(C, packed), align 1,
    // 20 bytes): the prefix length then the address, laid out by key_buf.
    unsafe { &*buf.as_ptr().cast::<u8>().add(4).cast::<Key<LpmAddr>>() }
}

/// True when a BLOCKLIST entry has an expiry (non-zero) and it has passed. Only runs on a trie
/// hit (a blocked source), so the clock read costs nothing on the query path.
#[inline(always)]
fn lapsed(v: &BlockValue) -> bool {
    // SAFETY: `v` points into the trie node, valid for this run; userspace changes an entry by
    // replacing the node (an LPM update is atomic), so the u64 is never torn. Volatile because
    // the compiler must not assume the field is fixed across runs.
    let expires = unsafe { core::ptr::read_volatile(&v.expires_unix) };
    expires != 0 && now_unix() >= expires
}

/// Now in Unix seconds (see `TAI_OFFSET_SECS`). Only read on a blocklist hit or a listed name's
/// response, so the clock costs nothing on the query path.
#[inline(always)]
pub(crate) fn now_unix() -> u64 {
    // SAFETY: a helper without arguments (kernel 6.1+).
    let now = unsafe { bpf_ktime_get_tai_ns() } / 1_000_000_000;
    // SAFETY: plain read of a static; volatile because the loader rewrites it before loading.
    let offset = unsafe { core::ptr::read_volatile(&TAI_OFFSET_SECS) };
    now.saturating_sub(offset)
}

#[inline(always)]
/// The header stages, then the DNS stage on the message they found ([`message`]). Once the
/// header stages have found a message, `seen` is this CPU's scratch slot, whose `msg_index` is
/// then 1 when the message is a TCP one with bytes after it in the segment (the caller hands
/// them to the continuation program, see `next_message`) and 0 otherwise.
///
/// Through memory on purpose: a flag kept on the stack would be a different verifier state for
/// the two kinds of message through the whole DNS stage, which is then verified twice (measured:
/// 864k of the 1M instructions with blocking by resolution on, against 527k). `seen` is the
/// same pointer on every path that reaches the DNS stage.
fn process<C: Ctx>(
    ctx: &C,
    counters: *mut u64,
    seen: &mut *mut Scratch,
) -> Result<Outcome, Outcome> {
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

    // Only the XDP program enforces (a constant per program: the other one has no such code).
    if C::ENFORCES && may_match(&BLOCK_FILTER, l3.bucket) {
        let [lo, hi] = ip::src(&pkt, &l3);
        if let Some(v) = BLOCKLIST.get(key_of(&key_buf(lo, hi))) {
            if lapsed(v) {
                // The kernel stops enforcing an entry whose lifetime has passed on its own,
                // daemon or not; userspace removes it from the map on its next install.
                bump(counters, Counter::BlockExpired);
            } else {
                // SAFETY: `v` points into the trie node in kernel memory, valid for this
                // program run. Entries are shared by all CPUs, so the hit counter is only ever
                // changed atomically (here) and read by userspace through the map API; it is
                // never read through `v`.
                unsafe {
                    atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                        core::ptr::from_ref(&v.packets).cast_mut(),
                        1,
                    )
                };
                return Ok(Counter::Blocked);
            }
        }
    }
    // A packet to an address a listed name resolved to (any protocol, any port).
    if C::ENFORCES
        && resolved::enabled()
        && resolved::destination_blocked(counters, ip::dst(&pkt, &l3))
    {
        return Ok(Counter::DestBlocked);
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
        // Cannot happen either (a one-slot per-CPU array); logged like COUNTERS above.
        missing_slot(ctx, MissingSlot::Scratch);
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
            u64::from(ctx.ifindex())
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
        // Saturated: a jumbogram's end is "the frame's".
        (*scratch).dns_end = if l4.dns_end > u32::MAX as usize {
            u32::MAX
        } else {
            l4.dns_end as u32
        };
        // The segment goes on after this message (TCP's `dns_end` is never saturated).
        let more = l4.proto == ip::IPPROTO_TCP && l4.dns_end < seg_end(&pkt, l3.end);
        (*scratch).msg_index = u32::from(more);
        // The rewrite's mark starts clear for every packet (the slot keeps the last one's).
        if C::ENFORCES && rewrite::enabled() {
            (*scratch).rewrite = 0;
            (*scratch).l3_off = l3.off as u32;
            (*scratch).l4_off = l3.l4_off as u32;
        }
        if more {
            (*scratch).next_off = l4.dns_end as u32;
            (*scratch).seg_end = if l3.end > u32::MAX as usize {
                u32::MAX
            } else {
                l3.end as u32
            };
        }
    }
    *seen = scratch;
    message(ctx, counters, scratch, l4.to_port, l4.from_port)
}

/// Where a TCP segment's bytes end: the IP datagram's end, or the frame's when it is shorter.
#[inline(always)]
fn seg_end(pkt: &Packet, ip_end: usize) -> usize {
    let frame = pkt.readable();
    if ip_end < frame { ip_end } else { frame }
}

/// The DNS stage: the message at `scratch.dns_off` (ending at `scratch.dns_end`), whose record
/// header (addresses, ports, interface) is in `scratch.ev`. `to_port`/`from_port`: the
/// destination/source port is a watched DNS port.
#[inline(always)]
fn message<C: Ctx>(
    ctx: &C,
    counters: *mut u64,
    scratch: *mut Scratch,
    to_port: bool,
    from_port: bool,
) -> Result<Outcome, Outcome> {
    let pkt = Packet::new(ctx);
    // SAFETY: only takes the address of the `ev` field of this CPU's scratch slot (valid for
    // the run, see `process`).
    let ev = unsafe { core::ptr::addr_of_mut!((*scratch).ev) };
    /// A volatile read of a field of this CPU's scratch slot.
    #[inline(always)]
    fn vol<T: Copy>(p: *const T) -> T {
        // SAFETY: every caller passes a field of this CPU's scratch slot, written by `process`
        // (or `next_message`).
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
    let q = dns::parse(&pkt, dns_off & MAX_OFFSET, tcp, to_port, from_port)?;
    // The question was inside the frame; it must be inside the message too (bytes after the
    // UDP or IP length, or after the TCP length prefix, are not DNS).
    // SAFETY: only takes the address of a field of this CPU's scratch slot.
    let dns_end = vol(unsafe { core::ptr::addr_of!((*scratch).dns_end) }) as usize;
    if q.name_off + q.name_len + 4 > dns_end {
        return Err(if tcp {
            Counter::TcpNoQuestion
        } else {
            Counter::DnsTruncated
        });
    }
    if q.response {
        return response(ctx, counters, scratch, &q);
    }
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
        (*ev).kind = RECORD_QUERY;
        (*ev)._pad = 0;
    }
    // A record is only as long as its class needs (see `Event`): fewer ring cache lines for
    // nearly every name. Each class is its own reservation: the verifier wants a constant size.
    if name_len < SHORT_QNAME_LEN {
        emit::<C, ShortRecord>(ctx, ev, q.name_off)
    } else {
        emit::<C, Event>(ctx, ev, q.name_off)
    }
}

/// A response from a DNS port (the question checked, within the message): the client is the
/// destination. Walks the answers into `scratch.info` and sends a response record (see
/// `sensor_common::response`) in the smallest class that holds the message.
#[inline(always)]
fn response<C: Ctx>(
    ctx: &C,
    counters: *mut u64,
    scratch: *mut Scratch,
    q: &dns::Query,
) -> Result<Outcome, Outcome> {
    // What the question walk found goes into the record's header first, and the start of the
    // answers into scratch: from here on nothing depends on how the name walk ended (after
    // which of up to 127 labels), so the verifier checks the rest once, not once per name
    // length.
    // SAFETY: fields of this CPU's scratch slot (see `process`).
    unsafe {
        let ev = core::ptr::addr_of_mut!((*scratch).ev);
        (*ev).dns_id = q.id;
        (*ev).qtype = q.qtype;
        (*ev).qclass = q.qclass;
        (*ev).qname_len = (q.name_len & 0xff) as u16;
        (*ev).kind = RECORD_RESPONSE;
        (*ev)._pad = 0;
        (*scratch).walk_pos = (q.name_off + (q.name_len & 0xff) + 4) as u32;
        if C::ENFORCES && rewrite::enabled() {
            (*scratch).q_end = (*scratch).walk_pos;
        }
    }
    bump(counters, Counter::DnsResponses);
    // SAFETY: a plain read of a static the loader sets; volatile so it is not folded.
    if unsafe { core::ptr::read_volatile(&REPORT_RESPONSES) } == 0 {
        return Ok(Counter::ResponsesOff);
    }
    /// A volatile read of a field of this CPU's scratch slot.
    #[inline(always)]
    fn vol<T: Copy>(p: *const T) -> T {
        // SAFETY: every caller passes a field of this CPU's scratch slot, written by `process`.
        unsafe { core::ptr::read_volatile(p) }
    }
    // SAFETY: only takes addresses of fields of this CPU's scratch slot (valid for the run).
    let (ev, info) = unsafe {
        (
            core::ptr::addr_of_mut!((*scratch).ev),
            core::ptr::addr_of_mut!((*scratch).info),
        )
    };
    // SAFETY: words 4 and 5 of the header (the destination address, written by `process`) are
    // inside the 8-byte aligned record.
    let (dst_lo, dst_hi, family) = unsafe {
        let words = ev.cast::<u64>();
        (
            vol(words.add(4)),
            vol(words.add(5)),
            vol(core::ptr::addr_of!((*ev).family)),
        )
    };
    let bucket = sensor_common::bucket_of_first_word(
        family == 4,
        u32::from_be(dst_lo as u32),
        u32::from_be((dst_hi >> 32) as u32),
    );
    if may_match(&ALLOW_FILTER, bucket)
        && let Some(v) = CLIENT_ALLOW.get(key_of(&key_buf(dst_lo, dst_hi)))
    {
        // SAFETY: as for the queries in `process`: shared kernel memory, changed atomically.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                core::ptr::from_ref(&v.queries).cast_mut(),
                1,
            )
        };
        return Ok(Counter::Allowlisted);
    }
    if resolved::enabled() {
        resolved::find_listed(ctx, counters, scratch);
    }
    // SAFETY: fields of this CPU's scratch slot (see `process`).
    let dns_off = vol(unsafe { core::ptr::addr_of!((*scratch).dns_off) }) as usize & MAX_OFFSET;
    // SAFETY: as above.
    let dns_end = vol(unsafe { core::ptr::addr_of!((*scratch).dns_end) }) as usize;
    let pkt = Packet::opaque(ctx);
    // The message ends at its length or at the frame's end, whichever comes first.
    let frame_len = Packet::new(ctx).readable();
    let end = if dns_end < frame_len {
        dns_end
    } else {
        frame_len
    };
    let msg_len = end.saturating_sub(dns_off);
    // Flags, QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT: inside the packet (the question follows).
    let Some(h) = pkt.load::<[u16; 5]>(dns_off + 2) else {
        return Err(Counter::DnsTruncated);
    };
    // SAFETY: a field of this CPU's scratch slot, written above.
    let start = vol(unsafe { core::ptr::addr_of!((*scratch).walk_pos) }) as usize & MAX_OFFSET;
    // SAFETY: `ev` and `info` are in this CPU's scratch slot (see `process`).
    unsafe {
        if core::ptr::read_volatile(&PRECISE_TIMESTAMPS) != 0 {
            (*ev).ts_mono_ns = bpf_ktime_get_ns();
        } else {
            coarse_ns(scratch);
        }
        (*info).flags = u16::from_be(h[0]);
        (*info).ancount = u16::from_be(h[2]);
        (*info).nscount = u16::from_be(h[3]);
        (*info).arcount = u16::from_be(h[4]);
        (*info).msg_len = if msg_len > 0xffff {
            0xffff
        } else {
            msg_len as u16
        };
        (*info)._pad = [0; 15];
        answers::walk(
            &pkt,
            info,
            core::ptr::addr_of_mut!((*scratch).walk_pos),
            dns_off,
            end,
            start,
            u16::from_be(h[2]),
        );
        match core::ptr::read_volatile(&(*info).walk) {
            WALK_COMPLETE => {}
            WALK_LIMIT => bump(counters, Counter::ResponseRrLimit),
            WALK_TRUNCATED => bump(counters, Counter::ResponseTruncated),
            _ => bump(counters, Counter::ResponseBadName),
        }
    }
    if resolved::enabled() {
        resolved::block_if_listed(counters, scratch);
        if C::ENFORCES && rewrite::enabled() {
            rewrite::decide(counters, scratch);
        }
    }
    if msg_len <= MSG_ROOMS[0] {
        emit_response::<C, ResponseRecord0>(ctx, scratch, dns_off, msg_len)
    } else if msg_len <= MSG_ROOMS[1] {
        emit_response::<C, ResponseRecord1>(ctx, scratch, dns_off, msg_len)
    } else {
        emit_response::<C, ResponseRecord2>(ctx, scratch, dns_off, msg_len)
    }
}

/// The three response record classes (see `sensor_common::response::MSG_ROOMS`).
type ResponseRecord0 = [u64; (MSG_OFF + MSG_ROOMS[0]) / 8];
type ResponseRecord1 = [u64; (MSG_OFF + MSG_ROOMS[1]) / 8];
type ResponseRecord2 = [u64; (MSG_OFF + MSG_ROOMS[2]) / 8];

/// Reserves a response record of type `R` (its message room is `size_of::<R>() - MSG_OFF`,
/// a power of two), fills it with the header and info from `scratch` and the first
/// `min(msg_len, room)` bytes of the message at `dns_off`, and submits it.
#[inline(always)]
fn emit_response<C: Ctx, R: 'static>(
    ctx: &C,
    scratch: *mut Scratch,
    dns_off: usize,
    msg_len: usize,
) -> Result<Outcome, Outcome> {
    let room = core::mem::size_of::<R>() - MSG_OFF;
    const { assert!((core::mem::size_of::<R>() - MSG_OFF).is_power_of_two()) };
    let copied = if msg_len < room { msg_len } else { room };
    // SAFETY: a field of this CPU's scratch slot (see `process`).
    unsafe { (*scratch).info.copied = copied as u16 };
    // Read back and bounded for the verifier: the helper's length must be provably at most the
    // room and above zero (the question alone is 17 bytes, so it always is).
    // SAFETY: as above.
    let len = usize::from(unsafe { core::ptr::read_volatile(&(*scratch).info.copied) });
    if len == 0 || len > room {
        return Err(Counter::DnsTruncated);
    }
    let Some(mut entry) = EVENTS.reserve_untyped::<R>(0) else {
        return Err(Counter::RingFull);
    };
    let rec = entry.as_mut_ptr().cast::<u64>();
    // SAFETY: `rec` is a reserved, exclusively owned, 8-byte aligned record of size_of::<R>()
    // = MSG_OFF + room bytes; the header (HEADER_LEN bytes) and the info (MSG_OFF - HEADER_LEN)
    // are read with volatile loads from this CPU's scratch slot and written as u64 words below
    // MSG_OFF; the helper writes `len <= room` bytes at MSG_OFF.
    let loaded = unsafe {
        let head = core::ptr::addr_of!((*scratch).ev).cast::<u64>();
        let mut i = 0;
        while i < HEADER_LEN / 8 {
            rec.add(i).write(core::ptr::read_volatile(head.add(i)));
            i += 1;
        }
        let info = core::ptr::addr_of!((*scratch).info).cast::<u64>();
        let mut j = 0;
        while j < (MSG_OFF - HEADER_LEN) / 8 {
            rec.add(HEADER_LEN / 8 + j)
                .write(core::ptr::read_volatile(info.add(j)));
            j += 1;
        }
        ctx.load_bytes(dns_off as u32, rec.cast::<u8>().add(MSG_OFF), len as u32)
    };
    if loaded != 0 {
        // Cannot happen (the bytes were read above); never send a record without its bytes.
        entry.discard(BPF_RB_NO_WAKEUP as u64);
        return Err(Counter::DnsTruncated);
    }
    entry.submit(BPF_RB_NO_WAKEUP as u64);
    Ok(Counter::ResponseEvents)
}

/// A short record (see `Event`): the header and up to `SHORT_QNAME_LEN` name bytes.
type ShortRecord = [u64; SHORT_RECORD_LEN / 8];

/// Reserves a record of type `R` (an [`Event`] or a prefix of one whose QNAME room is a power
/// of two larger than the name: the caller picks `R` by `qname_len`), fills it with the header
/// from `ev` and the QNAME (`qname_len` bytes at `name_off` in the packet), and submits it.
#[inline(always)]
fn emit<C: Ctx, R: 'static>(
    ctx: &C,
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
fn copy_name<C: Ctx>(ctx: &C, off: usize, len: usize, dst: *mut u8) {
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
