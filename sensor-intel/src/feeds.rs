//! Local threat feeds: files of malicious domains or IP addresses, answered from memory.
//!
//! Each `[[intel.feeds]]` entry is one [`LocalFeed`], and each feed is its own [`Provider`]
//! (`feed:<name>`): the verdict cache combines providers ("malicious if any provider says so")
//! and keeps one finding per provider, so two feeds listing one name give two findings, each
//! with its own severity and tag. [`LocalFeeds`] holds them all.
//!
//! Domain feeds use the list syntax of [`crate::domainset`] (a listed domain covers its
//! subdomains; `=name` only the name; hosts-file lines accepted). IP feeds hold one address or
//! CIDR per line, IPv4 or IPv6, with `#` comments. Feeds reload like the trusted-domain lists:
//! on SIGHUP and when the file changes; a file that fails to load leaves the previous feed in
//! force.

use std::{
    collections::HashSet,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use futures::{FutureExt as _, future::BoxFuture};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;

use crate::domainset::{DomainSet, LineError, ListError, list_lines};
use crate::{Answers, LookupError, Provider};
use sensor_model::verdict::{Confidence, Finding, Severity};
use sensor_model::{
    error::ConfigError,
    reload::{Reload, ReloadCounters, ReloadError},
};

/// What a feed file lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedKind {
    /// Domain names (plain or hosts-file lines); a listed domain covers its subdomains.
    Domains,
    /// IP addresses and CIDRs, IPv4 and IPv6.
    Ips,
}

/// One `[[intel.feeds]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// Names the feed in findings (`feed:<name>`), tags, logs and metrics: 1-64 of [A-Za-z0-9_-].
    pub name: String,
    pub kind: FeedKind,
    pub path: PathBuf,
    /// Severity of every finding from this feed.
    #[serde(default = "default_severity")]
    pub severity: Severity,
    /// Confidence of every finding from this feed.
    #[serde(default = "default_confidence")]
    pub confidence: Confidence,
    /// How often the file is checked for changes, in milliseconds; 0: only on SIGHUP.
    #[serde(default = "default_reload_interval_ms")]
    pub reload_interval_ms: u64,
}

fn default_severity() -> Severity {
    Severity::High
}

fn default_confidence() -> Confidence {
    Confidence::High
}

fn default_reload_interval_ms() -> u64 {
    2000
}

/// Checks what serde cannot: names valid and distinct (they name providers and metrics).
pub fn validate(feeds: &[FeedConfig]) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for feed in feeds {
        let name = &feed.name;
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::Invalid {
                key: "intel.feeds.name",
                message: format!("{name:?} must be 1-64 characters of [A-Za-z0-9_-]"),
            });
        }
        if !seen.insert(name) {
            return Err(ConfigError::Invalid {
                key: "intel.feeds.name",
                message: format!("{name:?} names two feeds"),
            });
        }
    }
    Ok(())
}

/// A set of IPv4 and IPv6 networks with longest-prefix match.
///
/// One hash set of network addresses per prefix length present, probed from the longest length
/// down: a lookup costs one probe per distinct prefix length in the feed (typically one to three:
/// /32s and a few /24s; never more than 33 or 129), whatever the number of entries. Simpler than
/// a trie crate, no dependency, and as fast for the shapes feeds have.
#[derive(Debug, Clone, Default)]
pub struct IpSet {
    /// By prefix length, longest first.
    v4: Vec<(u8, hashbrown::HashSet<u32>)>,
    v6: Vec<(u8, hashbrown::HashSet<u128>)>,
    len: usize,
}

