//! Builds the trust filter, the providers and the verdict cache from the config.

use std::{path::PathBuf, sync::Arc, time::Duration};

use sensor_model::{
    error::ConfigError,
    reload::{Reload, ReloadError},
};

use crate::{
    IntelSection,
    batch::Batcher,
    cache::{Source, VerdictCache},
    egress::Egress,
    feeds::{FeedKind, FeedsError, LocalFeeds},
    threatbook::ThreatBook,
    trust::{TrustError, TrustFilter, TrustSection},
};

/// Why the intel stack could not be built: each names the config key or the list file.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Trust(#[from] TrustError),
    #[error("{0}")]
    Feeds(#[from] FeedsError),
    #[error("{0}")]
    ThreatBook(#[from] ConfigError),
}

/// Everything the enrichment stage needs, plus what the reload watcher watches.
pub struct Intel {
    pub trust: Option<Arc<TrustFilter>>,
    pub verdicts: Option<Arc<VerdictCache>>,
    /// The local feeds, when one of them lists IPs (matched against query destinations).
    pub ip_feeds: Option<Arc<LocalFeeds>>,
    /// Every local feed (blocking by resolution lists the domain feeds' names in the kernel;
    /// retro-hunt looks back when they change). `None` when intel is off.
    pub feeds: Option<Arc<LocalFeeds>>,
    /// What may leave for remote providers; `None` when no provider is configured.
    pub egress: Option<Arc<Egress>>,
    pub reloaders: Vec<Arc<dyn Reload>>,
}

/// Builds the stack. Must run inside the tokio runtime (batchers spawn their tasks). Errors name
/// the config key or the list file.
pub fn build(trust: &TrustSection, intel: &IntelSection) -> Result<Intel, SetupError> {
    let mut reloaders: Vec<Arc<dyn Reload>> = Vec::new();
    let trust = if trust.domains.is_empty() && trust.files.is_empty() {
        None
    } else {
        let filter = Arc::new(TrustFilter::new(trust)?);
        reloaders.push(filter.clone());
        Some(filter)
    };
    if !intel.enabled() {
        return Ok(Intel {
            trust,
            verdicts: None,
            ip_feeds: None,
            feeds: None,
            egress: None,
            reloaders,
        });
    }
    let mut sources = Vec::new();
    let feeds = Arc::new(LocalFeeds::load(&intel.feeds)?);
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
    let (quota, offset) = intel.threatbook.as_ref().map_or((0, 8), |tb| {
        (tb.limits.daily_quota, tb.limits.quota_utc_offset_hours)
    });
    let egress = Arc::new(Egress::new(&intel.egress, quota, offset)?);
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
        feeds: Some(feeds),
        egress: Some(egress),
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
