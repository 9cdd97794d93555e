//! `adclick-aggregator`: the timely cluster that turns the clicks topic (or files) into
//! deduplicated, windowed counts. The dataflow itself is `adclick_dataflows::aggregate`; this
//! module wires sources and sinks around it and runs it on the configured cluster shape.

pub mod config;
pub mod decode;
pub mod file_source;
pub mod health;
pub mod kafka_sink;
pub mod kafka_source;
pub mod output;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adclick_dataflows::names::Dictionary;
use adclick_dataflows::query::{Query, QueryTime, SEQ_BITS, SEQ_MASK, serve};
use adclick_dataflows::report::reports;
use adclick_dataflows::source::clock_source;
use adclick_dataflows::time::{DAY_MS, HOUR_MS, MINUTE_MS};
use adclick_dataflows::{Traces, aggregate};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Concatenate;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;

use crate::event::enrich::Enricher;
use crate::query::metrics::QueryMetrics;
use crate::query::render::render;
use crate::query::{self, Ask, Bridge, Server};
pub use config::AggregatorConfig;
use file_source::FileReader;
use health::Health;
use kafka_source::KafkaReader;
use output::{Out, Writer};
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
}

impl Input {
    fn is_batch(&self) -> bool {
        matches!(
            self,
            Input::Files(_)
                | Input::Kafka {
                    until_end: true,
                    ..
                }
        )
    }
}

fn now_ms() -> u64 {
    crate::timefmt::now_millis() as u64
}

/// Window completion latency: for each minute end the frontier passed since the last look,
/// the wall clock minus (end + out-of-orderness bound), the earliest it could have completed.
fn observe_completions(server: &Server, last: Option<u64>, frontier: u64, bound_ms: u64) {
    let Some(last) = last else { return };
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
        let addr = query::spawn(&cfg.query_listen, server.clone())?;
        println!("query server: http://{addr}/");
    }
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
        let mut traces = worker.dataflow::<u64, _, _>(move |scope| {
            let events = match input {
                Input::Files(ref files) => clock_source(
                    scope,
                    "FileSource",
                    FileReader::new(files, index, peers, enricher),
                    time,
                    now_ms,
                ),
                Input::Kafka {
                    ref kafka,
                    until_end,
                } => {
                    let reader = KafkaReader::new(
                        &kafka.brokers,
                        &kafka.clicks_topic,
                        index,
                        peers,
                        until_end,
                        health_in.clone(),
                    )
                    .unwrap_or_else(|e| panic!("worker {index}: {e:#}"));
                    clock_source(scope, "KafkaSource", reader, time, now_ms)
                }
            };
            let a = aggregate(events, &acfg);
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
                kafka_sink::late_to_kafka(a.late.clone(), kafka);
                kafka_sink::rejected_to_kafka(a.rejected.clone(), kafka);
            }
            let lines = scope.concatenate([
                a.received.map(Out::Received),
                reports(a.minute, MINUTE_MS, lateness).map(Out::Report),
                reports(a.hour, HOUR_MS, lateness).map(Out::Report),
                reports(a.day, DAY_MS, lateness).map(Out::Report),
                a.late.map(Out::Late),
                a.rejected.map(Out::Rejected),
                a.names.map(Out::Name),
            ]);
            let mut writer = (index == 0)
                .then(|| Writer::open(&output).unwrap_or_else(|e| panic!("opening {output}: {e}")));
            let mut pending: BTreeMap<u64, Vec<Out>> = BTreeMap::new();
            lines.sink(
                Exchange::new(|_: &Out| 0),
                "WriteNdjson",
                move |(input, frontier)| {
                    input.for_each(|cap, data| {
                        let time = *cap.least().expect("a totally ordered time");
                        pending.entry(time).or_default().append(data);
                    });
                    // Times the frontier has passed, in order: all their texts have arrived.
                    while let Some(entry) = pending.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break;
                        }
                        let items = entry.remove();
                        if let Some(w) = writer.as_mut() {
                            w.write_time(items).expect("writing the report output");
                            *health_in.tallies.lock().unwrap() = w.tallies;
                        }
                    }
                    if let Some(w) = writer.as_mut() {
                        if frontier.is_empty() {
                            w.finish().expect("writing the report output");
                            writer = None;
                        } else {
                            w.flush().expect("writing the report output");
                        }
                    }
                },
            );
            traces
        });
        // The query dataflow: every worker answers from its traces, worker 0 merges.
        let waiting: Rc<RefCell<HashMap<u64, Ask>>> = Rc::default();
        let mut queries = serving.then(|| {
            let waiting = waiting.clone();
            let dictionary = dictionary.clone();
            let query_traces = traces.for_queries();
            worker.dataflow::<QueryTime, _, _>(move |scope| {
                let (input, stream) = scope.new_input::<Vec<Query>>();
                serve(stream, query_traces, move |q, answer| {
                    if let Some(ask) = waiting.borrow_mut().remove(&q.id) {
                        let names = dictionary.borrow();
                        let r = render(&q.kind, answer, q.read_at, ask.admin, &names, &ask.ad_text);
                        let _ = ask.reply.send(r);
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
        let mut last_frontier = None::<u64>;
        let (mut last_read, mut slot) = (0u64, 0u64);
        let park = if asks.is_some() { 2 } else { 20 };
        while worker.step_or_park(Some(Duration::from_millis(park))) {
            let frontier = probe.with_frontier(|f| {
                traces.compact_to(f);
                f.first().copied()
            });
            let Some(f) = frontier else { continue };
            if index == 0 {
                health.frontier.store(f, Ordering::Relaxed);
                observe_completions(&server, last_frontier, f, time.out_of_orderness_ms);
                last_frontier = Some(f);
            }
            if let (Some(input), Some(asks)) = (queries.as_mut(), asks.as_ref()) {
                // Reads see exactly the updates before the frontier.
                let read_at = f.saturating_sub(1).max(last_read);
                if read_at > last_read {
                    (last_read, slot) = (read_at, 0);
                }
                // At most 2^20 queries per read time; the rest wait for the frontier to move.
                while slot < SEQ_MASK {
                    let Ok(ask) = asks.try_recv() else { break };
                    // The id is the query's time: unique, since read times only grow and
                    // slots restart with each one.
                    let id = read_at << SEQ_BITS | slot;
                    let q = Query {
                        id,
                        read_at,
                        kind: ask.kind.clone(),
                    };
                    debug_assert_eq!(q.time(), id);
                    input.advance_to(q.time());
                    input.send(q);
                    waiting.borrow_mut().insert(id, ask);
                    slot += 1;
                }
                input.advance_to(read_at << SEQ_BITS | slot);
            }
        }
    })
    .map_err(|e| anyhow::anyhow!("starting the timely cluster: {e}"))?;
    for r in results.join() {
        r.map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?;
    }
    Ok(())
}
