//! The aggregator against the load generator's ground truth, exactly: through files and
//! through Kafka (embedded broker), on 1 worker, 2 workers and 2 processes × 2 workers. The
//! traffic has duplicates (some earlier than their original), retries, reordering,
//! allowed-late and too-late clicks, malformed records, and one hot ad taking half of it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use adclick::aggregator::output::{Line, Tallies};
use adclick::kafka::embedded::EmbeddedKafka;
use adclick::loadgen::truth::{GroundTruth, TruthReport};

const LOADGEN: &str = env!("CARGO_BIN_EXE_adclick-loadgen");
const AGGREGATOR: &str = env!("CARGO_BIN_EXE_adclick-aggregator");

type Key = (u64, [String; 6]);

fn demo_config() -> String {
    format!("{}/config/demo.toml", env!("CARGO_MANIFEST_DIR"))
}

fn loadgen(args: &[&str], truth: &Path) -> TruthReport {
    let out = Command::new(LOADGEN)
        .args([
            "--config",
            &demo_config(),
            "--count",
            "8000",
            "--rate",
            "400",
        ])
        .args(["--seed", "7", "--ads", "300", "--hot-ad-share", "0.5"])
        .args(["--duplicate-share", "0.08", "--late-share", "0.01"])
        .arg("--truth")
        .arg(truth)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = GroundTruth::read(truth).unwrap();
    let k = &t.tallies;
    assert!(
        k.duplicates > 300 && k.late > 20 && k.malformed > 30,
        "{k:?}"
    );
    t
}

fn aggregator(args: &[String]) -> Child {
    Command::new(AGGREGATOR)
        .args(["--config", &demo_config()])
        .args(args)
        .spawn()
        .unwrap()
}

fn wait_ok(mut c: Child) {
    let status = c.wait().unwrap();
    assert!(status.success(), "aggregator exited with {status}");
}

fn expected(t: &TruthReport) -> BTreeMap<Key, (i64, i64)> {
    t.windows
        .iter()
        .map(|w| {
            let dims = [
                &w.ad_id,
                &w.campaign_id,
                &w.advertiser_id,
                &w.publisher_id,
                &w.country,
                &w.device,
            ]
            .map(|s| s.to_string());
            (
                (w.minute_ms as u64, dims),
                (w.clicks as i64, w.duplicates as i64),
            )
        })
        .collect()
}

/// Final minute rows and the tallies from the aggregator's NDJSON output.
fn read_output(path: &Path) -> (BTreeMap<Key, (i64, i64)>, Tallies) {
    let mut rows = BTreeMap::new();
    let mut tallies = None;
    for line in std::fs::read_to_string(path).unwrap().lines() {
        match serde_json::from_str::<Line>(line).unwrap() {
            Line::Window {
                granularity,
                window_start_ms,
                ad_id,
                campaign_id,
                advertiser_id,
                publisher_id,
                country,
                device,
                clicks,
                duplicates,
                status,
                ..
            } if granularity == "minute" && status == "final" && (clicks, duplicates) != (0, 0) => {
                let dims = [
                    ad_id,
                    campaign_id,
                    advertiser_id,
                    publisher_id,
                    country,
                    device,
                ];
                assert!(
                    rows.insert((window_start_ms, dims), (clicks, duplicates))
                        .is_none(),
                    "a window reported final twice"
                );
            }
            Line::Tallies(t) => tallies = Some(t),
            _ => {}
        }
    }
    (rows, tallies.expect("the output ends with the tallies"))
}

fn check(out: &Path, truth: &TruthReport, what: &str) {
    let (rows, tallies) = read_output(out);
    let want = expected(truth);
    let missing: Vec<_> = want
        .iter()
        .filter(|(k, v)| rows.get(*k) != Some(v))
        .take(3)
        .collect();
    let extra: Vec<_> = rows
        .iter()
        .filter(|(k, _)| !want.contains_key(*k))
        .take(3)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: differs from the truth: missing/wrong {missing:?}, extra {extra:?}"
    );
    let t = &truth.tallies;
    assert_eq!(
        (
            tallies.received,
            tallies.counted,
            tallies.duplicates,
            tallies.late,
            tallies.dead_lettered
        ),
        (
            t.emitted - t.forged,
            t.counted as i64,
            t.duplicates as i64,
            t.late,
            t.malformed
        ),
        "{what}: tallies"
    );
    assert_eq!(
        tallies.received as i64,
        tallies.counted + tallies.duplicates + tallies.late as i64 + tallies.dead_lettered as i64,
        "{what}: tallies add up"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs every cluster shape over the same input arguments.
fn every_shape(dir: &Path, input: &[String], truth: &TruthReport) {
    for workers in [1, 2] {
        let out = dir.join(format!("out-{workers}w.ndjson"));
        let mut args = input.to_vec();
        args.extend([
            "--workers".into(),
            workers.to_string(),
            "--output".into(),
            out.display().to_string(),
        ]);
        wait_ok(aggregator(&args));
        check(&out, truth, &format!("{workers} worker(s)"));
    }
    let hostfile = dir.join("hosts");
    std::fs::write(
        &hostfile,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port()),
    )
    .unwrap();
    let out = dir.join("out-2x2.ndjson");
    let procs: Vec<Child> = (0..2)
        .map(|i| {
            let mut args = input.to_vec();
            args.extend(
                [
                    "--workers",
                    "2",
                    "--processes",
                    "2",
                    "--process",
                    &i.to_string(),
                    "--hostfile",
                ]
                .map(String::from),
            );
            args.push(hostfile.display().to_string());
            args.extend(["--output".into(), out.display().to_string()]);
            aggregator(&args)
        })
        .collect();
    for p in procs {
        wait_ok(p);
    }
    check(&out, truth, "2 processes x 2 workers");
}

