//! Protected addresses: what blocking must never touch because the sensor, the network it
//! relies on, or the operator says so. None of them can enter any list (nightly, static
//! `blocklist.entries`, served lists), whatever the intel says.
//!
//! Found at plan time, so a new gateway or a moved Elasticsearch is protected from the next
//! install on:
//! - the sensor host's own addresses (every interface),
//! - its default gateways (`/proc/net/route`, `/proc/net/ipv6_route`),
//! - its resolvers (`/etc/resolv.conf`),
//! - every configured endpoint (Elasticsearch, Kafka, ThreatBook, WeCom, webhooks), resolved,
//! - the EDL's allowed clients and configured firewalls (those that fetch the list),
//! - `blocklist.protect`: the company's public ranges and partners.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs},
    path::Path,
};

use ipnet::IpNet;

use sensor_kernel::lists::canonical_net;

/// What to protect besides what the host itself shows.
#[derive(Debug, Clone, Default)]
pub struct ProtectInputs {
    /// `blocklist.protect`.
    pub protect: Vec<IpNet>,
    /// Endpoint URLs or `host:port` of every configured service.
    pub endpoints: Vec<String>,
    /// `blocklist.edl.allowed_clients`.
    pub edl_clients: Vec<IpNet>,
}

/// One protected network and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedNet {
    pub net: IpNet,
    pub why: String,
}

/// Everything protected right now, with reasons, and the endpoints that could not be resolved
/// (reported: an unresolvable endpoint cannot be matched, so the plan says so).
#[derive(Debug, Clone, Default)]
pub struct Protected {
    pub nets: Vec<ProtectedNet>,
    pub unresolved: Vec<String>,
}

impl Protected {
    /// Looks everything up (interfaces, routes, resolv.conf, DNS for endpoints).
    pub fn discover(inputs: &ProtectInputs) -> Self {
        let mut p = Protected::default();
        let mut add = |net: IpNet, why: String| {
            let net = canonical_net(&net.trunc());
            if !p.nets.iter().any(|x| x.net == net) {
                p.nets.push(ProtectedNet { net, why });
            }
        };
        for n in &inputs.protect {
            add(*n, "blocklist.protect".into());
        }
        for n in &inputs.edl_clients {
            add(*n, "blocklist.edl.allowed_clients".into());
        }
        for (ip, ifname) in host_addresses() {
            add(IpNet::from(ip), format!("sensor host address ({ifname})"));
        }
        for ip in gateways(
            Path::new("/proc/net/route"),
            Path::new("/proc/net/ipv6_route"),
        ) {
            add(IpNet::from(ip), "default gateway".into());
        }
        for ip in resolvers(Path::new("/etc/resolv.conf")) {
            add(IpNet::from(ip), "resolver (/etc/resolv.conf)".into());
        }
        for ep in &inputs.endpoints {
            match resolve(ep) {
                Some(ips) if !ips.is_empty() => {
                    for ip in ips {
                        add(IpNet::from(ip), format!("endpoint {}", host_of(ep)));
                    }
                }
                _ => p.unresolved.push(host_of(ep).to_owned()),
            }
        }
        p
    }

    /// Why `ip` is protected, if it is.
    pub fn reason(&self, ip: IpAddr) -> Option<&str> {
        let ip = ip.to_canonical();
        self.nets
            .iter()
            .find(|p| p.net.contains(&ip))
            .map(|p| p.why.as_str())
    }

    pub fn nets(&self) -> impl Iterator<Item = &IpNet> {
        self.nets.iter().map(|p| &p.net)
    }
}

fn host_addresses() -> Vec<(IpAddr, String)> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| {
            let sa = a.address?;
            let ip = if let Some(v4) = sa.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else {
                IpAddr::V6(sa.as_sockaddr_in6()?.ip())
            };
            Some((ip, a.interface_name))
        })
        .collect()
}

