//! Responses from a real resolver, seen by the sensor on both interfaces of a gateway: a client
//! namespace, the root namespace forwarding between two veths (the sensor attached to both), and
//! a resolver namespace running Debian's `unbound` with a local zone. `dig` from the client; the
//! sensor must report each query and its answer, paired (response time), with the answer
//! section unbound sent (checked against dig's own view), count a query nobody answers, and
//! keep the answers in the passive DNS store (`sensor pdns`).
//! Needs root, iproute2, dig and unbound; fails without them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use common::sensor_bin;
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sensor_testkit::{
    daemon::Daemon,
    netns::{Topology, sh, unique},
    ports::free_port,
};
use serde_json::Value;

/// `unbound` in the resolver's namespace, stopped (by its PID) when dropped.
struct Unbound {
    child: Child,
    _dir: tempfile::TempDir,
}

/// The zone [`Unbound::start_with_auth`] serves as an authority (unbound follows CNAMEs inside
/// an auth-zone, not between local-data names).
const AUTH_ZONE: &str = "cnames.test.";

impl Unbound {
    fn start(topo: &Topology, zone: &[&str]) -> Self {
        Self::start_with_auth(topo, zone, &[])
    }

    /// `zone` as local data; `auth` (records under [`AUTH_ZONE`]) as an authoritative zone.
    fn start_with_auth(topo: &Topology, zone: &[&str], auth: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr = topo.v4(2);
        let mut conf = format!(
            "server:\n  interface: {addr}\n  port: 53\n  do-daemonize: no\n  username: \"\"\n  \
             chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n  \
             use-syslog: no\n  logfile: \"\"\n  verbosity: 1\n  do-ip6: no\n  \
             access-control: 10.0.0.0/8 allow\n  module-config: \"iterator\"\n  \
             local-zone: \"example.test.\" static\n",
            d = dir.path().display()
        );
        for rr in zone {
            conf.push_str(&format!("  local-data: \"{rr}\"\n"));
        }
        if !auth.is_empty() {
            // unbound refuses `.test` itself (RFC 6761) unless told not to.
            conf.push_str("  local-zone: \"test.\" nodefault\n");
            let file = dir.path().join("auth.zone");
            let mut text = format!(
                "{AUTH_ZONE} 300 IN SOA ns.{AUTH_ZONE} hostmaster.{AUTH_ZONE} 1 3600 600 86400 300\n\
                 {AUTH_ZONE} 300 IN NS ns.{AUTH_ZONE}\nns.{AUTH_ZONE} 300 IN A 127.0.0.1\n"
            );
            for rr in auth {
                text.push_str(rr);
                text.push('\n');
            }
            std::fs::write(&file, text).unwrap();
            conf.push_str(&format!(
                "auth-zone:\n  name: \"{AUTH_ZONE}\"\n  zonefile: \"{}\"\n  \
                 for-downstream: yes\n  for-upstream: no\n",
                file.display()
            ));
        }
        let path = dir.path().join("unbound.conf");
        std::fs::write(&path, conf).unwrap();
        let check = Command::new("unbound-checkconf").arg(&path).output();
        let check = check.expect("run unbound-checkconf (apt package unbound)");
        assert!(
            check.status.success(),
            "unbound config: {}",
            String::from_utf8_lossy(&check.stdout)
        );
        let child = topo
            .command("unbound")
            .args(["-d", "-c"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start unbound");
        let u = Self { child, _dir: dir };
        // Ready when it answers the zone's first name.
        let probe = zone[0].split_whitespace().next().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = topo
                .command("dig")
                .args(["+tries=1", "+timeout=1", "+short"])
                .arg(format!("@{addr}"))
                .arg(probe)
                .output()
                .unwrap();
            if !out.stdout.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "unbound did not start answering");
        }
        u
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// Routes the client's and the resolver's networks through the root namespace: forwarding on
/// the two host-side veths only (per-interface, so the host's other interfaces are untouched).
fn gateway(client: &Topology, resolver: &Topology) {
    for t in [client, resolver] {
        sh(
            "sysctl",
            &["-qw", &format!("net.ipv4.conf.{}.forwarding=1", t.host_if)],
        );
        t.exec(&["ip", "route", "add", "default", "via", &t.v4(1).to_string()]);
    }
}

/// A counter from the daemon's /metrics (HTTP/1.0 over a plain socket: one request).
fn metric(port: u16, name: &str) -> u64 {
    use std::io::{Read as _, Write as _};
    let mut body = String::new();
    if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
        let _ = c.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        let _ = c.read_to_string(&mut body);
    }
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn dig(topo: &Topology, server: &str, args: &[&str]) -> String {
    let out = topo
        .command("dig")
        .args(["+tries=1", "+timeout=2", "+noall", "+answer"])
        .arg(format!("@{server}"))
        .args(args)
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that the answer line `d` carries the answer section `dig_answer` (dig's `+answer`
/// output: name, TTL, type and data per record) and its addresses as `dns.resolved_ip`;
/// returns the number of records.
fn assert_answers_as_dug(d: &Value, dig_answer: &str, label: &str) -> usize {
    let mut want: Vec<(String, u64, String, String)> = dig_answer
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].trim_end_matches('.').to_owned(),
                f[1].parse().unwrap(),
                f[3].to_owned(),
                f[4].trim_end_matches('.').to_owned(),
            )
        })
        .collect();
    let mut got: Vec<(String, u64, String, String)> = d["dns"]["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_owned(),
                a["ttl"].as_u64().unwrap(),
                a["type"].as_str().unwrap().to_owned(),
                a["data"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "{label}");
    let mut ips: Vec<&str> = want
        .iter()
        .filter(|r| r.2 == "A" || r.2 == "AAAA")
        .map(|r| r.3.as_str())
        .collect();
    let mut resolved: Vec<&str> = d["dns"]["resolved_ip"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
        .unwrap_or_default();
    resolved.sort();
    ips.sort();
    assert_eq!(resolved, ips, "{label}");
    want.len()
}

/// The client's and the resolver's namespaces routed through the root namespace, and unbound
/// serving `www.example.test` (two A, one AAAA) and its alias.
fn example_zone_behind_a_gateway() -> (Topology, Topology, Unbound) {
    let client = Topology::new(false);
    let resolver = Topology::new(false);
    gateway(&client, &resolver);
    let unbound = Unbound::start(
        &resolver,
        &[
            "www.example.test. 300 IN A 192.0.2.80",
            "www.example.test. 300 IN A 192.0.2.81",
            "www.example.test. 300 IN AAAA 2001:db8::80",
            "alias.example.test. 600 IN CNAME www.example.test.",
        ],
    );
    (client, resolver, unbound)
}

#[test]
fn a_gateway_sensor_pairs_each_answer_with_its_query_and_counts_the_unanswered() {
    let (client, resolver, unbound) = example_zone_behind_a_gateway();
    let server = resolver.v4(2).to_string();

    let dir = tempfile::tempdir().unwrap();
    let name = unique("resp");
    let metrics = free_port();
    let config = dir.path().join("sensor.toml");
    std::fs::write(
        &config,
        format!(
            "[sensor]\nname = \"{name}\"\npin_root = \"/sys/fs/bpf/dns-sensor-test-{name}\"\n\
             [capture]\ninterfaces = [\"{}\", \"{}\"]\nresponse_timeout_secs = 1\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n[pdns]\npath = \"{}\"\n",
            client.host_if,
            resolver.host_if,
            dir.path().join("pdns/pdns.sqlite").display()
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(sensor_bin(), &config, dir.path());

    let digs: Vec<(&str, &str, String)> = ["www", "alias", "nope"]
        .iter()
        .flat_map(|n| [("A", *n), ("AAAA", *n)])
        .map(|(t, n)| {
            let qname = format!("{n}.example.test");
            let answer = dig(&client, &server, &[&qname, t]);
            (t, n, answer)
        })
        .collect();
    // A query to an address where nothing answers.
    let silent = resolver.v4(99).to_string();
    let _ = dig(&client, &silent, &["www.example.test"]);

    // Every answer line, then the unanswered count, awaited.
    let deadline = Instant::now() + Duration::from_secs(20);
    let answers = loop {
        let answers: Vec<Value> = daemon
            .lines()
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|d| d["dns"]["type"] == "answer")
            .collect();
        if answers.len() >= digs.len()
            && metric(metrics, "dns_sensor_reader_queries_unanswered_total") >= 1
        {
            break answers;
        }
        assert!(
            Instant::now() < deadline,
            "{} answers so far: {answers:#?}",
            answers.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let paired = metric(metrics, "dns_sensor_reader_responses_paired_total");
    let unpaired = metric(metrics, "dns_sensor_reader_responses_unpaired_total");
    let unanswered = metric(metrics, "dns_sensor_reader_queries_unanswered_total");
    let lines = daemon.stop();
    drop(unbound);

    assert_eq!(
        answers.len(),
        digs.len(),
        "one answer per query: {answers:#?}"
    );
    assert_eq!((paired, unpaired, unanswered), (6, 0, 1));
    let queries = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|d| d["dns"]["type"] == "query")
        .count();
    assert_eq!(
        queries,
        digs.len() + 1,
        "every query, the unanswered one too"
    );

    for (qtype, n, dig_answer) in &digs {
        let qname = format!("{n}.example.test");
        let d = answers
            .iter()
            .find(|d| {
                d["dns"]["question"]["name"] == qname.as_str()
                    && d["dns"]["question"]["type"] == *qtype
            })
            .unwrap_or_else(|| panic!("no answer line for {qname} {qtype}"));
        // Seen from the client, like the query.
        assert_eq!(d["source"]["ip"], client.v4(2).to_string());
        assert_eq!(d["destination"]["ip"], server.as_str());
        assert_eq!(d["destination"]["port"], 53);
        assert!(d["event"]["duration"].is_u64(), "paired: {d}");
        let want_rcode = if *n == "nope" { "NXDOMAIN" } else { "NOERROR" };
        assert_eq!(d["dns"]["response_code"], want_rcode, "{d}");
        assert!(
            d["dns"]["header_flags"]
                .as_array()
                .unwrap()
                .contains(&"AA".into()),
            "unbound answers its local zone authoritatively: {d}"
        );
        let label = format!("{qname} {qtype}");
        let want = assert_answers_as_dug(d, dig_answer, &label);
        if *n != "nope" {
            assert!(want > 0, "unbound answered {label}");
        }
    }

    // The answers went into the passive DNS store (committed at the stop): who resolved
    // www.example.test, and to what.
    let pdns = |name: &str| -> Value {
        let out = Command::new(sensor_bin())
            .args(["pdns", "name", name, "--json", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let v = pdns("www.example.test");
    let mut data: Vec<&str> = v["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["data"].as_str().unwrap())
        .collect();
    data.sort();
    assert_eq!(data, ["192.0.2.80", "192.0.2.81", "2001:db8::80"], "{v}");
    let clients: Vec<&str> = v["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client"].as_str().unwrap())
        .collect();
    assert_eq!(clients, [client.v4(2).to_string()], "{v}");
    // The alias's chain: its CNAME is kept with the alias.
    let v = pdns("alias.example.test");
    assert!(
        v["answers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["type"] == "CNAME" && a["data"] == "www.example.test"),
        "{v}"
    );
}

/// Runs `f` on a thread inside network namespace `ns` (setns affects only that thread).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open the namespace");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("thread in the namespace")
}

/// HTTP servers on port 80 of `addrs` in the resolver's namespace: each accepts, answers `ok`
/// and counts its connections. Stopped when the returned flag is set (and one last connect).
fn http_servers(
    ns: &str,
    addrs: &[std::net::Ipv4Addr],
) -> Vec<std::sync::Arc<std::sync::atomic::AtomicU64>> {
    use std::io::Write as _;
    let mut counts = Vec::new();
    for &a in addrs {
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = count.clone();
        let path = format!("/run/netns/{ns}");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open the namespace");
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let l = std::net::TcpListener::bind((a, 80)).expect("bind :80");
            tx.send(()).unwrap();
            // Ends with the test process (the namespace goes when the topology drops).
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
        });
        rx.recv().unwrap();
        counts.push(count);
    }
    counts
}

/// The A record a resolver gives `name` (one query over UDP from the calling thread's
/// namespace; the zone holds one A record per name and unbound adds no other section).
fn resolve_a(sock: &std::net::UdpSocket, id: u16, name: &str) -> std::net::Ipv4Addr {
    let q = sensor_testkit::packet::dns_query(id, name, 1);
    sock.send(&q).unwrap();
    let mut buf = [0u8; 512];
    loop {
        let n = sock.recv(&mut buf).expect("an answer within the timeout");
        if u16::from_be_bytes([buf[0], buf[1]]) != id {
            continue; // a late answer to an earlier query
        }
        assert_eq!(buf[3] & 0x0f, 0, "NOERROR for {name}");
        assert_eq!(
            u16::from_be_bytes([buf[6], buf[7]]),
            1,
            "one answer for {name}"
        );
        return std::net::Ipv4Addr::new(buf[n - 4], buf[n - 3], buf[n - 2], buf[n - 1]);
    }
}

/// A connection attempt left in flight: a non-blocking socket that sent its SYN.
fn start_connect(ip: std::net::Ipv4Addr) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, connect, socket};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK,
        None,
    )
    .unwrap();
    match connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(std::net::SocketAddrV4::new(ip, 80)),
    ) {
        Err(nix::errno::Errno::EINPROGRESS) => {}
        other => panic!("connect to {ip}: {other:?}"),
    }
    fd
}

/// Attempts that connected (the socket has a peer; one still in flight has none): escapes.
fn connected(fds: &[std::os::fd::OwnedFd]) -> usize {
    fds.iter()
        .filter(|f| {
            nix::sys::socket::getpeername::<nix::sys::socket::SockaddrIn>(
                std::os::fd::AsRawFd::as_raw_fd(*f),
            )
            .is_ok()
        })
        .count()
}

/// `GET /` with curl from the client: true when the server answered.
fn curl(topo: &Topology, ip: std::net::Ipv4Addr) -> bool {
    let out = topo
        .command("curl")
        .args(["-s", "--max-time", "1", &format!("http://{ip}/")])
        .output()
        .expect("run curl");
    out.status.success() && out.stdout == b"ok"
}

#[test]
fn a_listed_names_addresses_are_unreachable_from_the_first_connection_clean_ones_work() {
    const TRIALS: usize = 10_000;
    let client = Topology::new(false);
    let resolver = Topology::new(false);
    gateway(&client, &resolver);
    let c2: Vec<_> = (50..54).map(|h| resolver.add_client_v4(h)).collect();
    let clean: Vec<_> = (60..64).map(|h| resolver.add_client_v4(h)).collect();
    let shared = resolver.add_client_v4(70);
    let fresh = resolver.add_client_v4(71);
    let mut zone: Vec<String> = Vec::new();
    for (i, ip) in c2.iter().enumerate() {
        zone.push(format!("n{i}.c2.test. 2 IN A {ip}"));
    }
    for (i, ip) in clean.iter().enumerate() {
        zone.push(format!("n{i}.clean.test. 2 IN A {ip}"));
    }
    zone.push(format!("shared.c2.test. 2 IN A {shared}"));
    zone.push(format!("first.c2.test. 2 IN A {fresh}"));
    let zone_refs: Vec<&str> = zone.iter().map(String::as_str).collect();
    let unbound = Unbound::start(&resolver, &zone_refs);
    let server = resolver.v4(2);
    let mut all = c2.clone();
    all.extend(&clean);
    all.extend([shared, fresh]);
    let hits = http_servers(&resolver.ns, &all);
    let count = |i: usize| hits[i].load(std::sync::atomic::Ordering::SeqCst);

    let dir = tempfile::tempdir().unwrap();
    let name = unique("rblk");
    let metrics = free_port();
    let config = dir.path().join("sensor.toml");
    std::fs::write(
        &config,
        format!(
            "[sensor]\nname = \"{name}\"\npin_root = \"/sys/fs/bpf/dns-sensor-test-{name}\"\n\
             [capture]\ninterfaces = [\"{}\", \"{}\"]\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
             [blocklist]\nprotect = [\"{shared}/32\"]\n[blocklist.policy]\nstate_dir = \"{d}/state\"\n\
             [blocklist.edl]\npath = \"{d}/edl.txt\"\n[pdns]\npath = \"{d}/pdns.sqlite\"\n\
             [blocklist.resolved]\nenabled = true\nmin_secs = 1\nmax_secs = 30\n\
             names = [\"c2.test\"]\n",
            client.host_if,
            resolver.host_if,
            d = dir.path().display(),
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(sensor_bin(), &config, dir.path());

    // The real tools first: before any answer every server is reachable; then dig resolves a
    // listed name no one resolved before and curl cannot reach it, from its first connection.
    assert!(curl(&client, fresh), "reachable before the answer");
    let before = count(all.len() - 1);
    let out = dig(&client, &server.to_string(), &["first.c2.test", "A"]);
    assert!(out.contains(&fresh.to_string()), "{out}");
    assert!(!curl(&client, fresh), "blocked after the answer");
    assert_eq!(
        count(all.len() - 1),
        before,
        "not one connection reached it"
    );
    assert!(curl(&client, clean[0]), "a clean server");
    let shared_out = dig(&client, &server.to_string(), &["shared.c2.test", "A"]);
    assert!(shared_out.contains(&shared.to_string()));
    assert!(
        curl(&client, shared),
        "a protected address is never blocked"
    );

    // 10,000 trials: resolve, then connect at once. A listed name's connection is left in
    // flight (its SYN sent); every 500 trials, an escape would have connected (the gateway
    // forwards in well under a millisecond, and the window below is 200 ms) and its server
    // would count it. A clean name's connection must complete and get the page.
    let (c2_ips, clean_ips) = (c2.clone(), clean.clone());
    let trials_started = Instant::now();
    let (escapes, false_blocks, answers_wrong) = in_ns(&client.ns, move || {
        use std::io::Read as _;
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.connect((server, 53)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let (mut escapes, mut false_blocks, mut wrong) = (0, 0, 0);
        let mut in_flight = Vec::new();
        for t in 0..TRIALS {
            let k = (t / 2) % 4;
            let listed = t % 2 == 0;
            let name = if listed {
                format!("n{k}.c2.test")
            } else {
                format!("n{k}.clean.test")
            };
            let ip = resolve_a(&sock, t as u16, &name);
            let want = if listed { c2_ips[k] } else { clean_ips[k] };
            if ip != want {
                wrong += 1;
            }
            if listed {
                in_flight.push(start_connect(ip));
                if in_flight.len() == 500 {
                    std::thread::sleep(Duration::from_millis(200));
                    escapes += connected(&in_flight);
                    in_flight.clear();
                }
            } else {
                let ok = std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from((ip, 80)),
                    Duration::from_secs(2),
                )
                .and_then(|mut s| {
                    let mut body = String::new();
                    s.read_to_string(&mut body).map(|_| body)
                });
                if !ok.is_ok_and(|b| b.ends_with("ok")) {
                    false_blocks += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        escapes += connected(&in_flight);
        (escapes, false_blocks, wrong)
    });
    eprintln!(
        "trials: {TRIALS} ({} listed, {} clean): {escapes} escapes, {false_blocks} false blocks, {answers_wrong} wrong answers, {:?}",
        TRIALS / 2,
        TRIALS / 2,
        trials_started.elapsed()
    );
    assert_eq!(answers_wrong, 0, "unbound's answers");
    assert_eq!(escapes, 0, "escapes in {} listed trials", TRIALS / 2);
    assert_eq!(
        false_blocks,
        0,
        "false blocks in {} clean trials",
        TRIALS / 2
    );
    for (i, ip) in c2.iter().enumerate() {
        assert_eq!(count(i), 0, "connections that reached C2 {ip}");
    }
    let served: u64 = (c2.len()..c2.len() + clean.len()).map(count).sum();
    assert_eq!(
        served,
        (TRIALS / 2) as u64 + 1,
        "every clean trial (and the curl) served"
    );

    // What the operator sees: each blocked address with the listed name, the client, the TTL.
    let v = resolved_view(&config);
    let blocked = v["blocked"].as_array().unwrap();
    let mut addrs: Vec<String> = blocked
        .iter()
        .map(|b| b["address"].as_str().unwrap().to_owned())
        .collect();
    addrs.sort();
    let mut want: Vec<String> = c2.iter().chain([&fresh]).map(|ip| ip.to_string()).collect();
    want.sort();
    assert_eq!(addrs, want, "{v}");
    for b in blocked {
        assert_eq!(b["name"], "c2.test", "{b}");
        assert_eq!(b["client"], client.v4(2).to_string(), "{b}");
        assert_eq!(b["ttl"], 2, "{b}");
        assert!(b["packets"].as_u64().unwrap() >= 1, "{b}");
    }
    assert!(metric(metrics, "dns_sensor_kernel_resolved_protected_total") >= 1);

    // Undo: the operator's unblock makes n0's address reachable at once, and it stays so when
    // the name is resolved again.
    let out = Command::new(sensor_bin())
        .args([
            "blocklist",
            "unblock",
            &c2[0].to_string(),
            "--reason",
            "test",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(curl(&client, c2[0]), "unblocked");
    let _ = dig(&client, &server.to_string(), &["n0.c2.test", "A"]);
    assert!(curl(&client, c2[0]), "stays unblocked");
    assert!(!curl(&client, c2[1]), "the others stay blocked");

    // Entries lapse on their own after the TTL (2 s here, the last answer refreshed them).
    let t0 = Instant::now();
    while !curl(&client, c2[1]) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the block never lapsed"
        );
    }
    daemon.stop();
    drop(unbound);
}

/// dig's whole answer (header, status, sections), for the status line.
fn dig_full(topo: &Topology, server: &str, args: &[&str]) -> String {
    let out = topo
        .command("dig")
        .args(["+tries=1", "+timeout=2"])
        .arg(format!("@{server}"))
        .args(args)
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn with_rewrite_a_listed_name_gets_nxdomain_over_udp_and_stays_unreachable_over_tcp() {
    let client = Topology::new(false);
    let resolver = Topology::new(false);
    gateway(&client, &resolver);
    let c2 = resolver.add_client_v4(50);
    let clean = resolver.add_client_v4(60);
    let zone = [
        format!("www.c2.test. 60 IN A {c2}"),
        format!("www.clean.test. 60 IN A {clean}"),
    ];
    let zone_refs: Vec<&str> = zone.iter().map(String::as_str).collect();
    let unbound = Unbound::start(&resolver, &zone_refs);
    let server = resolver.v4(2).to_string();
    let hits = http_servers(&resolver.ns, &[c2, clean]);

    let dir = tempfile::tempdir().unwrap();
    let name = unique("rwr");
    let metrics = free_port();
    let config = dir.path().join("sensor.toml");
    std::fs::write(
        &config,
        format!(
            "[sensor]\nname = \"{name}\"\npin_root = \"/sys/fs/bpf/dns-sensor-test-{name}\"\n\
             [capture]\ninterfaces = [\"{}\", \"{}\"]\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
             [blocklist.policy]\nstate_dir = \"{d}/state\"\n\
             [blocklist.edl]\npath = \"{d}/edl.txt\"\n[pdns]\npath = \"{d}/pdns.sqlite\"\n\
             [blocklist.resolved]\nenabled = true\nnames = [\"c2.test\"]\nrewrite = \"nxdomain\"\n",
            client.host_if,
            resolver.host_if,
            d = dir.path().display(),
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(sensor_bin(), &config, dir.path());

    // Over UDP the client gets NXDOMAIN for the listed name: the question, no records.
    let out = dig_full(&client, &server, &["www.c2.test", "A"]);
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    assert!(out.contains("ANSWER: 0,"), "{out}");
    assert!(out.contains(";www.c2.test.\t"), "the question: {out}");
    assert!(!out.contains(&c2.to_string()), "{out}");
    // A clean name resolves as the resolver answered.
    let out = dig_full(&client, &server, &["www.clean.test", "A"]);
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(out.contains(&clean.to_string()), "{out}");
    assert!(curl(&client, clean), "a clean server");
    // Over TCP the answer passes as sent (a segment is never cut), but its address was
    // blocked in the same run: a client that asks over TCP still cannot connect.
    let out = dig_full(&client, &server, &["+tcp", "www.c2.test", "A"]);
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(out.contains(&c2.to_string()), "{out}");
    assert!(!curl(&client, c2), "blocked");
    assert_eq!(hits[0].load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(
        metric(metrics, "dns_sensor_kernel_resolved_rewritten_total"),
        1
    );
    assert_eq!(
        metric(metrics, "dns_sensor_kernel_resolved_rewrite_skipped_total"),
        1
    );
    daemon.stop();
    drop(unbound);
}

/// Names of the programs attached to the TCX egress hook of `dev` in namespace `ns` (the
/// kernel's own list; this bpftool predates TCX and does not show them).
fn tcx_egress(ns: &str, dev: &str) -> Vec<String> {
    let dev = dev.to_owned();
    in_ns(ns, move || {
        let (_, progs) =
            aya::programs::SchedClassifier::query_tcx(&dev, aya::programs::TcAttachType::Egress)
                .expect("query the TCX egress hook");
        progs
            .iter()
            .map(|p| p.name_as_str().unwrap_or_default().to_owned())
            .collect()
    })
}

#[test]
fn a_sensor_on_the_resolver_host_reports_the_answers_its_resolver_sends() {
    let (client, resolver, unbound) = example_zone_behind_a_gateway();
    let server = resolver.v4(2).to_string();

    // The sensor runs on the resolver host itself: in the resolver's namespace, on its one
    // interface, where queries arrive (XDP) and answers leave (TC egress).
    let dir = tempfile::tempdir().unwrap();
    let name = unique("resh");
    let metrics = free_port();
    let config = dir.path().join("sensor.toml");
    std::fs::write(
        &config,
        format!(
            "[sensor]\nname = \"{name}\"\npin_root = \"/sys/fs/bpf/dns-sensor-test-{name}\"\n\
             [capture]\ninterfaces = [\"{}\"]\negress = true\nresponse_timeout_secs = 1\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n[pdns]\npath = \"{}\"\n",
            resolver.peer_if,
            dir.path().join("pdns/pdns.sqlite").display()
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start_in_netns(&resolver.ns, sensor_bin(), &config, dir.path());
    assert_eq!(
        tcx_egress(&resolver.ns, &resolver.peer_if),
        ["dns_egress"],
        "a TCX egress link"
    );
    // The daemon's metrics listen in the resolver's namespace.
    let ns = resolver.ns.clone();
    let metric_in_ns = move |m: &'static str| {
        let ns = ns.clone();
        in_ns(&ns, move || metric(metrics, m))
    };

    // (label, dig arguments): UDP, and TCP, whose answers leave in page fragments (the egress
    // program pulls them into the linear part to read them).
    let asks: [(&str, &[&str]); 5] = [
        ("www A", &["www.example.test", "A"]),
        ("www AAAA", &["www.example.test", "AAAA"]),
        ("alias A", &["alias.example.test", "A"]),
        ("nope A", &["nope.example.test", "A"]),
        ("www A over TCP", &["+tcp", "www.example.test", "A"]),
    ];
    let digs: Vec<(&str, &[&str], String)> = asks
        .iter()
        .map(|(label, args)| (*label, *args, dig(&client, &server, args)))
        .collect();

    let deadline = Instant::now() + Duration::from_secs(20);
    let answers = loop {
        let answers: Vec<Value> = daemon
            .lines()
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|d| d["dns"]["type"] == "answer")
            .collect();
        if answers.len() >= digs.len() {
            break answers;
        }
        assert!(
            Instant::now() < deadline,
            "{} answers so far: {answers:#?}",
            answers.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let paired = metric_in_ns("dns_sensor_reader_responses_paired_total");
    let unpaired = metric_in_ns("dns_sensor_reader_responses_unpaired_total");
    let lines = daemon.stop();
    drop(unbound);

    assert_eq!(
        answers.len(),
        digs.len(),
        "one answer per query: {answers:#?}"
    );
    assert_eq!(
        (paired, unpaired),
        (digs.len() as u64, 0),
        "each answer paired"
    );
    let queries = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|d| d["dns"]["type"] == "query")
        .count();
    assert_eq!(queries, digs.len(), "every query, arrived through XDP");
    for (label, args, dig_answer) in &digs {
        let tcp = args[0] == "+tcp";
        let (qname, qtype) = (args[args.len() - 2], args[args.len() - 1]);
        let d = answers
            .iter()
            .find(|d| {
                d["dns"]["question"]["name"] == qname
                    && d["dns"]["question"]["type"] == qtype
                    && (d["network"]["transport"] == "tcp") == tcp
            })
            .unwrap_or_else(|| panic!("no answer line for {label}: {answers:#?}"));
        assert_eq!(d["source"]["ip"], client.v4(2).to_string(), "{label}");
        assert_eq!(d["destination"]["ip"], server.as_str(), "{label}");
        assert!(d["event"]["duration"].is_u64(), "paired: {d}");
        let want_rcode = if qname.starts_with("nope") {
            "NXDOMAIN"
        } else {
            "NOERROR"
        };
        assert_eq!(d["dns"]["response_code"], want_rcode, "{d}");
        let n = assert_answers_as_dug(d, dig_answer, label);
        if !qname.starts_with("nope") {
            assert!(n > 0, "unbound answered {label}");
        }
    }
    // A clean stop detaches it.
    assert!(tcx_egress(&resolver.ns, &resolver.peer_if).is_empty());
}

/// `sensor blocklist resolved --json` of a running sensor.
fn resolved_view(config: &std::path::Path) -> Value {
    sensor_ok(&["blocklist", "resolved"], config)
}

/// The name a blocked address is shown with (`None`: not blocked).
fn blocked_for(view: &Value, ip: std::net::Ipv4Addr) -> Option<String> {
    view["blocked"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == ip.to_string())
        .map(|b| b["name"].as_str().unwrap().to_owned())
}

/// Waits until `done` holds for the operator's view, or fails after `secs`.
fn await_view(config: &std::path::Path, secs: u64, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = resolved_view(config);
        if done(&v) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `sensor ARGS --json --config CONFIG`, which must succeed, as JSON.
fn sensor_ok(args: &[&str], config: &std::path::Path) -> Value {
    let out = Command::new(sensor_bin())
        .args(args)
        .args(["--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The intel's names, not only the operator's: a domain feed's names are blocked from the first
/// connection; a name ThreatBook judges malicious only after its answer passed, and an answer
/// whose CNAME reaches a feed's name, are blocked from userspace as soon as that is known; a
/// feed that gains a name blocks what was just resolved and retro-hunts: the client that
/// resolved it gets a backdated WeCom alert with its owner, within 5 s. The operator's
/// `unlist` undoes a name (and `relist` redoes it).
#[test]
fn names_from_feeds_and_verdicts_are_blocked_cnames_followed_late_ones_hunted_and_unlisted() {
    use sensor_testkit::{
        fake_threatbook::{FakeThreatBook, FakeVerdict},
        fake_wecom::FakeWeCom,
    };
    const TB_KEY: &str = "canary-tb-key-93d1";
    const WECOM_KEY: &str = "canary-wecom-key-71ab";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tb = rt.block_on(FakeThreatBook::start(TB_KEY)).unwrap();
    tb.set_domain("late.evil-example.net", FakeVerdict::malicious("C2"));
    // Slower than `intel.max_wait_ms`: the verdict comes after the answer went on.
    tb.set_delay(Some(Duration::from_millis(600)));
    let wecom = rt.block_on(FakeWeCom::start(WECOM_KEY));

    let client = Topology::new(false);
    let resolver = Topology::new(false);
    gateway(&client, &resolver);
    let feed_ip = resolver.add_client_v4(50);
    let late_ip = resolver.add_client_v4(51);
    let cname_ip = resolver.add_client_v4(52);
    let later_ip = resolver.add_client_v4(53);
    let clean_ip = resolver.add_client_v4(54);
    let zone = [
        format!("a.feed-evil.example.org. 300 IN A {feed_ip}"),
        format!("late.evil-example.net. 300 IN A {late_ip}"),
        format!("later.example.org. 300 IN A {later_ip}"),
        format!("clean.example.org. 300 IN A {clean_ip}"),
    ];
    let zone_refs: Vec<&str> = zone.iter().map(String::as_str).collect();
    let unbound = Unbound::start_with_auth(
        &resolver,
        &zone_refs,
        &[
            "www.shop.cnames.test. 300 IN CNAME x.cdn-evil.cnames.test.",
            &format!("x.cdn-evil.cnames.test. 300 IN A {cname_ip}"),
        ],
    );
    let server = resolver.v4(2).to_string();
    let _http = http_servers(
        &resolver.ns,
        &[feed_ip, late_ip, cname_ip, later_ip, clean_ip],
    );

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let feed = d.join("c2-domains.txt");
    std::fs::write(
        &feed,
        "# C2 domains\nfeed-evil.example.org\ncdn-evil.cnames.test\n",
    )
    .unwrap();
    std::fs::write(d.join("tb.key"), TB_KEY).unwrap();
    std::fs::write(d.join("wecom.key"), WECOM_KEY).unwrap();
    let client_ip = client.v4(2);
    std::fs::write(
        d.join("assets.csv"),
        format!("cidr_or_ip,owner,employee_id,hostname,department\n{client_ip},Zhang San,E10024,fin-pc-034,Finance\n"),
    )
    .unwrap();
    let name = unique("rint");
    let metrics = free_port();
    let config = d.join("sensor.toml");
    std::fs::write(
        &config,
        format!(
            r#"[sensor]
name = "{name}"
pin_root = "/sys/fs/bpf/dns-sensor-test-{name}"
[capture]
interfaces = ["{cif}", "{rif}"]
[metrics]
listen = "127.0.0.1:{metrics}"
[intel]
max_wait_ms = 100
[[intel.feeds]]
name = "c2-domains"
kind = "domains"
path = "{feed}"
reload_interval_ms = 100
[intel.threatbook]
base_url = "{tb_url}"
api_key = {{ file = "{d}/tb.key" }}
[intel.threatbook.limits]
batch_window_ms = 5
[alerts]
inventory = "{d}/assets.csv"
[[alerts.wecom]]
base_url = "{wecom_url}"
key = {{ file = "{d}/wecom.key" }}
[blocklist.policy]
state_dir = "{d}/state"
[blocklist.edl]
path = "{d}/edl.txt"
[pdns]
path = "{d}/pdns.sqlite"
[blocklist.resolved]
enabled = true
min_secs = 60
max_secs = 600
"#,
            cif = client.host_if,
            rif = resolver.host_if,
            feed = feed.display(),
            tb_url = tb.base_url(),
            wecom_url = wecom.base_url(),
            d = d.display(),
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(sensor_bin(), &config, d);
    // The daemon logs "sensor attached" before the worker lists the intel's names.
    await_view(
        &config,
        10,
        "the feed's names listed at start, with their source",
        |v| {
            let listed: Vec<(&str, &str)> = v["names"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| {
                    (
                        n["name"].as_str().unwrap(),
                        n["sources"][0].as_str().unwrap(),
                    )
                })
                .collect();
            listed
                == [
                    ("cdn-evil.cnames.test", "feed"),
                    ("feed-evil.example.org", "feed"),
                ]
        },
    );

    // A feed's name: unreachable from the first connection (the kernel).
    assert!(
        dig(&client, &server, &["a.feed-evil.example.org", "A"]).contains(&feed_ip.to_string())
    );
    assert!(
        !curl(&client, feed_ip),
        "a feed's name is blocked from the first connection"
    );
    assert!(curl(&client, clean_ip), "a clean name works");

    // A CNAME into a feed's domain: the kernel checks the question only; userspace follows
    // the chain and blocks the address for the feed's entry.
    let out = dig(&client, &server, &["www.shop.cnames.test", "A"]);
    assert!(
        out.contains("x.cdn-evil.cnames.test") && out.contains(&cname_ip.to_string()),
        "{out}"
    );
    await_view(&config, 5, "the CNAME's address blocked", |v| {
        blocked_for(v, cname_ip).as_deref() == Some("cdn-evil.cnames.test")
    });
    assert!(!curl(&client, cname_ip));

    // ThreatBook's verdict comes after the answer passed: listed on the verdict (exact, with
    // an expiry), and the answer that passed is blocked from userspace.
    assert!(dig(&client, &server, &["late.evil-example.net", "A"]).contains(&late_ip.to_string()));
    await_view(&config, 10, "the late verdict's answer blocked", |v| {
        blocked_for(v, late_ip).as_deref() == Some("late.evil-example.net")
    });
    assert!(!curl(&client, late_ip));
    let v = resolved_view(&config);
    let late = v["names"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "late.evil-example.net")
        .unwrap_or_else(|| panic!("listed on the verdict: {v}"));
    assert_eq!(late["sources"], serde_json::json!(["verdict"]));
    assert_eq!(late["exact"], true);
    assert!(
        late["expires_unix"].as_u64().unwrap() > 0,
        "a verdict's listing expires"
    );

    // Retro-hunt: a clean name resolved, then the feed gains it.
    assert!(dig(&client, &server, &["later.example.org", "A"]).contains(&later_ip.to_string()));
    assert!(curl(&client, later_ip), "clean when resolved");
    let before = wecom.accepted().len();
    let t0 = std::time::Instant::now();
    std::fs::write(
        &feed,
        "# C2 domains\nfeed-evil.example.org\ncdn-evil.cnames.test\nlater.example.org\n",
    )
    .unwrap();
    rt.block_on(wecom.wait_for(Duration::from_secs(10), |r| {
        r[before.min(r.len())..]
            .iter()
            .any(|m| m.content.contains("later.example.org") && m.content.contains("Zhang San"))
    }));
    let took = t0.elapsed();
    eprintln!("retro-hunt: the backdated alert arrived {took:?} after the feed file changed");
    assert!(
        took < Duration::from_secs(5),
        "the backdated alert came {took:?} after the feed changed"
    );
    let alert = wecom
        .accepted()
        .into_iter()
        .find(|m| m.content.contains("later.example.org"))
        .unwrap();
    assert!(
        alert.content.contains(&client_ip.to_string()),
        "{}",
        alert.content
    );
    assert!(
        alert.content.contains("retro-hunt"),
        "marked as a retro-hunt: {}",
        alert.content
    );
    await_view(&config, 5, "the just-resolved answer blocked", |v| {
        blocked_for(v, later_ip).as_deref() == Some("later.example.org")
    });
    assert!(!curl(&client, later_ip));
    assert!(metric(metrics, "dns_sensor_retro_hunt_alerts_total") >= 1);
    assert!(metric(metrics, "dns_sensor_resolved_fallback_blocked_total") >= 3);

    // The operator's undo, by name: unreachable → reachable at once, and it stays off the
    // list whatever the feed says; relist puts it back.
    let o = sensor_ok(
        &[
            "blocklist",
            "unlist",
            "feed-evil.example.org",
            "--reason",
            "false positive",
        ],
        &config,
    );
    assert_eq!(
        (
            o["names_removed"].as_u64(),
            o["destinations_removed"].as_u64()
        ),
        (Some(1), Some(1)),
        "{o}"
    );
    assert!(curl(&client, feed_ip), "reachable at once");
    assert!(
        dig(&client, &server, &["a.feed-evil.example.org", "A"]).contains(&feed_ip.to_string())
    );
    assert!(
        curl(&client, feed_ip),
        "an unlisted name's answer blocks nothing"
    );
    let v = resolved_view(&config);
    assert!(
        !v["names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "feed-evil.example.org"),
        "{v}"
    );
    assert_eq!(v["unlisted"][0]["name"], "feed-evil.example.org", "{v}");
    assert_eq!(v["unlisted"][0]["reason"], "false positive", "{v}");
    sensor_ok(
        &[
            "blocklist",
            "relist",
            "feed-evil.example.org",
            "--reason",
            "confirmed",
        ],
        &config,
    );
    await_view(&config, 5, "relisted", |v| {
        v["names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "feed-evil.example.org")
    });
    let _ = dig(&client, &server, &["a.feed-evil.example.org", "A"]);
    assert!(!curl(&client, feed_ip), "blocked again");
    let audit = std::fs::read_to_string(d.join("state/audit.jsonl")).unwrap();
    assert!(
        audit.contains("\"unlist\"") && audit.contains("\"relist\""),
        "{audit}"
    );

    daemon.stop();
    drop(unbound);
    rt.block_on(tb.stop());
}
