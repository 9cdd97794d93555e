//! Queries over the live arrangements, answered inside the cluster.
//!
//! A query enters a second dataflow (the query dataflow, on every worker) with a timestamp
//! `(read_at, batch)`. `read_at` is a time the data frontier has already passed, chosen by
//! the worker that took the query. A query that reads one key (an ad's count, a ranking) goes
//! to the one worker whose shard holds it; a report over all ads goes to every worker. Each
//! answers from its shard of the traces, accumulating exactly the updates at times ≤
//! `read_at`, so the merged answer is consistent at one frontier (`read_at + 1`) across all
//! workers and processes. Each worker's handles on the traces hold logical compaction at the
//! least `read_at` a future query may carry (the query stream's frontier), so those reads stay
//! exact while the traces compact behind them.
//!
//! Partial answers are exchanged to worker 0, which merges them once the query dataflow's
//! frontier passes the query's timestamp (every worker that got the query has answered) and
//! hands the result to the edge (`deliver`), which resolves fingerprints to texts and replies.

use std::collections::BTreeMap;

use differential_dataflow::Hashable;
use differential_dataflow::trace::TraceReader;
use differential_dataflow::trace::cursor::{Cursor, Navigable, cursor_list};
use serde::{Deserialize, Serialize};
use timely::PartialOrder;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;
use timely::progress::Antichain;

use crate::click::{Dims, Measures, Row, Sym};
use crate::reach::{Group, GroupBy as ReachBy};
use crate::sketch::UserSketch;
use crate::time::{DAY_MS, HOUR_MS, MINUTE_MS, window_start};
use crate::topn::{RankKey, Ranking};
use crate::{AdTrace, RankTrace, ReachTrace, batches};

/// A query's timely time packs `(read_at, batch)` lexicographically into a u128 (timely's root
/// timestamps must be totally ordered scalars): `read_at << 64 | batch`. The read time comes
/// first so that every worker learns from the query stream's frontier how far its traces may
/// compact; the batch (the id of its first query) gives each batch of queries its own time,
/// however many read at one time (a u64 packing once ran out of them while the frontier stood
/// still, and queries hung).
pub type QueryTime = u128;

fn query_time(read_at: u64, batch: u64) -> QueryTime {
    (read_at as u128) << 64 | batch as u128
}

/// The least read time of a query at or after `t`.
fn read_time(t: QueryTime) -> u64 {
    (t >> 64) as u64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    pub fn ms(self) -> u64 {
        match self {
            Granularity::Minute => MINUTE_MS,
            Granularity::Hour => HOUR_MS,
            Granularity::Day => DAY_MS,
        }
    }
}

/// Dimension equalities a row must meet (`None`: any value).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Filter {
    pub ad_id: Option<Sym>,
    pub campaign_id: Option<Sym>,
    pub advertiser_id: Option<Sym>,
    pub publisher_id: Option<Sym>,
    pub country: Option<Sym>,
    pub device: Option<Sym>,
}

impl Filter {
    pub fn matches(&self, d: &Dims) -> bool {
        let ok = |want: Option<Sym>, have: Sym| want.is_none_or(|w| w == have);
        ok(self.ad_id, d.ad_id)
            && ok(self.campaign_id, d.campaign_id)
            && ok(self.advertiser_id, d.advertiser_id)
            && ok(self.publisher_id, d.publisher_id)
            && ok(self.country, d.country)
            && ok(self.device, d.device)
    }
}

/// The dimensions a report groups by, in `Dims` field order.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct GroupBy {
    pub time: Option<Granularity>,
    /// ad, campaign, advertiser, publisher, country, device.
    pub dims: [bool; 6],
}

/// A report row's key: the time bucket and the grouped dimensions (others `None`).
pub type GroupKey = (Option<u64>, [Option<Sym>; 6]);

