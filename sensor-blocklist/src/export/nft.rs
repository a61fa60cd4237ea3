//! nftables on the sensor host: the list as named sets, replaced in one `nft -f` transaction.
//!
//! Why the `nft` program and not a netlink crate: the Rust nftables crates either wrap the
//! same program's JSON (`nftables`) or are thin, lightly maintained netlink bindings that would
//! put hand-built set-element messages (interval ends, timeouts, user data) on us. `nft -f`
//! takes the whole update as one batch, which the kernel applies as one transaction: packets see
//! the old sets or the new ones, never an empty or half-filled set, and a rejected file (an
//! invalid element, a set with other flags, a killed `nft`) changes nothing.
//!
//! Four sets per configured prefix `P`, two per family, because the two kinds of entry are best
//! served by different set types:
//! - `P_v4` / `P_v6` (`flags timeout`, a hash): single addresses, which are nearly the whole
//!   nightly list. Loading 100,000 of them takes half the time of an interval set.
//! - `P_v4_nets` / `P_v6_nets` (`flags interval, timeout`): networks. An interval set refuses
//!   overlapping elements, and nft's `auto-merge` would merge a /24 and a /32 inside it into
//!   one element with one timeout and one comment. So the networks are first cut into disjoint
//!   ranges, each range carrying the expiry and reason of the entry that blocks it longest
//!   (an address stays blocked while any entry covering it is alive, exactly as listed).
//!
//! Each element keeps its expiry as an nft timeout (the kernel drops it on time, even with the
//! daemon dead) and its reason as the element comment. nft takes timeouts up to 2^32 ms
//! (49 days 17 h): a longer expiry is written as that, and the next publication renews it.
//!
//! What the sensor creates and what the operator owns:
//! - `create_sets = true` (default): the sensor adds the table and its four sets if missing
//!   (`add` leaves existing ones and everything else in the table alone). With `false` the
//!   operator creates them (same types and flags) and the sensor only replaces their elements.
//! - `drop_rules = true` (default false): the sensor also owns two base chains in the table,
//!   `P_prerouting` and `P_output` (priority `priority`), that drop packets from and to the
//!   sets' members; the sensor rewrites their rules on every publication, so put nothing of yours
//!   in them. With `false` the operator writes the rules that use the sets, one per set and
//!   direction: `ip saddr @block_v4 drop`, `ip saddr @block_v4_nets drop`, and so on.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use ipnet::IpNet;
use serde::Deserialize;

use super::{ExportEntry, ExportError, Written, bounds, plain_comment};
use sensor_model::error::ConfigError;

/// nft's longest element timeout (2^32 - 1 ms, in whole seconds).
pub const MAX_TIMEOUT_SECS: u64 = 4_294_967;
/// nft's longest element comment.
const MAX_COMMENT: usize = 128;

/// `[blocklist.export.nft]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NftSection {
    /// The table's family: `inet` (default), `ip`, `ip6`, `bridge` or `netdev`.
    pub family: String,
    /// The table holding the sets.
    pub table: String,
    /// Sets are named `<set_prefix>_v4`, `<set_prefix>_v4_nets`, `<set_prefix>_v6`,
    /// `<set_prefix>_v6_nets`.
    pub set_prefix: String,
    /// Add the table and the sets when missing.
    pub create_sets: bool,
    /// Own two base chains in the table that drop traffic from and to the sets' members
    /// (family `inet` only).
    pub drop_rules: bool,
    /// Priority of those chains (lower runs earlier; -150 is before conntrack's mangle).
    pub priority: i32,
    /// The `nft` program.
    pub program: PathBuf,
}

impl Default for NftSection {
    fn default() -> Self {
        Self {
            family: "inet".into(),
            table: "dns_sensor".into(),
            set_prefix: "block".into(),
            create_sets: true,
            drop_rules: false,
            priority: -150,
            program: PathBuf::from("nft"),
        }
    }
}

