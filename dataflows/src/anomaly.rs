//! Traffic anomalies: per campaign, per publisher and per campaign × country, each final
//! minute's clicks against a baseline that knows the time of day and the day of week, and
//! the invalid-traffic share against a threshold.
//!
//! The model ([`Baseline::observe`]) is a plain function of one key's sequence of final
//! minutes, so alerts are a function of the final rows: the same input gives the same alerts
//! whatever the arrival order, the cluster's shape or the batching (a replay reproduces
//! them). Per key it keeps a trailing EWMA of clicks per minute (the recent level) and a
//! fixed ring of 168 hour-of-week buckets (each the EWMA over weeks of that hour's mean), so
//! its state is bounded: [`Baseline`] is a fixed size whatever the traffic.
//!
//! - `spike`: the minute is at least `spike_ratio` times the higher of the level and the
//!   same hour of past weeks, with at least `spike_min_clicks` clicks and a Poisson z-score
//!   of at least `min_score` (a key with 2 clicks a minute that gets 9 is noise, not news);
//! - `drop`: at most `drop_ratio` times the lower of the two, from a baseline of at least
//!   `drop_min_baseline` clicks a minute, z-score at most −`min_score`;
//! - `invalid_share`: invalid clicks over `invalid_share` of the minute's deduplicated
//!   clicks, with at least `invalid_min_clicks` of them.
//!
//! Spike and drop need `warmup_minutes` of history for the key (a cold start learns the level
//! first); the weekly buckets join once a whole hour of a past week is known. An alert fires
//! when an episode starts, not again every minute it lasts. A spike's minutes teach the
//! recent level what was expected, not themselves, so a spike neither becomes the new normal
//! nor leaves a false drop behind when it ends; one that lasts longer than `ewma_minutes` is
//! a change of level, and its minutes teach again, clamped to the thresholds, as drops' do.

use std::collections::BTreeMap;

use differential_dataflow::{Hashable, VecCollection};
use foldhash::{HashMap, HashMapExt};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::{Broadcast, Map};

use crate::click::{Measures, Row, Sym};
use crate::time::{HOUR_MS, MINUTE_MS};

/// Hour-of-week buckets: Monday 00:00 UTC is bucket 0.
pub const HOURS_PER_WEEK: usize = 168;

/// Where an alert is: the dimension and its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    Campaign(Sym),
    Publisher(Sym),
    /// A campaign's clicks from one country (seed 000: 100x from one region).
    CampaignCountry(Sym, Sym),
}

impl Scope {
    /// The dimension's name, as the API shows it.
    pub fn dimension(&self) -> &'static str {
        match self {
            Scope::Campaign(_) => "campaign_id",
            Scope::Publisher(_) => "publisher_id",
            Scope::CampaignCountry(..) => "campaign_id,country",
        }
    }

    /// The fingerprints of the key's texts, in the dimension's order.
    pub fn syms(&self) -> Vec<Sym> {
        match *self {
            Scope::Campaign(c) | Scope::Publisher(c) => vec![c],
            Scope::CampaignCountry(c, country) => vec![c, country],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Spike,
    Drop,
    InvalidShare,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Spike, Kind::Drop, Kind::InvalidShare];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Spike => "spike",
            Kind::Drop => "drop",
            Kind::InvalidShare => "invalid_share",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 2] = [Severity::Warning, Severity::Critical];

    pub fn name(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn from_name(name: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// One anomaly: what, where, when, how far from the baseline, how bad.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub kind: Kind,
    pub scope: Scope,
    /// Start of the event-time minute, ms since the epoch.
    pub minute: u64,
    /// Clicks in the minute (spike, drop) or the invalid share (invalid_share).
    pub observed: f64,
    /// What was expected: clicks a minute, or the share threshold.
    pub baseline: f64,
    /// observed / baseline (the baseline counted as at least one click a minute).
    pub ratio: f64,
    /// Poisson z-score (spike, drop): (observed − baseline) / √(baseline + 1); the share
    /// itself for invalid_share.
    pub score: f64,
    pub severity: Severity,
}

/// The `[aggregator.alerts]` settings; see the README for tuning.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    /// Off: no anomaly state, no alerts.
    pub enabled: bool,
    /// Also per campaign × country (spikes from one region).
    pub by_country: bool,
    /// Minutes of a key's history before spikes and drops are judged.
    pub warmup_minutes: u32,
    /// Span of the recent level's EWMA, in minutes (alpha = 2 / (span + 1)).
    pub ewma_minutes: f64,
    /// Weight of the newest week in an hour-of-week bucket.
    pub week_weight: f64,
    /// Least |z-score| of a spike or drop.
    pub min_score: f64,
    pub spike_ratio: f64,
    pub spike_min_clicks: u64,
    pub spike_critical_ratio: f64,
    pub drop_ratio: f64,
    pub drop_min_baseline: f64,
    pub drop_critical_ratio: f64,
    pub invalid_share: f64,
    pub invalid_share_critical: f64,
    pub invalid_min_clicks: u64,
    /// A key without a click for this long is forgotten.
    pub forget_after_minutes: u64,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            by_country: true,
            warmup_minutes: 30,
            ewma_minutes: 30.0,
            week_weight: 0.5,
            min_score: 6.0,
            spike_ratio: 5.0,
            spike_min_clicks: 50,
            spike_critical_ratio: 20.0,
            drop_ratio: 0.5,
            drop_min_baseline: 20.0,
            drop_critical_ratio: 0.2,
            invalid_share: 0.3,
            invalid_share_critical: 0.6,
            invalid_min_clicks: 50,
            forget_after_minutes: 8 * 24 * 60,
        }
    }
}

