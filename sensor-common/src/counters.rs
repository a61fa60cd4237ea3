//! Per-CPU packet counters of the XDP program.
//!
//! One `COUNTERS` per-CPU array slot holds a [`Counters`] struct, so one map lookup serves every
//! increment of a packet and `bpftool map dump` prints each counter by name (BTF). Every packet
//! ends in exactly one *outcome* counter, and so does every further DNS message read from a TCP
//! segment (`tcp_pipelined`), so `packets + tcp_pipelined` equals the sum of the outcomes:
//! nothing the program sees goes uncounted.

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $field:ident = $variant:ident, $outcome:literal; )*) => {
        /// Counter values, in the order of [`Counter`]. All `u64`, so it is laid out as `[u64; N]`.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Counters {
            $( $(#[doc = $doc])* pub $field: u64, )*
        }

        /// Index of a counter in [`Counters`].
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Counter {
            $( $variant, )*
        }

        impl Counter {
            /// Every counter, in layout order.
            pub const ALL: &'static [Counter] = &[$(Counter::$variant),*];

            /// Snake-case name (the field name in `Counters` and in bpftool's dump).
            pub const fn name(self) -> &'static str {
                match self { $(Counter::$variant => stringify!($field),)* }
            }

            /// One-line description.
            pub const fn help(self) -> &'static str {
                match self { $(Counter::$variant => concat!($($doc),*),)* }
            }

            /// True for the counters that end a packet's path (exactly one per packet).
            pub const fn is_outcome(self) -> bool {
                match self { $(Counter::$variant => $outcome,)* }
            }
        }

        impl Counters {
            /// The value of one counter.
            pub const fn get(&self, c: Counter) -> u64 {
                match c { $(Counter::$variant => self.$field,)* }
            }

            /// Adds another CPU's values into this one.
            pub fn add(&mut self, other: &Counters) {
                $( self.$field = self.$field.wrapping_add(other.$field); )*
            }
        }
    };
}

