//! `adclick-aggregator cluster`: a whole cluster on one host, supervised. A timely cluster
//! cannot lose a member and go on (its peers exit with [`EXIT_PEER_LOST`]), so when any
//! process ends the supervisor stops the rest and starts the whole cluster again, which
//! restores the newest checkpoint; with a backoff that grows while restarts come in quick
//! succession, and one log line per restart naming the process and how it ended.
//!
//! The decisions are plain functions, unit-tested below: which process's end is the cause
//! ([`cause`]), whether and when to restart ([`RestartPolicy::decide`]), the hostfile's lines
//! for loopback ports or a Kubernetes StatefulSet ([`loopback_hosts`], [`statefulset_hosts`]),
//! and what the children are told ([`child_env`], read back by
//! [`Restarts::from_vars`](crate::health::Restarts::from_vars) for
//! health and `/metrics`). The I/O (spawning, signals, the status file) is [`supervise`].

use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use super::checkpoint::Store;
use super::exit::{EXIT_DATA_LOST, EXIT_FENCED, EXIT_PEER_LOST};
#[cfg(test)]
use crate::health::Restarts;
use crate::health::{ENV_LAST_CAUSE, ENV_RESTARTS};

/// How a child process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn of(status: ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(signal)) => Exit::Signal(signal),
            (None, None) => Exit::Code(-1),
        }
    }

    /// The shell's convention: the code, or 128 + the signal.
    pub fn as_code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Exit::Code(0) => write!(f, "exited with code 0 (done)"),
            Exit::Code(1) => write!(f, "exited with code 1 (an error, see its log)"),
            Exit::Code(EXIT_DATA_LOST) => write!(
                f,
                "exited with code {EXIT_DATA_LOST} (records were deleted before they were read)"
            ),
            Exit::Code(EXIT_PEER_LOST) => {
                write!(f, "exited with code {EXIT_PEER_LOST} (lost a peer process)")
            }
            Exit::Code(EXIT_FENCED) => write!(
                f,
                "exited with code {EXIT_FENCED} (fenced: another aggregator holds its \
                 checkpoint directory or output)"
            ),
            Exit::Code(101) => write!(f, "exited with code 101 (a worker panicked)"),
            Exit::Code(c) => write!(f, "exited with code {c}"),
            Exit::Signal(s) => write!(f, "was killed by signal {s} ({})", signal_name(s)),
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "another signal",
    }
}

/// One process of the cluster that ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    pub process: usize,
    pub pid: u32,
    pub exit: Exit,
    /// How long after the cluster's start.
    pub after: Duration,
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "process {} (pid {}) {} after {:.1} s",
            self.process,
            self.pid,
            self.exit,
            self.after.as_secs_f64()
        )
    }
}

/// Which of the processes that ended is the cause of the cluster's end: a process killed by
/// a signal before one that exited with an error, and that before one that only lost its
/// peer (a consequence) or finished. `None` when none ended.
pub fn cause(ended: &[Ended]) -> Option<&Ended> {
    ended.iter().min_by_key(|e| match e.exit {
        Exit::Signal(_) => 0,
        Exit::Code(0) => 3,
        Exit::Code(EXIT_PEER_LOST) => 2,
        Exit::Code(_) => 1,
    })
}

/// When to restart the cluster, and when to give up.
#[derive(Clone, Debug)]
pub struct RestartPolicy {
    /// The wait before the first of a run of quick restarts; doubled for each next one...
    pub backoff: Duration,
    /// ...up to this.
    pub max_backoff: Duration,
    /// A cluster that ran this long, or committed a checkpoint, before it failed was
    /// healthy: the backoff starts over.
    pub stable_after: Duration,
    /// Give up after this many restarts in all (`None`: never).
    pub max_restarts: Option<u64>,
    /// Exit code 1 (an error: configuration, I/O) is retried this many times in a row
    /// without a healthy run, then the supervisor gives up: the error would repeat.
    pub error_retries: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            stable_after: Duration::from_secs(60),
            max_restarts: None,
            error_retries: 3,
        }
    }
}

