//! The EDL under attack while the sensor captures (issue 12, "Servers that survive the networks
//! they face"): slowloris connections and a failed-authentication flood against the EDL port,
//! while queries stream through the capture path. Measures what the issue asks: `ring_full`,
//! queries reported, the authorised fetch's latency, `/metrics` answering.
//!
//! Real parts: the `sensor` binary attached to a veth of a namespace made here, queries sent from
//! four addresses in it ([`Flood`]), the EDL over HTTPS with Basic auth on loopback. The
//! attackers connect from other loopback addresses inside the EDL's `allowed_clients` (the hard
//! case: an address outside it is closed at accept before anything else), the firewall from
//! 127.0.0.1, configured in `[[blocklist.edl.firewalls]]`.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{
    daemon::Daemon,
    netns::{Topology, sh, unique},
    traffic::Flood,
};

/// What to run.
#[derive(Debug, Clone)]
pub struct FloodOptions {
    /// DNS queries per second through the capture, all clients together.
    pub rate: u32,
    pub duration: Duration,
    /// Slowloris connections held open against the EDL port (reconnecting when cut).
    pub slowloris: usize,
    /// Failed-authentication requests per second (a new TLS connection each).
    pub failed_auth_per_sec: u32,
    /// The `sensor` binary.
    pub sensor: PathBuf,
}

/// The numbers, and the lines the run printed.
#[derive(Debug, Default)]
pub struct FloodReport {
    pub sent: u64,
    pub kernel_queries: u64,
    pub ring_full: u64,
    pub written: u64,
    pub output_queue_full: u64,
    pub fetches: usize,
    pub fetch_failures: usize,
    pub fetch_p50: Duration,
    pub fetch_p99: Duration,
    pub fetch_max: Duration,
    pub scrapes: usize,
    pub scrape_failures: usize,
    pub scrape_max: Duration,
    pub slowloris_connects: u64,
    pub failed_auth_sent: u64,
    pub failed_auth_401: u64,
    pub failed_auth_refused: u64,
    /// `dns_sensor_http_connections_*{server="edl"}` at the end.
    pub edl_connections: BTreeMap<String, f64>,
    pub lines: Vec<String>,
}

impl FloodReport {
    fn line(&mut self, l: String) {
        println!("{l}");
        self.lines.push(l);
    }
}

const FIREWALL_USER: &str = "firewall";
const FIREWALL_PASSWORD: &str = "flood-test-password";
const CLIENTS: u8 = 4;

/// Prometheus text as `name{labels}` → value.
fn parse_metrics(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn self_signed(cert: &Path, key: &Path) {
    sh(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
            &key.display().to_string(),
            "-out",
            &cert.display().to_string(),
        ],
    );
}

fn https_client(pem: &[u8], edl: SocketAddr, from: IpAddr) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pem).map_err(|e| e.to_string())?])
        .resolve("localhost", edl)
        .local_address(from)
        // A new connection (and TLS handshake) per request, as PAN-OS fetches.
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())
}

