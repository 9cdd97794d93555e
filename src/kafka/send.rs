//! The one way adclick hands a record to librdkafka, shared by the redirect's outbox, the
//! aggregator's side-output topics and the load generator: [`send`] waits out a full queue
//! while its caller wants to wait, and [`classify`] sorts every other error into
//! [`Verdict::Retryable`] (may succeed later) and [`Verdict::Fatal`] (sending the record
//! again cannot succeed), so that no caller retries forever what Kafka will never take, nor
//! gives up on what an outage merely delayed.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};
use rdkafka::util::IntoOpaque;

/// How long [`send`] lets librdkafka drain a full queue before it tries again.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(1);

/// What to do with a record Kafka (or librdkafka) did not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Sending it again cannot succeed. `reason` is a stable label (a metric's).
    /// `record_level`: the refusal is about the record's own bytes (size, format) rather
    /// than its topic; since a broker refuses whole batches, such a record is worth a try
    /// alone before it is judged.
    Fatal {
        reason: &'static str,
        record_level: bool,
    },
    /// May succeed later (broker down, leader moving, queue full, fatal producer state):
    /// keep the record and retry.
    Retryable,
}

/// Sorts librdkafka's error codes into permanent refusals and everything else. Unknown codes
/// are retryable, never fatal: a stuck producer is visible (the outbox's /readyz) and loses
/// nothing, while dropping a record on a guess would take clicks out of the pipeline.
pub fn classify(code: RDKafkaErrorCode) -> Verdict {
    use RDKafkaErrorCode as E;
    let (reason, record_level) = match code {
        E::MessageSizeTooLarge | E::MessageBatchTooLarge => ("message_too_large", true),
        E::InvalidMessageSize
        | E::InvalidRecord
        | E::InvalidTimestamp
        | E::BadMessage
        | E::InvalidArgument => ("invalid_record", true),
        E::UnknownTopic | E::UnknownTopicOrPartition => ("unknown_topic", false),
        E::UnknownPartition => ("unknown_partition", false),
        E::InvalidTopic => ("invalid_topic", false),
        E::TopicAuthorizationFailed => ("topic_authorization_failed", false),
        E::ClusterAuthorizationFailed => ("cluster_authorization_failed", false),
        E::PolicyViolation => ("policy_violation", false),
        E::UnsupportedForMessageFormat | E::UnsupportedCompressionType => {
            ("unsupported_by_topic", false)
        }
        _ => return Verdict::Retryable,
    };
    Verdict::Fatal {
        reason,
        record_level,
    }
}

/// [`classify`] for a whole error; one without a code (e.g. cancelled) is retryable.
pub fn classify_error(e: &KafkaError) -> Verdict {
    e.rdkafka_error_code().map_or(Verdict::Retryable, classify)
}

/// A record librdkafka did not queue, handed back with the error.
pub struct NotSent<'a, K: ToBytes + ?Sized, P: ToBytes + ?Sized, D: IntoOpaque> {
    pub error: KafkaError,
    pub record: BaseRecord<'a, K, P, D>,
}

impl<K: ToBytes + ?Sized, P: ToBytes + ?Sized, D: IntoOpaque> NotSent<'_, K, P, D> {
    /// Whether the queue was still full when the caller stopped waiting.
    pub fn queue_full(&self) -> bool {
        self.error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
    }

    pub fn verdict(&self) -> Verdict {
        classify_error(&self.error)
    }
}

