//! A DNS response as the documents use it: what the XDP program read (header flags and counts,
//! the first A/AAAA answers) and every answer decoded from the message bytes it copied.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::{
    rr::{Name, RData, Record},
    serialize::binary::{BinDecodable, BinDecoder},
};
use sensor_common::{
    Event, ResponseInfo,
    response::{MAX_ADDRS, WALK_BAD_NAME, WALK_COMPLETE, WALK_LIMIT, WALK_TRUNCATED},
};

use crate::query::{DecodeError, Query, presentation_name};

/// How the kernel's answer walk ended (see `sensor_common::response`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    Complete,
    Limit,
    Truncated,
    BadName,
}

impl Walk {
    fn from_wire(w: u8) -> Option<Self> {
        Some(match w {
            WALK_COMPLETE => Walk::Complete,
            WALK_LIMIT => Walk::Limit,
            WALK_TRUNCATED => Walk::Truncated,
            WALK_BAD_NAME => Walk::BadName,
            _ => return None,
        })
    }
}

/// One answer record, decoded from the message bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Owner name in the ECS presentation form (see [`presentation_name`]).
    pub name: String,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    /// The address (A, AAAA), the target name (CNAME, NS, PTR, DNAME) in the ECS form, or the
    /// RDATA in zone-file form for other types (`10 mail.example.com.` for MX).
    pub data: String,
    /// For A and AAAA: the address.
    pub ip: Option<IpAddr>,
}

/// What a response said, attached to the [`Query`] it answers (`Query::answer`): the document
/// of an answer (`dns.type: answer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// The header's flags word (RCODE in the low 4 bits).
    pub flags: u16,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
    pub answers: Vec<Answer>,
    /// False when fewer than ANCOUNT answers could be decoded.
    pub answers_complete: bool,
    /// Time from the query to this response on the sensor's clock (kernel timestamps: the
    /// scheduler tick's resolution unless `capture.precise_timestamps`), when the query was
    /// seen.
    pub duration_ns: Option<u64>,
    /// The answer is a detection of its own (an address it resolved to is on an IP feed), not
    /// only the answer to a name already reported: then it is an alert like a query would be.
    pub detected: bool,
}

impl Answered {
    /// The response code's mnemonic (IANA "DNS RCODEs", the 4-bit header values), as
    /// Packetbeat writes `dns.response_code`.
    pub fn response_code(&self) -> &'static str {
        match self.flags & 0x000f {
            0 => "NOERROR",
            1 => "FORMERR",
            2 => "SERVFAIL",
            3 => "NXDOMAIN",
            4 => "NOTIMP",
            5 => "REFUSED",
            6 => "YXDOMAIN",
            7 => "YXRRSET",
            8 => "NXRRSET",
            9 => "NOTAUTH",
            10 => "NOTZONE",
            11 => "DSOTYPENI",
            _ => "UNASSIGNED",
        }
    }

    /// The header flags that are set, as ECS `dns.header_flags` lists them.
    pub fn header_flags(&self) -> Vec<&'static str> {
        [
            (0x0400, "AA"),
            (0x0200, "TC"),
            (0x0100, "RD"),
            (0x0080, "RA"),
            (0x0020, "AD"),
            (0x0010, "CD"),
        ]
        .into_iter()
        .filter(|(bit, _)| self.flags & bit != 0)
        .map(|(_, name)| name)
        .collect()
    }

    /// The A/AAAA addresses among the answers, in order, without repeats (`dns.resolved_ip`).
    pub fn resolved_ips(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = Vec::new();
        for ip in self.answers.iter().filter_map(|a| a.ip) {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        out
    }
}

/// A response: the question it answers (a [`Query`] whose `src` is the *server*), the header
/// and the answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Header fields as the packet carried them: `src`/`src_port` are the server's.
    pub question: Query,
    /// The DNS header's flags word (QR, opcode, AA, TC, RD, RA, Z, AD, CD, RCODE).
    pub flags: u16,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
    /// Length of the DNS message on the wire, and how much of it the record carried.
    pub msg_len: u16,
    pub copied: u16,
    /// The first A/AAAA answers (at most 8) and their TTLs, as the kernel read them: the
    /// addresses the kernel acts on.
    pub kernel_addrs: Vec<(IpAddr, u32)>,
    /// CNAME records among the answers the kernel walked.
    pub kernel_cnames: u8,
    /// How the kernel's walk ended.
    pub walk: Walk,
    /// Every answer decoded from the copied bytes, in message order.
    pub answers: Vec<Answer>,
    /// False when fewer than ANCOUNT answers could be decoded (a message longer than the
    /// record's room, or one cut short or malformed).
    pub answers_complete: bool,
}

