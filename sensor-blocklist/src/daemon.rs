//! The nightly job inside the daemon: the stored list installed at start, the EDL served over
//! HTTP (and re-read when `sensor blocklist run` rewrites the file), and the schedule.

use std::{path::PathBuf, sync::Arc, time::Duration};

use sensor_kernel::lists::{PrefixMap, blocklist as kernel};
use sensor_model::reload::{Reload, ReloadCounters, ReloadError};

use crate::{
    config::BlocklistSection,
    edl::{self, EdlError, EdlList, EdlSection},
    job::JobContext,
    store::Store,
};

/// Installs the stored list (entries not yet expired) beside the config's static entries, so a
/// restart has the same list as before it. A missing store is an empty list; an unreadable one
/// is reported and only the static entries are installed.
pub fn install_stored(
    section: &BlocklistSection,
    map: &mut PrefixMap<sensor_common::BlockValue>,
) -> Option<kernel::InstallReport> {
    let store = match Store::load(&section.policy.state_dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "blocklist store not read: only [blocklist] entries are installed");
            return None;
        }
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let entries: Vec<_> = store
        .entries()
        .filter(|e| e.expires > now)
        .map(|e| e.kernel_entry())
        .collect();
    if entries.is_empty() {
        return None;
    }
    match kernel::install_into(map, &entries, &section.static_entries()) {
        Ok(r) => {
            tracing::info!(
                entries = entries.len(),
                "stored nightly blocklist installed"
            );
            Some(r)
        }
        Err(e) => {
            tracing::warn!(error = %e, "stored nightly blocklist not installed");
            None
        }
    }
}

/// Re-reads the EDL file when it changes (a `sensor blocklist run` from the command line wrote
/// it) and serves the new content.
pub struct EdlFile {
    pub list: EdlList,
    pub files: Vec<PathBuf>,
    pub counters: ReloadCounters,
}

impl std::fmt::Debug for EdlFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdlFile")
            .field("files", &self.files)
            .finish()
    }
}

impl Reload for EdlFile {
    fn name(&self) -> &str {
        "edl"
    }
    fn files(&self) -> &[PathBuf] {
        &self.files
    }
    fn poll_interval(&self) -> Option<Duration> {
        Some(Duration::from_secs(2))
    }
    fn reload(&self) -> Result<usize, ReloadError> {
        let started = std::time::Instant::now();
        let result = std::fs::read_to_string(self.list.path())
            .map_err(|e| ReloadError::Other(Box::new(e)))
            .and_then(|text| {
                let n = text.lines().filter(|l| !l.starts_with('#')).count();
                self.list
                    .publish(&text)
                    .map(|_| n)
                    .map_err(|e| ReloadError::Other(Box::new(e)))
            });
        self.counters.record("edl", started, &result);
        result
    }
}

/// Starts the EDL server when `[blocklist.edl] listen` is set. Returns the served list (for
/// the scheduled job and the file watcher) and the server.
pub async fn start_edl(
    section: &EdlSection,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Option<(EdlList, edl::EdlServer)>, EdlError> {
    if section.listen_addr()?.is_none() {
        return Ok(None);
    }
    let list = EdlList::open(&section.path)?;
    let server = edl::serve(section, list.clone(), shutdown).await?;
    tracing::info!(addr = %server.local_addr, path = %section.path.display(), "serving the EDL");
    Ok(Some((list, server)))
}

/// Runs the job every day at the configured time, until aborted.
pub async fn schedule(ctx: Arc<JobContext>, edl: Option<EdlList>) {
    let Ok(schedule) = ctx.blocklist.schedule.parse() else {
        return;
    };
    loop {
        let wait = schedule.until_next(time::OffsetDateTime::now_utc());
        tracing::info!(in_secs = wait.as_secs(), "next nightly blocklist run");
        tokio::time::sleep(wait).await;
        match crate::job::run_once(
            &ctx,
            None,
            false,
            time::OffsetDateTime::now_utc(),
            edl.as_ref(),
        )
        .await
        {
            Ok(r) => tracing::info!(report = %r.json(), "nightly blocklist published"),
            Err(e) => {
                tracing::error!(error = %e, "nightly blocklist run failed");
                let body =
                    serde_json::json!({"kind": "blocklist_run_failed", "error": e.to_string()});
                let text = format!(
                    "**DNS sensor `{}`: nightly blocklist run failed**\n> {e}",
                    ctx.sensor_name
                );
                for f in sensor_outputs::alert::notice::send(&ctx.alerts, &text, &body).await {
                    tracing::warn!(sink = %f, "failure notice not sent");
                }
            }
        }
    }
}