impl GroupBy {
    pub fn key(&self, (start, d): &Row) -> GroupKey {
        let all = [
            d.ad_id,
            d.campaign_id,
            d.advertiser_id,
            d.publisher_id,
            d.country,
            d.device,
        ];
        let mut dims = [None; 6];
        for (i, on) in self.dims.iter().enumerate() {
            if *on {
                dims[i] = Some(all[i]);
            }
        }
        (self.time.map(|g| window_start(*start, g.ms())), dims)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum QueryKind {
    /// One ad's clicks over [from, to), read from rows of `source` granularity.
    AdCount {
        ad: Sym,
        from: u64,
        to: u64,
        source: Granularity,
        filter: Filter,
    },
    /// Rows over [from, to) matching `filter`, summed by `group`.
    Report {
        from: u64,
        to: u64,
        source: Granularity,
        group: GroupBy,
        filter: Filter,
    },
    /// One ranking, cut to `n` ads, keeping only `advertiser`'s ads if given (an advertiser
    /// reads the ranking of its own scope, [`crate::topn::advertiser_scope`]: this only
    /// guards it). The window's end, `key.1`, is set when the query is stamped
    /// ([`Stamps::stamp`]).
    Top {
        key: RankKey,
        n: usize,
        advertiser: Option<Sym>,
    },
    /// Distinct users over [from, to) (whole hours) of the groups `by` (only `key`'s, if
    /// given) that `filter` accepts, per `time` bucket (one bucket without): each row the
    /// union of the day sketches of the whole days in range and the hour sketches of the rest.
    Reach {
        by: ReachBy,
        key: Option<Sym>,
        from: u64,
        to: u64,
        time: Option<Granularity>,
        billable: bool,
        filter: Filter,
        /// The allowed lateness: sketches hold final minutes, so a range is complete once
        /// the frontier passes its end plus this.
        lateness_ms: u64,
    },
}

impl QueryKind {
    /// The exchange hash of the one key this query reads, if it reads one: the hash the
    /// arrangement it reads used to place that key (`arrange_by_key` hashes the key with
    /// [`Hashable`]), so the query goes to the one worker that holds it, and the other workers
    /// need not take a step for it. `None`: every worker holds a share.
    fn key_hash(&self) -> Option<u64> {
        match self {
            QueryKind::AdCount { ad, .. } => Some(ad.hashed()),
            QueryKind::Report { filter, .. } => filter.ad_id.map(|ad| ad.hashed()),
            QueryKind::Top { key, .. } => Some(key.hashed()),
            QueryKind::Reach { by, key, .. } => key.map(|k| (*by, k).hashed()),
        }
    }
}

/// A query, with its place in the query dataflow: it travels at `(read_at, batch)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Query {
    /// Unique per submitting worker, in the order it stamped them ([`Stamps`]).
    pub id: u64,
    /// The reads include exactly the updates at times ≤ this.
    pub read_at: u64,
    /// Queries stamped together share one time: one timely message and one round of
    /// progress tracking for all of them, not one per query.
    pub batch: u64,
    pub kind: QueryKind,
}

impl Query {
    pub fn time(&self) -> QueryTime {
        query_time(self.read_at, self.batch)
    }
}

/// Stamps queries for the one worker that submits them, a batch at a time: read times never
/// move backwards and ids always grow, so each batch's time is past the one before and the
/// query input only ever advances.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stamps {
    read_at: u64,
    next_id: u64,
    batch: u64,
}

impl Stamps {
    /// Starts a batch: its reads see exactly the updates before `frontier`.
    pub fn batch(&mut self, frontier: u64) {
        let read_at = frontier.saturating_sub(1);
        self.read_at = self.read_at.max(read_at);
        self.batch = self.next_id;
    }

    /// A query of `kind` in the current batch. A ranking query reads the latest window
    /// ranked at its read time ([`crate::topn::latest_ranked`]): chosen here, with the read
    /// time, rather than by the HTTP handler from an earlier frontier, so that a ranking is
    /// read only while it is the latest, and an advertiser's may leave a minute later
    /// ([`crate::topn::advertiser_retire_at`]).
    pub fn stamp(&mut self, mut kind: QueryKind) -> Query {
        if let QueryKind::Top { key, .. } = &mut kind {
            key.1 = crate::topn::latest_ranked(self.read_at);
        }
        let id = self.next_id;
        self.next_id += 1;
        Query {
            id,
            read_at: self.read_at,
            batch: self.batch,
            kind,
        }
    }

