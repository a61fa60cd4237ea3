//! `sensor-bench`: the benchmark command (run it with `cargo xtask bench`).
//!
//! `micro`: ns per packet of the XDP program for each packet class, and of a no-op XDP program
//! from the same object (the floor), through BPF_PROG_TEST_RUN, interleaved in rounds so that
//! machine noise hits every class alike; prints each class's ratio to the floor.
//!
//! `firewall-export`: seconds to apply N blocklist entries to nft sets and ipsets (the host
//! exports) in a namespace, into empty sets and as the next night's update.
//!
//! `pdns`: the passive DNS store: ingest rate, a simulated day (or more) of a 7,000 queries/s
//! site with its size and 30-day projection, lookup latency by name.
//!
//! `live`: replays a capture of N queries with tcpreplay into a veth at top speed, once with
//! the sensor attached and once with tshark capturing, and prints queries sent, records
//! received, loss and CPU per query for both (the sensor's CPU = the XDP program's run time
//! from the kernel's BPF statistics + the daemon's user and system time).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support, never in the product: a failed unwrap or expect fails the test or bench that called it, with its message"
)]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use aya::programs::{TestRun, TestRunOptions};
use clap::{Parser, Subcommand};
use sensor_common::{NOOP_PROGRAM_NAME, PROGRAM_NAME};
use sensor_kernel::{
    loader,
    loader::{Maps, ProgramSettings},
};
use sensor_model::error::parse_nets;
use sensor_testkit::{netns::Topology, packet::*, pcap};

