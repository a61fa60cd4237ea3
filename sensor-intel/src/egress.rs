//! What may leave the building: which names are sent to a remote intel provider, and how many.
//!
//! A query name tells whoever receives it what the client is doing. Names under special-use and
//! internal zones (mDNS `.local`, `home.arpa`, reverse lookups, the company's own domains) say
//! something about the inside of the network and nothing an outside provider can judge, so they
//! are never sent; each skip is counted by reason. And since every new name costs provider quota,
//! one client (a malware generating random subdomains, a scanner) could spend the whole day's
//! quota alone: each client gets a daily budget of new names, beyond which its names are not
//! sent (counted) while its events still go out, marked `not_looked_up`.
//!
//! Local feeds answer from memory and send nothing: they are still asked about every name.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::Deserialize;

use std::sync::Arc;

use sensor_model::{error::ConfigError, verdict::Assessment};

use crate::domainset::{DomainSet, Pattern};

/// The IANA Special-Use Domain Names registry
/// (<https://www.iana.org/assignments/special-use-domain-names/>, RFC 6761 and its successors),
/// read 2026-12-05, without the reverse zones (see [`REVERSE_ZONES`]), plus `internal`, which
/// ICANN reserved for private use in 2024 (not in the registry, but meant for exactly this).
pub const SPECIAL_USE_ZONES: &[&str] = &[
    "alt",           // RFC 9476
    "6tisch.arpa",   // RFC 9031
    "home.arpa",     // RFC 8375
    "ipv4only.arpa", // RFC 8880
    "resolver.arpa", // RFC 9462
    "service.arpa",  // RFC 9665
    "example",       // RFC 6761
    "example.com",
    "example.net",
    "example.org",
    "invalid",   // RFC 6761
    "local",     // RFC 6762 (multicast DNS)
    "localhost", // RFC 6761
    "onion",     // RFC 7686
    "test",      // RFC 6761
    "internal",  // ICANN, 2024
];

/// Reverse-mapping zones: the registry lists the private and link-local parts of these; every
/// reverse lookup names an address a client talks to, and no domain-intel provider judges them.
pub const REVERSE_ZONES: &[&str] = &["in-addr.arpa", "ip6.arpa"];

/// `[intel.egress]`: what is never sent to a remote provider, and each client's daily budget.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EgressSection {
    /// Never send names under the special-use zones ([`SPECIAL_USE_ZONES`]) or the reverse
    /// zones (`in-addr.arpa`, `ip6.arpa`). Default true.
    pub skip_special_use: bool,
    /// The company's own zones (suffixes, list-file syntax: `corp.example.com`; `=name` for one
    /// exact name): never sent. Default none.
    pub internal_domains: Vec<String>,
    /// New (uncached) names one client may send to remote providers per provider day (IPv6
    /// clients counted per /64). Beyond it the client's new names are not sent (counted
    /// `skipped_client_budget`) and its events go out with the verdict `not_looked_up`.
    /// Default: a tenth of `intel.threatbook.limits.daily_quota` (even at one name per request
    /// no client can use more than a tenth of the quota), 1000 without a quota; 0: no budget.
    pub client_new_names_per_day: Option<u64>,
    /// Clients whose budget is tracked at once; beyond it the names of further clients are not
    /// sent (counted `skipped_budget_table_full`) until the provider's day turns. Default 100000.
    pub max_budget_clients: usize,
}

impl Default for EgressSection {
    fn default() -> Self {
        Self {
            skip_special_use: true,
            internal_domains: Vec::new(),
            client_new_names_per_day: None,
            max_budget_clients: 100_000,
        }
    }
}

/// The budget without a quota to derive it from.
pub const DEFAULT_CLIENT_BUDGET: u64 = 1000;

