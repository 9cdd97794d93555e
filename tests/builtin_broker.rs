//! The built-in Kafka broker (`adclick::kafka::broker::Broker`) against a real client
//! (librdkafka through rdkafka): idempotent produce, consume from offset 0, watermarks,
//! restart on the same directory, outages under load, out-of-range fetches, unknown topics,
//! and the loadgen + aggregator pipeline end to end.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use adclick::kafka::broker::Broker;
use adclick::kafka::broker::log::Store;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "clicks";
const PARTITIONS: i32 = 4;

#[derive(Clone, Default)]
struct Counting {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                eprintln!("delivery failed: {e}");
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

fn producer(brokers: &str, ctx: Counting) -> ThreadedProducer<Counting> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("message.timeout.ms", "60000")
        // The outage test's broker is up 100 ms of every 300: a backoff grown to librdkafka's
        // 10 s default can miss the up-windows until the messages time out.
        .set("reconnect.backoff.max.ms", "200")
        .create_with_context(ctx)
        .expect("producer")
}

/// Sends `per_partition` records `"{p}:{i}"` to each partition; returns records/s.
fn produce(brokers: &str, per_partition: u64) -> f64 {
    produce_counted(brokers, per_partition, Counting::default(), Duration::ZERO)
}

/// [`produce`], its deliveries counted in `ctx` as they are acknowledged, with a `pause` after
/// each record of every partition (a load that lasts).
fn produce_counted(brokers: &str, per_partition: u64, ctx: Counting, pause: Duration) -> f64 {
    let p = producer(brokers, ctx.clone());
    let start = Instant::now();
    for i in 0..per_partition {
        for part in 0..PARTITIONS {
            let payload = format!("{part}:{i}");
            let key = format!("k{i}");
            let mut rec = BaseRecord::to(TOPIC)
                .partition(part)
                .payload(&payload)
                .key(&key);
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => panic!("send: {e}"),
                }
            }
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    p.flush(Duration::from_secs(120)).expect("flush");
    let secs = start.elapsed().as_secs_f64();
    let total = per_partition * PARTITIONS as u64;
    assert_eq!(ctx.failed.load(Ordering::Relaxed), 0, "failed deliveries");
    assert_eq!(
        ctx.ok.load(Ordering::Relaxed),
        total,
        "acknowledged deliveries"
    );
    total as f64 / secs
}

fn consumer(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "builtin-broker-test")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error")
        .set("reconnect.backoff.max.ms", "200")
        .create()
        .expect("consumer")
}

fn assign(c: &BaseConsumer, topic: &str, offsets: &[(i32, i64)]) {
    let mut tpl = TopicPartitionList::new();
    for &(p, o) in offsets {
        tpl.add_partition_offset(topic, p, Offset::Offset(o))
            .expect("offset");
    }
    c.assign(&tpl).expect("assign");
}

/// Reads every partition from 0 and checks each holds `"{p}:0"`, `"{p}:1"`, ... up to
/// `per_partition`, exactly once and in order; returns records/s.
fn consume_all(brokers: &str, per_partition: u64) -> f64 {
    let c = consumer(brokers);
    assign(
        &c,
        TOPIC,
        &(0..PARTITIONS).map(|p| (p, 0)).collect::<Vec<_>>(),
    );
    let mut next: HashMap<i32, u64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    let total = per_partition * PARTITIONS as u64;
    let mut seen = 0u64;
    let start = Instant::now();
    while seen < total {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "consumed {seen} of {total}"
        );
        let Some(m) = c.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = match m {
            // librdkafka reports a dropped connection and reconnects by itself, as the
            // aggregator's source lets it: a record lost or repeated would show below.
            Err(KafkaError::MessageConsumption(
                code
                @ (RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown),
            )) => {
                eprintln!("consume: {code:?}, going on");
                continue;
            }
            m => m.expect("consume"),
        };
        let p = m.partition();
        let payload = std::str::from_utf8(m.payload().expect("payload")).expect("utf8");
        let want = next.get_mut(&p).expect("partition");
        assert_eq!(payload, format!("{p}:{want}"), "partition {p}");
        assert_eq!(m.offset(), *want as i64, "offset in partition {p}");
        *want += 1;
        seen += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    // Nothing more arrives.
    if let Some(m) = c.poll(Duration::from_millis(300)) {
        panic!("extra record: {:?}", m.map(|m| (m.partition(), m.offset())));
    }
    for p in 0..PARTITIONS {
        let wm = c
            .fetch_watermarks(TOPIC, p, Duration::from_secs(10))
            .expect("watermarks");
        assert_eq!(wm, (0, per_partition as i64), "watermarks of partition {p}");
    }
    total as f64 / secs
}

