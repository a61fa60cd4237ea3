//! Where events go after the enrichment stage: the JSON-lines [`output`], the [`sink`]s (Kafka,
//! Elasticsearch) behind one fan-out, the [`alert`] stage (WeCom, webhooks), the Prometheus
//! [`metrics`] endpoint, and the hardened accept loop both HTTP servers share ([`httpd`]). Their HTTP clients are built by `sensor_model::http` and back off by
//! `sensor_model::retry`.
//!
//! Depends on `sensor-model` and `sensor-intel` (the asset inventory names alerts' owners);
//! never on the kernel crate or the nightly job.

pub mod alert;
pub mod httpd;
pub mod metrics;
pub mod output;
pub mod sink;
