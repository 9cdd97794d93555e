//! `adclick-loadgen replay` (issue 16 item 2): recorded traffic sent again into Kafka.
//!
//! - A recording made by the load generator (`--output file`: duplicates, late clicks,
//!   malformed lines, invalid traffic), replayed at full speed into the embedded broker and
//!   aggregated from the topic, equals the batch aggregator's result on the same files
//!   (`adclick-loadgen compare`, which must also catch a difference) and the load generator's
//!   own truth, exactly.
//! - At 10x, a short recording arrives with its relative timing divided by ten (within a
//!   tolerance) and every file's records in their partition, in the file's order.

use adclick_testkit as common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use adclick::loadgen::truth::GroundTruth;
use common::demo_config;
use common::process::run_ok;
use common::truth::check;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const LOADGEN: &str = env!("CARGO_BIN_EXE_adclick-loadgen");
const AGGREGATOR: &str = env!("CARGO_BIN_EXE_adclick-aggregator");

/// Records `count` events at `rate` per recorded second into `files` files under `dir`.
fn record(dir: &Path, files: u32, count: u32, rate: u32, extra: &[&str]) -> Vec<PathBuf> {
    run_ok(
        Command::new(LOADGEN)
            .args(["--config", &demo_config(), "--output", "file"])
            .arg("--out-dir")
            .arg(dir.join("rec"))
            .args(["--files", &files.to_string(), "--count", &count.to_string()])
            .args(["--rate", &rate.to_string(), "--seed", "11"])
            .arg("--truth")
            .arg(dir.join("truth.json"))
            .args(extra),
    );
    (0..files)
        .map(|k| dir.join("rec").join(format!("events-{k:03}.ndjson")))
        .collect()
}

fn replay(brokers: &str, speed: &str, files: &[PathBuf]) -> String {
    let out = run_ok(
        Command::new(LOADGEN)
            .args(["--config", &demo_config(), "replay", "--brokers", brokers])
            .args(["--speed", speed])
            .args(files),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("adclick-loadgen replay: sent"))
        .unwrap_or_else(|| panic!("no summary line in {stderr}"));
    summary.to_string()
}

fn compare(expected: &Path, actual: &Path) -> Output {
    Command::new(LOADGEN)
        .arg("compare")
        .args([expected, actual])
        .output()
        .unwrap()
}

#[test]
fn a_full_speed_replay_equals_the_batch_result_and_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let files = record(
        dir.path(),
        3,
        6_000,
        300,
        &[
            "--ads",
            "200",
            "--duplicate-share",
            "0.08",
            "--late-share",
            "0.01",
            "--malformed-share",
            "0.02",
            "--invalid",
            "0.02",
        ],
    );
    let truth = GroundTruth::read(&dir.path().join("truth.json")).unwrap();
    let t = &truth.tallies;
    assert!(
        t.duplicates > 200 && t.late > 10 && t.malformed > 50,
        "a recording with every kind of trouble: {t:?}"
    );

    let kafka = common::embedded_kafka(3);
    let brokers = kafka.bootstrap_servers();
    let summary = replay(&brokers, "max", &files);
    let lines: usize = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap().lines().count())
        .sum();
    assert!(
        summary.contains(&format!("sent {lines} records"))
            && summary.contains(&format!("Kafka acknowledged {lines}"))
            && summary.contains(&format!("{} malformed", t.malformed)),
        "{summary}"
    );

    let live = dir.path().join("live.ndjson");
    run_ok(
        Command::new(AGGREGATOR)
            .args(["--config", &demo_config(), "--brokers", &brokers])
            .args(["--workers", "2", "--until-end", "--output"])
            .arg(&live),
    );
    let batch = dir.path().join("batch.ndjson");
    run_ok(
        Command::new(AGGREGATOR)
            .args(["--config", &demo_config(), "--input"])
            .args(&files)
            .arg("--output")
            .arg(&batch),
    );

    let same = compare(&batch, &live);
    let report = String::from_utf8_lossy(&same.stdout);
    assert!(same.status.success(), "{report}");
    assert!(
        report.contains("EQUAL") && report.contains("tallies equal"),
        "{report}"
    );
    check(&batch, &truth, "the batch aggregator on the recording");
    let compared = check(&live, &truth, "the replay, aggregated from the topic");
    assert!(compared.windows[0] > 100, "{:?}", compared.windows);

    // The comparison fails, naming the window, when one final window is off by one click.
    let text = std::fs::read_to_string(&live).unwrap();
    let (i, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("\"status\":\"final\"") && l.contains("\"clicks\":1,"))
        .expect("a final window of one click");
    let tampered: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(j, l)| match j == i {
            true => l.replace("\"clicks\":1,", "\"clicks\":2,"),
            false => l.to_string(),
        })
        .collect();
    let wrong = dir.path().join("wrong.ndjson");
    std::fs::write(&wrong, tampered.join("\n")).unwrap();
    let differ = compare(&batch, &wrong);
    let report = String::from_utf8_lossy(&differ.stdout);
    assert_eq!(differ.status.code(), Some(1), "{report}");
    let ad = line
        .split("\"ad_id\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert!(
        report.contains("DIFFERENT") && report.contains("1 windows differ") && report.contains(ad),
        "{report}"
    );
}

