//! Retention as a retraction scheduled in the future, held here rather than downstream.
//!
//! A retraction at a time far ahead of the frontier, given straight to an arrangement, waits
//! in its batcher, which merges everything it holds each time the frontier moves: with a
//! day's rows waiting two days ahead, that merging was most of a worker's time (the query
//! benchmark, docs/benchmarks.md). Here the retractions wait in a queue ordered by time and
//! leave only when the frontier reaches them, so downstream operators see each one once.

use std::collections::BTreeMap;

use differential_dataflow::difference::Abelian;
use differential_dataflow::{AsCollection, Data, VecCollection};
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
    D: Data + Ord,
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

/// Retractions by time, each time's list consolidated whenever it has doubled, so that a row
/// updated every second waits as one retraction, not thousands.
struct Queue<D, R> {
    by_time: BTreeMap<u64, (Vec<(D, R)>, usize)>,
}

impl<D, R> Default for Queue<D, R> {
    fn default() -> Self {
        Self {
            by_time: BTreeMap::new(),
        }
    }
}

impl<D: Ord, R: Abelian> Queue<D, R> {
    fn push(&mut self, at: u64, d: D, r: R) {
        let (list, consolidated) = self.by_time.entry(at).or_insert((Vec::new(), 0));
        list.push((d, r));
        if list.len() >= 2 * (*consolidated).max(1024) {
            differential_dataflow::consolidation::consolidate(list);
            *consolidated = list.len();
        }
    }

    fn first(&self) -> Option<u64> {
        self.by_time.keys().next().copied()
    }

    fn take(&mut self, at: u64) -> Vec<(D, R)> {
        let (mut list, _) = self.by_time.remove(&at).unwrap_or_default();
        differential_dataflow::consolidation::consolidate(&mut list);
        list
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
}
