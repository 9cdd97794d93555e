//! Late clicks and dead letters to their Kafka topics (`clicks-late`, `clicks-dlq`), from
//! every worker. Delivery is asynchronous; a batch job flushes before it exits.
//!
//! Each record is keyed by where it was read, `{topic}/{partition}@{offset}`: a record of the
//! clicks topic is late or dead-lettered once per reading, and a restore reads again what came
//! after its checkpoint, so these topics are at least once across a crash, but every repeat
//! carries the same key and the same content (a dead letter's `rejected_at_ms` aside). A
//! consumer keeps the first record per key (or the topic is compacted), and has each late
//! click and dead letter exactly once.

use std::time::Duration;

use adclick_dataflows::click::{Origin, RawClick};
use adclick_dataflows::source::Rejected;
use anyhow::bail;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;

use crate::aggregator::exit::Failure;
use crate::config::KafkaConfig;
use crate::event::dead_letter::DeadLetter;
use crate::kafka::send::Verdict;

/// The late and dead-letter topics' key of a record read at `partition`, `offset` of `topic`.
pub fn origin_key(topic: &str, origin: Origin) -> String {
    format!("{topic}/{}@{}", origin.partition, origin.offset)
}

/// The late topic's record: what the aggregator knew of the click, and where it was read
/// (`origin`, also the record's key).
pub fn late_json(c: &RawClick, origin: &str) -> String {
    serde_json::json!({
        "origin": origin,
        "impression_id": c.impression_id,
        "click_id": c.click_id,
        "event_time": c.event_time,
        "ad_id": c.labels.ad_id,
        "campaign_id": c.labels.campaign_id,
        "advertiser_id": c.labels.advertiser_id,
        "publisher_id": c.labels.publisher_id,
        "country": c.labels.country,
        "device": c.labels.device,
    })
    .to_string()
}

fn producer(kafka: &KafkaConfig) -> ThreadedProducer<DefaultProducerContext> {
    crate::kafka::producer_config(kafka)
        .create()
        .unwrap_or_else(|e| panic!("creating the side-output producer: {e}"))
}

/// How long a record a broker did not take for a passing reason waits before its next try.
const RETRY_PAUSE: Duration = Duration::from_millis(5);

/// Sends a record, waiting while librdkafka's queue is full and retrying what may succeed
/// later (rather than dropping it); an error Kafka will never get over (e.g. a record over
/// its maximum size, a topic that does not exist) is returned.
pub(super) fn send(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &[u8],
    value: &[u8],
) -> anyhow::Result<()> {
    let mut record = BaseRecord::to(topic).key(key).payload(value);
    loop {
        let failed = match crate::kafka::send::send(p, record, || true) {
            Ok(()) => return Ok(()),
            Err(failed) => failed,
        };
        if failed.verdict() != Verdict::Retryable {
            bail!("producing to `{topic}`: {}", failed.error);
        }
        tracing::debug!("{topic}: {}; retrying", failed.error);
        record = failed.record;
        std::thread::sleep(RETRY_PAUSE);
    }
}

/// Sends every item of `stream` to `topic`, as `record(item) = (key, value)`; the first
/// record Kafka will never take stops the job through `failure`.
fn to_kafka<D: Clone + 'static>(
    stream: Stream<'_, u64, Vec<D>>,
    kafka: &KafkaConfig,
    topic: String,
    name: &str,
    failure: &Failure,
    record: impl Fn(D) -> (Vec<u8>, String) + 'static,
) {
    let p = producer(kafka);
    let failure = failure.clone();
    stream.sink(Pipeline, name, move |(input, frontier)| {
        input.for_each(|_, data| {
            for item in data.drain(..) {
                if failure.failed() {
                    return;
                }
                let (key, value) = record(item);
                if let Err(e) = send(&p, &topic, &key, value.as_bytes()) {
                    failure.fail(e);
                }
            }
        });
        if frontier.is_empty() {
            let _ = p.flush(Duration::from_secs(30));
        }
    });
}

pub fn late_to_kafka(late: Stream<'_, u64, Vec<RawClick>>, kafka: &KafkaConfig, failure: &Failure) {
    let topic = kafka.late_topic.clone();
    let clicks = kafka.clicks_topic.clone();
    to_kafka(late, kafka, topic, "LateToKafka", failure, move |c| {
        let origin = origin_key(&clicks, c.origin);
        let value = late_json(&c, &origin);
        (origin.into_bytes(), value)
    });
}

pub fn rejected_to_kafka(
    rejected: Stream<'_, u64, Vec<Rejected>>,
    kafka: &KafkaConfig,
    failure: &Failure,
) {
    to_kafka(
        rejected,
        kafka,
        kafka.dlq_topic.clone(),
        "DeadLettersToKafka",
        failure,
        // The origin, `topic/partition@offset`, is the key: the record's own key (an
        // impression id, or anything a foreign producer wrote) would not tell repeats from
        // distinct records.
        |r| {
            let rejected_by = format!("aggregator ({})", r.origin);
            let letter = DeadLetter::new(r.code, r.reason, &rejected_by, &r.payload);
            (r.origin.into_bytes(), letter.to_json())
        },
    );
}
