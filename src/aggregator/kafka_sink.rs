//! Late clicks and dead letters to their Kafka topics (`clicks-late`, `clicks-dlq`), from
//! every worker, keyed like the input. Delivery is asynchronous; a batch job flushes before it
//! exits.

use std::time::Duration;

use adclick_dataflows::click::Click;
use adclick_dataflows::source::Rejected;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;

use crate::config::KafkaConfig;
use crate::event::dead_letter::DeadLetter;

/// The late topic's record: what the aggregator knew of the click.
pub fn late_json(c: &Click) -> String {
    serde_json::json!({
        "impression_id": c.impression_id,
        "click_id": c.click_id,
        "event_time": c.event_time,
        "ad_id": c.dims.ad_id,
        "campaign_id": c.dims.campaign_id,
        "advertiser_id": c.dims.advertiser_id,
        "publisher_id": c.dims.publisher_id,
        "country": c.dims.country,
        "device": c.dims.device,
    })
    .to_string()
}

fn producer(kafka: &KafkaConfig) -> ThreadedProducer<DefaultProducerContext> {
    super::super::kafka::producer_config(kafka)
        .create()
        .unwrap_or_else(|e| panic!("creating the side-output producer: {e}"))
}

/// Sends a record, waiting while librdkafka's queue is full rather than dropping it.
fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, key: &[u8], value: &[u8]) {
    let mut record = BaseRecord::to(topic).key(key).payload(value);
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((e, r)) => {
                tracing::debug!("side output {topic}: {e}; retrying");
                record = r;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

pub fn late_to_kafka(late: Stream<'_, u64, Vec<Click>>, kafka: &KafkaConfig) {
    let p = producer(kafka);
    let topic = kafka.late_topic.clone();
    late.sink(Pipeline, "LateToKafka", move |(input, frontier)| {
        input.for_each(|_, data| {
            for c in data.drain(..) {
                send(
                    &p,
                    &topic,
                    c.impression_id.as_bytes(),
                    late_json(&c).as_bytes(),
                );
            }
        });
        if frontier.is_empty() {
            let _ = p.flush(Duration::from_secs(30));
        }
    });
}

pub fn rejected_to_kafka(rejected: Stream<'_, u64, Vec<Rejected>>, kafka: &KafkaConfig) {
    let p = producer(kafka);
    let topic = kafka.dlq_topic.clone();
    rejected.sink(Pipeline, "DeadLettersToKafka", move |(input, frontier)| {
        input.for_each(|_, data| {
            for r in data.drain(..) {
                let mut letter = DeadLetter::new(r.code, r.reason, "aggregator", &r.payload);
                letter.rejected_by = format!("aggregator ({})", r.origin);
                send(&p, &topic, &r.key, letter.to_json().as_bytes());
            }
        });
        if frontier.is_empty() {
            let _ = p.flush(Duration::from_secs(30));
        }
    });
}
