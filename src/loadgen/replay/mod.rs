//! `adclick-loadgen replay`: recorded traffic sent again, into the clicks topic or through
//! the redirect, at a speed multiple, keeping its relative timing and every lane's order.
//!
//! [`recording`] reads the recording into lanes of records, [`pace`] decides when each is
//! sent, [`target`] sends them, [`compare`] reconciles a live aggregator's output with the
//! batch aggregator's on the same recording (`adclick-loadgen compare`).

pub mod compare;
pub mod pace;
pub mod recording;
pub mod target;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::aggregator::AggregatorConfig;
use crate::config::Config;
use crate::event::enrich::Enricher;
use pace::{LaneClock, Merge, Schedule, Speed};
use recording::{Entry, Format, Kind};
use target::{Delivered, Target};

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// The recording: NDJSON event files (`adclick-loadgen --output file`), seed-003 log
    /// files, partner NDJSON files, or a Parquet directory (its raw/ archive). File i is lane
    /// i; a directory of files stands for its files, by name.
    #[arg(required = true, value_name = "PATH")]
    pub recording: Vec<PathBuf>,
    /// What the recording holds.
    #[arg(long, value_enum, default_value = "auto")]
    pub format: Format,
    /// Recorded seconds per wall-clock second (1, 10, 0.5), or `max`: as fast as the target
    /// takes it.
    #[arg(long, default_value = "1")]
    pub speed: Speed,
    /// Where to send it: the clicks topic (--brokers, --topic), or the redirect's partner
    /// endpoint (partner NDJSON only; --target).
    #[arg(long = "to", value_enum, default_value = "kafka")]
    pub to: To,
    /// Kafka partition of a record: `recording`, the one the recording implies (file i to
    /// partition i, an archived partition to itself: the batch aggregator's partitions, so
    /// lateness is judged alike), or `key`, where the redirect would put it (murmur2 of the
    /// impression id).
    #[arg(long, value_enum, default_value = "recording")]
    pub partition_by: PartitionBy,
    /// Quiet gaps of more recorded seconds than this are shortened to it (a streaming
    /// aggregator idle for its idle timeout moves its watermark to the wall clock).
    #[arg(long, default_value_t = 10.0)]
    pub max_gap_s: f64,
    /// Base URL of the redirect for --to http [default: http:// + redirect.listen].
    #[arg(long)]
    pub target: Option<String>,
    /// Partner API key for --to http [default: the first of redirect.partners].
    #[arg(long)]
    pub partner_key: Option<String>,
    /// Most partner lines in one POST.
    #[arg(long, default_value_t = 500)]
    pub batch_lines: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum To {
    Kafka,
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PartitionBy {
    Recording,
    Key,
}

/// What a replay sent, printed as one line at the end.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub records: u64,
    pub clicks: u64,
    pub malformed: u64,
    pub elapsed: Duration,
    pub delivered: Delivered,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "adclick-loadgen replay: sent {} records in {secs:.1} s ({:.0} records/s): {} \
             clicks, {} malformed (sent as they are); {}",
            self.records,
            self.records as f64 / secs.max(1e-9),
            self.clicks,
            self.malformed,
            self.delivered
        )
    }
}

/// Replays the recording; setting `stop` ends it early (the summary says what was sent).
pub fn run(args: &ReplayArgs, config: &Config, stop: &AtomicBool) -> anyhow::Result<Summary> {
    if !(args.max_gap_s.is_finite() && args.max_gap_s >= 0.0) {
        bail!("--max-gap-s must be a number of seconds >= 0");
    }
    let agg: AggregatorConfig = config
        .aggregator
        .clone()
        .try_into()
        .context("configuration [aggregator]")?;
    let enricher = Enricher::new(config.privacy.salt.as_bytes());
    let lanes = recording::open(
        &args.recording,
        args.format,
        &enricher,
        agg.max_future_skew_ms,
    )?;
    let partner = lanes.iter().filter(|l| l.format == Format::Partner).count();
    match (args.to, partner) {
        (To::Kafka, 0) => {}
        (To::Kafka, _) => {
            bail!("partner NDJSON goes through the redirect, which enriches it: use --to http")
        }
        (To::Http, n) if n == lanes.len() => {}
        (To::Http, _) => bail!(
            "--to http replays partner NDJSON only (the redirect's POST /api/v1/events); \
             send events, logs and archives to Kafka"
        ),
    }
    let mut target: Box<dyn Target> = match args.to {
        To::Kafka => Box::new(target::Kafka::connect(
            &config.kafka,
            &lanes,
            args.partition_by,
        )?),
        To::Http => Box::new(target::Partner::new(args, config)?),
    };
    let total = lanes.iter().map(|l| l.len).sum();
    tracing::info!(
        "replaying {} lanes ({total} lines or records) at speed {:?} to {:?}",
        lanes.len(),
        args.speed,
        args.to
    );
    let partitions: Vec<u32> = lanes.iter().map(|l| l.partition).collect();
    let paced: Vec<_> = lanes
        .into_iter()
        .map(|lane| {
            let mut clock = LaneClock::default();
            lane.records.map(move |r| match r {
                Ok(e) => (clock.pace(e.time), Ok(e)),
                Err(e) => (None, Err(e)),
            })
        })
        .collect();
    let progress = super::progress_bar(total);
    let mut schedule = Schedule::new(args.speed, Duration::from_secs_f64(args.max_gap_s));
    let mut summary = Summary::default();
    let started = Instant::now();
    for (lane, pace, entry) in Merge::new(paced) {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let entry: Entry = entry?;
        let due = started + schedule.due(pace);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            // Ahead of the recording's clock: what waits in a batch goes now.
            target.flush()?;
            std::thread::sleep(wait);
        }
        target.send(partitions[lane], &entry)?;
        summary.records += 1;
        match entry.kind {
            Kind::Click => summary.clicks += 1,
            Kind::Malformed => summary.malformed += 1,
        }
        progress.inc(1);
    }
    summary.delivered = target.finish()?;
    summary.elapsed = started.elapsed();
    progress.finish_and_clear();
    Ok(summary)
}
