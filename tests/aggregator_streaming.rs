//! Streaming from Kafka: a partition that never receives data must not hold the watermark back
//! forever (after the idle timeout it is released, and windows complete), nor may a clock in
//! 2099, nor silence; two aggregators never share a checkpoint directory or output; a lost
//! peer process ends the cluster with its own exit code; late clicks and dead letters sent
//! again after a restore carry the keys a consumer deduplicates them by; dead letters are
//! written while the watermark waits ahead of the clock; a restart with no click after it goes
//! on checkpointing.

use adclick_testkit as common;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use adclick_testkit::{demo_config, wait_every};

use adclick::aggregator::output::Line;
use adclick::event::{ClickEvent, Device, device_to_proto};
use common::http::blocking_get;
use common::process::{Spawned, run_ok};
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
        // Classified clean at the edge: the aggregator's own user-agent rules would call
        // the empty user agent `no_user_agent`.
        invalid_reasons: Vec::new(),
        classified: true,
        impression_time_ms: 0,
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
    let child = Spawned::spawn(
        Command::new(env!("CARGO_BIN_EXE_adclick-aggregator"))
            .args(["--brokers", &brokers, "--workers", "2"])
            .args(["--query-listen", "127.0.0.1:0", "--output"])
            .arg(&out)
            .env("ADCLICK_AGGREGATOR_IDLE_TIMEOUT_MS", "1000")
            .env("ADCLICK_PRIVACY_SALT", "test-salt-0123456789")
            .stderr(Stdio::null()),
    );
    // The first minute holds clicks 0..120, 40 for each of the three ads: each ad's row must be
    // reported complete. Workers report their rows as their own shards see the frontier pass, so
    // the rows may arrive in separate writes; wait for all three.
    let every = Duration::from_millis(200);
    let what = "the first minute's three rows";
    let first_minute = wait_every(Duration::from_secs(60), every, what, || {
        let mut first_minute = BTreeMap::new();
        let Ok(f) = std::fs::File::open(&out) else {
            return Err("no output yet".to_string());
        };
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
        match first_minute.len() {
            3.. => Ok(first_minute),
            _ => Err(format!("{first_minute:?}")),
        }
    });
    drop(child);
    let want: BTreeMap<String, i64> = (0..3).map(|a| (format!("ad_{a}"), 40)).collect();
    assert_eq!(
        first_minute, want,
        "the first minute completes, with its 120 clicks"
    );
}

