//! adclick's dataflows: small functions over timely streams and differential collections,
//! free of I/O so that tests drive them with plain data. Sources' reading, sinks and servers
//! live in the `adclick` crate.
//!
//! ```text
//! source events ─┬─ on time ─▶ dedup ─▶ minute rows ─┬─▶ hour rows, day rows (rollup)
//!                │              └─▶ reach sketches  └─▶ top-N per window length, country
//!                ├─ late ───▶ (late sink)
//!                └─ rejected ▶ (dead-letter sink)
//! ```

pub mod anomaly;
pub mod click;
pub mod dedup;
pub mod flood;
pub mod invalid;
pub mod measures;
pub mod names;
pub mod pending;
pub mod query;
pub mod reach;
pub mod report;
pub mod retire;
pub mod rollup;
pub mod sketch;
pub mod source;
#[cfg(test)]
mod testing;
pub mod time;
pub mod topn;
pub mod touched;
pub mod watermark;

use std::collections::BTreeMap;

use differential_dataflow::AsCollection;
use differential_dataflow::VecCollection;
use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::trace::TraceReader;
use differential_dataflow::trace::implementations::ValSpine;
use timely::dataflow::Stream;
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::vec::{Map, Partition};
use timely::progress::frontier::AntichainRef;

use click::{Click, Measures, RawClick, Row, Sym};
use dedup::{DedupConfig, Deduped};
use flood::InvalidConfig;
use names::Name;
use pending::Pending;
use reach::{Group, ReachConfig};
use rollup::{Retention, rollup};
use sketch::UserSketch;
use source::{Gap, Rejected, SourceEvent};
use time::{DAY_MS, HOUR_MS, MINUTE_MS};
use topn::{RankKey, Ranking, TopNConfig, top_n, top_n_by_advertiser};
use touched::TouchedHandle;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregateConfig {
    /// Event time over which duplicates of an impression are recognised (default 24 h).
    pub dedup_horizon_ms: u64,
    /// Must equal the sources' allowed lateness: it says when rankings are final.
    pub allowed_lateness_ms: u64,
    pub retention: Retention,
    pub top: TopNConfig,
    pub invalid: InvalidConfig,
    pub reach: ReachConfig,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        Self {
            dedup_horizon_ms: 24 * HOUR_MS,
            allowed_lateness_ms: watermark::TimeConfig::default().allowed_lateness_ms,
            retention: Retention::default(),
            top: TopNConfig::default(),
            invalid: InvalidConfig::default(),
            reach: ReachConfig::default(),
        }
    }
}

impl AggregateConfig {
    /// The dedup's share of the settings.
    pub fn dedup(&self) -> DedupConfig {
        DedupConfig {
            horizon_ms: self.dedup_horizon_ms,
            allowed_lateness_ms: self.allowed_lateness_ms,
            // Reach rebuilds the minutes not final at a checkpoint from these clicks too.
            lookback_ms: if self.reach.enabled {
                self.invalid.longest_window_ms().max(MINUTE_MS)
            } else {
                self.invalid.longest_window_ms()
            },
        }
    }
}

/// What the aggregation produces; sinks and the query server take it from here.
pub struct Aggregates<'s> {
    /// Rows by granularity, as they change; never retired here: retention applies where the
    /// rows are kept ([`Traces::arrange`]), and the sinks need no retractions.
    pub minute: VecCollection<'s, u64, Row, Measures>,
    pub hour: VecCollection<'s, u64, Row, Measures>,
    pub day: VecCollection<'s, u64, Row, Measures>,
    pub retention: Retention,
    /// Distinct users per group, hour and day, from final minutes (empty with reach off).
    pub reach: VecCollection<'s, u64, (Group, UserSketch), isize>,
    pub top: VecCollection<'s, u64, (RankKey, Ranking), isize>,
    /// Each advertiser's own rankings, kept only while queries may read them.
    pub top_by_advertiser: VecCollection<'s, u64, (RankKey, Ranking), isize>,
    pub late: Stream<'s, u64, Vec<RawClick>>,
    pub rejected: Stream<'s, u64, Vec<Rejected>>,
    /// Dimension texts, each announced by a source at the time of the first click it counted
    /// with it (not broadcast: each consumer routes them where it resolves texts).
    pub names: Stream<'s, u64, Vec<Name>>,
    /// Records the sources read, in batch counts: the `received` tally.
    pub received: Stream<'s, u64, Vec<u64>>,
    /// Offset ranges that vanished before a source read them: the `lost` tally.
    pub lost: Stream<'s, u64, Vec<Gap>>,
}

