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
//! and the nightly schedule, and the metrics endpoint.
//!
//! Only this module and the CLI see the root [`Config`]: every stage is built from its own
//! section.

use std::{collections::HashMap, os::fd::AsRawFd, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use aya::{Ebpf, maps::MapData};
use sensor_blocklist::{daemon, edl, job::JobContext};
use sensor_intel::{
    enrich::{EnrichCounters, Enricher, HitSink},
    inventory::{Inventory, InventoryReload},
    setup::Intel,
};
use sensor_kernel::{
    config::OnCrash,
    loader::{self, Attachments, BLOCKLIST_MAPS, Maps, ProgramSettings},
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
    metrics::Sources,
    output::JsonLines,
    sink::{Fanout, Sink, elastic::ElasticSink},
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
struct Queue<T> {
    name: &'static str,
    tx: mpsc::Sender<T>,
    rx: mpsc::Receiver<T>,
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
    events: aya::maps::RingBuf<MapData>,
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
    nightly: Option<Arc<JobContext>>,
    metrics: Option<tokio::net::TcpListener>,
    sources: Sources,
    to_enrich: Queue<Query>,
    to_sinks: Queue<Enriched>,
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

        let mut ebpf = loader::load(&ProgramSettings::from_section(capture), Some(&pin_dir))?;
        let mut maps = Maps::take(&mut ebpf)?;
        // The stored nightly list and the config's entries go in by difference, so a kept
        // BLOCKLIST (keep_on_exit, keep-blocking) keeps its hit counters across the restart.
        crate::kernel_lists::install(config, &mut maps.client_allow, &mut maps.blocklist)?;
        // Dropping `attachments` (on an error below, or a panic) detaches.
        let attachments = loader::attach(
            &mut ebpf,
            &capture.interfaces,
            capture.xdp_mode,
            &pin_dir,
            keep_blocking,
        )?;
        tracing::info!(
            interfaces = ?capture.interfaces,
            links = ?attachments.describe(),
            on_crash = ?capture.on_crash,
            mode = ?capture.mode,
            xdp_mode = ?capture.xdp_mode,
            pins = %pin_dir.display(),
            client_allow = config.filter.client_allow.len(),
            blocklist = config.blocklist.entries.len(),
            "sensor attached"
        );

        let intel = sensor_intel::setup::build(&config.trust, &config.intel)?;
        let mut reloaders = intel.reloaders.clone();
        if let Some(file) = config_file {
            reloaders.push(Arc::new(KernelLists::new(
                file,
                config.clone(),
                maps.client_allow,
                maps.blocklist,
            )));
        }
        let inventory = Arc::new(arc_swap::ArcSwap::from_pointee(
            config.alerts.load_inventory()?,
        ));
        if let Some(path) = &config.alerts.inventory {
            reloaders.push(Arc::new(InventoryReload {
                path: path.clone(),
                current: inventory.clone(),
                counters: Default::default(),
            }));
        }
        let alerter = if config.alerts.wecom.is_empty() && config.alerts.webhook.is_empty() {
            None
        } else {
            Some(Alerter::spawn(&config.alerts, inventory.clone())?)
        };
        let (edl_stop, edl_stop_rx) = oneshot::channel::<()>();
        let edl = daemon::start_edl(&config.blocklist.edl, async {
            let _ = edl_stop_rx.await;
        })
        .await?;
        if let Some((list, _)) = &edl {
            reloaders.push(Arc::new(daemon::EdlFile {
                list: list.clone(),
                files: vec![config.blocklist.edl.path.clone()],
                counters: Default::default(),
            }));
        }
        let nightly = config
            .blocklist
            .schedule
            .enabled
            .then(|| Arc::new(config.job_context()));

        let enrich_counters = Arc::new(EnrichCounters::default());
        let enricher = Enricher {
            settings: config.intel.enrich_settings(),
            trust: intel.trust.clone(),
            verdicts: intel.verdicts.clone(),
            ip_feeds: intel.ip_feeds.clone(),
            hits: alerter.as_ref().map(|a| {
                Arc::new(AlertHits {
                    submitter: a.submitter(),
                    sensor: config.sensor.name.clone(),
                }) as Arc<dyn HitSink>
            }),
            counters: enrich_counters.clone(),
        };

        let stage_counters = Arc::new(StageCounters::default());
        let mut sources = Sources::default();
        let queue_size = config.output.queue_size;
        let to_enrich = Queue::new("reader_to_enrich", queue_size, &mut sources);
        let to_sinks = Queue::new("enrich_to_sinks", queue_size, &mut sources);
        let sinks = build_sinks(
            config,
            &interfaces,
            &inventory,
            &stage_counters,
            &mut sources,
        )?;
        let fanout = Fanout::new(sinks);

        telemetry::kernel(&mut sources, pin_dir.clone());
        telemetry::reader(&mut sources, stage_counters.clone());
        telemetry::enrich(&mut sources, enrich_counters.clone());
        if let Some(v) = &intel.verdicts {
            telemetry::intel(&mut sources, v.clone());
        }
        if let Some(a) = &alerter {
            telemetry::alerts(&mut sources, a.stats_handle());
        }
        for sink in fanout.sinks() {
            let sink = sink.clone();
            sources.add(move |out| out.extend(sink.metrics()));
        }
        let metrics = match config.metrics.address()? {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                    format!("config key `metrics.listen`: cannot listen on {addr}")
                })?;
                tracing::info!(%addr, "metrics on http://{addr}/metrics");
                Some(listener)
            }
            None => None,
        };

        Ok(Self {
            attachments,
            ebpf,
            events: maps.events,
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
            metrics,
            sources,
            to_enrich,
            to_sinks,
        })
    }

    /// Starts every stage. The returned handle stops them.
    pub fn run(self) -> anyhow::Result<Running> {
        let reload = tokio::spawn(
            Watcher::new(self.reloaders)
                .run(sensor_model::reload::sighup().context("installing the SIGHUP handler")?),
        );
        let nightly = self.nightly.map(|ctx| {
            tokio::spawn(daemon::schedule(
                ctx,
                self.edl.as_ref().map(|(l, _)| l.clone()),
            ))
        });
        let sources = Arc::new(self.sources);
        let metrics = self.metrics.map(|listener| {
            tokio::spawn(sensor_outputs::metrics::serve(listener, sources.clone()))
        });
        tracing::debug!(
            from = self.to_enrich.name,
            to = self.to_sinks.name,
            "stages connected"
        );
        let enriching = tokio::spawn(self.enricher.run(self.to_enrich.rx, self.to_sinks.tx));
        let fanning = tokio::spawn(self.fanout.run(self.to_sinks.rx));
        let (stop, stop_rx) = watch::channel(false);
        let reading = tokio::spawn(reader::run(
            self.events,
            self.to_enrich.tx,
            self.stage_counters.clone(),
            stop_rx,
        ));
        Ok(Running {
            attachments: self.attachments,
            ebpf: self.ebpf,
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
            metrics,
            sources,
        })
    }
}

