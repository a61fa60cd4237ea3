//! Who fetched the EDL, and who stopped: per configured firewall the last successful fetch, the
//! version it got and its failures, as metrics, in a state file `sensor blocklist show` prints,
//! and an alert when a firewall has been silent longer than its `max_silence_secs`.
//!
//! Why: PAN-OS stops enforcing an EDL whose fetch fails (authentication, certificate, network)
//! and says so only in its own system log; the sensor is the one place that sees the fetches
//! stop. A firewall is known by its address (and, when several share one behind NAT, by its
//! Basic-auth user). Clients that match no configured firewall are counted together under
//! `unlisted`, so the metric labels are the configured names only.
//!
//! The server hands out the export lists too (FortiGate, Check Point, MikroTik): a record keeps
//! which list its last successful fetch got, so "current" compares against that list's version,
//! and requests are also counted per list (`edl_list_fetches_total{list,result}`, four lists).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::edl::ListKind;

use sensor_model::error::ConfigError;
use sensor_outputs::{alert::AlertsSection, metrics::Metric};

/// `[[blocklist.edl.firewalls]]`: a firewall expected to fetch the list.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FirewallSection {
    /// Its name in metrics, alerts and `sensor blocklist show`.
    pub name: String,
    /// The address its fetches come from.
    pub address: IpAddr,
    /// Its Basic-auth user, to tell apart firewalls behind one address; empty: any user.
    #[serde(default)]
    pub user: String,
    /// Alert when it has not fetched successfully for this long (seconds). Default 7200: two
    /// missed fetches at PAN-OS's hourly interval.
    #[serde(default = "default_max_silence")]
    pub max_silence_secs: u64,
}

fn default_max_silence() -> u64 {
    7200
}

/// Checks names (unique, label-safe) and silences.
pub fn validate(firewalls: &[FirewallSection]) -> Result<(), ConfigError> {
    let key = "blocklist.edl.firewalls";
    for (i, f) in firewalls.iter().enumerate() {
        if f.name.is_empty()
            || f.name == UNLISTED
            || !f
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(ConfigError::Invalid {
                key,
                message: format!(
                    "name {:?}: use letters, digits, '-', '_', '.' (and not {UNLISTED:?})",
                    f.name
                ),
            });
        }
        if firewalls[..i].iter().any(|o| o.name == f.name) {
            return Err(ConfigError::Invalid {
                key,
                message: format!("name {:?} is used twice", f.name),
            });
        }
        if f.max_silence_secs < 10 {
            return Err(ConfigError::Invalid {
                key,
                message: format!("{}: max_silence_secs must be at least 10", f.name),
            });
        }
    }
    Ok(())
}

const UNLISTED: &str = "unlisted";

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 200 with the list.
    Ok,
    /// 304: the firewall has the current list.
    NotModified,
    /// 401: missing or wrong credentials.
    Unauthorized,
    /// 503: nothing published yet.
    Unavailable,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NotModified => "not_modified",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Unavailable => "unavailable",
        }
    }
    fn success(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::NotModified)
    }
}

/// One firewall's record, as kept in the state file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FetchState {
    pub name: String,
    pub address: Option<IpAddr>,
    pub last_success_unix: Option<i64>,
    /// The ETag of the list it last got (200) or confirmed (304).
    pub version: Option<String>,
    /// Which list that was (`edl`, `fortigate`, `checkpoint`, `mikrotik`); absent in records
    /// written before the server served more than the EDL (read as `edl`).
    #[serde(default)]
    pub list: Option<String>,
    pub successes: u64,
    pub not_modified: u64,
    pub failures: u64,
    pub unauthorized: u64,
    pub unavailable: u64,
    pub last_failure_unix: Option<i64>,
    /// Set while a silence alert is out; cleared by the next success.
    #[serde(default)]
    pub silence_alerted: bool,
}

/// The state file next to the EDL file.
pub fn state_file(edl_path: &Path) -> PathBuf {
    edl_path.with_file_name("edl-fetches.json")
}

