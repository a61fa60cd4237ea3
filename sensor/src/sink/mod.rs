//! Sinks after the enrichment stage: Kafka (every kept event) and Elasticsearch (malicious
//! hits). Each has its own bounded queue; offering never blocks the pipeline, and every drop is
//! counted with its sink and reason.

pub mod elastic;
pub mod kafka;

/// Why a sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("config key `{key}`: {message}")]
    Config { key: &'static str, message: String },
    #[error("{sink}: {message}")]
    Start { sink: &'static str, message: String },
}

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::mpsc;

use crate::enrich::Enriched;

/// Hands each enriched event to every configured sink, then to the JSON-lines output.
pub struct Fanout {
    /// Shared with the metrics collectors; `run` takes them back for the shutdown.
    pub kafka: Option<Arc<kafka::KafkaSink>>,
    pub elastic: Option<Arc<elastic::ElasticSink>>,
    /// Events the JSON-lines output could not take (its queue was full).
    pub output_queue_full: Arc<AtomicU64>,
}

impl Fanout {
    /// Runs until `rx` closes; returns the sinks for their shutdown.
    pub async fn run(
        self,
        mut rx: mpsc::Receiver<Enriched>,
        output: Option<mpsc::Sender<Enriched>>,
    ) -> Self {
        while let Some(e) = rx.recv().await {
            if let Some(k) = &self.kafka {
                k.offer(&e);
            }
            if let Some(es) = &self.elastic {
                es.offer(&e);
            }
            if let Some(out) = &output
                && out.try_send(e).is_err()
            {
                self.output_queue_full.fetch_add(1, Ordering::Relaxed);
            }
        }
        self
    }
}
