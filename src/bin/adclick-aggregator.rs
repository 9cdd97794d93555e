//! The aggregation cluster. One process of it: `--workers W` threads, and with
//! `--processes N --process I [--hostfile F]` one of N processes. `replay` and `reconcile`
//! recompute a time range from the raw Parquet archive with the same dataflow. `cluster` runs
//! a whole cluster on this host under a supervisor that restarts it when a process dies;
//! `hostfile` writes the hostfile of a cluster on several hosts (a Kubernetes StatefulSet).

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use adclick::aggregator::supervisor::{self, RestartPolicy, Spec};
use adclick::aggregator::{self, AggregatorConfig, Input, reconcile};
use adclick::cli::{CommonArgs, init_logging};
use adclick::config::Config;
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
    #[arg(long, short = 'w', global = true)]
    workers: Option<usize>,
    /// Processes in the cluster (overrides aggregator.processes).
    #[arg(long, short = 'n', global = true)]
    processes: Option<usize>,
    /// This process's index, from 0 (overrides aggregator.process).
    #[arg(long, short = 'p')]
    process: Option<usize>,
    /// One host:port per process, in process order (overrides aggregator.hostfile).
    #[arg(long)]
    hostfile: Option<PathBuf>,
    /// Address of the query server (overrides aggregator.query_listen).
    #[arg(long, global = true)]
    query_listen: Option<String>,
    /// Read these files (NDJSON events or seed-003 log lines) instead of Kafka, as a batch job.
    #[arg(long = "input", num_args = 1..)]
    inputs: Vec<PathBuf>,
    /// Read the topic up to its end at start, finalize every window, and exit.
    #[arg(long, global = true)]
    until_end: bool,
    /// Window reports as NDJSON: a file or - for stdout (overrides aggregator.output).
    #[arg(long, global = true)]
    output: Option<String>,
    /// Take checkpoints in this directory, and restore the newest on start (overrides
    /// aggregator.checkpoint_dir).
    #[arg(long, global = true)]
    checkpoint_dir: Option<PathBuf>,
    /// Write final windows and the raw archive as Parquet here (overrides
    /// aggregator.parquet_dir).
    #[arg(long, global = true)]
    parquet_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole cluster on this host, supervised: --processes N processes of --workers W
    /// on loopback ports, with the hostfile generated; when any process exits, the rest are
    /// stopped and the whole cluster restarts from the newest checkpoint, with a growing
    /// backoff. Every other option (before or after `cluster`) is passed to each process.
    #[command(
        after_help = "Exit codes: 0 every process finished (a batch or --until-end job) \
or stopped by SIGTERM/SIGINT; 3 or 5 a process exited with it (records lost to a gap; fenced), \
never restarted; 1 a process exited with code 1 four times in a row without a healthy run \
(an error that repeats), or the supervisor could not start; after --max-restarts, the last \
cause's code (128 + N for signal N)."
    )]
    Cluster(ClusterArgs),
    /// Print the hostfile of a cluster on several hosts: the pods of a Kubernetes StatefulSet
    /// (process i is pod NAME-i, at its stable DNS name), or one host on consecutive ports.
    Hostfile(HostfileArgs),
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
struct ClusterArgs {
    /// Address the processes listen on for each other.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Process i listens on BASE_PORT + i; 0: free ports picked at every start.
    #[arg(long, default_value_t = 0)]
    base_port: u16,
    /// Where the hostfile (`hosts`) and the status file (`cluster.json`: state, restarts, the
    /// last cause, each process's pid) go [default: a new directory in the temporary dir].
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Wait before the first of a run of quick restarts; doubled for each next one.
    #[arg(long, default_value_t = 500)]
    backoff_ms: u64,
    /// Longest wait between restarts.
    #[arg(long, default_value_t = 30_000)]
    max_backoff_ms: u64,
    /// A run that lasted this long, or committed a checkpoint, was healthy: the backoff
    /// starts over.
    #[arg(long, default_value_t = 60_000)]
    stable_ms: u64,
    /// Give up after this many restarts [default: never].
    #[arg(long)]
    max_restarts: Option<u64>,
    /// From SIGTERM to SIGKILL when stopping the processes.
    #[arg(long, default_value_t = 10_000)]
    stop_grace_ms: u64,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("kind").required(true).args(["statefulset", "host"])))]
