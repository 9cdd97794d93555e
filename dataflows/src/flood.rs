//! The behavioural invalid-traffic rules (SIVT) that judge a click by the other clicks of its
//! key: more than `max_clicks` deduplicated clicks from one IP on one ad in one minute, or from
//! one user on one campaign in one hour, and every click beyond that count is flagged.
//!
//! A verdict is a function of the *set* of deduplicated clicks, never of arrival order: within
//! a key's tumbling event-time window the clicks are ranked by (event time, click id, impression)
//! and the first `max_clicks` are allowed. A late click (within the allowed lateness) that
//! ranks earlier pushes another click past the limit; a dedup retraction pulls one back. Both
//! flow downstream as retractions and insertions of the affected clicks, stamped with the time
//! at which the verdict changed, so final windows are exact however the clicks arrived.
//!
//! State: every counted click of a window until the frontier passes the window's end plus the
//! allowed lateness, when no click of it can arrive any more. Its size is the click rate times
//! (window + allowed lateness), for each rule.

use std::collections::BTreeMap;
use std::rc::Rc;

use foldhash::HashMap;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use differential_dataflow::{AsCollection, VecCollection};

use crate::click::{Click, Measures, Row};
use crate::invalid::Reason;
use crate::time::{HOUR_MS, MINUTE_MS, open_from, window_start};

/// "More than `max_clicks` in one tumbling window of `window_ms`".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FloodRule {
    pub max_clicks: u32,
    pub window_ms: u64,
}

/// The dataflow's invalid-traffic rules; `None` turns a flood rule off, and a `too_fast_ms`
/// of 0 turns that rule off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidConfig {
    pub ip_flood: Option<FloodRule>,
    pub user_flood: Option<FloodRule>,
    /// A click sooner than this after its impression was served is `too_fast`.
    pub too_fast_ms: u64,
}

impl Default for InvalidConfig {
    fn default() -> Self {
        Self {
            ip_flood: Some(FloodRule {
                max_clicks: 5,
                window_ms: MINUTE_MS,
            }),
            user_flood: Some(FloodRule {
                max_clicks: 20,
                window_ms: HOUR_MS,
            }),
            too_fast_ms: 1_000,
        }
    }
}

impl InvalidConfig {
    /// Whether `click` came sooner after its impression than a person can click. Unknown
    /// impression times (old links, partner feeds) are never too fast.
    pub fn too_fast(&self, click: &Click) -> bool {
        click.impression_time != 0
            && click.event_time < click.impression_time.saturating_add(self.too_fast_ms)
    }

    /// Where the rules' open windows at `frontier` start, the earliest of them: a click before
    /// it is in a complete window of every rule, which a restore there would drop at once.
    pub fn open_from(&self, frontier: u64, allowed_lateness_ms: u64) -> u64 {
        [self.ip_flood, self.user_flood]
            .into_iter()
            .flatten()
            .map(|r| open_from(r.window_ms, frontier, allowed_lateness_ms))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The longest flood window: how much event time the rules look back.
    pub fn longest_window_ms(&self) -> u64 {
        [self.ip_flood, self.user_flood]
            .into_iter()
            .flatten()
            .map(|r| r.window_ms)
            .max()
            .unwrap_or(0)
    }
}

/// Which clicks a rule groups together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flood {
    /// One IP on one ad.
    Ip,
    /// One user on one campaign.
    User,
}

impl Flood {
    pub fn reason(self) -> Reason {
        match self {
            Flood::Ip => Reason::IpFlood,
            Flood::User => Reason::UserFlood,
        }
    }

    /// (who, on what); `None` when the click does not say who (no IP or user hash).
    fn key(self, c: &Click) -> Option<(u64, u64)> {
        match self {
            Flood::Ip => c.ip.map(|ip| (ip.0, c.dims.ad_id.0)),
            Flood::User => c.user.map(|u| (u.0, c.dims.campaign_id.0)),
        }
    }
}

/// Where a click ranks among its window's clicks: unique per click, and independent of
/// arrival order. The reasons the rules before this one found come last: when one of them
/// changes its verdict, the click leaves in one version and comes back in another, at the
/// same place.
type Rank = (u64, u128, u128, u8);

/// Where a group lives: its window, and its key in the window.
type GroupAt = (u64, (u64, u64));

fn rank(c: &Click, own: Reason) -> Rank {
    (
        c.event_time,
        c.click_id,
        c.impression,
        c.reasons.without(own).0,
    )
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The click without this rule's reason.
    click: Click,
    /// How often the click is counted (1 while it is, transiently otherwise).
    weight: i64,
    /// The verdict sent downstream, if any.
    flagged: Option<bool>,
    /// While a batch is applied: what was sent for the click before it (verdict, weight),
    /// once the batch changed it.
    before: Option<(Option<bool>, i64)>,
}

impl Entry {
    fn new(click: &Click, own: Reason) -> Self {
        Entry {
            click: Click {
                reasons: click.reasons.without(own),
                ..*click
            },
            weight: 0,
            flagged: None,
            before: None,
        }
    }

    /// The click as sent downstream with a verdict of `flood`'s rule.
    fn judged(&self, flood: Flood, flagged: bool) -> Click {
        let mut c = self.click;
        if flagged {
            c.reasons.insert(flood.reason());
        }
        c
    }

