//! The running Kafka sink: its queue, the producer task and the health check.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sensor_model::{enriched::Enriched, error::ConfigError};
use tokio::sync::mpsc;

use super::{EventFilter, KafkaCounters, KafkaSection, producer, spool};
use crate::{
    metrics::Metric,
    sink::{IntakeCounters, Shared, SharedEvent, Sink, SinkError, intake},
};

/// Handle of the running sink.
pub struct KafkaSink {
    tx: mpsc::Sender<SharedEvent>,
    filter: EventFilter,
    counters: Arc<KafkaCounters>,
    /// Read by the producer task when the channel closes.
    grace_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    health: tokio::task::JoinHandle<()>,
}

impl KafkaSink {
    /// Starts the sink's tasks on the current tokio runtime. Never waits for the brokers: when
    /// they cannot be reached, one warning says so and the health check keeps retrying in the
    /// background while events wait in the queues (and the spool). Fails only on a config the
    /// sink cannot use (an invalid setting or property, an unreadable secret, a spool directory
    /// that cannot be opened).
    pub fn start(
        cfg: &KafkaSection,
        observer: &str,
        interfaces: &HashMap<u32, String>,
        _inventory: Arc<arc_swap::ArcSwap<sensor_intel::inventory::Inventory>>,
    ) -> Result<Self, SinkError> {
        let config_err = |e: ConfigError| match e {
            ConfigError::Invalid { key, message } => SinkError::Config { key, message },
            other => SinkError::Start {
                sink: "kafka",
                message: other.to_string(),
            },
        };
        cfg.validate().map_err(config_err)?;
        let client_config = cfg.client_config().map_err(config_err)?;
        let counters = Arc::new(KafkaCounters::default());
        let spool = match &cfg.spool {
            None => None,
            Some(s) => {
                // The error names `kafka.spool.path` and the directory (in use by another
                // sensor, or unusable).
                let (spool, recovered) =
                    spool::Spool::open(&s.path, s.max_bytes).map_err(|e| SinkError::Start {
                        sink: "kafka",
                        message: e.to_string(),
                    })?;
                if recovered.truncated_bytes > 0 {
                    tracing::warn!(
                        bytes = recovered.truncated_bytes,
                        path = %s.path.display(),
                        "kafka spool: cut a torn record at the end of a segment (the sensor \
                         stopped while writing it)"
                    );
                }
                if recovered.records > 0 {
                    tracing::info!(
                        records = recovered.records,
                        bytes = recovered.bytes,
                        path = %s.path.display(),
                        "kafka spool: records from an earlier run will be replayed"
                    );
                }
                counters
                    .spool_recovered
                    .store(recovered.records, Ordering::SeqCst);
                counters
                    .spool_pending
                    .store(spool.pending(), Ordering::SeqCst);
                counters.spool_bytes.store(spool.bytes(), Ordering::SeqCst);
                Some(Mutex::new(spool))
            }
        };
        let grace_ms = Arc::new(AtomicU64::new(10_000));
        let (tx, rx) = mpsc::channel(cfg.queue_size);
        let shared = Arc::new(producer::Shared {
            counters: counters.clone(),
            spool,
        });
        let (worker, client) = producer::Worker::new(
            cfg,
            &client_config,
            observer,
            interfaces,
            shared,
            grace_ms.clone(),
        )
        .map_err(|e| SinkError::Start {
            sink: "kafka",
            message: format!("cannot create the producer: {e}"),
        })?;
        let health = tokio::spawn(producer::health(
            client,
            cfg.brokers.join(","),
            cfg.topic.clone(),
            counters.clone(),
        ));
        let task = tokio::spawn(worker.run(rx));
        Ok(Self {
            tx,
            filter: cfg.events,
            counters,
            grace_ms,
            task,
            health,
        })
    }

    /// Queues an event without waiting; a full queue counts a drop.
    pub fn offer(&self, event: &Enriched) {
        self.offer_shared(&Shared::new(event.clone()));
    }