/// The sinks in fan-out order: Kafka, Elasticsearch, then the JSON-lines output.
fn build_sinks(
    config: &Config,
    interfaces: &HashMap<u32, String>,
    inventory: &Arc<arc_swap::ArcSwap<Inventory>>,
    stage_counters: &Arc<StageCounters>,
    sources: &mut Sources,
) -> anyhow::Result<Vec<Arc<dyn Sink>>> {
    let observer = &config.sensor.name;
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
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
    let output = JsonLines::start(
        &config.output,
        observer.clone(),
        interfaces.clone(),
        stage_counters.clone(),
    )
    .context("opening the output")?;
    telemetry::queue(sources, "sinks_to_output", output.queue());
    sinks.push(Arc::new(output));
    Ok(sinks)
}

/// The running stages.
pub struct Running {
    attachments: Attachments,
    ebpf: Ebpf,
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
    reading: JoinHandle<std::io::Result<(aya::maps::RingBuf<MapData>, mpsc::Sender<Query>)>>,
    enriching: JoinHandle<()>,
    fanning: JoinHandle<Fanout>,
    reload: JoinHandle<()>,
    nightly: Option<JoinHandle<()>>,
    metrics: Option<JoinHandle<std::io::Result<()>>>,
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
        let _ = self.stop.send(true);
        let (mut ring, tx) = self.reading.await.context("reader task")??;
        reader::drain(&mut ring, &tx, &self.stage_counters);
        drop(tx);
        // The enricher ends when its input closes and its waiting events have gone on.
        self.enriching.await.context("enrichment task")?;
        let fanout = self.fanning.await.context("fan-out task")?;
        self.reload.abort();
        if let Some(t) = self.nightly {
            t.abort();
        }
        let _ = self.edl_stop.send(());
        if let Some((_, server)) = self.edl {
            let _ = server.task.await;
        }
        // The collectors hold the sinks too: stop serving metrics and drop them first.
        if let Some(t) = self.metrics {
            t.abort();
            let _ = t.await;
        }
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
        "userspace counters at exit"
    );
    tracing::info!(counters = ?enrich.snapshot(), "enrichment counters at exit");
    if let Some(v) = &intel.verdicts {
        tracing::info!(counters = ?v.counters().snapshot(), "verdict cache counters at exit");
    }
}
