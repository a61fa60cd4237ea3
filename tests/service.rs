//! The sensor as packaging/dns-sensor.service runs it, without systemd as PID 1: a non-root
//! system user with exactly the unit's capabilities (parsed from the unit, so test and unit
//! cannot drift), `NoNewPrivileges`, `$RUNTIME_DIRECTORY`, and the unit's bpffs layout
//! (`TemporaryFileSystem=/sys/fs/bpf` + `BindPaths=<pin root>`) rebuilt in a private mount
//! namespace. Needs root, util-linux (setpriv, unshare), iproute2, dig, strace and
//! systemd-analyze; fails without them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use common::sensor_bin;
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Read, Write},
    net::IpAddr,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use sensor_testkit::{
    netns::{Topology, sh, unique},
    responder::{Responder, Seen},
};
use serde_json::{Value, json};

const UNIT: &str = include_str!("../packaging/dns-sensor.service");

/// The unit's `[Service]` settings: key → values in order (a key may repeat).
fn unit_settings() -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = "";
    for line in UNIT.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section == "[Service]" {
            let (k, v) = line.split_once('=').expect("key=value");
            out.entry(k.to_owned()).or_default().push(v.to_owned());
        }
    }
    out
}

fn one(settings: &BTreeMap<String, Vec<String>>, key: &str) -> String {
    let v = settings
        .get(key)
        .unwrap_or_else(|| panic!("the unit sets {key}="));
    assert_eq!(v.len(), 1, "{key}= once");
    v[0].clone()
}

/// The capabilities the unit grants, e.g. ["CAP_BPF", ...], checked to be the same in
/// `AmbientCapabilities=` and `CapabilityBoundingSet=`.
fn unit_caps() -> Vec<String> {
    let s = unit_settings();
    let ambient: Vec<String> = one(&s, "AmbientCapabilities")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let bounding: Vec<String> = one(&s, "CapabilityBoundingSet")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(ambient, bounding, "ambient and bounding sets agree");
    ambient
}

/// A system user created for one test and removed (with its group) on drop.
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

impl User {
    fn new() -> Self {
        let name = unique("dss");
        sh(
            "useradd",
            &[
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                &name,
            ],
        );
        let id =
            |flag: &str| -> u32 { sh("id", &[flag, &name]).trim().parse().expect("numeric id") };
        Self {
            uid: id("-u"),
            gid: id("-g"),
            name,
        }
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// A directory owned by the test user, removed with its content on drop (also on bpffs, where
/// removing a pin unpins it).
struct OwnedDir(PathBuf);

impl OwnedDir {
    fn new(path: PathBuf, user: &User, mode: u32) -> Self {
        std::fs::create_dir_all(&path).expect("create dir");
        std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid)).expect("chown");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        Self(path)
    }

    fn entries(&self) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for OwnedDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything one run of the sensor as the service needs: user, pin root, runtime directory,
/// config, and a veth in a namespace.
struct Service {
    user: User,
    topo: Topology,
    dir: tempfile::TempDir,
    config: PathBuf,
    pin_root: OwnedDir,
    runtime: OwnedDir,
    name: String,
    blocked: std::net::Ipv4Addr,
}

impl Service {
    fn new(extra_config: &str) -> Self {
        let settings = unit_settings();
        let user = User::new();
        let topo = Topology::new(false);
        let blocked = topo.add_client_v4(4);
        let dir = tempfile::tempdir().expect("tempdir");
        // The service user reads the config, as it reads /etc/dns-sensor/sensor.toml.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let name = unique("svc");
        // The unit gives the default pin root to the user (ExecStartPre=+install -o) and binds
        // it into the sandbox (BindPaths=); the test does the same with a unique one.
        let default_root = sensor::config::Config::from_toml("", "defaults")
            .expect("defaults")
            .sensor
            .pin_root;
        let default_root = default_root.display().to_string();
        assert_eq!(one(&settings, "BindPaths"), default_root);
        let user_name = one(&settings, "User");
        assert_eq!(
            one(&settings, "ExecStartPre"),
            format!("+/usr/bin/install -d -o {user_name} -g {user_name} -m 0700 {default_root}")
        );
        let pin_root = OwnedDir::new(
            PathBuf::from(format!("/sys/fs/bpf/dns-sensor-test-{name}")),
            &user,
            0o700,
        );
        let runtime = OwnedDir::new(dir.path().join("run"), &user, 0o750);
        let config = dir.path().join("sensor.toml");
        std::fs::write(
            &config,
            format!(
                "[sensor]\nname = \"{name}\"\npin_root = \"{}\"\n\n[capture]\ninterfaces = [\"{}\"]\n\n\
                 [blocklist]\nentries = [\"{blocked}\"]\n{extra_config}",
                pin_root.0.display(),
                topo.host_if
            ),
        )
        .expect("write config");
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        Self {
            user,
            topo,
            dir,
            config,
            pin_root,
            runtime,
            name,
            blocked,
        }
    }

