//! Turns a ring-buffer record into an owned, ECS-shaped DNS event.

use std::{
    mem::{MaybeUninit, offset_of},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use hickory_proto::rr::{DNSClass, RecordType};
use sensor_common::{
    Event, Family, Transport,
    event::{is_record_len, record_len},
};
use serde::Serialize;

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

/// Reads a raw ring-buffer record: the first bytes of an [`Event`], as long as its QNAME needs
/// (the variable-length rule in `sensor_common::event`). The bytes the record does not carry
/// read as zero. A record that breaks the rule is an error, never a panic.
pub fn record(bytes: &[u8]) -> Result<Event, DecodeError> {
    let len = bytes.len();
    if !len.is_multiple_of(8) || len < record_len(1) || len > size_of::<Event>() {
        return Err(DecodeError::Size(len));
    }
    let at = offset_of!(Event, qname_len);
    let qname_len = u16::from_ne_bytes([bytes[at], bytes[at + 1]]);
    if !is_record_len(len, usize::from(qname_len)) {
        return Err(DecodeError::Truncated { len, qname_len });
    }
    let mut ev = MaybeUninit::<Event>::zeroed();
    // SAFETY: `len <= size_of::<Event>()` (checked above), so the copy stays inside `ev`; the
    // source is `len` bytes of the slice and cannot overlap a local. Event is Pod (integers and
    // byte arrays): the all-zero value with any prefix overwritten is a valid Event.
    Ok(unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), ev.as_mut_ptr().cast::<u8>(), len);
        ev.assume_init()
    })
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

/// The JSON document written for each query, with Elastic Common Schema field names nested as
/// Packetbeat writes them.
#[derive(Debug, Serialize)]
pub struct Document<'a> {
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    pub event: EventMeta,
    pub source: Endpoint,
    pub destination: Endpoint,
    pub network: Network,
    pub dns: Dns<'a>,
    pub observer: Observer<'a>,
    /// The verdict, when threat intel is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intel: Option<crate::intel::IntelDoc<'a>>,
}

#[derive(Debug, Serialize)]
pub struct EventMeta {
    pub kind: &'static str,
    pub category: [&'static str; 1],
    #[serde(rename = "type")]
    pub kind_type: [&'static str; 1],
    pub dataset: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}

#[derive(Debug, Serialize)]
pub struct Network {
    pub transport: &'static str,
    #[serde(rename = "type")]
    pub net_type: &'static str,
    pub protocol: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Dns<'a> {
    pub id: u16,
    #[serde(rename = "type")]
    pub dns_type: &'static str,
    pub question: Question<'a>,
}

#[derive(Debug, Serialize)]
pub struct Question<'a> {
    pub name: &'a str,
    #[serde(rename = "type")]
    pub qtype: String,
    pub class: String,
}

#[derive(Debug, Serialize)]
pub struct Observer<'a> {
    pub name: &'a str,
    pub ingress: Ingress<'a>,
}

#[derive(Debug, Serialize)]
pub struct Ingress<'a> {
    pub interface: Interface<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<Vlan>,
    /// The inner tag of a QinQ (802.1ad) frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inner_vlan: Option<Vlan>,
}

#[derive(Debug, Serialize)]
pub struct Interface<'a> {
    pub name: &'a str,
}

/// ECS types `vlan.id` as keyword, so it is written as a string.
#[derive(Debug, Serialize)]
pub struct Vlan {
    pub id: String,
}

