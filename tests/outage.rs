//! No click lost or doubled while the embedded broker is down (see tests/common/outage.rs).

use adclick_testkit as common;

use adclick::kafka::embedded::EmbeddedKafka;
use common::outage::{self, Broker};

struct Embedded(EmbeddedKafka);

impl Broker for Embedded {
    fn brokers(&self) -> String {
        self.0.bootstrap_servers()
    }
    fn down(&mut self) {
        self.0.broker_down().unwrap();
    }
    fn up(&mut self) {
        self.0.broker_up().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_click_reaches_the_embedded_broker_exactly_once_across_an_outage() {
    let config = adclick::config::KafkaConfig {
        partitions: 4,
        ..Default::default()
    };
    let mut broker = Embedded(EmbeddedKafka::builtin(&config).unwrap());
    outage::run(&mut broker).await;
}