impl EgressSection {
    /// Checks the domains; errors name the key and the entry.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for d in &self.internal_domains {
            Pattern::parse(d).map_err(|e| ConfigError::Invalid {
                key: "intel.egress.internal_domains",
                message: format!("{d:?}: {e}"),
            })?;
        }
        if self.max_budget_clients == 0 {
            return Err(ConfigError::Invalid {
                key: "intel.egress.max_budget_clients",
                message: "must be greater than 0".into(),
            });
        }
        Ok(())
    }

    /// The budget in force: the configured one, or derived from the provider's daily quota.
    pub fn client_budget(&self, daily_quota: u64) -> u64 {
        match self.client_new_names_per_day {
            Some(n) => n,
            None if daily_quota > 0 => (daily_quota / 10).max(1),
            None => DEFAULT_CLIENT_BUDGET,
        }
    }
}

/// Why a name was not sent. A fixed set: these are metric names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    SpecialUse,
    Reverse,
    Internal,
    ClientBudget,
    BudgetTableFull,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SpecialUse => "special_use",
            Self::Reverse => "reverse",
            Self::Internal => "internal",
            Self::ClientBudget => "client_budget",
            Self::BudgetTableFull => "budget_table_full",
        }
    }

    /// Name-based skips hold for every client and every time; budget skips do not.
    pub fn is_private_name(self) -> bool {
        matches!(self, Self::SpecialUse | Self::Reverse | Self::Internal)
    }
}

/// Skips by reason, surfaced with the enrichment counters.
#[derive(Debug, Default)]
pub struct EgressCounters {
    pub special_use: AtomicU64,
    pub reverse: AtomicU64,
    pub internal: AtomicU64,
    pub client_budget: AtomicU64,
    pub budget_table_full: AtomicU64,
}

impl EgressCounters {
    fn of(&self, s: Skip) -> &AtomicU64 {
        match s {
            Skip::SpecialUse => &self.special_use,
            Skip::Reverse => &self.reverse,
            Skip::Internal => &self.internal,
            Skip::ClientBudget => &self.client_budget,
            Skip::BudgetTableFull => &self.budget_table_full,
        }
    }

    pub fn count(&self, s: Skip) {
        self.of(s).fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, s: Skip) -> u64 {
        self.of(s).load(Ordering::Relaxed)
    }

    /// `(metric suffix, value)` pairs: `skipped_<reason>`.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("skipped_special_use", self.get(Skip::SpecialUse)),
            ("skipped_reverse", self.get(Skip::Reverse)),
            ("skipped_internal", self.get(Skip::Internal)),
            ("skipped_client_budget", self.get(Skip::ClientBudget)),
            ("skipped_budget_table_full", self.get(Skip::BudgetTableFull)),
        ]
    }
}

/// The name rules: which zones are never sent.
#[derive(Debug, Clone, Default)]
pub struct PrivateZones {
    /// Every zone below in one set: the one lookup a public name costs (most names are public;
    /// three lookups measured about 120 ns more per event than none).
    any: DomainSet,
    special_use: DomainSet,
    reverse: DomainSet,
    internal: DomainSet,
}

impl PrivateZones {
    pub fn new(cfg: &EgressSection) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let mut z = Self::default();
        let add = |set: &mut DomainSet, key: &'static str, text: &str| {
            let p = Pattern::parse(text).map_err(|e| ConfigError::Invalid {
                key,
                message: format!("{text:?}: {e}"),
            })?;
            set.insert(&p).map_err(|e| ConfigError::Invalid {
                key,
                message: e.to_string(),
            })
        };
        if cfg.skip_special_use {
            for zone in SPECIAL_USE_ZONES {
                add(&mut z.special_use, "intel.egress.skip_special_use", zone)?;
            }
            for zone in REVERSE_ZONES {
                add(&mut z.reverse, "intel.egress.skip_special_use", zone)?;
            }
        }
        for d in &cfg.internal_domains {
            add(&mut z.internal, "intel.egress.internal_domains", d)?;
        }
        for (set, key) in [
            (&z.special_use, "intel.egress.skip_special_use"),
            (&z.reverse, "intel.egress.skip_special_use"),
            (&z.internal, "intel.egress.internal_domains"),
        ] {
            for m in set.iter() {
                add(&mut z.any, key, &m.to_string())?;
            }
        }
        Ok(z)
    }

    /// Why `name` must not be sent, if it must not: label boundaries, any case, with or without
    /// the trailing dot (`xlocal` is not under `local`; `Printer.LOCAL.` is).
    pub fn check(&self, name: &str) -> Option<Skip> {
        if !self.any.contains(name) {
            return None;
        }
        if self.reverse.contains(name) {
            Some(Skip::Reverse)
        } else if self.special_use.contains(name) {
            Some(Skip::SpecialUse)
        } else if self.internal.contains(name) {
            Some(Skip::Internal)
        } else {
            None
        }
    }
}