#[derive(Parser)]
#[command(about = "DNS sensor benchmarks (need root)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// BPF_PROG_TEST_RUN ns/packet per class vs a no-op program.
    Micro {
        /// Packets per class in total.
        #[arg(long, default_value_t = 2_000_000)]
        repeat: u32,
        /// Interleaved rounds (the median and the fastest round are reported).
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Only the classes whose name contains this (the floor always runs), e.g. to profile
        /// one class with `perf record`.
        #[arg(long)]
        only: Option<String>,
    },
    /// tcpreplay into a veth: the sensor vs tshark, CPU per query and loss.
    Live {
        #[arg(long, default_value_t = 100_000)]
        queries: u32,
    },
    /// Events/s through the trust filter and verdict cache (all hits, one thread), and through
    /// the intel path with a 50 ms provider beside the seed's 20-thread design.
    Intel {
        /// Events for the cache-hit run.
        #[arg(long, default_value_t = 2_000_000)]
        events: usize,
        /// Entries in the trusted-domain list the filter checks.
        #[arg(long, default_value_t = 100_000)]
        trusted: usize,
        /// Events (over `--names` names) for the slow-provider comparison.
        #[arg(long, default_value_t = 10_000)]
        slow_events: usize,
        #[arg(long, default_value_t = 1_000)]
        names: usize,
        #[arg(long, default_value_t = 50)]
        latency_ms: u64,
    },
    /// The nightly job's collection: N alert documents with K distinct source IPs in the test
    /// Elasticsearch server; time to collect the distinct IPs and filter them.
    BlocklistCollect {
        #[arg(long, default_value_t = 1_000_000)]
        documents: usize,
        #[arg(long, default_value_t = 100_000)]
        distinct: usize,
        /// Buckets per composite page (blocklist.elasticsearch.page_size); one collection per
        /// value, on the same seeded data.
        #[arg(long, value_delimiter = ',', default_values_t = [10_000usize, 65_535])]
        page_size: Vec<usize>,
    },
    /// Seconds to install the nightly blocklist into a freshly loaded program's pinned
    /// BLOCKLIST (empty map), then to install the next night's list (all renewed, 10% churn).
    BlocklistInstall {
        #[arg(long, default_value_t = 100_000)]
        entries: u32,
    },
    /// Seconds to apply N blocklist entries to this host's nft sets and ipsets through the
    /// export code and the real programs, in a namespace of its own: into empty sets, then the
    /// next night's list (10% churn). Target: at most 1 s each.
    FirewallExport {
        #[arg(long, default_value_t = 100_000)]
        entries: u32,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// The whole pipeline (namespace, tansu, osmem, fake ThreatBook and WeCom) at a steady
    /// query rate: memory growth after the warm-up, counter conservation, drops.
    Soak {
        /// Queries per second.
        #[arg(long, default_value_t = 5_000)]
        rate: u32,
        /// Measured seconds (after the warm-up).
        #[arg(long, default_value_t = 3600)]
        seconds: u64,
        /// Warm-up seconds before the memory baseline.
        #[arg(long, default_value_t = 300)]
        warmup_seconds: u64,
        /// Distinct query names (one in a hundred malicious).
        #[arg(long, default_value_t = 5_000)]
        names: usize,
        /// Seconds between samples.
        #[arg(long, default_value_t = 60)]
        sample_seconds: u64,
    },
    /// The EDL under slowloris and failed-authentication floods while the sensor captures
    /// (issue 12): ring_full, queries reported, the authorised fetch's p99, /metrics answering.
    EdlFlood {
        /// Queries per second through the capture.
        #[arg(long, default_value_t = 20_000)]
        rate: u32,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Slowloris connections against the EDL port.
        #[arg(long, default_value_t = 2_000)]
        slowloris: usize,
        /// Failed-authentication requests per second.
        #[arg(long, default_value_t = 1_000)]
        failed_auth: u32,
    },
    /// Events/s produced to a local tansu broker through the Kafka sink, the sink pinned to one
    /// CPU (tansu from `cargo xtask setup --test-deps`).
    Kafka {
        #[arg(long, default_value_t = 2_000_000)]
        events: u64,
        /// The CPU the sink (its task and librdkafka's threads) runs on; tansu gets the others.
        #[arg(long, default_value_t = 0)]
        cpu: usize,
    },
    /// The passive DNS store (sensor-pdns): (a) ingest rate in answers/s on one core, (b) a
    /// simulated day of a 7,000 queries/s site, its size and the projected 30-day size, (c)
    /// lookup by name p50/p99. Targets: >= 200,000 answers/s, <= 2 GiB for 30 days, p99 < 10 ms.
    Pdns {
        /// (a) Batches of `--batch-size` observations, one durable commit each.
        #[arg(long, default_value_t = 200)]
        batches: usize,
        #[arg(long, default_value_t = 10_000)]
        batch_size: usize,
        /// (b) Simulated days (the second and later measure the daily growth the projection
        /// uses); 0 skips (b) and (c).
        #[arg(long, default_value_t = 2)]
        days: u32,
        /// (b) Simulated seconds of traffic per commit. The rows and so the size do not depend
        /// on it, only the time the simulation takes; (a) measures daemon-sized batches.
        #[arg(long, default_value_t = 3600)]
        flush_seconds: u64,
        /// (c) Lookups by name.
        #[arg(long, default_value_t = 10_000)]
        lookups: usize,
        /// Where the stores go (a temporary directory inside it, removed at the end).
        #[arg(long, default_value = "/var/tmp")]
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Micro {
            repeat,
            rounds,
            only,
        } => micro(repeat, rounds, only.as_deref()),
        Cmd::Live { queries } => live(queries),
        Cmd::Intel {
            events,
            trusted,
            slow_events,
            names,
            latency_ms,
        } => intel(events, trusted, slow_events, names, latency_ms),
        Cmd::BlocklistInstall { entries } => blocklist_install(entries),
        Cmd::FirewallExport { entries, rounds } => firewall_export(entries, rounds),
        Cmd::Kafka { events, cpu } => kafka(events, cpu),
        Cmd::Pdns {
            batches,
            batch_size,
            days,
            flush_seconds,
            lookups,
            dir,
        } => pdns(batches, batch_size, days, flush_seconds, lookups, &dir),
        Cmd::EdlFlood {
            rate,
            seconds,
            slowloris,
            failed_auth,
        } => {
            let opts = sensor_testkit::edl_flood::FloodOptions {
                rate,
                duration: std::time::Duration::from_secs(seconds),
                slowloris,
                failed_auth_per_sec: failed_auth,
                sensor: std::env::current_exe()
                    .ok()
                    .and_then(|p| p.parent().map(|d| d.join("sensor")))
                    .filter(|p| p.exists())
                    .unwrap_or_else(|| "target/release/sensor".into()),
            };
            sensor_testkit::edl_flood::run(&opts)
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!(e))
        }
        Cmd::Soak {
            rate,
            seconds,
            warmup_seconds,
            names,
            sample_seconds,
        } => {
            let opts = sensor_testkit::soak::SoakOptions {
                rate,
                duration: std::time::Duration::from_secs(seconds),
                warmup: std::time::Duration::from_secs(warmup_seconds),
                names,
                sample: std::time::Duration::from_secs(sample_seconds),
                sensor: sensor_testkit::soak::sensor_beside_me(),
            };
            sensor_testkit::soak::run(&opts)
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!(e))
        }
        Cmd::BlocklistCollect {
            documents,
            distinct,
            page_size,
        } => {
            let b = sensor_testkit::collect_bench::run(documents, distinct, &page_size)?;
            println!(
                "seeded {} alert documents ({} distinct source IPs) in {:.1} s",
                b.documents, b.distinct, b.seed_seconds
            );
            for r in &b.runs {
                println!(
                    "pages of {}: {} distinct IPs in {} composite pages, {:.2} s; never-block filter: {} blockable in {:.3} s; total {:.2} s (target < 60 s)",
                    r.page_size,
                    r.collected,
                    r.pages,
                    r.collect_seconds,
                    r.blockable,
                    r.filter_seconds,
                    r.collect_seconds + r.filter_seconds
                );
            }
            Ok(())
        }
    }
}

