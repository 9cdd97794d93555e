//! `adclick-loadgen`: seeded, reproducible click traffic with its exact ground truth.
//!
//! [`traffic`] generates (pure, seeded), [`encode`] renders, [`output`] delivers (files,
//! Kafka, HTTP), [`truth`] keeps the books. This module holds the configuration and wires
//! them together in [`run`]. [`replay`] sends recorded traffic again.

pub mod anomalies;
pub mod args;
pub mod audience;
pub mod catalog;
pub mod cycle;
pub mod encode;
pub mod output;
pub mod partition;
pub mod replay;
pub mod traffic;
pub mod truth;

use std::fmt;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Deserializer, Serialize};

use crate::config::Config;
use crate::event::enrich::Enricher;
use crate::event::{MAX_EVENT_TIME_MS, MIN_EVENT_TIME_MS};
use crate::timefmt;
use catalog::{Catalog, CatalogSize};
use output::Sink;
use partition::Partitioner;
use traffic::{Schedule, Traffic};
use truth::{GroundTruth, Tallies};

/// Stream length when neither `duration` nor `count` is given.
pub const DEFAULT_DURATION_S: f64 = 60.0;
/// How stale a paced (`realtime`) stream's buffered output may get.
const LIVE_FLUSH_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// NDJSON files in `out_dir`.
    File,
    /// The clicks topic.
    Kafka,
    /// A running adclick-redirect.
    Http,
}

/// The `[loadgen]` section. Every key is also a flag (`seed` is `--seed`) and an environment
/// variable (`ADCLICK_LOADGEN_SEED`); `adclick-loadgen --help` describes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadgenConfig {
    pub output: OutputKind,
    pub out_dir: PathBuf,
    pub files: u32,
    pub target: String,
    pub concurrency: usize,
    /// Emissions per second.
    pub rate: f64,
    /// Seconds of traffic; or give `count`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    /// Number of emissions; or give `duration`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    pub seed: u64,
    /// Simulated time of the first event, epoch ms (RFC 3339 accepted on input).
    #[serde(
        deserialize_with = "start_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub start: Option<i64>,
    pub realtime: bool,
    /// The rate follows the time of day and the day of the week ([`cycle`]); `rate` is the
    /// mean over a week.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub daily_cycle: bool,
    /// Simulated seconds per wall-clock second, for file and Kafka output without `realtime`.
    pub pace: Option<f64>,
    pub truth: PathBuf,
    pub ads: u32,
    pub campaigns: u32,
    pub advertisers: u32,
    pub publishers: u32,
    pub users: u32,
    pub zipf_exponent: f64,
    pub hot_ad_share: f64,
    pub bot_share: f64,
    pub duplicate_share: f64,
    pub retry_share: f64,
    pub allowed_late_share: f64,
    pub late_share: f64,
    pub malformed_share: f64,
    pub forged_share: f64,
    pub json_share: f64,
    /// Share of hostile events ([`traffic::Hostile`]): future and ancient timestamps, oversized
    /// records, and over HTTP also tracking parameters, keyless partner batches and stalled
    /// connections.
    pub hostile: f64,
    /// Share of fresh slots that plant invalid traffic ([`traffic::Scheme`]): crawlers,
    /// headless browsers, empty user agents, data-center addresses, ip and user floods,
    /// too-fast clicks, and near misses of the flood rules that stay billable. A burst's
    /// clicks take further slots. Clicks then also carry their impression's time.
    pub invalid: f64,
    pub max_disorder_ms: i64,
    /// The aggregator's out-of-orderness bound and allowed lateness, which decide what is
    /// late; keep them equal to the aggregator's.
    pub out_of_orderness_ms: i64,
    pub allowed_lateness_ms: i64,
    pub boundary_guard_ms: i64,
    /// Planted anomalies (`--spike`, `--drop`), booked in the truth's `config.anomalies`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spikes: Vec<anomalies::Spike>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drops: Vec<anomalies::Drop>,
}

