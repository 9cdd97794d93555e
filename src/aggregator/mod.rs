//! `adclick-aggregator`: the timely cluster that turns the clicks topic (or files) into
//! deduplicated, windowed counts. The dataflow itself is `adclick_dataflows::aggregate`; this
//! module wires sources and sinks around it and runs it on the configured cluster shape.

pub mod checkpoint;
pub mod config;
pub mod exit;
pub mod fence;
pub mod health_share;
pub mod raw;
pub mod reconcile;
pub mod sink;
pub mod source;

/// The output lines and tallies, by the path the tests and tools know them by.
pub use sink::output;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adclick_dataflows::dedup::{DedupCheckpoints, DedupState};
use adclick_dataflows::names::Dictionary;
use adclick_dataflows::query::{Query, QueryTime, Stamps, serve};
use adclick_dataflows::report::reports;
use adclick_dataflows::source::{checkpointed_source, clock_source};
use adclick_dataflows::time::{DAY_MS, HOUR_MS, MINUTE_MS};
use adclick_dataflows::{Resume, Traces, resumed_aggregate};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Concatenate;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;

use crate::event::enrich::Enricher;
use crate::health::Health;
use crate::query::metrics::QueryMetrics;
use crate::query::render::Resolved;
use crate::query::{self, Ask, Bridge, Server};
use checkpoint::{Checkpointer, Publish};
pub use config::{AggregatorConfig, OnGap};
use health_share::HealthShare;
use sink::aggregates::AggregatesSink;
use sink::output::{Out, Writer};
use sink::parquet::{self, WindowFiles};
use sink::report::{ReportSink, Sinks};
use source::archive::ArchiveReader;
use source::file::FileReader;
use source::kafka::{KafkaReader, ReadSettings};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Exchange as _, Input as _, Inspect, Probe};

/// Where the clicks come from.
#[derive(Clone, Debug)]
pub enum Input {
    /// NDJSON events or seed-003 log lines; a batch job.
    Files(Vec<PathBuf>),
    /// The clicks topic; with `until_end`, a batch job over what the topic holds at start.
    Kafka {
        kafka: crate::config::KafkaConfig,
        until_end: bool,
    },
    /// The raw Parquet archive's clicks, by partition; a batch job (replay, reconciliation)
    /// that writes only its own output.
    Archive(Arc<BTreeMap<i32, Vec<raw::Archived>>>),
}

impl Input {
    fn is_batch(&self) -> bool {
        matches!(
            self,
            Input::Files(_)
                | Input::Archive(_)
                | Input::Kafka {
                    until_end: true,
                    ..
                }
        )
    }
}

pub use exit::{EXIT_DATA_LOST, EXIT_FENCED, EXIT_PEER_LOST, Fenced, peer_lost};

fn now_ms() -> u64 {
    crate::timefmt::now_millis() as u64
}

/// Window completion latency: for each minute end the frontier passed since the last look,
/// the wall clock minus (end + out-of-orderness bound), the earliest it could have completed.
/// The first real frontier is where observations start: before it the frontier sat at 0 (or
/// below a restored checkpoint), and counting every minute since then would record decades.
fn observe_completions(server: &Server, last: Option<u64>, frontier: u64, bound_ms: u64) {
    let Some(last) = last.filter(|l| *l > 0) else {
        return;
    };
    let now = now_ms();
    let mut end = last - last % MINUTE_MS + MINUTE_MS;
    while end <= frontier {
        let late_by = now.saturating_sub(end + bound_ms);
        server
            .metrics
            .window_completion
            .observe(late_by as f64 / 1000.0);
        end += MINUTE_MS;
    }
}

