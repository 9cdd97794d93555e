//! Straight to the clicks topic, as the redirect's producer would write it: key =
//! impression id, value = Protocol Buffers, or JSON for a `json_share` of records so both
//! decoders get exercised. Records go to the partition Kafka's default partitioner picks for
//! the key, set explicitly so the generator's view of partitions cannot drift from the
//! broker's.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use rdkafka::ClientContext;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use super::Sink;
use crate::config::KafkaConfig;
use crate::loadgen::encode::{Format, event_record};
use crate::loadgen::traffic::Emission;

/// How long `finish` waits for the last acknowledgements.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

pub struct KafkaSink {
    producer: ClicksProducer,
    json_share: f64,
}

/// Records to chosen partitions of the clicks topic, each acknowledged or reported: the
/// generator's sink and `replay` both send through it.
pub struct ClicksProducer {
    producer: ThreadedProducer<Deliveries>,
    topic: String,
    partitions: u32,
    sent: u64,
}

#[derive(Default)]
struct Deliveries {
    acknowledged: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.acknowledged.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().expect("not poisoned");
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

impl ClicksProducer {
    /// Connects and learns the clicks topic's partition count, which must exist.
    pub fn connect(kafka: &KafkaConfig) -> anyhow::Result<Self> {
        let producer: ThreadedProducer<Deliveries> = crate::kafka::producer_config(kafka)
            .create_with_context(Deliveries::default())
            .context("creating the Kafka producer")?;
        let topic = kafka.clicks_topic.clone();
        let metadata = producer
            .client()
            .fetch_metadata(Some(&topic), METADATA_TIMEOUT)
            .with_context(|| format!("fetching metadata of `{topic}` from {}", kafka.brokers))?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len() as u32);
        if partitions == 0 {
            bail!(
                "topic `{topic}` does not exist on {}: create it (or use --embedded-kafka)",
                kafka.brokers
            );
        }
        Ok(Self {
            producer,
            topic,
            partitions,
            sent: 0,
        })
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Hands one record to librdkafka for `partition`; records of one partition keep their
    /// order (idempotent producer). A full queue is waited out: the caller's pace is Kafka's.
    pub fn send(&mut self, partition: u32, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        let record = BaseRecord::to(&self.topic)
            .key(key)
            .payload(value)
            .partition(partition as i32);
        if let Err(failed) = crate::kafka::send::send(&self.producer, record, || true) {
            bail!("producing to `{}`: {}", self.topic, failed.error);
        }
        self.sent += 1;
        Ok(())
    }

    /// Records acknowledged by Kafka so far.
    pub fn acknowledged(&self) -> u64 {
        self.producer.context().acknowledged.load(Ordering::Relaxed)
    }

    /// Waits for every acknowledgement; fails if any record did not arrive.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        let flushed = self.producer.flush(FLUSH_TIMEOUT);
        let ctx = self.producer.context();
        let acknowledged = ctx.acknowledged.load(Ordering::SeqCst);
        let failed = ctx.failed.load(Ordering::SeqCst);
        if flushed.is_err() || failed > 0 || acknowledged != self.sent {
            let first = ctx.first_error.lock().expect("not poisoned").clone();
            bail!(
                "Kafka acknowledged {acknowledged} of {} records ({failed} failed{}, {} still \
                 in flight after {FLUSH_TIMEOUT:?})",
                self.sent,
                first.map(|e| format!(", first: {e}")).unwrap_or_default(),
                self.producer.in_flight_count()
            );
        }
        Ok(())
    }
}

impl KafkaSink {
    /// Connects and learns the clicks topic's partition count, which must exist.
    pub fn connect(kafka: &KafkaConfig, json_share: f64) -> anyhow::Result<Self> {
        Ok(Self {
            producer: ClicksProducer::connect(kafka)?,
            json_share,
        })
    }

    pub fn partitions(&self) -> u32 {
        self.producer.partitions()
    }

    /// JSON for a `json_share` of click ids, chosen by hash so a retry is re-sent exactly as
    /// its original was.
    fn format(&self, click_id: &str) -> Format {
        if f64::from(crc32fast::hash(click_id.as_bytes())) < self.json_share * 4_294_967_296.0 {
            Format::Json
        } else {
            Format::Protobuf
        }
    }
}

