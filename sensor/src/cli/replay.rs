//! `sensor replay FILE...`: a capture through the same XDP program and the same userspace
//! stages as live traffic, with the capture's timestamps.
//!
//! The sensor's own embedded program is loaded privately: not attached, nothing pinned, no
//! instance lock, so a daemon running on the same host is not disturbed. Its lists are filled
//! from the config as the daemon fills them (read only). Each frame goes through the program
//! with BPF_PROG_TEST_RUN; after each frame the ring buffer is drained by the daemon's reader
//! with the frame's capture time in place of the kernel's clock, and the records go on through
//! the stages [`build_stages`] makes for the daemon (trust filter, today's intel, alerts, the
//! configured sinks). A summary goes to stderr at the end.

use std::{collections::HashMap, path::PathBuf, sync::atomic::Ordering, time::Duration};

use anyhow::Context as _;
use aya::programs::{TestRun, TestRunOptions};
use sensor_kernel::{
    lists::resolved::ResolvedMaps,
    loader::{self, Maps, ProgramSettings},
    pairing::{self, Pairing},
    reader::{self, Stamp},
};
use sensor_model::clock::WallClock;
use serde::Serialize;

use crate::{
    capture::{Capture, CaptureError, Item},
    pipeline::{Stages, build_stages},
};

/// How long the sinks and alerts get to deliver what they hold at the end (as the daemon's
/// shutdown).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Room the reader's queue must have before a frame runs. The program reports one message per
/// frame today; the margin keeps a future program that reports a few (pipelined TCP) lossless.
const ROOM_PER_FRAME: usize = 64;

/// The shortest frame BPF_PROG_TEST_RUN takes for XDP (an Ethernet header).
const MIN_FRAME: usize = 14;

/// What the kernel leaves a test-run XDP frame: one page minus XDP_PACKET_HEADROOM (256) and
/// the aligned `skb_shared_info` (320 bytes on x86-64). Larger frames are refused with EINVAL
/// (only a frags-aware program gets more), so they are counted as too large, not run.
fn max_frame() -> usize {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| usize::try_from(p).ok())
        .unwrap_or(4096);
    page - 256 - 320
}

/// What a replay did.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub files: usize,
    /// Frames read from the captures.
    pub frames_read: u64,
    /// Frames the program ran on.
    pub frames_run: u64,
    /// Frames shorter on file than on the wire (the capture's snap length), run as captured.
    pub frames_truncated: u64,
    /// Frames not run: larger than BPF_PROG_TEST_RUN takes for XDP.
    pub frames_too_large: u64,
    /// Frames not run: shorter than an Ethernet header.
    pub frames_too_short: u64,
    /// Frames not run, by link type (pcap LINKTYPE number).
    pub frames_unsupported_link: std::collections::BTreeMap<u32, u64>,
    /// Frames the kernel refused to run (the first error is in `errors`).
    pub frames_run_failed: u64,
    /// Capture records that could not be read (each stops its file).
    pub malformed_records: u64,
    /// The program's counters for this replay (its maps are its own: they start at zero).
    pub kernel: serde_json::Value,
    /// The userspace stages' counters.
    pub records_read: u64,
    pub decode_errors: u64,
    pub responses_paired: u64,
    pub responses_unpaired: u64,
    pub queries_unanswered: u64,
    pub pairing_full: u64,
    pub trusted: u64,
    /// JSON lines written by the output (none when it is off).
    pub written: u64,
    /// Events a full queue dropped on the way, by where.
    pub dropped: std::collections::BTreeMap<String, u64>,
    /// What could not be read or run, one line each.
    pub errors: Vec<String>,
}

