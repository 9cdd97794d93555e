//! Reach (unique users) end to end, against the load generator's exact distinct users: a
//! streaming aggregator (2 workers) on the embedded broker, past the lateness of traffic from
//! hours ago, answers every ad's users per hour (`aggregated_count`'s `unique_users`) and every
//! campaign's per day (`/api/v1/reports/reach`), billable and `traffic=all`, exactly while a
//! set is small (its sketch is exact), within 3 standard errors above.

use adclick_testkit as common;

use std::process::Command;
use std::time::Duration;

use adclick::loadgen::truth::{GroundTruth, TruthReport};
use adclick::timefmt::format_millis;
use adclick_dataflows::sketch::{EXACT_MAX, STANDARD_ERROR};
use common::http::blocking_request;
use common::process::{Spawned, run_ok};
use common::{demo_config, wait_every};
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_adclick-loadgen");
const AGGREGATOR: &str = env!("CARGO_BIN_EXE_adclick-aggregator");
const ADMIN: &str = "demo-admin-key-not-secret";
const ADV1: &str = "demo-adv-1-key-not-secret";
const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;
const LATENESS: u64 = 300_000;

fn get(addr: &str, path: &str, key: &str) -> (u16, Value) {
    let r = blocking_request("GET", &format!("http://{addr}{path}"), Some(key));
    (r.status, r.json())
}

/// An estimate against the exact count: equal for a set the sketch keeps exactly, within 3
/// standard errors for a larger one.
fn assert_users(what: &str, got: Option<u64>, want: u64) {
    let got = got.unwrap_or_else(|| panic!("{what}: no estimate"));
    if want as usize <= EXACT_MAX {
        assert_eq!(got, want, "{what}");
    } else {
        let err = (got as f64 - want as f64).abs() / want as f64;
        assert!(err <= 3.0 * STANDARD_ERROR, "{what}: {got} for {want}");
    }
}

/// The load generator's traffic into the broker at `brokers`, starting `ago` ms before now
/// and made with `args` beside the usual; its truth.
fn loadgen(brokers: &str, dir: &std::path::Path, ago: u64, args: &[&str]) -> TruthReport {
    let now = adclick::timefmt::now_millis() as u64;
    let start = (now - ago) / 60_000 * 60_000;
    let truth_path = dir.join("truth.json");
    run_ok(
        Command::new(LOADGEN)
            .args(["--config", &demo_config(), "--output", "kafka"])
            .args(["--brokers", brokers])
            .args(["--start", &start.to_string()])
            .args(args)
            .arg("--truth")
            .arg(&truth_path),
    );
    GroundTruth::read(&truth_path).unwrap()
}

/// Waits until the aggregator serving at `addr` has read all of `truth`'s records and its
/// watermark is past the last minute's end plus `lateness`: every minute is in the sketches.
fn wait_final(aggregator: &mut Spawned, addr: &str, truth: &TruthReport, lateness: u64) {
    let last = truth.windows.iter().map(|r| r.minute_ms).max().unwrap() as u64;
    let received = truth.tallies.emitted - truth.tallies.forged;
    wait_every(
        Duration::from_secs(90),
        Duration::from_millis(500),
        "every minute final",
        || {
            assert!(aggregator.running(), "the aggregator exited");
            let (_, h) = get(addr, "/api/v1/health", ADMIN);
            let done = h["tallies"]["received"] == received
                && h["watermark_ms"]
                    .as_u64()
                    .is_some_and(|w| w > last + 60_000 + lateness);
            if done { Ok(()) } else { Err(h.to_string()) }
        },
    );
}

/// Every ad's users in every hour (`aggregated_count`'s `unique_users`, billable) and every
/// campaign's in every day (the reach report, billable and all traffic) against the truth.
fn assert_reach_equals_the_truth(addr: &str, truth: &TruthReport, lateness: u64) {
    let (_, health) = get(addr, "/api/v1/health", ADMIN);
    let watermark = health["watermark_ms"].as_u64().expect("a watermark");
    for r in &truth.reach.ad_hour {
        let (from, to) = (
            format_millis(r.start_ms),
            format_millis(r.start_ms + HOUR as i64),
        );
        let (status, c) = get(
            addr,
            &format!("/ads/{}/aggregated_count?from={from}&to={to}", r.id),
            ADMIN,
        );
        assert_eq!(status, 200, "{c}");
        assert_users(
            &format!("{} at {from}: {c}", r.id),
            c["unique_users"].as_u64(),
            r.users,
        );
        // Once the watermark is past the hour's end plus the lateness, it says so.
        if (r.start_ms as u64) + HOUR + lateness <= watermark {
            assert_eq!(c["unique_users_complete"], true, "{c}");
        }
    }
    for r in &truth.reach.campaign_day {
        let (from, to) = (
            format_millis(r.start_ms),
            format_millis(r.start_ms + DAY as i64),
        );
        for (traffic, want) in [("billable", r.users), ("all", r.all_users)] {
            let (status, rep) = get(
                addr,
                &format!(
                    "/api/v1/reports/reach?campaign_id={}&from={from}&to={to}&groupBy=day&traffic={traffic}",
                    r.id
                ),
                ADMIN,
            );
            assert_eq!(status, 200, "{rep}");
            let rows = rep["rows"].as_array().unwrap();
            assert_eq!(rows.len(), 1, "{rep}");
            assert_eq!(rows[0]["day"], format_millis(r.start_ms), "{rep}");
            assert_eq!(rows[0]["campaignId"], r.id.as_str(), "{rep}");
            assert_users(
                &format!("{} {traffic}: {rep}", r.id),
                rows[0]["uniqueUsers"].as_u64(),
                want,
            );
        }
    }
}

