//! Writing CIDR sets into the kernel's LPM tries and their prefix filters.
//!
//! The order of operations keeps the kernel's view safe at every instant: filter bits are set
//! before an entry is inserted (a clear bit must prove absence), and the filter is recomputed
//! only after entries are removed (a stale set bit only costs one trie lookup).
//!
//! Entries that go away are removed before new ones are added, so a map near its capacity
//! (`max_entries`) never holds old plus new at once: an install whose final set fits always
//! fits on the way. A final set larger than the capacity is refused before anything is touched
//! ([`PrefixError::OverCapacity`]); the map keeps what it held.

use std::collections::BTreeMap;

use aya::maps::{Array, IterableMap as _, LpmTrie, MapData, lpm_trie::Key};
use ipnet::{IpNet, Ipv4Net};
use sensor_common::{LpmAddr, PREFIX_FILTER_WORDS, ipv4_mapped, prefix_filter_bucket};

#[derive(Debug, thiserror::Error)]
pub enum PrefixError {
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    /// Nothing was changed: the map holds what it held before.
    #[error(
        "map {map}: {wanted} entries do not fit its capacity of {capacity}; nothing was installed \
         (the map keeps its {current} entries)"
    )]
    OverCapacity {
        map: &'static str,
        wanted: usize,
        capacity: usize,
        current: usize,
    },
}

/// An IPv4-mapped IPv6 CIDR as the IPv4 CIDR it is (the kernel map stores both the same way).
pub fn canonical_net(net: &IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.network().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(Ipv4Net::new_assert(v4, (n.prefix_len() - 96).min(32))),
            None => *net,
        },
        _ => *net,
    }
}

/// A CIDR as the tries store it: IPv4 mapped into IPv6 with prefix length + 96.
pub fn lpm_key(net: &IpNet) -> Key<LpmAddr> {
    match net {
        IpNet::V4(n) => Key::new(
            96 + n.prefix_len() as u32,
            ipv4_mapped(n.network().octets()),
        ),
        IpNet::V6(n) => Key::new(n.prefix_len() as u32, n.network().octets()),
    }
}

/// The CIDR of a trie key (inverse of [`lpm_key`]).
pub fn net_of_key(key: &Key<LpmAddr>) -> IpNet {
    let (plen, data) = (key.prefix_len(), key.data());
    if plen >= 96 && sensor_common::is_ipv4_mapped(&data) {
        let v4 = std::net::Ipv4Addr::new(data[12], data[13], data[14], data[15]);
        IpNet::V4(ipnet::Ipv4Net::new_assert(v4, (plen - 96).min(32) as u8))
    } else {
        IpNet::V6(ipnet::Ipv6Net::new_assert(
            std::net::Ipv6Addr::from(data),
            plen.min(128) as u8,
        ))
    }
}

