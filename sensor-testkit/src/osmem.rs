//! osmem-server, the in-memory OpenSearch-compatible server the Elasticsearch tests and the
//! bench index into (installed by `cargo xtask setup --test-deps`, i.e. `pip install
//! osmem-server`).
//!
//! [`binary`] finds it: `$OSMEM_SERVER_BIN` (the same override the package's own Python
//! launcher honours), else the `osmem_server/bin/osmem-server` file inside the installed Python
//! package (asked from `python3`). Tests call [`Osmem::start`] and fail, never skip, when it is
//! missing. The process is killed by its PID when the handle drops, and is started with
//! `-parent-pid` so it also exits if the test process dies without unwinding.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Where osmem-server is, or why it cannot be found (the message says how to install it).
pub fn binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("OSMEM_SERVER_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("OSMEM_SERVER_BIN={} is not a file", p.display()))
        };
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, osmem_server; print(os.path.dirname(osmem_server.__file__))",
        ])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run python3 to find osmem-server: {e}"))?;
    let missing = "osmem-server is not installed: run `cargo xtask setup --test-deps` \
                   (pip install osmem-server) or set OSMEM_SERVER_BIN";
    if !out.status.success() {
        return Err(missing.into());
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let bin = dir.join("bin").join("osmem-server");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("{missing} ({} is missing)", bin.display()))
    }
}

pub use crate::ports::free_port;

/// A running osmem-server, killed on drop.
pub struct Osmem {
    child: Child,
    pub addr: SocketAddr,
}

impl Osmem {
    /// Starts a server on a free loopback port and waits until it answers. Panics (the test
    /// fails) when the server is missing or does not come up within 30 s.
    pub fn start() -> Self {
        Self::start_on(0)
    }