impl AlertConfig {
    /// Checks the settings, naming the first bad one (without its section).
    pub fn check(&self) -> Result<(), String> {
        let positive = [
            ("ewma_minutes", self.ewma_minutes),
            ("min_score", self.min_score),
            ("spike_ratio", self.spike_ratio),
            ("spike_critical_ratio", self.spike_critical_ratio),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} must be a positive number"));
            }
        }
        let shares = [
            ("week_weight", self.week_weight),
            ("drop_ratio", self.drop_ratio),
            ("drop_critical_ratio", self.drop_critical_ratio),
            ("invalid_share", self.invalid_share),
            ("invalid_share_critical", self.invalid_share_critical),
        ];
        for (name, v) in shares {
            if !(v > 0.0 && v <= 1.0) {
                return Err(format!("{name} must be above 0 and at most 1"));
            }
        }
        if self.drop_min_baseline.is_nan() || self.drop_min_baseline < 0.0 {
            return Err("drop_min_baseline must not be negative".into());
        }
        if self.forget_after_minutes < 60 {
            return Err("forget_after_minutes must be at least 60".into());
        }
        Ok(())
    }

    fn alpha(&self) -> f32 {
        (2.0 / (self.ewma_minutes + 1.0)) as f32
    }
}

/// One key's final minute: deduplicated clicks (billable and invalid) and the invalid ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Minute {
    pub clicks: i64,
    pub invalid: i64,
}

impl Minute {
    fn of(m: &Measures) -> Self {
        let invalid = m.invalid_total();
        Minute {
            clicks: m.clicks + invalid,
            invalid,
        }
    }

    fn add(&mut self, other: Minute) {
        self.clicks += other.clicks;
        self.invalid += other.invalid;
    }

    fn is_zero(&self) -> bool {
        self.clicks == 0 && self.invalid == 0
    }
}

/// Monday 00:00 UTC based hour of the week of `minute` (the epoch was a Thursday).
pub fn hour_of_week(minute_ms: u64) -> usize {
    ((minute_ms / HOUR_MS + 3 * 24) % HOURS_PER_WEEK as u64) as usize
}

/// One key's baseline: a fixed size, whatever the traffic.
#[derive(Clone, Debug, PartialEq)]
pub struct Baseline {
    /// Trailing EWMA of clicks per minute.
    level: f32,
    /// Minutes observed, saturating.
    minutes: u32,
    /// Per hour of the week: EWMA over weeks of the hour's mean clicks per minute...
    season: [f32; HOURS_PER_WEEK],
    /// ...and how many weeks it has seen (saturating).
    weeks: [u8; HOURS_PER_WEEK],
    /// The hour being summed: its bucket, minutes seen and their (clamped) clicks.
    hour: u8,
    hour_minutes: u8,
    hour_sum: f32,
    /// Kinds in an episode (a bit per [`Kind`]).
    active: u8,
    /// Minutes the current spike has lasted (0: none).
    spiking: u16,
    /// The last minute with a click: keys silent for long are forgotten.
    last_click: u64,
}

impl Baseline {
    fn new(minute: u64) -> Self {
        Baseline {
            level: 0.0,
            minutes: 0,
            season: [0.0; HOURS_PER_WEEK],
            weeks: [0; HOURS_PER_WEEK],
            hour: hour_of_week(minute) as u8,
            hour_minutes: 0,
            hour_sum: 0.0,
            active: 0,
            spiking: 0,
            last_click: minute,
        }
    }

    /// The expected clicks a minute at `minute`, bounded above and below: the level and, once
    /// a past week's same hour is known, that hour's mean. Spikes are judged against the
    /// higher, drops against the lower, so growth since last week is not a spike and a
    /// quieter hour than last week's is not a drop unless the recent level says so too.
    pub fn expected(&self, minute: u64) -> (f64, f64) {
        let level = f64::from(self.level);
        let h = hour_of_week(minute);
        if self.weeks[h] > 0 {
            let s = f64::from(self.season[h]);
            (level.min(s), level.max(s))
        } else {
            (level, level)
        }
    }