/// Every record of the topic by partition, with the time it was produced (ms).
fn read_with_times(
    brokers: &str,
    partitions: i32,
    expected: usize,
) -> BTreeMap<i32, Vec<(i64, Vec<u8>)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "replay-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset("clicks", p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out: BTreeMap<i32, Vec<_>> = BTreeMap::new();
    let mut n = 0;
    common::wait_until(Duration::from_secs(60), "every replayed record", || {
        while let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let at = m.timestamp().to_millis().unwrap();
            out.entry(m.partition())
                .or_default()
                .push((at, m.payload().unwrap_or_default().to_vec()));
            n += 1;
        }
        n >= expected
    });
    out
}

#[test]
fn a_10x_replay_keeps_relative_timing_and_each_files_order() {
    let dir = tempfile::tempdir().unwrap();
    // 20 recorded seconds in two files, malformed lines among them.
    let files = record(dir.path(), 2, 800, 40, &["--malformed-share", "0.03"]);
    let kafka = common::embedded_kafka(2);
    let brokers = kafka.bootstrap_servers();
    let summary = replay(&brokers, "10", &files);
    let recorded: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(String::from)
                .collect()
        })
        .collect();
    let total = recorded.iter().map(Vec::len).sum();
    assert!(
        summary.contains(&format!("sent {total} records")),
        "{summary}"
    );
    let got = read_with_times(&brokers, 2, total);

    // Each file's lines, in its order, are its partition's records.
    for (p, lines) in recorded.iter().enumerate() {
        let payloads: Vec<String> = got[&(p as i32)]
            .iter()
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect();
        let first_difference = payloads.iter().zip(lines).position(|(a, b)| a != b);
        assert!(
            first_difference.is_none() && payloads.len() == lines.len(),
            "partition {p} holds file {p} in order: {} records, {} lines, first difference at \
             {first_difference:?}: {:?}",
            payloads.len(),
            lines.len(),
            first_difference.map(|i| (&payloads[i], &lines[i]))
        );
    }

    // Each record went out when its pace time (the largest event time of its file so far)
    // says, divided by ten, relative to the first.
    let mut pairs = Vec::new();
    for (p, lines) in recorded.iter().enumerate() {
        let mut max = None::<i64>;
        for (line, (sent, _)) in lines.iter().zip(&got[&(p as i32)]) {
            let time = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["event_time"].as_i64());
            if let Some(t) = time {
                max = Some(max.map_or(t, |m: i64| m.max(t)));
            }
            if let Some(m) = max {
                pairs.push((m, *sent));
            }
        }
    }
    let pace0 = pairs.iter().map(|p| p.0).min().unwrap();
    let sent0 = pairs.iter().map(|p| p.1).min().unwrap();
    let span = pairs.iter().map(|p| p.0).max().unwrap() - pace0;
    assert!(span > 15_000, "about 20 recorded seconds: {span} ms");
    let mut off: Vec<i64> = pairs
        .iter()
        .map(|&(pace, sent)| ((sent - sent0) - (pace - pace0) / 10).abs())
        .collect();
    off.sort_unstable();
    let (median, worst) = (off[off.len() / 2], off[off.len() - 1]);
    // Produce timestamps are in ms and the replay sleeps to each record's time; the bounds
    // leave room for a loaded 2-core machine, and are far below what sending at 1x (up to
    // 20 s late) or without pacing (up to 2 s early) would give.
    assert!(
        median <= 50 && worst <= 500,
        "records went out a median {median} ms and at worst {worst} ms away from their \
         recorded time / 10 ({span} ms recorded)"
    );
    let took = pairs.iter().map(|p| p.1).max().unwrap() - sent0;
    assert!(
        (span / 10 - 300..=span / 10 + 300).contains(&took),
        "{span} ms recorded took {took} ms at 10x"
    );
}

