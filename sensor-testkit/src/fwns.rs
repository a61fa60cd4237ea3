//! Two network namespaces joined by a veth pair, for the host-firewall exports (nft, ipset):
//! `fw` plays the sensor host whose packet filter gets the list, `peer` holds many addresses
//! (a whole /24 and some others) that send to and receive from it. Nothing runs in the root
//! namespace: its nft ruleset and ipsets are never touched. Both namespaces go on drop, with
//! every table, set and rule inside them.
//!
//! Reachability is measured with UDP datagrams whose payload names the address under test,
//! and without sleeps: the probes to be dropped are sent first, the probes that must pass last,
//! on the same link; once every passing probe has arrived, a dropped one that was not stopped
//! would have arrived before it.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsFd as _,
    time::{Duration, Instant},
};

use crate::netns::{sh, unique};

/// The sensor host's addresses in `fw`.
pub const FW_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const FW_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1);
const PORT: u16 = 47_077;

pub struct FwPair {
    pub fw: String,
    pub peer: String,
    /// `fw`'s end of the link (where a sensor in `fw` attaches).
    pub fw_if: String,
}

/// Runs `f` on a thread that has joined namespace `ns` (setns affects only the calling thread,
/// and the programs it spawns inherit it).
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

impl FwPair {
    /// Creates both namespaces, the link, `fw`'s addresses (10.77.0.1/16, fd00:77::1/32) and
    /// the peer's `v4` and `v6` addresses (in 10.77.0.0/16 and fd00:77::/32).
    pub fn new(v4: &[Ipv4Addr], v6: &[Ipv6Addr]) -> Self {
        let pair = Self {
            fw: unique("dsfw"),
            peer: unique("dspe"),
            fw_if: unique("dsf"),
        };
        let peer_if = unique("dsq");
        sh("ip", &["netns", "add", &pair.fw]);
        sh("ip", &["netns", "add", &pair.peer]);
        sh(
            "ip",
            &[
                "link",
                "add",
                &pair.fw_if,
                "netns",
                &pair.fw,
                "type",
                "veth",
                "peer",
                "name",
                &peer_if,
                "netns",
                &pair.peer,
            ],
        );
        let mut fw_batch = format!(
            "link set lo up\nlink set {0} up\naddr add {FW_V4}/16 dev {0}\naddr add {FW_V6}/32 dev {0} nodad\n",
            pair.fw_if
        );
        let mut peer_batch = format!("link set lo up\nlink set {peer_if} up\n");
        for a in v4 {
            peer_batch.push_str(&format!("addr add {a}/16 dev {peer_if}\n"));
        }
        for a in v6 {
            peer_batch.push_str(&format!("addr add {a}/32 dev {peer_if} nodad\n"));
        }
        fw_batch.push('\n');
        for (ns, batch) in [(&pair.fw, fw_batch), (&pair.peer, peer_batch)] {
            let file = std::env::temp_dir().join(format!("{ns}.ipbatch"));
            std::fs::write(&file, batch).unwrap();
            let r = std::panic::catch_unwind(|| {
                sh("ip", &["-n", ns, "-batch", file.to_str().unwrap()])
            });
            let _ = std::fs::remove_file(&file);
            if let Err(p) = r {
                std::panic::resume_unwind(p);
            }
        }
        pair
    }

    /// Runs a command in `fw`; panics when it fails.
    pub fn fw_exec(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.fw];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// Which of `blocked` then `passing` (peer addresses) reach `fw` as sources. Waits until
    /// every passing one has arrived (at most `wait`), then returns every address that arrived.
    pub fn arrived_from_peer(
        &self,
        blocked: &[IpAddr],
        passing: &[IpAddr],
        wait: Duration,
    ) -> BTreeSet<IpAddr> {
        let order: Vec<IpAddr> = blocked.iter().chain(passing).copied().collect();
        let sender = move || {
            for round in 0..2 {
                for a in &order {
                    let dst: SocketAddr = match a {
                        IpAddr::V4(_) => (FW_V4, PORT).into(),
                        IpAddr::V6(_) => (FW_V6, PORT).into(),
                    };
                    let s = UdpSocket::bind((*a, 0)).unwrap_or_else(|e| panic!("bind {a}: {e}"));
                    // A send error (EPERM from a local drop) is what some tests expect.
                    let _ = s.send_to(format!("{a} {round}").as_bytes(), dst);
                }
            }
        };
        self.probe(&self.fw.clone(), &self.peer.clone(), sender, passing, wait)
    }

    /// Which of `blocked` then `passing` (peer addresses) `fw` can send to.
    pub fn arrived_at_peer(
        &self,
        blocked: &[IpAddr],
        passing: &[IpAddr],
        wait: Duration,
    ) -> BTreeSet<IpAddr> {
        let order: Vec<IpAddr> = blocked.iter().chain(passing).copied().collect();
        let sender = move || {
            let s = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).unwrap();
            for round in 0..2 {
                for a in &order {
                    let dst: SocketAddr = match a {
                        IpAddr::V4(v4) => (v4.to_ipv6_mapped(), PORT).into(),
                        IpAddr::V6(_) => (*a, PORT).into(),
                    };
                    // EPERM is how a local output drop shows to the sender.
                    let _ = s.send_to(format!("{a} {round}").as_bytes(), dst);
                }
            }
        };
        self.probe(&self.peer.clone(), &self.fw.clone(), sender, passing, wait)
    }

    fn probe(
        &self,
        listen_ns: &str,
        send_ns: &str,
        sender: impl FnOnce() + Send + 'static,
        passing: &[IpAddr],
        wait: Duration,
    ) -> BTreeSet<IpAddr> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let expect: BTreeSet<IpAddr> = passing.iter().copied().collect();
        let listen_path = format!("/var/run/netns/{listen_ns}");
        let listener = std::thread::spawn(move || {
            let file = std::fs::File::open(&listen_path).unwrap();
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            // [::] takes IPv4 too (IPv4-mapped), so one socket hears both families.
            let sock = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, PORT)).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let deadline = Instant::now() + wait;
            let mut got = BTreeSet::new();
            let mut buf = [0u8; 128];
            while Instant::now() < deadline && !expect.is_subset(&got) {
                if let Ok(n) = sock.recv(&mut buf)
                    && let Some(a) = std::str::from_utf8(&buf[..n])
                        .ok()
                        .and_then(|t| t.split(' ').next())
                        .and_then(|a| a.parse::<IpAddr>().ok())
                {
                    got.insert(a);
                }
            }
            // Drain what is already queued behind the last passing probe.
            sock.set_nonblocking(true).unwrap();
            while let Ok(n) = sock.recv(&mut buf) {
                if let Some(a) = std::str::from_utf8(&buf[..n])
                    .ok()
                    .and_then(|t| t.split(' ').next())
                    .and_then(|a| a.parse::<IpAddr>().ok())
                {
                    got.insert(a);
                }
            }
            got
        });
        ready_rx.recv().unwrap();
        in_ns(send_ns, sender);
        listener.join().unwrap()
    }
}

impl Drop for FwPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end (and so the pair), its nft tables, ipsets
        // and iptables rules.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.fw])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.peer])
            .output();
    }
}