    /// Remembers what was sent before this batch's first change to the click.
    fn touch(&mut self) -> bool {
        let first = self.before.is_none();
        if first {
            self.before = Some((self.flagged, self.weight));
        }
        first
    }
}

/// One key's clicks in one window, in rank order: a sorted vector, since almost every key
/// holds one or a few clicks (a map's node would cost ten times the click), and clicks arrive
/// nearly in rank order (inserted at or near the end).
#[derive(Default)]
struct Group {
    /// Counted clicks ranked before every entry, whose verdicts can no longer change (see
    /// [`FloodState::retire`]): kept as their number alone, which places the entries.
    frozen: u32,
    entries: Vec<Entry>,
}

impl Group {
    fn find(&self, r: &Rank, own: Reason) -> Result<usize, usize> {
        self.entries
            .binary_search_by(|e| rank(&e.click, own).cmp(r))
    }

    /// The entry of `click`, made if new, and its rank if this is the batch's first change
    /// to it.
    fn entry(&mut self, click: &Click, own: Reason) -> (&mut Entry, Option<Rank>) {
        let r = rank(click, own);
        let i = match self.find(&r, own) {
            Ok(i) => i,
            Err(i) => {
                if self.entries.capacity() == 0 {
                    self.entries.reserve_exact(1);
                }
                self.entries.insert(i, Entry::new(click, own));
                i
            }
        };
        let e = &mut self.entries[i];
        let first = e.touch().then_some(r);
        (e, first)
    }

    /// Sets the verdicts after a batch of changes, appending what changed downstream. Only
    /// the first `limit + changed` counted clicks can have moved across the limit (each
    /// change shifts the ranks behind it by one); changed clicks further back are beyond it.
    /// `changed` holds the ranks of the clicks the batch changed, and is left empty.
    fn settle(
        &mut self,
        limit: usize,
        flood: Flood,
        changed: &mut Vec<Rank>,
        out: &mut Vec<(Click, i64)>,
    ) {
        let own = flood.reason();
        let reach = limit + changed.len();
        let (mut position, mut walked) = (self.frozen as usize, 0);
        for e in &mut self.entries {
            if position >= reach {
                break;
            }
            walked += 1;
            if e.weight <= 0 {
                continue;
            }
            let desired = position >= limit;
            if e.flagged != Some(desired) {
                if e.touch() {
                    changed.push(rank(&e.click, own));
                }
                e.flagged = Some(desired);
            }
            position += 1;
        }
        let mut removed = false;
        for r in changed.drain(..) {
            let i = self.find(&r, own).expect("a changed click");
            let e = &mut self.entries[i];
            if e.weight > 0 && i >= walked {
                e.flagged = Some(true);
            }
            let now = (e.weight > 0).then(|| (e.flagged.unwrap_or(true), e.weight));
            let before = match e.before.take() {
                Some((Some(f), w)) if w > 0 => Some((f, w)),
                _ => None,
            };
            if now != before {
                if let Some((f, n)) = before {
                    out.push((e.judged(flood, f), -n));
                }
                if let Some((f, n)) = now {
                    out.push((e.judged(flood, f), n));
                }
            }
            removed |= e.weight <= 0;
        }
        if removed {
            self.entries.retain(|e| e.weight > 0);
        }
    }
}

/// Changes waiting for the frontier to pass their time.
type Pending = BTreeMap<u64, (Capability<u64>, Vec<(Click, i64)>)>;

/// One worker's share of one rule's state: the windows not yet retired, each with its keys'
/// ranked clicks.
pub struct FloodState {
    flood: Flood,
    rule: FloodRule,
    allowed_lateness_ms: u64,
    windows: BTreeMap<u64, HashMap<(u64, u64), Group>>,
    /// The cut at which [`FloodState::retire`] next freezes clicks.
    next_freeze: u64,
}

impl FloodState {
    pub fn new(flood: Flood, rule: FloodRule, allowed_lateness_ms: u64) -> Self {
        Self {
            flood,
            rule,
            allowed_lateness_ms,
            windows: BTreeMap::new(),
            next_freeze: 0,
        }
    }