impl IpSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of distinct networks.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a network (host bits are cleared). IPv4-mapped IPv6 networks are stored as IPv4, so
    /// either spelling of an address finds them.
    pub fn insert(&mut self, net: IpNet) {
        fn add<K: std::hash::Hash + Eq>(
            by_len: &mut Vec<(u8, hashbrown::HashSet<K>)>,
            plen: u8,
            key: K,
        ) -> bool {
            let i = match by_len.binary_search_by(|(l, _)| plen.cmp(l)) {
                Ok(i) => i,
                Err(i) => {
                    by_len.insert(i, (plen, hashbrown::HashSet::default()));
                    i
                }
            };
            by_len[i].1.insert(key)
        }
        let added = match canonical(net) {
            IpNet::V4(n) => add(&mut self.v4, n.prefix_len(), u32::from(n.network())),
            IpNet::V6(n) => add(&mut self.v6, n.prefix_len(), u128::from(n.network())),
        };
        self.len += usize::from(added);
    }

    /// The longest listed network holding `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<IpNet> {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                self.v4.iter().find_map(|(plen, set)| {
                    let net = bits & u32::MAX.checked_shl(32 - u32::from(*plen)).unwrap_or(0);
                    set.contains(&net)
                        .then(|| IpNet::V4(Ipv4Net::new_assert(net.into(), (*plen).min(32))))
                })
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                self.v6.iter().find_map(|(plen, set)| {
                    let net = bits & u128::MAX.checked_shl(128 - u32::from(*plen)).unwrap_or(0);
                    set.contains(&net)
                        .then(|| IpNet::V6(Ipv6Net::new_assert(net.into(), (*plen).min(128))))
                })
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.lookup(ip).is_some()
    }

    /// Adds the entries of an IP list's text; `origin` names it in errors. A network with host
    /// bits set is an error, as in the config: `10.1.2.3/8` is more likely a typo than 10/8.
    pub fn parse_list(&mut self, text: &[u8], origin: &Path) -> Result<usize, ListError> {
        let mut read = 0;
        for (line, content) in list_lines(text) {
            let at_line = |reason: LineError| ListError::Line {
                path: origin.to_owned(),
                line,
                reason,
            };
            let content = content.map_err(at_line)?;
            let mut tokens = content.split_ascii_whitespace();
            let token = tokens.next().unwrap_or_default();
            if let Some(extra) = tokens.next() {
                return Err(at_line(LineError::Extra(extra.to_owned())));
            }
            let net = match token.parse::<IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => {
                    let net = token
                        .parse::<IpNet>()
                        .map_err(|_| at_line(LineError::NotAnAddress(cut(token))))?;
                    if net.trunc() != net {
                        return Err(at_line(LineError::HostBits {
                            text: token.to_owned(),
                            network: net.trunc(),
                        }));
                    }
                    net
                }
            };
            self.insert(net);
            read += 1;
        }
        Ok(read)
    }

    /// Reads an IP list file into the set (see [`Self::parse_list`]).
    pub fn load_file(&mut self, path: &Path) -> Result<usize, ListError> {
        let text = std::fs::read(path).map_err(|source| ListError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.parse_list(&text, path)
    }
}

/// `::ffff:a.b.c.d/(96+n)` is `a.b.c.d/n`.
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.network().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(Ipv4Net::new_assert(v4, (n.prefix_len() - 96).min(32))),
            None => net.trunc(),
        },
        _ => net.trunc(),
    }
}

fn cut(text: &str) -> String {
    text.chars().take(80).collect()
}

/// A feed's entries, swapped whole on reload.
#[derive(Debug)]
enum Entries {
    Domains(DomainSet),
    Ips(IpSet),
}

impl Entries {
    fn len(&self) -> usize {
        match self {
            Self::Domains(s) => s.len(),
            Self::Ips(s) => s.len(),
        }
    }
}

/// One local feed: a [`Provider`] named `feed:<name>` and a [`Reload`]er.
#[derive(Debug)]
pub struct LocalFeed {
    config: FeedConfig,
    /// `feed:<name>`.
    provider: String,
    files: [PathBuf; 1],
    entries: ArcSwap<Entries>,
    counters: ReloadCounters,
    /// Successful loads so far: a consumer that copies the entries (blocking by resolution
    /// lists a domain feed's names in the kernel) re-copies when this moves.
    generation: std::sync::atomic::AtomicU64,
}

