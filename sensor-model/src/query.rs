//! A DNS query as the documents use it: addresses, ports, the name in ECS presentation form,
//! the registry names of its type and class.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::DNSClass;
use sensor_common::{Event, Family, Transport, event::record_len};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error(
        "record of {0} bytes, expected a multiple of 8 from {min} to {max}",
        min = record_len(1),
        max = size_of::<Event>()
    )]
    Size(usize),
    #[error("record of {len} bytes cannot hold its {qname_len}-byte QNAME")]
    Truncated { len: usize, qname_len: u16 },
    #[error("unknown address family {0}")]
    Family(u8),
    #[error("unknown transport {0}")]
    Transport(u8),
    #[error("QNAME length {0} out of range")]
    NameLength(u16),
    #[error("QNAME is not a sequence of labels ending with the root")]
    NameLabels,
    #[error("record of kind {0}: neither a query (0) nor a response (1)")]
    Kind(u8),
    #[error(
        "response record of {len} bytes cannot hold its {copied} message bytes (a multiple of 8 up to {max})",
        max = sensor_common::response::MAX_RESPONSE_RECORD
    )]
    ResponseSize { len: usize, copied: u16 },
    #[error("unknown answer walk status {0}")]
    Walk(u8),
    #[error("{0} kernel addresses, at most 8")]
    AddrCount(u8),
}

/// Addresses, ports and names in the form the JSON documents use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub ts_mono_ns: u64,
    pub ifindex: u32,
    pub vlan_outer: u16,
    pub vlan_inner: u16,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub transport: Transport,
    pub dns_id: u16,
    pub qtype: u16,
    pub qclass: u16,
    /// Presentation form (see [`presentation_name`]).
    pub name: String,
    /// For a response: what it answered (then `src` is the client and `dst` the server, as for
    /// the query). `None` for a query.
    pub answer: Option<Box<crate::response::Answered>>,
}

impl Query {
    /// Whether this event is an alert: a malicious verdict on a query, or on an answer that is
    /// a detection of its own (its query already alerted for the name; an answer to it is the
    /// same sighting and not counted twice).
    pub fn is_alert(&self, intel: Option<&crate::verdict::Assessment>) -> bool {
        intel.is_some_and(|a| a.verdict == crate::verdict::Verdict::Malicious)
            && self.answer.as_ref().is_none_or(|a| a.detected)
    }

    pub fn from_event(ev: &Event) -> Result<Self, DecodeError> {
        let family = match ev.family {
            4 => Family::Ipv4,
            6 => Family::Ipv6,
            f => return Err(DecodeError::Family(f)),
        };
        let transport = match ev.transport {
            17 => Transport::Udp,
            6 => Transport::Tcp,
            t => return Err(DecodeError::Transport(t)),
        };
        let len = ev.qname_len as usize;
        if len == 0 || len > sensor_common::MAX_NAME_LEN {
            return Err(DecodeError::NameLength(ev.qname_len));
        }
        let addr = |a: [u8; 16]| match family {
            Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(a[12], a[13], a[14], a[15])),
            Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(a)),
        };
        Ok(Self {
            ts_mono_ns: ev.ts_mono_ns,
            ifindex: ev.ifindex,
            vlan_outer: ev.vlan_outer,
            vlan_inner: ev.vlan_inner,
            src: addr(ev.src_addr),
            dst: addr(ev.dst_addr),
            src_port: ev.src_port,
            dst_port: ev.dst_port,
            transport,
            dns_id: ev.dns_id,
            qtype: ev.qtype,
            qclass: ev.qclass,
            name: presentation_name(&ev.qname[..len])?,
            answer: None,
        })
    }
}

