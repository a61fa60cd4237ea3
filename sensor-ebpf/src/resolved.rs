//! Blocking by what a client resolved (see `sensor_common::resolved`): a response whose QNAME
//! or one of its parent domains is listed in BAD_NAMES puts its answer addresses into
//! DEST_BLOCK in the same run, and every packet *to* such an address is dropped from then on,
//! before the client's first connection and without a userspace round trip.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    btf_maps::{Array, HashMap, LpmTrie},
    macros::btf_map,
};
use sensor_common::{
    Counter, LpmAddr,
    resolved::{
        BAD_NAMES_CAPACITY, DEST_BLOCK_CAPACITY, DEST_PROTECT_CAPACITY, DestValue, NAME_EXACT,
        NAME_FILTER_WORDS, NameKey, NameValue, ProtectValue, name_filter_bit, name_key, step,
    },
};

use crate::{
    cursor::{Ctx, Packet},
    program::{Scratch, bump, key_buf, key_of, now_unix},
};

#[btf_map]
static BAD_NAMES: HashMap<NameKey, NameValue, { BAD_NAMES_CAPACITY as usize }> = HashMap::new();

#[btf_map]
static NAME_FILTER: Array<u64, { NAME_FILTER_WORDS as usize }> = Array::new();

/// Slot 0: the hash base (odd; 0 = no name listed, skip the check).
#[btf_map]
static NAME_HASH: Array<u64, 1> = Array::new();

#[btf_map]
static DEST_BLOCK: HashMap<LpmAddr, DestValue, { DEST_BLOCK_CAPACITY as usize }> = HashMap::new();

#[btf_map]
static DEST_PROTECT: LpmTrie<LpmAddr, ProtectValue, { DEST_PROTECT_CAPACITY as usize }> =
    LpmTrie::new();

/// 1: check packets' destinations against DEST_BLOCK and act on listed names' responses; 0:
/// neither (no cost). Set by the loader (`blocklist.resolved.enabled`).
#[unsafe(no_mangle)]
static RESOLVED_BLOCKING: u32 = 0;

/// The bounds of a DEST_BLOCK entry's lifetime, in seconds: an answer's TTL is raised to the
/// first (clients and their resolvers keep answers longer than a short TTL says) and cut to the
/// second. Set by the loader (`blocklist.resolved.min_secs`, `max_secs`).
#[unsafe(no_mangle)]
static RESOLVED_MIN_SECS: u32 = 300;
#[unsafe(no_mangle)]
static RESOLVED_MAX_SECS: u32 = 86_400;

/// Whether blocking by resolution is on (a `.rodata` constant, so the verifier prunes the
/// disabled paths and they cost nothing).
#[inline(always)]
pub fn enabled() -> bool {
    // SAFETY: a plain read of a static the loader sets; volatile so it is not folded.
    unsafe { core::ptr::read_volatile(&RESOLVED_BLOCKING) != 0 }
}

/// The DEST_BLOCK key of an address in the record's layout (two words, memory order).
#[inline(always)]
fn addr_key(words: &[u64; 2]) -> &LpmAddr {
    // SAFETY: [u64; 2] and [u8; 16] have the same size; the byte array's alignment (1) is
    // satisfied by any pointer, and every bit pattern is a valid byte array.
    unsafe { &*words.as_ptr().cast::<LpmAddr>() }
}

/// True when the packet's destination (`dst`, the record's two words) is blocked: its entry is
/// counted and the caller drops the packet. A lapsed entry is counted and passes.
#[inline(always)]
pub fn destination_blocked(counters: *mut u64, dst: [u64; 2]) -> bool {
    let Some(v) = DEST_BLOCK.get_ptr_mut(addr_key(&dst)) else {
        return false;
    };
    // SAFETY: `v` points into the hash map's element, valid for this run (the element is freed
    // after an RCU grace period at the earliest). The expiry is a u64 written whole, so it is
    // never torn; volatile because other CPUs and userspace change it.
    let expires = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*v).expires_unix)) };
    if now_unix() >= expires {
        bump(counters, Counter::DestExpired);
        return false;
    }
    // SAFETY: as above; entries are shared by all CPUs, so the counter only changes atomically.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            core::ptr::addr_of_mut!((*v).packets),
            1,
        )
    };
    true
}

/// Most labels whose suffix is looked up (a 255-byte name has at most 127).
const MAX_LABELS: usize = 128;

