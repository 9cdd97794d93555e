//! The `[aggregator]` section, with the flags that override it.

use std::path::PathBuf;

use adclick_dataflows::AggregateConfig;
use adclick_dataflows::anomaly::AlertConfig;
use adclick_dataflows::flood::{FloodRule, InvalidConfig};
use adclick_dataflows::reach::ReachConfig;
use adclick_dataflows::rollup::Retention;
use adclick_dataflows::topn::TopNConfig;
use adclick_dataflows::watermark::TimeConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// Worker threads per process.
    pub workers: usize,
    /// Processes in the cluster, this one's index, and a file with one `host:port` per line
    /// (process i listens on line i). Without a hostfile, processes use 127.0.0.1:2101+i.
    pub processes: usize,
    pub process: usize,
    pub hostfile: Option<PathBuf>,
    pub query_listen: String,
    /// Query server connections served at once; one more is answered 503 (JSON).
    pub query_max_connections: usize,
    /// A request head must reach the query server within this long of the connection opening
    /// or of the previous response (also the keep-alive idle timeout).
    pub query_header_read_timeout_ms: u64,
    /// A query connection on which no byte moves either way for this long is closed.
    pub query_idle_timeout_ms: u64,
    /// Longest request target (path and query) the query server serves; longer: 414.
    pub query_max_uri_bytes: usize,
    pub out_of_orderness_ms: u64,
    pub allowed_lateness_ms: u64,
    /// A partition without new records for this long stops holding the watermark back.
    pub idle_timeout_ms: u64,
    /// Granularity of the timely timestamps (a divisor of 60 000).
    pub tick_ms: u64,
    /// Streaming: once every partition has been idle for `idle_timeout_ms`, the watermark
    /// follows the wall clock, this far behind it (plus the out-of-orderness bound).
    pub idle_watermark_lag_ms: u64,
    /// A record whose event time is further than this ahead of the wall clock when it is
    /// read is dead-lettered (`event_time_in_future`) and never moves a watermark.
    pub max_future_skew_ms: u64,
    /// What a gap in a partition's offsets (records deleted before they were read) does.
    pub on_gap: OnGap,
    pub dedup_horizon_ms: u64,
    pub minute_retention_ms: u64,
    pub hour_retention_ms: u64,
    pub day_retention_ms: u64,
    pub top_n: usize,
    pub top_window_minutes: Vec<u64>,
    /// Where window reports go as NDJSON: a file, or `-` for stdout.
    pub output: String,
    /// Keys of the query API: `{ key, advertiser }` sees that advertiser's campaigns and ads,
    /// `{ key }` alone is an admin key.
    pub api_keys: Vec<crate::query::ApiKey>,
    /// Where checkpoints go (streaming from Kafka only); none: no checkpoints, and a restart
    /// reads the topic from its start.
    pub checkpoint_dir: Option<PathBuf>,
    pub checkpoint_interval_ms: u64,
    /// Complete checkpoints kept on disk (with every checkpoint they build on).
    pub checkpoints_kept: usize,
    /// Incremental checkpoints: between two full checkpoints, this many links, each holding
    /// only what changed since the previous checkpoint (0: every checkpoint is full). A
    /// restore reads one full checkpoint and at most this many links.
    pub checkpoint_full_every: usize,
    /// Where the Parquet sinks write: final windows, and (with checkpoints) the raw archive.
    pub parquet_dir: Option<PathBuf>,
    /// The behavioural invalid-traffic rules (`[aggregator.invalid]`).
    pub invalid: InvalidRules,
    /// Traffic anomaly alerts (`[aggregator.alerts]`): spikes, drops, invalid share.
    pub alerts: AlertConfig,
    /// Reach (distinct users per group, hour and day): `false` builds no sketches, and the
    /// query API says reach is off (`ADCLICK_AGGREGATOR_REACH=false`).
    pub reach: bool,
    /// Flow control: how far (event time) a source may read ahead of what the whole dataflow
    /// has finished, and a partition ahead of its source's slowest one.
    pub read_ahead_ms: u64,
    /// The process's resident memory, in MiB, above which the sources read only what the
    /// dataflow has caught up with (0: no budget). A backlog then waits in the broker or the
    /// file instead of in memory; the state itself is never dropped to meet the budget.
    pub memory_budget_mb: u64,
}

/// The invalid-traffic rules the dataflow applies to deduplicated clicks; each flags, never
/// drops. A `max_clicks` of 0 or a `too_fast_ms` of 0 turns that rule off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InvalidRules {
    /// `ip_flood`: more than this many clicks from one `ip_hash` on one ad in one window...
    pub ip_flood_max_clicks: u32,
    /// ...of this much event time (tumbling, aligned to the epoch).
    pub ip_flood_window_ms: u64,
    /// `user_flood`: more than this many clicks from one `user_id_hash` on one campaign...
    pub user_flood_max_clicks: u32,
    pub user_flood_window_ms: u64,
    /// `too_fast`: a click sooner than this after its impression was served.
    pub too_fast_ms: u64,
}