    /// Judges the final minute `minute` of `scope` (minutes in order, a minute without
    /// clicks as zero), appends the alerts of episodes it starts, and learns from it.
    pub fn observe(
        &mut self,
        scope: Scope,
        minute: u64,
        m: Minute,
        cfg: &AlertConfig,
        out: &mut Vec<Alert>,
    ) {
        let observed = m.clicks.max(0) as f64;
        let (low, high) = self.expected(minute);
        let warm = self.minutes >= cfg.warmup_minutes;
        let z = |b: f64| (observed - b) / (b + 1.0).sqrt();
        let ratio = |b: f64| observed / b.max(1.0);
        let mut now = 0u8;
        let mut fire = |kind: Kind, baseline: f64, ratio: f64, score: f64, critical: bool| {
            now |= kind.bit();
            if self.active & kind.bit() == 0 {
                out.push(Alert {
                    kind,
                    scope,
                    minute,
                    observed: if kind == Kind::InvalidShare {
                        score
                    } else {
                        observed
                    },
                    baseline,
                    ratio,
                    score,
                    severity: if critical {
                        Severity::Critical
                    } else {
                        Severity::Warning
                    },
                });
            }
        };
        if warm
            && observed >= cfg.spike_min_clicks as f64
            && observed >= cfg.spike_ratio * high
            && z(high) >= cfg.min_score
        {
            let r = ratio(high);
            fire(Kind::Spike, high, r, z(high), r >= cfg.spike_critical_ratio);
        }
        if warm
            && low >= cfg.drop_min_baseline
            && observed <= cfg.drop_ratio * low
            && z(low) <= -cfg.min_score
        {
            let r = ratio(low);
            fire(Kind::Drop, low, r, z(low), r <= cfg.drop_critical_ratio);
        }
        if m.clicks >= cfg.invalid_min_clicks as i64 {
            let share = m.invalid as f64 / m.clicks as f64;
            if share >= cfg.invalid_share {
                let t = cfg.invalid_share;
                fire(
                    Kind::InvalidShare,
                    t,
                    share / t,
                    share,
                    share >= cfg.invalid_share_critical,
                );
            }
        }
        self.active = now;
        // A spike's minute teaches the level what was expected, not itself: the episode stays
        // one, and when it ends the level is where it was (learned even clamped to the
        // threshold, ten minutes of a spike raised the level about threefold, and the
        // ordinary minutes after it were a drop). A spike lasting longer than the trailing
        // average's span is a change of level, and its minutes teach again (clamped). Drops
        // teach as before: a drop leaves no false spike behind (the ratios are asymmetric).
        // A function of the minutes alone, as before.
        self.spiking = if now & Kind::Spike.bit() != 0 {
            self.spiking.saturating_add(1)
        } else {
            0
        };
        let expected =
            (self.spiking > 0 && f64::from(self.spiking) <= cfg.ewma_minutes).then_some(high);
        self.learn(minute, observed, (low, high), warm, expected, cfg);
    }

    /// Folds the minute into the level and its hour's bucket. The level learns `expected`
    /// instead of a spike's minute (see [`Baseline::observe`]); otherwise, once warm, the
    /// minute clamped to the thresholds (an anomaly moves it only as far as a borderline
    /// minute would, so a long drop, or a spike longer than the trailing average's span,
    /// stays one until it has lasted a while). The weekly buckets learn drops as they are (a
    /// quiet hour that recurs is the norm for that hour next week) and spikes clamped (a
    /// surge that recurs at that hour becomes its norm).
    fn learn(
        &mut self,
        minute: u64,
        observed: f64,
        (low, high): (f64, f64),
        warm: bool,
        expected: Option<f64>,
        cfg: &AlertConfig,
    ) {
        let ceiling = (high * cfg.spike_ratio).max(cfg.spike_min_clicks as f64);
        let (for_level, for_season) = if warm {
            let floor = (low * cfg.drop_ratio).min(ceiling);
            let level = expected.unwrap_or(observed.clamp(floor, ceiling));
            (level, observed.min(ceiling))
        } else {
            (observed, observed)
        };
        if observed > 0.0 {
            self.last_click = minute;
        }
        let x = for_level as f32;
        self.level = if self.minutes == 0 {
            x
        } else {
            self.level + cfg.alpha() * (x - self.level)
        };
        self.minutes = self.minutes.saturating_add(1);
        let h = hour_of_week(minute) as u8;
        if h != self.hour {
            // A new hour (or a gap): a partial hour teaches the weekly buckets nothing.
            self.hour = h;
            self.hour_minutes = 0;
            self.hour_sum = 0.0;
        }
        self.hour_minutes += 1;
        self.hour_sum += for_season as f32;
        if self.hour_minutes == 60 {
            let mean = self.hour_sum / 60.0;
            let i = usize::from(h);
            self.season[i] = if self.weeks[i] == 0 {
                mean
            } else {
                self.season[i] + cfg.week_weight as f32 * (mean - self.season[i])
            };
            self.weeks[i] = self.weeks[i].saturating_add(1);
            self.hour_minutes = 0;
            self.hour_sum = 0.0;
        }
    }
}

/// Every key's baseline on one worker, judged minute by minute.
#[derive(Default)]
pub struct Detector {
    cfg: Option<AlertConfig>,
    keys: HashMap<Scope, Box<Baseline>>,
    /// The last minute judged.
    last: Option<u64>,
}

