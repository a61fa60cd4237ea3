//! Exports: the published blocklist written for firewalls that cannot read the PAN-OS EDL, and
//! applied to the sensor host's own packet filter.
//!
//! The seed's team kept one CLI script per firewall; here every configured export is refreshed
//! from the same entries whenever the list is published (the nightly run, `sensor blocklist
//! run`, the daemon's start and SIGHUP), so the firewalls never disagree about what is blocked.
//!
//! Targets, one module each:
//! - [`fortigate`]: a FortiGate "IP Address" external threat feed file (FortiOS fetches it).
//! - [`checkpoint`]: a Check Point Custom Intelligence (IoC) feed, CSV in the Check Point format.
//! - [`mikrotik`]: a RouterOS script (`/import`) that updates an address list make-before-break.
//! - [`nft`]: nftables sets on this host, replaced in one `nft -f` transaction.
//! - [`ipset`]: ipsets on this host, built under a temporary name and swapped in.
//!
//! Every entry keeps its reason and expiry where the format can carry them. An export that fails
//! leaves its target as it was (files are replaced atomically, `nft -f` is one transaction, the
//! ipset swap happens only after the new set is complete) and does not stop the others: each
//! outcome is logged and returned in an [`ExportReport`].

pub mod checkpoint;
pub mod fortigate;
pub mod ipset;
pub mod mikrotik;
pub mod nft;
pub mod tool;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::store::Entry;
use sensor_model::{
    error::ConfigError,
    verdict::{Confidence, Severity},
};

/// `[blocklist.export]`: each subsection present turns one export on.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSection {
    /// `[blocklist.export.fortigate]`: FortiGate external threat feed ("IP Address") file.
    pub fortigate: Option<fortigate::FortigateSection>,
    /// `[blocklist.export.checkpoint]`: Check Point Custom Intelligence Feed (CSV) file.
    pub checkpoint: Option<checkpoint::CheckpointSection>,
    /// `[blocklist.export.mikrotik]`: RouterOS address-list script file.
    pub mikrotik: Option<mikrotik::MikrotikSection>,
    /// `[blocklist.export.nft]`: nftables sets on this host.
    pub nft: Option<nft::NftSection>,
    /// `[blocklist.export.ipset]`: ipsets on this host.
    pub ipset: Option<ipset::IpsetSection>,
}

impl ExportSection {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(s) = &self.fortigate {
            file_key("blocklist.export.fortigate.path", &s.path)?;
            s.validate()?;
        }
        if let Some(s) = &self.checkpoint {
            file_key("blocklist.export.checkpoint.path", &s.path)?;
            s.validate()?;
        }
        if let Some(s) = &self.mikrotik {
            file_key("blocklist.export.mikrotik.path", &s.path)?;
            s.validate()?;
        }
        for (_, key, url_path, _) in self.served() {
            crate::edl::check_url_path(key, &url_path)?;
        }
        if let Some(s) = &self.nft {
            s.validate()?;
        }
        if let Some(s) = &self.ipset {
            s.validate()?;
        }
        Ok(())
    }

    /// The export files served by the EDL server: (list, config key of its `url_path`, the
    /// path, the file), for those with a `url_path`.
    pub fn served(&self) -> Vec<(crate::edl::ListKind, &'static str, String, PathBuf)> {
        use crate::edl::ListKind;
        let mut out = Vec::new();
        if let Some(s) = &self.fortigate
            && let Some(u) = &s.url_path
        {
            out.push((
                ListKind::Fortigate,
                "blocklist.export.fortigate.url_path",
                u.clone(),
                s.path.clone(),
            ));
        }
        if let Some(s) = &self.checkpoint
            && let Some(u) = &s.url_path
        {
            out.push((
                ListKind::Checkpoint,
                "blocklist.export.checkpoint.url_path",
                u.clone(),
                s.path.clone(),
            ));
        }
        if let Some(s) = &self.mikrotik
            && let Some(u) = &s.url_path
        {
            out.push((
                ListKind::Mikrotik,
                "blocklist.export.mikrotik.url_path",
                u.clone(),
                s.path.clone(),
            ));
        }
        out
    }

    /// Whether any export is configured.
    pub fn any(&self) -> bool {
        self.fortigate.is_some()
            || self.checkpoint.is_some()
            || self.mikrotik.is_some()
            || self.nft.is_some()
            || self.ipset.is_some()
    }
}

fn file_key(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() || path.file_name().is_none() {
        return Err(ConfigError::Invalid {
            key,
            message: "must name a file".into(),
        });
    }
    Ok(())
}

