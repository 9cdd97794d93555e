//! Retention as a retraction scheduled in the future, held here rather than downstream.
//!
//! A retraction at a time far ahead of the frontier, given straight to an arrangement, waits
//! in its batcher, which merges everything it holds each time the frontier moves: with a
//! day's rows waiting two days ahead, that merging was most of a worker's time (the query
//! benchmark, docs/benchmarks.md). So retractions go in only when the frontier reaches them.
//!
//! Two ways, by what is retired:
//! - What an arrangement keeps by window ([`arrange_retiring`]; rows, [`arrange_rows`]; reach
//!   sketches, `reach::arrange`): the arrangement is also where the retractions come from.
//!   When a window's time comes, its updates are read back from the arrangement and fed back
//!   into it negated, through a loop one tick long. Nothing else holds a copy: a queue of
//!   every live row's retraction took as much memory as the rows' arrangement itself (about
//!   100 B per row, docs/benchmarks.md).
//! - Anything else ([`retire`]; rankings, retired before the merge that arranges them): each
//!   live value's retraction waits in a queue ordered by time.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hash;

use differential_dataflow::difference::Abelian;
use differential_dataflow::operators::arrange::arrangement::arrange_core;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::TraceReader;
use differential_dataflow::trace::implementations::{ValBatcher, ValSpine};
use differential_dataflow::{AsCollection, Data, ExchangeData, Hashable, VecCollection};
use foldhash::HashMap;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Capability, Concat, ConnectLoop, Exchange, Feedback};
use timely::progress::Antichain;

use crate::AdTrace;
use crate::click::{Measures, Row};
use crate::touched::{TouchedHandle, touch_all};

/// Whether `frontier` has passed every time before `at`.
fn reached(frontier: &timely::progress::frontier::MutableAntichain<u64>, at: u64) -> bool {
    !frontier.frontier().iter().any(|f| *f < at)
}

/// `rows` arranged by ad, each window's rows retracted once the frontier reaches
/// `start + kept_ms` (its window's end plus the retention); and when each window (by its
/// start) last changed.
pub fn arrange_rows<'s>(
    rows: VecCollection<'s, u64, Row, Measures>,
    kept_ms: u64,
    name: &str,
) -> (Arranged<'s, AdTrace>, TouchedHandle<u64>) {
    arrange_retiring(
        rows.map(|row| (row.1.ad_id, row)),
        |row: &Row| row.0,
        move |start: &u64| start.saturating_add(kept_ms),
        |trace: &mut AdTrace, start: &u64| {
            window_rows(trace, *start)
                .into_iter()
                .map(|(row, m)| ((row.1.ad_id, row), m))
                .collect()
        },
        name,
    )
}

/// An arrangement of `(K, V)` updates with differences `R` at times `u64`.
pub type Kept<K, V, R> = TraceAgent<ValSpine<K, V, u64, R>>;

