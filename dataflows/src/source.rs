//! The shape every source shares: read records from partitions, judge each click's time with
//! a [`SourceClock`], send it at the right timely time, and hold the capability at the
//! watermark. The reading itself (Kafka, files, memory) is a [`PartitionReader`], so this
//! operator has no I/O of its own and tests drive it with plain vectors.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};

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

    /// Forgets what only checkpoints at frontiers below `f` could need.
    pub fn release_before(&mut self, f: u64) {
        while self.cuts.front().is_some_and(|c| c.to < f) {
            self.cuts.pop_front();
        }
        self.ahead = self.ahead.split_off(&f);
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

/// A source operator over `reader`. `now_ms` is processing time, for idle timeouts.
pub fn clock_source<'s, R: PartitionReader>(
    scope: Scope<'s, u64>,
    name: &str,
    reader: R,
    cfg: TimeConfig,
    now_ms: fn() -> u64,
) -> Stream<'s, u64, Vec<SourceEvent>> {
    checkpointed_source(scope, name, reader, cfg, now_ms, None, None)
}

/// A source that remembers its cuts in `cuts` for checkpoints, and, given a `restore`
/// snapshot, goes on from it: its reader must already be positioned at the snapshot's
/// positions; the events the snapshot holds are sent again at their times.
pub fn checkpointed_source<'s, R: PartitionReader>(
    scope: Scope<'s, u64>,
    name: &str,
    mut reader: R,
    cfg: TimeConfig,
    now_ms: fn() -> u64,
    cuts: Option<std::rc::Rc<std::cell::RefCell<Cuts>>>,
    restore: Option<SourceSnapshot>,
) -> Stream<'s, u64, Vec<SourceEvent>> {
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
                for (p, done) in finished.iter_mut().enumerate() {
                    if *done {
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
                        } else {
                            activator.activate_after(Duration::from_millis(10));
                        }
                    }
                }
            }
        },
    )
}
