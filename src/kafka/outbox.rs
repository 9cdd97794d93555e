//! The outbox: hands records to Kafka without waiting for the broker, and without losing them
//! when the broker is slow or gone.
//!
//! Normally a record goes straight into librdkafka's bounded in-memory queue (idempotent
//! producer, never timing out) and `send` returns at once. When that queue is full, or no
//! delivery has completed for `degraded_after` while records are outstanding, the outbox turns
//! to the [`Spool`]: new records are appended to disk, and a drainer thread feeds the spool to
//! Kafka in order, advancing the spool's cursor only after Kafka acknowledged a whole batch.
//! Once the spool is empty and Kafka healthy, records go straight to Kafka again.
//!
//! Exactly once into Kafka: a record is either delivered from memory (the idempotent producer
//! retries without duplicating), or it failed without having been sent and is spooled, or it
//! was spooled first. The one window for a duplicate is a crash (or a shutdown that has to
//! abandon in-flight requests) after Kafka acknowledged a spooled batch but before the cursor
//! was written; the duplicate then has the same click id, and the aggregator's dedup by
//! impression absorbs it. The window for a loss is a kill -9 while records sit in the
//! in-memory queue, at most `queue_capacity` of them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};

use crate::config::{KafkaConfig, RedirectConfig};
use crate::spool::{Spool, SpoolRecord, frame_len};

/// Delivery opaque tag of records the drainer sends from the spool; direct records carry
/// their enqueue time (microseconds since the outbox started) instead.
const FROM_SPOOL: usize = 1 << 63;
const DRAIN_BATCH: usize = 2_000;

/// Where `send` put the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Kafka,
    Spool,
}

/// What the outbox exports to /metrics.
#[derive(Clone)]
pub struct OutboxMetrics {
    /// Records by route: kafka, spool.
    pub routed: Family<Vec<(&'static str, &'static str)>, Counter>,
    pub delivered: Counter,
    pub produce_latency: Histogram,
    pub queue_depth: Gauge,
    pub spool_records: Gauge,
    pub spool_bytes: Gauge,
    pub spool_errors: Counter,
    pub degraded: Gauge,
}

impl OutboxMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            routed: Family::default(),
            delivered: Counter::default(),
            produce_latency: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0,
            ]),
            queue_depth: Gauge::default(),
            spool_records: Gauge::default(),
            spool_bytes: Gauge::default(),
            spool_errors: Counter::default(),
            degraded: Gauge::default(),
        };
        registry.register(
            "outbox_records",
            "Records handed to the outbox, by route (kafka: in-memory queue, spool: disk)",
            m.routed.clone(),
        );
        registry.register(
            "outbox_delivered",
            "Records acknowledged by Kafka",
            m.delivered.clone(),
        );
        registry.register(
            "outbox_produce_latency_seconds",
            "From send to Kafka's acknowledgement, for records that went straight to Kafka",
            m.produce_latency.clone(),
        );
        registry.register(
            "outbox_queue_depth",
            "Records in librdkafka's in-memory queue, sent or not",
            m.queue_depth.clone(),
        );
        registry.register(
            "outbox_spool_records",
            "Records in the disk spool waiting for Kafka",
            m.spool_records.clone(),
        );
        registry.register(
            "outbox_spool_bytes",
            "Bytes in the disk spool waiting for Kafka",
            m.spool_bytes.clone(),
        );
        registry.register(
            "outbox_spool_errors",
            "Failed spool writes (disk full or broken): records that could not be kept",
            m.spool_errors.clone(),
        );
        registry.register(
            "outbox_degraded",
            "1 while Kafka is unreachable or not acknowledging",
            m.degraded.clone(),
        );
        m
    }
}

struct Shared {
    spool: Mutex<Spool>,
    /// New records go to the spool.
    spooling: AtomicBool,
    /// Kafka is not acknowledging.
    degraded: AtomicBool,
    stop: AtomicBool,
    wake: (Mutex<()>, Condvar),
    started: Instant,
    last_delivery_us: AtomicU64,
    batch_ok: AtomicU64,
    batch_failed: AtomicU64,
    metrics: OutboxMetrics,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    fn enter_degraded(&self, why: &str) {
        self.spooling.store(true, Ordering::SeqCst);
        if !self.degraded.swap(true, Ordering::SeqCst) {
            tracing::warn!("outbox: Kafka {why}; spooling new records to disk");
            self.metrics.degraded.set(1);
        }
    }

    fn spool(&self, rec: &SpoolRecord) -> std::io::Result<()> {
        let result = self.spool.lock().unwrap().append(rec);
        match &result {
            Ok(()) => {
                self.metrics
                    .routed
                    .get_or_create(&vec![("route", "spool")])
                    .inc();
                self.wake.1.notify_one();
            }
            Err(e) => {
                self.metrics.spool_errors.inc();
                tracing::error!("outbox: cannot write the spool: {e}");
            }
        }
        result
    }
}

