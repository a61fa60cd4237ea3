//! The trusted-domain filter: queries for trusted names make no lookup and no alert.
//!
//! Names come from `[trust]` in the config and from list files (syntax in [`crate::domainset`]:
//! plain entries cover their subdomains, `=name` only the name). The current set sits behind an
//! [`ArcSwap`]: the per-event check is a wait-free pointer load and a few hash probes, and a
//! reload builds the new set aside and swaps it in whole, so no event waits for a reload or sees
//! an empty or partial list. A list that fails to load leaves the previous set in force.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use serde::Deserialize;

use sensor_model::{
    error::ConfigError,
    reload::{Reload, ReloadCounters, ReloadError},
};

use crate::domainset::{DomainSet, ListError, Pattern};

/// `[trust]`: names whose queries are not looked up.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrustSection {
    /// Trusted names: `baidu.com` covers `www.baidu.com`; `=www.example.com` is that name only.
    pub domains: Vec<String>,
    /// List files: one name per line, `#` comments, hosts-file lines accepted. Reloaded on SIGHUP
    /// and when they change; a file that fails to load leaves the previous list in force.
    pub files: Vec<PathBuf>,
    /// How often the files are checked for changes, in milliseconds; 0: only on SIGHUP.
    pub reload_interval_ms: u64,
}

impl Default for TrustSection {
    fn default() -> Self {
        Self {
            domains: Vec::new(),
            files: Vec::new(),
            reload_interval_ms: 2000,
        }
    }
}

impl TrustSection {
    /// Checks the inline names (the files are read by [`TrustFilter::new`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.patterns().map(|_| ())
    }

    fn patterns(&self) -> Result<Vec<Pattern>, ConfigError> {
        self.domains
            .iter()
            .map(|d| {
                Pattern::parse(d.trim()).map_err(|e| ConfigError::Invalid {
                    key: "trust.domains",
                    message: e.to_string(),
                })
            })
            .collect()
    }
}

/// Why the filter could not be built at start-up (later reloads keep the previous set instead).
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    List(#[from] ListError),
}

/// The trusted-domain filter. Share it as `Arc<TrustFilter>`; register it with a
/// [`sensor_model::reload::Watcher`] for SIGHUP and file-change reloads.
#[derive(Debug)]
pub struct TrustFilter {
    inline: Vec<Pattern>,
    files: Vec<PathBuf>,
    interval: Option<Duration>,
    current: ArcSwap<DomainSet>,
    counters: ReloadCounters,
}

impl TrustFilter {
    /// Reads the inline names and every file; any error is fatal here, since there is no
    /// previous list to fall back to.
    pub fn new(section: &TrustSection) -> Result<Self, TrustError> {
        let inline = section.patterns()?;
        let filter = Self {
            inline,
            files: section.files.clone(),
            interval: (section.reload_interval_ms > 0)
                .then(|| Duration::from_millis(section.reload_interval_ms)),
            current: ArcSwap::default(),
            counters: ReloadCounters::default(),
        };
        filter.reload()?;
        Ok(filter)
    }

    /// True if the name is trusted. The per-event hot path: no lock, no allocation.
    pub fn is_trusted(&self, name: &str) -> bool {
        self.current.load().contains(name)
    }

    /// The entry that makes `name` trusted, in entry syntax (`baidu.com`, `=www.example.com`),
    /// for logs.
    pub fn trusted_by(&self, name: &str) -> Option<String> {
        self.current.load().lookup(name).map(|m| m.to_string())
    }

    /// The set in force now (it stays valid, and unchanged, after later reloads).
    pub fn current(&self) -> Arc<DomainSet> {
        self.current.load_full()
    }

    /// Re-reads every file and swaps the new set in; on error the previous set stays in force.
    /// Logs one line and counts the outcome either way. Returns the number of entries.
    pub fn reload(&self) -> Result<usize, ListError> {
        let started = Instant::now();
        let result = self.build().map(|set| {
            let entries = set.len();
            self.current.store(Arc::new(set));
            entries
        });
        self.counters.record("trust", started, &result);
        result
    }

    fn build(&self) -> Result<DomainSet, ListError> {
        let mut set = DomainSet::new();
        for p in &self.inline {
            set.insert(p).map_err(|e| ListError::Line {
                path: "config trust.domains".into(),
                line: 0,
                reason: e.into(),
            })?;
        }
        for file in &self.files {
            set.load_file(file)?;
        }
        set.shrink_to_fit();
        Ok(set)
    }

    pub fn counters(&self) -> &ReloadCounters {
        &self.counters
    }
}

impl Reload for TrustFilter {
    fn name(&self) -> &str {
        "trust"
    }
    fn files(&self) -> &[PathBuf] {
        &self.files
    }
    fn poll_interval(&self) -> Option<Duration> {
        self.interval
    }
    fn reload(&self) -> Result<usize, ReloadError> {
        Ok(TrustFilter::reload(self)?)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        path::Path,
        sync::atomic::{AtomicBool, AtomicU64, Ordering},
    };

    use super::*;
    use sensor_model::reload::Watcher;

    fn section(domains: &[&str], files: &[&Path], interval_ms: u64) -> TrustSection {
        TrustSection {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            files: files.iter().map(|f| f.to_path_buf()).collect(),
            reload_interval_ms: interval_ms,
        }
    }

