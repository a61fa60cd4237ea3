//! A userspace reference for what the XDP program must do with a frame, written from the
//! specification (issue 2, "Kernel program"; the counter descriptions in
//! `sensor-common/src/counters.rs`) rather than from the eBPF code. L2-L4 headers are read with
//! `etherparse`'s header slices (their length and version checks are the spec's "cut short",
//! "wrong version", "IHL below 5", "TCP data offset below 5"); the DNS gate is hand-written.
//!
//! Where the spec leaves an order open, the reference fixes one and says so:
//! - A header is judged once its bytes are in the frame: fields needed for a decision are read
//!   as soon as they are there, so a UDP message of 6..11 bytes with QR=1 is a response, not
//!   truncated, and a label length byte is judged together with the byte after it (every length
//!   byte of a complete question has one), so a length byte that ends the frame means the
//!   question is cut short.
//! - The fixed part of a transport header (8 bytes UDP, 20 bytes TCP) must be there before the
//!   port is looked at (`bad_l4`); a packet to a port that is not watched is `not_dns` before its
//!   TCP data offset and options are judged.
//! - A TCP segment must hold the length prefix and the 12-byte DNS header, then its length
//!   prefix must fit in the IP datagram (issue 13: a message sent without its prefix is not
//!   read with its ID as the length), or it is `tcp_no_question`.
//! - Length fields bound the DNS message (issue 13): the IPv4 total length (below the header:
//!   `bad_ipv4`), the IPv6 payload length (0 with a hop-by-hop header: a jumbogram, bounded by
//!   the frame), the UDP length (below 8 but not 0: `bad_l4`; 0: the datagram's end) and TCP's
//!   length prefix. A question that passes the gate but ends past them is `dns_truncated`
//!   (UDP) or `tcp_no_question` (TCP), judged before the allowlist.
//!   [`Prediction::question_within_lengths`] is now true for every event.
//! - Responses (issue 13): a message with QR=1 from a watched port is a response, QR=1 from
//!   another port `dns_response`, QR=0 to a port that is not watched (so from one)
//!   `dns_query_from_port`. A response passes the same gate and question checks as a query; its
//!   client is the destination (CLIENT_ALLOW applies to it). The answer walk follows RFC 1035
//!   §4.1.3 within the message: at most `MAX_ANSWER_RRS` records, owner names skipped (a
//!   pointer ends a name and must point before itself), the first `MAX_ADDRS` A/AAAA records of
//!   class IN with the right RDATA length kept with their TTLs.
//! - Pipelined TCP messages (issue 13): after a TCP message whose length prefix fit, the bytes
//!   left in the segment (up to the IP datagram's end, or the frame's when it is shorter) are
//!   read as further messages, each with its prefix, up to `MAX_TCP_MESSAGES` in all; each
//!   must hold its prefix and the DNS header in the frame and fit in the datagram as the first
//!   one must, else the segment counts `tcp_pipeline_split` and the rest is not read; bytes left
//!   after the last message read count `tcp_pipeline_limit` (as would a message past the
//!   parser's 16 KiB offset bound). A message read is `tcp_pipelined` and is judged like a
//!   first one from the DNS gate on, with the same header (addresses, ports), into its own
//!   outcome: the order is the first message's, then these.
//! - An IPv6 atomic fragment (offset 0, M = 0; RFC 6946) is a whole packet: the walk goes on
//!   past it (it counts towards `MAX_IPV6_EXT_HEADERS`).
//! - The source is known, and the blocklist applies, once the network header is complete: the
//!   IPv4 header with its options, the 40-byte IPv6 header (extension headers come after the
//!   blocklist: "packets whose source matches are dropped").
//! - The walk over IPv6 extension headers (hop-by-hop, routing, fragment, AH, destination
//!   options) ends at a fragment header: the packet is a fragment whatever follows. At most
//!   `MAX_IPV6_EXT_HEADERS` are walked; a further one is `ipv6_ext_limit`.
//! - Prefix lists are longest-prefix matches of the source in the trie's 16-byte form (IPv4
//!   mapped into IPv6): an IPv4 entry matches an IPv6 packet from the mapped address too.
//!
//! Where the kernel is known to depart from this, the departure is a [`Finding`]: `predict`
//! follows the spec unless told (through [`Semantics`]) to model one, and marks every
//! prediction a finding could change in [`Prediction::sensitive`].

use ipnet::IpNet;
use sensor_common::{
    Counter, MAX_IPV6_EXT_HEADERS, MAX_LABEL_LEN, MAX_LABELS, MAX_NAME_LEN, MAX_TCP_MESSAGES,
    counters::COUNTER_COUNT,
    response::{
        MAX_ADDRS, MAX_ANSWER_RRS, MAX_MSG_ROOM, WALK_BAD_NAME, WALK_COMPLETE, WALK_LIMIT,
        WALK_TRUNCATED,
    },
};

/// XDP actions as the kernel numbers them.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const TPID_8021Q: u16 = 0x8100;
const TPID_8021AD: u16 = 0x88a8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

const DNS_HEADER_LEN: usize = 12;
/// The program's offset bound (program.rs `MAX_OFFSET`): no DNS header starts past it.
const MAX_OFFSET: usize = 0x3fff;

