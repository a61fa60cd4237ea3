//! The XDP program in the real kernel through BPF_PROG_TEST_RUN (`Xdp::test_run`): crafted
//! packets for every branch, asserting the action, the ring-buffer record (or its absence) and
//! the exact counter changes. Needs root (CAP_BPF, CAP_PERFMON); fails without it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions},
};
use ipnet::IpNet;
use sensor_common::{Counter, Counters, Transport, event};
use sensor_kernel::config::CaptureMode;
use sensor_kernel::{
    decode,
    lists::resolved::{Listing, ResolvedMaps},
    loader,
    loader::{Maps, ProgramSettings},
};
use sensor_model::{
    query::Query,
    response::{Response, Walk},
};
use sensor_testkit::packet::*;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

struct Harness {
    ebpf: Ebpf,
    maps: Maps,
    total: Counters,
}

struct Run {
    action: u32,
    events: Vec<Query>,
    /// Response records, decoded.
    responses: Vec<Response>,
    /// Length of each event's ring buffer record.
    record_lens: Vec<usize>,
    /// Every ring buffer record as it was, in order.
    raw: Vec<Vec<u8>>,
    /// Counters that changed, with how much.
    delta: Vec<(Counter, u64)>,
    /// The frame as the program left it (test_run's `data_out`).
    data_out: Vec<u8>,
}

fn mono_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

impl Harness {
    fn new() -> Self {
        Self::with(ProgramSettings::default())
    }

    fn with(settings: ProgramSettings) -> Self {
        let mut ebpf = loader::load(&settings, None).expect("load the XDP program (needs root)");
        let maps = Maps::take(&mut ebpf).expect("maps");
        Self {
            ebpf,
            maps,
            total: Counters::default(),
        }
    }

    fn lists(&mut self, allow: &[&str], block: &[&str]) {
        let p = |v: &[&str]| {
            let owned: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            sensor_model::error::parse_nets("test", &owned).expect("valid CIDRs")
        };
        self.maps.fill(&p(allow), &p(block)).expect("fill maps");
    }

    fn run(&mut self, frame: &[u8]) -> Run {
        self.run_on(frame, false)
    }

    /// Runs the TC egress program (the harness must be built with `egress: true`).
    fn run_egress(&mut self, frame: &[u8]) -> Run {
        self.run_on(frame, true)
    }

    fn run_on(&mut self, frame: &[u8], egress: bool) -> Run {
        let before = self.maps.counters().expect("counters");
        let t0 = mono_ns();
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        };
        let r = if egress {
            loader::egress_program(&mut self.ebpf).test_run(opts)
        } else {
            loader::program(&mut self.ebpf).test_run(opts)
        }
        .unwrap_or_else(|e| panic!("test_run on {} bytes: {e}", frame.len()));
        let t1 = mono_ns();
        out.truncate(r.data_size_out as usize);
        let after = self.maps.counters().expect("counters");
        let mut events = Vec::new();
        let mut responses = Vec::new();
        let mut record_lens = Vec::new();
        let mut raw = Vec::new();
        while let Some(item) = self.maps.events.next() {
            record_lens.push(item.len());
            raw.push(item.to_vec());
            let ev = match decode::any(&item).expect("record size") {
                decode::Record::Query(ev) => ev,
                decode::Record::Response { head, info, msg } => {
                    let r = Response::from_parts(&head, &info, &msg).expect("response decodes");
                    assert!(
                        r.question.ts_mono_ns + 10_000_000 >= t0 && r.question.ts_mono_ns <= t1,
                        "timestamp within the run"
                    );
                    responses.push(r);
                    continue;
                }
            };
            let q = Query::from_event(&ev).expect("record decodes");
            // The default coarse clock lags the precise one by up to a scheduler tick (<= 10 ms).
            assert!(
                q.ts_mono_ns + 10_000_000 >= t0 && q.ts_mono_ns <= t1,
                "timestamp within the run"
            );
            events.push(q);
        }
        let delta = Counter::ALL
            .iter()
            .map(|&c| (c, after.get(c) - before.get(c)))
            .filter(|&(_, d)| d != 0)
            .collect();
        self.total = after;
        Run {
            action: r.return_value,
            events,
            responses,
            record_lens,
            raw,
            delta,
            data_out: out,
        }
    }
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}
fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// The query the program should report for a crafted packet.
fn expected(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    id: u16,
    name: &str,
    qtype: u16,
    transport: Transport,
) -> Query {
    Query {
        ts_mono_ns: 0,
        ifindex: 1,
        vlan_outer: 0,
        vlan_inner: 0,
        src,
        dst,
        src_port: sport,
        dst_port: 53,
        transport,
        dns_id: id,
        qtype,
        qclass: 1,
        name: name.into(),
        answer: None,
    }
}

fn assert_event(run: &Run, mut want: Query) {
    assert_eq!(run.events.len(), 1, "exactly one event");
    let got = &run.events[0];
    want.ts_mono_ns = got.ts_mono_ns;
    // test_run delivers on the loopback device of the test's namespace.
    want.ifindex = got.ifindex;
    assert!(got.ifindex > 0);
    assert_eq!(*got, want);
}

fn assert_delta(run: &Run, want: &[(Counter, u64)]) {
    let mut want = want.to_vec();
    want.sort_by_key(|&(c, _)| c as u32);
    assert_eq!(run.delta, want, "counter changes");
}

use Counter::*;

fn client4() -> IpAddr {
    IpAddr::V4(v4("192.0.2.10"))
}
fn server4() -> IpAddr {
    IpAddr::V4(v4("198.51.100.53"))
}
fn client6() -> IpAddr {
    IpAddr::V6(v6("2001:db8::10"))
}
fn server6() -> IpAddr {
    IpAddr::V6(v6("2001:db8::53"))
}

#[test]
fn ipv4_udp_query_becomes_one_event() {
    let mut h = Harness::new();
    let run = h.run(&udp_query_frame(
        client4(),
        server4(),
        40000,
        0xbeef,
        "WWW.Example.com",
        1,
    ));
    assert_eq!(run.action, XDP_PASS);
    assert_event(
        &run,
        expected(
            client4(),
            server4(),
            40000,
            0xbeef,
            "www.example.com",
            1,
            Transport::Udp,
        ),
    );
    assert_delta(
        &run,
        &[(Packets, 1), (Ipv4, 1), (DnsQueries, 1), (Events, 1)],
    );
}

#[test]
fn ipv6_udp_query_becomes_one_event() {
    let mut h = Harness::new();
    let run = h.run(&udp_query_frame(
        client6(),
        server6(),
        5353,
        7,
        "ipv6.example.org",
        28,
    ));
    assert_eq!(run.action, XDP_PASS);
    assert_event(
        &run,
        expected(
            client6(),
            server6(),
            5353,
            7,
            "ipv6.example.org",
            28,
            Transport::Udp,
        ),
    );
    assert_delta(
        &run,
        &[(Packets, 1), (Ipv6, 1), (DnsQueries, 1), (Events, 1)],
    );
}

#[test]
fn vlan_and_qinq_tags_are_reported() {
    let mut h = Harness::new();
    let l3 = ipv4(
        v4("192.0.2.10"),
        v4("198.51.100.53"),
        UDP,
        &[],
        0,
        &udp(1000, 53, &dns_query(1, "a.b", 16)),
    );
    let run = h.run(&ether(&[(TPID_8021Q, 42)], ETH_IPV4, &l3));
    let mut want = expected(client4(), server4(), 1000, 1, "a.b", 16, Transport::Udp);
    want.vlan_outer = 42;
    assert_event(&run, want.clone());
    assert_delta(
        &run,
        &[
            (Packets, 1),
            (Vlan, 1),
            (Ipv4, 1),
            (DnsQueries, 1),
            (Events, 1),
        ],
    );

    let run = h.run(&ether(
        &[(TPID_8021AD, 100), (TPID_8021Q, 7)],
        ETH_IPV4,
        &l3,
    ));
    want.vlan_outer = 100;
    want.vlan_inner = 7;
    assert_event(&run, want);
    assert_delta(
        &run,
        &[
            (Packets, 1),
            (Vlan, 1),
            (Ipv4, 1),
            (DnsQueries, 1),
            (Events, 1),
        ],
    );

    // A third tag is beyond what the program parses: counted as not IP, passed.
    let run = h.run(&ether(
        &[(TPID_8021AD, 1), (TPID_8021Q, 2), (TPID_8021Q, 3)],
        ETH_IPV4,
        &l3,
    ));
    assert_eq!(run.action, XDP_PASS);
    assert!(run.events.is_empty());
    assert_delta(&run, &[(Packets, 1), (NotIp, 1)]);
}

#[test]
fn tcp_query_with_length_prefix_becomes_an_event() {
    let mut h = Harness::new();
    let msg = dns_query(0x1234, "mail.example.net", 15);
    let run = h.run(&ip_frame(
        client4(),
        server4(),
        TCP,
        &tcp(45000, 53, &tcp_dns(&msg)),
    ));
    assert_event(
        &run,
        expected(
            client4(),
            server4(),
            45000,
            0x1234,
            "mail.example.net",
            15,
            Transport::Tcp,
        ),
    );
    let run = h.run(&ip_frame(
        client6(),
        server6(),
        TCP,
        &tcp(45001, 53, &tcp_dns(&msg)),
    ));
    assert_event(
        &run,
        expected(
            client6(),
            server6(),
            45001,
            0x1234,
            "mail.example.net",
            15,
            Transport::Tcp,
        ),
    );

    // SYN without payload, and a segment holding only part of the question.
    let run = h.run(&ip_frame(client4(), server4(), TCP, &tcp(45000, 53, &[])));
    assert_delta(&run, &[(Packets, 1), (Ipv4, 1), (TcpNoQuestion, 1)]);
    let partial = tcp_dns(&msg);
    let run = h.run(&ip_frame(
        client4(),
        server4(),
        TCP,
        &tcp(45000, 53, &partial[..partial.len() - 3]),
    ));
    assert_eq!(run.action, XDP_PASS);
    assert_delta(&run, &[(Packets, 1), (Ipv4, 1), (TcpNoQuestion, 1)]);
}

#[test]
fn ipv4_options_and_ipv6_extension_headers_are_walked() {
    let mut h = Harness::new();
    let seg = udp(1111, 53, &dns_query(9, "opt.example", 1));
    for opts in [vec![1u8; 4], vec![1u8; 40]] {
        let run = h.run(&ether(
            &[],
            ETH_IPV4,
            &ipv4(v4("192.0.2.10"), v4("198.51.100.53"), UDP, &opts, 0, &seg),
        ));
        assert_event(
            &run,
            expected(
                client4(),
                server4(),
                1111,
                9,
                "opt.example",
                1,
                Transport::Udp,
            ),
        );
    }
    let exts = [Ext::hop_by_hop(), Ext::dest_opts()];
    let run = h.run(&ether(
        &[],
        ETH_IPV6,
        &ipv6(v6("2001:db8::10"), v6("2001:db8::53"), UDP, &exts, &seg),
    ));
    assert_event(
        &run,
        expected(
            client6(),
            server6(),
            1111,
            9,
            "opt.example",
            1,
            Transport::Udp,
        ),
    );

    // More extension headers than the program walks: counted and passed.
    let many: Vec<Ext> = (0..7).map(|_| Ext::dest_opts()).collect();
    let run = h.run(&ether(
        &[],
        ETH_IPV6,
        &ipv6(v6("2001:db8::10"), v6("2001:db8::53"), UDP, &many, &seg),
    ));
    assert_eq!(run.action, XDP_PASS);
    assert_delta(&run, &[(Packets, 1), (Ipv6, 1), (Ipv6ExtLimit, 1)]);
}

