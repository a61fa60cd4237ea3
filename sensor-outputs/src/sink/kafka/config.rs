//! `[kafka]`: where kept events are produced, and how.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

use sensor_model::{error::ConfigError, secret::SecretSource, verdict::Verdict};

/// Which events the sink produces: a set of verdicts, plus "no verdict" (threat intel is off, so
/// the event carries none).
///
/// In TOML: `"all"`, `"malicious"`, `"not_clean"`, or a list of `"malicious"`, `"clean"`,
/// `"unknown"`, `"trusted"`, `"not_looked_up"`, `"none"` (`"none"`: events without a verdict;
/// `"not_looked_up"`: names deliberately not sent to a provider, see `[intel.egress]`). With intel off
/// every event has no verdict: `"all"` and `"not_clean"` keep them all (nothing is known to be
/// clean), `"malicious"` keeps none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "EventsRaw")]
pub struct EventFilter(u8);

const NONE: u8 = 1 << 0;
const MALICIOUS: u8 = 1 << 1;
const CLEAN: u8 = 1 << 2;
const UNKNOWN: u8 = 1 << 3;
const TRUSTED: u8 = 1 << 4;
const NOT_LOOKED_UP: u8 = 1 << 5;

impl EventFilter {
    pub const ALL: Self = Self(NONE | MALICIOUS | CLEAN | UNKNOWN | TRUSTED | NOT_LOOKED_UP);
    pub const MALICIOUS: Self = Self(MALICIOUS);
    pub const NOT_CLEAN: Self = Self(NONE | MALICIOUS | UNKNOWN | TRUSTED | NOT_LOOKED_UP);

    /// Whether an event with this verdict (`None`: intel off) is produced.
    pub fn keeps(self, verdict: Option<Verdict>) -> bool {
        let bit = match verdict {
            None => NONE,
            Some(Verdict::Malicious) => MALICIOUS,
            Some(Verdict::Clean) => CLEAN,
            Some(Verdict::Unknown) => UNKNOWN,
            Some(Verdict::Trusted) => TRUSTED,
            Some(Verdict::NotLookedUp) => NOT_LOOKED_UP,
        };
        self.0 & bit != 0
    }

    fn parse_one(name: &str) -> Result<u8, String> {
        Ok(match name {
            "malicious" => MALICIOUS,
            "clean" => CLEAN,
            "unknown" => UNKNOWN,
            "trusted" => TRUSTED,
            "not_looked_up" => NOT_LOOKED_UP,
            "none" => NONE,
            other => {
                return Err(format!(
                    "unknown verdict {other:?} (expected malicious, clean, unknown, trusted, \
                     not_looked_up or none)"
                ));
            }
        })
    }
}

impl Default for EventFilter {
    fn default() -> Self {
        Self::ALL
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EventsRaw {
    Preset(String),
    Verdicts(Vec<String>),
}

impl TryFrom<EventsRaw> for EventFilter {
    type Error = String;

    fn try_from(raw: EventsRaw) -> Result<Self, String> {
        match raw {
            EventsRaw::Preset(p) => match p.as_str() {
                "all" => Ok(Self::ALL),
                "malicious" => Ok(Self::MALICIOUS),
                "not_clean" => Ok(Self::NOT_CLEAN),
                other => Err(format!(
                    "kafka.events: {other:?} is not \"all\", \"malicious\", \"not_clean\" or a \
                     list of verdicts"
                )),
            },
            EventsRaw::Verdicts(list) => {
                let mut mask = 0;
                for v in &list {
                    mask |= Self::parse_one(v).map_err(|e| format!("kafka.events: {e}"))?;
                }
                if mask == 0 {
                    return Err("kafka.events: the list of verdicts is empty".into());
                }
                Ok(Self(mask))
            }
        }
    }
}

/// Compression of produced batches (librdkafka `compression.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    /// The default: the cheapest in CPU per byte saved; ECS JSON lines shrink several-fold.
    #[default]
    Lz4,
    Zstd,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

/// Acknowledgements the producer waits for (librdkafka `acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Acks {
    /// Every in-sync replica (`acks=all`); required by the idempotent producer.
    #[default]
    All,
    /// The partition leader only (`acks=1`).
    Leader,
    /// None (`acks=0`): nothing is confirmed, so "delivered" means "sent".
    None,
}

impl Acks {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Leader => "1",
            Self::None => "0",
        }
    }
}