    /// Same on a given port (0: the server picks one).
    pub fn start_on(port: u16) -> Self {
        let bin = binary().unwrap_or_else(|e| panic!("{e}"));
        let mut child = Command::new(&bin)
            .arg("-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-no-stdin-watch")
            .arg("-parent-pid")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        // Its first stdout line is `{"url": "http://127.0.0.1:PORT", ...}` once it listens.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep reading so the server never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let mut guard = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("osmem-server did not start within 30 s"));
        let url = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v.get("url").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| panic!("osmem-server printed {line:?} instead of its URL"));
        guard.addr = url
            .trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|_| panic!("osmem-server URL {url:?}"));
        guard.wait_ready(Duration::from_secs(30));
        guard
    }

    fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("osmem-server at {} does not accept connections", self.addr);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Osmem {
    fn drop(&mut self) {
        // Child::kill signals this child's own PID (SIGKILL); wait reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small JSON client for tests: refresh, search, count, mapping.
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    pub fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// `method path` with an optional JSON body; the status and the answer as JSON.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}/{path}", self.base));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request to the test server");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("answer body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Creates `index` as a firewall's alert index (`source.ip` an `ip`, `@timestamp` a date),
    /// writes one alert per `(source ip, @timestamp)` and refreshes it: what the nightly
    /// blocklist run collects.
    pub async fn seed_alerts(&self, index: &str, alerts: &[(&str, &str)]) {
        let mapping = serde_json::json!({"mappings": {"properties": {
            "source": {"properties": {"ip": {"type": "ip"}}},
            "@timestamp": {"type": "date"}}}});
        let (s, v) = self
            .request(reqwest::Method::PUT, index, Some(&mapping))
            .await;
        assert_eq!(s, 200, "create {index}: {v}");
        for (ip, at) in alerts {
            let doc = serde_json::json!({"@timestamp": at, "source": {"ip": ip}});
            let (s, v) = self
                .request(reqwest::Method::POST, &format!("{index}/_doc"), Some(&doc))
                .await;
            assert!(s == 200 || s == 201, "alert into {index}: {v}");
        }
        self.refresh(index).await;
    }

    pub async fn refresh(&self, index: &str) {
        self.request(reqwest::Method::POST, &format!("{index}/_refresh"), None)
            .await;
    }

    /// `_search` with `query`; the hits' `_source`s and the total.
    pub async fn search(&self, index: &str, query: Value, size: usize) -> (u64, Vec<Value>) {
        let body = serde_json::json!({ "query": query, "size": size, "track_total_hits": true });
        let (status, v) = self
            .request(
                reqwest::Method::POST,
                &format!("{index}/_search"),
                Some(&body),
            )
            .await;
        assert_eq!(status, 200, "search {index}: {v}");
        let total = v["hits"]["total"]["value"].as_u64().unwrap_or(0);
        let hits = v["hits"]["hits"]
            .as_array()
            .map(|a| a.iter().map(|h| h["_source"].clone()).collect())
            .unwrap_or_default();
        (total, hits)
    }

    /// The `_id`s of every document in `index` (up to `size`).
    pub async fn ids(&self, index: &str, size: usize) -> Vec<String> {
        let body =
            serde_json::json!({ "query": {"match_all": {}}, "size": size, "_source": false });
        let (_, v) = self
            .request(
                reqwest::Method::POST,
                &format!("{index}/_search"),
                Some(&body),
            )
            .await;
        v["hits"]["hits"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|h| h["_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn mapping(&self, index: &str) -> Value {
        self.request(reqwest::Method::GET, &format!("{index}/_mapping"), None)
            .await
            .1
    }
}

/// What [`bench_elastic`] measured.
#[derive(Debug, Clone)]
pub struct ElasticBench {
    pub docs: u64,
    /// From the first offer until the last document was acknowledged by the server.
    pub seconds: f64,
    pub docs_per_second: f64,
    /// CPU time of the sink's thread (the whole runtime: building, HTTP, parsing answers).
    pub cpu_seconds: f64,
    pub bulk_requests: u64,
    /// Documents built per second (action + document lines), without the server.
    pub build_docs_per_second: f64,
}

fn thread_cpu_seconds() -> f64 {
    // SAFETY: rusage is plain integers, for which all-zero bytes are a valid value.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct we pass; RUSAGE_THREAD is valid on Linux.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Indexes `docs` malicious hits into a fresh osmem-server through the Elasticsearch sink
/// (default batching: 1000 documents per bulk request), the sink running on a current-thread
/// runtime, i.e. one core; the server is another process.
pub fn bench_elastic(docs: u64) -> ElasticBench {
    use std::{collections::HashMap, sync::Arc, sync::atomic::Ordering};

    use sensor_model::{
        enriched::Enriched,
        query::Query,
        verdict::{Assessment, Confidence, Finding, Severity, Verdict},
    };

    use sensor_intel::inventory::Inventory;

    use sensor_outputs::sink::elastic::{ElasticSection, ElasticSink, document};

    let assessment = Arc::new(Assessment {
        verdict: Verdict::Malicious,
        findings: vec![Finding {
            provider: "threatbook".into(),
            malicious: true,
            severity: Some(Severity::High),
            confidence: Some(Confidence::High),
            judgments: vec!["C2".into(), "Botnet".into()],
            tags: vec!["APT:OceanLotus".into()],
            permalink: Some("https://x.threatbook.com/v5/domain/evil.example".into()),
            ip_context: None,
        }],
        errors: vec![],
    });
    let events: Vec<Enriched> = (0..docs)
        .map(|n| Enriched {
            query: Query {
                ts_mono_ns: 1_000_000_000_000 + n * 1000,
                ifindex: 1,
                vlan_outer: 0,
                vlan_inner: 0,
                src: std::net::IpAddr::from([10, 1, (n >> 8) as u8, n as u8]),
                dst: std::net::IpAddr::from([10, 0, 0, 53]),
                src_port: 1024 + (n % 60000) as u16,
                dst_port: 53,
                transport: sensor_common::Transport::Udp,
                dns_id: n as u16,
                qtype: 1,
                qclass: 1,
                name: format!("host{}.evil{}.example", n % 97, n % 1000),
                answer: None,
            },
            intel: Some(assessment.clone()),
        })
        .collect();
    let inventory = Arc::new(arc_swap::ArcSwap::from_pointee(Inventory::default()));
    let interfaces = HashMap::from([(1, "eth0".to_owned())]);

    // Building alone.
    let mut builder = document::Builder::new(
        "bench",
        &interfaces,
        document::IndexPattern::parse("bench-%Y.%m.%d").expect("pattern"),
        inventory.clone(),
    );
    let mut buf = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    for e in &events {
        buf.clear();
        builder.item(e, &mut buf);
    }
    let build_docs_per_second = docs as f64 / start.elapsed().as_secs_f64();

    let server = Osmem::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cfg = ElasticSection {
        urls: vec![server.url()],
        index: "bench-%Y.%m.%d".into(),
        flush_interval_ms: 100,
        ..Default::default()
    };
    rt.block_on(async move {
        let sink = ElasticSink::start(&cfg, "bench", &interfaces, inventory).expect("sink");
        let c = sink.counters();
        // Let the template go in first, so the timing is of indexing only.
        while !c.template_installed.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let cpu0 = thread_cpu_seconds();
        let start = Instant::now();
        let mut next = 0usize;
        let room = cfg.queue_size as u64;
        while c.indexed.load(Ordering::Relaxed) < docs {
            while next < events.len() && c.in_flight.load(Ordering::Relaxed) < room {
                sink.offer(&events[next]);
                next += 1;
            }
            assert_eq!(c.dropped_total(), 0, "{:?}", c.dropped());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let seconds = start.elapsed().as_secs_f64();
        let cpu_seconds = thread_cpu_seconds() - cpu0;
        let bulk_requests = c.bulk_requests.load(Ordering::Relaxed);
        sink.shutdown(Duration::from_secs(5)).await;
        drop(server);
        ElasticBench {
            docs,
            seconds,
            docs_per_second: docs as f64 / seconds,
            cpu_seconds,
            bulk_requests,
            build_docs_per_second,
        }
    })
}
