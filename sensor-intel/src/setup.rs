//! Builds the trust filter, the providers and the verdict cache from the config.

use std::{path::PathBuf, sync::Arc, time::Duration};

use super::{
    IntelSection,
    batch::Batcher,
    cache::{Source, VerdictCache},
    feeds::{FeedKind, LocalFeeds},
    threatbook::ThreatBook,
};
use crate::{
    reload::{Reload, ReloadError},
    trust::{TrustFilter, TrustSection},
};

/// Everything the enrichment stage needs, plus what the reload watcher watches.
pub struct Intel {
    pub trust: Option<Arc<TrustFilter>>,
    pub verdicts: Option<Arc<VerdictCache>>,
    /// The local feeds, when one of them lists IPs (matched against query destinations).
    pub ip_feeds: Option<Arc<LocalFeeds>>,
    pub reloaders: Vec<Arc<dyn Reload>>,
}

/// Builds the stack. Must run inside the tokio runtime (batchers spawn their tasks). Errors name
/// the config key or the list file.
pub fn build(trust: &TrustSection, intel: &IntelSection) -> anyhow::Result<Intel> {
    let mut reloaders: Vec<Arc<dyn Reload>> = Vec::new();
    let trust = if trust.domains.is_empty() && trust.files.is_empty() {
        None
    } else {
        let filter = Arc::new(TrustFilter::new(trust).map_err(|e| anyhow::anyhow!("{e}"))?);
        reloaders.push(filter.clone());
        Some(filter)
    };
    if !intel.enabled() {
        return Ok(Intel {
            trust,
            verdicts: None,
            ip_feeds: None,
            reloaders,
        });
    }
    let mut sources = Vec::new();
    let feeds = Arc::new(LocalFeeds::load(&intel.feeds).map_err(|e| anyhow::anyhow!("{e}"))?);
    let ip_feeds = intel
        .feeds
        .iter()
        .any(|f| f.kind == FeedKind::Ips)
        .then(|| feeds.clone());
    sources.extend(feeds.providers().into_iter().map(Source::Local));
    if let Some(tb) = &intel.threatbook {
        let client = ThreatBook::from_section(tb)?;
        sources.push(Source::Remote(Batcher::spawn(
            Arc::new(client),
            tb.limits.clone(),
        )));
    }
    let verdicts = Arc::new(VerdictCache::new(&intel.cache, sources));
    // A changed feed changes verdicts: forget the cached ones when it reloads.
    reloaders.extend(feeds.reloaders().into_iter().map(|inner| {
        Arc::new(ForgetVerdicts {
            inner,
            verdicts: verdicts.clone(),
        }) as Arc<dyn Reload>
    }));
    Ok(Intel {
        trust,
        verdicts: Some(verdicts),
        ip_feeds,
        reloaders,
    })
}

/// A feed's reload that also empties the verdict cache when it succeeds.
#[derive(Debug)]
struct ForgetVerdicts {
    inner: Arc<dyn Reload>,
    verdicts: Arc<VerdictCache>,
}

impl std::fmt::Debug for VerdictCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerdictCache").finish_non_exhaustive()
    }
}

impl Reload for ForgetVerdicts {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn files(&self) -> &[PathBuf] {
        self.inner.files()
    }
    fn poll_interval(&self) -> Option<Duration> {
        self.inner.poll_interval()
    }
    fn reload(&self) -> Result<usize, ReloadError> {
        let n = self.inner.reload()?;
        self.verdicts.invalidate_all();
        Ok(n)
    }
}

/// Hands the enrichment stage's hits to the alert stage, which suppresses repeats and counts
/// them; a deferred sighting group of `count` queries takes one queue slot.
pub struct AlertHits {
    pub submitter: crate::alert::AlertSubmitter,
    pub sensor: String,
}

impl crate::enrich::HitSink for AlertHits {
    fn hit(
        &self,
        client: std::net::IpAddr,
        name: &str,
        qtype: u16,
        assessment: &Arc<super::Assessment>,
        first_seen: time::OffsetDateTime,
        last_seen: time::OffsetDateTime,
        count: u64,
    ) {
        let hit = crate::alert::Hit {
            client,
            name: name.to_owned(),
            qtype: crate::decode::qtype_name(qtype),
            assessment: assessment.clone(),
            seen: first_seen,
            sensor: self.sensor.clone(),
        };
        if count <= 1 {
            self.submitter.submit(hit);
        } else {
            self.submitter.submit_group(hit, last_seen, count);
        }
    }
}

/// Reloads the asset inventory into the alert stage's `ArcSwap`.
#[derive(Debug)]
pub struct InventoryReload {
    pub path: PathBuf,
    pub current: Arc<arc_swap::ArcSwap<crate::inventory::Inventory>>,
    pub counters: crate::reload::ReloadCounters,
}

impl Reload for InventoryReload {
    fn name(&self) -> &str {
        "inventory"
    }
    fn files(&self) -> &[PathBuf] {
        std::slice::from_ref(&self.path)
    }
    fn poll_interval(&self) -> Option<Duration> {
        Some(Duration::from_secs(2))
    }
    fn reload(&self) -> Result<usize, ReloadError> {
        let started = std::time::Instant::now();
        let result = crate::inventory::Inventory::load(&self.path).map(|inv| {
            let n = inv.len();
            self.current.store(Arc::new(inv));
            n
        });
        self.counters.record("inventory", started, &result);
        result.map_err(|e| ReloadError::Other(Box::new(e)))
    }
}