/// One blocked network as every export sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportEntry {
    /// The network, host bits cleared; an IPv4-mapped IPv6 address is its IPv4 address.
    pub net: IpNet,
    /// When the block ends (Unix seconds); `None` = until removed from the config.
    pub expires: Option<i64>,
    /// Why it is blocked (free text: every format escapes or cleans it).
    pub reason: String,
    /// The verdict's grades, for formats that carry them (Check Point).
    pub severity: Option<Severity>,
    pub confidence: Option<Confidence>,
}

impl ExportEntry {
    /// A nightly-list entry: its expiry, and the verdict that listed it as the reason.
    pub fn from_store(e: &Entry) -> Self {
        let mut reason = String::from("nightly intel");
        if let Some(s) = e.severity {
            reason.push_str(&format!(" severity {}", lower(&s)));
        }
        if let Some(c) = e.confidence {
            reason.push_str(&format!(" confidence {}", lower(&c)));
        }
        if let Ok(t) = time::OffsetDateTime::from_unix_timestamp(e.first_listed) {
            reason.push_str(&format!(" since {}", t.date()));
        }
        Self {
            net: canonical(IpNet::from(e.ip)),
            expires: Some(e.expires),
            reason,
            severity: e.severity,
            confidence: e.confidence,
        }
    }

    /// A `[blocklist] entries` network: no expiry.
    pub fn configured(net: IpNet) -> Self {
        Self {
            net: canonical(net),
            expires: None,
            reason: "config blocklist.entries".into(),
            // An operator's own entry: as sure and as grave as the formats can say.
            severity: Some(Severity::High),
            confidence: Some(Confidence::High),
        }
    }

    /// Seconds left at `now`; `None` = no expiry, `Some(0)` = already expired.
    pub fn remaining(&self, now: i64) -> Option<u64> {
        self.expires.map(|t| t.saturating_sub(now).max(0) as u64)
    }
}

fn lower<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Host bits cleared; `::ffff:a.b.c.d/len` (len ≥ 96) as `a.b.c.d/(len-96)`.
pub fn canonical(net: IpNet) -> IpNet {
    let net = net.trunc();
    if let IpNet::V6(n) = net
        && let IpAddr::V4(v4) = IpAddr::V6(n.addr()).to_canonical()
        && n.prefix_len() >= 96
    {
        return IpNet::new(IpAddr::V4(v4), n.prefix_len() - 96)
            .map(|n| n.trunc())
            .unwrap_or(net);
    }
    net
}

/// The list to export: the config's static entries, then the nightly entries not yet expired
/// at `now`, most severe first, then most recently confirmed (a format that must truncate, like
/// FortiGate's line limit, keeps the entries that matter most).
pub fn entries(static_entries: &[IpNet], stored: &[Entry], now: i64) -> Vec<ExportEntry> {
    let mut live: Vec<&Entry> = stored.iter().filter(|e| e.expires > now).collect();
    live.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(b.last_malicious.cmp(&a.last_malicious))
            .then(a.ip.cmp(&b.ip))
    });
    static_entries
        .iter()
        .map(|n| ExportEntry::configured(*n))
        .chain(live.into_iter().map(ExportEntry::from_store))
        .collect()
}

/// Why one export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("running {program}: {source} (is it installed?)")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("{program} refused the update, the previous content stays: {message}")]
    Refused {
        program: &'static str,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// What one export did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// `fortigate`, `checkpoint`, `mikrotik`, `nft` or `ipset`.
    pub target: &'static str,
    /// Entries (or elements) written.
    pub written: usize,
    /// Entries the format cannot carry (e.g. IPv6 in the Check Point format) or over its limit.
    pub left_out: usize,
    /// The error, when the export failed (its target is as it was before).
    pub error: Option<String>,
}

/// What [`publish`] did, one outcome per configured export.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    pub outcomes: Vec<Outcome>,
}

impl ExportReport {
    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.error.is_some()).count()
    }
}

/// What a target wrote: entries written, entries left out.
pub type Written = (usize, usize);

/// The export targets, in the order [`publish`] runs them (also the metrics' `target` label).
pub const TARGETS: [&str; 5] = ["fortigate", "checkpoint", "mikrotik", "nft", "ipset"];

/// Per target, since the process started: refreshes that succeeded and failed, entries left
/// out, the elements of the last good refresh and when it was (Unix seconds). Process-wide, so
/// the daemon's `/metrics` sees the refreshes of start, SIGHUP and the scheduled runs.
#[derive(Debug, Default)]
pub struct TargetCounters {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub left_out: AtomicU64,
    pub elements: AtomicU64,
    pub last_ok_unix: AtomicU64,
}

