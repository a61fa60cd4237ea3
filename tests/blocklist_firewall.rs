//! The host-firewall exports against the real `nft`, `ipset` and `iptables`, in namespaces the
//! tests create (`sensor_testkit::fwns`): a listed /24 drops every one of its 254 hosts in both
//! directions while its neighbours pass, each element keeps its timeout and reason, and an
//! update that fails (an invalid element) or is killed mid-way leaves the previous content in
//! force, never an empty or half-filled set.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::{Command, Stdio},
    time::Duration,
};

use ipnet::IpNet;
use sensor_blocklist::export::{
    ExportEntry,
    ipset::{self, IpsetSection},
    nft::{self, NftSection},
};
use sensor_testkit::fwns::{FwPair, in_ns};

const WAIT: Duration = Duration::from_secs(10);

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn entry(net: &str, expires: Option<i64>, reason: &str) -> ExportEntry {
    ExportEntry {
        net: net.parse().unwrap(),
        expires,
        reason: reason.into(),
        severity: None,
        confidence: None,
    }
}

/// The peer's addresses: all 254 hosts of 10.77.1.0/24 and five IPv6 hosts of fd00:77:1::/64
/// (to be blocked as networks), one host 10.77.3.7 (to be blocked alone), and neighbours that
/// must pass.
struct Hosts {
    blocked: Vec<IpAddr>,
    passing: Vec<IpAddr>,
}

fn hosts() -> (Hosts, Vec<Ipv4Addr>, Vec<Ipv6Addr>) {
    let mut v4: Vec<Ipv4Addr> = (1..=254).map(|h| Ipv4Addr::new(10, 77, 1, h)).collect();
    v4.push(Ipv4Addr::new(10, 77, 3, 7));
    let pass4: Vec<Ipv4Addr> = (1..=5)
        .map(|h| Ipv4Addr::new(10, 77, 2, h))
        .chain([Ipv4Addr::new(10, 77, 0, 255), Ipv4Addr::new(10, 77, 3, 8)])
        .collect();
    let v6: Vec<Ipv6Addr> = (1..=5)
        .map(|h| Ipv6Addr::new(0xfd00, 0x77, 1, 0, 0, 0, 0, h))
        .collect();
    let pass6 = vec![Ipv6Addr::new(0xfd00, 0x77, 2, 0, 0, 0, 0, 1)];
    let h = Hosts {
        blocked: v4
            .iter()
            .map(|a| IpAddr::V4(*a))
            .chain(v6.iter().map(|a| IpAddr::V6(*a)))
            .collect(),
        passing: pass4
            .iter()
            .map(|a| IpAddr::V4(*a))
            .chain(pass6.iter().map(|a| IpAddr::V6(*a)))
            .collect(),
    };
    let all4 = v4.iter().chain(&pass4).copied().collect();
    let all6 = v6.iter().chain(&pass6).copied().collect();
    (h, all4, all6)
}

/// A reason with every printable ASCII punctuation and what a shell or nft would interpret.
const HOSTILE: &str = "config !#%&'()*+,-./:;<=>?@[]^_{|}~ $(x) `y` \\ é";
/// What the real programs must hold for it: printable ASCII kept, the rest `_`.
const HOSTILE_CLEAN: &str = "config !#%&'()*+,-./:;<=>?@[]^_{|}~ _(x) _y_ _ _";

fn listed(now: i64) -> Vec<ExportEntry> {
    vec![
        entry(
            "10.77.1.0/24",
            Some(now + 3_600),
            "nightly intel severity high",
        ),
        entry(
            "10.77.1.77/32",
            Some(now + 7_200),
            "inside the /24, lasts longer",
        ),
        entry("10.77.3.7/32", None, HOSTILE),
        entry(
            "fd00:77:1::/64",
            Some(now + 600),
            "v6 \"net\"; with\nnewline",
        ),
    ]
}

fn assert_blocks(pair: &FwPair, h: &Hosts) {
    let passing: BTreeSet<IpAddr> = h.passing.iter().copied().collect();
    let from = pair.arrived_from_peer(&h.blocked, &h.passing, WAIT);
    assert_eq!(
        from, passing,
        "from the peer: exactly the neighbours arrive (missing or extra)"
    );
    let to = pair.arrived_at_peer(&h.blocked, &h.passing, WAIT);
    assert_eq!(to, passing, "to the peer: exactly the neighbours arrive");
}

