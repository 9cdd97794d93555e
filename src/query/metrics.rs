//! The aggregator's Prometheus metrics: query latency by endpoint and status, window
//! completion latency, and, read from [`Health`] at scrape time, the tallies, the watermark
//! delay and each partition's lag.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use adclick_dataflows::invalid::Reason;

use crate::health::Health;

type Labels = Vec<(&'static str, String)>;

pub struct QueryMetrics {
    registry: Mutex<Registry>,
    queries: Family<Labels, Histogram>,
    /// Wall clock when the frontier passed a window's end, minus (end + out-of-orderness).
    pub window_completion: Histogram,
    tallies: Family<Labels, Gauge>,
    watermark_delay: Gauge<f64, std::sync::atomic::AtomicU64>,
    lag: Family<Labels, Gauge>,
    /// Records this process found deleted before it read them, as soon as it finds them.
    gap_records: Gauge,
    /// Invalid clicks of finalized windows, by reason.
    invalid: Family<Labels, Gauge>,
    checkpoint: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// The supervisor's restarts of the whole cluster before this process started.
    cluster_restarts: Gauge,
    restoring_workers: Gauge,
    checkpoint_interval: Gauge<f64, std::sync::atomic::AtomicU64>,
    checkpoint_committed_at: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Used share of the filesystem under each directory the aggregator writes.
    disk_used: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    disks: Vec<(&'static str, PathBuf)>,
    /// Traffic anomaly alerts raised since start, by kind and severity.
    alerts: Family<Labels, Gauge>,
    /// The resident set, the budget and whether the sources are held back by it.
    memory: Family<Labels, Gauge>,
}

impl Default for QueryMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("adclick_aggregator");
        let queries = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0,
            ])
        });
        let window_completion =
            Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0]);
        let tallies = Family::<Labels, Gauge>::default();
        let watermark_delay = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let lag = Family::<Labels, Gauge>::default();
        let gap_records = Gauge::default();
        let invalid = Family::<Labels, Gauge>::default();
        let checkpoint = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let cluster_restarts = Gauge::default();
        let restoring_workers = Gauge::default();
        let checkpoint_interval = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let checkpoint_committed_at = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let disk_used = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let alerts = Family::<Labels, Gauge>::default();
        registry.register(
            "alerts",
            "Traffic anomaly alerts raised since start (GET /api/v1/alerts, the click-alerts \
             topic), by kind (spike, drop, invalid_share) and severity (warning, critical)",
            alerts.clone(),
        );
        registry.register(
            "query_duration_seconds",
            "Query answer time by endpoint and status",
            queries.clone(),
        );
        registry.register(
            "window_completion_latency_seconds",
            "Time from the earliest moment a minute window could complete (its end plus the \
             out-of-orderness bound) to the frontier passing its end",
            window_completion.clone(),
        );
        registry.register(
            "records",
            "Records by outcome: received, counted (billable), invalid, duplicates, late, \
             dead_lettered (counted, invalid and duplicates of finalized windows), and lost \
             (deleted before they were read)",
            tallies.clone(),
        );
        registry.register(
            "invalid_clicks",
            "Invalid clicks of finalized windows by reason (each click under its first reason: \
             known_bot, datacenter, no_user_agent, headless, ip_flood, user_flood, too_fast)",
            invalid.clone(),
        );
        registry.register(
            "watermark_delay_seconds",
            "Wall clock minus the watermark",
            watermark_delay.clone(),
        );
        registry.register(
            "partition_lag_records",
            "High watermark minus next offset, per partition of this process",
            lag.clone(),
        );
        registry.register(
            "gap_records",
            "Records this process found deleted before it read them (offset gaps); above 0, \
             counts are short of the topic and health says degraded",
            gap_records.clone(),
        );
        registry.register(
            "checkpoint",
            "The newest checkpoint this process committed: frontier (s since the epoch), \
             duration (s from request to manifest), bytes, and committed (count since start)",
            checkpoint.clone(),
        );
        registry.register(
            "checkpoint_interval_seconds",
            "aggregator.checkpoint_interval_ms in seconds (absent without checkpoints)",
            checkpoint_interval.clone(),
        );
        registry.register(
            "checkpoint_last_commit_timestamp_seconds",
            "When this process last committed a checkpoint (s since the epoch), its start \
             until the first; with checkpoint_interval_seconds it tells a stalled \
             checkpointer (absent without checkpoints)",
            checkpoint_committed_at.clone(),
        );
        registry.register(
            "disk_used_ratio",
            "Used share (0 to 1) of the filesystem under each directory the aggregator writes, \
             by dir (checkpoint, parquet, output), as df's Use%",
            disk_used.clone(),
        );
        let memory = Family::<Labels, Gauge>::default();
        registry.register(
            "memory_bytes",
            "This process's resident set (value=resident), its budget \
             (value=budget, aggregator.memory_budget_mb; 0 none), and value=over_budget: 1 \
             while the resident set is over it and the sources read only what the dataflow \
             caught up with",
            memory.clone(),
        );
        registry.register(
            "cluster_restarts",
            "Restarts of the whole cluster by its supervisor (adclick-aggregator cluster) \
             before this process started; 0 when not supervised",
            cluster_restarts.clone(),
        );
        registry.register(
            "restoring_workers",
            "This process's workers whose restored dedup state is still being built after a \
             restart: they serve the restored windows, and count no click past the checkpoint \
             until it is built",
            restoring_workers.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            memory,
            cluster_restarts,
            restoring_workers,
            checkpoint,
            checkpoint_interval,
            checkpoint_committed_at,
            disk_used,
            disks: Vec::new(),
            alerts,
            queries,
            window_completion,
            tallies,
            watermark_delay,
            lag,
            gap_records,
            invalid,
        }
    }
}

