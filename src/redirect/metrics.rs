//! The redirect's own metrics (the outbox registers its own beside them).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

#[derive(Clone)]
pub struct RedirectMetrics {
    /// Requests by endpoint and outcome.
    pub requests: Family<Labels, Counter>,
    /// Handling time by endpoint, from routing to the response (the outbox never waits for Kafka).
    pub latency: Family<Labels, Histogram>,
    /// Partner events by outcome.
    pub partner_events: Family<Labels, Counter>,
}

impl RedirectMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new([
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25,
                ])
            }),
            partner_events: Family::default(),
        };
        registry.register(
            "requests",
            "HTTP requests by endpoint and outcome",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer, by endpoint",
            m.latency.clone(),
        );
        registry.register(
            "partner_events",
            "Partner events by outcome (accepted, rejected)",
            m.partner_events.clone(),
        );
        m
    }

    pub fn request(&self, endpoint: &'static str, outcome: &'static str, seconds: f64) {
        self.requests
            .get_or_create(&vec![("endpoint", endpoint), ("outcome", outcome)])
            .inc();
        self.latency
            .get_or_create(&vec![("endpoint", endpoint)])
            .observe(seconds);
    }
}
