//! tansu, an Apache Kafka compatible broker written in Rust, for the Kafka sink's tests and
//! bench: start it on a free loopback port, stop and restart it by PID, create topics, read a
//! topic back, and the produce benchmark.
//!
//! `cargo xtask setup --test-deps` installs it (with the `libsql` and `dynostore` features, so
//! both the SQLite engine, which keeps topics across a restart, and the memory engine exist).
//! Readers `assign` partitions explicitly: a group consumer (`subscribe`) receives nothing from
//! tansu 0.6.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, Message as _, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer as _},
};

use sensor_model::{enriched::Enriched, query::Query};

use sensor_outputs::sink::kafka::{KafkaSection, KafkaSink};

/// The tansu release the setup step installs.
pub const VERSION: &str = "0.6.0";
/// Overrides where the tests look for the binary.
pub const ENV: &str = "DNS_SENSOR_TANSU";

/// Where `cargo xtask setup --test-deps` installs tansu: `~/.cache/dns-sensor/tansu-<ver>`
/// (a `cargo install --root`, so the binary is `bin/tansu` below it).
pub fn install_root() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home)
        .join(".cache/dns-sensor")
        .join(format!("tansu-{VERSION}"))
}

/// The tansu binary: `$DNS_SENSOR_TANSU`, else the setup step's install. Panics when it is
/// missing: the Kafka tests fail rather than skip.
pub fn binary() -> PathBuf {
    let path = match std::env::var_os(ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => install_root().join("bin/tansu"),
    };
    assert!(
        path.is_file(),
        "tansu (the Kafka broker for the tests) is not at {}: run `cargo xtask setup --test-deps`, \
         or point {ENV} at a tansu {VERSION} binary built with --features dynostore,libsql",
        path.display()
    );
    path
}

/// How tansu keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// SQLite in the broker's temp dir: topics and messages survive a restart.
    Sqlite,
    /// In memory: fastest, lost on restart.
    Memory,
}

/// A tansu broker on 127.0.0.1; killed (by PID) when dropped.
pub struct Tansu {
    /// Where tansu listens.
    port: u16,
    storage: Storage,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// With [`Tansu::start_proxied`]: the proxy clients go through (tansu advertises it).
    proxy: Option<Proxy>,
}

use crate::ports::free_port;

impl Tansu {
    /// Starts a broker and waits until it answers metadata requests.
    pub fn start(storage: Storage) -> Self {
        let mut t = Self::stopped(storage);
        t.spawn();
        t
    }

    /// A broker that is not running yet, with its port chosen: [`Tansu::restart`] starts it.
    pub fn stopped(storage: Storage) -> Self {
        Self {
            port: free_port(),
            storage,
            dir: tempfile::tempdir().expect("temp dir for tansu"),
            child: None,
            proxy: None,
        }
    }

    /// A broker reached through a TCP proxy on another port, which tansu advertises, so every
    /// client connection goes through it: [`Tansu::cut`] makes the broker unreachable
    /// (connections reset, new ones refused) while it keeps its data, [`Tansu::heal`] brings it
    /// back. tansu 0.6's SQLite engine panics on a restart with data ("more or less than one
    /// row"), and the memory engine forgets everything, so an outage with exact read-back is
    /// simulated this way.
    pub fn start_proxied(storage: Storage) -> Self {
        let mut t = Self::stopped(storage);
        t.proxy = Some(Proxy::start(free_port(), t.port));
        t.spawn();
        t
    }

    /// Makes the broker unreachable (through the proxy): connections are reset, new ones
    /// refused.
    pub fn cut(&self) {
        self.proxy.as_ref().expect("start_proxied").set_up(false);
    }

