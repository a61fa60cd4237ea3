//! The embedded default sink: one JSON line per query, to stdout or a file.

use std::{
    collections::HashMap,
    io::{self, Write},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use sensor_model::{clock::WallClock, counters::StageCounters, encode::Encoder};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::{
    metrics::Metric,
    sink::{SharedEvent, Sink},
};

/// Where events go.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    #[default]
    Stdout,
    File,
}

/// `[output]`: the JSON-lines sink.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSection {
    pub kind: OutputKind,
    /// File to append to when `kind = "file"`.
    pub path: Option<PathBuf>,
    /// Events held between the ring-buffer reader and the writer; beyond it events are dropped
    /// and counted, so a slow disk never stalls the ring buffer.
    pub queue_size: usize,
    /// Under systemd stdout is the journal (`JOURNAL_STREAM`): `kind = "stdout"` then writes
    /// nothing unless this is true, so the packaged service does not put every query into the
    /// journal (where it would rotate the sensor's own log away and keep clients' queries in a
    /// place not meant for them). Default false.
    pub journal: bool,
}

impl Default for OutputSection {
    fn default() -> Self {
        Self {
            kind: OutputKind::Stdout,
            path: None,
            queue_size: 65536,
            journal: false,
        }
    }
}

/// True when `kind = "stdout"` would write every query into the systemd journal without the
/// config saying so: then the JSON-lines output is left out (the caller logs why).
pub fn stdout_is_unwanted_journal(cfg: &OutputSection) -> bool {
    use std::os::fd::AsFd;
    if cfg.kind != OutputKind::Stdout || cfg.journal {
        return false;
    }
    let Ok(fd) = io::stdout().as_fd().try_clone_to_owned() else {
        return false;
    };
    is_journal_stream(
        &std::fs::File::from(fd),
        std::env::var("JOURNAL_STREAM").ok().as_deref(),
    )
}

/// systemd sets `JOURNAL_STREAM=<device>:<inode>` for a service whose stdout or stderr is
/// connected to the journal (systemd.exec(5)); `file` is the journal's stream when they match.
pub fn is_journal_stream(file: &std::fs::File, journal_stream: Option<&str>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    file.metadata()
        .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// Opens the configured writer.
pub fn open(cfg: &OutputSection) -> io::Result<Box<dyn Write + Send>> {
    Ok(match cfg.kind {
        OutputKind::Stdout => Box::new(io::stdout()),
        OutputKind::File => {
            // The config's validation refuses this already; an error, not a panic, if not.
            let path = cfg.path.as_ref().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "config key `output.path`: required when output.kind = \"file\"",
                )
            })?;
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        }
    })
}

/// Writes queries until the channel closes. Runs on its own thread: writes block.
pub fn write_all(
    mut rx: mpsc::Receiver<SharedEvent>,
    sink: Box<dyn Write + Send>,
    observer: String,
    interfaces: HashMap<u32, String>,
    counters: Arc<StageCounters>,
) {
    let mut out = io::BufWriter::with_capacity(1 << 16, sink);
    let clock = WallClock::new();
    let mut encoder = crate::sink::LineEncoder::new(Encoder::new(&observer, &interfaces));
    while let Some(e) = rx.blocking_recv() {
        // Encoded here or already by the Kafka sink: the same bytes either way.
        match encoder.with_line(&e, &clock, |line| out.write_all(line)) {
            Ok(()) => {
                counters.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counters.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "writing an event failed");
            }
        }
        // Flush when the queue is empty, so lines appear promptly without a write per event.
        if rx.is_empty() {
            if let Err(e) = out.flush() {
                tracing::warn!(error = %e, "flushing events failed");
            }
            clock.resync();
        }
    }
    let _ = out.flush();
}

/// The JSON-lines output as a [`Sink`]: a bounded queue (`output.queue_size`) in front of the
/// writer thread; a full queue is a counted drop (`output_queue_full`), never a wait.
pub struct JsonLines {
    tx: mpsc::Sender<SharedEvent>,
    queue_full: AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl JsonLines {
    /// Opens the configured writer and starts its thread.
    pub fn start(
        cfg: &OutputSection,
        observer: String,
        interfaces: HashMap<u32, String>,
        counters: Arc<StageCounters>,
    ) -> io::Result<Self> {
        let sink = open(cfg)?;
        let (tx, rx) = mpsc::channel(cfg.queue_size);
        let writer = std::thread::Builder::new()
            .name("output".into())
            .spawn(move || write_all(rx, sink, observer, interfaces, counters))?;
        Ok(Self {
            tx,
            queue_full: AtomicU64::new(0),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// The queue in front of the writer, for its depth metric.
    pub fn queue(&self) -> &mpsc::Sender<SharedEvent> {
        &self.tx
    }
}

impl Sink for JsonLines {
    fn name(&self) -> &'static str {
        "output"
    }

    fn offer(&self, event: &SharedEvent) {
        if self.tx.try_send(event.clone()).is_err() {
            self.queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn metrics(&self) -> Vec<Metric> {
        vec![Metric::counter(
            "output_queue_full",
            "Events the JSON-lines output could not take (its queue was full).",
            self.queue_full.load(Ordering::Relaxed),
        )]
    }

    /// Closes the queue and waits for the writer to write and flush what it holds (writes are
    /// blocking, so the join runs off the runtime's threads). `grace` does not apply: a line
    /// queued here is never given up.
    fn shutdown(self: Arc<Self>, _grace: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            // The fan-out has stopped and the metrics collectors have let go: this is the last
            // handle, and dropping it closes the queue, which ends the writer.
            let Ok(me) = Arc::try_unwrap(self) else {
                tracing::error!("output: still shared at shutdown, not waiting for the writer");
                return;
            };
            let writer = me.writer.into_inner().unwrap_or_else(|p| p.into_inner());
            drop(me.tx);
            if let Some(w) = writer {
                match tokio::task::spawn_blocking(move || w.join()).await {
                    Ok(Ok(())) => {}
                    _ => tracing::error!("output: the writer thread panicked"),
                }
            }
        })
    }
}

#[cfg(test)]
mod journal_tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_journal_is_recognised_by_device_and_inode() {
        let f = tempfile::tempfile().unwrap();
        let m = f.metadata().unwrap();
        let same = format!("{}:{}", m.dev(), m.ino());
        assert!(is_journal_stream(&f, Some(&same)));
        let other = format!("{}:{}", m.dev(), m.ino() + 1);
        assert!(!is_journal_stream(&f, Some(&other)));
        assert!(!is_journal_stream(&f, None));
        assert!(!is_journal_stream(&f, Some("garbage")));
        // A file output or an explicit yes never counts as unwanted.
        let file = OutputSection {
            kind: OutputKind::File,
            ..OutputSection::default()
        };
        assert!(!stdout_is_unwanted_journal(&file));
        let yes = OutputSection {
            journal: true,
            ..OutputSection::default()
        };
        assert!(!stdout_is_unwanted_journal(&yes));
    }
}