    /// Where the query input may advance to: past every query stamped so far.
    pub fn next_time(&self) -> QueryTime {
        query_time(self.read_at, self.next_id)
    }
}

/// What one worker found.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Partial {
    /// Measures in range, and whether the ad has any rows at all (whatever the range and
    /// filter): an advertiser may only learn of ads it owns.
    Count {
        measures: Measures,
        ad_seen: bool,
    },
    Rows(Vec<(GroupKey, Measures)>),
    Top(Ranking),
    Reach(Vec<(ReachKey, UserSketch)>),
}

/// A reach row's key: its time bucket, and its group's dimensions.
pub type ReachKey = (Option<u64>, Dims);

/// The merged answer, still in fingerprints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Count {
        measures: Measures,
        ad_seen: bool,
    },
    Rows(Vec<(GroupKey, Measures)>),
    Top(Ranking),
    /// Sorted by key; the sketches merged over workers.
    Reach(Vec<(ReachKey, UserSketch)>),
}

/// The traces a worker answers from.
#[derive(Clone)]
pub struct QueryTraces {
    pub minute: AdTrace,
    pub hour: AdTrace,
    pub day: AdTrace,
    pub top: RankTrace,
    pub reach: ReachTrace,
}

impl QueryTraces {
    fn rows(&mut self, g: Granularity) -> &mut AdTrace {
        match g {
            Granularity::Minute => &mut self.minute,
            Granularity::Hour => &mut self.hour,
            Granularity::Day => &mut self.day,
        }
    }

    fn set_logical_compaction(&mut self, frontier: &Antichain<u64>) {
        for t in [&mut self.minute, &mut self.hour, &mut self.day] {
            t.set_logical_compaction(frontier.borrow());
        }
        self.top.set_logical_compaction(frontier.borrow());
        self.reach.set_logical_compaction(frontier.borrow());
    }

    /// Whether the traces `kind` reads hold all updates at times ≤ `read_at`. Rows and
    /// rankings are waited for apart: the rankings come a few operators after the rows, and a
    /// count need not wait for them (nor a ranking for the rows).
    fn ready(&mut self, kind: &QueryKind, read_at: u64) -> bool {
        let mut upper = Antichain::new();
        let mut ok = |t: &mut dyn FnMut(&mut Antichain<u64>)| {
            t(&mut upper);
            !upper.less_equal(&read_at)
        };
        match kind {
            QueryKind::AdCount { .. } | QueryKind::Report { .. } => {
                ok(&mut |u| self.minute.read_upper(u))
                    && ok(&mut |u| self.hour.read_upper(u))
                    && ok(&mut |u| self.day.read_upper(u))
            }
            QueryKind::Top { .. } => ok(&mut |u| self.top.read_upper(u)),
            QueryKind::Reach { .. } => ok(&mut |u| self.reach.read_upper(u)),
        }
    }
}

/// Adds up, through `add`, the updates at times ≤ `read_at` of every row of `ad` (or of every
/// ad) in `trace` whose window starts in `windows`. Each batch is read on its own: sums need
/// no consolidation across batches, and a batch's cursor seeks straight to the range (rows
/// sort by window first) and stops after it. `add` may see a row more than once, and a row
/// whose updates cancel out.
pub(crate) fn sum_rows(
    trace: &mut AdTrace,
    ad: Option<Sym>,
    windows: std::ops::Range<u64>,
    read_at: u64,
    mut add: impl FnMut(&Row, Measures),
) {
    let first: Row = (windows.start, Dims::default());
    for batch in batches(trace) {
        let mut cursor = batch.cursor();
        if let Some(ad) = ad {
            cursor.seek_key(&batch, &ad);
        }
        while let Some(key) = cursor.get_key(&batch) {
            if ad.is_some_and(|a| *key != a) {
                break;
            }
            cursor.seek_val(&batch, &first);
            while let Some(row) = cursor.get_val(&batch) {
                if row.0 >= windows.end {
                    break;
                }
                let mut m = Measures::default();
                cursor.map_times(&batch, |t, d| {
                    if t.less_equal(&read_at) {
                        m += d;
                    }
                });
                add(row, m);
                cursor.step_val(&batch);
            }
            cursor.step_key(&batch);
        }
    }
}

