//! What each stage contributes to `/metrics`: one collector per stage, built from the handles
//! `run` holds. Names follow the stage that counts (`kernel_`, `reader_`, `enrich_`, `cache_`,
//! `intel_`, `alerts_`, `queue_`, `kafka_`, `elasticsearch_`).

use std::{path::PathBuf, sync::Arc};

use tokio::sync::mpsc;

use sensor_outputs::{
    alert::StatsHandle,
    metrics::{Kind, Metric, Sources},
};

use sensor_intel::{
    batch::REASONS,
    cache::{Source, VerdictCache},
    egress::{EgressCounters, Skip},
    enrich::EnrichCounters,
};

use sensor_model::counters::StageCounters;

fn named(prefix: &str, name: &str, help: &'static str, kind: Kind, value: f64) -> Metric {
    Metric {
        name: format!("{prefix}{name}").into(),
        help: help.into(),
        kind,
        labels: Vec::new(),
        value,
    }
}

/// The kernel's per-CPU counters, summed, read from the pinned map on each scrape.
pub fn kernel(sources: &mut Sources, pin_dir: PathBuf) {
    sources.add(move |out| {
        let Ok(c) = sensor_kernel::stats::read(&pin_dir) else {
            return;
        };
        for &k in sensor_common::Counter::ALL {
            out.push(named(
                "kernel_",
                k.name(),
                k.help(),
                Kind::Counter,
                c.get(k) as f64,
            ));
        }
    });
}

pub fn reader(sources: &mut Sources, counters: Arc<StageCounters>) {
    sources.add(move |out| {
        for (name, v) in counters.snapshot() {
            out.push(named(
                "reader_",
                name,
                "Ring-buffer reader and JSON-lines output.",
                Kind::Counter,
                v as f64,
            ));
        }
    });
}

pub fn enrich(sources: &mut Sources, counters: Arc<EnrichCounters>) {
    sources.add(move |out| {
        for (name, v) in counters.snapshot() {
            out.push(named(
                "enrich_",
                name,
                "Enrichment stage (trust filter, verdicts, deferred names).",
                Kind::Counter,
                v as f64,
            ));
        }
    });
}

/// Cache counters, size and hit ratio; per remote provider its calls, errors and breaker.
pub fn intel(sources: &mut Sources, verdicts: Arc<VerdictCache>) {
    sources.add(move |out| {
        let snap = verdicts.counters().snapshot();
        for (name, v) in &snap {
            out.push(named(
                "cache_",
                name,
                "Verdict cache.",
                Kind::Counter,
                *v as f64,
            ));
        }
        let get = |n: &str| snap.iter().find(|(k, _)| *k == n).map_or(0, |(_, v)| *v);
        let (hits, misses) = (get("hits"), get("misses"));
        out.push(Metric::gauge(
            "cache_entries",
            "Names in the verdict cache.",
            verdicts.entry_count_blocking() as f64,
        ));
        out.push(Metric::gauge(
            "cache_hit_ratio",
            "Cache hits per cache lookup since start.",
            if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
        ));
        for s in verdicts.sources() {
            let Source::Remote(b) = s else { continue };
            let provider = b.provider_name().to_owned();
            let c = b.counters();
            let load = |a: &std::sync::atomic::AtomicU64| {
                a.load(std::sync::atomic::Ordering::Relaxed) as f64
            };
            for (name, help, v) in [
                (
                    "intel_calls",
                    "Requests sent to the provider.",
                    load(&c.calls),
                ),
                (
                    "intel_items",
                    "Indicators sent to the provider.",
                    load(&c.items),
                ),
                (
                    "intel_breaker_opened",
                    "Times the circuit breaker opened.",
                    load(&c.breaker_opened),
                ),
                (
                    "intel_rejected_circuit_open",
                    "Indicators answered unknown without a call: breaker open.",
                    load(&c.rejected_circuit_open),
                ),
                (
                    "intel_rejected_quota",
                    "Indicators answered unknown without a call: daily quota used.",
                    load(&c.rejected_quota),
                ),
            ] {
                out.push(Metric {
                    name: name.into(),
                    help: help.into(),
                    kind: Kind::Counter,
                    labels: vec![("provider".into(), provider.clone())],
                    value: v,
                });
            }
            for (reason, a) in REASONS.iter().zip(&c.errors) {
                out.push(Metric {
                    name: "intel_errors".into(),
                    help: "Failed provider requests by reason.".into(),
                    kind: Kind::Counter,
                    labels: vec![
                        ("provider".into(), provider.clone()),
                        ("reason".into(), (*reason).to_owned()),
                    ],
                    value: load(a),
                });
            }
            out.push(Metric {
                name: "intel_in_flight".into(),
                help: "Provider requests in flight.".into(),
                kind: Kind::Gauge,
                labels: vec![("provider".into(), provider.clone())],
                value: load(&c.in_flight),
            });
            out.push(Metric {
                name: "intel_breaker_open".into(),
                help: "1 while the circuit breaker refuses calls.".into(),
                kind: Kind::Gauge,
                labels: vec![("provider".into(), provider)],
                value: if b.is_open() { 1.0 } else { 0.0 },
            });
        }
    });
}

