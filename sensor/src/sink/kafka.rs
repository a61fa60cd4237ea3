//! Kafka sink (stub, being written).

use std::{collections::HashMap, sync::Arc, time::Duration};

use serde::Deserialize;

use super::SinkError;
use crate::{enrich::Enriched, metrics::Metric};

/// Configuration section (stub).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {}

/// Handle of the running sink (stub).
pub struct KafkaSink {}

impl KafkaSink {
    /// Starts the sink's tasks on the current tokio runtime.
    pub fn start(
        _cfg: &KafkaSection,
        _observer: &str,
        _interfaces: &HashMap<u32, String>,
        _inventory: Arc<arc_swap::ArcSwap<crate::inventory::Inventory>>,
    ) -> Result<Self, SinkError> {
        Ok(Self {})
    }

    /// Queues an event without waiting; a full queue counts a drop.
    pub fn offer(&self, _event: &Enriched) {}

    /// Every counter and gauge of the sink.
    pub fn metrics(&self) -> Vec<Metric> {
        Vec::new()
    }

    /// Delivers what is queued within `grace`, then counts the rest as dropped.
    pub async fn shutdown(self, _grace: Duration) {}
}
