//! Exact deduplication by impression, as a timely operator whose output is a differential
//! collection of [`Deduped`] updates: the counted clicks (which the invalid-traffic rules judge
//! next) and the duplicates' window rows.
//!
//! Clicks are exchanged by impression, so each worker owns its impressions' state: the current
//! winner (earliest event time, then smallest click fingerprint). Input is processed in
//! timely-time order once the frontier passes each time, so every update is stamped with the
//! time at which it became true. A new winner retracts the old one's click (which becomes a
//! duplicate in its own row); every other click of the impression is a duplicate in its own
//! row. The final result depends only on the set of clicks, not on their arrival order.
//!
//! The horizon: a click more than `horizon_ms` of event time after its impression's winner
//! counts again (signed links expire long before a day, so real duplicates are never that far
//! apart). State is swept once no click that could still arrive can be within the horizon of
//! it: the sweep frees memory and never changes a verdict.
//!
//! Memory: 32 bytes of table slot per tracked impression (a 128-bit impression fingerprint;
//! event time, 54-bit click fingerprint and a per-worker index of the winner's dimensions
//! packed in 128 bits), plus one entry per distinct dimension combination. The winners of the
//! last `allowed lateness + lookback` of event time also keep what the flood rules judge them
//! by ([`Judged`], 64 bytes a slot): a retraction must say which click it takes back, and a
//! restore puts them back into the rules' state.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

use crate::click::{Click, Dims, Row, Sym};
use crate::invalid::Reasons;
use crate::pending::Pending;
use crate::time::{MINUTE_MS, window_start};

/// The dedup's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupConfig {
    /// Event time over which duplicates of an impression are recognised (default 24 h).
    pub horizon_ms: u64,
    /// The sources' allowed lateness: how far behind the frontier a click can still be.
    pub allowed_lateness_ms: u64,
    /// How far back, beyond the allowed lateness, the invalid-traffic rules look (their
    /// longest window): winners that recent keep their [`Judged`] traits.
    pub lookback_ms: u64,
}

/// What dedup decides about a click.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Deduped {
    /// The impression's counted click (a retraction when a better one replaces it).
    Counted(Click),
    /// A duplicate, counted in the `duplicates` measure of its own window row.
    Duplicate(Row),
}

/// What the invalid-traffic rules judge a counted click by, beyond what the winner keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Judged {
    pub click_id: u128,
    pub ip: Option<Sym>,
    pub user: Option<Sym>,
    pub impression_time: u64,
    pub reasons: Reasons,
}

impl Judged {
    pub fn of(c: &Click) -> Self {
        Judged {
            click_id: c.click_id,
            ip: c.ip,
            user: c.user,
            impression_time: c.impression_time,
            reasons: c.reasons,
        }
    }
}

/// The impression fingerprint is already a uniform hash: use its low bits as they are.
#[derive(Default)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

type Winners<V = Winner> = std::collections::HashMap<u128, V, BuildHasherDefault<PassThrough>>;

/// A set of impressions, hashed by their fingerprint's low bits as they are.
pub type Impressions = std::collections::HashSet<u128, BuildHasherDefault<PassThrough>>;

/// The span of event time of one map of recent winners' traits: a second.
const JUDGED_BUCKET_MS: u64 = 1_000;

fn judged_bucket(event_time: u64) -> u64 {
    event_time / JUDGED_BUCKET_MS
}

const CLICK_BITS: u32 = 54;
const TIME_SHIFT: u32 = CLICK_BITS - 32;

/// An impression's winner in 16 bytes: event time (42 bits, ms: years up to 2109) and the high
/// 22 bits of the click fingerprint; its low 32 bits and the winner's dimension index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Winner(u64, u64);

impl Winner {
    fn new(event_time: u64, click: u64, dims: u32) -> Self {
        debug_assert!(event_time < 1 << 42 && click < 1 << CLICK_BITS);
        Winner(
            event_time << TIME_SHIFT | click >> 32,
            (click & 0xFFFF_FFFF) << 32 | u64::from(dims),
        )
    }
    fn event_time(&self) -> u64 {
        self.0 >> TIME_SHIFT
    }
    /// (event time, click fingerprint): the same order as [`Click::rank`].
    fn rank(&self) -> (u64, u64) {
        let click = (self.0 & ((1 << TIME_SHIFT) - 1)) << 32 | self.1 >> 32;
        (self.event_time(), click)
    }
    fn dims(&self) -> u32 {
        self.1 as u32
    }
    fn with_dims(self, dims: u32) -> Self {
        Winner(self.0, self.1 & !0xFFFF_FFFF | u64::from(dims))
    }
}