impl Default for LoadgenConfig {
    fn default() -> Self {
        Self {
            output: OutputKind::File,
            out_dir: "loadgen-out".into(),
            files: 1,
            target: "http://127.0.0.1:8080".into(),
            concurrency: 16,
            rate: 1000.0,
            duration: None,
            count: None,
            seed: 1,
            start: None,
            realtime: false,
            daily_cycle: false,
            pace: None,
            truth: "truth.json".into(),
            ads: 10_000,
            campaigns: 1_000,
            advertisers: 100,
            publishers: 500,
            users: 100_000,
            zipf_exponent: 1.1,
            hot_ad_share: 0.0,
            bot_share: 0.02,
            duplicate_share: 0.05,
            retry_share: 0.01,
            allowed_late_share: 0.01,
            late_share: 0.005,
            malformed_share: 0.01,
            forged_share: 0.005,
            json_share: 0.1,
            hostile: 0.0,
            invalid: 0.0,
            max_disorder_ms: 3_000,
            out_of_orderness_ms: 5_000,
            allowed_lateness_ms: 300_000,
            boundary_guard_ms: 250,
            spikes: Vec::new(),
            drops: Vec::new(),
        }
    }
}

impl LoadgenConfig {
    /// The planted anomalies against this catalog, their windows from `start_ms`.
    pub fn injector(&self, start_ms: i64) -> anyhow::Result<anomalies::Injector> {
        let (ads, s) = (self.ads.max(1), self.zipf_exponent);
        let harmonic: f64 = (1..=ads).map(|k| f64::from(k).powf(-s)).sum();
        let hot = self.hot_ad_share;
        let ad_share = |a: u32| {
            let zipf = f64::from(a + 1).powf(-s) / harmonic;
            (1.0 - hot) * zipf + if a == 0 { hot } else { 0.0 }
        };
        let shape = anomalies::Shape {
            ad_share: &ad_share,
            ads,
            campaigns: self.campaigns.max(1),
            publishers: self.publishers,
            start_ms,
        };
        anomalies::Injector::new(&self.spikes, &self.drops, &shape)
    }
}

