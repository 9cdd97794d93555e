//! What this process decides once, before the timely cluster starts, and shares with every
//! one of its workers: the [`Cluster`].

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::checkpoint::{self, CheckpointConfig, Restored};
use super::config::AggregatorConfig;
use super::exit::{Failure, Fenced};
use super::fence::{self, Fence};
use super::input::Input;
use super::sink::aggregates::{AggregatesSink, Committer};
use super::sink::parquet;
use crate::event::enrich::Enricher;
use crate::health::Health;
use crate::memory::Budget;
use crate::query::metrics::QueryMetrics;
use crate::query::{self, Ask, Bridge, Server};

/// This process's part of the cluster, built once by [`Cluster::start`] and read by every
/// worker (each gets an `Arc` of it; nothing in it is cloned per worker):
///
/// - the settings, the input and the enricher, as given;
/// - [`Health`] and the query [`Server`] state, which the HTTP server (process 0, streaming
///   jobs only) reads while the workers write;
/// - the restored checkpoint, if any, with this run's id and fencing epoch;
/// - the [`Failure`] that stops every worker on an error of the input;
/// - the fences, held until the process ends: nothing is read or written before this process
///   owns its checkpoint directory and output.
pub struct Cluster {
    pub cfg: AggregatorConfig,
    pub input: Input,
    pub enricher: Enricher,
    /// When the process started: a restart's downtime is measured from here.
    pub started: Instant,
    pub health: Arc<Health>,
    /// The query server's state; its bridge carries asks to the cluster.
    pub server: Arc<Server>,
    /// Streaming jobs answer queries; a batch job ends when its dataflows do.
    pub serving: bool,
    /// The asks from the HTTP server, taken by the one worker that batches them.
    asks: Mutex<Option<Receiver<Ask>>>,
    /// Checkpoints are for Kafka, whose offsets can be sought; a job over files starts over.
    pub checkpoints: Option<CheckpointConfig>,
    /// Shared with the threads that build each worker's dedup state from it.
    pub restored: Option<Arc<Restored>>,
    /// This run's id, carried by its records in the click-aggregates topic.
    pub run: String,
    /// The fencing epoch this run claimed (process 0), else 0.
    pub epoch: u64,
    /// Process 0's click-aggregates sink, taken by worker 0's report writer.
    aggregates: Mutex<Option<AggregatesSink>>,
    /// An error of the input that stops every worker, and `run` with it.
    pub failure: Failure,
    /// The process's memory budget, which holds the sources back while it is exceeded.
    pub budget: Arc<Budget>,
    _fences: Vec<Fence>,
}

impl Cluster {
    /// Starts the query server (streaming, process 0), takes the fences, restores the newest
    /// checkpoint, claims an epoch and readies the sinks: everything before the first worker.
    pub fn start(
        cfg: AggregatorConfig,
        input: Input,
        enricher: Enricher,
        started: Instant,
    ) -> anyhow::Result<Self> {
        let health = Arc::new(Health::new(cfg.workers, cfg.processes.max(1)));
        // Streaming jobs answer queries; process 0 runs the HTTP server, every process takes
        // part in answering.
        let serving = !input.is_batch();
        let (server, asks) = query_server(&cfg, health.clone(), serving)?;
        // With --until-end, a job goes on from the last checkpoint to the topic's end.
        let checkpoints = match &input {
            Input::Kafka { .. } => cfg.checkpoints(),
            Input::Files(_) | Input::Archive(_) => None,
        };
        if let Some(c) = &checkpoints {
            let ms = |d: Duration| d.as_millis() as u64;
            health
                .checkpoint_interval_ms
                .store(ms(c.interval), Ordering::Relaxed);
            let now = crate::timefmt::now_millis() as u64;
            health
                .checkpoint_committed_at_ms
                .store(now, Ordering::Relaxed);
        }
        // Fencing first: nothing is read or written before this process owns its share.
        let fences = fence::lock_process(
            checkpoints.as_ref().map(|c| c.dir.as_path()),
            (cfg.process == 0).then_some(cfg.output.as_str()),
            cfg.process,
        )
        .map_err(|e| Fenced(format!("{e:#}")))?;
        let restored = match &checkpoints {
            Some(c) => checkpoint::restore(c, cfg.process == 0)?
                .map(|r| Arc::new(r.shared_by(cfg.workers))),
            None => None,
        };
        let epoch = match (&checkpoints, cfg.process) {
            (Some(c), 0) => checkpoint::Store::new(&c.dir)?.claim_epoch()?,
            _ => 0,
        };
        let run = uuid::Uuid::now_v7().to_string();
        let aggregates = aggregates_sink(&cfg, &input, &run, restored.as_deref())?;
        if let Some(dir) = &cfg.parquet_dir
            && cfg.process == 0
        {
            parquet::recover(dir, restored.as_ref().map(|r| r.frontier))?;
            if checkpoints.is_none() {
                tracing::warn!("no checkpoint directory: the raw Parquet archive is not written");
            }
        }
        let budget = Budget::start(cfg.memory_budget_mb);
        *health.memory.lock().unwrap() = Some(budget.clone());
        Ok(Self {
            cfg,
            input,
            enricher,
            started,
            health,
            server,
            serving,
            asks: Mutex::new(Some(asks)),
            checkpoints,
            restored,
            run,
            epoch,
            aggregates: Mutex::new(aggregates),
            failure: Failure::default(),
            budget,
            _fences: fences,
        })
    }

