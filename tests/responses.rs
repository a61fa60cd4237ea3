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

impl Unbound {
    fn start(topo: &Topology, zone: &[&str]) -> Self {
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
        // Ready when it answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = topo
                .command("dig")
                .args(["+tries=1", "+timeout=1", "+short"])
                .arg(format!("@{addr}"))
                .arg("www.example.test")
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

#[test]
fn a_gateway_sensor_pairs_each_answer_with_its_query_and_counts_the_unanswered() {
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
        // The answer section as dig printed it: name, TTL, type, data per record.
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
        assert_eq!(got, want, "{qname} {qtype}");
        if *n != "nope" {
            assert!(!want.is_empty(), "unbound answered {qname} {qtype}");
        }
        let ips: Vec<&str> = want
            .iter()
            .filter(|r| r.2 == "A" || r.2 == "AAAA")
            .map(|r| r.3.as_str())
            .collect();
        let mut resolved: Vec<&str> = d["dns"]["resolved_ip"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
            .unwrap_or_default();
        resolved.sort();
        let mut ips = ips;
        ips.sort();
        assert_eq!(resolved, ips, "{qname} {qtype}");
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