/// A live job's raw Parquet archive, replayed into a fresh topic (each archived partition to
/// its own) and aggregated from it, equals the batch recomputation of the archive.
#[test]
fn an_archive_replay_equals_the_batch_recomputation_of_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let files = record(dir.path(), 3, 3_000, 200, &["--invalid", "0.02"]);
    // The live job that writes the archive: it reads the recording from a topic.
    let first = common::embedded_kafka(3);
    replay(&first.bootstrap_servers(), "max", &files);
    let parquet = dir.path().join("parquet");
    run_ok(
        Command::new(AGGREGATOR)
            .args([
                "--config",
                &demo_config(),
                "--brokers",
                &first.bootstrap_servers(),
            ])
            .args(["--until-end", "--output"])
            .arg(dir.path().join("first.ndjson"))
            .arg("--checkpoint-dir")
            .arg(dir.path().join("checkpoints"))
            .arg("--parquet-dir")
            .arg(&parquet),
    );

    let second = common::embedded_kafka(3);
    let summary = replay(
        &second.bootstrap_servers(),
        "max",
        std::slice::from_ref(&parquet),
    );
    assert!(summary.contains(" 0 malformed"), "{summary}");
    let live = dir.path().join("live.ndjson");
    run_ok(
        Command::new(AGGREGATOR)
            .args([
                "--config",
                &demo_config(),
                "--brokers",
                &second.bootstrap_servers(),
            ])
            .args(["--workers", "2", "--until-end", "--output"])
            .arg(&live),
    );
    let batch = dir.path().join("batch.ndjson");
    run_ok(
        Command::new(AGGREGATOR)
            .args(["--config", &demo_config(), "--output"])
            .arg(&batch)
            .args(["replay", "--archive"])
            .arg(&parquet)
            .args([
                "--from",
                "2000-01-01T00:00:00Z",
                "--to",
                "2099-01-01T00:00:00Z",
            ]),
    );
    let same = compare(&batch, &live);
    let report = String::from_utf8_lossy(&same.stdout);
    assert!(same.status.success(), "{report}");
    assert!(report.contains("EQUAL"), "{report}");
}

/// Partner NDJSON goes through the redirect's partner endpoint, in order; lines it rejects are
/// sent as they are and counted in the redirect's answer.
#[test]
fn partner_lines_are_replayed_through_the_redirect() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = common::embedded_kafka(2);
    let brokers = kafka.bootstrap_servers();
    let mut redirect = common::process::Spawned::start(
        Command::new(env!("CARGO_BIN_EXE_adclick-redirect"))
            .args(["--config", &demo_config(), "--brokers", &brokers])
            .args(["--listen", "127.0.0.1:0", "--spool-dir"])
            .arg(dir.path().join("spool")),
    );
    let base = redirect
        .line_with_prefix("adclick-redirect listening on ", Duration::from_secs(60))
        .trim()
        .to_string();
    let now = adclick::timefmt::now_millis() - 60_000;
    let line = |i: i64| {
        format!(
            r#"{{"impression_id":"imp-{i}","ad_id":"ad_{i}","campaign_id":"cmp_1","advertiser_id":"adv_1","publisher_id":"pub_1","click_timestamp":{},"country":"DE"}}"#,
            now + i * 100
        )
    };
    let lines = [
        line(1),
        line(2),
        "{\"ad_id\":\"no impression\"}".to_string(),
        line(3),
        String::new(),
        line(3),
        "not json".to_string(),
        line(4),
    ];
    let partner = dir.path().join("partner.ndjson");
    std::fs::write(&partner, lines.join("\n")).unwrap();
    let out = run_ok(
        Command::new(LOADGEN)
            .args(["--config", &demo_config(), "replay", "--to", "http"])
            .args(["--target", &base, "--speed", "max", "--batch-lines", "3"])
            .arg(&partner),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sent 7 records")
            && stderr.contains("5 clicks, 2 malformed")
            && stderr.contains("the redirect accepted 5 and rejected 2 in 3 batches"),
        "{stderr}"
    );
    let got = common::read_topic(&brokers, "clicks", 5, Duration::from_secs(30));
    let mut keys: Vec<String> = got
        .iter()
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect();
    keys.sort();
    assert_eq!(keys, ["imp-1", "imp-2", "imp-3", "imp-3", "imp-4"]);
    // Kafka output refuses partner lines, and the redirect refuses other formats.
    let err = Command::new(LOADGEN)
        .args(["--config", &demo_config(), "replay", "--brokers", &brokers])
        .arg(&partner)
        .output()
        .unwrap();
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("--to http"));
}
