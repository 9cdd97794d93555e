//! Merged answers (fingerprints) to the JSON of the HTTP contract (texts).

use adclick_dataflows::click::Sym;
use adclick_dataflows::names::{Dictionary, Text};
use adclick_dataflows::query::{Answer, Granularity, Query, QueryKind};
use adclick_dataflows::time::MINUTE_MS;
use serde_json::{Value, json};

use super::params::{QueryError, ReportShape, Traffic};
use crate::timefmt::format_millis;

/// A merged answer with the texts of its fingerprints. Worker 0 owns the dictionary, so it
/// looks them up ([`Resolved::new`]); the JSON is built from this on the HTTP thread
/// ([`render`]), because every query passes through worker 0 and its time is the cluster's.
pub struct Resolved {
    pub query: Query,
    pub answer: Answer,
    /// The texts the answer shows, by fingerprint (sorted).
    texts: Vec<(Sym, Text)>,
}

impl Resolved {
    pub fn new(query: Query, answer: Answer, names: &Dictionary) -> Self {
        let mut syms: Vec<Sym> = match &answer {
            Answer::Count { .. } => Vec::new(),
            Answer::Rows(rows) => rows
                .iter()
                .flat_map(|((_, dims), _)| dims.iter().flatten().copied())
                .collect(),
            Answer::Top(ranking) => ranking.iter().map(|((ad, _), _)| *ad).collect(),
            Answer::Reach(rows) => rows
                .iter()
                .flat_map(|((_, d), _)| [d.ad_id, d.campaign_id, d.publisher_id, d.country])
                .filter(|s| *s != Sym::default())
                .collect(),
        };
        syms.sort_unstable();
        syms.dedup();
        let texts = syms.into_iter().map(|s| (s, names.text(s))).collect();
        Resolved {
            query,
            answer,
            texts,
        }
    }

    fn text(&self, sym: Sym) -> String {
        let i = self
            .texts
            .binary_search_by_key(&sym, |(s, _)| *s)
            .expect("every fingerprint of the answer was looked up");
        self.texts[i].1.to_string()
    }
}

/// The answer's JSON, or [`QueryError::NotFound`] for an advertiser asking about an ad that is
/// not its own, or that it cannot be shown to own. `read_at + 1` is the frontier the answer
/// is consistent at; ranges ending at or before it are complete. `ad_text` is the ad id as
/// asked (echoed in the answer).
pub fn render(resolved: Resolved, admin: bool, ad_text: &str) -> Result<Value, QueryError> {
    let Query { read_at, kind, .. } = &resolved.query;
    let frontier = read_at + 1;
    let text = |s| resolved.text(s);
    match (kind, &resolved.answer) {
        (QueryKind::AdCount { from, to, .. }, Answer::Count { measures, ad_seen }) => {
            if !admin && !*ad_seen {
                return Err(QueryError::NotFound);
            }
            Ok(json!({
                "ad_id": ad_text,
                "count": measures.clicks,
                "duplicates": measures.duplicates,
                "invalid": measures.invalid_names(),
                "from": format_millis(*from as i64),
                "to": format_millis(*to as i64),
                "complete": *to <= frontier,
            }))
        }
        (QueryKind::Report { to, group, .. }, Answer::Rows(rows)) => {
            let time_name = group.time.map(|g| match g {
                Granularity::Minute => "minute",
                Granularity::Hour => "hour",
                Granularity::Day => "day",
            });
            const DIM_NAMES: [&str; 6] = [
                "adId",
                "campaignId",
                "advertiserId",
                "publisherId",
                "country",
                "device",
            ];
            let rows: Vec<Value> = rows
                .iter()
                .map(|((t, dims), m)| {
                    let mut row = serde_json::Map::new();
                    if let (Some(name), Some(t)) = (time_name, t) {
                        row.insert(name.into(), format_millis(*t as i64).into());
                    }
                    for (i, d) in dims.iter().enumerate() {
                        if let Some(s) = d {
                            row.insert(DIM_NAMES[i].into(), text(*s).into());
                        }
                    }
                    row.insert("clicks".into(), m.clicks.into());
                    row.insert("duplicates".into(), m.duplicates.into());
                    row.insert("invalid".into(), json!(m.invalid_names()));
                    Value::Object(row)
                })
                .collect();
            Ok(json!({
                "rows": rows,
                "complete": *to <= frontier,
                "watermark": format_millis(frontier as i64),
            }))
        }
        (
            QueryKind::Top {
                key: (m, end, _), ..
            },
            Answer::Top(ranking),
        ) => Ok(json!({
            "ad_ids": ranking.iter().map(|((ad, _), _)| text(*ad)).collect::<Vec<_>>(),
            "counts": ranking.iter().map(|(_, c)| *c).collect::<Vec<_>>(),
            "window_minutes": m,
            "update_time_minute": format_millis(*end as i64),
            "complete": end + MINUTE_MS <= frontier,
        })),
        (
            QueryKind::Reach {
                to,
                time,
                lateness_ms,
                ..
            },
            Answer::Reach(rows),
        ) => {
            let rows: Vec<Value> = rows
                .iter()
                .map(|((t, d), sketch)| {
                    let mut row = serde_json::Map::new();
                    if let (Some(g), Some(t)) = (time, t) {
                        let name = if *g == Granularity::Day {
                            "day"
                        } else {
                            "hour"
                        };
                        row.insert(name.into(), format_millis(*t as i64).into());
                    }
                    for (name, s) in [
                        ("adId", d.ad_id),
                        ("campaignId", d.campaign_id),
                        ("publisherId", d.publisher_id),
                        ("country", d.country),
                    ] {
                        if s != Sym::default() {
                            row.insert(name.into(), text(s).into());
                        }
                    }
                    row.insert("uniqueUsers".into(), sketch.estimate().into());
                    row.insert("exact".into(), sketch.is_exact().into());
                    Value::Object(row)
                })
                .collect();
            Ok(json!({
                "rows": rows,
                "complete": to + lateness_ms <= frontier,
                "watermark": format_millis(frontier as i64),
            }))
        }
        _ => unreachable!("merge answers each query with its own kind"),
    }
}