    /// `sensor run` the way the unit starts it, with `caps` (e.g. "CAP_BPF") as the ambient,
    /// inheritable and bounding sets, behind `wrapper` (e.g. strace) when given.
    fn command(&self, caps: &[String], wrapper: &[&str]) -> Command {
        let settings = unit_settings();
        // TemporaryFileSystem=/sys/fs/bpf and BindPaths=<pin root>: bind the pin root aside
        // first (systemd resolves bind sources outside the new tree too), cover /sys/fs/bpf with
        // an empty tmpfs, then move the pin root into it.
        let tmpfs = one(&settings, "TemporaryFileSystem");
        let stage = self.dir.path().join("stage");
        std::fs::create_dir_all(&stage).expect("stage dir");
        let set = std::iter::once("-all".to_owned())
            .chain(caps.iter().map(|c| {
                format!(
                    "+{}",
                    c.strip_prefix("CAP_").expect("CAP_ name").to_lowercase()
                )
            }))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(one(&settings, "NoNewPrivileges"), "yes");
        let script = r#"set -e
mount --bind "$PIN" "$STAGE"
mount -t tmpfs -o mode=0755 tmpfs "$TMPFS"
mkdir -p "$PIN"
mount --move "$STAGE" "$PIN"
exec setpriv --reuid="$SVC_UID" --regid="$SVC_GID" --init-groups --no-new-privs \
  --inh-caps="$CAPS" --ambient-caps="$CAPS" --bounding-set="$CAPS" -- "$@""#;
        let mut c = Command::new(wrapper.first().copied().unwrap_or("unshare"));
        if !wrapper.is_empty() {
            c.args(&wrapper[1..]).arg("unshare");
        }
        c.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(sensor_bin())
        .args(["run", "--config"])
        .arg(&self.config)
        // systemd starts a service with a clean environment plus what the unit sets.
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("PIN", &self.pin_root.0)
        .env("STAGE", &stage)
        .env("TMPFS", &tmpfs)
        .env("SVC_UID", self.user.uid.to_string())
        .env("SVC_GID", self.user.gid.to_string())
        .env("CAPS", set)
        .env("RUNTIME_DIRECTORY", &self.runtime.0)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
        c
    }

    fn attached(&self) -> bool {
        sh("ip", &["link", "show", "dev", &self.topo.host_if]).contains("xdp")
    }

    fn dig(&self, args: &[&str]) -> bool {
        let mut c = self.topo.command("dig");
        c.args(["+tries=1", "+timeout=2"]).args(args);
        c.output()
            .expect("run dig (apt package dnsutils)")
            .status
            .success()
    }
}

/// A sensor started by a test; SIGTERM by PID on drop so a failed test leaves nothing running.
struct Running {
    child: Option<Child>,
    /// The sensor's PID (the child's own, or its child's when behind a wrapper such as strace).
    pid: i32,
    lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
    stdout: PathBuf,
}

impl Running {
    fn start(mut cmd: Command, stdout: PathBuf, wrapped: bool) -> Self {
        let out = std::fs::File::create(&stdout).expect("stdout file");
        let mut child = cmd
            .stdout(out)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the sensor");
        let err = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let pid = child.id() as i32;
        let mut r = Self {
            child: Some(child),
            pid,
            lines,
            stderr: Vec::new(),
            stdout,
        };
        r.wait_for("sensor attached", Duration::from_secs(60));
        if wrapped {
            // unshare, sh and setpriv exec each other, so the tracer's one child is the sensor.
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .expect("children of the wrapper");
            let kids: Vec<i32> = children
                .split_whitespace()
                .map(|p| p.parse().expect("pid"))
                .collect();
            assert_eq!(kids.len(), 1, "one child under the wrapper: {kids:?}");
            r.pid = kids[0];
        }
        r
    }

    fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => panic!(
                    "the sensor did not log {needle:?}; stderr:\n{}",
                    self.stderr.join("\n")
                ),
            }
        }
    }

    /// SIGTERM, the exit must be a success; returns the JSON lines it wrote.
    fn stop(&mut self) -> Vec<String> {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal the sensor");
        let status = child.wait().expect("wait");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stderr.push(line);
        }
        assert!(
            status.success(),
            "exit {status}; stderr:\n{}",
            self.stderr.join("\n")
        );
        std::fs::read_to_string(&self.stdout)
            .expect("events")
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }
}

fn expected_doc(s: &Seen, server: IpAddr, interface: &str, observer: &str) -> Value {
    json!({
        "event": {"kind": "event", "category": ["network"], "type": ["protocol"], "dataset": "dns"},
        "source": {"ip": s.client.ip().to_string(), "port": s.client.port()},
        "destination": {"ip": server.to_string(), "port": 53},
        "network": {"transport": "udp", "type": "ipv4", "protocol": "dns"},
        "dns": {"id": s.id, "type": "query", "question": {"name": s.name, "type": "A", "class": "IN"}},
        "observer": {"name": observer, "ingress": {"interface": {"name": interface}}},
    })
}

#[test]
fn the_unit_grants_exactly_what_the_pre_check_demands() {
    assert_eq!(unit_caps(), sensor_kernel::privileges::REQUIRED);
}