/// Whether `ad` has a row in `trace`, in any window, with measures at times ≤ `read_at` that
/// do not cancel out and that `visible` accepts. Reads consolidated rows (all batches at
/// once), and stops at the first.
fn any_row(trace: &mut AdTrace, ad: Sym, read_at: u64, visible: impl Fn(&Row) -> bool) -> bool {
    let (mut cursor, storage) = cursor_list(batches(trace));
    cursor.seek_key(&storage, &ad);
    if cursor.get_key(&storage) != Some(&ad) {
        return false;
    }
    while let Some(row) = cursor.get_val(&storage) {
        let mut m = Measures::default();
        cursor.map_times(&storage, |t, d| {
            if t.less_equal(&read_at) {
                m += d;
            }
        });
        if m != Measures::default() && visible(row) {
            return true;
        }
        cursor.step_val(&storage);
    }
    false
}

/// [from, to) as spans each read from the coarsest rows that hold it exactly: whole hours
/// inside a range of minute rows come from hour rows (the same clicks, summed by the same
/// dataflow at the same times), so a day's count reads 24 rows per combination, not 1,440.
fn spans(from: u64, to: u64, source: Granularity) -> Vec<(Granularity, u64, u64)> {
    let (first_hour, last_hour) = (from.next_multiple_of(HOUR_MS), to / HOUR_MS * HOUR_MS);
    if source != Granularity::Minute || first_hour >= last_hour {
        return vec![(source, from, to)];
    }
    [
        (Granularity::Minute, from, first_hour),
        (Granularity::Hour, first_hour, last_hour),
        (Granularity::Minute, last_hour, to),
    ]
    .into_iter()
    .filter(|(_, a, b)| a < b)
    .collect()
}

fn ranking(trace: &mut RankTrace, key: &RankKey, read_at: u64) -> Ranking {
    let (mut cursor, storage) = cursor_list(batches(trace));
    cursor.seek_key(&storage, key);
    let mut found = Ranking::new();
    if cursor.get_key(&storage) == Some(key) {
        while let Some(r) = cursor.get_val(&storage) {
            let mut n = 0;
            cursor.map_times(&storage, |t, d| {
                if t.less_equal(&read_at) {
                    n += *d;
                }
            });
            if n > 0 {
                found = r.clone();
            }
            cursor.step_val(&storage);
        }
    }
    found
}

/// Whether sketch `g` is one a reach query over [from, to) by `time` reads: the day sketch of
/// a whole day in range (unless hours are asked), else the hour sketches in range.
fn covers(g: &Group, from: u64, to: u64, time: Option<Granularity>) -> bool {
    let whole_day =
        |start: u64| time != Some(Granularity::Hour) && start >= from && start + DAY_MS <= to;
    if g.len_ms == DAY_MS {
        whole_day(g.start)
    } else {
        g.start >= from && g.start < to && !whole_day(window_start(g.start, DAY_MS))
    }
}

