//! The producer task, librdkafka's callbacks, and the health check.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, ClientContext,
    config::RDKafkaLogLevel,
    error::{KafkaError, RDKafkaErrorCode},
    message::{DeliveryResult, Message as _},
    producer::{BaseRecord, Producer as _, ProducerContext, PurgeConfig, ThreadedProducer},
};
use tokio::sync::mpsc;

use super::{KafkaCounters, KafkaSection, spool::Spool};
use sensor_model::{clock::WallClock, encode::Encoder};

/// What the producer task and librdkafka's callback thread share.
pub(crate) struct Shared {
    pub counters: Arc<KafkaCounters>,
    pub spool: Option<Mutex<Spool>>,
}

/// Errors after which sending the same message again cannot succeed: dropped, never spooled
/// (a spooled copy would fail again forever).
fn permanent(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as E;
    matches!(
        code,
        E::MessageSizeTooLarge
            | E::InvalidMessageSize
            | E::InvalidMessage
            | E::InvalidRecord
            | E::TopicAuthorizationFailed
            | E::ClusterAuthorizationFailed
            | E::InvalidTopic
            | E::MessageBatchTooLarge
            | E::InvalidRequiredAcks
            | E::UnsupportedForMessageFormat
            | E::InvalidArgument
            | E::BadMessage
    )
}

impl Shared {
    /// An accepted event (or replayed record) that librdkafka cannot take or failed: to the spool
    /// when it may succeed later and a spool is configured, else dropped. It leaves `in_flight`.
    /// `replayed_from`: its spool segment, acknowledged in the same lock.
    fn fail(
        &self,
        stage: &'static str,
        code: Option<RDKafkaErrorCode>,
        key: &[u8],
        payload: &[u8],
        replayed_from: Option<u64>,
    ) {
        let c = &self.counters;
        let shutdown = matches!(
            code,
            Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
        );
        let retriable = code.is_none_or(|c| !permanent(c));
        if replayed_from.is_some() && stage == "delivery" && !shutdown {
            // A replayed record failed: wait for the next health check before replaying more,
            // instead of cycling records between the spool and a producer that cannot deliver.
            c.broker_up.store(false, Ordering::Relaxed);
        }
        match (&self.spool, retriable) {
            (Some(spool), true) => {
                let mut s = spool.lock().unwrap_or_else(|e| e.into_inner());
                match s.append(key, payload) {
                    Ok(()) => {
                        c.spooled.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(super::spool::AppendError::Full) => {
                        c.dropped.add("spool", "spool_full", 1);
                    }
                    Err(e) => {
                        c.spool_errors.fetch_add(1, Ordering::Relaxed);
                        c.dropped.add("spool", "spool_error", 1);
                        tracing::debug!(error = %e, "kafka spool: append failed");
                    }
                }
                if let Some(seg) = replayed_from {
                    s.ack(seg);
                }
                c.spool_pending.store(s.pending(), Ordering::SeqCst);
                c.spool_bytes.store(s.bytes(), Ordering::SeqCst);
            }
            _ => {
                if shutdown {
                    c.dropped.add("shutdown", "shutdown", 1);
                } else if stage == "producer" && code == Some(RDKafkaErrorCode::QueueFull) {
                    c.dropped.add("producer", "queue_full", 1);
                } else {
                    let reason = match code {
                        Some(code) => format!("delivery_failed:{code:?}"),
                        None => "delivery_failed:unknown".to_owned(),
                    };
                    c.dropped.add(stage, &reason, 1);
                }
                if let (Some(spool), Some(seg)) = (&self.spool, replayed_from) {
                    let mut s = spool.lock().unwrap_or_else(|e| e.into_inner());
                    s.ack(seg);
                    c.spool_bytes.store(s.bytes(), Ordering::SeqCst);
                }
            }
        }
        c.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// librdkafka's callbacks, run on the producer's polling thread.
pub(crate) struct Ctx(Arc<Shared>);

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // Connection failures repeat every few seconds during an outage: the health check says
        // it once, so librdkafka's own lines stay at DEBUG.
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::error!(facility = fac, "librdkafka: {message}")
            }
            _ => tracing::debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                self.0.counters.broker_up.store(false, Ordering::Relaxed);
                tracing::debug!("librdkafka: {reason}");
            }
            Some(RDKafkaErrorCode::Fatal) => {
                tracing::error!("kafka: fatal producer error: {reason}")
            }
            _ => tracing::debug!(error = %error, "librdkafka: {reason}"),
        }
    }
}

