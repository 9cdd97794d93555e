//! `adclick-aggregator`: the timely cluster that turns the clicks topic (or files) into
//! deduplicated, windowed counts. The dataflow itself is `adclick_dataflows::aggregate`; this
//! module wires sources and sinks around it and runs it on the configured cluster shape.

pub mod config;
pub mod decode;
pub mod file_source;
pub mod kafka_sink;
pub mod kafka_source;
pub mod output;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use adclick_dataflows::report::reports;
use adclick_dataflows::source::clock_source;
use adclick_dataflows::time::{DAY_MS, HOUR_MS, MINUTE_MS};
use adclick_dataflows::{Traces, aggregate};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Concatenate;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;

use crate::event::enrich::Enricher;
pub use config::AggregatorConfig;
use file_source::FileReader;
use kafka_source::KafkaReader;
use output::{Out, Writer};

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

/// Runs this process's part of the cluster until the input is exhausted (batch) or forever.
pub fn run(cfg: AggregatorConfig, input: Input, enricher: Enricher) -> anyhow::Result<()> {
    cfg.check()?;
    let timely_config = timely::Config {
        communication: cfg.communication()?,
        worker: timely::WorkerConfig::default(),
    };
    let results = timely::execute(timely_config, move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
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
                    )
                    .unwrap_or_else(|e| panic!("worker {index}: {e:#}"));
                    clock_source(scope, "KafkaSource", reader, time, now_ms)
                }
            };
            let a = aggregate(events, &acfg);
            let traces = Traces::arrange(&a);
            a.minute.clone().probe_with(&probe_in);
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
        // Queries (next: the query server) read the traces at the frontier; history before
        // it is compacted away, and with it rows past their retention.
        while worker.step_or_park(Some(Duration::from_millis(20))) {
            probe.with_frontier(|f| traces.compact_to(f));
        }
    })
    .map_err(|e| anyhow::anyhow!("starting the timely cluster: {e}"))?;
    for r in results.join() {
        r.map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?;
    }
    Ok(())
}
