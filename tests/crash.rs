//! What a `kill -9` leaves, for both `capture.on_crash` choices, and SIGHUP reloading the
//! kernel lists from the config without detaching or losing an event. The real sensor binary,
//! attached to a veth whose other end is in a namespace the test creates; steady query traffic
//! from two clients while it happens. Needs root, iproute2, bpftool and dig.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use common::{PinRoot, sensor_bin};
use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use sensor_testkit::{
    daemon::{Daemon, stats_json},
    netns::{Topology, unique},
    responder::Responder,
    traffic::Flood,
};
use serde_json::Value;

/// Polls `cond` (every 20 ms) until it holds; panics with `what` after `timeout`.
fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The XDP attachments of interface `ifname`, as (link id, program id): the programs from `ip
/// link` (every attachment, in its `attached` list), each with the BPF link that holds it from
/// `bpftool link` (this bpftool does not print a link's ifindex, so links are matched by
/// program; each test's program is its own).
fn xdp_links(ifname: &str) -> Vec<(u64, u64)> {
    let out = Command::new("ip")
        .args(["-j", "-d", "link", "show", "dev", ifname])
        .output()
        .expect("run ip");
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip JSON");
    let progs: Vec<u64> = v[0]["xdp"]["attached"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["prog"]["id"].as_u64()).collect())
        .unwrap_or_default();
    let out = Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .expect("run bpftool");
    assert!(out.status.success(), "bpftool link show failed");
    let links: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    progs
        .into_iter()
        .map(|prog| {
            let link = links
                .as_array()
                .expect("array")
                .iter()
                .find(|l| l["type"] == "xdp" && l["prog_id"] == prog)
                .and_then(|l| l["id"].as_u64())
                .unwrap_or_else(|| panic!("program {prog} is attached without a BPF link"));
            (link, prog)
        })
        .collect()
}

/// The program the interface runs, as `ip link` reports it (None: no XDP attached).
fn attached_prog(ifname: &str) -> Option<u64> {
    let out = Command::new("ip")
        .args(["-j", "-d", "link", "show", "dev", ifname])
        .output()
        .expect("run ip");
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip JSON");
    v[0]["xdp"]["prog"]["id"].as_u64()
}

/// `sensor blocklist show --json`: net → packets.
fn blocklist(config: &Path) -> Vec<(String, u64)> {
    let out = Command::new(sensor_bin())
        .args(["blocklist", "show", "--json", "--config"])
        .arg(config)
        .output()
        .expect("sensor blocklist show");
    assert!(
        out.status.success(),
        "blocklist show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v["kernel"]
        .as_array()
        .expect("array")
        .iter()
        .map(|e| {
            (
                e["net"].as_str().expect("net").to_owned(),
                e["packets"].as_u64().expect("packets"),
            )
        })
        .collect()
}

fn hits(config: &Path, net: &str) -> u64 {
    blocklist(config)
        .into_iter()
        .find(|(n, _)| n == net)
        .map_or(0, |(_, p)| p)
}

/// Lines whose `source.ip` is `ip`.
fn events_from(lines: &[String], ip: IpAddr) -> usize {
    let ip = ip.to_string();
    lines
        .iter()
        .filter(|l| {
            serde_json::from_str::<Value>(l).expect("JSON line")["source"]["ip"] == ip.as_str()
        })
        .count()
}

struct Setup {
    topo: Topology,
    _responder: Responder,
    server: IpAddr,
    client: IpAddr,
    attacker: IpAddr,
    dir: tempfile::TempDir,
    config: PathBuf,
    _pins: PinRoot,
}

impl Setup {
    fn new(on_crash: &str) -> Self {
        let topo = Topology::new(false);
        let server = IpAddr::V4(topo.v4(1));
        let client = IpAddr::V4(topo.v4(2));
        let attacker = IpAddr::V4(topo.add_client_v4(3));
        let responder = Responder::start(&[server]);
        let dir = tempfile::tempdir().expect("tempdir");
        let name = unique("crash");
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/dns-sensor-test-{name}"));
        let config = dir.path().join("sensor.toml");
        let s = Self {
            topo,
            _responder: responder,
            server,
            client,
            attacker,
            config,
            _pins: PinRoot(pin_root.clone()),
            dir,
        };
        s.write_config(&format!(
            r#"[sensor]
name = "{name}"
pin_root = "{pins}"

[capture]
interfaces = ["{iface}"]
on_crash = "{on_crash}"

[blocklist]
entries = ["{attacker}"]

[blocklist.policy]
state_dir = "{dir}/state"
"#,
            pins = pin_root.display(),
            iface = s.topo.host_if,
            attacker = s.attacker,
            dir = s.dir.path().display(),
        ));
        s
    }

    fn write_config(&self, text: &str) {
        // Write aside and rename, as a deploy tool would: the sensor never reads half a file.
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &self.config).expect("rename config");
    }

    fn start(&self, run: &str) -> Daemon {
        let workdir = self.dir.path().join(run);
        std::fs::create_dir_all(&workdir).expect("workdir");
        Daemon::start(sensor_bin(), &self.config, &workdir)
    }

    fn flood(&self, source: IpAddr, rate: u32) -> Flood {
        Flood::start(
            &self.topo.ns,
            SocketAddr::new(source, 0),
            SocketAddr::new(self.server, 53),
            rate,
            (0..50).map(|i| format!("host{i}.crash.example")).collect(),
        )
    }

    /// One `dig` from `source`: did an answer come back?
    fn dig(&self, source: IpAddr) -> bool {
        self.topo
            .command("dig")
            .args([
                "+tries=1",
                "+timeout=1",
                "-b",
                &source.to_string(),
                &format!("@{}", self.server),
                "probe.crash.example",
                "A",
            ])
            .output()
            .expect("run dig")
            .status
            .success()
    }

    fn attacker_net(&self) -> String {
        format!("{}/32", self.attacker)
    }

    /// Starts the sensor with the client (1,000 queries/s) and the blocklisted attacker
    /// (200/s) sending, and waits until both show: events written, blocklist hits counted.
    fn start_under_traffic(&self) -> (Daemon, Flood, Flood) {
        let daemon = self.start("run1");
        let good = self.flood(self.client, 1000);
        let bad = self.flood(self.attacker, 200);
        wait_until("events and blocklist hits", Duration::from_secs(20), || {
            events_from(&daemon.lines(), self.client) > 0
                && hits(&self.config, &self.attacker_net()) > 0
        });
        (daemon, good, bad)
    }
}

