//! The aggregation cluster. One process of it: `--workers W` threads, and with
//! `--processes N --process I [--hostfile F]` one of N processes.

use std::path::PathBuf;

use clap::Parser;

use adclick::aggregator::{self, AggregatorConfig, Input};
use adclick::cli::{CommonArgs, init_logging};
use adclick::event::enrich::Enricher;

#[derive(Parser)]
#[command(
    version,
    about = "adclick's aggregator: exact dedup, event-time windows, rollups, top-N"
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Worker threads in this process (overrides aggregator.workers).
    #[arg(long, short = 'w')]
    workers: Option<usize>,
    /// Processes in the cluster (overrides aggregator.processes).
    #[arg(long, short = 'n')]
    processes: Option<usize>,
    /// This process's index, from 0 (overrides aggregator.process).
    #[arg(long, short = 'p')]
    process: Option<usize>,
    /// One host:port per process, in process order (overrides aggregator.hostfile).
    #[arg(long)]
    hostfile: Option<PathBuf>,
    /// Address of the query server (overrides aggregator.query_listen).
    #[arg(long)]
    query_listen: Option<String>,
    /// Read these files (NDJSON events or seed-003 log lines) instead of Kafka, as a batch job.
    #[arg(long = "input", num_args = 1..)]
    inputs: Vec<PathBuf>,
    /// Read the topic up to its end at start, finalize every window, and exit.
    #[arg(long)]
    until_end: bool,
    /// Window reports as NDJSON: a file or - for stdout (overrides aggregator.output).
    #[arg(long)]
    output: Option<String>,
    /// Take checkpoints in this directory, and restore the newest on start (overrides
    /// aggregator.checkpoint_dir).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Write final windows and the raw archive as Parquet here (overrides
    /// aggregator.parquet_dir).
    #[arg(long)]
    parquet_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    let mut flags: Vec<(&str, toml::Value)> = Vec::new();
    let as_int = |v: usize| toml::Value::Integer(v as i64);
    if let Some(w) = cli.workers {
        flags.push(("aggregator.workers", as_int(w)));
    }
    if let Some(n) = cli.processes {
        flags.push(("aggregator.processes", as_int(n)));
    }
    if let Some(p) = cli.process {
        flags.push(("aggregator.process", as_int(p)));
    }
    if let Some(h) = &cli.hostfile {
        flags.push(("aggregator.hostfile", h.display().to_string().into()));
    }
    if let Some(q) = &cli.query_listen {
        flags.push(("aggregator.query_listen", q.clone().into()));
    }
    if let Some(o) = &cli.output {
        flags.push(("aggregator.output", o.clone().into()));
    }
    if let Some(d) = &cli.checkpoint_dir {
        flags.push(("aggregator.checkpoint_dir", d.display().to_string().into()));
    }
    if let Some(d) = &cli.parquet_dir {
        flags.push(("aggregator.parquet_dir", d.display().to_string().into()));
    }
    let mut config = cli.common.load(flags)?;
    let _embedded = cli.common.maybe_embedded_kafka(&mut config)?;
    let agg: AggregatorConfig = config.aggregator.clone().try_into()?;
    let input = if cli.inputs.is_empty() {
        Input::Kafka {
            kafka: config.kafka.clone(),
            until_end: cli.until_end,
        }
    } else {
        Input::Files(cli.inputs)
    };
    let enricher = Enricher::new(config.privacy.salt.as_bytes());
    aggregator::run(agg, input, enricher)
}
