//! Userspace side of blocking by resolution (see `sensor_common::resolved`): which names are
//! listed (BAD_NAMES, NAME_FILTER, NAME_HASH), what must never be blocked (DEST_PROTECT), and
//! the destinations the XDP program blocked (DEST_BLOCK): shown, swept when they lapse, and
//! removed by the operator's unblock.
//!
//! Order of operations, as for the prefix tries: a name's filter bit is set before the name is
//! inserted, and the filter is recomputed only after names are removed (userspace is the only
//! writer of both, so a recomputation never hides a listed name).
//!
//! The hash base is chosen at random (odd) the first time names are listed and kept in the
//! pinned NAME_HASH, so that a restarted daemon and `sensor blocklist` compute the same keys.
//! With a random base, two different names of at most 255 bytes hash alike only if the base is
//! a root of their difference polynomial modulo 2^64; for such short names that is at most
//! about 2^-36 per pair (the Thue-Morse construction that defeats 64-bit polynomial hashing
//! needs names of thousands of bytes).

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    net::IpAddr,
    path::Path,
};

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError};
use ipnet::IpNet;
use sensor_common::{
    LpmAddr, map_names,
    resolved::{
        DestValue, NAME_EXACT, NAME_FILTER_WORDS, NAME_FROM_CONFIG, NAME_FROM_FEED,
        NAME_FROM_VERDICT, NAME_SOURCES, NAME_TEXT_LEN, NameKey, NameValue, ProtectValue,
        name_filter_bit, wire_key,
    },
};

use super::{canonical_net, lpm_key, net_of_key};

#[derive(Debug, thiserror::Error)]
pub enum ResolvedError {
    #[error("map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error("{path}: {reason}")]
    Open { path: String, reason: String },
    #[error("{0:?} is not a DNS name")]
    BadName(String),
    #[error("map {map}: {wanted} entries do not fit its capacity of {capacity}")]
    OverCapacity {
        map: &'static str,
        wanted: usize,
        capacity: usize,
    },
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> ResolvedError {
    move |e| ResolvedError::Map {
        map,
        reason: e.to_string(),
    }
}

/// The five maps of blocking by resolution.
pub struct ResolvedMaps {
    names: HashMap<MapData, NameKey, NameValue>,
    filter: Array<MapData, u64>,
    hash: Array<MapData, u64>,
    dest: HashMap<MapData, LpmAddr, DestValue>,
    protect: LpmTrie<MapData, LpmAddr, ProtectValue>,
}

/// A name to list, with its expiry (Unix seconds, 0 = never).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub name: String,
    pub expires_unix: u64,
    /// The name only, not the names under it.
    pub exact: bool,
    /// Why it is listed: `NAME_FROM_*` bits (several when several sources list it).
    pub source: u64,
}

/// One listed name, as `sensor blocklist resolved` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    /// The text as BAD_NAMES keeps it (cut at 40 bytes, with `…`).
    pub name: String,
    pub exact: bool,
    /// 0: never.
    pub expires_unix: u64,
    /// Responses the program acted on.
    pub hits: u64,
    /// `config`, `feed`, `verdict` (each source that lists it).
    pub sources: Vec<&'static str>,
}

/// The names of the `NAME_FROM_*` bits set in `flags`.
pub fn source_names(flags: u64) -> Vec<&'static str> {
    [
        (NAME_FROM_CONFIG, "config"),
        (NAME_FROM_FEED, "feed"),
        (NAME_FROM_VERDICT, "verdict"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, n)| n)
    .collect()
}

/// A destination userspace blocks itself (an answer the program did not act on: its name was
/// listed after the answer passed, or only a CNAME target in its chain is listed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestBlock {
    pub address: IpAddr,
    /// The listed name the block is for (its key goes into the entry, so `sensor blocklist
    /// resolved` names it and `unlist` removes it).
    pub name: String,
    pub client: IpAddr,
    pub ttl: u32,
    /// Unix seconds.
    pub expires_unix: u64,
}

/// What [`ResolvedMaps::block`] did with each destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockOutcome {
    pub inserted: usize,
    /// Already blocked (the program or an earlier call did it): expiry extended if later.
    pub refreshed: usize,
    /// Covered by DEST_PROTECT: never blocked.
    pub protected: usize,
    /// DEST_BLOCK is full.
    pub full: usize,
}

/// One blocked destination, as `sensor blocklist resolved` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Blocked {
    pub address: IpAddr,
    /// The listed name whose answer carried it (its text as BAD_NAMES keeps it; `?` when the
    /// name has been unlisted since).
    pub name: String,
    pub client: IpAddr,
    pub ttl: u32,
    pub set_unix: u64,
    pub expires_unix: u64,
    pub packets: u64,
    pub responses: u32,
}

