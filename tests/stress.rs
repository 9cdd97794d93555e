//! The replay stress run against a real broker (issue 16 item 2), short form:
//! scripts/stress.sh for 60 s with debug binaries: a recording of 30,000 events replayed at
//! full speed into Tansu while a supervised cluster of 2 processes x 2 workers reads it, a
//! random aggregator process killed with SIGKILL every 12 s (the first after 6 s), the broker killed and restarted once; the cluster's
//! final windows and tallies must equal the batch aggregator's on the same recording exactly.
//! The script is the one implementation (long form: `scripts/stress.sh`, 10 minutes).

use adclick_testkit as common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

#[test]
#[cfg_attr(
    tansu_missing,
    ignore = "needs Tansu: scripts/tansu.sh install (CI requires it: ADCLICK_REQUIRE_TANSU=1)"
)]
fn a_stress_run_with_kills_and_a_broker_restart_equals_the_batch_truth() {
    let tansu = common::tansu::tansu();
    let work =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("stress-{}", std::process::id()));
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stress.sh"))
        .env("DURATION", "60")
        .env("RECORDS", "30000")
        .env("KILL_EVERY_S", "12")
        .env("SAMPLE_S", "5")
        .env("CHECKPOINT_MS", "1000")
        .env("SEED", "5")
        .env("WORK", &work)
        .env("AGGREGATOR", env!("CARGO_BIN_EXE_adclick-aggregator"))
        .env("LOADGEN", env!("CARGO_BIN_EXE_adclick-loadgen"))
        .env("TANSU_BIN", tansu)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    println!("stress run: {:.1} s", started.elapsed().as_secs_f64());
    assert!(
        out.status.success(),
        "scripts/stress.sh failed ({}); logs in {}",
        out.status,
        work.display()
    );
    // It did stress: processes were killed and recovered, the broker restarted, and the
    // reconcile compared windows.
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("stress: "))
        .expect("a summary line");
    assert!(
        summary.contains("1 broker restart") && !summary.contains(" 0 kill -9s"),
        "{summary}"
    );
    assert!(stdout.contains("EQUAL: final windows equal"), "{stdout}");
    std::fs::remove_dir_all(&work).unwrap();
}
