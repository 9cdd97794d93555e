//! One worker's aggregation dataflow: its source (by input kind, resumed from a checkpoint),
//! `adclick_dataflows::resumed_aggregate`, the arrangements that queries read, and the sinks.
//! Built the same way on every worker; worker 0 alone writes the report.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use adclick_dataflows::anomaly;
use adclick_dataflows::dedup::{DedupCheckpoints, DedupState};
use adclick_dataflows::names::Dictionary;
use adclick_dataflows::pending::Pending;
use adclick_dataflows::report::{Pace, resumed_reports};
use adclick_dataflows::source::{Flow, SourceEvent, SourceOptions, checkpointed_source};
use adclick_dataflows::time::{DAY_MS, HOUR_MS, MINUTE_MS};
use adclick_dataflows::{Aggregates, Resume, Traces, resumed_aggregate};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::{Concatenate, Exchange as _, Input as _, Inspect, Probe};
use timely::dataflow::{ProbeHandle, Scope, Stream};
use timely::worker::Worker;

use super::checkpoint::{Checkpointer, Publish};
use super::cluster::Cluster;
use super::input::Input;
use super::sink::output::{Out, Writer};
use super::sink::parquet::WindowFiles;
use super::sink::report::{ReportSink, Sinks};
use super::source::archive::ArchiveReader;
use super::source::file::FileReader;
use super::source::kafka::{KafkaReader, ReadSettings};

pub(super) fn now_ms() -> u64 {
    crate::timefmt::now_millis() as u64
}

/// What a worker's aggregation dataflow gives its loop.
pub(super) struct Aggregation {
    /// The arranged rows, for queries and compaction.
    pub traces: Traces,
    /// Kafka input with a checkpoint directory only.
    pub checkpointer: Option<Checkpointer>,
    /// The minute rows and the names: every window before its frontier is complete.
    pub probe: ProbeHandle<u64>,
    /// The source's output: what the checkpointer may cut at.
    pub sources: ProbeHandle<u64>,
    /// Worker 0's dimension texts, for query answers.
    pub dictionary: Rc<RefCell<Dictionary>>,
}

/// One worker's part of the aggregation as a named piece, readable on its own.
struct Builder<'c> {
    cluster: &'c Cluster,
    index: usize,
    peers: usize,
}

impl Aggregation {
    /// Builds the aggregation dataflow on `worker`.
    pub fn build(worker: &mut Worker, cluster: &Cluster) -> Self {
        let b = Builder {
            cluster,
            index: worker.index(),
            peers: worker.peers(),
        };
        let probe = ProbeHandle::new();
        let sources = ProbeHandle::new();
        let dictionary = Rc::new(RefCell::new(Dictionary::new()));
        let (traces, checkpointer) = worker.dataflow::<u64, _, _>(|scope| {
            let mut checkpointer = None;
            let events = b.source(scope, &mut checkpointer, &probe);
            events.clone().probe_with(&sources);
            let resume = b.resume(scope, checkpointer.as_mut());
            let a = resumed_aggregate(events, &b.cluster.cfg.aggregate(), resume);
            let traces = Traces::arrange(&a);
            if let Some(c) = &checkpointer {
                c.watch(&traces);
            }
            a.minute.clone().probe_with(&probe);
            // Worker 0's dictionary for query answers; the probe covers it, so texts of every
            // time before the frontier are in it when a query reads there.
            let names = dictionary.clone();
            a.names
                .clone()
                .exchange(|_| 0)
                .inspect(move |n| names.borrow_mut().insert(n.clone()))
                .probe_with(&probe);
            b.alerts(&a);
            b.sinks(scope, a, checkpointer.as_ref());
            (traces, checkpointer)
        });
        Self {
            traces,
            checkpointer,
            probe,
            sources,
            dictionary,
        }
    }
}

