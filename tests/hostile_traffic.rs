//! `adclick-loadgen --hostile` (issue 11, item 11): hostile input mixed into ordinary traffic
//! (with its duplicates, retries, reordering, allowed-late, too-late and malformed records)
//! never costs a click, and the ground truth still matches the aggregator exactly.
//!
//! - Through files and through Kafka: events dated 2099 are dead-lettered
//!   (`event_time_in_future`), days-old ones are late, records over 64 KiB dead-lettered.
//! - Through a real redirect over HTTP, also: clicks with tracking parameters count (and their
//!   302 carries the forwarded ones: the load generator checks every `Location`), keyless
//!   partner batches get 401 and nothing else, and stalled half-sent requests are closed by
//!   the redirect without ever counting while the ordinary traffic all arrives.

use adclick_testkit as common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use adclick::aggregator::output::Line;
use adclick::loadgen::truth::{GroundTruth, TruthReport};
use adclick::loadgen::{self, LoadgenConfig, OutputKind};
use common::demo_config;
use common::truth::{check, expected_tallies, output_lines, read_output};

const LOADGEN: &str = env!("CARGO_BIN_EXE_adclick-loadgen");
const AGGREGATOR: &str = env!("CARGO_BIN_EXE_adclick-aggregator");
const DAY_MS: u64 = 86_400_000;

/// 8000 events with the usual trouble and 5 % hostile ones, through the binary.
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
        .args(["--seed", "11", "--ads", "300", "--hot-ad-share", "0.3"])
        .args(["--duplicate-share", "0.08", "--retry-share", "0.02"])
        .args(["--allowed-late-share", "0.02", "--late-share", "0.01"])
        .args(["--malformed-share", "0.02", "--hostile", "0.05"])
        .arg("--truth")
        .arg(truth)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("; hostile "),
        "summary names them: {stderr}"
    );
    let t = GroundTruth::read(truth).unwrap();
    let k = &t.tallies;
    assert!(
        k.future > 40 && k.ancient > 40 && k.oversized > 40,
        "every hostile variant of the output: {k:?}"
    );
    assert!(
        k.duplicates > 300 && k.late > k.ancient + 20 && k.malformed > 60,
        "{k:?}"
    );
    assert_eq!(
        k.tracked + k.keyless + k.stalled,
        0,
        "HTTP-only variants stay out of records"
    );
    t
}

/// Runs the aggregator on 2 workers to its end, into `out`.
fn aggregate(input: &[String], out: &Path) {
    let started = Instant::now();
    let status = Command::new(AGGREGATOR)
        .args(["--config", &demo_config(), "--workers", "2"])
        .args(input)
        .arg("--output")
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "aggregator exited with {status}");
    eprintln!("aggregator: {:.1} s", started.elapsed().as_secs_f64());
}

/// Dead letters in an output, by code.
fn dead_letters(out: &Path) -> BTreeMap<String, u64> {
    let mut by_code = BTreeMap::new();
    for line in output_lines(out) {
        if let Line::DeadLetter { code, .. } = line {
            *by_code.entry(code).or_default() += 1;
        }
    }
    by_code
}

/// Late events in an output more than a day old: the ancient ones.
fn ancient_late(out: &Path) -> u64 {
    let now = adclick::timefmt::now_millis() as u64;
    output_lines(out)
        .filter(|l| matches!(l, Line::Late { event_time, .. } if *event_time < now - DAY_MS))
        .count() as u64
}

/// The output equals the truth, and each hostile record went where it must: future-dated
/// and oversized ones among the dead letters under their own codes, ancient ones late.
fn check_records(out: &Path, truth: &TruthReport, what: &str) {
    let compared = check(out, truth, what);
    let t = &truth.tallies;
    let codes = dead_letters(out);
    assert_eq!(
        codes.get("event_time_in_future").copied().unwrap_or(0),
        t.future,
        "{what}: future-dated records dead-lettered as such: {codes:?}"
    );
    assert_eq!(
        codes.get("invalid_user_agent").copied().unwrap_or(0),
        t.oversized,
        "{what}: oversized records dead-lettered: {codes:?}"
    );
    assert_eq!(
        codes.values().sum::<u64>(),
        t.malformed + t.future + t.oversized
    );
    assert_eq!(
        ancient_late(out),
        t.ancient,
        "{what}: ancient events are late"
    );
    eprintln!(
        "{what}: {:?} final windows, tallies {:?}; truth {:?}",
        compared.windows, compared.tallies, t
    );
}