impl LocalFeed {
    /// Reads the feed; an error is fatal here, since there is no previous feed to fall back to.
    pub fn load(config: &FeedConfig) -> Result<Self, ListError> {
        let feed = Self {
            provider: format!("feed:{}", config.name),
            files: [config.path.clone()],
            entries: ArcSwap::from_pointee(match config.kind {
                FeedKind::Domains => Entries::Domains(DomainSet::new()),
                FeedKind::Ips => Entries::Ips(IpSet::new()),
            }),
            counters: ReloadCounters::default(),
            generation: Default::default(),
            config: config.clone(),
        };
        feed.reload()?;
        Ok(feed)
    }

    pub fn config(&self) -> &FeedConfig {
        &self.config
    }

    /// Entries in force.
    pub fn len(&self) -> usize {
        self.entries.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-reads the file and swaps the new entries in; on error the previous ones stay in force.
    /// Logs one line and counts the outcome either way. Returns the number of entries.
    pub fn reload(&self) -> Result<usize, ListError> {
        let started = Instant::now();
        let path = &self.config.path;
        let loaded = match self.config.kind {
            FeedKind::Domains => {
                let mut set = DomainSet::new();
                set.load_file(path).map(|_| {
                    set.shrink_to_fit();
                    Entries::Domains(set)
                })
            }
            FeedKind::Ips => {
                let mut set = IpSet::new();
                set.load_file(path).map(|_| Entries::Ips(set))
            }
        };
        let result = loaded.map(|entries| {
            let n = entries.len();
            self.entries.store(Arc::new(entries));
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::Release);
            n
        });
        self.counters.record(&self.provider, started, &result);
        result
    }

    pub fn counters(&self) -> &ReloadCounters {
        &self.counters
    }

    /// Loads so far (see the field): read it before [`Self::domains`] and a change between the
    /// two is caught at the next comparison.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A domain feed's entries (name and kind), in no particular order; `None` for IP feeds.
    pub fn domains(&self) -> Option<Vec<crate::domainset::Pattern>> {
        match &**self.entries.load() {
            Entries::Domains(set) => Some(
                set.iter()
                    .map(|m| crate::domainset::Pattern {
                        name: m.name.to_owned(),
                        kind: m.kind,
                    })
                    .collect(),
            ),
            Entries::Ips(_) => None,
        }
    }

    fn finding(&self) -> Finding {
        Finding {
            provider: self.provider.clone(),
            malicious: true,
            severity: Some(self.config.severity),
            confidence: Some(self.config.confidence),
            judgments: Vec::new(),
            tags: vec![self.config.name.clone()],
            permalink: None,
            ip_context: None,
        }
    }

    /// The entry covering `name` (a listed domain covers its subdomains; `=name` only itself),
    /// in entry syntax; `None` for IP feeds.
    pub fn matched_domain(&self, name: &str) -> Option<String> {
        match &**self.entries.load() {
            Entries::Domains(set) => set.lookup(name).map(|m| m.to_string()),
            Entries::Ips(_) => None,
        }
    }

    /// The longest listed network holding `ip`; `None` for domain feeds.
    pub fn matched_ip(&self, ip: IpAddr) -> Option<IpNet> {
        match &**self.entries.load() {
            Entries::Ips(set) => set.lookup(ip),
            Entries::Domains(_) => None,
        }
    }

    /// The finding for `name`, if this feed lists it. Synchronous: for callers without a runtime.
    pub fn match_domain(&self, name: &str) -> Option<Finding> {
        let hit = match &**self.entries.load() {
            Entries::Domains(set) => set.contains(name),
            Entries::Ips(_) => false,
        };
        hit.then(|| self.finding())
    }

    /// The finding for `ip`, if this feed lists it or a network holding it.
    pub fn match_ip(&self, ip: IpAddr) -> Option<Finding> {
        self.matched_ip(ip).map(|_| self.finding())
    }
}

impl Provider for LocalFeed {
    fn name(&self) -> &str {
        &self.provider
    }
    /// Answers come from memory: any batch size will do.
    fn max_batch(&self) -> usize {
        usize::MAX
    }
    fn is_local(&self) -> bool {
        true
    }
    fn lookup_domains<'a>(
        &'a self,
        names: &'a [String],
    ) -> BoxFuture<'a, Result<Answers<String>, LookupError>> {
        let answers = names
            .iter()
            .filter_map(|n| self.match_domain(n).map(|f| (n.clone(), f)))
            .collect();
        futures::future::ready(Ok(answers)).boxed()
    }
    fn lookup_ips<'a>(
        &'a self,
        ips: &'a [IpAddr],
    ) -> BoxFuture<'a, Result<Answers<IpAddr>, LookupError>> {
        let answers = ips
            .iter()
            .filter_map(|&ip| self.match_ip(ip).map(|f| (ip, f)))
            .collect();
        futures::future::ready(Ok(answers)).boxed()
    }
}

