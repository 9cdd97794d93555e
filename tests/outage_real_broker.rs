//! No click lost or doubled while a real broker process is killed with SIGKILL and restarted
//! (see tests/common/outage.rs and tests/common/tansu.rs).

mod common;

use common::outage::{self, Broker};
use common::tansu::{Tansu, start_tansu};

impl Broker for Tansu {
    fn brokers(&self) -> String {
        Tansu::brokers(self)
    }
    fn down(&mut self) {
        self.kill();
    }
    fn up(&mut self) {
        self.start();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_click_reaches_a_real_broker_exactly_once_across_kill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut broker) = start_tansu(dir.path()) else {
        return;
    };
    for topic in ["clicks", "clicks-dlq"] {
        broker.create_topic(topic, 4);
    }
    outage::run(&mut broker).await;
}