/// Accepts epoch milliseconds, text ([`timefmt::parse_millis`]) or a TOML date-time.
fn start_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Millis(i64),
        Text(String),
        Toml(toml::value::Datetime),
    }
    let text = match Raw::deserialize(d)? {
        Raw::Millis(ms) => return Ok(Some(ms)),
        Raw::Text(t) => t,
        Raw::Toml(t) => t.to_string(),
    };
    timefmt::parse_millis(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

impl LoadgenConfig {
    /// The `[loadgen]` section of a loaded configuration (file, flags and environment).
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let cfg = Self::deserialize(toml::Value::Table(config.loadgen.clone()))
            .map_err(|e| anyhow!("configuration [loadgen]: {e}"))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Rejects settings the generator cannot honour, naming the key.
    pub fn check(&self) -> anyhow::Result<()> {
        self.injector(0)?;
        if let Some(p) = self.pace
            && !(p.is_finite() && p > 0.0)
        {
            bail!("loadgen.pace must be a positive number of simulated seconds per second");
        }
        let positive = [
            ("files", self.files),
            ("ads", self.ads),
            ("campaigns", self.campaigns),
            ("advertisers", self.advertisers),
            ("publishers", self.publishers),
            ("users", self.users),
        ];
        for (key, n) in positive {
            if n == 0 {
                bail!("loadgen.{key} must be at least 1");
            }
        }
        if self.concurrency == 0 {
            bail!("loadgen.concurrency must be at least 1");
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            bail!("loadgen.rate must be a positive number of events per second");
        }
        match (self.duration, self.count) {
            (Some(_), Some(_)) => bail!(
                "loadgen.duration and loadgen.count are both set (by --config, flags or \
                 ADCLICK_LOADGEN_*): keep one"
            ),
            (Some(d), None) if !(d.is_finite() && d > 0.0) => {
                bail!("loadgen.duration must be a positive number of seconds")
            }
            (None, Some(0)) => bail!("loadgen.count must be at least 1"),
            _ => {}
        }
        if !(self.zipf_exponent.is_finite() && self.zipf_exponent >= 0.0) {
            bail!("loadgen.zipf_exponent must be a number >= 0");
        }
        let shares = [
            ("hot_ad_share", self.hot_ad_share),
            ("bot_share", self.bot_share),
            ("duplicate_share", self.duplicate_share),
            ("retry_share", self.retry_share),
            ("allowed_late_share", self.allowed_late_share),
            ("late_share", self.late_share),
            ("malformed_share", self.malformed_share),
            ("forged_share", self.forged_share),
            ("json_share", self.json_share),
            ("hostile", self.hostile),
            ("invalid", self.invalid),
        ];
        for (key, share) in shares {
            if !(0.0..=1.0).contains(&share) {
                bail!("loadgen.{key} must be between 0 and 1");
            }
        }
        let fresh = self.bot_share
            + self.allowed_late_share
            + self.late_share
            + self.malformed_share
            + self.forged_share
            + self.hostile
            + self.invalid;
        if fresh > 1.0 {
            bail!(
                "bot, allowed-late, late, malformed, forged, hostile and invalid shares add up to \
                 {fresh}, more than 1"
            );
        }
        if self.duplicate_share + self.retry_share > 1.0 {
            bail!("loadgen.duplicate_share + loadgen.retry_share must not exceed 1");
        }
        if !(0..self.out_of_orderness_ms).contains(&self.max_disorder_ms) {
            bail!(
                "loadgen.max_disorder_ms must be >= 0 and below loadgen.out_of_orderness_ms \
                 ({}): ordinary clicks must never be behind the watermark",
                self.out_of_orderness_ms
            );
        }
        if self.out_of_orderness_ms + 5_000 > self.allowed_lateness_ms - 30_000 {
            bail!(
                "loadgen.allowed_lateness_ms must be at least out_of_orderness_ms + 35000, to \
                 leave room for allowed-late clicks"
            );
        }
        if !(0..30_000).contains(&self.boundary_guard_ms) {
            bail!("loadgen.boundary_guard_ms must be between 0 and 29999");
        }
        Ok(())
    }

    pub fn catalog_size(&self) -> CatalogSize {
        CatalogSize {
            ads: self.ads,
            campaigns: self.campaigns,
            advertisers: self.advertisers,
            publishers: self.publishers,
        }
    }

    /// Whether the stream runs against the wall clock (HTTP always does).
    pub fn live(&self) -> bool {
        self.output == OutputKind::Http || self.realtime
    }

    /// Resolves the start time and length of the stream.
    pub fn schedule(&self, now_ms: i64, partitioner: Partitioner) -> anyhow::Result<Schedule> {
        let start = match (self.start, self.live()) {
            (Some(_), true) => bail!(
                "loadgen.start (--start) is for file and kafka output without --realtime; live \
                 traffic starts now"
            ),
            (Some(ms), false) => Some(ms),
            (None, true) => Some(now_ms),
            // The stream ends about now, its minutes whole.
            (None, false) => None,
        };
        let end_ms = now_ms.div_euclid(60_000) * 60_000;
        let duration_s = self.duration.unwrap_or(DEFAULT_DURATION_S);
        let (start_ms, count) = if self.daily_cycle {
            // The number of slots follows the cycle over the duration, or the start is where
            // `count` slots end at `end_ms`.
            let c = cycle::week();
            let per_slot_ms = 1000.0 / self.rate;
            match (self.count, start) {
                (Some(n), Some(s)) => (s, n),
                (Some(n), None) => (c.before(end_ms, n as f64 * per_slot_ms), n),
                (None, s) => {
                    let span_ms = (duration_s * 1000.0) as i64;
                    let s = s.unwrap_or(end_ms - span_ms);
                    let n = (c.between(s, s + span_ms) / per_slot_ms).round() as u64;
                    (s, n)
                }
            }
        } else {
            let count = match self.count {
                Some(n) => n,
                None => (duration_s * self.rate).round() as u64,
            };
            let span_ms = (count as f64 * 1000.0 / self.rate) as i64;
            (start.unwrap_or(end_ms - span_ms), count)
        };
        if count == 0 {
            bail!("loadgen.duration × loadgen.rate is less than one event");
        }
        let span_ms =
            cycle::Slots::new(start_ms, self.rate, self.daily_cycle).time(count) - start_ms;
        let mut earliest = start_ms - self.out_of_orderness_ms - self.allowed_lateness_ms - 660_000;
        if self.hostile > 0.0 {
            earliest =
                earliest.min(start_ms - traffic::ANCIENT_MIN_MS - traffic::ANCIENT_SPREAD_MS);
        }
        let latest = start_ms + span_ms + 60_000;
        if earliest < MIN_EVENT_TIME_MS || latest >= MAX_EVENT_TIME_MS {
            bail!(
                "loadgen.start {} puts event times outside the years 2000 to 2099",
                timefmt::format_millis(start_ms)
            );
        }
        Ok(Schedule {
            start_ms,
            count,
            partitioner,
            forgeries: self.output == OutputKind::Http,
        })
    }
}

/// Paces emissions against the wall clock: emission time `base_ms` is due `base_ms −
/// start_ms` after the pacer was created.
pub struct Pacer {
    start_ms: i64,
    started: Instant,
    /// Simulated time per wall-clock time.
    speed: f64,
}

impl Pacer {
    pub fn new(start_ms: i64, speed: f64) -> Self {
        Self {
            start_ms,
            started: Instant::now(),
            speed,
        }
    }

    /// How long to wait before emitting at `base_ms`; `None` when due (or overdue).
    pub fn wait(&self, base_ms: i64) -> Option<Duration> {
        let simulated = (base_ms - self.start_ms).max(0) as f64;
        let due = self.started + Duration::from_secs_f64(simulated / self.speed / 1000.0);
        due.checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// Moves the rest of the schedule later by `by` (the time traffic was paused).
    pub fn shift(&mut self, by: Duration) {
        self.started += by;
    }
}

/// The outcome of a run, printed as one line at the end.
#[derive(Debug, Clone)]
pub struct Summary {
    pub tallies: Tallies,
    pub elapsed: Duration,
    pub truth: PathBuf,
    /// HTTP answers that were not what the truth assumes.
    pub errors: u64,
    /// HTTP requests the redirect refused (`503`, `429`) or never saw (no connection), sent
    /// again until it took them: only the one it took is in the truth.
    pub retried: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.tallies;
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "adclick-loadgen: emitted {}, counted {}, invalid traffic {}, duplicates {}, late {}, \
             rejected {} (malformed {}, forged {}), ambiguous {} in {secs:.1} s ({:.0} events/s); \
             truth: {}",
            t.emitted,
            t.counted,
            t.invalid,
            t.duplicates,
            t.late,
            t.rejected,
            t.malformed,
            t.forged,
            t.ambiguous,
            t.emitted as f64 / secs.max(1e-9),
            self.truth.display()
        )?;
        if t.hostile() > 0 {
            write!(
                f,
                "; hostile {} (future {}, ancient {}, oversized {}, tracked {}, keyless {}, \
                 stalled {})",
                t.hostile(),
                t.future,
                t.ancient,
                t.oversized,
                t.tracked,
                t.keyless,
                t.stalled
            )?;
        }
        if self.retried > 0 {
            write!(f, "; {} requests refused and sent again", self.retried)?;
        }
        if self.errors > 0 {
            write!(f, "; {} UNEXPECTED ANSWERS", self.errors)?;
        }
        Ok(())
    }
}

