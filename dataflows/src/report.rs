//! Window reports: what the sinks write. A row is reported `complete` when the frontier passes
//! its window's end, as a `correction` whenever a late click changes it afterwards, and
//! `final` once the frontier passes its end plus the allowed lateness, after which it never
//! changes again (later updates to it are only its retention retraction, which is not news).

use std::collections::BTreeMap;

use foldhash::{HashMap, HashSet};

use differential_dataflow::{Hashable, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

use crate::click::{Measures, Row};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Status {
    Complete,
    Correction,
    Final,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowReport {
    pub window_ms: u64,
    pub row: Row,
    pub measures: Measures,
    pub status: Status,
}

/// Rows by the state of their window, so each activation touches only what changes.
#[derive(Default)]
struct Rows {
    measures: HashMap<Row, Measures>,
    /// Rows not yet reported, by window end.
    unreported: BTreeMap<u64, HashSet<Row>>,
    /// Reported rows, by the time they become final.
    reported: BTreeMap<u64, HashSet<Row>>,
    /// Reported rows changed since their last report.
    changed: HashSet<Row>,
    /// Rows already reported, with the measures they were last reported with.
    last: HashMap<Row, Measures>,
}

/// Reports for rows of `window_ms` windows.
pub fn reports<'s>(
    rows: VecCollection<'s, u64, Row, Measures>,
    window_ms: u64,
    lateness_ms: u64,
) -> Stream<'s, u64, Vec<WindowReport>> {
    let exchange = Exchange::new(|(row, _, _): &(Row, u64, Measures)| row.hashed());
    rows.inner
        .unary_frontier::<CapacityContainerBuilder<Vec<WindowReport>>, _, _, _>(
            exchange,
            "WindowReports",
            move |cap, _info| {
                let mut cap = Some(cap);
                let mut pending: BTreeMap<u64, Vec<(Row, Measures)>> = BTreeMap::new();
                let mut rows = Rows::default();
                // The latest time of any update applied: reports go out no earlier, so a
                // consumer that has seen everything up to a report's time has seen the
                // texts its dimensions need (announced at the times of their clicks).
                let mut latest = 0;
                move |(input, frontier), output| {
                    input.for_each(|_cap, data| {
                        for (row, t, m) in data.drain(..) {
                            pending.entry(t).or_default().push((row, m));
                        }
                    });
                    let bound = frontier.frontier().first().copied();
                    let limit = bound.unwrap_or(u64::MAX);
                    // Apply complete times in order; ignore updates to rows already final
                    // (those are retention retractions).
                    while let Some(entry) = pending.first_entry() {
                        if *entry.key() >= limit {
                            break;
                        }
                        let (t, updates) = entry.remove_entry();
                        latest = latest.max(t);
                        for (row, delta) in updates {
                            let end = row.0 + window_ms;
                            // No click reaches a window at or after end + lateness (the
                            // sources judge it late first). Rows restored from a checkpoint at
                            // F arrive at F − 1: those final at F − 1 or before were reported
                            // final before the checkpoint, and those final at F or later still
                            // owe their final report.
                            if t >= end + lateness_ms {
                                continue;
                            }
                            *rows.measures.entry(row).or_default() += delta;
                            if rows.last.contains_key(&row) {
                                rows.changed.insert(row);
                            } else {
                                rows.unreported.entry(end).or_default().insert(row);
                            }
                        }
                    }
                    let Some(c) = cap.as_mut() else { return };
                    let mut out = Vec::new();
                    // Final reports go out at their window's end + lateness exactly (never
                    // earlier than the capability): a function of the input alone, so a
                    // checkpoint at frontier F holds exactly the finals before F, and after a
                    // restore from it the others are reported, once.
                    let mut finals: BTreeMap<u64, Vec<WindowReport>> = BTreeMap::new();
                    let report = |row: &Row, m: Measures, status| WindowReport {
                        window_ms,
                        row: *row,
                        measures: m,
                        status,
                    };
                    // Corrections of rows reported before.
                    for row in rows.changed.drain() {
                        let m = rows.measures[&row];
                        if rows.last.get(&row) != Some(&m) {
                            out.push(report(&row, m, Status::Correction));
                            rows.last.insert(row, m);
                        }
                    }
                    // Windows the frontier passed the end of: complete.
                    while let Some(entry) = rows.unreported.first_entry() {
                        if *entry.key() > limit {
                            break;
                        }
                        let (end, bucket) = entry.remove_entry();
                        for row in bucket {
                            if end + lateness_ms <= limit {
                                // Complete and final at once (a batch job's last step).
                                let m = rows.measures.remove(&row).unwrap_or_default();
                                let at = (end + lateness_ms).max(*c.time());
                                finals
                                    .entry(at)
                                    .or_default()
                                    .push(report(&row, m, Status::Final));
                                continue;
                            }
                            let m = rows.measures[&row];
                            out.push(report(&row, m, Status::Complete));
                            rows.last.insert(row, m);
                            rows.reported
                                .entry(end + lateness_ms)
                                .or_default()
                                .insert(row);
                        }
                    }
                    // Windows the frontier passed the end plus lateness of: final.
                    while let Some(entry) = rows.reported.first_entry() {
                        if *entry.key() > limit {
                            break;
                        }
                        let (at, bucket) = entry.remove_entry();
                        let at = at.max(*c.time());
                        for row in bucket {
                            let m = rows.measures.remove(&row).unwrap_or_default();
                            rows.last.remove(&row);
                            finals
                                .entry(at)
                                .or_default()
                                .push(report(&row, m, Status::Final));
                        }
                    }
                    // Sent before the capability moves up to the new frontier: at a time the
                    // frontier has already passed once the updates behind them are done, so
                    // a consumer waiting for the frontier is never left waiting for more
                    // input that may not come.
                    if !out.is_empty() {
                        let at = c.delayed(&latest.max(*c.time()));
                        output.session(&at).give_iterator(out.into_iter());
                    }
                    for (at, reports) in finals {
                        output
                            .session(&c.delayed(&at))
                            .give_iterator(reports.into_iter());
                    }
                    if let Some(b) = bound
                        && b > *c.time()
                    {
                        c.downgrade(&b);
                    }
                    if bound.is_none() {
                        cap = None::<Capability<u64>>;
                    }
                }
            },
        )
}
