//! The composition root: the one place that builds the stages from the root config, connects
//! them with named, bounded queues, runs them, and shuts them down in order.
//!
//! ```text
//! XDP ─ring buffer─▶ reader ─[reader_to_enrich]─▶ enricher ─[enrich_to_sinks]─▶ fan-out
//!                                                   │ hits                        ├▶ kafka
//!                                                   ▼                             ├▶ elasticsearch
//!                                                 alerts                          └▶ output [sinks_to_output]
//! ```
//! Every queue is bounded by `output.queue_size`; a full one is a counted drop at its sender
//! (`output_queue_full`, `enrich_*`, each sink's `queue/queue_full`), never a stall of the ring
//! buffer. Beside the event path: the reload watcher (SIGHUP and list files), the EDL server
//! and the nightly schedule, the metrics endpoint, and the kernel program's own diagnostics
//! (`klog`, aya-log: logged, never on the event path).
//!
//! The two HTTP servers (EDL, metrics), their fetch tracking and its silence alerts run on a
//! thread and runtime of their own ([`ServerThread`]): a flood on their ports queues there, never
//! in front of the ring-buffer reader on this runtime.
//!
//! Only this module and the CLI see the root [`Config`]: every stage is built from its own
//! section.

use std::{
    collections::HashMap,
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use aya::{Ebpf, maps::MapData};
use sensor_blocklist::{daemon, edl, resolved::intel::ResolvedIntel};
use sensor_intel::{
    enrich::{EnrichCounters, Enricher, HitSink},
    inventory::{Inventory, InventoryReload},
    setup::Intel,
};
use sensor_kernel::{
    config::OnCrash,
    klog::KernelLog,
    loader::{self, Attachments, BLOCKLIST_MAPS, Maps, ProgramSettings},
    pairing::{self, Pairing},
    reader,
};
use sensor_model::{
    counters::StageCounters,
    enriched::Enriched,
    query::Query,
    reload::{Reload, Watcher},
};
use sensor_outputs::{
    alert::{Alerter, hits::AlertHits},
    httpd::{Gate, ServerThread},
    metrics::{Health, Sources},
    output::JsonLines,
    sink::{Fanout, Sink, elastic::ElasticSink, pdns::Hunter},
};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use crate::{config::Config, kernel_lists::KernelLists, telemetry};

/// How long the sinks and the alert stage get to deliver what they hold at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A bounded queue between two stages, with the name its depth is reported under
/// (`queue_depth{queue="..."}`).
pub(crate) struct Queue<T> {
    pub name: &'static str,
    pub tx: mpsc::Sender<T>,
    pub rx: mpsc::Receiver<T>,
}

impl<T: Send + 'static> Queue<T> {
    fn new(name: &'static str, capacity: usize, sources: &mut Sources) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        telemetry::queue(sources, name, &tx);
        Self { name, tx, rx }
    }
}

/// Exclusive lock on the instance name, so two sensors never share (and unpin) one directory.
struct InstanceLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl Drop for InstanceLock {
    /// Removed on a clean exit while still held, so lock files do not pile up (tests start
    /// sensors under many unique names). A sensor that dies leaves it; the next start locks it.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl InstanceLock {
    fn acquire(name: &str) -> anyhow::Result<Self> {
        // systemd's `RuntimeDirectory=` hands a non-root service its own directory through
        // RUNTIME_DIRECTORY; /run itself is writable by root only.
        let dir = runtime_dir();
        let dir = dir.as_path();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{name}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            anyhow::bail!(
                "another sensor named {name:?} is running (lock {})",
                path.display()
            );
        }
        Ok(Self { _file: file, path })
    }
}

/// Where the instance lock lives: `$RUNTIME_DIRECTORY` (the first one, if systemd gave several)
/// or /run/dns-sensor.
fn runtime_dir() -> PathBuf {
    std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|v| {
            v.to_str()
                .and_then(|s| s.split(':').next())
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(sensor_model::paths::RUNTIME_DIR))
}

/// Removes the pins when dropped, on success and on every error path.
struct PinGuard {
    dir: PathBuf,
    keep: &'static [&'static str],
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        loader::unpin(&self.dir, self.keep);
    }
}