struct HostfileArgs {
    /// The StatefulSet's name: process i is its pod NAME-i.
    #[arg(long, requires = "service")]
    statefulset: Option<String>,
    /// The StatefulSet's headless service (its spec.serviceName).
    #[arg(long)]
    service: Option<String>,
    /// The namespace, for fully qualified names: NAME-i.SERVICE.NAMESPACE.svc.DOMAIN.
    #[arg(long)]
    namespace: Option<String>,
    /// The cluster's DNS domain (with --namespace).
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Instead of a StatefulSet: every process on this host, process i on PORT + i.
    #[arg(long)]
    host: Option<String>,
    /// How many processes (the StatefulSet's replicas).
    #[arg(long)]
    replicas: usize,
    /// The port every process listens on (with --host: process 0's).
    #[arg(long, default_value_t = 2101)]
    port: u16,
    /// Write the hostfile here instead of to standard output.
    #[arg(long)]
    out: Option<PathBuf>,
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
    let mut cli = Cli::parse();
    init_logging();
    if let Some(Command::Hostfile(h)) = &cli.command {
        return hostfile(h);
    }
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
    if let Some(Command::Cluster(args)) = &cli.command {
        let code = cluster(&cli, args, config)?;
        std::process::exit(code);
    }
    let enricher = Enricher::new(config.privacy.salt.as_bytes());
    if let Some(command) = cli.command.take() {
        let mut agg: AggregatorConfig = config.aggregator.clone().try_into()?;
        // A batch job of its own: no checkpoints, no Parquet sinks, no query server.
        (agg.checkpoint_dir, agg.parquet_dir) = (None, None);
        return match command {
            Command::Cluster(_) | Command::Hostfile(_) => unreachable!("handled above"),
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

/// `cluster`: the supervisor. With `--embedded-kafka` it hosts the broker itself, so the broker
/// outlives every restart of the processes.
fn cluster(cli: &Cli, args: &ClusterArgs, mut config: Config) -> anyhow::Result<i32> {
    anyhow::ensure!(
        cli.process.is_none() && cli.hostfile.is_none(),
        "`cluster` gives each process its --process and the --hostfile itself: leave them out"
    );
    let embedded = cli.common.maybe_embedded_kafka(&mut config)?;
    let agg: AggregatorConfig = config.aggregator.clone().try_into()?;
    agg.check()?;
    if agg.checkpoint_dir.is_none() && cli.inputs.is_empty() {
        tracing::warn!(
            "cluster: no --checkpoint-dir: every restart reads the topic from its start again"
        );
    }
    let run_dir = match &args.run_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("adclick-cluster-{}", std::process::id())),
    };
    println!("cluster run directory: {}", run_dir.display());
    let spec = Spec {
        exe: std::env::current_exe()?,
        args: process_args(cli, &config.kafka.brokers, agg.workers),
        processes: agg.processes.max(1),
        workers: agg.workers,
        host: args.host.clone(),
        base_port: args.base_port,
        run_dir,
        checkpoint_dir: agg.checkpoint_dir.clone(),
        policy: RestartPolicy {
            backoff: Duration::from_millis(args.backoff_ms),
            max_backoff: Duration::from_millis(args.max_backoff_ms.max(args.backoff_ms)),
            stable_after: Duration::from_millis(args.stable_ms),
            max_restarts: args.max_restarts,
            ..RestartPolicy::default()
        },
        stop_grace: Duration::from_millis(args.stop_grace_ms),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let code = supervisor::supervise(&spec, &stop)?;
    drop(embedded);
    Ok(code)
}

/// The flags every process of a supervised cluster gets: this command's own (the
/// supervisor adds each one's index, the process count and the hostfile as
/// `ADCLICK_AGGREGATOR_*` variables, which override flags). A flag added to [`Cli`] that a
/// process needs must be passed on here too.
fn process_args(cli: &Cli, brokers: &str, workers: usize) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut flag = |name: &str, value: OsString| {
        args.push(name.into());
        args.push(value);
    };
    if let Some(c) = &cli.common.config {
        flag("--config", c.into());
    }
    flag("--brokers", brokers.into());
    if let Some(t) = &cli.common.topic {
        flag("--topic", t.into());
    }
    flag("--workers", workers.to_string().into());
    if let Some(q) = &cli.query_listen {
        flag("--query-listen", q.into());
    }
    if let Some(o) = &cli.output {
        flag("--output", o.into());
    }
    if let Some(d) = &cli.checkpoint_dir {
        flag("--checkpoint-dir", d.into());
    }
    if let Some(d) = &cli.parquet_dir {
        flag("--parquet-dir", d.into());
    }
    if cli.until_end {
        args.push("--until-end".into());
    }
    if !cli.inputs.is_empty() {
        args.push("--input".into());
        args.extend(cli.inputs.iter().map(OsString::from));
    }
    args
}

/// `hostfile`: prints or writes the addresses, one per process.
fn hostfile(h: &HostfileArgs) -> anyhow::Result<()> {
    let hosts = match (&h.statefulset, &h.service, &h.host) {
        (Some(name), Some(service), _) => supervisor::statefulset_hosts(
            name,
            service,
            h.namespace.as_deref(),
            &h.cluster_domain,
            h.replicas,
            h.port,
        )?,
        (_, _, Some(host)) => {
            anyhow::ensure!(h.replicas >= 1, "--replicas must be at least 1");
            let last = h.port as usize + h.replicas - 1;
            anyhow::ensure!(
                last <= u16::MAX as usize,
                "--port + --replicas passes 65535"
            );
            let ports: Vec<u16> = (0..h.replicas).map(|i| h.port + i as u16).collect();
            supervisor::loopback_hosts(host, &ports)
        }
        _ => anyhow::bail!("give --statefulset NAME --service SVC, or --host HOST"),
    };
    let text = supervisor::hostfile_text(&hosts);
    match &h.out {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}
