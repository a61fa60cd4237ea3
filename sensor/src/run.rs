//! `sensor run`: load, fill, attach, read, write; detach and clean up on SIGINT/SIGTERM.

use std::{os::fd::AsRawFd, path::PathBuf, sync::Arc};

use anyhow::Context as _;
use tokio::{signal::unix::SignalKind, sync::mpsc};

use crate::{
    config::{Config, OnCrash},
    loader::{self, BLOCKLIST_MAPS, Maps, ProgramSettings},
    output, reader,
};

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
        .unwrap_or_else(|| PathBuf::from("/run/dns-sensor"))
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

/// Runs the sensor until SIGINT/SIGTERM. `config_file` is where `config` came from: SIGHUP
/// re-reads its kernel lists (none for the embedded defaults).
pub async fn run(config: Config, config_file: Option<PathBuf>) -> anyhow::Result<()> {
    if config.capture.interfaces.is_empty() {
        anyhow::bail!(
            "config key `capture.interfaces`: no interface to attach to (set it or pass --interface)"
        );
    }
    let interfaces = loader::interface_indexes(&config.capture.interfaces)?;
    crate::privileges::check()?;
    let _lock = InstanceLock::acquire(&config.sensor.name)?;
    let keep_blocking = config.capture.on_crash == OnCrash::KeepBlocking;
    let keep: &'static [&'static str] = if config.blocklist.keep_on_exit {
        &BLOCKLIST_MAPS
    } else {
        &[]
    };
    let pin_dir = config.pin_dir();
    // In keep-blocking mode the BLOCKLIST of a crashed run is still in use by its pinned
    // attachment: reuse it (entries and hit counters), so the swap below changes nothing for it.
    loader::prepare_pin_dir(&pin_dir, if keep_blocking { &BLOCKLIST_MAPS } else { keep })?;
    loader::remove_stale_links(&pin_dir, &config.capture.interfaces)?;
    let _pins = PinGuard {
        dir: pin_dir.clone(),
        keep,
    };

    let mut ebpf = loader::load(&ProgramSettings::from_config(&config), Some(&pin_dir))?;
    let mut maps = Maps::take(&mut ebpf)?;
    // The stored nightly list and the config's entries go in by difference, so a kept
    // BLOCKLIST (keep_on_exit, keep-blocking) keeps its hit counters across the restart.
    crate::kernel_lists::install(&config, &mut maps.client_allow, &mut maps.blocklist)?;
    // Dropping `attachments` (on an error below, or a panic) detaches.
    let attachments = loader::attach(
        &mut ebpf,
        &config.capture.interfaces,
        config.capture.xdp_mode,
        &pin_dir,
        keep_blocking,
    )?;
    tracing::info!(
        interfaces = ?config.capture.interfaces,
        links = ?attachments.describe(),
        on_crash = ?config.capture.on_crash,
        mode = ?config.capture.mode,
        xdp_mode = ?config.capture.xdp_mode,
        pins = %pin_dir.display(),
        client_allow = config.filter.client_allow.len(),
        blocklist = config.blocklist.entries.len(),
        "sensor attached"
    );

    let intel = crate::intel::setup::build(&config.trust, &config.intel)?;
    let mut reloaders = intel.reloaders.clone();
    if let Some(file) = config_file {
        reloaders.push(Arc::new(crate::kernel_lists::KernelLists::new(
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
        reloaders.push(Arc::new(crate::intel::setup::InventoryReload {
            path: path.clone(),
            current: inventory.clone(),
            counters: Default::default(),
        }));
    }
    let alerter = if config.alerts.wecom.is_empty() && config.alerts.webhook.is_empty() {
        None
    } else {
        Some(crate::alert::Alerter::spawn(
            &config.alerts,
            inventory.clone(),
        )?)
    };
    let (edl_stop_tx, edl_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let edl = crate::blocklist::daemon::start_edl(&config, async {
        let _ = edl_stop_rx.await;
    })
    .await?;
    if let Some((list, _)) = &edl {
        reloaders.push(Arc::new(crate::blocklist::daemon::EdlFile {
            list: list.clone(),
            files: vec![config.blocklist.edl.path.clone()],
            counters: Default::default(),
        }));
    }
    let nightly = config.blocklist.schedule.enabled.then(|| {
        tokio::spawn(crate::blocklist::daemon::schedule(
            Arc::new(config.clone()),
            edl.as_ref().map(|(l, _)| l.clone()),
        ))
    });
    let reload_task = tokio::spawn(
        crate::reload::Watcher::new(reloaders)
            .run(crate::reload::sighup().context("installing the SIGHUP handler")?),
    );
    let enrich_counters = Arc::new(crate::enrich::EnrichCounters::default());
    let enricher = crate::enrich::Enricher {
        settings: config.intel.enrich_settings(),
        trust: intel.trust.clone(),
        verdicts: intel.verdicts.clone(),
        ip_feeds: intel.ip_feeds.clone(),
        hits: alerter.as_ref().map(|a| {
            Arc::new(crate::intel::setup::AlertHits {
                submitter: a.submitter(),
                sensor: config.sensor.name.clone(),
            }) as Arc<dyn crate::enrich::HitSink>
        }),
        counters: enrich_counters.clone(),
    };

    let counters = Arc::new(reader::StageCounters::default());
    let (tx, enrich_rx) = mpsc::channel(config.output.queue_size);
    let (enrich_tx, fanout_rx) = mpsc::channel(config.output.queue_size);
    let enrich_tx_probe = enrich_tx.clone();
    let enriching = tokio::spawn(enricher.run(enrich_rx, enrich_tx));
    let (tx_out, rx) = mpsc::channel(config.output.queue_size);
    let fanout = crate::sink::Fanout {
        kafka: config
            .kafka
            .as_ref()
            .map(|k| {
                crate::sink::kafka::KafkaSink::start(
                    k,
                    &config.sensor.name,
                    &interfaces,
                    inventory.clone(),
                )
                .map(Arc::new)
            })
            .transpose()?,
        elastic: config
            .elasticsearch
            .as_ref()
            .map(|e| {
                crate::sink::elastic::ElasticSink::start(
                    e,
                    &config.sensor.name,
                    &interfaces,
                    inventory.clone(),
                )
                .map(Arc::new)
            })
            .transpose()?,
        output_queue_full: Default::default(),
    };

    let mut sources = crate::metrics::Sources::default();
    crate::telemetry::kernel(&mut sources, pin_dir.clone());
    crate::telemetry::reader(&mut sources, counters.clone());
    crate::telemetry::enrich(&mut sources, enrich_counters.clone());
    if let Some(v) = &intel.verdicts {
        crate::telemetry::intel(&mut sources, v.clone());
    }
    if let Some(a) = &alerter {
        crate::telemetry::alerts(&mut sources, a.stats_handle());
    }
    crate::telemetry::queue(&mut sources, "reader_to_enrich", &tx);
    crate::telemetry::queue(&mut sources, "enrich_to_sinks", &enrich_tx_probe);
    // A live sender would keep the queue open at shutdown; the collector holds a weak one.
    drop(enrich_tx_probe);
    crate::telemetry::queue(&mut sources, "sinks_to_output", &tx_out);
    if let Some(k) = fanout.kafka.clone() {
        sources.add(move |out| out.extend(k.metrics()));
    }
    if let Some(e) = fanout.elastic.clone() {
        sources.add(move |out| out.extend(e.metrics()));
    }
    {
        let full = fanout.output_queue_full.clone();
        sources.add(move |out| {
            out.push(crate::metrics::Metric::counter(
                "output_queue_full",
                "Events the JSON-lines output could not take (its queue was full).",
                full.load(std::sync::atomic::Ordering::Relaxed),
            ))
        });
    }
    let sources = Arc::new(sources);
    let metrics_task = match config.metrics.address()? {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("config key `metrics.listen`: cannot listen on {addr}"))?;
            tracing::info!(%addr, "metrics on http://{addr}/metrics");
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                sources.clone(),
            )))
        }
        None => None,
    };
    let fanning = tokio::spawn(fanout.run(fanout_rx, Some(tx_out)));
    let sink = output::open(&config.output).context("opening the output")?;
    let writer = {
        let counters = counters.clone();
        let observer = config.sensor.name.clone();
        std::thread::Builder::new()
            .name("output".into())
            .spawn(move || output::write_all(rx, sink, observer, interfaces, counters))?
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reading = tokio::spawn(reader::run(maps.events, tx, counters.clone(), stop_rx));

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }

    // Detach first, then take what the program wrote before it stopped: nothing is left behind
    // in the ring buffer.
    attachments.detach();
    drop(ebpf);
    let _ = stop_tx.send(true);
    let (mut ring, tx) = reading.await.context("reader task")??;
    reader::drain(&mut ring, &tx, &counters);
    drop(tx);
    // The enricher ends when its input closes and its waiting events have gone on.
    enriching.await.context("enrichment task")?;
    let fanout = fanning.await.context("fan-out task")?;
    reload_task.abort();
    if let Some(t) = nightly {
        t.abort();
    }
    let _ = edl_stop_tx.send(());
    if let Some((_, server)) = edl {
        let _ = server.task.await;
    }
    // The collectors hold the sinks too: stop serving metrics and drop them first.
    if let Some(t) = metrics_task {
        t.abort();
        let _ = t.await;
    }
    drop(sources);
    let grace = std::time::Duration::from_secs(10);
    if let Some(k) = fanout.kafka.and_then(|k| Arc::try_unwrap(k).ok()) {
        k.shutdown(grace).await;
    }
    if let Some(e) = fanout.elastic.and_then(|e| Arc::try_unwrap(e).ok()) {
        e.shutdown(grace).await;
    }
    if let Some(a) = alerter {
        // Sends what is queued and the repeat counts of open windows, within the budget.
        let stats = a.shutdown(std::time::Duration::from_secs(10)).await;
        tracing::info!(?stats, "alert counters at exit");
    }
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("output thread panicked"))?;

    let kernel = maps.counters.get(&0, 0).ok().map(|per_cpu| {
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
    let stage = counters.snapshot();
    tracing::info!(
        records_read = stage[0].1,
        decode_errors = stage[1].1,
        output_queue_full = stage[2].1,
        written = stage[3].1,
        write_errors = stage[4].1,
        "userspace counters at exit"
    );
    tracing::info!(counters = ?enrich_counters.snapshot(), "enrichment counters at exit");
    if let Some(v) = &intel.verdicts {
        tracing::info!(counters = ?v.counters().snapshot(), "verdict cache counters at exit");
    }
    Ok(())
}
