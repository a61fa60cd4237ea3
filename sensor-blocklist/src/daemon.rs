//! The nightly job inside the daemon: the stored list installed at start, the EDL served over
//! HTTP (and re-read when `sensor blocklist run` rewrites the file), and the schedule.

use std::{path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use sensor_model::reload::{Reload, ReloadCounters, ReloadError};

use crate::{
    edl::{self, EdlError, EdlList, EdlSection},
    job::JobContext,
    publish::{self, KernelTarget, Rules},
};

/// The rules the daemon's background work applies: the config it started with, with
/// `blocklist.entries` and `filter.client_allow` as the last SIGHUP installed them. The sweep,
/// the nightly run and the EDL check read it each time, so none of them puts back what a reload
/// took out.
pub type Live = Arc<ArcSwap<JobContext>>;

/// Re-plans and publishes the stored list every `every` (and once right away): entries whose
/// time has passed leave the EDL, the kernel map and the state file even when nightly runs keep
/// failing, and a gateway or endpoint that moved is protected from the next sweep on. Runs until
/// aborted; a failed sweep is logged and retried at the next tick.
pub async fn sweep(live: Live, edl: Option<EdlList>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (ctx, edl) = (live.load_full(), edl.clone());
        // DNS lookups of the endpoints, file and map writes: off the async workers.
        let done = tokio::task::spawn_blocking(move || {
            publish::replan(
                &ctx.blocklist,
                &ctx.rules,
                time::OffsetDateTime::now_utc(),
                edl.as_ref(),
                KernelTarget::Pinned(&ctx.pin_dir),
                false,
            )
        })
        .await;
        match done {
            Ok(Ok((summary, published))) => {
                let changed = published.edl_changed
                    || published
                        .kernel
                        .as_ref()
                        .is_some_and(|k| k.added + k.removed + k.updated > 0);
                if changed {
                    tracing::info!(
                        expired = summary.expired,
                        removed_never = summary.removed_never,
                        total = summary.total,
                        "blocklist sweep: lapsed or newly protected entries removed"
                    );
                } else {
                    tracing::debug!(total = summary.total, "blocklist sweep: no change");
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "blocklist sweep failed; retried at the next tick")
            }
            Err(e) => tracing::warn!(error = %e, "blocklist sweep task failed"),
        }
    }
}

/// Re-reads a served list file when it changes (a `sensor blocklist run` from the command line,
/// or this daemon's exports, wrote it; or an operator edited it) and serves the new content once
/// it parses in its format and lists no protected address. Also the first load of an export
/// list at start (see [`EdlFile::reload`]).
pub struct EdlFile {
    /// Which list: the EDL, or an export file served next to it.
    pub kind: edl::ListKind,
    pub list: EdlList,
    pub files: Vec<PathBuf>,
    pub counters: ReloadCounters,
    /// For the check of a hand-edited file.
    pub live: Live,
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
        self.kind.name()
    }
    fn files(&self) -> &[PathBuf] {
        &self.files
    }
    /// An operator's unblock rewrites the file and must reach the firewall's next fetch within
    /// a second; a stat() four times a second costs nothing.
    fn poll_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(250))
    }
    fn reload(&self) -> Result<usize, ReloadError> {
        let started = std::time::Instant::now();
        let result = std::fs::read_to_string(self.list.path())
            .map_err(|e| ReloadError::Other(Box::new(e)))
            .and_then(|text| {
                // A file edited by hand is checked before it is served; a bad one leaves the
                // served list as it was.
                let ctx = self.live.load();
                let never = Rules::current(
                    &ctx.blocklist,
                    &ctx.rules,
                    time::OffsetDateTime::now_utc().unix_timestamp(),
                )
                .map_err(|e| ReloadError::Other(Box::new(e)))?
                .never;
                let n = self.kind.validate_text(&text, &never).map_err(|e| {
                    ReloadError::Other(
                        format!(
                            "{}: {e}; still serving the previous list",
                            self.list.path().display()
                        )
                        .into(),
                    )
                })?;
                if self.kind == edl::ListKind::Edl {
                    self.list
                        .publish(&text)
                        .map(|_| n)
                        .map_err(|e| ReloadError::Other(Box::new(e)))
                } else {
                    // The export wrote the file; only the served copy changes.
                    self.list.serve_text(&text);
                    Ok(n)
                }
            });
        self.counters.record(self.kind.name(), started, &result);
        result
    }
}