#[test]
fn kill9_in_fail_open_mode_detaches_and_a_restart_attaches_once_with_the_same_blocklist() {
    let s = Setup::new("fail-open");
    let ifx = s.topo.host_if.as_str();
    let (mut daemon, good, bad) = s.start_under_traffic();
    let before: Vec<String> = blocklist(&s.config).into_iter().map(|(n, _)| n).collect();
    assert_eq!(before, vec![s.attacker_net()]);
    assert_eq!(xdp_links(ifx).len(), 1);

    daemon.kill9();

    // Fail open: the attachment went with the process, and the blocked source gets through.
    wait_until("the attachment to go", Duration::from_secs(10), || {
        xdp_links(ifx).is_empty()
    });
    assert_eq!(
        attached_prog(&s.topo.host_if),
        None,
        "ip link still shows XDP"
    );
    assert!(
        s.dig(s.attacker),
        "fail open: the blocklisted source passes while the sensor is down"
    );

    // A restart (same config, same name) attaches exactly once, with the same blocklist.
    let mut daemon = s.start("run2");
    let links = xdp_links(ifx);
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(attached_prog(&s.topo.host_if), Some(links[0].1));
    let after: Vec<String> = blocklist(&s.config).into_iter().map(|(n, _)| n).collect();
    assert_eq!(after, before);
    assert!(!s.dig(s.attacker), "blocked again after the restart");
    wait_until("events after the restart", Duration::from_secs(20), || {
        events_from(&daemon.lines(), s.client) > 0 && hits(&s.config, &s.attacker_net()) > 0
    });
    good.stop();
    bad.stop();
    daemon.stop();
    assert!(xdp_links(ifx).is_empty(), "a clean stop detaches");
    assert!(!s._pins.0.join(unique_dir_name(&s.config)).exists());
}

