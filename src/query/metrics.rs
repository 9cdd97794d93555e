//! The aggregator's Prometheus metrics: query latency by endpoint and status, window
//! completion latency, and, read from [`Health`] at scrape time, the tallies, the watermark
//! delay and each partition's lag.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::aggregator::health::Health;

type Labels = Vec<(&'static str, String)>;

pub struct QueryMetrics {
    registry: Mutex<Registry>,
    queries: Family<Labels, Histogram>,
    /// Wall clock when the frontier passed a window's end, minus (end + out-of-orderness).
    pub window_completion: Histogram,
    tallies: Family<Labels, Gauge>,
    watermark_delay: Gauge<f64, std::sync::atomic::AtomicU64>,
    lag: Family<Labels, Gauge>,
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
            "Records by outcome: received, counted, duplicates, late, dead_lettered (counted \
             and duplicates of finalized windows)",
            tallies.clone(),
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
        Self {
            registry: Mutex::new(registry),
            queries,
            window_completion,
            tallies,
            watermark_delay,
            lag,
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
            ("duplicates", t.duplicates),
            ("late", t.late as i64),
            ("dead_lettered", t.dead_lettered as i64),
        ] {
            self.tallies
                .get_or_create(&vec![("outcome", name.to_string())])
                .set(v);
        }
        if let Some(d) = health.watermark_delay_ms() {
            self.watermark_delay.set(d as f64 / 1000.0);
        }
        for (p, (next, high)) in health.partitions.lock().unwrap().iter() {
            self.lag
                .get_or_create(&vec![("partition", p.to_string())])
                .set((high - next).max(0));
        }
        let mut out = String::new();
        encode(&mut out, &self.registry.lock().unwrap()).expect("writing to a String");
        out
    }
}