pub static COUNTERS: [TargetCounters; 5] = [
    TargetCounters::new(),
    TargetCounters::new(),
    TargetCounters::new(),
    TargetCounters::new(),
    TargetCounters::new(),
];

impl TargetCounters {
    const fn new() -> Self {
        Self {
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            left_out: AtomicU64::new(0),
            elements: AtomicU64::new(0),
            last_ok_unix: AtomicU64::new(0),
        }
    }

    fn record(&self, r: &Result<Written, ExportError>, now: i64) {
        match r {
            Ok((written, left_out)) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                self.left_out.fetch_add(*left_out as u64, Ordering::Relaxed);
                self.elements.store(*written as u64, Ordering::Relaxed);
                self.last_ok_unix
                    .store(now.max(0) as u64, Ordering::Relaxed);
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The counters of `target` (one of [`TARGETS`]).
pub fn counters(target: &str) -> Option<&'static TargetCounters> {
    TARGETS
        .iter()
        .position(|t| *t == target)
        .map(|i| &COUNTERS[i])
}

/// Refreshes every configured export from `entries` at `now` (Unix seconds). Never fails as a
/// whole: each failure is logged at error level, leaves that target unchanged and is reported.
pub fn publish(section: &ExportSection, entries: &[ExportEntry], now: i64) -> ExportReport {
    // One publication at a time in this process (a SIGHUP during the nightly run): two ipset
    // restores would fight over the same temporary sets.
    static PUBLISHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = PUBLISHING.lock().unwrap_or_else(|p| p.into_inner());
    let mut report = ExportReport::default();
    let mut record = |target: &'static str, r: Result<Written, ExportError>| {
        if let Some(c) = counters(target) {
            c.record(&r, now);
        }
        let outcome = match r {
            Ok((written, left_out)) => {
                tracing::info!(
                    target_fw = target,
                    written,
                    left_out,
                    "blocklist export refreshed"
                );
                Outcome {
                    target,
                    written,
                    left_out,
                    error: None,
                }
            }
            Err(e) => {
                tracing::error!(target_fw = target, error = %e, "blocklist export failed; its previous content stays");
                Outcome {
                    target,
                    written: 0,
                    left_out: 0,
                    error: Some(e.to_string()),
                }
            }
        };
        report.outcomes.push(outcome);
    };
    if let Some(s) = &section.fortigate {
        record("fortigate", fortigate::export(s, entries, now));
    }
    if let Some(s) = &section.checkpoint {
        record("checkpoint", checkpoint::export(s, entries, now));
    }
    if let Some(s) = &section.mikrotik {
        record("mikrotik", mikrotik::export(s, entries, now));
    }
    if let Some(s) = &section.nft {
        record("nft", nft::apply(s, entries, now));
    }
    if let Some(s) = &section.ipset {
        record("ipset", ipset::apply(s, entries, now));
    }
    report
}

/// Writes a rendered file atomically (creating its directory).
pub(crate) fn write_file(path: &Path, text: &str) -> Result<(), ExportError> {
    let io = |source| ExportError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    sensor_model::files::write_atomic(path, text).map_err(io)
}

/// `text` reduced to characters every local tool takes inside a double-quoted comment (nft,
/// ipset): printable ASCII without `"`, `\`, `$`, `` ` ``; anything else (quotes, newlines,
/// non-ASCII) becomes `_`; at most `max` bytes.
pub(crate) fn plain_comment(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| {
            if (c.is_ascii_graphic() || c == ' ') && !matches!(c, '"' | '\\' | '$' | '`') {
                c
            } else {
                '_'
            }
        })
        .take(max)
        .collect()
}

