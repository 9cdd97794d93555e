//! The shape every source shares: read records from partitions, judge each click's time with
//! a [`SourceClock`], send it at the right timely time, and hold the capability at the
//! watermark. The reading itself (Kafka, files, memory) is a [`PartitionReader`], so this
//! operator has no I/O of its own and tests drive it with plain vectors.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{ProbeHandle, Scope, Stream};

use crate::click::{Click, RawClick};
use crate::names::{Announcer, Name};
use crate::watermark::{ClockState, SourceClock, TimeConfig, Verdict};

/// A record a reader could not turn into a click, kept for the dead-letter sink.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rejected {
    /// Short stable label, e.g. `invalid_country`.
    pub code: String,
    /// The full reason, naming the field.
    pub reason: String,
    /// Where it came from, e.g. `clicks/3@1042` or `events-001.ndjson:17`.
    pub origin: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
}

/// Records a partition once held but that can no longer be read: the broker's retention (or
/// a bounded broker) deleted them before this source got to them. They cannot be counted, so
/// they are tallied as `lost`, with where they were, and never skipped quietly: `received +
/// lost` is what the partition held.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Gap {
    /// Where, e.g. `clicks/3`.
    pub partition: String,
    /// The first offset missing.
    pub from: u64,
    /// The first offset after the gap (exclusive).
    pub to: u64,
}

impl Gap {
    /// How many records the gap swallowed.
    pub fn records(&self) -> u64 {
        self.to.saturating_sub(self.from)
    }
}

/// One record from a partition.
pub enum Record {
    Click(RawClick),
    Rejected(Rejected),
    /// Offsets the reader expected but the partition no longer holds; not a record read.
    Lost(Gap),
}

/// What a poll found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polled {
    /// Records were appended; there may be more.
    More,
    /// Nothing new right now.
    Empty,
    /// Nothing delivered yet, but the partition is known to hold unread records (a consumer
    /// still connecting, or fetching): it is not idle, whatever the idle timeout says.
    Behind,
    /// The partition is exhausted for good (end of a file; never for Kafka).
    Finished,
}

/// Reads this worker's partitions.
pub trait PartitionReader: 'static {
    fn partitions(&self) -> usize;
    /// Appends up to `max` records of partition `p` to `out`.
    fn poll(&mut self, p: usize, max: usize, out: &mut Vec<Record>) -> Polled;
    /// Where partition `p` resumes: the offset of the next record `poll` returns. Readers
    /// that cannot resume (files) keep the default.
    fn position(&self, _p: usize) -> u64 {
        0
    }
}

/// Where a source stood when its capability crossed a checkpoint frontier `F`: resuming
/// every partition at `positions`, with the clock as it was and the `events` it had already
/// sent at times ≥ `F`, reproduces exactly what the source sends at times ≥ `F`. Everything
/// it sent before `F` is in the checkpoint's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSnapshot {
    pub positions: Vec<u64>,
    pub clock: ClockState,
    pub events: Vec<(u64, SourceEvent)>,
}

/// One capability move of a source, `from` → `to`: the cut for every frontier in (from, to].
#[derive(Clone, Debug)]
struct Cut {
    from: u64,
    to: u64,
    positions: Vec<u64>,
    clock: ClockState,
    /// Events sent before the cut have a smaller sequence number.
    seq: u64,
}

/// A checkpointed source's memory of its recent cuts, and of the events it sent ahead of its
/// capability, until no checkpoint can ask for them any more ([`Cuts::release_before`]).
#[derive(Default)]
pub struct Cuts {
    cuts: std::collections::VecDeque<Cut>,
    ahead: std::collections::BTreeMap<u64, Vec<(u64, SourceEvent)>>,
    seq: u64,
}

impl Cuts {
    fn sent(&mut self, at: u64, event: &SourceEvent) {
        if matches!(event, SourceEvent::OnTime(_) | SourceEvent::Name(_)) {
            self.ahead
                .entry(at)
                .or_default()
                .push((self.seq, event.clone()));
            self.seq += 1;
        }
    }

