//! Traffic anomaly alerts end to end: the load generator plants a spike (x100 from one
//! country on one campaign) and a drop (one publisher to 10 %) in 45 minutes of traffic on
//! the embedded broker; a streaming aggregator raises both, each within 2 minutes of event
//! time after it starts, and nothing before them, through `GET /api/v1/alerts`, `/metrics`
//! and the admin-only rule; the dashboard's alerts card shows what the API answers.
//!
//! With the load generator's daily cycle (`--daily-cycle`), through the batch aggregator:
//! 24 simulated hours of default traffic raise no alert at all, and a spike and a drop
//! planted on top of the cycle's evening still fire within 2 minutes, nothing else.

use std::process::Command;
use std::time::Duration;

use adclick_testkit as common;
use common::http::blocking_get as get;
use common::process::{Spawned, run_ok};
use common::{demo_config, wait_every};
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_adclick-loadgen");
const AGGREGATOR: &str = env!("CARGO_BIN_EXE_adclick-aggregator");
const ADMIN: &str = "demo-admin-key-not-secret";
const ADV1: &str = "demo-adv-1-key-not-secret";

#[test]
fn a_planted_spike_and_drop_are_alerted_within_two_minutes_and_nothing_else_before() {
    // The built-in broker keeps every record (the mock cluster would drop this many).
    let kafka = adclick::kafka::embedded::EmbeddedKafka::builtin(&adclick::config::KafkaConfig {
        partitions: 2,
        ..Default::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The demo configuration with a shorter warm-up: 25 minutes of history before the
    // anomalies, 45 in all.
    let config = dir.path().join("config.toml");
    let demo = std::fs::read_to_string(demo_config()).unwrap();
    std::fs::write(
        &config,
        format!("{demo}\n[aggregator.alerts]\nwarmup_minutes = 15\n"),
    )
    .unwrap();
    let start = adclick::timefmt::now_millis() - 50 * 60_000;
    let start = start - start.rem_euclid(60_000);
    let truth_path = dir.path().join("truth.json");
    run_ok(
        Command::new(LOADGEN)
            .arg("--config")
            .arg(&config)
            .args(["--output", "kafka", "--brokers", &kafka.bootstrap_servers()])
            .args([
                "--rate",
                "100",
                "--duration",
                "2700",
                "--start",
                &start.to_string(),
            ])
            .args(["--campaigns", "20", "--publishers", "10"])
            .args(["--spike", "campaign=cmp_5,country=DE,at=1500,minutes=5"])
            .args(["--drop", "publisher=pub_3,at=1500,minutes=20"])
            .arg("--truth")
            .arg(&truth_path),
    );
    let truth: Value = serde_json::from_slice(&std::fs::read(&truth_path).unwrap()).unwrap();
    let planted = truth["config"]["anomalies"].as_array().unwrap().clone();
    assert_eq!(planted.len(), 2, "{planted:?}");
    let begins = start as u64 + 1_500_000;
    assert_eq!(planted[0]["from_ms"].as_u64(), Some(begins));

    let mut aggregator = Spawned::start(
        Command::new(AGGREGATOR)
            .arg("--config")
            .arg(&config)
            .args(["--brokers", &kafka.bootstrap_servers(), "--workers", "2"])
            .args(["--query-listen", "127.0.0.1:0", "--output"])
            .arg(dir.path().join("out.ndjson"))
            .env("ADCLICK_AGGREGATOR_IDLE_TIMEOUT_MS", "500"),
    );
    let printed = aggregator.line_with_prefix("query server: http://", Duration::from_secs(60));
    let addr = printed.trim_end_matches('/').to_string();
    let (from, to) = (
        adclick::timefmt::format_millis(start),
        adclick::timefmt::format_millis(start + 60 * 60_000),
    );
    let path = format!("/api/v1/alerts?from={from}&to={to}");
    let found = |alerts: &Value, kind: &str, key: &[&str]| -> Option<u64> {
        alerts["alerts"].as_array()?.iter().find_map(|a| {
            let k: Vec<&str> = a["key"]
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            (a["kind"] == kind && k == key)
                .then(|| a["minute_ms"].as_u64())
                .flatten()
        })
    };
    let alerts = wait_every(
        Duration::from_secs(180),
        Duration::from_secs(1),
        "the spike and the drop alerted",
        || {
            assert!(aggregator.running(), "the aggregator exited");
            let r = get(&format!("http://{addr}{path}"), Some(ADMIN));
            assert_eq!(r.status, 200, "{}", r.body);
            let alerts = r.json();
            let spike = found(&alerts, "spike", &["cmp_5", "DE"]);
            let drop = found(&alerts, "drop", &["pub_3"]);
            match (spike, drop) {
                (Some(_), Some(_)) => Ok(alerts),
                _ => Err(alerts.to_string()),
            }
        },
    );
    for (kind, key) in [("spike", &["cmp_5", "DE"][..]), ("drop", &["pub_3"][..])] {
        let minute = found(&alerts, kind, key).unwrap();
        assert!(
            (begins..begins + 120_000).contains(&minute),
            "{kind} of {key:?} at {minute}, planted at {begins}: {alerts}"
        );
    }
    // Nothing fired on the ordinary traffic before the anomalies.
    let early: Vec<_> = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["minute_ms"].as_u64().unwrap() < begins)
        .collect();
    assert!(early.is_empty(), "{early:?}");
    let critical = get(
        &format!("http://{addr}{path}&severity=critical"),
        Some(ADMIN),
    )
    .json();
    assert!(
        found(&critical, "spike", &["cmp_5", "DE"]).is_some(),
        "{critical}"
    );
    // Alerts span advertisers: an advertiser's key is refused; a bad severity is a 400.
    assert_eq!(get(&format!("http://{addr}{path}"), Some(ADV1)).status, 403);
    let bad = get(&format!("http://{addr}{path}&severity=high"), Some(ADMIN));
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("severity"), "{}", bad.body);
    // The dashboard's alerts card shows what the API answers for its range, newest first
    // (Debian's headless Chromium).
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-alerts.png");
    let shown = common::process::dashboard(&format!("http://{addr}/"), ADMIN, &screenshot);
    let card = &shown["alerts"];
    let (from, to) = (
        card["params"]["from"].as_str().unwrap(),
        card["params"]["to"].as_str().unwrap(),
    );
    let api = get(
        &format!("http://{addr}/api/v1/alerts?from={from}&to={to}"),
        Some(ADMIN),
    )
    .json();
    // JavaScript prints 2665.0 as 2665: numbers compare as numbers.
    let row = |a: &Value| {
        let num = |v: &Value| v.as_f64().unwrap();
        (
            a["kind"].to_string(),
            a["severity"].to_string(),
            a["dimension"].to_string(),
            a["key"].to_string(),
            a["minute_ms"].as_u64(),
            num(&a["observed"]),
            num(&a["baseline"]),
        )
    };
    let mut want: Vec<_> = api["alerts"].as_array().unwrap().iter().map(row).collect();
    want.reverse();
    assert!(want.len() >= 2, "{api}");
    let rows: Vec<_> = card["rows"].as_array().unwrap().iter().map(row).collect();
    assert_eq!(rows, want, "{card}");
    assert_eq!(card["shown"].as_u64(), Some(want.len() as u64));
    let metrics = get(&format!("http://{addr}/metrics"), None).body;
    assert!(
        metrics.contains(r#"adclick_aggregator_alerts{kind="spike",severity="critical"} "#),
        "{metrics}"
    );
}

/// Monday 2026-04-20T00:00:00Z.
const MONDAY: i64 = 1_776_643_200_000;
const HOUR_MS: i64 = 3_600_000;

/// Writes `args`' traffic with the daily cycle to NDJSON files in `dir`, runs the batch
/// aggregator over them (2 workers, the demo configuration: alerts with their defaults), checks
/// its output against the truth exactly, and returns the truth and the alerts it logged as
/// (kind, key, minute).
fn cycled_batch(
    dir: &std::path::Path,
    args: &str,
) -> (
    adclick::loadgen::truth::TruthReport,
    Vec<(String, String, i64)>,
) {
    let mut args: Vec<&str> = args.split_whitespace().collect();
    args.push("--daily-cycle");
    let (truth, ran) = common::batch_job(LOADGEN, AGGREGATOR, dir, &args);
    assert!(
        truth.config["daily_cycle"]["hourly_utc"].is_array(),
        "the truth books the cycle"
    );
    let out = dir.join("out.ndjson");
    common::truth::check(&out, &truth, "daily cycle, files");
    // `... traffic alert kind="spike" severity="critical" key="cmp_5,DE" minute="…" ...`
    let field = |line: &str, name: &str| -> String {
        let start = line
            .find(&format!("{name}=\""))
            .unwrap_or_else(|| panic!("{line}"))
            + name.len()
            + 2;
        line[start..].split('"').next().unwrap().to_string()
    };
    let alerts = String::from_utf8_lossy(&ran.stderr)
        .lines()
        .filter(|l| l.contains("traffic alert"))
        .map(|l| {
            let minute = adclick::timefmt::parse_millis(&field(l, "minute")).unwrap();
            (field(l, "kind"), field(l, "key"), minute)
        })
        .collect();
    (truth, alerts)
}

/// Clicks (billable and invalid, as the detector counts them) per publisher per hour.
fn per_publisher_hour(
    truth: &adclick::loadgen::truth::TruthReport,
) -> std::collections::BTreeMap<(String, i64), u64> {
    let mut out = std::collections::BTreeMap::new();
    for w in &truth.windows {
        let invalid: u64 = w.invalid.values().copied().sum();
        let hour = w.minute_ms.div_euclid(HOUR_MS) * HOUR_MS;
        *out.entry((w.publisher_id.to_string(), hour)).or_default() += w.clicks + invalid;
    }
    out
}

#[test]
fn nothing_fires_on_a_day_of_default_traffic_with_a_daily_cycle() {
    // 24 simulated hours from Monday 00:00 UTC at 1.2 clicks/s on average, through the
    // anomaly detector with its defaults (file input, 2 workers); two publishers, so each is
    // big enough to be judged for drops for most of the day, and two campaigns.
    let dir = tempfile::tempdir().unwrap();
    let (truth, alerts) = cycled_batch(
        dir.path(),
        &format!(
            "--rate 1.2 --duration 86400 --start {MONDAY} --ads 40 --campaigns 2 --publishers 2"
        ),
    );
    assert_eq!(
        alerts,
        Vec::new(),
        "ordinary traffic with a daily cycle raised alerts"
    );
    // The traffic did cycle, and drops were judged: each publisher's evening hour has over
    // 4x its night's clicks, and over 20 clicks a minute (`drop_min_baseline`) for at
    // least 15 hours of the day.
    let hours = per_publisher_hour(&truth);
    for publisher in ["pub_0", "pub_1"] {
        let at = |h: i64| hours[&(publisher.to_string(), MONDAY + h * HOUR_MS)];
        assert!(
            at(20) > 4 * at(3),
            "{publisher}: {} at 20:00, {} at 03:00",
            at(20),
            at(3)
        );
        let judged = (0..24).filter(|&h| at(h) > 20 * 60).count();
        assert!(
            judged >= 15,
            "{publisher}: {judged} hours over 20 clicks a minute"
        );
    }
}

#[test]
fn a_spike_and_a_drop_on_top_of_the_daily_cycle_fire_within_two_minutes() {
    // The evening of a Monday, 19:00 to 22:00 UTC, as the cycle rises to its peak and falls
    // (45 minutes of history first): a spike (x100 from DE on cmp_5, 5 minutes) at 19:45 and
    // a drop (pub_1 to 10 %, 10 minutes) at 21:30, as the rate falls.
    let dir = tempfile::tempdir().unwrap();
    let start = MONDAY + 19 * HOUR_MS;
    let (truth, alerts) = cycled_batch(
        dir.path(),
        &format!(
            "--rate 3 --duration 10800 --start {start} --ads 40 --campaigns 20 --publishers 3 \
             --spike campaign=cmp_5,country=DE,at=2700,minutes=5 \
             --drop publisher=pub_1,at=9000,minutes=10"
        ),
    );
    eprintln!("alerts: {alerts:?}");
    let planted = truth.config["anomalies"].as_array().unwrap();
    let begins = |i: usize| planted[i]["from_ms"].as_i64().unwrap();
    let (spike_at, drop_at) = (begins(0), begins(1));
    assert_eq!((spike_at, drop_at), (start + 2_700_000, start + 9_000_000));
    let first = |kind: &str, key: &str| {
        alerts
            .iter()
            .find(|(k, key_, _)| k == kind && key_ == key)
            .map(|a| a.2)
            .unwrap_or_else(|| panic!("no {kind} of {key}: {alerts:?}"))
    };
    let spike = first("spike", "cmp_5,DE");
    assert!(
        (spike_at..spike_at + 120_000).contains(&spike),
        "spike at {spike}, planted {spike_at}: {alerts:?}"
    );
    let drop = first("drop", "pub_1");
    assert!(
        (drop_at..drop_at + 120_000).contains(&drop),
        "drop at {drop}, planted {drop_at}: {alerts:?}"
    );
    // Nothing before the spike, and nothing anywhere but on the keys planted (the campaign
    // as a whole may spike with its country).
    let stray: Vec<_> = alerts
        .iter()
        .filter(|(_, key, minute)| {
            *minute < spike_at || !["cmp_5,DE", "cmp_5", "pub_1"].contains(&key.as_str())
        })
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}
