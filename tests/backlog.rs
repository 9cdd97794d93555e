//! A backlog never vanishes (issue 17). Records deleted before the aggregator reads them (a
//! bounded broker, retention, a restore whose offsets were deleted) are tallied as `lost`
//! with their offset ranges, logged, shown by health and `/metrics`, and under the default
//! policy (`aggregator.on_gap = fail`) stop the aggregator with exit code 3. The embedded
//! broker (built in) keeps a backlog far beyond the mock cluster's ~5 MB per partition.

use adclick_testkit as common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use adclick::aggregator::EXIT_DATA_LOST;
use adclick::aggregator::checkpoint::{self, CheckpointConfig};
use adclick::aggregator::output::{Line, Tallies};
use adclick::loadgen::truth::{GroundTruth, TruthReport};
use common::http::blocking_get;
use common::process::{Spawned, run_ok};
use common::truth::{
    check, compare_rows_of, expected_tallies, final_rows, output_lines, read_output,
};
use common::{demo_config, wait_every};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

const LOADGEN: &str = env!("CARGO_BIN_EXE_adclick-loadgen");
const AGGREGATOR: &str = env!("CARGO_BIN_EXE_adclick-aggregator");
const REDIRECT: &str = env!("CARGO_BIN_EXE_adclick-redirect");

/// The least allowed lateness the load generator supports (ms), so streaming windows become
/// final soon after the backlog is read.
const LATENESS: &str = "40000";
const ADMIN: Option<&str> = Some("demo-admin-key-not-secret");

/// Preloads `count` clicks into `brokers` (the reproduction: rate 20 000, seed 11).
fn preload(brokers: &str, count: u64, dir: &Path) -> TruthReport {
    preload_with(brokers, count, dir, &["--seed", "11"])
}

/// [`preload`] with other load generator arguments (a seed among them).
fn preload_with(brokers: &str, count: u64, dir: &Path, args: &[&str]) -> TruthReport {
    let truth = dir.join("truth.json");
    run_ok(
        Command::new(LOADGEN)
            .args(["--config", &demo_config(), "--output", "kafka"])
            .args(["--brokers", brokers, "--count", &count.to_string()])
            .args(["--rate", "20000"])
            .args(args)
            .arg("--truth")
            .arg(&truth),
    );
    GroundTruth::read(&truth).unwrap()
}

/// Runs `adclick-aggregator --until-end` over `brokers` with extra environment settings.
fn until_end(brokers: &str, out: &Path, workers: usize, env: &[(&str, &str)]) -> Output {
    Command::new(AGGREGATOR)
        .args([
            "--config",
            &demo_config(),
            "--brokers",
            brokers,
            "--until-end",
        ])
        .args(["--workers", &workers.to_string()])
        .arg("--output")
        .arg(out)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .output()
        .unwrap()
}

/// Sum over the clicks topic's partitions of (low, high) watermarks.
fn topic_offsets(brokers: &str) -> (i64, i64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some("clicks"), Duration::from_secs(10))
        .unwrap();
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            consumer
                .fetch_watermarks("clicks", p.id(), Duration::from_secs(10))
                .unwrap()
        })
        .fold((0, 0), |a, (l, h)| (a.0 + l, a.1 + h))
}

/// The `lost` lines of an output: (partition, from, to).
fn gaps(out: &Path) -> Vec<(String, u64, u64)> {
    output_lines(out)
        .filter_map(|l| match l {
            Line::Lost {
                partition,
                from,
                to,
                records,
            } => {
                assert_eq!(records, to - from);
                Some((partition, from, to))
            }
            _ => None,
        })
        .collect()
}

fn adds_up(t: &Tallies) {
    assert_eq!(
        t.received as i64,
        t.counted + t.invalid + t.duplicates + t.late as i64 + t.dead_lettered as i64,
        "received = counted + invalid + duplicates + late + dead_lettered: {t:?}"
    );
}