/// A known place where the kernel program departs from the specification. Each is reported
/// with a packet that shows it (tests/kernel_fuzz.rs) and, until fixed, the fuzz run accepts
/// the kernel's behaviour for it only when it is exactly what `predict` gives with the finding
/// modelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Finding {
    /// The kernel walks IPv6 extension headers before it looks up the source in BLOCKLIST, so a
    /// blocklisted source passes (XDP_PASS) when its chain is longer than the walk
    /// (`ipv6_ext_limit`) or a header is cut short (`bad_ipv6`).
    BlocklistAfterExtWalk,
    /// `vlan` ("packets carrying one or two VLAN tags") counts only tagged IP packets, not
    /// tagged ARP or other non-IP frames.
    VlanCounterNonIp,
    /// The prefix filters never set the IPv6 bucket of IPv4-mapped addresses (`::ffff:a.b.c.d`
    /// hashes to bucket 0 of the IPv6 half) for IPv4 entries, so an IPv6 packet from a mapped
    /// address skips the trie lookup and escapes BLOCKLIST / CLIENT_ALLOW entries that match it,
    /// unless some other entry happens to set that bucket.
    MappedSourcePrefixFilter,
}

impl Finding {
    pub const ALL: [Finding; 3] = [
        Finding::BlocklistAfterExtWalk,
        Finding::VlanCounterNonIp,
        Finding::MappedSourcePrefixFilter,
    ];

    const fn bit(self) -> u32 {
        1 << self as u32
    }

    pub const fn name(self) -> &'static str {
        match self {
            Finding::BlocklistAfterExtWalk => "blocklist_after_ext_walk",
            Finding::VlanCounterNonIp => "vlan_counter_non_ip",
            Finding::MappedSourcePrefixFilter => "mapped_source_prefix_filter",
        }
    }
}

/// A set of findings: which departures `predict` models (empty: the specification).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Semantics(u32);

impl Semantics {
    /// The specification itself.
    pub const SPEC: Semantics = Semantics(0);

    pub fn of(findings: &[Finding]) -> Self {
        Semantics(findings.iter().fold(0, |acc, f| acc | f.bit()))
    }

    pub fn has(self, f: Finding) -> bool {
        self.0 & f.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn insert(&mut self, f: Finding) {
        self.0 |= f.bit();
    }

    pub fn iter(self) -> impl Iterator<Item = Finding> {
        Finding::ALL.into_iter().filter(move |f| self.has(*f))
    }

    /// Findings in both sets.
    pub fn intersect(self, other: Semantics) -> Semantics {
        Semantics(self.0 & other.0)
    }

    pub fn union(self, other: Semantics) -> Semantics {
        Semantics(self.0 | other.0)
    }

    pub fn len(self) -> u32 {
        self.0.count_ones()
    }

    /// Every subset, smallest first (the empty set first).
    pub fn subsets(self) -> Vec<Semantics> {
        let mut out: Vec<Semantics> = (0..=self.0)
            .filter(|m| m & !self.0 == 0)
            .map(Semantics)
            .collect();
        out.sort_by_key(|s| s.len());
        out
    }
}

/// The findings of `open` that could change `frame`'s prediction, alone or together: those met
/// on the specified path, and those met on the paths that modelling them leads to (a
/// blocklisted source that a finding lets through may meet another finding further on).
pub fn sensitivity(frame: &[u8], scope: &Scope, open: Semantics) -> Semantics {
    let mut found = predict(frame, scope, Semantics::SPEC)
        .sensitive
        .intersect(open);
    loop {
        let mut next = found;
        for sub in found.subsets().into_iter().skip(1) {
            next = next.union(predict(frame, scope, sub).sensitive.intersect(open));
        }
        if next == found {
            return found;
        }
        found = next;
    }
}

/// An entry of a prefix list in the trie's form: 16 bytes, IPv4 mapped, prefix length + 96.
#[derive(Clone, Copy, Debug)]
struct Entry {
    net: IpNet,
    addr: [u8; 16],
    plen: u32,
}

impl Entry {
    fn new(net: IpNet) -> Self {
        match net {
            IpNet::V4(n) => Self {
                net,
                addr: n.network().to_ipv6_mapped().octets(),
                plen: 96 + u32::from(n.prefix_len()),
            },
            IpNet::V6(n) => Self {
                net,
                addr: n.network().octets(),
                plen: u32::from(n.prefix_len()),
            },
        }
    }

    fn contains(&self, a: &[u8; 16]) -> bool {
        let whole = (self.plen / 8) as usize;
        let rest = self.plen % 8;
        if self.addr[..whole] != a[..whole] {
            return false;
        }
        rest == 0 || {
            let mask = 0xffu8 << (8 - rest);
            self.addr[whole] & mask == a[whole] & mask
        }
    }
}

/// One prefix list and the kernel's filter for it (used only to model
/// [`Finding::MappedSourcePrefixFilter`]).
#[derive(Clone, Debug)]
struct PrefixList {
    entries: Vec<Entry>,
    filter: Vec<u64>,
}

impl PrefixList {
    fn new(nets: &[IpNet]) -> Self {
        Self {
            entries: nets.iter().copied().map(Entry::new).collect(),
            filter: sensor_kernel::lists::filter_words(nets.iter().copied()),
        }
    }