impl Builder<'_> {
    /// The clicks of this worker's share of the input, read no further ahead of `done` (the
    /// end of the dataflow) than the flow control allows. A Kafka source is the one that
    /// checkpoints: it sets `checkpointer` when a checkpoint directory is configured.
    fn source<'s>(
        &self,
        scope: Scope<'s, u64>,
        checkpointer: &mut Option<Checkpointer>,
        done: &ProbeHandle<u64>,
    ) -> Stream<'s, u64, Vec<SourceEvent>> {
        let (index, peers, cfg) = (self.index, self.peers, &self.cluster.cfg);
        let time = cfg.time(self.cluster.input.is_batch());
        let flow = Flow {
            done: done.clone(),
            read_ahead_ms: cfg.read_ahead_ms,
            over_budget: self.cluster.budget.over.clone(),
        };
        let plain = SourceOptions {
            flow: Some(flow),
            ..SourceOptions::default()
        };
        match &self.cluster.input {
            Input::Files(files) => {
                let enricher = self.cluster.enricher.clone();
                let failure = self.cluster.failure.clone();
                let skew = cfg.max_future_skew_ms;
                let reader = FileReader::new(files, index, peers, enricher, skew, failure);
                checkpointed_source(scope, "FileSource", reader, time, now_ms, plain)
            }
            Input::Archive(archive) => {
                let reader = ArchiveReader::new(archive, index, peers);
                checkpointed_source(scope, "ArchiveSource", reader, time, now_ms, plain)
            }
            Input::Kafka { kafka, until_end } => {
                let restored = self.cluster.restored.as_ref();
                let offsets = restored.map(|r| r.offsets()).unwrap_or_default();
                let settings = ReadSettings {
                    until_end: *until_end,
                    max_future_skew_ms: cfg.max_future_skew_ms,
                    on_gap: cfg.on_gap,
                };
                let health = self.cluster.health.clone();
                let (brokers, topic) = (&kafka.brokers, &kafka.clicks_topic);
                let mut reader =
                    KafkaReader::new(brokers, topic, index, peers, health, &offsets, settings)
                        .unwrap_or_else(|e| panic!("worker {index}: {e:#}"));
                let partitions = reader.partition_ids().to_vec();
                let snapshot = restored.map(|r| r.source_for(index, peers, &partitions));
                *checkpointer = self.checkpointer(partitions);
                if let Some(raw) = checkpointer.as_ref().and_then(|c| c.raw.clone()) {
                    reader.archive_into(raw);
                }
                let opts = SourceOptions {
                    cuts: checkpointer.as_ref().map(|c| c.cuts.clone()),
                    restore: snapshot,
                    ..plain
                };
                checkpointed_source(scope, "KafkaSource", reader, time, now_ms, opts)
            }
        }
    }

    /// The checkpointer of this worker's Kafka `partitions`, if checkpoints are configured.
    fn checkpointer(&self, partitions: Vec<i32>) -> Option<Checkpointer> {
        let (index, peers, cluster) = (self.index, self.peers, self.cluster);
        let c = cluster.checkpoints.clone()?;
        let publish = Publish {
            run: cluster.run.clone(),
            // Worker 0 commits the click-aggregates records of each checkpoint.
            sinks: cluster.aggregates_committer(index),
            parquet: cluster.cfg.parquet_dir.clone(),
            health: cluster.health.clone(),
            epoch: cluster.epoch,
        };
        let checkpointer = Checkpointer::new(c, index, peers, partitions, publish)
            .unwrap_or_else(|e| panic!("worker {index}: {e:#}"));
        Some(checkpointer)
    }

    /// Where the aggregation starts: the restored rows and dedup state, if any, and the
    /// checkpoint requests its dedup answers. The rows are served at once; the dedup state
    /// (the most of a checkpoint) is built on a thread of its own meanwhile, and the clicks
    /// after the checkpoint wait for it in the dataflow.
    fn resume<'s>(
        &self,
        scope: Scope<'s, u64>,
        checkpointer: Option<&mut Checkpointer>,
    ) -> Resume<'s> {
        let (index, peers) = (self.index, self.peers);
        let restored = self.cluster.restored.as_ref();
        let acfg = self.cluster.cfg.aggregate();
        let checkpoints = checkpointer.map(|c| {
            let (input, requests) = scope.new_input::<Vec<u64>>();
            // Worker 0 asks; the other workers' inputs close here.
            if index == 0 {
                c.take_requests(input, restored.map(|r| r.frontier));
            }
            DedupCheckpoints {
                requests: requests.broadcast(),
                save: c.save_dedup(),
                unsaved_from: c.unsaved_from(),
            }
        });
        let Some(r) = restored else {
            return Resume::now(&acfg, DedupState::new(acfg.dedup()), None, checkpoints);
        };
        let rows = r.take_rows(index, peers);
        let (dedup, fill_dedup) = Pending::later();
        let (recent, fill_recent) = Pending::later();
        let (r, started) = (r.clone(), self.cluster.started);
        let health = self.cluster.health.clone();
        health.restoring_workers.fetch_add(1, Ordering::Relaxed);
        std::thread::Builder::new()
            .name(format!("restore-dedup-{index}"))
            .spawn(move || {
                yield_to_workers();
                let building = Instant::now();
                let state = r.take_dedup(index, peers, acfg.dedup());
                let clicks = adclick_dataflows::restored_clicks(&acfg, r.frontier, &state);
                tracing::info!(
                    worker = index,
                    winners = state.len(),
                    recent = clicks.len(),
                    build_ms = building.elapsed().as_millis() as u64,
                    ms = started.elapsed().as_millis() as u64,
                    "dedup state restored"
                );
                fill_recent.fill(clicks);
                fill_dedup.fill(state);
                health.restoring_workers.fetch_sub(1, Ordering::Relaxed);
            })
            .expect("spawning a restore thread");
        Resume {
            dedup,
            recent,
            rows: Some(rows),
            checkpoints,
        }
    }

    /// Traffic anomaly alerts from the minute rows, to worker 0's alert sink.
    fn alerts(&self, a: &Aggregates<'_>) {
        let cfg = &self.cluster.cfg;
        if !cfg.alerts.enabled {
            return;
        }
        let alerts = anomaly::alerts(a.minute.clone(), &cfg.alerts, cfg.allowed_lateness_ms);
        let kafka = match &self.cluster.input {
            Input::Kafka { kafka, .. } => Some(kafka),
            Input::Files(_) | Input::Archive(_) => None,
        };
        let health = self.cluster.health.clone();
        super::sink::alerts::alerts_sink(alerts, a.names.clone(), health, kafka);
    }

    /// Late and rejected clicks to their topics (every worker), and every line to worker 0's
    /// report writer, which also feeds the click-aggregates topic and the Parquet windows.
    fn sinks<'s>(
        &self,
        scope: Scope<'s, u64>,
        a: Aggregates<'s>,
        checkpointer: Option<&Checkpointer>,
    ) {
        let lateness = self.cluster.cfg.allowed_lateness_ms;
        // A restored run does not report again what the checkpoint's output already has.
        let restored_at = self.cluster.restored.as_ref().map(|r| r.frontier);
        // The writer's input frontier paces the report operators' final reports.
        let pace = Pace::default();
        let reports = |rows, window_ms| {
            resumed_reports(rows, window_ms, lateness, restored_at, Some(pace.clone()))
        };
        if let Input::Kafka { kafka, .. } = &self.cluster.input {
            let failure = &self.cluster.failure;
            super::sink::kafka::late_to_kafka(a.late.clone(), kafka, failure);
            super::sink::kafka::rejected_to_kafka(a.rejected.clone(), kafka, failure);
        }
        // Each group's final reach sketch, once (none with reach off: no sketches).
        let reach = adclick_dataflows::reach::final_reports(a.reach, lateness, restored_at);
        let lines = scope.concatenate([
            reach.map(Out::Reach),
            a.received.map(Out::Received),
            a.lost.map(Out::Lost),
            reports(a.minute, MINUTE_MS).map(Out::Report),
            reports(a.hour, HOUR_MS).map(Out::Report),
            reports(a.day, DAY_MS).map(Out::Report),
            a.late.map(|c| Out::Late(Box::new(c))),
            a.rejected.map(|r| Out::Rejected(Box::new(r))),
            a.names.map(Out::Name),
        ]);
        if self.index != 0 {
            lines.sink(
                Exchange::new(|_: &Out| 0),
                "WriteReports",
                move |(_, frontier)| pace.set(frontier.frontier().first().copied()),
            );
            return;
        }
        let mut sink = self.report_sink(checkpointer);
        let failure = self.cluster.failure.clone();
        lines.sink(
            Exchange::new(|_: &Out| 0),
            "WriteReports",
            move |(input, frontier)| {
                input.for_each(|cap, data| {
                    sink.add(*cap.least().expect("a totally ordered time"), data);
                });
                // A report that cannot be written (or a final window the topic refused)
                // stops the job, with its message.
                if !failure.failed()
                    && let Err(e) = sink.write_ready(frontier)
                {
                    failure.fail(e.context("writing the reports"));
                }
                pace.set(frontier.frontier().first().copied());
            },
        );
    }

    /// Worker 0's report writer, resumed where the restored checkpoint left the output.
    fn report_sink(&self, checkpointer: Option<&Checkpointer>) -> ReportSink {
        let cluster = self.cluster;
        let output = &cluster.cfg.output;
        let resumed = cluster.restored.as_ref().and_then(|r| r.writer());
        let writer =
            Writer::resume(output, resumed).unwrap_or_else(|e| panic!("opening {output}: {e}"));
        let hook = checkpointer.map(|c| c.writer_hook());
        let windows = cluster
            .cfg
            .parquet_dir
            .as_ref()
            .map(|d| WindowFiles::new(d).unwrap_or_else(|e| panic!("{}: {e:#}", d.display())));
        let sinks = Sinks {
            kafka: cluster.take_aggregates(),
            windows,
        };
        let interval = std::time::Duration::from_millis(cluster.cfg.checkpoint_interval_ms);
        let health = cluster.health.clone();
        ReportSink::new(writer, sinks, hook, interval, &cluster.run, health)
    }
}

/// Lowers the calling thread's priority (and that of the threads it starts), for the restore
/// work off the path to serving: a restored dedup state takes its threads tens of seconds at
/// 100 M clicks, and on a machine with as many cores as workers they would otherwise take
/// half the CPU from the workers loading the rows that the restore serves first (Linux: the
/// nice value is per thread, and `0` names the calling one).
fn yield_to_workers() {
    // SAFETY: a plain system call on the calling thread; a failure leaves the priority as is.
    let lowered = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    if lowered != 0 {
        tracing::debug!(
            "lowering a restore thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}