/// The reproduction, on librdkafka's mock cluster (2 partitions, so 150 000 clicks
/// overflow its ~5 MB per partition): before the fix the aggregator read what was left,
/// exited 0 and said nothing. Now the default policy stops it with exit code 3, and
/// `on_gap = report` finishes with every vanished offset tallied as lost.
#[test]
fn a_backlog_the_mock_broker_dropped_is_reported_never_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = common::embedded_kafka(2);
    let brokers = kafka.bootstrap_servers();
    preload(&brokers, 150_000, dir.path());
    let (low, high) = topic_offsets(&brokers);
    assert!(low > 0, "the mock cluster dropped nothing: {low}/{high}");

    // Default policy: fail, with the documented exit code and a message that says why.
    let out = dir.path().join("fail.ndjson");
    let run = until_end(&brokers, &out, 2, &[]);
    assert_eq!(run.status.code(), Some(EXIT_DATA_LOST), "{run:?}");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("deleted before they were read") && stderr.contains("on_gap"),
        "{stderr}"
    );

    // Report: every record the topic held is received or lost, exactly.
    for workers in [1, 2] {
        let out = dir.path().join(format!("report-{workers}.ndjson"));
        let run = until_end(
            &brokers,
            &out,
            workers,
            &[("ADCLICK_AGGREGATOR_ON_GAP", "report")],
        );
        assert!(run.status.success(), "{run:?}");
        let (_, tallies) = read_output(&out);
        assert_eq!(tallies.lost as i64, low, "{workers} worker(s): {tallies:?}");
        assert_eq!(
            (tallies.received + tallies.lost) as i64,
            high,
            "received + lost is what the topic held"
        );
        adds_up(&tallies);
        let mut found = gaps(&out);
        found.sort();
        assert_eq!(found.len(), 2, "one gap per partition: {found:?}");
        assert!(found.iter().all(|(_, from, _)| *from == 0), "{found:?}");
        assert_eq!(
            found.iter().map(|(_, f, t)| t - f).sum::<u64>(),
            tallies.lost
        );
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains("ERROR"), "an ERROR line: {stderr}");
    }
}

/// A streaming aggregator that meets a gap under `on_gap = report` says so where operators
/// look: health `degraded` with the gaps, and `/metrics`.
#[test]
fn a_gap_marks_health_degraded_and_shows_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = common::embedded_kafka(1);
    let brokers = kafka.bootstrap_servers();
    preload(&brokers, 60_000, dir.path());
    let (low, _) = topic_offsets(&brokers);
    assert!(low > 0);
    let mut aggregator = Spawned::start(
        Command::new(AGGREGATOR)
            .args(["--config", &demo_config(), "--brokers", &brokers])
            .args(["--query-listen", "127.0.0.1:0", "--output"])
            .arg(dir.path().join("out.ndjson"))
            .env("ADCLICK_AGGREGATOR_ON_GAP", "report")
            .stderr(Stdio::null()),
    );
    let base = aggregator.line_with_prefix("query server: ", Duration::from_secs(30));
    let key = Some("demo-admin-key-not-secret");
    let url = format!("{base}api/v1/health");
    let every = Duration::from_millis(200);
    let health = wait_every(Duration::from_secs(60), every, "a gap in health", || {
        let health = blocking_get(&url, key).json();
        match health["lost_records"] == low {
            true => Ok(health),
            false => Err(health.to_string()),
        }
    });
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["gaps"][0]["from"], 0, "{health}");
    assert_eq!(health["gaps"][0]["to"], low, "{health}");
    let metrics = blocking_get(&format!("{base}metrics"), key).body;
    assert!(
        metrics.contains(&format!("adclick_aggregator_gap_records {low}")),
        "{metrics}"
    );
    // The dashboard warns, in a real browser.
    let shown = common::process::dashboard(
        &base,
        "demo-admin-key-not-secret",
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-gap.png"),
    );
    let health = &shown["health"];
    assert_eq!(health["status"], "degraded", "{shown}");
    assert_eq!(health["lost_records"], low, "{shown}");
    let warning = health["gap_warning"].as_str().unwrap_or_default();
    assert!(
        warning.contains("deleted before they were read") && warning.contains("clicks/0"),
        "{shown}"
    );
}

/// Clicks preloaded into the embedded broker's 2 partitions: about 14 MB per partition, past
/// the mock cluster's 5 MB window (it read 30 % of such a backlog), and within CI's time for a
/// debug build; docs/benchmarks.md records 1 M and 10 M with release builds.
const BACKLOG: u64 = 200_000;

