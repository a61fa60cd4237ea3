//! Installing a list into a kernel LPM trie near its capacity (`max_entries`), in the real
//! kernel with the real XDP program's maps: a final set that fits is installed even when the map
//! is nearly full (removals come before additions), entries that stay keep their values, and a
//! final set larger than the map is refused with nothing changed. Needs root (CAP_BPF); fails
//! without it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::Ebpf;
use ipnet::{IpNet, Ipv4Net};
use sensor_common::{AllowValue, BLOCKLIST_CAPACITY, BlockValue, CLIENT_ALLOW_CAPACITY};
use sensor_kernel::{
    lists::{PrefixError, PrefixMap, blocklist, filter_words, lpm_key},
    loader::{self, Maps, ProgramSettings},
};

/// The program's maps, with the program loaded (not attached, not pinned): the maps are the
/// ones the XDP program reads, with the capacity it declares.
fn maps() -> (Ebpf, Maps) {
    let mut ebpf =
        loader::load(&ProgramSettings::default(), None).expect("load the XDP program (needs root)");
    let maps = Maps::take(&mut ebpf).expect("maps");
    (ebpf, maps)
}

/// `n` consecutive /32s from `first`.
fn hosts(first: Ipv4Addr, n: usize) -> Vec<IpNet> {
    let base = u32::from(first);
    (0..n as u32)
        .map(|i| IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::from(base + i), 32)))
        .collect()
}

fn filter<V: aya::Pod>(map: &PrefixMap<V>) -> Vec<u64> {
    (0..sensor_common::PREFIX_FILTER_WORDS)
        .map(|i| map.filter.get(&i, 0).unwrap())
        .collect()
}

#[test]
fn client_allow_takes_a_full_new_set_over_a_nearly_full_map_and_refuses_one_too_many() {
    let (_ebpf, mut maps) = maps();
    let map = &mut maps.client_allow;
    let cap = map.capacity().unwrap();
    assert_eq!(cap, CLIENT_ALLOW_CAPACITY as usize);

    // Capacity - 1 entries.
    let old = hosts(Ipv4Addr::new(11, 0, 0, 0), cap - 1);
    map.replace_all(&old).unwrap();
    assert_eq!(map.entries().unwrap().len(), cap - 1);
    // A hit counter on an entry that stays (as the XDP program would have counted).
    let kept = old[7];
    map.trie
        .insert(&lpm_key(&kept), AllowValue { queries: 42 }, 0)
        .unwrap();

    // A full set: the first half of the old entries stay, half are new. Adding before
    // removing would need 1.5 × capacity on the way.
    let mut new = old[..cap / 2].to_vec();
    new.extend(hosts(Ipv4Addr::new(10, 0, 0, 0), cap - cap / 2));
    assert_eq!(new.len(), cap);
    map.replace_all(&new).unwrap();
    let got = map.entries().unwrap();
    assert!(
        got.keys()
            .eq(new.iter().collect::<std::collections::BTreeSet<_>>())
    );
    assert_eq!(
        got[&kept].queries, 42,
        "an entry that stays keeps its counter"
    );
    assert_eq!(filter(map), filter_words(new.iter().copied()));

    // One more than fits, and 10 of the present entries gone from it: refused before the 10
    // are removed (applied by difference, the 11th addition would fail on a map changed
    // halfway).
    let mut too_many = new[10..].to_vec();
    too_many.extend(hosts(Ipv4Addr::new(192, 0, 2, 0), 11));
    let err = map.replace_all(&too_many).unwrap_err();
    match &err {
        PrefixError::OverCapacity {
            wanted,
            capacity,
            current,
            ..
        } => assert_eq!((*wanted, *capacity, *current), (cap + 1, cap, cap)),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("CLIENT_ALLOW"), "{err}");
    assert_eq!(map.entries().unwrap(), got);
    assert_eq!(filter(map), filter_words(new.iter().copied()));
}

#[test]
fn blocklist_install_takes_a_full_new_set_over_a_nearly_full_map_and_refuses_one_too_many() {
    let (_ebpf, mut maps) = maps();
    let map = &mut maps.blocklist;
    let cap = map.capacity().unwrap();
    assert_eq!(cap, BLOCKLIST_CAPACITY as usize);
    let later = 4_000_000_000;

    // Capacity - 1 entries, the nightly list's way.
    let old: Vec<(IpNet, u64)> = hosts(Ipv4Addr::new(11, 0, 0, 0), cap - 1)
        .into_iter()
        .map(|n| (n, later))
        .collect();
    let report = blocklist::install_into(map, &old, &[]).unwrap();
    assert_eq!((report.added, report.total), (cap - 1, cap - 1));
    let kept = old[7].0;
    map.trie
        .insert(
            &lpm_key(&kept),
            BlockValue {
                packets: 42,
                expires_unix: later,
            },
            0,
        )
        .unwrap();

    // A full set: half the old entries stay (every other one with a new expiry, updated in
    // place while the map is full: the new ones, 10.x, sort first), half are new.
    let mut new: Vec<(IpNet, u64)> = old[..cap / 2]
        .iter()
        .enumerate()
        .map(|(i, &(n, e))| (n, if i % 2 == 0 { e } else { e + 1 }))
        .collect();
    new.extend(
        hosts(Ipv4Addr::new(10, 0, 0, 0), cap - cap / 2)
            .into_iter()
            .map(|n| (n, later)),
    );
    let always = [new[0].0]; // a static entry that is also listed: counted once, never expires
    let report = blocklist::install_into(map, &new, &always).unwrap();
    assert_eq!(
        (
            report.removed,
            report.added,
            report.updated + report.unchanged,
            report.total
        ),
        (cap - 1 - cap / 2, cap - cap / 2, cap / 2, cap)
    );
    let want: BTreeMap<IpNet, u64> = new
        .iter()
        .map(|&(n, e)| (n, if n == always[0] { 0 } else { e }))
        .collect();
    let got = map.entries().unwrap();
    assert_eq!(got.len(), cap);
    assert!(
        got.iter()
            .map(|(n, v)| (*n, v.expires_unix))
            .eq(want.iter().map(|(n, e)| (*n, *e))),
        "the map holds exactly the new set with its expiries"
    );
    assert_eq!(
        got[&kept].packets, 42,
        "an entry that stays keeps its counter"
    );
    assert_eq!(filter(map), filter_words(want.keys().copied()));

    // One more than fits, and 10 of the present entries gone from it: refused before anything
    // is written (not 10 removed and then a failed addition).
    let mut too_many = new[10..].to_vec();
    too_many.extend(
        hosts(Ipv4Addr::new(192, 0, 2, 0), 11)
            .into_iter()
            .map(|n| (n, later)),
    );
    let err = blocklist::install_into(map, &too_many, &[]).unwrap_err();
    assert!(
        matches!(
            err,
            blocklist::KernelError::Prefix(PrefixError::OverCapacity { wanted, capacity, .. })
                if wanted == cap + 1 && capacity == cap
        ),
        "{err}"
    );
    assert_eq!(map.entries().unwrap(), got);
    assert_eq!(filter(map), filter_words(want.keys().copied()));
}