/// `updates` arranged by key, each value's window (`window_of`) retracted once the frontier
/// reaches `retire_at(window)`. An update at or after its window's retirement is dropped: it
/// would bring back a value that has already left, half counted.
///
/// The retractions are read from the arrangement itself (`read`: a window's updates, summed,
/// none that cancel): the operator only notes which windows it has seen, and holds a
/// capability one tick before the earliest one due. When both the updates and the
/// arrangement have passed that time, every update of the window is in the arrangement and
/// none can come; their sums go back in negated, through the loop, at the retirement time.
///
/// Seeing every update and making every retraction, the operator also records when each
/// window last changed, in the returned [`Touched`](crate::touched::Touched) (once recording
/// is switched on).
pub fn arrange_retiring<'s, K, V, R, W>(
    updates: VecCollection<'s, u64, (K, V), R>,
    window_of: impl Fn(&V) -> W + 'static,
    retire_at: impl Fn(&W) -> u64 + 'static,
    read: impl Fn(&mut TraceAgent<ValSpine<K, V, u64, R>>, &W) -> Vec<((K, V), R)> + 'static,
    name: &str,
) -> (Arranged<'s, Kept<K, V, R>>, TouchedHandle<W>)
where
    K: ExchangeData + Hashable,
    V: ExchangeData,
    R: ExchangeData + Abelian,
    W: Ord + Hash + Clone + 'static,
{
    let touched: TouchedHandle<W> = Default::default();
    let recorded = touched.clone();
    let retire_at = std::rc::Rc::new(retire_at);
    let (handle, looped) = updates.inner.scope().feedback::<Vec<((K, V), u64, R)>>(1);
    // Routed to the worker that keeps each key (as `arrange_by_key` would route it) before
    // the arrangement, so that this worker's retirement sees exactly what it keeps.
    let keep = retire_at.clone();
    let window = std::rc::Rc::new(window_of);
    let window_in = window.clone();
    let kept = updates
        .inner
        .flat_map(move |(kv, t, r)| (keep(&window_in(&kv.1)) > t).then_some((kv, t, r)))
        .exchange(|((k, _), _, _): &((K, V), u64, R)| k.hashed().into());
    let arranged = arrange_core::<_, _, ValBatcher<K, V, u64, R>, _>(
        kept.clone().concat(looped),
        Pipeline,
        name,
        ValBatcher::new,
    );
    // This handle reads only whole windows, summing all their times: it holds back no merging.
    let mut trace = arranged.trace.clone();
    trace.set_logical_compaction(Antichain::new().borrow());
    trace.set_physical_compaction(Antichain::new().borrow());
    // The arrangement's batches only tell when it has caught up: they are an input with no
    // connection to the output. Connected (as a binary operator's inputs are), the loop
    // would bound the arrangement's frontier by its own oldest unsealed update plus one tick,
    // and each time of the input would take a round of sealing, each rescanning every update
    // waiting in its batcher (a third of a file run's time).
    let mut builder = OperatorBuilder::new(format!("Retire{name}"), kept.scope());
    let (output, retractions) = builder.new_output::<Vec<((K, V), u64, R)>>();
    let mut output =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<((K, V), u64, R)>>>::from(output);
    let mut updates_in =
        builder.new_input_connection(kept, Pipeline, [(0, Antichain::from_elem(0))]);
    let mut batches = builder.new_input_connection(arranged.stream.clone(), Pipeline, []);
    builder.build(move |_| {
        // Retirement time → the windows due then.
        let mut due: BTreeMap<u64, BTreeSet<W>> = BTreeMap::new();
        let mut last_seen: Option<W> = None;
        // Held one tick before the earliest retirement: the loop adds the tick back.
        let mut held: Option<Capability<u64>> = None;
        move |frontiers| {
            let (updates_frontier, arranged_frontier) = (&frontiers[0], &frontiers[1]);
            updates_in.for_each(|cap, data| {
                touch_all(&recorded, data.iter().map(|((_, v), t, _)| (window(v), *t)));
                for ((_, v), _, _) in data.iter() {
                    let w = window(v);
                    if last_seen.as_ref() == Some(&w) {
                        continue;
                    }
                    let at = retire_at(&w);
                    due.entry(at).or_default().insert(w.clone());
                    last_seen = Some(w);
                    if held.as_ref().is_none_or(|h| at - 1 < *h.time()) {
                        held = Some(cap.delayed(&(at - 1), 0));
                    }
                }
            });
            batches.for_each(|_, _| {});
            let before = updates_frontier.frontier().first().copied();
            recorded
                .borrow_mut()
                .complete_before(before.unwrap_or(u64::MAX));
            if updates_frontier.is_empty() {
                // The input has ended, and nothing reads the arrangement after the end:
                // retiring would only be a last pass over all of it.
                due.clear();
                held = None;
            }
            let Some(h) = held.as_mut() else { return };
            let mut output = output.activate();
            while let Some((&at, _)) = due.first_key_value() {
                if !(reached(updates_frontier, at) && reached(arranged_frontier, at)) {
                    break;
                }
                h.downgrade(&(at - 1));
                let mut session = output.session(&*h);
                for w in due.remove(&at).expect("the first entry") {
                    recorded.borrow_mut().touch(&w, at);
                    for (kv, mut r) in read(&mut trace, &w) {
                        r.negate();
                        session.give((kv, at, r));
                    }
                }
            }
            match due.first_key_value() {
                Some((&at, _)) => h.downgrade(&(at - 1)),
                None => held = None,
            }
        }
    });
    retractions.connect_loop(handle);
    (arranged, touched)
}

/// The rows of the window starting at `start`, every update summed, sorted; none that
/// cancel out.
fn window_rows(trace: &mut AdTrace, start: u64) -> Vec<(Row, Measures)> {
    let mut rows: BTreeMap<Row, Measures> = BTreeMap::new();
    crate::query::sum_rows(trace, None, start..start + 1, u64::MAX, |row, m| {
        *rows.entry(*row).or_default() += m;
    });
    rows.into_iter()
        .filter(|(_, m)| *m != Measures::default())
        .collect()
}

/// `updates`, each undone at `retire_at` of its data. An update at or after its data's
/// retirement is dropped: it would bring back a row that has already left, half counted.
pub fn retire<'s, D, R>(
    updates: VecCollection<'s, u64, D, R>,
    retire_at: impl Fn(&D) -> u64 + 'static,
) -> VecCollection<'s, u64, D, R>
where
    D: Data + Ord + Hash,
    R: Abelian + 'static,
{
    updates
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<(D, u64, R)>>, _, _, _>(
            Pipeline,
            "Retire",
            move |_, _| {
                let mut queue = Queue::default();
                // Held at the earliest queued retirement, so the retractions may still go out.
                let mut held: Option<Capability<u64>> = None;
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        let mut session = output.session(&cap);
                        for (d, t, r) in data.drain(..) {
                            let at = retire_at(&d);
                            if at <= t {
                                continue;
                            }
                            if held.as_ref().is_none_or(|h| at < *h.time()) {
                                held = Some(cap.delayed(&at, 0));
                            }
                            let mut undo = r.clone();
                            undo.negate();
                            queue.push(at, d.clone(), undo);
                            session.give((d, t, r));
                        }
                    });
                    if frontier.is_empty() {
                        // As in `arrange_rows`: nothing reads the values after the end.
                        queue = Queue::default();
                        held = None;
                    }
                    let Some(h) = held.as_mut() else { return };
                    while let Some(at) = queue.first().filter(|at| reached(frontier, *at)) {
                        h.downgrade(&at);
                        let mut session = output.session(&*h);
                        for (d, r) in queue.take(at) {
                            session.give((d, at, r));
                        }
                    }
                    match queue.first() {
                        Some(at) => h.downgrade(&at),
                        None => held = None,
                    }
                }
            },
        )
        .as_collection()
}

