//! The whole aggregation against an independent oracle, on 1 and 2 workers: duplicates
//! (some earlier than the original), reordering, allowed-late and too-late clicks, rejected
//! records, an empty partition, clicks exactly on window boundaries and at the lateness limit,
//! and invalid traffic: the edge's reasons, IP and user floods (whose verdicts late clicks and
//! dedup's replacements change) and too-fast clicks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adclick_dataflows::click::{Click, Labels, Measures, RawClick, Row, Sym, Traits};
use adclick_dataflows::dedup::Judged;
use adclick_dataflows::invalid::{Reason, Reasons};
use std::cell::RefCell;
use std::rc::Rc;

use adclick_dataflows::click::Dims;
use adclick_dataflows::dedup::{DedupCheckpoints, DedupConfig, DedupState, SaveDedup};
use adclick_dataflows::names::Name;
use adclick_dataflows::pending::Pending;
use adclick_dataflows::source::{
    Cuts, Flow, PartitionReader, Polled, Record, Rejected, SourceEvent, SourceOptions,
    SourceSnapshot, checkpointed_source,
};
use adclick_dataflows::time::{HOUR_MS, MINUTE_MS, window_start};
use adclick_dataflows::topn::{RankKey, Ranking, all_countries};
use adclick_dataflows::watermark::TimeConfig;
use adclick_dataflows::{AggregateConfig, Traces, aggregate};
use adclick_dataflows::{RestoredRows, Resume, restored_clicks, resumed_aggregate};
use differential_dataflow::trace::cursor::{Cursor, cursor_list};
use timely::dataflow::operators::Input;
use timely::dataflow::operators::Inspect;
use timely::dataflow::operators::vec::Broadcast;

const BOUND: u64 = 5_000;
const LATENESS: u64 = 300_000;
const START: u64 = 1_776_686_400_000; // 2026-04-20T12:00:00Z

#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
enum Item {
    Click(RawClick),
    Bad(String),
}

/// Deterministic pseudo-random numbers without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn labels(rng: &mut Rng) -> Labels {
    let ad = rng.below(20);
    Labels {
        ad_id: format!("ad_{ad}"),
        campaign_id: format!("cmp_{}", ad % 4),
        advertiser_id: format!("adv_{}", ad % 2),
        publisher_id: format!("pub_{}", rng.below(3)),
        country: ["US", "DE", "JP"][rng.below(3) as usize].into(),
        device: ["mobile", "desktop"][rng.below(2) as usize].into(),
    }
}

/// A UUID in its simple form (32 hex digits): its order as text is its order as a number.
fn click_id(rng: &mut Rng) -> String {
    format!("{:016x}{:016x}", rng.next(), rng.next())
}

/// Who clicked and how: a click farm on a few IPs and ads, a few very busy users, clicks
/// right after their impression, and the edge's reasons on some.
fn traits(rng: &mut Rng, c: &mut RawClick) -> Traits {
    let mut t = Traits {
        ip_hash: format!("ip-{}", rng.below(400)),
        user_id_hash: format!("user-{}", rng.below(300)),
        impression_time: c.event_time - 1_000 - rng.below(30_000),
        reasons: Reasons::NONE,
    };
    match rng.below(100) {
        0..=5 => {
            // The farm: 3 IPs on 2 ads, about 24 clicks a minute each.
            t.ip_hash = format!("farm-{}", rng.below(3));
            c.labels.ad_id = format!("ad_{}", rng.below(2));
            c.labels.campaign_id = "cmp_0".into();
        }
        6..=8 => t.user_id_hash = format!("busy-{}", rng.below(2)),
        9..=10 => t.impression_time = c.event_time - rng.below(1_000),
        11 => t.reasons = Reasons::of([Reason::KnownBot]),
        12 => t.reasons = Reasons::of([Reason::Datacenter, Reason::Headless]),
        13 => t.ip_hash.clear(),
        14 => t.user_id_hash.clear(),
        _ => {}
    }
    t
}

/// Five partitions of traffic; partition 4 stays empty.
fn traffic() -> Vec<Vec<Item>> {
    traffic_at(START, 50) // 20 clicks/s of event time, 5 minutes in all
}