/// Distinct dimension combinations of this worker's winners, by index.
#[derive(Default)]
struct DimsTable {
    all: Vec<Dims>,
    index: foldhash::HashMap<Dims, u32>,
}

impl DimsTable {
    fn intern(&mut self, d: Dims) -> u32 {
        *self.index.entry(d).or_insert_with(|| {
            self.all.push(d);
            (self.all.len() - 1) as u32
        })
    }
}

/// One worker's dedup state.
pub struct DedupState {
    cfg: DedupConfig,
    winners: Winners,
    dims: DimsTable,
    next_sweep: u64,
    /// The recent winners' traits, by the second of their event time (so that whole minutes
    /// are forgotten at once, and no one map holds a minute: a map doubles its room as it
    /// grows, and a minute at 20,000 clicks a second held the old and new room of a million
    /// entries at once), then impression.
    judged: BTreeMap<u64, Winners<Judged>>,
    /// The minute before which no traits are kept any more (the sweeps' cut so far): a
    /// restore from an incremental chain drops older traits the chain still carries.
    judged_from: u64,
    /// The impressions whose winner changed since the last [`DedupState::take_changed`], with
    /// that winner and its traits as decided, once an incremental checkpoint has asked for
    /// them (none kept before: the first checkpoint of a run is full). Recorded with their
    /// values so that a link needs no lookup in the table of every winner: at 100 M clicks of
    /// state those lookups, one cache miss each, were 4 % of a checkpointed load's samples.
    /// An impression's last entry is always its live winner: [`DedupState::win`] records every
    /// change, the sweep removes and renumbers entries as it does the table's.
    changed: Option<ChangeLog>,
}

/// The winners decided since the last [`DedupState::take_changed`], in the order decided: an
/// append per win (a map insert per win, one cache miss each in a map of a whole interval's
/// impressions, cost the hot path more). An impression won more than once has several
/// entries, and only its last is its winner; such impressions (a better-ranked duplicate, a
/// click beyond its winner's horizon) are few, and only their entries are sorted out.
struct ChangeLog {
    wins: Vec<(u128, Winner, Judged)>,
    /// Impressions that had a winner when they won again (since the last take): their earlier
    /// entries, if any, are stale.
    again: Impressions,
}

impl ChangeLog {
    fn with_capacity(n: usize) -> Self {
        Self {
            wins: Vec::with_capacity(n),
            again: Impressions::default(),
        }
    }

    /// The entries that hold their impression's winner: the last one of each impression.
    fn latest(self) -> impl Iterator<Item = (u128, Winner, Judged)> {
        let mut last: Winners<usize> = Winners::default();
        if !self.again.is_empty() {
            for (i, (imp, ..)) in self.wins.iter().enumerate() {
                if self.again.contains(imp) {
                    last.insert(*imp, i);
                }
            }
        }
        self.wins
            .into_iter()
            .enumerate()
            .filter(move |(i, (imp, ..))| last.get(imp).is_none_or(|l| l == i))
            .map(|(_, e)| e)
    }
}

/// The winners changed since the previous [`DedupState::take_changed`] and the traits kept for
/// them, as a link of a checkpoint chain stores them: (impression, event time, click
/// fingerprint, index into `dims`) and (impression, event time, traits).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangedWinners {
    pub dims: Vec<Dims>,
    pub entries: Vec<(u128, u64, u64, u32)>,
    pub judged: Vec<(u128, u64, Judged)>,
}

impl DedupState {
    pub fn new(cfg: DedupConfig) -> Self {
        Self {
            cfg,
            winners: Winners::default(),
            dims: DimsTable::default(),
            next_sweep: 0,
            judged: BTreeMap::new(),
            judged_from: 0,
            changed: None,
        }
    }

