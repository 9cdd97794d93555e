//! The command line of `adclick-loadgen`. Every flag is optional and, when given, overrides
//! the `[loadgen]` key of the same name; environment variables (`ADCLICK_LOADGEN_*`) override
//! both, as for every adclick binary. Defaults are [`LoadgenConfig::default`]'s.
//!
//! [`LoadgenConfig::default`]: super::LoadgenConfig

use std::path::PathBuf;

use super::OutputKind;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct LoadgenArgs {
    /// Where the traffic goes: NDJSON files, the Kafka clicks topic, or a running
    /// adclick-redirect over HTTP [default: file].
    #[arg(long, value_enum)]
    pub output: Option<OutputKind>,
    /// Directory of the NDJSON files [default: loadgen-out].
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Number of NDJSON files; an impression's clicks all go to one [default: 1].
    #[arg(long)]
    pub files: Option<u32>,
    /// Base URL of the redirect for --output http [default: http://127.0.0.1:8080].
    #[arg(long)]
    pub target: Option<String>,
    /// Concurrent HTTP connections [default: 16].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Events per second: of simulated time, or of real time with --realtime and HTTP
    /// [default: 1000].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of traffic [default: 60 unless --count is given].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Number of events, instead of --duration.
    #[arg(long)]
    pub count: Option<u64>,
    /// Seed of the traffic: same seed and settings, same events [default: 1].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Simulated time of the first event (RFC 3339 or epoch ms) for file and Kafka output
    /// [default: so that the stream ends at the last whole minute].
    #[arg(long)]
    pub start: Option<String>,
    /// Pace file and Kafka output at --rate against the wall clock, starting now (HTTP always
    /// is).
    #[arg(long)]
    pub realtime: bool,
    /// Vary the rate by the time of day (UTC: night trough, evening peak about 6x higher)
    /// and a little by the day of the week, as real ad traffic does; --rate is then the mean
    /// over a week. Deterministic, booked in the truth's `config.daily_cycle`.
    #[arg(long)]
    pub daily_cycle: bool,
    /// Pace file and Kafka output at this many simulated seconds per wall-clock second, the
    /// event times as without --realtime: a long stream, compressed, arriving while the
    /// consumer runs (crash tests).
    #[arg(long, conflicts_with = "realtime")]
    pub pace: Option<f64>,
    /// Where to write the ground truth (JSON) [default: truth.json].
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// Ads in the catalog, ad_0 … [default: 10000].
    #[arg(long)]
    pub ads: Option<u32>,
    /// Campaigns; ad a belongs to campaign a % campaigns [default: 1000].
    #[arg(long)]
    pub campaigns: Option<u32>,
    /// Advertisers; campaign c belongs to advertiser c % advertisers [default: 100].
    #[arg(long)]
    pub advertisers: Option<u32>,
    /// Publishers, chosen uniformly [default: 500].
    #[arg(long)]
    pub publishers: Option<u32>,
    /// Distinct simulated users (user ids and IPs) [default: 100000].
    #[arg(long)]
    pub users: Option<u32>,
    /// Exponent of the Zipf distribution of clicks over ads [default: 1.1].
    #[arg(long)]
    pub zipf_exponent: Option<f64>,
    /// Share of clicks on the single hot ad ad_0, on top of Zipf [default: 0].
    #[arg(long)]
    pub hot_ad_share: Option<f64>,
    /// Share of clicks from crawlers (counted, device `bot`) [default: 0.02].
    #[arg(long)]
    pub bot_share: Option<f64>,
    /// Share of clicks clicked again, with a new click id, up to 2 s earlier or later
    /// [default: 0.05].
    #[arg(long)]
    pub duplicate_share: Option<f64>,
    /// Share of clicks re-sent unchanged [default: 0.01].
    #[arg(long)]
    pub retry_share: Option<f64>,
    /// Share of events behind the watermark but within the allowed lateness [default: 0.01].
    #[arg(long)]
    pub allowed_late_share: Option<f64>,
    /// Share of events beyond the allowed lateness, never counted [default: 0.005].
    #[arg(long)]
    pub late_share: Option<f64>,
    /// Share of malformed or invalid records [default: 0.01].
    #[arg(long)]
    pub malformed_share: Option<f64>,
    /// Share of forged click URLs, HTTP only [default: 0.005].
    #[arg(long)]
    pub forged_share: Option<f64>,
    /// Share of Kafka records written as JSON instead of Protocol Buffers [default: 0.1].
    #[arg(long)]
    pub json_share: Option<f64>,
    /// Share of hostile events: future (2099) and ancient (days old) timestamps, records over
    /// 64 KiB, and over HTTP also tracking parameters on click URLs, keyless partner batches
    /// and stalled half-sent requests; each booked in the truth as the pipeline must treat it
    /// [default: 0].
    #[arg(long)]
    pub hostile: Option<f64>,
    /// Share of fresh slots planting invalid traffic, each booked in the truth under the
    /// invalid-traffic rules: crawler and headless user agents, empty ones, data-center
    /// addresses (flagged where the redirect sees them), ip and user floods (a burst's clicks
    /// take further slots), too-fast clicks, and benign near misses of the flood rules; clicks
    /// then carry their impression's time [default: 0].
    #[arg(long)]
    pub invalid: Option<f64>,
    /// Largest delay of an ordinary click's event time behind its send time [default: 3000].
    #[arg(long)]
    pub max_disorder_ms: Option<i64>,
    /// The aggregator's out-of-orderness bound [default: 5000].
    #[arg(long)]
    pub out_of_orderness_ms: Option<i64>,
    /// The aggregator's allowed lateness [default: 300000].
    #[arg(long)]
    pub allowed_lateness_ms: Option<i64>,
    /// HTTP clicks are not sent this close to a minute boundary [default: 250].
    #[arg(long)]
    pub boundary_guard_ms: Option<i64>,
    /// Plants a spike: one campaign's clicks from one country times `factor` (default 100)
    /// for `minutes` from `at` seconds after the start, e.g.
    /// `campaign=cmp_3,country=DE,at=1800,minutes=10`; repeatable; booked in the truth.
    #[arg(
        long = "spike",
        value_name = "campaign=..,country=..,at=S,minutes=M[,factor=F]"
    )]
    pub spikes: Vec<crate::loadgen::anomalies::Spike>,
    /// Plants a drop: one publisher's clicks kept at `factor` (default 0.1), e.g.
    /// `publisher=pub_7,at=1800,minutes=10`; repeatable; booked in the truth.
    #[arg(long = "drop", value_name = "publisher=..,at=S,minutes=M[,factor=F]")]
    pub drops: Vec<crate::loadgen::anomalies::Drop>,
}

