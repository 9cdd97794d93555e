//! Traffic anomaly alerts out of the dataflow: on worker 0, each alert gets its key's texts
//! and goes to the [`AlertLog`](crate::alert_log::AlertLog) (the API, the dashboard,
//! `/metrics`) and, with Kafka input, to the `click-alerts` topic keyed by its identity.
//!
//! An alert is news, not money: a topic that refuses it is logged as an ERROR and the job goes
//! on. Across a restart the alerts after the restored checkpoint are raised again (at least
//! once); the key lets a consumer drop the copies.

use std::collections::BTreeMap;
use std::sync::Arc;

use adclick_dataflows::anomaly::Alert;
use adclick_dataflows::names::{Dictionary, Name};
use rdkafka::producer::{DefaultProducerContext, ThreadedProducer};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

use crate::alert_log::AlertRecord;
use crate::config::KafkaConfig;
use crate::health::Health;

/// Sends `alerts` to worker 0, which resolves their texts from `names` (announced before
/// any alert's time: a key's texts travel with its first clicks, minutes before the minute is
/// final) and records and publishes them.
pub fn alerts_sink<'s>(
    alerts: Stream<'s, u64, Vec<Alert>>,
    names: Stream<'s, u64, Vec<Name>>,
    health: Arc<Health>,
    kafka: Option<&KafkaConfig>,
) {
    let topic = kafka.map(|k| k.alerts_topic.clone());
    let producer: Option<ThreadedProducer<DefaultProducerContext>> =
        kafka.and_then(|k| match crate::kafka::producer_config(k).create() {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!("click-alerts: no producer ({e}); alerts stay in the API only");
                None
            }
        });
    alerts.binary_frontier::<_, CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
        names,
        Exchange::new(|_: &Alert| 0),
        Exchange::new(|_: &Name| 0),
        "AlertsOut",
        move |_cap, _info| {
            let mut dictionary = Dictionary::new();
            let mut pending: BTreeMap<u64, Vec<Alert>> = BTreeMap::new();
            move |(alerts, alerts_frontier), (names, names_frontier), _output| {
                names.for_each(|_, data| {
                    for n in data.drain(..) {
                        dictionary.insert(n);
                    }
                });
                alerts.for_each(|cap, data| {
                    let at = *cap.least().expect("a totally ordered time");
                    pending.entry(at).or_default().append(data);
                });
                while let Some(t) = pending.first_key_value().map(|(t, _)| *t) {
                    if alerts_frontier.less_equal(&t) || names_frontier.less_equal(&t) {
                        break;
                    }
                    for alert in pending.remove(&t).unwrap_or_default() {
                        let texts = alert
                            .scope
                            .syms()
                            .into_iter()
                            .map(|s| match dictionary.get(s) {
                                Some(text) => text.to_string(),
                                None => format!("#{:016x}", s.0),
                            })
                            .collect();
                        let record = AlertRecord::new(&alert, texts);
                        if let (Some(p), Some(topic)) = (&producer, &topic) {
                            let value =
                                serde_json::to_string(&record).expect("an alert serializes");
                            let key = record.id();
                            let sent =
                                super::kafka::send(p, topic, key.as_bytes(), value.as_bytes());
                            if let Err(e) = sent {
                                tracing::error!("click-alerts: {e:#}");
                            }
                        }
                        tracing::info!(
                            kind = record.kind,
                            severity = record.severity,
                            key = record.key.join(","),
                            minute = record.minute,
                            observed = record.observed,
                            baseline = record.baseline,
                            "traffic alert"
                        );
                        health.alerts.push(&alert, record);
                    }
                }
                if alerts_frontier.is_empty()
                    && let Some(p) = &producer
                {
                    use rdkafka::producer::Producer as _;
                    let _ = p.flush(std::time::Duration::from_secs(10));
                }
            }
        },
    );
}