fn nft_elements(pair: &FwPair, set: &str) -> Vec<serde_json::Value> {
    let out = pair.fw_exec(&["nft", "-j", "list", "set", "inet", "dns_sensor", set]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|o| o.get("set"))
        .and_then(|s| s.get("elem"))
        .and_then(|e| e.as_array().cloned())
        .unwrap_or_default()
}

fn nft_count(pair: &FwPair) -> usize {
    ["block_v4", "block_v4_nets", "block_v6", "block_v6_nets"]
        .iter()
        .map(|s| nft_elements(pair, s).len())
        .sum()
}

fn ipset_count(pair: &FwPair, set: &str) -> usize {
    let out = pair.fw_exec(&["ipset", "list", "-t", set]);
    out.lines()
        .find_map(|l| l.strip_prefix("Number of entries: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Many host entries, for the kill tests (large enough that `nft`/`ipset` run for a while).
fn many(now: i64, n: u32) -> Vec<ExportEntry> {
    let mut v = listed(now);
    v.extend((0..n).map(|i| {
        let a = Ipv4Addr::from(0x2c00_0000 + i * 3);
        ExportEntry {
            net: IpNet::from(IpAddr::V4(a)),
            expires: Some(now + 86_400),
            reason: "bulk".into(),
            severity: None,
            confidence: None,
        }
    }));
    v
}

/// Starts `program args` in `ns` with `input` on stdin and kills it after `after`: returns
/// whether it had already finished.
fn kill_after(ns: &str, program: &str, args: &[&str], input: String, after: Duration) -> bool {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write as _;
        let _ = stdin.write_all(input.as_bytes());
    });
    // Fault injection at a chosen moment, not a wait for a condition.
    std::thread::sleep(after);
    let finished = child.try_wait().unwrap().is_some();
    let _ = child.kill();
    let _ = child.wait();
    let _ = writer.join();
    finished
}

#[test]
fn nft_sets_drop_every_host_of_a_listed_24_both_ways_and_spare_the_neighbours() {
    let (h, v4, v6) = hosts();
    let pair = FwPair::new(&v4, &v6);
    let section = NftSection {
        drop_rules: true,
        ..NftSection::default()
    };
    let t = now();
    let entries = listed(t);
    let (s, e) = (section.clone(), entries.clone());
    let (n, _) = in_ns(&pair.fw, move || nft::apply(&s, &e, t)).unwrap();
    // Hosts (hash sets): 10.77.1.77 and 10.77.3.7; networks (interval sets): the /24, the /64.
    assert_eq!(n, 4);
    assert_blocks(&pair, &h);

    // Each element keeps its expiry as a timeout and its reason (cleaned) as the comment.
    let hosts = nft_elements(&pair, "block_v4");
    let e77 = hosts
        .iter()
        .find(|e| e["elem"]["val"] == "10.77.1.77")
        .unwrap();
    let timeout = e77["elem"]["timeout"].as_u64().unwrap();
    assert!((7_100..=7_200).contains(&timeout), "{e77}");
    assert_eq!(e77["elem"]["comment"], "inside the /24, lasts longer");
    let permanent = hosts
        .iter()
        .find(|e| e.to_string().contains("10.77.3.7"))
        .unwrap();
    assert!(
        permanent
            .get("elem")
            .is_none_or(|e| e.get("timeout").is_none()),
        "{permanent}"
    );
    assert_eq!(permanent["elem"]["comment"], HOSTILE_CLEAN, "{permanent}");
    let v6 = nft_elements(&pair, "block_v6_nets");
    assert_eq!(v6.len(), 1);
    assert_eq!(v6[0]["elem"]["comment"], "v6 _net_; with_newline");

    // A second apply replaces (not appends): the same count, the same behaviour.
    let (s, e) = (section.clone(), entries.clone());
    in_ns(&pair.fw, move || nft::apply(&s, &e, t)).unwrap();
    assert_eq!(nft_count(&pair), 4);

    // An update with one invalid element is refused whole: the previous list stays.
    let shrunk = vec![entry("10.77.2.1/32", Some(t + 60), "would unblock the /24")];
    let (mut script, _) = nft::script(&section, &shrunk, t);
    script.push_str("add element inet dns_sensor block_v4 { 10.77.999.1 }\n");
    let err = in_ns(&pair.fw, move || {
        nft::run(std::path::Path::new("nft"), &script)
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("nft refused the update"), "{err}");
    assert_eq!(nft_count(&pair), 4, "the previous content stays");
    assert_blocks(&pair, &h);

    // An `nft -f` killed at any moment of a 30,000-entry update: the sets hold the old list or
    // the new one, never an empty or partial set.
    let big = many(t, 30_000);
    let (big_script, big_n) = nft::script(&section, &big, t);
    let mut interrupted = 0;
    for ms in [5, 40, 120, 300] {
        let finished = kill_after(
            &pair.fw,
            "nft",
            &["-f", "-"],
            big_script.clone(),
            Duration::from_millis(ms),
        );
        interrupted += usize::from(!finished);
        let count = nft_count(&pair);
        assert!(
            count == 4 || count == big_n,
            "killed after {ms} ms (finished: {finished}): {count} elements, expected 4 or {big_n}"
        );
        // Back to the small list for the next round.
        let (s, e) = (section.clone(), entries.clone());
        in_ns(&pair.fw, move || nft::apply(&s, &e, t)).unwrap();
    }
    assert!(interrupted > 0, "no run was killed before it finished");
    assert_blocks(&pair, &h);
}

#[test]
fn nft_without_create_sets_refuses_missing_sets_and_owns_no_rules() {
    let (_, v4, v6) = hosts();
    let pair = FwPair::new(&v4, &v6);
    let section = NftSection {
        create_sets: false,
        ..NftSection::default()
    };
    let t = now();
    let s = section.clone();
    let err = in_ns(&pair.fw, move || nft::apply(&s, &listed(t), t))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nft refused"), "{err}");
    // With create_sets (default) and no drop_rules: table and sets, no chain.
    in_ns(&pair.fw, move || {
        nft::apply(&NftSection::default(), &listed(t), t)
    })
    .unwrap();
    let ruleset = pair.fw_exec(&["nft", "list", "ruleset"]);
    assert!(ruleset.contains("set block_v4_nets"), "{ruleset}");
    assert!(!ruleset.contains("chain"), "{ruleset}");
}

#[test]
fn ipset_swap_drops_every_host_of_a_listed_24_both_ways_and_spare_the_neighbours() {
    let (h, v4, v6) = hosts();
    let pair = FwPair::new(&v4, &v6);
    let section = IpsetSection::default();
    let t = now();
    let entries = listed(t);
    let (s, e) = (section.clone(), entries.clone());
    let (n, _) = in_ns(&pair.fw, move || ipset::apply(&s, &e, t)).unwrap();
    assert_eq!(n, 4, "overlapping networks go in as listed");
    // The operator's rules (the sensor creates sets, not rules).
    for (tool, set) in [
        ("iptables", "dns-sensor-v4"),
        ("ip6tables", "dns-sensor-v6"),
    ] {
        pair.fw_exec(&[
            tool,
            "-I",
            "INPUT",
            "-m",
            "set",
            "--match-set",
            set,
            "src",
            "-j",
            "DROP",
        ]);
        pair.fw_exec(&[
            tool,
            "-I",
            "OUTPUT",
            "-m",
            "set",
            "--match-set",
            set,
            "dst",
            "-j",
            "DROP",
        ]);
    }
    assert_blocks(&pair, &h);
    let saved = pair.fw_exec(&["ipset", "save", "dns-sensor-v4"]);
    assert!(
        saved.contains("add dns-sensor-v4 10.77.1.77 timeout ")
            && saved.contains("comment \"inside the /24, lasts longer\""),
        "{saved}"
    );
    assert!(
        saved.contains(&format!(
            "add dns-sensor-v4 10.77.3.7 timeout 0 comment \"{HOSTILE_CLEAN}\""
        )),
        "{saved}"
    );

    // An invalid element: the temporary set is abandoned, the live set stays.
    let shrunk = vec![entry("10.77.2.1/32", Some(t + 60), "would unblock the /24")];
    let (script, _) = ipset::script(&section, &shrunk, t).unwrap();
    let script = script.replacen(
        "swap ",
        "add dns-sensor-v4-new 10.77.999.1 timeout 0\nswap ",
        1,
    );
    let s = section.clone();
    let err = in_ns(&pair.fw, move || ipset::install(&s, &script))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ipset refused the update"), "{err}");
    assert_eq!(ipset_count(&pair, "dns-sensor-v4"), 3);
    let names = pair.fw_exec(&["ipset", "list", "-n"]);
    assert!(!names.contains("-new"), "temporary sets cleaned: {names}");
    assert_blocks(&pair, &h);

    // `ipset restore` killed mid-way: the live set is the old one or the new one.
    let big = many(t, 30_000);
    let (big_script, _) = ipset::script(&section, &big, t).unwrap();
    let mut interrupted = 0;
    for ms in [5, 40, 120] {
        let finished = kill_after(
            &pair.fw,
            "ipset",
            &["restore"],
            big_script.clone(),
            Duration::from_millis(ms),
        );
        interrupted += usize::from(!finished);
        let count = ipset_count(&pair, "dns-sensor-v4");
        assert!(
            count == 3 || count == 30_003,
            "killed after {ms} ms (finished: {finished}): {count} entries"
        );
        // The next apply clears what the killed run left and restores the small list.
        let (s, e) = (section.clone(), entries.clone());
        in_ns(&pair.fw, move || ipset::apply(&s, &e, t)).unwrap();
        assert_eq!(ipset_count(&pair, "dns-sensor-v4"), 3);
    }
    assert!(interrupted > 0, "no run was killed before it finished");
    assert_blocks(&pair, &h);
}

/// The daemon, run inside `fw`, fills the host's nft sets at start from the config's entries
/// and the stored nightly list, and follows a SIGHUP that changes `blocklist.entries`.
#[test]
fn the_daemon_fills_the_nft_sets_at_start_and_follows_sighup() {
    use sensor_blocklist::{
        neverblock::NeverBlock,
        store::{PolicySection, Store, Verdict},
    };
    use sensor_model::verdict::{Confidence, Severity};

    let pair = FwPair::new(&[], &[]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A stored nightly list with one address, as a previous run left it.
    let policy = PolicySection {
        state_dir: d.join("state"),
        ..PolicySection::default()
    };
    let mut store = Store::load(&policy.state_dir).unwrap();
    let verdict = Verdict {
        ip: "45.33.32.156".parse().unwrap(),
        malicious: true,
        confidence: Some(Confidence::High),
        severity: Some(Severity::High),
    };
    let plan = store
        .plan(
            time::OffsetDateTime::now_utc(),
            &[verdict],
            &NeverBlock::new(&[], &[]),
            &policy,
            false,
        )
        .unwrap();
    store.commit(&plan).unwrap();

    let name = sensor_testkit::netns::unique("fwexp");
    let config = d.join("sensor.toml");
    let write_config = |entries: &str| {
        std::fs::write(
            &config,
            format!(
                r#"[sensor]
name = "{name}"
pin_root = "/sys/fs/bpf/dns-sensor-test-{name}"

[capture]
interfaces = ["{iface}"]

[blocklist]
entries = [{entries}]
results_dir = "{dir}/results"

[blocklist.policy]
state_dir = "{dir}/state"

[blocklist.edl]
path = "{dir}/edl.txt"

[blocklist.export.nft]
drop_rules = true
"#,
                iface = pair.fw_if,
                dir = d.display(),
            ),
        )
        .unwrap();
    };
    write_config("\"10.77.1.0/24\"");
    let mut daemon =
        sensor_testkit::daemon::Daemon::start_in_netns(&pair.fw, common::sensor_bin(), &config, d);
    // Filled before the sensor reports itself attached.
    let nets = nft_elements(&pair, "block_v4_nets");
    assert_eq!(nets.len(), 1, "{nets:?}");
    assert!(nets[0].to_string().contains("\"10.77.1.0\""), "{nets:?}");
    let hosts = nft_elements(&pair, "block_v4");
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_eq!(hosts[0]["elem"]["val"], "45.33.32.156");
    assert!(
        hosts[0]["elem"]["comment"]
            .as_str()
            .unwrap()
            .starts_with("nightly intel severity high confidence high"),
        "{hosts:?}"
    );
    assert!(hosts[0]["elem"]["timeout"].as_u64().unwrap() > 29 * 86_400);

    // SIGHUP with another static entry: the sets follow, the stored entry stays.
    write_config("\"10.77.2.0/24\"");
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let nets = nft_elements(&pair, "block_v4_nets");
        if nets.len() == 1 && nets[0].to_string().contains("\"10.77.2.0\"") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sets did not follow the SIGHUP: {nets:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(nft_elements(&pair, "block_v4").len(), 1);
    daemon.stop();
}