/// The egress rules in force: built once from `[intel.egress]`, shared by the enricher and the
/// metrics.
#[derive(Debug)]
pub struct Egress {
    pub zones: PrivateZones,
    pub budget: ClientBudget,
    pub counters: Arc<EgressCounters>,
    /// One shared assessment per reason: a skipped event allocates nothing.
    assessments: [Arc<Assessment>; 5],
}

impl Egress {
    /// `daily_quota` and `utc_offset_hours` are the remote provider's (0 and 8 without one).
    pub fn new(
        cfg: &EgressSection,
        daily_quota: u64,
        utc_offset_hours: i8,
    ) -> Result<Self, ConfigError> {
        let all = [
            Skip::SpecialUse,
            Skip::Reverse,
            Skip::Internal,
            Skip::ClientBudget,
            Skip::BudgetTableFull,
        ];
        Ok(Self {
            zones: PrivateZones::new(cfg)?,
            budget: ClientBudget::new(
                cfg.client_budget(daily_quota),
                cfg.max_budget_clients,
                utc_offset_hours,
            ),
            counters: Arc::default(),
            assessments: all.map(|s| Arc::new(Assessment::not_looked_up(s.as_str()))),
        })
    }

    /// The `not_looked_up` assessment for `skip`.
    pub fn assessment(&self, skip: Skip) -> Arc<Assessment> {
        self.assessments[skip as usize].clone()
    }
}

/// Each client's count of new names sent in the provider's current day.
#[derive(Debug)]
pub struct ClientBudget {
    per_day: u64,
    max_clients: usize,
    /// Seconds east of UTC where the provider's day (and quota) turns.
    utc_offset_secs: i64,
    state: Mutex<BudgetState>,
}

#[derive(Debug, Default)]
struct BudgetState {
    day: i64,
    used: HashMap<ClientKey, u64>,
}

/// IPv4 clients by address; IPv6 clients by /64, since one host may hold a whole /64 and
/// privacy addresses rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Self::V4(u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Self::V4(u32::from(v4)),
                None => Self::V6((u128::from(a) >> 64) as u64),
            },
        }
    }
}

impl ClientBudget {
    /// `per_day == 0`: no budget (every call is allowed).
    pub fn new(per_day: u64, max_clients: usize, utc_offset_hours: i8) -> Self {
        Self {
            per_day,
            max_clients: max_clients.max(1),
            utc_offset_secs: i64::from(utc_offset_hours) * 3600,
            state: Mutex::default(),
        }
    }

    pub fn per_day(&self) -> u64 {
        self.per_day
    }