    /// Clicks held whole (those whose verdict can still change), over every window.
    pub fn len(&self) -> usize {
        self.windows
            .values()
            .flat_map(|keys| keys.values())
            .map(|g| g.entries.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    fn window(&self, c: &Click) -> u64 {
        c.event_time / self.rule.window_ms.max(1)
    }

    /// Applies one time's changes to the counted clicks and appends the changes of verdicts
    /// they cause (as retractions and insertions of the clicks affected). Clicks without a key
    /// pass through unjudged.
    pub fn apply(&mut self, changes: Vec<(Click, i64)>, out: &mut Vec<(Click, i64)>) {
        let own = self.flood.reason();
        // The first change of each click, by group: one list for the batch. A list in each
        // group, made and dropped by every batch that touched it, cost more time and memory
        // than the rule's work (docs/benchmarks.md).
        let mut touched: Vec<(GroupAt, Rank)> = Vec::new();
        for (click, diff) in changes {
            let Some(key) = self.flood.key(&click) else {
                out.push((click, diff));
                continue;
            };
            let w = self.window(&click);
            let group = self.windows.entry(w).or_default().entry(key).or_default();
            let (entry, first) = group.entry(&click, own);
            entry.weight += diff;
            if let Some(r) = first {
                touched.push(((w, key), r));
            }
        }
        touched.sort_unstable_by_key(|(group, _)| *group);
        let limit = self.rule.max_clicks as usize;
        let mut changed = Vec::new();
        for same in touched.chunk_by(|a, b| a.0 == b.0) {
            let (w, key) = same[0].0;
            changed.extend(same.iter().map(|(_, r)| *r));
            let groups = self.windows.get_mut(&w).expect("a touched window");
            let group = groups.get_mut(&key).expect("a touched key");
            group.settle(limit, self.flood, &mut changed, out);
            if group.entries.is_empty() && group.frozen == 0 {
                groups.remove(&key);
                if groups.is_empty() {
                    self.windows.remove(&w);
                }
            }
        }
    }

    /// Puts back clicks counted before a checkpoint, sending nothing downstream (the restored
    /// rows hold their verdicts), and appends each to `judged` with this rule's verdict: the
    /// next rule ranks a click by the verdicts before it, and reach reads the users of minutes
    /// not final yet from them. All of a checkpoint's clicks come in one call, before any
    /// change: a verdict is a function of its window's clicks, and the restore sees them all.
    /// `frontier` bounds every change still to come, as for [`FloodState::retire`]. Only the
    /// judged clicks `wanted` downstream are appended; every click counts for the verdicts.
    pub fn restore(
        &mut self,
        batches: Vec<Vec<Click>>,
        frontier: u64,
        wanted: &dyn Fn(&Click) -> bool,
        judged: &mut Vec<Click>,
    ) {
        let (flood, own) = (self.flood, self.flood.reason());
        let len = self.rule.window_ms.max(1);
        let place = |c: &Click| flood.key(c).map(|key| (c.event_time / len, key));
        // The batches as they arrived, moved once into a buffer of their size: gathering them
        // into a growing vector copied every click twice over, into fresh pages, and was a
        // quarter of a restore's time.
        let mut clicks = Vec::with_capacity(batches.iter().map(Vec::len).sum());
        for mut batch in batches {
            clicks.append(&mut batch);
        }
        // One sort puts each group's clicks together, in rank order: every group is then built
        // once, at its size (a restore holds millions of clicks; growing each group click by
        // click, or inserting each at its rank, was most of a restore's time).
        clicks.sort_unstable_by_key(|c| (place(c), rank(c, own)));
        let limit = self.rule.max_clicks as usize;
        // The clicks a retire at `frontier` would freeze are counted, never held whole: for an
        // hour's window and minutes of lateness, that is nearly all of them.
        let cut = self.freeze_cut(frontier);
        for same in clicks.chunk_by(|a, b| place(a) == place(b)) {
            let Some((w, key)) = place(&same[0]) else {
                judged.extend(same.iter().filter(|c| wanted(c)));
                continue;
            };
            let old = same.partition_point(|c| c.event_time < cut);
            let mut group = Group {
                entries: Vec::with_capacity(same.len() - old),
                ..Group::default()
            };
            let (mut ranked, mut previous) = (0, None);
            for (i, c) in same.iter().enumerate() {
                let r = Some(rank(c, own));
                let first = previous != r;
                previous = r;
                ranked += usize::from(first);
                let flagged = ranked > limit;
                let entry = Entry {
                    weight: 1,
                    flagged: Some(flagged),
                    ..Entry::new(c, own)
                };
                let c = entry.judged(flood, flagged);
                if wanted(&c) {
                    judged.push(c);
                }
                if i < old {
                    group.frozen += u32::from(first);
                } else if first {
                    group.entries.push(entry);
                } else {
                    group
                        .entries
                        .last_mut()
                        .expect("an entry of this rank")
                        .weight += 1;
                }
            }
            let groups = self.windows.entry(w).or_default();
            // One call puts back all of a checkpoint's clicks before any change (the operator
            // restores once the restored input is complete): a group found here already would
            // mean verdicts judged on part of its window.
            assert!(
                !groups.contains_key(&key),
                "a restore into a rule's live state"
            );
            groups.insert(key, group);
        }
        self.retire(frontier);
    }

    /// Below which clicks a retire at `frontier` freezes: no click still to come there can
    /// rank before them.
    fn freeze_cut(&self, frontier: u64) -> u64 {
        frontier.saturating_sub(self.allowed_lateness_ms)
    }

    /// Forgets windows no click at or after `frontier` can fall in: such a click has event
    /// time at least `frontier - allowed_lateness`.
    ///
    /// Within the windows kept, the clicks before that cut are frozen: every click still to
    /// come, or to be retracted (a dedup retraction's click ranks after its replacement, which
    /// is on time), or to change its verdict under the rules before this one (only behind
    /// such a click), ranks after them, and so can neither move them nor change their
    /// verdicts. A group keeps only their number. For an hour's window and minutes of
    /// lateness, that is most of the window's clicks. The groups are walked once the cut has
    /// moved by a quarter of the lateness (at least a minute), so each walk is paid for by a
    /// quarter of a lateness of clicks.
    pub fn retire(&mut self, frontier: u64) {
        let len = self.rule.window_ms.max(1);
        let lateness = self.allowed_lateness_ms;
        let first_open = open_from(len, frontier, lateness) / len;
        while let Some((&w, _)) = self.windows.first_key_value() {
            if w >= first_open {
                break;
            }
            self.windows.pop_first();
        }
        let cut = self.freeze_cut(frontier);
        if cut < self.next_freeze {
            return;
        }
        for groups in self.windows.values_mut() {
            for g in groups.values_mut() {
                let old = g.entries.partition_point(|e| e.click.event_time < cut);
                if old > 0 {
                    g.frozen += g.entries[..old].iter().filter(|e| e.weight > 0).count() as u32;
                    g.entries.drain(..old);
                    g.entries.shrink_to_fit();
                }
            }
        }
        self.next_freeze = cut.saturating_add((lateness / 4).max(MINUTE_MS));
    }
}

/// Updates of judged clicks: (click, time, diff).
type Changes = Vec<(Click, u64, i64)>;

/// A rule's (or the chain's) output: the changes of judged clicks, and the clicks a checkpoint
/// put back, judged, at its frontier − 1.
pub type Judged<'s> = (Stream<'s, u64, Changes>, Stream<'s, u64, Vec<Click>>);

/// Applies `flood`'s rule to the counted clicks (updates with their multiplicity), after
/// putting back `restored` (clicks counted before a checkpoint, at its frontier − 1). Returns
/// the changes of judged clicks, and the restored clicks `wanted` with this rule's verdict
/// added (at their time), which the next rule puts back.
pub fn flood<'s>(
    clicks: Stream<'s, u64, Vec<(Click, u64, i64)>>,
    restored: Stream<'s, u64, Vec<Click>>,
    flood: Flood,
    rule: FloodRule,
    allowed_lateness_ms: u64,
    wanted: Rc<dyn Fn(&Click) -> bool>,
) -> Judged<'s> {
    let route = move |c: &Click| match flood.key(c) {
        Some((who, what)) => who ^ what.rotate_left(29),
        None => c.impression as u64,
    };
    let name = match flood {
        Flood::Ip => "IpFlood",
        Flood::User => "UserFlood",
    };
    let mut builder = OperatorBuilder::new(name.to_owned(), clicks.scope());
    let mut input = builder.new_input(
        clicks,
        Exchange::new(move |(c, _, _): &(Click, u64, i64)| route(c)),
    );
    let mut restored = builder.new_input(restored, Exchange::new(move |c: &Click| route(c)));
    let (changes, changes_stream) = builder.new_output();
    let (judged, judged_stream) = builder.new_output();
    let mut changes: OutputBuilder<u64, CapacityContainerBuilder<Changes>> =
        OutputBuilder::from(changes);
    let mut judged: OutputBuilder<u64, CapacityContainerBuilder<Vec<Click>>> =
        OutputBuilder::from(judged);
    builder.build(move |_capabilities| {
        let mut state = FloodState::new(flood, rule, allowed_lateness_ms);
        let mut pending = Pending::new();
        let mut restoring: Vec<Vec<Click>> = Vec::new();
        let mut restoring_at: Option<Capability<u64>> = None;
        let mut out = Vec::new();
        let mut restored_out = Vec::new();
        move |frontiers| {
            let (frontier, restored_frontier) = (&frontiers[0], &frontiers[1]);
            let mut changes = changes.activate();
            let mut judged = judged.activate();
            restored.for_each(|cap, data| {
                if let Some(at) = cap.retain_least(1)
                    && restoring_at.as_ref().is_none_or(|c| at.time() < c.time())
                {
                    restoring_at = Some(at);
                }
                restoring.push(std::mem::take(data));
            });
            input.for_each_stamp(|cap, data| {
                let Some(cap) = cap.retain_least(0) else {
                    return;
                };
                let batch = &mut pending
                    .entry(*cap.time())
                    .or_insert_with(|| (cap, Vec::new()))
                    .1;
                for part in data {
                    batch.extend(part.drain(..).map(|(c, _, d)| (c, d)));
                }
            });
            // Restored clicks all come at one time, the checkpoint's frontier, before every
            // click counted after it: they are all here once their input's frontier passes
            // that time, and go back into the state before any later time's changes.
            let restored_done = restored_frontier.frontier().first().copied();
            let all_restored_here = restoring_at
                .as_ref()
                .is_some_and(|at| restored_done.is_none_or(|r| r > *at.time()));
            // `upto` bounds the changes still to come: the pending time about to be applied,
            // or the input's frontier.
            let mut restore = |state: &mut FloodState, upto: u64| {
                if let Some(at) = restoring_at.take() {
                    let batches = std::mem::take(&mut restoring);
                    state.restore(batches, upto, &*wanted, &mut restored_out);
                    judged.session(&at).give_container(&mut restored_out);
                    restored_out.clear();
                }
            };
            let passed = |t: &u64| !frontier.less_equal(t) && restored_done.is_none_or(|r| r > *t);
            while let Some(t) = pending.first_key_value().map(|(t, _)| *t) {
                if !passed(&t) {
                    break;
                }
                restore(&mut state, t);
                let (cap, batch) = pending.remove(&t).expect("a pending time");
                state.apply(batch, &mut out);
                changes
                    .session(&cap)
                    .give_iterator(out.drain(..).map(|(c, d)| (c, t, d)));
            }
            let done = frontier.frontier().first().copied().unwrap_or(u64::MAX);
            // Not only once the restored input ends: the next rule's restored input is this
            // rule's judged output, whose frontier follows this rule's clicks, so it never
            // ends while the stream runs. Waiting for its end held the next rule's restored
            // clicks, and reach and the report writer behind them, at the checkpoint's
            // frontier until a click was counted after the restore: for ever on a quiet
            // stream or one of only late clicks, with no checkpoint committed meanwhile.
            if all_restored_here {
                let upto = pending
                    .first_key_value()
                    .map_or(done, |(t, _)| done.min(*t));
                restore(&mut state, upto);
            }
            state.retire(done.min(restored_done.unwrap_or(u64::MAX)));
        }
    });
    (changes_stream, judged_stream)
}

