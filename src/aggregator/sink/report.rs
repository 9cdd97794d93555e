//! Worker 0's end of the pipeline: every report, late click and dead letter in time order,
//! to the NDJSON output and the final windows to the `click-aggregates` topic, with the
//! writer's state recorded at each checkpoint frontier.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::progress::frontier::MutableAntichain;

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
}

impl WriterHook {
    /// The hook over the checkpointer's `asked` frontiers and the `written` states it collects.
    pub fn new(
        asked: Rc<RefCell<BTreeSet<u64>>>,
        written: Rc<RefCell<BTreeMap<u64, WriterState>>>,
    ) -> Self {
        Self { asked, written }
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
        Self {
            writer: Some(writer),
            sinks,
            hook,
            alone,
            run: run.into(),
            pending: BTreeMap::new(),
            health,
        }
    }

    pub fn add(&mut self, time: u64, items: &mut Vec<Out>) {
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
            if let Some(h) = &self.hook {
                h.record(|f| f <= t, w, &mut |f| sinks.seal(f))?;
            }
            w.write_time(items, &mut |line| sinks.send(line))?;
            *self.health.tallies.lock().unwrap() = w.tallies;
        }
        if let Some(h) = &self.hook {
            h.record(|f| !frontier.less_than(&f), w, &mut |f| sinks.seal(f))?;
        }
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
}

fn commit(k: &AggregatesSink, run: &str, f: u64) {
    if let Err(e) = k.committer().commit(run, f) {
        tracing::error!("click-aggregates: committing {f}: {e:#}");
    }
}
