//! Reach (unique users) end to end, against the load generator's exact distinct users: a
//! streaming aggregator (2 workers) on the embedded broker, past the lateness of traffic from
//! hours ago, answers every ad's users per hour (`aggregated_count`'s `unique_users`) and every
//! campaign's per day (`/api/v1/reports/reach`), billable and `traffic=all`, exactly while a
//! set is small (its sketch is exact), within 1 % above (the sketch's error bound; 3.5 of its
//! standard errors).

use adclick_testkit as common;

use std::process::Command;
use std::time::Duration;

use std::collections::BTreeMap;

use adclick::aggregator::sink::aggregates::{AggregateRecord, CommittedReader};
use adclick::aggregator::sink::output::Line;
use adclick::aggregator::sink::parquet::read_reach;
use adclick::loadgen::truth::{GroundTruth, TruthReport};
use adclick::timefmt::format_millis;
use adclick_dataflows::sketch::{EXACT_MAX, STANDARD_ERROR, UserSketch};
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

/// An estimate against the exact count: equal for a set the sketch keeps exactly, within 1 %
/// for a larger one (the promised bound: 3.5 standard errors of the sketch).
fn assert_users(what: &str, got: Option<u64>, want: u64) {
    let got = got.unwrap_or_else(|| panic!("{what}: no estimate"));
    if want as usize <= EXACT_MAX {
        assert_eq!(got, want, "{what}");
    } else {
        let err = (got as f64 - want as f64).abs() / want as f64;
        eprintln!("{what}: {got} for {want}, error {:.3} %", err * 100.0);
        assert!(
            err <= 0.01 && 0.01 <= 3.5 * STANDARD_ERROR,
            "{what}: {got} for {want}"
        );
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

/// A final reach line's group: (granularity, window start, grouped by, traffic, the group's
/// id: its ad or campaign, or its publisher or country).
type ReachKey = (String, u64, String, String, String);

/// The final reach lines of a sink, by group, each as (users, exact); panics on a group
/// reported twice, or on a sketch whose bytes do not decode to its estimate and exactness.
fn final_reach(
    lines: impl IntoIterator<Item = Line>,
    sink: &str,
) -> BTreeMap<ReachKey, (u64, bool)> {
    use base64::Engine as _;
    let mut by = BTreeMap::new();
    for line in lines {
        let Line::Reach {
            granularity,
            window_start_ms,
            group_by,
            traffic,
            ad_id,
            campaign_id,
            publisher_id,
            country,
            unique_users,
            exact,
            sketch,
            ..
        } = line
        else {
            continue;
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&sketch)
            .expect("base64");
        let s = UserSketch::from_bytes(&bytes).expect("a sketch");
        assert_eq!(
            (s.estimate(), s.is_exact()),
            (unique_users, exact),
            "{sink}"
        );
        let id = match group_by.as_str() {
            "ad" => ad_id,
            "campaign" => campaign_id,
            "campaign_country" => format!("{campaign_id}/{country}"),
            "publisher" => publisher_id,
            _ => country,
        };
        let key = (granularity, window_start_ms, group_by, traffic, id);
        let again = by.insert(key.clone(), (unique_users, exact));
        assert!(again.is_none(), "{sink}: {key:?} reported twice");
    }
    by
}

/// A sink's final reach against the truth: every ad's hours and every campaign's days that
/// are final at `final_before` (their end plus `lateness` before it), billable and all
/// traffic, exact while small, and no ad hour the truth does not have.
fn assert_final_reach(
    sink: &str,
    reach: &BTreeMap<ReachKey, (u64, bool)>,
    truth: &TruthReport,
    lateness: u64,
    final_before: u64,
) {
    let mut compared = 0;
    for (rows, granularity, by, len) in [
        (&truth.reach.ad_hour, "hour", "ad", HOUR),
        (&truth.reach.campaign_day, "day", "campaign", DAY),
    ] {
        for r in rows
            .iter()
            .filter(|r| r.start_ms as u64 + len + lateness < final_before)
        {
            for (traffic, want) in [("billable", r.users), ("all", r.all_users)] {
                let key = (
                    granularity.to_string(),
                    r.start_ms as u64,
                    by.to_string(),
                    traffic.to_string(),
                    r.id.clone(),
                );
                let got = reach.get(&key);
                if want == 0 {
                    assert_eq!(got, None, "{sink}: {key:?}");
                    continue;
                }
                let &(users, exact) = got.unwrap_or_else(|| panic!("{sink}: no {key:?}"));
                assert_eq!(exact, want as usize <= EXACT_MAX, "{sink}: {key:?}");
                assert_users(&format!("{sink}: {key:?}"), Some(users), want);
                compared += 1;
            }
        }
    }
    let ad_hours = truth
        .reach
        .ad_hour
        .iter()
        .map(|r| (r.start_ms as u64, r.id.as_str()))
        .collect::<std::collections::BTreeSet<_>>();
    for (g, start, by, _, id) in reach.keys() {
        if g == "hour" && by == "ad" {
            assert!(
                ad_hours.contains(&(*start, id.as_str())),
                "{sink}: {id} at {start}"
            );
        }
    }
    eprintln!("{sink}: {compared} final groups equal the truth");
    assert!(compared > 0, "{sink}: nothing final to compare");
}

/// The whole lines of the NDJSON output at `path` (not one being written).
fn output_lines(path: &std::path::Path) -> Vec<Line> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The committed lines of the click-aggregates topic, as a consumer that honours the commit
/// markers reads them.
fn topic_lines(brokers: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    let topic = common::read_partitions(brokers, "click-aggregates", 1, Duration::from_secs(20));
    for (_, records) in topic {
        let mut reader = CommittedReader::default();
        for (_, value) in records {
            let record: AggregateRecord = serde_json::from_slice(&value).unwrap();
            lines.extend(reader.push(record));
        }
    }
    lines
}

/// Final reach reaches every sink once: an `--until-end` job over traffic of two days ago
/// (every hour and day final) writes each group's final sketch to the NDJSON output, the
/// Parquet `reach` table and the `click-aggregates` topic, each equal to the truth's
/// distinct users per ad and hour and per campaign and day.
#[test]
fn final_reach_reaches_every_sink_once() {
    let kafka = common::embedded_kafka(4);
    let dir = tempfile::tempdir().unwrap();
    // From 02:00 two days ago, about 2 hours (across no midnight).
    let now = adclick::timefmt::now_millis() as u64;
    let ago = now - (now / DAY * DAY - 2 * DAY + 2 * HOUR);
    let truth = loadgen(
        &kafka.bootstrap_servers(),
        dir.path(),
        ago,
        &[
            "--count",
            "6000",
            "--rate",
            "1",
            "--seed",
            "16",
            "--ads",
            "6",
            "--users",
            "500",
            "--invalid",
            "0.1",
        ],
    );
    let parquet = dir.path().join("parquet");
    let out = dir.path().join("out.ndjson");
    run_ok(
        Command::new(AGGREGATOR)
            .args(["--config", &demo_config()])
            .args(["--brokers", &kafka.bootstrap_servers()])
            .args(["--workers", "2", "--until-end", "--parquet-dir"])
            .arg(&parquet)
            .arg("--output")
            .arg(&out),
    );
    let all = u64::MAX - LATENESS - DAY;
    assert_final_reach(
        "output",
        &final_reach(output_lines(&out), "output"),
        &truth,
        LATENESS,
        all,
    );
    let table = final_reach(read_reach(&parquet).unwrap(), "parquet");
    assert_final_reach("parquet", &table, &truth, LATENESS, all);
    let topic = final_reach(topic_lines(&kafka.bootstrap_servers()), "click-aggregates");
    assert_final_reach("click-aggregates", &topic, &truth, LATENESS, all);
    assert_eq!(table, topic);
}

/// Groups far past the exact range: a batch job over files of 240,000 clicks on 2 ads from
/// 160,000 users (tens of thousands of distinct users per ad and hour and per campaign and
/// day, every such sketch dense) reports each within 1 % of the truth's distinct users.
#[test]
fn large_groups_are_within_one_percent_of_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let (truth, _) = common::batch_job(
        LOADGEN,
        AGGREGATOR,
        dir.path(),
        &[
            "--count",
            "240000",
            "--rate",
            "20000",
            "--seed",
            "61",
            "--ads",
            "2",
            "--users",
            "160000",
            "--invalid",
            "0.05",
        ],
    );
    let dense = truth
        .reach
        .ad_hour
        .iter()
        .chain(&truth.reach.campaign_day)
        .filter(|r| r.users as usize > 2 * EXACT_MAX)
        .count();
    assert!(dense >= 2, "{:?}", truth.reach);
    let out = dir.path().join("out.ndjson");
    let reach = final_reach(output_lines(&out), "output");
    assert!(reach.values().filter(|(_, exact)| !exact).count() >= 2 * dense);
    assert_final_reach(
        "output",
        &reach,
        &truth,
        LATENESS,
        u64::MAX - LATENESS - DAY,
    );
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
/// run's does. The traffic's event times are 75 minutes old: while it streams in, the idle
/// timeout is long, as for any replay (a stalled generator would otherwise move the watermark
/// to the wall clock and make the rest late: it did, under a loaded CI); the runs after it
/// go idle at once, to finalize.
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
                75 * 60_000,
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
    let run = |workers: usize, idle_ms: &str| {
        Spawned::start(
            Command::new(AGGREGATOR)
                .args(["--config", &demo_config(), "--brokers", &brokers])
                .args(["--workers", &workers.to_string(), "--checkpoint-dir"])
                .arg(dir.path().join("checkpoints"))
                .args(["--query-listen", "127.0.0.1:0", "--output"])
                .arg(dir.path().join("out.ndjson"))
                .arg("--parquet-dir")
                .arg(dir.path().join("parquet"))
                .env("ADCLICK_AGGREGATOR_CHECKPOINT_INTERVAL_MS", "200")
                .env("ADCLICK_AGGREGATOR_ALLOWED_LATENESS_MS", LATE)
                .env("ADCLICK_AGGREGATOR_IDLE_TIMEOUT_MS", idle_ms),
        )
    };
    // Killed at least twice after the traffic is all in, idle at once then, so that
    // checkpoints hold final hours and days too.
    let (mut kills, mut after) = (0, 0);
    while kills < 4 || after < 2 {
        let all_in = generator.is_finished();
        let mut child = run(1 + kills % 2, if all_in { "500" } else { "600000" });
        std::thread::sleep(Duration::from_millis(2_500 + 700 * (kills as u64 % 3)));
        child.kill();
        kills += 1;
        after += usize::from(all_in);
    }
    let truth = generator.join().unwrap();
    let mut aggregator = run(2, "500");
    let printed = aggregator.line_with_prefix("query server: http://", Duration::from_secs(60));
    let addr = printed.trim_end_matches('/').to_string();
    wait_final(&mut aggregator, &addr, &truth, 40_000);
    assert_reach_equals_the_truth(&addr, &truth, 40_000);
    // The final hours reached the sinks once each, across the kills: the output (cut back
    // to each restored checkpoint), the Parquet table and the topic (published and committed
    // with the checkpoints). The traffic's hours ended at least 10 minutes ago.
    let (_, health) = get(&addr, "/api/v1/health", ADMIN);
    let watermark = health["watermark_ms"].as_u64().expect("a watermark");
    let parquet = dir.path().join("parquet");
    let out = dir.path().join("out.ndjson");
    let reach_lines = |lines: Vec<Line>| {
        lines
            .into_iter()
            .filter(|l| matches!(l, Line::Reach { .. }))
            .count()
    };
    wait_every(
        Duration::from_secs(30),
        Duration::from_millis(500),
        "the output's final reach published",
        || {
            let (written, published) = (
                reach_lines(output_lines(&out)),
                reach_lines(read_reach(&parquet).unwrap()),
            );
            if written > 0 && written == published {
                Ok(())
            } else {
                Err(format!("{written} written, {published} published"))
            }
        },
    );
    aggregator.kill();
    let output = output_lines(&out);
    assert_final_reach(
        "output",
        &final_reach(output, "output"),
        &truth,
        40_000,
        watermark,
    );
    let table = final_reach(read_reach(&parquet).unwrap(), "parquet");
    assert_final_reach("parquet", &table, &truth, 40_000, watermark);
    let topic = final_reach(topic_lines(&brokers), "click-aggregates");
    assert_final_reach("click-aggregates", &topic, &truth, 40_000, watermark);
}

/// `aggregator.reach = false`: no sketches (no reach line in the output), `unique_users`
/// null, reach queries refused with a 409 that says reach is off, and the dashboard's Reach
/// card saying so, while counts go on.
#[test]
fn reach_off_says_it_is_off() {
    let kafka = common::embedded_kafka(2);
    let dir = tempfile::tempdir().unwrap();
    let truth = loadgen(
        &kafka.bootstrap_servers(),
        dir.path(),
        3 * HOUR,
        &[
            "--count", "600", "--rate", "1", "--seed", "17", "--ads", "3",
        ],
    );
    let out = dir.path().join("out.ndjson");
    let mut aggregator = Spawned::start(
        Command::new(AGGREGATOR)
            .args(["--config", &demo_config()])
            .args(["--brokers", &kafka.bootstrap_servers()])
            .args(["--query-listen", "127.0.0.1:0", "--output"])
            .arg(&out)
            .env("ADCLICK_AGGREGATOR_REACH", "false")
            .env("ADCLICK_AGGREGATOR_IDLE_TIMEOUT_MS", "500"),
    );
    let printed = aggregator.line_with_prefix("query server: http://", Duration::from_secs(60));
    let addr = printed.trim_end_matches('/').to_string();
    wait_final(&mut aggregator, &addr, &truth, LATENESS);
    assert_eq!(get(&addr, "/api/v1/health", ADMIN).1["reach"], false);
    let r = &truth.reach.ad_hour[0];
    let (from, to) = (
        format_millis(r.start_ms),
        format_millis(r.start_ms + HOUR as i64),
    );
    let (status, c) = get(
        &addr,
        &format!("/ads/{}/aggregated_count?from={from}&to={to}", r.id),
        ADMIN,
    );
    assert_eq!(status, 200, "{c}");
    let clicks: u64 = truth
        .windows
        .iter()
        .filter(|w| w.ad_id == r.id && w.minute_ms / HOUR as i64 == r.start_ms / HOUR as i64)
        .map(|w| w.clicks)
        .sum();
    assert_eq!(c["count"].as_u64(), Some(clicks), "{c}");
    assert!(
        c["unique_users"].is_null() && c["unique_users_complete"].is_null(),
        "{c}"
    );
    for path in [
        format!("/api/v1/reports/reach?from={from}&to={to}&groupBy=campaign_id"),
        format!(
            "/api/v1/reports/clicks?from={from}&to={to}&groupBy=ad_id&metrics=clicks,unique_users"
        ),
    ] {
        let (status, e) = get(&addr, &path, ADMIN);
        assert_eq!(status, 409, "{path}: {e}");
        let message = e["error"].as_str().unwrap();
        assert!(message.contains("reach") && message.contains("off"), "{e}");
    }
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reach-off.png");
    let shown = common::process::dashboard(&format!("http://{addr}/"), ADMIN, &screenshot);
    assert_eq!(shown["reach"]["off"], true, "{shown}");
    aggregator.kill();
    let lines = output_lines(&out);
    assert!(
        lines.iter().any(|l| l.window().is_some()),
        "windows written"
    );
    assert!(
        !lines.iter().any(|l| matches!(l, Line::Reach { .. })),
        "no reach line"
    );
}