impl ProducerContext for Ctx {
    /// 0 for a fresh event; `segment + 1` for a record replayed from the spool.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let replayed_from = opaque.checked_sub(1).map(|s| s as u64);
        let c = &self.0.counters;
        match result {
            Ok(_) => {
                c.delivered.fetch_add(1, Ordering::Relaxed);
                c.broker_up.store(true, Ordering::Relaxed);
                c.in_flight.fetch_sub(1, Ordering::SeqCst);
                if let (Some(spool), Some(seg)) = (&self.0.spool, replayed_from) {
                    let mut s = spool.lock().unwrap_or_else(|e| e.into_inner());
                    s.ack(seg);
                    c.spool_bytes.store(s.bytes(), Ordering::SeqCst);
                }
            }
            Err((e, msg)) => self.0.fail(
                "delivery",
                e.rdkafka_error_code(),
                msg.key().unwrap_or_default(),
                msg.payload().unwrap_or_default(),
                replayed_from,
            ),
        }
    }
}

/// The current producer. Replaced after a fatal error (an idempotent producer becomes fatal,
/// for instance, when the broker cannot continue its sequence after messages timed out).
pub(crate) type Client = Arc<arc_swap::ArcSwap<ThreadedProducer<Ctx>>>;

/// The producer task: encodes, produces, spools, replays.
pub(crate) struct Worker {
    producer: Client,
    client_config: ClientConfig,
    shared: Arc<Shared>,
    topic: String,
    encoder: crate::sink::LineEncoder,
    clock: WallClock,
    key: String,
    queue_full_retry: Duration,
    producer_queue_size: usize,
    /// librdkafka's queue stayed full for the whole retry time: later events try once, without
    /// waiting, until one is taken.
    saturated: bool,
    grace_ms: Arc<AtomicU64>,
}

