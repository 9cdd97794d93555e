//! The aggregator against the load generator's ground truth, exactly: through files and
//! through Kafka (embedded broker), on 1 worker, 2 workers and 2 processes × 2 workers. The
//! traffic has duplicates (some earlier than their original), retries, reordering,
//! allowed-late and too-late clicks, malformed records, and one hot ad taking half of it.

use adclick_testkit as common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use adclick::aggregator::output::{Line, Tallies};
use adclick::kafka::embedded::EmbeddedKafka;
use adclick::loadgen::truth::{GroundTruth, TruthReport};
use common::demo_config;
use common::process::{Spawned, run_ok};
use common::truth::{
    check, compare_rows, expected_tallies, output_lines, read_aggregates, read_output,
    read_parquet_windows, read_raw_archive,
};

const LOADGEN: &str = env!("CARGO_BIN_EXE_adclick-loadgen");
const AGGREGATOR: &str = env!("CARGO_BIN_EXE_adclick-aggregator");
/// The crash test's allowed lateness (ms), the least the load generator supports.
const LATENESS: &str = "40000";

fn loadgen(args: &[&str], truth: &Path) -> TruthReport {
    loadgen_at("400", args, truth)
}

/// 8000 events at `rate` per simulated second, with enough of every kind of trouble.
fn loadgen_at(rate: &str, args: &[&str], truth: &Path) -> TruthReport {
    run_ok(
        Command::new(LOADGEN)
            .args([
                "--config",
                &demo_config(),
                "--count",
                "8000",
                "--rate",
                rate,
            ])
            .args(["--seed", "7", "--ads", "300", "--hot-ad-share", "0.5"])
            .args(["--duplicate-share", "0.08", "--late-share", "0.01"])
            .args(["--invalid", "0.02"])
            .arg("--truth")
            .arg(truth)
            .args(args),
    );
    let t = GroundTruth::read(truth).unwrap();
    let k = &t.tallies;
    assert!(
        k.duplicates > 300 && k.late > 20 && k.malformed > 30,
        "{k:?}"
    );
    // Invalid traffic of every reason the path can see (data-center addresses need the
    // redirect; a user flood, 21 clicks a second apart, a stream longer than 20 s), so every
    // comparison with the truth checks classification too.
    for reason in [
        "known_bot",
        "no_user_agent",
        "headless",
        "ip_flood",
        "too_fast",
    ] {
        assert!(
            k.invalid_by_reason.get(reason).copied().unwrap_or(0) > 5,
            "{reason}: {k:?}"
        );
    }
    t
}

/// How long a batch run may take.
const BATCH: Duration = Duration::from_secs(600);

fn aggregator(args: &[String]) -> Spawned {
    Spawned::spawn(
        Command::new(AGGREGATOR)
            .args(["--config", &demo_config()])
            .args(args),
    )
}

