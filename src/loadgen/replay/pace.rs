//! When each record of a recording is sent: pure functions of the recorded times and the
//! speed, so the schedule is tested without a clock.
//!
//! A recording keeps no send times, only event times, which are out of order by design
//! (disorder, duplicates, late clicks). A record's *pace time* is the largest event time of
//! its lane (file or partition) up to and including it ([`LaneClock`]): never decreasing along
//! a lane, so pacing never reorders a lane, and a late click (days behind) goes out right after
//! its predecessor instead of stalling or rushing the replay. A record with no time (malformed)
//! goes out with its predecessor. Lanes are merged by pace time ([`Merge`]), ties to the lower
//! lane, each lane in its own order. [`Schedule`] turns pace times into offsets from the start
//! of the replay at the speed multiple, shortening quiet gaps longer than `max_gap_ms` of
//! recorded time (a streaming aggregator whose partitions are all idle for its idle timeout
//! moves its watermark to the wall clock, which would make the rest of a historical recording
//! late; and a leading click from long ago must not hold the replay back for days).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// How fast to replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// This many recorded seconds per wall-clock second.
    Times(f64),
    /// As fast as the target takes it: no waiting at all.
    Max,
}

impl std::str::FromStr for Speed {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "max" {
            return Ok(Speed::Max);
        }
        let x: f64 = s
            .trim_end_matches(['x', 'X'])
            .parse()
            .map_err(|_| format!("{s:?}: a speed is a positive number (1, 10, 0.5) or `max`"))?;
        if !(x.is_finite() && x > 0.0) {
            return Err(format!("{s:?}: a speed must be positive"));
        }
        Ok(Speed::Times(x))
    }
}

/// The pace time of each record of one lane, in lane order.
#[derive(Debug, Default, Clone, Copy)]
pub struct LaneClock {
    max: Option<i64>,
}

impl LaneClock {
    /// The pace time of the lane's next record, whose event time is `time` if it has one.
    /// `None` until the lane has seen a time: such a record is due at once.
    pub fn pace(&mut self, time: Option<i64>) -> Option<i64> {
        if let Some(t) = time {
            self.max = Some(self.max.map_or(t, |m| m.max(t)));
        }
        self.max
    }
}

/// Pace times to offsets from the start of the replay.
#[derive(Debug, Clone)]
pub struct Schedule {
    speed: Speed,
    max_gap_ms: i64,
    /// Recorded time of the replay's start, once the first timed record is seen.
    origin: Option<i64>,
    /// The latest pace time scheduled, and the recorded time taken out by shortened gaps.
    last: Option<i64>,
    skipped_ms: i64,
}

impl Schedule {
    pub fn new(speed: Speed, max_gap: Duration) -> Self {
        Self {
            speed,
            max_gap_ms: i64::try_from(max_gap.as_millis()).unwrap_or(i64::MAX),
            origin: None,
            last: None,
            skipped_ms: 0,
        }
    }

    /// When a record of this pace time is due, after the start of the replay. Called in send
    /// order (non-decreasing pace times, as [`Merge`] yields them).
    pub fn due(&mut self, pace: Option<i64>) -> Duration {
        let (Some(pace), Speed::Times(speed)) = (pace, self.speed) else {
            return Duration::ZERO;
        };
        let origin = *self.origin.get_or_insert(pace);
        let last = self.last.get_or_insert(pace);
        if pace > *last {
            self.skipped_ms += (pace - *last).saturating_sub(self.max_gap_ms).max(0);
            *last = pace;
        }
        let recorded = (*last - origin - self.skipped_ms).max(0);
        Duration::from_secs_f64(recorded as f64 / 1000.0 / speed)
    }
}

/// Merges lanes of `(pace time, item)` by pace time, ties to the lower lane; within a lane
/// items keep their order (their pace times never decrease, see [`LaneClock`]).
pub struct Merge<T, L: Iterator<Item = (Option<i64>, T)>> {
    lanes: Vec<L>,
    /// (pace, lane) of every lane's next item, least first; `None` sorts first (due at once).
    heads: BinaryHeap<Reverse<(Option<i64>, usize)>>,
    next: Vec<Option<T>>,
}

impl<T, L: Iterator<Item = (Option<i64>, T)>> Merge<T, L> {
    pub fn new(lanes: Vec<L>) -> Self {
        let mut m = Self {
            next: lanes.iter().map(|_| None).collect(),
            lanes,
            heads: BinaryHeap::new(),
        };
        for lane in 0..m.lanes.len() {
            m.refill(lane);
        }
        m
    }

    fn refill(&mut self, lane: usize) {
        if let Some((pace, item)) = self.lanes[lane].next() {
            self.next[lane] = Some(item);
            self.heads.push(Reverse((pace, lane)));
        }
    }
}

impl<T, L: Iterator<Item = (Option<i64>, T)>> Iterator for Merge<T, L> {
    /// (lane, pace time, item).
    type Item = (usize, Option<i64>, T);

    fn next(&mut self) -> Option<Self::Item> {
        let Reverse((pace, lane)) = self.heads.pop()?;
        let item = self.next[lane].take().expect("a head has its item");
        self.refill(lane);
        Some((lane, pace, item))
    }
}

