//! The operator's controls over blocking, against the real sensor binary attached to a veth in
//! a namespace the test creates: `sensor blocklist unblock|allow|revoke|list` take effect in
//! the kernel map and the served EDL within a second, with the daemon running or not, survive a
//! restart, leave an audit record, and protected addresses (the host's own) are cut out of a
//! static range. A corrupt state file stops the start with one line naming it. Needs root,
//! iproute2 and dig.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use common::{PinRoot, sensor_bin};
use std::{
    io::{Read, Write},
    net::{IpAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use sensor_testkit::{
    daemon::Daemon,
    netns::{Topology, unique},
    osmem::free_port,
    responder::Responder,
};
use serde_json::Value;

/// Two public addresses the nightly job listed (stored in state.json).
const LISTED_A: &str = "45.33.32.156";
const LISTED_B: &str = "45.33.32.157";

struct Setup {
    topo: Topology,
    _responder: Responder,
    server: IpAddr,
    dir: tempfile::TempDir,
    config: PathBuf,
    edl_port: u16,
    _pins: PinRoot,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Setup {
    fn new() -> Self {
        let topo = Topology::new(false);
        let server = IpAddr::V4(topo.v4(1));
        let responder = Responder::start(&[server]);
        let dir = tempfile::tempdir().expect("tempdir");
        let name = unique("oper");
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/dns-sensor-test-{name}"));
        let config = dir.path().join("sensor.toml");
        let edl_port = free_port();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let entry = |ip: &str| {
            serde_json::json!({
                "ip": ip, "first_listed": now() - 86_400, "last_malicious": now() - 86_400,
                "expires": now() + 20 * 86_400, "severity": "high", "confidence": "high",
            })
        };
        std::fs::write(
            state.join("state.json"),
            serde_json::json!({"version": 1, "entries": [entry(LISTED_A), entry(LISTED_B)]})
                .to_string(),
        )
        .unwrap();
        // The whole /24 of the test network is blocked by a static entry: the host's own
        // address in it (the responder's) must be cut out automatically.
        let net24 = format!("{}/24", topo.v4(0));
        std::fs::write(
            &config,
            format!(
                r#"[sensor]
name = "{name}"
pin_root = "{pins}"

[capture]
interfaces = ["{iface}"]

[blocklist]
entries = ["{net24}"]

[blocklist.policy]
state_dir = "{state}"

[blocklist.edl]
path = "{dir}/edl.txt"
listen = "127.0.0.1:{edl_port}"
allowed_clients = ["127.0.0.1"]
"#,
                pins = pin_root.display(),
                iface = topo.host_if,
                state = state.display(),
                dir = dir.path().display(),
            ),
        )
        .unwrap();
        Self {
            topo,
            _responder: responder,
            server,
            dir,
            config,
            edl_port,
            _pins: PinRoot(pin_root),
        }
    }

    fn start(&self, run: &str) -> Daemon {
        let workdir = self.dir.path().join(run);
        std::fs::create_dir_all(&workdir).unwrap();
        Daemon::start(sensor_bin(), &self.config, &workdir)
    }

    fn dig(&self, source: IpAddr) -> bool {
        self.topo
            .command("dig")
            .args(["+tries=1", "+timeout=1", "-b", &source.to_string()])
            .args([&format!("@{}", self.server), "probe.oper.example", "A"])
            .output()
            .expect("run dig")
            .status
            .success()
    }

    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(sensor_bin())
            .arg("blocklist")
            .args(args)
            .args(["-c", self.config.to_str().unwrap()])
            .env("SUDO_USER", "alice")
            .output()
            .expect("run sensor blocklist");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn cli_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let (ok, out, err) = self.cli(&a);
        assert!(ok, "sensor blocklist {args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// The networks in the running sensor's BLOCKLIST.
    fn kernel_nets(&self) -> Vec<String> {
        self.cli_json(&["show"])["kernel"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["net"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The EDL as the server hands it out.
    fn edl(&self) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.edl_port)).expect("connect to the EDL");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET /blocklist.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        body
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("state/audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

#[test]
fn unblock_allow_and_revoke_act_within_a_second_survive_a_restart_and_are_audited() {
    let s = Setup::new();
    let infected = IpAddr::V4(s.topo.v4(2));
    let partner = IpAddr::V4(s.topo.add_client_v4(5));
    let mut daemon = s.start("run1");

    // At start: the static /24 is installed with the host's own address cut out, and the
    // stored nightly entries are in the kernel and the EDL.
    let nets = s.kernel_nets();
    assert!(nets.contains(&format!("{LISTED_A}/32")), "{nets:?}");
    assert!(!s.dig(infected), "the static /24 drops the infected client");
    assert!(!s.dig(partner), "and the partner, until allowed");
    assert!(
        !nets.contains(&format!("{}/24", s.topo.v4(0))),
        "the /24 is cut around the host's own address: {nets:?}"
    );
    let edl = s.edl();
    assert!(edl.contains(LISTED_A) && edl.contains(LISTED_B), "{edl}");

    // unblock: the kernel entry goes before the command returns; the served EDL within 1 s.
    let t0 = Instant::now();
    let out = s.cli_json(&["unblock", LISTED_A, "--for", "1h", "--reason", "ticket 7"]);
    assert_eq!(out["action"], "unblock");
    assert_eq!(out["by"], "alice");
    assert_eq!(out["removed_from_store"], 1);
    assert!(!s.kernel_nets().contains(&format!("{LISTED_A}/32")));
    wait_until(
        "the EDL to drop the unblocked address",
        Duration::from_secs(1),
        || !s.edl().contains(LISTED_A),
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "unblock took {:?} end to end",
        t0.elapsed()
    );
    assert!(s.edl().contains(LISTED_B));

    // allow: a hole in the static range, in the kernel at once.
    let out = s.cli_json(&["allow", &partner.to_string(), "--reason", "partner VPN"]);
    assert_eq!(out["action"], "allow");
    assert!(s.dig(partner), "allowed: passes");
    assert!(!s.dig(infected), "the rest of the /24 stays blocked");

    // list shows both decisions, who and why, and the protected host address.
    let list = s.cli_json(&["list"]);
    let items = list.as_array().unwrap();
    let find = |net: String| {
        items
            .iter()
            .find(|i| i["net"] == net.as_str())
            .unwrap_or_else(|| panic!("{net} in {list}"))
            .clone()
    };
    let a = find(format!("{LISTED_A}/32"));
    assert_eq!(a["kind"], "operator_unblock");
    assert_eq!(a["why"], "ticket 7");
    assert!(a["until"].is_string());
    assert_eq!(find(format!("{partner}/32"))["kind"], "operator_allow");
    assert_eq!(find(format!("{}/32", s.topo.v4(1)))["kind"], "protected");

    // A restart re-plans with the decisions in force: nothing comes back.
    daemon.stop();
    let mut daemon = s.start("run2");
    assert!(!s.kernel_nets().contains(&format!("{LISTED_A}/32")));
    assert!(!s.edl().contains(LISTED_A));
    assert!(s.dig(partner), "still allowed after the restart");
    assert!(!s.dig(infected));

    // revoke: the undo of allow.
    let out = s.cli_json(&["revoke", &partner.to_string(), "--reason", "VPN ended"]);
    assert_eq!(out["action"], "revoke");
    assert!(!s.dig(partner), "blocked again by the static range");

    // With the daemon stopped, an unblock still updates the state and the EDL file.
    daemon.stop();
    let (ok, out, err) = s.cli(&["unblock", LISTED_B, "--reason", "false positive"]);
    assert!(ok, "{err}");
    assert!(out.contains("no running sensor"), "{out}");
    let file = std::fs::read_to_string(s.dir.path().join("edl.txt")).unwrap();
    assert!(!file.contains(LISTED_B), "{file}");
    let state = std::fs::read_to_string(s.dir.path().join("state/state.json")).unwrap();
    assert!(!state.contains(LISTED_B), "{state}");

    // Every decision is in the audit log: when, who, what, why.
    let audit = s.audit();
    let actions: Vec<&str> = audit
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["unblock", "allow", "revoke", "unblock"]);
    assert!(audit.iter().all(|r| r["by"] == "alice" && r["at"].is_i64()));
    assert_eq!(audit[0]["reason"], "ticket 7");

    // Missing reason: refused, nothing recorded.
    let (ok, _, err) = s.cli(&["unblock", LISTED_A, "--reason", " "]);
    assert!(!ok && err.contains("--reason"), "{err}");
    assert_eq!(s.audit().len(), 4);
}

#[test]
fn a_corrupt_state_file_stops_the_start_with_one_line_naming_it() {
    let s = Setup::new();
    let state = s.dir.path().join("state/state.json");
    std::fs::write(&state, "{\"version\": 1, \"entries\": [tru").unwrap();
    let out = Command::new(sensor_bin())
        .args(["run", "-c", s.config.to_str().unwrap()])
        .output()
        .expect("run the sensor");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error:") && last.contains(&state.display().to_string()),
        "{err}"
    );
    assert!(
        !Path::new(&s._pins.0).join("BLOCKLIST").exists(),
        "nothing left pinned"
    );
}