/// Retractions by time, each time's consolidated as they arrive: one entry per distinct
/// datum, whose differences add up, and which leaves once they cancel. A row updated every
/// second waits as one retraction, and a value replaced by a new one (a reach sketch that
/// grew: its old value's insertion and retraction cancel) leaves at once, so the queue holds
/// one copy of each live value, never a backlog of versions. (It used to keep a list
/// consolidated each time it doubled, from 1,024 entries: up to 2,048 waiting copies of
/// 128 KiB sketches per retirement time.)
struct Queue<D, R> {
    by_time: BTreeMap<u64, HashMap<D, R>>,
}

impl<D, R> Default for Queue<D, R> {
    fn default() -> Self {
        Self {
            by_time: BTreeMap::new(),
        }
    }
}

impl<D: Ord + Hash, R: Abelian> Queue<D, R> {
    fn push(&mut self, at: u64, d: D, r: R) {
        match self.by_time.entry(at).or_default().entry(d) {
            Entry::Occupied(mut o) => {
                o.get_mut().plus_equals(&r);
                if o.get().is_zero() {
                    o.remove();
                }
            }
            Entry::Vacant(v) => {
                v.insert(r);
            }
        }
    }

    fn first(&self) -> Option<u64> {
        self.by_time.keys().next().copied()
    }