struct Context {
    shared: Arc<Shared>,
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.shared
                .enter_degraded("is unreachable (all brokers down)");
        } else {
            tracing::warn!("librdkafka: {error}: {reason}");
        }
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let s = &self.shared;
        let from_spool = opaque & FROM_SPOOL != 0;
        match result {
            Ok(_) => {
                let now = s.now_us();
                s.last_delivery_us.store(now, Ordering::Relaxed);
                s.metrics.delivered.inc();
                if from_spool {
                    s.batch_ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    let waited = now.saturating_sub(opaque as u64);
                    s.metrics.produce_latency.observe(waited as f64 / 1e6);
                }
            }
            Err((err, msg)) => {
                if from_spool {
                    // Still in the spool; the drainer sends the batch again.
                    s.batch_failed.fetch_add(1, Ordering::SeqCst);
                } else {
                    tracing::debug!("outbox: delivery failed ({err}); spooling the record");
                    let rec = SpoolRecord {
                        topic: msg.topic().to_string(),
                        key: msg.key().unwrap_or_default().to_vec(),
                        value: msg.payload().unwrap_or_default().to_vec(),
                    };
                    let _ = s.spool(&rec);
                }
            }
        }
    }
}

/// See the module documentation.
pub struct Outbox {
    producer: Arc<ThreadedProducer<Context>>,
    shared: Arc<Shared>,
    drainer: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("neither Kafka nor the spool could take the record: {0}")]
