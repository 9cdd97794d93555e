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
//!
//! Poison records: a record the broker will never take (larger than its maximum message size,
//! for a topic that does not exist or that we may not write, ...) must not wait at the head of
//! the spool, retried forever while every click behind it waits too. [`classify`] sorts
//! librdkafka's error codes into those (`Fatal`) and those worth retrying; a refused record
//! goes to the [`Quarantine`] file beside the spool (with a metric and an ERROR line), on the
//! in-memory path and on the spool path alike, and the records behind it move on. Brokers
//! refuse whole batches, so a record refused for its own bytes (size, format) in a batch with
//! others is tried again alone before it is quarantined: its neighbours are not poison.
//!
//! Readiness: delivery can also stall for reasons no classification catches (a fatal producer
//! error, a broker that keeps answering with a retriable error). [`Outbox::readiness`] turns
//! not-ready once no record has reached Kafka for `delivery_stuck_after_ms` while records
//! wait, so the stall is visible to whatever routes traffic and pages people.

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

use super::send::{Verdict, classify, classify_error, send};
use crate::config::{KafkaConfig, RedirectConfig};
use crate::spool::{Quarantine, Spool, SpoolRecord, frame_len};

/// Delivery opaque tag of records the drainer sends from the spool: `FROM_SPOOL | attempt <<
/// 32 | index in the batch`. Direct records carry their enqueue time (microseconds since the
/// outbox started) instead.
const FROM_SPOOL: usize = 1 << 63;
const ATTEMPT_MASK: usize = 0x7fff_ffff;
const DRAIN_BATCH: usize = 2_000;

/// Where `send` put the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Kafka,
    Spool,
    /// Refused by Kafka for good (e.g. larger than the maximum message size): set aside in
    /// the quarantine file, never delivered.
    Quarantine,
}

/// Whether the outbox delivers, and if not why: what /readyz reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Why not ready; empty when ready.
    pub reasons: Vec<String>,
    pub kafka_degraded: bool,
    pub spool_records: u64,
    pub in_memory: u64,
    /// How long records have been waiting without any reaching Kafka (0: none waiting).
    pub undelivered_for_ms: u64,
    /// Records set aside since start.
    pub quarantined: u64,
    /// The last delivery error seen, if delivery is not flowing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
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
    /// Records Kafka refused for good and the outbox set aside, by reason.
    pub quarantined: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Milliseconds records have waited with none reaching Kafka.
    pub undelivered_for_ms: Gauge,
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
            quarantined: Family::default(),
            undelivered_for_ms: Gauge::default(),
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
        registry.register(
            "outbox_quarantined",
            "Records Kafka refused for good (too large, unknown topic, not authorized, ...), \
             set aside in quarantine.ndjson in the spool directory instead of blocking the \
             records behind them, by reason",
            m.quarantined.clone(),
        );
        registry.register(
            "outbox_undelivered_for_ms",
            "How long records have been waiting with none reaching Kafka (0: none waiting)",
            m.undelivered_for_ms.clone(),
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
    /// Last delivery report handled (delivered, spooled or quarantined): progress.
    last_delivery_us: AtomicU64,
    /// When librdkafka last went from holding nothing to holding records (0: holds nothing).
    busy_since_us: AtomicU64,
    /// When the drainer first failed to move the spool's head batch (0: not failing).
    drain_blocked_since_us: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// The spool batch being delivered: each record's outcome, by index.
    attempt: Mutex<Attempt>,
    quarantine: Mutex<Quarantine>,
    quarantined: AtomicU64,
    stuck_after: Duration,
    metrics: OutboxMetrics,
}

/// One delivery attempt of a spool batch. Reports of older attempts (a batch abandoned and
/// sent again) carry another id and are ignored.
#[derive(Default)]
struct Attempt {
    id: usize,
    outcomes: Vec<Option<Outcome>>,
    done: usize,
}