    /// The longest entry containing `src`.
    fn lookup(
        &self,
        src: &[u8; 16],
        ipv6_packet: bool,
        sem: Semantics,
        sensitive: &mut Semantics,
    ) -> Option<IpNet> {
        let hit = self
            .entries
            .iter()
            .filter(|e| e.contains(src))
            .max_by_key(|e| e.plen)
            .map(|e| e.net);
        let mapped = src[..10].iter().all(|&b| b == 0) && src[10] == 0xff && src[11] == 0xff;
        if ipv6_packet && mapped {
            sensitive.insert(Finding::MappedSourcePrefixFilter);
            if sem.has(Finding::MappedSourcePrefixFilter) {
                // The kernel hashes the first 32 bits of an IPv6 source into a bucket and skips
                // the trie when the bucket's filter bit is clear.
                let first = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
                let bucket = sensor_common::bucket_of_first_word(false, first, 0);
                if self.filter[(bucket / 64) as usize] >> (bucket % 64) & 1 == 0 {
                    return None;
                }
            }
        }
        hit
    }
}

/// What the program is configured with: watched ports and the two prefix lists.
#[derive(Clone, Debug)]
pub struct Scope {
    ports: Vec<u16>,
    allow: PrefixList,
    block: PrefixList,
}

impl Scope {
    pub fn new(ports: &[u16], allow: &[IpNet], block: &[IpNet]) -> Self {
        Self {
            ports: ports.to_vec(),
            allow: PrefixList::new(allow),
            block: PrefixList::new(block),
        }
    }

    fn watched(&self, port: u16) -> bool {
        port != 0 && self.ports.contains(&port)
    }
}

/// The record the program must write for a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedEvent {
    pub vlan_outer: u16,
    pub vlan_inner: u16,
    /// 4 or 6.
    pub family: u8,
    /// 16-byte form (IPv4 mapped into IPv6), network order.
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    /// IP protocol number (17 or 6).
    pub transport: u8,
    pub dns_id: u16,
    pub qtype: u16,
    pub qclass: u16,
    /// QNAME in wire form, root label included.
    pub qname: Vec<u8>,
}

/// What a response record must carry after its header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedResponse {
    pub flags: u16,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
    pub msg_len: u16,
    pub copied: u16,
    pub answers_walked: u8,
    pub cnames: u8,
    pub walk: u8,
    /// 16-byte form, TTL, from an AAAA record.
    pub addrs: Vec<([u8; 16], u32, bool)>,
    /// The message's first `copied` bytes.
    pub msg: Vec<u8>,
}

/// What the program must do with one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prediction {
    /// XDP action in inline mode.
    pub action: u32,
    /// The one outcome counter the packet ends in.
    pub outcome: Counter,
    /// Non-outcome counters the packet increments.
    pub ipv4: bool,
    pub ipv6: bool,
    pub vlan: bool,
    pub dns_query: bool,
    pub dns_response: bool,
    /// The non-outcome counter of a walk that did not complete.
    pub walk_counter: Option<Counter>,
    /// A query's record, or a response's header (then `response` holds the rest).
    pub event: Option<ExpectedEvent>,
    pub response: Option<ExpectedResponse>,
    /// The BLOCKLIST / CLIENT_ALLOW entry whose hit counter the packet increments.
    pub block_entry: Option<IpNet>,
    pub allow_entry: Option<IpNet>,
    /// Findings that could change this prediction if modelled.
    pub sensitive: Semantics,
    /// For an event: the question lies inside every length field that bounds it (IPv4 total
    /// length, IPv6 payload length, UDP length, TCP length prefix). Statistics only.
    pub question_within_lengths: bool,
    /// The second and later messages of a TCP segment, in order: each a prediction of its own
    /// whose message fields (outcome, DNS counters, walk counter, record, allow entry) apply;
    /// each also counts `tcp_pipelined`.
    pub pipelined: Vec<Prediction>,
    /// How the reading of the segment's messages ended early, if it did:
    /// `tcp_pipeline_split` or `tcp_pipeline_limit`.
    pub pipeline_end: Option<Counter>,
}

impl Prediction {
    fn new() -> Self {
        Self {
            action: XDP_PASS,
            outcome: Counter::NotIp,
            ipv4: false,
            ipv6: false,
            vlan: false,
            dns_query: false,
            dns_response: false,
            walk_counter: None,
            event: None,
            response: None,
            block_entry: None,
            allow_entry: None,
            sensitive: Semantics::SPEC,
            question_within_lengths: true,
            pipelined: Vec::new(),
            pipeline_end: None,
        }
    }

    /// This message's records and those of the messages pipelined after it, in order: each a
    /// header, with the rest of a response's.
    pub fn records(&self) -> Vec<(&ExpectedEvent, Option<&ExpectedResponse>)> {
        std::iter::once(self)
            .chain(&self.pipelined)
            .filter_map(|m| m.event.as_ref().map(|e| (e, m.response.as_ref())))
            .collect()
    }

    /// The CLIENT_ALLOW entries whose hit counters the packet increments, once per message.
    pub fn allow_entries(&self) -> Vec<IpNet> {
        std::iter::once(self)
            .chain(&self.pipelined)
            .filter_map(|m| m.allow_entry)
            .collect()
    }

    /// Adds a message's own counters (its outcome, DNS counters and walk counter) to `d`.
    fn add_message(&self, d: &mut [u64; COUNTER_COUNT]) {
        d[self.outcome as usize] += 1;
        for (on, c) in [
            (self.dns_query, Counter::DnsQueries),
            (self.dns_response, Counter::DnsResponses),
        ] {
            d[c as usize] += u64::from(on);
        }
        if let Some(c) = self.walk_counter {
            d[c as usize] += 1;
        }
    }