/// What a checkpoint restores into the aggregation, just before its frontier (at `F − 1`):
/// this worker's share of the rows of each granularity as they stood, and of the texts.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestoredRows {
    pub frontier: u64,
    pub minute: Vec<(Row, Measures)>,
    pub hour: Vec<(Row, Measures)>,
    pub day: Vec<(Row, Measures)>,
    pub names: Vec<Name>,
    /// Reach sketches (absent from checkpoints written before reach).
    #[serde(default)]
    pub reach: Vec<(Group, UserSketch)>,
}

/// Where the aggregation starts from, and how it saves checkpoints.
pub struct Resume<'s> {
    /// The dedup state, which a restore may still be building: the dedup waits for it, and
    /// the restored rows are served meanwhile.
    pub dedup: Pending<dedup::DedupState>,
    /// The recent counted clicks the invalid-traffic rules and reach rebuild their state from
    /// ([`restored_clicks`] of the dedup state), built with it.
    pub recent: Pending<Vec<Click>>,
    pub rows: Option<RestoredRows>,
    pub checkpoints: Option<dedup::DedupCheckpoints<'s>>,
}

impl<'s> Resume<'s> {
    /// A start from `dedup` as it is (empty, or restored before the dataflow is built).
    pub fn now(
        cfg: &AggregateConfig,
        dedup: dedup::DedupState,
        rows: Option<RestoredRows>,
        checkpoints: Option<dedup::DedupCheckpoints<'s>>,
    ) -> Self {
        let frontier = rows.as_ref().map_or(0, |r| r.frontier);
        Self {
            recent: Pending::ready(restored_clicks(cfg, frontier, &dedup)),
            dedup: Pending::ready(dedup),
            rows,
            checkpoints,
        }
    }
}

/// The first minute reach rebuilds from restored clicks, for a checkpoint at `frontier`
/// (`u64::MAX` with reach off: none).
fn reach_from(cfg: &AggregateConfig, frontier: u64) -> u64 {
    if cfg.reach.enabled {
        time::open_from(
            MINUTE_MS,
            frontier.saturating_sub(1),
            cfg.allowed_lateness_ms,
        )
    } else {
        u64::MAX
    }
}

/// Of a restored dedup state's recent counted clicks, those the invalid-traffic rules and
/// reach rebuild their state from after a checkpoint at `frontier`. Those before every rule's
/// open windows and reach's would only be dropped by the restore (about half of the longest
/// window, on average): they stay out.
pub fn restored_clicks(
    cfg: &AggregateConfig,
    frontier: u64,
    dedup: &dedup::DedupState,
) -> Vec<Click> {
    let f = frontier.saturating_sub(1);
    let needed_from = cfg
        .invalid
        .open_from(f, cfg.allowed_lateness_ms)
        .min(reach_from(cfg, frontier));
    dedup
        .recent_counted()
        .filter(|c| c.event_time >= needed_from)
        .collect()
}

/// `data` as a stream at time `at`.
fn at_time<'s, D: Clone + 'static>(
    scope: timely::dataflow::Scope<'s, u64>,
    at: u64,
    data: Vec<D>,
) -> Stream<'s, u64, Vec<D>> {
    later_at_time(scope, at, Pending::ready(data))
}