/// The supervisor's restarts so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub restarts: u64,
    /// Failures in a row without a healthy run in between.
    pub failing: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Restart { after: Duration },
    GiveUp { code: i32, why: String },
}

impl RestartPolicy {
    /// The wait before a restart when `failing` runs in a row failed quickly (1 or more):
    /// `backoff · 2^(failing − 1)`, at most `max_backoff`.
    pub fn backoff_for(&self, failing: u32) -> Duration {
        let doublings = failing.saturating_sub(1).min(31);
        self.backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }

    /// What to do after `cause` ended the cluster; `healthy`: the run that ended ran at least
    /// `stable_after` or committed a checkpoint. Updates `history` when it restarts.
    ///
    /// Never restarted: code 3 (records deleted before they were read: someone must look)
    /// and code 5 (fenced: another aggregator owns the checkpoint directory or the output,
    /// and a restart would fight it). Code 1 is retried `error_retries` times in a row, then
    /// given up (a configuration error repeats at every start). Everything else (a signal,
    /// a lost peer, a panic) is restarted, up to `max_restarts`.
    pub fn decide(&self, history: &mut History, cause: &Ended, healthy: bool) -> Decision {
        if healthy {
            history.failing = 0;
        }
        let failing = history.failing + 1;
        let give_up = |why: String| Decision::GiveUp {
            code: cause.exit.as_code(),
            why,
        };
        match cause.exit {
            Exit::Code(EXIT_DATA_LOST) => {
                return give_up("records were lost: restarting would go on past them".into());
            }
            Exit::Code(EXIT_FENCED) => {
                return give_up(
                    "another aggregator owns the checkpoint directory or the output".into(),
                );
            }
            Exit::Code(1) if failing > self.error_retries => {
                return give_up(format!(
                    "code 1 {failing} times in a row without a healthy run: an error that \
                     repeats (configuration, I/O)"
                ));
            }
            _ => {}
        }
        if let Some(max) = self.max_restarts.filter(|m| history.restarts >= *m) {
            return give_up(format!("restarted {max} times already (--max-restarts)"));
        }
        history.failing = failing;
        history.restarts += 1;
        Decision::Restart {
            after: self.backoff_for(failing),
        }
    }
}

/// One `host:port` per process, process `i` on `ports[i]`.
pub fn loopback_hosts(host: &str, ports: &[u16]) -> Vec<String> {
    ports.iter().map(|p| format!("{host}:{p}")).collect()
}

/// The hostfile of a Kubernetes StatefulSet `name` of `replicas` pods behind the headless
/// service `service`: pod `i` is `name-i`, reachable at its stable DNS name
/// `name-i.service[.namespace.svc.domain]`, and is process `i`.
pub fn statefulset_hosts(
    name: &str,
    service: &str,
    namespace: Option<&str>,
    domain: &str,
    replicas: usize,
    port: u16,
) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(replicas >= 1, "--replicas must be at least 1");
    for (what, label) in [("--statefulset", name), ("--service", service)]
        .into_iter()
        .chain(namespace.map(|n| ("--namespace", n)))
    {
        anyhow::ensure!(
            is_dns_label(label),
            "{what} {label:?} is not a DNS label (lower-case letters, digits and '-', at most \
             63, starting and ending with a letter or digit)"
        );
    }
    let suffix = match namespace {
        Some(ns) => format!(".{ns}.svc.{}", domain.trim_matches('.')),
        None => String::new(),
    };
    Ok((0..replicas)
        .map(|i| format!("{name}-{i}.{service}{suffix}:{port}"))
        .collect())
}

fn is_dns_label(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&s.len())
        && s.chars().all(|c| ok(c) || c == '-')
        && s.starts_with(ok)
        && s.ends_with(ok)
}

/// The hostfile's text: one address per line, process order.
pub fn hostfile_text(hosts: &[String]) -> String {
    hosts.iter().map(|h| format!("{h}\n")).collect()
}

