//! The soak: the whole pipeline for a long time at a steady query rate, watching memory, the
//! counters' conservation and every drop counter.
//!
//! Real parts: the release `sensor` binary attached to a veth whose peer is in a namespace
//! created here, queries sent from four client addresses in that namespace ([`Flood`]), the
//! tansu Kafka broker, the osmem search server; local fakes only for ThreatBook and WeCom. One
//! name in a hundred is malicious, so the verdict cache, alerts and the Elasticsearch sink work
//! all the time, not only Kafka.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rdkafka::consumer::{BaseConsumer, Consumer as _};

use super::{
    fake_threatbook::{FakeThreatBook, FakeVerdict},
    fake_wecom::FakeWeCom as FakeWecom,
    netns::{Topology, unique},
    osmem::Osmem,
    tansu::{Storage, Tansu},
    traffic::Flood,
};

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Queries per second, all clients together.
    pub rate: u32,
    /// Length of the measured run, after the warm-up.
    pub duration: Duration,
    /// Traffic before the memory baseline is taken (caches fill, allocators settle).
    pub warmup: Duration,
    /// Distinct query names (one in a hundred malicious).
    pub names: usize,
    /// Memory samples and a progress line every `sample` of time.
    pub sample: Duration,
    /// The release `sensor` binary.
    pub sensor: PathBuf,
}

const TOPIC: &str = "dns-soak";
const TB_KEY: &str = "soak-threatbook-key";
const WECOM_KEY: &str = "soak-wecom-key";
const CLIENTS: u8 = 4;

/// Prometheus text as `name{labels}` → value.
pub type Scrape = BTreeMap<String, f64>;

fn scrape(rt: &tokio::runtime::Runtime, port: u16) -> Result<Scrape, String> {
    let body = rt
        .block_on(async {
            reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
                .await?
                .text()
                .await
        })
        .map_err(|e| format!("GET /metrics: {e}"))?;
    Ok(parse_metrics(&body))
}

/// Sample lines of the text format (`name{labels} value`), comments skipped.
pub fn parse_metrics(body: &str) -> Scrape {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn get(s: &Scrape, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(f64::NAN)
}

/// Resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) of `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of /proc/pid/stat, 12 and 13 after the ')'.
    (ticks(11) + ticks(12)) / 100.0
}

/// The sensor child, killed by PID if the soak fails half-way.
struct SensorProcess(Option<Child>);

impl Drop for SensorProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }
}

/// The numbers a soak prints.
#[derive(Debug, Default)]
pub struct SoakReport {
    pub lines: Vec<String>,
    pub failures: Vec<String>,
}