fn firewall_export(n: u32, rounds: u32) -> anyhow::Result<()> {
    let runs = sensor_testkit::fw_bench::run(n, rounds)?;
    for r in &runs {
        println!(
            "firewall export {:<5} {:<18} {:>7} elements: {:.3} s",
            r.target, r.step, r.elements, r.seconds
        );
    }
    for target in ["nft", "ipset"] {
        let mut s: Vec<f64> = runs
            .iter()
            .filter(|r| r.target == target)
            .map(|r| r.seconds)
            .collect();
        s.sort_by(f64::total_cmp);
        println!(
            "firewall export {target}: {n} entries, median apply {:.3} s, worst {:.3} s (target <= 1 s)",
            s[s.len() / 2],
            s[s.len() - 1]
        );
    }
    Ok(())
}

fn blocklist_install(n: u32) -> anyhow::Result<()> {
    use sensor_kernel::lists::blocklist as kernel;
    let name = sensor_testkit::netns::unique("bench");
    let dir = PathBuf::from(format!("/sys/fs/bpf/dns-sensor-bench-{name}")).join(&name);
    loader::prepare_pin_dir(&dir, &[])?;
    struct Unpin(PathBuf);
    impl Drop for Unpin {
        fn drop(&mut self) {
            loader::unpin(&self.0, &[]);
        }
    }
    let _unpin = Unpin(dir.clone());
    let _ebpf = loader::load(&ProgramSettings::default(), Some(&dir))?;
    // Public-looking unicast addresses, one /32 each (as the nightly list holds them).
    let list = |first: u32, expires: u64| -> Vec<(ipnet::IpNet, u64)> {
        (first..first + n)
            .map(|i| {
                (
                    ipnet::IpNet::from(IpAddr::V4(Ipv4Addr::from(0x5100_0000 + i * 3))),
                    expires,
                )
            })
            .collect()
    };
    let night1 = list(0, 1_800_000_000);
    let t = Instant::now();
    let r1 = kernel::install(&dir, &night1, &[])?;
    let first = t.elapsed();
    let night2 = list(n / 10, 1_800_086_400);
    let t = Instant::now();
    let r2 = kernel::install(&dir, &night2, &[])?;
    let second = t.elapsed();
    let t = Instant::now();
    let shown = kernel::show(&dir)?;
    let show = t.elapsed();
    println!(
        "blocklist install: {n} entries into an empty map: {:.3} s ({} added)",
        first.as_secs_f64(),
        r1.added
    );
    println!(
        "blocklist install: next night: {:.3} s ({} added, {} updated, {} removed)",
        second.as_secs_f64(),
        r2.added,
        r2.updated,
        r2.removed
    );
    println!(
        "blocklist show: {} entries read in {:.3} s",
        shown.len(),
        show.as_secs_f64()
    );
    Ok(())
}

fn intel(
    events: usize,
    trusted: usize,
    slow_events: usize,
    names: usize,
    latency_ms: u64,
) -> anyhow::Result<()> {
    use sensor_testkit::intel_bench;
    // Without and with the [intel.egress] rules (special-use zones + 1,000 internal domains).
    for egress in [None, Some(1_000)] {
        let hits = intel_bench::cache_hits(events, trusted, egress)?;
        println!(
            "cache-hit path (trust filter of {} entries{} + verdict cache, 1 thread): {} events in {:.3} s = {:.0} events/s ({:.0} ns/event)",
            hits.trusted_entries,
            match hits.egress_internal {
                Some(n) => format!(" + egress rules with {n} internal domains"),
                None => String::new(),
            },
            hits.events,
            hits.seconds,
            hits.events as f64 / hits.seconds,
            hits.seconds * 1e9 / hits.events as f64
        );
    }
    let slow = intel_bench::slow_provider(slow_events, names, Duration::from_millis(latency_ms))?;
    let sensor_rate = slow.events as f64 / slow.sensor_seconds;
    let seed_rate = slow.events as f64 / slow.seed_seconds;
    println!(
        "intel path, provider latency {} ms, {} events over {} names:",
        slow.latency_ms, slow.events, slow.names
    );
    println!(
        "  sensor (batch {} / window {} ms / {} concurrent / {} req/s): {:.2} s, {:.0} events/s, {} provider calls",
        slow.limits.batch_size,
        slow.limits.batch_window_ms,
        slow.limits.max_concurrency,
        slow.limits.requests_per_second,
        slow.sensor_seconds,
        sensor_rate,
        slow.sensor_calls
    );
    println!(
        "  seed design (20 threads, one blocking call per event): {:.2} s, {:.0} events/s, {} provider calls",
        slow.seed_seconds, seed_rate, slow.seed_calls
    );
    println!(
        "  ratio: {:.1}x the events/s with {:.1}x fewer calls",
        sensor_rate / seed_rate,
        slow.seed_calls as f64 / slow.sensor_calls.max(1) as f64
    );
    Ok(())
}