    /// The change this packet makes to each counter, indexed by `Counter as usize`.
    pub fn counter_delta(&self) -> [u64; COUNTER_COUNT] {
        let mut d = [0u64; COUNTER_COUNT];
        d[Counter::Packets as usize] = 1;
        for (on, c) in [
            (self.ipv4, Counter::Ipv4),
            (self.ipv6, Counter::Ipv6),
            (self.vlan, Counter::Vlan),
        ] {
            d[c as usize] += u64::from(on);
        }
        self.add_message(&mut d);
        for m in &self.pipelined {
            m.add_message(&mut d);
            d[Counter::TcpPipelined as usize] += 1;
        }
        if let Some(c) = self.pipeline_end {
            d[c as usize] += 1;
        }
        d
    }
}

/// The transport header's findings, ready for the DNS gate.
struct L4 {
    src_port: u16,
    dst_port: u16,
    /// The destination / source port is watched.
    to_port: bool,
    from_port: bool,
    proto: u8,
    dns_off: usize,
    /// Where the length field bounding the DNS message says it ends.
    length_end: usize,
}

/// End of the IPv6 walk: the transport protocol and where its header starts.
struct Walked {
    proto: u8,
    l4_off: usize,
    fragment: bool,
}

/// Predicts the program's handling of `frame` under `sem` (usually [`Semantics::SPEC`]).
pub fn predict(frame: &[u8], scope: &Scope, sem: Semantics) -> Prediction {
    let mut p = Prediction::new();
    p.outcome = match classify(frame, scope, sem, &mut p) {
        Ok(c) | Err(c) => c,
    };
    if p.outcome == Counter::Blocked {
        p.action = XDP_DROP;
    }
    p
}

fn classify(
    frame: &[u8],
    scope: &Scope,
    sem: Semantics,
    p: &mut Prediction,
) -> Result<Counter, Counter> {
    // Ethernet and up to two tags.
    let eth =
        etherparse::Ethernet2HeaderSlice::from_slice(frame).map_err(|_| Counter::BadEthernet)?;
    let mut ethertype = eth.ether_type().0;
    let mut off = eth.slice().len();
    let mut vids = [0u16; 2];
    let mut tags = 0;
    while ethertype == TPID_8021Q || ethertype == TPID_8021AD {
        if tags == vids.len() {
            // A third tag: out of scope.
            return Err(Counter::NotIp);
        }
        let tag = etherparse::SingleVlanHeaderSlice::from_slice(&frame[off..])
            .map_err(|_| Counter::BadEthernet)?;
        vids[tags] = tag.vlan_identifier().value();
        ethertype = tag.ether_type().0;
        off += tag.slice().len();
        tags += 1;
    }
    let ip = ethertype == ETH_P_IP || ethertype == ETH_P_IPV6;
    if tags > 0 {
        if !ip {
            p.sensitive.insert(Finding::VlanCounterNonIp);
        }
        p.vlan = ip || !sem.has(Finding::VlanCounterNonIp);
    }
    if !ip {
        return Err(Counter::NotIp);
    }

    // Network header, blocklist, fragments.
    let l3_off = off;
    let (family, src, dst, walked, length_end) = if ethertype == ETH_P_IP {
        p.ipv4 = true;
        let h =
            etherparse::Ipv4HeaderSlice::from_slice(&frame[off..]).map_err(|_| Counter::BadIpv4)?;
        // A datagram shorter than its own header (etherparse may already refuse it).
        if usize::from(h.total_len()) < h.slice().len() {
            return Err(Counter::BadIpv4);
        }
        let src = h.source_addr().to_ipv6_mapped().octets();
        let dst = h.destination_addr().to_ipv6_mapped().octets();
        if let Some(e) = scope.block.lookup(&src, false, sem, &mut p.sensitive) {
            p.block_entry = Some(e);
            return Ok(Counter::Blocked);
        }
        let walked = Walked {
            proto: h.protocol().0,
            l4_off: off + h.slice().len(),
            fragment: h.fragments_offset().value() != 0,
        };
        (4u8, src, dst, walked, l3_off + usize::from(h.total_len()))
    } else {
        p.ipv6 = true;
        let h =
            etherparse::Ipv6HeaderSlice::from_slice(&frame[off..]).map_err(|_| Counter::BadIpv6)?;
        let src = h.source();
        let block = scope.block.lookup(&src, true, sem, &mut p.sensitive);
        let (start, first) = (off + h.slice().len(), h.next_header().0);
        let walk = walk_ipv6(frame, start, first);
        if block.is_some() && walk.is_err() {
            p.sensitive.insert(Finding::BlocklistAfterExtWalk);
        }
        if sem.has(Finding::BlocklistAfterExtWalk)
            && let Err(c) = walk
        {
            return Err(c);
        }
        if let Some(e) = block {
            p.block_entry = Some(e);
            return Ok(Counter::Blocked);
        }
        let end = if h.payload_length() == 0 && first == IPPROTO_HOPOPTS {
            usize::MAX
        } else {
            l3_off + h.slice().len() + usize::from(h.payload_length())
        };
        (6u8, src, h.destination(), walk?, end)
    };
    if walked.fragment {
        return Err(Counter::Fragment);
    }

    // Transport.
    let ip_end = length_end;
    let l4 = transport(frame, &walked, scope, ip_end)?;
    let head = Head {
        vids,
        family,
        src,
        dst,
        l4: &l4,
    };
    let first = message(
        frame,
        scope,
        sem,
        p,
        &head,
        l4.dns_off,
        ip_end.min(l4.length_end),
    );
    // TCP: the bytes after the message (its prefix fit) are the next ones.
    if l4.proto == IPPROTO_TCP && l4.length_end < ip_end.min(frame.len()) {
        pipeline(frame, scope, sem, p, &head, l4.length_end, ip_end);
    }
    first
}