impl Summary {
    /// Why the replay did not go through whole, if it did not: the exit status says so.
    fn incomplete(&self) -> Option<String> {
        let unsupported: u64 = self.frames_unsupported_link.values().sum();
        let dropped: u64 = self.dropped.values().sum();
        let mut why = Vec::new();
        for (n, what) in [
            (self.malformed_records, "malformed capture records"),
            (unsupported, "frames of an unsupported link type"),
            (
                self.frames_too_large,
                "frames too large for BPF_PROG_TEST_RUN",
            ),
            (
                self.frames_too_short,
                "frames shorter than an Ethernet header",
            ),
            (self.frames_run_failed, "frames the kernel refused to run"),
            (
                dropped,
                "events dropped at a full queue (raise output.queue_size)",
            ),
        ] {
            if n > 0 {
                why.push(format!("{n} {what}"));
            }
        }
        if why.is_empty() {
            return None;
        }
        let first = self
            .errors
            .first()
            .map_or(String::new(), |e| format!(" (first: {e})"));
        Some(format!("replay incomplete: {}{first}", why.join(", ")))
    }

    fn render(&self) -> String {
        let mut out = format!(
            "replayed {} file(s): {} frames read, {} run, {} truncated by the capture\n",
            self.files, self.frames_read, self.frames_run, self.frames_truncated
        );
        if let Some(k) = self.kernel.as_object() {
            let nonzero: Vec<String> = k
                .iter()
                .filter(|(_, v)| v.as_u64().is_some_and(|v| v > 0))
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            out += &format!("kernel: {}\n", nonzero.join(" "));
        }
        out += &format!(
            "records: {} read, {} undecodable, {} responses paired, {} unpaired, {} queries \
             unanswered, {} trusted, {} lines written\n",
            self.records_read,
            self.decode_errors,
            self.responses_paired,
            self.responses_unpaired,
            self.queries_unanswered,
            self.trusted,
            self.written
        );
        out
    }
}

pub fn replay(config_path: Option<PathBuf>, files: Vec<PathBuf>, json: bool) -> anyhow::Result<()> {
    let config = super::load_config(config_path.as_ref())?;
    // Every file opens (and has a header) before anything is loaded: a typo costs nothing.
    let captures = files
        .iter()
        .map(|f| Capture::open(f))
        .collect::<Result<Vec<_>, _>>()?;
    sensor_kernel::privileges::check()?;
    // Records are stamped with their frame's Unix time (see `reader::Stamp::Capture`).
    WallClock::use_capture_time();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let summary = rt.block_on(run(&config, captures))?;
    if json {
        eprintln!("{}", serde_json::to_string(&summary)?);
    } else {
        eprint!("{}", summary.render());
    }
    match summary.incomplete() {
        Some(why) => anyhow::bail!(why),
        None => Ok(()),
    }
}