fn identifier(s: &str) -> bool {
    // nft identifiers: a letter, then letters, digits, `_` (we also keep them short).
    s.len() <= 48
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl NftSection {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: &str| ConfigError::Invalid {
            key,
            message: message.into(),
        };
        if !["inet", "ip", "ip6", "bridge", "netdev"].contains(&self.family.as_str()) {
            return Err(invalid(
                "blocklist.export.nft.family",
                "must be inet, ip, ip6, bridge or netdev",
            ));
        }
        if !identifier(&self.table) {
            return Err(invalid(
                "blocklist.export.nft.table",
                "a letter, then letters, digits or _ (at most 48)",
            ));
        }
        if !identifier(&self.set_prefix) {
            return Err(invalid(
                "blocklist.export.nft.set_prefix",
                "a letter, then letters, digits or _ (at most 48)",
            ));
        }
        if self.drop_rules && self.family != "inet" {
            return Err(invalid(
                "blocklist.export.nft.drop_rules",
                "needs family = \"inet\" (its chains match IPv4 and IPv6)",
            ));
        }
        Ok(())
    }

    /// The four set names: v4 hosts, v4 networks, v6 hosts, v6 networks.
    pub fn sets(&self) -> [String; 4] {
        let p = &self.set_prefix;
        [
            format!("{p}_v4"),
            format!("{p}_v4_nets"),
            format!("{p}_v6"),
            format!("{p}_v6_nets"),
        ]
    }
}

/// One element of an interval set: an inclusive range and the entry whose expiry and reason it
/// carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub start: u128,
    pub end: u128,
    pub entry: usize,
}

/// Later expiry wins; `None` (no expiry) is the latest.
fn lasts_longer(a: Option<i64>, b: Option<i64>) -> bool {
    match (a, b) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(x), Some(y)) => x > y,
    }
}

/// Cuts networks (prefixes, so any two are disjoint or nested) into disjoint, sorted ranges; a
/// range covered by several networks carries the one that lasts longest. Adjacent ranges from
/// the same entry are merged.
pub fn disjoint(entries: &[ExportEntry], members: &[usize]) -> Vec<Segment> {
    struct Frame {
        end: u128,
        entry: usize,
        /// The next address of this frame not yet emitted; `None` = all emitted.
        cursor: Option<u128>,
    }
    let mut items: Vec<(u128, u128, usize)> = members
        .iter()
        .map(|&i| {
            let (s, e) = bounds(&entries[i].net);
            (s, e, i)
        })
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut out: Vec<Segment> = Vec::with_capacity(items.len());
    let mut emit = |start: u128, end: u128, entry: usize| {
        if let Some(last) = out.last_mut()
            && last.entry == entry
            && last.end.checked_add(1) == Some(start)
        {
            last.end = end;
            return;
        }
        out.push(Segment { start, end, entry });
    };
    let mut stack: Vec<Frame> = Vec::new();
    let pop = |stack: &mut Vec<Frame>, emit: &mut dyn FnMut(u128, u128, usize)| {
        if let Some(f) = stack.pop() {
            if let Some(c) = f.cursor {
                emit(c, f.end, f.entry);
            }
            if let Some(parent) = stack.last_mut() {
                parent.cursor = f.end.checked_add(1).filter(|n| *n <= parent.end);
            }
        }
    };
    for (start, end, i) in items {
        while stack.last().is_some_and(|f| f.end < start) {
            pop(&mut stack, &mut emit);
        }
        let mut entry = i;
        if let Some(top) = stack.last_mut() {
            if let Some(c) = top.cursor
                && c < start
            {
                emit(c, start - 1, top.entry);
            }
            top.cursor = Some(start);
            if !lasts_longer(entries[i].expires, entries[top.entry].expires) {
                entry = top.entry;
            }
        }
        stack.push(Frame {
            end,
            entry,
            cursor: Some(start),
        });
    }
    while !stack.is_empty() {
        pop(&mut stack, &mut emit);
    }
    out
}

