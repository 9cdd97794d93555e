//! Worker 0's end of the pipeline: every report in time order (a flood of late clicks and
//! dead letters ahead of it, see [`ReportSink::write_early`]), to the NDJSON output and the
//! final windows to the `click-aggregates` topic, with the writer's state recorded at each
//! checkpoint frontier.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::progress::frontier::MutableAntichain;

use adclick_dataflows::report::Status;

use super::aggregates::AggregatesSink;
use super::output::{Line, Out, Writer, WriterState};
use super::parquet::WindowFiles;
use crate::health::Health;

/// The report writer's side: at each asked frontier `F`, once every line of the times before
/// `F` is written and none after, the writer's state goes into the checkpoint.
/// Shared with the checkpointer ([`Checkpointer::writer_hook`]), which asks and collects.
///
/// [`Checkpointer::writer_hook`]: crate::aggregator::checkpoint::Checkpointer::writer_hook
pub struct WriterHook {
    asked: Rc<RefCell<BTreeSet<u64>>>,
    written: Rc<RefCell<BTreeMap<u64, WriterState>>>,
    begun: Rc<Cell<u64>>,
}

impl WriterHook {
    /// The hook over the checkpointer's `asked` frontiers, the `written` states it collects,
    /// and `begun`: the latest time the writer has written lines of before the frontier passed
    /// it, at or before which the checkpointer must ask no frontier (its output would hold
    /// some of that time's lines and not others).
    pub fn new(
        asked: Rc<RefCell<BTreeSet<u64>>>,
        written: Rc<RefCell<BTreeMap<u64, WriterState>>>,
        begun: Rc<Cell<u64>>,
    ) -> Self {
        Self {
            asked,
            written,
            begun,
        }
    }

    /// The earliest checkpoint frontier asked whose state is not recorded yet.
    fn first_asked(&self) -> Option<u64> {
        self.asked.borrow().first().copied()
    }

    /// Records the writer's state for every asked frontier `F` with `reached(F)`: called with
    /// `F ≤ t` before the lines of time `t` are written, and with "the input frontier is at
    /// or past `F`" once the writable times are written. The sinks' epochs end there
    /// (`seal`), before the state is recorded.
    pub fn record(
        &self,
        reached: impl Fn(u64) -> bool,
        writer: &mut Writer,
        seal: &mut dyn FnMut(u64) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut asked = self.asked.borrow_mut();
        while let Some(&f) = asked.first() {
            if !reached(f) {
                break;
            }
            asked.pop_first();
            seal(f)?;
            self.written.borrow_mut().insert(f, writer.sync()?);
        }
        Ok(())
    }
}

/// Where final windows go besides the NDJSON output.
pub struct Sinks {
    pub kafka: Option<AggregatesSink>,
    pub windows: Option<WindowFiles>,
}

impl Sinks {
    fn send(&mut self, line: &Line) {
        if let Some(k) = self.kafka.as_mut() {
            k.send(line);
        }
        if let Some(p) = self.windows.as_mut() {
            p.push(line);
        }
    }

    /// Ends the epoch at checkpoint frontier `f`.
    fn seal(&mut self, f: u64) -> anyhow::Result<()> {
        if let Some(k) = self.kafka.as_mut() {
            k.seal(f)?;
        }
        if let Some(p) = self.windows.as_mut() {
            p.seal(f)?;
        }
        Ok(())
    }
}

pub struct ReportSink {
    writer: Option<Writer>,
    sinks: Sinks,
    /// With checkpoints: records the writer's state at their frontiers (and ends the topic's
    /// epochs there).
    hook: Option<WriterHook>,
    /// Without checkpoints, the topic's epochs end every `interval`, committed at once: at
    /// least once across a crash, as nothing can resume.
    alone: Option<(Instant, Duration)>,
    run: String,
    pending: BTreeMap<u64, Vec<Out>>,
    /// Per pending time, how many of its lines need no text ([`needs_no_text`]).
    free: HashMap<u64, usize>,
    /// The pending times with [`EARLY_LINES`] such lines or more.
    flooded: BTreeSet<u64>,
    health: Arc<Health>,
}

