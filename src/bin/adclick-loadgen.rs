//! Seeded click traffic with its exact ground truth, into NDJSON files, the Kafka clicks
//! topic, or a running adclick-redirect; `replay` sends recorded traffic again, `compare`
//! holds one aggregator output to another.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::bail;
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};

use adclick::cli::{CommonArgs, init_logging};
use adclick::loadgen::args::LoadgenArgs;
use adclick::loadgen::replay::{self, ReplayArgs, compare};
use adclick::loadgen::{self, LoadgenConfig};

#[derive(Parser)]
#[command(
    version,
    about = "adclick's load generator: reproducible click traffic and its exact ground truth",
    long_about = "adclick's load generator: reproducible click traffic and its exact ground \
truth.\n\nThe same seed and settings give the same events. Alongside the traffic it writes \
the truth (--truth): per minute, ad, campaign, advertiser, publisher, country and device, the \
clicks an exactly-once aggregator must count and the duplicates it must drop, plus the late \
and invalid tallies. Every flag is also a key of the [loadgen] section of --config and an \
ADCLICK_LOADGEN_* variable.\n\n--hostile SHARE mixes hostile input into the traffic: event \
times in 2099 (dead-lettered), days-old ones (late), records over 64 KiB (dead-lettered), and \
with --output http also tracking parameters on click URLs (counted; the 302 must carry them), \
keyless partner batches (401) and connections that send half a request and stall (never \
counted; the redirect must close them). Each is booked in the truth as the pipeline owes it.\n\nWith --output http, SIGUSR1 pauses the traffic (every request \
answered, connections closed; logged as 'traffic paused') and SIGUSR2 resumes it."
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    loadgen: LoadgenArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Send recorded traffic again: NDJSON event files, seed-003 logs, partner NDJSON or the
    /// raw Parquet archive, into the clicks topic (or partner NDJSON through the redirect),
    /// at a speed multiple, keeping its relative timing and each file's or partition's order.
    /// Malformed records are sent as they are. Ends with a summary line.
    Replay(ReplayArgs),
    /// Compare two aggregator outputs (NDJSON): the same final windows and tallies, or exit 1
    /// printing every difference. A replay's truth is the batch aggregator's output on the
    /// recording (adclick-aggregator --input FILES).
    Compare {
        /// The expected output (the batch aggregator's).
        expected: PathBuf,
        /// The output held to it (the live aggregator's).
        actual: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    if cli.command.is_some() && !cli.loadgen.overrides()?.is_empty() {
        bail!("the traffic flags (--rate, --output, ...) are not for replay or compare");
    }
    match cli.command {
        Some(Command::Replay(args)) => {
            let mut config = cli.common.load(Vec::new())?;
            let embedded = cli.common.maybe_embedded_kafka(&mut config)?;
            let summary = replay::run(&args, &config, &*stop_on_signal()?)?;
            drop(embedded);
            eprintln!("{summary}");
            return Ok(());
        }
        Some(Command::Compare { expected, actual }) => {
            let c = compare::outputs(
                &compare::Output::read(&expected)?,
                &compare::Output::read(&actual)?,
                &format!("{} against {}", actual.display(), expected.display()),
            );
            print!("{c}");
            std::process::exit(if c.ok() { 0 } else { 1 });
        }
        None => {}
    }
    let mut config = cli.common.load(cli.loadgen.overrides()?)?;
    let cfg = LoadgenConfig::from_config(&config)?;
    let embedded = cli.common.maybe_embedded_kafka(&mut config)?;
    let summary = loadgen::run(&cfg, &config, &*stop_on_signal()?)?;
    drop(embedded);
    eprintln!("{summary}");
    if summary.errors > 0 {
        bail!(
            "{} requests got an answer other than the one the truth assumes",
            summary.errors
        );
    }
    Ok(())
}

/// A flag raised by SIGINT or SIGTERM: the run then stops early, still writing the truth of
/// what it sent (the demo stops its traffic this way). The handlers are installed now, before
/// traffic starts, so an early signal stops it cleanly rather than killing it.
fn stop_on_signal() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    Ok(stop)
}