#[derive(Debug, Clone)]
enum Outcome {
    Delivered,
    /// `sync`: `send` refused it (librdkafka itself, about this very record), as opposed to a
    /// delivery report for a whole batch.
    Failed {
        code: Option<RDKafkaErrorCode>,
        error: String,
        sync: bool,
    },
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

    /// How long records have been waiting with no delivery report, on either path.
    fn undelivered_for(&self) -> Duration {
        let now = self.now_us();
        let busy = self.busy_since_us.load(Ordering::Relaxed);
        let memory = if busy == 0 {
            0
        } else {
            now.saturating_sub(busy.max(self.last_delivery_us.load(Ordering::Relaxed)))
        };
        let blocked = self.drain_blocked_since_us.load(Ordering::Relaxed);
        let drain = if blocked == 0 {
            0
        } else {
            now.saturating_sub(blocked)
        };
        Duration::from_micros(memory.max(drain))
    }

    fn note_error(&self, error: String) {
        *self.last_error.lock().unwrap() = Some(error);
    }

    fn record_outcome(&self, opaque: usize, outcome: Outcome) {
        let id = (opaque >> 32) & ATTEMPT_MASK;
        let index = opaque & 0xffff_ffff;
        let mut a = self.attempt.lock().unwrap();
        if a.id == id
            && let Some(slot @ None) = a.outcomes.get_mut(index)
        {
            *slot = Some(outcome);
            a.done += 1;
        }
    }