fn pdns(
    batches: usize,
    batch_size: usize,
    days: u32,
    flush_seconds: u64,
    lookups: usize,
    dir: &Path,
) -> anyhow::Result<()> {
    use sensor_testkit::pdns_bench;
    let tmp = tempfile::Builder::new()
        .prefix("pdns-bench-")
        .tempdir_in(dir)
        .with_context(|| format!("a temporary directory in {}", dir.display()))?;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    if batches > 0 {
        let r = pdns_bench::ingest_rate(tmp.path(), batches, batch_size);
        println!(
            "pdns ingest: {} batches of {} observations ({} answers, {} row upserts), one durable commit each: {:.2} s wall, {:.2} s CPU on one thread = {:.0} answers/s ({:.0} observations/s, {:.2} ms/commit)",
            r.batches,
            r.batch_size,
            r.answers,
            r.rows,
            r.seconds,
            r.cpu_seconds,
            r.answers as f64 / r.seconds,
            r.observations as f64 / r.seconds,
            r.seconds * 1e3 / r.batches as f64
        );
    }
    if days == 0 {
        return Ok(());
    }
    let path = tmp.path().join("day.sqlite");
    let (mut traffic, results) = pdns_bench::simulate_days(&path, days, flush_seconds, |d| {
        println!(
            "pdns day {}: {} queries, {} answers, {} commits in {:.0} s ({:.0} answers/s); store {:.1} MiB: {} names, {} client rows, {} answer rows",
            d.day,
            d.queries,
            d.answers,
            d.commits,
            d.seconds,
            d.answers as f64 / d.seconds,
            mib(d.disk_bytes),
            d.names,
            d.seen_rows,
            d.answer_rows
        );
    });
    let first = results[0].disk_bytes;
    let growth = if results.len() >= 2 {
        (results[results.len() - 1].disk_bytes - first) / (results.len() as u64 - 1)
    } else {
        first
    };
    println!(
        "pdns 30-day projection: day 1 {:.1} MiB + 29 x {:.1} MiB/day (the measured growth of each later day{}) = {:.1} MiB (goal <= 2048 MiB)",
        mib(first),
        mib(growth),
        if results.len() >= 2 {
            ""
        } else {
            "; with one day simulated, a whole day again, an upper bound"
        },
        mib(first + 29 * growth)
    );
    let l = pdns_bench::lookup_latency(&path, &mut traffic, lookups);
    println!(
        "pdns lookup by name: {} lookups (half by popularity, half uniform; {:.0} rows each on average): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (goal p99 < 10 ms)",
        l.lookups, l.mean_rows, l.p50_ms, l.p99_ms, l.max_ms
    );
    Ok(())
}

