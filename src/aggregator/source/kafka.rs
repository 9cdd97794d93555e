//! Kafka partitions as source partitions. Partitions are assigned statically over every
//! worker of the cluster (partition p to worker p mod workers) with `assign`, not a consumer
//! group: the dataflow owns its offsets, so it can resume and replay exactly, and no
//! rebalance ever moves a partition under a running watermark.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use adclick_dataflows::click::Origin;
use adclick_dataflows::source::{Gap, PartitionReader, Polled, Record};
use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use std::cell::RefCell;
use std::rc::Rc;

use super::decode::{FutureBound, kafka_record};
use crate::aggregator::config::OnGap;
use crate::aggregator::exit::EXIT_DATA_LOST;
use crate::aggregator::raw::{Archived, RawBuffer};
use crate::health::Health;

pub struct KafkaReader {
    consumer: Arc<BaseConsumer>,
    topic: String,
    partitions: Vec<i32>,
    queues: Vec<rdkafka::consumer::base_consumer::PartitionQueue<DefaultConsumerContext>>,
    /// With `--until-end`: the end offsets at start; reaching one finishes the partition.
    stop_at: Option<Vec<i64>>,
    next_offset: Vec<i64>,
    health: Arc<Health>,
    offsets: Watermarks,
    /// Per partition, records the main queue delivered ([`KafkaReader::serve_main_queue`]).
    early: Vec<std::collections::VecDeque<rdkafka::message::OwnedMessage>>,
    /// Where accepted clicks go for the raw archive, if it is kept.
    archive: Option<Rc<RefCell<RawBuffer>>>,
    settings: ReadSettings,
    /// Per partition, since when the broker's log start has been past our position while
    /// nothing arrived: records deleted before the fetcher got them.
    stalled_since: Vec<Option<Instant>>,
}

/// What a reader needs to judge records and gaps, from the aggregator's settings.
#[derive(Clone, Copy, Debug)]
pub struct ReadSettings {
    /// Read to the end offsets found at start, then finish (a batch job).
    pub until_end: bool,
    pub max_future_skew_ms: u64,
    pub on_gap: OnGap,
}

/// How long the log start may stay past our position with nothing delivered before the
/// records in between count as deleted: longer than a fetch round trip and two refreshes of
/// the offsets thread, so records already fetched are never mistaken for lost ones.
const STALL_MS: u128 = 3_000;

/// The latest (low, high) offsets the broker reported per partition, kept fresh by a thread
/// of their own: asking is a broker round trip, which must not stall a worker (it did, by up
/// to its timeout, when the broker was busy).
struct Watermarks {
    latest: Arc<Vec<(AtomicI64, AtomicI64)>>,
    stop: Arc<AtomicBool>,
}