impl Default for InvalidRules {
    fn default() -> Self {
        let d = InvalidConfig::default();
        let rule = |r: Option<FloodRule>| r.map_or((0, 60_000), |r| (r.max_clicks, r.window_ms));
        let (ip_max, ip_window) = rule(d.ip_flood);
        let (user_max, user_window) = rule(d.user_flood);
        Self {
            ip_flood_max_clicks: ip_max,
            ip_flood_window_ms: ip_window,
            user_flood_max_clicks: user_max,
            user_flood_window_ms: user_window,
            too_fast_ms: d.too_fast_ms,
        }
    }
}

impl InvalidRules {
    fn check(&self) -> anyhow::Result<()> {
        for (name, window) in [
            ("ip_flood_window_ms", self.ip_flood_window_ms),
            ("user_flood_window_ms", self.user_flood_window_ms),
        ] {
            anyhow::ensure!(
                (1_000..=7 * 24 * 3_600_000).contains(&window),
                "aggregator.invalid.{name} must be between 1000 and 604800000 (a week)"
            );
        }
        Ok(())
    }

    pub fn dataflow(&self) -> InvalidConfig {
        let rule = |max_clicks: u32, window_ms: u64| {
            (max_clicks > 0).then_some(FloodRule {
                max_clicks,
                window_ms,
            })
        };
        InvalidConfig {
            ip_flood: rule(self.ip_flood_max_clicks, self.ip_flood_window_ms),
            user_flood: rule(self.user_flood_max_clicks, self.user_flood_window_ms),
            too_fast_ms: self.too_fast_ms,
        }
    }
}

/// What the aggregator does when a partition's offsets jump: records were deleted (retention,
/// a bounded broker) before it read them. Either way the gap is tallied as `lost`, logged as
/// an ERROR, counted in `/metrics` and shown by health and the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnGap {
    /// Stop at once with [`EXIT_DATA_LOST`](crate::aggregator::EXIT_DATA_LOST): money went
    /// missing and someone must look (the default).
    Fail,
    /// Go on, with the loss in the tallies and the output.
    Report,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        let t = TimeConfig::default();
        let a = AggregateConfig::default();
        Self {
            workers: 1,
            processes: 1,
            process: 0,
            hostfile: None,
            query_listen: "127.0.0.1:8081".into(),
            query_max_connections: 1024,
            query_header_read_timeout_ms: 10_000,
            query_idle_timeout_ms: 60_000,
            query_max_uri_bytes: 8192,
            out_of_orderness_ms: t.out_of_orderness_ms,
            allowed_lateness_ms: t.allowed_lateness_ms,
            idle_timeout_ms: t.idle_timeout_ms.unwrap_or(30_000),
            tick_ms: t.tick_ms,
            idle_watermark_lag_ms: t.idle_advance_lag_ms.unwrap_or(2_000),
            max_future_skew_ms: 300_000,
            on_gap: OnGap::Fail,
            dedup_horizon_ms: a.dedup_horizon_ms,
            minute_retention_ms: a.retention.minute_ms,
            hour_retention_ms: a.retention.hour_ms,
            day_retention_ms: a.retention.day_ms,
            top_n: a.top.n,
            top_window_minutes: a.top.window_minutes,
            output: "-".into(),
            api_keys: Vec::new(),
            checkpoint_dir: None,
            checkpoint_interval_ms: 10_000,
            checkpoints_kept: 2,
            checkpoint_full_every: 30,
            parquet_dir: None,
            invalid: InvalidRules::default(),
            alerts: AlertConfig::default(),
            reach: a.reach.enabled,
            read_ahead_ms: 10_000,
            memory_budget_mb: 0,
        }
    }
}

