//! The JSON line for a query, written directly into a buffer.
//!
//! `decode::Document` (serde) is the specification of the document; this encoder writes the same
//! bytes without serde's generic machinery: keys and fixed values are constant fragments, names of
//! types, classes and interfaces are looked up once, and the timestamp's date and time are
//! formatted once per second. A test checks that both give identical bytes. It exists because the
//! daemon's CPU per query is a target (BENCHMARKS.md), and serde's per-character escaping of every
//! key was its largest cost.

use std::{collections::HashMap, io::Write as _, net::IpAddr};

use sensor_common::Transport;
use time::{OffsetDateTime, format_description::FormatItem, macros::format_description};

use crate::{
    query::{Query, qclass_name, qtype_name},
    response::Answered,
    verdict::{Assessment, Verdict},
};

const SECOND_PREFIX: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].");

/// Appends `s` as a JSON string, escaping exactly as serde_json does.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                let _ = write!(out, "\\u{:04x}", b);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

impl Encoder {
    /// The answer fields of `dns` (after `question`), in the serde document's order.
    fn answer(&mut self, a: &Answered, out: &mut Vec<u8>) {
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(b",\"response_code\":\"");
        out.extend_from_slice(a.response_code().as_bytes());
        out.extend_from_slice(b"\",\"header_flags\":[");
        for (i, f) in a.header_flags().iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(f.as_bytes());
            out.push(b'"');
        }
        for (key, n) in [
            (&b"],\"answers_count\":"[..], a.ancount),
            (b",\"authorities_count\":", a.nscount),
            (b",\"additionals_count\":", a.arcount),
        ] {
            out.extend_from_slice(key);
            out.extend_from_slice(num.format(n).as_bytes());
        }
        out.extend_from_slice(b",\"answers\":[");
        for (i, x) in a.answers.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"name\":");
            push_json_str(out, &x.name);
            out.extend_from_slice(b",\"type\":");
            out.extend_from_slice(
                self.qtypes
                    .entry(x.rtype)
                    .or_insert_with(|| json_str(&qtype_name(x.rtype))),
            );
            out.extend_from_slice(b",\"class\":");
            out.extend_from_slice(
                self.qclasses
                    .entry(x.class)
                    .or_insert_with(|| json_str(&qclass_name(x.class))),
            );
            out.extend_from_slice(b",\"ttl\":");
            out.extend_from_slice(num.format(x.ttl).as_bytes());
            out.extend_from_slice(b",\"data\":");
            push_json_str(out, &x.data);
            out.push(b'}');
        }
        out.push(b']');
        let ips = a.resolved_ips();
        if !ips.is_empty() {
            out.extend_from_slice(b",\"resolved_ip\":[");
            for (i, ip) in ips.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'"');
                push_ip(out, ip);
                out.push(b'"');
            }
            out.push(b']');
        }
    }
}

fn json_str(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 2);
    push_json_str(&mut v, s);
    v
}

/// Encodes queries as ECS JSON lines.
pub struct Encoder {
    /// `,"observer":{"name":"<name>","ingress":{"interface":{"name":` (the name pre-escaped).
    observer_prefix: Vec<u8>,
    /// Interface index → escaped JSON string of its name.
    interfaces: HashMap<u32, Vec<u8>>,
    qtypes: HashMap<u16, Vec<u8>>,
    qclasses: HashMap<u16, Vec<u8>>,
    /// Unix second of `second_prefix`.
    second: i64,
    second_prefix: Vec<u8>,
}

impl Encoder {
    pub fn new(observer: &str, interfaces: &HashMap<u32, String>) -> Self {
        let mut observer_prefix = b",\"observer\":{\"name\":".to_vec();
        push_json_str(&mut observer_prefix, observer);
        observer_prefix.extend_from_slice(b",\"ingress\":{\"interface\":{\"name\":");
        Self {
            observer_prefix,
            interfaces: interfaces.iter().map(|(&i, n)| (i, json_str(n))).collect(),
            qtypes: HashMap::new(),
            qclasses: HashMap::new(),
            second: i64::MIN,
            second_prefix: Vec::new(),
        }
    }

