//! Window reports: what the sinks write. A row is reported `complete` when the frontier passes
//! its window's end, as a `correction` whenever a late click changes it afterwards, and
//! `final` once the frontier passes its end plus the allowed lateness, after which it never
//! changes again (later updates to it are only its retention retraction, which is not news).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;

use std::collections::BTreeSet;
use std::collections::hash_map::Entry;

use foldhash::HashMap;

use differential_dataflow::{Hashable, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

use crate::click::{Dims, Measures, Row};

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

/// Rows by window, each held once until its window is final: a row's report state follows
/// from its window's (rows of a window that has not ended are unreported, the others were
/// reported), so only rows changed since their last report keep a second copy.
#[derive(Default)]
struct Rows {
    /// By window start, which orders windows by end and by final time alike.
    windows: BTreeMap<u64, HashMap<Dims, Measures>>,
    /// Windows that have not been reported complete, by start.
    unreported: BTreeSet<u64>,
    /// Rows of reported windows changed since their last report, with the measures that
    /// report gave (`None`: a row first seen after its window was reported).
    changed: HashMap<Row, Option<Measures>>,
}

impl Rows {
    /// Adds an update to its row. A row of a reported window starts a change, remembering
    /// what its last report said.
    fn update(&mut self, (start, dims): Row, delta: Measures) {
        let unreported = &mut self.unreported;
        let window = self.windows.entry(start).or_insert_with(|| {
            unreported.insert(start);
            HashMap::default()
        });
        let reported = !unreported.contains(&start);
        let m = match window.entry(dims) {
            Entry::Occupied(o) => {
                if reported {
                    self.changed
                        .entry((start, dims))
                        .or_insert_with(|| Some(o.get().clone()));
                }
                o.into_mut()
            }
            Entry::Vacant(v) => {
                if reported {
                    self.changed.insert((start, dims), None);
                }
                v.insert(Measures::default())
            }
        };
        *m += delta;
    }

    fn measures(&self, (start, dims): &Row) -> Measures {
        self.windows[start][dims].clone()
    }
}

/// How many final reports a step sends before it yields (see [`resumed_reports`]).
const FINAL_CHUNK: usize = 16_384;

/// How far the consumer of the reports has taken them: the frontier of its input, shared on
/// a worker between the consumer, which sets it, and the report operators, which read it.
/// When the frontier jumps over more final reports than one step sends (a batch's end, a
/// backlog caught up), an operator sends its next chunk only once the consumer's frontier
/// has reached the chunk's time, so what waits to be written is a few chunks, not every row.
#[derive(Clone, Default)]
pub struct Pace(Rc<Cell<u64>>);

impl Pace {
    /// The consumer's input frontier (`None`: empty, everything taken).
    pub fn set(&self, frontier: Option<u64>) {
        self.0.set(frontier.unwrap_or(u64::MAX));
    }

    fn reached(&self, t: u64) -> bool {
        self.0.get() >= t
    }
}

/// Reports for rows of `window_ms` windows.
pub fn reports<'s>(
    rows: VecCollection<'s, u64, Row, Measures>,
    window_ms: u64,
    lateness_ms: u64,
) -> Stream<'s, u64, Vec<WindowReport>> {
    resumed_reports(rows, window_ms, lateness_ms, None, None)
}

