//! Issue 11, item 2: a record Kafka will never take must not block the clicks behind it.
//!
//! On the old outbox a record larger than the broker's maximum message size (a dead letter
//! carrying a 1.5 MB partner line) went to the spool and was retried every 200 ms forever;
//! every click after it got its 302 but waited behind it in the spool, /readyz said ready, and
//! a restart replayed the same head. Each test here sends or spools such a record first and
//! then ordinary clicks, and requires the clicks in Kafka promptly, the poison record in the
//! quarantine file, and the quarantine counter at 1.

use adclick_testkit as common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use adclick::config::{Config, FsyncPolicy};
use adclick::spool::{QUARANTINE_FILE, Spool, SpoolRecord};
use adclick::token::Keyring;
use common::{
    RunningRedirect, get, http_client, read_topic, request, test_config, wait_every,
    wait_every_async, wait_until_async,
};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

/// Larger than librdkafka's (and Kafka's) default maximum message size of 1,000,000 bytes.
const POISON_BYTES: usize = 1_500_000;
/// How long ordinary clicks may take to reach Kafka behind a poison record.
const PROMPTLY: Duration = Duration::from_secs(15);

fn mock_cluster() -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("clicks", 4, 1).unwrap();
    cluster.create_topic("clicks-dlq", 1, 1).unwrap();
    cluster
}

fn config(brokers: &str, spool: &Path) -> Config {
    let mut c = test_config(brokers, spool);
    c.redirect.delivery_stuck_after_ms = 2_000;
    c
}

/// A dead letter as the old partner endpoint wrote it for a 1.5 MB invalid line.
fn poison() -> Vec<u8> {
    format!(
        r#"{{"code":"json","reason":"bad line","payload":"{}"}}"#,
        "x".repeat(POISON_BYTES)
    )
    .into_bytes()
}