    /// Replaces a file the way deploy tools do: write aside, rename over.
    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn section_defaults_and_unknown_keys() {
        let s: TrustSection = toml::from_str("").unwrap();
        assert_eq!(s, TrustSection::default());
        assert_eq!(s.reload_interval_ms, 2000);
        let err = toml::from_str::<TrustSection>("domain = []").unwrap_err();
        assert!(err.to_string().contains("domain"), "{err}");
        let err = section(&["ok.com", "bad name"], &[], 0)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config key `trust.domains`: ") && err.contains("bad name"),
            "{err}"
        );
    }

    #[test]
    fn config_and_files_together() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("trusted.txt");
        std::fs::write(
            &list,
            "# intranet\ncorp.example\n0.0.0.0 =cdn.example.net\n",
        )
        .unwrap();
        let f = TrustFilter::new(&section(&["baidu.com", "=qq.com"], &[&list], 0)).unwrap();
        assert!(f.is_trusted("www.baidu.com"));
        assert!(!f.is_trusted("notbaidu.com"));
        assert!(f.is_trusted("QQ.com."));
        assert!(!f.is_trusted("www.qq.com"));
        assert!(f.is_trusted("mail.corp.example"));
        assert!(f.is_trusted("cdn.example.net"));
        assert!(!f.is_trusted("x.cdn.example.net"));
        assert_eq!(
            f.trusted_by("a.b.corp.example").as_deref(),
            Some("corp.example")
        );
        assert_eq!(f.current().len(), 4);
        assert_eq!(f.counters().ok.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_bad_file_at_start_is_an_error_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("trusted.txt");
        std::fs::write(&list, "ok.example\n\nnot a name\n").unwrap();
        let err = TrustFilter::new(&section(&[], &[&list], 0))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "list {} line 3: one entry per line expected, found \"a\" after it",
                list.display()
            )
        );
        let missing = dir.path().join("missing.txt");
        let err = TrustFilter::new(&section(&[], &[&missing], 0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.txt"), "{err}");
    }

    #[test]
    fn a_bad_reload_keeps_the_previous_set() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("trusted.txt");
        std::fs::write(&list, "old.example\n").unwrap();
        let f = TrustFilter::new(&section(&[], &[&list], 0)).unwrap();
        replace(&list, "new.example\n1.2.3.4\n");
        let err = f.reload().unwrap_err();
        assert!(
            matches!(err, ListError::Line { line: 2, .. }),
            "{err}: names the line"
        );
        assert!(f.is_trusted("old.example"));
        assert!(!f.is_trusted("new.example"));
        std::fs::remove_file(&list).unwrap();
        assert!(matches!(f.reload(), Err(ListError::Read { .. })));
        assert!(f.is_trusted("old.example"));
        assert_eq!(f.counters().failed.load(Ordering::Relaxed), 2);
        replace(&list, "new.example\n");
        assert_eq!(f.reload().unwrap(), 1);
        assert!(f.is_trusted("new.example") && !f.is_trusted("old.example"));
        assert_eq!(f.counters().ok.load(Ordering::Relaxed), 2);
    }

    /// Readers check a name that every version of the list holds while the list is reloaded
    /// over and over (good and bad versions): not one check may fail.
    #[test]
    fn events_never_see_an_empty_or_partial_set_during_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("trusted.txt");
        let version = |v: usize| {
            let mut text = String::new();
            for i in 0..20_000 {
                text.push_str(&format!("h{i}.v{v}.example\n"));
            }
            // Last, so a partial set would miss it.
            text.push_str("always.example\n");
            text
        };
        std::fs::write(&list, version(0)).unwrap();
        let f = Arc::new(TrustFilter::new(&section(&[], &[&list], 0)).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let checks = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (f, stop, checks) = (f.clone(), stop.clone(), checks.clone());
                std::thread::spawn(move || {
                    let mut misses = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        misses += u64::from(!f.is_trusted("www.always.example"));
                        checks.fetch_add(1, Ordering::Relaxed);
                    }
                    misses
                })
            })
            .collect();
        for v in 1..=20 {
            if v % 5 == 0 {
                replace(&list, &format!("{}bad line here\n", version(v)));
                assert!(f.reload().is_err());
            } else {
                replace(&list, &version(v));
                assert_eq!(f.reload().unwrap(), 20_001);
            }
        }
        stop.store(true, Ordering::Relaxed);
        let misses: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        assert_eq!(misses, 0);
        assert!(checks.load(Ordering::Relaxed) > 0);
        assert!(f.is_trusted("h1.v19.example"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_file_is_picked_up_by_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("trusted.txt");
        std::fs::write(&list, "old.example\n").unwrap();
        let f = Arc::new(TrustFilter::new(&section(&[], &[&list], 10)).unwrap());
        let watcher = Watcher::new(vec![f.clone()]);
        let task = tokio::spawn(watcher.run(futures::stream::pending()));
        let wait = |what: &'static str, f: Arc<TrustFilter>, cond: fn(&TrustFilter) -> bool| async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !cond(&f) {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        replace(&list, "new.example\n");
        wait("the new list", f.clone(), |f| f.is_trusted("new.example")).await;
        assert!(!f.is_trusted("old.example"));
        // A bad version is reported and changes nothing; the next good one is taken.
        replace(&list, "bad entry!\n");
        wait("the failed reload", f.clone(), |f| {
            f.counters().failed.load(Ordering::Relaxed) == 1
        })
        .await;
        assert!(f.is_trusted("new.example"));
        replace(&list, "newer.example\n");
        wait("the newer list", f.clone(), |f| {
            f.is_trusted("newer.example")
        })
        .await;
        task.abort();
    }
}