/// Runs this process's part of the cluster until the input is exhausted (batch) or forever.
pub fn run(cfg: AggregatorConfig, input: Input, enricher: Enricher) -> anyhow::Result<()> {
    let process_started = Instant::now();
    cfg.check()?;
    let timely_config = timely::Config {
        communication: cfg.communication()?,
        worker: timely::WorkerConfig::default(),
    };
    let health = Arc::new(Health::new(cfg.workers, cfg.processes.max(1)));
    // Streaming jobs answer queries; process 0 runs the HTTP server, every process takes part
    // in answering.
    let serving = !input.is_batch();
    let (bridge, asks) = Bridge::new();
    let asks = Arc::new(Mutex::new(Some(asks)));
    let server = Arc::new(Server {
        bridge: bridge.clone(),
        health: health.clone(),
        keys: cfg.api_keys.clone(),
        minute_retention_ms: cfg.minute_retention_ms,
        top_n: cfg.top_n,
        top_windows: cfg.top_window_minutes.clone(),
        metrics: QueryMetrics::default(),
    });
    if serving && cfg.process == 0 {
        let addr = query::spawn(&cfg.query_listen, cfg.query_limits(), server.clone())?;
        println!("query server: http://{addr}/");
    }
    // Checkpoints are for Kafka, whose offsets can be sought; a job over files starts over.
    // With --until-end, a job goes on from the last checkpoint to the topic's end.
    let checkpoints = match &input {
        Input::Kafka { .. } => cfg.checkpoints(),
        Input::Files(_) | Input::Archive(_) => None,
    };
    // Fencing first: nothing is read or written before this process owns its share.
    let _fences = fence::lock_process(
        checkpoints.as_ref().map(|c| c.dir.as_path()),
        (cfg.process == 0).then_some(cfg.output.as_str()),
        cfg.process,
    )
    .map_err(|e| Fenced(format!("{e:#}")))?;
    let restored = match &checkpoints {
        Some(c) => checkpoint::restore(c, cfg.process == 0)?.map(Arc::new),
        None => None,
    };
    let epoch = match (&checkpoints, cfg.process) {
        (Some(c), 0) => checkpoint::Store::new(&c.dir)?.claim_epoch()?,
        _ => 0,
    };
    // This run's id, carried by its records in the click-aggregates topic.
    let run = uuid::Uuid::now_v7().to_string();
    let interval = Duration::from_millis(cfg.checkpoint_interval_ms);
    let aggregates = match &input {
        Input::Kafka { kafka, .. } if cfg.process == 0 => {
            let since = restored.as_ref().map_or(0, |r| r.frontier);
            let sink = AggregatesSink::new(kafka, &run, since)?;
            if let Some(r) = &restored {
                // The crash may have come between the manifest and its commit markers.
                while let Err(e) = sink.committer().commit(&r.run, r.frontier) {
                    tracing::warn!("click-aggregates: re-committing {}: {e:#}", r.frontier);
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            Some(sink)
        }
        _ => None,
    };
    let aggregates = Arc::new(Mutex::new(aggregates));
    if let Some(dir) = &cfg.parquet_dir
        && cfg.process == 0
    {
        parquet::recover(dir, restored.as_ref().map(|r| r.frontier))?;
        if checkpoints.is_none() {
            tracing::warn!("no checkpoint directory: the raw Parquet archive is not written");
        }
    }
    let archive_dir = cfg.parquet_dir.clone();
    let results = timely::execute(timely_config, move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let health = health.clone();
        let health_in = health.clone();
        let dictionary = Rc::new(RefCell::new(Dictionary::new()));
        let dictionary_in = dictionary.clone();
        let time = cfg.time(input.is_batch());
        let acfg = cfg.aggregate();
        let lateness = cfg.allowed_lateness_ms;
        let output = cfg.output.clone();
        let input = input.clone();
        let enricher = enricher.clone();
        let probe = timely::dataflow::ProbeHandle::new();
        let probe_in = probe.clone();
        let sources = timely::dataflow::ProbeHandle::new();
        let sources_in = sources.clone();
        let restored = restored.clone();
        // Worker 0 reports when the restored state is first readable: a restart's downtime.
        let mut restoring = restored.as_ref().map(|r| r.frontier).filter(|_| index == 0);
        let checkpoints = checkpoints.clone();
        let (run, aggregates) = (run.clone(), aggregates.clone());
        let parquet_dir = cfg.parquet_dir.clone();
        let (mut traces, mut checkpointer) = worker.dataflow::<u64, _, _>(move |scope| {
            let mut checkpointer = None;
            let events = match input {
                Input::Files(ref files) => clock_source(
                    scope,
                    "FileSource",
                    FileReader::new(files, index, peers, enricher, cfg.max_future_skew_ms),
                    time,
                    now_ms,
                ),
                Input::Archive(ref archive) => clock_source(
                    scope,
                    "ArchiveSource",
                    ArchiveReader::new(archive, index, peers),
                    time,
                    now_ms,
                ),
                Input::Kafka {
                    ref kafka,
                    until_end,
                } => {
                    let offsets = restored.as_ref().map(|r| r.offsets()).unwrap_or_default();
                    let reader = KafkaReader::new(
                        &kafka.brokers,
                        &kafka.clicks_topic,
                        index,
                        peers,
                        health_in.clone(),
                        &offsets,
                        ReadSettings {
                            until_end,
                            max_future_skew_ms: cfg.max_future_skew_ms,
                            on_gap: cfg.on_gap,
                        },
                    )
                    .unwrap_or_else(|e| panic!("worker {index}: {e:#}"));
                    let mut reader = reader;
                    let partitions = reader.partition_ids().to_vec();
                    let snapshot = restored
                        .as_ref()
                        .map(|r| r.source_for(index, peers, &partitions));
                    // Worker 0 commits the click-aggregates records of each checkpoint.
                    let sinks = (index == 0)
                        .then(|| aggregates.lock().unwrap().as_ref().map(|s| s.committer()))
                        .flatten();
                    checkpointer = checkpoints.map(|c| {
                        let publish = Publish {
                            run: run.clone(),
                            sinks,
                            parquet: parquet_dir.clone(),
                            health: health_in.clone(),
                            epoch,
                        };
                        Checkpointer::new(c, index, peers, partitions, publish)
                            .unwrap_or_else(|e| panic!("worker {index}: {e:#}"))
                    });
                    if let Some(raw) = checkpointer.as_ref().and_then(|c| c.raw.clone()) {
                        reader.archive_into(raw);
                    }
                    let cuts = checkpointer.as_ref().map(|c| c.cuts.clone());
                    checkpointed_source(scope, "KafkaSource", reader, time, now_ms, cuts, snapshot)
                }
            };
            events.clone().probe_with(&sources_in);
            let restored_at = restored.as_ref().map(|r| r.frontier);
            let resume = Resume {
                dedup: restored.as_ref().map_or_else(
                    || DedupState::new(acfg.dedup()),
                    |r| {
                        let started = Instant::now();
                        let dedup = r.dedup_for(index, peers, acfg.dedup());
                        tracing::info!(
                            worker = index,
                            winners = dedup.len(),
                            ms = started.elapsed().as_millis() as u64,
                            "dedup state restored"
                        );
                        dedup
                    },
                ),
                rows: restored.as_ref().map(|r| r.rows_for(index, peers)),
                checkpoints: checkpointer.as_mut().map(|c| {
                    let (input, requests) = scope.new_input::<Vec<u64>>();
                    // Worker 0 asks; the other workers' inputs close here.
                    if index == 0 {
                        c.take_requests(input, restored_at);
                    }
                    DedupCheckpoints {
                        requests: requests.broadcast(),
                        save: c.save_dedup(),
                    }
                }),
            };
            let a = resumed_aggregate(events, &acfg, resume);
            let traces = Traces::arrange(&a);
            a.minute.clone().probe_with(&probe_in);
            // Worker 0's dictionary for query answers; the probe covers it, so texts of every
            // time before the frontier are in it when a query reads there.
            a.names
                .clone()
                .exchange(|_| 0)
                .inspect(move |n| dictionary_in.borrow_mut().insert(n.clone()))
                .probe_with(&probe_in);
            if let Input::Kafka { kafka, .. } = &input {
                sink::kafka::late_to_kafka(a.late.clone(), kafka);
                sink::kafka::rejected_to_kafka(a.rejected.clone(), kafka);
            }
            let lines = scope.concatenate([
                a.received.map(Out::Received),
                a.lost.map(Out::Lost),
                reports(a.minute, MINUTE_MS, lateness).map(Out::Report),
                reports(a.hour, HOUR_MS, lateness).map(Out::Report),
                reports(a.day, DAY_MS, lateness).map(Out::Report),
                a.late.map(Out::Late),
                a.rejected.map(Out::Rejected),
                a.names.map(Out::Name),
            ]);
            if index == 0 {
                let resumed = restored.as_ref().and_then(|r| r.writer());
                let writer = Writer::resume(&output, resumed)
                    .unwrap_or_else(|e| panic!("opening {output}: {e}"));
                let hook = checkpointer.as_ref().map(|c| c.writer_hook());
                let kafka = aggregates.lock().unwrap().take();
                let windows = parquet_dir.as_ref().map(|d| {
                    WindowFiles::new(d).unwrap_or_else(|e| panic!("{}: {e:#}", d.display()))
                });
                let sinks = Sinks { kafka, windows };
                let mut sink =
                    ReportSink::new(writer, sinks, hook, interval, &run, health_in.clone());
                lines.sink(
                    Exchange::new(|_: &Out| 0),
                    "WriteReports",
                    move |(input, frontier)| {
                        input.for_each(|cap, data| {
                            sink.add(*cap.least().expect("a totally ordered time"), data);
                        });
                        sink.write_ready(frontier).expect("writing the reports");
                    },
                );
            } else {
                lines.sink(Exchange::new(|_: &Out| 0), "WriteReports", |_| {});
            }
            (traces, checkpointer)
        });
        // The query dataflow: every worker answers from its traces, worker 0 merges.
        let waiting: Rc<RefCell<HashMap<u64, tokio::sync::oneshot::Sender<Resolved>>>> =
            Rc::default();
        let mut queries = serving.then(|| {
            let waiting = waiting.clone();
            let dictionary = dictionary.clone();
            let query_traces = traces.for_queries();
            worker.dataflow::<QueryTime, _, _>(move |scope| {
                let (input, stream) = scope.new_input::<Vec<Query>>();
                serve(stream, query_traces, move |q, answer| {
                    if let Some(reply) = waiting.borrow_mut().remove(&q.id) {
                        let _ = reply.send(Resolved::new(q, answer, &dictionary.borrow()));
                    }
                });
                input
            })
        });
        // Only worker 0 of process 0 takes queries; the other inputs close at once.
        let asks = (index == 0).then(|| asks.lock().unwrap().take()).flatten();
        if asks.is_none() {
            queries = None;
        } else {
            bridge.register_worker();
        }
        // Streaming only: a batch job ends when its dataflows do, and this one never would.
        let mut share = serving.then(|| HealthShare::build(worker, health.clone(), cfg.workers));
        let mut last_frontier = None::<u64>;
        let mut stamps = Stamps::default();
        let park = if asks.is_some() { 2 } else { 20 };
        while worker.step_or_park(Some(Duration::from_millis(park))) {
            let frontier = probe.with_frontier(|f| f.first().copied());
            let mut compact_to = frontier;
            if let Some(c) = checkpointer.as_mut() {
                let names = dictionary.borrow();
                let source_frontier = sources.with_frontier(|f| f.first().copied());
                c.step(
                    source_frontier,
                    &mut traces,
                    (index == 0).then_some(&*names),
                );
                compact_to = c.compaction_bound(frontier);
            }
            let bound: timely::progress::Antichain<u64> = compact_to.into_iter().collect();
            traces.compact_to(bound.borrow());
            if let Some(s) = share.as_mut() {
                s.tick();
            }
            let Some(f) = frontier else { continue };
            if let Some(at) = restoring.filter(|at| f >= *at) {
                tracing::info!(
                    frontier = at,
                    ms = process_started.elapsed().as_millis() as u64,
                    "restored state readable"
                );
                restoring = None;
            }
            if index == 0 {
                health.frontier.store(f, Ordering::Relaxed);
                observe_completions(&server, last_frontier, f, time.out_of_orderness_ms);
                last_frontier = Some(f);
            }
            if let (Some(input), Some(asks)) = (queries.as_mut(), asks.as_ref()) {
                // The queries waiting now form one batch, whose reads see exactly the updates
                // before the frontier.
                stamps.batch(f);
                while let Ok(Ask { kind, reply }) = asks.try_recv() {
                    let q = stamps.stamp(kind);
                    input.advance_to(q.time());
                    waiting.borrow_mut().insert(q.id, reply);
                    input.send(q);
                }
                input.advance_to(stamps.next_time());
            }
        }
        // The input is exhausted: every click read is in the results.
        if let Some(c) = checkpointer.as_mut() {
            c.archive_the_rest()
                .unwrap_or_else(|e| panic!("worker {index}: archiving: {e:#}"));
        }
    })
    .map_err(|e| anyhow::anyhow!("starting the timely cluster: {e}"))?;
    for r in results.join() {
        r.map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?;
    }
    // This process's last archive files, written above.
    if let Some(dir) = &archive_dir {
        parquet::commit(dir, u64::MAX)?;
    }
    Ok(())
}