/// One slowloris connection, forever: connect from `from`, send the first bytes of a TLS
/// record and then nothing; when the server cuts it, reconnect a second later.
async fn slowloris(from: IpAddr, to: SocketAddr, stop: Arc<AtomicBool>, connects: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        let sock = match tokio::net::TcpSocket::new_v4() {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if sock.bind(SocketAddr::new(from, 0)).is_ok()
            && let Ok(mut s) = sock.connect(to).await
        {
            connects.fetch_add(1, Ordering::Relaxed);
            // A TLS handshake record header promising 512 bytes, then silence.
            let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await;
            let mut buf = [0u8; 256];
            loop {
                tokio::select! {
                    r = s.read(&mut buf) => match r {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    },
                    () = tokio::time::sleep(Duration::from_millis(500)) => {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs the flood and returns the numbers; errors describe what could not be set up.
pub fn run(opts: &FloodOptions) -> Result<FloodReport, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut report = FloodReport::default();

    let topo = Topology::new(false);
    let server = IpAddr::V4(topo.v4(1));
    let clients: Vec<IpAddr> = (0..CLIENTS)
        .map(|i| {
            if i == 0 {
                IpAddr::V4(topo.v4(2))
            } else {
                IpAddr::V4(topo.add_client_v4(10 + i))
            }
        })
        .collect();

    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let (cert, key, pw) = (d.join("edl.crt"), d.join("edl.key"), d.join("edl.pw"));
    self_signed(&cert, &key);
    std::fs::write(&pw, FIREWALL_PASSWORD).map_err(|e| e.to_string())?;
    // A list of realistic size already published (the last good list, served at start).
    let list: String = (0..5_000u32)
        .map(|i| {
            format!(
                "{} expires 2026-12-24 severity high\n",
                Ipv4Addr::from(0x2d00_0000 + i * 7)
            )
        })
        .collect();
    std::fs::write(d.join("edl.txt"), &list).map_err(|e| e.to_string())?;
    let metrics_port = super::osmem::free_port();
    let edl_port = super::osmem::free_port();
    let name = unique("edlflood");
    let config = d.join("sensor.toml");
    std::fs::write(
        &config,
        format!(
            r#"[sensor]
name = "{name}"
pin_root = "/sys/fs/bpf/dns-sensor-test-{name}"

[capture]
interfaces = ["{iface}"]

[output]
kind = "file"
path = "/dev/null"

[metrics]
listen = "127.0.0.1:{metrics_port}"

[blocklist.edl]
path = "{dir}/edl.txt"
listen = "127.0.0.1:{edl_port}"
basic_auth_user = "{FIREWALL_USER}"
basic_auth_password = {{ file = "{pw}" }}
allowed_clients = ["127.0.0.0/8"]
tls_cert = "{cert}"
tls_key = "{key}"

[[blocklist.edl.firewalls]]
name = "pa-border"
address = "127.0.0.1"
user = "{FIREWALL_USER}"
"#,
            iface = topo.host_if,
            dir = d.display(),
            pw = pw.display(),
            cert = cert.display(),
            key = key.display(),
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut sensor = Daemon::start(&opts.sensor, &config, d);
    let pem = std::fs::read(&cert).map_err(|e| e.to_string())?;
    let edl: SocketAddr = ([127, 0, 0, 1], edl_port).into();
    let edl_url = format!("https://localhost:{edl_port}/blocklist.txt");
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let scrape = |rt: &tokio::runtime::Runtime| -> Result<BTreeMap<String, f64>, String> {
        rt.block_on(async {
            let r = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| e.to_string())?
                .get(&metrics_url)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            r.text().await.map_err(|e| e.to_string())
        })
        .map(|t| parse_metrics(&t))
    };
    let get = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    let before = scrape(&rt)?;

    report.line(format!(
        "edl-flood: {} queries/s from {CLIENTS} clients, {} slowloris connections, {} failed-auth requests/s, {} s; sensor pid {}",
        opts.rate,
        opts.slowloris,
        opts.failed_auth_per_sec,
        opts.duration.as_secs(),
        sensor.pid()
    ));
    let names: Vec<String> = (0..5_000)
        .map(|i| format!("host{i}.flood.example"))
        .collect();
    let floods: Vec<Flood> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut ns = names.clone();
            ns.rotate_left(i * names.len() / usize::from(CLIENTS));
            Flood::start(
                &topo.ns,
                SocketAddr::new(*c, 0),
                SocketAddr::new(server, 53),
                opts.rate / u32::from(CLIENTS),
                ns,
            )
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let connects = Arc::new(AtomicU64::new(0));
    // Slowloris from 127.0.0.2..: eight per address, the default per-client cap, so the total
    // cap is what holds them back.
    for i in 0..opts.slowloris {
        let source = i / 8;
        let from = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            (source / 250) as u8,
            (2 + source % 250) as u8,
        ));
        rt.spawn(slowloris(from, edl, stop.clone(), connects.clone()));
    }
    // Failed authentication from 64 addresses in 127.0.1.0/24, round robin.
    let (fa_sent, fa_401, fa_refused) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let attackers: Vec<reqwest::Client> = (0..64u8)
        .map(|i| https_client(&pem, edl, IpAddr::V4(Ipv4Addr::new(127, 0, 200, 1 + i))))
        .collect::<Result<_, _>>()?;
    {
        let (stop, sent, ok401, refused) = (
            stop.clone(),
            fa_sent.clone(),
            fa_401.clone(),
            fa_refused.clone(),
        );
        let url = edl_url.clone();
        let per_sec = opts.failed_auth_per_sec.max(1);
        rt.spawn(async move {
            let in_flight = Arc::new(tokio::sync::Semaphore::new(4_000));
            let started = Instant::now();
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                let due = (started.elapsed().as_secs_f64() * f64::from(per_sec)) as u64;
                while n < due {
                    let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                        break;
                    };
                    let c = attackers[(n % attackers.len() as u64) as usize].clone();
                    let (url, ok401, refused) = (url.clone(), ok401.clone(), refused.clone());
                    n += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        let _permit = permit;
                        match c
                            .get(&url)
                            .basic_auth(FIREWALL_USER, Some("guess"))
                            .send()
                            .await
                        {
                            Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => {
                                ok401.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    }

    // The firewall's fetches (every 100 ms, a new connection each) and the scrapes (every
    // second), for the whole run.
    let firewall = https_client(&pem, edl, IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    let scraper = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut next_scrape = Duration::ZERO;
    let mut next_progress = Duration::from_secs(10);
    while started.elapsed() < opts.duration {
        let t0 = Instant::now();
        let ok = rt.block_on(async {
            match firewall
                .get(&edl_url)
                .basic_auth(FIREWALL_USER, Some(FIREWALL_PASSWORD))
                .send()
                .await
            {
                Ok(r) if r.status() == reqwest::StatusCode::OK => r
                    .bytes()
                    .await
                    .map(|b| b.len() == list.len())
                    .unwrap_or(false),
                _ => false,
            }
        });
        let took = t0.elapsed();
        report.fetches += 1;
        if ok {
            latencies.push(took);
        } else {
            report.fetch_failures += 1;
        }
        if started.elapsed() >= next_scrape {
            next_scrape += Duration::from_secs(1);
            let t0 = Instant::now();
            let ok = rt.block_on(async {
                scraper
                    .get(&metrics_url)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            });
            report.scrapes += 1;
            report.scrape_max = report.scrape_max.max(t0.elapsed());
            if !ok {
                report.scrape_failures += 1;
            }
        }
        if started.elapsed() >= next_progress {
            next_progress += Duration::from_secs(10);
            let sent: u64 = floods.iter().map(Flood::sent).sum();
            let line = format!(
                "t={:>3}s sent={sent} fetches={} failed={} slowloris_connects={} failed_auth sent={} 401={} refused={}",
                started.elapsed().as_secs(),
                report.fetches,
                report.fetch_failures,
                connects.load(Ordering::Relaxed),
                fa_sent.load(Ordering::Relaxed),
                fa_401.load(Ordering::Relaxed),
                fa_refused.load(Ordering::Relaxed),
            );
            report.line(line);
        }
        std::thread::sleep(Duration::from_millis(100).saturating_sub(took));
    }
    stop.store(true, Ordering::Relaxed);
    report.sent = floods.into_iter().map(Flood::stop).sum();
    report.slowloris_connects = connects.load(Ordering::Relaxed);
    report.failed_auth_sent = fa_sent.load(Ordering::Relaxed);
    report.failed_auth_401 = fa_401.load(Ordering::Relaxed);
    report.failed_auth_refused = fa_refused.load(Ordering::Relaxed);

    // Every query the kernel saw reaches the output: wait for the counters to settle.
    let base_q = get(&before, "dns_sensor_kernel_dns_queries_total");
    let base_w = get(&before, "dns_sensor_reader_written_total");
    let deadline = Instant::now() + Duration::from_secs(30);
    let last = loop {
        let m = scrape(&rt)?;
        let q = get(&m, "dns_sensor_kernel_dns_queries_total") - base_q;
        let w = get(&m, "dns_sensor_reader_written_total") - base_w;
        if (q as u64 >= report.sent && w as u64 >= report.sent) || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    report.kernel_queries = (get(&last, "dns_sensor_kernel_dns_queries_total") - base_q) as u64;
    report.written = (get(&last, "dns_sensor_reader_written_total") - base_w) as u64;
    report.ring_full = get(&last, "dns_sensor_kernel_ring_full_total") as u64;
    report.output_queue_full = get(&last, "dns_sensor_reader_output_queue_full_total") as u64;
    report.edl_connections = last
        .iter()
        .filter(|(k, _)| {
            k.starts_with("dns_sensor_http_connections") && k.contains("server=\"edl\"")
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    latencies.sort();
    report.fetch_p50 = percentile(&latencies, 0.50);
    report.fetch_p99 = percentile(&latencies, 0.99);
    report.fetch_max = latencies.last().copied().unwrap_or_default();
    let summary = format!(
        "queries: sent {} kernel {} written {} ring_full {} output_queue_full {}\n\
         authorised fetch: {} ({} failed) p50 {:.1} ms p99 {:.1} ms max {:.1} ms\n\
         /metrics: {} scrapes, {} failed, slowest {:.1} ms\n\
         attack: slowloris connects {} ; failed-auth sent {} answered 401 {} refused/failed {}",
        report.sent,
        report.kernel_queries,
        report.written,
        report.ring_full,
        report.output_queue_full,
        report.fetches,
        report.fetch_failures,
        report.fetch_p50.as_secs_f64() * 1e3,
        report.fetch_p99.as_secs_f64() * 1e3,
        report.fetch_max.as_secs_f64() * 1e3,
        report.scrapes,
        report.scrape_failures,
        report.scrape_max.as_secs_f64() * 1e3,
        report.slowloris_connects,
        report.failed_auth_sent,
        report.failed_auth_401,
        report.failed_auth_refused,
    );
    for l in summary.lines() {
        report.line(l.to_owned());
    }
    let conns: Vec<String> = report
        .edl_connections
        .iter()
        .map(|(k, v)| format!("{}={v}", k.trim_start_matches("dns_sensor_")))
        .collect();
    report.line(format!("edl connections: {}", conns.join(" ")));
    drop(rt);
    let _ = sensor.stop();
    Ok(report)
}
