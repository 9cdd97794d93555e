//! The supervised cluster (`adclick-aggregator cluster`) and rescaling, against the load
//! generator's ground truth, exactly. Traffic flows into the embedded broker at 10x real time
//! while a 2 x 2 cluster runs under its supervisor: one process is killed with SIGKILL, the
//! supervisor restarts the whole cluster from the newest checkpoint, and health and
//! `/metrics` report the restart. Rescaling: the same checkpoints carry a 1 x 2 cluster over
//! to 2 x 2 and then to 1 x 1. Either way, a last run to the topic's end must leave every
//! final window equal to the truth.

use adclick_testkit as common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use adclick::aggregator::checkpoint::{Manifest, Store};
use adclick::loadgen::truth::{GroundTruth, TruthReport};
use common::demo_config;
use common::http::blocking_get;
use common::process::Spawned;
use common::truth::check;
use common::wait_until;
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_adclick-loadgen");
const AGGREGATOR: &str = env!("CARGO_BIN_EXE_adclick-aggregator");
/// Allowed lateness (ms), the least the load generator supports, so windows become final
/// while the cluster runs.
const LATENESS: &str = "40000";
const ADMIN: &str = "demo-admin-key-not-secret";
/// Generous for a debug build on 2 cores: a 2 x 2 cluster's start, a batch to the end.
const SLOW: Duration = Duration::from_secs(180);

/// 6000 events, 40 per simulated second at 10x real time (15 s), into the clicks topic, with
/// duplicates, late clicks, malformed records and invalid traffic; its truth when it ends.
fn paced_traffic(brokers: &str, truth: &Path) -> JoinHandle<TruthReport> {
    let mut command = Command::new(LOADGEN);
    command
        .args(["--config", &demo_config(), "--output", "kafka"])
        .args(["--brokers", brokers, "--count", "6000", "--rate", "40"])
        .args(["--pace", "10", "--allowed-lateness-ms", LATENESS])
        .args(["--seed", "11", "--ads", "200", "--hot-ad-share", "0.5"])
        .args(["--duplicate-share", "0.08", "--late-share", "0.01"])
        .args(["--invalid", "0.02", "--truth"])
        .arg(truth);
    let truth = truth.to_path_buf();
    std::thread::spawn(move || {
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t = GroundTruth::read(&truth).unwrap();
        let k = &t.tallies;
        assert!(
            k.duplicates > 200 && k.late > 10 && k.malformed > 10,
            "{k:?}"
        );
        t
    })
}

/// One job's directories and flags, the same for every run of it.
struct Job {
    dir: tempfile::TempDir,
    flags: Vec<String>,
}

