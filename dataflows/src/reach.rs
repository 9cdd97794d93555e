//! Reach: distinct users per ad, campaign, campaign × country, publisher and country, per hour
//! and per day, as [`UserSketch`]es that merge (docs/design.md, "Unique users (reach)").
//!
//! ```text
//! judged clicks (±1, final reasons) ─▶ FinalUsers (exchanged by user) ─▶ ReachMerge (by group) ─▶ retire
//!                                      a minute's clicks, once final:     hour and day sketches,
//!                                      its users per group                retract old, insert new
//! ```
//!
//! A sketch cannot take a user back (a union has no inverse), but the dataflow's clicks change
//! until they are final: a dedup winner is replaced by an earlier click, a flood verdict flips
//! when a late click ranks before it. So users enter sketches only from *final* minutes. A
//! click's verdicts depend only on the clicks ranked before it (earlier event time), and an
//! on-time click is processed before its event time plus the allowed lateness; so every update
//! about a click of minute `[m, m + 1 min)` comes at a time before `m + 1 min + lateness`,
//! when the minute is final. FinalUsers keeps each minute's updates (exchanged by user, so a
//! click's retraction meets its insertion), consolidates them once the frontier passes that
//! time, and sends each group's users of the minute; ReachMerge folds them into the open hour
//! and day sketches and sends each changed sketch as a retraction of its old value and an
//! insertion of the new. Sketches therefore never go down and hold exactly the final users;
//! the current hour's reach trails the clicks by the lateness.

use std::collections::BTreeMap;

use differential_dataflow::{AsCollection, VecCollection};
use foldhash::HashMap;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

use crate::click::{Click, Dims, Sym};
use crate::rollup::Retention;
use crate::sketch::{UserSketch, user_hash};
use crate::time::{DAY_MS, HOUR_MS, MINUTE_MS, window_start};

/// Whether reach is computed, and for which traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReachConfig {
    pub enabled: bool,
    /// Also sketch every deduplicated click's user, billable or invalid (`traffic=all`).
    pub all_traffic: bool,
}

impl Default for ReachConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            all_traffic: true,
        }
    }
}

/// What a sketch's users are grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GroupBy {
    Ad,
    Campaign,
    CampaignCountry,
    Publisher,
    Country,
}

impl GroupBy {
    pub const ALL: [GroupBy; 5] = [
        GroupBy::Ad,
        GroupBy::Campaign,
        GroupBy::CampaignCountry,
        GroupBy::Publisher,
        GroupBy::Country,
    ];

    /// A group's dimensions: those it is by, and the owners that scope it for advertisers'
    /// keys (an ad's campaign and advertiser, a campaign's advertiser); the rest zero.
    pub fn dims(self, d: &Dims) -> Dims {
        let mut g = Dims::default();
        match self {
            GroupBy::Ad => {
                g.ad_id = d.ad_id;
                g.campaign_id = d.campaign_id;
                g.advertiser_id = d.advertiser_id;
            }
            GroupBy::Campaign => {
                g.campaign_id = d.campaign_id;
                g.advertiser_id = d.advertiser_id;
            }
            GroupBy::CampaignCountry => {
                g.campaign_id = d.campaign_id;
                g.advertiser_id = d.advertiser_id;
                g.country = d.country;
            }
            GroupBy::Publisher => g.publisher_id = d.publisher_id,
            GroupBy::Country => g.country = d.country,
        }
        g
    }

    /// The dimension queries seek a group by.
    pub fn primary(self, d: &Dims) -> Sym {
        match self {
            GroupBy::Ad => d.ad_id,
            GroupBy::Campaign | GroupBy::CampaignCountry => d.campaign_id,
            GroupBy::Publisher => d.publisher_id,
            GroupBy::Country => d.country,
        }
    }
}

/// One sketch's identity: a window (an hour or a day), what its users are grouped by, the
/// group's dimensions, and whether it counts billable clicks' users or every click's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Group {
    pub start: u64,
    pub len_ms: u64,
    pub by: GroupBy,
    pub billable: bool,
    pub dims: Dims,
}

impl Group {
    /// When no more users can join it: its end plus the lateness.
    fn final_at(&self, allowed_lateness_ms: u64) -> u64 {
        self.start + self.len_ms + allowed_lateness_ms
    }
}

/// A group's users in one final minute, as sorted user hashes.
type Part = ((u64, GroupBy, bool, Dims), Vec<u64>);