impl SoakReport {
    fn line(&mut self, l: String) {
        println!("{l}");
        self.lines.push(l);
    }
    fn check(&mut self, ok: bool, what: String) {
        let l = format!("{} {what}", if ok { "PASS" } else { "FAIL" });
        if !ok {
            self.failures.push(what);
        }
        self.line(l);
    }
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Runs the soak and prints its report; `Err` when a part could not be set up or a target
/// was missed.
pub fn run(opts: &SoakOptions) -> Result<SoakReport, String> {
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let _guard = rt.enter();
    let mut report = SoakReport::default();

    // The parts.
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
    let kafka = Tansu::start(Storage::Memory);
    rt.block_on(kafka.create_topic(TOPIC, 1));
    let search = Osmem::start();
    let tb = rt
        .block_on(FakeThreatBook::start(TB_KEY))
        .map_err(|e| format!("fake ThreatBook: {e}"))?;
    let names: Vec<String> = (0..opts.names)
        .map(|i| {
            if i % 100 == 7 {
                format!("c2-{i}.soak-evil.net")
            } else {
                format!("host{i}.soak-site.net")
            }
        })
        .collect();
    let malicious: Vec<&String> = names.iter().filter(|n| n.contains("soak-evil")).collect();
    for n in &names {
        if n.contains("soak-evil") {
            tb.set_domain(n, FakeVerdict::malicious("C2"));
        } else {
            tb.set_domain(n, FakeVerdict::clean());
        }
    }
    let wecom = rt.block_on(FakeWecom::start(WECOM_KEY));

    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let write = |name: &str, text: &str| -> Result<PathBuf, String> {
        let p = d.join(name);
        std::fs::write(&p, text).map_err(|e| e.to_string())?;
        Ok(p)
    };
    let tb_key = write("tb.key", TB_KEY)?;
    let wecom_key = write("wecom.key", WECOM_KEY)?;
    let metrics_port = super::osmem::free_port();
    let name = unique("soak");
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/dns-sensor-soak-{name}"));
    let config = write(
        "sensor.toml",
        &format!(
            r#"[sensor]
name = "{name}"
pin_root = "{pins}"

[capture]
interfaces = ["{iface}"]

[output]
kind = "file"
path = "/dev/null"

[intel]
max_wait_ms = 2000

[intel.threatbook]
base_url = "{tb_url}"
api_key = {{ file = "{tb_key}" }}

# Four clients ask every name, for hours: no quota and no per-client budget in the way (the
# names are under a real TLD, not a special-use one, so they are looked up at all).
[intel.threatbook.limits]
daily_quota = 0

[intel.egress]
client_new_names_per_day = 0

[[alerts.wecom]]
base_url = "{wecom_url}"
key = {{ file = "{wecom_key}" }}

[metrics]
listen = "127.0.0.1:{metrics_port}"

[kafka]
brokers = ["{kafka}"]
topic = "{TOPIC}"

[elasticsearch]
urls = ["{search}"]
"#,
            pins = pin_root.display(),
            iface = topo.host_if,
            tb_url = tb.base_url(),
            tb_key = tb_key.display(),
            wecom_url = wecom.base_url(),
            wecom_key = wecom_key.display(),
            kafka = kafka.bootstrap(),
            search = search.url(),
        ),
    )?;
    let log = std::fs::File::create(d.join("sensor.log")).map_err(|e| e.to_string())?;
    let child = Command::new(&opts.sensor)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", opts.sensor.display()))?;
    let pid = child.id();
    let mut sensor = SensorProcess(Some(child));
    wait_for("the sensor's /metrics", Duration::from_secs(60), || {
        scrape(&rt, metrics_port).is_ok()
    })?;

    report.line(format!(
        "soak: {} queries/s from {CLIENTS} clients over {} names ({} malicious), warm-up {} s, measured {} s; sensor pid {pid}",
        opts.rate,
        names.len(),
        malicious.len(),
        opts.warmup.as_secs(),
        opts.duration.as_secs()
    ));
    let per_client = opts.rate / u32::from(CLIENTS);
    let floods: Vec<Flood> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| {
            // Each client asks for every name, starting at a different place.
            let mut ns = names.clone();
            ns.rotate_left(i * names.len() / usize::from(CLIENTS));
            Flood::start(
                &topo.ns,
                SocketAddr::new(*c, 0),
                SocketAddr::new(server, 53),
                per_client,
                ns,
            )
        })
        .collect();

    // Warm-up, then sample.
    let started = Instant::now();
    let mut rss_samples: Vec<(u64, u64)> = Vec::new(); // (seconds since start, KiB)
    let total = opts.warmup + opts.duration;
    let mut baseline: Option<u64> = None;
    let mut cpu_at_baseline = 0.0;
    while started.elapsed() < total {
        std::thread::sleep(opts.sample.min(total.saturating_sub(started.elapsed())));
        let t = started.elapsed().as_secs();
        let rss = rss_kib(pid);
        rss_samples.push((t, rss));
        if baseline.is_none() && started.elapsed() >= opts.warmup {
            baseline = Some(rss);
            cpu_at_baseline = cpu_seconds(pid);
        }
        let s = scrape(&rt, metrics_port)?;
        let sent: u64 = floods.iter().map(Flood::sent).sum();
        report.line(format!(
            "t={t:>5}s sent={sent} kernel_events={} kafka_delivered={} elastic_indexed={} rss={} KiB{}",
            get(&s, "dns_sensor_kernel_events_total"),
            get(&s, "dns_sensor_kafka_delivered_total"),
            get(&s, "dns_sensor_elasticsearch_indexed_total"),
            rss,
            if baseline == Some(rss) && rss_samples.len() > 1 && t >= opts.warmup.as_secs() { " (baseline)" } else { "" }
        ));
    }
    let measured_cpu = cpu_seconds(pid) - cpu_at_baseline;
    let sent: u64 = floods.into_iter().map(Flood::stop).sum();