/// Every stage, built and connected, nothing running yet but the kernel program (attached)
/// and the intel batchers.
pub struct Pipeline {
    // Field order is drop order: on an error before `run`, the attachments go first (detach),
    // then the program, then the pins, then the lock.
    attachments: loader::Attachments,
    ebpf: Ebpf,
    /// The program's own diagnostics (aya-log), read from before the attachment until shutdown.
    kernel_log: Option<KernelLog>,
    events: aya::maps::RingBuf<MapData>,
    /// Pairs responses with their queries (in the reader).
    pairing: Pairing,
    kernel_counters: aya::maps::PerCpuArray<MapData, sensor_common::Counters>,
    pins: PinGuard,
    lock: InstanceLock,
    stage_counters: Arc<StageCounters>,
    enrich_counters: Arc<EnrichCounters>,
    intel: Intel,
    enricher: Enricher,
    alerter: Option<Alerter>,
    fanout: Fanout,
    reloaders: Vec<Arc<dyn Reload>>,
    edl: Option<(edl::EdlList, edl::EdlServer)>,
    edl_stop: oneshot::Sender<()>,
    /// `[blocklist.schedule]` enabled: the nightly run inside the daemon.
    nightly: bool,
    /// The blocklist rules in force (SIGHUP updates them), for the nightly run, the periodic
    /// re-plan (expiries, protected addresses, always on) and the EDL check.
    live: daemon::Live,
    metrics: Option<(tokio::net::TcpListener, Arc<Gate>)>,
    sources: Sources,
    health: Health,
    /// Unix milliseconds of the reader's last pass over the ring buffer.
    reader_heartbeat: Arc<AtomicU64>,
    servers: ServerThread,
    alerts: sensor_outputs::alert::AlertsSection,
    sensor_name: String,
    to_enrich: Queue<Query>,
    to_sinks: Queue<Enriched>,
    /// Made at the start of `build` (see there), polled by the reload watcher from `run`.
    sighup: sensor_model::reload::Sighup,
}

impl Pipeline {
    /// Loads and attaches the kernel program with its lists, and builds every stage from its
    /// section. `config_file` is where `config` came from: SIGHUP re-reads its kernel lists
    /// (none for the embedded defaults).
    pub async fn build(config: &Config, config_file: Option<PathBuf>) -> anyhow::Result<Self> {
        let capture = &config.capture;
        if capture.interfaces.is_empty() {
            anyhow::bail!(
                "config key `capture.interfaces`: no interface to attach to (set it or pass --interface)"
            );
        }
        let interfaces = loader::interface_indexes(&capture.interfaces)?;
        sensor_kernel::privileges::check()?;
        // Before anything is attached or logged as ready: a `systemctl reload` (or a test) that
        // follows "sensor attached" at once must not find SIGHUP's default action (exit) still
        // in place; the stream keeps a signal until the watcher polls it.
        let sighup = sensor_model::reload::sighup().context("installing the SIGHUP handler")?;
        let lock = InstanceLock::acquire(&config.sensor.name)?;
        let keep_blocking = capture.on_crash == OnCrash::KeepBlocking;
        let keep: &'static [&'static str] = if config.blocklist.keep_on_exit {
            &BLOCKLIST_MAPS
        } else {
            &[]
        };
        let pin_dir = config.pin_dir();
        // In keep-blocking mode the BLOCKLIST of a crashed run is still in use by its pinned
        // attachment: reuse it (entries and hit counters), so the swap below changes nothing.
        loader::prepare_pin_dir(&pin_dir, if keep_blocking { &BLOCKLIST_MAPS } else { keep })?;
        loader::remove_stale_links(&pin_dir, &capture.interfaces)?;
        let pins = PinGuard {
            dir: pin_dir.clone(),
            keep,
        };