#[test]
fn kill9_in_keep_blocking_mode_keeps_dropping_and_a_restart_takes_the_attachment_over() {
    let s = Setup::new("keep-blocking");
    let ifx = s.topo.host_if.as_str();
    let (mut daemon, good, bad) = s.start_under_traffic();
    let links = xdp_links(ifx);
    assert_eq!(links.len(), 1, "{links:?}");
    let (link_id, prog_before) = links[0];

    daemon.kill9();
    let hits_at_kill = hits(&s.config, &s.attacker_net());
    let events_at_kill = stats_json(sensor_bin(), &s.config)["events"]
        .as_u64()
        .expect("events");

    // The pinned attachment outlives the process: the same link, still dropping and counting.
    assert_eq!(xdp_links(ifx), vec![(link_id, prog_before)]);
    assert_eq!(attached_prog(&s.topo.host_if), Some(prog_before));
    wait_until(
        "hits while the daemon is dead",
        Duration::from_secs(10),
        || hits(&s.config, &s.attacker_net()) > hits_at_kill,
    );
    assert!(!s.dig(s.attacker), "still blocked while the sensor is down");
    assert!(s.dig(s.client), "inline mode: other queries still pass");

    // An entry with a 2-second lifetime, written while the daemon is dead: dropped at once, and
    // the kernel itself stops enforcing it when its time has come, no userspace involved.
    let short_lived = IpAddr::V4(s.topo.add_client_v4(4));
    let pin_dir = s._pins.0.join(unique_dir_name(&s.config));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    sensor_kernel::lists::blocklist::install(
        &pin_dir,
        &[(ipnet::IpNet::from(short_lived), now + 2)],
        &[ipnet::IpNet::from(s.attacker)],
    )
    .expect("install into the pinned map of the dead daemon");
    assert!(!s.dig(short_lived), "dropped before its expiry");
    wait_until(
        "the 2-second entry to lapse in the kernel",
        Duration::from_secs(10),
        || s.dig(short_lived),
    );
    let lapsed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(lapsed_at >= now + 2, "passed before its expiry");
    assert!(!s.dig(s.attacker), "the lasting entry still drops");
    assert!(
        stats_json(sensor_bin(), &s.config)["block_expired"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "passes of the lapsed entry are counted"
    );
    wait_until(
        "the program to go on writing events",
        Duration::from_secs(10),
        || stats_json(sensor_bin(), &s.config)["events"].as_u64() > Some(events_at_kill),
    );

    // The restart swaps its program into the same link: one attachment, the kept blocklist with
    // its counters.
    let hits_before_restart = hits(&s.config, &s.attacker_net());
    let mut daemon = s.start("run2");
    let links = xdp_links(ifx);
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0].0, link_id, "the same link, taken over");
    assert_ne!(links[0].1, prog_before, "the new program runs in it");
    assert_eq!(attached_prog(&s.topo.host_if), Some(links[0].1));
    let kept = blocklist(&s.config);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].0, s.attacker_net());
    assert!(
        kept[0].1 >= hits_before_restart,
        "hit counter kept: {kept:?}"
    );
    wait_until("events after the restart", Duration::from_secs(20), || {
        events_from(&daemon.lines(), s.client) > 0
    });
    good.stop();
    bad.stop();
    daemon.stop();

    // A clean stop detaches even in keep-blocking mode, and removes the pins.
    assert!(xdp_links(ifx).is_empty(), "a clean stop detaches");
    assert_eq!(attached_prog(&s.topo.host_if), None);
    assert!(!s._pins.0.join(unique_dir_name(&s.config)).exists());
}

#[test]
fn sighup_reloads_the_kernel_lists_without_detaching_or_losing_an_event() {
    let s = Setup::new("fail-open");
    let ifx = s.topo.host_if.as_str();
    let other = IpAddr::V4(s.topo.add_client_v4(4));
    let mut daemon = s.start("run1");
    let links_before = xdp_links(ifx);
    assert_eq!(links_before.len(), 1);
    let a = s.flood(s.client, 1000);
    let b = s.flood(other, 300);
    wait_until("events from both clients", Duration::from_secs(20), || {
        let lines = daemon.lines();
        eprintln!(
            "DEBUG lines={} sent={} stats={}",
            lines.len(),
            a.sent(),
            stats_json(sensor_bin(), &s.config)
        );
        events_from(&lines, s.client) > 0 && events_from(&lines, other) > 0
    });

    // Allow `other`, and block nobody any more.
    let text = std::fs::read_to_string(&s.config).expect("config");
    let text = text
        .replace(&format!("entries = [\"{}\"]", s.attacker), "entries = []")
        .replace(
            "[blocklist]",
            &format!("[filter]\nclient_allow = [\"{other}\"]\n\n[blocklist]"),
        );
    s.write_config(&text);
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    daemon.wait_for_log("kernel lists reloaded", Duration::from_secs(10));
    assert!(s.dig(s.attacker), "no longer blocked after the reload");
    let allowlisted = || {
        stats_json(sensor_bin(), &s.config)["allowlisted"]
            .as_u64()
            .expect("allowlisted")
    };
    wait_until("allowlisted queries", Duration::from_secs(10), || {
        allowlisted() > 0
    });
    assert_eq!(
        xdp_links(ifx),
        links_before,
        "still the same attachment and program"
    );

    let sent_a = a.stop();
    let sent_b = b.stop();
    // Every query the floods sent has gone through the program before the sensor stops.
    let probes = 1; // the dig from the attacker above
    let expected = sent_a + sent_b + probes;
    wait_until(
        "the kernel to see every query",
        Duration::from_secs(10),
        || stats_json(sensor_bin(), &s.config)["dns_queries"].as_u64() == Some(expected),
    );
    let allowlisted = allowlisted();
    let lines = daemon.stop();
    assert_eq!(
        events_from(&lines, s.client) as u64,
        sent_a,
        "no event of client A lost"
    );
    assert_eq!(
        events_from(&lines, other) as u64 + allowlisted,
        sent_b,
        "every query of the newly allowed client is an event (before) or allowlisted (after)"
    );
    assert_eq!(events_from(&lines, s.attacker), probes as usize);
    assert_eq!(lines.len() as u64, sent_a + sent_b + probes - allowlisted);
}

/// The instance directory under the pin root (its name is the sensor's name).
fn unique_dir_name(config: &Path) -> String {
    let text = std::fs::read_to_string(config).expect("config");
    text.lines()
        .find_map(|l| l.strip_prefix("name = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("name in config")
        .to_owned()
}