    // Let everything in flight arrive: the kernel has seen every query, and every sink has
    // settled every event it took.
    let kernel_queries = || {
        scrape(&rt, metrics_port)
            .map(|s| get(&s, "dns_sensor_kernel_dns_queries_total"))
            .unwrap_or(f64::NAN)
    };
    wait_for(
        "the kernel to count every query",
        Duration::from_secs(30),
        || kernel_queries() == sent as f64,
    )?;
    let settled = |s: &Scrape| {
        let events = get(s, "dns_sensor_kernel_events_total");
        get(s, "dns_sensor_reader_records_read_total") == events
            && get(s, "dns_sensor_queue_depth{queue=\"reader_to_enrich\"}") == 0.0
            && get(s, "dns_sensor_queue_depth{queue=\"enrich_to_sinks\"}") == 0.0
            && get(s, "dns_sensor_kafka_in_flight") == 0.0
            && get(s, "dns_sensor_elasticsearch_in_flight") == 0.0
    };
    wait_for("the sinks to settle", Duration::from_secs(120), || {
        scrape(&rt, metrics_port).is_ok_and(|s| settled(&s))
    })?;
    let end = scrape(&rt, metrics_port)?;

    // Stop the sensor cleanly; its exit log has the last counters.
    let mut child = sensor.0.take().expect("running");
    // A failed kill shows up as the wait below not returning a clean exit.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = child.wait().map_err(|e| e.to_string())?;