/// Sends `n` signed clicks `prefix-0..n` (every one must be redirected) and returns their
/// impression ids.
async fn send_clicks(base: &str, config: &Config, prefix: &str, n: usize) -> BTreeSet<String> {
    let keyring = Keyring::new(&config.signing.keys, None).unwrap();
    common::outage::send_clicks(base, &keyring, prefix, n).await;
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Waits until every key in `want` is in the clicks topic, within [`PROMPTLY`].
async fn assert_clicks_arrive(brokers: &str, want: &BTreeSet<String>) {
    let brokers = brokers.to_string();
    let want = want.clone();
    tokio::task::spawn_blocking(move || {
        // read_topic returns once a second passes with nothing new; a click still being
        // retried can come later, so read again until all are there or the time is up.
        let started = Instant::now();
        let every = Duration::from_millis(200);
        wait_every(PROMPTLY, every, "every click in Kafka", || {
            let left = PROMPTLY.saturating_sub(started.elapsed());
            let got: BTreeSet<String> = read_topic(&brokers, "clicks", want.len(), left)
                .iter()
                .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
                .collect();
            let missing: Vec<_> = want.difference(&got).take(5).collect();
            match missing.is_empty() {
                true => Ok(()),
                false => Err(format!(
                    "{} of {} clicks never reached Kafka (e.g. {missing:?})",
                    want.difference(&got).count(),
                    want.len()
                )),
            }
        });
    })
    .await
    .unwrap();
}

fn quarantine_lines(spool: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(spool.join(QUARANTINE_FILE))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The redirect's /metrics value of the quarantine counter for `reason`.
async fn quarantined_metric(server: &RunningRedirect, reason: &str) -> u64 {
    let text = get(&http_client(), &format!("{}/metrics", server.base()))
        .await
        .body;
    let name = format!("adclick_redirect_outbox_quarantined_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&name))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Everything is delivered, nothing waits, and /readyz says so.
async fn assert_drained_and_ready(server: &RunningRedirect) {
    let state = server.state.clone();
    wait_until_async(PROMPTLY, "the outbox to drain", async || {
        state.outbox.spool_records() == 0 && state.outbox.in_memory() == 0
    })
    .await;
    let r = get(&http_client(), &format!("{}/readyz", server.base())).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// The scenario, against any broker with `clicks` and `clicks-dlq`: a poison record is queued
/// first, then 300 clicks.
async fn poison_first_then_clicks(brokers: &str) {
    let spool = tempfile::tempdir().unwrap();
    let config = config(brokers, spool.path());
    let server = RunningRedirect::start(config.clone()).await;
    let route = server
        .state
        .outbox
        .send("clicks-dlq", b"", &poison())
        .unwrap();
    assert_eq!(route, adclick::kafka::outbox::Route::Quarantine);
    let want = send_clicks(&server.base(), &config, "after-poison", 300).await;
    assert_clicks_arrive(brokers, &want).await;
    assert_drained_and_ready(&server).await;
    assert_eq!(server.state.outbox.quarantined(), 1);
    assert_eq!(quarantined_metric(&server, "message_too_large").await, 1);
    let lines = quarantine_lines(spool.path());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["topic"], "clicks-dlq");
    assert_eq!(lines[0]["reason"], "message_too_large");
    assert_eq!(lines[0]["payload_bytes"], poison().len());
    assert_eq!(
        lines[0]["payload_sha256"],
        adclick::event::dead_letter::sha256_hex(&poison())
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_the_max_message_size_is_quarantined_and_the_clicks_behind_it_arrive() {
    let cluster = mock_cluster();
    poison_first_then_clicks(&cluster.bootstrap_servers()).await;
}

/// The same against a real broker process, when one is installed (`TANSU_BIN`).
#[cfg_attr(
    tansu_missing,
    ignore = "needs Tansu: scripts/tansu.sh install (CI requires it: ADCLICK_REQUIRE_TANSU=1)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_the_max_message_size_does_not_block_a_real_broker() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::tansu::start_tansu(dir.path());
    for topic in ["clicks", "clicks-dlq"] {
        broker.create_topic(topic, 4);
    }
    poison_first_then_clicks(&broker.brokers()).await;
}

/// The restart case: the poison record is already at the head of the spool when the redirect
/// starts (written there by the old outbox), with clicks behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_at_the_head_of_the_spool_at_startup_does_not_block_it() {
    let cluster = mock_cluster();
    let brokers = cluster.bootstrap_servers();
    let spool = tempfile::tempdir().unwrap();
    let config = config(&brokers, spool.path());
    let mut spooled = BTreeSet::new();
    {
        let mut s =
            Spool::open(spool.path(), FsyncPolicy::Always, Duration::ZERO, 64 << 20).unwrap();
        s.append(&SpoolRecord {
            topic: "clicks-dlq".into(),
            key: Vec::new(),
            value: poison(),
        })
        .unwrap();
        for i in 0..200 {
            let key = format!("spooled-{i}");
            s.append(&SpoolRecord {
                topic: "clicks".into(),
                key: key.clone().into_bytes(),
                value: b"spooled click".to_vec(),
            })
            .unwrap();
            spooled.insert(key);
        }
    }
    let server = RunningRedirect::start(config.clone()).await;
    let fresh = send_clicks(&server.base(), &config, "after-restart", 100).await;
    spooled.extend(fresh);
    assert_clicks_arrive(&brokers, &spooled).await;
    assert_drained_and_ready(&server).await;
    assert_eq!(server.state.outbox.quarantined(), 1);
    assert_eq!(quarantined_metric(&server, "message_too_large").await, 1);
    let lines = quarantine_lines(spool.path());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["via"], "spool");
    assert_eq!(lines[0]["payload_bytes"], poison().len());
    server.stop().await;
    // The cursor moved past it: the next start has nothing left to send.
    let s = Spool::open(spool.path(), FsyncPolicy::Always, Duration::ZERO, 64 << 20).unwrap();
    assert_eq!(s.pending_records(), 0);
}

/// The issue's reproduction end to end: a 1.5 MB partner line that fails validation, then
/// clicks. Its dead letter must fit a Kafka message (cut payload, original length and hash),
/// and the clicks must arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_invalid_partner_line_costs_no_click() {
    let cluster = mock_cluster();
    let brokers = cluster.bootstrap_servers();
    let spool = tempfile::tempdir().unwrap();
    let config = config(&brokers, spool.path());
    let server = RunningRedirect::start(config.clone()).await;
    let line = format!(r#"{{"ad_id":"{}"}}"#, "x".repeat(POISON_BYTES));
    let r = request(
        &http_client(),
        "POST",
        &format!("{}/api/v1/events", server.base()),
        &[("authorization", &format!("Bearer {}", common::PARTNER_KEY))],
        &format!("{line}\n"),
    )
    .await;
    assert!(r.status < 500, "{} {}", r.status, r.body);
    let want = send_clicks(&server.base(), &config, "after-line", 200).await;
    assert_clicks_arrive(&brokers, &want).await;
    assert_drained_and_ready(&server).await;
    server.stop().await;
    let letters = tokio::task::spawn_blocking(move || {
        read_topic(&brokers, "clicks-dlq", 0, Duration::from_secs(3))
    })
    .await
    .unwrap();
    for (_, letter) in &letters {
        assert!(
            letter.len() < 64 << 10,
            "a {} byte dead letter",
            letter.len()
        );
    }
}

/// A refusal that comes back from the broker in a delivery report (here: not authorized for
/// the topic) quarantines the record on the in-memory path, and the clicks after it arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_broker_refuses_in_a_delivery_report_is_quarantined() {
    let cluster = mock_cluster();
    let brokers = cluster.bootstrap_servers();
    let spool = tempfile::tempdir().unwrap();
    let config = config(&brokers, spool.path());
    let server = RunningRedirect::start(config.clone()).await;
    // Let the producer connect first, so the injected error meets the poison's request.
    let warm = send_clicks(&server.base(), &config, "warm", 5).await;
    assert_clicks_arrive(&brokers, &warm).await;
    // Sending straight to Kafka (a slow warm-up on a busy machine may have degraded it).
    let state = server.state.clone();
    wait_until_async(PROMPTLY, "direct sends", async || {
        !state.outbox.degraded() && state.outbox.spool_records() == 0
    })
    .await;
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    let route = server
        .state
        .outbox
        .send("clicks-dlq", b"dlq-key", b"refused record")
        .unwrap();
    assert_eq!(route, adclick::kafka::outbox::Route::Kafka);
    wait_until_async(
        PROMPTLY,
        "the refused record to be quarantined",
        async || state.outbox.quarantined() == 1,
    )
    .await;
    let want = send_clicks(&server.base(), &config, "after-refusal", 200).await;
    assert_clicks_arrive(&brokers, &want).await;
    assert_drained_and_ready(&server).await;
    assert_eq!(
        quarantined_metric(&server, "topic_authorization_failed").await,
        1
    );
    let lines = quarantine_lines(spool.path());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["key"], "dlq-key");
    assert_eq!(lines[0]["via"], "memory");
    server.stop().await;
}

/// A broker refuses whole batches: when a spooled batch comes back "message too large", the
/// good records that shared it are each tried alone and delivered; none is quarantined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_shared_a_refused_batch_are_retried_alone_not_quarantined() {
    let cluster = mock_cluster();
    let brokers = cluster.bootstrap_servers();
    let spool = tempfile::tempdir().unwrap();
    let config = config(&brokers, spool.path());
    let mut spooled = BTreeSet::new();
    {
        let mut s =
            Spool::open(spool.path(), FsyncPolicy::Always, Duration::ZERO, 64 << 20).unwrap();
        for i in 0..20 {
            let key = format!("batched-{i}");
            s.append(&SpoolRecord {
                topic: "clicks".into(),
                key: key.clone().into_bytes(),
                value: b"good click".to_vec(),
            })
            .unwrap();
            spooled.insert(key);
        }
    }
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let server = RunningRedirect::start(config.clone()).await;
    assert_clicks_arrive(&brokers, &spooled).await;
    assert_drained_and_ready(&server).await;
    assert_eq!(server.state.outbox.quarantined(), 0);
    assert!(quarantine_lines(spool.path()).is_empty());
    server.stop().await;
}