impl Detector {
    pub fn new(cfg: AlertConfig) -> Self {
        Detector {
            cfg: Some(cfg),
            keys: HashMap::new(),
            last: None,
        }
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Heap and inline bytes per tracked key: the boxed baseline and its table slot.
    pub fn bytes_per_key() -> usize {
        std::mem::size_of::<Baseline>() + std::mem::size_of::<(Scope, Box<Baseline>)>() + 1 // hashbrown's control byte
    }

    /// Judges final minute `minute` (after every earlier one with traffic anywhere): the
    /// minutes since the last one judged count as zero for every key, then `data` (this
    /// worker's keys with clicks in `minute`) is judged with the rest of the keys at zero.
    pub fn minute(&mut self, minute: u64, data: HashMap<Scope, Minute>, out: &mut Vec<Alert>) {
        let cfg = self.cfg.expect("a configured detector");
        if let Some(last) = self.last {
            if minute <= last {
                return;
            }
            let gap = (minute - last) / MINUTE_MS - 1;
            if gap > cfg.forget_after_minutes {
                // Silence longer than any key is remembered: start afresh.
                self.keys.clear();
            } else {
                for k in 1..=gap {
                    let m = last + k * MINUTE_MS;
                    for (scope, b) in self.keys.iter_mut() {
                        b.observe(*scope, m, Minute::default(), &cfg, out);
                    }
                }
            }
        }
        for (scope, b) in self.keys.iter_mut() {
            let m = data.get(scope).copied().unwrap_or_default();
            b.observe(*scope, minute, m, &cfg, out);
        }
        for (scope, m) in data {
            self.keys.entry(scope).or_insert_with(|| {
                let mut b = Box::new(Baseline::new(minute));
                b.observe(scope, minute, m, &cfg, out);
                b
            });
        }
        self.last = Some(minute);
        if minute.is_multiple_of(HOUR_MS) {
            let horizon = cfg.forget_after_minutes * MINUTE_MS;
            self.keys.retain(|_, b| b.last_click + horizon >= minute);
        }
    }
}

/// The keys a row counts under.
fn scopes(row: &Row, by_country: bool) -> impl Iterator<Item = Scope> {
    let d = row.1;
    [
        Some(Scope::Campaign(d.campaign_id)),
        Some(Scope::Publisher(d.publisher_id)),
        by_country.then_some(Scope::CampaignCountry(d.campaign_id, d.country)),
    ]
    .into_iter()
    .flatten()
}

/// What the first stage sends on: a key's share of a final minute, or that the minute had
/// traffic on this worker (broadcast, so every worker judges its quiet keys too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Part {
    /// A key's share of a minute; `true` for history (rows a restore put back, final
    /// before its checkpoint), which seeds the baselines but raises nothing: its alerts were
    /// raised before the checkpoint.
    Key(Scope, u64, Minute, bool),
    Seen(u64, bool),
}