/// A minute's clicks' updates, with the capability of the time it is final.
type Minute = (Capability<u64>, Vec<(Seen, i64)>);

/// A click as reach sees it: its user (hashed), its dimensions, whether it is billable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Seen {
    user: u64,
    dims: Dims,
    billable: bool,
}

/// The user a click counts as: its user id's fingerprint, else its address's; none without
/// either.
pub fn user_of(c: &Click) -> Option<u64> {
    c.user.or(c.ip).map(|s| user_hash(s.0))
}

fn route(by: GroupBy, billable: bool, d: &Dims) -> u64 {
    let mut h = (by as u64) << 1 | u64::from(billable);
    for s in [
        d.ad_id,
        d.campaign_id,
        d.advertiser_id,
        d.publisher_id,
        d.country,
    ] {
        h = (h ^ s.0)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(23);
    }
    h
}

/// The hour and day sketches of `judged`, the counted clicks with their final reasons (±1
/// updates: a retraction when a click is replaced or its verdict changes). `restored` is a
/// checkpoint's sketches, at its frontier − 1; `judged` then also carries the restored recent
/// clicks with their verdicts at that time, for the minutes not yet final.
///
/// Sketches are not retired here: their arrangement retires them ([`arrange`]).
pub fn reach<'s>(
    judged: Stream<'s, u64, Vec<(Click, u64, i64)>>,
    restored: Stream<'s, u64, Vec<(Group, UserSketch)>>,
    cfg: &ReachConfig,
    allowed_lateness_ms: u64,
) -> VecCollection<'s, u64, (Group, UserSketch), isize> {
    let parts = final_users(judged, cfg.all_traffic, allowed_lateness_ms);
    merge(parts, restored, allowed_lateness_ms)
}

/// The sketches by (what they group by, the group's seek dimension), what queries read; each
/// window's sketches leave at its end plus its granularity's retention, read back from the
/// arrangement when that time comes ([`crate::retire::arrange_retiring`]) rather than kept
/// as a second copy of every live sketch in a queue.
pub fn arrange(
    sketches: VecCollection<'_, u64, (Group, UserSketch), isize>,
    retention: Retention,
) -> (crate::ReachTrace, crate::touched::TouchedHandle<(u64, u64)>) {
    let (arranged, touched) = crate::retire::arrange_retiring(
        sketches.map(|(g, s)| ((g.by, g.by.primary(&g.dims)), (g, s))),
        |(g, _): &(Group, UserSketch)| (g.len_ms, g.start),
        move |&(len_ms, start): &(u64, u64)| {
            let keep = if len_ms == DAY_MS {
                retention.day_ms
            } else {
                retention.hour_ms
            };
            start.saturating_add(len_ms + keep)
        },
        window_sketches,
        "ReachByGroup",
    );
    (arranged.trace, touched)
}

/// A sketch as its arrangement keeps it: by (what it groups by, the group's seek dimension).
type Keyed = ((GroupBy, Sym), (Group, UserSketch));

/// The sketches of window `(len_ms, start)` in `trace` (their count is 1; a replaced value
/// cancels out). Reads every sketch: a window retires once an hour at most.
fn window_sketches(
    trace: &mut crate::ReachTrace,
    &(len_ms, start): &(u64, u64),
) -> Vec<(Keyed, isize)> {
    use differential_dataflow::trace::cursor::{Cursor, cursor_list};
    let (mut cursor, storage) = cursor_list(crate::batches(trace));
    let mut out = Vec::new();
    while let Some(key) = cursor.get_key(&storage) {
        while let Some(v) = cursor.get_val(&storage) {
            if v.0.len_ms == len_ms && v.0.start == start {
                let mut n = 0isize;
                cursor.map_times(&storage, |_, d| n += *d);
                if n != 0 {
                    out.push(((*key, v.clone()), n));
                }
            }
            cursor.step_val(&storage);
        }
        cursor.step_key(&storage);
    }
    out
}

