//! Free loopback ports for servers a test starts as a separate process (which must be told
//! a port before it binds one).
//!
//! `bind(0)` hands out a port from the ephemeral range, and between releasing it and the
//! server binding it, any outgoing connection on the host (a Kafka client, an HTTP client)
//! may take it as its local port: CI saw tansu fail with "Address already in use" this way.
//! So the ports come from below the ephemeral range, which outgoing connections never use,
//! and never twice from one process.

use std::{
    collections::HashSet,
    net::TcpListener,
    sync::{Mutex, OnceLock},
};

use rand::{RngExt as _, SeedableRng as _, rngs::Xoshiro256PlusPlus};

/// The lowest port handed out: above the well-known and most registered server ports.
const LOW: u16 = 10_000;

fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A loopback port that is free now, outside the ephemeral range, and not handed out before
/// by this process.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let high = ephemeral_low().max(LOW + 1_000);
    let mut given = GIVEN
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    // Seeded per process and call: two test binaries started together draw different ports.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()) << 32;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    for _ in 0..10_000 {
        let port = rng.random_range(LOW..high);
        if given.contains(&port) {
            continue;
        }
        // Both the v4 loopback and the wildcard: a server may bind either.
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("0.0.0.0", port)).is_ok()
        {
            given.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{high}");
}
