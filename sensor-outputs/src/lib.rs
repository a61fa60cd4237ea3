//! Where events go after the enrichment stage: the JSON-lines [`output`], the [`sink`]s (Kafka,
//! Elasticsearch) behind one fan-out, the [`alert`] stage (WeCom, webhooks), the Prometheus
//! [`metrics`] endpoint, and the one [`retry`] policy their HTTP clients share.
//!
//! Depends on `sensor-model` and `sensor-intel` (the asset inventory names alerts' owners);
//! never on the kernel crate or the nightly job.

pub mod alert;
pub mod metrics;
pub mod output;
pub mod retry;
pub mod sink;