/// `[kafka.spool]`: the on-disk spool for outages longer than the memory queues hold.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpoolSection {
    /// Directory of the spool's segment files (created if missing). One sensor per directory:
    /// the spool holds a `flock` on `<path>/lock`, and a second sensor pointed at the same
    /// directory fails to start with an error naming this key. Required.
    pub path: PathBuf,
    /// Most bytes of all segment files together; beyond it events are dropped and counted
    /// (`spool_full`). Default 1073741824 (1 GiB).
    #[serde(default = "default_spool_max_bytes")]
    pub max_bytes: u64,
}

fn default_spool_max_bytes() -> u64 {
    1 << 30
}

/// librdkafka properties that have their own option here (one way to set each), or that hold a
/// secret and belong in `secrets`.
const OWNED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "brokers"),
    ("metadata.broker.list", "brokers"),
    ("linger.ms", "linger_ms"),
    ("queue.buffering.max.ms", "linger_ms"),
    ("batch.size", "batch_size"),
    ("batch.num.messages", "batch_num_messages"),
    ("compression.type", "compression"),
    ("compression.codec", "compression"),
    ("enable.idempotence", "idempotence"),
    ("acks", "acks"),
    ("request.required.acks", "acks"),
    ("message.timeout.ms", "message_timeout_ms"),
    ("delivery.timeout.ms", "message_timeout_ms"),
    ("queue.buffering.max.messages", "producer_queue_size"),
];

/// Properties whose value is a secret: only through `secrets`, never in `properties`.
const SECRET_PROPERTIES: &[&str] = &[
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.key.pem",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
];

/// `[kafka]`: every kept event as one ECS JSON document, keyed by client IP. Off unless the
/// section is present.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {
    /// Bootstrap brokers, `host:port`. Default `["127.0.0.1:9092"]`.
    pub brokers: Vec<String>,
    /// Topic the events go to (it must exist unless the brokers auto-create topics). Default
    /// `dns-events`.
    pub topic: String,
    /// Which events: `"all"` (default), `"malicious"`, `"not_clean"`, or a list of verdicts
    /// (`malicious`, `clean`, `unknown`, `trusted`, `not_looked_up`, `none` = no verdict because
    /// intel is off).
    pub events: EventFilter,
    /// Events waiting for the producer task; beyond it they are dropped and counted
    /// (`queue/queue_full`). Default 10000.
    pub queue_size: usize,
    /// Messages librdkafka holds (batched, in flight, or waiting for the broker): it is the
    /// memory that rides out a short broker outage (`queue.buffering.max.messages`). Default
    /// 100000.
    pub producer_queue_size: usize,
    /// How long a message waits to fill a batch (`linger.ms`). Default 5.
    pub linger_ms: u64,
    /// Most bytes of one batch (`batch.size`). Default 1000000.
    pub batch_size: usize,
    /// Most messages of one batch (`batch.num.messages`). Default 10000.
    pub batch_num_messages: usize,
    /// `none`, `gzip`, `snappy`, `lz4` (default) or `zstd`.
    pub compression: Compression,
    /// Idempotent producer: no duplicates from retries, order kept per partition. Needs
    /// `acks = "all"`. Default true.
    pub idempotence: bool,
    /// `"all"` (default), `"leader"` or `"none"`.
    pub acks: Acks,
    /// How long librdkafka keeps retrying a message before it fails it (`message.timeout.ms`);
    /// a failed message goes to the spool, or is dropped and counted. Default 300000 (5 min).
    pub message_timeout_ms: u64,
    /// When librdkafka's queue is full, how long an event is retried before it goes to the
    /// spool or is dropped (`producer/queue_full`). Default 100.
    pub queue_full_retry_ms: u64,
    /// Other librdkafka properties, passed verbatim: TLS and SASL (`security.protocol`,
    /// `ssl.ca.location`, `ssl.certificate.location`, `ssl.key.location`, `sasl.mechanism`,
    /// `sasl.username`, ...). Secrets are refused here: put them in `secrets`. Default empty.
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values are secrets, each `{ env = "VAR" }` or
    /// `{ file = "/path" }`, e.g. `"sasl.password" = { env = "KAFKA_PASSWORD" }`. Never logged.
    /// Default empty.
    pub secrets: BTreeMap<String, SecretSource>,
    /// Optional on-disk spool (`[kafka.spool]`). Default: none (an outage beyond the memory
    /// queues drops events, counted).
    pub spool: Option<SpoolSection>,
    /// Accept `sasl.password` over a connection without TLS (`security.protocol` `plaintext`
    /// or `sasl_plaintext`) to brokers that are not on the loopback: with SASL/PLAIN the
    /// password then crosses the network in clear. Default false.
    pub allow_insecure_plaintext: bool,
}