/// Generates the configured traffic, delivers it, and writes the truth. Setting `stop` ends
/// the stream early (on a signal, say); the truth then describes what was delivered.
pub fn run(cfg: &LoadgenConfig, config: &Config, stop: &AtomicBool) -> anyhow::Result<Summary> {
    cfg.check()?;
    let started = Instant::now();
    let now_ms = timefmt::now_millis();
    let enricher = Enricher::new(config.privacy.salt.as_bytes());
    let begin = |partitioner| -> anyhow::Result<_> {
        let schedule = cfg.schedule(now_ms, partitioner)?;
        let anomalies = anomalies::describe(&cfg.spikes, &cfg.drops, schedule.start_ms);
        let mut description =
            serde_json::json!({ "loadgen": cfg, "schedule": schedule, "anomalies": anomalies });
        if cfg.daily_cycle {
            description["daily_cycle"] = serde_json::json!(cycle::week().shape());
        }
        let traffic = Traffic::new(cfg, schedule, enricher.clone());
        // A counted click is at most the allowed lateness (and the bound) behind the latest.
        let truth = GroundTruth::new(Catalog::new(cfg.catalog_size()))
            .horizon(cfg.allowed_lateness_ms + cfg.out_of_orderness_ms + 600_000);
        let progress = progress_bar(traffic.schedule().count);
        Ok((traffic, truth, description, progress))
    };
    let (truth, description, errors, retried) = match cfg.output {
        OutputKind::File => {
            let (traffic, truth, description, progress) =
                begin(Partitioner::Crc32 { shards: cfg.files })?;
            let mut sink = output::file::FileSink::create(&cfg.out_dir, cfg.files)?;
            (
                drive(cfg, traffic, truth, &mut sink, &progress, stop)?,
                description,
                0,
                0,
            )
        }
        OutputKind::Kafka => {
            let mut sink = output::kafka::KafkaSink::connect(&config.kafka, cfg.json_share)?;
            let (traffic, truth, description, progress) = begin(Partitioner::Murmur2 {
                shards: sink.partitions(),
            })?;
            (
                drive(cfg, traffic, truth, &mut sink, &progress, stop)?,
                description,
                0,
                0,
            )
        }
        OutputKind::Http => {
            let partitions = u32::try_from(config.kafka.partitions)
                .ok()
                .filter(|&p| p > 0)
                .context("kafka.partitions must be at least 1")?;
            let (traffic, truth, description, progress) =
                begin(Partitioner::Murmur2 { shards: partitions })?;
            let d = output::http::run(cfg, config, traffic, truth, progress, stop)?;
            (d.truth, description, d.errors, d.retried)
        }
    };
    let report = truth.finish(description);
    report.write(&cfg.truth)?;
    Ok(Summary {
        tallies: report.tallies,
        elapsed: started.elapsed(),
        truth: cfg.truth.clone(),
        errors,
        retried,
    })
}