/// What every message of a packet shares: its record header but for the question.
struct Head<'a> {
    vids: [u16; 2],
    family: u8,
    src: [u8; 16],
    dst: [u8; 16],
    l4: &'a L4,
}

/// The messages after the first of a TCP segment, from `off` on (the datagram ends at
/// `ip_end`), into `p.pipelined` and `p.pipeline_end`.
fn pipeline(
    frame: &[u8],
    scope: &Scope,
    sem: Semantics,
    p: &mut Prediction,
    head: &Head<'_>,
    mut off: usize,
    ip_end: usize,
) {
    let seg_end = ip_end.min(frame.len());
    for index in 1.. {
        if index == MAX_TCP_MESSAGES || off + 2 > MAX_OFFSET {
            p.pipeline_end = Some(Counter::TcpPipelineLimit);
            return;
        }
        // The prefix and the DNS header in the frame, and the prefix fitting the datagram.
        if off + 2 + DNS_HEADER_LEN > frame.len() {
            p.pipeline_end = Some(Counter::TcpPipelineSplit);
            return;
        }
        let end = off + 2 + usize::from(u16::from_be_bytes([frame[off], frame[off + 1]]));
        if end > ip_end {
            p.pipeline_end = Some(Counter::TcpPipelineSplit);
            return;
        }
        let mut m = Prediction::new();
        m.outcome = match message(frame, scope, sem, &mut m, head, off + 2, end) {
            Ok(c) | Err(c) => c,
        };
        p.sensitive = p.sensitive.union(m.sensitive);
        p.pipelined.push(m);
        if end >= seg_end {
            return;
        }
        off = end;
    }
}

/// One DNS message at `dns_off`, whose length fields end it at `length_end`: the gate, the
/// lengths, the allowlist and the record.
fn message(
    frame: &[u8],
    scope: &Scope,
    sem: Semantics,
    p: &mut Prediction,
    head: &Head<'_>,
    dns_off: usize,
    length_end: usize,
) -> Result<Counter, Counter> {
    let l4 = head.l4;
    let (family, src, dst) = (head.family, head.src, head.dst);
    // DNS gate, then the lengths.
    let tcp = l4.proto == IPPROTO_TCP;
    let question = dns_gate(&frame[dns_off..], tcp, l4.to_port, l4.from_port)?;
    let question_end = dns_off + DNS_HEADER_LEN + question.qname.len() + 4;
    p.question_within_lengths = question_end <= length_end;
    if !p.question_within_lengths {
        return Err(if tcp {
            Counter::TcpNoQuestion
        } else {
            Counter::DnsTruncated
        });
    }
    let header = ExpectedEvent {
        vlan_outer: head.vids[0],
        vlan_inner: head.vids[1],
        family,
        src_addr: src,
        dst_addr: dst,
        src_port: l4.src_port,
        dst_port: l4.dst_port,
        transport: l4.proto,
        dns_id: question.id,
        qtype: question.qtype,
        qclass: question.qclass,
        qname: question.qname.clone(),
    };
    if question.response {
        p.dns_response = true;
        // The client is the destination.
        if let Some(e) = scope.allow.lookup(&dst, family == 6, sem, &mut p.sensitive) {
            p.allow_entry = Some(e);
            return Ok(Counter::Allowlisted);
        }
        let end = length_end.min(frame.len());
        let r = response(frame, dns_off, end, question_end);
        p.walk_counter = match r.walk {
            WALK_COMPLETE => None,
            WALK_LIMIT => Some(Counter::ResponseRrLimit),
            WALK_TRUNCATED => Some(Counter::ResponseTruncated),
            _ => Some(Counter::ResponseBadName),
        };
        p.event = Some(header);
        p.response = Some(r);
        return Ok(Counter::ResponseEvents);
    }
    p.dns_query = true;
    if let Some(e) = scope.allow.lookup(&src, family == 6, sem, &mut p.sensitive) {
        p.allow_entry = Some(e);
        return Ok(Counter::Allowlisted);
    }
    p.event = Some(header);
    Ok(Counter::Events)
}

