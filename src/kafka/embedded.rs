//! The embedded broker: librdkafka's mock cluster, started in-process. It speaks the real
//! Kafka protocol on a loopback port, so other processes can use it through `--brokers`; it
//! keeps records only in memory and does not implement transactions faithfully, so durability
//! tests use a real broker instead (see `scripts/tansu.sh`).

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::config::KafkaConfig;

pub struct EmbeddedKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedKafka {
    /// Starts a one-broker cluster with adclick's topics. Topics are created through the mock
    /// cluster's own API: its admin-API path times out.
    pub fn start(kafka: &KafkaConfig) -> anyhow::Result<Self> {
        let cluster = MockCluster::new(1)?;
        cluster.create_topic(&kafka.clicks_topic, kafka.partitions, 1)?;
        for topic in [&kafka.dlq_topic, &kafka.late_topic, &kafka.aggregates_topic] {
            cluster.create_topic(topic, kafka.partitions.clamp(1, 4), 1)?;
        }
        Ok(Self { cluster })
    }

    /// `host:port` for `--brokers`.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Makes the broker refuse connections, as if it had died; its records are kept.
    pub fn broker_down(&self) -> anyhow::Result<()> {
        Ok(self.cluster.broker_down(1)?)
    }

    pub fn broker_up(&self) -> anyhow::Result<()> {
        Ok(self.cluster.broker_up(1)?)
    }
}