/// A wire-format name (labels ending with the root label, no pointers) in presentation form as
/// ECS defines `dns.question.name`: labels joined by dots without the trailing root dot
/// (`www.example.com`; the root itself is `.`), ASCII lower-cased, bytes below 32 or above 126
/// as `\DDD`, except tab, CR and LF as `\t`, `\r`, `\n`; backslash, double quote and a dot
/// inside a label are escaped with a backslash.
///
/// Written here rather than taken from a DNS crate because the escaping is ECS's, which no DNS
/// library implements (they follow RFC 1035 zone-file rules or decode IDNA).
pub fn presentation_name(wire: &[u8]) -> Result<String, DecodeError> {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(wire.len());
    let mut rest = wire;
    loop {
        let (&len, tail) = rest.split_first().ok_or(DecodeError::NameLabels)?;
        if len == 0 {
            if !tail.is_empty() {
                return Err(DecodeError::NameLabels);
            }
            break;
        }
        if len > sensor_common::MAX_LABEL_LEN {
            return Err(DecodeError::NameLabels);
        }
        let (label, tail) = tail
            .split_at_checked(len as usize)
            .ok_or(DecodeError::NameLabels)?;
        if !out.is_empty() {
            out.push('.');
        }
        for &b in label {
            match b.to_ascii_lowercase() {
                b'\t' => out.push_str("\\t"),
                b'\r' => out.push_str("\\r"),
                b'\n' => out.push_str("\\n"),
                b'\\' => out.push_str("\\\\"),
                b'"' => out.push_str("\\\""),
                b'.' => out.push_str("\\."),
                c @ 32..=126 => out.push(c as char),
                c => {
                    let _ = write!(out, "\\{c:03}");
                }
            }
        }
        rest = tail;
    }
    if out.is_empty() {
        out.push('.');
    }
    Ok(out)
}

/// QTYPE by its mnemonic in the IANA "Resource Record (RR) TYPEs" registry (`A`, `AAAA`,
/// `SPF`, `HTTPS`), or RFC 3597's generic `TYPE<n>` when the number has none (`TYPE0`,
/// `TYPE65000`). The registry's `*` (255) is written `ANY`, as tshark and Packetbeat do.
///
/// A table of our own rather than hickory's `RecordType`: hickory names 0 `ZERO` and has no
/// mnemonic for several assigned types (SPF, NINFO, EUI48, ...), which it would report as
/// unknown. The table follows the registry as of 2025 (up to DSYNC 66, HHIT 67, BRID 68,
/// NXNAME 128, the 256 block to IPN 264, TA and DLV).
pub fn qtype_name(qtype: u16) -> String {
    match QTYPES.binary_search_by_key(&qtype, |(n, _)| *n) {
        Ok(i) => QTYPES[i].1.to_owned(),
        Err(_) => format!("TYPE{qtype}"),
    }
}

/// The IANA registry's assigned TYPEs, sorted by number.
const QTYPES: &[(u16, &str)] = &[
    (1, "A"),
    (2, "NS"),
    (3, "MD"),
    (4, "MF"),
    (5, "CNAME"),
    (6, "SOA"),
    (7, "MB"),
    (8, "MG"),
    (9, "MR"),
    (10, "NULL"),
    (11, "WKS"),
    (12, "PTR"),
    (13, "HINFO"),
    (14, "MINFO"),
    (15, "MX"),
    (16, "TXT"),
    (17, "RP"),
    (18, "AFSDB"),
    (19, "X25"),
    (20, "ISDN"),
    (21, "RT"),
    (22, "NSAP"),
    (23, "NSAP-PTR"),
    (24, "SIG"),
    (25, "KEY"),
    (26, "PX"),
    (27, "GPOS"),
    (28, "AAAA"),
    (29, "LOC"),
    (30, "NXT"),
    (31, "EID"),
    (32, "NIMLOC"),
    (33, "SRV"),
    (34, "ATMA"),
    (35, "NAPTR"),
    (36, "KX"),
    (37, "CERT"),
    (38, "A6"),
    (39, "DNAME"),
    (40, "SINK"),
    (41, "OPT"),
    (42, "APL"),
    (43, "DS"),
    (44, "SSHFP"),
    (45, "IPSECKEY"),
    (46, "RRSIG"),
    (47, "NSEC"),
    (48, "DNSKEY"),
    (49, "DHCID"),
    (50, "NSEC3"),
    (51, "NSEC3PARAM"),
    (52, "TLSA"),
    (53, "SMIMEA"),
    (55, "HIP"),
    (56, "NINFO"),
    (57, "RKEY"),
    (58, "TALINK"),
    (59, "CDS"),
    (60, "CDNSKEY"),
    (61, "OPENPGPKEY"),
    (62, "CSYNC"),
    (63, "ZONEMD"),
    (64, "SVCB"),
    (65, "HTTPS"),
    (66, "DSYNC"),
    (67, "HHIT"),
    (68, "BRID"),
    (99, "SPF"),
    (100, "UINFO"),
    (101, "UID"),
    (102, "GID"),
    (103, "UNSPEC"),
    (104, "NID"),
    (105, "L32"),
    (106, "L64"),
    (107, "LP"),
    (108, "EUI48"),
    (109, "EUI64"),
    (128, "NXNAME"),
    (249, "TKEY"),
    (250, "TSIG"),
    (251, "IXFR"),
    (252, "AXFR"),
    (253, "MAILB"),
    (254, "MAILA"),
    (255, "ANY"),
    (256, "URI"),
    (257, "CAA"),
    (258, "AVC"),
    (259, "DOA"),
    (260, "AMTRELAY"),
    (261, "RESINFO"),
    (262, "WALLET"),
    (263, "CLA"),
    (264, "IPN"),
    (32768, "TA"),
    (32769, "DLV"),
];

