//! The traffic anomaly alerts this process raised, for `GET /api/v1/alerts`, the dashboard
//! and `/metrics`: a bounded log (the newest [`AlertLog::CAPACITY`]) and counts by kind and
//! severity since start. The `click-alerts` topic keeps the whole history.
//!
//! A leaf module: the aggregator's alert sink writes it, the query server reads it.

use std::collections::VecDeque;
use std::sync::Mutex;

use adclick_dataflows::anomaly::{Alert, Kind, Severity};
use serde::Serialize;

use crate::timefmt::format_millis;

/// One alert with its key's texts, as the API, the topic and the dashboard show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertRecord {
    pub kind: &'static str,
    pub severity: &'static str,
    /// `campaign_id`, `publisher_id` or `campaign_id,country`.
    pub dimension: &'static str,
    /// The key's texts, one per dimension, in the dimension's order.
    pub key: Vec<String>,
    /// The event-time minute (RFC 3339) and its start in ms.
    pub minute: String,
    pub minute_ms: u64,
    pub observed: f64,
    pub baseline: f64,
    pub ratio: f64,
    pub score: f64,
}

impl AlertRecord {
    /// `alert` with its key's texts (`texts`, in [`Scope::syms`] order).
    ///
    /// [`Scope::syms`]: adclick_dataflows::anomaly::Scope::syms
    pub fn new(alert: &Alert, texts: Vec<String>) -> Self {
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        AlertRecord {
            kind: alert.kind.name(),
            severity: alert.severity.name(),
            dimension: alert.scope.dimension(),
            key: texts,
            minute: format_millis(alert.minute as i64),
            minute_ms: alert.minute,
            observed: round(alert.observed),
            baseline: round(alert.baseline),
            ratio: round(alert.ratio),
            score: round(alert.score),
        }
    }

    /// The record's identity (kind, dimension, key, minute): the topic's key, so a consumer
    /// can drop the copies a restart sends again.
    pub fn id(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.kind,
            self.dimension,
            self.key.join(","),
            self.minute_ms
        )
    }
}

#[derive(Default)]
pub struct AlertLog {
    recent: Mutex<VecDeque<AlertRecord>>,
    /// By [`Kind`] and [`Severity`] index.
    counts: Mutex<[[u64; 2]; 3]>,
}

impl AlertLog {
    /// Alerts kept for the API; older ones are in the topic.
    pub const CAPACITY: usize = 10_000;

    pub fn push(&self, alert: &Alert, record: AlertRecord) {
        self.counts.lock().unwrap()[alert.kind as usize][alert.severity as usize] += 1;
        let mut recent = self.recent.lock().unwrap();
        if recent.len() == Self::CAPACITY {
            recent.pop_front();
        }
        recent.push_back(record);
    }

    /// Alerts of minutes in [from, to), of `severity` or worse, oldest minute first.
    pub fn between(&self, from: u64, to: u64, least: Severity) -> Vec<AlertRecord> {
        let least = least.name();
        let mut found: Vec<_> = self
            .recent
            .lock()
            .unwrap()
            .iter()
            .filter(|r| (from..to).contains(&r.minute_ms))
            .filter(|r| least == "warning" || r.severity == least)
            .cloned()
            .collect();
        found.sort_by(|a, b| {
            (a.minute_ms, a.kind, a.dimension, &a.key).cmp(&(
                b.minute_ms,
                b.kind,
                b.dimension,
                &b.key,
            ))
        });
        found
    }

    /// Alerts raised since start, by kind and severity (every pair, zeros included).
    pub fn counts(&self) -> Vec<(Kind, Severity, u64)> {
        let counts = *self.counts.lock().unwrap();
        Kind::ALL
            .into_iter()
            .flat_map(|k| Severity::ALL.into_iter().map(move |s| (k, s)))
            .map(|(k, s)| (k, s, counts[k as usize][s as usize]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adclick_dataflows::anomaly::Scope;
    use adclick_dataflows::click::Sym;

    fn alert(minute: u64, severity: Severity) -> Alert {
        Alert {
            kind: Kind::Spike,
            scope: Scope::CampaignCountry(Sym(1), Sym(2)),
            minute,
            observed: 200.0,
            baseline: 2.0,
            ratio: 100.0,
            score: 114.66666,
            severity,
        }
    }

    #[test]
    fn the_log_filters_by_range_and_least_severity_and_counts_every_pair() {
        let log = AlertLog::default();
        for (m, s) in [(120_000, Severity::Critical), (60_000, Severity::Warning)] {
            let a = alert(m, s);
            log.push(&a, AlertRecord::new(&a, vec!["cmp_1".into(), "DE".into()]));
        }
        let all = log.between(0, 180_000, Severity::Warning);
        assert_eq!(
            all.iter().map(|r| r.minute_ms).collect::<Vec<_>>(),
            [60_000, 120_000]
        );
        assert_eq!(all[0].score, 114.667);
        assert_eq!(all[1].id(), "spike/campaign_id,country/cmp_1,DE/120000");
        assert_eq!(log.between(0, 180_000, Severity::Critical).len(), 1);
        assert_eq!(log.between(60_001, 120_000, Severity::Warning).len(), 0);
        let counts = log.counts();
        assert_eq!(counts.len(), 6);
        assert!(counts.contains(&(Kind::Spike, Severity::Critical, 1)));
        assert!(counts.contains(&(Kind::Drop, Severity::Warning, 0)));
    }
}