        let settings = ProgramSettings {
            resolved: config.blocklist.resolved.bounds(),
            rewrite_nxdomain: config.blocklist.resolved.rewrites(),
            ..ProgramSettings::from_section(capture)
        };
        let mut ebpf = loader::load(&settings, Some(&pin_dir))?;
        let mut maps = Maps::take(&mut ebpf)?;
        // Before attaching, so no record is missed; without it the sensor runs on (one warning).
        let kernel_log = KernelLog::start(&mut ebpf);
        // The stored nightly list and the config's entries go in by difference, so a kept
        // BLOCKLIST (keep_on_exit, keep-blocking) keeps its hit counters across the restart.
        crate::kernel_lists::install(config, &mut maps.client_allow, &mut maps.blocklist)?;
        let resolved_names = crate::kernel_lists::install_resolved(config, &pin_dir)?;
        // Dropping `attachments` (on an error below, or a panic) detaches.
        let mut attachments = loader::attach(
            &mut ebpf,
            &capture.interfaces,
            capture.xdp_mode,
            &pin_dir,
            keep_blocking,
        )?;
        if capture.egress {
            loader::attach_egress(&mut ebpf, &capture.interfaces, &mut attachments)?;
        }
        if config.sensor.drop_capabilities {
            let keep = capabilities_kept(config);
            let d = sensor_kernel::capdrop::drop_after_start(keep)?;
            tracing::info!(
                effective = format!("{:#x}", d.effective),
                permitted = format!("{:#x}", d.permitted),
                ambient = format!("{:#x}", d.ambient),
                bounding = format!("{:#x}", d.bounding),
                threads = d.threads,
                kept = ?keep,
                "capabilities dropped after attaching"
            );
        }
        tracing::info!(
            interfaces = ?capture.interfaces,
            links = ?attachments.describe(),
            on_crash = ?capture.on_crash,
            mode = ?capture.mode,
            xdp_mode = ?capture.xdp_mode,
            egress = capture.egress,
            pins = %pin_dir.display(),
            kernel_log = kernel_log.is_some(),
            client_allow = config.filter.client_allow.len(),
            blocklist = config.blocklist.entries.len(),
            resolved = ?config.blocklist.resolved.bounds(),
            resolved_names,
            "sensor attached"
        );