counters! {
    /// Packets the program ran on.
    packets = Packets, false;
    /// IPv4 packets.
    ipv4 = Ipv4, false;
    /// IPv6 packets.
    ipv6 = Ipv6, false;
    /// Packets carrying one or two VLAN tags.
    vlan = Vlan, false;
    /// Well-formed DNS queries (events + their share of allowlisted and ring_full).
    dns_queries = DnsQueries, false;
    /// Queries sent to userspace through the ring buffer.
    events = Events, true;
    /// Well-formed DNS responses from a DNS port (response_events + responses_off + their share
    /// of allowlisted and ring_full).
    dns_responses = DnsResponses, false;
    /// Responses sent to userspace through the ring buffer.
    response_events = ResponseEvents, true;
    /// Responses not reported because `capture.responses` is off.
    responses_off = ResponsesOff, true;
    /// Reported responses with more answer records than the program walks (the rest are in the
    /// record's message bytes, up to their room).
    response_rr_limit = ResponseRrLimit, false;
    /// Reported responses whose answer section ends early (a truncated message, or ANCOUNT
    /// larger than what follows): reported with the answers before the cut.
    response_truncated = ResponseTruncated, false;
    /// Reported responses with a malformed answer owner name (a compression pointer that does
    /// not point strictly backwards, a label over 63 bytes, a name over 255): reported with the
    /// answers before it.
    response_bad_name = ResponseBadName, false;
    /// Queries from, or responses to, a CLIENT_ALLOW client: no event.
    allowlisted = Allowlisted, true;
    /// Packets dropped because their source is in BLOCKLIST.
    blocked = Blocked, true;
    /// Packets whose source matched a BLOCKLIST entry past its expiry: passed, not dropped.
    block_expired = BlockExpired, false;
    /// Queries and responses lost because the ring buffer was full (userspace too slow).
    ring_full = RingFull, true;
    /// Not IPv4 or IPv6 (ARP, LLDP, ...), or more than two VLAN tags.
    not_ip = NotIp, true;
    /// IP packets that are not UDP/TCP to or from a watched DNS port (out of scope).
    not_dns = NotDns, true;
    /// Non-first IPv4 fragments and IPv6 fragments other than atomic ones (passed untouched).
    fragment = Fragment, true;
    /// IPv6 packets with more extension headers than the program walks.
    ipv6_ext_limit = Ipv6ExtLimit, true;
    /// TCP segments to a DNS port that do not hold the length prefix and a whole question, or
    /// whose length prefix does not fit the segment (a message split over segments, or sent
    /// without its prefix) or does not cover the question.
    tcp_no_question = TcpNoQuestion, true;
    /// Ethernet or VLAN header cut short.
    bad_ethernet = BadEthernet, true;
    /// IPv4 header cut short, wrong version, IHL below 5 or a total length below the header.
    bad_ipv4 = BadIpv4, true;
    /// IPv6 header or extension header cut short.
    bad_ipv6 = BadIpv6, true;
    /// UDP or TCP header cut short, a UDP length of 1-7, or a TCP data offset below 5.
    bad_l4 = BadL4, true;
    /// DNS message shorter than its header and question: within the frame, and within the IP
    /// and UDP lengths (bytes after them, such as Ethernet padding, are never DNS).
    dns_truncated = DnsTruncated, true;
    /// A response (QR=1) whose source port is not a DNS port (it was sent *to* one).
    dns_response = DnsResponse, true;
    /// A query (QR=0) whose destination port is not a DNS port (it came *from* one).
    dns_query_from_port = DnsQueryFromPort, true;
    /// Opcode other than QUERY (NOTIFY, UPDATE, ...).
    dns_opcode = DnsOpcode, true;
    /// QDCOUNT other than 1 (queries and responses).
    dns_qdcount = DnsQdcount, true;
    /// A QNAME label longer than 63 bytes (or an extended label type).
    dns_label_too_long = DnsLabelTooLong, true;
    /// A QNAME longer than 255 bytes.
    dns_name_too_long = DnsNameTooLong, true;
    /// A compression pointer inside the QNAME of a question.
    dns_compression = DnsCompression, true;
    /// Packets dropped because their destination is in DEST_BLOCK: an address a listed name
    /// resolved to (blocking by resolution).
    dest_blocked = DestBlocked, true;
    /// Packets whose destination matched a DEST_BLOCK entry past its expiry: passed.
    dest_expired = DestExpired, false;
    /// Responses whose QNAME (or a parent domain of it) is in BAD_NAMES.
    resolved_names = ResolvedNames, false;
    /// Answer addresses of listed names put into (or refreshed in) DEST_BLOCK.
    resolved_blocks = ResolvedBlocks, false;
    /// Answer addresses of listed names not blocked because DEST_PROTECT covers them.
    resolved_protected = ResolvedProtected, false;
    /// Answer addresses of listed names not blocked because DEST_BLOCK was full.
    resolved_full = ResolvedFull, false;
    /// DNS messages after the first in a TCP segment (pipelined queries, or responses sent
    /// back to back), read like a first one: each also ends in its own outcome counter (an
    /// event, a response record, a malformed reason...), so the outcomes add up to `packets`
    /// plus this.
    tcp_pipelined = TcpPipelined, false;
    /// TCP segments whose bytes after a message do not hold the next one whole (its length
    /// prefix and header, and as many bytes as the prefix says): a message continued in the
    /// next segment, which is not parsed.
    tcp_pipeline_split = TcpPipelineSplit, false;
    /// TCP segments holding more messages than the program reads (MAX_TCP_MESSAGES, 4), or
    /// reaching past the parser's offset bound (16 KiB): the rest are not parsed. (Also a
    /// segment met while the continuation program is missing: only a crashed keep-blocking
    /// run's program, for the moment its successor takes over.)
    tcp_pipeline_limit = TcpPipelineLimit, false;
    /// Responses for listed names rewritten into NXDOMAIN in place (`blocklist.resolved.rewrite
    /// = "nxdomain"`, XDP only): the client gets the question back with RCODE 3 and no records.
    /// Their answers were still recorded and blocked first.
    resolved_rewritten = ResolvedRewritten, false;
    /// Responses for listed names that the rewrite leaves unchanged although it is on: over TCP
    /// (a segment is never cut), or with answers the program did not read whole (the walk
    /// stopped early, or 8 or more addresses, so a protected one could be among those unread).
    resolved_rewrite_skipped = ResolvedRewriteSkipped, false;
}

/// Number of counters.
pub const COUNTER_COUNT: usize = Counter::ALL.len();

const _: () = assert!(core::mem::size_of::<Counters>() == COUNTER_COUNT * 8);

#[cfg(feature = "user")]
// SAFETY: repr(C) struct of u64 fields only: no padding, every bit pattern valid.
unsafe impl aya::Pod for Counters {}