pub struct OutboxFull(#[source] std::io::Error);

impl Outbox {
    pub fn start(
        kafka: &KafkaConfig,
        redirect: &RedirectConfig,
        metrics: OutboxMetrics,
    ) -> anyhow::Result<Self> {
        let spool = Spool::open(
            &redirect.spool_dir,
            redirect.spool_fsync,
            Duration::from_millis(redirect.spool_fsync_interval_ms),
            redirect.spool_segment_bytes,
        )?;
        let pending = spool.pending_records();
        let shared = Arc::new(Shared {
            spooling: AtomicBool::new(pending > 0),
            spool: Mutex::new(spool),
            degraded: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            wake: (Mutex::new(()), Condvar::new()),
            started: Instant::now(),
            last_delivery_us: AtomicU64::new(0),
            batch_ok: AtomicU64::new(0),
            batch_failed: AtomicU64::new(0),
            metrics,
        });
        if pending > 0 {
            tracing::info!("outbox: {pending} spooled records from a previous run to deliver");
        }
        let mut cfg = super::producer_config(kafka);
        cfg.set(
            "queue.buffering.max.messages",
            redirect.queue_capacity.to_string(),
        );
        let producer: ThreadedProducer<Context> = cfg.create_with_context(Context {
            shared: shared.clone(),
        })?;
        let producer = Arc::new(producer);
        let degraded_after = Duration::from_millis(redirect.degraded_after_ms);
        let drainer = {
            let (producer, shared) = (producer.clone(), shared.clone());
            std::thread::Builder::new()
                .name("outbox-drainer".into())
                .spawn(move || drain_loop(&producer, &shared, degraded_after))?
        };
        Ok(Self {
            producer,
            shared,
            drainer: Mutex::new(Some(drainer)),
        })
    }

    /// Takes a record; returns once it is in Kafka's in-memory queue or in the spool file.
    pub fn send(&self, topic: &str, key: &[u8], value: &[u8]) -> Result<Route, OutboxFull> {
        let s = &self.shared;
        if !s.spooling.load(Ordering::Acquire) {
            let record = BaseRecord::with_opaque_to(topic, s.now_us() as usize)
                .key(key)
                .payload(value);
            match self.producer.send(record) {
                Ok(()) => {
                    s.metrics
                        .routed
                        .get_or_create(&vec![("route", "kafka")])
                        .inc();
                    return Ok(Route::Kafka);
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    s.enter_degraded("is not keeping up (in-memory queue full)");
                }
                Err((e, _)) => tracing::warn!("outbox: produce failed ({e}); spooling"),
            }
        }
        let rec = SpoolRecord {
            topic: topic.to_string(),
            key: key.to_vec(),
            value: value.to_vec(),
        };
        s.spool(&rec).map_err(OutboxFull)?;
        Ok(Route::Spool)
    }

    /// Healthy, or at least not filling the spool because Kafka is gone.
    pub fn ready(&self) -> bool {
        !(self.shared.degraded.load(Ordering::Relaxed) && self.spool_records() > 0)
    }

    pub fn degraded(&self) -> bool {
        self.shared.degraded.load(Ordering::Relaxed)
    }

    pub fn spool_records(&self) -> u64 {
        self.shared.spool.lock().unwrap().pending_records()
    }

    /// Records neither acknowledged by Kafka nor waiting on disk.
    pub fn in_memory(&self) -> u64 {
        self.producer.in_flight_count().max(0) as u64
    }

    /// Graceful shutdown: waits up to `grace` for Kafka to take everything in memory, then
    /// moves what is left to the spool, where the next start picks it up.
    pub fn shutdown(&self, grace: Duration) {
        let s = &self.shared;
        s.stop.store(true, Ordering::SeqCst);
        s.wake.1.notify_all();
        if let Some(h) = self.drainer.lock().unwrap().take() {
            let _ = h.join();
        }
        if self.producer.flush(grace).is_err() {
            let left = self.producer.in_flight_count();
            tracing::warn!("outbox: Kafka did not take {left} records in {grace:?}; spooling them");
            self.producer
                .purge(PurgeConfig::default().queue().inflight());
            // Serve the purged records' delivery reports, which spool them.
            let _ = self.producer.flush(Duration::from_secs(5));
        }
        let mut spool = s.spool.lock().unwrap();
        if let Err(e) = spool.sync() {
            tracing::error!("outbox: final spool sync failed: {e}");
        }
        let pending = spool.pending_records();
        if pending > 0 {
            tracing::info!("outbox: {pending} records left in the spool for the next start");
        }
    }
}

fn drain_loop(producer: &ThreadedProducer<Context>, s: &Shared, degraded_after: Duration) {
    loop {
        refresh_gauges(producer, s);
        let idle = Duration::from_micros(
            s.now_us()
                .saturating_sub(s.last_delivery_us.load(Ordering::Relaxed)),
        );
        if producer.in_flight_count() > 0 && idle > degraded_after {
            s.enter_degraded("is not acknowledging");
        }
        {
            let mut spool = s.spool.lock().unwrap();
            if spool.sync_due()
                && let Err(e) = spool.sync()
            {
                tracing::error!("outbox: spool fsync failed: {e}");
            }
        }
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        let batch = match s.spool.lock().unwrap().peek(DRAIN_BATCH) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("outbox: cannot read the spool: {e}");
                sleep_or_wake(s, Duration::from_secs(1));
                continue;
            }
        };
        if batch.is_empty() {
            if !s.degraded.load(Ordering::SeqCst) {
                s.spooling.store(false, Ordering::Release);
            }
            sleep_or_wake(s, Duration::from_millis(50));
            continue;
        }
        s.spooling.store(true, Ordering::Release);
        if deliver_batch(producer, s, &batch) {
            let (pos, _) = batch.last().unwrap();
            let bytes = batch.iter().map(|(_, r)| frame_len(r)).sum();
            let committed = s
                .spool
                .lock()
                .unwrap()
                .commit(*pos, batch.len() as u64, bytes);
            if let Err(e) = committed {
                tracing::error!("outbox: cannot advance the spool cursor: {e}");
            }
            if s.degraded.swap(false, Ordering::SeqCst) {
                tracing::info!("outbox: Kafka is acknowledging again; draining the spool");
                s.metrics.degraded.set(0);
            }
        } else if !s.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Sends one spooled batch and waits for every acknowledgement; `false` if any failed or the
/// outbox is stopping (the batch stays in the spool either way).
fn deliver_batch(
    producer: &ThreadedProducer<Context>,
    s: &Shared,
    batch: &[(crate::spool::Position, SpoolRecord)],
) -> bool {
    s.batch_ok.store(0, Ordering::SeqCst);
    s.batch_failed.store(0, Ordering::SeqCst);
    for (_, rec) in batch {
        let mut record = BaseRecord::with_opaque_to(&rec.topic, FROM_SPOOL)
            .key(&rec.key[..])
            .payload(&rec.value[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    if s.stop.load(Ordering::SeqCst) {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    tracing::error!("outbox: cannot produce a spooled record: {e}");
                    return false;
                }
            }
        }
    }
    let n = batch.len() as u64;
    loop {
        let (ok, failed) = (
            s.batch_ok.load(Ordering::SeqCst),
            s.batch_failed.load(Ordering::SeqCst),
        );
        if ok + failed == n {
            return failed == 0;
        }
        if s.stop.load(Ordering::SeqCst) {
            return false;
        }
        refresh_gauges(producer, s);
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn refresh_gauges(producer: &ThreadedProducer<Context>, s: &Shared) {
    let m = &s.metrics;
    m.queue_depth.set(producer.in_flight_count() as i64);
    if let Ok(spool) = s.spool.try_lock() {
        m.spool_records.set(spool.pending_records() as i64);
        m.spool_bytes.set(spool.pending_bytes() as i64);
    }
}

fn sleep_or_wake(s: &Shared, timeout: Duration) {
    let guard = s.wake.0.lock().unwrap();
    let _ = s.wake.1.wait_timeout(guard, timeout);
}
