//! The outage scenario, run against the embedded broker (tests/outage.rs) and against a real
//! broker process (tests/outage_real_broker.rs): load through real HTTP while the broker goes
//! away and comes back, a graceful shutdown while it is away, a restart from the spool; at the
//! end every click is in Kafka exactly once.

use std::collections::HashMap;
use std::time::Duration;

use adclick::event::ClickEvent;
use adclick::token::{ClickClaims, Keyring};
use futures::StreamExt;

use crate::{RunningRedirect, get, http_client, read_topic, test_config, wait_until_async};

/// A broker the scenario can take away and bring back.
pub trait Broker {
    fn brokers(&self) -> String;
    fn down(&mut self);
    fn up(&mut self);
}

/// Sends `n` signed clicks `prefix-0..n`, 16 at a time; every one must be redirected.
pub async fn send_clicks(base: &str, keyring: &Keyring, prefix: &str, n: usize) {
    let client = http_client();
    let exp = adclick::timefmt::now_millis() / 1000 + 3600;
    futures::stream::iter(0..n)
        .map(|i| {
            let url = keyring.click_url(
                base,
                &ClickClaims {
                    impression_id: format!("{prefix}-{i}"),
                    ad_id: format!("ad_{}", i % 7),
                    campaign_id: "cmp_1".into(),
                    advertiser_id: "adv_1".into(),
                    publisher_id: "pub_1".into(),
                    url: "https://shop.example/".into(),
                    exp,
                },
            );
            let client = client.clone();
            async move {
                let r = get(&client, &url).await;
                assert_eq!(r.status, 302, "{}", r.body);
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

pub async fn run(broker: &mut impl Broker) {
    let spool = tempfile::tempdir().unwrap();
    let config = test_config(&broker.brokers(), spool.path());
    let keyring = Keyring::new(&config.signing.keys, None).unwrap();
    let mut sent = 0;

    // 1. Kafka goes away in the middle of the load and comes back.
    let server = RunningRedirect::start(config.clone()).await;
    let base = server.base();
    send_clicks(&base, &keyring, "before", 1000).await;
    sent += 1000;
    broker.down();
    send_clicks(&base, &keyring, "during", 1500).await;
    sent += 1500;
    let state = server.state.clone();
    wait_until_async(
        Duration::from_secs(15),
        "the outbox to notice",
        async || state.outbox.degraded(),
    )
    .await;
    send_clicks(&base, &keyring, "degraded", 500).await;
    sent += 500;
    assert!(
        state.outbox.spool_records() > 0,
        "the outage must have used the spool"
    );
    assert!(
        !state.outbox.ready(),
        "not ready while Kafka is gone and the spool fills"
    );
    broker.up();
    send_clicks(&base, &keyring, "after", 1000).await;
    sent += 1000;
    wait_until_async(Duration::from_secs(60), "the spool to drain", async || {
        state.outbox.spool_records() == 0 && state.outbox.in_memory() == 0
    })
    .await;
    assert!(state.outbox.ready());
    drop(state);

    // 2. Shut down gracefully while Kafka is away: what is in memory goes to the spool...
    broker.down();
    send_clicks(&base, &keyring, "shutdown", 800).await;
    sent += 800;
    server.stop().await;
    broker.up();
    // ...and the next start delivers it.
    let server = RunningRedirect::start(config.clone()).await;
    let state = server.state.clone();
    wait_until_async(
        Duration::from_secs(60),
        "the restarted redirect to drain",
        async || state.outbox.spool_records() == 0 && state.outbox.in_memory() == 0,
    )
    .await;
    drop(state);
    server.stop().await;

    let records = tokio::task::spawn_blocking({
        let brokers = broker.brokers();
        move || read_topic(&brokers, "clicks", sent, Duration::from_secs(60))
    })
    .await
    .unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (key, value) in &records {
        let e = ClickEvent::decode(value).unwrap();
        assert_eq!(key, e.impression_id.as_bytes());
        *seen.entry(e.impression_id).or_default() += 1;
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "duplicated in Kafka: {doubled:?}");
    assert_eq!(seen.len(), sent, "clicks missing from Kafka");
    assert_eq!(records.len(), sent);
}
