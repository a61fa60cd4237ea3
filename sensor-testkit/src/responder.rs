//! A small DNS server for live tests: answers every query with NXDOMAIN over UDP and TCP, and
//! records what it received (parsed by hickory-proto, independently of the sensor's parser).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use hickory_proto::op::Message;

/// One query as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub tcp: bool,
    pub client: SocketAddr,
    pub id: u16,
    /// Lower-case, without the trailing dot.
    pub name: String,
    pub qtype: u16,
}

pub struct Responder {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn answer(query: &[u8]) -> Option<(Seen, Vec<u8>)> {
    let msg = Message::from_vec(query).ok()?;
    let q = msg.queries.first()?;
    let name = q.name().to_string().to_ascii_lowercase();
    let name = name
        .strip_suffix('.')
        .filter(|n| !n.is_empty())
        .unwrap_or(&name)
        .to_owned();
    let mut reply = query.to_vec();
    reply[2] |= 0x80; // QR
    reply[3] = 0x80 | 3; // RA, NXDOMAIN
    Some((
        Seen {
            tcp: false,
            client: "0.0.0.0:0".parse().ok()?,
            id: msg.metadata.id,
            name,
            qtype: u16::from(q.query_type()),
        },
        reply,
    ))
}

impl Responder {
    /// Serves UDP and TCP on each address (port 53).
    pub fn start(addrs: &[std::net::IpAddr]) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &ip in addrs {
            let addr = SocketAddr::new(ip, 53);
            let udp = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"));
            udp.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let (seen_u, stop_u) = (seen.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop_u.load(Ordering::Relaxed) {
                    let Ok((n, from)) = udp.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some((mut s, reply)) = answer(&buf[..n]) {
                        s.client = from;
                        seen_u.lock().expect("lock").push(s);
                        let _ = udp.send_to(&reply, from);
                    }
                }
            }));
            let tcp = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind tcp {addr}: {e}"));
            tcp.set_nonblocking(true).expect("nonblocking");
            let (seen_t, stop_t) = (seen.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                while !stop_t.load(Ordering::Relaxed) {
                    let Ok((mut conn, from)) = tcp.accept() else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut len = [0u8; 2];
                    if conn.read_exact(&mut len).is_err() {
                        continue;
                    }
                    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
                    if conn.read_exact(&mut msg).is_err() {
                        continue;
                    }
                    if let Some((mut s, reply)) = answer(&msg) {
                        s.client = from;
                        s.tcp = true;
                        seen_t.lock().expect("lock").push(s);
                        let mut out = (reply.len() as u16).to_be_bytes().to_vec();
                        out.extend_from_slice(&reply);
                        let _ = conn.write_all(&out);
                    }
                }
            }));
        }
        Self {
            seen,
            stop,
            threads,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