#[test]
fn unique_users_equal_the_truths_distinct_users() {
    let kafka = common::embedded_kafka(4);
    let dir = tempfile::tempdir().unwrap();
    // About 2 hours of traffic ending more than an hour ago: once the aggregator has read it
    // and its partitions are idle, its watermark (the wall clock's) is past every lateness.
    let truth = loadgen(
        &kafka.bootstrap_servers(),
        dir.path(),
        4 * HOUR - 17 * 60_000,
        &[
            "--count",
            "14000",
            "--rate",
            "2",
            "--seed",
            "14",
            "--ads",
            "8",
            "--users",
            "900",
            "--invalid",
            "0.1",
        ],
    );
    assert!(truth.reach.ad_hour.len() >= 16, "{:?}", truth.reach);
    let mut aggregator = Spawned::start(
        Command::new(AGGREGATOR)
            .args(["--config", &demo_config()])
            .args(["--brokers", &kafka.bootstrap_servers()])
            .args([
                "--workers",
                "2",
                "--query-listen",
                "127.0.0.1:0",
                "--output",
            ])
            .arg(dir.path().join("out.ndjson"))
            .env("ADCLICK_AGGREGATOR_IDLE_TIMEOUT_MS", "500"),
    );
    let printed = aggregator.line_with_prefix("query server: http://", Duration::from_secs(60));
    let addr = printed.trim_end_matches('/').to_string();
    wait_final(&mut aggregator, &addr, &truth, LATENESS);
    assert_reach_equals_the_truth(&addr, &truth, LATENESS);
    assert!(
        truth
            .reach
            .campaign_day
            .iter()
            .any(|r| r.all_users > r.users),
        "invalid traffic adds users to traffic=all"
    );

    // The dashboard's reach card: today's campaigns, each with the truth's users of today.
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reach-dashboard.png");
    let shown = common::process::dashboard(&format!("http://{addr}/"), ADMIN, &screenshot);
    let today = adclick::timefmt::now_millis() / DAY as i64 * DAY as i64;
    let card = shown["reach"]["rows"]
        .as_array()
        .expect("the reach card's rows");
    let want: Vec<_> = truth
        .reach
        .campaign_day
        .iter()
        .filter(|r| r.start_ms == today)
        .collect();
    assert_eq!(card.len(), want.len(), "{card:?}");
    for r in want {
        let row = card
            .iter()
            .find(|row| row["campaignId"] == r.id.as_str())
            .unwrap_or_else(|| panic!("{} not on the card: {card:?}", r.id));
        assert_users(
            &format!("card {}", r.id),
            row["uniqueUsers"].as_u64(),
            r.users,
        );
    }

    // The clicks report with metrics=clicks,unique_users: each campaign's day, both measures.
    let r0 = &truth.reach.campaign_day[0];
    let (from0, to0) = (
        format_millis(r0.start_ms),
        format_millis(r0.start_ms + DAY as i64),
    );
    let (status, rep) = get(
        &addr,
        &format!(
            "/api/v1/reports/clicks?from={from0}&to={to0}&groupBy=day,campaign_id&metrics=clicks,unique_users"
        ),
        ADMIN,
    );
    assert_eq!(status, 200, "{rep}");
    let rows = rep["rows"].as_array().unwrap();
    for r in truth
        .reach
        .campaign_day
        .iter()
        .filter(|r| r.start_ms == r0.start_ms)
    {
        let row = rows
            .iter()
            .find(|row| row["campaignId"] == r.id.as_str())
            .unwrap_or_else(|| panic!("{} missing: {rep}", r.id));
        assert_users(
            &format!("{}: {row}", r.id),
            row["uniqueUsers"].as_u64(),
            r.users,
        );
        let clicks: u64 = truth
            .windows
            .iter()
            .filter(|w| {
                w.campaign_id == r.id && w.minute_ms / DAY as i64 == r.start_ms / DAY as i64
            })
            .map(|w| w.clicks)
            .sum();
        assert_eq!(row["clicks"].as_u64(), Some(clicks), "{row}");
    }
    let (status, e) = get(
        &addr,
        &format!(
            "/api/v1/reports/clicks?from={from0}&to={to0}&groupBy=device&metrics=unique_users"
        ),
        ADMIN,
    );
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("metrics"), "{e}");

    // A week merges its days: the reach of the whole traffic is the union, never the sum.
    let first_day = truth.reach.campaign_day[0].start_ms as u64 / DAY * DAY;
    let (from, to) = (
        format_millis((first_day - 6 * DAY) as i64),
        format_millis((first_day + DAY) as i64),
    );
    let c = &truth.reach.campaign_day[0].id;
    let (status, week) = get(
        &addr,
        &format!("/api/v1/reports/reach?campaign_id={c}&from={from}&to={to}"),
        ADMIN,
    );
    assert_eq!(status, 200, "{week}");
    let summed: u64 = truth
        .reach
        .campaign_day
        .iter()
        .filter(|r| &r.id == c && (r.start_ms as u64) < first_day + DAY)
        .map(|r| r.users)
        .sum();
    assert!(
        week["rows"][0]["uniqueUsers"].as_u64().unwrap() <= summed,
        "{week}"
    );

    // Keys: an advertiser sees its own campaigns' reach only, and never a country's.
    let (status, _) = get(
        &addr,
        &format!("/api/v1/reports/reach?groupBy=country&from={from}&to={to}"),
        ADV1,
    );
    assert_eq!(status, 400);
    let (status, mine) = get(
        &addr,
        &format!("/api/v1/reports/reach?groupBy=campaign_id&from={from}&to={to}"),
        ADV1,
    );
    assert_eq!(status, 200, "{mine}");
    let theirs = truth
        .windows
        .iter()
        .filter(|w| w.advertiser_id == "adv_1")
        .map(|w| w.campaign_id.as_str())
        .collect::<std::collections::BTreeSet<_>>();
    for row in mine["rows"].as_array().unwrap() {
        assert!(
            theirs.contains(row["campaignId"].as_str().unwrap()),
            "{mine}"
        );
    }
    // Bad parameters name themselves.
    let (status, e) = get(
        &addr,
        &format!("/api/v1/reports/reach?campaign_id={c}&from={from}&to=2026-01-01T00:30:00Z"),
        ADMIN,
    );
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("`to`"), "{e}");
}