    /// The winners that changed (won, replaced, or won again beyond the horizon) since the
    /// previous call, with the traits the state keeps for them, and from now on records them:
    /// `None` at the first call, when nothing was recorded. Exactly what
    /// [`DedupState::winners_of`] gives for those impressions, without a lookup: swept
    /// impressions are gone, and traits before the cut ([`DedupState::judged_from`]) are left
    /// out, as a restore drops them.
    pub fn take_changed(&mut self) -> Option<ChangedWinners> {
        let room = self.changed.as_ref().map_or(0, |c| c.wins.len());
        let changed = self.changed.replace(ChangeLog::with_capacity(room))?;
        let cut = self.judged_from * MINUTE_MS;
        let mut remap = vec![u32::MAX; self.dims.all.len()];
        let mut out = ChangedWinners {
            entries: Vec::with_capacity(changed.wins.len()),
            judged: Vec::with_capacity(changed.wins.len()),
            ..ChangedWinners::default()
        };
        for (imp, w, j) in changed.latest() {
            let (t, click) = w.rank();
            let slot = &mut remap[w.dims() as usize];
            if *slot == u32::MAX {
                out.dims.push(self.dims.all[w.dims() as usize]);
                *slot = (out.dims.len() - 1) as u32;
            }
            out.entries.push((imp, t, click, *slot));
            if t >= cut {
                out.judged.push((imp, t, j));
            }
        }
        Some(out)
    }

    /// The minute before which traits are no longer kept.
    pub fn judged_from(&self) -> u64 {
        self.judged_from
    }