fn addr(v: u128, v6: bool) -> String {
    if v6 {
        Ipv6Addr::from(v).to_string()
    } else {
        Ipv4Addr::from(v as u32).to_string()
    }
}

/// A range as nft writes it: an address, a prefix when the range is one, else `a-b`.
fn range(start: u128, end: u128, v6: bool) -> String {
    if start == end {
        return addr(start, v6);
    }
    let bits = if v6 { 128 } else { 32 };
    let size = end - start; // all ones when the range is an aligned prefix
    if size.count_ones() == size.trailing_ones() && start & size == 0 {
        let len = bits - size.trailing_ones();
        return format!("{}/{len}", addr(start, v6));
    }
    format!("{}-{}", addr(start, v6), addr(end, v6))
}

fn element(out: &mut String, key: &str, e: &ExportEntry, now: i64) {
    out.push_str(key);
    if let Some(left) = e.remaining(now) {
        out.push_str(&format!(" timeout {}s", left.clamp(1, MAX_TIMEOUT_SECS)));
    }
    out.push_str(" comment \"");
    out.push_str(&plain_comment(&e.reason, MAX_COMMENT));
    out.push('"');
}

/// The `nft -f` script that replaces the sets' content with `entries` (expired ones left
/// out). Returns the script and the number of elements.
pub fn script(section: &NftSection, entries: &[ExportEntry], now: i64) -> (String, usize) {
    let t = format!("{} {}", section.family, section.table);
    let sets = section.sets();
    let mut out = String::with_capacity(entries.len() * 90 + 1024);
    if section.create_sets {
        out.push_str(&format!("add table {t}\n"));
        for (i, name) in sets.iter().enumerate() {
            let ty = if i < 2 { "ipv4_addr" } else { "ipv6_addr" };
            let flags = if i % 2 == 0 {
                "timeout"
            } else {
                "interval, timeout"
            };
            out.push_str(&format!(
                "add set {t} {name} {{ type {ty}; flags {flags}; }}\n"
            ));
        }
    }
    for name in &sets {
        out.push_str(&format!("flush set {t} {name}\n"));
    }
    if section.drop_rules {
        let p = &section.set_prefix;
        for (chain, hook) in [("prerouting", "prerouting"), ("output", "output")] {
            let c = format!("{p}_{chain}");
            out.push_str(&format!(
                "add chain {t} {c} {{ type filter hook {hook} priority {}; policy accept; }}\n\
                 flush chain {t} {c}\n",
                section.priority
            ));
            for (i, name) in sets.iter().enumerate() {
                let proto = if i < 2 { "ip" } else { "ip6" };
                // Incoming packets from a member, and packets to a member (routed through
                // this host, or sent by it).
                let dirs: &[&str] = if hook == "prerouting" {
                    &["saddr", "daddr"]
                } else {
                    &["daddr"]
                };
                for dir in dirs {
                    out.push_str(&format!(
                        "add rule {t} {c} {proto} {dir} @{name} counter drop\n"
                    ));
                }
            }
        }
    }
    let live: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].remaining(now) != Some(0))
        .collect();
    let mut count = 0;
    for (i, name) in sets.iter().enumerate() {
        let v6 = i >= 2;
        let family: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&j| matches!(entries[j].net, IpNet::V6(_)) == v6)
            .collect();
        let mut elements = String::new();
        let mut n = 0;
        let mut push = |key: &str, e: &ExportEntry, n: &mut usize| {
            if *n > 0 {
                elements.push_str(",\n");
            }
            element(&mut elements, key, e, now);
            *n += 1;
        };
        if i % 2 == 0 {
            // Hosts: one element per address, the longest-lasting entry if listed twice.
            let mut best: std::collections::BTreeMap<IpNet, usize> = Default::default();
            for &j in family
                .iter()
                .filter(|&&j| entries[j].net.prefix_len() == entries[j].net.max_prefix_len())
            {
                let slot = best.entry(entries[j].net).or_insert(j);
                if lasts_longer(entries[j].expires, entries[*slot].expires) {
                    *slot = j;
                }
            }
            for (net, j) in best {
                push(&net.addr().to_string(), &entries[j], &mut n);
            }
        } else {
            let nets: Vec<usize> = family
                .into_iter()
                .filter(|&j| entries[j].net.prefix_len() < entries[j].net.max_prefix_len())
                .collect();
            for s in disjoint(entries, &nets) {
                push(&range(s.start, s.end, v6), &entries[s.entry], &mut n);
            }
        }
        if n > 0 {
            out.push_str(&format!("add element {t} {name} {{\n{elements}\n}}\n"));
        }
        count += n;
    }
    (out, count)
}

