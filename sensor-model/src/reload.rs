//! Reloading lists (trusted domains, local feeds, the asset inventory) on SIGHUP and when one of
//! their files changes.
//!
//! Changes are found by polling each file's identity and size (device, inode, length, mtime,
//! ctime) rather than with inotify: editors and deploy tools replace files by renaming a new one
//! over them, Kubernetes swaps a symlink, and an inotify watch on the old inode misses all of
//! these unless every parent directory is watched too; inotify also sees nothing on NFS. A
//! `stat` of a few files every couple of seconds costs nothing by comparison.
//!
//! A list that fails to load is reported (one line naming the file and line) and the previous
//! one stays in force: implementations build the new state aside and swap it in whole, so lookups
//! never wait and never see a half-loaded or empty list.

use std::{
    fmt,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt as _};

/// Why a reload failed. The previous state stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A list file (trusted domains, feeds) that did not parse; the intel crate converts its
    /// `ListError` into this.
    #[error(transparent)]
    List(Box<dyn std::error::Error + Send + Sync>),
    /// For reloadable things whose files are not lists (the asset inventory's CSV, ...).
    #[error("{0}")]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// Something that re-reads its files on demand.
pub trait Reload: Send + Sync + fmt::Debug {
    /// Name for logs: `trust`, `feed:<name>`, ...
    fn name(&self) -> &str;
    /// Files whose change triggers a reload.
    fn files(&self) -> &[PathBuf];
    /// How often to look at the files; `None`: only on SIGHUP.
    fn poll_interval(&self) -> Option<Duration>;
    /// Re-reads everything and swaps the result in; on error keeps the previous state. Logs and
    /// counts its own outcome (see [`ReloadCounters::record`]), so direct callers get the same
    /// reporting as the watcher. Returns the number of entries now in force. Blocking.
    fn reload(&self) -> Result<usize, ReloadError>;
}

/// Outcomes of one reloadable's reloads.
#[derive(Debug, Default)]
pub struct ReloadCounters {
    /// Reloads that swapped in a new state.
    pub ok: AtomicU64,
    /// Reloads that failed; the previous state stayed in force.
    pub failed: AtomicU64,
    /// Entries in force after the last successful load.
    pub entries: AtomicU64,
}

impl ReloadCounters {
    /// Counts and logs the outcome of a reload of `what` (one line either way).
    pub fn record<E: fmt::Display>(&self, what: &str, started: Instant, result: &Result<usize, E>) {
        let millis = started.elapsed().as_millis() as u64;
        match result {
            Ok(entries) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                self.entries.store(*entries as u64, Ordering::Relaxed);
                tracing::info!(list = what, entries, millis, "list loaded");
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(list = what, error = %e, "list not reloaded, the previous one stays in force");
            }
        }
    }

    pub fn snapshot(&self) -> [(&'static str, u64); 3] {
        [
            ("reloads_ok", self.ok.load(Ordering::Relaxed)),
            ("reload_failures", self.failed.load(Ordering::Relaxed)),
            ("entries", self.entries.load(Ordering::Relaxed)),
        ]
    }
}

/// What the watcher saw.
#[derive(Debug, Default)]
pub struct WatchCounters {
    /// Reload signals received (SIGHUP).
    pub signals: AtomicU64,
    /// Reloads started because a file changed.
    pub file_changes: AtomicU64,
    /// Reloads that panicked (a bug; the previous state stays in force).
    pub panics: AtomicU64,
}

/// What identifies one version of a file. Equal states: the file has not changed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FileState {
    Present {
        dev: u64,
        ino: u64,
        len: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
    },
    /// Missing or unreadable, with the reason (a change of reason is a change too).
    Absent(std::io::ErrorKind),
}