    /// The winners of `impressions` still tracked, with their dimensions as indices into the
    /// state's table (see [`DedupState::interned_winners`]), and the traits kept for them.
    #[allow(clippy::type_complexity)]
    pub fn winners_of<'a>(
        &'a self,
        impressions: impl Iterator<Item = u128> + 'a,
    ) -> impl Iterator<Item = ((u128, u64, u64, u32), Option<Judged>)> + 'a {
        impressions.filter_map(|imp| {
            let w = self.winners.get(&imp)?;
            let (t, click) = w.rank();
            let judged = self
                .judged
                .get(&judged_bucket(t))
                .and_then(|m| m.get(&imp))
                .copied();
            Some(((imp, t, click, w.dims()), judged))
        })
    }

    /// The table [`DedupState::interned_winners`] and [`DedupState::winners_of`] index into.
    pub fn dims_table(&self) -> &[Dims] {
        &self.dims.all
    }

    /// The recent winners' traits, what a checkpoint keeps beside the winners:
    /// (impression, event time, traits).
    pub fn judged(&self) -> impl Iterator<Item = (u128, u64, Judged)> + '_ {
        self.judged.values().flatten().filter_map(|(imp, j)| {
            let w = self.winners.get(imp)?;
            Some((*imp, w.event_time(), *j))
        })
    }

    /// Puts back a recent winner's traits (after its winner).
    pub fn restore_judged(&mut self, impression: u128, event_time: u64, judged: Judged) {
        self.judged
            .entry(judged_bucket(event_time))
            .or_default()
            .insert(impression, judged);
    }

    /// The counted clicks whose traits are kept: what the invalid-traffic rules' state is
    /// rebuilt from after a restore.
    pub fn recent_counted(&self) -> impl Iterator<Item = Click> + '_ {
        self.judged().filter_map(|(imp, _, j)| {
            let w = self.winners.get(&imp)?;
            Some(self.counted(imp, w, j))
        })
    }

    fn counted(&self, impression: u128, w: &Winner, j: Judged) -> Click {
        let (event_time, click) = w.rank();
        Click {
            impression,
            click,
            event_time,
            dims: self.dims.all[w.dims() as usize],
            click_id: j.click_id,
            ip: j.ip,
            user: j.user,
            impression_time: j.impression_time,
            reasons: j.reasons,
        }
    }

    /// Impressions tracked.
    pub fn len(&self) -> usize {
        self.winners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.winners.is_empty()
    }

    /// Every tracked impression's winner: (impression, event time, click fingerprint,
    /// dimensions), what a checkpoint keeps.
    pub fn winners(&self) -> impl Iterator<Item = (u128, u64, u64, Dims)> + '_ {
        self.winners.iter().map(|(imp, w)| {
            let (t, click) = w.rank();
            (*imp, t, click, self.dims.all[w.dims() as usize])
        })
    }

    /// [`DedupState::winners`] with their dimensions as indices into the returned table (the
    /// state's own, each combination once): what a checkpoint stores, without re-interning.
    #[allow(clippy::type_complexity)]
    pub fn interned_winners(&self) -> (&[Dims], impl Iterator<Item = (u128, u64, u64, u32)> + '_) {
        let winners = self.winners.iter().map(|(imp, w)| {
            let (t, click) = w.rank();
            (*imp, t, click, w.dims())
        });
        (&self.dims.all, winners)
    }

    /// Room for `winners` impressions from the start (a restore knows how many it brings).
    pub fn with_capacity(cfg: DedupConfig, winners: usize) -> Self {
        let mut state = Self::new(cfg);
        state.winners.reserve(winners);
        state
    }

    /// Puts back one winner.
    pub fn restore_winner(&mut self, impression: u128, event_time: u64, click: u64, dims: Dims) {
        self.restore_winners(&[dims], std::iter::once((impression, event_time, click, 0)));
    }

    /// Puts back winners from a checkpoint part: (impression, event time, click fingerprint,
    /// index into `dims`, the part's table). Each of the part's combinations is interned
    /// once, not once per winner.
    pub fn restore_winners(
        &mut self,
        dims: &[Dims],
        winners: impl Iterator<Item = (u128, u64, u64, u32)>,
    ) {
        let mut remap = vec![u32::MAX; dims.len()];
        for (impression, event_time, click, d) in winners {
            let mine = &mut remap[d as usize];
            if *mine == u32::MAX {
                *mine = self.dims.intern(dims[d as usize]);
            }
            self.winners
                .insert(impression, Winner::new(event_time, click, *mine));
        }
    }

    /// Which of `peers` workers owns `impression` (as the dedup's exchange routes it).
    pub fn owner(impression: u128, peers: usize) -> usize {
        ((impression as u64) % peers as u64) as usize
    }

    /// Appends the updates `click` causes, given the state so far.
    pub fn decide(&mut self, click: &Click, out: &mut Vec<(Deduped, i64)>) {
        let row = |c: &Click| (window_start(c.event_time, MINUTE_MS), c.dims);
        let horizon = self.cfg.horizon_ms;
        match self.winners.get(&click.impression) {
            Some(w) if click.event_time < w.event_time().saturating_add(horizon) => {
                if click.rank() < w.rank() {
                    let w = *w;
                    let judged = self
                        .judged
                        .get_mut(&judged_bucket(w.event_time()))
                        .and_then(|m| m.remove(&click.impression))
                        .unwrap_or(Judged {
                            click_id: 0,
                            ip: None,
                            user: None,
                            impression_time: 0,
                            reasons: Reasons::NONE,
                        });
                    let old = self.counted(click.impression, &w, judged);
                    out.push((Deduped::Counted(old), -1));
                    out.push((Deduped::Duplicate(row(&old)), 1));
                    self.win(click);
                    out.push((Deduped::Counted(*click), 1));
                } else {
                    out.push((Deduped::Duplicate(row(click)), 1));
                }
            }
            // First click of the impression, or beyond the previous winner's horizon.
            _ => {
                self.win(click);
                out.push((Deduped::Counted(*click), 1));
            }
        }
    }

    /// Makes `click` its impression's winner.
    fn win(&mut self, click: &Click) {
        let d = self.dims.intern(click.dims);
        let w = Winner::new(click.event_time, click.click, d);
        let old = self.winners.insert(click.impression, w);
        if let Some(log) = self.changed.as_mut() {
            log.wins.push((click.impression, w, Judged::of(click)));
            if old.is_some() {
                log.again.insert(click.impression);
            }
        }
        if let Some(old) = old
            && let Some(m) = self.judged.get_mut(&judged_bucket(old.event_time()))
        {
            m.remove(&click.impression);
        }
        self.restore_judged(click.impression, click.event_time, Judged::of(click));
    }

    /// Frees what no click at or after `frontier` can match: such a click has event time at
    /// least `frontier - allowed_lateness`, beyond the horizon of winners older than that.
    /// Sweeps every 1/16 of the horizon, so each entry is visited a bounded number of times.
    pub fn sweep(&mut self, frontier: u64) {
        let (h, l) = (self.cfg.horizon_ms, self.cfg.allowed_lateness_ms);
        let recent = frontier.saturating_sub(l + self.cfg.lookback_ms) / MINUTE_MS;
        self.judged_from = self.judged_from.max(recent);
        while self
            .judged
            .first_key_value()
            .is_some_and(|(b, _)| *b < judged_bucket(recent * MINUTE_MS))
        {
            self.judged.pop_first();
        }
        if frontier < self.next_sweep {
            return;
        }
        let tracked = |w: &Winner| w.event_time().saturating_add(h + l) >= frontier;
        self.winners.retain(|_, w| tracked(w));
        if let Some(log) = self.changed.as_mut() {
            // Only entries of live winners stay: an impression won again may have its latest
            // entry swept (a better-ranked click can be older) and an earlier one not.
            let winners = &self.winners;
            log.wins.retain(|(imp, w, _)| {
                tracked(w) && (!log.again.contains(imp) || winners.get(imp) == Some(w))
            });
        }
        // Rebuild the dimension table from the survivors.
        let old = std::mem::take(&mut self.dims);
        let mut remap = vec![u32::MAX; old.all.len()];
        for w in self.winners.values_mut() {
            let i = w.dims() as usize;
            if remap[i] == u32::MAX {
                remap[i] = self.dims.intern(old.all[i]);
            }
            *w = w.with_dims(remap[i]);
        }
        // Each recorded change is a surviving winner, so its combination has its new index.
        for (_, w, _) in self.changed.iter_mut().flat_map(|c| c.wins.iter_mut()) {
            *w = w.with_dims(remap[w.dims() as usize]);
        }
        self.winners.shrink_to_fit();
        self.next_sweep = frontier.saturating_add((h / 16).max(MINUTE_MS));
    }
}