impl Default for KafkaSection {
    fn default() -> Self {
        Self {
            brokers: vec!["127.0.0.1:9092".into()],
            topic: "dns-events".into(),
            events: EventFilter::ALL,
            queue_size: 10_000,
            producer_queue_size: 100_000,
            linger_ms: 5,
            batch_size: 1_000_000,
            batch_num_messages: 10_000,
            compression: Compression::Lz4,
            idempotence: true,
            acks: Acks::All,
            message_timeout_ms: 300_000,
            queue_full_retry_ms: 100,
            properties: BTreeMap::new(),
            secrets: BTreeMap::new(),
            spool: None,
            allow_insecure_plaintext: false,
        }
    }
}

impl KafkaSection {
    /// Checks what serde cannot. Errors name the key as `kafka.<key>`; none contains a secret.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        if self.brokers.is_empty() {
            return invalid("kafka.brokers", "needs at least one host:port".into());
        }
        for b in &self.brokers {
            let ok = b
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok || b.contains(',') || b.contains(char::is_whitespace) {
                return invalid(
                    "kafka.brokers",
                    format!("{b:?} is not host:port (e.g. \"kafka1:9092\")"),
                );
            }
        }
        let t = &self.topic;
        if t.is_empty()
            || t.len() > 249
            || t == "."
            || t == ".."
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return invalid(
                "kafka.topic",
                format!("{t:?} must be 1-249 characters of [a-zA-Z0-9._-]"),
            );
        }
        for (key, v) in [
            ("kafka.queue_size", self.queue_size as u64),
            ("kafka.producer_queue_size", self.producer_queue_size as u64),
            ("kafka.batch_size", self.batch_size as u64),
            ("kafka.batch_num_messages", self.batch_num_messages as u64),
            ("kafka.message_timeout_ms", self.message_timeout_ms),
        ] {
            if v == 0 {
                return invalid(key, "must be greater than 0".into());
            }
        }
        // librdkafka's own limits, checked here so the error names our key.
        if self.producer_queue_size > 2_147_483_647 {
            return invalid(
                "kafka.producer_queue_size",
                "must be at most 2147483647".into(),
            );
        }
        if self.linger_ms > 900_000 {
            return invalid("kafka.linger_ms", "must be at most 900000".into());
        }
        if self.batch_num_messages > 1_000_000 {
            return invalid("kafka.batch_num_messages", "must be at most 1000000".into());
        }
        if self.batch_size > 2_147_483_647 {
            return invalid("kafka.batch_size", "must be at most 2147483647".into());
        }
        if self.message_timeout_ms > 2_147_483_647 {
            return invalid(
                "kafka.message_timeout_ms",
                "must be at most 2147483647".into(),
            );
        }
        if self.idempotence && self.acks != Acks::All {
            return invalid(
                "kafka.acks",
                "the idempotent producer needs acks = \"all\" (or set idempotence = false)".into(),
            );
        }
        for key in self.properties.keys() {
            if let Some((_, option)) = OWNED_PROPERTIES.iter().find(|(p, _)| p == key) {
                return invalid(
                    "kafka.properties",
                    format!("{key:?} is set by the option `kafka.{option}`"),
                );
            }
            if SECRET_PROPERTIES.contains(&key.as_str()) || key.contains("password") {
                return invalid(
                    "kafka.properties",
                    format!("{key:?} holds a secret: set it in `kafka.secrets` (env or file)"),
                );
            }
        }
        for (key, src) in &self.secrets {
            if self.properties.contains_key(key) {
                return invalid(
                    "kafka.secrets",
                    format!("{key:?} is also in `kafka.properties`"),
                );
            }
            if OWNED_PROPERTIES.iter().any(|(p, _)| p == key) {
                return invalid("kafka.secrets", format!("{key:?} is not a secret property"));
            }
            if src.is_unset() || (src.env.is_some() && src.file.is_some()) {
                return invalid(
                    "kafka.secrets",
                    format!("{key:?}: set exactly one of `env` or `file`"),
                );
            }
        }
        // Credentials never travel in clear (the same rule as the HTTP clients' https).
        let protocol = self
            .properties
            .get("security.protocol")
            .map_or("plaintext".to_owned(), |p| p.to_ascii_lowercase());
        let loopback_only = self.brokers.iter().all(|b| {
            let host = b.rsplit_once(':').map_or(b.as_str(), |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        if self.secrets.contains_key("sasl.password")
            && matches!(protocol.as_str(), "plaintext" | "sasl_plaintext")
            && !loopback_only
            && !self.allow_insecure_plaintext
        {
            return invalid(
                "kafka.secrets",
                format!(
                    "\"sasl.password\" with security.protocol = {protocol:?} would cross the \
                     network without TLS: use \"sasl_ssl\", or set \
                     kafka.allow_insecure_plaintext = true"
                ),
            );
        }
        if let Some(s) = &self.spool {
            if s.path.as_os_str().is_empty() {
                return invalid("kafka.spool.path", "must not be empty".into());
            }
            if s.max_bytes < super::spool::MIN_MAX_BYTES {
                return invalid(
                    "kafka.spool.max_bytes",
                    format!("must be at least {}", super::spool::MIN_MAX_BYTES),
                );
            }
        }
        Ok(())
    }

    /// The librdkafka configuration: our options, then `properties`, then the resolved
    /// `secrets`. The result holds secrets: never log it (`ClientConfig`'s `Debug` prints
    /// values).
    #[cfg(feature = "kafka")]
    pub(crate) fn client_config(&self) -> Result<rdkafka::ClientConfig, ConfigError> {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(","))
            .set("linger.ms", self.linger_ms.to_string())
            .set("batch.size", self.batch_size.to_string())
            .set("batch.num.messages", self.batch_num_messages.to_string())
            .set("compression.type", self.compression.as_str())
            .set("enable.idempotence", self.idempotence.to_string())
            .set("acks", self.acks.as_str())
            .set("message.timeout.ms", self.message_timeout_ms.to_string())
            .set(
                "queue.buffering.max.messages",
                self.producer_queue_size.to_string(),
            )
            // The message count is the bound we document; librdkafka's byte bound (1 GiB by
            // default) must not cut in first.
            .set("queue.buffering.max.kbytes", "2147483647")
            // Events are small: this keeps reconnect attempts frequent during an outage
            // (librdkafka backs off exponentially up to this).
            .set("reconnect.backoff.max.ms", "2000");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        for (k, src) in &self.secrets {
            // Key names are static in errors; the property name is not, so say it generically.
            let secret = src.resolve("kafka.secrets")?;
            c.set(k, secret.expose());
        }
        Ok(c)
    }
}