/// This worker's reach rows: the sketches `by` (of `key`, or all) current at `read_at` that
/// the query reads, merged by row.
fn reach_rows(traces: &mut QueryTraces, q: &Query) -> Vec<(ReachKey, UserSketch)> {
    let QueryKind::Reach {
        by,
        key,
        from,
        to,
        time,
        billable,
        filter,
        ..
    } = &q.kind
    else {
        unreachable!("a reach query")
    };
    let (mut cursor, storage) = cursor_list(batches(&traces.reach));
    cursor.seek_key(&storage, &(*by, key.unwrap_or_default()));
    let mut rows: BTreeMap<ReachKey, UserSketch> = BTreeMap::new();
    while let Some(k) = cursor.get_key(&storage) {
        if k.0 != *by || key.is_some_and(|want| k.1 != want) {
            break;
        }
        while let Some((g, sketch)) = cursor.get_val(&storage) {
            if g.billable == *billable && covers(g, *from, *to, *time) && filter.matches(&g.dims) {
                let mut n = 0isize;
                cursor.map_times(&storage, |t, d| {
                    if t.less_equal(&q.read_at) {
                        n += *d;
                    }
                });
                if n > 0 {
                    let bucket = time.map(|gr| window_start(g.start, gr.ms()));
                    rows.entry((bucket, g.dims)).or_default().merge(sketch);
                }
            }
            cursor.step_val(&storage);
        }
        cursor.step_key(&storage);
    }
    rows.into_iter().collect()
}

/// This worker's part of the answer.
pub fn answer_locally(traces: &mut QueryTraces, q: &Query) -> Partial {
    match &q.kind {
        QueryKind::AdCount {
            ad,
            from,
            to,
            source,
            filter,
        } => {
            // The ad exists for the caller if any of its rows, in any window, is the caller's.
            let ad_seen = any_row(traces.rows(*source), *ad, q.read_at, |row| {
                filter
                    .advertiser_id
                    .is_none_or(|a| a == row.1.advertiser_id)
            });
            let mut measures = Measures::default();
            for (g, from, to) in spans(*from, *to, *source) {
                sum_rows(traces.rows(g), Some(*ad), from..to, q.read_at, |row, m| {
                    if filter.matches(&row.1) {
                        measures += m;
                    }
                });
            }
            Partial::Count { measures, ad_seen }
        }
        QueryKind::Report {
            from,
            to,
            source,
            group,
            filter,
        } => {
            let mut sums: BTreeMap<GroupKey, Measures> = BTreeMap::new();
            sum_rows(
                traces.rows(*source),
                filter.ad_id,
                *from..*to,
                q.read_at,
                |row, m| {
                    if m != Measures::default() && filter.matches(&row.1) {
                        let s = sums.entry(group.key(row)).or_default();
                        *s += m;
                    }
                },
            );
            Partial::Rows(sums.into_iter().collect())
        }
        QueryKind::Top { key, n, advertiser } => {
            // The one worker holding the ranking cuts it, so only what is shown travels.
            let mut ranking = ranking(&mut traces.top, key, q.read_at);
            if let Some(adv) = advertiser {
                ranking.retain(|((_, a), _)| a == adv);
            }
            ranking.truncate(*n);
            Partial::Top(ranking)
        }
        QueryKind::Reach { .. } => Partial::Reach(reach_rows(traces, q)),
    }
}

/// Worker 0's merge of every worker's part.
pub fn merge(kind: &QueryKind, parts: Vec<Partial>) -> Answer {
    match kind {
        QueryKind::AdCount { .. } => {
            let (mut measures, mut ad_seen) = (Measures::default(), false);
            for p in parts {
                if let Partial::Count {
                    measures: m,
                    ad_seen: s,
                } = p
                {
                    measures += m;
                    ad_seen |= s;
                }
            }
            Answer::Count { measures, ad_seen }
        }
        QueryKind::Report { .. } => {
            let mut sums: BTreeMap<GroupKey, Measures> = BTreeMap::new();
            for p in parts {
                if let Partial::Rows(rows) = p {
                    for (k, m) in rows {
                        let s = sums.entry(k).or_default();
                        *s += m;
                    }
                }
            }
            sums.retain(|_, m| *m != Measures::default());
            Answer::Rows(sums.into_iter().collect())
        }
        QueryKind::Top { .. } => {
            // A ranking lives on one worker, which cut it already.
            let ranking: Ranking = parts
                .into_iter()
                .filter_map(|p| match p {
                    Partial::Top(r) if !r.is_empty() => Some(r),
                    _ => None,
                })
                .next()
                .unwrap_or_default();
            Answer::Top(ranking)
        }
        QueryKind::Reach { .. } => {
            let mut rows: BTreeMap<ReachKey, UserSketch> = BTreeMap::new();
            for p in parts {
                if let Partial::Reach(part) = p {
                    for (k, s) in part {
                        rows.entry(k).or_default().merge(&s);
                    }
                }
            }
            Answer::Reach(rows.into_iter().collect())
        }
    }
}