/// Sketches survive restores: an aggregator killed with SIGKILL every few seconds while the
/// traffic streams in (5 minutes of event time in 30 s, lateness 40 s, checkpoints every
/// 200 ms, on 1 and 2 workers in turn), so that checkpoints hold final hours and days and
/// minutes not yet final, then run to the end: its reach equals the truth as an uninterrupted
/// run's does.
#[test]
fn sketches_survive_restores() {
    const LATE: &str = "40000";
    let kafka = common::embedded_kafka(4);
    let brokers = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let generator = {
        let (brokers, path) = (brokers.clone(), dir.path().to_path_buf());
        std::thread::spawn(move || {
            loadgen(
                &brokers,
                &path,
                15 * 60_000,
                &[
                    "--count",
                    "6000",
                    "--rate",
                    "20",
                    "--pace",
                    "10",
                    "--seed",
                    "15",
                    "--ads",
                    "6",
                    "--users",
                    "300",
                    "--invalid",
                    "0.1",
                    "--allowed-lateness-ms",
                    LATE,
                ],
            )
        })
    };
    let run = |workers: usize| {
        Spawned::start(
            Command::new(AGGREGATOR)
                .args(["--config", &demo_config(), "--brokers", &brokers])
                .args(["--workers", &workers.to_string(), "--checkpoint-dir"])
                .arg(dir.path().join("checkpoints"))
                .args(["--query-listen", "127.0.0.1:0", "--output"])
                .arg(dir.path().join("out.ndjson"))
                .env("ADCLICK_AGGREGATOR_CHECKPOINT_INTERVAL_MS", "200")
                .env("ADCLICK_AGGREGATOR_ALLOWED_LATENESS_MS", LATE)
                .env("ADCLICK_AGGREGATOR_IDLE_TIMEOUT_MS", "500"),
        )
    };
    let mut kills = 0;
    while !generator.is_finished() || kills < 4 {
        let mut child = run(1 + kills % 2);
        std::thread::sleep(Duration::from_millis(2_500 + 700 * (kills as u64 % 3)));
        child.kill();
        kills += 1;
    }
    let truth = generator.join().unwrap();
    let mut aggregator = run(2);
    let printed = aggregator.line_with_prefix("query server: http://", Duration::from_secs(60));
    let addr = printed.trim_end_matches('/').to_string();
    wait_final(&mut aggregator, &addr, &truth, 40_000);
    assert_reach_equals_the_truth(&addr, &truth, 40_000);
}