fn kafka(events: u64, cpu: usize) -> anyhow::Result<()> {
    let r = sensor_testkit::tansu::produce_bench(events, cpu, None);
    println!(
        "kafka sink -> tansu (compression {}, sink on CPU {cpu}): {} events, {} delivered, {} dropped in {:.2} s = {:.0} events/s; sink CPU {:.2} s = {:.0} events per CPU-second",
        r.compression,
        r.events,
        r.delivered,
        r.dropped,
        r.seconds,
        r.delivered as f64 / r.seconds,
        r.cpu_seconds,
        r.delivered as f64 / r.cpu_seconds
    );
    Ok(())
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// A blocklist and an allowlist of realistic size: 1,000 single IPs and 50 CIDRs spread over
/// the address space, plus the sources of the allowlisted and blocklisted classes.
fn lists() -> (Vec<ipnet::IpNet>, Vec<ipnet::IpNet>) {
    let mut block: Vec<String> = (0..1000u32)
        .map(|i| {
            let x = i.wrapping_mul(2_654_435_761);
            Ipv4Addr::from(0x2d00_0000 | (x & 0x00ff_ffff)).to_string()
        })
        .collect();
    block.extend((0..50u32).map(|i| format!("{}.{}.0.0/16", 60 + i, i * 3)));
    block.extend(["203.0.113.7".to_owned(), "2001:db8:bad::/48".to_owned()]);
    let allow = vec![
        "10.100.2.0/29".to_owned(),
        "10.100.3.53".to_owned(),
        "fd00:53::/64".to_owned(),
    ];
    (
        parse_nets("allow", &allow).expect("valid"),
        parse_nets("block", &block).expect("valid"),
    )
}

/// Blocking by resolution on (a second object, built with the switch on; a third with the
/// NXDOMAIN rewrite on too when `rewrite`), with 1,000 listed names (`evil.example` among them)
/// and 10,000 blocked destinations (192.0.2.200 among them).
fn resolved_object(
    allow: &[ipnet::IpNet],
    block: &[ipnet::IpNet],
    rewrite: bool,
) -> anyhow::Result<(aya::Ebpf, Maps)> {
    use sensor_kernel::lists::resolved::{DestBlock, Listing, ResolvedMaps};
    let mut ebpf = loader::load(
        &ProgramSettings {
            resolved: Some((300, 86_400)),
            rewrite_nxdomain: rewrite,
            ..ProgramSettings::default()
        },
        None,
    )?;
    let mut maps = Maps::take(&mut ebpf)?;
    maps.fill(allow, block)?;
    let mut r = ResolvedMaps::take(&mut ebpf)?;
    let mut names: Vec<Listing> = (0..999)
        .map(|i| Listing {
            name: format!("c2-{i}.bad{}.example", i % 17),
            expires_unix: 0,
            exact: i % 3 == 0,
            source: sensor_common::resolved::NAME_FROM_FEED,
        })
        .collect();
    names.push(Listing {
        name: "evil.example".into(),
        expires_unix: 0,
        exact: false,
        source: sensor_common::resolved::NAME_FROM_FEED,
    });
    r.set_names(&names)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let dests: Vec<DestBlock> = (0..9_999u32)
        .map(|i| Ipv4Addr::from(0xc612_0000 | i))
        .chain([Ipv4Addr::new(192, 0, 2, 200)])
        .map(|ip| DestBlock {
            address: IpAddr::V4(ip),
            name: "evil.example".into(),
            client: v4(192, 168, 10, 20),
            ttl: 3600,
            expires_unix: now + 3600,
        })
        .collect();
    r.block(&dests, now)?;
    Ok((ebpf, maps))
}

fn micro(repeat: u32, rounds: u32, only: Option<&str>) -> anyhow::Result<()> {
    let mut ebpf = loader::load(&ProgramSettings::default(), None)?;
    let mut maps = Maps::take(&mut ebpf)?;
    let (allow, block) = lists();
    maps.fill(&allow, &block)?;
    loader::named_program(&mut ebpf, NOOP_PROGRAM_NAME).load()?;
    let (mut ebpf_on, mut maps_on) = resolved_object(&allow, &block, false)?;
    let (mut ebpf_rw, mut maps_rw) = resolved_object(&allow, &block, true)?;
    let to_443 =
        |dst: IpAddr| ip_frame(v4(192, 168, 10, 20), dst, UDP, &udp(40000, 443, &[0u8; 64]));

    let q4 = udp_query_frame(
        v4(192, 168, 10, 20),
        v4(10, 0, 0, 53),
        40000,
        1,
        "www.example.com",
        1,
    );
    // (name, program, frame, blocking by resolution on)
    let mut classes: Vec<(&str, &str, Vec<u8>, bool)> = vec![
        (
            "no-op XDP program (floor)",
            NOOP_PROGRAM_NAME,
            q4.clone(),
            false,
        ),
        (
            "non-DNS (IPv4 UDP/443)",
            PROGRAM_NAME,
            ip_frame(
                v4(192, 168, 10, 20),
                v4(10, 0, 0, 1),
                UDP,
                &udp(40000, 443, &[0u8; 64]),
            ),
            false,
        ),
        ("IPv4 query", PROGRAM_NAME, q4.clone(), false),
        (
            "IPv6 query",
            PROGRAM_NAME,
            udp_query_frame(
                IpAddr::V6(Ipv6Addr::new(0x2a00, 0x1450, 1, 0, 0, 0, 0, 20)),
                IpAddr::V6(Ipv6Addr::new(0x2a00, 0x1450, 1, 0, 0, 0, 0, 53)),
                40000,
                1,
                "www.example.com",
                28,
            ),
            false,
        ),
        (
            "allowlisted query",
            PROGRAM_NAME,
            udp_query_frame(
                v4(10, 100, 2, 3),
                v4(10, 0, 0, 53),
                40000,
                1,
                "www.example.com",
                1,
            ),
            false,
        ),
        (
            "blocklisted source",
            PROGRAM_NAME,
            udp_query_frame(
                v4(203, 0, 113, 7),
                v4(10, 0, 0, 53),
                40000,
                1,
                "www.example.com",
                1,
            ),
            false,
        ),
        (
            "IPv4 response, 4 A",
            PROGRAM_NAME,
            response_frame(false, 0),
            false,
        ),
        (
            "IPv4 response, CNAME + 4 A",
            PROGRAM_NAME,
            response_frame(true, 0),
            false,
        ),
        (
            "IPv4 response, NXDOMAIN",
            PROGRAM_NAME,
            response_frame(false, 3),
            false,
        ),
        // Blocking by resolution on: every packet looks its destination up in DEST_BLOCK, and
        // every response's name is hashed and its suffixes probed in NAME_FILTER/BAD_NAMES.
        ("on: IPv4 query", PROGRAM_NAME, q4.clone(), true),
        (
            "on: non-DNS (IPv4 UDP/443)",
            PROGRAM_NAME,
            to_443(v4(10, 0, 0, 1)),
            true,
        ),
        (
            "on: response, 4 A, clean",
            PROGRAM_NAME,
            response_frame(false, 0),
            true,
        ),
        (
            "on: response, 4 A, listed",
            PROGRAM_NAME,
            response_frame_for("www.evil.example", false, 0),
            true,
        ),
        (
            "on: packet to a blocked dest",
            PROGRAM_NAME,
            to_443(v4(192, 0, 2, 200)),
            true,
        ),
    ];
    // One packet per test run, not `repeat` runs of one: a run changes its frame in place and
    // the kernel does not restore it between repeats, so after the first the rewrite would
    // meet its own NXDOMAIN (and a shorter frame). Each run then also pays the timer reads
    // around it, so the rewrite is compared with the same listed response, without the
    // rewrite, measured the same way. (name, object: false = on, true = on + rewrite)
    let mut per_call: Vec<(&str, bool)> = vec![
        ("on: response, 4 A, listed, 1/run", false),
        ("on+rewrite: response, 4 A, listed, 1/run", true),
    ];
    let listed = response_frame_for("www.evil.example", false, 0);
    if let Some(only) = only {
        let floor = classes.remove(0);
        classes.retain(|(name, _, _, _)| name.contains(only));
        classes.insert(0, floor);
        per_call.retain(|(name, _)| name.contains(only));
    }
    // Chunks stay below the ring buffer's capacity (8 MiB / 384 B ≈ 21k response records), and
    // the ring is drained between chunks, so the query classes measure real reservations, not
    // "ring full" early exits.
    let chunk = 20_000u32.min(repeat);
    let per_round = (repeat / rounds).max(chunk);
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); classes.len() + per_call.len()];
    let mut rewrite_runs = 0u64;
    for _ in 0..rounds {
        for (i, (_, prog, frame, on)) in classes.iter().enumerate() {
            let mut total_ns = 0f64;
            let mut n = 0u32;
            let (object, m) = if *on {
                (&mut ebpf_on, &mut maps_on)
            } else {
                (&mut ebpf, &mut maps)
            };
            while n < per_round {
                let r = loader::named_program(object, prog).test_run(TestRunOptions {
                    data_in: Some(frame),
                    repeat: chunk,
                    ..TestRunOptions::new()
                })?;
                total_ns += r.duration.as_nanos() as f64 * chunk as f64;
                n += chunk;
                while m.events.next().is_some() {}
            }
            samples[i].push(total_ns / n as f64);
        }
        for (j, (_, rewrite)) in per_call.iter().enumerate() {
            let (object, m) = if *rewrite {
                (&mut ebpf_rw, &mut maps_rw)
            } else {
                (&mut ebpf_on, &mut maps_on)
            };
            let mut total_ns = 0f64;
            for n in 0..per_round {
                let r = loader::named_program(object, PROGRAM_NAME).test_run(TestRunOptions {
                    data_in: Some(&listed),
                    ..TestRunOptions::new()
                })?;
                total_ns += r.duration.as_nanos() as f64;
                if n % chunk == chunk - 1 {
                    while m.events.next().is_some() {}
                }
            }
            while m.events.next().is_some() {}
            if *rewrite {
                rewrite_runs += u64::from(per_round);
            }
            samples[classes.len() + j].push(total_ns / per_round as f64);
        }
    }
    let counters = maps.counters()?;
    let on = maps_on.counters()?;
    let rw = maps_rw.counters()?;
    if counters.ring_full != 0 || on.ring_full != 0 || rw.ring_full != 0 {
        bail!(
            "the ring buffer filled during the benchmark ({} records lost): results invalid",
            counters.ring_full + on.ring_full + rw.ring_full
        );
    }
    if rw.resolved_rewritten != rewrite_runs {
        bail!(
            "{} of {rewrite_runs} runs rewrote the response: the 'on+rewrite' class measured the wrong path",
            rw.resolved_rewritten
        );
    }
    if only.is_none() && (on.resolved_blocks == 0 || on.dest_blocked == 0) {
        bail!("blocking by resolution never acted: the 'on:' classes measured the wrong path");
    }
    for v in &mut samples {
        v.sort_by(f64::total_cmp);
    }
    // The median round, and the fastest: other load on the machine only ever adds time, so the
    // fastest round is the steadier figure on a busy machine (BENCHMARKS.md).
    let medians: Vec<f64> = samples.iter().map(|v| v[v.len() / 2]).collect();
    let fastest: Vec<f64> = samples.iter().map(|v| v[0]).collect();
    let (floor, floor_fast) = (medians[0], fastest[0]);
    println!(
        "BPF_PROG_TEST_RUN, {repeat} packets per class in {rounds} interleaved rounds, blocklist {} entries, allowlist {}",
        block.len(),
        allow.len()
    );
    println!(
        "{:<42} {:>10} {:>10} {:>10} {:>10}",
        "class", "median ns", "x floor", "fastest ns", "x floor"
    );
    let names = classes
        .iter()
        .map(|(name, _, _, _)| *name)
        .chain(per_call.iter().map(|(name, _)| *name));
    for (i, name) in names.enumerate() {
        println!(
            "{name:<42} {:>10.1} {:>10.2} {:>10.1} {:>10.2}",
            medians[i],
            medians[i] / floor,
            fastest[i],
            fastest[i] / floor_fast
        );
    }
    Ok(())
}

