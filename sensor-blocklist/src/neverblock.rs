//! The never-block filter, applied to every address before it is looked up or listed.
//!
//! An address is never blocked when it is special-purpose (it cannot be a real attacker's source
//! on the Internet, or blocking it breaks the network itself), when it is one of the sensor's
//! own `filter.client_allow` clients, or when it is in the configured allowlist
//! (`blocklist.policy.allow`: own offices, partners, resolvers, CDNs).
//!
//! The special-purpose ranges are those of the IANA registries, as of 2026:
//! - IPv4 Special-Purpose Address Registry
//!   (<https://www.iana.org/assignments/iana-ipv4-special-registry/>), plus the multicast
//!   range 224.0.0.0/4 (RFC 5771) and the reserved 240.0.0.0/4 (RFC 1112 §4), which the IANA
//!   IPv4 address space registry lists instead.
//! - IPv6 Special-Purpose Address Registry
//!   (<https://www.iana.org/assignments/iana-ipv6-special-registry/>), plus link-local,
//!   site-local (deprecated) and multicast from the IPv6 address space registry, and every
//!   address outside 2000::/3, the only range IANA allocates as global unicast.
//!
//! Whole registry blocks are never blocked even where a few addresses inside are globally
//! reachable (2001::/23 holds Teredo, AMT and ORCHIDv2): blocking infrastructure by mistake costs
//! more than missing an attacker there. Addresses that carry an IPv4 address are judged by it:
//! IPv4-mapped `::ffff:0:0/96`, the NAT64 well-known prefix `64:ff9b::/96` (RFC 6052) and 6to4
//! `2002::/16` (RFC 3056).