impl FileState {
    /// Follows symlinks, so a swapped link target counts as a change.
    fn of(path: &Path) -> Self {
        match std::fs::metadata(path) {
            Ok(m) => Self::Present {
                dev: m.dev(),
                ino: m.ino(),
                len: m.len(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
            },
            Err(e) => Self::Absent(e.kind()),
        }
    }
}

fn states(files: &[PathBuf]) -> Vec<FileState> {
    files.iter().map(|f| FileState::of(f)).collect()
}

struct Watched {
    reloader: Arc<dyn Reload>,
    interval: Option<Duration>,
    next_poll: Instant,
    states: Vec<FileState>,
}

/// Reloads a set of [`Reload`]ers when told to (SIGHUP) and when their files change.
pub struct Watcher {
    watched: Vec<Watched>,
    counters: Arc<WatchCounters>,
}

impl Watcher {
    /// Records the files' current state, so changes from now on trigger a reload. Call it right
    /// after the initial load: a change in between is only seen with the next one (or SIGHUP).
    /// Does a `stat` per file, in the caller's thread.
    pub fn new(reloaders: Vec<Arc<dyn Reload>>) -> Self {
        let now = Instant::now();
        let watched = reloaders
            .into_iter()
            .map(|reloader| {
                // A zero interval would spin.
                let interval = reloader.poll_interval().filter(|d| !d.is_zero());
                Watched {
                    states: states(reloader.files()),
                    next_poll: now + interval.unwrap_or_default(),
                    interval,
                    reloader,
                }
            })
            .collect();
        Self {
            watched,
            counters: Arc::default(),
        }
    }

    pub fn counters(&self) -> Arc<WatchCounters> {
        self.counters.clone()
    }

