//! No click lost or doubled while a real broker process is killed with SIGKILL and restarted
//! (see tests/common/outage.rs and tests/common/tansu.rs).

use adclick_testkit as common;

use common::outage;
use common::tansu::start_tansu;

#[cfg_attr(
    tansu_missing,
    ignore = "needs Tansu: scripts/tansu.sh install (CI requires it: ADCLICK_REQUIRE_TANSU=1)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_click_reaches_a_real_broker_exactly_once_across_kill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = start_tansu(dir.path());
    for topic in ["clicks", "clicks-dlq"] {
        broker.create_topic(topic, 4);
    }
    outage::run(&mut broker).await;
}