    /// The source's snapshot for checkpoint frontier `f`, once its capability has crossed it.
    pub fn at(&self, f: u64) -> Option<SourceSnapshot> {
        let cut = self.cuts.iter().find(|c| c.from < f && f <= c.to)?;
        let events = self
            .ahead
            .range(f..)
            .flat_map(|(t, es)| {
                es.iter()
                    .filter(|(seq, _)| *seq < cut.seq)
                    .map(move |(_, e)| (*t, e.clone()))
            })
            .collect();
        Some(SourceSnapshot {
            positions: cut.positions.clone(),
            clock: cut.clock.clone(),
            events,
        })
    }

    /// Forgets what only checkpoints at frontiers below `f` could need. Called as often as the
    /// worker steps: what it keeps is then bounded by how far the sources run ahead of the
    /// checkpoints still to be saved, not by the interval between checkpoints.
    pub fn release_before(&mut self, f: u64) {
        while self.cuts.front().is_some_and(|c| c.to < f) {
            self.cuts.pop_front();
        }
        while let Some(first) = self.ahead.first_entry()
            && *first.key() < f
        {
            first.remove();
        }
    }
}

/// Everything a source emits, each at its timely time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SourceEvent {
    OnTime(Click),
    /// Beyond the allowed lateness; travels at the capability, with its texts for the late
    /// topic.
    Late(RawClick),
    Rejected(Rejected),
    /// A dimension text this source counts for the first time, at the time of the click that
    /// carries it.
    Name(Name),
    /// How many records the source read in one activation (each became exactly one of
    /// `OnTime`, `Late`, `Rejected`): the `received` tally, counted where records enter.
    Read(u64),
    /// Offsets that vanished before they were read; travels at the capability.
    Lost(Gap),
}

/// Records read per partition per activation, so one busy partition cannot starve the rest.
const BATCH: usize = 4_096;

/// Events grouped by timely time. A partition's times mostly repeat or grow, so the group is
/// nearly always the last one or close to it: cheaper than a map lookup per record.
#[derive(Default)]
struct ByTime(Vec<(u64, Vec<SourceEvent>)>);

impl ByTime {
    fn push(&mut self, at: u64, event: SourceEvent) {
        match self.0.iter_mut().rev().find(|(t, _)| *t == at) {
            Some((_, events)) => events.push(event),
            None => self.0.push((at, vec![event])),
        }
    }
}

/// Flow control from the dataflow's progress back to a source. Without it a source reads as
/// fast as its reader delivers, and whatever the operators behind it cannot finish yet (a
/// backlog read faster than it is counted, or partitions far apart in event time) waits in
/// their buffers: memory grows with the backlog, not with the state.
#[derive(Clone)]
pub struct Flow {
    /// The frontier of the dataflow's end, over every worker: what is finished.
    pub done: ProbeHandle<u64>,
    /// How far (event time) the source's capability may run ahead of `done`, and a
    /// partition's watermark ahead of the source's capability.
    pub read_ahead_ms: u64,
    /// Set while the process is over its memory budget: then the source reads only once the
    /// dataflow has finished everything before its capability, so what is in flight is at
    /// most the out-of-orderness bound's worth of clicks. It always reads then: the state
    /// may outgrow the budget (counts are never dropped to meet it), the backlog may not.
    pub over_budget: Arc<AtomicBool>,
}

impl Flow {
    /// Whether a source whose capability is `capability` may read now.
    fn may_read(&self, capability: u64) -> bool {
        let ahead = if self.over_budget.load(Ordering::Relaxed) {
            0
        } else {
            self.read_ahead_ms
        };
        self.done
            .with_frontier(|f| f.first().is_none_or(|done| capability <= done + ahead))
    }
}

/// What a source is given beyond its reader and time settings; the default is a plain source.
#[derive(Default)]
pub struct SourceOptions {
    /// Where it remembers its cuts, for checkpoints.
    pub cuts: Option<Rc<RefCell<Cuts>>>,
    /// The snapshot it goes on from: its reader must already be positioned at the snapshot's
    /// positions; the events the snapshot holds are sent again at their times.
    pub restore: Option<SourceSnapshot>,
    pub flow: Option<Flow>,
}

/// A source operator over `reader`. `now_ms` is processing time, for idle timeouts.
pub fn clock_source<'s, R: PartitionReader>(
    scope: Scope<'s, u64>,
    name: &str,
    reader: R,
    cfg: TimeConfig,
    now_ms: fn() -> u64,
) -> Stream<'s, u64, Vec<SourceEvent>> {
    checkpointed_source(scope, name, reader, cfg, now_ms, SourceOptions::default())
}