/// Default gateways from the kernel's route tables (procfs text: hex fields, IPv4 in host byte
/// order as the kernel prints it on little-endian machines, IPv6 as 32 hex digits).
pub fn gateways(v4_routes: &Path, v6_routes: &Path) -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string(v4_routes) {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Iface Destination Gateway Flags ...; a default route has destination 0.
            if f.len() > 3
                && f[1] == "00000000"
                && let Ok(gw) = u32::from_str_radix(f[2], 16)
                && gw != 0
            {
                // The kernel prints the network-order word as a host-order integer.
                out.push(IpAddr::V4(Ipv4Addr::from(gw.to_ne_bytes())));
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string(v6_routes) {
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            // dest dest_len src src_len next_hop metric refcnt use flags iface
            if f.len() >= 5
                && f[0] == "00000000000000000000000000000000"
                && f[1] == "00"
                && let Ok(nh) = u128::from_str_radix(f[4], 16)
                && nh != 0
            {
                out.push(IpAddr::V6(Ipv6Addr::from(nh)));
            }
        }
    }
    out
}

/// `nameserver` lines of a resolv.conf.
pub fn resolvers(path: &Path) -> Vec<IpAddr> {
    std::fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .filter_map(|l| l.trim().strip_prefix("nameserver"))
                .filter_map(|rest| {
                    // A scoped IPv6 resolver (fe80::1%eth0) is protected by its address.
                    let addr = rest.trim().split('%').next().unwrap_or("");
                    addr.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The host of a URL (`https://user@host:port/path`) or of `host:port`.
pub fn host_of(endpoint: &str) -> &str {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = hostport.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match hostport.rsplit_once(':') {
        // More than one colon and no brackets: a bare IPv6 address.
        Some((h, _)) if !h.contains(':') => h,
        _ => hostport,
    }
}

fn resolve(endpoint: &str) -> Option<Vec<IpAddr>> {
    let host = host_of(endpoint);
    if host.is_empty() {
        return None;
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(vec![ip]);
    }
    (host, 0u16)
        .to_socket_addrs()
        .ok()
        .map(|it| it.map(|sa| sa.ip()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_urls_and_host_ports() {
        assert_eq!(host_of("https://es.corp:9200/path"), "es.corp");
        assert_eq!(host_of("http://u:p@10.0.0.5:9200"), "10.0.0.5");
        assert_eq!(host_of("kafka-1:9092"), "kafka-1");
        assert_eq!(host_of("https://[2001:db8::5]:443/x"), "2001:db8::5");
        assert_eq!(host_of("2001:db8::5"), "2001:db8::5");
        assert_eq!(host_of("https://api.threatbook.cn"), "api.threatbook.cn");
    }

    #[test]
    fn gateways_and_resolvers_from_the_kernel_text() {
        let dir = tempfile::tempdir().unwrap();
        let v4 = dir.path().join("route");
        std::fs::write(
            &v4,
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
             eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n",
        )
        .unwrap();
        let v6 = dir.path().join("ipv6_route");
        std::fs::write(
            &v6,
            "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n\
             20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n",
        )
        .unwrap();
        assert_eq!(
            gateways(&v4, &v6),
            vec![
                "192.168.1.1".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
        let rc = dir.path().join("resolv.conf");
        std::fs::write(
            &rc,
            "# comment\nnameserver 10.0.0.53\nnameserver fe80::53%eth0\nsearch corp\n",
        )
        .unwrap();
        assert_eq!(
            resolvers(&rc),
            vec![
                "10.0.0.53".parse::<IpAddr>().unwrap(),
                "fe80::53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn discovery_protects_the_hosts_loopback_and_literal_endpoints() {
        let p = Protected::discover(&ProtectInputs {
            protect: vec!["198.51.100.0/24".parse().unwrap()],
            endpoints: vec![
                "http://203.0.113.9:9200".into(),
                "no-such-host.invalid:1".into(),
            ],
            edl_clients: vec!["192.0.2.1/32".parse().unwrap()],
        });
        assert_eq!(
            p.reason("198.51.100.77".parse().unwrap()),
            Some("blocklist.protect")
        );
        assert!(p.reason("127.0.0.1".parse().unwrap()).is_some(), "lo");
        assert_eq!(
            p.reason("203.0.113.9".parse().unwrap()),
            Some("endpoint 203.0.113.9")
        );
        assert!(p.reason("::ffff:192.0.2.1".parse().unwrap()).is_some());
        assert_eq!(p.unresolved, vec!["no-such-host.invalid".to_string()]);
        assert_eq!(p.reason("8.8.4.4".parse().unwrap()), None);
    }
}