    /// The asks from the HTTP server, for the one worker that takes them (worker 0 of process
    /// 0); `None` for every other, and once taken.
    pub fn take_asks(&self, index: usize) -> Option<Receiver<Ask>> {
        (index == 0)
            .then(|| self.asks.lock().unwrap().take())
            .flatten()
    }

    /// The click-aggregates sink's committer, for the checkpointer of worker 0 (which commits
    /// the sink's records of each checkpoint).
    pub fn aggregates_committer(&self, index: usize) -> Option<Committer> {
        (index == 0)
            .then(|| {
                self.aggregates
                    .lock()
                    .unwrap()
                    .as_ref()
                    .map(|s| s.committer())
            })
            .flatten()
    }

    /// The click-aggregates sink itself, for worker 0's report writer.
    pub fn take_aggregates(&self) -> Option<AggregatesSink> {
        self.aggregates.lock().unwrap().take()
    }

    /// After every worker has finished: this process's last archive files, written by the
    /// workers as their input ran out, are published.
    pub fn finish(&self) -> anyhow::Result<()> {
        if let Some(dir) = &self.cfg.parquet_dir {
            parquet::commit(dir, u64::MAX)?;
        }
        Ok(())
    }
}

/// The query server's state, and on process 0 of a streaming job the HTTP server itself.
fn query_server(
    cfg: &AggregatorConfig,
    health: Arc<Health>,
    serving: bool,
) -> anyhow::Result<(Arc<Server>, Receiver<Ask>)> {
    let (bridge, asks) = Bridge::new();
    let server = Arc::new(Server {
        bridge,
        health,
        keys: cfg.api_keys.clone(),
        minute_retention_ms: cfg.minute_retention_ms,
        top_n: cfg.top_n,
        top_windows: cfg.top_window_minutes.clone(),
        allowed_lateness_ms: cfg.allowed_lateness_ms,
        reach: cfg.reach,
        metrics: QueryMetrics::watching_disks(disks(cfg)),
    });
    if serving && cfg.process == 0 {
        let addr = query::spawn(&cfg.query_listen, cfg.query_limits(), server.clone())?;
        println!("query server: http://{addr}/");
    }
    Ok((server, asks))
}

/// The directories whose filesystems `/metrics` reports as `disk_used_ratio{dir}`.
fn disks(cfg: &AggregatorConfig) -> Vec<(&'static str, std::path::PathBuf)> {
    let output = std::path::Path::new(&cfg.output);
    let output_dir = (cfg.output != "-")
        .then(|| output.parent().filter(|p| !p.as_os_str().is_empty()))
        .map(|p| p.map_or_else(|| ".".into(), |p| p.to_path_buf()));
    [
        ("checkpoint", cfg.checkpoint_dir.clone()),
        ("parquet", cfg.parquet_dir.clone()),
        ("output", output_dir),
    ]
    .into_iter()
    .filter_map(|(name, dir)| Some((name, dir?)))
    .collect()
}

/// Process 0's click-aggregates sink (Kafka input only). After a restore, the restored
/// checkpoint's records are committed again: the crash may have come between the manifest
/// and its commit markers.
fn aggregates_sink(
    cfg: &AggregatorConfig,
    input: &Input,
    run: &str,
    restored: Option<&Restored>,
) -> anyhow::Result<Option<AggregatesSink>> {
    let Input::Kafka { kafka, .. } = input else {
        return Ok(None);
    };
    if cfg.process != 0 {
        return Ok(None);
    }
    let since = restored.map_or(0, |r| r.frontier);
    let sink = AggregatesSink::new(kafka, run, since)?;
    if let Some(r) = restored {
        while let Err(e) = sink.committer().commit(&r.run, r.frontier) {
            tracing::warn!("click-aggregates: re-committing {}: {e:#}", r.frontier);
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    Ok(Some(sink))
}