    /// Makes the broker reachable again.
    pub fn heal(&self) {
        self.proxy.as_ref().expect("start_proxied").set_up(true);
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.client_port())
    }

    fn client_port(&self) -> u16 {
        self.proxy.as_ref().map_or(self.port, |p| p.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The broker's stdout and stderr, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.client_port());
        let engine = match self.storage {
            // Relative to the working directory: the temp dir.
            Storage::Sqlite => "sqlite://tansu.db".to_owned(),
            Storage::Memory => "memory://tansu/".to_owned(),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .expect("tansu log file");
        let child = Command::new(binary())
            .current_dir(self.dir.path())
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", &engine])
            // tansu reads a `.env` from its working directory and these from the environment:
            // pin them so the caller's environment cannot change the broker.
            .env_remove("CLUSTER_ID")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary().display()));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.client_port());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("tansu exited at start ({status}): {}", self.log());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                let md = self
                    .client_config()
                    .create::<BaseConsumer>()
                    .expect("metadata client")
                    .fetch_metadata(None, Duration::from_secs(2));
                if md.is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not answer on {addr} within 30 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the broker (SIGTERM, then SIGKILL after 5 s) and waits for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the broker again on the same port and storage (a stopped one, or a running one
    /// after stopping it).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Client settings for this broker.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap());
        c
    }

    /// Creates `topic` with `partitions` partitions (replication 1).
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            self.client_config().create().expect("admin client");
        let res = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("create_topics request");
        for r in res {
            r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e:?}"));
        }
    }

    /// A reader of every partition of `topic` from the beginning (explicit `assign`).
    pub fn reader(&self, topic: &str) -> Reader {
        let consumer: BaseConsumer = self
            .client_config()
            .set("group.id", "dns-sensor-tests")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .expect("consumer");
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("topic metadata");
        let partitions = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        assert!(partitions > 0, "topic {topic} has no partitions");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition offset");
        }
        consumer.assign(&tpl).expect("assign");
        Reader { consumer }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(p) = &self.proxy {
            p.stop.store(true, Ordering::SeqCst);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TCP proxy on 127.0.0.1 that can be cut and healed (std threads, so it runs whatever the
/// caller's runtime).
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(port: u16, upstream: u16) -> Self {
        let p = Self {
            port,
            up: Arc::new(AtomicBool::new(true)),
            stop: Arc::new(AtomicBool::new(false)),
            conns: Arc::default(),
        };
        let (up, stop, conns) = (p.up.clone(), p.stop.clone(), p.conns.clone());
        std::thread::spawn(move || {
            let mut listener: Option<TcpListener> = None;
            while !stop.load(Ordering::SeqCst) {
                if !up.load(Ordering::SeqCst) {
                    // Refuse new connections while cut.
                    listener = None;
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                if listener.is_none() {
                    match TcpListener::bind(("127.0.0.1", port)) {
                        Ok(l) => {
                            l.set_nonblocking(true).expect("nonblocking");
                            listener = Some(l);
                        }
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                    }
                }
                let l = listener.as_ref().expect("bound");
                match l.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            continue;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let mut list = conns.lock().unwrap_or_else(|e| e.into_inner());
                        list.extend(
                            [client.try_clone(), server.try_clone()]
                                .into_iter()
                                .flatten(),
                        );
                        drop(list);
                        for (mut from, mut to) in [
                            (client.try_clone(), server.try_clone()),
                            (server.try_clone(), client.try_clone()),
                        ]
                        .into_iter()
                        .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                        {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                let _ = from.shutdown(std::net::Shutdown::Both);
                            });
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        p
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            let mut list = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            for c in list.drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// One message read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Reads a topic with explicitly assigned partitions.
pub struct Reader {
    consumer: BaseConsumer,
}

impl Reader {
    /// Reads until `n` messages in total came (or `timeout` passed); returns what came.
    pub fn read(&self, n: usize, timeout: Duration) -> Vec<Record> {
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        while out.len() < n && Instant::now() < deadline {
            // Errors are transient while the broker restarts; librdkafka reconnects.
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(200)) {
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                });
            }
        }
        out
    }
}

/// A synthetic event: client `10.x.y.z` from `i`, a distinct name.
pub fn event(i: u64) -> Enriched {
    Enriched {
        query: Query {
            ts_mono_ns: 1_000_000_000 + i,
            ifindex: 1,
            vlan_outer: 0,
            vlan_inner: 0,
            src: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i as u32 & 0x00ff_ffff))),
            dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 53)),
            src_port: 40000 + (i % 20000) as u16,
            dst_port: 53,
            transport: sensor_common::Transport::Udp,
            dns_id: i as u16,
            qtype: 1,
            qclass: 1,
            name: format!("host{i}.example.com"),
            answer: None,
        },
        intel: None,
    }
}