use sensor_kernel::lists::canonical_net;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// IPv4 special-purpose ranges with the reason logged for them.
const SPECIAL_V4: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this network\" (RFC 791)"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space / CGNAT (RFC 6598)"),
    ("127.0.0.0/8", "loopback (RFC 1122)"),
    ("169.254.0.0/16", "link-local (RFC 3927)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
    ("192.0.2.0/24", "documentation TEST-NET-1 (RFC 5737)"),
    ("192.31.196.0/24", "AS112-v4 (RFC 7535)"),
    ("192.52.193.0/24", "AMT (RFC 7450)"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast (RFC 7526)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("192.175.48.0/24", "AS112 direct delegation (RFC 7534)"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("198.51.100.0/24", "documentation TEST-NET-2 (RFC 5737)"),
    ("203.0.113.0/24", "documentation TEST-NET-3 (RFC 5737)"),
    ("224.0.0.0/4", "multicast (RFC 5771)"),
    ("240.0.0.0/4", "reserved (RFC 1112)"),
    ("255.255.255.255/32", "limited broadcast (RFC 919)"),
];

/// IPv6 special-purpose ranges, checked after the ranges that embed IPv4 addresses.
const SPECIAL_V6: &[(&str, &str)] = &[
    ("::/128", "unspecified (RFC 4291)"),
    ("::1/128", "loopback (RFC 4291)"),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
    ("100::/64", "discard-only (RFC 6666)"),
    ("100:0:0:1::/64", "dummy prefix (RFC 9780)"),
    ("2001::/23", "IETF protocol assignments (RFC 2928)"),
    ("2001:db8::/32", "documentation (RFC 3849)"),
    ("2620:4f:8000::/48", "AS112 direct delegation (RFC 7534)"),
    ("3fff::/20", "documentation (RFC 9637)"),
    ("5f00::/16", "SRv6 SIDs (RFC 9602)"),
    ("fc00::/7", "unique local (RFC 4193)"),
    ("fe80::/10", "link-local (RFC 4291)"),
    ("fec0::/10", "deprecated site-local (RFC 3879)"),
    ("ff00::/8", "multicast (RFC 4291)"),
];

const REASON_CLIENT_ALLOW: &str = "filter.client_allow";
const REASON_PROTECTED: &str = "protected";
const REASON_OPERATOR_ALLOW: &str = "operator_allow";
const REASON_OPERATOR_UNBLOCK: &str = "operator_unblock";
const REASON_ALLOW: &str = "blocklist.policy.allow";
const REASON_NOT_GLOBAL_V6: &str = "outside 2000::/3, not global unicast (IANA IPv6 address space)";

/// A set of CIDRs for fast membership tests: aggregated (no overlaps, sorted), so the one
/// candidate for an address is the last network starting at or before it.
#[derive(Debug, Clone, Default)]
struct NetSet {
    v4: Vec<Ipv4Net>,
    v6: Vec<Ipv6Net>,
}

impl NetSet {
    fn new(nets: &[IpNet]) -> Self {
        let mut v4: Vec<Ipv4Net> = nets
            .iter()
            .filter_map(|n| match n {
                IpNet::V4(n) => Some(n.trunc()),
                IpNet::V6(_) => None,
            })
            .collect();
        let mut v6: Vec<Ipv6Net> = nets
            .iter()
            .filter_map(|n| match n {
                IpNet::V6(n) => Some(n.trunc()),
                IpNet::V4(_) => None,
            })
            .collect();
        v4 = Ipv4Net::aggregate(&v4);
        v6 = Ipv6Net::aggregate(&v6);
        v4.sort();
        v6.sort();
        Self { v4, v6 }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => {
                let i = self.v4.partition_point(|n| n.network() <= a);
                i > 0 && self.v4[i - 1].contains(&a)
            }
            IpAddr::V6(a) => {
                let i = self.v6.partition_point(|n| n.network() <= a);
                i > 0 && self.v6[i - 1].contains(&a)
            }
        }
    }

    /// True when any address of `net` is in the set.
    fn overlaps(&self, net: &IpNet) -> bool {
        match net {
            IpNet::V4(n) => self.v4.iter().any(|s| s.contains(n) || n.contains(s)),
            IpNet::V6(n) => self.v6.iter().any(|s| s.contains(n) || n.contains(s)),
        }
    }
}

/// The never-block filter: special-purpose ranges, `filter.client_allow`, the policy allowlist.
#[derive(Debug, Clone)]
pub struct NeverBlock {
    special_v4: Vec<(Ipv4Net, &'static str)>,
    special_v6: Vec<(Ipv6Net, &'static str)>,
    client_allow: NetSet,
    allow: NetSet,
    /// Protected addresses ([`crate::protect`]) and the operator's allows and unblocks in force
    /// ([`crate::overrides`]): these outrank everything, static entries included.
    protected: NetSet,
    operator_allow: NetSet,
    operator_unblock: NetSet,
}

impl NeverBlock {
    /// `client_allow`: the sensor's own `filter.client_allow`; `allow`: the policy allowlist.
    #[expect(
        clippy::expect_used,
        reason = "the special-purpose tables are constants, and every test that builds a NeverBlock parses all of them"
    )]
    pub fn new(client_allow: &[IpNet], allow: &[IpNet]) -> Self {
        Self {
            special_v4: SPECIAL_V4
                .iter()
                .map(|(n, r)| (n.parse().expect("valid table entry"), *r))
                .collect(),
            special_v6: SPECIAL_V6
                .iter()
                .map(|(n, r)| (n.parse().expect("valid table entry"), *r))
                .collect(),
            client_allow: NetSet::new(client_allow),
            allow: NetSet::new(allow),
            protected: NetSet::default(),
            operator_allow: NetSet::default(),
            operator_unblock: NetSet::default(),
        }
    }

    /// Adds the protected addresses and the operator's overrides in force at `now`.
    pub fn with_rules(
        mut self,
        protected: &crate::protect::Protected,
        overrides: &crate::overrides::Overrides,
        now: i64,
    ) -> Self {
        use crate::overrides::Kind;
        let nets = |k: Kind| -> Vec<IpNet> {
            overrides
                .active_nets(now)
                .filter(|(_, kind)| *kind == k)
                .map(|(n, _)| *n)
                .collect()
        };
        self.protected = NetSet::new(&protected.nets().copied().collect::<Vec<_>>());
        self.operator_allow = NetSet::new(&nets(Kind::Allow));
        self.operator_unblock = NetSet::new(&nets(Kind::Unblock));
        self
    }

    /// The reason among those that bind static entries too (protected, operator decisions),
    /// or `None`: what a `blocklist.entries` range must have holes for.
    pub fn hard_reason(&self, ip: IpAddr) -> Option<&'static str> {
        let canon = ip.to_canonical();
        for a in [ip, canon] {
            if self.protected.contains(a) {
                return Some(REASON_PROTECTED);
            }
            if self.operator_allow.contains(a) {
                return Some(REASON_OPERATOR_ALLOW);
            }
            if self.operator_unblock.contains(a) {
                return Some(REASON_OPERATOR_UNBLOCK);
            }
        }
        None
    }

    /// The networks every list must leave out (protected and operator decisions), in both
    /// forms the kernel may hold (IPv4 and IPv4-mapped IPv6 are the same trie key).
    pub fn hard_holes(&self) -> Vec<IpNet> {
        [
            &self.protected,
            &self.operator_allow,
            &self.operator_unblock,
        ]
        .iter()
        .flat_map(|s| {
            s.v4.iter()
                .map(|n| IpNet::V4(*n))
                .chain(s.v6.iter().map(|n| IpNet::V6(*n)))
        })
        .collect()
    }

    /// True when `ip` may be blocked.
    pub fn blockable(&self, ip: IpAddr) -> bool {
        self.reason(ip).is_none()
    }

    /// Why `ip` is never blocked (for logs and the results file), or `None` if it may be.
    pub fn reason(&self, ip: IpAddr) -> Option<&'static str> {
        // The allowlists are checked on the canonical form and on the address as given, so an
        // allowlisted IPv4 client is protected in its mapped form too.
        if let Some(r) = self.hard_reason(ip) {
            return Some(r);
        }
        let canon = ip.to_canonical();
        for a in [ip, canon] {
            if self.client_allow.contains(a) {
                return Some(REASON_CLIENT_ALLOW);
            }
            if self.allow.contains(a) {
                return Some(REASON_ALLOW);
            }
        }
        match canon {
            IpAddr::V4(v4) => self.special_v4_reason(v4),
            IpAddr::V6(v6) => {
                if let Some(v4) = embedded_v4(v6) {
                    // Judged by the IPv4 address it carries, allowlists included.
                    return self.reason(IpAddr::V4(v4));
                }
                if let Some((_, r)) = self.special_v6.iter().find(|(n, _)| n.contains(&v6)) {
                    return Some(r);
                }
                if v6.segments()[0] & 0xe000 != 0x2000 {
                    return Some(REASON_NOT_GLOBAL_V6);
                }
                None
            }
        }
    }

    /// True when no address of `net` is never-blocked by a range (for CIDR entries). Hosts inside
    /// an IPv4-carrying IPv6 range are not judged one by one: such a CIDR is refused unless it is
    /// a single address.
    pub fn blockable_net(&self, net: &IpNet) -> bool {
        let net = canonical_net(net);
        if net.prefix_len() == net.max_prefix_len() {
            return self.blockable(net.addr());
        }
        if self.client_allow.overlaps(&net)
            || self.allow.overlaps(&net)
            || self.protected.overlaps(&net)
            || self.operator_allow.overlaps(&net)
            || self.operator_unblock.overlaps(&net)
        {
            return false;
        }
        match net {
            IpNet::V4(n) => !self
                .special_v4
                .iter()
                .any(|(s, _)| s.contains(&n) || n.contains(s)),
            IpNet::V6(n) => {
                let first = n.network().segments()[0];
                let last = n.broadcast().segments()[0];
                first & 0xe000 == 0x2000
                    && last & 0xe000 == 0x2000
                    && !n.contains(&Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0))
                    && !Ipv6Net::new_assert(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16)
                        .contains(&n)
                    && !self
                        .special_v6
                        .iter()
                        .any(|(s, _)| s.contains(&n) || n.contains(s))
            }
        }
    }

    fn special_v4_reason(&self, v4: Ipv4Addr) -> Option<&'static str> {
        self.special_v4
            .iter()
            .find(|(n, _)| n.contains(&v4))
            .map(|(_, r)| *r)
    }
}