/// Starts the EDL server when `[blocklist.edl] listen` is set, with the export files that have
/// a `url_path` on their own paths (served nothing, 503, until their first check passes: see
/// [`EdlFile`]; the server's `extra` lists them). Returns the served list (for the scheduled
/// job and the file watcher) and the server.
pub async fn start_edl(
    section: &EdlSection,
    exports: &crate::export::ExportSection,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Option<(EdlList, edl::EdlServer)>, EdlError> {
    if section.listen_addr()?.is_none() {
        return Ok(None);
    }
    let list = EdlList::open(&section.path)?;
    let extra = exports
        .served()
        .into_iter()
        .map(|(kind, key, url_path, path)| edl::ExtraList {
            kind,
            url_path,
            key,
            list: EdlList::unpublished(&path),
        })
        .collect();
    let server = edl::serve_lists(section, list.clone(), extra, shutdown).await?;
    tracing::info!(addr = %server.local_addr, path = %section.path.display(), "serving the EDL");
    Ok(Some((list, server)))
}

/// Runs the job every day at the configured time, until aborted.
pub async fn schedule(live: Live, edl: Option<EdlList>) {
    // `[blocklist.schedule]` is not reloaded: the start's is the one in force.
    let Ok(schedule) = live.load().blocklist.schedule.parse() else {
        return;
    };
    loop {
        let wait = schedule.until_next(time::OffsetDateTime::now_utc());
        tracing::info!(in_secs = wait.as_secs(), "next nightly blocklist run");
        tokio::time::sleep(wait).await;
        let ctx = live.load_full();
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
                let text = failure_notice(&ctx.sensor_name, &e.to_string());
                for f in sensor_outputs::alert::notice::send(&ctx.alerts, &text, &body).await {
                    tracing::warn!(sink = %f, "failure notice not sent");
                }
            }
        }
    }
}

/// The WeCom markdown of a failed night. The error quotes servers (Elasticsearch reasons,
/// provider messages): made inert and one line before it enters markdown, so it cannot mention
/// anyone, link, format or add lines.
fn failure_notice(sensor: &str, error: &str) -> String {
    format!(
        "**DNS sensor `{sensor}`: nightly blocklist run failed**\n> {}",
        sensor_outputs::alert::format::markdown_text(error, 1000)
    )
}

#[cfg(test)]
mod notice_tests {
    #[test]
    fn server_text_in_the_failure_notice_is_inert() {
        let reason = "elasticsearch alerts: HTTP 400: <@all> [click](http://evil.example) **x**\n> forged line";
        let text = super::failure_notice("edge-1", reason);
        let (head, quoted) = text.split_once('\n').unwrap();
        assert_eq!(
            head,
            "**DNS sensor `edge-1`: nightly blocklist run failed**"
        );
        assert!(!quoted.contains('\n'), "{text}");
        for bad in ["<@", "[click]", "](", "**"] {
            assert!(!quoted.contains(bad), "{bad} survived: {text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::BlocklistSection,
        export::{ExportSection, fortigate::FortigateSection},
        neverblock::NeverBlock,
        publish::RuleInputs,
        store::{PolicySection, Store, Verdict},
    };
    use sensor_model::verdict::{Confidence, Severity};

    /// Start and SIGHUP (a re-plan with `refresh_exports`) write the exports from the stored
    /// list and the static entries; an unreadable store is an error and leaves them as they
    /// are; a sweep with nothing changed does not run them again.
    #[test]
    fn a_replan_writes_the_stored_and_static_entries_to_the_exports() {
        let dir = tempfile::tempdir().unwrap();
        let policy = PolicySection {
            state_dir: dir.path().join("state"),
            change_floor: 10,
            ..PolicySection::default()
        };
        let mut store = Store::load(&policy.state_dir).unwrap();
        let verdict = Verdict {
            ip: "45.33.32.156".parse().unwrap(),
            malicious: true,
            confidence: Some(Confidence::High),
            severity: Some(Severity::High),
        };
        let never = NeverBlock::new(&[], &[]);
        let plan = store
            .plan(
                time::OffsetDateTime::now_utc(),
                &[verdict],
                &never,
                &policy,
                false,
            )
            .unwrap();
        store.commit(&plan).unwrap();
        let feed = dir.path().join("out/fortigate.txt");
        let section = BlocklistSection {
            entries: vec!["198.51.100.0/24".into()],
            policy: policy.clone(),
            edl: crate::edl::EdlSection {
                path: dir.path().join("edl.txt"),
                ..Default::default()
            },
            export: ExportSection {
                fortigate: Some(FortigateSection {
                    path: feed.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..BlocklistSection::default()
        };
        let replan = |refresh| {
            publish::replan(
                &section,
                &RuleInputs::default(),
                time::OffsetDateTime::now_utc(),
                None,
                KernelTarget::Pinned(&dir.path().join("no-sensor")),
                refresh,
            )
        };
        let (_, published) = replan(true).unwrap();
        let report = published.exports.unwrap();
        assert_eq!(report.failed(), 0, "{report:?}");
        assert_eq!(
            std::fs::read_to_string(&feed).unwrap(),
            "198.51.100.0/24\n45.33.32.156\n"
        );
        let (_, published) = replan(false).unwrap();
        assert!(published.exports.is_none(), "nothing changed");
        std::fs::write(dir.path().join("state/state.json"), "{ not json").unwrap();
        let e = replan(true).unwrap_err().to_string();
        assert!(e.contains("state.json"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&feed).unwrap(),
            "198.51.100.0/24\n45.33.32.156\n",
            "left as it was"
        );
    }
}
