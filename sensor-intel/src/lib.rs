//! Threat intelligence: what providers say about a name or an address, and the trait they share.
//!
//! Depends on `sensor-model` only among the workspace's crates (the verdict types live there so
//! the outputs can read them without this crate's providers); never on the kernel crate, the
//! outputs or the nightly job.
//!
//! Stages: the trusted-domain filter ([`crate::trust`]) runs first; names that pass are looked up
//! through the verdict cache ([`cache`]), which batches misses per provider ([`batch`]) and combines
//! what every provider said into one [`Assessment`].

use std::{collections::HashMap, fmt, net::IpAddr};

use futures::future::BoxFuture;
use sensor_model::verdict::Finding;
use serde::Deserialize;

use sensor_model::error::ConfigError;

use crate::enrich::{EnrichSettings, TrustedEvents};

pub mod batch;
pub mod cache;
pub mod domainset;
pub mod egress;
pub mod enrich;
pub mod feeds;
pub mod inventory;
pub mod setup;
pub mod threatbook;
pub mod trust;

/// `[intel]`: providers, the verdict cache, and how events wait for verdicts. Without a provider
/// (no `[intel.threatbook]`, no `[[intel.feeds]]`) events carry no verdict.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IntelSection {
    /// Queries for trusted names (`[trust]`): `drop` (counted, not written: the seed's Logstash
    /// did this) or `keep` (written with the verdict `trusted`, never looked up).
    pub trusted_events: TrustedEvents,
    /// Events held while their name is looked up; beyond it events go on as `unknown` (counted)
    /// and the name is checked later, so the ring-buffer reader never waits.
    pub max_pending_events: usize,
    /// Longest an event waits for its verdict before it goes on as `unknown`.
    pub max_wait_ms: u64,
    /// How often names that got `unknown` are looked up again while a provider is reachable; a
    /// malicious answer then still alerts for every client that asked.
    pub recheck_secs: u64,
    /// Names remembered for that re-check; beyond it new ones are counted and forgotten.
    pub max_deferred_names: usize,
    /// `[intel.cache]`: verdict lifetimes and capacity.
    pub cache: cache::CacheSection,
    /// `[intel.threatbook]`: the ThreatBook v3 cloud API (off unless the section is present).
    pub threatbook: Option<threatbook::ThreatBookSection>,
    /// `[[intel.feeds]]`: local lists of malicious domains or IPs.
    pub feeds: Vec<feeds::FeedConfig>,
    /// `[intel.egress]`: names never sent to a remote provider, and each client's daily budget
    /// of new names.
    pub egress: egress::EgressSection,
}

impl Default for IntelSection {
    fn default() -> Self {
        Self {
            trusted_events: TrustedEvents::Drop,
            max_pending_events: 65_536,
            max_wait_ms: 10_000,
            recheck_secs: 30,
            max_deferred_names: 100_000,
            cache: cache::CacheSection::default(),
            threatbook: None,
            feeds: Vec::new(),
            egress: egress::EgressSection::default(),
        }
    }
}

impl IntelSection {
    /// True when some provider is configured, so events carry verdicts.
    pub fn enabled(&self) -> bool {
        self.threatbook.is_some() || !self.feeds.is_empty()
    }