/// The response record's info for the message at `dns_off` ending at `end` (its length fields
/// and the frame, whichever ends first), whose answers start at `answers`.
fn response(frame: &[u8], dns_off: usize, end: usize, answers: usize) -> ExpectedResponse {
    let h = |i: usize| u16::from_be_bytes([frame[dns_off + i], frame[dns_off + i + 1]]);
    let ancount = h(6);
    let msg_len = end.saturating_sub(dns_off);
    let copied = msg_len.min(MAX_MSG_ROOM);
    let mut r = ExpectedResponse {
        flags: h(2),
        ancount,
        nscount: h(8),
        arcount: h(10),
        msg_len: msg_len.min(0xffff) as u16,
        copied: copied as u16,
        answers_walked: 0,
        cnames: 0,
        walk: WALK_COMPLETE,
        addrs: Vec::new(),
        msg: frame[dns_off..dns_off + copied].to_vec(),
    };
    let byte = |i: usize| (i < end).then(|| frame[i]);
    let mut pos = answers;
    r.walk = 'walk: loop {
        let rr = usize::from(r.answers_walked);
        if rr == usize::from(ancount) {
            break WALK_COMPLETE;
        }
        if rr == MAX_ANSWER_RRS {
            break WALK_LIMIT;
        }
        // The owner name: labels, ended by the root label or by a pointer to an earlier offset.
        let start = pos;
        let mut labels = 0;
        loop {
            if labels == MAX_LABELS {
                break 'walk WALK_BAD_NAME;
            }
            // A name byte is judged with the one after it (see the module's notes).
            let (Some(len), Some(next)) = (byte(pos), byte(pos + 1)) else {
                break 'walk WALK_TRUNCATED;
            };
            if len == 0 {
                pos += 1;
                break;
            }
            if len & 0xc0 == 0xc0 {
                let target = (usize::from(len & 0x3f) << 8) | usize::from(next);
                if dns_off + target >= pos {
                    break 'walk WALK_BAD_NAME;
                }
                pos += 2;
                break;
            }
            if len > MAX_LABEL_LEN {
                break 'walk WALK_BAD_NAME;
            }
            pos += 1 + usize::from(len);
            if pos - start >= MAX_NAME_LEN {
                break 'walk WALK_BAD_NAME;
            }
            labels += 1;
        }
        // TYPE, CLASS, TTL, RDLENGTH, then RDATA, all inside the message.
        if pos + 10 > end {
            break WALK_TRUNCATED;
        }
        let f = |i: usize| u16::from_be_bytes([frame[pos + i], frame[pos + i + 1]]);
        let (rtype, class, rdlen) = (f(0), f(2), usize::from(f(8)));
        let ttl = (u32::from(f(4)) << 16) | u32::from(f(6));
        let rdata = pos + 10;
        if rdata + rdlen > end {
            break WALK_TRUNCATED;
        }
        if rtype == 5 {
            r.cnames += 1;
        } else if class == 1
            && ((rtype == 1 && rdlen == 4) || (rtype == 28 && rdlen == 16))
            && r.addrs.len() < MAX_ADDRS
        {
            let mut a = [0u8; 16];
            if rtype == 1 {
                a[10] = 0xff;
                a[11] = 0xff;
                a[12..].copy_from_slice(&frame[rdata..rdata + 4]);
            } else {
                a.copy_from_slice(&frame[rdata..rdata + 16]);
            }
            r.addrs.push((a, ttl, rtype == 28));
        }
        pos = rdata + rdlen;
        r.answers_walked += 1;
    };
    r
}

fn is_ext(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_FRAGMENT | IPPROTO_AH | IPPROTO_DSTOPTS
    )
}

/// The extension header at `rest` (of type `kind`): its next header and length, or `None` when
/// it is cut short.
fn ext_header(kind: u8, rest: &[u8]) -> Option<(u8, usize)> {
    match kind {
        IPPROTO_FRAGMENT => etherparse::Ipv6FragmentHeaderSlice::from_slice(rest)
            .ok()
            .map(|h| (h.next_header().0, h.slice().len())),
        // etherparse's AH slice also rejects a zero payload length (RFC 4302 needs the SPI and
        // sequence number); the spec has no such reason, so only the length is checked here.
        IPPROTO_AH => {
            let len = (usize::from(*rest.get(1)?) + 2) * 4;
            (rest.len() >= len).then(|| (rest[0], len))
        }
        _ => etherparse::Ipv6RawExtHeaderSlice::from_slice(rest)
            .ok()
            .map(|h| (h.next_header().0, h.slice().len())),
    }
}

fn walk_ipv6(frame: &[u8], start: usize, first: u8) -> Result<Walked, Counter> {
    let mut next = first;
    let mut pos = start;
    for walked in 0.. {
        if !is_ext(next) {
            break;
        }
        if walked == MAX_IPV6_EXT_HEADERS {
            return Err(Counter::Ipv6ExtLimit);
        }
        let rest = frame.get(pos..).unwrap_or(&[]);
        let (nh, len) = ext_header(next, rest).ok_or(Counter::BadIpv6)?;
        // An atomic fragment (offset 0, M = 0) is a whole packet: walk on.
        let atomic = next == IPPROTO_FRAGMENT && rest[2] == 0 && rest[3] & 0xf9 == 0;
        if next == IPPROTO_FRAGMENT && !atomic {
            // A fragment whatever follows: in a non-first fragment that is data.
            return Ok(Walked {
                proto: nh,
                l4_off: pos + len,
                fragment: true,
            });
        }
        pos += len;
        next = nh;
    }
    Ok(Walked {
        proto: next,
        l4_off: pos,
        fragment: false,
    })
}

