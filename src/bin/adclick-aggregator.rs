//! The aggregation cluster. One process of it: `--workers W` threads, and with
//! `--processes N --process I [--hostfile F]` one of N processes. `replay` and `reconcile`
//! recompute a time range from the raw Parquet archive with the same dataflow.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use adclick::aggregator::{self, AggregatorConfig, Input, reconcile};
use adclick::cli::{CommonArgs, init_logging};
use adclick::event::enrich::Enricher;

#[derive(Parser)]
#[command(
    version,
    about = "adclick's aggregator: exact dedup, event-time windows, rollups, top-N",
    after_help = "Exit codes: 0 done; 1 error (configuration, I/O); 3 records were deleted \
before they were read (aggregator.on_gap = \"fail\"), or the topic's offsets went backwards; \
4 a peer process of the cluster was lost (restart the whole cluster); 5 fenced: another \
aggregator holds the checkpoint directory or the output; 101 a worker panicked."
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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Recompute the final windows of [--from, --to) from the raw archive into --output, a
    /// batch job beside the live one (its checkpoints and sinks are not touched).
    Replay(Range),
    /// Recompute [--from, --to) from the raw archive and compare every final window with the
    /// Parquet window sink (and each --against NDJSON output); print a report, exit 1 on any
    /// mismatch.
    Reconcile {
        #[command(flatten)]
        range: Range,
        /// NDJSON outputs of the live job to compare too.
        #[arg(long)]
        against: Vec<PathBuf>,
        /// Do not compare the Parquet window sink under --archive.
        #[arg(long)]
        no_parquet: bool,
    },
}

#[derive(Args)]
struct Range {
    /// The Parquet directory the live job writes (its `raw/` is the archive).
    #[arg(long)]
    archive: PathBuf,
    /// Start of the range: RFC 3339 time or epoch ms; windows wholly inside are compared.
    #[arg(long, value_parser = parse_time)]
    from: u64,
    /// End of the range (exclusive).
    #[arg(long, value_parser = parse_time)]
    to: u64,
}

fn parse_time(text: &str) -> Result<u64, String> {
    adclick::timefmt::parse_millis(text).map(|ms| ms.max(0) as u64)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    // A panicking worker leaves its peers waiting for it forever: end the process instead,
    // so that a supervisor restarts it from the newest checkpoint. A lost peer process shows
    // up as timely's network threads panicking: one clear line and its own exit code.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(cause) = aggregator::peer_lost(info) {
            tracing::error!(
                "lost a peer process of the cluster ({cause}); exiting with code {} so that \
                 a supervisor restarts the whole cluster from the newest checkpoint",
                aggregator::EXIT_PEER_LOST
            );
            std::process::exit(aggregator::EXIT_PEER_LOST);
        }
        report(info);
        std::process::exit(101);
    }));
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
    let enricher = Enricher::new(config.privacy.salt.as_bytes());
    if let Some(command) = cli.command {
        let mut agg: AggregatorConfig = config.aggregator.clone().try_into()?;
        // A batch job of its own: no checkpoints, no Parquet sinks, no query server.
        (agg.checkpoint_dir, agg.parquet_dir) = (None, None);
        return match command {
            Command::Replay(r) => {
                let input = reconcile::replay_input(&agg, &r.archive, r.from, r.to)?;
                aggregator::run(agg, input, enricher)
            }
            Command::Reconcile {
                range: r,
                against,
                no_parquet,
            } => {
                let input = reconcile::replay_input(&agg, &r.archive, r.from, r.to)?;
                let out = std::env::temp_dir()
                    .join(format!("adclick-reconcile-{}.ndjson", std::process::id()));
                agg.output = out.display().to_string();
                aggregator::run(agg, input, enricher)?;
                let parquet = (!no_parquet).then_some(r.archive.as_path());
                let reports = reconcile::check_sinks(&out, parquet, &against, r.from, r.to);
                let _ = std::fs::remove_file(&out);
                let reports = reports?;
                for report in &reports {
                    print!("{report}");
                }
                if reports.iter().all(|r| r.ok()) {
                    Ok(())
                } else {
                    std::process::exit(1)
                }
            }
        };
    }
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
    match aggregator::run(agg, input, enricher) {
        Err(e) if e.downcast_ref::<aggregator::Fenced>().is_some() => {
            eprintln!("adclick-aggregator: {e:#}");
            std::process::exit(aggregator::EXIT_FENCED)
        }
        other => other,
    }
}