/// The reproduction on the default embedded broker (built in, started by `adclick-redirect
/// --embedded-kafka`, as the demo does): a backlog beyond any bounded window, every record
/// kept, then read to its end (`--until-end`) and by a streaming aggregator, each equal to the
/// truth in every final window and every tally.
#[test]
fn a_backlog_beyond_any_window_on_the_embedded_broker_is_counted_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (_redirect, brokers) = embedded_broker(dir.path());
    let truth = preload_with(
        &brokers,
        BACKLOG,
        dir.path(),
        &["--allowed-lateness-ms", LATENESS],
    );
    let (low, high) = topic_offsets(&brokers);
    assert_eq!((low, high), (0, truth.tallies.emitted as i64), "all kept");
    let lateness = [("ADCLICK_AGGREGATOR_ALLOWED_LATENESS_MS", LATENESS)];

    let out = dir.path().join("until-end.ndjson");
    let run = until_end(&brokers, &out, 2, &lateness);
    assert!(run.status.success(), "{run:?}");
    let compared = check(&out, &truth, "--until-end over the backlog");
    assert_eq!(compared.tallies.lost, 0);

    // Streaming: once the backlog is read and the partitions idle, the watermark follows the
    // wall clock past every window's end plus the lateness, and every window is final.
    let out = dir.path().join("streaming.ndjson");
    let mut aggregator = Spawned::start(
        Command::new(AGGREGATOR)
            .args(["--config", &demo_config(), "--brokers", &brokers])
            .args([
                "--workers",
                "2",
                "--query-listen",
                "127.0.0.1:0",
                "--output",
            ])
            .arg(&out)
            .env("ADCLICK_AGGREGATOR_IDLE_TIMEOUT_MS", "2000")
            .envs(lateness)
            .stderr(Stdio::null()),
    );
    let base = aggregator.line_with_prefix("query server: ", Duration::from_secs(30));
    // The writer reports finals after the frontier passes them: wait for its tallies (set
    // once each time's lines are written and flushed) to hold the whole backlog.
    let want = expected_tallies(&truth);
    let url = format!("{base}api/v1/health");
    let (timeout, every) = (Duration::from_secs(600), Duration::from_millis(500));
    wait_every(timeout, every, "the backlog to be final", || {
        let health = blocking_get(&url, ADMIN).json();
        let got: Option<Tallies> = serde_json::from_value(health["tallies"].clone()).ok();
        match got == Some(want) {
            true => Ok(()),
            false => Err(health.to_string()),
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let (rows, _) = final_rows(output_lines(&out));
    // Minutes are final by now; hours and days only once they end.
    compare_rows_of(&rows, &truth, "streaming over the backlog", &["minute"]);
}

/// `adclick-redirect --embedded-kafka` (the demo's broker), and the address it printed.
fn embedded_broker(dir: &Path) -> (Spawned, String) {
    let mut redirect = Spawned::start(
        Command::new(REDIRECT)
            .args(["--config", &demo_config(), "--embedded-kafka"])
            .args(["--listen", "127.0.0.1:0"])
            .env("ADCLICK_KAFKA_PARTITIONS", "2")
            .env("ADCLICK_REDIRECT_SPOOL_DIR", dir.join("spool"))
            .stderr(Stdio::null()),
    );
    let brokers = redirect.line_with_prefix("embedded kafka: ", Duration::from_secs(60));
    (redirect, brokers)
}

/// Retention on a real broker deletes the oldest records of a partition before the
/// aggregator reads them (Tansu's retention deletes rows of its `record` table; the test
/// deletes the same rows at once instead of waiting for its maintenance interval). Both
/// policies see exactly that range.
#[test]
#[cfg_attr(
    tansu_missing,
    ignore = "needs Tansu: scripts/tansu.sh install (CI requires it: ADCLICK_REQUIRE_TANSU=1)"
)]
fn retention_on_a_real_broker_forces_a_gap_reported_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let tansu = common::tansu::start_tansu(dir.path());
    tansu.create_topic("clicks", 1);
    let brokers = tansu.brokers();
    let truth = preload(&brokers, 5_000, dir.path());
    let held = truth.tallies.emitted - truth.tallies.forged;
    let deleted = common::tansu::delete_oldest_records(dir.path(), "clicks", 0, 1_234);
    assert_eq!(deleted, 1_234);

    let out = dir.path().join("fail.ndjson");
    let run = until_end(&brokers, &out, 1, &[]);
    assert_eq!(run.status.code(), Some(EXIT_DATA_LOST), "{run:?}");

    let out = dir.path().join("report.ndjson");
    let run = until_end(
        &brokers,
        &out,
        2,
        &[("ADCLICK_AGGREGATOR_ON_GAP", "report")],
    );
    assert!(run.status.success(), "{run:?}");
    let (_, tallies) = read_output(&out);
    assert_eq!(gaps(&out), vec![("clicks/0".to_string(), 0, 1_234)]);
    assert_eq!(tallies.lost, 1_234);
    assert_eq!(tallies.received + tallies.lost, held);
    adds_up(&tallies);
}