/// Each final minute's users per group, from the clicks' updates.
fn final_users<'s>(
    judged: Stream<'s, u64, Vec<(Click, u64, i64)>>,
    all_traffic: bool,
    lateness: u64,
) -> Stream<'s, u64, Vec<Part>> {
    judged.unary_frontier::<CapacityContainerBuilder<Vec<Part>>, _, _, _>(
        Exchange::new(|(c, _, _): &(Click, u64, i64)| user_of(c).unwrap_or(0)),
        "FinalUsers",
        move |_cap, _info| {
            // By the time the minute is final: its capability and its clicks' updates.
            let mut minutes: BTreeMap<u64, Minute> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    for (c, t, d) in data.drain(..) {
                        let Some(user) = user_of(&c) else { continue };
                        let f = window_start(c.event_time, MINUTE_MS) + MINUTE_MS + lateness;
                        // Only a restored click can come once its minute is final, and its
                        // user is in the restored sketches already.
                        if f <= t {
                            continue;
                        }
                        let seen = Seen {
                            user,
                            dims: c.dims,
                            billable: c.reasons.first().is_none(),
                        };
                        minutes
                            .entry(f)
                            .or_insert_with(|| (cap.delayed(&f, 0), Vec::new()))
                            .1
                            .push((seen, d));
                    }
                });
                while let Some(f) = minutes.first_key_value().map(|(f, _)| *f) {
                    if frontier.less_than(&f) {
                        break;
                    }
                    let (cap, mut seen) = minutes.remove(&f).expect("a pending minute");
                    differential_dataflow::consolidation::consolidate(&mut seen);
                    let minute = f - MINUTE_MS - lateness;
                    let mut groups: HashMap<(GroupBy, bool, Dims), Vec<u64>> = HashMap::default();
                    for (s, n) in seen {
                        if n <= 0 {
                            continue;
                        }
                        for by in GroupBy::ALL {
                            let dims = by.dims(&s.dims);
                            if all_traffic {
                                groups.entry((by, false, dims)).or_default().push(s.user);
                            }
                            if s.billable {
                                groups.entry((by, true, dims)).or_default().push(s.user);
                            }
                        }
                    }
                    output.session(&cap).give_iterator(
                        groups
                            .into_iter()
                            .map(|((by, b, dims), users)| ((minute, by, b, dims), users)),
                    );
                }
            }
        },
    )
}

/// The open hour and day sketches, each change sent as its old value's retraction and the new
/// value's insertion; restored sketches enter at their time and stay open while they can grow.
fn merge<'s>(
    parts: Stream<'s, u64, Vec<Part>>,
    restored: Stream<'s, u64, Vec<(Group, UserSketch)>>,
    lateness: u64,
) -> VecCollection<'s, u64, (Group, UserSketch), isize> {
    type Out = ((Group, UserSketch), u64, isize);
    parts
        .binary_frontier::<_, CapacityContainerBuilder<Vec<Out>>, _, _, _, _>(
            restored,
            Exchange::new(|((_, by, b, dims), _): &Part| route(*by, *b, dims)),
            Exchange::new(|(g, _): &(Group, UserSketch)| route(g.by, g.billable, &g.dims)),
            "ReachMerge",
            move |_cap, _info| {
                let mut open: HashMap<Group, UserSketch> = HashMap::default();
                type Batch = (Vec<Part>, Vec<(Group, UserSketch)>);
                let mut pending: BTreeMap<u64, (Capability<u64>, Batch)> = BTreeMap::new();
                move |(parts, parts_frontier), (restored, restored_frontier), output| {
                    parts.for_each(|cap, data| {
                        let Some(cap) = cap.retain_least(0) else {
                            return;
                        };
                        let entry = pending
                            .entry(*cap.time())
                            .or_insert_with(|| (cap, Default::default()));
                        entry.1.0.append(data);
                    });
                    restored.for_each(|cap, data| {
                        let Some(cap) = cap.retain_least(0) else {
                            return;
                        };
                        let entry = pending
                            .entry(*cap.time())
                            .or_insert_with(|| (cap, Default::default()));
                        entry.1.1.append(data);
                    });
                    let passed =
                        |t: &u64| !parts_frontier.less_equal(t) && !restored_frontier.less_equal(t);
                    while let Some(t) = pending.first_key_value().map(|(t, _)| *t) {
                        if !passed(&t) {
                            break;
                        }
                        let (cap, (parts, restored)) = pending.remove(&t).expect("pending");
                        let mut session = output.session(&cap);
                        for (g, s) in restored {
                            if g.final_at(lateness) > t {
                                open.insert(g, s.clone());
                            }
                            session.give(((g, s), t, 1));
                        }
                        let mut before: HashMap<Group, UserSketch> = HashMap::default();
                        for ((minute, by, billable, dims), users) in parts {
                            let part = UserSketch::of(users);
                            for len_ms in [HOUR_MS, DAY_MS] {
                                let g = Group {
                                    start: window_start(minute, len_ms),
                                    len_ms,
                                    by,
                                    billable,
                                    dims,
                                };
                                let s = open.entry(g).or_default();
                                before.entry(g).or_insert_with(|| s.clone());
                                s.merge(&part);
                            }
                        }
                        for (g, old) in before {
                            let new = &open[&g];
                            if *new == old {
                                continue;
                            }
                            if !old.is_empty() {
                                session.give(((g, old), t, -1));
                            }
                            session.give(((g, new.clone()), t, 1));
                        }
                        // Groups whose last minute has come can grow no more.
                        open.retain(|g, _| g.final_at(lateness) > t);
                    }
                }
            },
        )
        .as_collection()
}