#[test]
fn files_on_every_cluster_shape_equal_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    let truth = loadgen(
        &[
            "--output",
            "file",
            "--files",
            "5",
            "--out-dir",
            events.to_str().unwrap(),
        ],
        &dir.path().join("truth.json"),
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(&events)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut input = vec!["--input".to_string()];
    input.extend(files.iter().map(|f| f.display().to_string()));
    every_shape(dir.path(), &input, &truth);
}

#[test]
fn kafka_on_every_cluster_shape_equals_the_truth() {
    let kafka = EmbeddedKafka::start(&adclick::config::KafkaConfig {
        partitions: 6,
        ..Default::default()
    })
    .unwrap();
    let brokers = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let truth = loadgen(
        &["--output", "kafka", "--brokers", &brokers],
        &dir.path().join("truth.json"),
    );
    let input: Vec<String> = ["--brokers", &brokers, "--until-end"]
        .map(String::from)
        .to_vec();
    every_shape(dir.path(), &input, &truth);
}

#[test]
fn an_empty_topic_finishes_with_zero_tallies() {
    let kafka = EmbeddedKafka::start(&Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    wait_ok(aggregator(&[
        "--brokers".into(),
        kafka.bootstrap_servers(),
        "--until-end".into(),
        "--output".into(),
        out.display().to_string(),
    ]));
    let (rows, tallies) = read_output(&out);
    assert!(rows.is_empty());
    assert_eq!(tallies, Tallies::default());
}

/// Crashes: the aggregator is killed with SIGKILL at a dozen moments while the load generator
/// produces in real time, and each restart goes on from the newest checkpoint, alternately on
/// one and two workers. A last run goes on from the newest checkpoint to the topic's end. Its
/// output, written across all the runs, holds every final window once, equal to the truth,
/// and the tallies add up to it.
#[test]
fn killed_at_random_and_restored_from_checkpoints_equals_the_truth() {
    let kafka = EmbeddedKafka::start(&adclick::config::KafkaConfig {
        partitions: 4,
        ..Default::default()
    })
    .unwrap();
    let brokers = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, out) = (
        dir.path().join("checkpoints"),
        dir.path().join("out.ndjson"),
    );
    let truth_path = dir.path().join("truth.json");
    let generator = {
        let (brokers, truth_path) = (brokers.clone(), truth_path.clone());
        std::thread::spawn(move || {
            loadgen(
                &["--output", "kafka", "--brokers", &brokers, "--realtime"],
                &truth_path,
            )
        })
    };
    let common: Vec<String> = [
        "--brokers",
        &brokers,
        "--checkpoint-dir",
        &ckpt.display().to_string(),
        "--output",
        &out.display().to_string(),
        "--query-listen",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .to_vec();
    let mut kills = 0;
    let mut rng = 7u64;
    while !generator.is_finished() || kills < 10 {
        let mut args = common.clone();
        args.extend(["--workers".into(), (1 + kills % 2).to_string()]);
        let mut child = Command::new(AGGREGATOR)
            .args(["--config", &demo_config()])
            .args(&args)
            .env("ADCLICK_AGGREGATOR_CHECKPOINT_INTERVAL_MS", "200")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // 0.7 to 2.2 s: some runs die before their first checkpoint, most after a few.
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(std::time::Duration::from_millis(700 + (rng >> 33) % 1500));
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    let truth = generator.join().unwrap();
    let committed = std::fs::read_dir(&ckpt)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("MANIFEST.json").exists())
        .count();
    assert!(committed >= 1, "checkpoints were committed");
    let mut args = common;
    args.extend(["--workers", "2", "--until-end"].map(String::from));
    wait_ok(aggregator(&args));
    check(&out, &truth, &format!("after {kills} kills"));
}