    /// [`Self::offer`] for an event the fan-out shares with the other sinks.
    pub fn offer_shared(&self, shared: &SharedEvent) {
        let event = &shared.event;
        let c = &self.counters;
        intake(
            shared,
            self.filter.keeps(event.intel.as_ref().map(|a| a.verdict)),
            &self.tx,
            IntakeCounters {
                events_in: &c.events_in,
                filtered_out: &c.filtered_out,
                in_flight: &c.in_flight,
                dropped: &c.dropped,
            },
        );
    }

    /// The counters, for tests and for the caller's own checks.
    pub fn counters(&self) -> Arc<KafkaCounters> {
        self.counters.clone()
    }

    /// Every counter and gauge of the sink, named `kafka_…`.
    pub fn metrics(&self) -> Vec<Metric> {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = vec![
            Metric::counter(
                "kafka_events_in",
                "Events offered to the Kafka sink.",
                get(&c.events_in),
            ),
            Metric::counter(
                "kafka_filtered_out",
                "Events the Kafka sink's `events` setting does not keep.",
                get(&c.filtered_out),
            ),
            Metric::counter(
                "kafka_delivered",
                "Messages the Kafka brokers acknowledged.",
                get(&c.delivered),
            ),
            Metric::counter(
                "kafka_spooled",
                "Records appended to the Kafka spool (broker outage beyond the memory queues).",
                get(&c.spooled),
            ),
            Metric::counter(
                "kafka_replayed",
                "Records read from the Kafka spool and produced again.",
                get(&c.replayed),
            ),
            Metric::counter(
                "kafka_spool_recovered",
                "Records found in the Kafka spool at start.",
                get(&c.spool_recovered),
            ),
            Metric::counter(
                "kafka_spool_errors",
                "Kafka spool writes that failed.",
                get(&c.spool_errors),
            ),
            Metric::gauge(
                "kafka_in_flight",
                "Events accepted by the Kafka sink without a final outcome (queue, producer).",
                get(&c.in_flight) as f64,
            ),
            Metric::gauge(
                "kafka_queued",
                "Events in the Kafka sink's channel.",
                (self.tx.max_capacity() - self.tx.capacity()) as f64,
            ),
            Metric::gauge(
                "kafka_spool_pending",
                "Records in the Kafka spool waiting for replay.",
                get(&c.spool_pending) as f64,
            ),
            Metric::gauge(
                "kafka_spool_bytes",
                "Bytes of the Kafka spool's segment files.",
                get(&c.spool_bytes) as f64,
            ),
            Metric::gauge(
                "kafka_broker_up",
                "1 when the last health check or delivery reached the Kafka brokers.",
                if c.broker_up.load(Ordering::Relaxed) {
                    1.0
                } else {
                    0.0
                },
            ),
        ];
        for ((stage, reason), n) in c.dropped() {
            out.push(
                Metric::counter(
                    "kafka_dropped",
                    "Events the Kafka sink dropped, by stage and reason.",
                    n,
                )
                .label("stage", stage)
                .label("reason", reason),
            );
        }
        out
    }

    /// Delivers what is queued within `grace`; what is left goes to the spool (when configured)
    /// or is counted `shutdown/shutdown`.
    pub async fn shutdown(self, grace: Duration) {
        self.grace_ms
            .store(grace.as_millis() as u64, Ordering::SeqCst);
        self.health.abort();
        let _ = self.health.await;
        drop(self.tx);
        // The task keeps to `grace` itself; the margin covers purging and the spool's fsync.
        match tokio::time::timeout(grace + Duration::from_secs(5), self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "kafka: producer task failed"),
            Err(_) => tracing::error!("kafka: producer task did not stop in time"),
        }
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }
    fn offer(&self, event: &SharedEvent) {
        self.offer_shared(event);
    }
    fn metrics(&self) -> Vec<Metric> {
        KafkaSink::metrics(self)
    }
    fn shutdown(self: Arc<Self>, grace: Duration) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            match Arc::try_unwrap(self) {
                Ok(sink) => sink.shutdown(grace).await,
                Err(_) => tracing::error!("kafka: still shared at shutdown, not flushed"),
            }
        })
    }
}