/// What process `process` of the cluster is told beyond its flags. `ADCLICK_AGGREGATOR_*`
/// variables override flags, so whatever the flags say, the supervisor decides the shape.
pub fn child_env(
    process: usize,
    processes: usize,
    hostfile: &Path,
    restarts: u64,
    last_cause: Option<&str>,
) -> Vec<(String, OsString)> {
    let mut env = vec![
        (
            "ADCLICK_AGGREGATOR_PROCESSES".into(),
            processes.to_string().into(),
        ),
        (
            "ADCLICK_AGGREGATOR_PROCESS".into(),
            process.to_string().into(),
        ),
        ("ADCLICK_AGGREGATOR_HOSTFILE".into(), hostfile.into()),
        (ENV_RESTARTS.into(), restarts.to_string().into()),
    ];
    if let Some(cause) = last_cause {
        env.push((ENV_LAST_CAUSE.into(), cause.into()));
    }
    env
}

/// What to run and how.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The aggregator binary and the flags every process gets.
    pub exe: PathBuf,
    pub args: Vec<OsString>,
    pub processes: usize,
    pub workers: usize,
    /// Where the processes listen for each other.
    pub host: String,
    /// Process `i` listens on `base_port + i`; 0: free ports picked at each start.
    pub base_port: u16,
    /// The hostfile (`hosts`) and the status file (`cluster.json`).
    pub run_dir: PathBuf,
    /// The cluster's checkpoints, whose progress tells a healthy run.
    pub checkpoint_dir: Option<PathBuf>,
    pub policy: RestartPolicy,
    /// From SIGTERM to SIGKILL when stopping the processes.
    pub stop_grace: Duration,
}

/// The supervisor's file names in the run directory.
pub const HOSTFILE: &str = "hosts";
pub const STATUS: &str = "cluster.json";

