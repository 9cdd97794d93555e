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
mod input;
mod queries;
pub mod raw;
pub mod reconcile;
pub mod sink;
pub mod source;
pub mod supervisor;
mod worker;

/// The output lines and tallies, by the path the tests and tools know them by.
pub use sink::output;

use std::sync::Arc;
use std::time::Instant;

use cluster::Cluster;
pub use config::{AggregatorConfig, OnGap};
pub use exit::{EXIT_DATA_LOST, EXIT_FENCED, EXIT_PEER_LOST, Failure, Fenced, peer_lost};
pub use input::Input;
use worker::WorkerLoop;

use crate::event::enrich::Enricher;

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
    if let Some(e) = cluster.failure.take() {
        return Err(e);
    }
    cluster.finish()
}