/// The distinct users of a reach answer's rows together (an ad's, for `aggregated_count`).
pub fn unique_users(resolved: &Resolved) -> Option<u64> {
    let Answer::Reach(rows) = &resolved.answer else {
        return None;
    };
    let mut all = adclick_dataflows::sketch::UserSketch::default();
    for (_, s) in rows {
        all.merge(s);
    }
    Some(all.estimate())
}

/// Whether a reach answer covers every minute of its range: the watermark has passed the
/// range's end plus the lateness, so every minute of it is final and in the sketches.
pub fn reach_complete(resolved: &Resolved) -> Option<bool> {
    match &resolved.query.kind {
        QueryKind::Reach {
            to, lateness_ms, ..
        } => Some(to + lateness_ms <= resolved.query.read_at + 1),
        _ => None,
    }
}

/// A report with each row's `uniqueUsers` from `reach` (the rendered reach answer of the same
/// range and groups), joined on `names`; a row without users has 0.
pub fn join_unique_users(mut report: Value, reach: Option<Value>, names: &[&str]) -> Value {
    let key = |row: &Value| -> Vec<Value> { names.iter().map(|n| row[*n].clone()).collect() };
    let users: std::collections::HashMap<String, Value> = reach
        .as_ref()
        .and_then(|r| r["rows"].as_array())
        .into_iter()
        .flatten()
        .map(|row| (json!(key(row)).to_string(), row["uniqueUsers"].clone()))
        .collect();
    if let Some(rows) = report.get_mut("rows").and_then(Value::as_array_mut) {
        for row in rows {
            let found = users.get(&json!(key(row)).to_string()).cloned();
            row["uniqueUsers"] = found.unwrap_or(json!(0));
        }
    }
    report
}

/// A report without its click measures (`metrics=unique_users` alone).
pub fn without_clicks(mut report: Value) -> Value {
    if let Some(rows) = report.get_mut("rows").and_then(Value::as_array_mut) {
        for row in rows.iter_mut().filter_map(Value::as_object_mut) {
            for m in ["clicks", "duplicates", "invalid"] {
                row.remove(m);
            }
        }
    }
    report
}