impl LoadgenArgs {
    /// `(loadgen.key, value)` for every flag given.
    pub fn overrides(&self) -> anyhow::Result<Vec<(&'static str, toml::Value)>> {
        let mut out = Vec::new();
        macro_rules! given {
            ($($field:ident),* $(,)?) => {$(
                if let Some(v) = &self.$field {
                    let value = toml::Value::try_from(v).map_err(|e| {
                        anyhow::anyhow!("--{}: {e}", stringify!($field).replace('_', "-"))
                    })?;
                    out.push((concat!("loadgen.", stringify!($field)), value));
                }
            )*};
        }
        given!(
            output,
            out_dir,
            files,
            target,
            concurrency,
            rate,
            duration,
            count,
            seed,
            start,
            pace,
            truth,
            ads,
            campaigns,
            advertisers,
            publishers,
            users,
            zipf_exponent,
            hot_ad_share,
            bot_share,
            duplicate_share,
            retry_share,
            allowed_late_share,
            late_share,
            malformed_share,
            forged_share,
            json_share,
            hostile,
            invalid,
            max_disorder_ms,
            out_of_orderness_ms,
            allowed_lateness_ms,
            boundary_guard_ms,
        );
        if self.realtime {
            out.push(("loadgen.realtime", true.into()));
        }
        if self.daily_cycle {
            out.push(("loadgen.daily_cycle", true.into()));
        }
        if !self.spikes.is_empty() {
            out.push(("loadgen.spikes", toml::Value::try_from(&self.spikes)?));
        }
        if !self.drops.is_empty() {
            out.push(("loadgen.drops", toml::Value::try_from(&self.drops)?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::loadgen::LoadgenConfig;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadgenArgs,
    }

    fn parse(argv: &[&str]) -> LoadgenConfig {
        let cli =
            Cli::try_parse_from(std::iter::once("adclick-loadgen").chain(argv.iter().copied()))
                .unwrap();
        let config: crate::config::Config =
            crate::config::load(None, cli.args.overrides().unwrap()).unwrap();
        LoadgenConfig::from_config(&config).unwrap()
    }

    #[test]
    fn flags_become_config_keys() {
        let cfg = parse(&[
            "--output",
            "kafka",
            "--rate",
            "250",
            "--count",
            "99",
            "--seed",
            "7",
            "--start",
            "2026-04-20T12:00:00Z",
            "--hot-ad-share",
            "0.5",
            "--realtime",
            "--out-dir",
            "/tmp/x",
        ]);
        assert_eq!(
            cfg,
            LoadgenConfig {
                output: crate::loadgen::OutputKind::Kafka,
                rate: 250.0,
                count: Some(99),
                seed: 7,
                start: Some(1_776_686_400_000),
                hot_ad_share: 0.5,
                realtime: true,
                out_dir: "/tmp/x".into(),
                ..LoadgenConfig::default()
            }
        );
        assert_eq!(parse(&[]), LoadgenConfig::default());
    }

    #[test]
    fn seeds_beyond_toml_integers_are_refused_by_name() {
        let cli = Cli::try_parse_from(["x", "--seed", &u64::MAX.to_string()]).unwrap();
        let err = cli.args.overrides().unwrap_err();
        assert!(err.to_string().contains("--seed"), "{err}");
    }
}