/// [`traffic`]'s 6,000 clicks from `start`, one every `step_ms` of event time.
fn traffic_at(start: u64, step_ms: u64) -> Vec<Vec<Item>> {
    let mut rng = Rng(0x5eed);
    let mut parts: Vec<Vec<Item>> = vec![Vec::new(); 5];
    let mut dup_later: Vec<(usize, u64, RawClick)> = Vec::new();
    for i in 0..6_000u64 {
        let now = start + i * step_ms;
        let p = (i % 4) as usize;
        let mut c = RawClick {
            impression_id: format!("imp-{i}"),
            click_id: click_id(&mut rng),
            event_time: now - rng.below(3_000),
            labels: labels(&mut rng),
            traits: Traits::default(),
            origin: Default::default(),
        };
        c.traits = traits(&mut rng, &mut c);
        match rng.below(100) {
            0..=2 => c.event_time = now - 60_000 - rng.below(100_000), // allowed late
            3 if i > 400 => c.event_time = now - 400_000 - rng.below(60_000), // too late
            4 => {
                parts[p].push(Item::Bad(format!("garbage {i}")));
                continue;
            }
            5 => c.event_time = window_start(now, MINUTE_MS), // exactly on a boundary
            _ => {}
        }
        if rng.below(10) == 0 {
            let mut d = c.clone();
            d.click_id = click_id(&mut rng);
            d.event_time = (c.event_time + rng.below(4_000)).saturating_sub(2_000);
            dup_later.push((p, i + 1 + rng.below(30), d));
        }
        if rng.below(50) == 0 {
            dup_later.push((p, i + 1 + rng.below(30), c.clone())); // identical retry
        }
        parts[p].push(Item::Click(c));
        flip_farm(i, &mut parts[p]);
        for (pp, _, d) in dup_later.extract_if(.., |(_, at, _)| *at <= i) {
            parts[pp].push(Item::Click(d));
        }
    }
    // A click exactly at partition 0's lateness limit, and one a millisecond beyond.
    let max0 = parts[0]
        .iter()
        .filter_map(|it| match it {
            Item::Click(c) => Some(c.event_time),
            _ => None,
        })
        .max()
        .unwrap();
    for (n, t) in [
        (0, max0 - BOUND - LATENESS),
        (1, max0 - BOUND - LATENESS - 1),
    ] {
        parts[0].push(Item::Click(RawClick {
            impression_id: format!("limit-{n}"),
            click_id: format!("{n:032x}"),
            event_time: t,
            labels: Labels::default(),
            traits: Traits::default(),
            origin: Default::default(),
        }));
    }
    parts
}

/// A farm whose IP verdicts flip after the middle checkpoint (+150 s): one IP's 7 clicks on
/// one ad, one user on one campaign, at +120.5 s (the 6th and 7th flagged), then, at +280 s,
/// an allowed-late duplicate of the first click a second earlier, in the minute before. It
/// replaces the first click, so the farm's minute holds 6 and its 6th click is allowed again:
/// a restored click's IP verdict changes after the restore, which the user rule, downstream,
/// must see as a retraction of the click as it was judged.
fn flip_farm(i: u64, part: &mut Vec<Item>) {
    let farm = |n: u64, event_time: u64, id: u64| {
        let labels = Labels {
            ad_id: "ad_0".into(),
            campaign_id: "cmp_0".into(),
            advertiser_id: "adv_0".into(),
            publisher_id: "pub_0".into(),
            country: "US".into(),
            device: "mobile".into(),
        };
        Item::Click(RawClick {
            impression_id: format!("flip-{n}"),
            click_id: format!("{id:032x}"),
            event_time,
            labels,
            traits: Traits {
                ip_hash: "flip-ip".into(),
                user_id_hash: "flip-user".into(),
                impression_time: event_time - 10_000,
                reasons: Reasons::NONE,
            },
            origin: Default::default(),
        })
    };
    let t0 = START + 120_500;
    match i {
        2_410 => part.extend((0..7).map(|n| farm(n, t0 + n * 100, 100 + n))),
        5_600 => part.push(farm(0, t0 - 1_000, 99)),
        _ => {}
    }
}

struct Memory {
    parts: Vec<Vec<Item>>,
    next: Vec<usize>,
}

/// The source of this worker's partitions `mine`, from their start or from `restore`, keeping
/// its cuts in `cuts`.
fn memory_source<'s>(
    scope: timely::dataflow::Scope<'s, u64>,
    mine: Vec<Vec<Item>>,
    cuts: Option<Rc<RefCell<Cuts>>>,
    restore: Option<SourceSnapshot>,
    flow: Option<Flow>,
) -> timely::dataflow::Stream<'s, u64, Vec<SourceEvent>> {
    let next = match &restore {
        Some(s) => s.positions.iter().map(|p| *p as usize).collect(),
        None => vec![0; mine.len()],
    };
    let reader = Memory { next, parts: mine };
    let opts = SourceOptions {
        cuts,
        restore,
        flow,
    };
    checkpointed_source(scope, "Memory", reader, time_config(), || 0, opts)
}