/// Alerts from minute rows (`rows`, as the aggregation produces them: updates until the
/// window is final at its end + `lateness_ms`, then only its retention retraction). Each
/// minute is judged once final, at that time, so the alerts of a minute go out at its end
/// plus the lateness, on the worker its key hashes to.
pub fn alerts<'s>(
    rows: VecCollection<'s, u64, Row, Measures>,
    cfg: &AlertConfig,
    lateness_ms: u64,
) -> Stream<'s, u64, Vec<Alert>> {
    let cfg = *cfg;
    let final_at = move |minute: u64| minute + MINUTE_MS + lateness_ms;
    // Stage 1, local: sum each key's updates per minute until the minute is final, then send
    // the sums (a worker's share) at that minute's final time.
    let parts = rows
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<Part>>, _, _, _>(
            Pipeline,
            "AlertMinutes",
            move |cap, _info| {
                let mut cap: Option<Capability<u64>> = Some(cap);
                let mut open: BTreeMap<u64, HashMap<Scope, Minute>> = BTreeMap::new();
                // Restored final minutes by the time they came back at, then minute.
                type Minutes = BTreeMap<u64, HashMap<Scope, Minute>>;
                let mut history: BTreeMap<u64, Minutes> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|_, data| {
                        for (row, t, m) in data.drain(..) {
                            let minute = Minute::of(&m);
                            // At or after the final time: a retention retraction (negative),
                            // never news, or a restored row (positive, at the checkpoint's
                            // frontier − 1), history.
                            if t >= final_at(row.0) {
                                if minute.clicks > 0 {
                                    let keys = history.entry(t).or_default().entry(row.0);
                                    let keys = keys.or_default();
                                    for s in scopes(&row, cfg.by_country) {
                                        keys.entry(s).or_default().add(minute);
                                    }
                                }
                                continue;
                            }
                            let keys = open.entry(row.0).or_default();
                            for s in scopes(&row, cfg.by_country) {
                                keys.entry(s).or_default().add(minute);
                            }
                        }
                    });
                    let limit = frontier.frontier().first().copied();
                    let Some(c) = cap.as_mut() else { return };
                    while let Some(entry) = history.first_entry() {
                        if limit.is_some_and(|l| l <= *entry.key()) {
                            break;
                        }
                        let (t, minutes) = entry.remove_entry();
                        let at = c.delayed(&t.max(*c.time()));
                        let mut session = output.session(&at);
                        for (minute, keys) in minutes {
                            for (scope, m) in keys {
                                session.give(Part::Key(scope, minute, m, true));
                            }
                            session.give(Part::Seen(minute, true));
                        }
                    }
                    while let Some(entry) = open.first_entry() {
                        let at = final_at(*entry.key());
                        if limit.is_some_and(|l| l <= at) {
                            break;
                        }
                        let (minute, keys) = entry.remove_entry();
                        let at = c.delayed(&at.max(*c.time()));
                        let mut session = output.session(&at);
                        let mut seen = false;
                        for (scope, m) in keys {
                            if !m.is_zero() {
                                seen = true;
                                session.give(Part::Key(scope, minute, m, false));
                            }
                        }
                        if seen {
                            session.give(Part::Seen(minute, false));
                        }
                    }
                    let next_open = open.keys().next().map(|m| final_at(*m));
                    let next_history = history.keys().next().copied();
                    let next = next_open.into_iter().chain(next_history).min();
                    match (limit, next) {
                        (None, None) => cap = None,
                        (l, n) => {
                            let to = l.unwrap_or(u64::MAX).min(n.unwrap_or(u64::MAX));
                            if to > *c.time() {
                                c.downgrade(&to);
                            }
                        }
                    }
                }
            },
        );
    let seen = parts
        .clone()
        .flat_map(|p| match p {
            Part::Seen(m, history) => Some((m, history)),
            Part::Key(..) => None,
        })
        .broadcast();
    let keys = parts.flat_map(|p| match p {
        Part::Key(s, m, v, history) => Some((s, m, v, history)),
        Part::Seen(..) => None,
    });
    // Stage 2, by key: whole minutes in order, every known key judged in each.
    keys.binary_frontier::<_, CapacityContainerBuilder<Vec<Alert>>, _, _, _, _>(
        seen,
        Exchange::new(|(s, _, _, _): &(Scope, u64, Minute, bool)| s.hashed()),
        Pipeline,
        "Anomalies",
        move |cap, _info| {
            let mut cap: Option<Capability<u64>> = Some(cap);
            let mut detector = Detector::new(cfg);
            let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
            let mut out = Vec::new();
            move |(keys, keys_frontier), (seen, seen_frontier), output| {
                keys.for_each(|cap, data| {
                    let at = *cap.least().expect("a totally ordered time");
                    for (s, m, v, history) in data.drain(..) {
                        let p = pending.entry(m).or_default();
                        p.arrived(at, history);
                        p.keys.entry(s).or_default().add(v);
                    }
                });
                seen.for_each(|cap, data| {
                    let at = *cap.least().expect("a totally ordered time");
                    for (m, history) in data.drain(..) {
                        let p = pending.entry(m).or_default();
                        p.arrived(at, history);
                        p.seen = true;
                    }
                });
                let limit = [keys_frontier.frontier(), seen_frontier.frontier()]
                    .iter()
                    .filter_map(|f| f.first().copied())
                    .min();
                let Some(c) = cap.as_mut() else { return };
                // A minute is whole once the frontier passes its final time and the time its
                // parts came at (later for history).
                let ready = |m: u64, p: &Pending| final_at(m).max(p.at);
                while let Some(entry) = pending.first_entry() {
                    let at = ready(*entry.key(), entry.get());
                    if limit.is_some_and(|l| l <= at) {
                        break;
                    }
                    let (minute, p) = entry.remove_entry();
                    debug_assert!(p.seen || p.keys.is_empty(), "a key's minute unannounced");
                    detector.minute(minute, p.keys, &mut out);
                    if p.history {
                        out.clear();
                    }
                    if !out.is_empty() {
                        out.sort_by_key(|a| (a.minute, a.kind, a.scope));
                        let at = c.delayed(&at.max(*c.time()));
                        output.session(&at).give_iterator(out.drain(..));
                    }
                }
                let next = pending.iter().next().map(|(m, p)| ready(*m, p));
                match (limit, next) {
                    (None, None) => cap = None,
                    (l, n) => {
                        let to = l.unwrap_or(u64::MAX).min(n.unwrap_or(u64::MAX));
                        if to > *c.time() {
                            c.downgrade(&to);
                        }
                    }
                }
            }
        },
    )
}

/// A minute waiting to be judged whole.
#[derive(Default)]
struct Pending {
    /// Some worker had clicks in it.
    seen: bool,
    /// Restored history: judged, its alerts dropped.
    history: bool,
    /// The latest time a part of it came at.
    at: u64,
    keys: HashMap<Scope, Minute>,
}

