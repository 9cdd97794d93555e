//! Retention as a retraction scheduled in the future, held here rather than downstream.
//!
//! A retraction at a time far ahead of the frontier, given straight to an arrangement, waits
//! in its batcher, which merges everything it holds each time the frontier moves: with a
//! day's rows waiting two days ahead, that merging was most of a worker's time (the query
//! benchmark, docs/benchmarks.md). Here the retractions wait in a queue ordered by time and
//! leave only when the frontier reaches them, so downstream operators see each one once.

use std::collections::BTreeMap;
use std::collections::hash_map::Entry;
use std::hash::Hash;

use differential_dataflow::difference::Abelian;
use differential_dataflow::{AsCollection, Data, VecCollection};
use foldhash::HashMap;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

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
                    let Some(h) = held.as_mut() else { return };
                    let reached = |at: u64| !frontier.frontier().iter().any(|f| *f < at);
                    while let Some(at) = queue.first().filter(|at| reached(*at)) {
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