impl ReportSink {
    pub fn new(
        writer: Writer,
        sinks: Sinks,
        hook: Option<WriterHook>,
        interval: Duration,
        run: &str,
        health: Arc<Health>,
    ) -> Self {
        let alone = hook.is_none().then(|| (Instant::now(), interval));
        // A restored run's tallies are the checkpoint's from the start: one with nothing left
        // to write (every minute final before the kill) would otherwise report zeros.
        *health.tallies.lock().unwrap() = writer.tallies;
        Self {
            writer: Some(writer),
            sinks,
            hook,
            alone,
            run: run.into(),
            pending: BTreeMap::new(),
            free: HashMap::new(),
            flooded: BTreeSet::new(),
            health,
        }
    }

    /// The lines of `time`, as they arrive.
    pub fn add(&mut self, time: u64, items: &mut Vec<Out>) {
        let free = self.free.entry(time).or_default();
        *free += items.iter().filter(|i| needs_no_text(i)).count();
        if *free >= EARLY_LINES {
            self.flooded.insert(time);
        }
        self.pending.entry(time).or_default().append(items);
    }

    /// Writes the times the frontier has passed, in order: all their texts have arrived.
    pub fn write_ready(&mut self, frontier: &MutableAntichain<u64>) -> anyhow::Result<()> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        let sinks = &mut self.sinks;
        while let Some(entry) = self.pending.first_entry() {
            if frontier.less_equal(entry.key()) {
                break;
            }
            let (t, items) = entry.remove_entry();
            self.free.remove(&t);
            self.flooded.remove(&t);
            if let Some(h) = &self.hook {
                h.record(|f| f <= t, w, &mut |f| sinks.seal(f))?;
            }
            w.write_time(items, &mut |line| sinks.send(line))?;
            *self.health.tallies.lock().unwrap() = w.tallies;
        }
        if let Some(h) = &self.hook {
            h.record(|f| !frontier.less_than(&f), w, &mut |f| sinks.seal(f))?;
        }
        if let Some(&at) = frontier.frontier().first() {
            self.write_early(at)?;
        }
        let (Some(w), sinks) = (self.writer.as_mut(), &mut self.sinks) else {
            return Ok(());
        };
        let done = frontier.is_empty();
        // Without checkpoints the sinks commit their own epochs; the end of the input closes
        // the last one in any case.
        let own_epoch = match self.alone.as_mut() {
            Some((last, interval)) if last.elapsed() >= *interval => {
                *last = std::time::Instant::now();
                frontier.frontier().first().copied()
            }
            _ => None,
        };
        if let Some(f) = own_epoch.or(done.then_some(u64::MAX)) {
            sinks.seal(f)?;
            if let Some(k) = sinks.kafka.as_ref() {
                commit(k, &self.run, f);
            }
            if let Some(p) = &sinks.windows {
                super::parquet::commit(p.root(), f)?;
            }
        }
        if done {
            w.finish()?;
            self.writer = None;
        } else {
            w.flush()?;
        }
        Ok(())
    }

    /// Writes ahead of the frontier `at` the lines that depend on nothing still to come: final
    /// window reports of `at` itself, at once (their clicks, and the texts those announced,
    /// are all earlier; a batch's finals come a chunk at a time), and the dead letters, late
    /// clicks, gaps and tallies of any time from `at` on once [`EARLY_LINES`] of them wait at
    /// that time. The sources stamp those at their capability, so while the watermark stood
    /// still (clicks up to the future-skew bound ahead, then a flood the bound dead-letters)
    /// every record read waited here, about 800 bytes each, for up to that bound: 20 GB in a
    /// 2-worker benchmark. No time at or after a checkpoint frontier asked and not yet reached
    /// is written (its lines go after that checkpoint's cut), and none at or before a written
    /// time is asked from then on (`begun`). That is why the rest waits for the threshold:
    /// written as they come, the tallies, stamped at the sources' frontier with every batch
    /// read, would keep `begun` there, and no checkpoint can be asked while it stays.
    fn write_early(&mut self, at: u64) -> anyhow::Result<()> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        let asked = self.hook.as_ref().and_then(|h| h.first_asked());
        let flooded: Vec<u64> = self.flooded.range(at..).copied().collect();
        let times = std::iter::once(at).chain(flooded.into_iter().filter(|t| *t != at));
        for t in times {
            if asked.is_some_and(|f| f <= t) {
                break;
            }
            let Some(items) = self.pending.get_mut(&t) else {
                continue;
            };
            let final_now =
                |i: &Out| t == at && matches!(i, Out::Report(r) if r.status == Status::Final);
            if !self.flooded.contains(&t) && !items.iter().any(final_now) {
                continue;
            }
            let early: Vec<Out> = items
                .extract_if(.., |i| needs_no_text(i) || final_now(i))
                .collect();
            if items.is_empty() {
                self.pending.remove(&t);
                self.free.remove(&t);
            } else {
                self.free.insert(t, 0);
            }
            self.flooded.remove(&t);
            if let Some(h) = &self.hook {
                h.begun.set(h.begun.get().max(t));
            }
            let sinks = &mut self.sinks;
            w.write_time(early, &mut |line| sinks.send(line))?;
            *self.health.tallies.lock().unwrap() = w.tallies;
        }
        Ok(())
    }
}

