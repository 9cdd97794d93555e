//! The redirect's own metrics (the outbox registers its own beside them).
//!
//! Label sets are resolved once at start-up, so the click path only bumps atomics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use std::path::Path;
use std::sync::atomic::AtomicU64;

use adclick_dataflows::invalid::{Reason, Reasons};

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

/// The edge's verdicts on one ingest path: clicks by result, and every reason found.
struct Verdicts {
    path: &'static str,
    clean: Counter,
    invalid: Counter,
    /// By [`Reason::index`]; the dataflow's reasons stay at 0 here.
    reasons: Vec<Counter>,
}

/// The paths that classify: the click endpoint and partner batches.
const CLASSIFYING: [&str; 2] = ["click", "events"];

#[derive(Clone)]
pub struct RedirectMetrics {
    endpoints: std::sync::Arc<Vec<Endpoint>>,
    verdicts: std::sync::Arc<Vec<Verdicts>>,
    /// Partner events by outcome (accepted, rejected).
    pub partner_events: Family<Labels, Counter>,
    /// Used share of the filesystem under the spool, read at each scrape.
    disk_used: Family<Labels, Gauge<f64, AtomicU64>>,
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
        let classified = Family::<Labels, Counter>::default();
        let reasons = Family::<Labels, Counter>::default();
        let verdicts = CLASSIFYING
            .iter()
            .map(|path| {
                let result = |r| {
                    classified
                        .get_or_create(&vec![("path", *path), ("result", r)])
                        .clone()
                };
                Verdicts {
                    path,
                    clean: result("clean"),
                    invalid: result("invalid"),
                    reasons: Reason::ALL
                        .iter()
                        .map(|r| {
                            reasons
                                .get_or_create(&vec![("path", *path), ("reason", r.name())])
                                .clone()
                        })
                        .collect(),
                }
            })
            .collect();
        registry.register(
            "classified",
            "Clicks the edge classified and accepted, by path (click, events) and result (clean, \
             invalid): invalid clicks are flagged and counted, never refused",
            classified,
        );
        registry.register(
            "invalid_reasons",
            "Reasons the edge found on accepted clicks, by path and reason (a click may have \
             several)",
            reasons,
        );
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
        let disk_used = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "disk_used_ratio",
            "Used share (0 to 1) of the filesystem under the spool (dir=spool), as df's Use%: \
             when it is full, clicks Kafka cannot take have nowhere to go",
            disk_used.clone(),
        );
        Self {
            disk_used,
            endpoints: std::sync::Arc::new(endpoints),
            verdicts: std::sync::Arc::new(verdicts),
            partner_events,
        }
    }

    /// Counts the edge's verdict on an accepted click of `path` (listed in `CLASSIFYING`).
    pub fn classified(&self, path: &'static str, reasons: Reasons) {
        let v = self
            .verdicts
            .iter()
            .find(|v| v.path == path)
            .expect("path listed in CLASSIFYING");
        if reasons.is_empty() {
            v.clean.inc();
        } else {
            v.invalid.inc();
        }
        for r in reasons.iter() {
            v.reasons[r.index()].inc();
        }
    }

    /// Reads how full the filesystem under `path` is, as `disk_used_ratio{dir=name}`; a
    /// directory that cannot be read keeps its last value (logged at debug).
    pub fn observe_disk(&self, name: &'static str, path: &Path) {
        match crate::disk::used_ratio(path) {
            Ok(r) => {
                self.disk_used.get_or_create(&vec![("dir", name)]).set(r);
            }
            Err(e) => tracing::debug!("disk_used_ratio of {}: {e}", path.display()),
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

    #[test]
    fn edge_verdicts_are_counted_by_path_and_reason() {
        let mut registry = Registry::default();
        let m = RedirectMetrics::register(&mut registry);
        m.classified("click", Reasons::NONE);
        m.classified("click", Reasons::of([Reason::KnownBot, Reason::Datacenter]));
        m.classified("events", Reasons::of([Reason::Headless]));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            r#"classified_total{path="click",result="clean"} 1"#,
            r#"classified_total{path="click",result="invalid"} 1"#,
            r#"classified_total{path="events",result="invalid"} 1"#,
            r#"invalid_reasons_total{path="click",reason="known_bot"} 1"#,
            r#"invalid_reasons_total{path="click",reason="datacenter"} 1"#,
            r#"invalid_reasons_total{path="click",reason="headless"} 0"#,
            r#"invalid_reasons_total{path="events",reason="headless"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