impl PartitionReader for Memory {
    fn partitions(&self) -> usize {
        self.parts.len()
    }
    fn position(&self, p: usize) -> u64 {
        self.next[p] as u64
    }
    fn poll(&mut self, p: usize, max: usize, out: &mut Vec<Record>) -> Polled {
        // Small reads, so partitions interleave differently from one run to another.
        let end = (self.next[p] + max.min(7)).min(self.parts[p].len());
        for item in &self.parts[p][self.next[p]..end] {
            out.push(match item {
                Item::Click(c) => Record::Click(c.clone()),
                Item::Bad(s) => Record::Rejected(Rejected {
                    code: "json".into(),
                    reason: "not JSON".into(),
                    origin: format!("mem/{p}"),
                    key: vec![],
                    payload: s.clone().into_bytes(),
                }),
            });
        }
        self.next[p] = end;
        if end == self.parts[p].len() {
            Polled::Finished
        } else {
            Polled::More
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Results {
    minute: BTreeMap<Row, Measures>,
    hour: BTreeMap<Row, Measures>,
    top: BTreeMap<RankKey, Ranking>,
    late: usize,
    rejected: usize,
}

/// Rows from their updates, keeping those at times before the row's start plus `until`
/// (later ones are retention retractions); rows that add up to nothing are left out.
fn fold(updates: Vec<(Row, u64, Measures)>, until: u64) -> BTreeMap<Row, Measures> {
    let mut rows: BTreeMap<Row, Measures> = BTreeMap::new();
    for (row, t, d) in updates {
        if t < row.0 + until {
            *rows.entry(row).or_default() += d;
        }
    }
    rows.retain(|_, m| *m != Measures::default());
    rows
}

/// The partitions worker `index` of `peers` reads (the aggregator's assignment).
fn mine(parts: &[Vec<Item>], index: usize, peers: usize) -> Vec<Vec<Item>> {
    parts
        .iter()
        .enumerate()
        .filter(|(p, _)| p % peers == index)
        .map(|(_, v)| v.clone())
        .collect()
}

fn run(workers: usize, parts: Vec<Vec<Item>>) -> Results {
    run_throttled(workers, parts, false)
}

/// [`run`], with the sources under the tightest flow control when `throttled`: over the
/// memory budget for good, each reads only once the dataflow has finished everything before
/// its capability, and no partition runs more than one tick ahead of the others.
fn run_throttled(workers: usize, parts: Vec<Vec<Item>>, throttled: bool) -> Results {
    let shared = Arc::new(Mutex::new((Vec::new(), Vec::new(), Vec::new(), 0, 0)));
    let out = shared.clone();
    let arranged = Arc::new(Mutex::new(Vec::new()));
    let arranged_out = arranged.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mine = mine(&parts, index, peers);
        let out = out.clone();
        let done = timely::dataflow::ProbeHandle::new();
        let flow = throttled.then(|| Flow {
            done: done.clone(),
            read_ahead_ms: 100,
            over_budget: Arc::new(AtomicBool::new(true)),
        });
        let traces = worker.dataflow::<u64, _, _>(move |scope| {
            let events = memory_source(scope, mine, None, None, flow);
            let mut acfg = aggregate_config();
            acfg.top.n = 3;
            acfg.top.window_minutes = vec![1, 5];
            let a = aggregate(events, &acfg);
            let (o1, o2, o3, o4, o5) = (out.clone(), out.clone(), out.clone(), out.clone(), out);
            let traces = Traces::arrange(&a);
            timely::dataflow::operators::Probe::probe_with(a.minute.inner.clone(), &done);
            a.minute
                .inspect(move |u| o1.lock().unwrap().0.push(u.clone()));
            a.hour
                .inspect(move |u| o2.lock().unwrap().1.push(u.clone()));
            a.top.inspect(move |u| o3.lock().unwrap().2.push(u.clone()));
            a.late.inspect(move |_| o4.lock().unwrap().3 += 1);
            a.rejected.inspect(move |_| o5.lock().unwrap().4 += 1);
            traces
        });
        while worker.step_or_park(None) {}
        // What the minute arrangement holds, for the same comparison as the update stream.
        let (mut cursor, storage) = cursor_list(adclick_dataflows::batches(&traces.minute));
        for ((_ad, row), times) in cursor.to_vec(&storage, |k| *k, |v| *v) {
            let mut a = arranged_out.lock().unwrap();
            a.extend(times.into_iter().map(|(t, d)| (row, t, d)));
        }
    })
    .unwrap()
    .join();
    let (minute_u, hour_u, top_u, late, rejected) = std::mem::take(&mut *shared.lock().unwrap());
    let mut r = Results {
        late,
        rejected,
        ..Default::default()
    };
    // Up to the time each row became final.
    r.minute = fold(minute_u, MINUTE_MS + LATENESS);
    r.hour = fold(hour_u, HOUR_MS + LATENESS);
    let from_trace = fold(
        std::mem::take(&mut *arranged.lock().unwrap()),
        MINUTE_MS + LATENESS,
    );
    assert_eq!(
        from_trace, r.minute,
        "the minute arrangement holds what the stream said"
    );
    let mut top: BTreeMap<(RankKey, Ranking), isize> = BTreeMap::new();
    for (k, t, d) in top_u {
        if t < adclick_dataflows::topn::retire_at(k.0.1, 48 * HOUR_MS) {
            *top.entry(k).or_default() += d;
        }
    }
    for ((key, ranking), n) in top {
        if n != 0 {
            assert_eq!(n, 1, "one ranking per window");
            assert!(
                r.top.insert(key, ranking).is_none(),
                "one ranking per window"
            );
        }
    }
    r
}

/// Equal rows, or a short account of the first differences (window, want, got).
fn assert_rows(got: &BTreeMap<Row, Measures>, want: &BTreeMap<Row, Measures>, what: &str) {
    let keys: std::collections::BTreeSet<_> = got.keys().chain(want.keys()).collect();
    let diff: Vec<_> = keys
        .into_iter()
        .filter(|k| got.get(*k) != want.get(*k))
        .map(|k| (k.0 as i64 - START as i64, want.get(k), got.get(k)))
        .take(4)
        .collect();
    assert!(
        diff.is_empty(),
        "{what}: {} vs {} rows, differing (window, want, got): {diff:?}",
        got.len(),
        want.len()
    );
}

/// The oracle: the brief's rules, written as plainly as possible.
fn oracle(parts: &[Vec<Item>]) -> Results {
    let mut r = Results::default();
    let mut on_time: Vec<RawClick> = Vec::new();
    for part in parts {
        let mut max_seen: Option<u64> = None;
        for item in part {
            match item {
                Item::Bad(_) => r.rejected += 1,
                Item::Click(c) => {
                    let wm = max_seen.map_or(0, |m| m.saturating_sub(BOUND));
                    if c.event_time < wm.saturating_sub(LATENESS) {
                        r.late += 1;
                    } else {
                        max_seen = Some(max_seen.map_or(c.event_time, |m| m.max(c.event_time)));
                        on_time.push(c.clone());
                    }
                }
            }
        }
    }
    let mut by_imp: BTreeMap<&str, Vec<&RawClick>> = BTreeMap::new();
    for c in &on_time {
        by_imp.entry(&c.impression_id).or_default().push(c);
    }
    let mut counted: Vec<&RawClick> = Vec::new();
    for clicks in by_imp.values() {
        let winner = clicks.iter().min_by_key(|c| Click::of(c).rank()).unwrap();
        let mut winner_seen = false;
        for c in clicks {
            let is_winner =
                !winner_seen && c.event_time == winner.event_time && c.click_id == winner.click_id;
            winner_seen |= is_winner;
            if is_winner {
                counted.push(c);
                continue;
            }
            for (map, len) in [(&mut r.minute, MINUTE_MS), (&mut r.hour, HOUR_MS)] {
                map.entry((window_start(c.event_time, len), c.labels.dims()))
                    .or_default()
                    .duplicates += 1;
            }
        }
    }
    let flagged = |who: fn(&RawClick) -> (&str, &str), limit: usize, window: u64| {
        let mut groups: BTreeMap<(&str, &str, u64), Vec<&RawClick>> = BTreeMap::new();
        for c in &counted {
            let (k, on) = who(c);
            if !k.is_empty() {
                groups
                    .entry((k, on, c.event_time / window))
                    .or_default()
                    .push(c);
            }
        }
        let mut out = std::collections::BTreeSet::new();
        for mut g in groups.into_values() {
            g.sort_by_key(|c| {
                let id = u128::from_str_radix(&c.click_id, 16).unwrap();
                (c.event_time, id, Click::of(c).impression)
            });
            out.extend(
                g.iter()
                    .skip(limit)
                    .map(|c| (&c.impression_id, &c.click_id)),
            );
        }
        out
    };
    let ip_flood = flagged(|c| (&c.traits.ip_hash, &c.labels.ad_id), 5, MINUTE_MS);
    let user_flood = flagged(
        |c| (&c.traits.user_id_hash, &c.labels.campaign_id),
        20,
        HOUR_MS,
    );
    for c in counted {
        let id = (&c.impression_id, &c.click_id);
        let reason = [
            (
                Reason::KnownBot,
                c.traits.reasons.contains(Reason::KnownBot),
            ),
            (
                Reason::Datacenter,
                c.traits.reasons.contains(Reason::Datacenter),
            ),
            (
                Reason::Headless,
                c.traits.reasons.contains(Reason::Headless),
            ),
            (Reason::IpFlood, ip_flood.contains(&id)),
            (Reason::UserFlood, user_flood.contains(&id)),
            (
                Reason::TooFast,
                c.event_time < c.traits.impression_time + 1_000,
            ),
        ]
        .into_iter()
        .find_map(|(r, yes)| yes.then_some(r));
        for (map, len) in [(&mut r.minute, MINUTE_MS), (&mut r.hour, HOUR_MS)] {
            let m = map
                .entry((window_start(c.event_time, len), c.labels.dims()))
                .or_default();
            match reason {
                None => m.clicks += 1,
                Some(r) => m.add_invalid(r, 1),
            }
        }
    }
    // Top 3 ads per (window length, window end, country or all).
    let mut per_ad: BTreeMap<(u64, Sym, (Sym, Sym)), i64> = BTreeMap::new();
    for ((minute, d), m) in &r.minute {
        for country in [all_countries(), d.country] {
            *per_ad
                .entry((*minute, country, (d.ad_id, d.advertiser_id)))
                .or_default() += m.clicks;
        }
    }
    let mut windows: BTreeMap<RankKey, BTreeMap<(Sym, Sym), i64>> = BTreeMap::new();
    for ((minute, country, ad), clicks) in per_ad {
        for m in [1u64, 5] {
            for k in 0..m {
                *windows
                    .entry((m, minute + k * MINUTE_MS, country))
                    .or_default()
                    .entry(ad)
                    .or_default() += clicks;
            }
        }
    }
    for (key, ads) in windows {
        let mut v: Ranking = ads.into_iter().filter(|(_, c)| *c > 0).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(3);
        if !v.is_empty() {
            r.top.insert(key, v);
        }
    }
    r
}

#[test]
fn matches_the_oracle_on_one_and_two_workers() {
    let parts = traffic();
    let expected = oracle(&parts);
    assert!(
        expected.late > 10 && expected.rejected > 10,
        "{} {}",
        expected.late,
        expected.rejected
    );
    assert!(
        expected.minute.values().map(|m| m.duplicates).sum::<i64>() > 100,
        "enough duplicates"
    );
    for r in [
        Reason::KnownBot,
        Reason::Datacenter,
        Reason::IpFlood,
        Reason::UserFlood,
        Reason::TooFast,
    ] {
        let n: i64 = expected.minute.values().map(|m| m.invalid(r)).sum();
        assert!(n > 10, "enough {} clicks: {n}", r.name());
    }
    let total_in: usize = parts.iter().map(Vec::len).sum();
    let counted: i64 = expected
        .minute
        .values()
        .map(|m| m.clicks + m.duplicates + m.invalid_total())
        .sum();
    assert_eq!(
        counted as usize + expected.late + expected.rejected,
        total_in,
        "tallies add up"
    );
    for (workers, throttled) in [(1, false), (2, false), (2, true)] {
        let got = run_throttled(workers, parts.clone(), throttled);
        let workers = format!("{workers}{}", if throttled { ", throttled" } else { "" });
        assert_eq!(got.late, expected.late, "late, {workers} workers");
        assert_eq!(
            got.rejected, expected.rejected,
            "rejected, {workers} workers"
        );
        assert_rows(
            &got.minute,
            &expected.minute,
            &format!("minute, {workers} workers"),
        );
        assert_rows(
            &got.hour,
            &expected.hour,
            &format!("hour, {workers} workers"),
        );
        assert_eq!(got.top, expected.top, "top-N, {workers} workers");
    }
}

/// Updates at times before `f` in `trace`, accumulated per row.
/// One worker's part of a checkpoint at frontier `f`.
#[derive(Clone, Default)]
struct Part {
    source: SourceSnapshot,
    winners: Vec<(u128, u64, u64, Dims)>,
    judged: Vec<(u128, u64, Judged)>,
    rows: RestoredRows,
    late: usize,
    rejected: usize,
}

fn time_config() -> TimeConfig {
    TimeConfig {
        out_of_orderness_ms: BOUND,
        allowed_lateness_ms: LATENESS,
        idle_timeout_ms: None,
        tick_ms: 100,
        idle_advance_lag_ms: None,
    }
}

fn aggregate_config() -> AggregateConfig {
    AggregateConfig {
        allowed_lateness_ms: LATENESS,
        ..Default::default()
    }
}

/// Runs the whole input, taking a checkpoint at `f` on the way: each worker's part.
fn checkpoint(workers: usize, parts: Vec<Vec<Item>>, f: u64) -> Vec<Part> {
    let saved = Arc::new(Mutex::new(vec![Part::default(); workers]));
    let out = saved.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mine = mine(&parts, index, peers);
        let cuts = Rc::new(RefCell::new(Cuts::default()));
        let names: Rc<RefCell<Vec<Name>>> = Rc::default();
        let counts: Rc<RefCell<(usize, usize)>> = Rc::default();
        let (cuts_in, names_in, counts_in, out_in) =
            (cuts.clone(), names.clone(), counts.clone(), out.clone());
        let (mut requests, mut traces) = worker.dataflow::<u64, _, _>(move |scope| {
            let events = memory_source(scope, mine, Some(cuts_in), None, None);
            let (input, requests) = scope.new_input::<Vec<u64>>();
            let save: SaveDedup = Box::new(move |at, state: &mut DedupState| {
                assert_eq!(at, f);
                let mut parts = out_in.lock().unwrap();
                parts[index].winners = state.winners().collect();
                parts[index].judged = state.judged().collect();
            });
            let acfg = aggregate_config();
            let checkpoints = DedupCheckpoints {
                requests: requests.broadcast(),
                save,
                unsaved_from: Rc::default(),
            };
            let resume = Resume::now(
                &acfg,
                DedupState::new(dedup_config()),
                None,
                Some(checkpoints),
            );
            let a = resumed_aggregate(events, &acfg, resume);
            let traces = Traces::arrange(&a);
            let c2 = counts_in.clone();
            let before_f =
                move |stamp: &timely::progress::Stamp<u64>| stamp.least().is_some_and(|t| *t < f);
            a.names.clone().inspect_core(move |e| {
                if let Ok((stamp, data)) = e
                    && before_f(stamp)
                {
                    names_in.borrow_mut().extend(data.iter().cloned());
                }
            });
            a.late.clone().inspect_core(move |e| {
                if let Ok((stamp, data)) = e
                    && before_f(stamp)
                {
                    counts_in.borrow_mut().0 += data.len();
                }
            });
            a.rejected.clone().inspect_core(move |e| {
                if let Ok((stamp, data)) = e
                    && before_f(stamp)
                {
                    c2.borrow_mut().1 += data.len();
                }
            });
            (input, traces)
        });
        if index == 0 {
            requests.advance_to(f);
            requests.send(f);
        }
        requests.close();
        while worker.step_or_park(None) {}
        let mut saved = out.lock().unwrap();
        let part = &mut saved[index];
        part.source = cuts
            .borrow()
            .at(f)
            .expect("the source crossed the checkpoint");
        part.rows = RestoredRows {
            names: names.borrow().clone(),
            ..traces.rows_before(f, None)
        };
        (part.late, part.rejected) = *counts.borrow();
    })
    .unwrap()
    .join();
    std::mem::take(&mut *saved.lock().unwrap())
}