/// Delivery stalls without any poison (the broker keeps answering with a retriable error):
/// /readyz turns 503 and says why, even with no new click to spool, and ready again once
/// the record is delivered. The old /readyz said ready as long as nothing was spooled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_delivery_is_stuck_and_200_after() {
    let cluster = mock_cluster();
    let brokers = cluster.bootstrap_servers();
    let spool = tempfile::tempdir().unwrap();
    let mut config = config(&brokers, spool.path());
    config.redirect.delivery_stuck_after_ms = 1_000;
    let server = RunningRedirect::start(config.clone()).await;
    let warm = send_clicks(&server.base(), &config, "warm", 5).await;
    assert_clicks_arrive(&brokers, &warm).await;
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 200],
    );
    let stuck = send_clicks(&server.base(), &config, "stuck", 1).await;
    let client = http_client();
    let readyz = format!("{}/readyz", server.base());
    let every = Duration::from_millis(100);
    let body = wait_every_async(PROMPTLY, every, "not ready", async || {
        let r = get(&client, &readyz).await;
        match r.status {
            503 => Ok(r.body),
            _ => Err(format!("still ready: {}", r.body)),
        }
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], false);
    assert!(
        v["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().starts_with("delivery_stuck")),
        "{body}"
    );
    assert!(v["undelivered_for_ms"].as_u64().unwrap() >= 1_000, "{body}");
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    assert_clicks_arrive(&brokers, &stuck).await;
    assert_drained_and_ready(&server).await;
    server.stop().await;
}