/// A group's final sketch: what the sinks write, once per group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReachReport {
    pub group: Group,
    pub sketch: UserSketch,
}

/// Each group's final sketch, once, from the sketches' collection (as [`reach`] makes it).
///
/// A group is final at its end plus the lateness, the very time its last minute's users join
/// it, and its report is stamped with that time, a function of the input alone (as final
/// window reports are, `report.rs`): so a checkpoint at frontier `F` covers exactly the
/// groups final before `F`. A run resumed from it (`restored_at`) gets the checkpoint's
/// sketches at `F − 1`: those final before `F` were reported before the checkpoint and are
/// skipped; the others are reported at their final time, once, with the users of the minutes
/// after `F` merged in. Later updates of a group are its retention retraction: not news.
///
/// Each group's updates come from one worker (`ReachMerge` routes by group), so the
/// operator exchanges nothing; it keeps each open group's newest sketch until it is final
/// (a second copy of `ReachMerge`'s open groups, the last hour and day's).
pub fn final_reports<'s>(
    sketches: VecCollection<'s, u64, (Group, UserSketch), isize>,
    lateness: u64,
    restored_at: Option<u64>,
) -> Stream<'s, u64, Vec<ReachReport>> {
    use timely::dataflow::channels::pact::Pipeline;
    sketches
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<ReachReport>>, _, _, _>(
            Pipeline,
            "FinalReach",
            move |_cap, _info| {
                // Each open group's newest sketch, with the time it came at.
                let mut open: HashMap<Group, (u64, UserSketch)> = HashMap::default();
                // Groups by their final time, with a capability there.
                let mut due: BTreeMap<u64, (Capability<u64>, Vec<Group>)> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        for ((g, s), t, d) in data.drain(..) {
                            let f = g.final_at(lateness);
                            let reported = restored_at.is_some_and(|r| t < r && f < r);
                            if d <= 0 || t > f || reported {
                                continue;
                            }
                            match open.entry(g) {
                                std::collections::hash_map::Entry::Vacant(v) => {
                                    v.insert((t, s));
                                    due.entry(f)
                                        .or_insert_with(|| (cap.delayed(&f, 0), Vec::new()))
                                        .1
                                        .push(g);
                                }
                                // A sketch only grows: the newest is the union of all before.
                                std::collections::hash_map::Entry::Occupied(mut o) => {
                                    let (at, old) = o.get_mut();
                                    if t > *at {
                                        *at = t;
                                        *old = s;
                                    } else if t == *at {
                                        old.merge(&s);
                                    }
                                }
                            }
                        }
                    });
                    while let Some(f) = due.first_key_value().map(|(f, _)| *f) {
                        if frontier.less_equal(&f) {
                            break;
                        }
                        let (cap, groups) = due.remove(&f).expect("a due time");
                        output
                            .session(&cap)
                            .give_iterator(groups.into_iter().filter_map(|g| {
                                let (_, sketch) = open.remove(&g)?;
                                Some(ReachReport { group: g, sketch })
                            }));
                    }
                }
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invalid::{Reason, Reasons};
    use differential_dataflow::input::Input;
    use timely::dataflow::operators::generic::operator::empty;
    use timely::dataflow::operators::probe::Handle;
    use timely::dataflow::operators::{Capture, Probe};

    const LATENESS: u64 = 5 * MINUTE_MS;
    const T0: u64 = 1_776_686_400_000; // 2026-04-20T12:00:00Z, an hour's start

    fn click(n: u64, t: u64, ad: u64, user: Option<u64>, ip: Option<u64>) -> Click {
        Click {
            impression: u128::from(n),
            click: n,
            event_time: t,
            dims: Dims {
                ad_id: Sym(ad),
                campaign_id: Sym(100 + ad % 2),
                advertiser_id: Sym(200),
                publisher_id: Sym(300 + n % 3),
                country: Sym(400 + n % 2),
                device: Sym(500 + n % 4),
            },
            click_id: u128::from(n),
            ip: ip.map(Sym),
            user: user.map(Sym),
            impression_time: 0,
            reasons: Reasons::NONE,
        }
    }

    /// Feeds `updates` ((click, time, diff)) on `workers` workers, and returns every sketch
    /// as it stands at the end, by group (a group's updates consolidated to one value).
    fn run(
        workers: usize,
        updates: Vec<(Click, u64, i64)>,
        end: u64,
    ) -> BTreeMap<Group, UserSketch> {
        let mut all = sketch_updates(workers, updates, end);
        let mut by: BTreeMap<(Group, UserSketch), isize> = BTreeMap::new();
        for (d, _, r) in all.drain(..) {
            *by.entry(d).or_default() += r;
        }
        let mut out = BTreeMap::new();
        for ((g, s), r) in by {
            assert!(r == 0 || r == 1, "{g:?} held {r} times");
            if r == 1 {
                assert!(out.insert(g, s).is_none(), "two values for {g:?}");
            }
        }
        out
    }

    /// The sketches' collection as `reach` makes it from `updates` ((click, time, diff)) on
    /// `workers` workers (each click fed by one of them), its updates before `end`.
    fn sketch_updates(
        workers: usize,
        updates: Vec<(Click, u64, i64)>,
        end: u64,
    ) -> Vec<((Group, UserSketch), u64, isize)> {
        let (send, recv) = std::sync::mpsc::channel();
        let send = std::sync::Mutex::new(send);
        timely::execute(timely::Config::process(workers), move |worker| {
            let send = send.lock().unwrap().clone();
            let probe = Handle::new();
            let mut input = worker.dataflow::<u64, _, _>(|scope| {
                let (input, clicks) = scope.new_collection::<Click, i64>();
                reach(
                    clicks.inner,
                    empty(scope),
                    &ReachConfig::default(),
                    LATENESS,
                )
                .inner
                .probe_with(&probe)
                .capture_into(send);
                input
            });
            let mut updates = updates.clone();
            updates.sort_by_key(|u| u.1);
            for (c, t, d) in updates {
                if worker.index() == (c.click as usize) % worker.peers() {
                    input.advance_to(t);
                    input.update(c, d);
                }
            }
            input.advance_to(end);
            input.flush();
            worker.step_while(|| probe.less_than(&end));
        })
        .unwrap();
        recv.iter()
            .flat_map(|e| match e {
                timely::dataflow::operators::capture::Event::Messages(_, d) => d,
                _ => Vec::new(),
            })
            .filter(|u| u.1 < end)
            .collect()
    }

    fn users_of(
        out: &BTreeMap<Group, UserSketch>,
        by: GroupBy,
        len_ms: u64,
        billable: bool,
        primary: Sym,
    ) -> Vec<u64> {
        out.iter()
            .filter(|(g, _)| {
                g.by == by
                    && g.len_ms == len_ms
                    && g.billable == billable
                    && by.primary(&g.dims) == primary
            })
            .map(|(_, s)| s.estimate())
            .collect()
    }

    /// Sketches leave their arrangement at their window's end plus its granularity's
    /// retention, read back from it: the current value of a replaced sketch retires, its
    /// older values (cancelled) are never read, and the day outlives its hours.
    #[test]
    fn sketches_retire_from_their_arrangement() {
        use differential_dataflow::trace::TraceReader;
        use differential_dataflow::trace::cursor::{Cursor, cursor_list};

        let h = HOUR_MS;
        let retention = Retention {
            minute_ms: 0,
            hour_ms: h,
            day_ms: DAY_MS,
        };
        let group = |start: u64, len_ms: u64, ad: u64| Group {
            start,
            len_ms,
            by: GroupBy::Ad,
            billable: true,
            dims: Dims {
                ad_id: Sym(ad),
                ..Default::default()
            },
        };
        timely::execute_directly(move |worker| {
            let probe = Handle::new();
            let (mut input, mut trace) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, sketches) = scope.new_collection::<(Group, UserSketch), isize>();
                sketches.inner.clone().probe_with(&probe);
                (input, arrange(sketches, retention).0)
            });
            // Hour 0 (retires at 2 h), hour 1 (at 3 h), day 0 (at 2 days); hour 0's sketch
            // of ad 1 replaced by a larger one at 30 min.
            let (one, two) = (UserSketch::of(vec![1]), UserSketch::of(vec![1, 2]));
            input.insert((group(0, h, 1), one.clone()));
            input.insert((group(0, h, 2), one.clone()));
            input.insert((group(h, h, 1), one.clone()));
            input.insert((group(0, DAY_MS, 1), one.clone()));
            input.advance_to(h / 2);
            input.remove((group(0, h, 1), one.clone()));
            input.insert((group(0, h, 1), two.clone()));
            let live_at = |read_at: u64, trace: &mut crate::ReachTrace| {
                let (mut cursor, storage) = cursor_list(crate::batches(trace));
                let mut live = Vec::new();
                while cursor.key_valid(&storage) {
                    while let Some((g, s)) = cursor.get_val(&storage) {
                        let mut n = 0isize;
                        cursor.map_times(&storage, |t, d| {
                            if *t <= read_at {
                                n += d;
                            }
                        });
                        if n != 0 {
                            live.push((g.start, g.len_ms, g.dims.ad_id.0, s.estimate(), n));
                        }
                        cursor.step_val(&storage);
                    }
                    cursor.step_key(&storage);
                }
                live.sort();
                live
            };
            for (t, want) in [
                (
                    h,
                    vec![
                        (0, h, 1, 2, 1),
                        (0, h, 2, 1, 1),
                        (0, DAY_MS, 1, 1, 1),
                        (h, h, 1, 1, 1),
                    ],
                ),
                (2 * h, vec![(0, DAY_MS, 1, 1, 1), (h, h, 1, 1, 1)]),
                (3 * h, vec![(0, DAY_MS, 1, 1, 1)]),
                (2 * DAY_MS + 1, vec![]),
            ] {
                input.advance_to(t + 1);
                input.flush();
                worker.step_while(|| probe.less_than(input.time()));
                let mut upper = timely::progress::Antichain::new();
                loop {
                    trace.read_upper(&mut upper);
                    if !upper.less_equal(&t) {
                        break;
                    }
                    worker.step();
                }
                assert_eq!(live_at(t, &mut trace), want, "at {t}");
            }
        });
    }

    /// Users from user ids, else addresses; a click with neither is nobody; a user's clicks
    /// count once; a click replaced (retracted) before its minute is final leaves no trace, and
    /// one that turns invalid is in `all` only; 1 and 2 workers agree.
    #[test]
    fn final_users_per_group_hour_and_day() {
        let mut updates = Vec::new();
        // ad 1, hour 0: users 1..=3 by id (user 1 twice), address 9 without an id, nobody.
        for (n, user, ip) in [
            (1, Some(1), Some(50)),
            (2, Some(1), Some(51)),
            (3, Some(2), None),
            (4, Some(3), Some(52)),
            (5, None, Some(9)),
            (6, None, None),
        ] {
            updates.push((click(n, T0 + n * 1_000, 1, user, ip), T0 + n * 1_000, 1));
        }
        // User 4's click, replaced later (still before the minute is final) by nothing.
        let gone = click(7, T0 + 7_000, 1, Some(4), None);
        updates.push((gone, T0 + 7_000, 1));
        updates.push((gone, T0 + 2 * MINUTE_MS, -1));
        // User 5's click turns invalid (a flood verdict) within the lateness.
        let flagged = click(8, T0 + 8_000, 1, Some(5), None);
        let mut invalid = flagged;
        invalid.reasons = Reasons::of([Reason::IpFlood]);
        updates.push((flagged, T0 + 8_000, 1));
        updates.push((flagged, T0 + 3 * MINUTE_MS, -1));
        updates.push((invalid, T0 + 3 * MINUTE_MS, 1));
        // ad 1, next hour: user 1 again; ad 2: user 6.
        updates.push((
            click(9, T0 + HOUR_MS + 1, 1, Some(1), None),
            T0 + HOUR_MS + 1,
            1,
        ));
        updates.push((click(10, T0 + 5, 2, Some(6), None), T0 + 5, 1));
        let end = T0 + DAY_MS + LATENESS + 1;
        let one = run(1, updates.clone(), end);
        assert_eq!(one, run(2, updates, end));
        assert_eq!(users_of(&one, GroupBy::Ad, HOUR_MS, true, Sym(1)), [4, 1]);
        assert_eq!(users_of(&one, GroupBy::Ad, HOUR_MS, false, Sym(1)), [5, 1]);
        // Campaign 101 (ad 1) for the day: 1, 2, 3, address 9 (and 5, invalid, in all).
        assert_eq!(
            users_of(&one, GroupBy::Campaign, DAY_MS, true, Sym(101)),
            [4]
        );
        assert_eq!(
            users_of(&one, GroupBy::Campaign, DAY_MS, false, Sym(101)),
            [5]
        );
        assert_eq!(
            users_of(&one, GroupBy::Campaign, DAY_MS, true, Sym(100)),
            [1]
        );
        // Every group is sketched by its own dimensions and owners only.
        for g in one.keys() {
            assert_eq!(g.dims, g.by.dims(&g.dims));
            assert_eq!(g.dims.device, Sym::default());
        }
    }

    /// An hour sketch is the same whether its users arrive in one minute or spread over the
    /// hour, and its value at the end is a union, never a sum: a user in every minute counts
    /// once.
    #[test]
    fn an_hour_merges_its_minutes() {
        let mut updates = Vec::new();
        for m in 0..60u64 {
            for u in 0..10u64 {
                let n = m * 100 + u;
                let t = T0 + m * MINUTE_MS + u;
                updates.push((click(n, t, 3, Some(u + m % 2), None), t, 1));
            }
        }
        let out = run(2, updates, T0 + 2 * HOUR_MS);
        assert_eq!(users_of(&out, GroupBy::Ad, HOUR_MS, true, Sym(3)), [11]);
    }

    /// The oracle: random clicks (a hot ad with 20,000 users in an hour, beside small groups),
    /// some replaced and some turned invalid before their minute is final, fed on 2 workers;
    /// every group's sketch against the exact distinct users of the final clicks: equal up
    /// to `EXACT_MAX` users, within 3 standard errors above.
    #[test]
    fn sketches_match_exact_distinct_users() {
        use crate::sketch::{EXACT_MAX, STANDARD_ERROR};
        use std::collections::{BTreeSet, HashMap as StdMap};
        let rand = |i: u64, salt: u64| xxhash_rust::xxh3::xxh3_64_with_seed(&i.to_le_bytes(), salt);
        let mut updates = Vec::new();
        let mut finals: Vec<Click> = Vec::new();
        for n in 0..60_000u64 {
            let hot = n % 2 == 0;
            let ad = if hot { 0 } else { 1 + rand(n, 1) % 40 };
            let user = if hot {
                rand(n, 2) % 20_000
            } else {
                rand(n, 2) % 300
            };
            let t = T0 + rand(n, 3) % (2 * HOUR_MS);
            let by_ip = rand(n, 4) % 5 == 0;
            let mut c = click(n, t, ad, (!by_ip).then_some(user), Some(1_000_000 + user));
            updates.push((c, t, 1));
            match rand(n, 5) % 10 {
                0 => updates.push((c, t + LATENESS / 2, -1)),
                1 => {
                    updates.push((c, t + 1_000, -1));
                    c.reasons = Reasons::of([Reason::UserFlood]);
                    updates.push((c, t + 1_000, 1));
                    finals.push(c);
                }
                _ => finals.push(c),
            }
        }
        let out = run(2, updates, T0 + DAY_MS + HOUR_MS);
        let mut exact: StdMap<Group, BTreeSet<u64>> = StdMap::new();
        for c in &finals {
            let user = user_of(c).expect("every click has an address");
            for by in GroupBy::ALL {
                for len_ms in [HOUR_MS, DAY_MS] {
                    for billable in [false, true] {
                        if billable && c.reasons.first().is_some() {
                            continue;
                        }
                        let g = Group {
                            start: window_start(c.event_time, len_ms),
                            len_ms,
                            by,
                            billable,
                            dims: by.dims(&c.dims),
                        };
                        exact.entry(g).or_default().insert(user);
                    }
                }
            }
        }
        assert_eq!(
            out.keys().collect::<BTreeSet<_>>(),
            exact.keys().collect::<BTreeSet<_>>()
        );
        let mut dense = 0;
        for (g, users) in &exact {
            let (n, e) = (users.len() as u64, out[g].estimate());
            if n as usize <= EXACT_MAX {
                assert_eq!(e, n, "{g:?}");
            } else {
                dense += 1;
                let err = (e as f64 - n as f64).abs() / n as f64;
                assert!(err <= 3.0 * STANDARD_ERROR, "{g:?}: {e} for {n}");
            }
        }
        assert!(dense >= 4, "the hot ad's groups are dense");
    }

    /// The final reports of a sketches' collection `updates`, each with its time; resumed
    /// from the collection as it stood before `from` (at `from − 1`) when `from > 0`.
    fn reports_of(
        updates: &[((Group, UserSketch), u64, isize)],
        from: u64,
    ) -> Vec<(u64, ReachReport)> {
        let (send, recv) = std::sync::mpsc::channel();
        let updates = updates.to_vec();
        timely::execute_directly(move |worker| {
            let probe = Handle::new();
            let mut input = worker.dataflow::<u64, _, _>(|scope| {
                let (input, sketches) = scope.new_collection::<(Group, UserSketch), isize>();
                final_reports(sketches, LATENESS, (from > 0).then_some(from))
                    .probe_with(&probe)
                    .capture_into(send);
                input
            });
            if from > 0 {
                let mut before: BTreeMap<(Group, UserSketch), isize> = BTreeMap::new();
                for (d, _, r) in updates.iter().filter(|u| u.1 < from) {
                    *before.entry(d.clone()).or_default() += r;
                }
                input.advance_to(from - 1);
                for (d, r) in before.into_iter().filter(|(_, r)| *r != 0) {
                    input.update(d, r);
                }
            }
            let mut times: Vec<u64> = updates.iter().map(|u| u.1).filter(|t| *t >= from).collect();
            times.sort();
            times.dedup();
            for t in times {
                input.advance_to(t);
                for (d, _, r) in updates.iter().filter(|u| u.1 == t) {
                    input.update(d.clone(), *r);
                }
                input.flush();
                worker.step_while(|| probe.less_than(input.time()));
            }
        });
        let mut out: Vec<(u64, ReachReport)> = recv
            .iter()
            .flat_map(|e| match e {
                timely::dataflow::operators::capture::Event::Messages(t, d) => {
                    let t = *t.least().expect("a totally ordered time");
                    d.into_iter().map(|r| (t, r)).collect()
                }
                _ => Vec::new(),
            })
            .collect();
        out.sort();
        out
    }

    /// Every group's final sketch is reported once, at its end plus the lateness, equal to
    /// the sketch the collection holds then; a run resumed from a checkpoint at any `F`
    /// reports exactly the uninterrupted run's reports from `F` on.
    #[test]
    fn final_reports_once_each_and_a_resumed_run_repeats_none() {
        let mut clicks = Vec::new();
        for n in 0..400u64 {
            let t = T0 + n * 37_000;
            clicks.push((click(n, t, n % 3, Some(n % 17), None), t, 1));
        }
        let end = T0 + DAY_MS + HOUR_MS;
        // The sketches' collection, as `reach` makes it.
        let updates = sketch_updates(1, clicks, end);
        let whole = reports_of(&updates, 0);
        let groups: std::collections::BTreeSet<Group> =
            whole.iter().map(|(_, r)| r.group).collect();
        assert_eq!(groups.len(), whole.len(), "a group reported twice");
        let hours = whole
            .iter()
            .filter(|(_, r)| r.group.len_ms == HOUR_MS)
            .count();
        assert!(hours > 20 && whole.len() > hours, "{} reports", whole.len());
        for (t, r) in &whole {
            assert_eq!(*t, r.group.final_at(LATENESS));
            // The sketch the collection holds once the group is final.
            let mut held: BTreeMap<UserSketch, isize> = BTreeMap::new();
            for ((g, s), _, d) in updates.iter().filter(|u| u.1 <= *t) {
                if *g == r.group {
                    *held.entry(s.clone()).or_default() += d;
                }
            }
            held.retain(|_, d| *d != 0);
            assert_eq!(
                held.into_iter().collect::<Vec<_>>(),
                vec![(r.sketch.clone(), 1)]
            );
        }
        let finals: Vec<u64> = whole.iter().map(|(t, _)| *t).collect();
        for f in [
            T0 + 1,
            finals[0],
            finals[0] + 1,
            finals[5],
            finals[whole.len() / 2] + 1,
        ] {
            let mut joined: Vec<_> = whole.iter().filter(|(t, _)| *t < f).cloned().collect();
            let resumed = reports_of(&updates, f);
            assert!(resumed.iter().all(|(t, _)| *t >= f), "F = {f}");
            joined.extend(resumed);
            joined.sort();
            assert_eq!(joined, whole, "resumed at F = {f}");
        }
    }
}