impl Worker {
    pub(crate) fn new(
        cfg: &KafkaSection,
        client_config: &ClientConfig,
        observer: &str,
        interfaces: &HashMap<u32, String>,
        shared: Arc<Shared>,
        grace_ms: Arc<AtomicU64>,
    ) -> Result<(Self, Client), KafkaError> {
        let producer: ThreadedProducer<Ctx> =
            client_config.create_with_context(Ctx(shared.clone()))?;
        let producer = Arc::new(arc_swap::ArcSwap::from_pointee(producer));
        Ok((
            Self {
                producer: producer.clone(),
                client_config: client_config.clone(),
                shared,
                topic: cfg.topic.clone(),
                encoder: crate::sink::LineEncoder::new(Encoder::new(observer, interfaces)),
                clock: WallClock::new(),
                key: String::with_capacity(40),
                queue_full_retry: Duration::from_millis(cfg.queue_full_retry_ms),
                producer_queue_size: cfg.producer_queue_size,
                saturated: false,
                grace_ms,
            },
            producer,
        ))
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<crate::sink::SharedEvent>) {
        let mut batch = Vec::with_capacity(256);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sync = Instant::now();
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, 256) => {
                    if n == 0 {
                        break;
                    }
                    for e in batch.drain(..) {
                        self.handle(&e).await;
                    }
                }
                _ = tick.tick() => {}
            }
            self.replace_if_fatal();
            self.replay();
            if last_sync.elapsed() >= Duration::from_secs(1) {
                last_sync = Instant::now();
                self.clock.resync();
                self.sync_spool();
            }
        }
        self.finish().await;
    }

    /// A producer in a fatal state fails every message: its queue has been failed into the
    /// spool (or counted `delivery_failed:Fatal`); continue with a new one.
    fn replace_if_fatal(&mut self) {
        let Some((code, reason)) = self.producer.load().client().fatal_error() else {
            return;
        };
        match self
            .client_config
            .create_with_context::<_, ThreadedProducer<Ctx>>(Ctx(self.shared.clone()))
        {
            Ok(fresh) => {
                tracing::warn!(
                    "kafka: the producer hit a fatal error ({code:?}: {reason}); replaced it"
                );
                let old = self.producer.swap(Arc::new(fresh));
                old.purge(PurgeConfig::default().queue().inflight().non_blocking());
                // Dropping it waits for its polling thread and a last flush.
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(e) => tracing::error!(error = %e, "kafka: cannot create a new producer"),
        }
    }

    fn spool_pending(&self) -> bool {
        self.shared.spool.is_some() && self.shared.counters.spool_pending.load(Ordering::SeqCst) > 0
    }

    async fn handle(&mut self, e: &crate::sink::Shared) {
        let q = &e.event.query;
        // The line the JSON-lines output writes too (encoded once, by whichever is first);
        // Kafka documents are the JSON lines without their newline.
        let line = e.line(&mut self.encoder, &self.clock);
        let doc = line.strip_suffix(b"\n").unwrap_or(&line);
        self.key.clear();
        let _ = write!(self.key, "{}", q.src);
        if self.spool_pending() {
            // Behind the records already waiting, so the order is kept.
            self.shared
                .fail("producer", None, self.key.as_bytes(), doc, None);
            return;
        }
        let deadline = if self.saturated {
            Instant::now()
        } else {
            Instant::now() + self.queue_full_retry
        };
        loop {
            let record = BaseRecord::with_opaque_to(&self.topic, 0)
                .key(self.key.as_bytes())
                .payload(doc);
            match self.producer.load().send(record) {
                Ok(()) => {
                    self.saturated = false;
                    return;
                }
                Err((e, _)) => {
                    let code = e.rdkafka_error_code();
                    if code == Some(RDKafkaErrorCode::QueueFull) && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    }
                    if code == Some(RDKafkaErrorCode::QueueFull) {
                        self.saturated = true;
                    }
                    self.shared
                        .fail("producer", code, self.key.as_bytes(), doc, None);
                    return;
                }
            }
        }
    }

    /// Hands spooled records to librdkafka while the brokers answer and it has room.
    fn replay(&mut self) {
        let Some(spool) = &self.shared.spool else {
            return;
        };
        let c = &self.shared.counters;
        if c.spool_pending.load(Ordering::SeqCst) == 0 || !c.broker_up.load(Ordering::Relaxed) {
            return;
        }
        let room = (self.producer_queue_size / 2)
            .saturating_sub(self.producer.load().in_flight_count().max(0) as usize)
            .min(5000);
        let mut s = spool.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..room {
            let rec = match s.peek() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "kafka spool: read failed; retrying later");
                    break;
                }
            };
            let segment = rec.segment;
            let record = BaseRecord::with_opaque_to(&self.topic, segment as usize + 1)
                .key(&rec.key[..])
                .payload(&rec.payload[..]);
            match self.producer.load().send(record) {
                Ok(()) => {
                    c.in_flight.fetch_add(1, Ordering::SeqCst);
                    s.take();
                    c.replayed.fetch_add(1, Ordering::Relaxed);
                }
                Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    break;
                }
                Err((e, _)) => {
                    // librdkafka refused it outright: append it again (or drop it if it can
                    // never succeed), and try the rest on a later tick.
                    // `peek` above holds this record, so `take` hands it over.
                    let Some(rec) = s.take() else { break };
                    c.in_flight.fetch_add(1, Ordering::SeqCst);
                    c.spool_pending.store(s.pending(), Ordering::SeqCst);
                    drop(s);
                    self.shared.fail(
                        "producer",
                        e.rdkafka_error_code(),
                        &rec.key,
                        &rec.payload,
                        Some(segment),
                    );
                    return;
                }
            }
        }
        c.spool_pending.store(s.pending(), Ordering::SeqCst);
        c.spool_bytes.store(s.bytes(), Ordering::SeqCst);
    }

    fn sync_spool(&self) {
        if let Some(spool) = &self.shared.spool {
            let mut s = spool.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = s.sync() {
                tracing::warn!(error = %e, "kafka spool: sync failed");
            }
            self.shared
                .counters
                .spool_bytes
                .store(s.bytes(), Ordering::SeqCst);
        }
    }

    /// The channel is closed and drained: deliver within the grace time, then purge librdkafka
    /// (its delivery reports put the rest into the spool, or count it `shutdown`).
    async fn finish(self) {
        let grace = Duration::from_millis(self.grace_ms.load(Ordering::SeqCst));
        let deadline = Instant::now() + grace;
        // flush(0) sends lingering batches at once; the waiting is done here, without blocking
        // the runtime.
        let _ = self.producer.load().flush(Duration::ZERO);
        while self.producer.load().in_flight_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = self.producer.load().in_flight_count();
        if left > 0 {
            tracing::warn!(
                messages = left,
                "kafka: grace time over, {} the rest",
                if self.shared.spool.is_some() {
                    "spooling"
                } else {
                    "dropping"
                }
            );
            self.producer
                .load()
                .purge(PurgeConfig::default().queue().inflight().non_blocking());
            let until = Instant::now() + Duration::from_secs(3);
            while self.producer.load().in_flight_count() > 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.sync_spool();
        // Unlock the spool directory now: the health check's blocking metadata request may keep
        // the producer (and through its context this spool) alive for seconds after shutdown,
        // and a sink started again meanwhile must be able to open the spool.
        if let Some(spool) = &self.shared.spool {
            let mut s = spool.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = s.close() {
                tracing::warn!(error = %e, "kafka spool: sync at close failed");
            }
        }
    }
}

