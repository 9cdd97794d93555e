//! The daily cycle of ad traffic (`--daily-cycle`): when the slots of a stream fall.
//!
//! Without the cycle, slot `i` is at `start + i / rate`. With it, the rate follows the time
//! of day and, a little, the day of the week, as clicks on real ads do: lowest around 03:00,
//! climbing through the morning, a plateau over the working day and the peak in the evening
//! (about 6× the trough), a few percent more on weekdays than at weekends. Times are UTC (the
//! anomaly detector's hours of the week are too). `rate` stays the mean over a week, so a
//! whole week of traffic has as many slots with the cycle as without.
//!
//! The shape is a pure function of the event time, so the traffic stays deterministic from
//! the seed: the same start, rate and seed give the same slots, whatever the output. It is a
//! rate per minute of the week (linear between the middles of the hours, the hourly figures
//! below times the day's), and slot `i` falls where the expected number of clicks since the
//! start reaches `i`: the inverse of the cumulative rate, exact per minute.

use std::sync::LazyLock;

use serde::Serialize;

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
const WEEK_MS: i64 = 7 * DAY_MS;
/// 1970-01-05T00:00:00Z, the first Monday of the epoch: weeks start on Mondays.
const MONDAY_MS: i64 = 4 * DAY_MS;
const MINUTES_PER_WEEK: usize = (WEEK_MS / MINUTE_MS) as usize;

/// Relative traffic in the middle of each hour of the day, UTC, 00:00–01:00 first.
pub const HOURLY: [f64; 24] = [
    0.55, 0.40, 0.30, 0.25, 0.25, 0.30, 0.45, 0.65, 0.85, 1.00, 1.10, 1.15, //
    1.20, 1.20, 1.15, 1.15, 1.20, 1.30, 1.40, 1.50, 1.55, 1.45, 1.15, 0.80,
];
/// Relative traffic of each day of the week, Monday first.
pub const WEEKDAY: [f64; 7] = [1.02, 1.04, 1.04, 1.03, 1.00, 0.92, 0.95];

/// What the truth records of the cycle: the shape, before normalisation to a weekly mean of 1.
#[derive(Debug, Clone, Serialize)]
pub struct Shape {
    pub hourly_utc: [f64; 24],
    pub weekday_from_monday: [f64; 7],
    /// The factor that makes the week's mean rate `rate`.
    pub scale: f64,
}

/// The rate's shape over one week, as cumulative mass.
#[derive(Debug)]
pub struct Cycle {
    /// `cum[i]`: the mass of the week's minutes before minute `i` (from Monday 00:00 UTC), in
    /// milliseconds at the mean rate; `cum[MINUTES_PER_WEEK]` is the whole week, `WEEK_MS`.
    cum: Vec<f64>,
    scale: f64,
}

/// The cycle (built once: a table of the week's minutes).
pub fn week() -> &'static Cycle {
    static WEEK: LazyLock<Cycle> = LazyLock::new(Cycle::new);
    &WEEK
}

/// The unnormalised rate in minute `i` of the week: the hourly figures, linear between the
/// hours' middles (round the clock), times the day's.
fn raw(i: usize) -> f64 {
    let day = i / (24 * 60);
    let hours = (i % (24 * 60)) as f64 / 60.0 + 1.0 / 120.0 - 0.5;
    let h = hours.rem_euclid(24.0);
    let (lo, frac) = (h.floor() as usize, h.fract());
    let hourly = HOURLY[lo] * (1.0 - frac) + HOURLY[(lo + 1) % 24] * frac;
    hourly * WEEKDAY[day]
}

impl Cycle {
    fn new() -> Self {
        let raw: Vec<f64> = (0..MINUTES_PER_WEEK).map(raw).collect();
        let scale = MINUTES_PER_WEEK as f64 / raw.iter().sum::<f64>();
        let mut cum = Vec::with_capacity(MINUTES_PER_WEEK + 1);
        let mut total = 0.0;
        cum.push(0.0);
        for r in &raw {
            total += r * scale * MINUTE_MS as f64;
            cum.push(total);
        }
        // The week's mass is the week, exactly: a week of the cycle has a week's slots.
        let last = cum.len() - 1;
        cum[last] = WEEK_MS as f64;
        Cycle { cum, scale }
    }