impl Query {
    /// The ECS document; `timestamp` is RFC 3339 UTC.
    pub fn document<'a>(
        &'a self,
        timestamp: String,
        observer: &'a str,
        interface: &'a str,
        intel: Option<&'a crate::intel::Assessment>,
    ) -> Document<'a> {
        let vlan = |id: u16| (id != 0).then(|| Vlan { id: id.to_string() });
        Document {
            timestamp,
            event: EventMeta {
                // ECS: a detection is an `alert`, so SIEM views pick malicious queries out.
                kind: match intel.map(|a| a.verdict) {
                    Some(crate::intel::Verdict::Malicious) => "alert",
                    _ => "event",
                },
                category: ["network"],
                kind_type: ["protocol"],
                dataset: "dns",
            },
            source: Endpoint {
                ip: self.src,
                port: self.src_port,
            },
            destination: Endpoint {
                ip: self.dst,
                port: self.dst_port,
            },
            network: Network {
                transport: match self.transport {
                    Transport::Udp => "udp",
                    Transport::Tcp => "tcp",
                },
                net_type: if self.src.is_ipv4() { "ipv4" } else { "ipv6" },
                protocol: "dns",
            },
            dns: Dns {
                id: self.dns_id,
                dns_type: "query",
                question: Question {
                    name: &self.name,
                    qtype: qtype_name(self.qtype),
                    class: qclass_name(self.qclass),
                },
            },
            observer: Observer {
                name: observer,
                ingress: Ingress {
                    interface: Interface { name: interface },
                    vlan: vlan(self.vlan_outer),
                    inner_vlan: vlan(self.vlan_inner),
                },
            },
            intel: intel.map(|a| a.document()),
        }
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

    /// A record as the XDP program writes it: `len` bytes of an Event for `name`.
    fn raw(name: &[u8], len: usize) -> Vec<u8> {
        // SAFETY: Event is Pod (integers and byte arrays): all zeros is a valid value.
        let mut ev: Event = unsafe { MaybeUninit::zeroed().assume_init() };
        ev.ts_mono_ns = 7;
        ev.ifindex = 3;
        ev.src_addr = sensor_common::ipv4_mapped([10, 0, 0, 1]);
        ev.dst_addr = sensor_common::ipv4_mapped([10, 0, 0, 53]);
        ev.src_port = 40000;
        ev.dst_port = 53;
        ev.dns_id = 9;
        ev.qtype = 1;
        ev.qclass = 1;
        ev.family = 4;
        ev.transport = 17;
        ev.qname_len = name.len() as u16;
        ev.qname[..name.len()].copy_from_slice(name);
        // Unspecified bytes after the name: not zero, to show they are not read.
        ev.qname[name.len()..].fill(0xee);
        // SAFETY: Event is repr(C) plain data without padding (size pinned in sensor-common).
        let all =
            unsafe { std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<Event>()) };
        all[..len].to_vec()
    }

    #[test]
    fn records_of_every_consistent_length_decode() {
        let name = wire(&[b"www", b"example", b"com"]);
        assert_eq!(name.len(), 17);
        // 64 + 17 = 81, rounded up to 88; a short (128) and a full (320) record hold it too.
        for len in (88..=320).step_by(8) {
            let ev = record(&raw(&name, len)).unwrap_or_else(|e| panic!("{len}: {e}"));
            let q = Query::from_event(&ev).expect("decodes");
            assert_eq!(q.name, "www.example.com", "{len}");
            assert_eq!((q.src_port, q.dst_port, q.dns_id), (40000, 53, 9));
            assert_eq!(q.src, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
            // What the record did not carry reads as zero.
            assert!(ev.qname[len - 64..].iter().all(|&b| b == 0), "{len}");
        }
        // The shortest name (the root) in the shortest record; the longest in the full one.
        assert_eq!(
            Query::from_event(&record(&raw(&[0], 72)).unwrap())
                .unwrap()
                .name,
            "."
        );
        let long = wire(&[&[b'a'; 63], &[b'b'; 63], &[b'c'; 63], &[b'd'; 61]]);
        assert_eq!(long.len(), 255);
        let q = Query::from_event(&record(&raw(&long, 320)).unwrap()).unwrap();
        assert_eq!(q.name.len(), 253);
    }

    #[test]
    fn short_or_inconsistent_records_are_errors() {
        let name = wire(&[b"www", b"example", b"com"]);
        // Shorter than the name needs.
        assert_eq!(
            record(&raw(&name, 80)).err(),
            Some(DecodeError::Truncated {
                len: 80,
                qname_len: 17
            })
        );
        // Not a multiple of 8, or outside 72..=320.
        for len in [0, 8, 60, 64, 81, 87, 89, 321, 328, 1000] {
            let mut r = raw(&name, len.min(320));
            r.resize(len, 0);
            assert_eq!(record(&r).err(), Some(DecodeError::Size(len)), "{len}");
        }
        // A QNAME length beyond what any record holds.
        let mut r = raw(&name, 320);
        r[60..62].copy_from_slice(&300u16.to_ne_bytes());
        assert_eq!(
            record(&r).err(),
            Some(DecodeError::Truncated {
                len: 320,
                qname_len: 300
            })
        );
        // Every length and every QNAME length field: an answer or an error, never a panic.
        for len in 0..=336usize {
            for qlen in [0u16, 1, 17, 56, 57, 63, 64, 65, 255, 256, u16::MAX] {
                let mut r = vec![0x41u8; len];
                if len >= 62 {
                    r[60..62].copy_from_slice(&qlen.to_ne_bytes());
                }
                let res = record(&r).and_then(|ev| Query::from_event(&ev));
                let fits = len.is_multiple_of(8)
                    && (72..=320).contains(&len)
                    && len >= record_len(usize::from(qlen));
                assert_eq!(record(&r).is_ok(), fits, "{len} bytes, qname_len {qlen}");
                if !fits {
                    assert!(res.is_err());
                }
            }
        }
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