fn dedup_config() -> DedupConfig {
    DedupConfig {
        horizon_ms: aggregate_config().dedup_horizon_ms,
        allowed_lateness_ms: LATENESS,
        lookback_ms: aggregate_config().invalid.longest_window_ms(),
    }
}

/// Goes on from a checkpoint's `saved` parts: the minute and hour rows and the tallies at
/// the end, checkpointed state included.
fn resume(parts: Vec<Vec<Item>>, saved: Vec<Part>) -> Results {
    resume_built_after(parts, saved, None).0
}

/// [`resume`], with each worker's dedup state built on a thread of its own `delay` after the
/// start, as a restart builds it; and whether every worker's restored minute rows were
/// readable (the frontier at the checkpoint's) before its state was built.
fn resume_built_after(
    parts: Vec<Vec<Item>>,
    saved: Vec<Part>,
    delay: Option<Duration>,
) -> (Results, bool) {
    let workers = saved.len();
    let shared = Arc::new(Mutex::new((Vec::new(), Vec::new(), 0, 0)));
    let out = shared.clone();
    let all_winners: Vec<_> = saved.iter().flat_map(|p| p.winners.clone()).collect();
    let all_judged: Vec<_> = saved.iter().flat_map(|p| p.judged.clone()).collect();
    let before: (usize, usize) = saved
        .iter()
        .fold((0, 0), |a, p| (a.0 + p.late, a.1 + p.rejected));
    let served_first = Arc::new(Mutex::new(Vec::new()));
    let served = served_first.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mine = mine(&parts, index, peers);
        let part = saved[index].clone();
        let mut dedup = DedupState::new(dedup_config());
        for (imp, t, click, dims) in &all_winners {
            if DedupState::owner(*imp, peers) == index {
                dedup.restore_winner(*imp, *t, *click, *dims);
            }
        }
        for (imp, t, judged) in &all_judged {
            if DedupState::owner(*imp, peers) == index {
                dedup.restore_judged(*imp, *t, *judged);
            }
        }
        let out = out.clone();
        let frontier = part.rows.frontier;
        let built = Arc::new(AtomicBool::new(delay.is_none()));
        let resume = |checkpoints| match delay {
            None => Resume::now(&aggregate_config(), dedup, Some(part.rows), checkpoints),
            Some(delay) => {
                let (state, fill_state) = Pending::later();
                let (recent, fill_recent) = Pending::later();
                let built = built.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    let clicks = restored_clicks(&aggregate_config(), frontier, &dedup);
                    built.store(true, Ordering::SeqCst);
                    fill_recent.fill(clicks);
                    fill_state.fill(dedup);
                });
                Resume {
                    dedup: state,
                    recent,
                    rows: Some(part.rows),
                    checkpoints,
                }
            }
        };
        let probe = worker.dataflow::<u64, _, _>(move |scope| {
            let events = memory_source(scope, mine, None, Some(part.source), None);
            let a = resumed_aggregate(events, &aggregate_config(), resume(None));
            let (o1, o2, o3, o4) = (out.clone(), out.clone(), out.clone(), out);
            let (probe, minute) = a.minute.probe();
            minute.inspect(move |u| o1.lock().unwrap().0.push(u.clone()));
            a.hour
                .inspect(move |u| o2.lock().unwrap().1.push(u.clone()));
            a.late.inspect(move |_| o3.lock().unwrap().2 += 1);
            a.rejected.inspect(move |_| o4.lock().unwrap().3 += 1);
            probe
        });
        let mut readable_unbuilt = false;
        while worker.step_or_park(None) {
            if !probe.less_than(&frontier) && !built.load(Ordering::SeqCst) {
                readable_unbuilt = true;
            }
        }
        served.lock().unwrap().push(readable_unbuilt);
    })
    .unwrap()
    .join();
    let served_first = served_first.lock().unwrap().iter().all(|s| *s);
    let (minute_u, hour_u, late, rejected) = std::mem::take(&mut *shared.lock().unwrap());
    let mut r = Results {
        late: before.0 + late,
        rejected: before.1 + rejected,
        ..Default::default()
    };
    // Restored rows arrive at the checkpoint's frontier, possibly after their window became
    // final: keep every update but the retention retractions.
    let retention = aggregate_config().retention;
    r.minute = fold(minute_u, MINUTE_MS + retention.minute_ms);
    r.hour = fold(hour_u, HOUR_MS + retention.hour_ms);
    (r, served_first)
}