/// A restore whose checkpointed offsets were deleted meanwhile: the aggregator resumes at
/// the checkpoint's offset, the broker answers that it no longer holds it, and exactly the
/// records between the checkpoint and the log's start are reported lost (the mock cluster's
/// bounded window plays retention: more traffic pushes the checkpointed offset out of it).
#[test]
fn a_restore_whose_checkpointed_offsets_were_deleted_reports_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = common::embedded_kafka(1);
    let brokers = kafka.bootstrap_servers();
    let first = preload(&brokers, 3_000, dir.path());
    let checkpoints = dir.path().join("checkpoints");
    // A streaming run takes checkpoints of the first traffic, then is killed.
    let mut aggregator = Spawned::start(
        Command::new(AGGREGATOR)
            .args(["--config", &demo_config(), "--brokers", &brokers])
            .args(["--query-listen", "127.0.0.1:0", "--output"])
            .arg(dir.path().join("stream.ndjson"))
            .arg("--checkpoint-dir")
            .arg(&checkpoints)
            .env("ADCLICK_AGGREGATOR_CHECKPOINT_INTERVAL_MS", "300")
            .env("ADCLICK_AGGREGATOR_IDLE_TIMEOUT_MS", "1000")
            .stderr(Stdio::null()),
    );
    let offset = wait_for_checkpoint_offset(&checkpoints, first.tallies.emitted);
    aggregator.kill();
    // More traffic than the broker keeps: the checkpointed offset falls out of its log.
    let more = dir.path().join("more");
    std::fs::create_dir_all(&more).unwrap();
    preload_with(&brokers, 60_000, &more, &["--seed", "12"]);
    let (low, high) = topic_offsets(&brokers);
    assert!(
        low as u64 > offset,
        "the checkpointed offset {offset} is still held ({low})"
    );
    // A restore goes on with the output it checkpointed.
    let resume = |policy: &str| {
        let out = dir.path().join("stream.ndjson");
        let run = Command::new(AGGREGATOR)
            .args([
                "--config",
                &demo_config(),
                "--brokers",
                &brokers,
                "--until-end",
            ])
            .arg("--output")
            .arg(&out)
            .arg("--checkpoint-dir")
            .arg(&checkpoints)
            .env("ADCLICK_AGGREGATOR_ON_GAP", policy)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        (run, out)
    };
    let (run, _) = resume("fail");
    assert_eq!(run.status.code(), Some(EXIT_DATA_LOST), "{run:?}");
    let (run, out) = resume("report");
    assert!(run.status.success(), "{run:?}");
    assert_eq!(
        gaps(&out),
        vec![("clicks/0".to_string(), offset, low as u64)]
    );
    let (_, tallies) = read_output(&out);
    assert_eq!(tallies.lost, low as u64 - offset);
    assert_eq!(
        tallies.received + tallies.lost,
        high as u64,
        "the topic, read or lost"
    );
    adds_up(&tallies);
}

/// Waits until a complete checkpoint holds a position past the start of partition 0, at
/// most `limit`, and returns that position.
fn wait_for_checkpoint_offset(dir: &Path, limit: u64) -> u64 {
    let cfg = CheckpointConfig {
        dir: dir.to_path_buf(),
        interval: Duration::from_secs(1),
        keep: 2,
        full_every: 0,
        settings: None,
    };
    let every = Duration::from_millis(100);
    wait_every(
        Duration::from_secs(60),
        every,
        "a checkpoint with an offset",
        || {
            checkpoint::restore(&cfg, false)
                .ok()
                .flatten()
                .and_then(|r| r.offsets().get(&0).copied())
                .filter(|o| *o > 0 && *o <= limit)
        },
    )
}