    pub fn shape(&self) -> Shape {
        Shape {
            hourly_utc: HOURLY,
            weekday_from_monday: WEEKDAY,
            scale: self.scale,
        }
    }

    /// The rate at `t_ms` relative to the mean (the mean over a week is 1).
    pub fn factor(&self, t_ms: i64) -> f64 {
        let i = ((t_ms - MONDAY_MS).rem_euclid(WEEK_MS) / MINUTE_MS) as usize;
        (self.cum[i + 1] - self.cum[i]) / MINUTE_MS as f64
    }

    /// The mass before `t_ms` since the epoch's first Monday: milliseconds at the mean rate.
    /// Split as (whole weeks, the rest) to keep the rest's precision.
    fn mass(&self, t_ms: i64) -> (i64, f64) {
        let rel = t_ms - MONDAY_MS;
        let (weeks, within) = (rel.div_euclid(WEEK_MS), rel.rem_euclid(WEEK_MS));
        let i = (within / MINUTE_MS) as usize;
        let frac = (within % MINUTE_MS) as f64 / MINUTE_MS as f64;
        (weeks, self.cum[i] + (self.cum[i + 1] - self.cum[i]) * frac)
    }

    /// The mass of [from_ms, to_ms), in milliseconds at the mean rate: at `rate` events a
    /// second, `rate * mass / 1000` events fall in it.
    pub fn between(&self, from_ms: i64, to_ms: i64) -> f64 {
        let (wa, a) = self.mass(from_ms);
        let (wb, b) = self.mass(to_ms);
        (wb - wa) as f64 * WEEK_MS as f64 + (b - a)
    }

    /// The time at which the mass since `from_ms` reaches `mass_ms` (≥ 0), in milliseconds,
    /// rounded down and never before `from_ms`.
    pub fn after(&self, from_ms: i64, mass_ms: f64) -> i64 {
        let (weeks, within) = self.mass(from_ms);
        let target = within + mass_ms.max(0.0);
        let more = (target / WEEK_MS as f64).floor();
        let rest = target - more * WEEK_MS as f64;
        // The last minute whose start has mass at most `rest`.
        let i = self
            .cum
            .partition_point(|&c| c <= rest)
            .clamp(1, MINUTES_PER_WEEK)
            - 1;
        let share = (rest - self.cum[i]) / (self.cum[i + 1] - self.cum[i]);
        let week_start = MONDAY_MS + (weeks + more as i64) * WEEK_MS;
        let t = week_start as f64 + (i as f64 + share.clamp(0.0, 1.0)) * MINUTE_MS as f64;
        (t.floor() as i64).max(from_ms)
    }

    /// The time at which the mass *before* `to_ms` is `mass_ms`: the start of a stream of
    /// that mass ending at `to_ms`.
    pub fn before(&self, to_ms: i64, mass_ms: f64) -> i64 {
        // Step back whole weeks (each exactly WEEK_MS of mass), then search the rest forward.
        let weeks = (mass_ms / WEEK_MS as f64).ceil().max(1.0) as i64;
        let from = to_ms - weeks * WEEK_MS;
        let spare = weeks as f64 * WEEK_MS as f64 - mass_ms;
        self.after(from, spare)
    }
}

/// When each slot of a stream falls: evenly at the rate, or following the [`Cycle`].
#[derive(Debug, Clone, Copy)]
pub struct Slots {
    start_ms: i64,
    rate: f64,
    cycle: Option<&'static Cycle>,
}

impl Slots {
    pub fn new(start_ms: i64, rate: f64, daily_cycle: bool) -> Self {
        Slots {
            start_ms,
            rate,
            cycle: daily_cycle.then(week),
        }
    }

    /// Simulated time of slot `seq`.
    pub fn time(&self, seq: u64) -> i64 {
        let even_ms = seq as f64 * 1000.0 / self.rate;
        match self.cycle {
            None => self.start_ms + even_ms as i64,
            Some(c) => c.after(self.start_ms, even_ms),
        }
    }

