//! `adclick-aggregator`: the timely cluster that turns the clicks topic (or files) into
//! deduplicated, windowed counts. The dataflow itself is `adclick_dataflows::aggregate`; this
//! module wires sources and sinks around it and runs it on the configured cluster shape.

pub mod checkpoint;
mod cluster;
pub mod config;
mod dataflow;
pub mod exit;
pub mod fence;
pub mod health_share;
mod queries;
pub mod raw;
pub mod reconcile;
pub mod sink;
pub mod source;
mod worker;

/// The output lines and tallies, by the path the tests and tools know them by.
pub use sink::output;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use cluster::Cluster;
pub use config::{AggregatorConfig, OnGap};
pub use exit::{EXIT_DATA_LOST, EXIT_FENCED, EXIT_PEER_LOST, Fenced, peer_lost};
use worker::WorkerLoop;

use crate::event::enrich::Enricher;

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

/// Runs this process's part of the cluster until the input is exhausted (batch) or forever:
/// the cluster (`cluster::Cluster`) is built once, then every worker builds its dataflows and steps them
/// ([`worker`]), and the process's last archive files are published.
pub fn run(cfg: AggregatorConfig, input: Input, enricher: Enricher) -> anyhow::Result<()> {
    let started = Instant::now();
    cfg.check()?;
    let timely_config = timely::Config {
        communication: cfg.communication()?,
        worker: timely::WorkerConfig::default(),
    };
    let cluster = Arc::new(Cluster::start(cfg, input, enricher, started)?);
    let shared = cluster.clone();
    let results = timely::execute(timely_config, move |worker| {
        WorkerLoop::build(worker, &shared).run(worker, &shared);
    })
    .map_err(|e| anyhow::anyhow!("starting the timely cluster: {e}"))?;
    for r in results.join() {
        r.map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?;
    }
    cluster.finish()
}
