//! Network namespaces and veth pairs for live tests, removed on drop (also when a test fails).

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (interface names are at most 15 bytes).
pub fn unique(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{n}", std::process::id() & 0xfffff)
}

/// Runs a command and panics with its output when it fails: setup errors in tests must be loud.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {program}: {e} (is it installed? run `cargo xtask setup --test-deps`)"
            )
        });
    assert!(
        out.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A client namespace joined to the root namespace by a veth pair, with IPv4 and IPv6
/// addresses on both ends. The sensor attaches to `host_if`, where the client's packets arrive.
pub struct Topology {
    pub ns: String,
    pub host_if: String,
    pub peer_if: String,
    /// Third octet-pair of the /24: addresses are 10.`net.0`.`net.1`.x.
    net: (u8, u8),
}

impl Topology {
    /// Creates the namespace and the link. `ipv6` = false disables IPv6 on the client side so
    /// that no neighbour discovery traffic adds to what a test counts.
    pub fn new(ipv6: bool) -> Self {
        let ns = unique("dsn");
        let host_if = unique("dsh");
        let peer_if = unique("dsp");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let net = (200 + (n % 50) as u8, (std::process::id() % 250) as u8);
        sh("ip", &["netns", "add", &ns]);
        let t = Self {
            ns,
            host_if,
            peer_if,
            net,
        };
        sh(
            "ip",
            &[
                "link", "add", &t.host_if, "type", "veth", "peer", "name", &t.peer_if,
            ],
        );
        sh("ip", &["link", "set", &t.peer_if, "netns", &t.ns]);
        if ipv6 {
            sh(
                "sysctl",
                &["-qw", &format!("net.ipv6.conf.{}.accept_dad=0", t.host_if)],
            );
            t.exec(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{}.accept_dad=0", t.peer_if),
            ]);
        } else {
            t.exec(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{}.disable_ipv6=1", t.peer_if),
            ]);
            sh(
                "sysctl",
                &[
                    "-qw",
                    &format!("net.ipv6.conf.{}.disable_ipv6=1", t.host_if),
                ],
            );
        }
        sh(
            "ip",
            &["addr", "add", &format!("{}/24", t.v4(1)), "dev", &t.host_if],
        );
        sh("ip", &["link", "set", &t.host_if, "up"]);
        t.exec(&["ip", "link", "set", "lo", "up"]);
        t.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", t.v4(2)),
            "dev",
            &t.peer_if,
        ]);
        t.exec(&["ip", "link", "set", &t.peer_if, "up"]);
        if ipv6 {
            sh(
                "ip",
                &[
                    "addr",
                    "add",
                    &format!("{}/64", t.v6(1)),
                    "dev",
                    &t.host_if,
                    "nodad",
                ],
            );
            t.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{}/64", t.v6(2)),
                "dev",
                &t.peer_if,
                "nodad",
            ]);
        }
        t
    }

    /// The IPv4 address `.host` in this topology's /24.
    pub fn v4(&self, host: u8) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(10, self.net.0, self.net.1, host)
    }

    /// The IPv6 address `::host` in this topology's /64.
    pub fn v6(&self, host: u16) -> std::net::Ipv6Addr {
        std::net::Ipv6Addr::new(
            0xfd00,
            0xd5,
            self.net.0 as u16,
            self.net.1 as u16,
            0,
            0,
            0,
            host,
        )
    }

    /// Adds another client address on the namespace side.
    pub fn add_client_v4(&self, host: u8) -> std::net::Ipv4Addr {
        let a = self.v4(host);
        self.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{a}/24"),
            "dev",
            &self.peer_if,
        ]);
        a
    }

    /// Runs a command inside the namespace; panics when it fails.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.ns];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// A command to run inside the namespace (for callers that handle failure themselves).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting one end deletes the pair; the namespace goes last.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}