        let Stages {
            intel,
            inventory,
            alerter,
            enricher,
            enrich_counters,
            stage_counters,
            fanout,
            mut sources,
            to_enrich,
            to_sinks,
            resolved,
        } = build_stages(config, &interfaces, Some(&pin_dir))?;
        let mut reloaders = intel.reloaders.clone();
        let live: daemon::Live = Arc::new(arc_swap::ArcSwap::from_pointee(config.job_context()));
        if let Some(file) = config_file {
            reloaders.push(Arc::new(KernelLists::new(
                file,
                config.clone(),
                maps.client_allow,
                maps.blocklist,
                live.clone(),
                resolved,
            )));
        }
        if let Some(path) = &config.alerts.inventory {
            reloaders.push(Arc::new(InventoryReload {
                path: path.clone(),
                current: inventory.clone(),
                counters: Default::default(),
            }));
        }
        let servers = ServerThread::start().context("starting the HTTP server thread")?;
        let (edl_stop, edl_stop_rx) = oneshot::channel::<()>();
        let edl = {
            let section = config.blocklist.edl.clone();
            let exports = config.blocklist.export.clone();
            servers
                .handle()
                .spawn(async move {
                    daemon::start_edl(&section, &exports, async {
                        let _ = edl_stop_rx.await;
                    })
                    .await
                })
                .await
                .context("EDL server start")??
        };
        if let Some((list, server)) = &edl {
            reloaders.push(Arc::new(daemon::EdlFile {
                kind: edl::ListKind::Edl,
                list: list.clone(),
                files: vec![config.blocklist.edl.path.clone()],
                counters: Default::default(),
                live: live.clone(),
            }));
            // The export files served next to the EDL: checked and served now (the exports were
            // just written by the start's install), then whenever their file changes. A missing
            // or bad file is logged and answered with 503 until a good one is written.
            for extra in &server.extra {
                let file = Arc::new(daemon::EdlFile {
                    kind: extra.kind,
                    list: extra.list.clone(),
                    files: vec![extra.list.path().to_owned()],
                    counters: Default::default(),
                    live: live.clone(),
                });
                let first = file.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    use sensor_model::reload::Reload;
                    first.reload()
                })
                .await
                .context("first load of a served export list")?;
                reloaders.push(file);
            }
            if let Some(tls) = &server.tls {
                reloaders.push(Arc::new(sensor_blocklist::edl_tls::TlsReload::new(
                    tls.clone(),
                )));
            }
        }
        let nightly = config.blocklist.schedule.enabled;

        telemetry::kernel(&mut sources, pin_dir.clone());
        if config.blocklist.export.any() {
            telemetry::exports(&mut sources);
        }
        telemetry::reader(&mut sources, stage_counters.clone());
        telemetry::enrich(&mut sources, enrich_counters.clone());
        if let Some(v) = &intel.verdicts {
            telemetry::intel(&mut sources, v.clone());
        }
        if let Some(e) = &intel.egress {
            telemetry::egress(&mut sources, e.counters.clone());
        }
        if let Some(a) = &alerter {
            telemetry::alerts(&mut sources, a.stats_handle());
        }
        for sink in fanout.sinks() {
            let sink = sink.clone();
            sources.add(move |out| out.extend(sink.metrics()));
        }
        if let Some((_, server)) = &edl {
            let stats = server.stats.clone();
            sources.add(move |out| stats.metrics(out));
        }
        let metrics = match config.metrics.address()? {
            Some(addr) => {
                // Bound on the server thread: a listener belongs to the runtime it was made on.
                let listener = servers
                    .handle()
                    .spawn(tokio::net::TcpListener::bind(addr))
                    .await
                    .context("metrics listener")?
                    .with_context(|| {
                        format!("config key `metrics.listen`: cannot listen on {addr}")
                    })?;
                let gate = Gate::new(
                    "metrics",
                    config.metrics.limits.clone(),
                    sensor_model::error::parse_nets(
                        "metrics.allowed_clients",
                        &config.metrics.allowed_clients,
                    )?,
                    None,
                    Vec::new(),
                );
                let gate_for_metrics = gate.clone();
                sources.add(move |out| gate_for_metrics.metrics(out));
                tracing::info!(%addr, "metrics on http://{addr}/metrics");
                Some((listener, gate))
            }
            None => None,
        };
        let reader_heartbeat = Arc::new(AtomicU64::new(unix_millis()));
        let health = health_checks(
            &interfaces,
            &reader_heartbeat,
            &stage_counters,
            fanout.sinks(),
            edl.as_ref().map(|(l, _)| l.clone()),
        );

        Ok(Self {
            attachments,
            ebpf,
            kernel_log,
            events: maps.events,
            pairing: Pairing::new(
                Duration::from_secs(config.capture.response_timeout_secs),
                pairing::DEFAULT_CAPACITY,
            ),
            kernel_counters: maps.counters,
            pins,
            lock,
            stage_counters,
            enrich_counters,
            intel,
            enricher,
            alerter,
            fanout,
            reloaders,
            edl,
            edl_stop,
            nightly,
            live,
            metrics,
            sources,
            health,
            reader_heartbeat,
            servers,
            alerts: config.alerts.clone(),
            sensor_name: config.sensor.name.clone(),
            to_enrich,
            to_sinks,
            sighup,
        })
    }

    /// Starts every stage. The returned handle stops them.
    pub fn run(self) -> anyhow::Result<Running> {
        let reload = tokio::spawn(Watcher::new(self.reloaders).run(self.sighup));
        let nightly = self.nightly.then(|| {
            tokio::spawn(daemon::schedule(
                self.live.clone(),
                self.edl.as_ref().map(|(l, _)| l.clone()),
            ))
        });
        let sweep = tokio::spawn(daemon::sweep(
            self.live.clone(),
            self.edl.as_ref().map(|(l, _)| l.clone()),
            SWEEP_EVERY,
        ));
        let sources = Arc::new(self.sources);
        let (metrics_stop, metrics_stop_rx) = oneshot::channel::<()>();
        let metrics = self.metrics.map(|(listener, gate)| {
            self.servers.handle().spawn(sensor_outputs::metrics::serve(
                listener,
                gate,
                sources.clone(),
                Arc::new(self.health),
                async {
                    let _ = metrics_stop_rx.await;
                },
            ))
        });
        let fetch_watch = self.edl.as_ref().map(|(_, server)| {
            self.servers
                .handle()
                .spawn(sensor_blocklist::fetches::watch(
                    server.stats.fetches.clone(),
                    self.alerts.clone(),
                    self.sensor_name.clone(),
                    FETCH_WATCH_INTERVAL,
                ))
        });
        tracing::debug!(
            from = self.to_enrich.name,
            to = self.to_sinks.name,
            "stages connected"
        );
        let enriching = tokio::spawn(self.enricher.run(self.to_enrich.rx, self.to_sinks.tx));
        let fanning = tokio::spawn(self.fanout.run(self.to_sinks.rx));
        let (stop, stop_rx) = watch::channel(false);
        let reading = tokio::spawn(read_ring(
            self.events,
            self.pairing,
            self.to_enrich.tx,
            self.stage_counters.clone(),
            stop_rx,
            self.reader_heartbeat,
        ));
        Ok(Running {
            attachments: self.attachments,
            ebpf: self.ebpf,
            kernel_log: self.kernel_log,
            kernel_counters: self.kernel_counters,
            _pins: self.pins,
            _lock: self.lock,
            stage_counters: self.stage_counters,
            enrich_counters: self.enrich_counters,
            intel: self.intel,
            alerter: self.alerter,
            edl: self.edl,
            edl_stop: self.edl_stop,
            stop,
            reading,
            enriching,
            fanning,
            reload,
            nightly,
            sweep,
            metrics,
            metrics_stop,
            fetch_watch,
            servers: self.servers,
            sources,
        })
    }
}