impl Reload for LocalFeed {
    fn name(&self) -> &str {
        &self.provider
    }
    fn files(&self) -> &[PathBuf] {
        &self.files
    }
    fn poll_interval(&self) -> Option<Duration> {
        (self.config.reload_interval_ms > 0)
            .then(|| Duration::from_millis(self.config.reload_interval_ms))
    }
    fn reload(&self) -> Result<usize, ReloadError> {
        Ok(LocalFeed::reload(self)?)
    }
}

/// Every configured local feed.
#[derive(Debug, Default)]
pub struct LocalFeeds {
    feeds: Vec<Arc<LocalFeed>>,
}

impl LocalFeeds {
    /// Validates the entries and reads every feed; the first error is returned.
    pub fn load(configs: &[FeedConfig]) -> Result<Self, FeedsError> {
        validate(configs)?;
        let feeds = configs
            .iter()
            .map(|c| LocalFeed::load(c).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Self { feeds })
    }

    pub fn feeds(&self) -> &[Arc<LocalFeed>] {
        &self.feeds
    }

    /// One provider per feed, for the verdict cache.
    pub fn providers(&self) -> Vec<Arc<dyn Provider>> {
        self.feeds
            .iter()
            .map(|f| f.clone() as Arc<dyn Provider>)
            .collect()
    }

    /// One reloader per feed, for a [`sensor_model::reload::Watcher`].
    pub fn reloaders(&self) -> Vec<Arc<dyn Reload>> {
        self.feeds
            .iter()
            .map(|f| f.clone() as Arc<dyn Reload>)
            .collect()
    }

    /// The findings of every feed listing `name` (empty: no feed does).
    pub fn match_domain(&self, name: &str) -> Vec<Finding> {
        self.feeds
            .iter()
            .filter_map(|f| f.match_domain(name))
            .collect()
    }

    /// The findings of every feed listing `ip`.
    pub fn match_ip(&self, ip: IpAddr) -> Vec<Finding> {
        self.feeds.iter().filter_map(|f| f.match_ip(ip)).collect()
    }
}

