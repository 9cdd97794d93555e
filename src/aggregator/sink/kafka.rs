//! Late clicks and dead letters to their Kafka topics (`clicks-late`, `clicks-dlq`), from
//! every worker, keyed like the input. Delivery is asynchronous; a batch job flushes before it
//! exits.

use std::time::Duration;

use adclick_dataflows::click::RawClick;
use adclick_dataflows::source::Rejected;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;

use crate::config::KafkaConfig;
use crate::event::dead_letter::DeadLetter;

/// The late topic's record: what the aggregator knew of the click.
pub fn late_json(c: &RawClick) -> String {
    serde_json::json!({
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

/// Sends a record, waiting while librdkafka's queue is full rather than dropping it.
pub(super) fn send(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &[u8],
    value: &[u8],
) {
    let mut record = BaseRecord::to(topic).key(key).payload(value);
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((e, r)) => {
                tracing::debug!("{topic}: {e}; retrying");
                record = r;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Sends every item of `stream` to `topic`, as `record(item) = (key, value)`.
fn to_kafka<D: Clone + 'static>(
    stream: Stream<'_, u64, Vec<D>>,
    kafka: &KafkaConfig,
    topic: String,
    name: &str,
    record: impl Fn(D) -> (Vec<u8>, String) + 'static,
) {
    let p = producer(kafka);
    stream.sink(Pipeline, name, move |(input, frontier)| {
        input.for_each(|_, data| {
            for item in data.drain(..) {
                let (key, value) = record(item);
                send(&p, &topic, &key, value.as_bytes());
            }
        });
        if frontier.is_empty() {
            let _ = p.flush(Duration::from_secs(30));
        }
    });
}

pub fn late_to_kafka(late: Stream<'_, u64, Vec<RawClick>>, kafka: &KafkaConfig) {
    to_kafka(late, kafka, kafka.late_topic.clone(), "LateToKafka", |c| {
        (c.impression_id.clone().into_bytes(), late_json(&c))
    });
}

pub fn rejected_to_kafka(rejected: Stream<'_, u64, Vec<Rejected>>, kafka: &KafkaConfig) {
    to_kafka(
        rejected,
        kafka,
        kafka.dlq_topic.clone(),
        "DeadLettersToKafka",
        |r| {
            let rejected_by = format!("aggregator ({})", r.origin);
            let letter = DeadLetter::new(r.code, r.reason, &rejected_by, &r.payload);
            (r.key, letter.to_json())
        },
    );
}