    fn timestamp(&mut self, out: &mut Vec<u8>, unix_ns: i128) {
        let second = unix_ns.div_euclid(1_000_000_000) as i64;
        let micros = (unix_ns.rem_euclid(1_000_000_000) / 1000) as u32;
        if second != self.second {
            self.second = second;
            self.second_prefix = OffsetDateTime::from_unix_timestamp(second)
                .ok()
                .and_then(|t| t.format(SECOND_PREFIX).ok())
                .unwrap_or_else(|| "1970-01-01T00:00:00.".into())
                .into_bytes();
        }
        out.push(b'"');
        out.extend_from_slice(&self.second_prefix);
        let mut digits = [b'0'; 6];
        let mut m = micros;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (m % 10) as u8;
            m /= 10;
        }
        out.extend_from_slice(&digits);
        out.extend_from_slice(b"Z\"");
    }

    /// Appends the JSON line (with its newline) for `q`, stamped `unix_ns`, with its verdict
    /// when threat intel is configured.
    pub fn encode(
        &mut self,
        q: &Query,
        intel: Option<&Assessment>,
        unix_ns: i128,
        out: &mut Vec<u8>,
    ) {
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(b"{\"@timestamp\":");
        self.timestamp(out, unix_ns);
        out.extend_from_slice(if q.is_alert(intel) {
            b",\"event\":{\"kind\":\"alert\",\"category\":[\"network\"],\"type\":[\"protocol\"],\"dataset\":\"dns\"".as_slice()
        } else {
            b",\"event\":{\"kind\":\"event\",\"category\":[\"network\"],\"type\":[\"protocol\"],\"dataset\":\"dns\""
        });
        if let Some(d) = q.answer.as_ref().and_then(|a| a.duration_ns) {
            out.extend_from_slice(b",\"duration\":");
            out.extend_from_slice(num.format(d).as_bytes());
        }
        out.push(b'}');
        out.extend_from_slice(b",\"source\":{\"ip\":\"");
        push_ip(out, q.src);
        out.extend_from_slice(b"\",\"port\":");
        out.extend_from_slice(num.format(q.src_port).as_bytes());
        out.extend_from_slice(b"},\"destination\":{\"ip\":\"");
        push_ip(out, q.dst);
        out.extend_from_slice(b"\",\"port\":");
        out.extend_from_slice(num.format(q.dst_port).as_bytes());
        out.extend_from_slice(match (q.transport, q.src.is_ipv4()) {
            (Transport::Udp, true) => {
                b"},\"network\":{\"transport\":\"udp\",\"type\":\"ipv4\",\"protocol\":\"dns\"}"
                    .as_slice()
            }
            (Transport::Udp, false) => {
                b"},\"network\":{\"transport\":\"udp\",\"type\":\"ipv6\",\"protocol\":\"dns\"}"
            }
            (Transport::Tcp, true) => {
                b"},\"network\":{\"transport\":\"tcp\",\"type\":\"ipv4\",\"protocol\":\"dns\"}"
            }
            (Transport::Tcp, false) => {
                b"},\"network\":{\"transport\":\"tcp\",\"type\":\"ipv6\",\"protocol\":\"dns\"}"
            }
        });
        out.extend_from_slice(b",\"dns\":{\"id\":");
        out.extend_from_slice(num.format(q.dns_id).as_bytes());
        out.extend_from_slice(if q.answer.is_some() {
            b",\"type\":\"answer\",\"question\":{\"name\":".as_slice()
        } else {
            b",\"type\":\"query\",\"question\":{\"name\":"
        });
        push_json_str(out, &q.name);
        out.extend_from_slice(b",\"type\":");
        out.extend_from_slice(
            self.qtypes
                .entry(q.qtype)
                .or_insert_with(|| json_str(&qtype_name(q.qtype))),
        );
        out.extend_from_slice(b",\"class\":");
        out.extend_from_slice(
            self.qclasses
                .entry(q.qclass)
                .or_insert_with(|| json_str(&qclass_name(q.qclass))),
        );
        out.push(b'}');
        if let Some(a) = &q.answer {
            self.answer(a, out);
        }
        out.push(b'}');
        out.extend_from_slice(&self.observer_prefix);
        let ifname = self.interfaces.entry(q.ifindex).or_insert_with(|| {
            json_str(
                &nix::net::if_::if_indextoname(q.ifindex)
                    .map(|c| c.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| format!("if{}", q.ifindex)),
            )
        });
        out.extend_from_slice(ifname);
        out.push(b'}');
        for (key, id) in [
            (&b",\"vlan\":{\"id\":\""[..], q.vlan_outer),
            (b",\"inner_vlan\":{\"id\":\"", q.vlan_inner),
        ] {
            if id != 0 {
                out.extend_from_slice(key);
                out.extend_from_slice(num.format(id).as_bytes());
                out.extend_from_slice(b"\"}");
            }
        }
        out.extend_from_slice(b"}}");
        match intel.map(|a| (a.verdict, a)) {
            None => {}
            Some((Verdict::Clean, _)) => {
                out.extend_from_slice(b",\"intel\":{\"verdict\":\"clean\"}")
            }
            Some((Verdict::Unknown, _)) => {
                out.extend_from_slice(b",\"intel\":{\"verdict\":\"unknown\"}")
            }
            Some((Verdict::Trusted, _)) => {
                out.extend_from_slice(b",\"intel\":{\"verdict\":\"trusted\"}")
            }
            Some((Verdict::NotLookedUp, a)) => {
                out.extend_from_slice(b",\"intel\":{\"verdict\":\"not_looked_up\"");
                if let Some(r) = a.not_looked_up_reason() {
                    out.extend_from_slice(b",\"reason\":");
                    push_json_str(out, r);
                }
                out.push(b'}');
            }
            // Rare: serde writes the findings.
            Some((Verdict::Malicious, a)) => {
                out.extend_from_slice(b",\"intel\":");
                let _ = serde_json::to_writer(&mut *out, &a.document());
            }
        }
        out.extend_from_slice(b"}\n");
    }
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    let _ = write!(out, "{ip}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::WallClock;

    fn query(src: &str, name: &str, qtype: u16, transport: Transport, vlans: (u16, u16)) -> Query {
        let src: IpAddr = src.parse().unwrap();
        let dst: IpAddr = if src.is_ipv4() {
            "10.0.0.53".parse().unwrap()
        } else {
            "2001:db8::53".parse().unwrap()
        };
        Query {
            ts_mono_ns: 123_456_789_012,
            ifindex: 1,
            vlan_outer: vlans.0,
            vlan_inner: vlans.1,
            src,
            dst,
            src_port: 40000,
            dst_port: 53,
            transport,
            dns_id: 4242,
            qtype,
            qclass: 1,
            name: name.into(),
            answer: None,
        }
    }

    /// `q` as an answer with `flags` and the given answers (name, type, data).
    fn answered(
        mut q: Query,
        flags: u16,
        duration_ns: Option<u64>,
        answers: &[(&str, u16, &str)],
    ) -> Query {
        q.answer = Some(Box::new(crate::response::Answered {
            flags,
            ancount: answers.len() as u16,
            nscount: 1,
            arcount: 2,
            answers: answers
                .iter()
                .map(|&(name, rtype, data)| crate::response::Answer {
                    name: name.into(),
                    rtype,
                    class: 1,
                    ttl: 300,
                    data: data.into(),
                    ip: data.parse().ok(),
                })
                .collect(),
            answers_complete: true,
            duration_ns,
            detected: false,
        }));
        q
    }

    /// The fast encoder writes exactly what serde writes for `decode::Document`.
    #[test]
    fn identical_to_the_serde_document() {
        let mut ifaces = HashMap::new();
        ifaces.insert(1, "eth\"0".to_owned());
        let mut enc = Encoder::new("sensor-\\1", &ifaces);
        let clock = WallClock::new();
        let cases = [
            query("192.0.2.1", "www.example.com", 1, Transport::Udp, (0, 0)),
            query(
                "2001:db8::1",
                "a\\\\b\\\"c.\\009x",
                65000,
                Transport::Tcp,
                (10, 0),
            ),
            query("192.0.2.1", ".", 28, Transport::Tcp, (100, 7)),
            query("2001:db8::1", "ctl\u{1}", 16, Transport::Udp, (0, 5)),
            answered(
                query("192.0.2.1", "www.example.com", 1, Transport::Udp, (0, 0)),
                0x8180,
                Some(1_234_567),
                &[
                    ("www.example.com", 5, "edge.\\\"cdn.example"),
                    ("edge.\\\"cdn.example", 1, "192.0.2.7"),
                    ("edge.\\\"cdn.example", 28, "2001:db8::7"),
                    ("edge.\\\"cdn.example", 1, "192.0.2.7"),
                ],
            ),
            answered(
                query("2001:db8::1", "gone.example", 28, Transport::Tcp, (3, 0)),
                0x8593,
                None,
                &[],
            ),
            answered(
                query("192.0.2.1", "txt.example", 16, Transport::Udp, (0, 0)),
                0x83b0,
                Some(0),
                &[("txt.example", 16, "\"v=spf1 -all\"")],
            ),
        ];
        let malicious = Assessment {
            verdict: Verdict::Malicious,
            findings: vec![crate::verdict::Finding {
                provider: "threatbook".into(),
                malicious: true,
                severity: Some(crate::verdict::Severity::High),
                confidence: Some(crate::verdict::Confidence::Medium),
                judgments: vec!["C2".into(), "Botnet".into()],
                tags: vec!["APT \"x\"".into()],
                permalink: Some("https://x.threatbook.com/v5/domain/bad.example".into()),
                ip_context: None,
            }],
            errors: Vec::new(),
        };
        let plain = |verdict| Assessment {
            verdict,
            findings: Vec::new(),
            errors: vec!["e".into()],
        };
        let intels = [
            None,
            Some(malicious),
            Some(plain(Verdict::Clean)),
            Some(plain(Verdict::Unknown)),
            Some(plain(Verdict::Trusted)),
            Some(Assessment::not_looked_up("special_use")),
        ];
        for (i, q) in cases.iter().chain(cases.iter()).enumerate() {
            let unix_ns = clock.unix_ns(q.ts_mono_ns) + i as i128 * 1_000_000_123;
            let mut fast = Vec::new();
            let intel = intels[i % intels.len()].as_ref();
            enc.encode(q, intel, unix_ns, &mut fast);
            let ts = OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
                .unwrap()
                .format(format_description!(
                    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
                ))
                .unwrap();
            let mut slow =
                serde_json::to_vec(&q.document(ts, "sensor-\\1", "eth\"0", intel)).unwrap();
            slow.push(b'\n');
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(slow).unwrap()
            );
        }
    }
}