impl Watermarks {
    fn watch(
        consumer: Arc<BaseConsumer>,
        topic: &str,
        partitions: &[i32],
        initial: &[(i64, i64)],
    ) -> Self {
        let latest: Arc<Vec<_>> = Arc::new(
            initial
                .iter()
                .map(|(l, h)| (AtomicI64::new(*l), AtomicI64::new(*h)))
                .collect(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (topic, partitions) = (topic.to_string(), partitions.to_vec());
        let (l, s) = (latest.clone(), stop.clone());
        std::thread::Builder::new()
            .name(format!("offsets-{topic}"))
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    for (i, p) in partitions.iter().enumerate() {
                        if let Ok((low, high)) =
                            consumer.fetch_watermarks(&topic, *p, Duration::from_secs(5))
                        {
                            l[i].0.store(low, Ordering::Relaxed);
                            l[i].1.store(high, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
            .expect("spawning the offsets thread");
        Self { latest, stop }
    }

    fn get(&self, i: usize) -> (i64, i64) {
        let (l, h) = &self.latest[i];
        (l.load(Ordering::Relaxed), h.load(Ordering::Relaxed))
    }
}

impl Drop for Watermarks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl KafkaReader {
    pub fn new(
        brokers: &str,
        topic: &str,
        index: usize,
        peers: usize,
        health: Arc<Health>,
        resume: &std::collections::BTreeMap<i32, u64>,
        settings: ReadSettings,
    ) -> anyhow::Result<Self> {
        let consumer = Arc::new(consumer(brokers)?);
        let count = partition_count(&consumer, topic)?;
        let partitions: Vec<i32> = (0..count)
            .filter(|p| *p as usize % peers == index)
            .collect();
        // A partition resumes where a checkpoint left it, or starts at offset 0: the position
        // we expect. If the broker no longer holds it, the difference is a gap, never skipped.
        let start = |p: &i32| resume.get(p).map_or(0, |o| *o as i64);
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(topic, *p, Offset::Offset(start(p)))?;
        }
        // Known from the start, so a partition with a backlog is never taken for idle while
        // its consumer is still connecting. Asked before any fetch is in flight: a broker may
        // hold a fetch for long (Tansu does, on a backlog), and requests on one connection
        // queue behind it.
        let offsets = partitions
            .iter()
            .map(|p| consumer.fetch_watermarks(topic, *p, Duration::from_secs(30)))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("offsets of topic {topic}"))?;
        consumer.assign(&tpl)?;
        let queues = partitions
            .iter()
            .map(|p| {
                consumer
                    .split_partition_queue(topic, *p)
                    .with_context(|| format!("queue of {topic}/{p}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let stop_at = settings
            .until_end
            .then(|| offsets.iter().map(|(_, high)| *high).collect());
        let n = partitions.len();
        Ok(Self {
            next_offset: partitions.iter().map(start).collect(),
            offsets: Watermarks::watch(consumer.clone(), topic, &partitions, &offsets),
            consumer,
            topic: topic.to_string(),
            partitions,
            queues,
            stop_at,
            health,
            early: vec![Default::default(); n],
            archive: None,
            settings,
            stalled_since: vec![None; n],
        })
    }
}

/// The consumer every reader uses: assigned partitions, no group commits, and no silent
/// jump over missing offsets.
fn consumer(brokers: &str) -> anyhow::Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // librdkafka wants a group id even for assign(); nothing is committed to it.
        .set("group.id", "adclick-aggregator")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Never jump over data: a position the broker no longer holds is an error we see,
        // turn into a `lost` tally, and only then move past (see `KafkaReader::gap`).
        .set("auto.offset.reset", "error")
        // Few large fetches: a backlog is read in big steps (Tansu's SQLite storage scans
        // the rest of the partition on every fetch, so small fetches cost it quadratic
        // time), and the local queue stays bounded by queued.max.messages.kbytes.
        .set("max.partition.fetch.bytes", "16777216")
        .set("fetch.max.bytes", "67108864")
        .set("receive.message.max.bytes", "100000000")
        .create()
        .context("creating the Kafka consumer")
}

/// How many partitions `topic` has, waiting up to 30 s for a broker that is still starting
/// (or a topic still being created).
fn partition_count(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5));
        match md {
            Ok(md)
                if md
                    .topics()
                    .first()
                    .is_some_and(|t| !t.partitions().is_empty()) =>
            {
                return Ok(md.topics()[0].partitions().len() as i32);
            }
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Ok(_) => anyhow::bail!("topic {topic} has no partitions (does it exist?)"),
            Err(e) => return Err(e).context(format!("metadata of topic {topic}")),
        }
    }
}

impl KafkaReader {
    /// Keeps every accepted click, with its partition and offset, in `buffer` too.
    pub fn archive_into(&mut self, buffer: Rc<RefCell<RawBuffer>>) {
        self.archive = Some(buffer);
    }

    /// Serves the main queue: errors and statistics, and records fetched before their
    /// partition's queue was split off (librdkafka keeps delivering those here). Dropping
    /// them lost records whenever a consumer started on a backlog; they are kept for their
    /// partition's next poll.
    fn serve_main_queue(&mut self) {
        while let Some(event) = self.consumer.poll(Duration::ZERO) {
            match event {
                Ok(m) => match self.partitions.iter().position(|p| *p == m.partition()) {
                    Some(i) => self.early[i].push_back(m.detach()),
                    None => tracing::error!(
                        "kafka {}/{}: a record of a partition not assigned here",
                        self.topic,
                        m.partition()
                    ),
                },
                Err(e) => tracing::warn!("kafka {}: {e}", self.topic),
            }
        }
    }

    /// Takes message `m` of partition `i` into `out`: after a gap if the broker delivered
    /// past our position, and into the raw archive if it is a click. False if it was already
    /// read (never expected; harmless to skip).
    fn take(
        &mut self,
        i: usize,
        m: &OwnedMessage,
        bound: FutureBound,
        out: &mut Vec<Record>,
    ) -> bool {
        let (p, offset) = (m.partition(), m.offset());
        if offset < self.next_offset[i] {
            return false;
        }
        if offset > self.next_offset[i] {
            // The broker delivered past our position: the records between are gone.
            out.push(self.gap(i, offset));
        }
        let topic = &self.topic;
        let mut record = kafka_record(
            m.key().unwrap_or_default(),
            m.payload().unwrap_or_default(),
            bound,
            || format!("{topic}/{p}@{offset}"),
        );
        if let Record::Click(click) = &mut record {
            click.origin = Origin {
                partition: p,
                offset: offset as u64,
            };
        }
        if let (Some(a), Record::Click(click)) = (&self.archive, &record) {
            a.borrow_mut().push(Archived {
                partition: p,
                offset,
                click: click.clone(),
            });
        }
        out.push(record);
        self.next_offset[i] = offset + 1;
        true
    }

    /// Records that offsets `[next, to)` of partition `i` are gone: an ERROR line, health and
    /// metrics, and (under `on_gap = fail`) the end of the process with [`EXIT_DATA_LOST`].
    /// The returned record carries the gap into the dataflow, for the `lost` tally and the
    /// output; it travels like any record, so a restore from before it finds it again.
    ///
    /// [`EXIT_DATA_LOST`]: EXIT_DATA_LOST
    fn gap(&mut self, i: usize, to: i64) -> Record {
        let gap = Gap {
            partition: format!("{}/{}", self.topic, self.partitions[i]),
            from: self.next_offset[i] as u64,
            to: to as u64,
        };
        tracing::error!(
            partition = %gap.partition,
            from = gap.from,
            to = gap.to,
            records = gap.records(),
            "records deleted before they were read (retention, or a bounded broker): {} \
             records of {} at offsets [{}, {}) cannot be counted",
            gap.records(),
            gap.partition,
            gap.from,
            gap.to
        );
        self.health.record_gap(&gap);
        if self.settings.on_gap == OnGap::Fail {
            eprintln!(
                "adclick-aggregator: stopping (aggregator.on_gap = \"fail\"): {} records of \
                 {} at offsets [{}, {}) were deleted before they were read. Keep more \
                 retention, or set aggregator.on_gap = \"report\" to go on with them \
                 tallied as lost. Exit code {}.",
                gap.records(),
                gap.partition,
                gap.from,
                gap.to,
                EXIT_DATA_LOST
            );
            std::process::exit(EXIT_DATA_LOST);
        }
        self.next_offset[i] = to;
        Record::Lost(gap)
    }

    /// The fetcher asked for an offset the broker no longer holds: the gap runs to the log's
    /// start as it is now, and reading goes on from there.
    fn out_of_range(&mut self, i: usize, out: &mut Vec<Record>) {
        let p = self.partitions[i];
        let (low, high) = loop {
            match self
                .consumer
                .fetch_watermarks(&self.topic, p, Duration::from_secs(5))
            {
                Ok(offsets) => break offsets,
                Err(e) => {
                    tracing::warn!("kafka {}/{p}: offsets after a reset: {e}", self.topic);
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        };
        if low > self.next_offset[i] {
            out.push(self.gap(i, low));
        } else if self.next_offset[i] > high {
            // Our position is past the log's end: the topic was recreated or truncated, and
            // its offsets now name other records. Nothing safe can follow.
            tracing::error!(
                "kafka {}/{p}: position {} is beyond the log's end {high}; was the topic \
                 recreated? stopping",
                self.topic,
                self.next_offset[i]
            );
            std::process::exit(EXIT_DATA_LOST);
        }
        self.seek(i, self.next_offset[i]);
    }

    /// Goes on reading partition `i` at `to`. A partition the reset error stopped can only
    /// be restarted by assigning it again (librdkafka refuses to seek it), so every
    /// partition is assigned again at the position we hold; the split partition queues stay
    /// split, and records fetched twice are skipped by offset.
    fn seek(&mut self, i: usize, to: i64) {
        self.stalled_since[i] = None;
        self.next_offset[i] = to;
        let mut tpl = TopicPartitionList::new();
        for (p, next) in self.partitions.iter().zip(&self.next_offset) {
            if let Err(e) = tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*next)) {
                tracing::warn!("kafka {}/{p}: {e}", self.topic);
            }
        }
        if let Err(e) = self.consumer.assign(&tpl) {
            tracing::warn!("kafka {}: assigning again at {to}: {e}", self.topic);
        }
    }

    /// The partitions this worker reads, in the order the source numbers them.
    pub fn partition_ids(&self) -> &[i32] {
        &self.partitions
    }
}

impl PartitionReader for KafkaReader {
    fn partitions(&self) -> usize {
        self.partitions.len()
    }

    fn position(&self, i: usize) -> u64 {
        self.next_offset[i] as u64
    }

    fn poll(&mut self, i: usize, max: usize, out: &mut Vec<Record>) -> Polled {
        let reached_end =
            |next: i64, stop: &Option<Vec<i64>>| stop.as_ref().is_some_and(|s| next >= s[i]);
        if reached_end(self.next_offset[i], &self.stop_at) {
            return Polled::Finished;
        }
        self.serve_main_queue();
        let bound = FutureBound::now(self.settings.max_future_skew_ms);
        let mut n = 0;
        while n < max {
            // Records the main queue got first are older than the partition queue's.
            let next = match self.early[i].pop_front() {
                Some(m) => Some(Ok(m)),
                None => self.queues[i]
                    .poll(Duration::ZERO)
                    .map(|r| r.map(|m| m.detach())),
            };
            match next {
                Some(Ok(m)) => {
                    if !self.take(i, &m, bound, out) {
                        continue;
                    }
                    n += 1;
                    if reached_end(self.next_offset[i], &self.stop_at) {
                        return Polled::Finished;
                    }
                }
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                    // The broker no longer holds our position (retention, a bounded broker).
                    self.out_of_range(i, out);
                    break;
                }
                Some(Err(e)) => {
                    tracing::warn!("kafka {}/{}: {e}", self.topic, self.partitions[i]);
                    break;
                }
                None => break,
            }
        }
        let p = self.partitions[i];
        let (low, high) = self.offsets.get(i);
        if n == 0 && low > self.next_offset[i] {
            // The log start passed our position and nothing arrives: deleted before fetched.
            let since = *self.stalled_since[i].get_or_insert_with(Instant::now);
            if since.elapsed().as_millis() >= STALL_MS {
                out.push(self.gap(i, low));
                self.seek(i, low);
            }
        } else {
            self.stalled_since[i] = None;
        }
        let position = self.next_offset[i];
        self.health.set_partition(p, position, high);
        if reached_end(position, &self.stop_at) {
            return Polled::Finished;
        }
        if n > 0 || !out.is_empty() {
            Polled::More
        } else if position < high {
            Polled::Behind
        } else {
            Polled::Empty
        }
    }
}