/// How often the daemon re-plans the blocklist: an entry leaves the served lists within this of
/// its expiry (the kernel stops enforcing it on the second by itself).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How often the EDL fetch records are written and silences checked.
const FETCH_WATCH_INTERVAL: Duration = Duration::from_secs(15);

/// The reader's loop ([`reader::run`]'s, plus a heartbeat `/healthz` reads): drains every
/// [`reader::POLL_INTERVAL`] until `stop` fires, then returns the ring buffer so the caller can
/// drain what is left after the program has been detached.
async fn read_ring(
    mut ring: aya::maps::RingBuf<MapData>,
    mut pairing: Pairing,
    tx: mpsc::Sender<Query>,
    counters: Arc<StageCounters>,
    mut stop: watch::Receiver<bool>,
    heartbeat: Arc<AtomicU64>,
) -> std::io::Result<ReaderParts> {
    let mut tick = tokio::time::interval(reader::POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                reader::drain(&mut ring, &tx, &counters, &mut pairing);
                heartbeat.store(unix_millis(), Ordering::Relaxed);
            }
            _ = stop.changed() => break,
        }
    }
    Ok((ring, pairing, tx))
}

/// What the reader task hands back at shutdown for the last drain.
type ReaderParts = (aya::maps::RingBuf<MapData>, Pairing, mpsc::Sender<Query>);

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How long the reader may go without a pass before `/healthz` says it is not draining.
const READER_STALL: Duration = Duration::from_secs(2);

/// What `/healthz` checks: the program is still on every interface it was attached to, the
/// reader drains, each sink delivers (or why not), the EDL has a list to serve.
/// What the daemon still needs after attaching: CAP_NET_ADMIN for the exports that run `nft`
/// or `ipset`, CAP_NET_BIND_SERVICE for a listener below port 1024.
fn capabilities_kept(config: &Config) -> sensor_kernel::capdrop::Keep {
    let low = |listen: &str| {
        listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.port() < 1024)
    };
    let export = &config.blocklist.export;
    sensor_kernel::capdrop::Keep {
        net_admin: export.nft.is_some() || export.ipset.is_some(),
        net_bind_service: low(&config.metrics.listen) || low(&config.blocklist.edl.listen),
    }
}