/// Names not sent to remote providers, by reason (`[intel.egress]`): a fixed label set.
pub fn egress(sources: &mut Sources, counters: Arc<EgressCounters>) {
    sources.add(move |out| {
        for skip in [
            Skip::SpecialUse,
            Skip::Reverse,
            Skip::Internal,
            Skip::ClientBudget,
            Skip::BudgetTableFull,
        ] {
            out.push(
                Metric::counter(
                    "intel_not_sent",
                    "Events whose name was not sent to a remote provider, by reason.",
                    counters.get(skip),
                )
                .label("reason", skip.as_str()),
            );
        }
    });
}

pub fn alerts(sources: &mut Sources, stats: StatsHandle) {
    sources.add(move |out| {
        let s = stats.snapshot();
        for (name, help, v) in [
            (
                "hits_in",
                "Malicious hits handed to the alert stage.",
                s.hits_in,
            ),
            (
                "queue_full_drops",
                "Hits dropped: alert queue full.",
                s.queue_full_drops,
            ),
            (
                "closed_drops",
                "Hits dropped: alert stage stopped.",
                s.closed_drops,
            ),
            (
                "suppressed_repeats",
                "Repeats of a (client, name) pair within its window.",
                s.suppressed_repeats,
            ),
            (
                "raised",
                "Alerts raised (first hit of a pair in a window).",
                s.alerts_raised,
            ),
            (
                "still_active_raised",
                "Still-active alerts for repeats at a window's end.",
                s.still_active_raised,
            ),
            (
                "messages_sent",
                "Messages accepted by a sink, digests included.",
                s.messages_sent,
            ),
            ("digests_sent", "Digest messages accepted.", s.digests_sent),
            (
                "delivered",
                "Alerts carried by accepted messages.",
                s.alerts_delivered,
            ),
            (
                "undelivered",
                "Alerts in messages that failed for good or were cut at shutdown.",
                s.alerts_undelivered,
            ),
            (
                "retries",
                "Message retries after transport errors or busy answers.",
                s.retries,
            ),
            (
                "throttled",
                "Throttling answers (WeCom 45009, HTTP 429).",
                s.throttled,
            ),
            (
                "backlog_overflow",
                "Alerts over a sink's backlog, reported only as counts.",
                s.backlog_overflow,
            ),
        ] {
            out.push(named("alerts_", name, help, Kind::Counter, v as f64));
        }
        for (reason, v) in &s.send_failures {
            out.push(
                Metric::counter(
                    "alerts_send_failures",
                    "Messages that failed for good, by reason.",
                    *v,
                )
                .label("reason", reason.clone()),
            );
        }
    });
}

/// `[blocklist.export]`: per target (a fixed set of label values), refreshes that worked and
/// failed, entries left out, the elements of the last good refresh and when it was.
pub fn exports(sources: &mut Sources) {
    use std::sync::atomic::Ordering::Relaxed;
    sources.add(|out| {
        for target in sensor_blocklist::export::TARGETS {
            let Some(c) = sensor_blocklist::export::counters(target) else {
                continue;
            };
            for (name, help, v) in [
                (
                    "blocklist_export_ok",
                    "Export refreshes that succeeded.",
                    c.ok.load(Relaxed),
                ),
                (
                    "blocklist_export_failed",
                    "Export refreshes that failed (the target kept its previous content).",
                    c.failed.load(Relaxed),
                ),
                (
                    "blocklist_export_left_out",
                    "Entries a format could not carry (IPv6 for Check Point) or over its limit.",
                    c.left_out.load(Relaxed),
                ),
            ] {
                out.push(Metric::counter(name, help, v).label("target", target));
            }
            out.push(
                Metric::gauge(
                    "blocklist_export_elements",
                    "Entries (or set elements) written by the last good refresh.",
                    c.elements.load(Relaxed) as f64,
                )
                .label("target", target),
            );
            out.push(
                Metric::gauge(
                    "blocklist_export_last_ok_unix",
                    "When the last good refresh was (Unix seconds; 0 = none yet).",
                    c.last_ok_unix.load(Relaxed) as f64,
                )
                .label("target", target),
            );
        }
    });
}

/// Depth and capacity of a bounded queue between two stages. Holds a weak sender, so it never
/// keeps the queue open at shutdown.
pub fn queue<T: Send + 'static>(sources: &mut Sources, name: &'static str, tx: &mpsc::Sender<T>) {
    let weak = tx.downgrade();
    sources.add(move |out| {
        let Some(tx) = weak.upgrade() else { return };
        out.push(
            Metric::gauge(
                "queue_depth",
                "Items waiting in a queue between two stages.",
                (tx.max_capacity() - tx.capacity()) as f64,
            )
            .label("queue", name),
        );
        out.push(
            Metric::gauge(
                "queue_capacity",
                "Capacity of a queue between two stages.",
                tx.max_capacity() as f64,
            )
            .label("queue", name),
        );
    });
}