/// The addresses an entry covers, as an inclusive range of integers (IPv4 in the low 32 bits).
pub(crate) fn bounds(net: &IpNet) -> (u128, u128) {
    match net {
        IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_maps_v4_in_v6_and_clears_host_bits() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(canonical(n("::ffff:10.1.2.3/128")), n("10.1.2.3/32"));
        assert_eq!(canonical(n("::ffff:10.1.2.3/120")), n("10.1.2.0/24"));
        assert_eq!(canonical(n("10.1.2.3/24")), n("10.1.2.0/24"));
        assert_eq!(canonical(n("2001:db8::1/64")), n("2001:db8::/64"));
    }

    #[test]
    fn entries_put_static_then_most_severe_and_recent_first_and_drop_expired() {
        let e = |ip: &str, sev: Severity, last: i64, expires: i64| Entry {
            ip: ip.parse().unwrap(),
            first_listed: 0,
            last_malicious: last,
            expires,
            severity: Some(sev),
            confidence: Some(Confidence::High),
        };
        let stored = [
            e("1.0.0.1", Severity::Medium, 50, 1_000),
            e("1.0.0.2", Severity::Critical, 10, 1_000),
            e("1.0.0.3", Severity::Medium, 90, 1_000),
            e("1.0.0.4", Severity::Critical, 10, 99),
        ];
        let list = entries(&["10.0.0.0/8".parse().unwrap()], &stored, 100);
        let order: Vec<String> = list.iter().map(|x| x.net.to_string()).collect();
        assert_eq!(
            order,
            ["10.0.0.0/8", "1.0.0.2/32", "1.0.0.3/32", "1.0.0.1/32"]
        );
        assert_eq!(list[0].expires, None);
        assert_eq!(
            list[1].reason,
            "nightly intel severity critical confidence high since 1970-01-01"
        );
    }

    #[test]
    fn plain_comment_keeps_only_safe_characters() {
        assert_eq!(plain_comment("a \"b\"\n$c\\é", 100), "a _b___c__");
        assert_eq!(plain_comment("abcdef", 3), "abc");
    }

    #[test]
    fn a_failed_export_is_reported_counted_and_does_not_stop_the_others() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the export's directory should be: the Check Point export cannot write.
        std::fs::write(dir.path().join("blocker"), "").unwrap();
        let section = ExportSection {
            checkpoint: Some(checkpoint::CheckpointSection {
                path: dir.path().join("blocker/feed.csv"),
                ..Default::default()
            }),
            mikrotik: Some(mikrotik::MikrotikSection {
                path: dir.path().join("ok/list.rsc"),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = counters("checkpoint").unwrap();
        let failed_before = c.failed.load(Ordering::Relaxed);
        let entries = [ExportEntry::configured("192.0.2.0/24".parse().unwrap())];
        let report = publish(&section, &entries, 0);
        assert_eq!(report.failed(), 1);
        assert_eq!(report.outcomes[0].target, "checkpoint");
        assert!(
            report.outcomes[0]
                .error
                .as_deref()
                .unwrap()
                .contains("blocker/feed.csv")
        );
        assert_eq!(report.outcomes[1].error, None);
        assert_eq!(report.outcomes[1].written, 1);
        assert!(dir.path().join("ok/list.rsc").exists());
        assert_eq!(c.failed.load(Ordering::Relaxed), failed_before + 1);
    }

    #[test]
    fn the_section_rejects_unknown_keys_and_names_bad_ones() {
        let s: ExportSection =
            toml::from_str("[fortigate]\npath = \"/tmp/f.txt\"\n[nft]\ntable = \"dns_sensor\"\n")
                .unwrap();
        assert!(s.fortigate.is_some() && s.nft.is_some() && s.ipset.is_none());
        s.validate().unwrap();
        assert!(toml::from_str::<ExportSection>("[fortigate]\npaht = \"x\"\n").is_err());
        assert!(toml::from_str::<ExportSection>("[juniper]\n").is_err());
        let e = toml::from_str::<ExportSection>("[mikrotik]\npath = \"\"\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            e.to_string().contains("blocklist.export.mikrotik.path"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod served_tests {
    use super::*;
    use crate::edl::ListKind;
    use crate::neverblock::NeverBlock;

    fn entries() -> Vec<ExportEntry> {
        vec![
            ExportEntry::configured("203.0.113.0/24".parse().unwrap()),
            ExportEntry {
                net: "45.33.32.156/32".parse().unwrap(),
                expires: Some(2_000),
                reason: "evil \"x\" ; /system reset".into(),
                severity: Some(Severity::High),
                confidence: Some(Confidence::High),
            },
        ]
    }

    /// What each export writes is accepted when served, with every network it blocks.
    #[test]
    fn each_served_format_reads_back_what_its_export_writes() {
        let never = NeverBlock::new(&[], &[]);
        let nets = |v: Vec<(usize, IpNet)>| -> Vec<String> {
            let mut n: Vec<String> = v.into_iter().map(|(_, n)| n.to_string()).collect();
            n.sort();
            n.dedup();
            n
        };
        let want = ["203.0.113.0/24", "45.33.32.156/32"];
        let (f, _) = fortigate::render(&entries(), 1_000, fortigate::MAX_LINES);
        assert_eq!(nets(fortigate::parse(&f).unwrap()), want);
        assert_eq!(ListKind::Fortigate.validate_text(&f, &never), Ok(2));
        let (c, _) = checkpoint::render(&Default::default(), &entries(), 1_000).unwrap();
        assert_eq!(nets(checkpoint::parse(&c).unwrap()), want, "{c}");
        assert_eq!(ListKind::Checkpoint.validate_text(&c, &never), Ok(2));
        let (m, _) = mikrotik::render(&Default::default(), &entries(), 1_000);
        assert_eq!(nets(mikrotik::parse(&m).unwrap()), want, "{m}");
        assert_eq!(ListKind::Mikrotik.validate_text(&m, &never), Ok(2));
    }

    #[test]
    fn served_files_that_do_not_parse_or_list_protected_addresses_are_refused() {
        let never = NeverBlock::new(&[], &[]);
        for (kind, text) in [
            (ListKind::Fortigate, "1.2.3.4\nnot-an-ip\n"),
            (ListKind::Fortigate, "1.2.3.9-1.2.3.1\n"),
            (ListKind::Checkpoint, "x_1,1.2.3.4,IP,high,high,AB\n"),
            (
                ListKind::Checkpoint,
                "x_1,evil.example,Domain,high,high,AB,c\n",
            ),
            (ListKind::Checkpoint, "x_1,2001:db8::1,IP,high,high,AB,c\n"),
            // The router runs what it imports: a second command after the add is refused.
            (
                ListKind::Mikrotik,
                ":do { add list=\"l\" address=1.2.3.4 comment=\"c\" }; /system reset-configuration\n",
            ),
            (ListKind::Mikrotik, "/system reset-configuration\n"),
        ] {
            assert!(
                kind.validate_text(text, &never).is_err(),
                "{kind:?} {text:?}"
            );
        }
        let e = ListKind::Fortigate
            .validate_text("1.2.3.4\nnot-an-ip\n", &never)
            .unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        // A range over a protected address is refused like a subnet.
        let protected = crate::protect::Protected {
            nets: vec![crate::protect::ProtectedNet {
                net: "10.0.0.5/32".parse().unwrap(),
                why: "test".into(),
            }],
            unresolved: Vec::new(),
        };
        let never = NeverBlock::new(&[], &[]).with_rules(
            &protected,
            &crate::overrides::Overrides::default(),
            0,
        );
        for (kind, text) in [
            (ListKind::Fortigate, "10.0.0.1-10.0.0.9\n"),
            (
                ListKind::Checkpoint,
                "x_1,10.0.0.1-10.0.0.9,IP Range,high,high,AB,c\n",
            ),
            (ListKind::Edl, "10.0.0.0/24 comment\n"),
        ] {
            let e = kind.validate_text(text, &never).unwrap_err();
            assert!(e.contains("10.0.0.5"), "{kind:?}: {e}");
        }
    }

    /// `url_path` on an export: checked like the EDL's, distinct from the others, and only with
    /// a server to serve it; each error is one line naming the key.
    #[test]
    fn served_paths_are_valid_distinct_and_need_the_server() {
        let section = |extra: &str| -> crate::config::BlocklistSection {
            toml::from_str(&format!(
                "[edl]\nlisten = \"127.0.0.1:8443\"\nallowed_clients = [\"127.0.0.1\"]\n{extra}"
            ))
            .unwrap()
        };
        section("[export.fortigate]\nurl_path = \"/f.txt\"\n[export.checkpoint]\nurl_path = \"/c.csv\"\n")
            .validate()
            .unwrap();
        section("[export.fortigate]\n").validate().unwrap();
        for (extra, key) in [
            (
                "[export.fortigate]\nurl_path = \"/{x}\"\n",
                "blocklist.export.fortigate.url_path",
            ),
            (
                "[export.checkpoint]\nurl_path = \"/blocklist.txt\"\n",
                "blocklist.export.checkpoint.url_path",
            ),
            (
                "[export.fortigate]\nurl_path = \"/a.txt\"\n[export.mikrotik]\nurl_path = \"/a.txt\"\n",
                "blocklist.export.mikrotik.url_path",
            ),
        ] {
            let s = section(extra);
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = toml::from_str::<crate::config::BlocklistSection>(
            "[export.fortigate]\nurl_path = \"/f.txt\"\n",
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("blocklist.export.fortigate.url_path") && e.contains("listen"),
            "{e}"
        );
        assert!(
            section("[export.fortigate]\nurl_path = \"f.txt\"\n")
                .export
                .validate()
                .is_err()
        );
    }
}