#[test]
fn fragments_pass_untouched_and_are_counted() {
    let mut h = Harness::new();
    let seg = udp(1111, 53, &dns_query(9, "frag.example", 1));
    let run = h.run(&ether(
        &[],
        ETH_IPV4,
        &ipv4(v4("192.0.2.10"), v4("198.51.100.53"), UDP, &[], 185, &seg),
    ));
    assert_eq!(run.action, XDP_PASS);
    assert!(run.events.is_empty());
    assert_delta(&run, &[(Packets, 1), (Ipv4, 1), (Fragment, 1)]);
    let run = h.run(&ether(
        &[],
        ETH_IPV6,
        &ipv6(
            v6("2001:db8::10"),
            v6("2001:db8::53"),
            UDP,
            &[Ext::fragment()],
            &seg,
        ),
    ));
    assert_eq!(run.action, XDP_PASS);
    assert_delta(&run, &[(Packets, 1), (Ipv6, 1), (Fragment, 1)]);
}

#[test]
fn allowlisted_clients_make_no_event_and_are_counted() {
    let mut h = Harness::new();
    h.lists(&["192.0.2.0/24", "2001:db8::10"], &[]);
    let run = h.run(&udp_query_frame(client4(), server4(), 1, 1, "x.example", 1));
    assert_eq!(run.action, XDP_PASS);
    assert!(run.events.is_empty());
    assert_delta(
        &run,
        &[(Packets, 1), (Ipv4, 1), (DnsQueries, 1), (Allowlisted, 1)],
    );
    let run = h.run(&udp_query_frame(client6(), server6(), 1, 1, "x.example", 1));
    assert_delta(
        &run,
        &[(Packets, 1), (Ipv6, 1), (DnsQueries, 1), (Allowlisted, 1)],
    );
    // A neighbour outside the entries still makes events.
    let other = IpAddr::V4(v4("192.0.3.1"));
    let run = h.run(&udp_query_frame(other, server4(), 1, 1, "x.example", 1));
    assert_eq!(run.events.len(), 1);
    let entries = h.maps.client_allow.entries().unwrap();
    assert_eq!(
        entries[&"192.0.2.0/24".parse::<IpNet>().unwrap()].queries,
        1
    );
    assert_eq!(
        entries[&"2001:db8::10/128".parse::<IpNet>().unwrap()].queries,
        1
    );
}

#[test]
fn blocklisted_sources_are_dropped_and_counted_per_entry() {
    let mut h = Harness::new();
    h.lists(&[], &["192.0.2.10", "2001:db8::/64"]);
    let run = h.run(&udp_query_frame(client4(), server4(), 1, 1, "x.example", 1));
    assert_eq!(run.action, XDP_DROP);
    assert!(run.events.is_empty());
    assert_delta(&run, &[(Packets, 1), (Ipv4, 1), (Blocked, 1)]);
    // Not only DNS: any packet from the source.
    let run = h.run(&ip_frame(client4(), server4(), UDP, &udp(5, 443, b"hello")));
    assert_eq!(run.action, XDP_DROP);
    let run = h.run(&udp_query_frame(client6(), server6(), 1, 1, "x.example", 1));
    assert_eq!(run.action, XDP_DROP);
    assert_delta(&run, &[(Packets, 1), (Ipv6, 1), (Blocked, 1)]);
    // Others pass.
    let run = h.run(&udp_query_frame(
        IpAddr::V4(v4("192.0.2.11")),
        server4(),
        1,
        1,
        "x.example",
        1,
    ));
    assert_eq!(run.action, XDP_PASS);
    assert_eq!(run.events.len(), 1);
    let entries = h.maps.blocklist.entries().unwrap();
    assert_eq!(
        entries[&"192.0.2.10/32".parse::<IpNet>().unwrap()].packets,
        2
    );
    assert_eq!(
        entries[&"2001:db8::/64".parse::<IpNet>().unwrap()].packets,
        1
    );

    // Removing the entry lets the source through again.
    h.lists(&[], &["2001:db8::/64"]);
    let run = h.run(&udp_query_frame(client4(), server4(), 1, 1, "x.example", 1));
    assert_eq!(run.action, XDP_PASS);
    assert_eq!(run.events.len(), 1);
}