/// `data` as a stream at time `at`, once it is built: the stream's frontier stays at `at`
/// until then.
fn later_at_time<'s, D: Clone + 'static>(
    scope: timely::dataflow::Scope<'s, u64>,
    at: u64,
    data: Pending<Vec<D>>,
) -> Stream<'s, u64, Vec<D>> {
    use timely::container::CapacityContainerBuilder;
    timely::dataflow::operators::generic::operator::source::<
        _,
        CapacityContainerBuilder<Vec<D>>,
        _,
        _,
    >(scope, "Restored", move |mut cap, info| {
        let wake = scope.worker().sync_activator_for(info.address.to_vec());
        cap.downgrade(&at);
        let mut cap = Some(cap);
        move |output| {
            if let Some(c) = &cap
                && let Some(mut d) = data.take(&wake)
            {
                // Handed on whole: a restore's clicks are millions, each copied otherwise.
                output.session(c).give_container(&mut d);
                cap = None;
            }
        }
    })
}

/// The whole aggregation, as a function of the sources' events.
pub fn aggregate<'s>(
    events: Stream<'s, u64, Vec<SourceEvent>>,
    cfg: &AggregateConfig,
) -> Aggregates<'s> {
    let resume = Resume::now(cfg, dedup::DedupState::new(cfg.dedup()), None, None);
    resumed_aggregate(events, cfg, resume)
}