impl Sink for KafkaSink {
    fn send(&mut self, e: &Emission) -> anyhow::Result<()> {
        let value = event_record(e, self.format(&e.click.event.click_id));
        self.producer
            .send(e.shard, e.click.event.impression_id.as_bytes(), &value)
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.producer.finish()
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    use super::*;
    use crate::config::KafkaConfig;
    use crate::event::ClickEvent;
    use crate::kafka::embedded::EmbeddedKafka;
    use crate::loadgen::LoadgenConfig;
    use crate::loadgen::partition::Partitioner;
    use crate::loadgen::traffic::Kind;
    use crate::loadgen::traffic::tests::traffic;

    fn read_all(
        brokers: &str,
        topic: &str,
        partitions: u32,
        n: usize,
    ) -> Vec<(i32, Vec<u8>, Vec<u8>)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "loadgen-test")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while out.len() < n && std::time::Instant::now() < deadline {
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                let m = m.unwrap();
                out.push((
                    m.partition(),
                    m.key().unwrap().to_vec(),
                    m.payload().unwrap_or_default().to_vec(),
                ));
            }
        }
        out
    }

    #[test]
    fn records_land_where_kafkas_partitioner_puts_their_key_in_both_encodings() {
        let mut kafka_cfg = KafkaConfig {
            partitions: 5,
            ..KafkaConfig::default()
        };
        let broker = EmbeddedKafka::mock(&kafka_cfg).unwrap();
        kafka_cfg.brokers = broker.bootstrap_servers();
        let mut sink = KafkaSink::connect(&kafka_cfg, 0.3).unwrap();
        assert_eq!(sink.partitions(), 5);
        let cfg = LoadgenConfig {
            malformed_share: 0.1,
            retry_share: 0.05,
            ..LoadgenConfig::default()
        };
        let mut t = traffic(&cfg, 400, 1);
        let mut sent = Vec::new();
        let partitioner = Partitioner::Murmur2 { shards: 5 };
        for mut e in t.by_ref() {
            e.shard = partitioner.shard(e.click.event.impression_id.as_bytes());
            sink.send(&e).unwrap();
            sent.push(e);
        }
        sink.finish().unwrap();
        let got = read_all(&kafka_cfg.brokers, &kafka_cfg.clicks_topic, 5, sent.len());
        assert_eq!(got.len(), sent.len());
        let (mut json, mut valid) = (0, 0);
        for (partition, key, value) in &got {
            assert_eq!(
                *partition as u32,
                partitioner.shard(key),
                "explicit partition = murmur2"
            );
            if value.first() == Some(&b'{') {
                json += 1;
            }
            if ClickEvent::decode(value).is_ok() {
                valid += 1;
            }
        }
        let malformed = sent
            .iter()
            .filter(|e| matches!(e.kind, Kind::Malformed(_)))
            .count();
        assert_eq!(valid, sent.len() - malformed);
        // A retry is its original's record again, byte for byte.
        let retries = sent.iter().filter(|e| e.kind == Kind::Retry).count();
        let distinct: std::collections::HashSet<_> = got.iter().map(|(_, k, v)| (k, v)).collect();
        assert!(retries > 0);
        assert_eq!(got.len() - distinct.len(), retries);
        assert!(json > 60 && json < 200, "{json} JSON records of 400");
    }

    /// The redirect lets librdkafka's `murmur2_random` partitioner place its records; the
    /// loadgen computes the partition itself. They must agree, or one impression's clicks
    /// from the two paths would sit in different partitions.
    #[test]
    fn murmur2_agrees_with_librdkafkas_partitioner() {
        let mut kafka_cfg = KafkaConfig {
            partitions: 7,
            ..KafkaConfig::default()
        };
        let broker = EmbeddedKafka::mock(&kafka_cfg).unwrap();
        kafka_cfg.brokers = broker.bootstrap_servers();
        let producer: ThreadedProducer<Deliveries> = crate::kafka::producer_config(&kafka_cfg)
            .create_with_context(Deliveries::default())
            .unwrap();
        let keys: Vec<String> = (0..200).map(|i| format!("imp_2a_{i}")).collect();
        for k in &keys {
            producer
                .send(
                    BaseRecord::<_, _, ()>::to(&kafka_cfg.clicks_topic)
                        .key(k.as_bytes())
                        .payload("x"),
                )
                .map_err(|(e, _)| e)
                .unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
        let got = read_all(&kafka_cfg.brokers, &kafka_cfg.clicks_topic, 7, keys.len());
        assert_eq!(got.len(), keys.len());
        let p = Partitioner::Murmur2 { shards: 7 };
        for (partition, key, _) in got {
            assert_eq!(
                partition as u32,
                p.shard(&key),
                "{}",
                String::from_utf8_lossy(&key)
            );
        }
    }
}
