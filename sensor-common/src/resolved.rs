//! Blocking by what a client resolved: the maps the XDP program reads and writes for it.
//!
//! - `BAD_NAMES` (hash map, [`NameKey`] → [`NameValue`]): names known to be malicious, kept in
//!   sync by userspace from the intel (verdict cache, domain feeds) and the operator's list. A
//!   listed name covers its subdomains: the program looks up every suffix of a response's QNAME
//!   that starts at a label (`a.b.evil.example`, `b.evil.example`, `evil.example`, `example`).
//! - `NAME_FILTER` (array of words): one bit per [`name_filter_bit`], set by userspace before it
//!   inserts a name, so that a response for a clean name costs array probes, not hash lookups.
//! - `NAME_HASH` (one-slot array): the hash base, chosen at random by userspace when it first
//!   fills `BAD_NAMES`; 0 means nothing is listed and the program skips the name check.
//! - `DEST_BLOCK` (hash map, address → [`DestValue`]): answer addresses of listed names, put
//!   there by the program in the same invocation that saw the response; packets *to* them are
//!   dropped until the entry's expiry (derived from the answer's TTL, bounded by the loader's
//!   settings). Userspace removes lapsed entries and is the operator's undo.
//! - `DEST_PROTECT` (LPM trie, address → [`ProtectValue`]): what the program must never put
//!   into `DEST_BLOCK` (the sensor's protected addresses, see the blocklist crate).

use crate::LpmAddr;

/// A `BAD_NAMES` key: [`name_key`] of the name's wire form.
pub type NameKey = u64;

/// Names `BAD_NAMES` can hold.
pub const BAD_NAMES_CAPACITY: u32 = 1 << 17;
/// Addresses `DEST_BLOCK` can hold; when it is full, further answers are counted
/// (`resolved_full`) and not blocked.
pub const DEST_BLOCK_CAPACITY: u32 = 1 << 16;
/// Networks `DEST_PROTECT` can hold.
pub const DEST_PROTECT_CAPACITY: u32 = 1 << 12;
/// Words (u64) of `NAME_FILTER`: 2^20 bits.
pub const NAME_FILTER_WORDS: u32 = 1 << 14;
/// Bytes of a listed name's text kept in its `BAD_NAMES` value (for `bpftool` and `sensor
/// blocklist resolved`; longer names are cut, the key covers the whole name).
pub const NAME_TEXT_LEN: usize = 40;
/// `NameValue::flags`: the entry covers the name only, not the names under it (a feed's
/// `=name` entry).
pub const NAME_EXACT: u64 = 1;
/// `NameValue::flags`: listed by the operator (`blocklist.resolved.names`). The program reads
/// only [`NAME_EXACT`]; the source bits are the entry's reason, for `bpftool` and
/// `sensor blocklist resolved`.
pub const NAME_FROM_CONFIG: u64 = 1 << 1;
/// `NameValue::flags`: listed by a domain feed (`[[intel.feeds]]`, kind `domains`).
pub const NAME_FROM_FEED: u64 = 1 << 2;
/// `NameValue::flags`: listed because the verdict cache judged the name malicious (a
/// provider such as ThreatBook); such a listing expires.
pub const NAME_FROM_VERDICT: u64 = 1 << 3;
/// Every source bit.
pub const NAME_SOURCES: u64 = NAME_FROM_CONFIG | NAME_FROM_FEED | NAME_FROM_VERDICT;

/// Value of a `BAD_NAMES` entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameValue {
    /// Responses for this name (or a subdomain) that the program acted on (atomic adds).
    pub hits: u64,
    /// When the listing lapses (Unix seconds, 0 = never): from then on the program ignores it.
    pub expires_unix: u64,
    /// [`NAME_EXACT`] or 0, and the source bits ([`NAME_SOURCES`]).
    pub flags: u64,
    /// The name as text (lower case, no trailing dot), zero-padded, cut at [`NAME_TEXT_LEN`].
    pub name: [u8; NAME_TEXT_LEN],
}

impl Default for NameValue {
    fn default() -> Self {
        Self {
            hits: 0,
            expires_unix: 0,
            flags: 0,
            name: [0; NAME_TEXT_LEN],
        }
    }
}

const _: () = assert!(core::mem::size_of::<NameValue>() == 64);

/// Value of a `DEST_BLOCK` entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestValue {
    /// Packets to this address dropped (atomic adds by the program).
    pub packets: u64,
    /// When the block lapses (Unix seconds): the latest expiry any response gave it.
    pub expires_unix: u64,
    /// When the program first put the address here (Unix seconds).
    pub set_unix: u64,
    /// The `BAD_NAMES` key of the listed name whose answer carried the address: the reason.
    pub name_key: NameKey,
    /// The client whose response put it here first.
    pub client: LpmAddr,
    /// The answer's TTL (seconds) as the response gave it, before the bounds.
    pub ttl: u32,
    /// Responses that set or refreshed the entry.
    pub responses: u32,
}

const _: () = assert!(core::mem::size_of::<DestValue>() == 56);

/// Value of a `DEST_PROTECT` entry: an index into userspace's list of reasons (not used by the
/// program).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtectValue {
    /// Answers for listed names that carried an address under this entry (atomic adds).
    pub answers: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) structs of integers and byte arrays with no implicit padding (sizes
    // pinned above): every bit pattern is valid.
    unsafe impl aya::Pod for super::NameValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DestValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProtectValue {}
}

/// ASCII lower case (DNS names compare case-insensitively, RFC 4343); other bytes unchanged.
/// Label length bytes (at most 63) are below `A` and stay as they are.
#[inline(always)]
pub const fn fold(c: u8) -> u8 {
    if c.wrapping_sub(b'A') < 26 {
        c | 0x20
    } else {
        c
    }
}

/// One step of the suffix hash, taken from the name's *last* byte towards its first, so that
/// the value after the byte at a label start is the hash of the suffix from there: `h * base +
/// fold(c)` (wrapping). `base` is odd and random per installation ([`NAME_HASH`]: with at most
/// 255 bytes a name cannot be crafted to collide with a listed one except by luck, about 2^-36
/// per try; see the module of the userspace side).
///
/// [`NAME_HASH`]: crate::map_names::NAME_HASH
#[inline(always)]
pub const fn step(h: u64, base: u64, c: u8) -> u64 {
    h.wrapping_mul(base).wrapping_add(fold(c) as u64)
}

/// The map key of a suffix's hash: its bits mixed (splitmix64's finaliser) so that the filter
/// bit and the kernel's own hashing see evenly spread values.
#[inline(always)]
pub const fn name_key(h: u64) -> NameKey {
    let mut z = h;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The `NAME_FILTER` bit of a key (`0..NAME_FILTER_WORDS * 64`).
#[inline(always)]
pub const fn name_filter_bit(key: NameKey) -> u32 {
    (key >> (64 - 20)) as u32
}

const _: () = assert!(NAME_FILTER_WORDS as u64 * 64 == 1 << 20);

/// The key of a name in wire form (length-prefixed labels and the root's zero byte), as the
/// program computes it for the suffix starting at that name's first label.
pub fn wire_key(wire: &[u8], base: u64) -> NameKey {
    let mut h = 0u64;
    let mut i = wire.len();
    while i > 0 {
        i -= 1;
        h = step(h, base, wire[i]);
    }
    name_key(h)
}