/// The health check: metadata for the topic, every 2 s while the brokers cannot be reached (or
/// the topic is missing) and every 10 s while they can. Logs only the changes.
pub(crate) async fn health(
    client: Client,
    brokers: String,
    topic: String,
    counters: Arc<KafkaCounters>,
) {
    let mut last: Option<Result<usize, String>> = None;
    loop {
        let result = {
            let client = client.load_full();
            let topic = topic.clone();
            tokio::task::spawn_blocking(move || check(&client, &topic))
                .await
                .unwrap_or_else(|e| Err(format!("health check failed: {e}")))
        };
        let up = result.is_ok();
        counters.broker_up.store(up, Ordering::Relaxed);
        let changed = match (&last, &result) {
            (None, _) => true,
            (Some(a), b) => a.is_ok() != b.is_ok(),
        };
        if changed {
            match &result {
                Ok(partitions) => tracing::info!(
                    brokers = %brokers,
                    topic = %topic,
                    partitions,
                    "kafka: brokers reachable"
                ),
                Err(e) => tracing::warn!(
                    topic = %topic,
                    "kafka: cannot reach brokers {brokers} ({e}); retrying in the background, \
                     events wait in the queues meanwhile"
                ),
            }
        }
        last = Some(result);
        tokio::time::sleep(Duration::from_secs(if up { 10 } else { 2 })).await;
    }
}

fn check(client: &ThreadedProducer<Ctx>, topic: &str) -> Result<usize, String> {
    let md = client
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| format!("topic {topic:?} is not in the metadata"))?;
    if let Some(err) = t.error() {
        return Err(format!("topic {topic:?}: {}", RDKafkaErrorCode::from(err)));
    }
    if t.partitions().is_empty() {
        return Err(format!("topic {topic:?} has no partitions"));
    }
    Ok(t.partitions().len())
}