/// Dead letters, late clicks, gaps and tallies: lines that need no text and that nothing else
/// of their time depends on.
fn needs_no_text(item: &Out) -> bool {
    matches!(
        item,
        Out::Rejected(_) | Out::Late(_) | Out::Received(_) | Out::Lost(_)
    )
}

/// How many lines that depend on nothing still to come may wait at one time ahead of the
/// frontier before they are written ([`ReportSink::write_early`]): at about 800 bytes a dead
/// letter, under a MB per stalled source.
const EARLY_LINES: usize = 1024;

fn commit(k: &AggregatesSink, run: &str, f: u64) {
    if let Err(e) = k.committer().commit(run, f) {
        tracing::error!("click-aggregates: committing {f}: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use adclick_dataflows::click::{Dims, Measures, Sym};
    use adclick_dataflows::report::WindowReport;
    use adclick_dataflows::time::MINUTE_MS;

    use super::*;

    fn report(ad: &str, status: Status) -> Out {
        Out::Report(WindowReport {
            window_ms: MINUTE_MS,
            row: (
                0,
                Dims {
                    ad_id: Sym::of(ad),
                    ..Dims::default()
                },
            ),
            measures: Measures::billable(1),
            status,
        })
    }

    type Asked = Rc<RefCell<BTreeSet<u64>>>;
    type Written = Rc<RefCell<BTreeMap<u64, WriterState>>>;

    /// A sink writing to `path` whose checkpointer has asked `asked`: with the hook's shared
    /// asked frontiers, written states and `begun`.
    fn hooked_sink(
        path: &std::path::Path,
        asked: BTreeSet<u64>,
    ) -> (ReportSink, Asked, Written, Rc<Cell<u64>>) {
        let asked = Rc::new(RefCell::new(asked));
        let written = Rc::new(RefCell::new(BTreeMap::new()));
        let begun = Rc::new(Cell::new(0));
        let hook = WriterHook::new(asked.clone(), written.clone(), begun.clone());
        let writer = Writer::resume(path.to_str().unwrap(), None).unwrap();
        let sink = sink_of(writer, Some(hook));
        (sink, asked, written, begun)
    }

    /// A sink over `writer` with no Kafka or Parquet sink, and a health of its own.
    fn sink_of(writer: Writer, hook: Option<WriterHook>) -> ReportSink {
        let sinks = Sinks {
            kafka: None,
            windows: None,
        };
        let health = Arc::new(Health::new(1, 1));
        ReportSink::new(writer, sinks, hook, Duration::ZERO, "r", health)
    }

    /// A sink resumed from a checkpoint reports the checkpoint's tallies before it writes
    /// anything: after a restore with nothing left to read, health showed zeros.
    #[test]
    fn a_resumed_sink_reports_the_restored_tallies_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        std::fs::write(&path, "").unwrap();
        let tallies = crate::health::Tallies {
            received: 41,
            counted: 40,
            ..Default::default()
        };
        let from = WriterState {
            output_len: 0,
            tallies,
        };
        let writer = Writer::resume(path.to_str().unwrap(), Some(from)).unwrap();
        let sink = sink_of(writer, None);
        assert_eq!(*sink.health.tallies.lock().unwrap(), tallies);
    }

    fn frontier(at: u64) -> MutableAntichain<u64> {
        let mut f = MutableAntichain::new();
        f.update_iter([(at, 1)]);
        f
    }

    /// Final reports at the frontier's own time are written before the frontier passes it,
    /// after the state of a checkpoint asked at that time is recorded; the time's other lines
    /// wait for the frontier; and from then on no checkpoint may be asked at that time.
    #[test]
    fn finals_at_the_frontier_go_at_once_after_the_checkpoint_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        let (mut sink, _, written, begun) = hooked_sink(&path, BTreeSet::from([7]));
        let name = |ad: &str| Out::Name((Sym::of(ad), ad.into()));
        sink.add(
            7,
            &mut vec![
                name("a"),
                name("b"),
                report("a", Status::Final),
                report("b", Status::Complete),
            ],
        );
        sink.write_ready(&frontier(7)).unwrap();
        let lines = || std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            written.borrow()[&7].output_len,
            0,
            "the checkpoint at 7 holds no line of time 7"
        );
        assert_eq!(begun.get(), 7);
        assert_eq!(lines().lines().count(), 1, "only the final: {}", lines());
        assert!(lines().contains("\"final\""));
        sink.write_ready(&frontier(8)).unwrap();
        assert_eq!(lines().lines().count(), 2, "then the rest: {}", lines());
    }

    fn rejected(payload: &str) -> Out {
        Out::Rejected(Box::new(adclick_dataflows::source::Rejected {
            code: "event_time_in_future".into(),
            reason: "too far ahead".into(),
            origin: "clicks/0@1".into(),
            key: Vec::new(),
            payload: payload.as_bytes().to_vec(),
        }))
    }

    /// A stalled frontier holds at most `EARLY_LINES` dead letters, late clicks and tallies
    /// of one time; fewer wait for it, so that a trickle of them never keeps checkpoints from
    /// being asked; none is written past a checkpoint asked and not yet reached; and every
    /// checkpoint's cut still holds exactly the lines of the times before it.
    #[test]
    fn dead_letters_go_ahead_of_a_stalled_frontier_but_never_past_an_asked_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        let (mut sink, asked, written, begun) = hooked_sink(&path, BTreeSet::new());
        let lines = || std::fs::read_to_string(&path).unwrap();
        let late = Out::Late(Box::new(adclick_dataflows::click::RawClick {
            impression_id: "late-9".into(),
            click_id: "c".into(),
            event_time: 1,
            labels: Default::default(),
            traits: Default::default(),
            origin: Default::default(),
        }));
        let letters = |sink: &mut ReportSink, t: u64, n: usize| {
            for i in 0..n {
                sink.add(t, &mut vec![rejected(&format!("t{t}-{i}"))]);
                sink.write_ready(&frontier(5)).unwrap();
            }
        };

        // The frontier stands at 5. A trickle waits for it and moves no checkpoint.
        sink.add(5, &mut vec![Out::Received(1)]);
        sink.write_ready(&frontier(5)).unwrap();
        letters(&mut sink, 9, EARLY_LINES - 2);
        sink.add(
            9,
            &mut vec![report("a", Status::Complete), Out::Received(1)],
        );
        sink.write_ready(&frontier(5)).unwrap();
        assert_eq!(lines(), "", "below the threshold, every line waits");
        assert_eq!(begun.get(), 0);
        // The flood goes on: every line that needs no text is written.
        sink.add(9, &mut vec![late, report("b", Status::Final)]);
        sink.write_ready(&frontier(5)).unwrap();
        assert_eq!(
            lines().lines().count(),
            EARLY_LINES - 1,
            "the dead letters and the late click"
        );
        assert!(!lines().contains("\"status\""), "reports wait: {}", lines());
        assert_eq!(sink.pending[&9].len(), 2, "only the reports are held");
        assert_eq!(sink.health.tallies.lock().unwrap().received, 1);
        assert_eq!(
            sink.health.tallies.lock().unwrap().dead_lettered,
            EARLY_LINES as u64 - 2
        );
        assert_eq!(
            begun.get(),
            9,
            "no checkpoint may be asked at or before 9 now"
        );

        // A checkpoint asked at 12: lines of 12 and after wait for its cut, earlier ones go.
        asked.borrow_mut().insert(12);
        letters(&mut sink, 14, EARLY_LINES);
        letters(&mut sink, 11, EARLY_LINES);
        assert!(
            lines().contains("t11-0") && !lines().contains("t14-"),
            "{}",
            lines()
        );
        sink.write_ready(&frontier(13)).unwrap();
        let all = lines();
        let cut = written.borrow()[&12].output_len as usize;
        assert!(all[..cut].contains("t11-0") && all[..cut].contains("\"final\""));
        assert!(
            !all[..cut].contains("t14-"),
            "the cut at 12 holds no line of 14"
        );
        assert!(
            all[cut..].contains("t14-0"),
            "14's lines went once the cut was made"
        );
        assert!(sink.pending.is_empty(), "{:?}", sink.pending.keys());
        assert!(sink.free.is_empty() && sink.flooded.is_empty());
    }
}