/// Feeds a file or Kafka sink, as fast as it takes them or, with `realtime`, at the rate.
fn drive(
    cfg: &LoadgenConfig,
    traffic: Traffic,
    mut truth: GroundTruth,
    sink: &mut dyn Sink,
    progress: &ProgressBar,
    stop: &AtomicBool,
) -> anyhow::Result<GroundTruth> {
    let speed = if cfg.realtime { Some(1.0) } else { cfg.pace };
    let pacer = speed.map(|s| Pacer::new(traffic.schedule().start_ms, s));
    let mut flushed = Instant::now();
    for e in traffic {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(wait) = pacer.as_ref().and_then(|p| p.wait(e.base_ms)) {
            // Ahead of the clock: a good moment to let readers of a live stream see it.
            if flushed.elapsed() >= LIVE_FLUSH_INTERVAL {
                sink.flush()?;
                flushed = Instant::now();
            }
            std::thread::sleep(wait);
        }
        sink.send(&e)?;
        truth.record(&e);
        progress.inc(1);
    }
    sink.finish()?;
    progress.finish_and_clear();
    Ok(truth)
}

/// A progress bar on an interactive stderr; nothing otherwise (logs and pipes stay clean).
pub(crate) fn progress_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} ({per_sec}, eta {eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> anyhow::Result<LoadgenConfig> {
        LoadgenConfig::from_config(&Config {
            loadgen: text.parse().unwrap(),
            ..Config::default()
        })
    }

    #[test]
    fn defaults_pass_their_own_checks() {
        LoadgenConfig::default().check().unwrap();
        assert_eq!(from_toml("").unwrap(), LoadgenConfig::default());
    }

    #[test]
    fn reads_the_section_and_names_bad_keys() {
        let cfg =
            from_toml("output = \"kafka\"\nrate = 50\nseed = 9\nstart = 2026-04-20T12:00:00Z\n")
                .unwrap();
        assert_eq!(cfg.output, OutputKind::Kafka);
        assert_eq!(cfg.rate, 50.0);
        assert_eq!(cfg.start, Some(1_776_686_400_000));
        for text in ["start = \"2026-04-20 12:00:00\"", "start = 1776686400000"] {
            assert_eq!(from_toml(text).unwrap().start, Some(1_776_686_400_000));
        }
        let err = from_toml("rte = 5").unwrap_err();
        assert!(err.to_string().contains("rte"), "{err}");
        let err = from_toml("start = \"soon\"").unwrap_err();
        assert!(err.to_string().contains("soon"), "{err}");
    }

    #[test]
    fn checks_name_the_key_to_fix() {
        let cases = [
            ("duplicate_share = 1.5", "duplicate_share"),
            ("max_disorder_ms = 5000", "max_disorder_ms"),
            ("allowed_lateness_ms = 20000", "allowed_lateness_ms"),
            ("ads = 0", "ads"),
            ("rate = 0", "rate"),
            ("duration = 5\ncount = 5", "keep one"),
            ("bot_share = 0.5\nmalformed_share = 0.6", "more than 1"),
        ];
        for (text, needle) in cases {
            let err = from_toml(text).unwrap_err();
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn schedules_end_about_now_unless_told_otherwise() {
        let now = 1_776_686_437_123;
        let p = Partitioner::Crc32 { shards: 1 };
        let cfg = LoadgenConfig {
            count: Some(120_000),
            ..LoadgenConfig::default()
        };
        let s = cfg.schedule(now, p).unwrap();
        assert_eq!(s.count, 120_000);
        assert_eq!(s.start_ms, 1_776_686_400_000 - 120_000);
        assert!(!s.forgeries);
        let s = LoadgenConfig::default().schedule(now, p).unwrap();
        assert_eq!(s.count, 60_000, "60 s at 1000/s by default");
        let fixed = LoadgenConfig {
            start: Some(1_700_000_000_000),
            ..LoadgenConfig::default()
        };
        assert_eq!(fixed.schedule(now, p).unwrap().start_ms, 1_700_000_000_000);
        let live = LoadgenConfig {
            output: OutputKind::Http,
            ..LoadgenConfig::default()
        };
        let s = live.schedule(now, p).unwrap();
        assert_eq!(s.start_ms, now);
        assert!(s.forgeries);
        assert!(
            LoadgenConfig {
                start: Some(now),
                ..live
            }
            .schedule(now, p)
            .is_err()
        );
        let ancient = LoadgenConfig {
            start: Some(MIN_EVENT_TIME_MS),
            ..LoadgenConfig::default()
        };
        assert!(ancient.schedule(now, p).is_err());
    }

    #[test]
    fn pacer_waits_only_when_ahead() {
        let p = Pacer::new(1_000, 1.0);
        assert!(p.wait(0).is_none());
        assert!(p.wait(1_000).is_none());
        let w = p.wait(61_000).unwrap();
        assert!(w > Duration::from_secs(59) && w <= Duration::from_secs(60));
    }

    #[test]
    fn a_pause_moves_the_rest_of_the_schedule_later() {
        let mut p = Pacer::new(1_000, 1.0);
        p.shift(Duration::from_secs(30));
        let w = p.wait(1_000).unwrap();
        assert!(w > Duration::from_secs(29) && w <= Duration::from_secs(30));
    }
}
