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
use crate::watermark::{SourceClock, TimeConfig, Verdict};

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

/// One record from a partition.
pub enum Record {
    Click(RawClick),
    Rejected(Rejected),
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
    mut reader: R,
    cfg: TimeConfig,
    now_ms: fn() -> u64,
) -> Stream<'s, u64, Vec<SourceEvent>> {
    source::<_, CapacityContainerBuilder<Vec<SourceEvent>>, _, _>(
        scope,
        name,
        move |capability, info| {
            let activator = scope.activator_for(info.address);
            let mut clock = SourceClock::new(reader.partitions(), cfg, now_ms());
            let mut finished = vec![false; reader.partitions()];
            // A worker without partitions holds nothing back: `advance` finds them all finished.
            let mut cap = Some(capability);
            let mut buf = Vec::new();
            let mut announcer = Announcer::default();
            let mut names = Vec::new();
            move |output| {
                let Some(c) = cap.as_mut() else { return };
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
                    read += buf.len() as u64;
                    for record in buf.drain(..) {
                        let (at, event) = match record {
                            Record::Click(raw) => match clock.observe(p, raw.event_time, now) {
                                Verdict::Emit { at } => {
                                    let click = Click::of(&raw);
                                    announcer.announce(&raw.labels, &click.dims, &mut names);
                                    for name in names.drain(..) {
                                        by_time.push(at, SourceEvent::Name(name));
                                    }
                                    (at, SourceEvent::OnTime(click))
                                }
                                Verdict::Late => (clock.capability(), SourceEvent::Late(raw)),
                            },
                            Record::Rejected(r) => (clock.capability(), SourceEvent::Rejected(r)),
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
                    output.session(&delayed).give_iterator(events.into_iter());
                }
                match clock.advance(now) {
                    None => cap = None,
                    Some(t) => {
                        if t > *c.time() {
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