/// QCLASS by mnemonic (`IN`, `CH`, `ANY`), or `CLASS<n>` (RFC 3597).
pub fn qclass_name(qclass: u16) -> String {
    match DNSClass::from(qclass) {
        DNSClass::IN => "IN".into(),
        DNSClass::CH => "CH".into(),
        DNSClass::HS => "HS".into(),
        DNSClass::NONE => "NONE".into(),
        DNSClass::ANY => "ANY".into(),
        _ => format!("CLASS{qclass}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_an_alert_only_when_it_detects_something_itself() {
        use crate::{
            response::Answered,
            verdict::{Assessment, Verdict},
        };
        let mut q = Query {
            ts_mono_ns: 0,
            ifindex: 1,
            vlan_outer: 0,
            vlan_inner: 0,
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 53)),
            src_port: 40000,
            dst_port: 53,
            transport: Transport::Udp,
            dns_id: 1,
            qtype: 1,
            qclass: 1,
            name: "c2.example".into(),
            answer: None,
        };
        let verdict = |v| Assessment {
            verdict: v,
            findings: Vec::new(),
            errors: Vec::new(),
        };
        let (bad, clean) = (verdict(Verdict::Malicious), verdict(Verdict::Clean));
        assert!(q.is_alert(Some(&bad)));
        assert!(!q.is_alert(Some(&clean)) && !q.is_alert(None));
        q.answer = Some(Box::new(Answered {
            flags: 0x8180,
            ancount: 0,
            nscount: 0,
            arcount: 0,
            answers: Vec::new(),
            answers_complete: true,
            duration_ns: None,
            detected: false,
        }));
        // The answer to a name whose query already alerted: the same sighting.
        assert!(!q.is_alert(Some(&bad)));
        q.answer.as_mut().unwrap().detected = true;
        assert!(q.is_alert(Some(&bad)));
    }

    fn wire(labels: &[&[u8]]) -> Vec<u8> {
        let mut w = Vec::new();
        for l in labels {
            w.push(l.len() as u8);
            w.extend_from_slice(l);
        }
        w.push(0);
        w
    }

    #[test]
    fn names_are_lowercased_and_escaped() {
        assert_eq!(
            presentation_name(&wire(&[b"WWW", b"Example", b"COM"])).unwrap(),
            "www.example.com"
        );
        assert_eq!(presentation_name(&[0]).unwrap(), ".");
        assert_eq!(
            presentation_name(&wire(&[b"a.b", b"c\\d"])).unwrap(),
            "a\\.b.c\\\\d"
        );
        assert_eq!(
            presentation_name(&wire(&[b"x\x00\xff\t", b"q\""])).unwrap(),
            "x\\000\\255\\t.q\\\""
        );
        assert_eq!(presentation_name(&wire(&[b"sp ace"])).unwrap(), "sp ace");
    }

    #[test]
    fn broken_wire_names_are_errors() {
        assert_eq!(
            presentation_name(&[3, b'a', b'b']),
            Err(DecodeError::NameLabels)
        );
        assert_eq!(
            presentation_name(&[1, b'a', 0, 0]),
            Err(DecodeError::NameLabels)
        );
        assert_eq!(presentation_name(&[]), Err(DecodeError::NameLabels));
        assert_eq!(presentation_name(&[64]), Err(DecodeError::NameLabels));
    }

    #[test]
    fn type_and_class_names() {
        assert_eq!(qtype_name(1), "A");
        assert_eq!(qtype_name(28), "AAAA");
        assert_eq!(qtype_name(65), "HTTPS");
        assert_eq!(qtype_name(65000), "TYPE65000");
        assert_eq!(qtype_name(0), "TYPE0");
        assert_eq!(qtype_name(99), "SPF");
        assert_eq!(qtype_name(255), "ANY");
        assert_eq!(
            qtype_name(54),
            "TYPE54",
            "unassigned between SMIMEA and HIP"
        );
        assert_eq!(qtype_name(32769), "DLV");
        assert!(
            QTYPES.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted for the binary search"
        );
        assert_eq!(qclass_name(1), "IN");
        assert_eq!(qclass_name(255), "ANY");
        assert_eq!(qclass_name(4242), "CLASS4242");
    }
}