fn topics() -> Vec<(String, i32)> {
    vec![(TOPIC.to_string(), PARTITIONS)]
}

#[test]
fn idempotent_produce_then_consume_every_record_in_order() {
    let broker = Broker::start(None, &topics()).expect("broker");
    let brokers = broker.bootstrap_servers();
    let per_partition = 125_000;
    let produce_rate = produce(&brokers, per_partition);
    let consume_rate = consume_all(&brokers, per_partition);
    println!(
        "builtin broker: produced {} records at {produce_rate:.0} records/s, consumed at \
         {consume_rate:.0} records/s",
        per_partition * PARTITIONS as u64
    );
}

/// A produce request whose records were stored but whose answer never reached the producer
/// (the broker's connection cut between the two) is retried by the idempotent producer, and
/// the retry is not stored again: every record once, in order.
#[test]
fn a_retried_batch_whose_answer_was_lost_is_stored_once() {
    let broker = Broker::start(None, &topics()).expect("broker");
    let brokers = broker.bootstrap_servers();
    broker.lose_next_produce_answer();
    produce(&brokers, 100);
    consume_all(&brokers, 100);
}

/// Taken down and up while a producer sends, its connections cut mid-request included, the
/// broker ends with every record once and in order (librdkafka's mock cluster stores a batch
/// retried after a cut twice, which made the outage test flaky).
#[test]
fn down_and_up_under_load_keeps_every_record_once_in_order() {
    let broker = Broker::start(None, &topics()).expect("broker");
    let brokers = broker.bootstrap_servers();
    let per_partition = 20_000;
    let refused = || {
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(&brokers).is_ok() {
            assert!(Instant::now() < deadline, "still accepting while down");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let counted = Counting::default();
    let outages = std::thread::scope(|s| {
        // Paced: sent over several seconds, through many outages.
        let (ctx, to) = (counted.clone(), brokers.as_str());
        let pause = Duration::from_micros(200);
        let sending = s.spawn(move || produce_counted(to, per_partition, ctx, pause));
        // The first outage once the producer has delivered: an outage cutting its very first
        // requests has left it without an acknowledgement for over a minute (1 run in 8 on
        // a loaded machine, cause not yet found; docs/design.md "The embedded broker").
        let deadline = Instant::now() + Duration::from_secs(60);
        while counted.ok.load(Ordering::Relaxed) == 0 && !sending.is_finished() {
            assert!(
                Instant::now() < deadline,
                "nothing delivered before any outage"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut outages = 0;
        while !sending.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
            broker.down();
            refused();
            outages += 1;
            std::thread::sleep(Duration::from_millis(200));
            broker.up();
        }
        sending.join().expect("producer");
        outages
    });
    assert!(
        outages >= 5,
        "the broker went down only {outages} times while the producer sent"
    );
    eprintln!("{outages} outages while the producer sent");
    consume_all(&brokers, per_partition);
}

#[test]
fn restart_on_the_same_directory_keeps_every_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let per_partition = 5_000;
    {
        let broker = Broker::start(Some(dir.path()), &topics()).expect("broker");
        produce(&broker.bootstrap_servers(), per_partition);
    }
    let broker = Broker::start(Some(dir.path()), &topics()).expect("broker again");
    consume_all(&broker.bootstrap_servers(), per_partition);
    // And it keeps appending after the records it found.
    produce(&broker.bootstrap_servers(), per_partition);
    let c = consumer(&broker.bootstrap_servers());
    for p in 0..PARTITIONS {
        let wm = c
            .fetch_watermarks(TOPIC, p, Duration::from_secs(10))
            .expect("watermarks");
        assert_eq!(wm, (0, 2 * per_partition as i64));
    }
}

#[test]
fn fetching_beyond_the_end_is_out_of_range() {
    let broker = Broker::start(None, &topics()).expect("broker");
    let brokers = broker.bootstrap_servers();
    produce(&brokers, 10);
    let c = consumer(&brokers);
    assign(&c, TOPIC, &[(0, 1_000)]);
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no out-of-range error"
        );
        match c.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => break,
            Some(other) => panic!(
                "expected AutoOffsetReset, got {:?}",
                other.map(|m| m.offset())
            ),
        }
    }
    // The end itself is not out of range: nothing to read yet, then what arrives.
    let c = consumer(&brokers);
    assign(&c, TOPIC, &[(0, 10)]);
    assert!(c.poll(Duration::from_millis(800)).is_none());
    produce(&brokers, 1);
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(30), "no new record");
        if let Some(m) = c.poll(Duration::from_millis(500)) {
            let m = m.expect("record");
            assert_eq!((m.partition(), m.offset()), (0, 10));
            assert_eq!(m.payload(), Some(&b"0:0"[..]));
            break;
        }
    }
}

