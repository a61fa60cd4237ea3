//! The program, its maps and the one place that picks the XDP action.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    btf_maps::{Array, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
    helpers::{bpf_ktime_get_ns, bpf_xdp_load_bytes},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use sensor_common::{
    AllowValue, BLOCKLIST_CAPACITY, BlockValue, CLIENT_ALLOW_CAPACITY, Counter, Counters, Event,
    LpmAddr, MODE_MIRROR, PREFIX_FILTER_WORDS, RING_BYTES, prefix_filter_bucket,
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

#[inline(always)]
fn bump(counters: *mut u64, c: Counter) {
    // SAFETY: `counters` points to this CPU's `Counters`, a repr(C) struct of COUNTER_COUNT u64
    // fields (size pinned in sensor-common), so index `c` is in bounds. Per-CPU memory is only
    // touched by this CPU while the program runs (no preemption in XDP), so no atomics needed.
    unsafe { *counters.add(c as usize) += 1 }
}

/// A clear filter bit proves that no trie entry can match `addr` (see sensor-common).
#[inline(always)]
fn may_match(filter: &Array<u64, { PREFIX_FILTER_WORDS as usize }>, addr: &LpmAddr) -> bool {
    let bucket = prefix_filter_bucket(addr);
    match filter.get(bucket >> 6) {
        Some(word) => (*word >> (bucket & 63)) & 1 != 0,
        None => true,
    }
}

#[inline(always)]
fn process(ctx: &XdpContext, counters: *mut u64) -> Result<Outcome, Outcome> {
    let pkt = Packet::new(ctx);
    let l2 = ethernet::parse(&pkt)?;
    if l2.vlan_outer != 0 || l2.l3_off > 14 {
        bump(counters, Counter::Vlan);
    }
    let l3 = if l2.proto == ethernet::ETH_P_IP {
        bump(counters, Counter::Ipv4);
        ip::parse_v4(&pkt, l2.l3_off)?
    } else {
        bump(counters, Counter::Ipv6);
        ip::parse_v6(&pkt, l2.l3_off)?
    };

    if may_match(&BLOCK_FILTER, &l3.src) {
        if let Some(v) = BLOCKLIST.get(&Key::new(128, l3.src)) {
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
    if l3.fragment {
        return Err(Counter::Fragment);
    }
    let l4 = transport::parse(&pkt, &l3)?;
    let q = dns::parse(&pkt, l4.dns_off, l4.proto == ip::IPPROTO_TCP)?;
    bump(counters, Counter::DnsQueries);

    if may_match(&ALLOW_FILTER, &l3.src) {
        if let Some(v) = CLIENT_ALLOW.get(&Key::new(128, l3.src)) {
            // SAFETY: as for BLOCKLIST above: shared kernel memory, only changed atomically.
            unsafe {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                    core::ptr::from_ref(&v.queries).cast_mut(),
                    1,
                )
            };
            return Ok(Counter::Allowlisted);
        }
    }

    let Some(mut entry) = EVENTS.reserve(0) else {
        return Err(Counter::RingFull);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points to a reserved, exclusively owned ring buffer record of
    // size_of::<Event>() bytes. Every field is plain data, so assigning through the raw pointer
    // (no drop of the uninitialised old value) is sound.
    unsafe {
        (*ev).ts_mono_ns = bpf_ktime_get_ns();
        (*ev).ifindex = ctx.ingress_ifindex() as u32;
        (*ev).vlan_outer = l2.vlan_outer;
        (*ev).vlan_inner = l2.vlan_inner;
        (*ev).src_addr = l3.src;
        (*ev).dst_addr = l3.dst;
        (*ev).src_port = l4.src_port;
        (*ev).dst_port = l4.dst_port;
        (*ev).dns_id = q.id;
        (*ev).qtype = q.qtype;
        (*ev).qclass = q.qclass;
        (*ev).family = l3.family;
        (*ev).transport = l4.proto;
        (*ev).qname_len = q.name_len as u16;
        (*ev)._pad = [0; 2];
    }
    // Bounded for the verifier: 1..=255 by the QNAME walk; the mask keeps the bound visible.
    let len = (q.name_len & 0xff) as u32;
    // SAFETY: the destination is the record's 256-byte `qname`, and len <= 255; the helper
    // bounds-checks the packet side itself.
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            q.name_off as u32,
            core::ptr::addr_of_mut!((*ev).qname).cast(),
            len,
        )
    };
    if rc != 0 {
        // Cannot happen (the walk read these bytes); never emit a record with a bad name.
        entry.discard(0);
        return Err(Counter::DnsTruncated);
    }
    entry.submit(0);
    Ok(Counter::Events)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
