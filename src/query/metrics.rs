//! The aggregator's Prometheus metrics: query latency by endpoint and status, window
//! completion latency, and, read from [`Health`] at scrape time, the tallies, the watermark
//! delay and each partition's lag.

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
            "cluster_restarts",
            "Restarts of the whole cluster by its supervisor (adclick-aggregator cluster) \
             before this process started; 0 when not supervised",
            cluster_restarts.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            cluster_restarts,
            checkpoint,
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
        let mut out = String::new();
        encode(&mut out, &self.registry.lock().unwrap()).expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::Ordering;

    use serde_json::Value;

    use super::*;

    const DASHBOARD: &str = include_str!("../../docs/grafana/adclick-aggregator.json");

    /// Every `expr` of every panel target, rows' nested panels included, and every query
    /// variable's query.
    fn exprs(dashboard: &Value) -> Vec<String> {
        fn walk(panels: &Value, out: &mut Vec<String>) {
            for panel in panels.as_array().into_iter().flatten() {
                for target in panel["targets"].as_array().into_iter().flatten() {
                    let expr = target["expr"].as_str().expect("a target without expr");
                    out.push(expr.to_string());
                }
                walk(&panel["panels"], out);
            }
        }
        let mut out = Vec::new();
        walk(&dashboard["panels"], &mut out);
        for var in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if var["type"] == "query" {
                let q = &var["query"];
                out.push(q["query"].as_str().or(q.as_str()).unwrap().to_string());
            }
        }
        out
    }

    /// Identifiers starting with `adclick_`.
    fn metric_names(expr: &str) -> Vec<String> {
        let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        let mut names = Vec::new();
        let mut rest = expr;
        let mut prev_ident = false;
        while let Some(c) = rest.chars().next() {
            if !prev_ident && rest.starts_with("adclick_") {
                let end = rest.find(|c: char| !ident(c)).unwrap_or(rest.len());
                names.push(rest[..end].to_string());
                rest = &rest[end..];
                prev_ident = true;
                continue;
            }
            prev_ident = ident(c);
            rest = &rest[c.len_utf8()..];
        }
        names
    }

    /// The sample names in a text exposition with one observation in every family.
    fn exposed() -> BTreeSet<String> {
        let m = QueryMetrics::default();
        m.observe("stats", 200, Duration::from_millis(3));
        m.window_completion.observe(0.2);
        let health = Health::default();
        health.tallies.lock().unwrap().received = 5;
        health.frontier.store(1, Ordering::Relaxed);
        health.set_partition(0, 10, 12);
        m.render(&health)
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l[..l.find(['{', ' ']).unwrap_or(l.len())].to_string())
            .collect()
    }

    #[test]
    fn the_grafana_dashboard_only_uses_exported_metrics() {
        let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
        assert_eq!(dashboard["title"], "adclick aggregator");
        let panels = dashboard["panels"].as_array().expect("panels");
        let graphs = panels.iter().filter(|p| p["type"] != "row").count();
        assert!(graphs >= 6, "only {graphs} panels");
        for p in panels {
            assert!(p["gridPos"]["w"].as_u64().is_some(), "no gridPos: {p}");
        }

        let exposed = exposed();
        for family in [
            "query_duration_seconds_bucket",
            "window_completion_latency_seconds_count",
            "records",
            "watermark_delay_seconds",
            "partition_lag_records",
        ] {
            assert!(
                exposed.contains(&format!("adclick_aggregator_{family}")),
                "{family} not in {exposed:?}"
            );
        }
        assert!(!exposed.contains("adclick_aggregator_record"));

        let exprs = exprs(&dashboard);
        assert!(exprs.len() >= 6, "{exprs:?}");
        let mut used = 0;
        for expr in &exprs {
            for name in metric_names(expr) {
                assert!(
                    exposed.contains(&name),
                    "the dashboard uses {name}, which /metrics does not export, in {expr}\n\
                     exported: {exposed:?}"
                );
                used += 1;
            }
        }
        assert!(
            used >= exprs.len(),
            "an expr without an adclick_ metric: {exprs:?}"
        );
    }

    #[test]
    fn metric_names_are_whole_identifiers() {
        assert_eq!(
            metric_names(r#"sum(rate(adclick_a_b{x="y"}[5m])) / xadclick_c + adclick_d:e"#),
            ["adclick_a_b", "adclick_d:e"]
        );
    }
}