fn health_checks(
    interfaces: &HashMap<u32, String>,
    heartbeat: &Arc<AtomicU64>,
    stage: &Arc<StageCounters>,
    sinks: &[Arc<dyn Sink>],
    edl: Option<edl::EdlList>,
) -> Health {
    let mut h = Health::default();
    let ifaces: Vec<(u32, String)> = interfaces.iter().map(|(i, n)| (*i, n.clone())).collect();
    h.add("program", move || {
        // An interface deleted (or deleted and re-created) loses its XDP program with it.
        for (index, name) in &ifaces {
            match nix::net::if_::if_nametoindex(name.as_str()) {
                Ok(i) if i == *index => {}
                Ok(_) => return Err(format!("{name} was re-created: the program is not on it")),
                Err(_) => return Err(format!("{name} is gone")),
            }
        }
        Ok(format!("attached to {} interface(s)", ifaces.len()))
    });
    let beat = heartbeat.clone();
    h.add("reader", move || {
        let age = unix_millis().saturating_sub(beat.load(Ordering::Relaxed));
        if age > READER_STALL.as_millis() as u64 {
            Err(format!("no pass over the ring buffer for {age} ms"))
        } else {
            Ok(format!("last pass {age} ms ago"))
        }
    });
    let stage = stage.clone();
    let last_errors = std::sync::Mutex::new(0u64);
    h.add("output", move || {
        let errors = stage.write_errors.load(Ordering::Relaxed);
        let mut last = last_errors.lock().unwrap_or_else(|p| p.into_inner());
        let new = errors - (*last).min(errors);
        *last = errors;
        if new > 0 {
            Err(format!("{new} write errors since the last check"))
        } else {
            Ok(format!("{} written", stage.written.load(Ordering::Relaxed)))
        }
    });
    for sink in sinks {
        let sink = sink.clone();
        let name = sink.name();
        if name == "output" {
            continue;
        }
        h.add(name, move || {
            let m = sink.metrics();
            let value = |suffix: &str| {
                m.iter()
                    .filter(|x| x.name.ends_with(suffix))
                    .map(|x| x.value)
                    .sum::<f64>()
            };
            let up = m.iter().find(|x| x.name.ends_with("_up")).map(|x| x.value);
            let detail = format!(
                "delivered {}, dropped {}, queued {}",
                value("_delivered") + value("_indexed"),
                value("_dropped"),
                value("_queued"),
            );
            match up {
                // `_up` is 0 until the first request succeeds, and after one fails.
                Some(v) if v < 1.0 => Err(format!(
                    "server not reached (last request failed, or none yet; {detail})"
                )),
                _ => Ok(detail),
            }
        });
    }
    if let Some(list) = edl {
        h.add("edl", move || match list.current() {
            Some(s) => Ok(format!("serving {} bytes", s.body.len())),
            // Reported, not failing: a new install serves nothing until its first nightly run.
            None => Ok("no list published yet (firewalls get 503)".into()),
        });
    }
    h
}

/// The stages after the ring-buffer reader, built from the config: intel, the inventory and
/// alerts, the enricher, and the sinks behind their fan-out, with the queues that connect them
/// and their counters. The daemon and `sensor replay` both build them here, so a replayed
/// capture goes through exactly the stages live traffic does.
pub(crate) struct Stages {
    pub intel: Intel,
    pub inventory: Arc<arc_swap::ArcSwap<Inventory>>,
    pub alerter: Option<Alerter>,
    pub enricher: Enricher,
    pub enrich_counters: Arc<EnrichCounters>,
    pub stage_counters: Arc<StageCounters>,
    pub fanout: Fanout,
    /// The queues' depth gauges (the caller adds the rest of its metrics).
    pub sources: Sources,
    pub to_enrich: Queue<Query>,
    pub to_sinks: Queue<Enriched>,
    /// Blocking by resolution's worker (names from the intel, the answer fallback, retro-hunt),
    /// when it runs.
    pub resolved: Option<Arc<ResolvedIntel>>,
}

