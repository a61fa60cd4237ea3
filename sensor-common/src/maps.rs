//! Keys and values of the LPM tries `BLOCKLIST` and `CLIENT_ALLOW`.

/// LPM trie key data: an IPv6 address, or an IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`,
/// prefix length + 96), so that one trie serves both families. The 4-byte prefix length that
/// the kernel expects in front of it is added by `Key<LpmAddr>` on both sides.
pub type LpmAddr = [u8; 16];

/// Maps an IPv4 address (network byte order) into the IPv6 space used by the tries and events.
pub const fn ipv4_mapped(v4: [u8; 4]) -> LpmAddr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Value of a `BLOCKLIST` entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockValue {
    /// Packets dropped because of this entry (incremented atomically by the XDP program).
    pub packets: u64,
    /// When the entry lapses (Unix seconds, 0 = never). From then on the XDP program passes
    /// what it matches (counted as `block_expired`), whether the daemon runs or not; userspace
    /// removes lapsed entries on its next install and `sensor blocklist show` prints it.
    pub expires_unix: u64,
}

const _: () = assert!(core::mem::size_of::<BlockValue>() == 16);

/// Value of a `CLIENT_ALLOW` entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowValue {
    /// Queries from this client that made no event.
    pub queries: u64,
}

const _: () = assert!(core::mem::size_of::<AllowValue>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) structs of u64 fields only: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::BlockValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AllowValue {}
}

/// Words (u64) in a prefix filter: 65,536 bits for IPv4 `/16` buckets, then 65,536 bits for
/// IPv6 buckets (a hash of the first 32 bits).
///
/// An LPM trie lookup costs about as much as the whole no-op XDP program (TOOLCHAIN.md), and the
/// blocklist is checked on every packet. So each trie has a filter (`BLOCK_FILTER`,
/// `ALLOW_FILTER`, array maps whose lookups the kernel inlines): userspace sets the bit of every
/// bucket an entry could match (all buckets of a family for short prefixes) *before* inserting
/// the entry, and recomputes the filter after removing entries. A clear bit proves no entry can
/// match, so the trie lookup is skipped; a set bit only means "look".
pub const PREFIX_FILTER_WORDS: u32 = 2048;

/// The filter bucket (bit index, `0..131072`) of an address in the trie's 16-byte form.
#[inline(always)]
pub const fn prefix_filter_bucket(addr: &LpmAddr) -> u32 {
    bucket_of_first_word(
        is_ipv4_mapped(addr),
        u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_be_bytes([addr[12], addr[13], addr[14], addr[15]]),
    )
}

/// The same bucket from the address's words in host order: the first 32 bits (IPv6) or the
/// IPv4 address. The XDP program calls this directly with what it loaded from the packet.
#[inline(always)]
pub const fn bucket_of_first_word(ipv4: bool, v6_first: u32, v4: u32) -> u32 {
    if ipv4 {
        v4 >> 16
    } else {
        65536 + ((v6_first ^ (v6_first >> 16)) & 0xffff)
    }
}

/// True when `addr` is in `::ffff:0:0/96`.
#[inline(always)]
pub const fn is_ipv4_mapped(addr: &LpmAddr) -> bool {
    addr[0] == 0
        && addr[1] == 0
        && addr[2] == 0
        && addr[3] == 0
        && addr[4] == 0
        && addr[5] == 0
        && addr[6] == 0
        && addr[7] == 0
        && addr[8] == 0
        && addr[9] == 0
        && addr[10] == 0xff
        && addr[11] == 0xff
}
