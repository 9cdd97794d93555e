//! Window reports: what the sinks write. A row is reported `complete` when the frontier passes
//! its window's end, as a `correction` whenever a late click changes it afterwards, and
//! `final` once the frontier passes its end plus the allowed lateness, after which it never
//! changes again (later updates to it are only its retention retraction, which is not news).

use std::collections::BTreeMap;

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
    pub clicks: i64,
    pub duplicates: i64,
    pub status: Status,
}

struct RowState {
    measures: Measures,
    reported: Option<Measures>,
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
                let mut open: BTreeMap<Row, RowState> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|_cap, data| {
                        for (row, t, m) in data.drain(..) {
                            pending.entry(t).or_default().push((row, m));
                        }
                    });
                    let bound = frontier.frontier().first().copied();
                    let done = |t: u64| bound.is_none_or(|b| t < b);
                    // Apply complete times in order; ignore updates to rows already final.
                    while let Some(entry) = pending.first_entry() {
                        if !done(*entry.key()) {
                            break;
                        }
                        let (t, updates) = entry.remove_entry();
                        for (row, (c, d)) in updates {
                            if t >= row.0 + window_ms + lateness_ms {
                                continue;
                            }
                            let s = open.entry(row).or_insert(RowState {
                                measures: (0, 0),
                                reported: None,
                            });
                            s.measures.0 += c;
                            s.measures.1 += d;
                        }
                    }
                    let Some(c) = cap.as_mut() else { return };
                    let mut out = Vec::new();
                    let limit = bound.unwrap_or(u64::MAX);
                    let mut finished = Vec::new();
                    for (row, s) in open.range_mut(..) {
                        let end = row.0 + window_ms;
                        if end > limit {
                            break;
                        }
                        let report = |status, m: Measures| WindowReport {
                            window_ms,
                            row: row.clone(),
                            clicks: m.0,
                            duplicates: m.1,
                            status,
                        };
                        if end + lateness_ms <= limit {
                            if s.measures != (0, 0) || s.reported.is_some() {
                                out.push(report(Status::Final, s.measures));
                            }
                            finished.push(row.clone());
                        } else if s.reported.is_none() {
                            out.push(report(Status::Complete, s.measures));
                            s.reported = Some(s.measures);
                        } else if s.reported != Some(s.measures) {
                            out.push(report(Status::Correction, s.measures));
                            s.reported = Some(s.measures);
                        }
                    }
                    for row in finished {
                        open.remove(&row);
                    }
                    if !out.is_empty() {
                        output.session(&*c).give_iterator(out.into_iter());
                    }
                    match bound {
                        Some(b) if b > *c.time() => c.downgrade(&b),
                        Some(_) => {}
                        None => cap = None::<Capability<u64>>,
                    }
                }
            },
        )
}