/// Builds [`Stages`]; `interfaces` names the ifindexes the records carry (for the documents).
/// `pin_dir` is where the daemon pinned its maps: blocking by resolution's worker and retro-hunt
/// run on them (`None`, `sensor replay`: neither runs; a capture's past is not today's network).
pub(crate) fn build_stages(
    config: &Config,
    interfaces: &HashMap<u32, String>,
    pin_dir: Option<&std::path::Path>,
) -> anyhow::Result<Stages> {
    let intel = sensor_intel::setup::build(&config.trust, &config.intel)?;
    let inventory = Arc::new(arc_swap::ArcSwap::from_pointee(
        config.alerts.load_inventory()?,
    ));
    let alerter = if config.alerts.wecom.is_empty() && config.alerts.webhook.is_empty() {
        None
    } else {
        Some(Alerter::spawn(&config.alerts, inventory.clone())?)
    };
    let stage_counters = Arc::new(StageCounters::default());
    let mut sources = Sources::default();
    let queue_size = config.output.queue_size;
    let to_enrich = Queue::new("reader_to_enrich", queue_size, &mut sources);
    let to_sinks = Queue::new("enrich_to_sinks", queue_size, &mut sources);
    let (mut sinks, hunter) = build_sinks(
        config,
        interfaces,
        &inventory,
        &stage_counters,
        &mut sources,
    )?;
    let alert_hits = alerter.as_ref().map(|a| {
        Arc::new(AlertHits {
            submitter: a.submitter(),
            sensor: config.sensor.name.clone(),
        }) as Arc<dyn HitSink>
    });
    // Blocking by resolution's names from the intel, and retro-hunt: one worker, fed by a sink
    // (answers; first, so a late block is as early as it can be) and a tee on the hits
    // (malicious names).
    let resolved = match pin_dir {
        Some(dir) => crate::kernel_lists::start_resolved_intel(
            config,
            dir,
            &intel,
            hunter,
            alert_hits.clone(),
        )?,
        None => None,
    };
    let hits = match &resolved {
        Some(r) => {
            sinks.insert(
                0,
                Arc::new(sensor_blocklist::resolved::sink::ResolvedSink {
                    intel: r.clone(),
                    clock: sensor_model::clock::WallClock::new(),
                }),
            );
            Some(Arc::new(sensor_blocklist::resolved::sink::VerdictTee {
                alerts: alert_hits,
                intel: r.clone(),
            }) as Arc<dyn HitSink>)
        }
        None => alert_hits,
    };
    let enrich_counters = Arc::new(EnrichCounters::default());
    let enricher = Enricher {
        settings: config.intel.enrich_settings(),
        trust: intel.trust.clone(),
        verdicts: intel.verdicts.clone(),
        ip_feeds: intel.ip_feeds.clone(),
        egress: intel.egress.clone(),
        hits,
        counters: enrich_counters.clone(),
    };
    Ok(Stages {
        intel,
        inventory,
        alerter,
        enricher,
        enrich_counters,
        stage_counters,
        fanout: Fanout::new(sinks),
        sources,
        to_enrich,
        to_sinks,
        resolved,
    })
}

/// The sinks in fan-out order, and the passive DNS store's retro-hunt handle when it runs.
type Sinks = (Vec<Arc<dyn Sink>>, Option<Hunter>);

/// The sinks in fan-out order: Kafka, Elasticsearch, then the JSON-lines output.
fn build_sinks(
    config: &Config,
    interfaces: &HashMap<u32, String>,
    inventory: &Arc<arc_swap::ArcSwap<Inventory>>,
    stage_counters: &Arc<StageCounters>,
    sources: &mut Sources,
) -> anyhow::Result<Sinks> {
    let observer = &config.sensor.name;
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    let mut hunter = None;
    if let Some(k) = &config.kafka {
        #[cfg(feature = "kafka")]
        sinks.push(Arc::new(sensor_outputs::sink::kafka::KafkaSink::start(
            k,
            observer,
            interfaces,
            inventory.clone(),
        )?));
        #[cfg(not(feature = "kafka"))]
        anyhow::bail!(
            "config key `kafka`: this build has no Kafka sink (cargo feature `kafka`); brokers {:?}",
            k.brokers
        );
    }
    if let Some(e) = &config.elasticsearch {
        sinks.push(Arc::new(ElasticSink::start(
            e,
            observer,
            interfaces,
            inventory.clone(),
        )?));
    }
    // Answers into the passive DNS store (opened at the first one).
    if config.pdns.enabled && config.capture.responses {
        let sink = sensor_outputs::sink::pdns::PdnsSink::start(&config.pdns)?;
        hunter = sink.hunter();
        sinks.push(Arc::new(sink));
    }
    if sensor_outputs::output::stdout_is_unwanted_journal(&config.output) {
        tracing::warn!(
            "output.kind = \"stdout\" and stdout is the systemd journal: JSON lines are not \
             written (every query would go to the journal); set output.kind = \"file\", or \
             output.journal = true to write them there anyway"
        );
        return Ok((sinks, hunter));
    }
    let output = JsonLines::start(
        &config.output,
        observer.clone(),
        interfaces.clone(),
        stage_counters.clone(),
    )
    .context("opening the output")?;
    telemetry::queue(sources, "sinks_to_output", output.queue());
    sinks.push(Arc::new(output));
    Ok((sinks, hunter))
}