impl Job {
    fn new(brokers: &str, query_listen: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = |p: &str| dir.path().join(p).display().to_string();
        let flags = [
            "--brokers",
            brokers,
            "--checkpoint-dir",
            &path("checkpoints"),
            "--output",
            &path("out.ndjson"),
            "--query-listen",
            query_listen,
        ]
        .map(String::from)
        .to_vec();
        Self { dir, flags }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `adclick-aggregator … cluster` of `processes` x `workers`, its log piped for the test.
    fn cluster(&self, processes: usize, workers: usize, more: &[&str]) -> Spawned {
        Spawned::spawn(
            Command::new(AGGREGATOR)
                .args(["--config", &demo_config()])
                .args(&self.flags)
                .args(more)
                .args(["--processes", &processes.to_string()])
                .args(["--workers", &workers.to_string(), "cluster"])
                .arg("--run-dir")
                .arg(self.path("run"))
                .args(["--backoff-ms", "200"])
                .env("ADCLICK_AGGREGATOR_CHECKPOINT_INTERVAL_MS", "200")
                .env("ADCLICK_AGGREGATOR_ALLOWED_LATENESS_MS", LATENESS)
                // Plain log lines for the assertions.
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )
    }

    /// The newest complete checkpoint.
    fn newest(&self) -> Option<Manifest> {
        Store::new(&self.path("checkpoints"))
            .unwrap()
            .latest()
            .unwrap()
    }

    /// Waits for a checkpoint past `after` taken by a cluster of `workers` workers in all.
    fn checkpoint_of(&self, workers: usize, after: u64) -> Manifest {
        let what = format!("a checkpoint of {workers} workers past {after}");
        wait_until(SLOW, &what, || {
            self.newest()
                .filter(|m| m.workers == workers && m.frontier > after)
        })
    }

    /// The supervisor's status file.
    fn status(&self) -> Value {
        let text = std::fs::read_to_string(self.path("run/cluster.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

/// Stops a supervised cluster with SIGTERM: the supervisor stops every process and exits 0.
/// Returns its log.
fn stop(mut supervisor: Spawned) -> String {
    supervisor.terminate();
    let status = supervisor.wait(Duration::from_secs(30));
    let log = supervisor.stderr();
    assert!(
        status.success(),
        "the supervisor exited with {status}: {log}"
    );
    log
}

/// Runs a supervised cluster to the topic's end; returns its log.
fn to_the_end(job: &Job, processes: usize, workers: usize) -> String {
    let mut last = job.cluster(processes, workers, &["--until-end"]);
    let status = last.wait(SLOW);
    let log = last.stderr();
    assert!(status.success(), "the last run exited with {status}: {log}");
    log
}

/// The health of the query server at `base`, once it answers.
fn health(base: &str) -> Option<Value> {
    let addr = base.trim_start_matches("http://");
    std::net::TcpStream::connect(addr).ok()?;
    let r = blocking_get(&format!("{base}/api/v1/health"), Some(ADMIN));
    (r.status == 200).then(|| r.json())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn alive(pid: u64) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[test]
fn a_supervised_2x2_cluster_restarts_after_kill_9_and_equals_the_truth() {
    let kafka = common::embedded_kafka(4);
    let brokers = kafka.bootstrap_servers();
    let query = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{query}");
    let job = Job::new(&brokers, &query);
    let generator = paced_traffic(&brokers, &job.path("truth.json"));
    let started = std::time::Instant::now();
    let supervisor = job.cluster(2, 2, &[]);
    let first = job.checkpoint_of(4, 0);
    eprintln!("first checkpoint after {:?}", started.elapsed());
    let h = wait_until(SLOW, "health", || health(&base));
    assert_eq!(
        (&h["supervised"], &h["restarts"]),
        (&Value::from(true), &0.into())
    );
    assert_eq!((&h["processes"], &h["workers"]), (&2.into(), &2.into()));
    let before = job.status();
    assert_eq!(before["state"], "running", "{before}");
    let pids: Vec<u64> = (0..2)
        .map(|i| before["children"][i]["pid"].as_u64().unwrap())
        .collect();
    assert!(
        !generator.is_finished(),
        "the kill comes while traffic flows"
    );

    // SAFETY: kill(2) on process 1 of the cluster, a child of the supervisor.
    assert_eq!(
        unsafe { libc::kill(pids[1] as libc::pid_t, libc::SIGKILL) },
        0
    );
    // Only the new process 0 can answer once the old ones are gone (and reaped).
    wait_until(SLOW, "the first run's processes to end", || {
        pids.iter().all(|p| !alive(*p))
    });
    let h = wait_until(SLOW, "health after the restart", || {
        health(&base).filter(|h| h["restarts"] == 1)
    });
    let cause = h["last_restart_cause"].as_str().unwrap().to_string();
    let expected = format!(
        "process 1 (pid {}) was killed by signal 9 (SIGKILL)",
        pids[1]
    );
    assert!(cause.starts_with(&expected), "{cause}");
    let metrics = blocking_get(&format!("{base}/metrics"), None).body;
    assert!(
        metrics
            .lines()
            .any(|l| l == "adclick_aggregator_cluster_restarts 1"),
        "{metrics}"
    );
    // The dashboard's health panel shows the restart and its cause.
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster-restarts.png");
    let shown = common::process::dashboard(&format!("{base}/"), ADMIN, &screenshot);
    let panel = &shown["health"];
    assert_eq!(
        (&panel["supervised"], &panel["restarts"]),
        (&Value::from(true), &1.into()),
        "{panel}"
    );
    assert_eq!(
        panel["last_restart_cause"], h["last_restart_cause"],
        "{panel}"
    );
    let after = job.status();
    assert_eq!(
        (&after["state"], &after["restarts"]),
        (&"running".into(), &1.into())
    );
    // The restarted cluster goes on: a checkpoint past the first.
    eprintln!("restarted and serving after {:?}", started.elapsed());
    job.checkpoint_of(4, first.frontier);
    let truth = generator.join().unwrap();
    let log = stop(supervisor);
    assert_eq!(
        log.matches("cluster: restart ").count(),
        1,
        "one line per restart: {log}"
    );
    let restart = log
        .find(&format!("cluster: restart 1: {expected}"))
        .unwrap_or_else(|| panic!("no restart line: {log}"));
    // The restarted cluster went on from a checkpoint, it did not start over.
    assert!(
        log[restart..].contains("[p0] ")
            && log[restart..].contains("restoring checkpoint frontier="),
        "{log}"
    );
    for i in 0..2 {
        let pid = after["children"][i]["pid"].as_u64().unwrap();
        assert!(!alive(pid), "process {i} stopped with its supervisor");
    }
    assert_eq!(job.status()["state"], "stopped");

    to_the_end(&job, 2, 2);
    check(
        &job.path("out.ndjson"),
        &truth,
        "a supervised 2x2 cluster after kill -9",
    );
}

#[test]
fn rescaled_from_1x2_to_2x2_to_1x1_on_the_same_checkpoints_equals_the_truth() {
    let kafka = common::embedded_kafka(4);
    let brokers = kafka.bootstrap_servers();
    let job = Job::new(&brokers, &format!("127.0.0.1:{}", free_port()));
    let generator = paced_traffic(&brokers, &job.path("truth.json"));
    let started = std::time::Instant::now();

    let one_by_two = job.cluster(1, 2, &[]);
    let a = job.checkpoint_of(2, 0);
    // A few more checkpoints, so the 1 x 2 run holds some state before it stops.
    job.checkpoint_of(2, a.frontier + 5_000);
    stop(one_by_two);
    let a = job.newest().unwrap();
    eprintln!("1 x 2 stopped after {:?}", started.elapsed());
    assert!(
        !generator.is_finished(),
        "the rescaled cluster reads new traffic too"
    );

    let two_by_two = job.cluster(2, 2, &[]);
    job.checkpoint_of(4, a.frontier);
    let log = stop(two_by_two);
    let restored = format!("restoring checkpoint frontier={} workers=2", a.frontier);
    assert!(log.contains(&restored), "{log}");
    let b = job.newest().unwrap();
    eprintln!("2 x 2 stopped after {:?}", started.elapsed());
    assert_eq!(b.workers, 4);

    let truth = generator.join().unwrap();
    let log = to_the_end(&job, 1, 1);
    let restored = format!("restoring checkpoint frontier={} workers=4", b.frontier);
    assert!(log.contains(&restored), "{log}");
    check(
        &job.path("out.ndjson"),
        &truth,
        "rescaled 1x2, then 2x2, then 1x1",
    );
    // What cannot change across a restart is refused, by name, before anything is touched.
    let refused = Command::new(AGGREGATOR)
        .args(["--config", &demo_config()])
        .args(&job.flags)
        .arg("--until-end")
        .env("ADCLICK_AGGREGATOR_ALLOWED_LATENESS_MS", "60000")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(
        err.contains("aggregator.allowed_lateness_ms = 40000 (this run: 60000)"),
        "{err}"
    );
}

/// What a restart cannot fix is not restarted: a cluster fenced by another aggregator holding
/// its checkpoint directory and output exits with code 5 at once, and a configuration error
/// stops the supervisor before any process starts.
#[test]
fn fenced_or_misconfigured_clusters_are_not_restarted() {
    let kafka = common::embedded_kafka(2);
    let brokers = kafka.bootstrap_servers();
    let job = Job::new(&brokers, "127.0.0.1:0");
    let holder = Spawned::spawn(
        Command::new(AGGREGATOR)
            .args(["--config", &demo_config()])
            .args(&job.flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let lock = job.path("checkpoints/LOCK.process-0");
    let holding = format!("pid {}", holder.child.id());
    wait_until(SLOW, "the other aggregator's lock", || {
        std::fs::read_to_string(&lock).is_ok_and(|t| t.contains(&holding))
    });
    let mut fenced = job.cluster(2, 1, &[]);
    let status = fenced.wait(SLOW);
    let log = fenced.stderr();
    assert_eq!(status.code(), Some(5), "{log}");
    assert!(
        log.contains("exited with code 5 (fenced") && log.contains("not restarting"),
        "{log}"
    );
    assert_eq!(log.matches("cluster: restart ").count(), 0, "{log}");
    let s = job.status();
    assert_eq!((&s["state"], &s["restarts"]), (&"failed".into(), &0.into()));
    drop(holder);

    let mut misconfigured = job.cluster(2, 0, &[]);
    let status = misconfigured.wait(SLOW);
    let log = misconfigured.stderr();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("aggregator.workers must be at least 1"),
        "{log}"
    );
    assert!(!log.contains("started (pids"), "no process started: {log}");
}