async fn run(config: &crate::config::Config, captures: Vec<Capture>) -> anyhow::Result<Summary> {
    let settings = ProgramSettings {
        resolved: config.blocklist.resolved.bounds(),
        ..ProgramSettings::from_section(&config.capture)
    };
    // No pin directory: the maps are this process's alone and go with it.
    let mut ebpf = loader::load(&settings, None)?;
    let mut maps = Maps::take(&mut ebpf)?;
    let mut resolved = ResolvedMaps::take(&mut ebpf)?;
    let (allow, block, names) = crate::kernel_lists::install_private(
        config,
        &mut maps.client_allow,
        &mut maps.blocklist,
        &mut resolved,
    )?;
    tracing::info!(
        client_allow = allow,
        blocklist = block,
        resolved_names = names,
        files = captures.len(),
        "replaying through the XDP program (BPF_PROG_TEST_RUN)"
    );
    // BPF_PROG_TEST_RUN runs XDP on this network namespace's loopback device: that index is
    // the one the records carry, and documents name it `replay`.
    let lo = nix::net::if_::if_nametoindex("lo").unwrap_or(1);
    let interfaces = HashMap::from([(lo, "replay".to_owned())]);
    let Stages {
        intel,
        alerter,
        enricher,
        enrich_counters,
        stage_counters,
        fanout,
        sources,
        to_enrich,
        to_sinks,
        ..
    } = build_stages(config, &interfaces, None)?;
    // No metrics endpoint here; the sources hold only weak handles on the queues.
    drop(sources);
    let enriching = tokio::spawn(enricher.run(to_enrich.rx, to_sinks.tx));
    let fanning = tokio::spawn(fanout.run(to_sinks.rx));
    let tx = to_enrich.tx;
    let mut pairing = Pairing::new(
        Duration::from_secs(config.capture.response_timeout_secs),
        pairing::DEFAULT_CAPACITY,
    );

    let mut s = Summary {
        files: captures.len(),
        ..Summary::default()
    };
    let max = max_frame();
    for mut capture in captures {
        while let Some(item) = capture.next_item() {
            let frame = match item {
                Ok(Item::Frame(f)) => f,
                Ok(Item::Unsupported { link }) => {
                    s.frames_read += 1;
                    *s.frames_unsupported_link.entry(link).or_default() += 1;
                    continue;
                }
                Err(e @ CaptureError::Record { .. }) => {
                    s.malformed_records += 1;
                    s.errors.push(e.to_string());
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            s.frames_read += 1;
            s.frames_truncated += u64::from(frame.truncated);
            if frame.data.len() > max {
                s.frames_too_large += 1;
                continue;
            }
            if frame.data.len() < MIN_FRAME {
                s.frames_too_short += 1;
                continue;
            }
            // The reader never waits on its queue (a live ring must keep draining); here the
            // capture can wait instead, so no record is dropped. This is the queue's only
            // sender: the room reserved is still there when the reader sends.
            drop(
                tx.reserve_many(ROOM_PER_FRAME)
                    .await
                    .context("the enrichment stage stopped")?,
            );
            let run = loader::program(&mut ebpf).test_run(TestRunOptions {
                data_in: Some(&frame.data),
                ..TestRunOptions::new()
            });
            match run {
                Ok(_) => s.frames_run += 1,
                Err(e) => {
                    s.frames_run_failed += 1;
                    if s.frames_run_failed == 1 {
                        s.errors.push(format!(
                            "frame {} ({} bytes): {e}",
                            s.frames_read,
                            frame.data.len()
                        ));
                    }
                    continue;
                }
            }
            reader::drain_stamped(
                &mut maps.events,
                &tx,
                &stage_counters,
                &mut pairing,
                Stamp::Capture(frame.ts_ns),
            );
        }
    }

    // The end: the stages finish what they hold, as at the daemon's shutdown.
    drop(tx);
    enriching.await.context("enrichment task")?;
    let fanout = fanning.await.context("fan-out task")?;
    for sink in fanout.sinks() {
        for m in sink.metrics() {
            if (m.name.ends_with("_dropped") || m.name == "output_queue_full") && m.value > 0.0 {
                *s.dropped.entry(m.name.to_string()).or_default() += m.value as u64;
            }
        }
    }
    fanout.shutdown(SHUTDOWN_GRACE).await;
    if let Some(a) = alerter {
        let stats = a.shutdown(SHUTDOWN_GRACE).await;
        tracing::info!(?stats, "alert counters at exit");
    }
    drop(intel);

    let kernel = loader::read_counters(&maps.counters).context("reading the counters")?;
    s.kernel = sensor_kernel::stats::json(&kernel);
    let c = &stage_counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    s.records_read = get(&c.records_read);
    s.decode_errors = get(&c.decode_errors);
    s.responses_paired = get(&c.responses_paired);
    s.responses_unpaired = get(&c.responses_unpaired);
    s.queries_unanswered = get(&c.queries_unanswered);
    s.pairing_full = get(&c.pairing_full);
    s.written = get(&c.written);
    s.trusted = get(&enrich_counters.trusted);
    for (name, n) in [
        ("reader_to_enrich", get(&c.output_queue_full)),
        ("enrich_to_sinks", get(&enrich_counters.sink_queue_full)),
    ] {
        if n > 0 {
            s.dropped.insert(name.to_owned(), n);
        }
    }
    Ok(s)
}