/// Runs `nft -f -` with `script` on stdin: one transaction, all or nothing.
pub fn run(program: &std::path::Path, script: &str) -> Result<(), ExportError> {
    let out = super::tool::run(
        "nft",
        program,
        &["-f", "-"],
        Some(script),
        super::tool::DEADLINE,
    )?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // nft repeats the offending line of a 100k-element file: keep the first lines only.
        let message: String = stderr.lines().take(3).collect::<Vec<_>>().join(" | ");
        return Err(ExportError::Refused {
            program: "nft",
            message: format!(
                "{} ({})",
                message.chars().take(600).collect::<String>(),
                out.status
            ),
        });
    }
    Ok(())
}

/// Replaces the sets' elements with `entries`.
pub fn apply(
    section: &NftSection,
    entries: &[ExportEntry],
    now: i64,
) -> Result<Written, ExportError> {
    let (text, n) = script(section, entries, now);
    run(&section.program, &text)?;
    Ok((n, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(net: &str, expires: Option<i64>, reason: &str) -> ExportEntry {
        ExportEntry {
            net: super::super::canonical(net.parse().unwrap()),
            expires,
            reason: reason.into(),
            severity: None,
            confidence: None,
        }
    }

    fn ranges(entries: &[ExportEntry]) -> Vec<(String, usize)> {
        let all: Vec<usize> = (0..entries.len()).collect();
        disjoint(entries, &all)
            .into_iter()
            .map(|s| (range(s.start, s.end, false), s.entry))
            .collect()
    }

    #[test]
    fn nested_networks_become_disjoint_ranges_that_keep_the_longest_block() {
        // A /24 that lapses soon, a /28 inside it that lasts longer, a /30 inside the /28
        // that lapses sooner than the /28 (it adds nothing), and the same /24 twice.
        let entries = [
            e("10.0.0.0/24", Some(100), "short /24"),
            e("10.0.0.16/28", Some(500), "long /28"),
            e("10.0.0.20/30", Some(200), "inner /30"),
            e("10.0.0.0/24", Some(50), "duplicate /24"),
            e("10.0.1.0/24", None, "permanent"),
            e("10.0.2.0/25", Some(10), "adjacent"),
        ];
        assert_eq!(
            ranges(&entries),
            [
                ("10.0.0.0/28".to_string(), 0),
                ("10.0.0.16/28".to_string(), 1),
                ("10.0.0.32-10.0.0.255".to_string(), 0),
                ("10.0.1.0/24".to_string(), 4),
                ("10.0.2.0/25".to_string(), 5),
            ]
        );
        // Whole address space edges do not overflow.
        let edges = [
            e("0.0.0.0/0", Some(1), "all"),
            e("255.255.255.255/32", Some(9), "last"),
        ];
        let all = [0, 1];
        let segs = disjoint(&edges, &all);
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[1].end, u128::from(u32::MAX));
        let v6 = [e("::/0", Some(1), "all"), e("ffff::/16", Some(9), "top")];
        let segs = disjoint(&v6, &all);
        assert_eq!(segs.last().unwrap().end, u128::MAX);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Whatever the networks: the ranges are sorted and disjoint, cover exactly the listed
        /// addresses, and each address carries the longest-lasting entry that covers it.
        #[test]
        fn disjoint_ranges_block_each_address_as_long_as_its_longest_entry(
            nets in proptest::collection::vec(
                (0u32..65_536, 16u8..=31, proptest::option::of(0i64..5)),
                1..25,
            ),
            probes in proptest::collection::vec(0u32..65_536, 50),
        ) {
            let entries: Vec<ExportEntry> = nets
                .iter()
                .map(|(low, len, exp)| {
                    let addr = std::net::Ipv4Addr::from(0x0a00_0000 | low);
                    ExportEntry {
                        net: IpNet::new(addr.into(), *len).unwrap().trunc(),
                        expires: *exp,
                        reason: String::new(),
                        severity: None,
                        confidence: None,
                    }
                })
                .collect();
            let all: Vec<usize> = (0..entries.len()).collect();
            let segs = disjoint(&entries, &all);
            for w in segs.windows(2) {
                proptest::prop_assert!(w[0].end < w[1].start, "{:?}", segs);
            }
            let mut points: Vec<u128> = probes.iter().map(|p| u128::from(0x0a00_0000 | p)).collect();
            for s in &segs {
                points.extend([s.start, s.end, s.end + 1, s.start.saturating_sub(1)]);
            }
            for p in points {
                let covering: Vec<usize> = (0..entries.len())
                    .filter(|&i| {
                        let (a, b) = bounds(&entries[i].net);
                        a <= p && p <= b
                    })
                    .collect();
                let seg = segs.iter().find(|s| s.start <= p && p <= s.end);
                match (covering.is_empty(), seg) {
                    (true, None) => {}
                    (false, Some(s)) => {
                        let best = covering
                            .iter()
                            .map(|&i| entries[i].expires)
                            .max_by(|a, b| match (a, b) {
                                (None, None) => std::cmp::Ordering::Equal,
                                (None, _) => std::cmp::Ordering::Greater,
                                (_, None) => std::cmp::Ordering::Less,
                                (Some(x), Some(y)) => x.cmp(y),
                            })
                            .unwrap();
                        proptest::prop_assert!(covering.contains(&s.entry));
                        proptest::prop_assert_eq!(entries[s.entry].expires, best);
                    }
                    (c, s) => proptest::prop_assert!(false, "{p}: covered {} but segment {:?}", !c, s),
                }
            }
        }
    }

    #[test]
    fn the_script_is_one_replace_with_timeouts_and_clean_comments() {
        let entries = [
            e("203.0.113.0/24", None, "config \"quoted\"\nnext"),
            e("198.51.100.7/32", Some(1_000 + 3_600), "intel"),
            e("198.51.100.7/32", Some(1_000 + 7_200), "renewed"),
            e("2001:db8::/48", Some(1_000 + 999_999_999), "v6"),
            e("192.0.2.1/32", Some(900), "expired"),
        ];
        let (text, n) = script(&NftSection::default(), &entries, 1_000);
        assert_eq!(n, 3);
        assert!(text.contains("flush set inet dns_sensor block_v4\n"));
        assert!(text.contains("198.51.100.7 timeout 7200s comment \"renewed\""));
        assert!(text.contains("203.0.113.0/24 comment \"config _quoted__next\""));
        assert!(text.contains("2001:db8::/48 timeout 4294967s"));
        assert!(!text.contains("192.0.2.1"));
        assert!(!text.contains("chain"), "no rules unless configured");
        let with_rules = NftSection {
            drop_rules: true,
            ..Default::default()
        };
        let (text, _) = script(&with_rules, &entries, 1_000);
        assert!(text.contains(
            "add rule inet dns_sensor block_prerouting ip saddr @block_v4_nets counter drop"
        ));
        assert!(
            NftSection {
                drop_rules: true,
                family: "ip".into(),
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .to_string()
            .contains("blocklist.export.nft.drop_rules")
        );
    }
}