/// Queues `record` in `producer`. While librdkafka's queue is full it pauses and tries again
/// for as long as `wait()` says so (`|| false`: not at all); any other error, or a full queue
/// the caller stopped waiting for, comes back with the record, for [`NotSent::verdict`].
// The record comes back by value, as librdkafka's own `send` hands it back: a retry costs
// no copy.
#[allow(clippy::result_large_err)]
pub fn send<'a, K, P, C>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'a, K, P, C::DeliveryOpaque>,
    mut wait: impl FnMut() -> bool,
) -> Result<(), NotSent<'a, K, P, C::DeliveryOpaque>>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
    C: ProducerContext + 'static,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) if wait() => {
                record = r;
                std::thread::sleep(QUEUE_FULL_PAUSE);
            }
            Err((error, record)) => return Err(NotSent { error, record }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RDKafkaErrorCode as E;

    fn fatal(reason: &'static str, record_level: bool) -> Verdict {
        Verdict::Fatal {
            reason,
            record_level,
        }
    }

    #[test]
    fn records_kafka_can_never_take_are_fatal() {
        // The record's own bytes: retried alone before quarantine when refused in a batch.
        assert_eq!(
            classify(E::MessageSizeTooLarge),
            fatal("message_too_large", true)
        );
        assert_eq!(
            classify(E::MessageBatchTooLarge),
            fatal("message_too_large", true)
        );
        assert_eq!(classify(E::InvalidRecord), fatal("invalid_record", true));
        assert_eq!(
            classify(E::InvalidMessageSize),
            fatal("invalid_record", true)
        );
        assert_eq!(classify(E::InvalidTimestamp), fatal("invalid_record", true));
        assert_eq!(classify(E::BadMessage), fatal("invalid_record", true));
        // The record's topic: every record of it would be refused the same way.
        assert_eq!(classify(E::UnknownTopic), fatal("unknown_topic", false));
        assert_eq!(
            classify(E::UnknownTopicOrPartition),
            fatal("unknown_topic", false)
        );
        assert_eq!(
            classify(E::UnknownPartition),
            fatal("unknown_partition", false)
        );
        assert_eq!(classify(E::InvalidTopic), fatal("invalid_topic", false));
        assert_eq!(
            classify(E::TopicAuthorizationFailed),
            fatal("topic_authorization_failed", false)
        );
        assert_eq!(
            classify(E::ClusterAuthorizationFailed),
            fatal("cluster_authorization_failed", false)
        );
        assert_eq!(
            classify(E::PolicyViolation),
            fatal("policy_violation", false)
        );
    }

    #[test]
    fn outages_and_unknown_errors_are_retryable() {
        for code in [
            E::QueueFull,
            E::AllBrokersDown,
            E::BrokerTransportFailure,
            E::MessageTimedOut,
            E::RequestTimedOut,
            E::NotLeaderForPartition,
            E::LeaderNotAvailable,
            E::NotEnoughReplicas,
            E::NotEnoughReplicasAfterAppend,
            E::KafkaStorageError,
            E::OutOfOrderSequenceNumber,
            E::DuplicateSequenceNumber,
            E::UnknownProducerId,
            E::InvalidProducerEpoch,
            E::PurgeQueue,
            E::PurgeInflight,
            E::Fatal,
            // A corrupt message on the wire is retriable in Kafka's protocol.
            E::InvalidMessage,
            E::Authentication,
            E::Unknown,
            E::NoError,
        ] {
            assert_eq!(classify(code), Verdict::Retryable, "{code:?}");
        }
        assert_eq!(
            classify_error(&KafkaError::Canceled),
            Verdict::Retryable,
            "no code"
        );
        assert_eq!(
            classify_error(&KafkaError::MessageProduction(E::MessageSizeTooLarge)),
            fatal("message_too_large", true)
        );
    }

    #[test]
    fn every_fatal_reason_is_a_short_stable_label() {
        // The reasons are metric labels: a fixed, small set of snake_case names.
        let mut reasons = std::collections::BTreeSet::new();
        for code in (-200..200).filter_map(|c| {
            let code: RDKafkaErrorCode = rdkafka::types::RDKafkaRespErr::try_from(c).ok()?.into();
            Some(code)
        }) {
            if let Verdict::Fatal { reason, .. } = classify(code) {
                assert!(
                    reason.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                    "{reason}"
                );
                reasons.insert(reason);
            }
        }
        assert!(reasons.len() <= 12, "{reasons:?}");
    }

    /// A full queue is waited out only while the caller wants; a record Kafka can never take
    /// comes back at once, fatal, with the record.
    #[test]
    fn a_full_queue_waits_while_asked_and_a_refused_record_comes_back() {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", cluster.bootstrap_servers())
                .set("queue.buffering.max.messages", "1")
                .set("linger.ms", "10000")
                .create()
                .unwrap();
        send(&producer, BaseRecord::to("t").key("k").payload("a"), || {
            false
        })
        .ok();
        let full = send(&producer, BaseRecord::to("t").key("k").payload("b"), || {
            false
        })
        .expect_err("the one-record queue is full");
        assert!(full.queue_full());
        assert_eq!(full.verdict(), Verdict::Retryable);
        assert_eq!(full.record.payload, Some("b"));
        let mut waited = 0;
        let gave_up = send(&producer, full.record, || {
            waited += 1;
            waited < 3
        })
        .expect_err("still full");
        assert!(gave_up.queue_full());
        assert_eq!(waited, 3, "asked after each full queue");

        let big = vec![0u8; 2_000_000];
        let refused = send(
            &producer,
            BaseRecord::to("t").key("k").payload(&big),
            || true,
        )
        .expect_err("over message.max.bytes");
        assert!(!refused.queue_full());
        assert_eq!(refused.verdict(), fatal("message_too_large", true));
    }
}