impl Pending {
    fn arrived(&mut self, at: u64, history: bool) {
        self.at = self.at.max(at);
        self.history |= history;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_776_643_200_000; // 2026-04-20T00:00:00Z, a Monday

    /// A small deterministic generator: Poisson counts with a given mean (Knuth's method in
    /// pieces, exact for any mean).
    struct Rng(u64);

    impl Rng {
        fn next_f64(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }

        fn poisson(&mut self, mut mean: f64) -> i64 {
            let mut n = 0;
            while mean > 0.0 {
                let step = mean.min(30.0);
                mean -= step;
                let limit = (-step).exp();
                let mut p = self.next_f64();
                while p > limit {
                    n += 1;
                    p *= self.next_f64();
                }
            }
            n
        }
    }

    /// Mean clicks a minute with a daily cycle: the trough a third of the peak, at 04:00 UTC.
    fn daily(peak: f64, minute: u64) -> f64 {
        let day = (minute % crate::time::DAY_MS) as f64 / crate::time::DAY_MS as f64;
        let phase = (day - 16.0 / 24.0) * std::f64::consts::TAU;
        peak * (2.0 + phase.cos()) / 3.0
    }

    fn run(
        keys: &[(Scope, f64)],
        minutes: u64,
        cfg: &AlertConfig,
        shape: impl Fn(Scope, u64, f64) -> f64,
    ) -> Vec<Alert> {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut d = Detector::new(*cfg);
        let mut out = Vec::new();
        for i in 0..minutes {
            let minute = T0 + i * MINUTE_MS;
            let mut data = HashMap::new();
            for &(scope, peak) in keys {
                let mean = shape(scope, minute, daily(peak, minute));
                let clicks = rng.poisson(mean);
                if clicks > 0 {
                    let invalid = rng.poisson(mean * 0.02).min(clicks);
                    data.insert(scope, Minute { clicks, invalid });
                }
            }
            d.minute(minute, data, &mut out);
        }
        out
    }

    fn keys() -> Vec<(Scope, f64)> {
        // Volumes from 0.2 to 2,000 clicks a minute.
        [0.2, 1.0, 3.0, 10.0, 40.0, 150.0, 600.0, 2_000.0]
            .iter()
            .enumerate()
            .flat_map(|(i, &peak)| {
                let c = Sym(i as u64);
                [
                    (Scope::Campaign(c), peak),
                    (Scope::Publisher(Sym(100 + i as u64)), peak),
                    (Scope::CampaignCountry(c, Sym(7)), peak / 4.0),
                ]
            })
            .collect()
    }

    #[test]
    fn nothing_fires_on_days_of_ordinary_traffic_with_a_daily_cycle() {
        // Eight days: the first day on the level alone, then with the weekly buckets of the
        // days before (the same weekday's buckets fill after a week).
        let alerts = run(&keys(), 8 * 24 * 60, &AlertConfig::default(), |_, _, m| m);
        assert_eq!(alerts, Vec::new());
    }

    #[test]
    fn a_spike_and_a_drop_fire_in_their_first_minute_and_once_per_episode() {
        let start = T0 + 6 * HOUR_MS;
        let spiked = Scope::CampaignCountry(Sym(3), Sym(7));
        let dropped = Scope::Publisher(Sym(106));
        let alerts = run(
            &keys(),
            8 * 60,
            &AlertConfig::default(),
            |s, minute, mean| {
                let during = (start..start + 10 * MINUTE_MS).contains(&minute);
                match s {
                    _ if s == spiked && during => mean * 100.0,
                    _ if s == dropped && minute >= start => mean * 0.1,
                    _ => mean,
                }
            },
        );
        let spikes: Vec<_> = alerts.iter().filter(|a| a.kind == Kind::Spike).collect();
        let drops: Vec<_> = alerts.iter().filter(|a| a.kind == Kind::Drop).collect();
        assert_eq!(spikes.len(), 1, "{alerts:#?}");
        assert_eq!((spikes[0].scope, spikes[0].minute), (spiked, start));
        assert!(spikes[0].ratio > 20.0 && spikes[0].severity == Severity::Critical);
        assert_eq!(drops.len(), 1, "{alerts:#?}");
        assert_eq!((drops[0].scope, drops[0].minute), (dropped, start));
        assert!(drops[0].ratio < 0.2 && drops[0].severity == Severity::Critical);
        // The campaign as a whole spiked too (its country carries a quarter of it x100).
        let others: Vec<_> = alerts
            .iter()
            .filter(|a| a.scope != spiked && a.scope != dropped)
            .collect();
        assert!(
            others
                .iter()
                .all(|a| a.scope == Scope::Campaign(Sym(3)) && a.minute == start),
            "{others:#?}"
        );
    }

    /// A capped spike on a large key (10 minutes at 100x, 200 clicks a minute before and
    /// after) raises its spike and nothing else: the spike's minutes teach the recent level
    /// only what was expected, so when the spike ends the old level is not a drop. (Learning the
    /// spike's minutes clamped to 5x raised the level to about 3x, and the first ordinary
    /// minute after it was a critical drop.)
    #[test]
    fn the_end_of_a_spike_is_not_a_drop() {
        let scope = Scope::Campaign(Sym(1));
        let start = T0 + 3 * HOUR_MS;
        let spike = start..start + 10 * MINUTE_MS;
        let alerts = run(
            &[(scope, 200.0)],
            6 * 60,
            &AlertConfig::default(),
            |_, minute, _| {
                if spike.contains(&minute) {
                    20_000.0
                } else {
                    200.0
                }
            },
        );
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        assert_eq!((alerts[0].kind, alerts[0].minute), (Kind::Spike, start));
        // A spike lasting longer than the trailing average's span is a new level in the end:
        // its minutes teach the level again (clamped), and it raises no second spike.
        let long = start..start + 3 * HOUR_MS;
        let alerts = run(
            &[(scope, 200.0)],
            8 * 60,
            &AlertConfig::default(),
            |_, minute, _| {
                if long.contains(&minute) {
                    2_000.0
                } else {
                    200.0
                }
            },
        );
        let spikes = alerts.iter().filter(|a| a.kind == Kind::Spike).count();
        assert_eq!(spikes, 1, "{alerts:#?}");
    }

    #[test]
    fn the_same_hour_of_past_weeks_judges_a_quiet_weekday() {
        // Traffic only on weekdays 9 to 17: the Monday after two weeks, at 10:00, a drop to
        // a tenth fires, though the level just before (the quiet night) knows nothing of it.
        let scope = Scope::Campaign(Sym(1));
        let cfg = AlertConfig::default();
        let mut d = Detector::new(cfg);
        let mut out = Vec::new();
        let office = |minute: u64| {
            let hour = (minute / HOUR_MS) % 24;
            let weekday = hour_of_week(minute) < 5 * 24;
            weekday && (9..17).contains(&hour)
        };
        for i in 0..(14 * 24 * 60 + 10 * 60 + 5) {
            let minute = T0 + i * MINUTE_MS;
            let mut data = HashMap::new();
            let tenth = i >= 14 * 24 * 60 + 10 * 60;
            let clicks = match (office(minute), tenth) {
                (true, false) => 300,
                (true, true) => 30,
                (false, _) => 0,
            };
            data.insert(scope, Minute { clicks, invalid: 0 });
            d.minute(minute, data, &mut out);
        }
        // The first week knows only the level: each weekday's 09:00 is a spike and 17:00 a
        // drop. From the second week on, the weekly buckets know both: nothing fires but the
        // drop to a tenth.
        let week = T0 + 7 * 24 * HOUR_MS;
        let first: Vec<_> = out.iter().filter(|a| a.minute < week).collect();
        for (kind, hour) in [(Kind::Spike, 9), (Kind::Drop, 17)] {
            let at: Vec<_> = first
                .iter()
                .filter(|a| a.kind == kind)
                .map(|a| a.minute)
                .collect();
            let want: Vec<_> = (0..5).map(|d| T0 + (d * 24 + hour) * HOUR_MS).collect();
            assert_eq!(at, want, "{kind:?}: {first:#?}");
        }
        let later: Vec<_> = out.iter().filter(|a| a.minute >= week).collect();
        assert_eq!(later.len(), 1, "{later:#?}");
        let drop = later[0];
        assert_eq!(
            (drop.kind, drop.minute),
            (Kind::Drop, T0 + (14 * 24 + 10) * HOUR_MS)
        );
        assert!((280.0..=300.0).contains(&drop.baseline), "{drop:?}");
        assert_eq!(drop.severity, Severity::Critical);
    }

    #[test]
    fn an_invalid_share_over_the_threshold_fires_above_the_volume_floor() {
        let cfg = AlertConfig::default();
        let mut b = Baseline::new(T0);
        let mut out = Vec::new();
        let s = Scope::Publisher(Sym(1));
        b.observe(
            s,
            T0,
            Minute {
                clicks: 40,
                invalid: 39,
            },
            &cfg,
            &mut out,
        );
        assert!(out.is_empty(), "under invalid_min_clicks");
        b.observe(
            s,
            T0 + MINUTE_MS,
            Minute {
                clicks: 100,
                invalid: 35,
            },
            &cfg,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].kind, out[0].severity),
            (Kind::InvalidShare, Severity::Warning)
        );
        assert_eq!(out[0].observed, 0.35);
        b.observe(
            s,
            T0 + 2 * MINUTE_MS,
            Minute {
                clicks: 100,
                invalid: 90,
            },
            &cfg,
            &mut out,
        );
        assert_eq!(out.len(), 1, "the same episode");
    }

    #[test]
    fn settings_out_of_range_are_named() {
        let mut c = AlertConfig::default();
        assert_eq!(c.check(), Ok(()));
        c.drop_ratio = 1.5;
        assert!(c.check().unwrap_err().contains("drop_ratio"));
        c = AlertConfig {
            min_score: f64::NAN,
            ..AlertConfig::default()
        };
        assert!(c.check().unwrap_err().contains("min_score"));
    }

    /// Minute rows of 3 hours with a planted spike, each row's clicks arriving as several
    /// updates at times before its minute is final (some late, one a correction that takes
    /// clicks back), and retention retractions after: the dataflow's alerts on 1 and 2
    /// workers, batched two ways, and resumed from a checkpoint, equal the detector's over
    /// the rows' final sums.
    #[test]
    fn the_operator_alerts_as_the_detector_on_final_rows_whatever_the_shape() {
        use crate::click::Dims;
        use differential_dataflow::input::Input as _;
        use std::sync::{Arc, Mutex};
        use timely::dataflow::operators::Capture;
        use timely::dataflow::operators::capture::Event;

        const LATENESS: u64 = 5 * MINUTE_MS;
        let mut rng = Rng(7);
        let campaigns = [Sym(1), Sym(2), Sym(3)];
        let countries = [Sym(10), Sym(11)];
        let publishers = [Sym(20), Sym(21), Sym(22), Sym(23)];
        let spike_at = T0 + 90 * MINUTE_MS;
        // (row, measures) finals, and the updates that make them: (row, time, delta).
        let mut finals: Vec<(Row, Minute)> = Vec::new();
        let mut updates: Vec<(Row, u64, Measures)> = Vec::new();
        for i in 0..180u64 {
            let minute = T0 + i * MINUTE_MS;
            for (k, &c) in campaigns.iter().enumerate() {
                for (j, &country) in countries.iter().enumerate() {
                    let publisher = publishers[(k + j) % publishers.len()];
                    let dims = Dims {
                        campaign_id: c,
                        country,
                        publisher_id: publisher,
                        ..Dims::default()
                    };
                    let mut mean = 30.0 * (k + 1) as f64;
                    if c == Sym(2)
                        && country == Sym(11)
                        && (spike_at..spike_at + 5 * MINUTE_MS).contains(&minute)
                    {
                        mean *= 100.0;
                    }
                    let clicks = rng.poisson(mean);
                    let invalid = rng.poisson(mean * 0.01);
                    let row = (minute, dims);
                    finals.push((
                        row,
                        Minute {
                            clicks: clicks + invalid,
                            invalid,
                        },
                    ));
                    let total = Measures::new(clicks, 0, [invalid, 0, 0, 0, 0, 0, 0]);
                    // Most at once, a late part, and a correction (+1 then -1).
                    let late = Measures::billable(clicks / 4);
                    let spread = rng.next_f64();
                    let t1 = minute + (spread * 60_000.0) as u64;
                    let t2 = minute + 60_000 + (spread * (LATENESS - 1) as f64) as u64;
                    updates.push((
                        row,
                        t1,
                        total.clone() + late.clone().times(-1) + Measures::billable(1),
                    ));
                    updates.push((row, t2, late + Measures::billable(-1)));
                    // Retention: long after the minute is final.
                    updates.push((row, minute + 48 * HOUR_MS, -total));
                }
            }
        }
        // The detector over the final rows, by key and minute.
        let mut want = Vec::new();
        {
            let mut d = Detector::new(AlertConfig::default());
            let mut by_minute: BTreeMap<u64, HashMap<Scope, Minute>> = BTreeMap::new();
            for (row, m) in &finals {
                for s in scopes(row, true) {
                    by_minute
                        .entry(row.0)
                        .or_default()
                        .entry(s)
                        .or_default()
                        .add(*m);
                }
            }
            for (minute, data) in by_minute {
                d.minute(minute, data, &mut want);
            }
        }
        want.sort_by_key(|a| (a.minute, a.kind, a.scope));
        assert!(
            want.iter().any(
                |a| a.kind == Kind::Spike && a.scope == Scope::CampaignCountry(Sym(2), Sym(11))
            ),
            "{want:#?}"
        );
        updates.sort_by_key(|u| u.1);
        // Resumed from a checkpoint at `f`: each row's updates before `f` come back as one
        // at f − 1 (final minutes among them), the rest as they were. The alerts of minutes
        // final before `f` were raised before the checkpoint; the others must be raised as
        // by the run without a restart, the spike's among them (so the baselines were
        // seeded from the restored rows).
        let f = T0 + 93 * MINUTE_MS + 1_234;
        let mut sums: BTreeMap<Row, Measures> = BTreeMap::new();
        let mut resumed: Vec<(Row, u64, Measures)> = Vec::new();
        for (row, t, m) in &updates {
            if *t < f {
                *sums.entry(*row).or_default() += m;
            } else {
                resumed.push((*row, *t, m.clone()));
            }
        }
        let mut restored: Vec<_> = sums.into_iter().map(|(row, m)| (row, f - 1, m)).collect();
        restored.append(&mut resumed);
        let after: Vec<Alert> = want
            .iter()
            .filter(|a| a.minute + MINUTE_MS + LATENESS >= f)
            .copied()
            .collect();
        assert!(after.iter().any(|a| a.kind == Kind::Spike), "{after:#?}");
        for (workers, step_ms, updates, want) in [
            (1, 100, &updates, &want),
            (2, 100, &updates, &want),
            (2, 7 * MINUTE_MS, &updates, &want),
            (2, 100, &restored, &after),
        ] {
            let start = updates[0].1;
            let updates = Arc::new(updates.clone());
            let got = Arc::new(Mutex::new(Vec::new()));
            let sink = got.clone();
            timely::execute(timely::Config::process(workers), move |worker| {
                let (mut input, captured) = worker.dataflow::<u64, _, _>(|scope| {
                    let (input, rows) = scope.new_collection::<Row, Measures>();
                    let alerts = alerts(rows, &AlertConfig::default(), LATENESS);
                    (input, alerts.capture())
                });
                let me = worker.index();
                let peers = worker.peers();
                let mut next = start;
                input.advance_to(next);
                for (n, (row, t, m)) in updates.iter().enumerate() {
                    while *t >= next + step_ms {
                        next += step_ms;
                        input.advance_to(next);
                    }
                    if n % peers == me {
                        input.update_at(*row, *t, m.clone());
                    }
                }
                input.close();
                while worker.step() {}
                let mut out: Vec<Alert> = captured
                    .try_iter()
                    .flat_map(|e| match e {
                        Event::Messages(_, v) => v,
                        Event::Progress(_) => Vec::new(),
                    })
                    .collect();
                sink.lock().unwrap().append(&mut out);
            })
            .unwrap();
            let mut got = std::mem::take(&mut *got.lock().unwrap());
            got.sort_by_key(|a| (a.minute, a.kind, a.scope));
            let restart = if start > T0 { ", resumed" } else { "" };
            assert_eq!(
                &got, want,
                "{workers} workers, steps of {step_ms} ms{restart}"
            );
        }
    }

    #[test]
    fn a_key_costs_under_a_kilobyte() {
        let bytes = Detector::bytes_per_key();
        assert!(bytes < 1024, "{bytes}");
    }
}