/// A response from 10.0.0.53 to a client for www.example.com: four A records behind a pointer
/// to the question (after a CNAME to edge.cdn.example when `cname`), or none with `rcode`.
fn response_frame(cname: bool, rcode: u16) -> Vec<u8> {
    response_frame_for("www.example.com", cname, rcode)
}

/// [`response_frame`] for another name.
fn response_frame_for(name: &str, cname: bool, rcode: u16) -> Vec<u8> {
    let mut answers = Vec::new();
    let mut owner = QNAME_PTR;
    if cname {
        answers = rr(&QNAME_PTR, 5, 300, &wire_name("edge.cdn.example"));
        owner = [0xc0, (12 + wire_name(name).len() + 4 + 12) as u8];
    }
    let count = if rcode == 0 { 4 } else { 0 };
    for i in 0..count {
        answers.extend(rr(&owner, 1, 60, &[192, 0, 2, i as u8 + 1]));
    }
    let ancount = count + u16::from(cname);
    let msg = dns_response(1, 0x8180 | rcode, name, 1, ancount, &answers);
    ip_frame(
        v4(10, 0, 0, 53),
        v4(192, 168, 10, 20),
        UDP,
        &udp(53, 40000, &msg),
    )
}

/// A capture of `n` UDP queries from 1,000 clients for 5,000 names to `server`.
fn query_capture(n: u32, server: Ipv4Addr) -> Vec<Vec<u8>> {
    let types = [1u16, 28, 1, 1, 28, 16, 15, 65];
    (0..n)
        .map(|i| {
            let client = v4(10, 77, (i % 1000 / 250) as u8, (i % 250) as u8 + 1);
            let name = format!("host{}.dept{}.example{}.com", i % 5000, i % 13, i % 37);
            udp_query_frame(
                client,
                IpAddr::V4(server),
                1024 + (i % 60000) as u16,
                i as u16,
                &name,
                types[i as usize % types.len()],
            )
        })
        .collect()
}

