//! Source time: where each source holds its capability, and which clicks are too late.
//!
//! A source reads some partitions (Kafka partitions, or files). Per partition it tracks the
//! largest event time seen; the partition's watermark is that minus the out-of-orderness
//! bound. The source's capability is the least watermark over its live partitions (a
//! partition idle for the idle timeout, or finished, stops holding it back), never moving
//! backwards. The dataflow's frontier is the least capability over all sources: the watermark.
//!
//! A click is late, and not counted, when its event time is more than the allowed lateness
//! behind its own partition's watermark (or the source's capability, if that is further
//! along). Judging against its own partition keeps the verdict a function of the partition's
//! contents and order alone, whatever the interleaving with other partitions; and because the
//! global frontier is never ahead of the source's capability, a click judged on time always
//! reaches a window that is not final yet (see docs/design.md).

use serde::{Deserialize, Serialize};

use crate::time::quantize;

/// The time settings of a source (brief §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeConfig {
    pub out_of_orderness_ms: u64,
    pub allowed_lateness_ms: u64,
    /// `None` in batch mode: partitions hold the watermark until they finish.
    pub idle_timeout_ms: Option<u64>,
    /// Granularity of timely times; divides 60 000.
    pub tick_ms: u64,
    /// Streaming only (`None` in batch mode): once every partition has been idle for the idle
    /// timeout, the capability follows the wall clock, to `now − out_of_orderness − lag`, so a
    /// quiet stream's last clicks still complete. Sound when event times come from the same
    /// clock as `now` (the redirect stamps them); see docs/design.md, "Idle streams".
    pub idle_advance_lag_ms: Option<u64>,
}

impl Default for TimeConfig {
    fn default() -> Self {
        Self {
            out_of_orderness_ms: 5_000,
            allowed_lateness_ms: 300_000,
            idle_timeout_ms: Some(30_000),
            tick_ms: 100,
            idle_advance_lag_ms: Some(2_000),
        }
    }
}

/// What to do with a click.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Count it; send it at this timely time (its own, or the capability if that is later).
    Emit { at: u64 },
    /// Beyond the allowed lateness: to the late topic and tally.
    Late,
}

#[derive(Clone, Debug)]
struct Partition {
    max_seen: Option<u64>,
    last_activity_ms: u64,
    finished: bool,
}

/// The clock of one source over its partitions.
#[derive(Clone, Debug)]
pub struct SourceClock {
    cfg: TimeConfig,
    partitions: Vec<Partition>,
    capability: u64,
}

impl SourceClock {
    pub fn new(partitions: usize, cfg: TimeConfig, now_ms: u64) -> Self {
        Self {
            cfg,
            partitions: vec![
                Partition {
                    max_seen: None,
                    last_activity_ms: now_ms,
                    finished: false,
                };
                partitions
            ],
            capability: 0,
        }
    }

    /// Judges a click of partition `p` and then accounts for it.
    pub fn observe(&mut self, p: usize, event_time: u64, now_ms: u64) -> Verdict {
        let part = &mut self.partitions[p];
        let partition_watermark = part
            .max_seen
            .map_or(0, |m| m.saturating_sub(self.cfg.out_of_orderness_ms));
        let reference = partition_watermark.max(self.capability);
        part.last_activity_ms = now_ms;
        if event_time < reference.saturating_sub(self.cfg.allowed_lateness_ms) {
            return Verdict::Late;
        }
        part.max_seen = Some(part.max_seen.map_or(event_time, |m| m.max(event_time)));
        Verdict::Emit {
            at: quantize(event_time, self.cfg.tick_ms).max(self.capability),
        }
    }

    /// Notes that partition `p` has records still to deliver, so it is not idle.
    pub fn active(&mut self, p: usize, now_ms: u64) {
        self.partitions[p].last_activity_ms = now_ms;
    }

    /// Notes that partition `p` is exhausted for good.
    pub fn finish(&mut self, p: usize) {
        self.partitions[p].finished = true;
    }