/// [`aggregate`], resumed from a checkpoint's state and saving checkpoints.
pub fn resumed_aggregate<'s>(
    events: Stream<'s, u64, Vec<SourceEvent>>,
    cfg: &AggregateConfig,
    resume: Resume<'s>,
) -> Aggregates<'s> {
    let scope = events.scope();
    // One pass routes every event to its stream (no copies, unlike one filter per kind).
    let mut kinds = events
        .partition(6, |e| {
            let kind = match &e {
                SourceEvent::OnTime(_) => 0,
                SourceEvent::Late(_) => 1,
                SourceEvent::Rejected(_) => 2,
                SourceEvent::Name(_) => 3,
                SourceEvent::Read(_) => 4,
                SourceEvent::Lost(_) => 5,
            };
            (kind, e)
        })
        .into_iter();
    let mut next = || kinds.next().expect("six kinds");
    let on_time = next().flat_map(|e| match e {
        SourceEvent::OnTime(c) => Some(c),
        _ => None,
    });
    let late = next().flat_map(|e| match e {
        SourceEvent::Late(c) => Some(c),
        _ => None,
    });
    let rejected = next().flat_map(|e| match e {
        SourceEvent::Rejected(r) => Some(r),
        _ => None,
    });
    let mut names = next().flat_map(|e| match e {
        SourceEvent::Name(n) => Some(n),
        _ => None,
    });
    let received = next().flat_map(|e| match e {
        SourceEvent::Read(n) => Some(n),
        _ => None,
    });
    let lost = next().flat_map(|e| match e {
        SourceEvent::Lost(g) => Some(g),
        _ => None,
    });
    // Restored rows join just before the checkpoint's frontier, at F − 1, each granularity on
    // its own (hour and day rows outlive the minute rows they came from): once the frontier
    // reaches F, which the restored sources' capabilities already allow, queries reading at
    // F − 1 see the whole restored state without waiting for new input.
    let restored = resume.rows.unwrap_or_default();
    let at = restored.frontier;
    let f = at.saturating_sub(1);
    // The invalid-traffic rules' state is a function of the recent counted clicks, which the
    // restored dedup state holds: they go back in as the state of F − 1, but at F, where they
    // and the dedup state may come later (built off the worker threads) without holding back
    // the restored rows. Reach rebuilds the minutes not final at the checkpoint from them,
    // with the verdicts the rules' restore gave them (a verdict is a function of the clicks of
    // its window, all of which the dedup keeps for windows still open). The older minutes'
    // users are in the restored sketches; without reach, no restored click is wanted.
    let reach_from = reach_from(cfg, at);
    let open = move |c: &Click| c.event_time >= reach_from;
    let deduped = dedup::checkpointed_dedup(on_time, resume.dedup, resume.checkpoints);
    let counted = deduped.clone().flat_map(|d| match d {
        Deduped::Counted(c) => Some(c),
        Deduped::Duplicate(_) => None,
    });
    let duplicates = deduped.flat_map(|d| match d {
        Deduped::Duplicate(row) => Some(row),
        Deduped::Counted(_) => None,
    });
    let (judged_clicks, restored_judged) = flood::judged_clicks(
        counted,
        later_at_time(scope, at, resume.recent),
        &cfg.invalid,
        cfg.allowed_lateness_ms,
        open,
    );
    let judged = flood::rows_of(judged_clicks.clone());
    let reach = if cfg.reach.enabled {
        // Stamped F − 1, the time they stand for (they come at F): reach leaves out those of
        // minutes final before it, whose users the restored sketches hold.
        let open = restored_judged.map(move |c| (c, f, 1));
        reach::reach(
            judged_clicks.concat(open),
            at_time(scope, f, restored.reach),
            &cfg.reach,
            cfg.allowed_lateness_ms,
        )
    } else {
        timely::dataflow::operators::generic::operator::empty(scope).as_collection()
    };
    // Local pre-aggregation before rows are exchanged: a hot ad's clicks are summed on every
    // worker first, so no single worker receives them one by one.
    let deduped = duplicates
        .inner
        .map(|(row, t, d)| (row, t, Measures::duplicates(d)))
        .as_collection()
        .concat(judged)
        .consolidate_stream();
    let rows = |rows: Vec<(Row, Measures)>| {
        deduped.clone().concat(
            at_time(scope, f, rows)
                .map(move |(row, m)| (row, f, m))
                .as_collection(),
        )
    };
    names = names.concat(at_time(scope, f, restored.names));
    let minute_rows = rows(restored.minute);
    let r = cfg.retention;
    let minute = rollup(minute_rows.clone(), MINUTE_MS);
    let hour = rollup(rows(restored.hour), HOUR_MS);
    let day = rollup(rows(restored.day), DAY_MS);
    let top = top_n(
        minute_rows.clone(),
        &cfg.top,
        cfg.allowed_lateness_ms,
        r.minute_ms,
    );
    let top_by_advertiser = top_n_by_advertiser(minute_rows, &cfg.top, cfg.allowed_lateness_ms);
    Aggregates {
        minute,
        hour,
        day,
        retention: r,
        reach,
        top,
        top_by_advertiser,
        late,
        rejected,
        names,
        received,
        lost,
    }
}

/// Every batch of `trace` holding updates, for readers that filter times themselves (queries,
/// checkpoints). Unlike `spans_through`, it clones no batch descriptions: a query reads a
/// trace several times and each description is three antichains.
pub fn batches<Tr: TraceReader>(trace: &Tr) -> Vec<Tr::Batch> {
    let mut found = Vec::new();
    trace.map_spans(|s| found.extend(s.inner.clone()));
    found
}