/// A real broker refuses a record for a topic it does not have (Tansu answers
/// UnknownTopicOrPartition in the delivery report): the record is quarantined on the
/// in-memory path and the clicks sent after it arrive. The old outbox spooled it and retried
/// it at the head of the spool forever. (Tansu has no maximum message size of its own, so
/// the size case above is refused by librdkafka before it reaches the broker.)
#[cfg_attr(
    tansu_missing,
    ignore = "needs Tansu: scripts/tansu.sh install (CI requires it: ADCLICK_REQUIRE_TANSU=1)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_for_a_topic_the_real_broker_lacks_is_quarantined_and_clicks_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::tansu::start_tansu(dir.path());
    broker.create_topic("clicks", 4);
    let spool = tempfile::tempdir().unwrap();
    let mut config = config(&broker.brokers(), spool.path());
    // librdkafka waits this long for a topic to appear before it gives up (default 30 s).
    config
        .kafka
        .producer
        .insert("topic.metadata.propagation.max.ms".into(), "1000".into());
    let server = RunningRedirect::start(config.clone()).await;
    server
        .state
        .outbox
        .send("no-such-topic", b"lost-key", b"lost value")
        .unwrap();
    let want = send_clicks(&server.base(), &config, "after-unknown", 200).await;
    assert_clicks_arrive(&broker.brokers(), &want).await;
    let state = server.state.clone();
    wait_until_async(
        PROMPTLY,
        "the refused record to be quarantined",
        async || state.outbox.quarantined() == 1,
    )
    .await;
    assert_drained_and_ready(&server).await;
    assert_eq!(quarantined_metric(&server, "unknown_topic").await, 1);
    let lines = quarantine_lines(spool.path());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["topic"], "no-such-topic");
    assert_eq!(lines[0]["key"], "lost-key");
    server.stop().await;
}
