//! Kafka at the edges: client settings, the one send path ([`send`]), the embedded broker,
//! and the outbox that hands records to Kafka without ever losing them.

pub mod broker;
pub mod embedded;
pub mod outbox;
pub mod send;

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// Producer settings every adclick producer shares: idempotent (retries never duplicate),
/// acknowledged by all in-sync replicas, lz4-compressed, batched for a few milliseconds.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        // Never give up on a message: the outbox decides when to fall back to disk.
        .set("message.timeout.ms", "0")
        .set("partitioner", "murmur2_random");
    for (k, v) in &kafka.producer {
        let v = match v {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        c.set(k, v);
    }
    c
}