/// Before the answer walk of a response: whether its QNAME or a parent domain is listed, left
/// in `scratch.listed_found` / `scratch.listed` for [`block_if_listed`] after the walk. Here,
/// where every path into the response stage has merged into one verifier state, the name loop
/// is verified once (after the walk, once per way the walk can end: over the 1M limit).
///
/// Two passes over the QNAME at `dns_off + 12`, whose `qname_len` (with the root byte) is in
/// the record's header: the first marks where labels start; the second hashes the name from its
/// last byte to its first ([`step`]), so that at each label start the hash is that of the
/// suffix from there, and looks the suffix up (a NAME_FILTER probe first).
#[inline(always)]
pub fn find_listed<C: Ctx>(ctx: &C, counters: *mut u64, scratch: *mut Scratch) {
    // SAFETY: fields of this CPU's scratch slot (see `program::process`); cleared first, since
    // the slot keeps the previous packet's values.
    let dns_off = unsafe {
        core::ptr::addr_of_mut!((*scratch).listed_found).write_volatile(0);
        core::ptr::addr_of_mut!((*scratch).protected_hit).write_volatile(0);
        core::ptr::read_volatile(core::ptr::addr_of!((*scratch).dns_off)) as usize
            & crate::program::MAX_OFFSET
    };
    let ctx_pkt = &Packet::opaque(ctx);
    let Some(base) = NAME_HASH.get(0) else {
        return;
    };
    // SAFETY: a map value read; volatile because userspace sets it at any time.
    let base = unsafe { core::ptr::read_volatile(base) };
    if base == 0 {
        return;
    }
    let qoff = dns_off + 12;
    // SAFETY: fields of this CPU's scratch slot (see `program::process`).
    let (labels, n) = unsafe {
        (
            core::ptr::addr_of_mut!((*scratch).labels).cast::<u64>(),
            usize::from(core::ptr::read_volatile(core::ptr::addr_of!(
                (*scratch).ev.qname_len
            ))) & 0xff,
        )
    };
    // SAFETY: `labels` is four u64 words in this CPU's scratch slot.
    unsafe {
        for w in 0..4 {
            labels.add(w).write_volatile(0);
        }
    }
    let mut pos = 0usize;
    for _ in 0..MAX_LABELS {
        // Two bytes (a label's first byte, or QTYPE after the root): see `dns::parse`.
        let Some(b) = ctx_pkt.load::<[u8; 2]>(qoff + (pos & 0xff)) else {
            return;
        };
        if b[0] == 0 || pos >= n {
            break;
        }
        let p = pos & 0xff;
        // SAFETY: `p >> 6` is at most 3: inside the four words.
        unsafe {
            let w = labels.add(p >> 6);
            w.write_volatile(w.read_volatile() | (1u64 << (p & 63)));
        }
        pos += usize::from(b[0] & 0x3f) + 1;
    }
    // The position goes through memory at every step: read back, it is an unknown in 0..=511
    // to the verifier, so the loop is verified once, not once per name length (and LLVM
    // cannot walk a pointer down from the name's end, with a negative constant offset the
    // verifier refuses for packet pointers).
    // SAFETY: fields of this CPU's scratch slot.
    let (cursor, listed) = unsafe {
        (
            core::ptr::addr_of_mut!((*scratch).name_pos),
            core::ptr::addr_of_mut!((*scratch).listed),
        )
    };
    // SAFETY: as above.
    unsafe {
        cursor.write_volatile(n as u32);
        listed.write_volatile(0);
    }
    let mut h = 0u64;
    for _ in 0..sensor_common::MAX_NAME_LEN {
        // SAFETY: as above.
        let i = unsafe { cursor.read_volatile() } as usize & 0x1ff;
        if i == 0 {
            break;
        }
        let at = (i - 1) & 0xff;
        // SAFETY: as above.
        unsafe { cursor.write_volatile(at as u32) };
        let Some(b) = ctx_pkt.load::<[u8; 2]>(qoff + at) else {
            return;
        };
        h = step(h, base, b[0]);
        // SAFETY: `at >> 6` is at most 3: inside the four words.
        let word = unsafe { labels.add(at >> 6).read_volatile() };
        if (word >> (at & 63)) & 1 == 0 {
            continue;
        }
        let key = name_key(h);
        let bit = name_filter_bit(key);
        let Some(fw) = NAME_FILTER.get(bit >> 6) else {
            continue;
        };
        if (*fw >> (bit & 63)) & 1 == 0 {
            continue;
        }
        let Some(v) = BAD_NAMES.get_ptr_mut(key) else {
            continue;
        };
        // SAFETY: `v` points into the element, valid for the run.
        let flags = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*v).flags)) };
        // An exact entry covers the whole QNAME only (the suffix that starts at byte 0).
        if flags & NAME_EXACT != 0 && at != 0 {
            continue;
        }
        // SAFETY: `v` points into the element (valid for the run); the expiry is written whole.
        let expires = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*v).expires_unix)) };
        if expires != 0 && now_unix() >= expires {
            continue;
        }
        // SAFETY: as above; shared by all CPUs, so only changed atomically.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                core::ptr::addr_of_mut!((*v).hits),
                1,
            )
        };
        // SAFETY: a field of this CPU's scratch slot. A key of 0 is as good as any other, so
        // "found" has its own mark: the cursor past the end.
        unsafe {
            listed.write_volatile(key);
            cursor.write_volatile(0x100);
        }
        break;
    }
    // SAFETY: as above.
    if unsafe { cursor.read_volatile() } == 0x100 {
        bump(counters, Counter::ResolvedNames);
        // SAFETY: as above.
        unsafe { core::ptr::addr_of_mut!((*scratch).listed_found).write_volatile(1) };
    }
}

