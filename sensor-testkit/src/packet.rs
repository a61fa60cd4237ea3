//! Crafted frames: Ethernet (with VLAN tags) / IPv4 (with options) or IPv6 (with extension
//! headers) / UDP or TCP / a DNS message. Checksums are left zero: the XDP program never reads
//! them, and BPF_PROG_TEST_RUN does not check them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A DNS name in wire format (labels, root). `"."` is the root alone.
pub fn wire_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// A DNS message header.
#[derive(Clone, Copy, Debug)]
pub struct DnsHeader {
    pub id: u16,
    pub flags: u16,
    pub qdcount: u16,
}

impl DnsHeader {
    /// A standard query with RD set and one question.
    pub fn query(id: u16) -> Self {
        Self {
            id,
            flags: 0x0100,
            qdcount: 1,
        }
    }
}

/// A DNS message: header, then `question` bytes as given (QNAME + QTYPE + QCLASS).
pub fn dns_message(h: DnsHeader, question: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(12 + question.len());
    m.extend_from_slice(&h.id.to_be_bytes());
    m.extend_from_slice(&h.flags.to_be_bytes());
    m.extend_from_slice(&h.qdcount.to_be_bytes());
    m.extend_from_slice(&[0; 6]);
    m.extend_from_slice(question);
    m
}

/// A question for `name` (wire form given), QTYPE and QCLASS.
pub fn question(wire: &[u8], qtype: u16, qclass: u16) -> Vec<u8> {
    let mut q = wire.to_vec();
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&qclass.to_be_bytes());
    q
}

/// A standard query for `name`.
pub fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    dns_message(DnsHeader::query(id), &question(&wire_name(name), qtype, 1))
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(8 + payload.len());
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(payload);
    s
}

/// A TCP segment (PSH|ACK when there is a payload, SYN otherwise).
pub fn tcp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(20 + payload.len());
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&1u32.to_be_bytes());
    s.extend_from_slice(&0u32.to_be_bytes());
    s.push(5 << 4);
    s.push(if payload.is_empty() { 0x02 } else { 0x18 });
    s.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    s.extend_from_slice(payload);
    s
}

/// A DNS message with TCP's two-byte length prefix.
pub fn tcp_dns(msg: &[u8]) -> Vec<u8> {
    let mut p = (msg.len() as u16).to_be_bytes().to_vec();
    p.extend_from_slice(msg);
    p
}

pub const UDP: u8 = 17;
pub const TCP: u8 = 6;

/// IPv4 header with `options` (a multiple of 4 bytes) and a fragment offset (in 8-byte units).
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    options: &[u8],
    frag_off: u16,
    l4: &[u8],
) -> Vec<u8> {
    assert!(options.len().is_multiple_of(4) && options.len() <= 40);
    let hlen = 20 + options.len();
    let mut h = Vec::with_capacity(hlen + l4.len());
    h.push(0x40 | (hlen / 4) as u8);
    h.push(0);
    h.extend_from_slice(&((hlen + l4.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34]);
    h.extend_from_slice(&(frag_off & 0x1fff).to_be_bytes());
    h.push(64);
    h.push(proto);
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(options);
    h.extend_from_slice(l4);
    h
}

/// An IPv6 extension header: (its type, its bytes after the next-header/length pair).
pub struct Ext {
    pub kind: u8,
    pub body: Vec<u8>,
}

impl Ext {
    /// Hop-by-hop options padded to 8 bytes.
    pub fn hop_by_hop() -> Self {
        Self {
            kind: 0,
            body: vec![1, 4, 0, 0, 0, 0],
        }
    }
    /// Destination options padded to 8 bytes.
    pub fn dest_opts() -> Self {
        Self {
            kind: 60,
            body: vec![1, 4, 0, 0, 0, 0],
        }
    }
    /// Fragment header (offset 0, more fragments).
    pub fn fragment() -> Self {
        Self {
            kind: 44,
            body: vec![0, 1, 0, 0, 0, 1],
        }
    }
}

pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, exts: &[Ext], l4: &[u8]) -> Vec<u8> {
    let mut chain = Vec::new();
    for (i, e) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(proto, |n| n.kind);
        let total = 2 + e.body.len();
        assert!(total % 8 == 0, "extension headers are multiples of 8 bytes");
        chain.push(next);
        chain.push(if e.kind == 44 {
            0
        } else {
            (total / 8 - 1) as u8
        });
        chain.extend_from_slice(&e.body);
    }
    let first = exts.first().map_or(proto, |e| e.kind);
    let mut h = Vec::with_capacity(40 + chain.len() + l4.len());
    h.extend_from_slice(&[0x60, 0, 0, 0]);
    h.extend_from_slice(&((chain.len() + l4.len()) as u16).to_be_bytes());
    h.push(first);
    h.push(64);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(&chain);
    h.extend_from_slice(l4);
    h
}

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

/// An Ethernet frame; `tags` are (TPID, VLAN id), outermost first.
pub fn ether(tags: &[(u16, u16)], ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 4 * tags.len() + l3.len());
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01]);
    for &(tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

/// A complete UDP DNS query frame from `src` to `dst` (same family).
pub fn udp_query_frame(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    id: u16,
    name: &str,
    qtype: u16,
) -> Vec<u8> {
    let seg = udp(sport, 53, &dns_query(id, name, qtype));
    ip_frame(src, dst, UDP, &seg)
}

/// An untagged Ethernet frame around an IP packet carrying `l4`.
pub fn ip_frame(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ether(&[], ETH_IPV4, &ipv4(s, d, proto, &[], 0, l4)),
        (IpAddr::V6(s), IpAddr::V6(d)) => ether(&[], ETH_IPV6, &ipv6(s, d, proto, &[], l4)),
        _ => panic!("mixed address families"),
    }
}

/// A response message: header (`flags` as given, QR included; QDCOUNT 1, ANCOUNT `ancount`),
/// the question for `name`/`qtype`/IN, then `answers` (raw records, see [`rr`]).
pub fn dns_response(
    id: u16,
    flags: u16,
    name: &str,
    qtype: u16,
    ancount: u16,
    answers: &[u8],
) -> Vec<u8> {
    let mut m = dns_message(
        DnsHeader {
            id,
            flags,
            qdcount: 1,
        },
        &question(&wire_name(name), qtype, 1),
    );
    m[6..8].copy_from_slice(&ancount.to_be_bytes());
    m.extend_from_slice(answers);
    m
}

/// A resource record of class IN: `owner` as given (wire labels, or a pointer such as
/// `[0xc0, 12]`, the question's name), TYPE, TTL and RDATA.
pub fn rr(owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
    let mut r = owner.to_vec();
    r.extend_from_slice(&rtype.to_be_bytes());
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&ttl.to_be_bytes());
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(rdata);
    r
}

/// The pointer to the question's name (offset 12), the usual owner of an answer.
pub const QNAME_PTR: [u8; 2] = [0xc0, 12];