    // What reached the broker and the index.
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "dns-sensor-soak")
        .create()
        .map_err(|e| format!("consumer: {e}"))?;
    let (low, high) = consumer
        .fetch_watermarks(TOPIC, 0, Duration::from_secs(10))
        .map_err(|e| format!("watermarks: {e}"))?;
    // Count what the broker holds by reading it all back, rather than trusting one broker's
    // idea of a watermark: from the first offset until every event is there, or nothing more
    // comes for 60 s (a deep fetch from a broker holding millions of messages can take seconds;
    // a 10 s limit once ended the read-back of an hour's run early).
    let expected = get(&end, "dns_sensor_kernel_events_total") as u64;
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(TOPIC, 0, rdkafka::Offset::Beginning)
        .map_err(|e| e.to_string())?;
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    let mut in_broker: u64 = 0;
    let mut last_offset = -1;
    while in_broker < expected {
        let Some(m) = consumer.poll(Duration::from_secs(60)) else {
            break;
        };
        let m = m.map_err(|e| format!("reading back: {e}"))?;
        in_broker += 1;
        last_offset = rdkafka::Message::offset(&m);
    }
    // Nothing beyond what was sent.
    if in_broker == expected && consumer.poll(Duration::from_secs(2)).is_some() {
        in_broker += 1;
    }
    report.line(format!(
        "broker: {in_broker} messages read back (offsets {low}..={last_offset}, high watermark {high})"
    ));
    let es_docs = rt.block_on(async {
        let es = super::osmem::Client::new(&search.url());
        es.refresh("security_check_url-*").await;
        let (_, v) = es
            .request(reqwest::Method::GET, "security_check_url-*/_count", None)
            .await;
        v["count"].as_f64().unwrap_or(f64::NAN)
    });
    let wecom_messages = wecom.accepted().len();

    // The report.
    let baseline = baseline.unwrap_or(0);
    let after: Vec<u64> = rss_samples
        .iter()
        .filter(|(t, _)| *t >= opts.warmup.as_secs())
        .map(|(_, r)| *r)
        .collect();
    let max_after = after.iter().copied().max().unwrap_or(0);
    let last = after.last().copied().unwrap_or(0);
    let growth = (max_after as f64 - baseline as f64) / baseline as f64 * 100.0;
    let k = |n: &str| get(&end, &format!("dns_sensor_kernel_{n}_total"));
    report.line(format!(
        "sent {sent} queries in {:.0} s ({:.0}/s); sensor CPU in the measured part {:.1} s ({:.1} µs/query)",
        started.elapsed().as_secs_f64(),
        sent as f64 / total.as_secs_f64(),
        measured_cpu,
        measured_cpu * 1e6 / (opts.rate as f64 * opts.duration.as_secs_f64()),
    ));
    report.line(format!(
        "kernel: dns_queries {} events {} ring_full {} allowlisted {} blocked {}",
        k("dns_queries"),
        k("events"),
        k("ring_full"),
        k("allowlisted"),
        k("blocked")
    ));
    report.line(format!(
        "userspace: records_read {} written {} kafka_delivered {} elastic_indexed {} index_docs {es_docs} cache_lookups {} intel_calls {} alerts_raised {} wecom_messages {wecom_messages}",
        get(&end, "dns_sensor_reader_records_read_total"),
        get(&end, "dns_sensor_reader_written_total"),
        get(&end, "dns_sensor_kafka_delivered_total"),
        get(&end, "dns_sensor_elasticsearch_indexed_total"),
        get(&end, "dns_sensor_cache_lookups_total"),
        end.iter()
            .filter(|(n, _)| n.starts_with("dns_sensor_intel_calls_total"))
            .map(|(_, v)| v)
            .sum::<f64>(),
        get(&end, "dns_sensor_alerts_raised_total"),
    ));
    report.line(format!(
        "memory: baseline {baseline} KiB at {} s, max after {max_after} KiB, last {last} KiB: growth {growth:+.2}%",
        opts.warmup.as_secs()
    ));
    let events = k("events");
    report.check(
        k("dns_queries") == sent as f64,
        format!("kernel saw every query: {} of {sent}", k("dns_queries")),
    );
    report.check(
        events == k("dns_queries"),
        format!("every query became an event: {events}"),
    );
    report.check(
        get(&end, "dns_sensor_reader_records_read_total") == events,
        "the reader read every event".into(),
    );
    report.check(
        get(&end, "dns_sensor_reader_written_total") == events,
        "the JSON-lines output wrote every event".into(),
    );
    report.check(
        get(&end, "dns_sensor_kafka_delivered_total") == events && in_broker as f64 == events,
        format!("Kafka: delivered and read back from the broker = events ({in_broker})"),
    );
    let es_expected = get(&end, "dns_sensor_elasticsearch_indexed_total");
    report.check(
        es_expected > 0.0 && es_docs == es_expected,
        format!("Elasticsearch: every malicious hit indexed once ({es_docs} documents)"),
    );
    let drops: Vec<String> = end
        .iter()
        .filter(|(n, v)| {
            **v != 0.0
                && [
                    "drop",
                    "full",
                    "error",
                    "failed",
                    "exhausted",
                    "lost",
                    "overflow",
                    "panic",
                ]
                .iter()
                .any(|w| n.contains(w))
        })
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    report.check(
        drops.is_empty(),
        format!("no drops, errors or overflows: {drops:?}"),
    );
    report.check(
        growth < 5.0,
        format!("resident memory grows less than 5% after warm-up ({growth:+.2}%)"),
    );
    report.check(status.success(), format!("clean exit ({status})"));
    if report.failures.is_empty() {
        Ok(report)
    } else {
        Err(format!("soak failed: {:?}", report.failures))
    }
}

/// The release `sensor` beside the running executable (sensor-bench).
pub fn sensor_beside_me() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("sensor")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| Path::new("target/release/sensor").to_path_buf())
}