    /// Sets a refused record aside: quarantine file, metric, ERROR line. On `Err` the record
    /// is not kept there and the caller must keep it elsewhere.
    fn quarantine(
        &self,
        rec: &SpoolRecord,
        reason: &'static str,
        error: &str,
        via: &'static str,
    ) -> std::io::Result<()> {
        let mut q = self.quarantine.lock().unwrap();
        match q.append(rec, reason, error, via) {
            Ok(()) => {
                self.quarantined.fetch_add(1, Ordering::SeqCst);
                self.metrics
                    .quarantined
                    .get_or_create(&vec![("reason", reason)])
                    .inc();
                let key = String::from_utf8_lossy(&rec.key);
                tracing::error!(
                    topic = %rec.topic,
                    key = %key.chars().take(128).collect::<String>(),
                    bytes = rec.value.len(),
                    reason,
                    via,
                    file = %q.path().display(),
                    "outbox: Kafka refused a record for good ({error}); quarantined it, the \
                     records behind it go on"
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    "outbox: cannot write the quarantine {}: {e}",
                    q.path().display()
                );
                Err(e)
            }
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
        self.shared.note_error(format!("{error}: {reason}"));
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
                    s.record_outcome(opaque, Outcome::Delivered);
                } else {
                    let waited = now.saturating_sub(opaque as u64);
                    s.metrics.produce_latency.observe(waited as f64 / 1e6);
                    // Kafka acknowledges: not degraded, even if no spool batch follows to
                    // say so (a degraded flag left over from one slow record kept /readyz
                    // reporting a degraded Kafka, and new records spooling, until the next
                    // click went through the spool).
                    if s.degraded.load(Ordering::Relaxed)
                        && s.degraded.swap(false, Ordering::SeqCst)
                    {
                        tracing::info!("outbox: Kafka is acknowledging again");
                        s.metrics.degraded.set(0);
                    }
                }
            }
            Err((err, msg)) => {
                if from_spool {
                    // Still in the spool; the drainer judges the batch once it is complete.
                    let outcome = Outcome::Failed {
                        code: err.rdkafka_error_code(),
                        error: err.to_string(),
                        sync: false,
                    };
                    s.record_outcome(opaque, outcome);
                    return;
                }
                // Spooled or quarantined, the record has moved on: progress.
                s.last_delivery_us.store(s.now_us(), Ordering::Relaxed);
                let rec = SpoolRecord {
                    topic: msg.topic().to_string(),
                    key: msg.key().unwrap_or_default().to_vec(),
                    value: msg.payload().unwrap_or_default().to_vec(),
                };
                match classify_error(err) {
                    Verdict::Fatal {
                        reason,
                        record_level: false,
                    } if s
                        .quarantine(&rec, reason, &err.to_string(), "memory")
                        .is_ok() => {}
                    verdict => {
                        // Retriable, or refused for its bytes in a batch it may have shared
                        // with good records: the drainer retries it (alone, if refused again).
                        tracing::debug!("outbox: delivery failed ({err}, {verdict:?}); spooling");
                        s.note_error(err.to_string());
                        let _ = s.spool(&rec);
                    }
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
            busy_since_us: AtomicU64::new(0),
            drain_blocked_since_us: AtomicU64::new(0),
            last_error: Mutex::new(None),
            attempt: Mutex::new(Attempt::default()),
            quarantine: Mutex::new(Quarantine::open(&redirect.spool_dir)?),
            quarantined: AtomicU64::new(0),
            stuck_after: Duration::from_millis(redirect.delivery_stuck_after_ms),
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
            // A full queue is not waited for: the spool takes the record at once.
            match send(&self.producer, record, || false) {
                Ok(()) => {
                    s.metrics
                        .routed
                        .get_or_create(&vec![("route", "kafka")])
                        .inc();
                    return Ok(Route::Kafka);
                }
                Err(full) if full.queue_full() => {
                    s.enter_degraded("is not keeping up (in-memory queue full)");
                }
                Err(failed) => {
                    let e = failed.error;
                    let rec = SpoolRecord {
                        topic: topic.to_string(),
                        key: key.to_vec(),
                        value: value.to_vec(),
                    };
                    // librdkafka refused this very record (e.g. over message.max.bytes):
                    // spooled, it would block the spool for good.
                    if let Verdict::Fatal { reason, .. } = classify_error(&e)
                        && s.quarantine(&rec, reason, &e.to_string(), "memory").is_ok()
                    {
                        return Ok(Route::Quarantine);
                    }
                    tracing::warn!("outbox: produce failed ({e}); spooling");
                    s.spool(&rec).map_err(OutboxFull)?;
                    return Ok(Route::Spool);
                }
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

    /// Healthy: see [`Outbox::readiness`].
    pub fn ready(&self) -> bool {
        self.readiness().ready
    }

    /// Not ready while Kafka is gone and the spool fills, or while delivery has made no
    /// progress for `delivery_stuck_after_ms` with records waiting. Clicks are still taken
    /// then (the spool keeps them); readiness tells the load balancer and the operator that
    /// none of them reaches the aggregator.
    pub fn readiness(&self) -> Readiness {
        let s = &self.shared;
        let kafka_degraded = self.degraded();
        let spool_records = self.spool_records();
        let in_memory = self.in_memory();
        let waiting = spool_records + in_memory > 0;
        let undelivered_for = if waiting {
            s.undelivered_for()
        } else {
            Duration::ZERO
        };
        let last_error = s.last_error.lock().unwrap().clone();
        let mut reasons = Vec::new();
        if kafka_degraded && spool_records > 0 {
            reasons.push(format!(
                "kafka_unreachable: Kafka is not acknowledging; {spool_records} records \
                 spooled to disk"
            ));
        }
        if waiting && undelivered_for >= s.stuck_after {
            reasons.push(format!(
                "delivery_stuck: no record reached Kafka for {} ms while {} wait \
                 (last error: {})",
                undelivered_for.as_millis(),
                spool_records + in_memory,
                last_error.as_deref().unwrap_or("none")
            ));
        }
        Readiness {
            ready: reasons.is_empty(),
            reasons,
            kafka_degraded,
            spool_records,
            in_memory,
            undelivered_for_ms: undelivered_for.as_millis() as u64,
            quarantined: self.quarantined(),
            last_error: waiting.then_some(last_error).flatten(),
        }
    }

    /// Records set aside in the quarantine since start.
    pub fn quarantined(&self) -> u64 {
        self.shared.quarantined.load(Ordering::SeqCst)
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
        // Measured from when records started waiting, not from the last delivery: after a
        // quiet hour the first click would otherwise look an hour overdue.
        let busy = s.busy_since_us.load(Ordering::Relaxed);
        let stalled = s
            .now_us()
            .saturating_sub(busy.max(s.last_delivery_us.load(Ordering::Relaxed)));
        if busy != 0 && Duration::from_micros(stalled) > degraded_after {
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
            s.drain_blocked_since_us.store(0, Ordering::Relaxed);
            if !s.degraded.load(Ordering::SeqCst) {
                s.spooling.store(false, Ordering::Release);
            }
            sleep_or_wake(s, Duration::from_millis(50));
            continue;
        }
        s.spooling.store(true, Ordering::Release);
        let delivered = deliver_batch(producer, s, &batch).and_then(|refused| {
            // Set aside before the cursor passes them; a crash in between quarantines them
            // twice, never zero times.
            for (i, reason, error) in refused {
                s.quarantine(&batch[i].1, reason, &error, "spool")
                    .map_err(|e| format!("cannot write the quarantine: {e}"))?;
            }
            Ok(())
        });
        if let Err(why) = delivered {
            if !s.stop.load(Ordering::SeqCst) {
                tracing::debug!("outbox: spool batch not delivered: {why}");
                s.note_error(why);
                let _ = s.drain_blocked_since_us.compare_exchange(
                    0,
                    s.now_us().max(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        } else {
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
            s.drain_blocked_since_us.store(0, Ordering::Relaxed);
            s.last_delivery_us.store(s.now_us(), Ordering::Relaxed);
            if s.degraded.swap(false, Ordering::SeqCst) {
                tracing::info!("outbox: Kafka is acknowledging again; draining the spool");
                s.metrics.degraded.set(0);
            }
        }
    }
}

/// A spooled record Kafka refused for good: (index in the batch, reason, librdkafka's text).
type Refusal = (usize, &'static str, String);

/// Sends one spooled batch and waits for every record's fate. `Ok` lists the records Kafka
/// refused for good (all others are delivered): the caller quarantines them and moves the
/// cursor past the batch. `Err` if any record failed in a way worth retrying, or the outbox
/// is stopping: the whole batch stays in the spool and is sent again.
fn deliver_batch(
    producer: &ThreadedProducer<Context>,
    s: &Shared,
    batch: &[(crate::spool::Position, SpoolRecord)],
) -> Result<Vec<Refusal>, String> {
    let id = {
        let mut a = s.attempt.lock().unwrap();
        a.id = (a.id + 1) & ATTEMPT_MASK;
        a.outcomes = vec![None; batch.len()];
        a.done = 0;
        a.id
    };
    for (i, (_, rec)) in batch.iter().enumerate() {
        let opaque = FROM_SPOOL | (id << 32) | i;
        let record = BaseRecord::with_opaque_to(&rec.topic, opaque)
            .key(&rec.key[..])
            .payload(&rec.value[..]);
        match send(producer, record, || !s.stop.load(Ordering::SeqCst)) {
            Ok(()) => {}
            Err(full) if full.queue_full() => return Err("stopping".into()),
            Err(failed) if failed.verdict() == Verdict::Retryable => {
                return Err(format!("cannot produce a spooled record: {}", failed.error));
            }
            Err(failed) => {
                let e = failed.error;
                let outcome = Outcome::Failed {
                    code: e.rdkafka_error_code(),
                    error: e.to_string(),
                    sync: true,
                };
                s.record_outcome(opaque, outcome);
            }
        }
    }
    let outcomes = loop {
        {
            let mut a = s.attempt.lock().unwrap();
            if a.done == batch.len() {
                break std::mem::take(&mut a.outcomes);
            }
        }
        if s.stop.load(Ordering::SeqCst) {
            return Err("stopping".into());
        }
        refresh_gauges(producer, s);
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut refused = Vec::new();
    let mut alone = Vec::new();
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let Some(Outcome::Failed { code, error, sync }) = outcome else {
            continue;
        };
        match code.map_or(Verdict::Retryable, classify) {
            Verdict::Retryable => return Err(error),
            Verdict::Fatal {
                record_level: true, ..
            } if !sync && batch.len() > 1 => alone.push(i),
            Verdict::Fatal { reason, .. } => refused.push((i, reason, error)),
        }
    }
    // Refused as part of a batch, for the batch's bytes: each gets a try of its own, so only
    // the records that are themselves poison are quarantined.
    for i in alone {
        if let Some((_, reason, error)) = deliver_batch(producer, s, &batch[i..=i])?.pop() {
            refused.push((i, reason, error));
        }
    }
    refused.sort_by_key(|r| r.0);
    Ok(refused)
}

fn refresh_gauges(producer: &ThreadedProducer<Context>, s: &Shared) {
    let m = &s.metrics;
    let in_flight = producer.in_flight_count();
    if in_flight <= 0 {
        s.busy_since_us.store(0, Ordering::Relaxed);
    } else {
        let _ = s.busy_since_us.compare_exchange(
            0,
            s.now_us().max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
    m.undelivered_for_ms
        .set(s.undelivered_for().as_millis() as i64);
    m.queue_depth.set(in_flight as i64);
    if let Ok(spool) = s.spool.try_lock() {
        m.spool_records.set(spool.pending_records() as i64);
        m.spool_bytes.set(spool.pending_bytes() as i64);
    }
}

fn sleep_or_wake(s: &Shared, timeout: Duration) {
    let guard = s.wake.0.lock().unwrap();
    let _ = s.wake.1.wait_timeout(guard, timeout);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a fatal producer error every send fails at once, so nothing is ever in flight
    /// and the old "not acknowledging" check never fired: the spool grew behind a drainer that
    /// retried every 200 ms, and /readyz said ready. Readiness must say stuck, and why.
    #[test]
    fn a_fatal_producer_error_makes_the_outbox_not_ready_with_the_reason() {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("clicks", 1, 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kafka = KafkaConfig {
            brokers: cluster.bootstrap_servers(),
            ..Default::default()
        };
        let redirect = RedirectConfig {
            spool_dir: dir.path().to_path_buf(),
            degraded_after_ms: 60_000,
            delivery_stuck_after_ms: 500,
            ..Default::default()
        };
        let metrics = OutboxMetrics::register(&mut Registry::default());
        let outbox = Outbox::start(&kafka, &redirect, metrics).unwrap();
        let wait = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(15);
            while !done() {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        assert_eq!(outbox.send("clicks", b"k1", b"v1").unwrap(), Route::Kafka);
        wait("the first record", &|| outbox.in_memory() == 0);
        assert!(outbox.ready());
        let rc = unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                outbox.producer.client().native_ptr(),
                rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                c"injected by the test".as_ptr(),
            )
        };
        assert_eq!(
            rc,
            rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR
        );
        // The record is kept (spooled), but it cannot go anywhere.
        assert_eq!(outbox.send("clicks", b"k2", b"v2").unwrap(), Route::Spool);
        wait("not ready", &|| !outbox.ready());
        let r = outbox.readiness();
        assert_eq!(r.spool_records, 1);
        assert!(r.undelivered_for_ms >= 500, "{r:?}");
        assert!(
            r.reasons.iter().any(|x| x.starts_with("delivery_stuck")),
            "{r:?}"
        );
        assert!(
            r.last_error.as_deref().unwrap_or("").contains("atal"),
            "the reason names the fatal error: {r:?}"
        );
        outbox.shutdown(Duration::from_millis(100));
    }
}