/// Reads the state file; a missing one is empty.
pub fn load(path: &Path) -> Result<Vec<FetchState>, String> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The table `sensor blocklist show` prints.
pub fn render(states: &[FetchState], now_unix: i64) -> String {
    let mut out = format!(
        "{:<20} {:<39} {:<10} {:>14} {:>8} {:>8}  {}\n",
        "firewall", "address", "list", "last fetch ago", "fetches", "failures", "version"
    );
    for s in states {
        let ago = s
            .last_success_unix
            .map_or("never".to_owned(), |t| format!("{}s", now_unix - t));
        out.push_str(&format!(
            "{:<20} {:<39} {:<10} {:>14} {:>8} {:>8}  {}\n",
            s.name,
            s.address.map_or("-".to_owned(), |a| a.to_string()),
            s.list.as_deref().unwrap_or("-"),
            ago,
            s.successes + s.not_modified,
            s.failures,
            s.version.as_deref().unwrap_or("-"),
        ));
    }
    out
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

struct Inner {
    /// One per configured firewall, then `unlisted`.
    states: Vec<FetchState>,
    /// Requests per list (in [`ListKind::ALL`] order) and outcome (ok, not_modified,
    /// unauthorized, unavailable), since the start.
    by_list: [[u64; 4]; 4],
    dirty: bool,
}

/// Fetch records of the running server.
pub struct FetchTracker {
    firewalls: Vec<FirewallSection>,
    file: PathBuf,
    started: i64,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for FetchTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchTracker")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl FetchTracker {
    /// Starts from the state file (what a previous run saw), so a restart neither forgets a
    /// firewall's last fetch nor alerts again on a silence already reported. An unreadable file
    /// is logged and started afresh: it holds observations, not decisions.
    pub fn new(firewalls: Vec<FirewallSection>, file: PathBuf) -> Self {
        let old = load(&file).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "EDL fetch records not read: starting afresh");
            Vec::new()
        });
        let mut states: Vec<FetchState> = firewalls
            .iter()
            .map(|f| {
                let mut s = old
                    .iter()
                    .find(|o| o.name == f.name)
                    .cloned()
                    .unwrap_or_default();
                s.name = f.name.clone();
                s.address = Some(f.address);
                s
            })
            .collect();
        states.push(
            old.iter()
                .find(|o| o.name == UNLISTED)
                .cloned()
                .unwrap_or(FetchState {
                    name: UNLISTED.into(),
                    ..FetchState::default()
                }),
        );
        Self {
            firewalls,
            file,
            started: unix(SystemTime::now()),
            inner: Mutex::new(Inner {
                states,
                by_list: [[0; 4]; 4],
                dirty: true,
            }),
        }
    }

    /// Which configured firewall a request from `ip` (with Basic-auth `user`, if any) is.
    fn index(&self, ip: IpAddr, user: Option<&str>) -> usize {
        let ip = ip.to_canonical();
        let at: Vec<usize> = (0..self.firewalls.len())
            .filter(|&i| self.firewalls[i].address.to_canonical() == ip)
            .collect();
        at.iter()
            .copied()
            .find(|&i| user.is_some_and(|u| self.firewalls[i].user == u))
            .or_else(|| {
                at.iter()
                    .copied()
                    .find(|&i| self.firewalls[i].user.is_empty())
            })
            .or_else(|| at.first().copied())
            .unwrap_or(self.firewalls.len())
    }

    /// Records one request for `list` and its outcome; `version` is the ETag served or
    /// confirmed.
    pub fn record(
        &self,
        ip: IpAddr,
        user: Option<&str>,
        list: ListKind,
        outcome: Outcome,
        version: Option<&str>,
    ) {
        let i = self.index(ip, user);
        let now = unix(SystemTime::now());
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.dirty = true;
        let li = ListKind::ALL.iter().position(|k| *k == list).unwrap_or(0);
        let oi = match outcome {
            Outcome::Ok => 0,
            Outcome::NotModified => 1,
            Outcome::Unauthorized => 2,
            Outcome::Unavailable => 3,
        };
        inner.by_list[li][oi] += 1;
        let s = &mut inner.states[i];
        match outcome {
            Outcome::Ok => s.successes += 1,
            Outcome::NotModified => s.not_modified += 1,
            Outcome::Unauthorized => s.unauthorized += 1,
            Outcome::Unavailable => s.unavailable += 1,
        }
        if outcome.success() {
            s.last_success_unix = Some(now);
            s.version = version.map(str::to_owned);
            s.list = Some(list.name().to_owned());
            if s.silence_alerted {
                s.silence_alerted = false;
                tracing::info!(firewall = %s.name, "firewall fetches the EDL again");
            }
        } else {
            s.failures += 1;
            s.last_failure_unix = Some(now);
        }
        tracing::debug!(firewall = %s.name, list = list.name(), outcome = outcome.label(), "EDL fetch");
    }

    /// A copy of every record (configured firewalls, then `unlisted`).
    pub fn states(&self) -> Vec<FetchState> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .states
            .clone()
    }

    /// `edl_fetch_*{firewall=...}` and `edl_list_fetches_total{list,result}` samples; `current`
    /// gives the ETag a list is served with now.
    pub fn metrics(&self, current: &dyn Fn(ListKind) -> Option<String>, out: &mut Vec<Metric>) {
        let by_list = self.inner.lock().unwrap_or_else(|p| p.into_inner()).by_list;
        for (kind, counts) in ListKind::ALL.iter().zip(by_list) {
            for (result, v) in ["ok", "not_modified", "unauthorized", "unavailable"]
                .into_iter()
                .zip(counts)
            {
                out.push(
                    Metric::counter(
                        "edl_list_fetches",
                        "Requests to the EDL server by list and result.",
                        v,
                    )
                    .label("list", kind.name())
                    .label("result", result),
                );
            }
        }
        for s in self.states() {
            let fetched = s
                .list
                .as_deref()
                .and_then(ListKind::from_name)
                .unwrap_or(ListKind::Edl);
            let current = current(fetched);
            let name = s.name.clone();
            for (result, v) in [
                ("ok", s.successes),
                ("not_modified", s.not_modified),
                ("unauthorized", s.unauthorized),
                ("unavailable", s.unavailable),
            ] {
                out.push(
                    Metric::counter("edl_fetches", "EDL requests by firewall and result.", v)
                        .label("firewall", name.clone())
                        .label("result", result),
                );
            }
            out.push(
                Metric::gauge(
                    "edl_fetch_last_success_timestamp_seconds",
                    "Unix time of the firewall's last successful fetch (0: never).",
                    s.last_success_unix.unwrap_or(0) as f64,
                )
                .label("firewall", name.clone()),
            );
            out.push(
                Metric::gauge(
                    "edl_fetch_current",
                    "1 when the firewall's last fetch got the version served now of the list it fetched.",
                    f64::from(u8::from(
                        current.is_some() && s.version.as_deref() == current.as_deref(),
                    )),
                )
                .label("firewall", name),
            );
        }
    }

    /// Writes the state file when something changed since the last write.
    pub fn persist(&self) -> std::io::Result<()> {
        let text = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if !inner.dirty {
                return Ok(());
            }
            inner.dirty = false;
            serde_json::to_string_pretty(&inner.states).map_err(std::io::Error::other)?
        };
        sensor_model::files::write_atomic(&self.file, &text)
    }

    /// Configured firewalls silent beyond their limit and not yet alerted on, marked alerted
    /// now: (name, address, seconds since the last success or since the server started).
    pub fn newly_silent(&self, now_unix: i64) -> Vec<(String, IpAddr, i64)> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (f, s) in self.firewalls.iter().zip(inner.states.iter_mut()) {
            let since = s.last_success_unix.unwrap_or(self.started).max(0);
            let silent = now_unix - since;
            if !s.silence_alerted && silent > i64::try_from(f.max_silence_secs).unwrap_or(i64::MAX)
            {
                s.silence_alerted = true;
                out.push((f.name.clone(), f.address, silent));
            }
        }
        if !out.is_empty() {
            inner.dirty = true;
        }
        out
    }
}