#[test]
fn the_unit_verifies() {
    // systemd-analyze verify needs the ExecStart= binary to exist; the package test verifies
    // the installed unit as shipped, this one every other line of it against the built binary.
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("dns-sensor.service");
    assert!(UNIT.contains("ExecStart=/usr/bin/sensor "));
    std::fs::write(
        &unit,
        UNIT.replace(
            "ExecStart=/usr/bin/sensor ",
            &format!("ExecStart={} ", sensor_bin().display()),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("run systemd-analyze (apt package systemd)");
    // Unknown keys are only warnings (exit 0), so the output must be empty too.
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn with_exactly_the_units_capabilities_it_attaches_captures_and_blocks() {
    let svc = Service::new("");
    let server = IpAddr::V4(svc.topo.v4(1));
    let responder = Responder::start(&[server]);
    let caps = unit_caps();
    let mut sensor = Running::start(
        svc.command(&caps, &[]),
        svc.dir.path().join("events.jsonl"),
        false,
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", sensor.pid)).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .expect(k)
            .trim()
            .to_owned()
    };
    assert_eq!(
        field("Uid:").split_whitespace().next(),
        Some(&*svc.user.uid.to_string())
    );
    // Started with CAP_NET_ADMIN = 12, CAP_PERFMON = 38, CAP_BPF = 39 and nothing else (the
    // bounding set shows it); once attached, none is left in any thread.
    let mask = format!("{:016x}", (1u64 << 12) | (1 << 38) | (1 << 39));
    assert_eq!(field("CapBnd:"), mask);
    assert_no_capability_in_any_thread(sensor.pid);
    assert_eq!(field("NoNewPrivs:"), "1");
    assert!(svc.attached(), "attached");
    // The unit's bpffs layout as the sensor sees it: /sys/fs/bpf an empty tmpfs, the pin root
    // the host's bpffs directory bound into it.
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", sensor.pid)).unwrap();
    let fs_at = |point: &str| {
        mounts
            .lines()
            .rfind(|l| l.split_whitespace().nth(4) == Some(point))
            .and_then(|l| l.split(" - ").nth(1))
            .and_then(|t| t.split_whitespace().next())
            .map(str::to_owned)
    };
    assert_eq!(fs_at("/sys/fs/bpf").as_deref(), Some("tmpfs"), "{mounts}");
    let root = svc.pin_root.0.display().to_string();
    assert_eq!(fs_at(&root).as_deref(), Some("bpf"), "{mounts}");
    let pin_dir = svc.pin_root.0.join(&svc.name);
    for map in sensor_kernel::loader::ALL_MAPS {
        let owner = std::os::unix::fs::MetadataExt::uid(
            &std::fs::metadata(pin_dir.join(map)).expect("pinned"),
        );
        assert_eq!(owner, svc.user.uid, "{map} pinned by the service user");
    }
    assert!(
        svc.runtime.0.join(format!("{}.lock", svc.name)).exists(),
        "the instance lock in $RUNTIME_DIRECTORY"
    );

    let at = format!("@{server}");
    assert!(
        svc.dig(&[&at, "Service.Example.COM", "A"]),
        "query answered"
    );
    assert!(
        !svc.dig(&[
            "-b",
            &svc.blocked.to_string(),
            "+timeout=1",
            &at,
            "blocked.example",
            "A"
        ]),
        "a blocklisted source gets no answer"
    );
    let lines = sensor.stop();
    let seen = responder.seen();
    assert!(
        seen.iter()
            .all(|s| s.client.ip() != IpAddr::V4(svc.blocked)),
        "the blocked query never reached the server: {seen:?}"
    );
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let mut doc: Value = serde_json::from_str(&lines[0]).expect("JSON line");
    doc.as_object_mut()
        .unwrap()
        .remove("@timestamp")
        .expect("@timestamp");
    let s = seen
        .iter()
        .find(|s| s.name == "service.example.com")
        .expect("the server saw the query");
    assert_eq!(doc, expected_doc(s, server, &svc.topo.host_if, &svc.name));
    assert!(!svc.attached(), "detached on SIGTERM");
    assert!(!pin_dir.exists(), "unpinned on SIGTERM");
}

#[test]
fn without_any_one_of_the_units_capabilities_it_fails_fast_naming_it() {
    let svc = Service::new("");
    let caps = unit_caps();
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let t0 = Instant::now();
        let out = svc
            .command(&fewer, &[])
            .stdin(Stdio::null())
            .output()
            .expect("run the sensor");
        let took = t0.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "without {missing}: must fail");
        assert!(took < Duration::from_secs(10), "fails fast: {took:?}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        let named = lines[0]
            .strip_prefix("error: missing privileges: ")
            .and_then(|rest| rest.split_once(" (effective"))
            .map(|(named, _)| named)
            .unwrap_or_else(|| panic!("without {missing}: {stderr}"));
        assert!(
            named.starts_with(&format!("{missing} (")) && named.matches("CAP_").count() == 1,
            "names {missing} and only it: {stderr}"
        );
        assert!(!svc.attached(), "nothing attached without {missing}");
        assert!(
            svc.pin_root.entries().is_empty(),
            "nothing pinned without {missing}: {:?}",
            svc.pin_root.entries()
        );
        assert!(out.stdout.is_empty());
    }
}

/// Every system call the sensor makes while it attaches, captures, serves /metrics and stops is
/// inside the unit's `SystemCallFilter=` (as `systemd-analyze syscall-filter` expands it).
#[test]
fn its_system_calls_stay_inside_the_units_filter() {
    let port = sensor_testkit::ports::free_port();
    let svc = Service::new(&format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let _responder = Responder::start(&[IpAddr::V4(svc.topo.v4(1))]);
    let trace = svc.dir.path().join("trace");
    let trace_arg = trace.display().to_string();
    let mut sensor = Running::start(
        svc.command(
            &unit_caps(),
            &["strace", "-f", "-qq", "-o", &trace_arg, "--"],
        ),
        svc.dir.path().join("events.jsonl"),
        true,
    );
    assert!(svc.dig(&[&format!("@{}", svc.topo.v4(1)), "traced.example", "A"]));
    // "sensor attached" comes before the listener is bound (under strace, long before).
    sensor.wait_for(
        &format!("metrics on http://127.0.0.1:{port}/metrics"),
        Duration::from_secs(60),
    );
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    assert_eq!(sensor.stop().len(), 1);

    // The calls after the exec of the sensor binary (unshare, sh and setpriv come before).
    let trace = std::fs::read_to_string(&trace).expect("strace output");
    let exec = format!("execve(\"{}\"", sensor_bin().display());
    let start = trace.find(&exec).expect("the sensor's execve in the trace");
    let used: BTreeSet<&str> = trace[start..]
        .lines()
        .skip(1)
        .filter_map(|l| {
            let call = l.split_whitespace().nth(1)?;
            let name = call.split('(').next()?;
            (call.contains('(') && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .then_some(name)
        })
        .collect();
    assert!(used.contains("bpf"), "{used:?}");
    let allowed = expand_filter(&one(&unit_settings(), "SystemCallFilter"));
    let outside: Vec<&&str> = used.iter().filter(|c| !allowed.contains(**c)).collect();
    assert!(outside.is_empty(), "outside SystemCallFilter=: {outside:?}");
}

/// The system calls an allow-list `SystemCallFilter=` value admits, groups expanded the way
/// this host's systemd expands them.
fn expand_filter(value: &str) -> BTreeSet<String> {
    assert!(!value.starts_with('~'), "an allow-list");
    let out = Command::new("systemd-analyze")
        .arg("syscall-filter")
        .output()
        .expect("run systemd-analyze");
    assert!(out.status.success());
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(g) = line.strip_prefix('@') {
            let g = format!("@{}", g.split_whitespace().next().unwrap_or(""));
            groups.entry(g.clone()).or_default();
            current = Some(g);
        } else if let (Some(g), t) = (&current, line.trim())
            && !t.is_empty()
            && !t.starts_with('#')
        {
            groups.get_mut(g).unwrap().push(t.to_owned());
        }
    }
    fn add(item: &str, groups: &BTreeMap<String, Vec<String>>, out: &mut BTreeSet<String>) {
        if item.starts_with('@') {
            for i in groups.get(item).unwrap_or_else(|| panic!("group {item}")) {
                add(i, groups, out);
            }
        } else {
            out.insert(item.to_owned());
        }
    }
    let mut allowed = BTreeSet::new();
    for item in value.split_whitespace() {
        add(item, &groups, &mut allowed);
    }
    assert!(
        allowed.contains("read") && allowed.contains("bpf"),
        "{allowed:?}"
    );
    allowed
}

/// Every thread of `pid` has empty effective, permitted and ambient capability sets.
fn assert_no_capability_in_any_thread(pid: i32) {
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .map(|e| e.expect("task").path())
        .collect();
    assert!(!tasks.is_empty());
    for task in tasks {
        let Ok(status) = std::fs::read_to_string(task.join("status")) else {
            continue; // a thread that ended
        };
        for set in ["CapEff:", "CapPrm:", "CapAmb:"] {
            let v = status
                .lines()
                .find_map(|l| l.strip_prefix(set))
                .expect(set)
                .trim();
            assert_eq!(v, "0000000000000000", "{set} of {}", task.display());
        }
    }
}

/// A public address (outside every never-block range) the nightly run lists.
const ATTACKER: &str = "89.248.165.74";
const TB_KEY: &str = "canary-tb-svc-77e1";

/// After attaching, the daemon holds no capability in any thread, and what it does later still
/// works without them: a SIGHUP that changes `blocklist.entries` (and the minute sweep and the
/// nightly run after it keep the change), the nightly run's install, and an operator's unblock
/// run by root, which becomes the state directory's owner.
#[test]
fn without_capabilities_after_start_sighup_the_nightly_install_and_unblock_still_work() {
    let svc = Service::new("");
    let server = IpAddr::V4(svc.topo.v4(1));
    let _responder = Responder::start(&[server]);
    let second = svc.topo.add_client_v4(5);
    svc.topo.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{ATTACKER}/32"),
        "dev",
        &svc.topo.peer_if,
    ]);
    sh(
        "ip",
        &[
            "route",
            "add",
            &format!("{ATTACKER}/32"),
            "dev",
            &svc.topo.host_if,
        ],
    );

    // The nightly run at the next minute (two if this one is nearly over: the start takes a
    // few seconds), for the alerts of the day before it.
    let now = time::OffsetDateTime::now_utc();
    let run_at = now + time::Duration::minutes(if now.second() < 40 { 1 } else { 2 });
    let alert_day = run_at.date().previous_day().expect("a day before");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let es_server = sensor_testkit::osmem::Osmem::start();
    let es = sensor_testkit::osmem::Client::new(&es_server.url());
    let alert_at = format!("{alert_day}T03:00:00Z");
    rt.block_on(es.seed_alerts("ngfw-svc", &[(ATTACKER, &alert_at), (ATTACKER, &alert_at)]));
    let tb = rt
        .block_on(sensor_testkit::fake_threatbook::FakeThreatBook::start(
            TB_KEY,
        ))
        .expect("fake ThreatBook");
    tb.set_ip(
        ATTACKER.parse().unwrap(),
        sensor_testkit::fake_threatbook::FakeVerdict::malicious("Brute Force"),
        sensor_testkit::fake_threatbook::FakeIpInfo::default(),
    );

    // Files the service writes live in a directory it owns, as /var/lib/dns-sensor.
    let var = OwnedDir::new(svc.dir.path().join("var"), &svc.user, 0o750);
    let tb_key = svc.dir.path().join("tb.key");
    std::fs::write(&tb_key, TB_KEY).unwrap();
    std::fs::set_permissions(&tb_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = |entry: std::net::Ipv4Addr| {
        format!(
            r#"[sensor]
name = "{name}"
pin_root = "{pin_root}"

[capture]
interfaces = ["{iface}"]

[intel.threatbook]
base_url = "{tb_url}"
api_key = {{ file = "{tb_key}" }}
[intel.threatbook.limits]
batch_window_ms = 5

[blocklist]
entries = ["{entry}"]
results_dir = "{var}/results"

[blocklist.elasticsearch]
url = "{es_url}"

[[blocklist.sources]]
index = "ngfw-*"
field = "source.ip"
device = "NGFW"

[blocklist.policy]
state_dir = "{var}/state"

[blocklist.schedule]
enabled = true
at = "{hh:02}:{mm:02}"
time_zone = "UTC"

[blocklist.edl]
path = "{var}/edl.txt"
"#,
            name = svc.name,
            pin_root = svc.pin_root.0.display(),
            iface = svc.topo.host_if,
            tb_url = tb.base_url(),
            tb_key = tb_key.display(),
            es_url = es_server.url(),
            var = var.0.display(),
            hh = run_at.hour(),
            mm = run_at.minute(),
        )
    };
    std::fs::write(&svc.config, config(svc.blocked)).unwrap();

    let mut cmd = svc.command(&unit_caps(), &[]);
    // The sweep says "no change" at debug.
    cmd.env("RUST_LOG", "info,sensor_blocklist::daemon=debug");
    let mut sensor = Running::start(cmd, svc.dir.path().join("events.jsonl"), false);
    assert_no_capability_in_any_thread(sensor.pid);
    let at = format!("@{server}");
    let qname = format!("q{}.example", sensor.pid);
    let from = |source: &str| svc.dig(&["-b", source, "+timeout=1", &at, &qname, "A"]);
    assert!(!from(&svc.blocked.to_string()), "the static entry drops");
    assert!(from(&second.to_string()), "the other client passes");

    // SIGHUP: the static entry moves to the second client, through the map descriptors held.
    std::fs::write(&svc.config, config(second)).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sensor.pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    sensor.wait_for(
        "kernel lists reloaded from the config",
        Duration::from_secs(20),
    );
    assert!(from(&svc.blocked.to_string()), "the old entry is gone");
    assert!(!from(&second.to_string()), "the new entry drops");

    // The nightly run installs the attacker through the pins, with no capability.
    assert!(from(ATTACKER), "not listed before the nightly run");
    sensor.wait_for("nightly blocklist published", Duration::from_secs(200));
    assert!(!from(ATTACKER), "the nightly run's entry drops");
    assert!(
        !from(&second.to_string()),
        "the nightly run kept the entry the SIGHUP installed"
    );
    assert!(
        from(&svc.blocked.to_string()),
        "and did not put the old one back"
    );
    assert_no_capability_in_any_thread(sensor.pid);

    // Root runs the unblock; it becomes the state directory's owner and writes as that user.
    let out = Command::new(sensor_bin())
        .args([
            "blocklist",
            "unblock",
            ATTACKER,
            "--reason",
            "false positive",
        ])
        .arg("--config")
        .arg(&svc.config)
        .env("RUST_LOG", "info")
        .output()
        .expect("sensor blocklist unblock");
    assert!(
        out.status.success(),
        "unblock: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("running as the owner of the state directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(from(ATTACKER), "unblocked at once");
    let state = var.0.join("state");
    for f in std::fs::read_dir(&state).expect("state dir") {
        let f = f.expect("entry");
        let owner = std::os::unix::fs::MetadataExt::uid(&f.metadata().unwrap());
        assert_eq!(
            owner,
            svc.user.uid,
            "{} owned by the service user",
            f.path().display()
        );
    }
    let audit = std::fs::read_to_string(state.join("audit.jsonl")).expect("audit");
    let last: Value = serde_json::from_str(audit.lines().last().expect("a record")).unwrap();
    assert_eq!(last["reason"], "false positive", "{last}");
    assert_ne!(
        last["by"],
        svc.user.name.as_str(),
        "the person, not the service user: {last}"
    );

    // The minute sweep (its next pass, after the SIGHUP and the nightly run) re-plans with the
    // reloaded entries too.
    sensor.wait_for("blocklist sweep", Duration::from_secs(90));
    assert!(
        !from(&second.to_string()),
        "the sweep kept the reloaded entry"
    );
    assert!(
        from(&svc.blocked.to_string()),
        "the sweep did not put the old one back"
    );
    assert!(from(ATTACKER), "the unblock holds");
    sensor.stop();
}