impl Response {
    /// The 4-bit RCODE of the header (`NOERROR` 0, `NXDOMAIN` 3, ...).
    pub fn rcode(&self) -> u16 {
        self.flags & 0x000f
    }
    pub fn authoritative(&self) -> bool {
        self.flags & 0x0400 != 0
    }
    pub fn truncated(&self) -> bool {
        self.flags & 0x0200 != 0
    }
    pub fn recursion_desired(&self) -> bool {
        self.flags & 0x0100 != 0
    }
    pub fn recursion_available(&self) -> bool {
        self.flags & 0x0080 != 0
    }
    pub fn authentic_data(&self) -> bool {
        self.flags & 0x0020 != 0
    }
    pub fn checking_disabled(&self) -> bool {
        self.flags & 0x0010 != 0
    }

    /// Builds the response from a record's header, info and message bytes (`msg` is the
    /// `copied` bytes the record carries). The question name is read from the message (the
    /// header's `qname` field is not used).
    pub fn from_parts(head: &Event, info: &ResponseInfo, msg: &[u8]) -> Result<Self, DecodeError> {
        let qlen = usize::from(head.qname_len);
        if qlen == 0 || qlen > sensor_common::MAX_NAME_LEN || msg.len() < 12 + qlen + 4 {
            return Err(DecodeError::NameLength(head.qname_len));
        }
        let mut ev = *head;
        ev.qname[..qlen].copy_from_slice(&msg[12..12 + qlen]);
        let question = Query::from_event(&ev)?;
        let walk = Walk::from_wire(info.walk).ok_or(DecodeError::Walk(info.walk))?;
        let n = usize::from(info.addr_count);
        if n > MAX_ADDRS {
            return Err(DecodeError::AddrCount(info.addr_count));
        }
        let kernel_addrs = (0..n)
            .map(|i| {
                let a = info.addrs[i];
                let ip = if info.aaaa_mask & (1 << i) != 0 {
                    IpAddr::V6(Ipv6Addr::from(a))
                } else {
                    IpAddr::V4(Ipv4Addr::new(a[12], a[13], a[14], a[15]))
                };
                (ip, info.ttls[i])
            })
            .collect();
        let (answers, answers_complete) = decode_answers(msg, 12 + qlen + 4, info.ancount);
        Ok(Self {
            question,
            flags: info.flags,
            ancount: info.ancount,
            nscount: info.nscount,
            arcount: info.arcount,
            msg_len: info.msg_len,
            copied: info.copied,
            kernel_addrs,
            kernel_cnames: info.cnames,
            walk,
            answers,
            answers_complete,
        })
    }

    /// The A/AAAA addresses among the answers, in order, without repeats.
    pub fn resolved_ips(&self) -> Vec<IpAddr> {
        self.answered(None).resolved_ips()
    }

    fn answered(&self, duration_ns: Option<u64>) -> Answered {
        Answered {
            flags: self.flags,
            ancount: self.ancount,
            nscount: self.nscount,
            arcount: self.arcount,
            answers: self.answers.clone(),
            answers_complete: self.answers_complete,
            duration_ns,
            detected: false,
        }
    }

    /// The response as the event the pipeline carries: its question seen from the client
    /// (`src` the client, `dst` the server, like the query's), with what it answered.
    pub fn into_query(self, duration_ns: Option<u64>) -> Query {
        let answered = self.answered(duration_ns);
        let mut q = self.question;
        std::mem::swap(&mut q.src, &mut q.dst);
        std::mem::swap(&mut q.src_port, &mut q.dst_port);
        q.answer = Some(Box::new(answered));
        q
    }
}

/// Decodes up to `ancount` answer records starting at `start`; stops at the first that does not
/// decode (the rest of the message is unknown then). Returns them and whether all were read.
fn decode_answers(msg: &[u8], start: usize, ancount: u16) -> (Vec<Answer>, bool) {
    let mut out = Vec::new();
    let Some(rest) = msg.get(start..) else {
        return (out, ancount == 0);
    };
    // A decoder over the whole message (pointers are offsets from its start), moved past the
    // header and question.
    let mut d = BinDecoder::new(msg);
    if d.read_slice(msg.len() - rest.len()).is_err() {
        return (out, false);
    }
    for _ in 0..ancount {
        match Record::<RData>::read(&mut d) {
            Ok(r) => out.push(answer(&r)),
            Err(_) => return (out, false),
        }
    }
    (out, true)
}

fn answer(r: &Record<RData>) -> Answer {
    let (data, ip) = match &r.data {
        RData::A(a) => (a.0.to_string(), Some(IpAddr::V4(a.0))),
        RData::AAAA(a) => (a.0.to_string(), Some(IpAddr::V6(a.0))),
        RData::CNAME(n) => (name(&n.0), None),
        RData::NS(n) => (name(&n.0), None),
        RData::PTR(n) => (name(&n.0), None),
        other => (other.to_string(), None),
    };
    Answer {
        name: name(&r.name),
        rtype: u16::from(r.record_type()),
        class: u16::from(r.dns_class),
        ttl: r.ttl,
        data,
        ip,
    }
}

