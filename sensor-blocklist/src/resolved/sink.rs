//! Where blocking by resolution's worker ([`super::intel`]) gets its inputs: a sink on the
//! fan-out (every answer with addresses) and a tee on the enrichment stage's hits (every name
//! reported malicious, live or by a late verdict).

use std::{net::IpAddr, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use sensor_intel::enrich::HitSink;
use sensor_model::{clock::WallClock, verdict::Assessment};
use sensor_outputs::{
    metrics::Metric,
    sink::{SharedEvent, Sink},
};
use time::OffsetDateTime;

use super::intel::{RecentAnswer, ResolvedIntel};

/// The fan-out sink: answers to the worker.
pub struct ResolvedSink {
    pub intel: Arc<ResolvedIntel>,
    pub clock: WallClock,
}

impl Sink for ResolvedSink {
    fn name(&self) -> &'static str {
        "resolved"
    }

    fn offer(&self, event: &SharedEvent) {
        let q = &event.event.query;
        let Some(answered) = q.answer.as_ref().filter(|_| self.intel.wants_answers()) else {
            return;
        };
        let addresses: Vec<(IpAddr, u32)> = answered
            .answers
            .iter()
            .filter_map(|a| a.ip.map(|ip| (ip, a.ttl)))
            .collect();
        if addresses.is_empty() {
            return;
        }
        let chain = answered
            .answers
            .iter()
            .filter(|a| a.rtype == 5)
            .map(|a| a.data.clone())
            .collect();
        let seen = self.clock.unix_ns(q.ts_mono_ns) / 1_000_000_000;
        self.intel.answer(RecentAnswer {
            name: q.name.clone(),
            chain,
            addresses,
            client: q.src,
            seen_unix: u64::try_from(seen).unwrap_or(0),
        });
    }

    fn metrics(&self) -> Vec<Metric> {
        self.intel.metrics()
    }

    fn shutdown(self: Arc<Self>, _grace: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let intel = self.intel.clone();
            let _ = tokio::task::spawn_blocking(move || intel.stop()).await;
        })
    }
}

/// The enrichment stage's hits, to the alerter (when there is one) and to the worker.
pub struct VerdictTee {
    pub alerts: Option<Arc<dyn HitSink>>,
    pub intel: Arc<ResolvedIntel>,
}

impl HitSink for VerdictTee {
    fn hit(
        &self,
        client: IpAddr,
        name: &str,
        qtype: u16,
        assessment: &Arc<Assessment>,
        first_seen: OffsetDateTime,
        last_seen: OffsetDateTime,
        count: u64,
    ) {
        if let Some(a) = &self.alerts {
            a.hit(
                client, name, qtype, assessment, first_seen, last_seen, count,
            );
        }
        self.intel.verdict(name);
    }
}
