//! Kafka partitions as source partitions. Partitions are assigned statically over every
//! worker of the cluster (partition p to worker p mod workers) with `assign`, not a consumer
//! group: the dataflow owns its offsets, so it can resume and replay exactly, and no
//! rebalance ever moves a partition under a running watermark.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use adclick_dataflows::source::{PartitionReader, Polled, Record};
use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use std::cell::RefCell;
use std::rc::Rc;

use super::decode::kafka_record;
use super::health::Health;
use super::parquet_sink::{Archived, RawBuffer};

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
}

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
        until_end: bool,
        health: Arc<Health>,
        resume: &std::collections::BTreeMap<i32, u64>,
    ) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            // librdkafka wants a group id even for assign(); nothing is committed to it.
            .set("group.id", "adclick-aggregator")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .context("creating the Kafka consumer")?;
        let consumer = Arc::new(consumer);
        let deadline = Instant::now() + Duration::from_secs(30);
        let count = loop {
            let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5));
            match md {
                Ok(md)
                    if md
                        .topics()
                        .first()
                        .is_some_and(|t| !t.partitions().is_empty()) =>
                {
                    break md.topics()[0].partitions().len() as i32;
                }
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                Ok(_) => anyhow::bail!("topic {topic} has no partitions (does it exist?)"),
                Err(e) => return Err(e).context(format!("metadata of topic {topic}")),
            }
        };
        let partitions: Vec<i32> = (0..count)
            .filter(|p| *p as usize % peers == index)
            .collect();
        // A partition resumes where a checkpoint left it, or starts at the log's start.
        let start = |p: &i32| resume.get(p).map(|o| *o as i64);
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            let offset = start(p).map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(topic, *p, offset)?;
        }
        consumer.assign(&tpl)?;
        let queues = partitions
            .iter()
            .map(|p| {
                consumer
                    .split_partition_queue(topic, *p)
                    .with_context(|| format!("queue of {topic}/{p}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // Known from the start, so a partition with a backlog is never taken for idle while
        // its consumer is still connecting.
        let offsets = partitions
            .iter()
            .map(|p| consumer.fetch_watermarks(topic, *p, Duration::from_secs(10)))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("offsets of topic {topic}"))?;
        let stop_at = until_end.then(|| offsets.iter().map(|(_, high)| *high).collect());
        let n = partitions.len();
        Ok(Self {
            // Retention may have moved the log's start past 0, or past a resumed offset.
            next_offset: partitions
                .iter()
                .zip(&offsets)
                .map(|(p, (low, _))| start(p).unwrap_or(*low).max(*low))
                .collect(),
            offsets: Watermarks::watch(consumer.clone(), topic, &partitions, &offsets),
            consumer,
            topic: topic.to_string(),
            partitions,
            queues,
            stop_at,
            health,
            early: vec![Default::default(); n],
            archive: None,
        })
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
                    let (p, offset) = (m.partition(), m.offset());
                    if offset < self.next_offset[i] {
                        continue; // already read (never expected; harmless to skip)
                    }
                    let topic = &self.topic;
                    let record = kafka_record(
                        m.key().unwrap_or_default(),
                        m.payload().unwrap_or_default(),
                        || format!("{topic}/{p}@{offset}"),
                    );
                    if let (Some(a), Record::Click(click)) = (&self.archive, &record) {
                        a.borrow_mut().push(Archived {
                            partition: p,
                            offset,
                            click: click.clone(),
                        });
                    }
                    out.push(record);
                    self.next_offset[i] = offset + 1;
                    n += 1;
                    if reached_end(self.next_offset[i], &self.stop_at) {
                        return Polled::Finished;
                    }
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
        // Retention may delete records before we read them.
        let position = self.next_offset[i].max(low);
        self.health.set_partition(p, position, high);
        if n > 0 {
            Polled::More
        } else if position < high {
            Polled::Behind
        } else {
            Polled::Empty
        }
    }
}