/// A decoded name in the ECS presentation form (the same escaping as the question's).
fn name(n: &Name) -> String {
    let mut wire = Vec::with_capacity(64);
    for label in n.iter() {
        wire.push(label.len() as u8);
        wire.extend_from_slice(label);
    }
    wire.push(0);
    presentation_name(&wire).unwrap_or_else(|_| n.to_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response message: id 7, flags, the question `name` A IN, then `answers` (raw RRs).
    fn message(flags: u16, qname: &[u8], ancount: u16, answers: &[u8]) -> Vec<u8> {
        let mut m = vec![0, 7];
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&[0, 1]);
        m.extend_from_slice(&ancount.to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        m.extend_from_slice(qname);
        m.extend_from_slice(&[0, 1, 0, 1]);
        m.extend_from_slice(answers);
        m
    }

    fn rr(owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
        let mut r = owner.to_vec();
        r.extend_from_slice(&rtype.to_be_bytes());
        r.extend_from_slice(&[0, 1]);
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(rdata);
        r
    }

    fn parts(msg: &[u8], qname_len: usize, info: ResponseInfo) -> Response {
        // SAFETY: Event is Pod (integers and byte arrays): all zeros is a valid value.
        let mut head: Event = unsafe { std::mem::zeroed() };
        head.src_addr = sensor_common::ipv4_mapped([10, 0, 0, 53]);
        head.dst_addr = sensor_common::ipv4_mapped([10, 0, 0, 1]);
        head.src_port = 53;
        head.dst_port = 40000;
        head.family = 4;
        head.transport = 17;
        head.qtype = 1;
        head.qclass = 1;
        head.qname_len = qname_len as u16;
        head.kind = sensor_common::response::RECORD_RESPONSE;
        Response::from_parts(&head, &info, msg).expect("decodes")
    }

    const QNAME: &[u8] = b"\x03www\x07example\x03com\x00";

    #[test]
    fn a_cname_chain_and_its_addresses_decode_with_pointers() {
        // www.example.com CNAME edge.cdn.net; edge.cdn.net A 192.0.2.7, AAAA 2001:db8::7.
        let mut answers = rr(&[0xc0, 12], 5, 300, b"\x04edge\x03cdn\x03net\x00");
        let edge = 12 + QNAME.len() + 4 + 12; // the CNAME's RDATA
        answers.extend(rr(&[0xc0, edge as u8], 1, 60, &[192, 0, 2, 7]));
        let mut v6 = [0u8; 16];
        v6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        v6[15] = 7;
        answers.extend(rr(&[0xc0, edge as u8], 28, 60, &v6));
        let msg = message(0x8180, QNAME, 3, &answers);
        let info = ResponseInfo {
            flags: 0x8180,
            ancount: 3,
            ..ResponseInfo::default()
        };
        let r = parts(&msg, QNAME.len(), info);
        assert_eq!(r.question.name, "www.example.com");
        assert!(r.answers_complete);
        let got: Vec<_> = r
            .answers
            .iter()
            .map(|a| (a.name.as_str(), a.rtype, a.ttl, a.data.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("www.example.com", 5, 300, "edge.cdn.net"),
                ("edge.cdn.net", 1, 60, "192.0.2.7"),
                ("edge.cdn.net", 28, 60, "2001:db8::7"),
            ]
        );
        assert_eq!(
            r.resolved_ips(),
            [
                "192.0.2.7".parse::<IpAddr>().unwrap(),
                "2001:db8::7".parse().unwrap()
            ]
        );
        assert_eq!(r.rcode(), 0);
        assert!(r.recursion_available() && r.recursion_desired() && !r.authoritative());
    }

    #[test]
    fn a_message_cut_short_keeps_the_answers_before_the_cut() {
        let mut answers = rr(&[0xc0, 12], 1, 60, &[192, 0, 2, 1]);
        answers.extend(rr(&[0xc0, 12], 1, 60, &[192, 0, 2, 2]));
        let mut msg = message(0x8180, QNAME, 2, &answers);
        msg.truncate(msg.len() - 3);
        let info = ResponseInfo {
            flags: 0x8180,
            ancount: 2,
            ..ResponseInfo::default()
        };
        let r = parts(&msg, QNAME.len(), info);
        assert!(!r.answers_complete);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].data, "192.0.2.1");
    }

    #[test]
    fn the_kernel_addresses_follow_the_aaaa_mask() {
        let msg = message(0x8183, QNAME, 0, &[]);
        let mut info = ResponseInfo {
            flags: 0x8183,
            addr_count: 2,
            aaaa_mask: 0b10,
            ..ResponseInfo::default()
        };
        info.addrs[0] = sensor_common::ipv4_mapped([198, 51, 100, 9]);
        info.addrs[1] = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        info.ttls = [30, 40, 0, 0, 0, 0, 0, 0];
        let r = parts(&msg, QNAME.len(), info);
        assert_eq!(r.rcode(), 3);
        assert_eq!(
            r.kernel_addrs,
            [
                ("198.51.100.9".parse().unwrap(), 30),
                ("2001:db8::1".parse().unwrap(), 40)
            ]
        );
    }
}