/// The rows of `trace` as they stood at frontier `f`: each (key, value)'s updates before `f`,
/// summed. All of them, or those of the windows `only` (sorted starts), each found by a seek.
fn rows_before(trace: &mut AdTrace, f: u64, only: Option<&[u64]>) -> Vec<(Row, Measures)> {
    use differential_dataflow::trace::cursor::Navigable;
    use differential_dataflow::trace::cursor::{Cursor, cursor_list};
    let Some(windows) = only else {
        let (mut cursor, storage) = cursor_list(batches(trace));
        let mut rows = Vec::new();
        while cursor.key_valid(&storage) {
            while let Some(row) = cursor.get_val(&storage) {
                let mut m = Measures::default();
                cursor.map_times(&storage, |t, d| {
                    if *t < f {
                        m += d;
                    }
                });
                if m != Measures::default() {
                    rows.push((*row, m));
                }
                cursor.step_val(&storage);
            }
            cursor.step_key(&storage);
        }
        return rows;
    };
    // Batch by batch (a cursor list seeks a value in every batch, even those past the key),
    // each window found by a seek to (its start, the least dimensions).
    let mut sums: BTreeMap<Row, Measures> = BTreeMap::new();
    for batch in batches(trace) {
        let mut cursor = batch.cursor();
        while cursor.key_valid(&batch) {
            for &w in windows {
                cursor.seek_val(&batch, &(w, click::Dims::default()));
                while let Some(row) = cursor.get_val(&batch).filter(|r| r.0 == w) {
                    let m = sums.entry(*row).or_default();
                    cursor.map_times(&batch, |t, d| {
                        if *t < f {
                            *m += d;
                        }
                    });
                    cursor.step_val(&batch);
                }
            }
            cursor.step_key(&batch);
        }
    }
    sums.into_iter()
        .filter(|(_, m)| *m != Measures::default())
        .collect()
}

/// The sketches of `trace` as they stood at frontier `f`: the values with a positive count over
/// the updates before `f` (one per group: a change retracts the old value). All of them, or
/// those of the windows `only` ((length, start), sorted).
fn reach_before(
    trace: &mut ReachTrace,
    f: u64,
    only: Option<&[(u64, u64)]>,
) -> Vec<(Group, UserSketch)> {
    use differential_dataflow::trace::cursor::{Cursor, cursor_list};
    let (mut cursor, storage) = cursor_list(batches(trace));
    let mut out = Vec::new();
    while cursor.key_valid(&storage) {
        while let Some(v) = cursor.get_val(&storage) {
            let window = (v.0.len_ms, v.0.start);
            if only.is_some_and(|w| w.binary_search(&window).is_err()) {
                cursor.step_val(&storage);
                continue;
            }
            let mut n = 0isize;
            cursor.map_times(&storage, |t, d| {
                if *t < f {
                    n += *d;
                }
            });
            if n > 0 {
                out.push(v.clone());
            }
            cursor.step_val(&storage);
        }
        cursor.step_key(&storage);
    }
    out
}

/// Rows by ad: (ad, (window start, dimensions)) with their measures, what queries read. Keyed
/// by ad so that one ad's count is a seek, not a scan.
pub type AdTrace = TraceAgent<ValSpine<Sym, Row, u64, Measures>>;
/// Reach sketches by (what they group by, the group's seek dimension), what queries read.
pub type ReachTrace = TraceAgent<ValSpine<(reach::GroupBy, Sym), (Group, UserSketch), u64, isize>>;
/// Rankings by (window length, window end, scope): global and advertisers' in one arrangement.
pub type RankTrace = TraceAgent<ValSpine<RankKey, Ranking, u64, isize>>;

/// The arrangements a worker keeps for its share of the rows and rankings.
pub struct Traces {
    pub minute: AdTrace,
    pub hour: AdTrace,
    pub day: AdTrace,
    pub reach: ReachTrace,
    pub top: RankTrace,
    /// When each window of the rows and sketches last changed (recorded once asked to).
    touched: TouchedWindows,
}

struct TouchedWindows {
    minute: TouchedHandle<u64>,
    hour: TouchedHandle<u64>,
    day: TouchedHandle<u64>,
    reach: TouchedHandle<(u64, u64)>,
}

/// The windows of each granularity that changed since a checkpoint, sorted (window starts;
/// (length, start) for sketches): all that an incremental checkpoint's link reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Windows {
    pub minute: Vec<u64>,
    pub hour: Vec<u64>,
    pub day: Vec<u64>,
    pub reach: Vec<(u64, u64)>,
}