#[test]
fn the_kernel_stops_enforcing_an_entry_once_its_expiry_has_passed() {
    let mut h = Harness::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let lapsed: IpNet = "192.0.2.10/32".parse().unwrap();
    let lasting: IpNet = "192.0.2.11/32".parse().unwrap();
    let short: IpNet = "2001:db8::/64".parse().unwrap();
    sensor_kernel::lists::blocklist::install_into(
        &mut h.maps.blocklist,
        &[(lapsed, now - 1), (lasting, now + 3600), (short, now + 2)],
        &[],
    )
    .unwrap();

    // Past its expiry: passed and reported, counted as block_expired; the entry stays in the
    // map (userspace removes it) and counts no drop.
    let run = h.run(&udp_query_frame(client4(), server4(), 1, 1, "x.example", 1));
    assert_eq!(run.action, XDP_PASS);
    assert_eq!(run.events.len(), 1);
    assert_delta(
        &run,
        &[
            (Packets, 1),
            (Ipv4, 1),
            (BlockExpired, 1),
            (DnsQueries, 1),
            (Events, 1),
        ],
    );
    // Not yet expired: dropped.
    let run = h.run(&udp_query_frame(
        IpAddr::V4(v4("192.0.2.11")),
        server4(),
        1,
        1,
        "x.example",
        1,
    ));
    assert_eq!(run.action, XDP_DROP);
    let entries = h.maps.blocklist.entries().unwrap();
    assert_eq!(entries[&lapsed].packets, 0);
    assert_eq!(entries[&lasting].packets, 1);

    // A 2-second entry: dropped now, passed once its second has come, with nothing in
    // userspace touching the map in between.
    let run = h.run(&udp_query_frame(client6(), server6(), 1, 1, "x.example", 1));
    assert_eq!(run.action, XDP_DROP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let run = h.run(&udp_query_frame(client6(), server6(), 1, 1, "x.example", 1));
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        if run.action == XDP_PASS {
            assert!(
                wall >= now + 2,
                "passed before its expiry ({wall} < {})",
                now + 2
            );
            assert_delta(
                &run,
                &[
                    (Packets, 1),
                    (Ipv6, 1),
                    (BlockExpired, 1),
                    (DnsQueries, 1),
                    (Events, 1),
                ],
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still dropped 10 s after a 2-second expiry"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn mirror_mode_drops_after_reading_and_custom_ports_apply() {
    let mut h = Harness::with(ProgramSettings {
        mode: CaptureMode::Mirror,
        dns_ports: vec![5300, 53],
        precise_timestamps: true,
        responses: true,
        resolved: None,
        rewrite_nxdomain: false,
        egress: false,
    });
    let run = h.run(&udp_query_frame(client4(), server4(), 1, 1, "m.example", 1));
    assert_eq!(run.action, XDP_DROP);
    assert_eq!(run.events.len(), 1);
    let mut frame = ip_frame(
        client4(),
        server4(),
        UDP,
        &udp(9, 5300, &dns_query(3, "p.example", 1)),
    );
    let run = h.run(&frame);
    assert_eq!(run.events[0].dst_port, 5300);
    frame = ip_frame(
        client4(),
        server4(),
        UDP,
        &udp(9, 5301, &dns_query(3, "p.example", 1)),
    );
    let run = h.run(&frame);
    assert_eq!(run.action, XDP_DROP);
    assert_delta(&run, &[(Packets, 1), (Ipv4, 1), (NotDns, 1)]);
}

#[test]
fn out_of_scope_packets_pass_and_are_counted() {
    let mut h = Harness::new();
    let mut arp = ether(&[], 0x0806, &[0u8; 28]);
    let run = h.run(&arp);
    assert_eq!(
        (run.action, run.delta.clone()),
        (XDP_PASS, vec![(Packets, 1), (NotIp, 1)])
    );
    arp.truncate(14);
    let run = h.run(&ip_frame(
        client4(),
        server4(),
        UDP,
        &udp(53, 40000, &dns_query(1, "resp.example", 1)),
    ));
    // A query (QR=0) coming from a DNS port to one that is not: neither a query nor a response.
    assert_delta(&run, &[(Packets, 1), (Ipv4, 1), (DnsQueryFromPort, 1)]);
    let run = h.run(&ip_frame(
        client4(),
        server4(),
        UDP,
        &udp(5353, 40000, &dns_query(1, "resp.example", 1)),
    ));
    assert_delta(&run, &[(Packets, 1), (Ipv4, 1), (NotDns, 1)]);
    let run = h.run(&ip_frame(
        client4(),
        server4(),
        1,
        &[8, 0, 0, 0, 0, 0, 0, 0],
    ));
    assert_delta(&run, &[(Packets, 1), (Ipv4, 1), (NotDns, 1)]);
}

/// Each malformed input: the counter it must land in.
#[test]
fn malformed_dns_is_passed_and_counted_by_reason() {
    let mut h = Harness::new();
    let frame = |msg: Vec<u8>| ip_frame(client4(), server4(), UDP, &udp(1, 53, &msg));
    let q = |wire: Vec<u8>| question(&wire, 1, 1);
    let label64 = {
        let mut w = vec![64u8];
        w.extend_from_slice(&[b'a'; 64]);
        w.push(0);
        w
    };
    // 4 labels of 63 = 256 bytes + root: over 255.
    let too_long = {
        let mut w = Vec::new();
        for _ in 0..4 {
            w.push(63);
            w.extend_from_slice(&[b'b'; 63]);
        }
        w.push(0);
        w
    };
    // Exactly 255 with the root: allowed.
    let longest = {
        let mut w = Vec::new();
        for _ in 0..3 {
            w.push(63);
            w.extend_from_slice(&[b'c'; 63]);
        }
        w.push(61);
        w.extend_from_slice(&[b'd'; 61]);
        w.push(0);
        assert_eq!(w.len(), 255);
        w
    };
    let pointer = vec![3, b'w', b'w', b'w', 0xc0, 12];
    let cases: Vec<(&str, Vec<u8>, Counter)> = vec![
        (
            "label over 63",
            dns_message(DnsHeader::query(1), &q(label64)),
            DnsLabelTooLong,
        ),
        (
            "name over 255",
            dns_message(DnsHeader::query(1), &q(too_long)),
            DnsNameTooLong,
        ),
        (
            "pointer in QNAME",
            dns_message(DnsHeader::query(1), &q(pointer)),
            DnsCompression,
        ),
        (
            "QDCOUNT 0",
            dns_message(
                DnsHeader {
                    qdcount: 0,
                    ..DnsHeader::query(1)
                },
                &[],
            ),
            DnsQdcount,
        ),
        (
            "QDCOUNT 2",
            dns_message(
                DnsHeader {
                    qdcount: 2,
                    ..DnsHeader::query(1)
                },
                &q(wire_name("a.b")),
            ),
            DnsQdcount,
        ),
        (
            "QR=1 to a DNS port from another",
            dns_message(
                DnsHeader {
                    flags: 0x8180,
                    ..DnsHeader::query(1)
                },
                &q(wire_name("a.b")),
            ),
            DnsResponse,
        ),
        (
            "opcode NOTIFY",
            dns_message(
                DnsHeader {
                    flags: 4 << 11,
                    ..DnsHeader::query(1)
                },
                &q(wire_name("a.b")),
            ),
            DnsOpcode,
        ),
        (
            "no QTYPE",
            dns_message(DnsHeader::query(1), &wire_name("a.b")),
            DnsTruncated,
        ),
    ];
    for (what, msg, counter) in cases {
        let run = h.run(&frame(msg));
        assert_eq!(run.action, XDP_PASS, "{what}");
        assert!(run.events.is_empty(), "{what}: no event");
        assert_eq!(
            run.delta,
            vec![(Packets, 1), (Ipv4, 1), (counter, 1)],
            "{what}"
        );
    }
    let run = h.run(&frame(dns_message(DnsHeader::query(1), &q(longest))));
    assert_eq!(run.events.len(), 1, "a 255-byte name is valid");
    assert_eq!(run.events[0].name.len(), 253);

    // Bad IHL.
    let mut pkt = ip_frame(
        client4(),
        server4(),
        UDP,
        &udp(1, 53, &dns_query(1, "a.b", 1)),
    );
    pkt[14] = 0x44;
    let run = h.run(&pkt);
    assert_eq!(run.delta, vec![(Packets, 1), (Ipv4, 1), (BadIpv4, 1)]);
    // IHL larger than the packet.
    let mut short = ip_frame(client4(), server4(), UDP, &[]);
    short[14] = 0x4f;
    let run = h.run(&short);
    assert_eq!(run.delta, vec![(Packets, 1), (Ipv4, 1), (BadIpv4, 1)]);
}

/// Cutting a query at every byte offset: always XDP_PASS, never an event, and exactly one
/// outcome counter, the one for the layer that was cut.
#[test]
fn truncation_at_every_offset_is_passed_and_counted() {
    let mut h = Harness::new();
    let msg = dns_query(77, "cut.example.com", 1);
    // (what, the whole frame, [(cut below this length, the counter it lands in)])
    type Kind = (&'static str, Vec<u8>, Vec<(usize, Counter)>);
    let kinds: Vec<Kind> = vec![
        (
            "ipv4/udp",
            ip_frame(client4(), server4(), UDP, &udp(1, 53, &msg)),
            vec![(34, BadIpv4), (42, BadL4), (usize::MAX, DnsTruncated)],
        ),
        (
            "ipv6/udp",
            ip_frame(client6(), server6(), UDP, &udp(1, 53, &msg)),
            vec![(54, BadIpv6), (62, BadL4), (usize::MAX, DnsTruncated)],
        ),
        (
            "ipv4/tcp",
            ip_frame(client4(), server4(), TCP, &tcp(1, 53, &tcp_dns(&msg))),
            vec![(34, BadIpv4), (54, BadL4), (usize::MAX, TcpNoQuestion)],
        ),
        (
            "qinq/ipv4/udp",
            ether(
                &[(TPID_8021AD, 5), (TPID_8021Q, 6)],
                ETH_IPV4,
                &ipv4(
                    v4("192.0.2.10"),
                    v4("198.51.100.53"),
                    UDP,
                    &[],
                    0,
                    &udp(1, 53, &msg),
                ),
            ),
            vec![
                (22, BadEthernet),
                (42, BadIpv4),
                (50, BadL4),
                (usize::MAX, DnsTruncated),
            ],
        ),
    ];
    for (what, full, bounds) in kinds {
        assert_eq!(
            h.run(&full).events.len(),
            1,
            "{what}: the whole packet is a query"
        );
        for len in 14..full.len() {
            let run = h.run(&full[..len]);
            assert_eq!(run.action, XDP_PASS, "{what} cut at {len}");
            assert!(run.events.is_empty(), "{what} cut at {len}: no event");
            let want = bounds.iter().find(|(end, _)| len < *end).expect("bound").1;
            let outcomes: Vec<_> = run.delta.iter().filter(|(c, _)| c.is_outcome()).collect();
            assert_eq!(outcomes, vec![&(want, 1)], "{what} cut at {len}");
        }
    }
}

#[test]
fn every_packet_ends_in_exactly_one_outcome() {
    let mut h = Harness::new();
    h.lists(&["192.0.2.0/25"], &["192.0.2.200"]);
    let mut frames = Vec::new();
    for i in 0..=255u8 {
        let src = IpAddr::V4(Ipv4Addr::new(192, 0, 2, i));
        frames.push(udp_query_frame(src, server4(), 1, i as u16, "c.example", 1));
        let mut f = udp_query_frame(src, server4(), 1, i as u16, "c.example", 1);
        f.truncate(14 + (i as usize % f.len().saturating_sub(14)));
        frames.push(f);
    }
    for f in &frames {
        let run = h.run(f);
        let outcomes: u64 = run
            .delta
            .iter()
            .filter(|(c, _)| c.is_outcome())
            .map(|&(_, d)| d)
            .sum();
        assert_eq!(outcomes, 1);
    }
    let t = h.total;
    let sum: u64 = Counter::ALL
        .iter()
        .filter(|c| c.is_outcome())
        .map(|&c| t.get(c))
        .sum();
    assert_eq!(t.packets, frames.len() as u64);
    assert_eq!(t.tcp_pipelined, 0, "no frame here holds a second message");
    assert_eq!(sum, t.packets);
    assert_eq!(t.dns_queries, t.events + t.allowlisted + t.ring_full);
    assert_eq!(t.allowlisted, 128);
    assert_eq!(t.blocked, 2);
}

/// The QNAME copy is exact for every wire length (1..=255), whether the packet ends right after
/// QCLASS or carries more bytes (an EDNS OPT record, as most resolvers send), and the record is
/// a short one (128 bytes) for names below 64 bytes and a full `Event` (320) from 64 on.
#[test]
fn names_of_every_length_are_copied_exactly() {
    let mut h = Harness::new();
    // No name has 2 wire bytes (the shortest non-root name is 1, 'a', 0).
    for total in (1..=255usize).filter(|&t| t != 2) {
        // Label lengths (each takes len + 1 bytes) filling total - 1 bytes before the root.
        let mut lens = Vec::new();
        let mut left = total - 1;
        while left > 64 {
            lens.push(63);
            left -= 64;
        }
        if left == 1 {
            // A lone byte cannot be a label: borrow one from the previous label.
            *lens.last_mut().expect("total >= 3") -= 1;
            left += 1;
        }
        if left > 0 {
            lens.push(left - 1);
        }
        let labels: Vec<String> = lens
            .iter()
            .enumerate()
            .map(|(k, &len)| {
                (0..len)
                    .map(|i| (b'a' + ((i + 7 * k) % 26) as u8) as char)
                    .collect()
            })
            .collect();
        let name = if labels.is_empty() {
            ".".to_owned()
        } else {
            labels.join(".")
        };
        let wire = wire_name(&name);
        assert_eq!(wire.len(), total, "test name of {total} wire bytes");
        for trailing in [0usize, 11] {
            let mut msg = dns_message(DnsHeader::query(1), &question(&wire, 1, 1));
            msg.extend(std::iter::repeat_n(0u8, trailing));
            let run = h.run(&ip_frame(client4(), server4(), UDP, &udp(1, 53, &msg)));
            assert_eq!(run.events.len(), 1, "{total} bytes, {trailing} trailing");
            assert_eq!(
                run.events[0].name, name,
                "{total} bytes, {trailing} trailing"
            );
            let want_len = if total < event::SHORT_QNAME_LEN {
                event::SHORT_RECORD_LEN
            } else {
                size_of::<sensor_common::Event>()
            };
            assert_eq!(
                run.record_lens,
                [want_len],
                "{total} bytes, {trailing} trailing"
            );
        }
    }
}

// Regression cases for what the kernel fuzz run (tests/kernel_fuzz.rs) found.

#[test]
fn ipv6_extension_header_cut_short_is_bad_ipv6() {
    let mut h = Harness::new();
    let seg = udp(1111, 53, &dns_query(9, "cut.example", 1));
    for exts in [vec![Ext::hop_by_hop()], vec![Ext::fragment()]] {
        let full = ether(
            &[],
            ETH_IPV6,
            &ipv6(v6("2001:db8::10"), v6("2001:db8::53"), UDP, &exts, &seg),
        );
        // Two to seven of the header's eight bytes: the program read two, the rest is missing
        // (was bad_l4, or fragment for a fragment header).
        for len in 14 + 40 + 2..14 + 40 + 8 {
            let run = h.run(&full[..len]);
            assert_eq!(run.action, XDP_PASS);
            assert_delta(&run, &[(Packets, 1), (Ipv6, 1), (BadIpv6, 1)]);
        }
    }
}

#[test]
fn ipv6_fragment_header_ends_the_walk() {
    let mut h = Harness::new();
    // A non-first fragment whose next header is a routing header: its data is not a header
    // (the frame ending there was bad_ipv6).
    let mut f = ether(
        &[],
        ETH_IPV6,
        &ipv6(
            v6("2001:db8::10"),
            v6("2001:db8::53"),
            43,
            &[Ext::fragment()],
            &[],
        ),
    );
    let frag = 14 + 40;
    f[frag + 2..frag + 4].copy_from_slice(&(0x100u16 << 3).to_be_bytes());
    let run = h.run(&f);
    assert_eq!(run.action, XDP_PASS);
    assert_delta(&run, &[(Packets, 1), (Ipv6, 1), (Fragment, 1)]);
}

#[test]
fn tcp_options_cut_short_are_bad_l4() {
    let mut h = Harness::new();
    // Data offset 15 (a 60-byte header) with 24 bytes of it in the frame (was tcp_no_question).
    let mut seg = tcp(4000, 53, &[]);
    seg[12] = 15 << 4;
    seg.extend_from_slice(&[1, 1, 1, 1]);
    let run = h.run(&ip_frame(client4(), server4(), TCP, &seg));
    assert_eq!(run.action, XDP_PASS);
    assert_delta(&run, &[(Packets, 1), (Ipv4, 1), (BadL4, 1)]);
}

/// The program's diagnostics (aya-log, `sensor_kernel::klog`) are for broken maps only: no
/// packet writes a log record, whatever its outcome, a full event ring included (the one outcome
/// load brings about).
#[test]
fn no_packet_writes_a_log_record() {
    let mut h = Harness::new();
    let mut logs = aya::maps::RingBuf::try_from(
        h.ebpf
            .take_map(sensor_kernel::klog::LOG_MAP)
            .expect("the object has aya-log's ring buffer"),
    )
    .expect("a ring buffer");
    h.lists(&["192.0.2.0/25"], &["192.0.2.200"]);
    let mut frames = Vec::new();
    for i in 0..=255u8 {
        let src = IpAddr::V4(Ipv4Addr::new(192, 0, 2, i));
        frames.push(udp_query_frame(src, server4(), 1, i as u16, "c.example", 1));
        let mut f = udp_query_frame(src, server4(), 1, i as u16, "c.example", 1);
        f.truncate(14 + (i as usize % f.len().saturating_sub(14)));
        frames.push(f);
    }
    for f in &frames {
        h.run(f);
    }
    // Fill the event ring without reading it: every query past its capacity is ring_full.
    let query = udp_query_frame(client6(), server6(), 1, 1, "full.example", 1);
    let per_run = sensor_common::RING_BYTES / 128 + 1_000;
    loader::program(&mut h.ebpf)
        .test_run(TestRunOptions {
            data_in: Some(&query),
            repeat: per_run,
            ..TestRunOptions::new()
        })
        .expect("test_run");
    let c = h.maps.counters().expect("counters");
    assert!(c.ring_full >= 1_000, "the ring filled: {}", c.ring_full);
    assert!(c.packets > u64::from(per_run));
    assert!(logs.next().is_none(), "no log record");
}

/// The IP total length, the IPv6 payload length and the UDP length bound the DNS message:
/// Ethernet padding after a query changes nothing, and a question that reaches past any of the
/// three lengths (into padding or a trailer) is not parsed as DNS.
#[test]
fn bytes_past_the_ip_and_udp_lengths_are_never_dns() {
    let mut h = Harness::new();
    let want = || {
        expected(
            client4(),
            server4(),
            40000,
            7,
            "pad.example",
            1,
            Transport::Udp,
        )
    };
    let frame = udp_query_frame(client4(), server4(), 40000, 7, "pad.example", 1);
    let mut padded = frame.clone();
    padded.extend_from_slice(&[0u8; 24]);
    let run = h.run(&padded);
    assert_event(&run, want());

    // Offsets in the untagged IPv4 frame: IP header at 14, UDP at 34, DNS at 42.
    let short = 3; // bytes of QTYPE/QCLASS left outside the lengths
    let dns_len = frame.len() - 42;
    let mut udp_short = frame.clone();
    udp_short[38..40].copy_from_slice(&((8 + dns_len - short) as u16).to_be_bytes());
    let run = h.run(&udp_short);
    assert_eq!(run.action, XDP_PASS);
    assert!(run.events.is_empty());
    assert_delta(&run, &[(Packets, 1), (Ipv4, 1), (DnsTruncated, 1)]);

    let mut ip_short = frame.clone();
    ip_short[16..18].copy_from_slice(&((20 + 8 + dns_len - short) as u16).to_be_bytes());
    let run = h.run(&ip_short);
    assert!(run.events.is_empty());
    assert_delta(&run, &[(Packets, 1), (Ipv4, 1), (DnsTruncated, 1)]);

    // A UDP length below its own header is malformed.
    let mut udp_bad = frame.clone();
    udp_bad[38..40].copy_from_slice(&4u16.to_be_bytes());
    let run = h.run(&udp_bad);
    assert_delta(&run, &[(Packets, 1), (Ipv4, 1), (BadL4, 1)]);
    // So is an IPv4 total length below its header.
    let mut ip_bad = frame.clone();
    ip_bad[16..18].copy_from_slice(&10u16.to_be_bytes());
    let run = h.run(&ip_bad);
    assert_delta(&run, &[(Packets, 1), (Ipv4, 1), (BadIpv4, 1)]);

    // IPv6: payload length at 14 + 4.
    let frame6 = udp_query_frame(client6(), server6(), 40000, 7, "pad.example", 1);
    let mut padded6 = frame6.clone();
    padded6.extend_from_slice(&[0u8; 24]);
    let run = h.run(&padded6);
    assert_eq!(run.events.len(), 1, "{:?}", run.delta);
    let mut v6_short = frame6.clone();
    let payload = frame6.len() - 54;
    v6_short[18..20].copy_from_slice(&((payload - short) as u16).to_be_bytes());
    let run = h.run(&v6_short);
    assert!(run.events.is_empty());
    assert_delta(&run, &[(Packets, 1), (Ipv6, 1), (DnsTruncated, 1)]);
}

/// A TCP segment is a query only when its length prefix fits what the segment carries and
/// covers the question: a DNS message sent without its prefix (the prefix went in a segment
/// of its own) is not read with its ID as the length.
#[test]
fn a_tcp_length_prefix_that_does_not_fit_is_not_a_query() {
    let mut h = Harness::new();
    let msg = dns_query(0x1234, "split.example", 1);
    // The prefix alone, then the message alone: neither is a query.
    let prefix = (msg.len() as u16).to_be_bytes();
    let run = h.run(&ip_frame(
        client4(),
        server4(),
        TCP,
        &tcp(45000, 53, &prefix),
    ));
    assert_delta(&run, &[(Packets, 1), (Ipv4, 1), (TcpNoQuestion, 1)]);
    let run = h.run(&ip_frame(client4(), server4(), TCP, &tcp(45000, 53, &msg)));
    assert!(run.events.is_empty());
    assert_delta(&run, &[(Packets, 1), (Ipv4, 1), (TcpNoQuestion, 1)]);
    // A prefix longer than the segment (the message continues in the next one).
    let mut long = tcp_dns(&msg);
    long[..2].copy_from_slice(&((msg.len() + 100) as u16).to_be_bytes());
    let run = h.run(&ip_frame(client4(), server4(), TCP, &tcp(45000, 53, &long)));
    assert_delta(&run, &[(Packets, 1), (Ipv4, 1), (TcpNoQuestion, 1)]);
    // A prefix shorter than the question: no query, and what follows the 14 bytes it covers
    // is no whole message either.
    let mut cut = tcp_dns(&msg);
    cut[..2].copy_from_slice(&14u16.to_be_bytes());
    let run = h.run(&ip_frame(client4(), server4(), TCP, &tcp(45000, 53, &cut)));
    assert!(run.events.is_empty());
    assert_delta(
        &run,
        &[
            (Packets, 1),
            (Ipv4, 1),
            (TcpNoQuestion, 1),
            (TcpPipelineSplit, 1),
        ],
    );
    // Two messages in one segment: both are reported (see the pipelining tests).
    let mut two = tcp_dns(&msg);
    two.extend_from_slice(&tcp_dns(&dns_query(0x1235, "second.example", 1)));
    let run = h.run(&ip_frame(client4(), server4(), TCP, &tcp(45000, 53, &two)));
    let got: Vec<(u16, &str)> = run
        .events
        .iter()
        .map(|q| (q.dns_id, q.name.as_str()))
        .collect();
    assert_eq!(got, [(0x1234, "split.example"), (0x1235, "second.example")]);
}

/// An IPv6 atomic fragment (a Fragment header with offset 0 and M = 0, RFC 6946) is a whole
/// packet: parsed like any other. A real first fragment (M = 1) still is not.
#[test]
fn an_ipv6_atomic_fragment_is_parsed() {
    let mut h = Harness::new();
    let seg = udp(1111, 53, &dns_query(9, "atomic.example", 28));
    let atomic = Ext {
        kind: 44,
        body: vec![0, 0, 0xde, 0xad, 0xbe, 0xef],
    };
    let run = h.run(&ether(
        &[],
        ETH_IPV6,
        &ipv6(v6("2001:db8::10"), v6("2001:db8::53"), UDP, &[atomic], &seg),
    ));
    assert_event(
        &run,
        expected(
            client6(),
            server6(),
            1111,
            9,
            "atomic.example",
            28,
            Transport::Udp,
        ),
    );
    let run = h.run(&ether(
        &[],
        ETH_IPV6,
        &ipv6(
            v6("2001:db8::10"),
            v6("2001:db8::53"),
            UDP,
            &[Ext::fragment()],
            &seg,
        ),
    ));
    assert_delta(&run, &[(Packets, 1), (Ipv6, 1), (Fragment, 1)]);
}

/// The counter changes of one response in `family`: `packets`, the family, `dns_responses`,
/// and the `rest` (its outcome and any walk counter), once each.
fn assert_response_delta(run: &Run, family: Counter, rest: &[Counter]) {
    let mut want = vec![(Packets, 1), (family, 1), (DnsResponses, 1)];
    want.extend(rest.iter().map(|&c| (c, 1)));
    assert_delta(run, &want);
}

/// A response from `server:53` to `client:port` (UDP) carrying `msg`.
fn response_frame(server: IpAddr, client: IpAddr, port: u16, msg: &[u8]) -> Vec<u8> {
    ip_frame(server, client, UDP, &udp(53, port, msg))
}

fn a(addr: &str) -> Vec<u8> {
    v4(addr).octets().to_vec()
}

fn aaaa(addr: &str) -> Vec<u8> {
    v6(addr).octets().to_vec()
}

#[test]
fn a_response_is_reported_with_its_flags_addresses_ttls_and_cname_chain() {
    let mut h = Harness::new();
    // www.example.com CNAME edge.cdn.example; edge.cdn.example A x4, with pointers.
    let mut answers = rr(&QNAME_PTR, 5, 3600, &wire_name("edge.cdn.example"));
    let edge = [
        0xc0,
        (12 + wire_name("www.example.com").len() + 4 + 12) as u8,
    ];
    let addrs = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"];
    for (i, ip) in addrs.iter().enumerate() {
        answers.extend(rr(&edge, 1, 60 + i as u32, &a(ip)));
    }
    let msg = dns_response(0x1234, 0x8180, "www.example.com", 1, 5, &answers);
    let run = h.run(&response_frame(server4(), client4(), 40000, &msg));
    assert_eq!(run.action, XDP_PASS);
    assert!(run.events.is_empty(), "no query record");
    assert_response_delta(&run, Ipv4, &[ResponseEvents]);
    assert_eq!(run.responses.len(), 1);
    let r = &run.responses[0];
    // The header as the packet carried it: the server is the source.
    assert_eq!(
        (
            r.question.src,
            r.question.src_port,
            r.question.dst,
            r.question.dst_port
        ),
        (server4(), 53, client4(), 40000)
    );
    assert_eq!((r.question.dns_id, r.question.qtype), (0x1234, 1));
    assert_eq!(r.question.name, "www.example.com");
    assert_eq!((r.flags, r.rcode(), r.ancount), (0x8180, 0, 5));
    assert!(r.recursion_available() && !r.authoritative() && !r.truncated());
    assert_eq!(r.walk, Walk::Complete);
    assert_eq!(r.kernel_cnames, 1);
    let want: Vec<(IpAddr, u32)> = addrs
        .iter()
        .enumerate()
        .map(|(i, ip)| (IpAddr::V4(v4(ip)), 60 + i as u32))
        .collect();
    assert_eq!(r.kernel_addrs, want);
    // The message bytes went along: userspace decodes the same answers, the chain included.
    assert_eq!(usize::from(r.msg_len), msg.len());
    assert_eq!(usize::from(r.copied), msg.len());
    assert!(r.answers_complete);
    assert_eq!(r.answers[0].data, "edge.cdn.example");
    assert_eq!(r.answers[1].name, "edge.cdn.example");
    let decoded: Vec<(IpAddr, u32)> = r
        .answers
        .iter()
        .filter_map(|x| x.ip.map(|ip| (ip, x.ttl)))
        .collect();
    assert_eq!(decoded, want);
    // The smallest record class that holds the message.
    assert_eq!(run.record_lens, [256 + 128]);
}

#[test]
fn an_ipv6_nxdomain_and_aaaa_answers_are_reported() {
    let mut h = Harness::new();
    let msg = dns_response(7, 0x8583, "gone.example", 28, 0, &[]);
    let run = h.run(&response_frame(server6(), client6(), 5555, &msg));
    assert_response_delta(&run, Ipv6, &[ResponseEvents]);
    let r = &run.responses[0];
    assert_eq!((r.rcode(), r.authoritative()), (3, true));
    assert!(r.kernel_addrs.is_empty() && r.answers.is_empty() && r.answers_complete);

    let mut answers = rr(&QNAME_PTR, 28, 30, &aaaa("2001:db8::1"));
    answers.extend(rr(&QNAME_PTR, 1, 31, &a("192.0.2.9")));
    answers.extend(rr(&QNAME_PTR, 28, 32, &aaaa("2001:db8::2")));
    let msg = dns_response(8, 0x8180, "dual.example", 28, 3, &answers);
    let run = h.run(&response_frame(server6(), client6(), 5555, &msg));
    let r = &run.responses[0];
    assert_eq!(
        r.kernel_addrs,
        [
            (IpAddr::V6(v6("2001:db8::1")), 30),
            (IpAddr::V4(v4("192.0.2.9")), 31),
            (IpAddr::V6(v6("2001:db8::2")), 32)
        ]
    );
}

#[test]
fn the_walk_is_bounded_and_stops_at_bad_names_and_cuts_counted_by_reason() {
    let mut h = Harness::new();
    // 20 A records: 8 addresses kept, 16 records walked, the rest left (counted).
    let mut answers = Vec::new();
    for i in 0..20u8 {
        answers.extend(rr(&QNAME_PTR, 1, 5, &[10, 0, 0, i]));
    }
    let msg = dns_response(1, 0x8180, "many.example", 1, 20, &answers);
    let run = h.run(&response_frame(server4(), client4(), 1000, &msg));
    assert_response_delta(&run, Ipv4, &[ResponseEvents, ResponseRrLimit]);
    let r = &run.responses[0];
    assert_eq!(r.walk, Walk::Limit);
    assert_eq!(r.kernel_addrs.len(), 8);
    assert_eq!(r.kernel_addrs[7].0, IpAddr::V4(v4("10.0.0.7")));
    // Userspace still decodes all twenty from the message.
    assert_eq!(r.answers.len(), 20);

    // A pointer that points forward (to itself): the walk stops there, the answer before it
    // is kept.
    let mut answers = rr(&QNAME_PTR, 1, 5, &a("192.0.2.1"));
    let here = 12 + wire_name("loop.example").len() + 4 + answers.len();
    answers.extend(rr(&[0xc0, here as u8], 1, 5, &a("192.0.2.2")));
    let msg = dns_response(1, 0x8180, "loop.example", 1, 2, &answers);
    let run = h.run(&response_frame(server4(), client4(), 1000, &msg));
    assert_response_delta(&run, Ipv4, &[ResponseEvents, ResponseBadName]);
    let r = &run.responses[0];
    assert_eq!(r.walk, Walk::BadName);
    assert_eq!(r.kernel_addrs, [(IpAddr::V4(v4("192.0.2.1")), 5)]);

    // ANCOUNT 3 with two records: truncated after the second.
    let mut answers = rr(&QNAME_PTR, 1, 5, &a("192.0.2.1"));
    answers.extend(rr(&QNAME_PTR, 1, 5, &a("192.0.2.2")));
    let msg = dns_response(1, 0x8180, "cut.example", 1, 3, &answers);
    let run = h.run(&response_frame(server4(), client4(), 1000, &msg));
    assert_response_delta(&run, Ipv4, &[ResponseEvents, ResponseTruncated]);
    assert_eq!(run.responses[0].walk, Walk::Truncated);
    assert_eq!(run.responses[0].kernel_addrs.len(), 2);
    assert!(!run.responses[0].answers_complete);

    // An uncompressed owner name is skipped label by label.
    let answers = rr(&wire_name("plain.example"), 1, 9, &a("192.0.2.77"));
    let msg = dns_response(1, 0x8180, "plain.example", 1, 1, &answers);
    let run = h.run(&response_frame(server4(), client4(), 1000, &msg));
    assert_eq!(run.responses[0].walk, Walk::Complete);
    assert_eq!(
        run.responses[0].kernel_addrs,
        [(IpAddr::V4(v4("192.0.2.77")), 9)]
    );

    // Bytes past the UDP length are not the message: an answer there is not read (the
    // message claims one answer and ends: truncated).
    let answers = rr(&QNAME_PTR, 1, 9, &a("192.0.2.5"));
    let msg = dns_response(1, 0x8180, "pad.example", 1, 1, &[]);
    let mut seg = udp(53, 1000, &msg);
    seg.extend_from_slice(&answers);
    let run = h.run(&ip_frame(server4(), client4(), UDP, &seg));
    assert_eq!(run.responses[0].walk, Walk::Truncated);
    assert!(run.responses[0].kernel_addrs.is_empty());
    assert_eq!(usize::from(run.responses[0].msg_len), msg.len());
    assert!(run.responses[0].answers.is_empty());
}

#[test]
fn record_classes_follow_the_message_length_and_long_messages_are_cut_at_1024() {
    let mut h = Harness::new();
    for (records, want_len) in [(2usize, 256 + 128), (20, 256 + 512), (80, 256 + 1024)] {
        let mut answers = Vec::new();
        for i in 0..records {
            answers.extend(rr(&QNAME_PTR, 1, 1, &[10, 1, (i >> 8) as u8, i as u8]));
        }
        let msg = dns_response(1, 0x8180, "big.example", 1, records as u16, &answers);
        let run = h.run(&response_frame(server4(), client4(), 1000, &msg));
        assert_eq!(run.record_lens, [want_len], "{records} records");
        let r = &run.responses[0];
        assert_eq!(usize::from(r.msg_len), msg.len());
        assert_eq!(usize::from(r.copied), msg.len().min(1024));
        assert_eq!(r.answers_complete, msg.len() <= 1024, "{records} records");
    }
}

#[test]
fn responses_to_allowlisted_clients_or_when_off_make_no_record_and_tcp_responses_do() {
    let mut h = Harness::new();
    h.lists(&["192.0.2.10/32"], &[]);
    let msg = dns_response(
        1,
        0x8180,
        "x.example",
        1,
        1,
        &rr(&QNAME_PTR, 1, 1, &a("192.0.2.1")),
    );
    let run = h.run(&response_frame(server4(), client4(), 1000, &msg));
    assert!(run.responses.is_empty());
    assert_delta(
        &run,
        &[(Packets, 1), (Ipv4, 1), (DnsResponses, 1), (Allowlisted, 1)],
    );
    let run = h.run(&ip_frame(
        server4(),
        client4(),
        TCP,
        &tcp(53, 1000, &tcp_dns(&msg)),
    ));
    assert!(run.responses.is_empty(), "allowlisted over TCP too");

    let run = h.run(&ip_frame(
        server6(),
        client6(),
        TCP,
        &tcp(53, 1000, &tcp_dns(&msg)),
    ));
    assert_response_delta(&run, Ipv6, &[ResponseEvents]);
    let r = &run.responses[0];
    assert_eq!(r.question.transport, Transport::Tcp);
    assert_eq!(r.kernel_addrs, [(IpAddr::V4(v4("192.0.2.1")), 1)]);

    let mut off = Harness::with(ProgramSettings {
        responses: false,
        ..ProgramSettings::default()
    });
    let run = off.run(&response_frame(server4(), client4(), 1000, &msg));
    assert!(run.responses.is_empty());
    assert_response_delta(&run, Ipv4, &[ResponsesOff]);
}

/// Blocking by resolution on, with the lifetime bounds `(min, max)` seconds, and its maps.
fn resolved_harness(bounds: (u32, u32)) -> (Harness, ResolvedMaps) {
    let mut h = Harness::with(ProgramSettings {
        resolved: Some(bounds),
        ..ProgramSettings::default()
    });
    let maps = ResolvedMaps::take(&mut h.ebpf).expect("resolved maps");
    (h, maps)
}

fn listing(name: &str, exact: bool) -> Listing {
    Listing {
        name: name.into(),
        expires_unix: 0,
        exact,
        source: sensor_common::resolved::NAME_FROM_CONFIG,
    }
}

/// A packet from the client to `dst` (UDP to port 443): what a connection's first packet is
/// to the program.
fn to(dst: IpAddr) -> Vec<u8> {
    let client = if dst.is_ipv4() { client4() } else { client6() };
    ip_frame(client, dst, UDP, &udp(40001, 443, b"hello"))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn a_listed_names_answers_are_blocked_from_the_next_packet_protected_ones_never() {
    let (mut h, mut r) = resolved_harness((2, 3600));
    r.set_names(&[listing("evil.example", false)]).unwrap();
    r.set_protected(&["192.0.2.99/32".parse().unwrap()])
        .unwrap();
    let c2 = IpAddr::V4(v4("192.0.2.1"));
    let c2v6 = IpAddr::V6(v6("2001:db8::1"));
    let shared = IpAddr::V4(v4("192.0.2.99"));
    let before = h.run(&to(c2));
    assert_eq!(before.action, XDP_PASS, "nothing blocked before the answer");
    assert_delta(&before, &[(Packets, 1), (Ipv4, 1), (NotDns, 1)]);

    // A subdomain, in mixed case (0x20 encoding), through a CNAME, three addresses.
    let mut answers = rr(&QNAME_PTR, 5, 30, &wire_name("cdn.elsewhere.example"));
    let target = [
        0xc0,
        (12 + wire_name("Www.EVIL.example").len() + 4 + 12) as u8,
    ];
    answers.extend(rr(&target, 1, 1, &a("192.0.2.1")));
    answers.extend(rr(&target, 1, 600, &a("192.0.2.99")));
    answers.extend(rr(&target, 28, 100_000, &aaaa("2001:db8::1")));
    let msg = dns_response(7, 0x8180, "Www.EVIL.example", 1, 4, &answers);
    let t0 = unix_now();
    let run = h.run(&response_frame(server4(), client4(), 40000, &msg));
    let t1 = unix_now();
    assert_eq!(run.action, XDP_PASS, "the response itself passes");
    assert_eq!(run.responses.len(), 1, "and is reported");
    assert_delta(
        &run,
        &[
            (Packets, 1),
            (Ipv4, 1),
            (DnsResponses, 1),
            (ResponseEvents, 1),
            (ResolvedNames, 1),
            (ResolvedBlocks, 2),
            (ResolvedProtected, 1),
        ],
    );
    let blocked = r.blocked().unwrap();
    assert_eq!(blocked.len(), 2, "{blocked:?}");
    for b in &blocked {
        assert_eq!(b.name, "evil.example", "the reason is the listed name");
        assert_eq!(b.client, client4());
        assert_eq!((b.packets, b.responses), (0, 1));
        assert!((t0..=t1).contains(&b.set_unix));
    }
    let (v4_entry, v6_entry) = (&blocked[0], &blocked[1]);
    assert_eq!((v4_entry.address, v4_entry.ttl), (c2, 1));
    assert!(
        (t0 + 2..=t1 + 2).contains(&v4_entry.expires_unix),
        "TTL 1 raised to 2"
    );
    assert_eq!((v6_entry.address, v6_entry.ttl), (c2v6, 100_000));
    assert!(
        (t0 + 3600..=t1 + 3600).contains(&v6_entry.expires_unix),
        "cut to 3600"
    );

    for (dst, action) in [(c2, XDP_DROP), (c2v6, XDP_DROP), (shared, XDP_PASS)] {
        let run = h.run(&to(dst));
        assert_eq!(run.action, action, "{dst}");
        let family = if dst.is_ipv4() { Ipv4 } else { Ipv6 };
        let outcome = if action == XDP_DROP {
            DestBlocked
        } else {
            NotDns
        };
        assert_delta(&run, &[(Packets, 1), (family, 1), (outcome, 1)]);
    }
    let counts: Vec<u64> = r.blocked().unwrap().iter().map(|b| b.packets).collect();
    assert_eq!(counts, [1, 1], "counted per entry");
    let names = r.names().unwrap();
    assert_eq!(names.len(), 1);
    assert_eq!(
        (names[0].name.as_str(), names[0].expires_unix, names[0].hits),
        ("evil.example", 0, 1)
    );
    assert_eq!(names[0].sources, ["config"]);

    // The operator's unblock takes the address out at once.
    let removed = r.unblock(&"2001:db8::/64".parse().unwrap()).unwrap();
    assert_eq!(removed.destinations, 1);
    assert_eq!(h.run(&to(c2v6)).action, XDP_PASS);

    // The entry lapses after its (raised) TTL on its own, and the sweep removes it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let run = h.run(&to(c2));
        if run.action == XDP_PASS {
            assert_delta(
                &run,
                &[(Packets, 1), (Ipv4, 1), (DestExpired, 1), (NotDns, 1)],
            );
            assert!(unix_now() >= v4_entry.expires_unix);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never lapsed");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(r.sweep(unix_now()).unwrap().destinations, 1);
    assert!(r.blocked().unwrap().is_empty());
}

#[test]
fn only_listed_names_and_their_subdomains_block_exact_entries_only_themselves() {
    let (mut h, mut r) = resolved_harness((300, 3600));
    r.set_names(&[listing("evil.example", false), listing("exact.test", true)])
        .unwrap();
    let answer = |name: &str, ip: &str| {
        let msg = dns_response(9, 0x8180, name, 1, 1, &rr(&QNAME_PTR, 1, 60, &a(ip)));
        response_frame(server4(), client4(), 40000, &msg)
    };
    let cases = [
        ("evil.example", "198.51.100.1", true),
        ("a.b.c.evil.example", "198.51.100.2", true),
        ("exact.test", "198.51.100.3", true),
        ("sub.exact.test", "198.51.100.4", false),
        ("notevil.example", "198.51.100.5", false),
        ("evil.example.org", "198.51.100.6", false),
        ("example", "198.51.100.7", false),
        ("evil", "198.51.100.8", false),
    ];
    for (name, ip, blocks) in cases {
        let run = h.run(&answer(name, ip));
        let hit = run.delta.contains(&(ResolvedBlocks, 1));
        assert_eq!(hit, blocks, "{name}: {:?}", run.delta);
        let dst = IpAddr::V4(v4(ip));
        let want = if blocks { XDP_DROP } else { XDP_PASS };
        assert_eq!(h.run(&to(dst)).action, want, "{name} -> {ip}");
    }
    // Unlisting stops new blocks (the blocked addresses stay until they lapse or are unblocked).
    r.set_names(&[]).unwrap();
    let run = h.run(&answer("evil.example", "198.51.100.9"));
    assert!(!run.delta.iter().any(|(c, _)| *c == ResolvedNames));
    assert_eq!(h.run(&to(IpAddr::V4(v4("198.51.100.9")))).action, XDP_PASS);
    assert_eq!(h.run(&to(IpAddr::V4(v4("198.51.100.1")))).action, XDP_DROP);
}

#[test]
fn with_blocking_by_resolution_off_nothing_is_looked_at() {
    let mut h = Harness::new();
    let mut r = ResolvedMaps::take(&mut h.ebpf).expect("resolved maps");
    r.set_names(&[listing("evil.example", false)]).unwrap();
    let msg = dns_response(
        9,
        0x8180,
        "evil.example",
        1,
        1,
        &rr(&QNAME_PTR, 1, 60, &a("198.51.100.1")),
    );
    let run = h.run(&response_frame(server4(), client4(), 40000, &msg));
    assert_response_delta(&run, Ipv4, &[ResponseEvents]);
    assert!(r.blocked().unwrap().is_empty());
}

/// Blocking by resolution on with the NXDOMAIN rewrite (`rewrite = "nxdomain"`), with
/// `evil.example` listed and 192.0.2.99 protected; `egress` loads the TC program too.
fn rewrite_harness(egress: bool) -> (Harness, ResolvedMaps) {
    let mut h = Harness::with(ProgramSettings {
        resolved: Some((300, 3600)),
        rewrite_nxdomain: true,
        egress,
        ..ProgramSettings::default()
    });
    let mut r = ResolvedMaps::take(&mut h.ebpf).expect("resolved maps");
    r.set_names(&[listing("evil.example", false)]).unwrap();
    r.set_protected(&["192.0.2.99/32".parse().unwrap()])
        .unwrap();
    (h, r)
}

/// Where the IP header and the UDP header of an untagged frame start.
fn ip_udp_offsets(frame: &[u8]) -> (usize, usize) {
    if frame[12..14] == ETH_IPV4.to_be_bytes() {
        (14, 14 + usize::from(frame[14] & 0x0f) * 4)
    } else {
        (14, 14 + 40)
    }
}

/// The frame with a valid IPv4 header checksum and a valid UDP checksum (or, with
/// `udp_csum = false` over IPv4, none: zero), computed by etherparse, as a server sends it.
fn checksummed(mut frame: Vec<u8>, udp_csum: bool) -> Vec<u8> {
    let (ip, udp) = ip_udp_offsets(&frame);
    let uh = etherparse::UdpHeaderSlice::from_slice(&frame[udp..])
        .unwrap()
        .to_header();
    let payload = frame[udp + 8..].to_vec();
    let c = if frame[12..14] == ETH_IPV4.to_be_bytes() {
        let mut ih = etherparse::Ipv4HeaderSlice::from_slice(&frame[ip..])
            .unwrap()
            .to_header();
        ih.header_checksum = ih.calc_header_checksum();
        frame[ip + 10..ip + 12].copy_from_slice(&ih.header_checksum.to_be_bytes());
        if udp_csum {
            uh.calc_checksum_ipv4(&ih, &payload).unwrap()
        } else {
            0
        }
    } else {
        let ih = etherparse::Ipv6HeaderSlice::from_slice(&frame[ip..])
            .unwrap()
            .to_header();
        uh.calc_checksum_ipv6(&ih, &payload).unwrap()
    };
    frame[udp + 6..udp + 8].copy_from_slice(&c.to_be_bytes());
    frame
}

/// Asserts that `out` is `input` (a UDP response whose question is `qlen` bytes) rewritten
/// into NXDOMAIN: cut after the question, the question intact, RCODE 3 with the other flags
/// kept (TC cleared), no records, and the IP length, the IPv4 header checksum, the UDP length
/// and the UDP checksum right (recomputed here by etherparse). A zero UDP checksum over IPv4
/// stays zero.
fn assert_nxdomain(input: &[u8], out: &[u8], qlen: usize) {
    let (ip, udp) = ip_udp_offsets(input);
    let dns = udp + 8;
    assert_eq!(out.len(), dns + 12 + qlen, "cut right after the question");
    assert_eq!(
        out[..dns],
        input[..dns]
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                // Everything before the DNS header is the input's but the lengths and checksums.
                let changed = if input[12..14] == ETH_IPV4.to_be_bytes() {
                    (ip + 2..ip + 4).contains(&i) || (ip + 10..ip + 12).contains(&i)
                } else {
                    (ip + 4..ip + 6).contains(&i)
                } || (udp + 4..udp + 8).contains(&i);
                if changed { out[i] } else { b }
            })
            .collect::<Vec<u8>>()[..],
        "addresses, ports and other header fields kept"
    );
    let payload = &out[dns..];
    let uh = etherparse::UdpHeaderSlice::from_slice(&out[udp..])
        .unwrap()
        .to_header();
    assert_eq!(usize::from(uh.length), out.len() - udp, "UDP length");
    if input[12..14] == ETH_IPV4.to_be_bytes() {
        let ih = etherparse::Ipv4HeaderSlice::from_slice(&out[ip..])
            .unwrap()
            .to_header();
        assert_eq!(
            usize::from(ih.total_len),
            out.len() - ip,
            "IPv4 total length"
        );
        assert_eq!(
            ih.header_checksum,
            ih.calc_header_checksum(),
            "IPv4 header checksum"
        );
        if input[udp + 6..udp + 8] == [0, 0] {
            assert_eq!(uh.checksum, 0, "no UDP checksum stays none");
        } else {
            assert_eq!(
                uh.checksum,
                uh.calc_checksum_ipv4(&ih, payload).unwrap(),
                "UDP checksum"
            );
        }
    } else {
        let ih = etherparse::Ipv6HeaderSlice::from_slice(&out[ip..])
            .unwrap()
            .to_header();
        assert_eq!(
            usize::from(ih.payload_length),
            out.len() - ip - 40,
            "IPv6 payload length"
        );
        assert_eq!(
            uh.checksum,
            uh.calc_checksum_ipv6(&ih, payload).unwrap(),
            "UDP checksum"
        );
    }
    let flags_in = u16::from_be_bytes([input[dns + 2], input[dns + 3]]);
    let flags = u16::from_be_bytes([out[dns + 2], out[dns + 3]]);
    assert_eq!(
        flags,
        (flags_in & !0x020f) | 3,
        "RCODE 3, TC clear, other flags kept"
    );
    assert_eq!(out[dns..dns + 2], input[dns..dns + 2], "DNS id");
    assert_eq!(
        out[dns + 4..dns + 12],
        [0, 1, 0, 0, 0, 0, 0, 0],
        "QDCOUNT 1, no records"
    );
    assert_eq!(
        out[dns + 12..],
        input[dns + 12..dns + 12 + qlen],
        "the question"
    );
}

#[test]
fn a_listed_names_udp_response_is_rewritten_into_nxdomain_after_it_is_recorded_and_blocked() {
    let (mut h, r) = rewrite_harness(false);
    let qname = "Www.EVIL.example";
    let qlen = wire_name(qname).len() + 4;
    let mut answers = Vec::new();
    for ip in [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
    ] {
        answers.extend(rr(&QNAME_PTR, 1, 600, &a(ip)));
    }
    // An authority and an EDNS OPT record too: both go.
    let mut tail = rr(&QNAME_PTR, 2, 600, &wire_name("ns.evil.example"));
    tail.extend([0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    let mut msg = dns_response(7, 0x8580, qname, 1, 4, &answers);
    msg[8..12].copy_from_slice(&[0, 1, 0, 1]);
    msg.extend(&tail);

    // IPv4 with a UDP checksum, IPv4 without one, IPv6 (a TC flag, which is cleared).
    let cases = [
        (
            checksummed(response_frame(server4(), client4(), 40000, &msg), true),
            Ipv4,
        ),
        (
            checksummed(response_frame(server4(), client4(), 40001, &msg), false),
            Ipv4,
        ),
        (
            checksummed(
                response_frame(server6(), client6(), 40002, &{
                    let mut m = msg.clone();
                    m[2] |= 0x02;
                    m
                }),
                true,
            ),
            Ipv6,
        ),
    ];
    for (frame, family) in &cases {
        let run = h.run(frame);
        assert_eq!(run.action, XDP_PASS, "the response passes, rewritten");
        assert_nxdomain(frame, &run.data_out, qlen);
        assert_delta(
            &run,
            &[
                (Packets, 1),
                (*family, 1),
                (DnsResponses, 1),
                (ResponseEvents, 1),
                (ResolvedNames, 1),
                (ResolvedBlocks, 4),
                (ResolvedRewritten, 1),
            ],
        );
        // The record describes the response as the server sent it.
        let rec = &run.responses[0];
        assert_eq!(rec.rcode(), 0, "{rec:?}");
        assert_eq!(rec.kernel_addrs.len(), 4);
    }
    // And the addresses are blocked: a client that ignores the NXDOMAIN still cannot connect.
    assert_eq!(r.blocked().unwrap().len(), 4);
    assert_eq!(h.run(&to(IpAddr::V4(v4("198.51.100.3")))).action, XDP_DROP);
}

#[test]
fn clean_protected_tcp_failed_and_unrewritten_responses_pass_unchanged() {
    let (mut h, _r) = rewrite_harness(true);
    let answer = |name: &str, flags: u16, ips: &[&str]| {
        let mut answers = Vec::new();
        for ip in ips {
            answers.extend(rr(&QNAME_PTR, 1, 600, &a(ip)));
        }
        dns_response(9, flags, name, 1, ips.len() as u16, &answers)
    };
    let base = [
        (Packets, 1),
        (Ipv4, 1),
        (DnsResponses, 1),
        (ResponseEvents, 1),
    ];
    let with = |extra: &[(Counter, u64)]| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        v
    };
    let udp_frame =
        |msg: &[u8]| checksummed(response_frame(server4(), client4(), 40000, msg), true);
    // Nine addresses: one more than the walk keeps (MAX_ADDRS).
    let many: Vec<String> = (20..29).map(|i| format!("198.51.100.{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    type Case<'a> = (&'a str, Vec<u8>, Vec<(Counter, u64)>);
    let cases: Vec<Case> = vec![
        (
            "a clean name",
            udp_frame(&answer("www.example.org", 0x8180, &["198.51.100.10"])),
            with(&[]),
        ),
        (
            "a protected answer",
            udp_frame(&answer(
                "evil.example",
                0x8180,
                &["198.51.100.11", "192.0.2.99"],
            )),
            with(&[
                (ResolvedNames, 1),
                (ResolvedBlocks, 1),
                (ResolvedProtected, 1),
            ]),
        ),
        (
            "already NXDOMAIN",
            udp_frame(&answer("gone.evil.example", 0x8183, &[])),
            with(&[(ResolvedNames, 1)]),
        ),
        (
            "SERVFAIL",
            udp_frame(&answer("broken.evil.example", 0x8182, &[])),
            with(&[(ResolvedNames, 1)]),
        ),
        (
            "over TCP",
            ip_frame(
                server4(),
                client4(),
                TCP,
                &tcp(
                    53,
                    40001,
                    &tcp_dns(&answer("evil.example", 0x8180, &["198.51.100.12"])),
                ),
            ),
            with(&[
                (ResolvedNames, 1),
                (ResolvedBlocks, 1),
                (ResolvedRewriteSkipped, 1),
            ]),
        ),
        (
            "more addresses than the walk keeps",
            udp_frame(&answer("many.evil.example", 0x8180, &many)),
            with(&[
                (ResolvedNames, 1),
                (ResolvedBlocks, 8),
                (ResolvedRewriteSkipped, 1),
            ]),
        ),
    ];
    for (what, frame, delta) in &cases {
        let run = h.run(frame);
        assert_eq!(run.action, XDP_PASS, "{what}");
        assert_eq!(run.data_out, *frame, "{what}: byte-identical");
        assert_delta(&run, delta);
    }
    // The egress program observes only: a listed name's response leaving is never rewritten.
    let frame = udp_frame(&answer("evil.example", 0x8180, &["198.51.100.13"]));
    let run = h.run_egress(&frame);
    assert_eq!(run.action, TC_ACT_UNSPEC);
    assert_eq!(run.data_out, frame, "egress: byte-identical");
    assert!(
        !run.delta
            .iter()
            .any(|(c, _)| *c == ResolvedRewritten || *c == ResolvedRewriteSkipped)
    );

    // With the rewrite off, a listed name's response passes unchanged (its answers blocked).
    let (mut off, mut r) = resolved_harness((300, 3600));
    r.set_names(&[listing("evil.example", false)]).unwrap();
    let frame = udp_frame(&answer("evil.example", 0x8180, &["198.51.100.14"]));
    let run = off.run(&frame);
    assert_eq!(run.data_out, frame, "rewrite off: byte-identical");
    assert_delta(&run, &with(&[(ResolvedNames, 1), (ResolvedBlocks, 1)]));
}

/// The verifier's instruction count of a loaded program (`BPF_OBJ_GET_INFO_BY_FD`).
fn verified(ebpf: &mut Ebpf, name: &str) -> u32 {
    let prog: &mut aya::programs::Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
    prog.info().unwrap().verified_instruction_count().unwrap()
}

#[test]
fn the_rewrite_keeps_the_xdp_programs_within_the_verifiers_budget() {
    // Loading is the test (the verifier refuses a program over 1M instructions); the counts
    // are printed for BENCHMARKS.md and held well below the limit, so a later change that
    // eats the margin fails here first.
    let mut rows = Vec::new();
    for (what, resolved, rewrite) in [
        ("off", None, false),
        ("blocking", Some((300, 3600)), false),
        ("blocking+rewrite", Some((300, 3600)), true),
    ] {
        let mut h = Harness::with(ProgramSettings {
            resolved,
            rewrite_nxdomain: rewrite,
            ..ProgramSettings::default()
        });
        let main = verified(&mut h.ebpf, sensor_common::PROGRAM_NAME);
        let next = verified(&mut h.ebpf, sensor_common::NEXT_PROGRAM_NAME);
        println!("{what}: dns_sensor {main}, dns_sensor_next {next}");
        assert!(main < 800_000 && next < 800_000, "{what}: {main} / {next}");
        rows.push(main);
    }
    assert!(rows[0] < rows[1], "blocking off is pruned: {rows:?}");
}

/// TC_ACT_UNSPEC as the test run returns it: "no verdict" (the next TCX program or cls_bpf
/// filter runs, and the packet goes on).
const TC_ACT_UNSPEC: u32 = -1i32 as u32;

/// A record without its timestamp (bytes 0..8), which differs between two runs.
fn untimed(rec: &[u8]) -> Vec<u8> {
    let mut r = rec.to_vec();
    r[..8].fill(0);
    r
}

#[test]
fn the_egress_program_reports_the_same_records_as_xdp_and_never_gives_a_verdict() {
    let mut h = Harness::with(ProgramSettings {
        egress: true,
        ..ProgramSettings::default()
    });
    let mut answers = rr(&QNAME_PTR, 5, 3600, &wire_name("edge.cdn.example"));
    let edge = [
        0xc0,
        (12 + wire_name("www.example.com").len() + 4 + 12) as u8,
    ];
    for ip in ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"] {
        answers.extend(rr(&edge, 1, 60, &a(ip)));
    }
    let msg = dns_response(0x1234, 0x8180, "www.example.com", 1, 5, &answers);
    let v6_msg = dns_response(7, 0x8183, "gone.example", 28, 0, &[]);
    let frames = [
        // What a resolver sends: a response with a CNAME chain and four addresses.
        (
            "IPv4 UDP response",
            response_frame(server4(), client4(), 40000, &msg),
        ),
        (
            "IPv6 NXDOMAIN",
            response_frame(server6(), client6(), 5353, &v6_msg),
        ),
        (
            "IPv4 TCP response",
            ip_frame(server4(), client4(), TCP, &tcp(53, 40001, &tcp_dns(&msg))),
        ),
        // What a resolver sends upstream.
        (
            "IPv4 query",
            udp_query_frame(client4(), server4(), 40002, 9, "upstream.example", 1),
        ),
        (
            "IPv6 query",
            udp_query_frame(client6(), server6(), 40003, 10, "upstream.example", 28),
        ),
        // Not DNS: counted, no record.
        (
            "not DNS",
            ip_frame(client4(), server4(), UDP, &udp(40000, 443, b"hello")),
        ),
    ];
    for (what, frame) in &frames {
        let x = h.run(frame);
        let t = h.run_egress(frame);
        assert_eq!(x.action, XDP_PASS, "{what}: XDP");
        assert_eq!(t.action, TC_ACT_UNSPEC, "{what}: TC");
        assert_eq!(x.delta, t.delta, "{what}: the same counters");
        assert_eq!(x.raw.len(), t.raw.len(), "{what}: as many records");
        for (a, b) in x.raw.iter().zip(&t.raw) {
            assert_eq!(untimed(a), untimed(b), "{what}: the same record");
        }
        // And they decode to the same thing (responses checked field by field elsewhere).
        assert_eq!(x.events, t.events, "{what}");
        for (a, b) in x.responses.iter().zip(&t.responses) {
            assert_eq!(a.question.name, b.question.name, "{what}");
            assert_eq!(a.kernel_addrs, b.kernel_addrs, "{what}");
        }
    }
    let r = h.run_egress(&frames[0].1);
    assert_response_delta(&r, Ipv4, &[ResponseEvents]);
    assert_eq!(r.responses.len(), 1);
    assert_eq!(r.responses[0].kernel_addrs.len(), 4);
    assert_eq!(r.responses[0].kernel_cnames, 1);

    // The egress program never drops: a blocklisted source (which XDP drops) is parsed and
    // reported as any other.
    h.lists(&[], &["192.0.2.0/24"]);
    let frame = udp_query_frame(client4(), server4(), 40004, 11, "blocked.example", 1);
    let x = h.run(&frame);
    assert_eq!(x.action, XDP_DROP);
    assert_delta(&x, &[(Packets, 1), (Ipv4, 1), (Blocked, 1)]);
    let t = h.run_egress(&frame);
    assert_eq!(t.action, TC_ACT_UNSPEC);
    assert_delta(&t, &[(Packets, 1), (Ipv4, 1), (DnsQueries, 1), (Events, 1)]);
    assert_eq!(t.events.len(), 1);
    assert_eq!(t.events[0].name, "blocked.example");

    // Nor in mirror mode (a mode of the XDP program only).
    let mut m = Harness::with(ProgramSettings {
        mode: CaptureMode::Mirror,
        egress: true,
        ..ProgramSettings::default()
    });
    assert_eq!(m.run(&frames[0].1).action, XDP_DROP);
    assert_eq!(m.run_egress(&frames[0].1).action, TC_ACT_UNSPEC);
}

#[test]
fn the_egress_program_never_blocks_by_resolution() {
    let mut h = Harness::with(ProgramSettings {
        resolved: Some((300, 3600)),
        egress: true,
        ..ProgramSettings::default()
    });
    let mut maps = ResolvedMaps::take(&mut h.ebpf).expect("resolved maps");
    maps.set_names(&[listing("evil.example", false)])
        .expect("list");
    let msg = dns_response(
        1,
        0x8180,
        "c2.evil.example",
        1,
        1,
        &rr(&QNAME_PTR, 1, 600, &a("203.0.113.66")),
    );
    // A listed name's answer leaving a resolver that is also the clients' gateway: its address
    // is blocked for what XDP sees next (the client's connection arriving), as on ingress.
    let t = h.run_egress(&response_frame(server4(), client4(), 40000, &msg));
    assert_eq!(t.action, TC_ACT_UNSPEC);
    assert_response_delta(&t, Ipv4, &[ResponseEvents, ResolvedNames, ResolvedBlocks]);
    let to_c2 = ip_frame(
        client4(),
        IpAddr::V4(v4("203.0.113.66")),
        UDP,
        &udp(1, 443, b"x"),
    );
    let x = h.run(&to_c2);
    assert_eq!(x.action, XDP_DROP);
    assert_delta(&x, &[(Packets, 1), (Ipv4, 1), (DestBlocked, 1)]);
    // Leaving, the same packet is only observed (counted as what it is: not DNS).
    let t = h.run_egress(&to_c2);
    assert_eq!(t.action, TC_ACT_UNSPEC);
    assert_delta(&t, &[(Packets, 1), (Ipv4, 1), (NotDns, 1)]);
}

/// A TCP segment from `client4():40000` to port 53 carrying `payload`.
fn tcp_frame(payload: &[u8]) -> Vec<u8> {
    ip_frame(client4(), server4(), TCP, &tcp(40000, 53, payload))
}

/// `n` queries for `q0.example` ... pipelined, with ids 1..=n.
fn pipelined(n: u16) -> Vec<u8> {
    (1..=n)
        .flat_map(|i| tcp_dns(&dns_query(i, &format!("q{}.example", i - 1), 1)))
        .collect()
}

#[test]
fn queries_pipelined_in_one_tcp_segment_are_all_reported_up_to_the_bound() {
    let mut h = Harness::new();
    // Three: each is an event, in order; the two after the first are `tcp_pipelined`.
    let run = h.run(&tcp_frame(&pipelined(3)));
    assert_eq!(run.action, XDP_PASS);
    let got: Vec<(u16, &str)> = run
        .events
        .iter()
        .map(|q| (q.dns_id, q.name.as_str()))
        .collect();
    assert_eq!(
        got,
        [(1, "q0.example"), (2, "q1.example"), (3, "q2.example")]
    );
    assert!(
        run.events
            .iter()
            .all(|q| q.transport == Transport::Tcp && q.src == client4() && q.src_port == 40000)
    );
    assert_delta(
        &run,
        &[
            (Packets, 1),
            (Ipv4, 1),
            (DnsQueries, 3),
            (Events, 3),
            (TcpPipelined, 2),
        ],
    );

    // Six: the first four (MAX_TCP_MESSAGES) are read, the segment is counted for the rest.
    let run = h.run(&tcp_frame(&pipelined(6)));
    let ids: Vec<u16> = run.events.iter().map(|q| q.dns_id).collect();
    assert_eq!(ids, [1, 2, 3, 4]);
    assert_eq!(sensor_common::MAX_TCP_MESSAGES, 4);
    assert_delta(
        &run,
        &[
            (Packets, 1),
            (Ipv4, 1),
            (DnsQueries, 4),
            (Events, 4),
            (TcpPipelined, 3),
            (TcpPipelineLimit, 1),
        ],
    );

    // A message continued in the next segment: the whole ones are read, the segment counted.
    let two = pipelined(2);
    for cut in [1, 2, 13, 14, two.len() - pipelined(1).len() - 1] {
        let mut payload = pipelined(1);
        payload.extend_from_slice(&two[pipelined(1).len()..][..cut]);
        // Never the whole second message: a cut that keeps it all is no split.
        assert!(payload.len() < two.len());
        let run = h.run(&tcp_frame(&payload));
        assert_eq!(run.events.len(), 1, "cut {cut}");
        assert_delta(
            &run,
            &[
                (Packets, 1),
                (Ipv4, 1),
                (DnsQueries, 1),
                (Events, 1),
                (TcpPipelineSplit, 1),
            ],
        );
    }

    // Each message ends in its own outcome: a malformed one between two queries, and an
    // allowlisted client's (every message of the segment is the client's).
    let mut payload = tcp_dns(&dns_query(1, "a.example", 1));
    let mut notify = dns_query(2, "b.example", 6);
    notify[2] = 0x20; // opcode NOTIFY
    payload.extend(tcp_dns(&notify));
    payload.extend(tcp_dns(&dns_query(3, "c.example", 1)));
    let run = h.run(&tcp_frame(&payload));
    let ids: Vec<u16> = run.events.iter().map(|q| q.dns_id).collect();
    assert_eq!(ids, [1, 3]);
    assert_delta(
        &run,
        &[
            (Packets, 1),
            (Ipv4, 1),
            (DnsQueries, 2),
            (Events, 2),
            (DnsOpcode, 1),
            (TcpPipelined, 2),
        ],
    );
    h.lists(&["192.0.2.10/32"], &[]);
    let run = h.run(&tcp_frame(&pipelined(2)));
    assert!(run.events.is_empty());
    assert_delta(
        &run,
        &[
            (Packets, 1),
            (Ipv4, 1),
            (DnsQueries, 2),
            (Allowlisted, 2),
            (TcpPipelined, 1),
        ],
    );
    // The outcomes add up to packets + tcp_pipelined, over everything above.
    let t = h.total;
    let outcomes: u64 = Counter::ALL
        .iter()
        .filter(|c| c.is_outcome())
        .map(|&c| t.get(c))
        .sum();
    assert_eq!(outcomes, t.packets + t.tcp_pipelined);
}

#[test]
fn responses_sent_back_to_back_in_one_segment_are_all_reported_on_both_hooks() {
    let mut h = Harness::with(ProgramSettings {
        egress: true,
        ..ProgramSettings::default()
    });
    let msgs: Vec<Vec<u8>> = (0..3u8)
        .map(|i| {
            dns_response(
                u16::from(i),
                0x8180,
                &format!("r{i}.example"),
                1,
                1,
                &rr(&QNAME_PTR, 1, 60, &a(&format!("192.0.2.{}", 100 + i))),
            )
        })
        .collect();
    let payload: Vec<u8> = msgs.iter().flat_map(|m| tcp_dns(m)).collect();
    let frame = ip_frame(server4(), client4(), TCP, &tcp(53, 40000, &payload));
    for egress in [false, true] {
        let run = if egress {
            h.run_egress(&frame)
        } else {
            h.run(&frame)
        };
        let got: Vec<(String, Vec<(IpAddr, u32)>)> = run
            .responses
            .iter()
            .map(|r| (r.question.name.clone(), r.kernel_addrs.clone()))
            .collect();
        let want: Vec<(String, Vec<(IpAddr, u32)>)> = (0..3)
            .map(|i| {
                (
                    format!("r{i}.example"),
                    vec![(IpAddr::V4(v4(&format!("192.0.2.{}", 100 + i))), 60)],
                )
            })
            .collect();
        assert_eq!(got, want, "egress {egress}");
        assert_delta(
            &run,
            &[
                (Packets, 1),
                (Ipv4, 1),
                (DnsResponses, 3),
                (ResponseEvents, 3),
                (TcpPipelined, 2),
            ],
        );
        // Each record's message is its own.
        for (r, m) in run.responses.iter().zip(&msgs) {
            assert_eq!(usize::from(r.msg_len), m.len());
        }
    }
}

/// What the daemon's worker does through the maps: a name listed one at a time (a verdict)
/// beside the others and acted on by the program at once; an answer blocked from userspace (it
/// passed before its name was listed), never when protected; the operator's `unlist` takes the
/// name and its destinations out.
#[test]
fn names_listed_one_at_a_time_userspace_blocks_and_unlisting() {
    use sensor_common::resolved::{NAME_FROM_FEED, NAME_FROM_VERDICT};
    use sensor_kernel::lists::resolved::DestBlock;
    let (mut h, mut r) = resolved_harness((60, 3600));
    let feed = Listing {
        source: NAME_FROM_FEED,
        ..listing("feed.example", false)
    };
    assert_eq!(r.set_names(&[feed]).unwrap(), 1);
    let expires = unix_now() + 900;
    let verdict = Listing {
        name: "late.example".into(),
        expires_unix: expires,
        exact: true,
        source: NAME_FROM_VERDICT,
    };
    assert_eq!(r.add_names(std::slice::from_ref(&verdict)).unwrap(), 1);
    assert_eq!(r.add_names(&[verdict]).unwrap(), 0, "listed once");
    let names = r.names().unwrap();
    let shown: Vec<_> = names
        .iter()
        .map(|n| (n.name.as_str(), n.exact, n.expires_unix, n.sources.clone()))
        .collect();
    assert_eq!(
        shown,
        [
            ("feed.example", false, 0, vec!["feed"]),
            ("late.example", true, expires, vec!["verdict"]),
        ]
    );

    // The program acts on the name added alone (its filter bit was set first).
    let msg = dns_response(
        9,
        0x8180,
        "late.example",
        1,
        1,
        &rr(&QNAME_PTR, 1, 120, &a("192.0.2.7")),
    );
    let run = h.run(&response_frame(server4(), client4(), 40000, &msg));
    assert_eq!(run.action, XDP_PASS);
    let blocked = r.blocked().unwrap();
    assert_eq!(blocked.len(), 1);
    assert_eq!(
        (blocked[0].name.as_str(), blocked[0].ttl),
        ("late.example", 120)
    );
    assert_eq!(h.run(&to(IpAddr::V4(v4("192.0.2.7")))).action, XDP_DROP);

    // Userspace blocks an answer the program let through; a protected address never.
    r.set_protected(&["192.0.2.99/32".parse().unwrap()])
        .unwrap();
    let now = unix_now();
    let out = r
        .block(
            &[
                DestBlock {
                    address: IpAddr::V4(v4("192.0.2.8")),
                    name: "feed.example".into(),
                    client: client4(),
                    ttl: 30,
                    expires_unix: now + 60,
                },
                DestBlock {
                    address: IpAddr::V4(v4("192.0.2.99")),
                    name: "feed.example".into(),
                    client: client4(),
                    ttl: 30,
                    expires_unix: now + 60,
                },
                DestBlock {
                    address: IpAddr::V4(v4("192.0.2.7")),
                    name: "late.example".into(),
                    client: client4(),
                    ttl: 30,
                    expires_unix: now + 1,
                },
            ],
            now,
        )
        .unwrap();
    assert_eq!((out.inserted, out.protected, out.refreshed), (1, 1, 1));
    assert_eq!(h.run(&to(IpAddr::V4(v4("192.0.2.8")))).action, XDP_DROP);
    assert_eq!(h.run(&to(IpAddr::V4(v4("192.0.2.99")))).action, XDP_PASS);
    let by_addr: Vec<_> = r
        .blocked()
        .unwrap()
        .into_iter()
        .map(|b| (b.address, b.name, b.expires_unix >= now + 60))
        .collect();
    assert_eq!(
        by_addr,
        [
            (IpAddr::V4(v4("192.0.2.7")), "late.example".to_owned(), true),
            (IpAddr::V4(v4("192.0.2.8")), "feed.example".to_owned(), true),
        ],
        "the program's entry keeps its later expiry"
    );

    // Unlisting a name removes it and the destinations blocked for it, nothing else.
    let removed = r.remove_name("Late.Example.").unwrap();
    assert_eq!((removed.names, removed.destinations), (1, 1));
    assert_eq!(h.run(&to(IpAddr::V4(v4("192.0.2.7")))).action, XDP_PASS);
    assert_eq!(h.run(&to(IpAddr::V4(v4("192.0.2.8")))).action, XDP_DROP);
    let run = h.run(&response_frame(server4(), client4(), 40000, &msg));
    assert_eq!(run.action, XDP_PASS);
    assert_eq!(
        r.blocked().unwrap().len(),
        1,
        "an unlisted name's answer blocks nothing"
    );
}
