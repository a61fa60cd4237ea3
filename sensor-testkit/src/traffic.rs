//! A steady stream of DNS queries from inside a test's network namespace: a thread joins the
//! namespace (`setns` affects only the calling thread) and sends UDP queries at a fixed rate from
//! one of the namespace's addresses, counting what the kernel accepted. Used where a test or the
//! soak needs "traffic" for minutes at thousands of queries per second, which `dig` processes
//! cannot give.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::packet::dns_query;

/// What the flood sends: `names[i % names.len()]`, type A, ids counting up.
pub struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Flood {
    /// Starts sending `rate` queries per second from `source` (an address of namespace `ns`) to
    /// `server`, cycling through `names`.
    pub fn start(
        ns: &str,
        source: SocketAddr,
        server: SocketAddr,
        rate: u32,
        names: Vec<String>,
    ) -> Self {
        assert!(rate > 0 && !names.is_empty());
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ns_path = format!("/var/run/netns/{ns}");
        let thread = {
            let stop = stop.clone();
            let sent = sent.clone();
            std::thread::Builder::new()
                .name("query-flood".into())
                .spawn(move || -> std::io::Result<()> {
                    let setup = (|| {
                        let ns = std::fs::File::open(&ns_path)?;
                        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
                        let sock = UdpSocket::bind(source)?;
                        sock.connect(server)?;
                        Ok::<_, std::io::Error>(sock)
                    })();
                    let sock = match setup {
                        Ok(s) => {
                            let _ = ready_tx.send(Ok(()));
                            s
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return Err(e);
                        }
                    };
                    let packets: Vec<Vec<u8>> = names.iter().map(|n| dns_query(0, n, 1)).collect();
                    let started = Instant::now();
                    let mut n: u64 = 0;
                    while !stop.load(Ordering::Relaxed) {
                        // Send what the schedule says is due, then sleep to the next 1 ms tick:
                        // the average rate is exact, bursts are at most ~rate/1000 queries.
                        let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
                        while n < due {
                            let mut q = packets[(n % packets.len() as u64) as usize].clone();
                            q[..2].copy_from_slice(&(n as u16).to_be_bytes());
                            match sock.send(&q) {
                                Ok(_) => {
                                    n += 1;
                                    sent.store(n, Ordering::Relaxed);
                                }
                                // ICMP port unreachable from an earlier query, reported on a
                                // connected socket: not a failure of this send.
                                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                                Err(e) => return Err(e),
                            }
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Ok(())
                })
                .expect("spawn the query flood")
        };
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("query flood in {ns}: {e}"),
            Err(_) => panic!("query flood thread ended before starting"),
        }
        Self {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    /// Queries sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops and returns how many queries were sent; panics if sending failed.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let t = self.thread.take().expect("running");
        t.join()
            .expect("query flood panicked")
            .expect("query flood failed");
        self.sent()
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