fn transport(frame: &[u8], w: &Walked, scope: &Scope, ip_end: usize) -> Result<L4, Counter> {
    let rest = frame.get(w.l4_off..).unwrap_or(&[]);
    match w.proto {
        IPPROTO_UDP => {
            let h = etherparse::UdpHeaderSlice::from_slice(rest).map_err(|_| Counter::BadL4)?;
            let (to_port, from_port) = (
                scope.watched(h.destination_port()),
                scope.watched(h.source_port()),
            );
            if !to_port && !from_port {
                return Err(Counter::NotDns);
            }
            let len = usize::from(h.length());
            if (1..8).contains(&len) {
                return Err(Counter::BadL4);
            }
            Ok(L4 {
                src_port: h.source_port(),
                dst_port: h.destination_port(),
                to_port,
                from_port,
                proto: IPPROTO_UDP,
                dns_off: w.l4_off + h.slice().len(),
                // 0: a jumbogram's, bounded by the datagram.
                length_end: if len == 0 { ip_end } else { w.l4_off + len },
            })
        }
        IPPROTO_TCP => {
            // The fixed header first, then the port, then the data offset and the options.
            let fixed = rest.get(..20).ok_or(Counter::BadL4)?;
            let dst_port = u16::from_be_bytes([fixed[2], fixed[3]]);
            let src_port = u16::from_be_bytes([fixed[0], fixed[1]]);
            let (to_port, from_port) = (scope.watched(dst_port), scope.watched(src_port));
            if !to_port && !from_port {
                return Err(Counter::NotDns);
            }
            // A data offset below 5, or options cut short.
            let hlen = etherparse::TcpHeaderSlice::from_slice(rest)
                .map_err(|_| Counter::BadL4)?
                .slice()
                .len();
            let payload = &rest[hlen..];
            // The length prefix and the DNS header must be in this segment.
            if payload.len() < 2 + DNS_HEADER_LEN {
                return Err(Counter::TcpNoQuestion);
            }
            let dns_off = w.l4_off + hlen + 2;
            let prefix = usize::from(u16::from_be_bytes([payload[0], payload[1]]));
            if dns_off + prefix > ip_end {
                return Err(Counter::TcpNoQuestion);
            }
            Ok(L4 {
                src_port,
                dst_port,
                to_port,
                from_port,
                proto: IPPROTO_TCP,
                dns_off,
                length_end: dns_off + usize::from(u16::from_be_bytes([payload[0], payload[1]])),
            })
        }
        _ => Err(Counter::NotDns),
    }
}

/// A query's question, as the record carries it.
struct Question {
    id: u16,
    response: bool,
    qtype: u16,
    qclass: u16,
    qname: Vec<u8>,
}