/// The IPv4 address inside a NAT64 well-known-prefix (RFC 6052) or 6to4 (RFC 3056) address.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> NeverBlock {
        NeverBlock::new(
            &[
                "198.19.0.0/16".parse().unwrap(),
                "8.8.8.8/32".parse().unwrap(),
            ],
            &[
                "1.1.1.0/24".parse().unwrap(),
                "2606:4700::/32".parse().unwrap(),
            ],
        )
    }

    #[test]
    fn special_ranges_are_never_blocked() {
        let n = never();
        for ip in [
            "0.1.2.3",
            "10.9.9.9",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "169.254.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.9",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.7",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::10.1.2.3",
            "64:ff9b:1::1",
            "100::1",
            "2001::1",
            "2001:1ff:ffff::1",
            "2001:db8::1",
            "2002:0a00:0001::1",
            "3fff::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "4000::1",
            "::2",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!n.blockable(ip), "{ip} must never be blocked");
            assert!(n.reason(ip).is_some());
        }
    }

    #[test]
    fn global_addresses_are_blockable() {
        let n = never();
        for ip in [
            "1.2.3.4",
            "45.33.32.156",
            "100.128.0.1",
            "172.32.0.1",
            "192.0.3.1",
            "223.255.255.255",
            "::ffff:45.33.32.156",
            "64:ff9b::45.33.32.156",
            "2002:2d21:209c::1",
            "2001:200::1",
            "2400:cb00::1",
            "2a00:1450::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(n.blockable(ip), "{ip} is global: {:?}", n.reason(ip));
        }
    }

    #[test]
    fn allowlists_win_in_every_form() {
        let n = never();
        for (ip, why) in [
            ("8.8.8.8", REASON_CLIENT_ALLOW),
            ("::ffff:8.8.8.8", REASON_CLIENT_ALLOW),
            ("64:ff9b::8.8.8.8", REASON_CLIENT_ALLOW),
            ("1.1.1.1", REASON_ALLOW),
            ("2606:4700::1111", REASON_ALLOW),
        ] {
            assert_eq!(n.reason(ip.parse().unwrap()), Some(why), "{ip}");
        }
        assert!(n.blockable("1.1.2.1".parse().unwrap()));
    }

    #[test]
    fn cidrs_overlapping_a_never_range_are_refused() {
        let n = never();
        let ok = |s: &str| n.blockable_net(&s.parse().unwrap());
        assert!(ok("45.33.32.0/24"));
        assert!(ok("2a00:1450::/32"));
        assert!(!ok("10.0.0.0/8"));
        assert!(!ok("8.0.0.0/8"), "contains an allowlisted client");
        assert!(!ok("0.0.0.0/0"));
        assert!(!ok("2000::/3"), "contains 2001:db8::/32");
        assert!(!ok("::ffff:10.0.0.0/104"));
        assert!(ok("::ffff:45.33.32.0/120"));
        assert!(!ok("2002::/24"));
    }
}