/// A source with checkpoints and flow control, as `opts` says.
pub fn checkpointed_source<'s, R: PartitionReader>(
    scope: Scope<'s, u64>,
    name: &str,
    mut reader: R,
    cfg: TimeConfig,
    now_ms: fn() -> u64,
    opts: SourceOptions,
) -> Stream<'s, u64, Vec<SourceEvent>> {
    let SourceOptions {
        cuts,
        restore,
        flow,
    } = opts;
    source::<_, CapacityContainerBuilder<Vec<SourceEvent>>, _, _>(
        scope,
        name,
        move |mut capability, info| {
            let activator = scope.activator_for(info.address);
            let mut clock = SourceClock::new(reader.partitions(), cfg, now_ms());
            let mut resent = Vec::new();
            if let Some(snapshot) = restore {
                // The timely capability goes no further than the earliest event to resend.
                let earliest = snapshot.events.iter().map(|(t, _)| *t).min();
                clock = SourceClock::restore(&snapshot.clock, cfg, now_ms());
                let start = earliest.map_or(clock.capability(), |t| t.min(clock.capability()));
                capability.downgrade(&start);
                if let Some(cuts) = &cuts {
                    // The restored position is itself a cut, for frontiers up to `start`.
                    let mut cuts = cuts.borrow_mut();
                    for (at, e) in &snapshot.events {
                        cuts.sent(*at, e);
                    }
                    let seq = cuts.seq;
                    cuts.cuts.push_back(Cut {
                        from: 0,
                        to: start,
                        positions: snapshot.positions.clone(),
                        clock: snapshot.clock.clone(),
                        seq,
                    });
                }
                resent = snapshot.events;
            }
            let mut finished = vec![false; reader.partitions()];
            // A worker without partitions holds nothing back: `advance` finds them all finished.
            let mut cap = Some(capability);
            let mut buf = Vec::new();
            let mut announcer = Announcer::default();
            let mut names = Vec::new();
            move |output| {
                let Some(c) = cap.as_mut() else { return };
                for (at, event) in resent.drain(..) {
                    output.session(&c.delayed(&at)).give(event);
                }
                let mut by_time = ByTime::default();
                let mut busy = false;
                let mut read = 0;
                let now = now_ms();
                let may_read = flow.as_ref().is_none_or(|f| f.may_read(*c.time()));
                for (p, done) in finished.iter_mut().enumerate() {
                    if *done {
                        continue;
                    }
                    // Held back, by the dataflow or for a partition far ahead of the rest: a
                    // partition waiting to be read is not an idle one.
                    let ahead = |f: &Flow| clock.ahead_of_capability(p) > f.read_ahead_ms;
                    if !may_read || flow.as_ref().is_some_and(ahead) {
                        clock.active(p, now);
                        continue;
                    }
                    buf.clear();
                    let polled = reader.poll(p, BATCH, &mut buf);
                    busy |= polled == Polled::More;
                    for record in buf.drain(..) {
                        read += u64::from(!matches!(record, Record::Lost(_)));
                        let (at, event) = match record {
                            Record::Click(raw) => match clock.observe(p, raw.event_time, now) {
                                Verdict::Emit { at } => {
                                    let click = Click::of(&raw);
                                    announcer.announce(&raw.labels, &click.dims, at, &mut names);
                                    for name in names.drain(..) {
                                        by_time.push(at, SourceEvent::Name(name));
                                    }
                                    (at, SourceEvent::OnTime(click))
                                }
                                Verdict::Late => (clock.capability(), SourceEvent::Late(raw)),
                            },
                            Record::Rejected(r) => (clock.capability(), SourceEvent::Rejected(r)),
                            Record::Lost(g) => (clock.capability(), SourceEvent::Lost(g)),
                        };
                        by_time.push(at, event);
                    }
                    match polled {
                        Polled::Finished => {
                            *done = true;
                            clock.finish(p);
                        }
                        Polled::Behind => clock.active(p, now),
                        Polled::More | Polled::Empty => {}
                    }
                }
                if read > 0 {
                    by_time.push(*c.time(), SourceEvent::Read(read));
                }
                for (time, events) in by_time.0 {
                    let delayed = c.delayed(&time);
                    if let Some(cuts) = &cuts {
                        let mut cuts = cuts.borrow_mut();
                        for e in &events {
                            cuts.sent(time, e);
                        }
                    }
                    output.session(&delayed).give_iterator(events.into_iter());
                }
                match clock.advance(now) {
                    None => cap = None,
                    Some(t) => {
                        if t > *c.time() {
                            if let Some(cuts) = &cuts {
                                let mut cuts = cuts.borrow_mut();
                                let seq = cuts.seq;
                                cuts.cuts.push_back(Cut {
                                    from: *c.time(),
                                    to: t,
                                    positions: (0..reader.partitions())
                                        .map(|p| reader.position(p))
                                        .collect(),
                                    clock: clock.state(),
                                    seq,
                                });
                            }
                            c.downgrade(&t);
                        }
                        if busy {
                            activator.activate();
                        } else if !may_read {
                            activator.activate_after(Duration::from_millis(1));
                        } else {
                            activator.activate_after(Duration::from_millis(10));
                        }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::click::Labels;
    use timely::dataflow::operators::{Input, Inspect, Probe};

    /// One partition of clicks one second apart, read 100 at a time.
    struct Seconds {
        next: u64,
        end: u64,
    }

    impl PartitionReader for Seconds {
        fn partitions(&self) -> usize {
            1
        }
        fn poll(&mut self, _p: usize, max: usize, out: &mut Vec<Record>) -> Polled {
            let to = (self.next + max.min(100) as u64).min(self.end);
            out.extend((self.next..to).map(|i| {
                Record::Click(RawClick {
                    impression_id: format!("imp-{i}"),
                    click_id: format!("click-{i}"),
                    event_time: 1_000_000 + i * 1_000,
                    labels: Labels::default(),
                    traits: Default::default(),
                    origin: Default::default(),
                })
            }));
            self.next = to;
            if to == self.end {
                Polled::Finished
            } else {
                Polled::More
            }
        }
    }

    /// Clicks read by a source of 10 000 one second apart (event times from 1 000 s) whose
    /// dataflow has finished everything before 1 050 s and nothing since (a probe on an input
    /// held there), with the given flow control.
    fn read_while_stuck(read_ahead_ms: u64, over_budget: bool) -> usize {
        timely::execute_directly(move |worker| {
            let read = Rc::new(RefCell::new(0usize));
            let counted = read.clone();
            let done = ProbeHandle::new();
            let mut stuck = worker.dataflow::<u64, _, _>(|scope| {
                let (input, stream) = scope.new_input::<Vec<u64>>();
                stream.probe_with(&done);
                let flow = Flow {
                    done: done.clone(),
                    read_ahead_ms,
                    over_budget: Arc::new(AtomicBool::new(over_budget)),
                };
                let reader = Seconds {
                    next: 0,
                    end: 10_000,
                };
                let cfg = TimeConfig {
                    idle_timeout_ms: None,
                    idle_advance_lag_ms: None,
                    ..TimeConfig::default()
                };
                let opts = SourceOptions {
                    flow: Some(flow),
                    ..SourceOptions::default()
                };
                checkpointed_source(scope, "Seconds", reader, cfg, || 0, opts).inspect(move |e| {
                    if matches!(e, SourceEvent::OnTime(_)) {
                        *counted.borrow_mut() += 1;
                    }
                });
                input
            });
            stuck.advance_to(1_050_000);
            for _ in 0..1_000 {
                worker.step();
            }
            stuck.close();
            *read.borrow()
        })
    }

    #[test]
    fn a_source_reads_no_further_ahead_than_the_dataflow_allows() {
        // The capability (the watermark, 5 s behind the newest click) may reach 1 050 s + 60 s:
        // the first poll takes it to 1 094 s, the second to 1 194 s, and there it waits.
        assert_eq!(read_while_stuck(60_000, false), 200);
        // Over the budget it waits for everything before its capability: after the first
        // poll, 1 094 s is beyond the 1 050 s finished.
        assert_eq!(read_while_stuck(60_000, true), 100);
        // Far enough ahead allowed, it reads everything.
        assert_eq!(read_while_stuck(100_000_000, false), 10_000);
    }
}