/// The DNS header gate and the QNAME walk over `msg` (the message up to the frame's end).
fn dns_gate(msg: &[u8], tcp: bool, to_port: bool, from_port: bool) -> Result<Question, Counter> {
    let short = if tcp {
        Counter::TcpNoQuestion
    } else {
        Counter::DnsTruncated
    };
    let [id_hi, id_lo, flags, _, qd_hi, qd_lo, ..] = *msg else {
        return Err(short);
    };
    let response = flags & 0x80 != 0;
    if response && !from_port {
        return Err(Counter::DnsResponse);
    }
    if !response && !to_port {
        return Err(Counter::DnsQueryFromPort);
    }
    if (flags >> 3) & 0x0f != 0 {
        return Err(Counter::DnsOpcode);
    }
    if u16::from_be_bytes([qd_hi, qd_lo]) != 1 {
        return Err(Counter::DnsQdcount);
    }
    let name = msg.get(DNS_HEADER_LEN..).unwrap_or(&[]);
    // Wire length of the labels so far (without the root label).
    let mut used = 0usize;
    loop {
        // The length byte and the one after it (a label byte, or QTYPE after the root).
        let [len, _] = *name.get(used..used + 2).ok_or(short)? else {
            unreachable!("a two-byte slice")
        };
        if len == 0 {
            break;
        }
        if len & 0xc0 == 0xc0 {
            return Err(Counter::DnsCompression);
        }
        if len > MAX_LABEL_LEN {
            return Err(Counter::DnsLabelTooLong);
        }
        used += 1 + usize::from(len);
        // With the root label the name would exceed 255 bytes.
        if used + 1 > MAX_NAME_LEN {
            return Err(Counter::DnsNameTooLong);
        }
    }
    let qname = &name[..=used];
    let tail = name.get(used + 1..used + 5).ok_or(short)?;
    Ok(Question {
        id: u16::from_be_bytes([id_hi, id_lo]),
        response,
        qtype: u16::from_be_bytes([tail[0], tail[1]]),
        qclass: u16::from_be_bytes([tail[2], tail[3]]),
        qname: qname.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{
        DnsHeader, ETH_IPV6, Ext, TCP, UDP, dns_message, dns_query, ether, ip_frame, ipv6,
        question, tcp, tcp_dns, udp, udp_query_frame, wire_name,
    };
    use std::net::IpAddr;

    fn scope() -> Scope {
        let nets = |v: &[&str]| -> Vec<IpNet> { v.iter().map(|s| s.parse().unwrap()).collect() };
        Scope::new(
            &[53],
            &nets(&["10.53.0.0/16", "2001:db8:53::/64"]),
            &nets(&["203.0.113.0/24", "2001:db8:bad::/48"]),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_plain_query_is_an_event_with_its_fields() {
        let f = udp_query_frame(ip("192.0.2.1"), ip("192.0.2.53"), 4000, 7, "Ab.c", 28);
        let p = predict(&f, &scope(), Semantics::SPEC);
        assert_eq!((p.action, p.outcome), (XDP_PASS, Counter::Events));
        let e = p.event.expect("event");
        assert_eq!(e.qname, b"\x02Ab\x01c\x00");
        assert_eq!(
            (e.qtype, e.qclass, e.dns_id, e.src_port, e.dst_port),
            (28, 1, 7, 4000, 53)
        );
        assert_eq!(e.src_addr[10..], [0xff, 0xff, 192, 0, 2, 1]);
        assert!(p.ipv4 && p.dns_query && !p.vlan && p.question_within_lengths);
    }

    #[test]
    fn lists_decide_drop_and_allow() {
        let s = scope();
        let f = udp_query_frame(ip("203.0.113.9"), ip("192.0.2.53"), 1, 1, "a", 1);
        let p = predict(&f, &s, Semantics::SPEC);
        assert_eq!((p.action, p.outcome), (XDP_DROP, Counter::Blocked));
        assert_eq!(p.block_entry, Some("203.0.113.0/24".parse().unwrap()));
        let f = udp_query_frame(ip("2001:db8:53::9"), ip("2001:db8::1"), 1, 1, "a", 1);
        let p = predict(&f, &s, Semantics::SPEC);
        assert_eq!(p.outcome, Counter::Allowlisted);
        assert!(p.event.is_none() && p.dns_query);
    }

    #[test]
    fn every_dns_reason() {
        let s = scope();
        let frame = |flags: u16, qd: u16, q: &[u8]| {
            let msg = dns_message(
                DnsHeader {
                    id: 1,
                    flags,
                    qdcount: qd,
                },
                q,
            );
            ip_frame(ip("192.0.2.1"), ip("192.0.2.2"), UDP, &udp(9, 53, &msg))
        };
        let ok = question(&wire_name("a.b"), 1, 1);
        let cases: Vec<(Vec<u8>, Counter)> = vec![
            (frame(0x8100, 1, &ok), Counter::DnsResponse),
            (frame(0x2800, 1, &ok), Counter::DnsOpcode),
            (frame(0x0100, 2, &ok), Counter::DnsQdcount),
            (frame(0x0100, 1, &ok[..ok.len() - 1]), Counter::DnsTruncated),
            (frame(0x0100, 1, b"\x40aaaa"), Counter::DnsLabelTooLong),
            (
                frame(0x0100, 1, b"\xc0\x0c\0\x01\0\x01"),
                Counter::DnsCompression,
            ),
            (
                frame(0x0100, 1, &[[63u8; 64].as_slice(); 4].concat()),
                Counter::DnsNameTooLong,
            ),
        ];
        for (f, want) in cases {
            assert_eq!(predict(&f, &s, Semantics::SPEC).outcome, want);
        }
    }

    #[test]
    fn pipelined_tcp_messages_are_read_up_to_the_bound() {
        let s = scope();
        let frame = |n: u16, tail: &[u8]| {
            let mut payload: Vec<u8> = (0..n)
                .flat_map(|i| tcp_dns(&dns_query(i, "p.example", 1)))
                .collect();
            payload.extend_from_slice(tail);
            ip_frame(
                ip("192.0.2.1"),
                ip("192.0.2.53"),
                TCP,
                &tcp(4000, 53, &payload),
            )
        };
        let p = predict(&frame(3, &[]), &s, Semantics::SPEC);
        let ids: Vec<u16> = p.records().iter().map(|(e, _)| e.dns_id).collect();
        assert_eq!(ids, [0, 1, 2]);
        assert_eq!(p.pipeline_end, None);
        let d = p.counter_delta();
        assert_eq!(
            (
                d[Counter::Events as usize],
                d[Counter::TcpPipelined as usize]
            ),
            (3, 2)
        );
        let p = predict(&frame(6, &[]), &s, Semantics::SPEC);
        assert_eq!(p.records().len(), MAX_TCP_MESSAGES);
        assert_eq!(p.pipeline_end, Some(Counter::TcpPipelineLimit));
        // A prefix with only part of its message.
        let p = predict(&frame(1, &[0, 40, 0, 1, 1, 0]), &s, Semantics::SPEC);
        assert_eq!(p.records().len(), 1);
        assert_eq!(p.pipeline_end, Some(Counter::TcpPipelineSplit));
        // UDP has no such thing: bytes after the message are no message.
        let mut dg = udp(4000, 53, &dns_query(1, "p.example", 1));
        dg.extend_from_slice(&tcp_dns(&dns_query(2, "p.example", 1)));
        let p = predict(
            &ip_frame(ip("192.0.2.1"), ip("192.0.2.53"), UDP, &dg),
            &s,
            Semantics::SPEC,
        );
        assert!(p.pipelined.is_empty() && p.pipeline_end.is_none());
    }

    #[test]
    fn findings_change_only_what_they_name() {
        let s = scope();
        // Seven destination-options headers from a blocklisted source.
        let exts: Vec<Ext> = (0..7).map(|_| Ext::dest_opts()).collect();
        let f = ether(
            &[],
            ETH_IPV6,
            &ipv6(
                "2001:db8:bad::1".parse().unwrap(),
                "2001:db8::53".parse().unwrap(),
                UDP,
                &exts,
                &udp(1, 53, &dns_query(1, "a", 1)),
            ),
        );
        let spec = predict(&f, &s, Semantics::SPEC);
        assert_eq!(spec.outcome, Counter::Blocked);
        assert!(spec.sensitive.has(Finding::BlocklistAfterExtWalk));
        let kernel = predict(&f, &s, Semantics::of(&[Finding::BlocklistAfterExtWalk]));
        assert_eq!(
            (kernel.action, kernel.outcome),
            (XDP_PASS, Counter::Ipv6ExtLimit)
        );
        // A tagged ARP frame.
        let arp = ether(&[(TPID_8021Q, 5)], 0x0806, &[0; 28]);
        let spec = predict(&arp, &s, Semantics::SPEC);
        assert!(spec.vlan && spec.outcome == Counter::NotIp);
        assert!(!predict(&arp, &s, Semantics::of(&[Finding::VlanCounterNonIp])).vlan);
    }
}