type Update = (Deduped, u64, i64);

/// Checkpoints of the dedup state: frontiers `F` arrive on `requests` (at time `F`, on every
/// worker), and `save` gets the state holding exactly the clicks at times before `F`.
pub struct DedupCheckpoints<'s> {
    pub requests: Stream<'s, u64, Vec<u64>>,
    pub save: SaveDedup,
    /// Set by the dedup: every frontier it has still to save is at or after this one, those
    /// asked already and those still to come (the requests' frontier as the dedup has drained
    /// them). What a source keeps for checkpoints before it can go ([`crate::source::Cuts`]).
    pub unsaved_from: Rc<Cell<u64>>,
}

/// Where a worker's dedup state goes at a checkpoint frontier.
/// It may take the impressions changed since the previous save ([`DedupState::take_changed`]).
pub type SaveDedup = Box<dyn FnMut(u64, &mut DedupState)>;

/// [`dedup`] starting from `state` (restored from a checkpoint, or empty), saving checkpoints.
/// Until the state is built it reads nothing: the clicks and checkpoint requests wait in its
/// inputs, holding every frontier downstream at their times.
pub fn checkpointed_dedup<'s>(
    clicks: Stream<'s, u64, Vec<Click>>,
    state: Pending<DedupState>,
    checkpoints: Option<DedupCheckpoints<'s>>,
) -> VecCollection<'s, u64, Deduped, i64> {
    let scope = clicks.scope();
    let (requests, mut save, unsaved_from) = match checkpoints {
        Some(c) => (c.requests, Some(c.save), c.unsaved_from),
        None => (
            timely::dataflow::operators::vec::ToStream::to_stream(Vec::<u64>::new(), scope),
            None,
            Rc::default(),
        ),
    };
    let exchange = Exchange::new(|c: &Click| c.impression as u64);
    clicks
        .binary_frontier::<_, CapacityContainerBuilder<Vec<Update>>, _, _, _, _>(
            requests,
            exchange,
            timely::dataflow::channels::pact::Pipeline,
            "Dedup",
            move |_cap, info| {
                let wake = scope.worker().sync_activator_for(info.address.to_vec());
                let mut pending: BTreeMap<u64, (Capability<u64>, Vec<Click>)> = BTreeMap::new();
                // Asked frontiers, each holding a capability at itself until saved: no frontier
                // downstream passes `F` before the state of `F` is saved (so the arrangements
                // still tell the updates before `F` apart when their rows are read).
                let mut asked: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
                let (mut building, mut state) = (Some(state), None);
                let mut updates = Vec::new();
                move |(input, frontier), (requests, asked_frontier), output| {
                    if let Some(b) = &building {
                        let Some(built) = b.take(&wake) else { return };
                        state = Some(built);
                        building = None;
                    }
                    let state = state.as_mut().expect("the dedup state is built");
                    requests.for_each(|cap, data| {
                        for f in data.drain(..) {
                            asked.insert(f, cap.delayed(&f, 0));
                        }
                    });
                    input.for_each_stamp(|cap, data| {
                        let Some(cap) = cap.retain_least(0) else {
                            return;
                        };
                        let entry = pending
                            .entry(*cap.time())
                            .or_insert_with(|| (cap, Vec::new()));
                        for batch in data {
                            entry.1.append(batch);
                        }
                    });
                    // Times both frontiers have passed are complete: process them in order,
                    // saving a checkpoint's state between the times before and after it.
                    let passed = |t: &u64| !frontier.less_equal(t) && !asked_frontier.less_equal(t);
                    loop {
                        let next = pending.first_key_value().map(|(t, _)| *t);
                        if let Some((&f, _)) = asked.first_key_value()
                            && next.is_none_or(|t| f <= t)
                            && (f == 0 || passed(&(f - 1)))
                        {
                            asked.pop_first();
                            if let Some(save) = save.as_mut() {
                                save(f, state);
                            }
                            continue;
                        }
                        let Some(t) = next.filter(|t| passed(t)) else {
                            break;
                        };
                        let (cap, clicks) = pending.remove(&t).expect("a pending time");
                        let time = *cap.time();
                        for click in &clicks {
                            state.decide(click, &mut updates);
                        }
                        output
                            .session(&cap)
                            .give_iterator(updates.drain(..).map(|(r, m)| (r, time, m)));
                    }
                    let done_before = frontier.frontier().first().copied().unwrap_or(u64::MAX);
                    let asked_before = asked_frontier.frontier().first().copied();
                    let asked_before = asked_before.unwrap_or(u64::MAX);
                    state.sweep(done_before.min(asked_before));
                    // Every request before `asked_before` has been drained into `asked` above.
                    let first_asked = asked.first_key_value().map_or(u64::MAX, |(f, _)| *f);
                    unsaved_from.set(asked_before.min(first_asked));
                }
            },
        )
        .as_collection()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::click::Measures;

    fn click(imp: u128, id: u64, t: u64, ad: &str) -> Click {
        Click {
            impression: imp,
            click: id,
            event_time: t,
            dims: Dims {
                ad_id: Sym::of(ad),
                ..Dims::default()
            },
            click_id: u128::from(id),
            ip: None,
            user: None,
            impression_time: 0,
            reasons: Reasons::NONE,
        }
    }

    fn m(clicks: i64, duplicates: i64) -> Measures {
        Measures::new(clicks, duplicates, [0; 7])
    }

    fn cfg() -> DedupConfig {
        DedupConfig {
            horizon_ms: 86_400_000,
            allowed_lateness_ms: 300_000,
            lookback_ms: 3_600_000,
        }
    }

    /// A horizon of a minute, so that winners change and are swept within a test's few rounds.
    fn minute_horizon() -> DedupConfig {
        DedupConfig {
            horizon_ms: 60_000,
            allowed_lateness_ms: 5_000,
            lookback_ms: 30_000,
        }
    }

    /// A checkpoint asked but not yet saved holds `unsaved_from` at itself, however far the
    /// requests' frontier has gone; once saved, `unsaved_from` follows that frontier. A source
    /// releases what checkpoints could need before it, so neither may run ahead of a frontier
    /// still to save, and it must move on when none is pending (or a source keeps every click
    /// between checkpoints).
    #[test]
    fn the_frontiers_still_to_save_bound_what_a_source_may_release() {
        use std::cell::RefCell;
        use timely::dataflow::operators::Input;
        timely::execute_directly(|worker| {
            let unsaved = Rc::new(Cell::new(0));
            let saved = Rc::new(RefCell::new(Vec::new()));
            let (mut clicks, mut requests) = worker.dataflow::<u64, _, _>(|scope| {
                let (clicks, stream) = scope.new_input::<Vec<Click>>();
                let (requests, asked) = scope.new_input::<Vec<u64>>();
                let into = saved.clone();
                let checkpoints = DedupCheckpoints {
                    requests: asked,
                    save: Box::new(move |f, _| into.borrow_mut().push(f)),
                    unsaved_from: unsaved.clone(),
                };
                let state = Pending::ready(DedupState::new(cfg()));
                checkpointed_dedup(stream, state, Some(checkpoints));
                (clicks, requests)
            });
            clicks.advance_to(1_000);
            clicks.send(click(1, 1, 1_000, "a"));
            requests.advance_to(2_000);
            requests.send(2_000);
            requests.advance_to(5_000);
            for _ in 0..20 {
                worker.step();
            }
            assert!(saved.borrow().is_empty(), "the clicks are still at 1 000");
            assert_eq!(unsaved.get(), 2_000);
            clicks.advance_to(3_000);
            for _ in 0..20 {
                worker.step();
            }
            assert_eq!(*saved.borrow(), vec![2_000]);
            assert_eq!(unsaved.get(), 5_000);
            requests.advance_to(9_000);
            for _ in 0..20 {
                worker.step();
            }
            assert_eq!(unsaved.get(), 9_000, "no request pending");
        })
    }

    fn net(clicks: Vec<Click>) -> BTreeMap<Row, Measures> {
        let mut state = DedupState::new(cfg());
        let mut updates = Vec::new();
        for c in &clicks {
            state.decide(c, &mut updates);
        }
        let mut out: BTreeMap<Row, Measures> = BTreeMap::new();
        for (u, d) in updates {
            let (r, m) = match u {
                Deduped::Counted(c) => ((window_start(c.event_time, MINUTE_MS), c.dims), m(d, 0)),
                Deduped::Duplicate(r) => (r, m(0, d)),
            };
            *out.entry(r).or_default() += m;
        }
        out.retain(|_, m| *m != Measures::default());
        out
    }

    /// What the dedup records as it changes winners is what looking each changed impression up
    /// afterwards gives (the winners, their dimensions, the traits kept), through sweeps that
    /// drop winners and traits and renumber the dimension table.
    #[test]
    fn the_changed_winners_recorded_are_those_looked_up() {
        // A horizon shorter than some saves' intervals: winners change and are swept between
        // two saves.
        let mut state = DedupState::new(minute_horizon());
        assert_eq!(
            state.take_changed(),
            None,
            "nothing recorded before the first call"
        );
        let mut rand = crate::testing::numbers(11);
        let (mut t, mut updates, mut swept) = (0u64, Vec::new(), 0);
        let mut imps = Vec::new();
        let ads = ["a", "b", "c", "d", "e", "f"];
        for round in 0..40 {
            for _ in 0..500 {
                t += 97;
                let imp = u128::from(rand(2_000));
                // Ads fall out of use and come back, so sweeps renumber the table.
                let ad = ads[(rand(3) + round / 8) as usize % ads.len()];
                let c = click(imp, rand(1_000), t.saturating_sub(rand(4_000)), ad);
                state.decide(&c, &mut updates);
            }
            // Every impression that got a counted click changed its winner.
            imps.extend(updates.drain(..).filter_map(|(u, d)| match u {
                Deduped::Counted(c) if d > 0 => Some(c.impression),
                _ => None,
            }));
            if round % 2 == 0 {
                // A sweep between a change and its save.
                state.sweep(t.saturating_sub(5_000));
                swept += 1;
            }
            if round % 4 != 3 {
                // Saves are farther apart than the horizon.
                continue;
            }
            let looked_up: Vec<_> = state.winners_of(imps.drain(..)).collect();
            let changed = state.take_changed().expect("recording");
            let mut recorded: Vec<_> = changed
                .entries
                .iter()
                .map(|(imp, t, click, d)| (*imp, *t, *click, changed.dims[*d as usize]))
                .collect();
            let mut want: Vec<_> = looked_up
                .iter()
                .map(|((imp, t, click, d), _)| (*imp, *t, *click, state.dims_table()[*d as usize]))
                .collect();
            want.sort();
            want.dedup();
            recorded.sort();
            assert_eq!(recorded, want, "winners, round {round}");
            let cut = state.judged_from() * MINUTE_MS;
            let mut judged = changed.judged.clone();
            let mut want: Vec<_> = looked_up
                .iter()
                .filter_map(|((imp, t, _, _), j)| Some((*imp, *t, (*j)?)))
                .filter(|(_, t, _)| *t >= cut)
                .collect();
            want.sort_by_key(|j| j.0);
            want.dedup();
            judged.sort_by_key(|j| j.0);
            assert_eq!(judged, want, "traits, round {round}");
        }
        assert!(
            swept > 10 && state.judged_from() > 0,
            "the sweeps cut traits"
        );
    }

    /// A winner replaced by an older, better-ranked click of its impression can be swept while
    /// the click it replaced would still be tracked: neither is recorded as changed then, as
    /// the table holds neither.
    #[test]
    fn a_replaced_winner_stays_unrecorded_when_its_replacement_is_swept() {
        let mut state = DedupState::new(minute_horizon());
        assert_eq!(state.take_changed(), None);
        let mut updates = Vec::new();
        state.decide(&click(1, 5, 100_000, "a"), &mut updates);
        state.decide(&click(1, 4, 90_000, "a"), &mut updates);
        state.decide(&click(2, 7, 100_000, "a"), &mut updates);
        // Tracked: event time + horizon + lateness at or after the frontier; 90 000 is not.
        state.sweep(160_000);
        assert_eq!(
            state.winners().map(|w| (w.0, w.1)).collect::<Vec<_>>(),
            vec![(2, 100_000)]
        );
        let changed = state.take_changed().expect("recording");
        let recorded: Vec<_> = changed.entries.iter().map(|e| (e.0, e.1)).collect();
        assert_eq!(recorded, vec![(2, 100_000)]);
    }

    #[test]
    fn winners_pack_and_unpack() {
        let w = Winner::new((1 << 42) - 1, (1 << CLICK_BITS) - 2, 7);
        assert_eq!(w.rank(), ((1 << 42) - 1, (1 << CLICK_BITS) - 2));
        assert_eq!(w.dims(), 7);
        assert_eq!(w.with_dims(u32::MAX).rank(), w.rank());
        assert_eq!(std::mem::size_of::<(u128, Winner)>(), 32);
        // A change recorded for a link (design.md gives the figure).
        assert_eq!(std::mem::size_of::<(u128, Winner, Judged)>(), 96);
    }

    #[test]
    fn the_winner_does_not_depend_on_arrival_order() {
        let a = click(1, 2, 59_000, "x");
        let b = click(1, 1, 61_000, "x");
        let c = click(1, 3, 59_000, "x");
        let orders = [vec![a, b, c], vec![b, c, a], vec![c, a, b], vec![c, b, a]];
        let results: Vec<_> = orders.into_iter().map(net).collect();
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
        // Winner: 59 000 with the smaller click fingerprint (a); minute 0 has it and one
        // duplicate, minute 60 000 has one duplicate.
        let r = &results[0];
        assert_eq!(r[&(0, a.dims)], m(1, 1));
        assert_eq!(r[&(60_000, a.dims)], m(0, 1));
    }

    #[test]
    fn an_identical_retry_is_a_duplicate() {
        let a = click(1, 5, 1_000, "x");
        let r = net(vec![a, a]);
        assert_eq!(r[&(0, a.dims)], m(1, 1));
    }

    #[test]
    fn beyond_the_horizon_counts_again_and_sweeps_do_not_change_verdicts() {
        let a = click(1, 5, 1_000, "x");
        let mut later = a;
        later.event_time += 86_400_000;
        assert_eq!(
            net(vec![a, later]).values().map(|m| m.clicks).sum::<i64>(),
            2
        );
        let mut inside = a;
        inside.event_time += 86_399_999;
        let mut state = DedupState::new(cfg());
        let mut updates = Vec::new();
        state.decide(&a, &mut updates);
        // The earliest frontier at which `inside` could still arrive: it is kept for it.
        state.sweep(inside.event_time + 300_000);
        assert_eq!(state.len(), 1);
        state.decide(&inside, &mut updates);
        let row = (window_start(inside.event_time, MINUTE_MS), inside.dims);
        assert_eq!(updates.last().unwrap(), &(Deduped::Duplicate(row), 1));
        state.sweep(a.event_time + 86_400_000 + 300_000 + 6_000_000);
        assert_eq!(state.len(), 0);
    }
}