/// Result of [`produce_bench`].
#[derive(Debug, Clone)]
pub struct ProduceBench {
    pub events: u64,
    pub delivered: u64,
    pub dropped: u64,
    /// From the first offer until the last delivery report.
    pub seconds: f64,
    /// User + system CPU of this process (the sink's task and librdkafka's threads) meanwhile.
    pub cpu_seconds: f64,
    pub compression: String,
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given and has no other effect.
    let r = unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut r);
        r
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(r.ru_utime) + tv(r.ru_stime)
}

/// Pins this thread (and the threads it starts later, librdkafka's included) to one CPU.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it;
    // sched_setaffinity(0, ...) only reads the set and affects the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Events/s produced to a tansu broker (memory engine, started here) through [`KafkaSink`] on
/// one core: this thread is pinned to CPU `cpu` before the runtime (current-thread) and
/// librdkafka's threads start, and tansu runs on the other CPUs. `events` are offered as fast as
/// the sink's queue takes them; the clock stops at the last delivery report.
pub fn produce_bench(events: u64, cpu: usize, cfg: Option<KafkaSection>) -> ProduceBench {
    let tansu = Tansu::start(Storage::Memory);
    let tansu_pid = tansu.pid().expect("running");
    // Keep the broker off the measured CPU.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus > 1 {
        // Every thread of the broker (affinity is per thread; its runtime's workers exist
        // already).
        let tasks = std::fs::read_dir(format!("/proc/{tansu_pid}/task")).expect("tansu threads");
        for tid in tasks.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
            // SAFETY: as in pin_to_cpu; the set holds every CPU but `cpu`, for thread `tid`.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                for c in (0..cpus).filter(|&c| c != cpu) {
                    libc::CPU_SET(c, &mut set);
                }
                libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set);
            }
        }
    }
    pin_to_cpu(cpu);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let topic = "bench";
        tansu.create_topic(topic, 3).await;
        let cfg = KafkaSection {
            brokers: vec![tansu.bootstrap()],
            topic: topic.into(),
            queue_size: 65_536,
            ..cfg.unwrap_or_default()
        };
        let sink = KafkaSink::start(
            &cfg,
            "bench",
            &HashMap::from([(1, "eth0".to_owned())]),
            Arc::default(),
        )
        .expect("sink");
        let c = sink.counters();
        let pregen: Vec<Enriched> = (0..events.min(100_000)).map(event).collect();
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        let mut i = 0u64;
        while i < events {
            // Keep the queue from overflowing: the bench measures the producer, not drops.
            if c.in_flight.load(Ordering::Relaxed) >= 60_000 {
                tokio::task::yield_now().await;
                continue;
            }
            sink.offer(&pregen[(i % pregen.len() as u64) as usize]);
            i += 1;
            if i.is_multiple_of(1024) {
                tokio::task::yield_now().await;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while c.delivered.load(Ordering::Relaxed) + c.dropped_total() < events
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let seconds = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        let compression = cfg.compression.as_str().to_owned();
        sink.shutdown(Duration::from_secs(5)).await;
        ProduceBench {
            events,
            delivered: c.delivered.load(Ordering::Relaxed),
            dropped: c.dropped_total(),
            seconds,
            cpu_seconds: cpu,
            compression,
        }
    })
}