/// After the answer walk: when [`find_listed`] found the QNAME listed, blocks the answers.
#[inline(always)]
pub fn block_if_listed(counters: *mut u64, scratch: *mut Scratch) {
    // SAFETY: fields of this CPU's scratch slot, written by `find_listed` for this packet.
    let (found, listed) = unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*scratch).listed_found)),
            core::ptr::read_volatile(core::ptr::addr_of!((*scratch).listed)),
        )
    };
    if found == 1 {
        block_answers(counters, scratch, listed);
    }
}

/// Puts the response's answer addresses into DEST_BLOCK (or refreshes them), with the reason
/// `listed`; protected ones are counted and left alone.
#[inline(always)]
fn block_answers(counters: *mut u64, scratch: *mut Scratch, listed: NameKey) {
    // SAFETY: fields of this CPU's scratch slot, written by the answer walk.
    let count = usize::from(unsafe {
        core::ptr::read_volatile(core::ptr::addr_of!((*scratch).info.addr_count))
    });
    let now = now_unix();
    // SAFETY: plain reads of statics the loader sets.
    let (lo_secs, hi_secs) = unsafe {
        (
            core::ptr::read_volatile(&RESOLVED_MIN_SECS),
            core::ptr::read_volatile(&RESOLVED_MAX_SECS),
        )
    };
    // SAFETY: the client (the response's destination: words 4 and 5 of the header).
    let client = unsafe {
        let w = core::ptr::addr_of!((*scratch).ev).cast::<u64>();
        [w.add(4).read_volatile(), w.add(5).read_volatile()]
    };
    for k in 0..sensor_common::response::MAX_ADDRS {
        if k >= count {
            break;
        }
        // SAFETY: `k < MAX_ADDRS`: inside `addrs` and `ttls` of the info in this CPU's scratch
        // slot; each address is 16 bytes at an 8-byte aligned offset (pinned in program.rs).
        let (addr, ttl) = unsafe {
            let a = core::ptr::addr_of!((*scratch).info.addrs[k]).cast::<u64>();
            (
                [a.read_volatile(), a.add(1).read_volatile()],
                core::ptr::read_volatile(core::ptr::addr_of!((*scratch).info.ttls[k])),
            )
        };
        let life = if ttl < lo_secs {
            lo_secs
        } else if ttl > hi_secs {
            hi_secs
        } else {
            ttl
        };
        let expires = now + u64::from(life);
        // An address already blocked is refreshed without the DEST_PROTECT lookup (the costly
        // one: a 128-bit trie walk): userspace removes every blocked address a protection
        // covers when it adds the protection, and again at every sweep, so an entry found here
        // was checked when it went in. Only a new entry needs the check.
        if let Some(v) = DEST_BLOCK.get_ptr_mut(addr_key(&addr)) {
            // SAFETY: `v` points into the element, valid for the run. Two CPUs refreshing the
            // same entry at once may each write their expiry; either is a valid one. The
            // responses count is a plain add, not an atomic one: it is a statistic for the
            // operator, and a lost increment when two CPUs refresh one address in the same
            // instant costs less than a locked add on every address of every such answer.
            unsafe {
                let e = core::ptr::addr_of_mut!((*v).expires_unix);
                if core::ptr::read_volatile(e) < expires {
                    core::ptr::write_volatile(e, expires);
                }
                let r = core::ptr::addr_of_mut!((*v).responses);
                core::ptr::write_volatile(r, core::ptr::read_volatile(r).wrapping_add(1));
            }
            bump(counters, Counter::ResolvedBlocks);
            continue;
        }
        if let Some(p) = DEST_PROTECT.get(key_of(&key_buf(addr[0], addr[1]))) {
            // SAFETY: shared trie node, valid for the run; only changed atomically.
            unsafe {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                    core::ptr::from_ref(&p.answers).cast_mut(),
                    1,
                )
            };
            bump(counters, Counter::ResolvedProtected);
            // SAFETY: a field of this CPU's scratch slot: the response is then not rewritten.
            unsafe { core::ptr::addr_of_mut!((*scratch).protected_hit).write_volatile(1) };
            continue;
        }
        // SAFETY: the value is built in this CPU's scratch slot (the stack is nearly used up by
        // the rest of the program) and copied by the helper.
        let value = unsafe {
            let d = core::ptr::addr_of_mut!((*scratch).dest);
            d.write_volatile(DestValue {
                packets: 0,
                expires_unix: expires,
                set_unix: now,
                name_key: listed,
                client: *addr_key(&client),
                ttl,
                responses: 1,
            });
            &*d
        };
        match DEST_BLOCK.insert(addr_key(&addr), value, u64::from(BPF_NOEXIST)) {
            // Another CPU inserted it in between: it is blocked all the same.
            Ok(()) | Err(-17) => bump(counters, Counter::ResolvedBlocks),
            Err(_) => bump(counters, Counter::ResolvedFull),
        }
    }
}