/// Runs the cluster until it is done (every process exited 0: a batch or `--until-end`
/// job), `stop` is set (SIGTERM, SIGINT: every process is stopped, then 0), or the policy
/// gives up (that exit code). Returns the code for the supervisor to exit with.
pub fn supervise(spec: &Spec, stop: &AtomicBool) -> anyhow::Result<i32> {
    std::fs::create_dir_all(&spec.run_dir)
        .with_context(|| format!("creating {}", spec.run_dir.display()))?;
    let mut history = History::default();
    let mut last_cause: Option<String> = None;
    loop {
        if stop.load(Ordering::Acquire) {
            write_status(spec, "stopped", &history, last_cause.as_deref(), &[])?;
            return Ok(0);
        }
        let hosts = loopback_hosts(&spec.host, &ports(spec)?);
        let hostfile = spec.run_dir.join(HOSTFILE);
        std::fs::write(&hostfile, hostfile_text(&hosts))
            .with_context(|| format!("writing {}", hostfile.display()))?;
        let before = newest_checkpoint(spec);
        let started = Instant::now();
        let mut children = Vec::new();
        for process in 0..spec.processes {
            let env = child_env(
                process,
                spec.processes,
                &hostfile,
                history.restarts,
                last_cause.as_deref(),
            );
            match spawn(spec, process, env) {
                Ok(child) => children.push(Running { process, child }),
                Err(e) => {
                    stop_all(&mut children, spec.stop_grace);
                    return Err(e);
                }
            }
        }
        let pids: Vec<u32> = children.iter().map(|c| c.child.id()).collect();
        write_status(spec, "running", &history, last_cause.as_deref(), &pids)?;
        tracing::info!(
            "cluster: {} process(es) x {} worker(s) started (pids {pids:?}, hostfile {}, \
             restarts so far {})",
            spec.processes,
            spec.workers,
            hostfile.display(),
            history.restarts
        );
        let ended = match watch(&mut children, started, stop) {
            Watched::Stopped => {
                stop_all(&mut children, spec.stop_grace);
                write_status(spec, "stopped", &history, last_cause.as_deref(), &[])?;
                tracing::info!("cluster: stopped on request");
                return Ok(0);
            }
            Watched::Done => {
                write_status(spec, "done", &history, last_cause.as_deref(), &[])?;
                tracing::info!("cluster: every process finished");
                return Ok(0);
            }
            Watched::Failed(ended) => ended,
        };
        stop_all(&mut children, spec.stop_grace);
        let others = match spec.processes - 1 {
            1 => "the other process".to_string(),
            n => format!("the other {n} processes"),
        };
        let cause = cause(&ended).expect("a failure has a cause").clone();
        let healthy = cause.after >= spec.policy.stable_after || newest_checkpoint(spec) > before;
        match spec.policy.decide(&mut history, &cause, healthy) {
            Decision::GiveUp { code, why } => {
                tracing::error!(
                    "cluster: {cause}; stopped {others}; not restarting ({why}); \
                     exiting with code {code}"
                );
                write_status(spec, "failed", &history, Some(&cause.to_string()), &[])?;
                return Ok(code);
            }
            Decision::Restart { after } => {
                let from = match newest_checkpoint(spec) {
                    Some(f) => format!(
                        "the checkpoint at {}",
                        crate::timefmt::format_millis(f as i64)
                    ),
                    None => "the topic's start (no checkpoint yet)".into(),
                };
                tracing::warn!(
                    "cluster: restart {}: {cause}; stopped {others}; restarting the \
                     whole cluster from {from} in {:.1} s",
                    history.restarts,
                    after.as_secs_f64()
                );
                let at = crate::timefmt::format_millis(crate::timefmt::now_millis());
                last_cause = Some(format!("{cause}, at {at}"));
                write_status(spec, "restarting", &history, last_cause.as_deref(), &[])?;
                let until = Instant::now() + after;
                while Instant::now() < until && !stop.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

struct Running {
    process: usize,
    child: Child,
}

enum Watched {
    Stopped,
    Done,
    /// The processes that ended, at least one of them not with code 0.
    Failed(Vec<Ended>),
}

/// Waits for the first process to fail, every process to finish, or `stop`.
fn watch(children: &mut Vec<Running>, started: Instant, stop: &AtomicBool) -> Watched {
    let total = children.len();
    let mut finished = 0;
    loop {
        if stop.load(Ordering::Acquire) {
            return Watched::Stopped;
        }
        let mut failed = Vec::new();
        children.retain_mut(|r| match r.child.try_wait() {
            Ok(Some(status)) => {
                let exit = Exit::of(status);
                if exit == Exit::Code(0) {
                    finished += 1;
                } else {
                    failed.push(Ended {
                        process: r.process,
                        pid: r.child.id(),
                        exit,
                        after: started.elapsed(),
                    });
                }
                false
            }
            Ok(None) | Err(_) => true,
        });
        if !failed.is_empty() {
            return Watched::Failed(failed);
        }
        if finished == total {
            return Watched::Done;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM to every process still running, SIGKILL to those left after `grace`; all reaped.
fn stop_all(children: &mut Vec<Running>, grace: Duration) {
    for r in children.iter() {
        // SAFETY: kill(2) on our own child, not yet reaped (its pid is still ours).
        unsafe { libc::kill(r.child.id() as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        children.retain_mut(|r| matches!(r.child.try_wait(), Ok(None)));
        if children.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for r in children.iter_mut() {
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
    children.clear();
}

/// Starts process `process`: its standard output passed through (process 0 prints the query
/// server's address there, and `--output -` writes there), its log lines prefixed with
/// `[pN]`; in a process group of its own, so a terminal's Ctrl-C reaches the supervisor
/// alone, which then stops every process; and killed by the kernel should the supervisor
/// die.
fn spawn(spec: &Spec, process: usize, env: Vec<(String, OsString)>) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(&spec.exe);
    command
        .args(&spec.args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .process_group(0);
    crate::kafka::embedded::die_with_parent(&mut command);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {} (process {process})", spec.exe.display()))?;
    let stderr = child.stderr.take().expect("piped");
    std::thread::Builder::new()
        .name(format!("p{process}-log"))
        .spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[p{process}] {line}");
            }
        })?;
    Ok(child)
}

/// The ports of this start: fixed from `base_port`, or free ones picked now (held together
/// while picked, so no two are the same).
fn ports(spec: &Spec) -> anyhow::Result<Vec<u16>> {
    if spec.base_port != 0 {
        return (0..spec.processes)
            .map(|i| {
                u16::try_from(spec.base_port as usize + i).map_err(|_| {
                    anyhow::anyhow!("--base-port {} + {i} is past 65535", spec.base_port)
                })
            })
            .collect();
    }
    let held = (0..spec.processes)
        .map(|_| std::net::TcpListener::bind((spec.host.as_str(), 0)))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("picking free ports on {}", spec.host))?;
    Ok(held
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}

/// The newest complete checkpoint's frontier, if any.
fn newest_checkpoint(spec: &Spec) -> Option<u64> {
    let dir = spec.checkpoint_dir.as_deref()?;
    Store::new(dir)
        .ok()?
        .latest()
        .ok()
        .flatten()
        .map(|m| m.frontier)
}

/// `cluster.json` in the run directory, for `scripts/cluster.sh status` and tests: the
/// supervisor's pid, the state, the restarts and their last cause, each process's pid.
fn write_status(
    spec: &Spec,
    state: &str,
    history: &History,
    last_cause: Option<&str>,
    pids: &[u32],
) -> anyhow::Result<()> {
    let children: Vec<_> = pids
        .iter()
        .enumerate()
        .map(|(process, pid)| json!({"process": process, "pid": pid}))
        .collect();
    let status = json!({
        "supervisor": std::process::id(),
        "state": state,
        "processes": spec.processes,
        "workers": spec.workers,
        "restarts": history.restarts,
        "last_cause": last_cause,
        "hostfile": spec.run_dir.join(HOSTFILE),
        "children": children,
        "updated": crate::timefmt::format_millis(crate::timefmt::now_millis()),
    });
    let path = spec.run_dir.join(STATUS);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&status)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(process: usize, exit: Exit, secs: u64) -> Ended {
        Ended {
            process,
            pid: 1000 + process as u32,
            exit,
            after: Duration::from_secs(secs),
        }
    }

    #[test]
    fn the_cause_is_the_killed_or_failed_process_not_the_peer_that_lost_it() {
        let lost = ended(0, Exit::Code(EXIT_PEER_LOST), 5);
        let killed = ended(1, Exit::Signal(libc::SIGKILL), 5);
        let failed = ended(2, Exit::Code(101), 5);
        assert_eq!(cause(&[lost.clone(), killed.clone()]), Some(&killed));
        assert_eq!(cause(&[lost.clone(), failed.clone()]), Some(&failed));
        assert_eq!(cause(&[failed.clone(), killed.clone()]), Some(&killed));
        assert_eq!(cause(std::slice::from_ref(&lost)), Some(&lost));
        assert_eq!(cause(&[]), None);
        assert_eq!(
            killed.to_string(),
            "process 1 (pid 1001) was killed by signal 9 (SIGKILL) after 5.0 s"
        );
        assert_eq!(
            lost.to_string(),
            "process 0 (pid 1000) exited with code 4 (lost a peer process) after 5.0 s"
        );
    }

    #[test]
    fn backoff_doubles_while_restarts_come_quickly_and_starts_over_after_a_healthy_run() {
        let policy = RestartPolicy::default();
        let mut h = History::default();
        let crash = ended(1, Exit::Signal(libc::SIGKILL), 2);
        let waits: Vec<_> = (0..9)
            .map(|_| match policy.decide(&mut h, &crash, false) {
                Decision::Restart { after } => after.as_millis(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            waits,
            [
                500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000
            ]
        );
        assert_eq!(h.restarts, 9);
        // A run that committed a checkpoint (or ran long enough) was healthy.
        assert_eq!(
            policy.decide(&mut h, &crash, true),
            Decision::Restart {
                after: Duration::from_millis(500)
            }
        );
        assert_eq!(
            h,
            History {
                restarts: 10,
                failing: 1
            }
        );
        // Huge counts neither overflow nor pass the cap.
        assert_eq!(policy.backoff_for(u32::MAX), policy.max_backoff);
    }

    #[test]
    fn fenced_and_lost_records_are_never_restarted_errors_only_a_few_times() {
        let policy = RestartPolicy::default();
        for code in [EXIT_FENCED, EXIT_DATA_LOST] {
            let mut h = History::default();
            match policy.decide(&mut h, &ended(0, Exit::Code(code), 30), true) {
                Decision::GiveUp { code: c, .. } => assert_eq!(c, code),
                other => panic!("{other:?}"),
            }
            assert_eq!(h.restarts, 0);
        }
        let mut h = History::default();
        let error = ended(0, Exit::Code(1), 1);
        for _ in 0..policy.error_retries {
            assert!(matches!(
                policy.decide(&mut h, &error, false),
                Decision::Restart { .. }
            ));
        }
        match policy.decide(&mut h, &error, false) {
            Decision::GiveUp { code: 1, why } => assert!(why.contains("4 times in a row"), "{why}"),
            other => panic!("{other:?}"),
        }
        // An error after a healthy run is retried again.
        assert!(matches!(
            policy.decide(&mut h, &error, true),
            Decision::Restart { .. }
        ));
        let limited = RestartPolicy {
            max_restarts: Some(2),
            ..RestartPolicy::default()
        };
        let mut h = History::default();
        let crash = ended(1, Exit::Signal(libc::SIGSEGV), 100);
        for _ in 0..2 {
            assert!(matches!(
                limited.decide(&mut h, &crash, true),
                Decision::Restart { .. }
            ));
        }
        assert_eq!(
            limited.decide(&mut h, &crash, true),
            Decision::GiveUp {
                code: 128 + libc::SIGSEGV,
                why: "restarted 2 times already (--max-restarts)".into()
            }
        );
    }

    #[test]
    fn hostfiles_for_loopback_and_a_statefulset() {
        let hosts = loopback_hosts("127.0.0.1", &[2101, 2102]);
        assert_eq!(hostfile_text(&hosts), "127.0.0.1:2101\n127.0.0.1:2102\n");
        assert_eq!(
            statefulset_hosts("agg", "agg-peers", None, "cluster.local", 3, 2101).unwrap(),
            [
                "agg-0.agg-peers:2101",
                "agg-1.agg-peers:2101",
                "agg-2.agg-peers:2101"
            ]
        );
        assert_eq!(
            statefulset_hosts("agg", "peers", Some("ads"), "cluster.local.", 1, 7000).unwrap(),
            ["agg-0.peers.ads.svc.cluster.local:7000"]
        );
        for (name, service, replicas, wrong) in [
            ("Agg", "peers", 2, "--statefulset"),
            ("agg", "peers.x", 2, "--service"),
            ("agg-", "peers", 2, "--statefulset"),
            ("agg", "peers", 0, "--replicas"),
        ] {
            let e = statefulset_hosts(name, service, None, "cluster.local", replicas, 1)
                .unwrap_err()
                .to_string();
            assert!(e.contains(wrong), "{e}");
        }
        let e = statefulset_hosts("agg", "peers", Some("A_B"), "cluster.local", 1, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--namespace"), "{e}");
    }

    #[test]
    fn children_learn_their_place_and_the_restarts_from_the_environment() {
        let env = child_env(
            1,
            2,
            Path::new("/run/hosts"),
            3,
            Some("process 0 (pid 7) x"),
        );
        let vars: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| (k, v.into_string().unwrap()))
            .collect();
        assert!(vars.contains(&("ADCLICK_AGGREGATOR_PROCESS".into(), "1".into())));
        assert!(vars.contains(&("ADCLICK_AGGREGATOR_PROCESSES".into(), "2".into())));
        assert!(vars.contains(&("ADCLICK_AGGREGATOR_HOSTFILE".into(), "/run/hosts".into())));
        let mut all = vars.clone();
        all.push(("PATH".into(), "/bin".into()));
        assert_eq!(
            Restarts::from_vars(all),
            Restarts {
                supervised: true,
                count: 3,
                last_cause: Some("process 0 (pid 7) x".into()),
            }
        );
        assert_eq!(Restarts::from_vars(vec![]), Restarts::default());
        assert!(!Restarts::from_vars(vec![(ENV_RESTARTS.into(), "x".into())]).supervised);
    }
}
