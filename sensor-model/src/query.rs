//! A DNS query as the documents use it: addresses, ports, the name in ECS presentation form,
//! the registry names of its type and class.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::{DNSClass, RecordType};
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
}

impl Query {
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

/// QTYPE by its IANA mnemonic (`A`, `AAAA`, `HTTPS`), or `TYPE<n>` (RFC 3597) when unassigned.
pub fn qtype_name(qtype: u16) -> String {
    match RecordType::from(qtype) {
        RecordType::Unknown(n) => format!("TYPE{n}"),
        t => t.to_string(),
    }
}

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
        assert_eq!(qclass_name(1), "IN");
        assert_eq!(qclass_name(255), "ANY");
        assert_eq!(qclass_name(4242), "CLASS4242");
    }
}
