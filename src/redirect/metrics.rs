//! The redirect's own metrics (the outbox registers its own beside them).
//!
//! Label sets are resolved once at start-up, so the click path only bumps atomics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Outcomes each endpoint can report; `request` panics on one not listed here, which the
/// endpoint tests would catch.
const OUTCOMES: [(&str, &[&str]); 2] = [
    (
        "click",
        &[
            "redirected",
            "unavailable",
            "malformed",
            "unknown_key",
            "bad_signature",
            "expired",
            "invalid_event",
        ],
    ),
    (
        "events",
        &[
            "ingested",
            "unauthorized",
            "bad_request",
            "unavailable",
            // Declared over the batch limit: refused before reading.
            "too_large",
            // Cut short (over the limit while streaming, or the body broke off): the lines
            // before stand.
            "partial",
        ],
    ),
];

struct Endpoint {
    name: &'static str,
    outcomes: Vec<(&'static str, Counter)>,
    latency: Histogram,
}

#[derive(Clone)]
pub struct RedirectMetrics {
    endpoints: std::sync::Arc<Vec<Endpoint>>,
    /// Partner events by outcome (accepted, rejected).
    pub partner_events: Family<Labels, Counter>,
}

impl RedirectMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<Labels, Counter>::default();
        let latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25,
            ])
        });
        let endpoints = OUTCOMES
            .iter()
            .map(|(name, outcomes)| Endpoint {
                name,
                outcomes: outcomes
                    .iter()
                    .map(|o| {
                        let labels = vec![("endpoint", *name), ("outcome", *o)];
                        (*o, requests.get_or_create(&labels).clone())
                    })
                    .collect(),
                latency: latency.get_or_create(&vec![("endpoint", *name)]).clone(),
            })
            .collect();
        let partner_events = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests by endpoint and outcome",
            requests,
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer, by endpoint (the outbox never waits for Kafka)",
            latency,
        );
        registry.register(
            "partner_events",
            "Partner events by outcome (accepted, rejected)",
            partner_events.clone(),
        );
        Self {
            endpoints: std::sync::Arc::new(endpoints),
            partner_events,
        }
    }

    pub fn request(&self, endpoint: &'static str, outcome: &'static str, seconds: f64) {
        let e = self
            .endpoints
            .iter()
            .find(|e| e.name == endpoint)
            .expect("endpoint listed in OUTCOMES");
        let (_, counter) = e
            .outcomes
            .iter()
            .find(|(o, _)| *o == outcome)
            .expect("outcome listed in OUTCOMES");
        counter.inc();
        e.latency.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_outcome_is_exported_from_the_start() {
        let mut registry = Registry::default();
        let m = RedirectMetrics::register(&mut registry);
        m.request("click", "expired", 0.001);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"requests_total{endpoint="click",outcome="expired"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"requests_total{endpoint="events",outcome="ingested"} 0"#),
            "{text}"
        );
    }
}