/// The stream crosses an hour (10 minutes of it, the hour at +4 min), and the checkpoints
/// come more than a lateness after the hour: the restore leaves the clicks of windows closed
/// for every rule out of the rules' state (`InvalidConfig::open_from`), and the windows are
/// the oracle's all the same.
#[test]
fn resumed_across_an_hour_equals_the_oracle() {
    let mut parts = traffic_at(START - 4 * MINUTE_MS, 100);
    // One user's clicks on one campaign, from distinct IPs: 12 in the hour before, 15 in the
    // hour's first 8 s (before every checkpoint's frontier − lateness: held as a count), and 10
    // read after the checkpoints, of which the last 5 are beyond the user rule's 20.
    let times = (0..12)
        .map(|k| START - 110_000 + k * 5_000)
        .chain((0..15).map(|k| START + 500 + k * 500))
        .chain((0..10).map(|k| START + 325_000 + k * 2_000));
    for (k, t) in times.enumerate() {
        let at = parts[0]
            .iter()
            .position(|it| matches!(it, Item::Click(c) if c.event_time >= t))
            .unwrap_or(parts[0].len());
        let click = RawClick {
            impression_id: format!("hour-user-{k}"),
            click_id: format!("{:032x}", 0xa000 + k),
            event_time: t,
            labels: Labels {
                ad_id: "ad_9".into(),
                campaign_id: "cmp_9".into(),
                ..Labels::default()
            },
            traits: Traits {
                ip_hash: format!("hour-ip-{k}"),
                user_id_hash: "hour-user".into(),
                impression_time: t - 10_000,
                reasons: Reasons::NONE,
            },
            origin: Default::default(),
        };
        parts[0].insert(at, Item::Click(click));
    }
    let expected = oracle(&parts);
    for f in [START + LATENESS + 10_000, START + LATENESS + 20_000] {
        for workers in [1, 2] {
            let saved = checkpoint(workers, parts.clone(), f);
            let got = resume(parts.clone(), saved);
            let what = format!(
                "checkpoint at the hour + {} ms, {workers} workers",
                f - START
            );
            assert_eq!(got.late, expected.late, "late, {what}");
            assert_rows(&got.minute, &expected.minute, &format!("minute, {what}"));
            assert_rows(&got.hour, &expected.hour, &format!("hour, {what}"));
        }
    }
}