/// The counted clicks with every reason they have, as the windows count them: the edge's,
/// the flood rules', `too_fast`; and the clicks `restored` from a checkpoint with every reason
/// too (at the checkpoint's frontier − 1; they are in the restored rows already), those
/// `wanted` only. Reach (`reach.rs`) reads the users behind them, in the minutes not final at
/// the checkpoint: a few minutes' clicks of the hours a restore puts back, so the rest are
/// judged (each rule needs every verdict before it) but not sent on.
pub fn judged_clicks<'s>(
    counted: VecCollection<'s, u64, Click, i64>,
    restored: Stream<'s, u64, Vec<Click>>,
    cfg: &InvalidConfig,
    allowed_lateness_ms: u64,
    wanted: impl Fn(&Click) -> bool + 'static,
) -> Judged<'s> {
    let (mut clicks, mut restored) = (counted.inner, restored);
    let rules: Vec<_> = [(Flood::Ip, cfg.ip_flood), (Flood::User, cfg.user_flood)]
        .into_iter()
        .filter_map(|(which, rule)| Some((which, rule?)))
        .collect();
    let wanted: Rc<dyn Fn(&Click) -> bool> = Rc::new(wanted);
    if rules.is_empty() {
        let wanted = wanted.clone();
        restored = timely::dataflow::operators::vec::Filter::filter(restored, move |c| wanted(c));
    }
    for (i, &(which, rule)) in rules.iter().enumerate() {
        let keep: Rc<dyn Fn(&Click) -> bool> = if i + 1 == rules.len() {
            wanted.clone()
        } else {
            Rc::new(|_: &Click| true)
        };
        (clicks, restored) = flood(clicks, restored, which, rule, allowed_lateness_ms, keep);
    }
    let cfg = *cfg;
    let too_fast = move |mut c: Click| {
        if cfg.too_fast(&c) {
            c.reasons.insert(Reason::TooFast);
        }
        c
    };
    (
        timely::dataflow::operators::vec::Map::map(clicks, move |(c, t, d)| (too_fast(c), t, d)),
        timely::dataflow::operators::vec::Map::map(restored, too_fast),
    )
}