/// What a sweep or an unblock removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Removed {
    pub destinations: usize,
    pub names: usize,
}

/// The canonical text of a name (lower case, no trailing dot) and its wire form, or `None`
/// when it is not a DNS name (an empty label, a label over 63 bytes, over 255 bytes in all).
pub fn wire_form(name: &str) -> Option<(String, Vec<u8>)> {
    let text = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if text.is_empty() {
        return None;
    }
    let mut wire = Vec::with_capacity(text.len() + 2);
    for label in text.split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    (wire.len() <= sensor_common::MAX_NAME_LEN).then_some((text, wire))
}

/// The address of a DEST_BLOCK key (IPv4-mapped keys are IPv4 addresses).
pub fn addr_of(key: &LpmAddr) -> IpAddr {
    IpAddr::from(*key).to_canonical()
}

/// The DEST_BLOCK key of an address.
pub fn key_of_addr(ip: IpAddr) -> LpmAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => sensor_common::ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// NAME_FILTER's words with the bits of `keys` set.
fn filter_words(keys: impl Iterator<Item = NameKey>) -> Vec<u64> {
    let mut words = vec![0u64; NAME_FILTER_WORDS as usize];
    for k in keys {
        let bit = name_filter_bit(k);
        words[(bit >> 6) as usize] |= 1 << (bit & 63);
    }
    words
}

/// A BAD_NAMES value: `old`'s hit count kept.
fn name_value(
    old: Option<NameValue>,
    text: &str,
    expires: u64,
    exact: bool,
    source: u64,
) -> NameValue {
    let mut v = old.unwrap_or_default();
    v.expires_unix = expires;
    v.flags = if exact { NAME_EXACT } else { 0 } | (source & NAME_SOURCES);
    v.name = [0; NAME_TEXT_LEN];
    let n = text.len().min(NAME_TEXT_LEN);
    v.name[..n].copy_from_slice(&text.as_bytes()[..n]);
    v
}

fn text_of(v: &NameValue) -> String {
    let end = v.name.iter().position(|&b| b == 0).unwrap_or(NAME_TEXT_LEN);
    let mut s = String::from_utf8_lossy(&v.name[..end]).into_owned();
    if end == NAME_TEXT_LEN {
        s.push('…');
    }
    s
}