/// Every `every`: writes the state file and alerts on firewalls gone silent (through the
/// configured alert sinks, and a warning in the log). Runs until aborted.
pub async fn watch(
    tracker: std::sync::Arc<FetchTracker>,
    alerts: AlertsSection,
    sensor_name: String,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (name, address, silent) in tracker.newly_silent(unix(SystemTime::now())) {
            tracing::warn!(firewall = %name, %address, silent_secs = silent,
                "firewall has not fetched the EDL: it may no longer enforce the blocklist");
            let text = format!(
                "**DNS sensor `{sensor_name}`: firewall `{name}` ({address}) has not fetched the blocklist for {silent} s**\n> PAN-OS stops enforcing an EDL it cannot fetch."
            );
            let body = serde_json::json!({
                "kind": "edl_fetch_silent",
                "firewall": name,
                "address": address.to_string(),
                "silent_secs": silent,
            });
            for f in sensor_outputs::alert::notice::send(&alerts, &text, &body).await {
                tracing::warn!(sink = %f, "EDL silence alert not sent");
            }
        }
        let t = tracker.clone();
        match tokio::task::spawn_blocking(move || t.persist()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "EDL fetch records not written"),
            Err(e) => tracing::warn!(error = %e, "EDL fetch records task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fw(name: &str, addr: &str, user: &str) -> FirewallSection {
        FirewallSection {
            name: name.into(),
            address: addr.parse().unwrap(),
            user: user.into(),
            max_silence_secs: 60,
        }
    }

    #[test]
    fn fetches_are_told_apart_by_address_then_user_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let file = state_file(&dir.path().join("edl.txt"));
        let t = FetchTracker::new(
            vec![
                fw("pa-1", "10.0.0.1", "pa1"),
                fw("pa-2", "10.0.0.1", "pa2"),
                fw("forti", "10.0.0.9", ""),
            ],
            file.clone(),
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        t.record(
            ip("10.0.0.1"),
            Some("pa2"),
            ListKind::Edl,
            Outcome::Ok,
            Some("\"v1\""),
        );
        t.record(
            ip("::ffff:10.0.0.9"),
            None,
            ListKind::Fortigate,
            Outcome::Unauthorized,
            None,
        );
        t.record(
            ip("10.0.0.9"),
            None,
            ListKind::Fortigate,
            Outcome::NotModified,
            Some("\"f1\""),
        );
        t.record(
            ip("192.0.2.7"),
            None,
            ListKind::Edl,
            Outcome::Unauthorized,
            None,
        );
        let s = t.states();
        assert_eq!(s[0].successes + s[0].failures, 0, "pa-1 untouched");
        assert_eq!(
            (s[1].successes, s[1].version.as_deref()),
            (1, Some("\"v1\""))
        );
        assert_eq!(
            (s[2].not_modified, s[2].unauthorized, s[2].failures),
            (1, 1, 1)
        );
        assert_eq!((s[3].name.as_str(), s[3].unauthorized), (UNLISTED, 1));
        let mut m = Vec::new();
        t.metrics(
            &|k| match k {
                ListKind::Edl => Some("\"v1\"".to_owned()),
                ListKind::Fortigate => Some("\"f1\"".to_owned()),
                _ => None,
            },
            &mut m,
        );
        let current: Vec<_> = m
            .iter()
            .filter(|x| x.name == "edl_fetch_current" && x.value == 1.0)
            .map(|x| x.labels[0].1.clone())
            .collect();
        assert_eq!(
            current,
            ["pa-2", "forti"],
            "each against its own list's version"
        );
        assert_eq!(s[1].list.as_deref(), Some("edl"));
        assert_eq!(s[2].list.as_deref(), Some("fortigate"));
        let per_list = |list: &str, result: &str| {
            m.iter()
                .find(|x| {
                    x.name == "edl_list_fetches" && x.labels[0].1 == list && x.labels[1].1 == result
                })
                .map(|x| x.value)
        };
        assert_eq!(per_list("fortigate", "unauthorized"), Some(1.0));
        assert_eq!(per_list("fortigate", "not_modified"), Some(1.0));
        assert_eq!(per_list("edl", "unauthorized"), Some(1.0));
        assert_eq!(per_list("mikrotik", "ok"), Some(0.0));
        // The same firewall's version no longer matches once the FortiGate feed changes.
        let mut m = Vec::new();
        t.metrics(
            &|k| (k == ListKind::Edl).then(|| "\"v1\"".to_owned()),
            &mut m,
        );
        let current: Vec<_> = m
            .iter()
            .filter(|x| x.name == "edl_fetch_current" && x.value == 1.0)
            .map(|x| x.labels[0].1.clone())
            .collect();
        assert_eq!(current, ["pa-2"]);
        t.persist().unwrap();
        let back = load(&file).unwrap();
        assert_eq!(back, s);
        // A restart keeps what was seen.
        let again = FetchTracker::new(vec![fw("pa-2", "10.0.0.1", "pa2")], file);
        assert_eq!(again.states()[0].successes, 1);
        assert_eq!(again.states()[1].unauthorized, 1);
    }

    #[test]
    fn a_silent_firewall_is_reported_once_until_it_fetches_again() {
        let dir = tempfile::tempdir().unwrap();
        let t = FetchTracker::new(
            vec![
                fw("pa-1", "10.0.0.1", ""),
                FirewallSection {
                    max_silence_secs: 300,
                    ..fw("pa-2", "10.0.0.2", "")
                },
            ],
            dir.path().join("f.json"),
        );
        let now = unix(SystemTime::now());
        assert!(t.newly_silent(now + 30).is_empty(), "not silent yet");
        t.record(
            "10.0.0.2".parse().unwrap(),
            None,
            ListKind::Edl,
            Outcome::Ok,
            Some("v"),
        );
        let silent = t.newly_silent(now + 61);
        assert_eq!(silent.len(), 1);
        assert_eq!(silent[0].0, "pa-1");
        let later: Vec<_> = t.newly_silent(now + 500).into_iter().map(|s| s.0).collect();
        assert_eq!(later, ["pa-2"], "pa-1 once; pa-2 silent since its fetch");
        t.record(
            "10.0.0.1".parse().unwrap(),
            None,
            ListKind::Edl,
            Outcome::Ok,
            Some("v"),
        );
        assert!(t.newly_silent(now + 30).is_empty());
        let again: Vec<_> = t
            .newly_silent(unix(SystemTime::now()) + 70)
            .into_iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(again, ["pa-1"], "re-armed by its fetch");
    }

    #[test]
    fn names_must_be_label_safe_and_unique() {
        validate(&[fw("pa-1", "10.0.0.1", "")]).unwrap();
        for bad in [
            vec![fw("pa 1", "10.0.0.1", "")],
            vec![fw("unlisted", "10.0.0.1", "")],
            vec![fw("a", "10.0.0.1", ""), fw("a", "10.0.0.2", "")],
        ] {
            let e = validate(&bad).unwrap_err().to_string();
            assert!(e.contains("blocklist.edl.firewalls"), "{e}");
        }
    }
}