/// The whole schedule of a recording given as lanes of event times: `(lane, index in lane,
/// offset from the start)` in send order. What [`super::run`] does with a clock, without one.
pub fn plan(
    lanes: &[Vec<Option<i64>>],
    speed: Speed,
    max_gap: Duration,
) -> Vec<(usize, usize, Duration)> {
    let paced = lanes
        .iter()
        .map(|times| {
            let mut clock = LaneClock::default();
            times
                .iter()
                .enumerate()
                .map(move |(i, &t)| (clock.pace(t), i))
                .collect::<Vec<_>>()
                .into_iter()
        })
        .collect();
    let mut schedule = Schedule::new(speed, max_gap);
    Merge::new(paced)
        .map(|(lane, pace, i)| (lane, i, schedule.due(pace)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAP: Duration = Duration::from_secs(10);

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn speeds_parse_and_bad_ones_are_refused_by_value() {
        assert_eq!("1".parse::<Speed>().unwrap(), Speed::Times(1.0));
        assert_eq!("10x".parse::<Speed>().unwrap(), Speed::Times(10.0));
        assert_eq!("0.5".parse::<Speed>().unwrap(), Speed::Times(0.5));
        assert_eq!("max".parse::<Speed>().unwrap(), Speed::Max);
        for bad in ["0", "-2", "fast", "inf", "NaN"] {
            let err = bad.parse::<Speed>().unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn one_lane_keeps_relative_timing_at_the_speed() {
        let lane = vec![Some(1_000), Some(1_500), Some(3_000), Some(11_000)];
        let at1: Vec<_> = plan(std::slice::from_ref(&lane), Speed::Times(1.0), GAP)
            .into_iter()
            .map(|(_, _, d)| ms(d))
            .collect();
        assert_eq!(at1, [0, 500, 2_000, 10_000]);
        let at10: Vec<_> = plan(&[lane], Speed::Times(10.0), GAP)
            .into_iter()
            .map(|(_, _, d)| ms(d))
            .collect();
        assert_eq!(at10, [0, 50, 200, 1_000]);
    }

    #[test]
    fn late_and_untimed_records_go_out_with_their_predecessor_in_lane_order() {
        // A duplicate 2 s earlier, a click a day late, a malformed line.
        let lane = vec![
            None,
            Some(10_000),
            Some(8_000),
            Some(10_000 - 86_400_000),
            None,
            Some(12_000),
        ];
        let p = plan(&[lane], Speed::Times(1.0), GAP);
        let order: Vec<_> = p.iter().map(|&(_, i, _)| i).collect();
        assert_eq!(order, [0, 1, 2, 3, 4, 5]);
        let at: Vec<_> = p.iter().map(|&(.., d)| ms(d)).collect();
        assert_eq!(at, [0, 0, 0, 0, 0, 2_000]);
    }

    #[test]
    fn lanes_merge_by_pace_time_each_in_its_own_order() {
        let a = vec![Some(1_000), Some(900), Some(4_000)];
        let b = vec![Some(2_000), Some(3_000), None, Some(3_500)];
        let p = plan(&[a, b], Speed::Times(2.0), GAP);
        let order: Vec<_> = p.iter().map(|&(l, i, _)| (l, i)).collect();
        assert_eq!(
            order,
            [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3), (0, 2)]
        );
        let at: Vec<_> = p.iter().map(|&(.., d)| ms(d)).collect();
        assert_eq!(at, [0, 0, 500, 1_000, 1_000, 1_250, 1_500]);
        // Each lane in order, whatever the speed.
        for speed in [Speed::Max, Speed::Times(1.0), Speed::Times(100.0)] {
            let p = plan(
                &[vec![Some(5); 3], vec![Some(1), Some(9), Some(2)]],
                speed,
                GAP,
            );
            for lane in 0..2 {
                let idx: Vec<_> = p.iter().filter(|x| x.0 == lane).map(|x| x.1).collect();
                assert_eq!(idx, [0, 1, 2]);
            }
        }
    }

    #[test]
    fn max_speed_never_waits() {
        let p = plan(
            &[vec![Some(0), Some(3_600_000)], vec![Some(7_200_000)]],
            Speed::Max,
            GAP,
        );
        assert!(p.iter().all(|&(.., d)| d.is_zero()));
    }

    #[test]
    fn quiet_gaps_longer_than_the_limit_are_shortened_to_it() {
        // A click from an hour before the rest, then 5 s, a 60 s silence, 1 s.
        let lane = vec![
            Some(0),
            Some(3_600_000),
            Some(3_605_000),
            Some(3_665_000),
            Some(3_666_000),
        ];
        let at: Vec<_> = plan(&[lane], Speed::Times(1.0), GAP)
            .into_iter()
            .map(|(.., d)| ms(d))
            .collect();
        assert_eq!(at, [0, 10_000, 15_000, 25_000, 26_000]);
        // Across lanes too: the gap is in the merged timeline.
        let at: Vec<_> = plan(
            &[vec![Some(0), Some(100_000)], vec![Some(1_000)]],
            Speed::Times(1.0),
            GAP,
        )
        .into_iter()
        .map(|(.., d)| ms(d))
        .collect();
        assert_eq!(at, [0, 1_000, 11_000]);
    }
}