/// [`reports`] of a dataflow resumed from a checkpoint at `restored_at` (`F`), whose rows come
/// back at `F − 1`.
///
/// Every report is stamped with the time of what it reports, a function of the input alone:
/// a row is reported `complete` at its window's end − 1 with the updates up to then (or, if
/// its first update comes later, at that update's time), a `correction` at the time of each
/// later update that changes it, with the updates up to that time, and `final` at its end +
/// lateness. So the reports at times before `F` are exactly those a checkpoint at `F` covers
/// (its output keeps every line of those times), and the last one of each row carries the row
/// as the checkpoint holds it. A resumed dataflow therefore reports nothing for a restored
/// row whose window ended by `F` (its `complete` or latest `correction` before `F` already
/// said the same), and reports the others as an uninterrupted run would.
///
/// With a `pace`, final reports past one chunk wait for their consumer (see [`Pace`]); without
/// one they still go a chunk a step, but every step.
pub fn resumed_reports<'s>(
    rows: VecCollection<'s, u64, Row, Measures>,
    window_ms: u64,
    lateness_ms: u64,
    restored_at: Option<u64>,
    pace: Option<Pace>,
) -> Stream<'s, u64, Vec<WindowReport>> {
    let exchange = Exchange::new(|(row, _, _): &(Row, u64, Measures)| row.hashed());
    // Times before `F` carry only restored rows: reported before the checkpoint already.
    let restored = move |t: u64| restored_at.is_some_and(|f| t < f);
    let scope = rows.inner.scope();
    rows.inner
        .unary_frontier::<CapacityContainerBuilder<Vec<WindowReport>>, _, _, _>(
            exchange,
            "WindowReports",
            move |cap, info| {
                let activator = scope.activator_for(info.address);
                let mut cap = Some(cap);
                // Updates after their window's end (late clicks, restored rows), by time: each may
                // change a reported row, so they apply in time order.
                let mut pending: BTreeMap<u64, Vec<(Row, Measures)>> = BTreeMap::new();
                let mut rows = Rows::default();
                // The last step stopped with final reports still to send.
                let mut yielded = false;
                move |(input, frontier), output| {
                    input.for_each(|_cap, data| {
                        for (row, t, m) in data.drain(..) {
                            let end = row.0 + window_ms;
                            if t >= end + lateness_ms {
                                // No click reaches a window at or after end + lateness (the
                                // sources judge it late first): a retention retraction.
                                // Rows restored from a checkpoint at F arrive at F − 1: those
                                // final at F − 1 or before were reported final before the
                                // checkpoint, and those final at F or later still owe their
                                // final report.
                                continue;
                            }
                            if t < end {
                                // Nothing reports the row before its window's end − 1, which
                                // the frontier has not passed (t has not): no need to wait.
                                // In a batch, where the frontier moves only at the end, this
                                // keeps the updates from waiting beside the rows.
                                rows.update(row, m);
                            } else {
                                pending.entry(t).or_default().push((row, m));
                            }
                        }
                    });
                    let bound = frontier.frontier().first().copied();
                    let limit = bound.unwrap_or(u64::MAX);
                    let Some(c) = cap.as_mut() else { return };
                    let report = |row: &Row, m: Measures, status| WindowReport {
                        window_ms,
                        row: *row,
                        measures: m,
                        status,
                    };
                    // Reports by the time they are stamped with. Each is at or after the
                    // capability: every time still pending, and every unreported window's end
                    // − 1, is at or past the frontier of the last activation.
                    let mut out: BTreeMap<u64, Vec<WindowReport>> = BTreeMap::new();
                    // Step through the complete times in order: each time with updates, and
                    // each unreported window's end − 1.
                    loop {
                        let update = pending.first_key_value().map(|(t, _)| *t);
                        let ended = rows.unreported.first().map(|s| s + window_ms - 1);
                        let Some(t) = update.into_iter().chain(ended).min().filter(|t| *t < limit)
                        else {
                            break;
                        };
                        if update == Some(t) {
                            let updates = pending.remove(&t).expect("a pending time");
                            for (row, delta) in updates {
                                rows.update(row, delta);
                            }
                        }
                        let at = t.max(*c.time());
                        // A row final in this very step (a batch job's last step) gets the
                        // final report alone, below; rows restored at F − 1 were reported
                        // before the checkpoint.
                        let owed =
                            |row: &Row| row.0 + window_ms + lateness_ms > limit && !restored(t);
                        // Rows of reported windows changed since their last report: a
                        // correction, or `complete` for a row first seen after its window
                        // ended.
                        let changed = if rows.changed.is_empty() {
                            Vec::new()
                        } else {
                            rows.changed.drain().collect()
                        };
                        for (row, last) in changed {
                            let m = rows.measures(&row);
                            let status = match last {
                                None => Status::Complete,
                                Some(l) if l != m => Status::Correction,
                                Some(_) => continue,
                            };
                            if status == Status::Correction || owed(&row) {
                                out.entry(at).or_default().push(report(&row, m, status));
                            }
                        }
                        // Windows ending by t + 1: complete, with the updates up to t.
                        while let Some(start) = rows.unreported.first().copied() {
                            if start + window_ms > t + 1 {
                                break;
                            }
                            rows.unreported.remove(&start);
                            for (dims, m) in &rows.windows[&start] {
                                let row = (start, *dims);
                                if owed(&row) {
                                    out.entry(at).or_default().push(report(
                                        &row,
                                        m.clone(),
                                        Status::Complete,
                                    ));
                                }
                            }
                        }
                    }
                    // Windows the frontier passed the end plus lateness of: final, at exactly
                    // that time (never earlier than the capability), so a checkpoint at
                    // frontier F holds exactly the finals before F, and after a restore from
                    // it the others are reported, once. Every such window was reported
                    // complete in the steps above (its end is below the frontier).
                    //
                    // At most about `FINAL_CHUNK` reports a step: when the frontier jumps over
                    // many windows (a batch's end, a backlog), the rest wait for the next
                    // activation with the capability at the first of them, so the consumers
                    // see the frontier pass each chunk and write it before the next is sent,
                    // instead of holding every final report of the batch at once.
                    let mut budget = match &pace {
                        Some(p) if yielded && !p.reached(*c.time()) => 0,
                        _ => FINAL_CHUNK,
                    };
                    let mut more = None;
                    while let Some(mut entry) = rows.windows.first_entry() {
                        let start = *entry.key();
                        let at = start + window_ms + lateness_ms;
                        if at > limit {
                            break;
                        }
                        let at = at.max(*c.time());
                        if budget == 0 {
                            more = Some(at);
                            break;
                        }
                        rows.unreported.remove(&start);
                        let window = if entry.get().len() <= budget {
                            entry.remove()
                        } else {
                            // Rows not taken stay in the window (a dropped `extract_if`
                            // retains what it has not reached).
                            entry
                                .get_mut()
                                .extract_if(|_, _| true)
                                .take(budget)
                                .collect()
                        };
                        budget -= window.len();
                        for (dims, m) in window {
                            // A row whose updates cancel out is not reported final: its last
                            // report (a correction to zero) says it all, and no checkpoint can
                            // hold it (differential consolidates it away), so a resumed run
                            // could not report it either.
                            if m != Measures::default() {
                                out.entry(at).or_default().push(report(
                                    &(start, dims),
                                    m,
                                    Status::Final,
                                ));
                            }
                        }
                    }
                    // Sent before the capability moves up to the new frontier: at times the
                    // frontier has already passed once the updates behind them are done, so
                    // a consumer waiting for the frontier is never left waiting for more
                    // input that may not come; and no earlier than any update they include,
                    // so a consumer that has seen everything up to a report's time has seen
                    // the texts its dimensions need (announced at the times of their clicks).
                    for (at, reports) in out {
                        output
                            .session(&c.delayed(&at))
                            .give_iterator(reports.into_iter());
                    }
                    yielded = more.is_some();
                    if let Some(next) = more {
                        c.downgrade(&next);
                        activator.activate();
                        return;
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

#[cfg(test)]
mod tests {
    use differential_dataflow::input::Input;
    use timely::dataflow::operators::Probe;
    use timely::dataflow::operators::capture::{Capture, Event};
    use timely::dataflow::operators::probe::Handle;

    use super::*;
    use crate::click::{Dims, Sym};

    const WINDOW: u64 = 10;
    const LATENESS: u64 = 25;
    const END: u64 = 120;

    fn row(start: u64, ad: &str) -> Row {
        let dims = Dims {
            ad_id: Sym::of(ad),
            ..Dims::default()
        };
        (start, dims)
    }

    fn clicks(n: i64) -> Measures {
        Measures::billable(n)
    }

    /// Updates (row, time, measures): clicks in their windows before and after the window
    /// ends, a late first click of a row, a correction that cancels, retention retractions
    /// after rows are final (ignored).
    fn updates() -> Vec<(Row, u64, Measures)> {
        let mut u = Vec::new();
        for t in 0..70u64 {
            let start = t - t % WINDOW;
            u.push((row(start, "a"), t, clicks(1)));
            if t % 3 == 0 {
                u.push((row(start, "b"), t, clicks(2)));
            }
            // Late clicks into the window before, within the lateness.
            if t % 4 == 1 && start >= WINDOW {
                u.push((row(start - WINDOW, "a"), t, clicks(1)));
            }
        }
        // A row whose first update comes after its window ended, and one that cancels out.
        u.push((row(20, "late"), 37, clicks(1)));
        u.push((row(30, "gone"), 31, clicks(1)));
        u.push((row(30, "gone"), 44, clicks(-1)));
        // Retention retractions after rows are final: not news.
        u.push((row(0, "a"), 90, clicks(-10)));
        u
    }

    /// The reports, each with its time, of the updates at times from `from` on, resumed from
    /// the rows as they stood before `from` when `from > 0`; the input advances `chunk` times
    /// before each round of steps.
    fn run(from: u64, chunk: u64) -> Vec<(u64, WindowReport)> {
        run_updates(&updates(), from, chunk)
    }

    /// [`run`] of the given updates.
    fn run_updates(
        all: &[(Row, u64, Measures)],
        from: u64,
        chunk: u64,
    ) -> Vec<(u64, WindowReport)> {
        let (send, recv) = std::sync::mpsc::channel();
        let all = all.to_vec();
        timely::execute_directly(move |worker| {
            let probe = Handle::new();
            let restored_at = (from > 0).then_some(from);
            let mut input = worker.dataflow::<u64, _, _>(|scope| {
                let (input, rows) = scope.new_collection::<Row, Measures>();
                resumed_reports(rows, WINDOW, LATENESS, restored_at, None)
                    .probe_with(&probe)
                    .capture_into(send);
                input
            });
            if from > 0 {
                // The checkpoint's rows, as they stood at F − 1, consolidated.
                let mut state: BTreeMap<Row, Measures> = BTreeMap::new();
                for (r, _, m) in all.iter().filter(|(_, t, _)| *t < from) {
                    *state.entry(*r).or_default() += m;
                }
                input.advance_to(from - 1);
                for (r, m) in state.into_iter().filter(|(_, m)| *m != Measures::default()) {
                    input.update(r, m);
                }
            }
            for t in from..END {
                input.advance_to(t);
                for (r, _, m) in all.iter().filter(|(_, at, _)| *at == t) {
                    input.update(*r, m.clone());
                }
                if t % chunk == 0 {
                    input.flush();
                    worker.step_while(|| probe.less_than(input.time()));
                }
            }
        });
        let mut out: Vec<(u64, WindowReport)> = recv
            .iter()
            .flat_map(|e| match e {
                Event::Messages(t, d) => {
                    let t = *t.least().expect("a totally ordered time");
                    d.into_iter().map(|r| (t, r)).collect()
                }
                Event::Progress(_) => Vec::new(),
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn reports_are_stamped_with_the_time_of_what_they_report_however_the_input_is_batched() {
        let one = run(0, 1);
        assert_eq!(one, run(0, 7), "batched in sevens");
        let at = |status, start, ad: &str| {
            one.iter()
                .filter(|(_, r)| r.status == status && r.row == row(start, ad))
                .map(|(t, r)| (*t, r.measures.clicks))
                .collect::<Vec<_>>()
        };
        // Window [10, 20) of ad a: complete at 19 with its 10 clicks, a correction at each
        // late click (21, 25, 29), final at 20 + 25 with all 13.
        assert_eq!(at(Status::Complete, 10, "a"), vec![(19, 10)]);
        assert_eq!(
            at(Status::Correction, 10, "a"),
            vec![(21, 11), (25, 12), (29, 13)]
        );
        assert_eq!(at(Status::Final, 10, "a"), vec![(45, 13)]);
        // A row first seen after its window ended is complete then.
        assert_eq!(at(Status::Complete, 20, "late"), vec![(37, 1)]);
        assert_eq!(at(Status::Correction, 30, "gone"), vec![(44, 0)]);
        assert_eq!(at(Status::Final, 30, "gone"), vec![], "nothing to finalize");
    }

    /// The reports of each row, from the definition alone: `complete` at its window's end − 1
    /// (or at its first update, if later) with the updates up to then, a `correction` at each
    /// later update time whose updates change it, `final` at end + lateness unless zero.
    fn oracle(all: &[(Row, u64, Measures)]) -> Vec<(u64, WindowReport)> {
        let mut by_row: BTreeMap<Row, BTreeMap<u64, Measures>> = BTreeMap::new();
        for (r, t, m) in all {
            if *t < r.0 + WINDOW + LATENESS {
                *by_row.entry(*r).or_default().entry(*t).or_default() += m;
            }
        }
        let mut out = Vec::new();
        for (r, updates) in by_row {
            let end = r.0 + WINDOW;
            let upto = |x: u64| {
                let mut m = Measures::default();
                for (_, d) in updates.range(..=x) {
                    m += d;
                }
                m
            };
            let report = |measures, status| WindowReport {
                window_ms: WINDOW,
                row: r,
                measures,
                status,
            };
            let first = *updates.keys().next().expect("a row has updates");
            let complete = first.max(end - 1);
            let mut last = upto(complete);
            out.push((complete, report(last.clone(), Status::Complete)));
            for t in updates.keys().filter(|t| **t > complete) {
                let m = upto(*t);
                if m != last {
                    out.push((*t, report(m.clone(), Status::Correction)));
                    last = m;
                }
            }
            if last != Measures::default() {
                out.push((end + LATENESS, report(last, Status::Final)));
            }
        }
        out.sort();
        out
    }

    /// Random updates (clicks added and taken away, rows first seen late, updates after the
    /// final time) give the definition's reports, however the input is batched.
    #[test]
    fn reports_follow_their_definition_on_random_updates() {
        let mut next = crate::testing::numbers(0x9e37_79b9_7f4a_7c15u64);
        for round in 0..20 {
            let mut all = Vec::new();
            for _ in 0..200 {
                let t = next(100);
                let start = (t / WINDOW).saturating_sub(next(4)) * WINDOW;
                let ad = ["a", "b", "c", "d"][next(4) as usize];
                let delta = next(5) as i64 - 1;
                all.push((row(start, ad), t, clicks(delta)));
            }
            let expected = oracle(&all);
            for chunk in [1, 7, 30] {
                let got = run_updates(&all, 0, chunk);
                // A step whose frontier jumps past a row's final time reports it final
                // alone (no checkpoint can fall in between): only then may a `complete` be
                // missing.
                let missing: Vec<_> = expected
                    .iter()
                    .filter(|e| !got.contains(e))
                    .filter(|(t, r)| {
                        // The frontier of the step that sees time t.
                        let step = (t / chunk + 1) * chunk;
                        let step = if step >= END { u64::MAX } else { step };
                        r.status != Status::Complete || r.row.0 + WINDOW + LATENESS > step
                    })
                    .collect();
                let extra: Vec<_> = got.iter().filter(|g| !expected.contains(g)).collect();
                assert!(
                    missing.is_empty() && extra.is_empty(),
                    "round {round}, chunk {chunk}: missing {missing:?}, extra {extra:?}"
                );
            }
        }
    }

    /// What a paced consumer holds: every report of a batch's end, with and without a
    /// [`Pace`], and the most reports the consumer ever held unwritten (it writes the times
    /// its frontier has passed, and final reports at the frontier's own time, as the report
    /// writer does).
    fn batch_end(rows: usize, paced: bool) -> (Vec<(u64, WindowReport)>, usize) {
        timely::execute_directly(move |worker| {
            let written = Rc::new(std::cell::RefCell::new((Vec::new(), 0)));
            let seen = written.clone();
            let mut input = worker.dataflow::<u64, _, _>(|scope| {
                let (input, updates) = scope.new_collection::<Row, Measures>();
                let pace = Pace::default();
                let reports =
                    resumed_reports(updates, WINDOW, LATENESS, None, paced.then(|| pace.clone()));
                let mut held: BTreeMap<u64, Vec<WindowReport>> = BTreeMap::new();
                reports.sink(
                    timely::dataflow::channels::pact::Pipeline,
                    "Writer",
                    move |(input, frontier)| {
                        input.for_each(|cap, data| {
                            held.entry(*cap.least().expect("a time"))
                                .or_default()
                                .append(data);
                        });
                        let first = frontier.frontier().first().copied();
                        let mut w = seen.borrow_mut();
                        w.1 = w.1.max(held.values().map(Vec::len).sum::<usize>());
                        while let Some(e) = held.first_entry() {
                            if first.is_some_and(|f| *e.key() >= f) {
                                break;
                            }
                            let (t, rs) = e.remove_entry();
                            w.0.extend(rs.into_iter().map(|r| (t, r)));
                        }
                        if let Some(f) = first
                            && let Some(rs) = held.get_mut(&f)
                        {
                            let finals = rs.extract_if(.., |r| r.status == Status::Final);
                            w.0.extend(finals.map(|r| (f, r)));
                        }
                        pace.set(first);
                    },
                );
                input
            });
            // Rows in three windows, the middle one larger than a chunk, all final only at
            // the end of the input.
            for i in 0..rows {
                let start = [0, WINDOW, WINDOW, WINDOW, 2 * WINDOW][i % 5];
                input.update(row(start, &format!("ad{i}")), clicks(1 + (i % 3) as i64));
            }
            input.close();
            while worker.step_or_park(None) {}
            let (mut out, most) = written.take();
            out.sort();
            (out, most)
        })
    }

    /// When the input ends, final reports go a chunk at a time, each once the consumer has
    /// taken the chunks before it: the same reports, but never every row's held at once.
    #[test]
    fn a_batch_end_sends_its_finals_a_chunk_at_a_time_at_the_consumers_pace() {
        let rows = 5 * FINAL_CHUNK;
        let (paced, most) = batch_end(rows, true);
        let (unpaced, all_at_once) = batch_end(rows, false);
        let mut expected: Vec<(u64, WindowReport)> = (0..rows)
            .map(|i| {
                let row = row(
                    [0, WINDOW, WINDOW, WINDOW, 2 * WINDOW][i % 5],
                    &format!("ad{i}"),
                );
                let report = WindowReport {
                    window_ms: WINDOW,
                    row,
                    measures: clicks(1 + (i % 3) as i64),
                    status: Status::Final,
                };
                (row.0 + WINDOW + LATENESS, report)
            })
            .collect();
        expected.sort();
        assert_eq!(
            paced, expected,
            "one final report per row, at its final time"
        );
        assert_eq!(unpaced, expected);
        assert!(
            most <= 2 * FINAL_CHUNK,
            "the consumer held {most} reports at once"
        );
        assert!(
            all_at_once > most,
            "unpaced, the consumer held {all_at_once}"
        );
    }

    /// A resumed run reports exactly what the uninterrupted run reports from the checkpoint
    /// on: no `complete` or `correction` again for rows the reports before `F` already gave
    /// as the checkpoint holds them, every final once. (Without `restored_at`, every restored
    /// row whose window had ended is reported `complete` again at F − 1.)
    #[test]
    fn a_resumed_run_repeats_no_report_of_the_checkpoint() {
        let whole = run(0, 1);
        for f in [5, 19, 20, 21, 33, 44, 45, 46, 60, 95] {
            let mut joined: Vec<_> = whole.iter().filter(|(t, _)| *t < f).cloned().collect();
            let resumed = run(f, 1);
            assert!(resumed.iter().all(|(t, _)| *t >= f), "F = {f}");
            joined.extend(resumed);
            joined.sort();
            assert_eq!(joined, whole, "resumed at F = {f}");
        }
    }
}