    /// Recomputes the capability; `None` once every partition finished (the source is done).
    pub fn advance(&mut self, now_ms: u64) -> Option<u64> {
        if self.partitions.iter().all(|p| p.finished) {
            return None;
        }
        let idle = |p: &Partition| {
            self.cfg
                .idle_timeout_ms
                .is_some_and(|t| now_ms.saturating_sub(p.last_activity_ms) >= t)
        };
        let live: Vec<&Partition> = self
            .partitions
            .iter()
            .filter(|p| !p.finished && !idle(p))
            .collect();
        let watermark = |p: &Partition| {
            p.max_seen
                .map(|m| m.saturating_sub(self.cfg.out_of_orderness_ms))
        };
        let candidate = if live.is_empty() {
            // Nobody holds it back: as far as the most advanced partition allows, and in
            // streaming as far as the wall clock says no on-time click can still be behind.
            let seen = self.partitions.iter().filter_map(watermark).max();
            let wall = self
                .cfg
                .idle_advance_lag_ms
                .map(|lag| now_ms.saturating_sub(self.cfg.out_of_orderness_ms.saturating_add(lag)));
            seen.max(wall)
        } else if live.iter().any(|p| p.max_seen.is_none()) {
            // A live partition we know nothing about yet could still bring anything.
            None
        } else {
            live.iter().filter_map(|p| watermark(p)).min()
        };
        if let Some(c) = candidate {
            self.capability = self.capability.max(quantize(c, self.cfg.tick_ms));
        }
        Some(self.capability)
    }

    pub fn capability(&self) -> u64 {
        self.capability
    }

    /// How far partition `p`'s watermark is ahead of the capability (0 before it has any).
    pub fn ahead_of_capability(&self, p: usize) -> u64 {
        self.partitions[p].max_seen.map_or(0, |m| {
            m.saturating_sub(self.cfg.out_of_orderness_ms)
                .saturating_sub(self.capability)
        })
    }

    /// What a checkpoint keeps: per partition the largest event time seen, and the capability.
    /// Idle timers are processing time and start afresh.
    pub fn state(&self) -> ClockState {
        ClockState {
            max_seen: self.partitions.iter().map(|p| p.max_seen).collect(),
            capability: self.capability,
        }
    }

    /// A clock that goes on from `state` (one entry per partition, in the same order).
    pub fn restore(state: &ClockState, cfg: TimeConfig, now_ms: u64) -> Self {
        let mut clock = Self::new(state.max_seen.len(), cfg, now_ms);
        for (p, m) in clock.partitions.iter_mut().zip(&state.max_seen) {
            p.max_seen = *m;
        }
        clock.capability = state.capability;
        clock
    }
}