/// The filter words that must have bits set for `nets` (see sensor-common `PREFIX_FILTER_WORDS`).
pub fn filter_words(nets: impl IntoIterator<Item = IpNet>) -> Vec<u64> {
    let mut words = vec![0u64; PREFIX_FILTER_WORDS as usize];
    let half = words.len() / 2;
    // An IPv6 packet from `::ffff:a.b.c.d` is looked up in the trie under that address, where
    // IPv4 entries live, but its bucket is the IPv6 one of its first word (0). Every entry that
    // can match a mapped address sets that bucket too, or such a packet would skip the lookup
    // and escape the blocklist (found by the kernel parser fuzzing).
    let mapped_source_bucket = sensor_common::bucket_of_first_word(false, 0, 0);
    let mapped = ipnet::Ipv6Net::new_assert(std::net::Ipv6Addr::from(ipv4_mapped([0; 4])), 96);
    for net in nets {
        let can_match_mapped = match net {
            IpNet::V4(_) => true,
            IpNet::V6(n) => mapped.contains(&n) || n.contains(&mapped),
        };
        if can_match_mapped {
            set_bit(&mut words, mapped_source_bucket);
        }
        match net {
            IpNet::V4(n) if n.prefix_len() >= 16 => set_bit(&mut words, bucket_of(&lpm_key(&net))),
            IpNet::V4(n) => {
                // A short IPv4 prefix covers 2^(16-len) consecutive /16 buckets.
                let first = u32::from(n.network()) >> 16;
                let count = 1u32 << (16 - n.prefix_len());
                for b in first..first + count {
                    set_bit(&mut words, b);
                }
            }
            IpNet::V6(n) => {
                if n.prefix_len() >= 32 {
                    set_bit(&mut words, bucket_of(&lpm_key(&net)));
                } else {
                    // Short IPv6 prefixes are hashed over every bucket: look for every v6 source.
                    words[half..].fill(u64::MAX);
                }
                // ::ffff:0:0/96 and anything containing it also matches IPv4 sources.
                if n.contains(&mapped) {
                    words[..half].fill(u64::MAX);
                } else if mapped.contains(&n)
                    && let Some(v4) = n.network().to_ipv4_mapped()
                {
                    let v4 = IpNet::V4(ipnet::Ipv4Net::new_assert(
                        v4,
                        (n.prefix_len() - 96).min(32),
                    ));
                    let sub = filter_words([v4]);
                    for (w, s) in words[..half].iter_mut().zip(&sub[..half]) {
                        *w |= s;
                    }
                }
            }
        }
    }
    words
}

fn bucket_of(key: &Key<LpmAddr>) -> u32 {
    prefix_filter_bucket(&key.data())
}

fn set_bit(words: &mut [u64], bucket: u32) {
    words[(bucket / 64) as usize] |= 1 << (bucket % 64);
}

/// An LPM trie with its prefix filter, as the XDP program sees them.
pub struct PrefixMap<V: aya::Pod> {
    pub name: &'static str,
    pub trie: LpmTrie<MapData, LpmAddr, V>,
    pub filter: Array<MapData, u64>,
}

impl<V: aya::Pod + Default> PrefixMap<V> {
    /// The CIDRs currently in the trie, with their values.
    pub fn entries(&self) -> Result<BTreeMap<IpNet, V>, PrefixError> {
        let mut out = BTreeMap::new();
        for item in self.trie.iter() {
            let (k, v) = item.map_err(|source| PrefixError::Map {
                map: self.name,
                source,
            })?;
            out.insert(net_of_key(&k), v);
        }
        Ok(out)
    }

    /// How many entries the trie can hold (its `max_entries`, read from the kernel).
    pub fn capacity(&self) -> Result<usize, PrefixError> {
        let info = self.trie.map().info().map_err(|source| PrefixError::Map {
            map: self.name,
            source,
        })?;
        Ok(info.max_entries() as usize)
    }

    /// Refuses a final set of `wanted` entries that the trie cannot hold, before anything is
    /// changed. `current`: how many it holds now (for the message).
    pub fn check_capacity(&self, wanted: usize, current: usize) -> Result<(), PrefixError> {
        let capacity = self.capacity()?;
        if wanted > capacity {
            return Err(PrefixError::OverCapacity {
                map: self.name,
                wanted,
                capacity,
                current,
            });
        }
        Ok(())
    }

    /// Makes the trie hold exactly `wanted`, keeping the values (hit counters) of entries that
    /// stay, and never leaving a moment in which an entry that stays is missing. Removes before
    /// it adds, so a final set that fits the map never overflows it on the way; a final set
    /// that does not fit is refused with [`PrefixError::OverCapacity`] and nothing changes.
    pub fn replace_all(&mut self, wanted: &[IpNet]) -> Result<(), PrefixError> {
        let current = self.entries()?;
        // As the trie stores them (`entries` reads them back this way): an IPv4-mapped IPv6
        // CIDR and its IPv4 form are one key, and host bits are not part of a key. Comparing
        // anything else would remove an entry that stays and add it again (its counter lost,
        // a moment without it).
        let wanted: std::collections::BTreeSet<IpNet> =
            wanted.iter().map(|n| canonical_net(&n.trunc())).collect();
        self.check_capacity(wanted.len(), current.len())?;
        // 1. Filter bits for the union of old and new entries.
        let union = filter_words(current.keys().copied().chain(wanted.iter().copied()));
        self.write_filter(&union)?;
        // 2. Remove what went away, first: the map never holds old and new at once.
        for net in current.keys() {
            if !wanted.contains(net) {
                self.trie
                    .remove(&lpm_key(net))
                    .map_err(|source| PrefixError::Map {
                        map: self.name,
                        source,
                    })?;
            }
        }
        // 3. Add what is new.
        for net in &wanted {
            if !current.contains_key(net) {
                self.trie
                    .insert(&lpm_key(net), V::default(), 0)
                    .map_err(|source| PrefixError::Map {
                        map: self.name,
                        source,
                    })?;
            }
        }
        // 4. Clear the bits nothing needs any more.
        self.write_filter(&filter_words(wanted.iter().copied()))
    }

