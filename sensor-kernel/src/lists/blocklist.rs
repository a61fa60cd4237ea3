//! The nightly list in the kernel: installing it into `BLOCKLIST` (and its `BLOCK_FILTER`) of a
//! running sensor, and `sensor blocklist show`.
//!
//! Installing applies the difference, in the order `lists/mod.rs` keeps safe: a final set larger
//! than the map's capacity refused before anything changes, filter bits for the union of old and
//! new, entries that went away removed (first, so a map near its capacity never holds old plus
//! new at once), then new entries added and changed expiries updated in place (an LPM trie
//! update replaces the node atomically, so the entry is never missing), then the filter
//! recomputed. Entries that stay keep their hit counters; for the ones whose expiry changes,
//! packets counted between reading the counter and writing the new value (a few microseconds)
//! are lost, which the map API cannot avoid.

use std::{collections::BTreeMap, path::Path};

use aya::maps::{Array, LpmTrie, Map, MapData};
use ipnet::IpNet;
use sensor_common::{BlockValue, map_names};
use serde::Serialize;

use super::canonical_net;
use crate::lists::{PrefixError, PrefixMap, filter_words, lpm_key};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "no running sensor pinned its blocklist at {0} (is the sensor running, and its name right?)"
    )]
    NotRunning(String),
    #[error("{path}: {reason}")]
    Open { path: String, reason: String },
    #[error("map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error(transparent)]
    Prefix(#[from] PrefixError),
}

/// What one install changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InstallReport {
    pub added: usize,
    /// Entries that stayed with a new expiry.
    pub updated: usize,
    pub unchanged: usize,
    pub removed: usize,
    /// Entries in the map afterwards.
    pub total: usize,
}

/// One entry as `sensor blocklist show` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShownEntry {
    pub net: IpNet,
    /// Unix seconds, 0 = never (the config's static entries).
    pub expires_unix: u64,
    /// Packets XDP dropped because of this entry.
    pub packets: u64,
}