impl ResolvedMaps {
    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, ResolvedError> {
        let mut take = |name: &'static str| {
            ebpf.take_map(name).ok_or(ResolvedError::Map {
                map: name,
                reason: "missing from the object".into(),
            })
        };
        Self::from_maps([
            take(map_names::BAD_NAMES)?,
            take(map_names::NAME_FILTER)?,
            take(map_names::NAME_HASH)?,
            take(map_names::DEST_BLOCK)?,
            take(map_names::DEST_PROTECT)?,
        ])
    }

    /// Opens the pinned maps of a running sensor (its pin directory).
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, ResolvedError> {
        let open = |name: &'static str| -> Result<MapData, ResolvedError> {
            let path = pin_dir.join(name);
            MapData::from_pin(&path).map_err(|e| ResolvedError::Open {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        let names = open(map_names::BAD_NAMES)?;
        let filter = open(map_names::NAME_FILTER)?;
        let hash = open(map_names::NAME_HASH)?;
        let dest = open(map_names::DEST_BLOCK)?;
        let protect = open(map_names::DEST_PROTECT)?;
        Self::from_maps([
            Map::HashMap(names),
            Map::Array(filter),
            Map::Array(hash),
            Map::HashMap(dest),
            Map::LpmTrie(protect),
        ])
    }

    fn from_maps([names, filter, hash, dest, protect]: [Map; 5]) -> Result<Self, ResolvedError> {
        Ok(Self {
            names: HashMap::try_from(names).map_err(map_err(map_names::BAD_NAMES))?,
            filter: Array::try_from(filter).map_err(map_err(map_names::NAME_FILTER))?,
            hash: Array::try_from(hash).map_err(map_err(map_names::NAME_HASH))?,
            dest: HashMap::try_from(dest).map_err(map_err(map_names::DEST_BLOCK))?,
            protect: LpmTrie::try_from(protect).map_err(map_err(map_names::DEST_PROTECT))?,
        })
    }

    /// The hash base, chosen now (random, odd) if none was.
    fn base(&mut self) -> Result<u64, ResolvedError> {
        let current = self
            .hash
            .get(&0, 0)
            .map_err(map_err(map_names::NAME_HASH))?;
        if current != 0 {
            return Ok(current);
        }
        let mut bytes = [0u8; 8];
        // SAFETY: the buffer is 8 writable bytes owned by this frame; flags 0 blocks until the
        // kernel's pool is initialised (long done on a running host).
        let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if got != 8 {
            return Err(ResolvedError::Map {
                map: map_names::NAME_HASH,
                reason: format!("no random base: {}", std::io::Error::last_os_error()),
            });
        }
        let base = u64::from_ne_bytes(bytes) | 1;
        self.hash
            .set(0, base, 0)
            .map_err(map_err(map_names::NAME_HASH))?;
        Ok(base)
    }

    /// The base if one was chosen (0 otherwise: nothing was ever listed).
    fn current_base(&self) -> Result<u64, ResolvedError> {
        self.hash.get(&0, 0).map_err(map_err(map_names::NAME_HASH))
    }

    /// Makes BAD_NAMES hold exactly `wanted` (names that are not DNS names are refused before
    /// anything changes). Hit counts of names that stay are kept. Returns how many are listed.
    pub fn set_names(&mut self, wanted: &[Listing]) -> Result<usize, ResolvedError> {
        let mut parsed = Vec::with_capacity(wanted.len());
        for l in wanted {
            let (text, wire) =
                wire_form(&l.name).ok_or_else(|| ResolvedError::BadName(l.name.clone()))?;
            parsed.push((text, wire, l.expires_unix, l.exact, l.source));
        }
        let capacity = sensor_common::resolved::BAD_NAMES_CAPACITY as usize;
        if parsed.len() > capacity {
            return Err(ResolvedError::OverCapacity {
                map: map_names::BAD_NAMES,
                wanted: parsed.len(),
                capacity,
            });
        }
        if parsed.is_empty() && self.current_base()? == 0 {
            return Ok(0);
        }
        let base = self.base()?;
        let mut keys: StdHashMap<NameKey, (String, u64, bool, u64)> = StdHashMap::new();
        for (text, wire, expires, exact, source) in parsed {
            // A name listed twice: the wider listing (suffix over exact, later expiry) wins,
            // and it keeps every source.
            let e = keys
                .entry(wire_key(&wire, base))
                .or_insert((text, expires, exact, source));
            e.2 &= exact;
            e.3 |= source;
            if e.1 != 0 && (expires == 0 || expires > e.1) {
                e.1 = expires;
            }
        }
        let current: Vec<NameKey> = self.names.keys().filter_map(Result::ok).collect();
        for k in &current {
            if !keys.contains_key(k) {
                self.names
                    .remove(k)
                    .map_err(map_err(map_names::BAD_NAMES))?;
            }
        }
        let words = filter_words(keys.keys().copied());
        // Bits first (added to the ones in place), then the names, then the exact filter.
        self.add_filter_bits(&words)?;
        for (k, (text, expires, exact, source)) in &keys {
            let old = self.names.get(k, 0).ok();
            let v = name_value(old, text, *expires, *exact, *source);
            if Some(v) != old {
                self.names
                    .insert(k, v, 0)
                    .map_err(map_err(map_names::BAD_NAMES))?;
            }
        }
        for (i, w) in words.iter().enumerate() {
            let old = self
                .filter
                .get(&(i as u32), 0)
                .map_err(map_err(map_names::NAME_FILTER))?;
            if old != *w {
                self.filter
                    .set(i as u32, *w, 0)
                    .map_err(map_err(map_names::NAME_FILTER))?;
            }
        }
        Ok(keys.len())
    }

    fn add_filter_bits(&mut self, words: &[u64]) -> Result<(), ResolvedError> {
        for (i, w) in words.iter().enumerate() {
            if *w != 0 {
                let old = self
                    .filter
                    .get(&(i as u32), 0)
                    .map_err(map_err(map_names::NAME_FILTER))?;
                if old | w != old {
                    self.filter
                        .set(i as u32, old | w, 0)
                        .map_err(map_err(map_names::NAME_FILTER))?;
                }
            }
        }
        Ok(())
    }

    /// Lists `adding` beside what is listed (nothing is removed): a name already listed keeps
    /// its hits and gains the new source, and the later expiry (0, never, wins). For the
    /// verdicts that arrive one at a time, where [`Self::set_names`] would rewrite every entry.
    /// Returns how many names were not listed before.
    pub fn add_names(&mut self, adding: &[Listing]) -> Result<usize, ResolvedError> {
        if adding.is_empty() {
            return Ok(0);
        }
        let base = self.base()?;
        let mut parsed = Vec::with_capacity(adding.len());
        for l in adding {
            let (text, wire) =
                wire_form(&l.name).ok_or_else(|| ResolvedError::BadName(l.name.clone()))?;
            parsed.push((wire_key(&wire, base), text, l));
        }
        self.add_filter_bits(&filter_words(parsed.iter().map(|p| p.0)))?;
        let mut new = 0;
        for (k, text, l) in parsed {
            let old = self.names.get(&k, 0).ok();
            let v = match old {
                Some(o) => {
                    let expires = if o.expires_unix == 0 || l.expires_unix == 0 {
                        0
                    } else {
                        o.expires_unix.max(l.expires_unix)
                    };
                    let exact = o.flags & NAME_EXACT != 0 && l.exact;
                    name_value(
                        Some(o),
                        &text,
                        expires,
                        exact,
                        (o.flags & NAME_SOURCES) | l.source,
                    )
                }
                None => {
                    new += 1;
                    name_value(None, &text, l.expires_unix, l.exact, l.source)
                }
            };
            if Some(v) != old {
                match self.names.insert(k, v, 0) {
                    Ok(()) => {}
                    Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(7) => {
                        // E2BIG: the map is full.
                        return Err(ResolvedError::OverCapacity {
                            map: map_names::BAD_NAMES,
                            wanted: self.names.keys().count() + 1,
                            capacity: sensor_common::resolved::BAD_NAMES_CAPACITY as usize,
                        });
                    }
                    Err(e) => return Err(map_err(map_names::BAD_NAMES)(e)),
                }
            }
        }
        Ok(new)
    }

    /// Takes `name` off BAD_NAMES (its exact and suffix listing alike: one key) and removes the
    /// destinations blocked for it: the operator's name-level undo.
    pub fn remove_name(&mut self, name: &str) -> Result<Removed, ResolvedError> {
        let (_, wire) = wire_form(name).ok_or_else(|| ResolvedError::BadName(name.to_owned()))?;
        let base = self.current_base()?;
        if base == 0 {
            return Ok(Removed::default());
        }
        let key = wire_key(&wire, base);
        let mut removed = Removed::default();
        match self.names.remove(&key) {
            Ok(()) => removed.names = 1,
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(map_names::BAD_NAMES)(e)),
        }
        let keys: Vec<LpmAddr> = self
            .dest
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.name_key == key)
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            if self.dest.remove(&k).is_ok() {
                removed.destinations += 1;
            }
        }
        Ok(removed)
    }

    /// The key BAD_NAMES has (or would have) for `name`; `None` before anything was listed.
    pub fn key_of_name(&self, name: &str) -> Result<Option<NameKey>, ResolvedError> {
        let (_, wire) = wire_form(name).ok_or_else(|| ResolvedError::BadName(name.to_owned()))?;
        let base = self.current_base()?;
        Ok((base != 0).then(|| wire_key(&wire, base)))
    }

    /// Whether `ip` is covered by DEST_PROTECT (the trie's longest-prefix lookup).
    pub fn is_protected(&self, ip: IpAddr) -> bool {
        let key = aya::maps::lpm_trie::Key::new(128, key_of_addr(ip));
        self.protect.get(&key, 0).is_ok()
    }

    /// Puts destinations into DEST_BLOCK from userspace, as the program would have: never a
    /// protected one; one already blocked keeps its counts and gets the later expiry.
    pub fn block(&mut self, wanted: &[DestBlock], now: u64) -> Result<BlockOutcome, ResolvedError> {
        let mut out = BlockOutcome::default();
        for d in wanted {
            if self.is_protected(d.address) {
                out.protected += 1;
                continue;
            }
            let key = key_of_addr(d.address);
            let name_key = self.key_of_name(&d.name)?.unwrap_or(0);
            let v = match self.dest.get(&key, 0) {
                Ok(mut v) if v.expires_unix > now => {
                    out.refreshed += 1;
                    if d.expires_unix <= v.expires_unix {
                        continue;
                    }
                    v.expires_unix = d.expires_unix;
                    v
                }
                _ => {
                    out.inserted += 1;
                    DestValue {
                        packets: 0,
                        expires_unix: d.expires_unix,
                        set_unix: now,
                        name_key,
                        client: key_of_addr(d.client),
                        ttl: d.ttl,
                        responses: 1,
                    }
                }
            };
            match self.dest.insert(key, v, 0) {
                Ok(()) => {}
                Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(7) => {
                    out.inserted -= 1;
                    out.full += 1;
                }
                Err(e) => return Err(map_err(map_names::DEST_BLOCK)(e)),
            }
        }
        Ok(out)
    }

    /// The listed names, sorted by name.
    pub fn names(&self) -> Result<Vec<Listed>, ResolvedError> {
        let mut out: Vec<Listed> = self
            .names
            .iter()
            .filter_map(Result::ok)
            .map(|(_, v)| Listed {
                name: text_of(&v),
                exact: v.flags & NAME_EXACT != 0,
                expires_unix: v.expires_unix,
                hits: v.hits,
                sources: source_names(v.flags),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Makes DEST_PROTECT hold exactly `nets` (the answer counts of nets that stay are kept)
    /// and removes every blocked destination they cover.
    pub fn set_protected(&mut self, nets: &[IpNet]) -> Result<Removed, ResolvedError> {
        let capacity = sensor_common::resolved::DEST_PROTECT_CAPACITY as usize;
        let wanted: BTreeMap<IpNet, ()> = nets
            .iter()
            .map(|n| (canonical_net(&n.trunc()), ()))
            .collect();
        if wanted.len() > capacity {
            return Err(ResolvedError::OverCapacity {
                map: map_names::DEST_PROTECT,
                wanted: wanted.len(),
                capacity,
            });
        }
        let current: Vec<_> = self.protect.keys().filter_map(Result::ok).collect();
        for k in &current {
            if !wanted.contains_key(&net_of_key(k)) {
                self.protect
                    .remove(k)
                    .map_err(map_err(map_names::DEST_PROTECT))?;
            }
        }
        for net in wanted.keys() {
            let key = lpm_key(net);
            if self.protect.get(&key, 0).is_err() {
                self.protect
                    .insert(&key, ProtectValue::default(), 0)
                    .map_err(map_err(map_names::DEST_PROTECT))?;
            }
        }
        let nets: Vec<IpNet> = wanted.into_keys().collect();
        self.remove_destinations(|ip| nets.iter().any(|n| n.contains(&ip)))
    }

    /// Removes the blocked destinations inside `net` (the operator's unblock; the caller makes
    /// the program leave them alone from now on by protecting the net).
    pub fn unblock(&mut self, net: &IpNet) -> Result<Removed, ResolvedError> {
        let net = canonical_net(&net.trunc());
        self.remove_destinations(|ip| net.contains(&ip))
    }

    fn remove_destinations(
        &mut self,
        matches: impl Fn(IpAddr) -> bool,
    ) -> Result<Removed, ResolvedError> {
        let keys: Vec<LpmAddr> = self.dest.keys().filter_map(Result::ok).collect();
        let mut removed = Removed::default();
        for k in keys {
            if matches(addr_of(&k)) {
                match self.dest.remove(&k) {
                    Ok(()) => removed.destinations += 1,
                    // Gone in between (another sweep): nothing to do.
                    Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err(map_names::DEST_BLOCK)(e)),
                }
            }
        }
        Ok(removed)
    }

    /// Removes destinations and names whose expiry has passed (`now`, Unix seconds).
    pub fn sweep(&mut self, now: u64) -> Result<Removed, ResolvedError> {
        let lapsed: Vec<LpmAddr> = self
            .dest
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.expires_unix <= now)
            .map(|(k, _)| k)
            .collect();
        let mut removed = Removed::default();
        for k in lapsed {
            // Refreshed in between by a new answer: keep it.
            if let Ok(v) = self.dest.get(&k, 0)
                && v.expires_unix <= now
                && self.dest.remove(&k).is_ok()
            {
                removed.destinations += 1;
            }
        }
        let names: Vec<NameKey> = self
            .names
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.expires_unix != 0 && v.expires_unix <= now)
            .map(|(k, _)| k)
            .collect();
        for k in &names {
            if self.names.remove(k).is_ok() {
                removed.names += 1;
            }
        }
        Ok(removed)
    }

    /// The blocked destinations, sorted by address.
    pub fn blocked(&self) -> Result<Vec<Blocked>, ResolvedError> {
        let names: StdHashMap<NameKey, String> = self
            .names
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k, text_of(&v)))
            .collect();
        let mut out: Vec<Blocked> = self
            .dest
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| Blocked {
                address: addr_of(&k),
                name: names
                    .get(&v.name_key)
                    .cloned()
                    .unwrap_or_else(|| "?".into()),
                client: addr_of(&v.client),
                ttl: v.ttl,
                set_unix: v.set_unix,
                expires_unix: v.expires_unix,
                packets: v.packets,
                responses: v.responses,
            })
            .collect();
        out.sort_by_key(|b| b.address);
        Ok(out)
    }
}