/// A [`SourceClock`] as a checkpoint keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockState {
    pub max_seen: Vec<Option<u64>>,
    pub capability: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(idle: Option<u64>) -> TimeConfig {
        TimeConfig {
            out_of_orderness_ms: 5_000,
            allowed_lateness_ms: 300_000,
            idle_timeout_ms: idle,
            tick_ms: 100,
            idle_advance_lag_ms: None,
        }
    }

    #[test]
    fn capability_is_the_least_partition_watermark_and_never_regresses() {
        let mut c = SourceClock::new(2, cfg(None), 0);
        assert_eq!(c.observe(0, 100_000, 0), Verdict::Emit { at: 100_000 });
        // Partition 1 has no data yet: nothing can advance.
        assert_eq!(c.advance(0), Some(0));
        c.observe(1, 50_050, 0);
        assert_eq!(c.advance(0), Some(45_000));
        c.observe(1, 200_000, 0);
        assert_eq!(c.advance(0), Some(95_000));
        c.finish(0);
        assert_eq!(c.advance(0), Some(195_000));
        c.finish(1);
        assert_eq!(c.advance(0), None);
    }

    #[test]
    fn lateness_is_judged_against_the_own_partition_and_the_limit_is_inclusive() {
        let mut c = SourceClock::new(2, cfg(None), 0);
        c.observe(0, 1_000_000, 0);
        // Partition 0's watermark is 995 000; the limit is 695 000.
        assert_eq!(c.observe(0, 695_000, 0), Verdict::Emit { at: 695_000 });
        assert_eq!(c.observe(0, 694_999, 0), Verdict::Late);
        // The same time in a partition that has seen nothing is not late.
        assert_eq!(c.observe(1, 694_999, 0), Verdict::Emit { at: 694_900 });
    }

    #[test]
    fn behind_the_capability_travels_at_the_capability() {
        let mut c = SourceClock::new(1, cfg(None), 0);
        c.observe(0, 600_000, 0);
        assert_eq!(c.advance(0), Some(595_000));
        // 30 s behind the watermark: a correction of a complete window, sent at the capability.
        assert_eq!(c.observe(0, 565_000, 0), Verdict::Emit { at: 595_000 });
    }

    #[test]
    fn idle_partitions_stop_holding_the_watermark() {
        let mut c = SourceClock::new(2, cfg(Some(30_000)), 0);
        c.observe(0, 100_000, 0);
        assert_eq!(
            c.advance(10_000),
            Some(0),
            "partition 1 may still bring data"
        );
        assert_eq!(c.advance(30_000), Some(95_000), "partition 1 went idle");
        // Partition 1 wakes up far behind: judged against the capability, so on time if
        // within the lateness, late if beyond.
        assert_eq!(c.observe(1, 90_000, 31_000), Verdict::Emit { at: 95_000 });
        let mut c2 = c.clone();
        c2.observe(0, 1_000_000, 61_000);
        assert_eq!(c2.advance(61_000), Some(995_000), "partition 1 idle again");
        assert_eq!(c2.observe(1, 90_000, 61_000), Verdict::Late);
    }

    #[test]
    fn a_partition_with_unread_records_is_never_idle() {
        let mut c = SourceClock::new(2, cfg(Some(30_000)), 0);
        c.observe(0, 100_000, 0);
        // Partition 1 has a backlog its consumer has not delivered yet.
        c.active(1, 29_000);
        assert_eq!(c.advance(30_000), Some(0), "partition 1 still holds it");
        assert_eq!(
            c.advance(59_000),
            Some(95_000),
            "idle 30 s after its last sign"
        );
    }

    #[test]
    fn an_empty_source_never_advances_until_its_partitions_go_idle() {
        let mut c = SourceClock::new(3, cfg(Some(30_000)), 0);
        assert_eq!(c.advance(29_999), Some(0));
        assert_eq!(
            c.advance(30_000),
            Some(0),
            "nothing seen anywhere: stays at 0"
        );
    }

    #[test]
    fn an_idle_stream_follows_the_wall_clock_forwards_only() {
        let wall = TimeConfig {
            idle_advance_lag_ms: Some(2_000),
            ..cfg(Some(30_000))
        };
        let t0 = 1_800_000_000_000;
        let mut c = SourceClock::new(2, wall, t0);
        c.observe(0, t0, t0);
        assert_eq!(c.advance(t0 + 29_999), Some(0), "partition 1 still live");
        // Both idle: the capability goes to the wall clock minus 5 s and the 2 s lag.
        assert_eq!(c.advance(t0 + 30_000), Some(t0 + 30_000 - 7_000));
        assert_eq!(
            c.advance(t0 + 40_050),
            Some(t0 + 40_000 - 7_000),
            "quantized"
        );
        // A click with an older time that arrives now is judged against that capability: on
        // time within the allowed lateness (sent at the capability, a correction) ...
        assert_eq!(
            c.observe(1, t0 + 1_000, t0 + 40_100),
            Verdict::Emit { at: t0 + 33_000 }
        );
        // ... and late beyond it, never lost.
        assert_eq!(c.observe(1, t0 - 300_000, t0 + 40_100), Verdict::Late);
        // The partition is live again and holds it; the wall clock never moves it backwards.
        assert_eq!(c.advance(t0 + 40_200), Some(t0 + 33_000));
        // Without the setting (batch mode), idle partitions never let the wall clock in.
        let mut batch = SourceClock::new(1, cfg(Some(30_000)), t0);
        batch.observe(0, 1_000_000, t0);
        assert_eq!(batch.advance(t0 + 60_000), Some(995_000));
    }
}