impl QueryMetrics {
    /// Metrics that also report how full the filesystems under `disks` are.
    pub fn watching_disks(disks: Vec<(&'static str, PathBuf)>) -> Self {
        Self {
            disks,
            ..Self::default()
        }
    }

    pub fn observe(&self, endpoint: &'static str, status: u16, took: Duration) {
        self.queries
            .get_or_create(&vec![
                ("endpoint", endpoint.to_string()),
                ("status", status.to_string()),
            ])
            .observe(took.as_secs_f64());
    }

    pub fn render(&self, health: &Health) -> String {
        let t = *health.tallies.lock().unwrap();
        for (name, v) in [
            ("received", t.received as i64),
            ("counted", t.counted),
            ("invalid", t.invalid),
            ("duplicates", t.duplicates),
            ("late", t.late as i64),
            ("dead_lettered", t.dead_lettered as i64),
            ("lost", t.lost as i64),
        ] {
            self.tallies
                .get_or_create(&vec![("outcome", name.to_string())])
                .set(v);
        }
        for (reason, n) in Reason::ALL.iter().zip(t.invalid_by_reason) {
            self.invalid
                .get_or_create(&vec![("reason", reason.name().to_string())])
                .set(n);
        }
        self.gap_records.set(health.lost_records() as i64);
        self.cluster_restarts.set(health.restarts.count as i64);
        self.restoring_workers
            .set(health.restoring_workers.load(Ordering::Relaxed) as i64);
        if let Some(d) = health.watermark_delay_ms() {
            self.watermark_delay.set(d as f64 / 1000.0);
        }
        for (p, (next, high)) in health.partitions.lock().unwrap().iter() {
            self.lag
                .get_or_create(&vec![("partition", p.to_string())])
                .set((high - next).max(0));
        }
        if let Some(m) = health.checkpoint.lock().unwrap().as_ref() {
            let committed = health.checkpoints_committed.load(Ordering::Relaxed);
            for (what, v) in [
                ("frontier", m.frontier as f64 / 1000.0),
                ("duration", m.duration_ms as f64 / 1000.0),
                ("bytes", m.bytes as f64),
                ("committed", committed as f64),
            ] {
                self.checkpoint
                    .get_or_create(&vec![("value", what.to_string())])
                    .set(v);
            }
        }
        let interval = health.checkpoint_interval_ms.load(Ordering::Relaxed);
        if interval > 0 {
            self.checkpoint_interval.set(interval as f64 / 1000.0);
            let at = health.checkpoint_committed_at_ms.load(Ordering::Relaxed);
            self.checkpoint_committed_at.set(at as f64 / 1000.0);
        }
        if let Some(b) = health.memory.lock().unwrap().as_ref() {
            let over = b.over.load(Ordering::Relaxed);
            for (what, v) in [
                ("resident", b.resident_bytes.load(Ordering::Relaxed)),
                ("budget", b.limit_bytes),
                ("over_budget", u64::from(over)),
            ] {
                self.memory
                    .get_or_create(&vec![("value", what.to_string())])
                    .set(v as i64);
            }
        }
        for (kind, severity, n) in health.alerts.counts() {
            let labels = vec![
                ("kind", kind.name().to_string()),
                ("severity", severity.name().to_string()),
            ];
            self.alerts.get_or_create(&labels).set(n as i64);
        }
        for (name, dir) in &self.disks {
            match crate::disk::used_ratio(dir) {
                Ok(r) => {
                    let dir = vec![("dir", name.to_string())];
                    self.disk_used.get_or_create(&dir).set(r);
                }
                Err(e) => tracing::debug!("disk_used_ratio of {}: {e}", dir.display()),
            }
        }
        let mut out = String::new();
        encode(&mut out, &self.registry.lock().unwrap()).expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Budget;

    #[test]
    fn the_memory_budget_and_the_resident_set_are_exported() {
        let health = Health::new(1, 1);
        let metrics = QueryMetrics::default();
        assert!(
            !metrics
                .render(&health)
                .contains("adclick_aggregator_memory_bytes{")
        );
        *health.memory.lock().unwrap() = Some(Budget::start(64));
        let out = metrics.render(&health);
        let value = |what: &str| -> i64 {
            let prefix = format!("adclick_aggregator_memory_bytes{{value=\"{what}\"}} ");
            let line = out.lines().find(|l| l.starts_with(&prefix)).expect(what);
            line[prefix.len()..].parse().unwrap()
        };
        assert_eq!(value("budget"), 64 << 20);
        assert!(value("resident") > 0);
        // The flag follows the sampler's readings (memory.rs tests how); here only its form.
        assert!([0, 1].contains(&value("over_budget")));
    }
}