impl Traces {
    /// Arranges the aggregates (each worker holds the ads that hash to it).
    pub fn arrange(a: &Aggregates<'_>) -> Self {
        let r = a.retention;
        let by_ad = |rows: &VecCollection<'_, u64, Row, Measures>, kept_ms: u64, name: &str| {
            let (arranged, touched) = retire::arrange_rows(rows.clone(), kept_ms, name);
            (arranged.trace, touched)
        };
        let (minute, minute_touched) = by_ad(&a.minute, MINUTE_MS + r.minute_ms, "MinuteRowsByAd");
        let (hour, hour_touched) = by_ad(&a.hour, HOUR_MS + r.hour_ms, "HourRowsByAd");
        let (day, day_touched) = by_ad(&a.day, DAY_MS + r.day_ms, "DayRowsByAd");
        let (reach, reach_touched) = reach::arrange(a.reach.clone(), r);
        Self {
            minute,
            hour,
            day,
            reach,
            touched: TouchedWindows {
                minute: minute_touched,
                hour: hour_touched,
                day: day_touched,
                reach: reach_touched,
            },
            top: a
                .top
                .clone()
                .concat(a.top_by_advertiser.clone())
                .arrange_by_key_named("Rankings")
                .trace,
        }
    }

    /// Handles for the query dataflow. Each holds logical compaction back on its own (queries
    /// tell apart the times up to their read time), and none holds physical compaction: a
    /// query reads every batch and filters their times itself, so it never needs batches kept
    /// apart. A handle that kept the physical frontier where it was cloned would stop every
    /// merge: each move of the frontier would leave one more batch for every query to read,
    /// and retired rows would never meet their retractions and go.
    pub fn for_queries(&self) -> query::QueryTraces {
        let mut q = query::QueryTraces {
            minute: self.minute.clone(),
            hour: self.hour.clone(),
            day: self.day.clone(),
            top: self.top.clone(),
            reach: self.reach.clone(),
        };
        let unbounded = timely::progress::Antichain::new();
        for t in [&mut q.minute, &mut q.hour, &mut q.day] {
            t.set_physical_compaction(unbounded.borrow());
        }
        q.top.set_physical_compaction(unbounded.borrow());
        q.reach.set_physical_compaction(unbounded.borrow());
        q
    }

    /// Records from now on when each window changes, for [`Traces::changed_since`]: called
    /// before the dataflow runs (incremental checkpoints).
    pub fn record_changes(&self) {
        let t = &self.touched;
        t.minute.borrow_mut().record();
        t.hour.borrow_mut().record();
        t.day.borrow_mut().record();
        t.reach.borrow_mut().record();
    }

    /// The windows with an update at or after `since` (recorded through at least the frontier
    /// of [`Traces::sealed_through`]); those changed only before it are forgotten, so `since`
    /// must not go back.
    pub fn changed_since(&self, since: u64) -> Windows {
        let t = &self.touched;
        Windows {
            minute: t.minute.borrow_mut().since(since),
            hour: t.hour.borrow_mut().since(since),
            day: t.day.borrow_mut().since(since),
            reach: t.reach.borrow_mut().since(since),
        }
    }

    /// Whether every update before `f` is in all four arrangements (their batches sealed up
    /// to `f`), so that [`Traces::rows_before`] sees all of them, and recorded as a change of
    /// its window.
    pub fn sealed_through(&mut self, f: u64) -> bool {
        let t = &self.touched;
        let recorded = t.minute.borrow().complete_through(f)
            && t.hour.borrow().complete_through(f)
            && t.day.borrow().complete_through(f)
            && t.reach.borrow().complete_through(f);
        if !recorded {
            return false;
        }
        let mut upper = timely::progress::Antichain::new();
        let mut sealed = |t: &mut dyn FnMut(&mut timely::progress::Antichain<u64>)| {
            t(&mut upper);
            upper.iter().all(|u| *u >= f)
        };
        sealed(&mut |u| self.minute.read_upper(u))
            && sealed(&mut |u| self.hour.read_upper(u))
            && sealed(&mut |u| self.day.read_upper(u))
            && sealed(&mut |u| self.reach.read_upper(u))
    }

    /// This worker's rows of each granularity as they stood at frontier `f`: the updates at
    /// times before `f`, summed; all of them, or those of the windows `only`. The caller keeps
    /// logical compaction at or below `f − 1` until it has read them, so those times are
    /// still told apart from later ones.
    pub fn rows_before(&mut self, f: u64, only: Option<&Windows>) -> RestoredRows {
        RestoredRows {
            frontier: f,
            minute: rows_before(&mut self.minute, f, only.map(|w| &w.minute[..])),
            hour: rows_before(&mut self.hour, f, only.map(|w| &w.hour[..])),
            day: rows_before(&mut self.day, f, only.map(|w| &w.day[..])),
            names: Vec::new(),
            reach: reach_before(&mut self.reach, f, only.map(|w| &w.reach[..])),
        }
    }

    /// Lets the arrangements forget history before `frontier`: queries read at the frontier,
    /// and retired rows disappear once their retraction is compacted with their insertion.
    pub fn compact_to(&mut self, frontier: AntichainRef<'_, u64>) {
        for t in [&mut self.minute, &mut self.hour, &mut self.day] {
            t.set_logical_compaction(frontier);
            t.set_physical_compaction(frontier);
        }
        self.top.set_logical_compaction(frontier);
        self.top.set_physical_compaction(frontier);
        self.reach.set_logical_compaction(frontier);
        self.reach.set_physical_compaction(frontier);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::input::Input as _;
    use timely::dataflow::operators::Probe;
    use timely::dataflow::operators::generic::operator::empty;

    /// Aggregates of `rows` only (as minute, hour and day rows alike) and `top` (global and
    /// advertisers' rankings alike), nothing else.
    fn rows_and_ranks<'s>(
        rows: VecCollection<'s, u64, Row, Measures>,
        top: VecCollection<'s, u64, (RankKey, Ranking), isize>,
        retention: Retention,
    ) -> Aggregates<'s> {
        let scope = rows.inner.scope();
        Aggregates {
            hour: rows.clone(),
            day: rows.clone(),
            minute: rows,
            retention,
            reach: empty(scope).as_collection(),
            top_by_advertiser: top.clone(),
            top,
            late: empty(scope),
            rejected: empty(scope),
            names: empty(scope),
            received: empty(scope),
            lost: empty(scope),
        }
    }

    fn spans(trace: &AdTrace) -> usize {
        let mut n = 0;
        trace.map_spans(|_| n += 1);
        n
    }

    /// The aggregator holds query handles for as long as it runs while the frontier moves
    /// every tick: the arrangements must go on merging their batches all the same.
    #[test]
    fn query_handles_let_the_arrangements_merge() {
        timely::execute_directly(|worker| {
            let (mut rows, mut ranks, probe, mut traces) = worker.dataflow::<u64, _, _>(|scope| {
                let (rows, minute) = scope.new_collection::<Row, Measures>();
                let (ranks, top) = scope.new_collection::<(RankKey, Ranking), isize>();
                let a = rows_and_ranks(minute, top, Retention::default());
                let traces = Traces::arrange(&a);
                let probe = a.minute.inner.probe().0;
                (rows, ranks, probe, traces)
            });
            let queries = traces.for_queries();
            let ticks = 1_000u64;
            for t in 1..=ticks {
                let dims = click::Dims {
                    ad_id: click::Sym(t % 7),
                    ..Default::default()
                };
                rows.update((t * 100, dims), Measures::billable(1));
                rows.advance_to(t);
                ranks.advance_to(t);
                rows.flush();
                ranks.flush();
                while probe.less_than(&t) {
                    worker.step();
                }
                traces.compact_to(timely::progress::Antichain::from_elem(t - 1).borrow());
            }
            // A spine keeps about two batches per power of two of its length.
            let most = 2 * (ticks.ilog2() as usize + 2);
            for (name, trace) in [("minute", &traces.minute), ("day", &traces.day)] {
                let n = spans(trace);
                assert!(n <= most, "{name}: {n} batches after {ticks} ticks");
            }
            drop(queries);
        });
    }

    /// Rows arriving over time into windows, some late into older windows, windows retiring:
    /// a window not changed since `s` holds at the end what it held at `s`, and reading only
    /// the changed windows gives exactly their rows. The times are never compacted, so the
    /// rows at any earlier frontier can be read at the end.
    #[test]
    fn windows_not_changed_since_a_frontier_hold_their_rows_from_then() {
        timely::execute_directly(|worker| {
            let (mut rows, probe, mut traces) = worker.dataflow::<u64, _, _>(|scope| {
                let (rows, minute) = scope.new_collection::<Row, Measures>();
                let retention = Retention {
                    minute_ms: 0,
                    hour_ms: 0,
                    day_ms: 0,
                };
                let a = rows_and_ranks(minute, empty(scope).as_collection(), retention);
                let traces = Traces::arrange(&a);
                traces.record_changes();
                let probe = a.minute.inner.probe().0;
                (rows, probe, traces)
            });
            let end = 200_000u64;
            let mut t = 0;
            while t < end {
                t += 500;
                let at = |start: u64, ad: u64| {
                    let dims = click::Dims {
                        ad_id: click::Sym(ad),
                        ..Default::default()
                    };
                    ((start, dims), Measures::billable(1))
                };
                // This 10 s window, and now and then one up to 50 s back.
                let (row, m) = at(t / 10_000 * 10_000, t % 3);
                rows.update(row, m);
                if t % 3_500 == 0 {
                    let back = (t / 10_000).saturating_sub(t % 5) * 10_000;
                    let (row, m) = at(back, t % 7);
                    rows.update(row, m);
                }
                rows.advance_to(t);
                rows.flush();
                while probe.less_than(&t) {
                    worker.step();
                }
            }
            assert!(traces.sealed_through(end));
            let of = |rows: &[(Row, Measures)], ws: &[u64], changed: bool| {
                let mut v: Vec<_> = rows
                    .iter()
                    .filter(|r| ws.binary_search(&r.0.0).is_ok() == changed)
                    .cloned()
                    .collect();
                v.sort();
                v
            };
            let now = traces.rows_before(end, None);
            let (mut unchanged, mut changed, mut retired) = (0, 0, 0);
            for s in [40_000, 90_000, 150_000, 199_000] {
                let windows = traces.changed_since(s);
                let then = traces.rows_before(s, None);
                let only = traces.rows_before(end, Some(&windows));
                for (then, now, only, ws) in [
                    (&then.minute, &now.minute, &only.minute, &windows.minute),
                    (&then.day, &now.day, &only.day, &windows.day),
                ] {
                    assert_eq!(
                        of(now, ws, false),
                        of(then, ws, false),
                        "unchanged since {s}"
                    );
                    assert_eq!(of(only, ws, true), of(now, ws, true), "changed since {s}");
                    unchanged += of(now, ws, false).len();
                    changed += of(now, ws, true).len();
                    // Windows retired since `s`: changed, and empty now.
                    retired += ws
                        .iter()
                        .filter(|w| {
                            then.iter().any(|r| r.0.0 == **w) && !now.iter().any(|r| r.0.0 == **w)
                        })
                        .count();
                }
            }
            assert!(
                unchanged > 0 && changed > 0 && retired > 0,
                "{unchanged} {changed} {retired}"
            );
        });
    }
}