#[test]
fn resumed_from_a_checkpoint_equals_the_oracle() {
    let parts = traffic();
    let expected = oracle(&parts);
    // Checkpoints in the middle of the stream and near its ends.
    for f in [START + 150_000, START + 20_000, START + 290_000] {
        for workers in [1, 2] {
            let saved = checkpoint(workers, parts.clone(), f);
            assert!(
                saved
                    .iter()
                    .any(|p| !p.winners.is_empty() && !p.rows.minute.is_empty()),
                "the checkpoint holds state"
            );
            let got = resume(parts.clone(), saved);
            let what = format!("checkpoint at +{} ms, {workers} workers", f - START);
            assert_eq!(got.late, expected.late, "late, {what}");
            assert_eq!(got.rejected, expected.rejected, "rejected, {what}");
            assert_rows(&got.minute, &expected.minute, &format!("minute, {what}"));
            assert_rows(&got.hour, &expected.hour, &format!("hour, {what}"));
        }
    }
}

/// A restart serves the restored rows before its dedup state is built (off the worker
/// threads), and the clicks after the checkpoint wait for that state: the result is the
/// oracle's all the same.
#[test]
fn restored_rows_are_served_while_the_dedup_state_is_built() {
    let parts = traffic();
    let expected = oracle(&parts);
    let f = START + 150_000;
    for workers in [1, 2] {
        let saved = checkpoint(workers, parts.clone(), f);
        let (got, served_first) =
            resume_built_after(parts.clone(), saved, Some(Duration::from_millis(400)));
        let what = format!("state built 400 ms late, {workers} workers");
        assert!(
            served_first,
            "the restored rows were readable first, {what}"
        );
        assert_eq!(got.late, expected.late, "late, {what}");
        assert_eq!(got.rejected, expected.rejected, "rejected, {what}");
        assert_rows(&got.minute, &expected.minute, &format!("minute, {what}"));
        assert_rows(&got.hour, &expected.hour, &format!("hour, {what}"));
    }
}