    /// Runs until `signals` ends and nothing is polled, or until dropped (abort the task to
    /// stop it). Every item of `signals` reloads everything; see [`sighup`]. Reloads and `stat`s
    /// run on the blocking pool, one at a time.
    pub async fn run<S>(mut self, signals: S)
    where
        S: Stream<Item = ()> + Send,
    {
        let mut signals = std::pin::pin!(signals.fuse());
        let mut signals_open = true;
        loop {
            let next_poll = self
                .watched
                .iter()
                .filter(|w| w.interval.is_some())
                .map(|w| w.next_poll)
                .min();
            if next_poll.is_none() && !signals_open {
                return;
            }
            let poll = async {
                match next_poll {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                signal = signals.next(), if signals_open => match signal {
                    Some(()) => {
                        self.counters.signals.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(lists = self.watched.len(), "reload signal: reloading every list");
                        for i in 0..self.watched.len() {
                            // The state before reading, so a write during the reload is seen
                            // by the next poll.
                            let files = self.watched[i].reloader.files().to_vec();
                            self.watched[i].states = blocking(move || states(&files)).await;
                            self.reload(i).await;
                        }
                    }
                    None => signals_open = false,
                },
                () = poll => {
                    let now = Instant::now();
                    for i in 0..self.watched.len() {
                        let w = &mut self.watched[i];
                        let Some(interval) = w.interval.filter(|_| w.next_poll <= now) else {
                            continue;
                        };
                        w.next_poll = now + interval;
                        let files = w.reloader.files().to_vec();
                        let new = blocking(move || states(&files)).await;
                        if new != self.watched[i].states {
                            self.watched[i].states = new;
                            self.counters.file_changes.fetch_add(1, Ordering::Relaxed);
                            self.reload(i).await;
                        }
                    }
                }
            }
        }
    }

    async fn reload(&self, i: usize) {
        let reloader = self.watched[i].reloader.clone();
        let name = reloader.name().to_owned();
        // Outcomes are logged and counted by the reloader itself.
        if tokio::task::spawn_blocking(move || reloader.reload())
            .await
            .is_err()
        {
            self.counters.panics.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                list = name,
                "list reload panicked, the previous one stays in force"
            );
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(t) => t,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// SIGHUP as a stream, for [`Watcher::run`]. Installing the handler replaces the default action
/// (terminate) for the whole process, for good.
/// The SIGHUP stream [`sighup`] returns. A signal that arrives after it is made and before it
/// is polled is kept (tokio records it), so a daemon makes it first and polls it when ready.
pub type Sighup = std::pin::Pin<Box<dyn Stream<Item = ()> + Send + 'static>>;

pub fn sighup() -> std::io::Result<Sighup> {
    let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(Box::pin(futures::stream::unfold(
        signal,
        |mut signal| async move { signal.recv().await.map(|()| ((), signal)) },
    )))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Counts reloads; reports the file's content as its "entries".
    #[derive(Debug)]
    struct Probe {
        files: Vec<PathBuf>,
        interval: Option<Duration>,
        loads: AtomicU64,
        seen: Mutex<Vec<String>>,
    }

    impl Reload for Probe {
        fn name(&self) -> &str {
            "probe"
        }
        fn files(&self) -> &[PathBuf] {
            &self.files
        }
        fn poll_interval(&self) -> Option<Duration> {
            self.interval
        }
        fn reload(&self) -> Result<usize, ReloadError> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            let text = std::fs::read_to_string(&self.files[0]).unwrap_or_default();
            self.seen.lock().unwrap().push(text);
            Ok(0)
        }
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn probe(dir: &Path, interval: Option<Duration>) -> Arc<Probe> {
        let file = dir.join("list.txt");
        std::fs::write(&file, "one").unwrap();
        Arc::new(Probe {
            files: vec![file],
            interval,
            loads: AtomicU64::new(0),
            seen: Mutex::default(),
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_file_is_reloaded_once_per_change() {
        let dir = tempfile::tempdir().unwrap();
        let p = probe(dir.path(), Some(Duration::from_millis(10)));
        let watcher = Watcher::new(vec![p.clone()]);
        let counters = watcher.counters();
        let task = tokio::spawn(watcher.run(futures::stream::pending()));

        // Replaced by rename, as editors and deploy tools do.
        let tmp = dir.path().join("list.txt.new");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &p.files[0]).unwrap();
        until("the rename", || p.loads.load(Ordering::SeqCst) == 1).await;
        // Rewritten in place, same length.
        std::fs::write(&p.files[0], "six").unwrap();
        until("the rewrite", || p.loads.load(Ordering::SeqCst) == 2).await;
        // Removed: a change too (the reload then reports the missing file).
        std::fs::remove_file(&p.files[0]).unwrap();
        until("the removal", || p.loads.load(Ordering::SeqCst) == 3).await;
        assert_eq!(*p.seen.lock().unwrap(), ["two", "six", ""]);
        assert_eq!(counters.file_changes.load(Ordering::SeqCst), 3);

        // No change: no reload, over many polls.
        let polls_later = Instant::now() + Duration::from_millis(100);
        until("some polls", || Instant::now() > polls_later).await;
        assert_eq!(p.loads.load(Ordering::SeqCst), 3);
        task.abort();
    }

    #[tokio::test]
    async fn every_signal_reloads_everything() {
        let dir = tempfile::tempdir().unwrap();
        let a = probe(dir.path(), None);
        let b = probe(dir.path(), Some(Duration::from_secs(3600)));
        let watcher = Watcher::new(vec![a.clone(), b.clone()]);
        let counters = watcher.counters();
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let task = tokio::spawn(watcher.run(rx));
        tx.unbounded_send(()).unwrap();
        until("the first signal", || {
            a.loads.load(Ordering::SeqCst) == 1 && b.loads.load(Ordering::SeqCst) == 1
        })
        .await;
        tx.unbounded_send(()).unwrap();
        until("the second signal", || {
            a.loads.load(Ordering::SeqCst) == 2 && b.loads.load(Ordering::SeqCst) == 2
        })
        .await;
        assert_eq!(counters.signals.load(Ordering::SeqCst), 2);
        // Signals gone, one list still polled: the watcher keeps running.
        drop(tx);
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        task.abort();
    }

    #[tokio::test]
    async fn nothing_to_watch_ends_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let watcher = Watcher::new(vec![probe(dir.path(), Some(Duration::ZERO))]);
        tokio::time::timeout(
            Duration::from_secs(20),
            watcher.run(futures::stream::empty()),
        )
        .await
        .expect("returns when signals end and nothing is polled");
    }
}
