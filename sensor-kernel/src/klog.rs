//! The XDP program's own diagnostics (aya-log), read while the sensor runs.
//!
//! The program logs only on paths that must never happen, a broken map or helper (a slot of a
//! one-slot array missing), never per packet and never on anything a sender controls, so in
//! normal operation nothing arrives here. Records travel through aya-log's ring buffer
//! ([`LOG_MAP`], 128 KiB, not pinned: it belongs to this process's program) and go to the `log`
//! crate, which the daemon's tracing subscriber bridges (`tracing-log`): they show up in the
//! sensor's log with the target `sensor_ebpf::program` and their kernel level.
//!
//! Diagnostics never stop capture: a logger that cannot start is one warning, and the reader is
//! its own task, apart from the ring-buffer reader.

use aya::Ebpf;
use aya_log::EbpfLogger;
use sensor_model::error::error_chain;
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::oneshot,
    task::JoinHandle,
};

/// aya-log's ring buffer in the object (the name aya-log-ebpf 0.2 gives it).
pub const LOG_MAP: &str = "AYA_LOGS";

/// The task reading the program's log records, until [`KernelLog::stop`] (or until dropped).
pub struct KernelLog {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl KernelLog {
    /// Takes [`LOG_MAP`] out of a loaded object and reads it in a task (needs a tokio runtime).
    /// When it cannot start (no such map in the object, no epoll on its fd) this warns once and
    /// returns `None`: the sensor runs on without kernel diagnostics.
    pub fn start(ebpf: &mut Ebpf) -> Option<Self> {
        let unavailable = |reason: String| {
            tracing::warn!(%reason, "kernel diagnostics (aya-log) unavailable; capturing without them");
        };
        let logger = match EbpfLogger::init(ebpf) {
            Ok(l) => l,
            Err(e) => {
                unavailable(error_chain(&e));
                return None;
            }
        };
        // SAFETY: the logger owns the map's fd (in its `RingBuf<MapData>`) and returns that same
        // open fd from `as_raw_fd` until it is dropped; nothing here replaces or closes it.
        let registered = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) };
        let mut fd = match registered {
            Ok(fd) => fd,
            Err(e) => {
                unavailable(error_chain(&e));
                return None;
            }
        };
        let (stop, mut stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    ready = fd.readable_mut() => match ready {
                        Ok(mut guard) => {
                            guard.get_inner_mut().flush();
                            guard.clear_ready();
                        }
                        Err(e) => {
                            tracing::warn!(reason = %error_chain(&e), "kernel diagnostics (aya-log): polling failed; no more kernel log records");
                            return;
                        }
                    },
                    // A stop, or the owner dropped without one (an error path).
                    _ = &mut stop_rx => break,
                }
            }
            // What the program logged before it was detached.
            fd.get_mut().flush();
        });
        Some(Self { stop, task })
    }

    /// Reads what is left and ends the task. Call after detaching the program.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
