//! The embedded default sink: one JSON line per query, to stdout or a file.

use std::{
    collections::HashMap,
    io::{self, Write},
    sync::{Arc, atomic::Ordering},
};

use tokio::sync::mpsc;

use crate::{
    clock::WallClock,
    config::{OutputKind, OutputSection},
    encode::Encoder,
    enrich::Enriched,
    reader::StageCounters,
};

/// Opens the configured writer.
pub fn open(cfg: &OutputSection) -> io::Result<Box<dyn Write + Send>> {
    Ok(match cfg.kind {
        OutputKind::Stdout => Box::new(io::stdout()),
        OutputKind::File => {
            let path = cfg
                .path
                .as_ref()
                .expect("validated: output.path is set for kind = file");
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
    mut rx: mpsc::Receiver<Enriched>,
    sink: Box<dyn Write + Send>,
    observer: String,
    interfaces: HashMap<u32, String>,
    counters: Arc<StageCounters>,
) {
    let mut out = io::BufWriter::with_capacity(1 << 16, sink);
    let clock = WallClock::new();
    let mut encoder = Encoder::new(&observer, &interfaces);
    let mut line = Vec::with_capacity(1024);
    while let Some(e) = rx.blocking_recv() {
        line.clear();
        let q = &e.query;
        encoder.encode(
            q,
            e.intel.as_deref(),
            clock.unix_ns(q.ts_mono_ns),
            &mut line,
        );
        match out.write_all(&line) {
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