/// Where `q` goes: `(exchange hash, query)` for the worker holding its key, or one copy per
/// worker (hashes `0..peers`, which every exchange sends to that worker) when all hold a share.
fn routes(q: Query, peers: usize) -> Vec<(u64, Query)> {
    match q.kind.key_hash() {
        Some(h) => vec![(h, q)],
        None => (0..peers as u64).map(|w| (w, q.clone())).collect(),
    }
}

/// The query dataflow's body: the workers holding what a query reads answer it from their
/// traces (the one worker with its key, or all of them); worker 0 merges and calls
/// `deliver(query, answer)`.
pub fn serve<'s>(
    queries: Stream<'s, QueryTime, Vec<Query>>,
    mut traces: QueryTraces,
    mut deliver: impl FnMut(Query, Answer) + 'static,
) {
    let scope = queries.scope();
    let peers = scope.peers();
    let partials = queries
        .flat_map(move |q| routes(q, peers))
        .unary_frontier::<CapacityContainerBuilder<Vec<(Query, Partial)>>, _, _, _>(
            Exchange::new(|(h, _): &(u64, Query)| *h),
            "AnswerLocally",
            move |_cap, info| {
                let activator = scope.activator_for(info.address);
                let mut pending = Vec::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        for (_, q) in data.drain(..) {
                            pending.push((cap.delayed(&q.time(), 0), q));
                        }
                    });
                    // Answer what the traces can answer exactly; wait (briefly) for the rest.
                    let mut waiting = Vec::new();
                    for (cap, q) in pending.drain(..) {
                        if traces.ready(&q.kind, q.read_at) {
                            let part = answer_locally(&mut traces, &q);
                            output.session(&cap).give((q, part));
                        } else {
                            waiting.push((cap, q));
                        }
                    }
                    pending = waiting;
                    if !pending.is_empty() {
                        activator.activate();
                    }
                    // Future queries read at or after the frontier's `read_at`s.
                    let mut lowest = Antichain::new();
                    for t in frontier.frontier().iter() {
                        lowest.insert(read_time(*t));
                    }
                    for (_, q) in &pending {
                        lowest.insert(q.read_at);
                    }
                    traces.set_logical_compaction(&lowest);
                }
            },
        );
    let mut parts: BTreeMap<u64, (Query, Vec<Partial>)> = BTreeMap::new();
    partials.sink(
        Exchange::new(|_: &(Query, Partial)| 0),
        "MergeAnswers",
        move |(input, frontier)| {
            input.for_each(|_, data| {
                for (q, p) in data.drain(..) {
                    parts
                        .entry(q.id)
                        .or_insert_with(|| (q, Vec::new()))
                        .1
                        .push(p);
                }
            });
            // Once the frontier has passed a query's time, every worker's part is in.
            let done: Vec<u64> = parts
                .values()
                .filter(|(q, _)| !frontier.less_equal(&q.time()))
                .map(|(q, _)| q.id)
                .collect();
            for id in done {
                let (q, ps) = parts.remove(&id).expect("listed above");
                let answer = merge(&q.kind, ps);
                deliver(q, answer);
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_hours_of_a_minute_range_are_read_from_hour_rows() {
        use Granularity::{Day, Hour, Minute};
        let (h, m) = (HOUR_MS, MINUTE_MS);
        assert_eq!(
            spans(h - m, 3 * h + 2 * m, Minute),
            [
                (Minute, h - m, h),
                (Hour, h, 3 * h),
                (Minute, 3 * h, 3 * h + 2 * m)
            ]
        );
        assert_eq!(spans(h, 2 * h, Minute), [(Hour, h, 2 * h)]);
        assert_eq!(
            spans(h + m, 2 * h - m, Minute),
            [(Minute, h + m, 2 * h - m)]
        );
        assert_eq!(spans(h - m, h + m, Minute), [(Minute, h - m, h + m)]);
        assert_eq!(spans(0, DAY_MS, Day), [(Day, 0, DAY_MS)]);
    }

    /// A reach range reads day sketches for its whole days and hour sketches for the rest,
    /// hour sketches only when hours are asked: each user's click is in exactly one sketch read.
    #[test]
    fn a_reach_range_reads_whole_days_from_day_sketches() {
        let g = |start, len_ms| Group {
            start,
            len_ms,
            by: ReachBy::Ad,
            billable: true,
            dims: Dims::default(),
        };
        let (d, h) = (DAY_MS, HOUR_MS);
        // [day 1 + 22 h, day 3 + 2 h): hours 22, 23 of day 1, day 2 whole, hours 0, 1 of day 3.
        let (from, to) = (d + 22 * h, 3 * d + 2 * h);
        let read = |len_ms: u64, time| {
            (0..4 * d / len_ms)
                .map(|i| i * len_ms)
                .filter(|s| covers(&g(*s, len_ms), from, to, time))
                .collect::<Vec<_>>()
        };
        assert_eq!(read(d, None), [2 * d]);
        assert_eq!(read(h, None), [d + 22 * h, d + 23 * h, 3 * d, 3 * d + h]);
        assert_eq!(read(d, Some(Granularity::Day)), [2 * d]);
        assert_eq!(read(d, Some(Granularity::Hour)), Vec::<u64>::new());
        assert_eq!(read(h, Some(Granularity::Hour)).len(), 28);
    }

    #[test]
    fn query_times_only_grow_as_the_read_time_moves() {
        let kind = || QueryKind::Top {
            key: (1, 0, crate::topn::all_countries()),
            n: 1,
            advertiser: None,
        };
        let mut stamps = Stamps::default();
        let mut last: Option<QueryTime> = None;
        let mut input: QueryTime = 0;
        // Frontiers as a busy server sees them: repeating, moving on, once lower than before;
        // a few queries at each.
        for (frontier, queries) in [(5, 3), (5, 2), (9, 1), (7, 4), (12, 0), (13, 5)] {
            stamps.batch(frontier);
            let mut batch_time = None;
            for _ in 0..queries {
                let q = stamps.stamp(kind());
                assert!(
                    q.read_at < frontier.max(9),
                    "reads only what the frontier passed"
                );
                let t = *batch_time.get_or_insert(q.time());
                assert_eq!(q.time(), t, "a batch shares one time");
                assert!(
                    last.is_none_or(|l| t > l),
                    "each batch's time is past the last"
                );
                assert!(t >= input, "never behind the input");
            }
            last = batch_time.or(last);
            assert!(stamps.next_time() >= input);
            input = stamps.next_time();
        }
    }

    /// While the frontier stands still (no new clicks), queries go on reading at one time:
    /// there is no limit to how many.
    #[test]
    fn queries_at_one_read_time_never_run_out_of_times() {
        let mut stamps = Stamps::default();
        let mut last = 0;
        for _ in 0..(1 << 21) {
            stamps.batch(1_795_000_000_000);
            let q = stamps.stamp(QueryKind::Top {
                key: (1, 0, crate::topn::all_countries()),
                n: 1,
                advertiser: None,
            });
            assert_eq!(q.read_at, 1_795_000_000_000 - 1);
            assert!(q.time() >= last);
            assert_eq!(read_time(q.time()), q.read_at);
            last = stamps.next_time();
            assert!(last > q.time());
        }
    }
}