/// CPU time (user + system, including reaped children) of a child, from wait4.
fn stop_and_rusage(pid: i32, signal: nix::sys::signal::Signal) -> anyhow::Result<Duration> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's PID with valid pointers to a status and a rusage.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if rc != pid {
        bail!("wait4({pid}) failed: {}", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(tv(ru.ru_utime) + tv(ru.ru_stime))
}

/// CPU time in ns of a process, its threads and its descendants, from
/// `/proc/<pid>/task/*/schedstat` (exact, unlike the 10 ms ticks of /proc/<pid>/stat).
fn cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    for t in tasks.flatten() {
        let p = t.path();
        if let Ok(s) = std::fs::read_to_string(p.join("schedstat")) {
            total += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(children) = std::fs::read_to_string(p.join("children")) {
            total += children
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
                .map(cpu_ns)
                .sum::<u64>();
        }
    }
    total
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

fn count_lines(p: &Path) -> usize {
    std::fs::read(p)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

/// The XDP program attached to `ifname`: (run_time_ns, run_cnt) from `bpftool prog show`.
fn xdp_stats(ifname: &str) -> anyhow::Result<(u64, u64)> {
    let net: serde_json::Value = serde_json::from_slice(
        &Command::new("bpftool")
            .args(["-j", "net", "show", "dev", ifname])
            .output()?
            .stdout,
    )?;
    let id = net[0]["xdp"][0]["id"]
        .as_u64()
        .context("no XDP program on the interface")?;
    let prog: serde_json::Value = serde_json::from_slice(
        &Command::new("bpftool")
            .args(["-j", "prog", "show", "id", &id.to_string()])
            .output()?
            .stdout,
    )?;
    Ok((
        prog["run_time_ns"].as_u64().unwrap_or(0),
        prog["run_cnt"].as_u64().unwrap_or(0),
    ))
}

fn replay(topo: &Topology, file: &Path) -> anyhow::Result<(Duration, String)> {
    let t = Instant::now();
    let out = topo
        .command("tcpreplay")
        .args(["--topspeed", "-i", &topo.peer_if])
        .arg(file)
        .output()?;
    if !out.status.success() {
        bail!("tcpreplay: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = text
        .lines()
        .find(|l| l.contains("Rated:"))
        .unwrap_or("")
        .trim()
        .to_owned();
    Ok((t.elapsed(), rate))
}

fn live(n: u32) -> anyhow::Result<()> {
    let topo = Topology::new(false);
    let dir = tempfile::tempdir()?;
    let capture = dir.path().join("queries.pcap");
    pcap::write(&capture, &query_capture(n, topo.v4(1)));
    let old_stats = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")?;
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
    let result = live_runs(&topo, dir.path(), &capture, n);
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", old_stats.trim())?;
    result
}

fn live_runs(topo: &Topology, dir: &Path, capture: &Path, n: u32) -> anyhow::Result<()> {
    let sensor_bin: PathBuf = std::env::current_exe()?.with_file_name("sensor");
    // 1. The sensor.
    let name = sensor_testkit::netns::unique("bench");
    let events = dir.join("events.jsonl");
    let config = dir.join("sensor.toml");
    std::fs::write(
        &config,
        format!(
            "[sensor]\nname = \"{name}\"\npin_root = \"/sys/fs/bpf/dns-sensor-bench-{name}\"\n[capture]\ninterfaces = [\"{}\"]\n\
             [output]\nkind = \"file\"\npath = \"{}\"\n",
            topo.host_if,
            events.display()
        ),
    )?;
    let parsed = sensor::config::Config::from_file(&config)?;
    let mut child = Command::new(&sensor_bin)
        .args(["run", "--config"])
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()?;
    let pin_dir = parsed.pin_dir();
    if !wait_until(Duration::from_secs(30), || {
        xdp_stats(&topo.host_if).is_ok() && pin_dir.join("COUNTERS").exists()
    }) {
        let _ = child.kill();
        bail!("the sensor did not attach");
    }
    let (xdp_ns0, _) = xdp_stats(&topo.host_if)?;
    let sensor_cpu0 = cpu_ns(child.id());
    let (t, rate) = replay(topo, capture)?;
    wait_until(Duration::from_secs(20), || {
        sensor_kernel::stats::read(&pin_dir).is_ok_and(|c| c.packets >= n as u64)
    });
    // The file grows by ~450 bytes a line: poll its size, not its lines (cheap, no re-read).
    wait_until(Duration::from_secs(20), || {
        std::fs::metadata(&events).is_ok_and(|m| m.len() >= n as u64 * 300)
            && count_lines(&events) >= n as usize
    });
    let sensor_steady = cpu_ns(child.id()) - sensor_cpu0;
    let kernel = sensor_kernel::stats::read(&pin_dir)?;
    let (xdp_ns, xdp_cnt) = xdp_stats(&topo.host_if)?;
    let sensor_cpu = stop_and_rusage(child.id() as i32, nix::sys::signal::Signal::SIGTERM)?;
    let received = count_lines(&events);

    // 2. tshark on the same interface, same capture, same rate.
    let fields = dir.join("tshark.tsv");
    let out = std::fs::File::create(&fields)?;
    let tshark = Command::new("tshark")
        .args([
            "-i",
            &topo.host_if,
            "-n",
            "-l",
            "-Q",
            "-f",
            "udp dst port 53",
            "-T",
            "fields",
        ])
        .args(["-e", "ip.src", "-e", "dns.qry.name", "-e", "dns.qry.type"])
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()?;
    // tshark starts dumpcap; wait until the capture runs (a probe packet shows up).
    let probe = dir.join("probe.pcap");
    let probe_frame = udp_query_frame(
        v4(10, 77, 9, 9),
        IpAddr::V4(topo.v4(1)),
        9,
        9,
        "probe.invalid",
        1,
    );
    pcap::write(&probe, &[probe_frame]);
    if !wait_until(Duration::from_secs(30), || {
        let _ = topo
            .command("tcpreplay")
            .args(["-q", "-i", &topo.peer_if])
            .arg(&probe)
            .output();
        count_lines(&fields) > 0
    }) {
        bail!("tshark did not start capturing");
    }
    let tshark_cpu0 = cpu_ns(tshark.id());
    let (t2, rate2) = replay(topo, capture)?;
    wait_until(Duration::from_secs(30), || {
        count_lines(&fields) >= n as usize
    });
    let tshark_steady = cpu_ns(tshark.id()) - tshark_cpu0;
    let tshark_cpu = stop_and_rusage(tshark.id() as i32, nix::sys::signal::Signal::SIGINT)?;
    let tshark_received = std::fs::read_to_string(&fields)?
        .lines()
        .filter(|l| !l.contains("probe.invalid"))
        .count();

    let per_q = |d: Duration| d.as_nanos() as f64 / n as f64;
    let per_qn = |ns: u64| ns as f64 / n as f64;
    let xdp_q = per_qn(xdp_ns - xdp_ns0);
    let sensor_total = xdp_q + per_qn(sensor_steady);
    let tshark_total = per_qn(tshark_steady);
    println!(
        "live replay: {n} UDP queries, tcpreplay --topspeed into a veth (XDP mode chosen by the kernel)"
    );
    println!("sensor: replay {:.2}s ({rate})", t.as_secs_f64());
    println!(
        "  queries sent {n}, XDP runs {xdp_cnt}, events {}, ring_full {}, records written {received}, loss {}",
        kernel.events,
        kernel.ring_full,
        n as i64 - received as i64
    );
    println!(
        "  CPU per query during the replay: XDP {xdp_q:.0} ns + daemon {:.0} ns = {sensor_total:.0} ns",
        per_qn(sensor_steady)
    );
    println!(
        "  daemon CPU including start-up (verifier, maps): {:.0} ns per query",
        per_q(sensor_cpu)
    );
    println!("tshark: replay {:.2}s ({rate2})", t2.as_secs_f64());
    println!(
        "  queries sent {n}, lines written {tshark_received}, loss {}",
        n as i64 - tshark_received as i64
    );
    println!("  CPU per query during the replay (tshark + dumpcap): {tshark_total:.0} ns");
    println!(
        "  tshark CPU including start-up: {:.0} ns per query",
        per_q(tshark_cpu)
    );
    println!(
        "ratio tshark / sensor CPU per query (during the replay): {:.1}x",
        tshark_total / sensor_total
    );
    Ok(())
}