#[test]
fn hostile_files_equal_the_truth() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    let truth = loadgen(
        &[
            "--output",
            "file",
            "--files",
            "3",
            "--out-dir",
            events.to_str().unwrap(),
        ],
        &dir.path().join("truth.json"),
    );
    let files = common::event_files(&events);
    let longest = files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::len)
                .collect::<Vec<_>>()
        })
        .max()
        .unwrap();
    assert!(
        longest > 64 << 10,
        "oversized lines in the files: {longest}"
    );
    let mut input = vec!["--input".to_string()];
    input.extend(files.iter().map(|f| f.display().to_string()));
    let out = dir.path().join("out.ndjson");
    aggregate(&input, &out);
    check_records(&out, &truth, "files");
    eprintln!("files: {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn hostile_kafka_records_equal_the_truth() {
    let started = Instant::now();
    let kafka = common::embedded_kafka(4);
    let brokers = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let truth = loadgen(
        &["--output", "kafka", "--brokers", &brokers],
        &dir.path().join("truth.json"),
    );
    let out = dir.path().join("out.ndjson");
    let input: Vec<String> = ["--brokers", &brokers, "--until-end"]
        .map(String::from)
        .to_vec();
    aggregate(&input, &out);
    check_records(&out, &truth, "kafka");
    eprintln!("kafka: {:.1} s", started.elapsed().as_secs_f64());
}

/// Real HTTP into an in-process redirect whose header-read timeout is 1.5 s, then the
/// aggregator over what reached the clicks topic.
#[test]
fn hostile_http_traffic_through_the_redirect_equals_the_truth() {
    let started = Instant::now();
    let redirect = common::LocalRedirect::start(4, |config| {
        config.redirect.header_read_timeout_ms = 1_500;
        // Each simulated client under its own address, as behind a real edge. From one
        // loopback address every hot ad's clicks would be one IP flood, and which of them are
        // beyond the 5th would depend on the order the redirect stamped concurrent requests
        // in, which the truth cannot know.
        config.redirect.client_ip_header = "x-forwarded-for".into();
    });
    let brokers = redirect.brokers();
    let dir = &redirect.dir;

    let cfg = LoadgenConfig {
        output: OutputKind::Http,
        target: redirect.server.base(),
        truth: dir.path().join("truth.json"),
        // 13 s: late and ancient events wait for 10 s of traffic (LATE_WARMUP_MS).
        rate: 700.0,
        count: Some(9_000),
        concurrency: 8,
        seed: 11,
        ads: 40,
        publishers: 4,
        duplicate_share: 0.08,
        retry_share: 0.02,
        allowed_late_share: 0.02,
        late_share: 0.01,
        malformed_share: 0.02,
        forged_share: 0.01,
        hostile: 0.05,
        ..LoadgenConfig::default()
    };
    // The loadgen runs its own runtime on this thread; the redirect serves on its own.
    let summary = loadgen::run(&cfg, &redirect.config, &AtomicBool::new(false)).unwrap();
    eprintln!("{summary}");
    assert_eq!(
        summary.errors, 0,
        "every answer as the truth assumes (302s carrying the forwarded tracking parameters, \
         401s, rejections by reason, stalled connections closed by the redirect): {summary}"
    );
    let truth = GroundTruth::read(&cfg.truth).unwrap();
    let t = &truth.tallies;
    for (name, n) in [
        ("future", t.future),
        ("ancient", t.ancient),
        ("oversized", t.oversized),
        ("tracked", t.tracked),
        ("keyless", t.keyless),
        ("stalled", t.stalled),
    ] {
        assert!(n >= 8, "{name}: {t:?}");
    }

    // Every click and accepted partner line reached the clicks topic, once; every rejected
    // line the dead-letter topic; nothing else went anywhere.
    let expected = (t.emitted - t.rejected) as usize;
    let records = common::read_topic(&brokers, "clicks", expected, Duration::from_secs(30));
    assert_eq!(records.len(), expected, "{t:?}");
    let rejected = t.malformed + t.future + t.oversized;
    let dead = common::read_topic(
        &brokers,
        "clicks-dlq",
        rejected as usize,
        Duration::from_secs(30),
    );
    assert_eq!(dead.len() as u64, rejected, "{t:?}");
    let reasons = |needle: &str| {
        dead.iter()
            .filter(|(_, v)| String::from_utf8_lossy(v).contains(needle))
            .count() as u64
    };
    assert_eq!(reasons("event_time_in_future"), t.future);
    assert_eq!(reasons("line_too_long"), t.oversized);

    let out = dir.path().join("out.ndjson");
    let input: Vec<String> = ["--brokers", &brokers, "--until-end"]
        .map(String::from)
        .to_vec();
    aggregate(&input, &out);
    assert_eq!(
        ancient_late(&out),
        t.ancient,
        "ancient partner events are late"
    );
    if t.ambiguous == 0 {
        check(&out, &truth, "http");
    } else {
        // A click answered in another minute than it was sent may sit in either: the
        // tallies still hold exactly.
        let (_, tallies) = read_output(&out);
        assert_eq!(tallies, expected_tallies(&truth), "http tallies");
    }
    redirect.stop();
    eprintln!("http: {:.1} s", started.elapsed().as_secs_f64());
}
