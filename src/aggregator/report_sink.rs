//! Worker 0's end of the pipeline: every report, late click and dead letter in time order,
//! to the NDJSON output and the final windows to the `click-aggregates` topic, with the
//! writer's state recorded at each checkpoint frontier.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::progress::frontier::MutableAntichain;

use super::aggregates_sink::AggregatesSink;
use super::checkpoint::WriterHook;
use super::health::Health;
use super::output::{Out, Writer};

pub struct ReportSink {
    writer: Option<Writer>,
    kafka: Option<AggregatesSink>,
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
        kafka: Option<AggregatesSink>,
        hook: Option<WriterHook>,
        interval: Duration,
        run: &str,
        health: Arc<Health>,
    ) -> Self {
        let alone = hook.is_none().then(|| (Instant::now(), interval));
        Self {
            writer: Some(writer),
            kafka,
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
    pub fn write_ready(&mut self, frontier: &MutableAntichain<u64>) -> std::io::Result<()> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        while let Some(entry) = self.pending.first_entry() {
            if frontier.less_equal(entry.key()) {
                break;
            }
            let (t, items) = entry.remove_entry();
            if let Some(h) = &self.hook {
                h.record(|f| f <= t, w, self.kafka.as_mut())?;
            }
            let kafka = &mut self.kafka;
            w.write_time(items, &mut |line| {
                if let Some(k) = kafka.as_mut() {
                    k.send(line);
                }
            })?;
            *self.health.tallies.lock().unwrap() = w.tallies;
        }
        if let Some(h) = &self.hook {
            h.record(|f| !frontier.less_than(&f), w, self.kafka.as_mut())?;
        }
        let done = frontier.is_empty();
        if let (Some(k), Some((last, interval))) = (self.kafka.as_mut(), self.alone.as_mut())
            && last.elapsed() >= *interval
            && let Some(&f) = frontier.frontier().first()
        {
            k.seal(f);
            commit(k, &self.run, f);
            *last = Instant::now();
        }
        if done {
            // The end of the input closes the last epoch.
            if let Some(k) = self.kafka.as_mut() {
                k.seal(u64::MAX);
                commit(k, &self.run, u64::MAX);
            }
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