    /// Writes the filter words that differ from `words`.
    pub fn write_filter(&mut self, words: &[u64]) -> Result<(), PrefixError> {
        for (i, &w) in words.iter().enumerate() {
            let i = i as u32;
            let old = self.filter.get(&i, 0).map_err(|source| PrefixError::Map {
                map: self.name,
                source,
            })?;
            if old != w {
                self.filter
                    .set(i, w, 0)
                    .map_err(|source| PrefixError::Map {
                        map: self.name,
                        source,
                    })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bit(words: &[u64], ip: &str) -> bool {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let key = lpm_key(&IpNet::from(ip));
        let b = bucket_of(&key);
        words[(b / 64) as usize] >> (b % 64) & 1 == 1
    }

    #[test]
    fn an_ipv6_packet_from_a_mapped_address_is_looked_up_for_ipv4_entries() {
        let bucket = sensor_common::bucket_of_first_word(false, 0, 0);
        let set = |w: &[u64]| w[(bucket / 64) as usize] >> (bucket % 64) & 1 == 1;
        for entry in [
            "203.0.113.0/24",
            "10.0.0.0/8",
            "::ffff:198.51.100.0/120",
            "::/0",
        ] {
            assert!(set(&filter_words([entry.parse().unwrap()])), "{entry}");
        }
        assert!(!set(&filter_words(["2001:db8::/32".parse().unwrap()])));
    }

    #[test]
    fn filter_covers_every_address_an_entry_matches() {
        let nets: Vec<IpNet> = [
            "10.1.2.3/32",
            "172.16.0.0/12",
            "2001:db8::/32",
            "2001:db9:1::/48",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let w = filter_words(nets);
        assert!(bit(&w, "10.1.2.3"));
        assert!(bit(&w, "10.1.200.1"), "same /16 bucket");
        assert!(!bit(&w, "10.2.0.1"));
        assert!(bit(&w, "172.16.0.1") && bit(&w, "172.31.255.255"));
        assert!(!bit(&w, "172.32.0.1") && !bit(&w, "172.15.255.255"));
        assert!(bit(&w, "2001:db8:ffff::1") && bit(&w, "2001:db9:1::5"));
        assert!(!bit(&w, "8.8.8.8"));
    }

    #[test]
    fn short_prefixes_cover_whole_families() {
        let w = filter_words(["::/0".parse().unwrap()]);
        assert!(bit(&w, "1.2.3.4") && bit(&w, "2001::1"));
        let w = filter_words(["0.0.0.0/0".parse().unwrap()]);
        assert!(bit(&w, "1.2.3.4") && bit(&w, "255.255.255.255") && !bit(&w, "2001::1"));
        let w = filter_words(["::ffff:10.0.0.0/104".parse().unwrap()]);
        assert!(bit(&w, "10.9.9.9") && !bit(&w, "11.0.0.1"));
    }

    #[test]
    fn keys_round_trip() {
        for s in [
            "10.0.0.0/8",
            "1.2.3.4/32",
            "2001:db8::/32",
            "::/0",
            "0.0.0.0/0",
        ] {
            let n: IpNet = s.parse().unwrap();
            assert_eq!(net_of_key(&lpm_key(&n)), n);
        }
    }
}
pub mod blocklist;
pub mod resolved;