/// A report's rows as `shape` asks: `clicks` counts the chosen traffic, and with `by_reason`
/// each row becomes one row per reason present (`invalidReason`, null for billable clicks),
/// without `duplicates` (a duplicate has no reason). Rows left at zero are dropped.
pub fn shape_report(mut report: Value, shape: ReportShape) -> Value {
    if shape == ReportShape::default() {
        return report;
    }
    let Some(rows) = report.get_mut("rows").and_then(Value::as_array_mut) else {
        return report;
    };
    let mut shaped = Vec::with_capacity(rows.len());
    for row in rows.drain(..) {
        let Value::Object(mut row) = row else {
            continue;
        };
        let billable = row.get("clicks").and_then(Value::as_i64).unwrap_or(0);
        let invalid: Vec<(String, i64)> = row
            .get("invalid")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_i64()?)))
                    .collect()
            })
            .unwrap_or_default();
        let mut parts: Vec<(Option<String>, i64)> = Vec::new();
        if shape.traffic != Traffic::Invalid {
            parts.push((None, billable));
        }
        if shape.traffic != Traffic::Billable {
            parts.extend(invalid.iter().map(|(r, n)| (Some(r.clone()), *n)));
        }
        if shape.by_reason {
            row.remove("duplicates");
            row.remove("invalid");
            for (reason, n) in parts {
                if n == 0 {
                    continue;
                }
                let mut split = row.clone();
                split.insert("invalidReason".into(), json!(reason));
                split.insert("clicks".into(), n.into());
                shaped.push(Value::Object(split));
            }
        } else {
            let clicks: i64 = parts.iter().map(|(_, n)| n).sum();
            row.insert("clicks".into(), clicks.into());
            shaped.push(Value::Object(row));
        }
    }
    *rows = shaped;
    report
}

/// A report's rows as a traffic-quality answer: each row gains the invalid clicks in all
/// (`invalidClicks`) and their share of every deduplicated click (`invalidShare`, 0 to 1;
/// 0 for a row with no clicks at all), and rows are ordered by that share, highest first.
pub fn traffic_quality(mut report: Value) -> Value {
    if let Some(rows) = report.get_mut("rows").and_then(Value::as_array_mut) {
        for row in rows.iter_mut() {
            let invalid: i64 = row
                .get("invalid")
                .and_then(Value::as_object)
                .map(|m| m.values().filter_map(Value::as_i64).sum())
                .unwrap_or(0);
            let billable = row.get("clicks").and_then(Value::as_i64).unwrap_or(0);
            let all = billable + invalid;
            let share = if all > 0 {
                invalid as f64 / all as f64
            } else {
                0.0
            };
            if let Some(o) = row.as_object_mut() {
                o.remove("duplicates");
                o.insert("invalidClicks".into(), invalid.into());
                o.insert("invalidShare".into(), json!(share));
            }
        }
        let share = |r: &Value| r["invalidShare"].as_f64().unwrap_or(0.0);
        rows.sort_by(|a, b| share(b).total_cmp(&share(a)));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_count_the_chosen_traffic_and_split_by_reason() {
        let report = || {
            json!({"rows": [
                {"adId": "a", "clicks": 4, "duplicates": 1, "invalid": {"ip_flood": 2, "too_fast": 1}},
                {"adId": "b", "clicks": 0, "duplicates": 0, "invalid": {"known_bot": 5}},
            ]})
        };
        let shaped =
            |traffic, by_reason| shape_report(report(), ReportShape { traffic, by_reason });
        assert_eq!(shaped(Traffic::Billable, false), report());
        let all = shaped(Traffic::All, false);
        assert_eq!(all["rows"][0]["clicks"], 7);
        assert_eq!(all["rows"][1]["clicks"], 5);
        assert_eq!(shaped(Traffic::Invalid, false)["rows"][0]["clicks"], 3);
        let split = shaped(Traffic::All, true);
        let rows: Vec<_> = split["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["adId"].clone(),
                    r["invalidReason"].clone(),
                    r["clicks"].clone(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (json!("a"), Value::Null, json!(4)),
                (json!("a"), json!("ip_flood"), json!(2)),
                (json!("a"), json!("too_fast"), json!(1)),
                (json!("b"), json!("known_bot"), json!(5)),
            ]
        );
        let billable_split = shaped(Traffic::Billable, true);
        assert_eq!(billable_split["rows"].as_array().unwrap().len(), 1);
        assert!(billable_split["rows"][0].get("duplicates").is_none());
    }

    #[test]
    fn traffic_quality_adds_the_invalid_share_and_ranks_by_it() {
        let report = json!({"rows": [
            {"publisherId": "clean", "clicks": 10, "duplicates": 1, "invalid": {}},
            {"publisherId": "farm", "clicks": 1, "duplicates": 0,
             "invalid": {"ip_flood": 2, "known_bot": 1}},
            {"publisherId": "empty", "clicks": 0, "duplicates": 3, "invalid": {}},
        ], "complete": true});
        let q = traffic_quality(report);
        let rows = q["rows"].as_array().unwrap();
        assert_eq!(rows[0]["publisherId"], "farm");
        assert_eq!(rows[0]["invalidClicks"], 3);
        assert_eq!(rows[0]["invalidShare"], 0.75);
        assert_eq!(rows[1]["invalidShare"], 0.0);
        assert!(rows.iter().all(|r| r.get("duplicates").is_none()));
        assert_eq!(q["complete"], true);
    }
}