impl AggregatorConfig {
    /// Checks what would otherwise fail deep inside the dataflow.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.workers >= 1, "aggregator.workers must be at least 1");
        anyhow::ensure!(
            self.process < self.processes.max(1),
            "aggregator.process must be below aggregator.processes"
        );
        anyhow::ensure!(
            self.tick_ms >= 1 && 60_000 % self.tick_ms == 0,
            "aggregator.tick_ms must divide 60000"
        );
        anyhow::ensure!(self.top_n >= 1, "aggregator.top_n must be at least 1");
        self.query_limits().check("aggregator.query_")?;
        self.invalid.check()?;
        self.alerts
            .check()
            .map_err(|e| anyhow::anyhow!("aggregator.alerts.{e}"))?;
        anyhow::ensure!(
            self.checkpoint_interval_ms >= 100,
            "aggregator.checkpoint_interval_ms must be at least 100"
        );
        anyhow::ensure!(
            self.read_ahead_ms >= self.tick_ms,
            "aggregator.read_ahead_ms must be at least aggregator.tick_ms"
        );
        anyhow::ensure!(
            self.memory_budget_mb == 0 || self.memory_budget_mb >= 64,
            "aggregator.memory_budget_mb must be 0 (no budget) or at least 64"
        );
        Ok(())
    }

    /// Time settings; `batch` sources (files, `--until-end`) never go idle, they finish.
    pub fn time(&self, batch: bool) -> TimeConfig {
        TimeConfig {
            out_of_orderness_ms: self.out_of_orderness_ms,
            allowed_lateness_ms: self.allowed_lateness_ms,
            idle_timeout_ms: (!batch).then_some(self.idle_timeout_ms),
            tick_ms: self.tick_ms,
            idle_advance_lag_ms: (!batch).then_some(self.idle_watermark_lag_ms),
        }
    }

    pub fn aggregate(&self) -> AggregateConfig {
        AggregateConfig {
            dedup_horizon_ms: self.dedup_horizon_ms,
            allowed_lateness_ms: self.allowed_lateness_ms,
            retention: Retention {
                minute_ms: self.minute_retention_ms,
                hour_ms: self.hour_retention_ms,
                day_ms: self.day_retention_ms,
            },
            top: TopNConfig {
                n: self.top_n,
                window_minutes: self.top_window_minutes.clone(),
            },
            invalid: self.invalid.dataflow(),
            reach: ReachConfig {
                enabled: self.reach,
                ..ReachConfig::default()
            },
        }
    }

    /// The query server's connection limits.
    pub fn query_limits(&self) -> crate::http_server::Limits {
        crate::http_server::Limits {
            max_connections: self.query_max_connections,
            header_read_timeout: std::time::Duration::from_millis(
                self.query_header_read_timeout_ms,
            ),
            idle_timeout: std::time::Duration::from_millis(self.query_idle_timeout_ms),
            max_uri_bytes: self.query_max_uri_bytes,
        }
    }

    /// Checkpointing, if a directory is set.
    pub fn checkpoints(&self) -> Option<crate::aggregator::checkpoint::CheckpointConfig> {
        Some(crate::aggregator::checkpoint::CheckpointConfig {
            dir: self.checkpoint_dir.clone()?,
            interval: std::time::Duration::from_millis(self.checkpoint_interval_ms),
            keep: self.checkpoints_kept,
            full_every: self.checkpoint_full_every,
            settings: Some(crate::aggregator::checkpoint::StateSettings {
                tick_ms: self.tick_ms,
                allowed_lateness_ms: self.allowed_lateness_ms,
                dedup_horizon_ms: self.dedup_horizon_ms,
            }),
        })
    }

    /// Timely's communication settings for this shape.
    pub fn communication(&self) -> anyhow::Result<timely::CommunicationConfig> {
        if self.processes <= 1 {
            return Ok(timely::CommunicationConfig::Process(self.workers));
        }
        let addresses = match &self.hostfile {
            Some(path) => std::fs::read_to_string(path)?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect::<Vec<_>>(),
            None => (0..self.processes)
                .map(|i| format!("127.0.0.1:{}", 2101 + i))
                .collect(),
        };
        anyhow::ensure!(
            addresses.len() == self.processes,
            "hostfile lists {} addresses for {} processes",
            addresses.len(),
            self.processes
        );
        Ok(timely::CommunicationConfig::Cluster {
            threads: self.workers,
            process: self.process,
            addresses,
            report: false,
            zerocopy: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_rules_refuse_windows_out_of_range_and_zero_turns_a_rule_off() {
        let mut c = AggregatorConfig::default();
        assert!(c.check().is_ok());
        let d = c.invalid.dataflow();
        assert_eq!(d, InvalidConfig::default());
        for window in [0, 999, 7 * 24 * 3_600_000 + 1, u64::MAX] {
            c.invalid.ip_flood_window_ms = window;
            let e = c.check().unwrap_err().to_string();
            assert!(e.contains("aggregator.invalid.ip_flood_window_ms"), "{e}");
        }
        c.invalid = InvalidRules {
            ip_flood_max_clicks: 0,
            user_flood_max_clicks: u32::MAX,
            too_fast_ms: 0,
            ..InvalidRules::default()
        };
        assert!(c.check().is_ok());
        let d = c.invalid.dataflow();
        assert_eq!(d.ip_flood, None);
        assert_eq!(d.user_flood.unwrap().max_clicks, u32::MAX);
        assert_eq!(d.too_fast_ms, 0);
    }
}