/// `parts` with each partition's records reordered within blocks of `block` (the last two of
/// partition 0, the clicks at the lateness limit, stay last), and the partitions themselves
/// permuted: another arrival order of the same clicks, no click further out of order than
/// the out-of-orderness bound allows for the flood traffic that matters here.
fn shuffled(parts: &[Vec<Item>], seed: u64, block: usize) -> Vec<Vec<Item>> {
    let mut rng = Rng(seed);
    let mut out: Vec<Vec<Item>> = parts
        .iter()
        .enumerate()
        .map(|(p, part)| {
            let keep = if p == 0 { 2 } else { 0 };
            let (body, tail) = part.split_at(part.len() - keep);
            let mut v = Vec::with_capacity(part.len());
            for chunk in body.chunks(block) {
                let mut c = chunk.to_vec();
                for i in (1..c.len()).rev() {
                    c.swap(i, rng.below(i as u64 + 1) as usize);
                }
                v.extend(c);
            }
            v.extend(tail.iter().cloned());
            v
        })
        .collect();
    // Partition 4 (empty) stays where it is; the others trade places.
    out[..4].rotate_left((seed % 4) as usize);
    out
}

#[test]
fn another_arrival_order_gives_identical_final_windows() {
    let parts = traffic();
    let first = run(2, parts.clone());
    for seed in [3, 11, 29] {
        let other = shuffled(&parts, seed, 8);
        let expected = oracle(&other);
        let got = run(2, other);
        assert_rows(
            &got.minute,
            &expected.minute,
            &format!("minute, seed {seed}"),
        );
        assert_rows(
            &got.minute,
            &first.minute,
            &format!("same as in order, seed {seed}"),
        );
        assert_rows(&got.hour, &first.hour, &format!("hour, seed {seed}"));
        assert_eq!(got.top, first.top, "top-N, seed {seed}");
        assert_eq!((got.late, got.rejected), (first.late, first.rejected));
    }
}