/// Why the feeds could not be loaded at start-up.
#[derive(Debug, thiserror::Error)]
pub enum FeedsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    List(#[from] ListError),
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    fn feed_config(name: &str, kind: FeedKind, path: &Path) -> FeedConfig {
        FeedConfig {
            name: name.into(),
            kind,
            path: path.into(),
            severity: Severity::High,
            confidence: Confidence::High,
            reload_interval_ms: 0,
        }
    }

    fn ips(text: &str) -> Result<IpSet, ListError> {
        let mut s = IpSet::new();
        s.parse_list(text.as_bytes(), Path::new("ips.txt"))
            .map(|_| s)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn config_entries_have_documented_defaults() {
        #[derive(Deserialize)]
        struct Intel {
            feeds: Vec<FeedConfig>,
        }
        let t: Intel = toml::from_str(
            "[[feeds]]\nname = \"c2\"\nkind = \"domains\"\npath = \"/x\"\n\
             [[feeds]]\nname = \"scanners\"\nkind = \"ips\"\npath = \"/y\"\n\
             severity = \"medium\"\nconfidence = \"low\"\nreload_interval_ms = 0\n",
        )
        .unwrap();
        let mut defaults = feed_config("c2", FeedKind::Domains, Path::new("/x"));
        defaults.reload_interval_ms = 2000;
        assert_eq!(t.feeds[0], defaults);
        assert_eq!(
            (t.feeds[1].severity, t.feeds[1].confidence),
            (Severity::Medium, Confidence::Low)
        );
        validate(&t.feeds).unwrap();
        let err =
            toml::from_str::<Intel>("[[feeds]]\nname = \"a\"\nkind = \"urls\"\npath = \"/x\"\n");
        assert!(err.is_err());
        let err = toml::from_str::<Intel>(
            "[[feeds]]\nname = \"a\"\nkind = \"ips\"\npath = \"/x\"\nsevrity = \"low\"\n",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("sevrity"), "{err}");
        let twice = [t.feeds[0].clone(), t.feeds[0].clone()];
        let err = validate(&twice).unwrap_err().to_string();
        assert!(
            err.contains("intel.feeds.name") && err.contains("two feeds"),
            "{err}"
        );
        let bad = [feed_config("a b", FeedKind::Ips, Path::new("/x"))];
        assert!(validate(&bad).is_err());
    }

    #[test]
    fn ip_lists_match_addresses_and_longest_networks() {
        let s = ips("# scanners\n\
                     203.0.113.7\n\
                     198.51.100.0/24  # a whole range\n\
                     198.51.100.128/25\n\
                     2001:db8::1\n\
                     2001:db8:1::/48\n\
                     ::ffff:192.0.2.0/120\n")
        .unwrap();
        assert_eq!(s.len(), 6);
        assert_eq!(
            s.lookup(ip("203.0.113.7")),
            Some("203.0.113.7/32".parse().unwrap())
        );
        assert!(!s.contains(ip("203.0.113.8")));
        assert_eq!(
            s.lookup(ip("198.51.100.1")),
            Some("198.51.100.0/24".parse().unwrap())
        );
        assert_eq!(
            s.lookup(ip("198.51.100.200")),
            Some("198.51.100.128/25".parse().unwrap())
        );
        assert!(s.contains(ip("2001:db8::1")));
        assert!(!s.contains(ip("2001:db8::2")));
        assert_eq!(
            s.lookup(ip("2001:db8:1:ffff::9")),
            Some("2001:db8:1::/48".parse().unwrap())
        );
        // Mapped and plain spellings find each other.
        assert!(s.contains(ip("192.0.2.55")));
        assert!(s.contains(ip("::ffff:203.0.113.7")));
        assert!(!s.contains(ip("::1")));
        let all = ips("0.0.0.0/0\n::/0\n").unwrap();
        assert!(all.contains(ip("8.8.8.8")) && all.contains(ip("2606:4700::1111")));
    }

    #[test]
    fn bad_ip_lines_are_named_by_file_and_number() {
        for (text, line, want) in [
            (
                "1.2.3.4\n10.1.2.3/8\n",
                2,
                "host bits set (did you mean 10.0.0.0/8?)",
            ),
            (
                "1.2.3.4\n\n# x\nevil.example\n",
                4,
                "not an IP address or CIDR",
            ),
            ("1.2.3.4 5.6.7.8\n", 1, "\"5.6.7.8\" after it"),
            ("1.2.3.4/33\n", 1, "not an IP address"),
        ] {
            let err = ips(text).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("list ips.txt line {line}: ")) && err.contains(want),
                "{text:?}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn feeds_answer_as_providers_with_their_name_and_grades() {
        let dir = tempfile::tempdir().unwrap();
        let domains = dir.path().join("c2.txt");
        std::fs::write(
            &domains,
            "evil.example\n0.0.0.0 ads.bad.example\n=only.example\n",
        )
        .unwrap();
        let addrs = dir.path().join("scanners.txt");
        std::fs::write(&addrs, "203.0.113.0/24\n").unwrap();
        let mut c2 = feed_config("c2", FeedKind::Domains, &domains);
        c2.severity = Severity::Critical;
        let mut scanners = feed_config("scanners", FeedKind::Ips, &addrs);
        scanners.confidence = Confidence::Medium;
        let both = feed_config("more-c2", FeedKind::Domains, &domains);
        let feeds = LocalFeeds::load(&[c2, scanners, both]).unwrap();

        let providers = feeds.providers();
        let names: Vec<_> = providers.iter().map(|p| p.name().to_owned()).collect();
        assert_eq!(names, ["feed:c2", "feed:scanners", "feed:more-c2"]);
        assert!(
            providers
                .iter()
                .all(|p| p.is_local() && p.max_batch() == usize::MAX)
        );

        let asked: Vec<String> = [
            "www.evil.example",
            "notevil.example",
            "x.only.example",
            "only.example",
        ]
        .map(String::from)
        .into();
        let answers = providers[0].lookup_domains(&asked).await.unwrap();
        assert_eq!(answers.len(), 2, "{answers:?}");
        let f = &answers["www.evil.example"];
        assert_eq!(
            f,
            &Finding {
                provider: "feed:c2".into(),
                malicious: true,
                severity: Some(Severity::Critical),
                confidence: Some(Confidence::High),
                judgments: vec![],
                tags: vec!["c2".into()],
                permalink: None,
                ip_context: None,
            }
        );
        assert!(answers.contains_key("only.example"));
        assert!(
            providers[1]
                .lookup_domains(&asked)
                .await
                .unwrap()
                .is_empty()
        );

        let answers = providers[1]
            .lookup_ips(&[ip("203.0.113.9"), ip("198.51.100.1")])
            .await
            .unwrap();
        assert_eq!(answers.len(), 1);
        assert_eq!(
            answers[&ip("203.0.113.9")].confidence,
            Some(Confidence::Medium)
        );
        assert!(
            providers[0]
                .lookup_ips(&[ip("203.0.113.9")])
                .await
                .unwrap()
                .is_empty()
        );

        // Synchronous matches, every feed that lists the name.
        let found = feeds.match_domain("a.ads.bad.example");
        let by: Vec<_> = found.iter().map(|f| f.provider.as_str()).collect();
        assert_eq!(by, ["feed:c2", "feed:more-c2"]);
        assert!(feeds.match_domain("bad.example").is_empty());
        assert_eq!(feeds.match_ip(ip("203.0.113.1")).len(), 1);
        assert_eq!(
            feeds.feeds()[0].matched_domain("x.evil.example").as_deref(),
            Some("evil.example")
        );
        assert_eq!(
            feeds.feeds()[1].matched_ip(ip("203.0.113.1")),
            Some("203.0.113.0/24".parse().unwrap())
        );
    }

    #[test]
    fn a_bad_feed_file_keeps_the_previous_feed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scanners.txt");
        std::fs::write(&path, "203.0.113.7\n").unwrap();
        let feed = LocalFeed::load(&feed_config("s", FeedKind::Ips, &path)).unwrap();
        std::fs::write(&path, "203.0.113.8\nnonsense\n").unwrap();
        let err = feed.reload().unwrap_err().to_string();
        assert!(err.contains("scanners.txt line 2"), "{err}");
        assert!(feed.match_ip(ip("203.0.113.7")).is_some());
        assert!(feed.match_ip(ip("203.0.113.8")).is_none());
        assert_eq!(feed.counters().failed.load(Ordering::Relaxed), 1);
        std::fs::write(&path, "203.0.113.8\n").unwrap();
        assert_eq!(feed.reload().unwrap(), 1);
        assert!(feed.match_ip(ip("203.0.113.8")).is_some());
        assert!(feed.match_ip(ip("203.0.113.7")).is_none());

        // At start-up there is nothing to fall back to: an error.
        std::fs::write(&path, "10.0.0.1/8\n").unwrap();
        let err = LocalFeeds::load(&[feed_config("s", FeedKind::Ips, &path)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1") && err.contains("host bits"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_feed_file_is_picked_up_by_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c2.txt");
        std::fs::write(&path, "old.example\n").unwrap();
        let mut config = feed_config("c2", FeedKind::Domains, &path);
        config.reload_interval_ms = 10;
        let feeds = LocalFeeds::load(&[config]).unwrap();
        let watcher = sensor_model::reload::Watcher::new(feeds.reloaders());
        let task = tokio::spawn(watcher.run(futures::stream::pending()));
        let tmp = dir.path().join("c2.tmp");
        std::fs::write(&tmp, "new.example\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while feeds.match_domain("x.new.example").is_empty() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the reload"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(feeds.match_domain("old.example").is_empty());
        task.abort();
    }
}