/// Sends `events` to partitions of the clicks topic: (partition, event).
fn produce(brokers: &str, events: &[(i32, ClickEvent)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for (p, e) in events {
        let value = e.to_protobuf();
        producer
            .send(
                BaseRecord::to("clicks")
                    .partition(*p)
                    .key(e.impression_id.as_bytes())
                    .payload(&value),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// A streaming aggregator on `brokers` with `env` settings, its output in `out`.
fn streaming(brokers: &str, out: &Path, env: &[(&str, &str)]) -> Spawned {
    Spawned::start(
        Command::new(env!("CARGO_BIN_EXE_adclick-aggregator"))
            .args(["--config", &demo_config()])
            .args(["--brokers", brokers, "--workers", "2"])
            .args(["--query-listen", "127.0.0.1:0", "--output"])
            .arg(out)
            .env("ADCLICK_AGGREGATOR_IDLE_TIMEOUT_MS", "1000")
            .env("ADCLICK_PRIVACY_SALT", "test-salt-0123456789")
            .envs(env.iter().copied())
            .stderr(Stdio::null()),
    )
}

/// `--until-end` on 2 workers from where the streaming runs with `env` left off, its output
/// in `out`; asserts it succeeded and returns its log (standard error, without colours).
fn until_end(brokers: &str, out: &Path, env: &[(&str, &str)]) -> String {
    let finished = run_ok(
        Command::new(env!("CARGO_BIN_EXE_adclick-aggregator"))
            .args(["--config", &demo_config()])
            .args(["--brokers", brokers, "--workers", "2", "--until-end"])
            .arg("--output")
            .arg(out)
            .env("ADCLICK_PRIVACY_SALT", "test-salt-0123456789")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null()),
    );
    String::from_utf8_lossy(&finished.stderr).into_owned()
}

/// The demo configuration's admin key for the query API.
const ADMIN: Option<&str> = Some("demo-admin-key-not-secret");

/// The latest line per minute row of `out` (status and clicks), and its dead letters' codes.
/// Minute rows by (window start, ad): (status, clicks) of the latest report.
type Rows = BTreeMap<(u64, String), (String, i64)>;

fn latest_rows(out: &Path) -> (Rows, Vec<String>) {
    let mut rows = BTreeMap::new();
    let mut letters = Vec::new();
    let Ok(f) = std::fs::File::open(out) else {
        return (rows, letters);
    };
    for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
        match serde_json::from_str::<Line>(&line) {
            Ok(Line::Window {
                granularity,
                window_start_ms,
                status,
                ad_id,
                clicks,
                ..
            }) if granularity == "minute" => {
                rows.insert((window_start_ms, ad_id), (status, clicks));
            }
            Ok(Line::DeadLetter { code, .. }) => letters.push(code),
            _ => {}
        }
    }
    (rows, letters)
}

/// `count` clicks stamped in the minute before the current one (as the redirect stamps them),
/// half on partition 0 and half on 1, and that minute's start.
fn last_minute_clicks(count: i64, offset: i64) -> (u64, Vec<(i32, ClickEvent)>) {
    let now = adclick::timefmt::now_millis();
    let minute = now - now.rem_euclid(60_000) - 60_000;
    let events = (0..count)
        .map(|i| {
            let mut e = event(offset + i);
            e.event_time_ms = minute + 30_000 + i * 100;
            ((i % 2) as i32, e)
        })
        .collect();
    (minute as u64, events)
}

/// Issue 11, item 1: one partner clock in 2099. Before, its partition's watermark jumped to
/// 2099 and the ordinary clicks behind it were judged late or never counted; now it is a
/// dead letter (`event_time_in_future`) and every ordinary click counts, with the tallies
/// adding up to what the topic holds.
#[test]
fn a_click_from_2099_is_dead_lettered_and_moves_no_watermark() {
    let kafka = common::embedded_kafka(2);
    let brokers = kafka.bootstrap_servers();
    let mut future = event(10_000);
    future.event_time_ms = 4_102_444_740_000; // 2099-12-31T23:59:00Z
    let (minute, ordinary) = last_minute_clicks(40, 0);
    let mut events = vec![(0, future)];
    events.extend(ordinary);
    produce(&brokers, &events);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let mut aggregator = streaming(
        &brokers,
        &out,
        &[("ADCLICK_AGGREGATOR_ALLOWED_LATENESS_MS", "20000")],
    );
    let base = aggregator.line_with_prefix("query server: ", Duration::from_secs(30));
    let health = format!("{base}api/v1/health");
    let every = Duration::from_millis(200);
    let tallies = wait_every(Duration::from_secs(60), every, "all counted", || {
        let health = blocking_get(&health, ADMIN).json();
        let t = &health["tallies"];
        match t["counted"] == 40 {
            true => Ok(t.clone()),
            false => Err(health.to_string()),
        }
    });
    assert_eq!(
        tallies["received"], 41,
        "every record of the topic: {tallies}"
    );
    assert_eq!(tallies["dead_lettered"], 1, "{tallies}");
    assert_eq!(tallies["late"], 0, "{tallies}");
    let (rows, letters) = latest_rows(&out);
    assert_eq!(letters, vec!["event_time_in_future".to_string()]);
    let counted: i64 = rows
        .iter()
        .filter(|((m, _), _)| *m == minute)
        .map(|(_, (_, c))| c)
        .sum();
    assert_eq!(counted, 40);
}

/// While clicks up to the future-skew bound ahead hold the watermark there, a flood of
/// records beyond the bound is dead-lettered and written as it comes (all but the last
/// thousand or so of a time), not held in memory until the wall clock reaches the watermark,
/// minutes later (20 GB in a benchmark that did this).
#[test]
fn dead_letters_are_written_while_the_watermark_waits_for_the_clock() {
    let kafka = common::embedded_kafka(2);
    let brokers = kafka.bootstrap_servers();
    let now = adclick::timefmt::now_millis();
    let ahead: Vec<_> = (0..2)
        .map(|p| {
            let mut e = event(20_000 + i64::from(p));
            e.event_time_ms = now + 180_000;
            (p, e)
        })
        .collect();
    produce(&brokers, &ahead);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let mut aggregator = streaming(&brokers, &out, &[]);
    let base = aggregator.line_with_prefix("query server: ", Duration::from_secs(30));
    let health = format!("{base}api/v1/health");
    // Health, polled until `done` holds for it.
    let health_until = |what: &str, done: &dyn Fn(&serde_json::Value) -> bool| {
        wait_every(
            Duration::from_secs(30),
            Duration::from_millis(200),
            what,
            || {
                let health = blocking_get(&health, ADMIN).json();
                if done(&health) {
                    Ok(())
                } else {
                    Err(health.to_string())
                }
            },
        )
    };
    health_until("the watermark ahead", &|h| {
        h["watermark_ms"].as_i64() > Some(now + 60_000)
    });
    let flood: Vec<_> = (0..3000)
        .map(|i| {
            let mut e = event(30_000 + i);
            e.event_time_ms = now + 3_600_000;
            ((i % 2) as i32, e)
        })
        .collect();
    produce(&brokers, &flood);
    health_until("the dead letters written", &|h| {
        h["tallies"]["dead_lettered"].as_u64() >= Some(2000)
    });
    let (_, letters) = latest_rows(&out);
    assert!(letters.len() >= 2000, "{} dead letters", letters.len());
    assert!(letters.iter().all(|c| c == "event_time_in_future"));
    let health = blocking_get(&health, ADMIN).json();
    let watermark = health["watermark_ms"].as_u64().unwrap();
    assert!(
        watermark > adclick::timefmt::now_millis() as u64,
        "the watermark still waits ahead of the clock: {health}"
    );
}

/// Issue 11, item 5: clicks stamped by the redirect's clock, then silence. Before, the last
/// minute with clicks never completed until new clicks came; now, once every partition is
/// idle, the watermark follows the wall clock and the minute completes.
#[test]
fn a_quiet_stream_completes_its_last_windows() {
    let kafka = common::embedded_kafka(3);
    let brokers = kafka.bootstrap_servers();
    let (minute, events) = last_minute_clicks(60, 0);
    produce(&brokers, &events);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let mut aggregator = streaming(&brokers, &out, &[]);
    let base = aggregator.line_with_prefix("query server: ", Duration::from_secs(30));
    let what = "the quiet stream's last minute to complete";
    wait_every(
        Duration::from_secs(30),
        Duration::from_millis(200),
        what,
        || {
            let (rows, _) = latest_rows(&out);
            let complete: i64 = rows
                .iter()
                .filter(|((m, _), (status, _))| *m == minute && status == "complete")
                .map(|(_, (_, c))| c)
                .sum();
            match complete == 60 {
                true => Ok(()),
                false => Err(format!("{rows:?}")),
            }
        },
    );
    // Item 8: the completion histogram starts at the first real frontier. It once counted
    // every minute since 1970 (29,936,376 observations, all in +Inf); here a few minutes.
    let metrics = blocking_get(&format!("{base}metrics"), ADMIN).body;
    let count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("adclick_aggregator_window_completion_latency_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no completion histogram: {metrics}"));
    assert!((1..=5).contains(&count), "minutes observed: {count}");
}

/// The aggregator's `checkpoint` gauge `value` (frontier in s, committed count since start)
/// from `/metrics` at `base`; `None` before the first commit.
fn checkpoint_metric(base: &str, value: &str) -> Option<f64> {
    let metrics = blocking_get(&format!("{base}metrics"), ADMIN).body;
    let prefix = format!("adclick_aggregator_checkpoint{{value=\"{value}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// A restart from a checkpoint that holds recent clicks, then no click at all (or only late
/// ones: the aggregator down for hours while the redirect spooled): checkpoints go on being
/// committed. Before, the user rule held the restored clicks until a click was counted after
/// the restore, and reach and the report writer behind them waited at the checkpoint's
/// frontier: no line written, no checkpoint committed, for as long as no click came.
#[test]
fn a_restart_with_no_click_after_it_goes_on_checkpointing() {
    let kafka = common::embedded_kafka(2);
    let brokers = kafka.bootstrap_servers();
    let (minute, mut events) = last_minute_clicks(40, 0);
    for (i, (_, e)) in events.iter_mut().enumerate() {
        e.ip_hash = format!("{i:032x}");
        e.user_id_hash = format!("{:032x}", 100 + i % 5);
    }
    let last_s = events.iter().map(|(_, e)| e.event_time_ms).max().unwrap() as f64 / 1000.0;
    produce(&brokers, &events);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let ckpt = dir.path().join("checkpoints").display().to_string();
    let env = [
        ("ADCLICK_AGGREGATOR_CHECKPOINT_DIR", ckpt.as_str()),
        ("ADCLICK_AGGREGATOR_CHECKPOINT_INTERVAL_MS", "1000"),
    ];
    let every = Duration::from_millis(200);
    let mut first = streaming(&brokers, &out, &env);
    let base = first.line_with_prefix("query server: ", Duration::from_secs(30));
    wait_every(
        Duration::from_secs(60),
        every,
        "the clicks' minute complete",
        || {
            let (rows, _) = latest_rows(&out);
            let clicks: i64 = rows
                .iter()
                .filter(|(m, _)| m.0 == minute)
                .map(|(_, r)| r.1)
                .sum();
            match clicks == 40 {
                true => Ok(()),
                false => Err(format!("{rows:?}")),
            }
        },
    );
    // The query server at `base` until its checkpoint gauge `value` passes `ok`.
    let until = |base: &str, what: &str, value: &str, ok: &dyn Fn(f64) -> bool| {
        wait_every(
            Duration::from_secs(60),
            every,
            what,
            || match checkpoint_metric(base, value) {
                Some(v) if ok(v) => Ok(()),
                v => Err(format!("checkpoint {value}: {v:?}")),
            },
        )
    };
    until(&base, "a checkpoint past the clicks", "frontier", &|f| {
        f > last_s + 6.0
    });
    first.kill();
    let mut again = streaming(&brokers, &out, &env);
    let base = again.line_with_prefix("query server: ", Duration::from_secs(30));
    until(&base, "a checkpoint after the restart", "committed", &|n| {
        n >= 1.0
    });
}

/// Issue 11, item 6: a second aggregator on the same checkpoint directory or output fails at
/// once with exit code 5, naming the first one's PID.
#[test]
fn a_second_aggregator_on_the_same_checkpoints_and_output_fails_at_once() {
    let kafka = common::embedded_kafka(2);
    let brokers = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let checkpoints = dir.path().join("checkpoints");
    let ckpt = checkpoints.display().to_string();
    let mut first = streaming(
        &brokers,
        &out,
        &[("ADCLICK_AGGREGATOR_CHECKPOINT_DIR", ckpt.as_str())],
    );
    first.line_with_prefix("query server: ", Duration::from_secs(30));
    let pid = first.child.id();
    for (what, output, checkpoint_dir) in [
        ("both", out.clone(), ckpt.clone()),
        (
            "the checkpoints",
            dir.path().join("other.ndjson"),
            ckpt.clone(),
        ),
        (
            "the output",
            out.clone(),
            dir.path().join("other-checkpoints").display().to_string(),
        ),
    ] {
        let started = Instant::now();
        let second = Command::new(env!("CARGO_BIN_EXE_adclick-aggregator"))
            .args(["--brokers", &brokers, "--query-listen", "127.0.0.1:0"])
            .arg("--output")
            .arg(&output)
            .env("ADCLICK_AGGREGATOR_CHECKPOINT_DIR", &checkpoint_dir)
            .env("ADCLICK_PRIVACY_SALT", "test-salt-0123456789")
            .output()
            .unwrap();
        assert_eq!(second.status.code(), Some(5), "{what}: {second:?}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: at once"
        );
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert!(
            stderr.contains("in use by another aggregator")
                && stderr.contains(&format!("pid {pid}")),
            "{what}: {stderr}"
        );
    }
    // The first one still runs, and its output is whole JSON lines.
    assert!(first.running());
}

/// Issue 11, item 7: when process 0 of a two-process cluster dies, process 1 ends with one
/// clear line and exit code 4 (not a timely panic), so a supervisor restarts the cluster.
#[test]
fn a_dead_peer_process_ends_the_survivor_with_exit_code_4() {
    let kafka = common::embedded_kafka(2);
    let brokers = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let hostfile = common::hostfile(dir.path(), 2);
    let start = |i: usize| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_adclick-aggregator"));
        c.args(["--config", &demo_config()])
            .args(["--brokers", &brokers, "--query-listen", "127.0.0.1:0"])
            .args(common::cluster_args(1, 2, i, &hostfile))
            .arg("--output")
            .arg(dir.path().join(format!("out-{i}.ndjson")))
            .env("ADCLICK_PRIVACY_SALT", "test-salt-0123456789");
        c
    };
    let mut zero = Spawned::start(start(0).stderr(Stdio::null()));
    let mut one = Spawned::spawn(start(1).stdout(Stdio::null()).stderr(Stdio::piped()));
    let base = zero.line_with_prefix("query server: ", Duration::from_secs(30));
    // The cluster runs once process 1's partition shows in process 0's health.
    let health = format!("{base}api/v1/health");
    let every = Duration::from_millis(100);
    wait_every(Duration::from_secs(30), every, "the cluster to run", || {
        let health = blocking_get(&health, ADMIN).json();
        match health["partitions"]
            .as_array()
            .is_some_and(|p| p.len() == 2)
        {
            true => Ok(()),
            false => Err(health.to_string()),
        }
    });
    zero.kill();
    // Process 1 must not outlive its peer.
    let status = one.wait(Duration::from_secs(30));
    let stderr = one.stderr();
    assert_eq!(status.code(), Some(4), "{status:?}: {stderr}");
    assert!(stderr.contains("lost a peer process"), "{stderr}");
    assert!(!stderr.contains("panicked"), "no panic report: {stderr}");
}

/// Records for the clicks topic: (partition, payload).
type Raw = Vec<(i32, Vec<u8>)>;

/// On-time clicks `from..to` over partitions 0 and 1, with a malformed record and (once the
/// watermarks are far enough along) a click far too late on each partition every 20 clicks. Also the origins (`clicks/p@offset`)
/// of the late and malformed records, given the records each partition already holds.
fn late_and_bad(from: i64, to: i64, held: &mut [u64; 2]) -> (Raw, Vec<String>, Vec<String>) {
    let (mut records, mut late, mut bad) = (Vec::new(), Vec::new(), Vec::new());
    let mut push = |p: i32, payload: Vec<u8>, keys: Option<&mut Vec<String>>| {
        if let Some(keys) = keys {
            keys.push(format!("clicks/{p}@{}", held[p as usize]));
        }
        held[p as usize] += 1;
        records.push((p, payload));
    };
    for i in from..to {
        let p = (i % 2) as i32;
        push(p, event(i).to_protobuf(), None);
        if i % 20 >= 18 {
            push(p, format!("not a click {i}").into_bytes(), Some(&mut bad));
        }
        // Far behind its partition's watermark (START + i/2 s - 5 s, past the lateness of
        // 20 s from i = 60 on): late, whatever the timing.
        if i % 20 >= 18 && i >= 60 {
            let mut e = event(1_000_000 + i);
            e.event_time_ms = START;
            push(p, e.to_protobuf(), Some(&mut late));
        }
    }
    (records, late, bad)
}

fn produce_raw(brokers: &str, records: &Raw) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for (p, payload) in records {
        producer
            .send(
                BaseRecord::<[u8], _>::to("clicks")
                    .partition(*p)
                    .payload(payload),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// Issue 16, item 5: late clicks and dead letters go to their topics as they are read, so a
/// restore from a checkpoint sends those read after it again. Each is keyed by where it was
/// read (`clicks/partition@offset`), so the repeats carry the key and the content of the
/// first: keeping one record per key leaves exactly the late clicks and dead letters the
/// output's tallies count, each once. (Keyed by impression, as before, two late clicks of one
/// impression would merge, and a dead letter of a keyless record had no key at all.)
#[test]
fn late_clicks_and_dead_letters_sent_again_after_a_restore_carry_their_keys() {
    let kafka = common::embedded_kafka(2);
    let brokers = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let checkpoints = dir.path().join("checkpoints");
    let ckpt = checkpoints.display().to_string();
    let env = [
        ("ADCLICK_AGGREGATOR_CHECKPOINT_DIR", ckpt.as_str()),
        ("ADCLICK_AGGREGATOR_CHECKPOINT_INTERVAL_MS", "10000"),
        ("ADCLICK_AGGREGATOR_ALLOWED_LATENESS_MS", "20000"),
        // Historical event times: the watermark must follow the data alone, never the clock.
        ("ADCLICK_AGGREGATOR_IDLE_TIMEOUT_MS", "600000"),
    ];
    let mut held = [0; 2];
    let (records, late, bad) = late_and_bad(0, 300, &mut held);
    let mut aggregator = streaming(&brokers, &out, &env);
    let committed = || {
        std::fs::read_dir(&checkpoints)
            .map(|d| d.flatten().any(|e| e.path().join("MANIFEST.json").exists()))
            .unwrap_or(false)
    };
    // Sent in chunks, so the sources keep moving until a checkpoint is taken (a checkpoint
    // is asked for as the sources' frontier moves); the rest at once after it: read after the
    // checkpoint, sent to the topics, then lost with the process.
    let mut chunks = records.chunks(12);
    for chunk in chunks.by_ref() {
        produce_raw(&brokers, &chunk.to_vec());
        std::thread::sleep(Duration::from_millis(500));
        if committed() {
            break;
        }
    }
    wait_every(
        Duration::from_secs(30),
        Duration::from_millis(50),
        "a checkpoint",
        committed,
    );
    produce_raw(&brokers, &chunks.flatten().cloned().collect());
    let timeout = Duration::from_secs(30);
    assert!(common::read_topic(&brokers, "clicks-late", late.len(), timeout).len() >= late.len());
    assert!(common::read_topic(&brokers, "clicks-dlq", bad.len(), timeout).len() >= bad.len());
    aggregator.kill();

    let stderr = until_end(&brokers, &out, &env);
    assert!(stderr.contains("restoring checkpoint"), "{stderr}");
    let text = std::fs::read_to_string(&out).unwrap();
    let tallies = text
        .lines()
        .rev()
        .find_map(|l| match serde_json::from_str::<Line>(l) {
            Ok(Line::Tallies(t)) => Some(t),
            _ => None,
        })
        .expect("a tallies line");
    assert_eq!(tallies.late, late.len() as u64, "{tallies:?}");
    assert_eq!(tallies.dead_lettered, bad.len() as u64, "{tallies:?}");
    assert_eq!(tallies.received, held.iter().sum::<u64>(), "{tallies:?}");

    // A consumer's view: one record per key, every repeat the same as the first.
    let same = |topic: &str, expected: &[String], content: &dyn Fn(&[u8]) -> serde_json::Value| {
        let records = common::read_topic(&brokers, topic, expected.len(), timeout);
        let mut first: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        for (key, value) in &records {
            let key = String::from_utf8(key.clone()).unwrap();
            let value = content(value);
            let kept = first.entry(key.clone()).or_insert_with(|| value.clone());
            assert_eq!(*kept, value, "{topic}: a repeat of {key} differs");
        }
        let keys: Vec<String> = first.into_keys().collect();
        let mut expected = expected.to_vec();
        expected.sort();
        assert_eq!(keys, expected, "{topic}: one key per record read");
        records.len() - keys.len()
    };
    let json = |v: &[u8]| serde_json::from_slice::<serde_json::Value>(v).unwrap();
    let repeated_late = same("clicks-late", &late, &json);
    let repeated_bad = same("clicks-dlq", &bad, &|v: &[u8]| {
        let mut letter = json(v);
        letter.as_object_mut().unwrap().remove("rejected_at_ms");
        letter
    });
    // The restore did send again what was read after the checkpoint: the keys are needed.
    assert!(
        repeated_late > 0 && repeated_bad > 0,
        "no repeats ({repeated_late} late, {repeated_bad} dead letters): the kill came after \
         a checkpoint that covered the second batch"
    );
}

/// Issue 16, item 4: a torn checkpoint part is found by its checksum, and the restore uses the
/// previous complete checkpoint: the newest checkpoint's first part, cut in half after a kill,
/// is set aside, the job finishes `--until-end` from the one before, and every final minute
/// equals the input's count (once, in the output and in the Parquet windows), the tallies
/// adding up. (Without the trailer the torn part would fail to decode and stop the restore;
/// with the fallback but without withdrawing its published epoch, Parquet would hold those
/// windows twice.)
#[test]
fn a_torn_newest_checkpoint_is_skipped_and_the_final_windows_stay_exact() {
    newest_checkpoint_damaged(|part| part.truncate(part.len() / 2), &["torn"]);
}

/// Issue 16, item 4: as above, with one bit of the newest checkpoint's winners flipped. A
/// restore serves the rows once a part's head is checked and checks the winners as they
/// decode, so this damage is found after the run has begun with that checkpoint: the process
/// starts over in place (`exec`), skipping it, and the job still finishes `--until-end` from
/// the one before with every final minute exact. (Without the winners' checksum the flipped
/// bit decodes into a different winner, or fails to decode and panics.)
#[test]
fn damaged_winners_found_after_serving_began_restart_past_their_checkpoint() {
    newest_checkpoint_damaged(
        |part| {
            // The head's length is the trailer's first field (format 7, `ADCKSUM2`).
            assert_eq!(&part[part.len() - 8..], b"ADCKSUM2");
            let at = part.len() - 32;
            let head = u64::from_le_bytes(part[at..at + 8].try_into().unwrap()) as usize;
            let winners = at - head;
            assert!(winners > 0);
            part[head + winners / 2] ^= 0x04;
        },
        &["winners: damaged", "restarting the process"],
    );
}

/// Runs a streaming job to two checkpoints, kills it, `damage`s the newest checkpoint's first
/// part and finishes the job `--until-end`, whose log must say each of `says`: the damage is
/// found, the checkpoint set aside, and the final windows, Parquet's too, are exact.
fn newest_checkpoint_damaged(damage: fn(&mut Vec<u8>), says: &[&str]) {
    let kafka = common::embedded_kafka(2);
    let brokers = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let checkpoints = dir.path().join("checkpoints");
    let parquet = dir.path().join("parquet");
    let (ckpt, pq) = (
        checkpoints.display().to_string(),
        parquet.display().to_string(),
    );
    let env = [
        ("ADCLICK_AGGREGATOR_CHECKPOINT_DIR", ckpt.as_str()),
        ("ADCLICK_AGGREGATOR_PARQUET_DIR", pq.as_str()),
        ("ADCLICK_AGGREGATOR_CHECKPOINT_INTERVAL_MS", "1500"),
        ("ADCLICK_AGGREGATOR_ALLOWED_LATENESS_MS", "20000"),
        ("ADCLICK_AGGREGATOR_IDLE_TIMEOUT_MS", "600000"),
    ];
    let mut held = [0; 2];
    let (records, late, bad) = late_and_bad(0, 400, &mut held);
    let mut aggregator = streaming(&brokers, &out, &env);
    let manifests = || {
        let mut done: Vec<std::path::PathBuf> = std::fs::read_dir(&checkpoints)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("MANIFEST.json").exists())
            .collect();
        done.sort();
        done
    };
    let mut chunks = records.chunks(12);
    for chunk in chunks.by_ref() {
        produce_raw(&brokers, &chunk.to_vec());
        std::thread::sleep(Duration::from_millis(300));
        if manifests().len() >= 2 {
            break;
        }
    }
    let every = Duration::from_millis(50);
    wait_every(Duration::from_secs(60), every, "two checkpoints", || {
        manifests().len() >= 2
    });
    produce_raw(&brokers, &chunks.flatten().cloned().collect());
    std::thread::sleep(Duration::from_millis(500));
    aggregator.kill();
    let newest = manifests().pop().unwrap();
    let part = newest.join("worker-0.bin");
    let mut bytes = std::fs::read(&part).unwrap();
    damage(&mut bytes);
    std::fs::write(&part, &bytes).unwrap();

    let stderr = until_end(&brokers, &out, &env);
    assert!(
        stderr.contains("falling back to the previous one"),
        "{stderr}"
    );
    for said in says {
        assert!(stderr.contains(said), "{said}: {stderr}");
    }
    let name = newest.file_name().unwrap().to_str().unwrap();
    assert!(
        checkpoints.join(format!("corrupt-{name}")).is_dir(),
        "set aside"
    );

    let mut expected: BTreeMap<(u64, String), i64> = BTreeMap::new();
    for i in 0..400 {
        let e = event(i);
        let minute = (e.event_time_ms - e.event_time_ms % 60_000) as u64;
        *expected.entry((minute, e.ad_id)).or_default() += 1;
    }
    let finals = |lines: Vec<Line>| {
        let mut got: BTreeMap<(u64, String), i64> = BTreeMap::new();
        for l in lines {
            if let Some(w) = l.window()
                && w.granularity == "minute"
                && w.status == "final"
            {
                let key = (w.start, w.dims[0].to_string());
                assert!(got.insert(key.clone(), w.clicks).is_none(), "{key:?} twice");
            }
        }
        got
    };
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<Line> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let tallies = lines
        .iter()
        .rev()
        .find_map(|l| match l {
            Line::Tallies(t) => Some(*t),
            _ => None,
        })
        .expect("a tallies line");
    assert_eq!(finals(lines), expected, "the output's final minutes");
    let windows = adclick::aggregator::sink::parquet::read_windows(&parquet).unwrap();
    assert_eq!(finals(windows), expected, "the Parquet windows");
    assert_eq!(tallies.counted, 400, "{tallies:?}");
    assert_eq!(tallies.late, late.len() as u64, "{tallies:?}");
    assert_eq!(tallies.dead_lettered, bad.len() as u64, "{tallies:?}");
    assert_eq!(tallies.received, held.iter().sum::<u64>(), "{tallies:?}");
}

/// Issue 16, item 4: the clicks of [`incremental_chain`]: `n` impressions, two clicks a second
/// of event time over partitions 0 and 1, and a second click of every tenth impression, sent
/// ten records later on its partition: 1.5 s after the first (a duplicate), or, every other
/// time, 1.5 s before it (the new winner, dethroning the first, possibly in the minute
/// before). Returns the records in order, and the truth: final minute, hour and day rows by
/// (granularity, window start, ad) as (clicks, duplicates).
type Truth = BTreeMap<(&'static str, u64, String), (i64, i64)>;

fn clicks_with_duplicates(n: i64) -> (Vec<(i32, ClickEvent)>, Truth) {
    let mut records: Vec<(i32, ClickEvent)> = Vec::new();
    let mut second: BTreeMap<i64, ClickEvent> = BTreeMap::new();
    let mut truth: Truth = BTreeMap::new();
    let mut count = |e: &ClickEvent, won: bool| {
        for (granularity, len) in [("minute", 60_000), ("hour", 3_600_000), ("day", 86_400_000)] {
            let start = (e.event_time_ms - e.event_time_ms.rem_euclid(len)) as u64;
            let row = truth
                .entry((granularity, start, e.ad_id.clone()))
                .or_default();
            if won {
                row.0 += 1;
            } else {
                row.1 += 1;
            }
        }
    };
    for i in 0..n {
        let e = event(i);
        if let Some(again) = second.remove(&(i - 10)) {
            records.push(((i % 2) as i32, again));
        }
        if i % 10 == 3 {
            let mut again = event(i);
            again.click_id = format!("0192f6a4-7c1e-7b3a-9c44-{:012x}", 500_000 + i);
            again.event_time_ms += if i % 20 == 3 { 1_500 } else { -1_500 };
            let first_wins = e.event_time_ms < again.event_time_ms;
            count(&e, first_wins);
            count(&again, !first_wins);
            second.insert(i, again);
        } else {
            count(&e, true);
        }
        records.push(((i % 2) as i32, e));
    }
    for (i, again) in second {
        records.push(((i % 2) as i32, again));
    }
    (records, truth)
}

/// Issue 16, item 4: a streaming run takes a full checkpoint, then links (only what changed:
/// dedup winners, window rows, with minute rows retiring after a minute and dedup winners
/// expiring after a minute and a half), compacts into a full one after five links and goes
/// on linking; it is killed (SIGKILL) mid-chain. `tear`: the newest link's first part is cut
/// in half too. `--until-end` restores from the newest checkpoint whose chain is whole (a
/// link, replayed onto its base), and every final minute, hour and day row equals the
/// truth, duplicates that arrived in other links than their impression's first click
/// included, as do the tallies. Every checkpoint left on disk has the whole chain it builds
/// on.
fn incremental_chain(tear: bool) {
    let kafka = common::embedded_kafka(2);
    let brokers = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let checkpoints = dir.path().join("checkpoints");
    let ckpt = checkpoints.display().to_string();
    let env = [
        ("ADCLICK_AGGREGATOR_CHECKPOINT_DIR", ckpt.as_str()),
        ("ADCLICK_AGGREGATOR_CHECKPOINT_INTERVAL_MS", "700"),
        ("ADCLICK_AGGREGATOR_CHECKPOINT_FULL_EVERY", "5"),
        ("ADCLICK_AGGREGATOR_ALLOWED_LATENESS_MS", "20000"),
        ("ADCLICK_AGGREGATOR_MINUTE_RETENTION_MS", "60000"),
        ("ADCLICK_AGGREGATOR_DEDUP_HORIZON_MS", "70000"),
        ("ADCLICK_AGGREGATOR_IDLE_TIMEOUT_MS", "600000"),
    ];
    let n = 1_600;
    let (records, truth) = clicks_with_duplicates(n);
    let mut aggregator = streaming(&brokers, &out, &env);
    // Complete checkpoints, oldest first: (frontier, the chain it builds on).
    let manifests = || {
        let mut done: Vec<(u64, Vec<u64>)> = std::fs::read_dir(&checkpoints)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let text = std::fs::read(e.path().join("MANIFEST.json")).ok()?;
                let m: serde_json::Value = serde_json::from_slice(&text).ok()?;
                let chain = m["chain"]
                    .as_array()
                    .map(|c| c.iter().map(|f| f.as_u64().unwrap()).collect())
                    .unwrap_or_default();
                Some((m["frontier"].as_u64().unwrap(), chain))
            })
            .collect();
        done.sort();
        done
    };
    // Mid-chain, after a compaction: a second full checkpoint, and the newest has two or
    // three links before it (one more commit before the kill is still a link).
    let mid_chain = || {
        let all = manifests();
        let fulls = all.iter().filter(|m| m.1.is_empty()).count();
        let newest = all.last().map_or(0, |m| m.1.len());
        fulls >= 2 && (2..=3).contains(&newest)
    };
    let mut chunks = records.chunks(20);
    let mut reached = false;
    for chunk in chunks.by_ref() {
        produce(&brokers, chunk);
        std::thread::sleep(Duration::from_millis(150));
        if mid_chain() {
            reached = true;
            break;
        }
    }
    assert!(
        reached,
        "mid-chain before the input ran out: {:?}",
        manifests()
    );
    aggregator.kill();
    let before = manifests();
    let (newest, chain) = before.last().cloned().unwrap();
    assert!(!chain.is_empty(), "killed mid-chain: {before:?}");
    let path = |f: u64| checkpoints.join(format!("ckpt-{f:020}"));
    // Links hold what changed, far less than their base.
    let size = |f: u64| {
        std::fs::metadata(path(f).join("worker-0.bin"))
            .unwrap()
            .len()
    };
    assert!(
        size(newest) < size(chain[0]),
        "{} vs {}",
        size(newest),
        size(chain[0])
    );
    if tear {
        let part = path(newest).join("worker-0.bin");
        let bytes = std::fs::read(&part).unwrap();
        std::fs::write(&part, &bytes[..bytes.len() / 2]).unwrap();
    }
    produce(&brokers, &chunks.flatten().cloned().collect::<Vec<_>>());

    let stderr = until_end(&brokers, &out, &env);
    let restored = before[before.len() - 1 - usize::from(tear)].clone();
    assert!(
        stderr.contains(&format!("frontier={} ", restored.0))
            && stderr.contains(&format!("links={} ", restored.1.len())),
        "restored from {restored:?}: {stderr}"
    );
    assert!(!restored.1.is_empty(), "from a link: {restored:?}");
    if tear {
        assert!(
            stderr.contains("falling back to the previous one") && stderr.contains("torn"),
            "{stderr}"
        );
    }
    // Pruning kept what every checkpoint on disk builds on.
    for (f, chain) in manifests() {
        for g in chain {
            assert!(path(g).join("MANIFEST.json").exists(), "{f} needs {g}");
        }
    }

    let text = std::fs::read_to_string(&out).unwrap();
    let mut finals: Truth = BTreeMap::new();
    let mut tallies = None;
    for line in text.lines() {
        let l: Line = serde_json::from_str(line).unwrap();
        if let Line::Tallies(t) = &l {
            tallies = Some(*t);
        }
        if let Some(w) = l.window()
            && w.status == "final"
        {
            let granularity = match w.granularity {
                "minute" => "minute",
                "hour" => "hour",
                _ => "day",
            };
            let key = (granularity, w.start, w.dims[0].to_string());
            assert!(
                finals
                    .insert(key.clone(), (w.clicks, w.duplicates))
                    .is_none(),
                "{key:?} final twice"
            );
        }
    }
    assert_eq!(finals, truth, "every final row");
    let tallies = tallies.expect("a tallies line");
    let duplicates = n / 10;
    assert_eq!(tallies.counted, n, "{tallies:?}");
    assert_eq!(tallies.duplicates, duplicates, "{tallies:?}");
    assert_eq!(tallies.received, (n + duplicates) as u64, "{tallies:?}");
}

#[test]
fn a_chain_of_incremental_checkpoints_restores_exactly_after_a_kill() {
    incremental_chain(false);
}

#[test]
fn a_torn_link_falls_back_to_the_previous_checkpoint_whose_chain_is_whole() {
    incremental_chain(true);
}