/// Opens the pinned `BLOCKLIST` and `BLOCK_FILTER` of the sensor whose pin directory is
/// `pin_dir`.
pub fn open_pinned(pin_dir: &Path) -> Result<PrefixMap<BlockValue>, KernelError> {
    let trie_path = pin_dir.join(map_names::BLOCKLIST);
    if !trie_path.exists() {
        return Err(KernelError::NotRunning(trie_path.display().to_string()));
    }
    let open = |name: &str| {
        let path = pin_dir.join(name);
        MapData::from_pin(&path).map_err(|e| KernelError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    };
    let trie = LpmTrie::try_from(Map::LpmTrie(open(map_names::BLOCKLIST)?)).map_err(|e| {
        KernelError::Map {
            map: map_names::BLOCKLIST,
            reason: e.to_string(),
        }
    })?;
    let filter = Array::try_from(Map::Array(open(map_names::BLOCK_FILTER)?)).map_err(|e| {
        KernelError::Map {
            map: map_names::BLOCK_FILTER,
            reason: e.to_string(),
        }
    })?;
    Ok(PrefixMap {
        name: map_names::BLOCKLIST,
        trie,
        filter,
    })
}

/// Installs `entries` (with their expiry, Unix seconds) plus the config's static `always`
/// entries (never expiring) into the pinned map of a running sensor.
pub fn install(
    pin_dir: &Path,
    entries: &[(IpNet, u64)],
    always: &[IpNet],
) -> Result<InstallReport, KernelError> {
    install_into(&mut open_pinned(pin_dir)?, entries, always)
}

/// [`install`] into a map handle (the daemon's own `Maps::blocklist`, or [`open_pinned`]).
///
/// More entries (after merging duplicates) than the map holds: refused with
/// [`PrefixError::OverCapacity`] (as [`KernelError::Prefix`]) before anything is written; the
/// map keeps its entries and the caller reports the failure (a publish fails with it and is
/// retried by the next one, a start stops, a SIGHUP counts a failed reload).
pub fn install_into(
    map: &mut PrefixMap<BlockValue>,
    entries: &[(IpNet, u64)],
    always: &[IpNet],
) -> Result<InstallReport, KernelError> {
    let mut wanted: BTreeMap<IpNet, u64> = BTreeMap::new();
    for (net, expires) in entries {
        let net = canonical_net(&net.trunc());
        let e = wanted.entry(net).or_insert(*expires);
        *e = (*e).max(*expires);
    }
    for net in always {
        wanted.insert(canonical_net(&net.trunc()), 0);
    }
    let current = map.entries()?;
    map.check_capacity(wanted.len(), current.len())?;
    let mut report = InstallReport::default();
    let map_err = |e: aya::maps::MapError| {
        KernelError::Prefix(PrefixError::Map {
            map: map_names::BLOCKLIST,
            source: e,
        })
    };

    map.write_filter(&filter_words(current.keys().chain(wanted.keys()).copied()))?;
    // Removals first: the map never holds old and new at once, so a final set that fits never
    // overflows it on the way.
    for net in current.keys() {
        if !wanted.contains_key(net) {
            map.trie.remove(&lpm_key(net)).map_err(map_err)?;
            report.removed += 1;
        }
    }
    for (net, &expires) in &wanted {
        let key = lpm_key(net);
        match current.get(net) {
            None => {
                map.trie
                    .insert(
                        &key,
                        BlockValue {
                            packets: 0,
                            expires_unix: expires,
                        },
                        0,
                    )
                    .map_err(map_err)?;
                report.added += 1;
            }
            Some(old) if old.expires_unix == expires => report.unchanged += 1,
            Some(old) => {
                // Re-read the counter right before the update to lose as few hits as possible.
                let packets = map.trie.get(&key, 0).map_or(old.packets, |v| v.packets);
                map.trie
                    .insert(
                        &key,
                        BlockValue {
                            packets,
                            expires_unix: expires,
                        },
                        0,
                    )
                    .map_err(map_err)?;
                report.updated += 1;
            }
        }
    }
    map.write_filter(&filter_words(wanted.keys().copied()))?;
    report.total = wanted.len();
    Ok(report)
}

/// The entries of a running sensor's `BLOCKLIST`, sorted by network.
pub fn show(pin_dir: &Path) -> Result<Vec<ShownEntry>, KernelError> {
    Ok(open_pinned(pin_dir)?
        .entries()?
        .into_iter()
        .map(|(net, v)| ShownEntry {
            net,
            expires_unix: v.expires_unix,
            packets: v.packets,
        })
        .collect())
}

/// A table: network, expiry (UTC, or `never`), packets dropped.
pub fn render(entries: &[ShownEntry]) -> String {
    let width = entries
        .iter()
        .map(|e| e.net.to_string().len())
        .max()
        .unwrap_or(0)
        .max(7);
    let mut out = format!(
        "{:<width$}  {:<20}  {:>12}\n",
        "network", "expires", "packets"
    );
    for e in entries {
        out.push_str(&format!(
            "{:<width$}  {:<20}  {:>12}\n",
            e.net.to_string(),
            expiry_text(e.expires_unix),
            e.packets
        ));
    }
    out.push_str(&format!("# {} entries\n", entries.len()));
    out
}

/// A Unix time as UTC text (`never` for 0).
pub fn expiry_text(unix: u64) -> String {
    if unix == 0 {
        return "never".into();
    }
    match time::OffsetDateTime::from_unix_timestamp(unix as i64) {
        Ok(t) => {
            let (d, c) = (t.date(), t.time());
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                d.year(),
                u8::from(d.month()),
                d.day(),
                c.hour(),
                c.minute(),
                c.second()
            )
        }
        Err(_) => unix.to_string(),
    }
}

/// The entries as one JSON array (`expires` in RFC 3339 besides the Unix seconds).
pub fn json(entries: &[ShownEntry]) -> serde_json::Value {
    serde_json::Value::Array(
        entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "net": e.net.to_string(),
                    "expires_unix": e.expires_unix,
                    "expires": if e.expires_unix == 0 { None } else { Some(expiry_text(e.expires_unix)) },
                    "packets": e.packets,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_json() {
        let e = [
            ShownEntry {
                net: "45.33.32.156/32".parse().unwrap(),
                expires_unix: 1_798_081_440,
                packets: 3,
            },
            ShownEntry {
                net: "10.0.0.0/8".parse().unwrap(),
                expires_unix: 0,
                packets: 0,
            },
        ];
        let t = render(&e);
        assert!(t.contains("45.33.32.156/32  2026-12-24T03:04:00Z"), "{t}");
        assert!(t.contains("never") && t.ends_with("# 2 entries\n"), "{t}");
        let j = json(&e);
        assert_eq!(j[0]["expires"], "2026-12-24T03:04:00Z");
        assert_eq!(j[1]["expires"], serde_json::Value::Null);
        assert_eq!(j[0]["packets"], 3);
    }
}