    /// The retractions due at `at`, sorted (so a run's output does not depend on hashing).
    fn take(&mut self, at: u64) -> Vec<(D, R)> {
        let mut list: Vec<(D, R)> = self
            .by_time
            .remove(&at)
            .unwrap_or_default()
            .into_iter()
            .collect();
        list.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        list
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_time.values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use differential_dataflow::input::Input;
    use timely::dataflow::operators::probe::Handle;
    use timely::dataflow::operators::{Capture, Probe};

    use super::*;

    /// Rows retire 10 ticks after their key; the result at each time equals the rows inserted
    /// less those retired, and nothing is emitted before its time comes.
    #[test]
    fn rows_leave_when_the_frontier_reaches_their_retirement() {
        let (send, recv) = std::sync::mpsc::channel();
        timely::execute_directly(move |worker| {
            let probe = Handle::new();
            let mut input = worker.dataflow::<u64, _, _>(|scope| {
                let (input, rows) = scope.new_collection::<u64, isize>();
                retire(rows, |k| k + 10)
                    .inner
                    .probe_with(&probe)
                    .capture_into(send);
                input
            });
            for t in 0..30u64 {
                input.advance_to(t);
                if t < 15 {
                    input.insert(t); // retires at t + 10
                    input.insert(t); // twice: the retraction is one update of -2
                }
                if t == 12 {
                    input.insert(0); // after its retirement: dropped
                }
                input.flush();
                worker.step_while(|| probe.less_than(input.time()));
            }
        });
        let mut updates: Vec<(u64, u64, isize)> = recv
            .iter()
            .flat_map(|e| match e {
                timely::dataflow::operators::capture::Event::Messages(_, d) => d,
                _ => Vec::new(),
            })
            .collect();
        differential_dataflow::consolidation::consolidate_updates(&mut updates);
        let mut expected: Vec<(u64, u64, isize)> =
            (0..15).flat_map(|k| [(k, k, 2), (k, k + 10, -2)]).collect();
        differential_dataflow::consolidation::consolidate_updates(&mut expected);
        assert_eq!(updates, expected);
    }

    /// The updates given at `t` in [`arranged_rows_leave_when_their_window_retires`]: window
    /// t / 10 × 10 (open until its start + 10), 5 ads, every tick until 120; late clicks at 40,
    /// for a window retired at 25 (to be dropped) and for one not yet retired, and at 41 a
    /// row that cancels out.
    fn rows_given_at(t: u64) -> Vec<(Row, Measures)> {
        let row = |start: u64, ad: u64| {
            let dims = crate::click::Dims {
                ad_id: crate::click::Sym(ad),
                ..Default::default()
            };
            (start, dims)
        };
        let mut out = Vec::new();
        if t < 120 {
            for ad in 0..5 {
                out.push((row(t / 10 * 10, ad), Measures::billable(1 + ad as i64)));
            }
        }
        match t {
            40 => {
                out.push((row(0, 1), Measures::billable(5)));
                out.push((row(20, 7), Measures::billable(2)));
            }
            41 => out.push((row(20, 7), Measures::billable(-2))),
            _ => {}
        }
        out
    }

    /// Rows of windows 0..12 kept 25 ticks after their start, all given by worker 0 (so that
    /// a worker keeps rows it never saw before the exchange): at every time the workers'
    /// arrangements hold exactly the rows not yet retired, an update after its window's
    /// retirement is dropped, and once every window has retired and the traces have
    /// compacted, nothing is left in them. On 1 and on 2 workers.
    #[test]
    fn arranged_rows_leave_when_their_window_retires() {
        use differential_dataflow::trace::cursor::{Cursor, Navigable};
        use std::sync::{Arc, Mutex};

        type Held = BTreeMap<u64, BTreeMap<Row, Measures>>;
        let (kept_ms, end) = (25, 200u64);
        for workers in [1, 2] {
            let seen: Arc<Mutex<(Held, usize)>> = Arc::default();
            let out = seen.clone();
            timely::execute(timely::Config::process(workers), move |worker| {
                let probe = Handle::new();
                let (mut input, mut trace) = worker.dataflow::<u64, _, _>(|scope| {
                    let (input, rows) = scope.new_collection::<Row, Measures>();
                    let (arranged, _) = arrange_rows(rows, kept_ms, "Test");
                    arranged.stream.probe_with(&probe);
                    (input, arranged.trace)
                });
                for t in 0..end {
                    input.advance_to(t);
                    if worker.index() == 0 {
                        for (row, m) in rows_given_at(t) {
                            input.update(row, m);
                        }
                    }
                    input.flush();
                    worker.step_while(|| probe.less_than(input.time()));
                    let Some(read_at) = t.checked_sub(1) else {
                        continue;
                    };
                    let mut seen = out.lock().unwrap();
                    let held = seen.0.entry(read_at).or_default();
                    crate::query::sum_rows(&mut trace, None, 0..u64::MAX, read_at, |r, m| {
                        *held.entry(*r).or_default() += m;
                    });
                    drop(seen);
                    let f = Antichain::from_elem(read_at);
                    trace.set_logical_compaction(f.borrow());
                    trace.set_physical_compaction(f.borrow());
                }
                // All retired: once merged, the trace holds no update.
                for _ in 0..64 {
                    worker.step();
                }
                let mut left = 0;
                for batch in crate::batches(&trace) {
                    let mut c = batch.cursor();
                    while c.key_valid(&batch) {
                        while c.val_valid(&batch) {
                            c.map_times(&batch, |_, _| left += 1);
                            c.step_val(&batch);
                        }
                        c.step_key(&batch);
                    }
                }
                out.lock().unwrap().1 += left;
            })
            .unwrap();
            let (held, left) = std::mem::take(&mut *seen.lock().unwrap());
            for read_at in 0..end - 1 {
                // The updates up to read_at of the windows not retired by then.
                let mut want: BTreeMap<Row, Measures> = BTreeMap::new();
                for t in 0..=read_at {
                    for (r, m) in rows_given_at(t) {
                        if r.0 + kept_ms > read_at {
                            *want.entry(r).or_default() += m;
                        }
                    }
                }
                want.retain(|_, m| *m != Measures::default());
                let mut got = held[&read_at].clone();
                got.retain(|_, m| *m != Measures::default());
                assert_eq!(got, want, "{workers} workers, at {read_at}");
            }
            assert_eq!(
                left, 0,
                "{workers} workers: updates left after every window retired"
            );
        }
    }

    /// A value replaced again and again (as reach replaces a growing sketch: the old value
    /// retracted, the new inserted) waits as one retraction of the newest value, however many
    /// versions came before; a datum whose updates cancel leaves the queue.
    #[test]
    fn the_queue_holds_one_retraction_per_live_value() {
        let mut q = Queue::<(u32, Vec<u8>), isize>::default();
        let version = |v: u8| (7, vec![v; 1024]);
        q.push(100, version(0), -1);
        for v in 1..=250u8 {
            q.push(100, version(v - 1), 1); // the old value's retraction, negated
            q.push(100, version(v), -1); // the new value's insertion, negated
            assert_eq!(q.len(), 1);
        }
        q.push(100, (8, vec![1]), -3);
        q.push(100, (8, vec![1]), 3);
        assert_eq!(q.len(), 1);
        q.push(50, (9, vec![2]), 1);
        assert_eq!(q.first(), Some(50));
        assert_eq!(q.take(50), [((9, vec![2]), 1)]);
        assert_eq!(q.take(100), [(version(250), -1)]);
        assert_eq!(q.first(), None);
    }
}