#[test]
fn unknown_topic_in_metadata() {
    let broker = Broker::start(None, &topics()).expect("broker");
    let c = consumer(&broker.bootstrap_servers());
    let all = c
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    let names: Vec<&str> = all.topics().iter().map(|t| t.name()).collect();
    assert_eq!(names, vec![TOPIC]);
    assert_eq!(all.topics()[0].partitions().len(), PARTITIONS as usize);
    match c.fetch_metadata(Some("no-such-topic"), Duration::from_secs(10)) {
        Ok(md) => {
            let t = &md.topics()[0];
            assert_eq!(t.name(), "no-such-topic");
            assert!(t.error().is_some(), "no error for an unknown topic");
            assert!(t.partitions().is_empty());
        }
        Err(e) => assert!(e.to_string().contains("Unknown topic"), "{e}"),
    }
    // Still not created by asking.
    let all = c
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    assert_eq!(all.topics().len(), 1);
}

/// A RecordBatch v2 with no records but the header fields the broker reads: 61 bytes.
fn batch(last_offset_delta: i32, producer_id: i64, base_sequence: i32) -> Vec<u8> {
    let mut b = vec![0u8; 61];
    b[8..12].copy_from_slice(&49i32.to_be_bytes());
    b[16] = 2;
    b[23..27].copy_from_slice(&last_offset_delta.to_be_bytes());
    b[35..43].copy_from_slice(&1_000i64.to_be_bytes());
    b[43..51].copy_from_slice(&producer_id.to_be_bytes());
    b[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    b
}

#[test]
fn retried_batches_are_not_stored_twice_and_torn_tails_are_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topics = vec![("t".to_string(), 1)];
    {
        let store = Store::open(dir.path(), &topics).expect("store");
        let mut log = store.partition("t", 0).expect("partition").lock().unwrap();
        assert_eq!(log.append(&batch(2, 7, 0)).unwrap(), 0);
        assert_eq!(log.append(&batch(2, 7, 3)).unwrap(), 3);
        // Retries of either answer the first offset and append nothing.
        assert_eq!(log.append(&batch(2, 7, 0)).unwrap(), 0);
        assert_eq!(log.append(&batch(2, 7, 3)).unwrap(), 3);
        assert_eq!(log.high_watermark(), 6);
        // Another producer with the same sequence is a new batch; so is no producer id.
        assert_eq!(log.append(&batch(0, 8, 0)).unwrap(), 6);
        assert_eq!(log.append(&batch(0, -1, -1)).unwrap(), 7);
        assert_eq!(log.append(&batch(0, -1, -1)).unwrap(), 8);
        assert_eq!(log.high_watermark(), 9);
        // Old message formats are refused.
        let mut v1 = batch(0, -1, -1);
        v1[16] = 1;
        assert!(log.append(&v1).is_err());
        assert!(log.append(&batch(0, 7, 9)[..40]).is_err());
        assert_eq!(log.high_watermark(), 9);
    }
    // A torn batch at the end (a crash mid-write) is cut off on start.
    let path = dir.path().join("t-0.log");
    let mut bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 5 * 61);
    bytes.extend_from_slice(&batch(0, 9, 0)[..30]);
    std::fs::write(&path, &bytes).unwrap();
    let store = Store::open(dir.path(), &topics).expect("store again");
    let mut log = store.partition("t", 0).unwrap().lock().unwrap();
    assert_eq!(log.high_watermark(), 9);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 5 * 61);
    // The recent batches are known again after the restart: a retry is still recognised.
    assert_eq!(log.append(&batch(2, 7, 3)).unwrap(), 3);
    assert_eq!(log.append(&batch(0, 9, 0)).unwrap(), 9);
    assert_eq!(log.high_watermark(), 10);
    // Reads start at the batch holding the offset; base offsets are the assigned ones.
    let plan = log.plan_read(4, 1);
    let got = plan.read().unwrap().unwrap();
    assert_eq!(got.len(), 61);
    assert_eq!(i64::from_be_bytes(got[..8].try_into().unwrap()), 3);
    assert_eq!(
        log.plan_read(0, 10_000).read().unwrap().unwrap().len(),
        6 * 61
    );
    assert!(log.plan_read(10, 10_000).read().unwrap().is_none());
    assert!(store.partition("t", 1).is_none());
    assert!(store.partition("u", 0).is_none());
}