    /// Takes one new name from `client`'s budget at `unix_secs`; `Err` says why not.
    pub fn take(&self, client: IpAddr, unix_secs: i64) -> Result<(), Skip> {
        if self.per_day == 0 {
            return Ok(());
        }
        let day = (unix_secs + self.utc_offset_secs).div_euclid(86_400);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.day != day {
            st.day = day;
            st.used.clear();
        }
        let full = st.used.len() >= self.max_clients;
        let key = ClientKey::from(client);
        match st.used.get_mut(&key) {
            Some(n) if *n >= self.per_day => Err(Skip::ClientBudget),
            Some(n) => {
                *n += 1;
                Ok(())
            }
            None if full => Err(Skip::BudgetTableFull),
            None => {
                st.used.insert(key, 1);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones(internal: &[&str]) -> PrivateZones {
        PrivateZones::new(&EgressSection {
            internal_domains: internal.iter().map(|s| s.to_string()).collect(),
            ..EgressSection::default()
        })
        .unwrap()
    }

    #[test]
    fn special_use_and_reverse_names_match_on_label_boundaries() {
        let z = zones(&["corp.example.cn"]);
        for (name, want) in [
            ("printer.local", Some(Skip::SpecialUse)),
            ("Printer.LOCAL.", Some(Skip::SpecialUse)),
            ("local", Some(Skip::SpecialUse)),
            ("nas.home.arpa", Some(Skip::SpecialUse)),
            ("db.internal", Some(Skip::SpecialUse)),
            ("x.onion", Some(Skip::SpecialUse)),
            ("a.b.test", Some(Skip::SpecialUse)),
            ("localhost", Some(Skip::SpecialUse)),
            ("_dns.resolver.arpa", Some(Skip::SpecialUse)),
            ("www.example.com", Some(Skip::SpecialUse)),
            ("4.3.2.10.in-addr.arpa", Some(Skip::Reverse)),
            ("8.8.8.8.IN-ADDR.ARPA.", Some(Skip::Reverse)),
            (
                "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.0.0.0.0.1.2.3.4.ip6.arpa",
                Some(Skip::Reverse),
            ),
            ("mail.corp.example.cn", Some(Skip::Internal)),
            ("CORP.example.cn.", Some(Skip::Internal)),
            // Not on a label boundary, or a real public name.
            ("xlocal", None),
            ("local.example.cn", None),
            ("notcorp.example.cn", None),
            ("myinternal.com", None),
            ("arpa", None),
            ("www.baidu.com", None),
            ("in-addr.arpa.evil.com", None),
        ] {
            assert_eq!(z.check(name), want, "{name}");
        }
    }

    #[test]
    fn special_use_can_be_turned_off_but_internal_domains_stay() {
        let z = PrivateZones::new(&EgressSection {
            skip_special_use: false,
            internal_domains: vec!["corp.example.cn".into()],
            ..EgressSection::default()
        })
        .unwrap();
        assert_eq!(z.check("printer.local"), None);
        assert_eq!(z.check("a.corp.example.cn"), Some(Skip::Internal));
    }

    #[test]
    fn a_bad_internal_domain_names_the_key() {
        let e = EgressSection {
            internal_domains: vec!["bad name!".into()],
            ..EgressSection::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("intel.egress.internal_domains"), "{e}");
        assert!(e.contains("bad name!"), "{e}");
    }

    #[test]
    fn budget_default_follows_the_quota() {
        let s = EgressSection::default();
        assert_eq!(s.client_budget(10_000), 1_000);
        assert_eq!(s.client_budget(5), 1);
        assert_eq!(s.client_budget(0), DEFAULT_CLIENT_BUDGET);
        let s = EgressSection {
            client_new_names_per_day: Some(7),
            ..s
        };
        assert_eq!(s.client_budget(10_000), 7);
    }

    #[test]
    fn each_client_has_its_own_budget_per_provider_day() {
        let b = ClientBudget::new(3, 10, 8);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let c: IpAddr = "10.0.0.2".parse().unwrap();
        // 2026-12-05 10:00 UTC = 18:00 in China: the provider's day ends at 16:00 UTC.
        let t = 1_796_551_200;
        for _ in 0..3 {
            b.take(a, t).unwrap();
        }
        assert_eq!(b.take(a, t), Err(Skip::ClientBudget));
        b.take(c, t).unwrap();
        // Still the provider's day at 15:59 UTC; a new one at 16:00 UTC.
        assert_eq!(b.take(a, t + 6 * 3600 - 1), Err(Skip::ClientBudget));
        b.take(a, t + 6 * 3600).unwrap();
    }

    #[test]
    fn ipv6_clients_share_a_budget_per_64_and_the_table_is_bounded() {
        let b = ClientBudget::new(2, 2, 0);
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        b.take(x, 0).unwrap();
        b.take(y, 0).unwrap();
        assert_eq!(b.take(x, 0), Err(Skip::ClientBudget));
        b.take("10.0.0.1".parse().unwrap(), 0).unwrap();
        assert_eq!(
            b.take("10.0.0.2".parse().unwrap(), 0),
            Err(Skip::BudgetTableFull)
        );
        // No budget at all.
        let open = ClientBudget::new(0, 1, 0);
        for i in 0..10u8 {
            open.take(IpAddr::from([10, 0, 0, i]), 0).unwrap();
        }
    }
}