/// Judged clicks' window rows: each click billable or invalid under its first reason.
pub fn rows_of<'s>(
    judged: Stream<'s, u64, Vec<(Click, u64, i64)>>,
) -> VecCollection<'s, u64, Row, Measures> {
    timely::dataflow::operators::vec::Map::map(judged, |(c, t, d)| {
        let row = (window_start(c.event_time, MINUTE_MS), c.dims);
        (row, t, Measures::click(c.reasons).times(d))
    })
    .as_collection()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::click::{Dims, Sym};
    use crate::invalid::Reasons;

    const RULE: FloodRule = FloodRule {
        max_clicks: 5,
        window_ms: MINUTE_MS,
    };

    fn click(impression: u128, event_time: u64, click_id: u128, ip: &str) -> Click {
        Click {
            impression,
            click: click_id as u64,
            event_time,
            dims: Dims {
                ad_id: Sym::of("ad"),
                ..Dims::default()
            },
            click_id,
            ip: Some(Sym::of(ip)),
            user: None,
            impression_time: 0,
            reasons: Reasons::NONE,
        }
    }

    /// What the rule's output amounts to: each click with its verdict, and a weight.
    fn net(batches: &[Vec<(Click, i64)>]) -> BTreeMap<(Rank, bool), i64> {
        let mut state = FloodState::new(Flood::Ip, RULE, 300_000);
        let mut out = Vec::new();
        for b in batches {
            state.apply(b.clone(), &mut out);
        }
        let mut net = BTreeMap::new();
        for (c, d) in out {
            *net.entry((
                rank(&c, Reason::IpFlood),
                c.reasons.contains(Reason::IpFlood),
            ))
            .or_insert(0) += d;
        }
        net.retain(|_, d| *d != 0);
        net
    }

    /// The rule, stated plainly: per (ip, ad, minute), the counted clicks beyond the 5th in
    /// rank order are flagged.
    fn oracle(counted: &[Click]) -> BTreeMap<(Rank, bool), i64> {
        oracle_in(counted, MINUTE_MS)
    }

    /// [`oracle`] for windows of `window_ms`.
    fn oracle_in(counted: &[Click], window_ms: u64) -> BTreeMap<(Rank, bool), i64> {
        let mut groups: BTreeMap<_, BTreeSet<Rank>> = BTreeMap::new();
        for c in counted {
            groups
                .entry((c.ip, c.event_time / window_ms))
                .or_default()
                .insert(rank(c, Reason::IpFlood));
        }
        let mut out = BTreeMap::new();
        for ranks in groups.values() {
            for (i, r) in ranks.iter().enumerate() {
                out.insert((*r, i >= 5), 1);
            }
        }
        out
    }

    /// A small deterministic shuffle (xorshift), so the test needs no dependency.
    fn shuffled<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
        let mut v = items.to_vec();
        let mut x = seed | 1;
        for i in (1..v.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.swap(i, (x % (i as u64 + 1)) as usize);
        }
        v
    }

    #[test]
    fn five_clicks_pass_and_the_sixth_is_flagged() {
        let five: Vec<_> = (0..5).map(|i| click(i, 1_000 + i as u64, i, "a")).collect();
        let batch: Vec<_> = five.iter().map(|c| (*c, 1)).collect();
        assert!(net(std::slice::from_ref(&batch)).keys().all(|(_, f)| !f));
        let sixth = click(9, 59_999, 9, "a");
        let r = net(&[batch.clone(), vec![(sixth, 1)]]);
        assert_eq!(r.get(&(rank(&sixth, Reason::IpFlood), true)), Some(&1));
        // Across a minute boundary it is the first of the next minute.
        let next = click(9, 60_000, 9, "a");
        assert!(net(&[batch, vec![(next, 1)]]).keys().all(|(_, f)| !f));
    }

    #[test]
    fn a_late_earlier_click_makes_another_the_sixth() {
        let six: Vec<_> = (0..6)
            .map(|i| click(i, 10_000 + i as u64, i, "a"))
            .collect();
        let early = click(7, 5_000, 7, "a");
        let batches: Vec<_> = six.iter().map(|c| vec![(*c, 1)]).collect();
        let mut with_late = batches.clone();
        with_late.push(vec![(early, 1)]);
        let r = net(&with_late);
        let mut all = six.clone();
        all.push(early);
        assert_eq!(r, oracle(&all));
        // The two last of the six, by rank, are the flagged ones.
        assert_eq!(r.get(&(rank(&six[4], Reason::IpFlood), true)), Some(&1));
        assert_eq!(r.get(&(rank(&early, Reason::IpFlood), false)), Some(&1));
    }

    #[test]
    fn ties_in_event_time_are_broken_by_click_id() {
        let same: Vec<_> = (0..6).rev().map(|i| click(i, 1_000, i, "a")).collect();
        let r = net(&[same.iter().map(|c| (*c, 1)).collect()]);
        let flagged: Vec<_> = r.keys().filter(|(_, f)| *f).collect();
        assert_eq!(flagged, [&((1_000, 5, 5, 0), true)]);
    }

    #[test]
    fn verdicts_do_not_depend_on_arrival_order_or_batching() {
        // Two IPs, three minutes, with dedup's retractions (an impression's click replaced).
        let mut clicks = Vec::new();
        for i in 0..40u128 {
            let ip = if i % 3 == 0 { "b" } else { "a" };
            clicks.push(click(
                i,
                50_000 + (i as u64 * 7_919) % 90_000,
                i * 31 % 17,
                ip,
            ));
        }
        let replaced: Vec<_> = clicks.iter().step_by(4).copied().collect();
        let mut updates: Vec<(Click, i64)> = clicks.iter().map(|c| (*c, 1)).collect();
        updates.extend(replaced.iter().map(|c| (*c, -1)));
        let counted: Vec<_> = clicks
            .iter()
            .filter(|c| !replaced.contains(c))
            .copied()
            .collect();
        let expected = oracle(&counted);
        for seed in 1..40 {
            let order = shuffled(&updates, seed);
            // A retraction never comes before its insertion (dedup sends them in order).
            let mut seen = BTreeSet::new();
            let mut ready = Vec::new();
            let mut waiting = Vec::new();
            for (c, d) in order {
                if d > 0 {
                    seen.insert(rank(&c, Reason::IpFlood));
                    ready.push((c, d));
                } else if seen.contains(&rank(&c, Reason::IpFlood)) {
                    ready.push((c, d));
                } else {
                    waiting.push((c, d));
                }
            }
            ready.extend(waiting);
            let size = 1 + (seed as usize % 7);
            let batches: Vec<_> = ready.chunks(size).map(<[_]>::to_vec).collect();
            assert_eq!(net(&batches), expected, "seed {seed}");
        }
    }

    #[test]
    fn a_restore_puts_back_verdicts_without_sending_them() {
        let seven: Vec<_> = (0..7).map(|i| click(i, 1_000 + i as u64, i, "a")).collect();
        let mut state = FloodState::new(Flood::Ip, RULE, 300_000);
        let mut judged = Vec::new();
        state.restore(vec![seven.clone()], 0, &|_| true, &mut judged);
        let mut flagged: Vec<_> = judged
            .iter()
            .map(|c| (c.impression, c.reasons.contains(Reason::IpFlood)))
            .collect();
        flagged.sort();
        assert_eq!(flagged, (0..7).map(|i| (i, i >= 5)).collect::<Vec<_>>());
        let mut out = Vec::new();
        // Retracting the first counted click brings the 6th back under the limit.
        state.apply(vec![(seven[0], -1)], &mut out);
        let mut got: Vec<_> = out
            .iter()
            .map(|(c, d)| (c.impression, c.reasons.contains(Reason::IpFlood), *d))
            .collect();
        got.sort();
        assert_eq!(got, [(0, false, -1), (5, false, 1), (5, true, -1)]);

        // Only the wanted clicks are sent on, with the verdicts all seven give them, and the
        // state is the same.
        let mut wanting = FloodState::new(Flood::Ip, RULE, 300_000);
        let mut judged = Vec::new();
        wanting.restore(
            vec![seven.clone()],
            0,
            &|c| c.event_time >= 1_004,
            &mut judged,
        );
        let flagged: Vec<_> = judged
            .iter()
            .map(|c| (c.impression, c.reasons.contains(Reason::IpFlood)))
            .collect();
        assert_eq!(flagged, [(4, false), (5, true), (6, true)]);
        let mut again = Vec::new();
        wanting.apply(vec![(seven[0], -1)], &mut again);
        assert_eq!(net_of(again), net_of(out));
    }

    #[test]
    fn the_next_rule_puts_back_restored_clicks_with_the_verdicts_before_it() {
        let user_rule = FloodRule {
            max_clicks: 20,
            window_ms: HOUR_MS,
        };
        let seven: Vec<_> = (0..7)
            .map(|i| Click {
                user: Some(Sym::of("u")),
                ..click(i, 1_000 + i as u64, i, "a")
            })
            .collect();
        let mut ip = FloodState::new(Flood::Ip, RULE, 300_000);
        let mut user = FloodState::new(Flood::User, user_rule, 300_000);
        let (mut after_ip, mut restored) = (Vec::new(), Vec::new());
        ip.restore(vec![seven.clone()], 0, &|_| true, &mut after_ip);
        user.restore(vec![after_ip], 0, &|_| true, &mut restored);
        // Retracting the first click brings the 6th (impression 5) back under the IP limit:
        // the user rule must take it back as it was judged (flagged by the IP rule).
        let (mut ip_out, mut user_out) = (Vec::new(), Vec::new());
        ip.apply(vec![(seven[0], -1)], &mut ip_out);
        user.apply(ip_out, &mut user_out);
        let mut total: BTreeMap<(u128, bool), i64> = BTreeMap::new();
        for (c, d) in restored
            .iter()
            .map(|c| (c, 1))
            .chain(user_out.iter().map(|(c, d)| (c, *d)))
        {
            *total
                .entry((c.impression, c.reasons.contains(Reason::IpFlood)))
                .or_default() += d;
        }
        total.retain(|_, d| *d != 0);
        let want: BTreeMap<_, _> = (1..7).map(|i| ((i, i == 6), 1)).collect();
        assert_eq!(total, want);
        assert_eq!(user.len(), 6);
    }

    #[test]
    fn clicks_without_a_key_pass_unjudged_and_windows_retire() {
        let mut anonymous = click(1, 1_000, 1, "a");
        anonymous.ip = None;
        let mut state = FloodState::new(Flood::Ip, RULE, 300_000);
        let mut out = Vec::new();
        state.apply(vec![(anonymous, 1), (click(2, 1_000, 2, "a"), 1)], &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(state.len(), 1);
        state.retire(MINUTE_MS + 300_000 - 1);
        assert_eq!(
            state.len(),
            0,
            "behind the lateness: frozen, held as a count"
        );
        assert!(!state.is_empty(), "its window is not retired yet");
        state.retire(MINUTE_MS + 300_000);
        assert!(state.is_empty());
    }

    const LATENESS: u64 = 60_000;
    const HOUR_RULE: FloodRule = FloodRule {
        max_clicks: 5,
        window_ms: HOUR_MS,
    };

    /// Two hours of clicks from four IPs, as (arrival, click, diff): clicks arrive up to the
    /// lateness out of order, and some are retracted while still within it (dedup's
    /// replacements).
    fn long_window_events() -> Vec<(u64, Click, i64)> {
        let mut next = crate::testing::numbers(0x2545_f491_4f6c_dd1d);
        let mut events: Vec<(u64, Click, i64)> = Vec::new();
        for i in 0..3_000u128 {
            let arrival = next(2 * 3_600) * 1_000;
            let event_time = arrival.saturating_sub(next(LATENESS));
            let ip = ["a", "b", "c", "d"][next(4) as usize];
            let c = click(i, event_time, i * 7_919 % 3_001, ip);
            events.push((arrival, c, 1));
            // A retraction while the click is still within the lateness of the frontier.
            if next(5) == 0 {
                let at = arrival + next(event_time + LATENESS - arrival + 1);
                events.push((at.max(arrival + 1), c, -1));
            }
        }
        events.retain(|(at, c, _)| c.event_time + LATENESS >= *at);
        events.sort_by_key(|(at, c, d)| (*at, -d, c.impression));
        events
    }

    /// Changes of verdicts as their net effect: what the rows downstream add up.
    fn net_of(changes: impl IntoIterator<Item = (Click, i64)>) -> BTreeMap<(Rank, bool), i64> {
        let mut net: BTreeMap<(Rank, bool), i64> = BTreeMap::new();
        for (c, d) in changes {
            let flagged = c.reasons.contains(Reason::IpFlood);
            *net.entry((rank(&c, Reason::IpFlood), flagged)).or_default() += d;
        }
        net.retain(|_, d| *d != 0);
        net
    }

    /// A long window (an hour, as the user rule's) with a short lateness, the frontier
    /// advancing after every second. Freezing the clicks behind the lateness changes no
    /// verdict, and they are no longer held whole.
    #[test]
    fn frozen_clicks_keep_every_verdict_and_leave_the_state() {
        let (rule, events) = (HOUR_RULE, long_window_events());
        let mut state = FloodState::new(Flood::Ip, rule, LATENESS);
        let mut out = Vec::new();
        let mut most_held = 0;
        for batch in events.chunk_by(|a, b| a.0 == b.0) {
            state.apply(batch.iter().map(|(_, c, d)| (*c, *d)).collect(), &mut out);
            state.retire(batch[0].0 + 1);
            most_held = most_held.max(state.len());
        }
        let counted = counted_by(&events);
        assert_eq!(net_of(out), oracle_in(&counted, HOUR_MS));
        assert!(
            most_held < counted.len() / 4,
            "held {most_held} of {} clicks whole",
            counted.len()
        );
    }

    /// The clicks counted after `events`: each impression's net weight.
    fn counted_by(events: &[(u64, Click, i64)]) -> Vec<Click> {
        let mut counted: BTreeMap<u128, (Click, i64)> = BTreeMap::new();
        for (_, c, d) in events {
            counted.entry(c.impression).or_insert((*c, 0)).1 += d;
        }
        counted
            .values()
            .filter(|(_, n)| *n > 0)
            .map(|(c, _)| *c)
            .collect()
    }

    /// A restore in the middle of that stream, as after a checkpoint there: the clicks counted
    /// by then, put back in several batches with the frontier there, get the verdicts the
    /// uninterrupted rule gave them; the rest of the stream is then judged change for change
    /// as the uninterrupted rule judges it; and the restored rule holds no more clicks whole.
    #[test]
    fn a_restore_mid_stream_judges_the_rest_as_if_never_stopped() {
        let events = long_window_events();
        for split in [30 * MINUTE_MS, HOUR_MS + 17_000, 100 * MINUTE_MS] {
            let (before, after): (Vec<(u64, Click, i64)>, Vec<_>) =
                events.iter().partition(|e| e.0 < split);
            let mut whole = FloodState::new(Flood::Ip, HOUR_RULE, LATENESS);
            let mut out = Vec::new();
            for batch in before.chunk_by(|a, b| a.0 == b.0) {
                whole.apply(batch.iter().map(|(_, c, d)| (*c, *d)).collect(), &mut out);
                whole.retire(batch[0].0 + 1);
            }
            whole.retire(split);
            let counted = counted_by(&before);
            let mut restored = FloodState::new(Flood::Ip, HOUR_RULE, LATENESS);
            let mut judged = Vec::new();
            let batches = counted.chunks(97).map(<[_]>::to_vec).collect();
            restored.restore(batches, split, &|_| true, &mut judged);
            assert_eq!(judged.len(), counted.len());
            assert_eq!(
                net_of(judged.into_iter().map(|c| (c, 1))),
                net_of(out),
                "split {split}"
            );
            assert!(restored.len() <= whole.len(), "split {split}");
            for batch in after.chunk_by(|a, b| a.0 == b.0) {
                let changes: Vec<_> = batch.iter().map(|(_, c, d)| (*c, *d)).collect();
                let (mut a, mut b) = (Vec::new(), Vec::new());
                whole.apply(changes.clone(), &mut a);
                restored.apply(changes, &mut b);
                assert_eq!(net_of(b), net_of(a), "split {split}, at {}", batch[0].0);
                whole.retire(batch[0].0 + 1);
                restored.retire(batch[0].0 + 1);
            }
        }
    }

    /// After a restore, with no click counted since (a quiet stream, or only late clicks),
    /// the restored clicks still leave both rules once the clicks' frontier has passed the
    /// checkpoint's: the user rule's restored input is the IP rule's judged output, which
    /// never ends while the stream runs. Waiting for it to end held reach, and the report
    /// writer behind it, at the checkpoint's frontier: no line written, no checkpoint taken.
    #[test]
    fn restored_clicks_pass_both_rules_with_no_click_counted_after_the_restore() {
        use differential_dataflow::input::Input as _;
        use timely::dataflow::operators::{Input as _, Inspect as _, Probe as _};

        const F: u64 = 10 * MINUTE_MS;
        let restored_clicks: Vec<Click> = (0..7)
            .map(|i| Click {
                user: Some(Sym::of("u")),
                ..click(i, F - 30_000 + i as u64, i, "a")
            })
            .collect();
        let expected = restored_clicks.len();
        timely::execute_directly(move |worker| {
            let judged = Rc::new(std::cell::RefCell::new(Vec::new()));
            let seen = judged.clone();
            let (mut counted, mut restored, probe) = worker.dataflow::<u64, _, _>(|scope| {
                let (counted_input, counted) = scope.new_collection::<Click, i64>();
                let (restored_input, restored) = scope.new_input::<Vec<Click>>();
                let cfg = InvalidConfig::default();
                let (_, judged) = judged_clicks(counted, restored, &cfg, 300_000, |_| true);
                let (probe, _) = judged.inspect(move |c| seen.borrow_mut().push(*c)).probe();
                (counted_input, restored_input, probe)
            });
            restored.advance_to(F);
            restored.send_batch(&mut restored_clicks.clone());
            restored.close();
            // The clicks' frontier moves on (an idle source following the clock); no click.
            counted.advance_to(F + MINUTE_MS);
            counted.flush();
            for _ in 0..1_000 {
                worker.step();
                if !probe.less_equal(&F) {
                    break;
                }
            }
            assert!(
                !probe.less_equal(&F),
                "the restored clicks are still held at the checkpoint's frontier"
            );
            assert_eq!(judged.borrow().len(), expected);
        });
    }
}