    pub fn enrich_settings(&self) -> EnrichSettings {
        EnrichSettings {
            trusted_events: self.trusted_events,
            max_pending_events: self.max_pending_events,
            max_wait_ms: self.max_wait_ms,
            recheck_secs: self.recheck_secs,
            max_deferred_names: self.max_deferred_names,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |key, v: u64| {
            if v == 0 {
                Err(ConfigError::Invalid {
                    key,
                    message: "must be greater than 0".into(),
                })
            } else {
                Ok(())
            }
        };
        positive("intel.max_pending_events", self.max_pending_events as u64)?;
        positive("intel.max_wait_ms", self.max_wait_ms)?;
        positive("intel.recheck_secs", self.recheck_secs)?;
        positive("intel.cache.capacity", self.cache.capacity)?;
        positive(
            "intel.cache.malicious_ttl_secs",
            self.cache.malicious_ttl_secs,
        )?;
        positive("intel.cache.clean_ttl_secs", self.cache.clean_ttl_secs)?;
        positive("intel.cache.unknown_ttl_secs", self.cache.unknown_ttl_secs)?;
        if let Some(tb) = &self.threatbook {
            tb.validate()?;
        }
        self.egress.validate()?;
        feeds::validate(&self.feeds)
    }
}

/// Why a lookup gave no answer. Messages never hold the request URL (the API key sits in its
/// query string), only the provider's name and code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The key, the account or the calling IP is refused (ThreatBook `-1`): retrying will not help
    /// until an operator acts.
    #[error("{provider}: access refused (key, account or source IP): {message}")]
    Access { provider: String, message: String },
    /// A request the provider calls malformed (`-2`, `-3`): a bug or an API change.
    #[error("{provider}: request rejected (code {code}): {message}")]
    Request {
        provider: String,
        code: i64,
        message: String,
    },
    /// Frequency or quota limit (`-4`), or our own daily quota is used up: back off.
    #[error("{provider}: rate or quota limit: {message}")]
    RateLimited { provider: String, message: String },
    /// The provider failed (`-5`, HTTP 5xx): retry later.
    #[error("{provider}: server error: {message}")]
    Server { provider: String, message: String },
    #[error("{provider}: no answer within {millis} ms")]
    Timeout { provider: String, millis: u64 },
    /// Connection refused, reset, TLS, ... (the URL is stripped).
    #[error("{provider}: transport error: {message}")]
    Transport { provider: String, message: String },
    /// The answer did not have the documented shape.
    #[error("{provider}: unexpected answer: {message}")]
    Protocol { provider: String, message: String },
    /// The circuit breaker is open: no call was made.
    #[error("{provider}: circuit open, not calling")]
    CircuitOpen { provider: String },
}

impl LookupError {
    /// Stable label for counters and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Access { .. } => "access",
            Self::Request { .. } => "request",
            Self::RateLimited { .. } => "rate_limited",
            Self::Server { .. } => "server",
            Self::Timeout { .. } => "timeout",
            Self::Transport { .. } => "transport",
            Self::Protocol { .. } => "protocol",
            Self::CircuitOpen { .. } => "circuit_open",
        }
    }

    /// Errors that count towards opening the circuit breaker (the provider is struggling).
    pub fn trips_breaker(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. }
                | Self::Server { .. }
                | Self::Timeout { .. }
                | Self::Transport { .. }
        )
    }
}

/// Per-indicator answers of one call. An indicator the provider knows nothing about is absent
/// (clean, as far as this provider can tell).
pub type Answers<K> = HashMap<K, Finding>;

/// A source of verdicts. Remote providers (ThreatBook) are called in batches through the verdict
/// cache; local feeds answer from memory through the same trait.
pub trait Provider: Send + Sync + fmt::Debug {
    /// Name used in findings, counters and logs.
    fn name(&self) -> &str;
    /// The most indicators one call may carry (ThreatBook: 100).
    fn max_batch(&self) -> usize;
    /// True for providers that answer from memory: no batching, limits or breaker in front.
    fn is_local(&self) -> bool {
        false
    }
    /// Looks up normalised domain names (lower case, no trailing dot).
    fn lookup_domains<'a>(
        &'a self,
        names: &'a [String],
    ) -> BoxFuture<'a, Result<Answers<String>, LookupError>>;
    /// Looks up IP addresses (the nightly blocklist job).
    fn lookup_ips<'a>(
        &'a self,
        ips: &'a [IpAddr],
    ) -> BoxFuture<'a, Result<Answers<IpAddr>, LookupError>>;
}
