//! Per-CPU packet counters of the XDP program.
//!
//! One `COUNTERS` per-CPU array slot holds a [`Counters`] struct, so one map lookup serves every
//! increment of a packet and `bpftool map dump` prints each counter by name (BTF). Every packet
//! ends in exactly one *outcome* counter, so `packets` equals the sum of the outcomes: nothing
//! the program sees goes uncounted.

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
    /// Well-formed DNS queries (events + allowlisted + ring_full).
    dns_queries = DnsQueries, false;
    /// Queries sent to userspace through the ring buffer.
    events = Events, true;
    /// Queries from a CLIENT_ALLOW client: no event.
    allowlisted = Allowlisted, true;
    /// Packets dropped because their source is in BLOCKLIST.
    blocked = Blocked, true;
    /// Queries lost because the ring buffer was full (userspace too slow).
    ring_full = RingFull, true;
    /// Not IPv4 or IPv6 (ARP, LLDP, ...), or more than two VLAN tags.
    not_ip = NotIp, true;
    /// IP packets that are not UDP/TCP to a watched DNS port (out of scope).
    not_dns = NotDns, true;
    /// Non-first IPv4 fragments and IPv6 fragments (passed untouched).
    fragment = Fragment, true;
    /// IPv6 packets with more extension headers than the program walks.
    ipv6_ext_limit = Ipv6ExtLimit, true;
    /// TCP segments to a DNS port that do not hold the length prefix and a whole question.
    tcp_no_question = TcpNoQuestion, true;
    /// Ethernet or VLAN header cut short.
    bad_ethernet = BadEthernet, true;
    /// IPv4 header cut short, wrong version or IHL below 5.
    bad_ipv4 = BadIpv4, true;
    /// IPv6 header or extension header cut short.
    bad_ipv6 = BadIpv6, true;
    /// UDP or TCP header cut short, or a TCP data offset below 5.
    bad_l4 = BadL4, true;
    /// DNS message shorter than its header and question.
    dns_truncated = DnsTruncated, true;
    /// DNS message to a DNS port with QR=1 (a response).
    dns_response = DnsResponse, true;
    /// Opcode other than QUERY (NOTIFY, UPDATE, ...).
    dns_opcode = DnsOpcode, true;
    /// QDCOUNT other than 1.
    dns_qdcount = DnsQdcount, true;
    /// A QNAME label longer than 63 bytes (or an extended label type).
    dns_label_too_long = DnsLabelTooLong, true;
    /// A QNAME longer than 255 bytes.
    dns_name_too_long = DnsNameTooLong, true;
    /// A compression pointer inside the QNAME of a query.
    dns_compression = DnsCompression, true;
}

/// Number of counters.
pub const COUNTER_COUNT: usize = Counter::ALL.len();

const _: () = assert!(core::mem::size_of::<Counters>() == COUNTER_COUNT * 8);

#[cfg(feature = "user")]
// SAFETY: repr(C) struct of u64 fields only: no padding, every bit pattern valid.
unsafe impl aya::Pod for Counters {}