/// The running stages.
pub struct Running {
    attachments: Attachments,
    ebpf: Ebpf,
    kernel_log: Option<KernelLog>,
    kernel_counters: aya::maps::PerCpuArray<MapData, sensor_common::Counters>,
    _pins: PinGuard,
    _lock: InstanceLock,
    stage_counters: Arc<StageCounters>,
    enrich_counters: Arc<EnrichCounters>,
    intel: Intel,
    alerter: Option<Alerter>,
    edl: Option<(edl::EdlList, edl::EdlServer)>,
    edl_stop: oneshot::Sender<()>,
    stop: watch::Sender<bool>,
    reading: JoinHandle<std::io::Result<ReaderParts>>,
    enriching: JoinHandle<()>,
    fanning: JoinHandle<Fanout>,
    reload: JoinHandle<()>,
    nightly: Option<JoinHandle<()>>,
    sweep: JoinHandle<()>,
    metrics: Option<JoinHandle<()>>,
    metrics_stop: oneshot::Sender<()>,
    fetch_watch: Option<JoinHandle<()>>,
    servers: ServerThread,
    sources: Arc<Sources>,
}

impl Running {
    /// Stops in the order that loses nothing: detach, drain the ring buffer, let each stage
    /// finish what its queue holds, then the sinks and alerts deliver within their grace.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        // Detach first, then take what the program wrote before it stopped: nothing is left
        // behind in the ring buffer.
        self.attachments.detach();
        drop(self.ebpf);
        // The program's last log records, if any, then the reader stops.
        if let Some(k) = self.kernel_log {
            k.stop().await;
        }
        let _ = self.stop.send(true);
        let (mut ring, mut pairing, tx) = self.reading.await.context("reader task")??;
        reader::drain(&mut ring, &tx, &self.stage_counters, &mut pairing);
        drop(tx);
        // The enricher ends when its input closes and its waiting events have gone on.
        self.enriching.await.context("enrichment task")?;
        let fanout = self.fanning.await.context("fan-out task")?;
        self.reload.abort();
        if let Some(t) = self.nightly {
            t.abort();
        }
        self.sweep.abort();
        let _ = self.edl_stop.send(());
        if let Some(t) = self.fetch_watch {
            t.abort();
            let _ = t.await;
        }
        if let Some((_, server)) = self.edl {
            let _ = server.task.await;
            if let Err(e) = server.stats.fetches.persist() {
                tracing::warn!(error = %e, "EDL fetch records not written");
            }
        }
        // The collectors hold the sinks too: stop serving metrics and drop them first.
        let _ = self.metrics_stop.send(());
        if let Some(t) = self.metrics {
            let _ = t.await;
        }
        // Ends the server thread: its connections (and their handles on the sinks) go.
        drop(self.servers);
        drop(self.sources);
        fanout.shutdown(SHUTDOWN_GRACE).await;
        if let Some(a) = self.alerter {
            // Sends what is queued and the repeat counts of open windows, within the budget.
            let stats = a.shutdown(SHUTDOWN_GRACE).await;
            tracing::info!(?stats, "alert counters at exit");
        }
        log_counters(
            &self.kernel_counters,
            &self.stage_counters,
            &self.enrich_counters,
            &self.intel,
        );
        Ok(())
    }
}

fn log_counters(
    kernel: &aya::maps::PerCpuArray<MapData, sensor_common::Counters>,
    stage: &StageCounters,
    enrich: &EnrichCounters,
    intel: &Intel,
) {
    let kernel = kernel.get(&0, 0).ok().map(|per_cpu| {
        let mut total = sensor_common::Counters::default();
        per_cpu.iter().for_each(|c| total.add(c));
        total
    });
    if let Some(k) = kernel {
        tracing::info!(
            packets = k.packets,
            dns_queries = k.dns_queries,
            events = k.events,
            dns_responses = k.dns_responses,
            response_events = k.response_events,
            allowlisted = k.allowlisted,
            blocked = k.blocked,
            ring_full = k.ring_full,
            "kernel counters at exit"
        );
    }
    let stage = stage.snapshot();
    tracing::info!(
        records_read = stage[0].1,
        decode_errors = stage[1].1,
        output_queue_full = stage[2].1,
        written = stage[3].1,
        write_errors = stage[4].1,
        responses_paired = stage[5].1,
        responses_unpaired = stage[6].1,
        queries_unanswered = stage[7].1,
        pairing_full = stage[8].1,
        "userspace counters at exit"
    );
    tracing::info!(counters = ?enrich.snapshot(), "enrichment counters at exit");
    if let Some(v) = &intel.verdicts {
        tracing::info!(counters = ?v.counters().snapshot(), "verdict cache counters at exit");
    }
}