fn wait_ok(mut c: Spawned) {
    let status = c.wait(BATCH);
    assert!(status.success(), "aggregator exited with {status}");
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
    let hostfile = common::hostfile(dir, 2);
    let out = dir.join("out-2x2.ndjson");
    let procs: Vec<Spawned> = (0..2)
        .map(|i| {
            let mut args = input.to_vec();
            args.extend(common::cluster_args(2, 2, i, &hostfile));
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
    let files = common::event_files(&events);
    let mut input = vec!["--input".to_string()];
    input.extend(files.iter().map(|f| f.display().to_string()));
    every_shape(dir.path(), &input, &truth);
}

#[test]
fn kafka_on_every_cluster_shape_equals_the_truth() {
    let kafka = common::embedded_kafka(6);
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
    let kafka = EmbeddedKafka::mock(&Default::default()).unwrap();
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
/// produces 200 s of event time in 20 s, and each restart goes on from the newest checkpoint,
/// alternately on one and two workers. The allowed lateness is 40 s, so windows become final
/// while the crashes go on. A last run goes on from the newest checkpoint to the topic's end.
/// Its output, written across all the runs, and the click-aggregates topic as a reader that
/// honours commit markers sees it, hold every final window once, equal to the truth, and the
/// tallies add up to it.
#[test]
fn killed_at_random_and_restored_from_checkpoints_equals_the_truth() {
    let kafka = common::embedded_kafka(4);
    let brokers = kafka.bootstrap_servers();
    let mut dir = tempfile::tempdir().unwrap();
    // ADCLICK_KEEP_TEST_DIRS=1 keeps the checkpoints, output and truth for a post-mortem.
    if std::env::var("ADCLICK_KEEP_TEST_DIRS").as_deref() == Ok("1") {
        dir.disable_cleanup(true);
        eprintln!("keeping {}", dir.path().display());
    }
    let (ckpt, out) = (
        dir.path().join("checkpoints"),
        dir.path().join("out.ndjson"),
    );
    let parquet_dir = dir.path().join("parquet");
    let truth_path = dir.path().join("truth.json");
    let generator = {
        let (brokers, truth_path) = (brokers.clone(), truth_path.clone());
        std::thread::spawn(move || {
            loadgen_at(
                "40",
                &[
                    "--output",
                    "kafka",
                    "--brokers",
                    &brokers,
                    "--pace",
                    "10",
                    "--allowed-lateness-ms",
                    LATENESS,
                ],
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
        "--parquet-dir",
        &parquet_dir.display().to_string(),
        "--query-listen",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .to_vec();
    let mut kills = 0;
    let mut rng = 7u64;
    // At least 10 kills, and on a slow machine more, until windows became final between them
    // (what the test is about).
    // (A killed run may leave a torn last line, which the next run cuts off: search the text.)
    let finals = || std::fs::read_to_string(&out).is_ok_and(|t| t.contains(r#""status":"final""#));
    while !generator.is_finished() || kills < 10 || (kills < 40 && !finals()) {
        let mut args = common.clone();
        args.extend(["--workers".into(), (1 + kills % 2).to_string()]);
        let mut child = Spawned::spawn(
            Command::new(AGGREGATOR)
                .args(["--config", &demo_config()])
                .args(&args)
                .env("ADCLICK_AGGREGATOR_CHECKPOINT_INTERVAL_MS", "200")
                .env("ADCLICK_AGGREGATOR_ALLOWED_LATENESS_MS", LATENESS)
                .stdout(std::process::Stdio::null()),
        );
        // 0.7 to 2.2 s: some runs die before their first checkpoint, most after a few.
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(700 + (rng >> 33) % 1500));
        child.kill();
        kills += 1;
    }
    let truth = generator.join().unwrap();
    // 200 s of event time: user floods too, whose verdicts must survive the kills.
    assert!(
        truth
            .tallies
            .invalid_by_reason
            .get("user_flood")
            .copied()
            .unwrap_or(0)
            > 0,
        "{:?}",
        truth.tallies
    );
    let committed = std::fs::read_dir(&ckpt)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("MANIFEST.json").exists())
        .count();
    assert!(committed >= 1, "checkpoints were committed");
    let finals_while_crashing = output_lines(&out)
        .filter(|l| matches!(l, Line::Window { status, .. } if status == "final"))
        .count();
    assert!(
        finals_while_crashing > 0,
        "windows became final between the crashes"
    );
    let mut args = common;
    args.extend(["--workers", "2", "--until-end"].map(String::from));
    let status = Command::new(AGGREGATOR)
        .args(["--config", &demo_config()])
        .args(&args)
        .env("ADCLICK_AGGREGATOR_ALLOWED_LATENESS_MS", LATENESS)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    check(&out, &truth, &format!("after {kills} kills"));
    let topic = read_aggregates(&brokers);
    compare_rows(
        &topic,
        &truth,
        &format!("click-aggregates after {kills} kills"),
    );
    let files = read_parquet_windows(&parquet_dir);
    compare_rows(
        &files,
        &truth,
        &format!("Parquet windows after {kills} kills"),
    );
    // The raw archive holds every accepted click once: all but the dead letters.
    let archived = read_raw_archive(&parquet_dir);
    let t = expected_tallies(&truth);
    assert_eq!(
        archived.len() as u64,
        t.received - t.dead_lettered,
        "raw archive after {kills} kills"
    );
    // Reconciliation recomputes every day of the traffic from the archive and finds the
    // sinks equal; with one final window dropped from an output, it finds the difference.
    let first = truth.windows.iter().map(|w| w.minute_ms).min().unwrap();
    let last = truth.windows.iter().map(|w| w.minute_ms).max().unwrap();
    let day = 86_400_000;
    let (from, to) = (first / day * day, (last / day + 1) * day);
    let reconcile = |against: &Path, parquet: bool| {
        let mut cmd = Command::new(AGGREGATOR);
        cmd.args(["--config", &demo_config(), "reconcile", "--archive"])
            .arg(&parquet_dir)
            .args(["--from", &from.to_string(), "--to", &to.to_string()])
            .arg("--against")
            .arg(against)
            .env("ADCLICK_AGGREGATOR_ALLOWED_LATENESS_MS", LATENESS);
        if !parquet {
            cmd.arg("--no-parquet");
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, report) = reconcile(&out, true);
    assert_eq!(code, Some(0), "reconcile: {report}");
    assert_eq!(report.matches(": OK").count(), 2, "{report}");
    let tampered = dir.path().join("tampered.ndjson");
    let text = std::fs::read_to_string(&out).unwrap();
    let drop = text
        .lines()
        .position(|l| l.contains(r#""status":"final""#))
        .unwrap();
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != drop)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&tampered, kept.join("\n") + "\n").unwrap();
    let (code, report) = reconcile(&tampered, false);
    assert_eq!(code, Some(1), "reconcile of a tampered output: {report}");
    assert!(
        report.contains("1 windows missing from the sink"),
        "{report}"
    );
}