    /// About how many slots fall before `t_ms` (exact without the cycle, within one with it).
    pub fn approx_before(&self, t_ms: i64) -> f64 {
        let mass = match self.cycle {
            None => (t_ms - self.start_ms) as f64,
            Some(c) => c.between(self.start_ms, t_ms),
        };
        mass * self.rate / 1000.0
    }

    /// The first slot whose time is at or after `t_ms`.
    pub fn first_at(&self, t_ms: i64) -> u64 {
        let mut slot = self.approx_before(t_ms).ceil().max(0.0) as u64;
        while self.time(slot) < t_ms {
            slot += 1;
        }
        while slot > 0 && self.time(slot - 1) >= t_ms {
            slot -= 1;
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-04-20T00:00:00Z, a Monday.
    const MONDAY: i64 = 1_776_643_200_000;
    const HOUR_MS: i64 = 3_600_000;

    #[test]
    fn the_week_averages_the_rate_and_the_day_has_its_shape() {
        let c = week();
        assert_eq!(c.between(MONDAY, MONDAY + WEEK_MS), WEEK_MS as f64);
        assert_eq!(
            c.between(MONDAY + 5 * HOUR_MS, MONDAY + 5 * HOUR_MS + WEEK_MS),
            WEEK_MS as f64
        );
        let mean: f64 = (0..MINUTES_PER_WEEK as i64)
            .map(|i| c.factor(MONDAY + i * MINUTE_MS))
            .sum::<f64>()
            / MINUTES_PER_WEEK as f64;
        assert!((mean - 1.0).abs() < 1e-9, "{mean}");
        // A Tuesday: the trough at night, the peak in the evening, about 6x apart.
        let tuesday = MONDAY + DAY_MS;
        let hour = |h: i64| c.between(tuesday + h * HOUR_MS, tuesday + (h + 1) * HOUR_MS);
        let hours: Vec<f64> = (0..24).map(hour).collect();
        let (trough, peak) = (hours[3].min(hours[4]), hours[20]);
        assert!(hours.iter().all(|&h| h >= trough && h <= peak), "{hours:?}");
        assert!((5.0..7.0).contains(&(peak / trough)), "{hours:?}");
        // No hour has more than 1.5x the one before or less than 2/3 of it: a cycle, not a
        // cliff (the morning rise is the steepest).
        for w in hours.windows(2) {
            assert!((2.0 / 3.0..1.5).contains(&(w[1] / w[0])), "{hours:?}");
        }
        // Saturday is quieter than Tuesday at the same hour.
        let saturday = MONDAY + 5 * DAY_MS + 12 * HOUR_MS;
        assert!(c.factor(saturday) < c.factor(tuesday + 12 * HOUR_MS));
    }

    #[test]
    fn after_and_before_invert_the_mass() {
        let c = week();
        for start in [MONDAY, MONDAY + 3 * HOUR_MS + 17_123, 1_700_000_000_001] {
            for mass in [0.0, 1.0, 59_999.5, 3.3e6, 86_400_000.0, 9.9e8] {
                let t = c.after(start, mass);
                let got = c.between(start, t);
                // Rounded down to the millisecond: at most one millisecond's mass short.
                assert!(
                    got <= mass + 1e-3 && mass - got <= 2.0,
                    "{start} {mass}: {got}"
                );
                let s = c.before(t, got);
                assert!((s - start).abs() <= 1, "{start} {mass}: {s}");
            }
        }
    }

    #[test]
    fn slots_follow_the_cycle_and_are_exact_without_it() {
        let even = Slots::new(MONDAY, 400.0, false);
        assert_eq!(
            (even.time(0), even.time(1), even.time(400)),
            (MONDAY, MONDAY + 2, MONDAY + 1_000)
        );
        assert_eq!(even.first_at(MONDAY + 1_000), 400);
        // A day at 10 a second: more slots in the evening hour than in the night's.
        let cycled = Slots::new(MONDAY, 10.0, true);
        let in_hour = |h: i64| {
            cycled.first_at(MONDAY + (h + 1) * HOUR_MS) - cycled.first_at(MONDAY + h * HOUR_MS)
        };
        let (night, evening) = (in_hour(3), in_hour(20));
        assert!(evening > 5 * night, "{night} {evening}");
        let day = cycled.first_at(MONDAY + DAY_MS);
        let expected = week().between(MONDAY, MONDAY + DAY_MS) * 10.0 / 1000.0;
        assert!((day as f64 - expected).abs() <= 1.0, "{day} {expected}");
        let times: Vec<i64> = (0..day).map(|s| cycled.time(s)).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(times[0], MONDAY);
        for probe in [MONDAY + 1, MONDAY + 3 * HOUR_MS + 5, MONDAY + 20 * HOUR_MS] {
            let s = cycled.first_at(probe);
            assert!(cycled.time(s) >= probe && cycled.time(s - 1) < probe);
        }
    }

    #[test]
    fn schedules_with_the_cycle_cover_the_duration_or_end_at_the_minute() {
        use crate::loadgen::LoadgenConfig;
        use crate::loadgen::partition::Partitioner;
        let p = Partitioner::Crc32 { shards: 1 };
        let day = LoadgenConfig {
            daily_cycle: true,
            rate: 10.0,
            duration: Some(86_400.0),
            start: Some(MONDAY),
            ..LoadgenConfig::default()
        };
        let s = day.schedule(0, p).unwrap();
        assert_eq!(s.start_ms, MONDAY);
        let expected = week().between(MONDAY, MONDAY + DAY_MS) * 10.0 / 1000.0;
        assert_eq!(s.count, expected.round() as u64);
        // Ending about now: the last slot before the last whole minute, the first a day back.
        let now = MONDAY + 3 * DAY_MS + 20 * HOUR_MS + 37_123;
        let end = now - 37_123;
        let ending = LoadgenConfig {
            start: None,
            ..day.clone()
        };
        assert_eq!(ending.schedule(now, p).unwrap().start_ms, end - DAY_MS);
        let counted = LoadgenConfig {
            start: None,
            duration: None,
            count: Some(100_000),
            ..day
        };
        let s = counted.schedule(now, p).unwrap();
        let slots = Slots::new(s.start_ms, 10.0, true);
        assert!(slots.time(s.count) <= end && slots.time(s.count) > end - 1_000);
        // The evening is busier than 10 a second: the stream spans less than 10,000 s.
        assert!(end - s.start_ms < 10_000_000, "{}", end - s.start_ms);
    }

    #[test]
    fn traffic_with_the_cycle_is_reproducible_and_follows_it() {
        use crate::loadgen::LoadgenConfig;
        use crate::loadgen::traffic::tests::{START, traffic};
        let cfg = LoadgenConfig {
            daily_cycle: true,
            rate: 2.0,
            ..LoadgenConfig::default()
        };
        // START is 12:00 UTC: 18 hours, through the evening peak and the night.
        let all: Vec<_> = traffic(&cfg, 140_000, 2).collect();
        assert_eq!(all, traffic(&cfg, 140_000, 2).collect::<Vec<_>>());
        let hour_of = |t: i64| (t - START).div_euclid(HOUR_MS);
        let mut per_hour = [0u64; 24];
        for e in &all {
            per_hour[hour_of(e.base_ms) as usize] += 1;
        }
        // 20:00-21:00 is hour 8 of the stream, 03:00-04:00 hour 15.
        let (peak, trough) = (per_hour[8], per_hour[15]);
        assert!(peak > 5 * trough && trough > 0, "{per_hour:?}");
        for (h, &n) in per_hour.iter().enumerate().take(17) {
            let from = START + h as i64 * HOUR_MS;
            let want = week().between(from, from + HOUR_MS) * 2.0 / 1000.0;
            assert!(
                (n as f64 - want).abs() <= 1.0,
                "hour {h}: {n} against {want}"
            );
        }
        // Without the cycle the same seed gives the traffic it always did.
        let even = LoadgenConfig {
            daily_cycle: false,
            ..cfg
        };
        let t = traffic(&even, 10, 1);
        assert_eq!((t.base_ms(0), t.base_ms(1)), (START, START + 500));
    }
}
