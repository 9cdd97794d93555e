//! Streaming from Kafka: a partition that never receives data must not hold the watermark back
//! forever. After the idle timeout it is released, and windows complete.

mod common;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use adclick::aggregator::output::Line;
use adclick::event::{ClickEvent, Device, device_to_proto};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const START: i64 = 1_776_686_400_000; // a minute boundary

fn event(i: i64) -> ClickEvent {
    ClickEvent {
        impression_id: format!("imp-{i}"),
        click_id: format!("0192f6a4-7c1e-7b3a-9c44-{i:012x}"),
        ad_id: format!("ad_{}", i % 3),
        campaign_id: "cmp_1".into(),
        advertiser_id: "adv_1".into(),
        publisher_id: "pub_1".into(),
        event_time_ms: START + i * 500,
        country: "US".into(),
        device: device_to_proto(Device::Mobile),
        ip_hash: String::new(),
        user_id_hash: String::new(),
        user_agent: String::new(),
        source: "test".into(),
    }
}

#[test]
fn an_empty_partition_is_released_after_the_idle_timeout() {
    let kafka = common::embedded_kafka(4);
    let brokers = kafka.bootstrap_servers();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    // 300 clicks, 2 per second of event time over 150 s, on partitions 0 to 2; 3 stays empty.
    for i in 0..300 {
        let e = event(i);
        let value = e.to_protobuf();
        producer
            .send(
                BaseRecord::to("clicks")
                    .partition((i % 3) as i32)
                    .key(e.impression_id.as_bytes())
                    .payload(&value),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let mut child = Command::new(env!("CARGO_BIN_EXE_adclick-aggregator"))
        .args(["--brokers", &brokers, "--workers", "2"])
        .args(["--query-listen", "127.0.0.1:0", "--output"])
        .arg(&out)
        .env("ADCLICK_AGGREGATOR_IDLE_TIMEOUT_MS", "1000")
        .env("ADCLICK_PRIVACY_SALT", "test-salt-0123456789")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The first minute holds clicks 0..120, 40 for each of the three ads: each ad's row must be
    // reported complete. Workers report their rows as their own shards see the frontier pass, so
    // the rows may arrive in separate writes; wait for all three.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first_minute = BTreeMap::new();
    while first_minute.len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(f) = std::fs::File::open(&out) else {
            continue;
        };
        first_minute.clear();
        for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
            if let Ok(Line::Window {
                granularity,
                window_start_ms,
                status,
                ad_id,
                clicks,
                ..
            }) = serde_json::from_str::<Line>(&line)
                && granularity == "minute"
                && window_start_ms == START as u64
                && status == "complete"
            {
                assert!(
                    first_minute.insert(ad_id, clicks).is_none(),
                    "a row reported complete twice"
                );
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let want: BTreeMap<String, i64> = (0..3).map(|a| (format!("ad_{a}"), 40)).collect();
    assert_eq!(
        first_minute, want,
        "the first minute completes, with its 120 clicks"
    );
}
