//! The most clicked ads over sliding windows of M minutes ending at each minute, overall and
//! per country ([`top_n`]), and per advertiser, overall and per country
//! ([`top_n_by_advertiser`]), in two stages so that no single worker ranks every ad:
//!
//! 1. Ads are sharded over the workers (exchange by ad). Each worker keeps per-minute click
//!    counts of its ads, by scope (all countries and each country; or each advertiser, in all
//!    countries and in each). When the frontier passes
//!    the end of a minute, it ranks its shard for every window ending at that minute; when a
//!    late click changes a minute, it re-ranks the windows containing it, until they are
//!    final. A ranking is the shard's top N, emitted as a differential update (the previous
//!    one retracted).
//! 2. One reduce per window merges the shards' candidates: the global top N is always among
//!    the shards' top N's.
//!
//! Work is proportional to the windows that change, not to M times the clicks.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::{HashMap, HashMapExt};

use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

use crate::click::{Measures, Row, Sym};
use crate::retire::retire;
use crate::time::MINUTE_MS;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopNConfig {
    pub n: usize,
    /// Window lengths in minutes (seed 003: 1).
    pub window_minutes: Vec<u64>,
}

impl Default for TopNConfig {
    fn default() -> Self {
        Self {
            n: 100,
            window_minutes: vec![1, 5, 60],
        }
    }
}

/// Which ranking: (window length in minutes, start of the window's last minute, scope). The
/// scope is a country, [`all_countries`], or an [`advertiser_scope`].
pub type RankKey = (u64, u64, Sym);

/// One ranking: ads with their clicks, most clicked first, ties by ad fingerprint (an order
/// that every process computes alike without knowing the texts).
pub type Ranking = Vec<(Ad, i64)>;

/// An ad with its advertiser (the signed link ties each ad to one advertiser), so that a
/// ranking can be cut to one advertiser's ads without looking anything up.
pub type Ad = (Sym, Sym);

/// The scope of the rankings over all countries (no country code is empty).
pub fn all_countries() -> Sym {
    Sym::of("")
}

/// The scope of the ranking of `advertiser`'s ads only, in `country` or [`all_countries`]. An
/// advertiser's top N is not the global top N cut to its ads: an advertiser with 40 clicked
/// ads, 3 of them in the global top 5, has a top 5 of its own, and only a ranking of its ads
/// alone holds it. A fingerprint of its own (seeded apart from [`Sym::of`]'s texts), so the
/// rankings of every scope share one key type and one arrangement.
pub fn advertiser_scope(country: Sym, advertiser: Sym) -> Sym {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&country.0.to_le_bytes());
    bytes[8..].copy_from_slice(&advertiser.0.to_le_bytes());
    Sym(xxhash_rust::xxh3::xxh3_64_with_seed(
        &bytes,
        ADVERTISER_SEED,
    ))
}

const ADVERTISER_SEED: u64 = 0xad7e_4715_e45c_09e5;

/// The time after which the ranking of the window whose last minute starts at `end` no
/// longer changes.
pub fn final_at(end: u64, allowed_lateness_ms: u64) -> u64 {
    end + MINUTE_MS + allowed_lateness_ms
}

/// When a final ranking leaves the collection (the minute rows' retention).
pub fn retire_at(end: u64, retention_ms: u64) -> u64 {
    end + MINUTE_MS + retention_ms
}

/// The time a window's ranking enters the collection: when the frontier passes the end of
/// its last minute (`end`). Late clicks change it at their own, later, times.
pub fn ranked_at(end: u64) -> u64 {
    end + MINUTE_MS
}

/// The last minute of the latest window whose ranking is in the collection at `read_at`: the
/// window a ranking query reads ([`crate::query::Stamps::stamp`]). Not the latest minute
/// complete at `read_at`: when the frontier stands at a minute's end (`read_at` one before),
/// that minute is complete, but its ranking comes at the frontier's time, after `read_at`.
pub fn latest_ranked(read_at: u64) -> u64 {
    (read_at / MINUTE_MS).saturating_sub(1) * MINUTE_MS
}

/// When an advertiser's ranking leaves the collection: as soon as no query can read it. A
/// query reads the window [`latest_ranked`] at its read time, so the window ending at `end`
/// is read only at read times in [end + 1 min, end + 2 min). Advertisers' rankings are many (one per advertiser
/// and per advertiser and country, for each window length and minute, each up to N ads), and
/// kept for the minute rows' retention like the global ones they would take gigabytes.
pub fn advertiser_retire_at(end: u64) -> u64 {
    end + 2 * MINUTE_MS
}

type Scope = Sym;
/// The scopes a minute row counts in: all its ads' rankings and one narrower.
type Scopes = fn(&crate::click::Dims) -> [Scope; 2];
/// A minute row's change as a shard ranks it: (minute, its scopes, ad, clicks).
type Change = (u64, [Scope; 2], Ad, i64);
type ShardUpdate = (((RankKey, u64), Ranking), u64, isize);

/// Per-worker state of stage 1.
#[derive(Default)]
struct Shard {
    /// (scope, minute) → ad → clicks.
    minutes: BTreeMap<(Scope, u64), HashMap<Ad, i64>>,
    /// The last ranking emitted per window, to retract when it changes.
    emitted: HashMap<RankKey, Ranking>,
    /// (scope, window minutes) → the clicks per ad of the last window of that length ranked,
    /// for windows of [`SLIDE_FROM_MINUTES`] or more: see [`Shard::slide`].
    sliding: HashMap<(Scope, u64), Sliding>,
}

/// Windows shorter than this are summed in full each time: a few minute maps cost little to
/// sum, and a running sum is one more map per scope and window length to hold.
const SLIDE_FROM_MINUTES: u64 = 10;

/// A window's clicks per ad, kept as the window moves on by a minute at a time. It holds
/// exactly the sum of the shard's minutes in the window: late changes to them are added as
/// they come, and it is dropped before any of its minutes is forgotten.
struct Sliding {
    end: u64,
    sums: HashMap<Ad, i64>,
}

impl Sliding {
    /// The minutes `end - (m - 1)` to `end`, as minute starts.
    fn holds(&self, m: u64, minute: u64) -> bool {
        minute <= self.end && minute + (m - 1) * MINUTE_MS >= self.end
    }

    fn add(&mut self, ad: Ad, clicks: i64) {
        use std::collections::hash_map::Entry;
        match self.sums.entry(ad) {
            Entry::Occupied(mut o) => {
                *o.get_mut() += clicks;
                if *o.get() == 0 {
                    o.remove();
                }
            }
            Entry::Vacant(v) => {
                if clicks != 0 {
                    v.insert(clicks);
                }
            }
        }
    }

    fn add_minute(&mut self, ads: Option<&HashMap<Ad, i64>>, sign: i64) {
        for (ad, c) in ads.into_iter().flatten() {
            self.add(*ad, sign * c);
        }
    }
}

impl Shard {
    /// The ranking of `key`, a window ranked for the first time, in minute order: from the
    /// window of its length and scope ranked the minute before, one minute's clicks added
    /// and one's taken away. Summing every minute of every window was most of top-N's time
    /// on a long stream (60 minute maps for each 60-minute window).
    fn slide(&mut self, key: &RankKey, n: usize) -> Ranking {
        let (m, end, scope) = *key;
        if m < SLIDE_FROM_MINUTES {
            return self.rank(key, n);
        }
        let minutes = &self.minutes;
        let w = match self.sliding.get_mut(&(scope, m)) {
            Some(w) if w.end + MINUTE_MS == end => {
                w.add_minute(minutes.get(&(scope, end)), 1);
                if let Some(gone) = end.checked_sub(m * MINUTE_MS) {
                    w.add_minute(minutes.get(&(scope, gone)), -1);
                }
                w.end = end;
                w
            }
            _ => {
                let w = Sliding {
                    end,
                    sums: self.sums(key),
                };
                self.sliding.entry((scope, m)).insert_entry(w).into_mut()
            }
        };
        best(w.sums.iter().map(|(ad, c)| (*ad, *c)), n)
    }

    fn rank(&self, key: &RankKey, n: usize) -> Ranking {
        best(self.sums(key).into_iter(), n)
    }

    /// The clicks per ad over the window `key`, summed from its minutes.
    fn sums(&self, (m, end, scope): &RankKey) -> HashMap<Ad, i64> {
        let mut sums: HashMap<Ad, i64> = HashMap::new();
        let first = end.saturating_sub((m - 1) * MINUTE_MS);
        for (_, ads) in self.minutes.range((*scope, first)..=(*scope, *end)) {
            for (ad, c) in ads {
                *sums.entry(*ad).or_default() += c;
            }
        }
        sums
    }

    /// `ad`'s clicks over the window `key`.
    fn total(&self, (m, end, scope): &RankKey, ad: &Ad) -> i64 {
        let first = end.saturating_sub((m - 1) * MINUTE_MS);
        self.minutes
            .range((*scope, first)..=(*scope, *end))
            .filter_map(|(_, ads)| ads.get(ad))
            .sum()
    }

    /// The ranking of `key` once the clicks of `changed` ads in it changed, from the ranking
    /// before (`current`), of which `lost` are the ads that lost clicks. Unless one of
    /// `current`'s ads lost clicks, every ad it held has at least its old total, so no ad
    /// outside it and unchanged can enter: only the changed ads (their totals summed over the
    /// window, one lookup per minute) can enter or move. Otherwise an ad outside may have to
    /// take the place, which only a full [`Shard::rank`] can tell.
    fn rerank(
        &self,
        key: &RankKey,
        current: &Ranking,
        changed: &BTreeSet<Ad>,
        lost: &BTreeSet<Ad>,
        n: usize,
    ) -> Ranking {
        if current.iter().any(|(ad, _)| lost.contains(ad)) {
            return self.rank(key, n);
        }
        let others = current
            .iter()
            .filter(|(ad, _)| !changed.contains(ad))
            .copied();
        let totals = changed.iter().map(|ad| (*ad, self.total(key, ad)));
        best(others.chain(totals), n)
    }
}

/// The global rankings, over all countries and per country, kept for `retention_ms`.
pub fn top_n<'s>(
    minute_rows: VecCollection<'s, u64, Row, Measures>,
    cfg: &TopNConfig,
    allowed_lateness_ms: u64,
    retention_ms: u64,
) -> VecCollection<'s, u64, (RankKey, Ranking), isize> {
    rankings(
        minute_rows,
        cfg,
        allowed_lateness_ms,
        ("TopNShard", "TopNMerge"),
        |d| [all_countries(), d.country],
        move |end| retire_at(end, retention_ms),
    )
}

/// Each advertiser's rankings of its own ads, over all countries and per country, kept only
/// while a query may read them ([`advertiser_retire_at`]).
pub fn top_n_by_advertiser<'s>(
    minute_rows: VecCollection<'s, u64, Row, Measures>,
    cfg: &TopNConfig,
    allowed_lateness_ms: u64,
) -> VecCollection<'s, u64, (RankKey, Ranking), isize> {
    rankings(
        minute_rows,
        cfg,
        allowed_lateness_ms,
        ("TopNByAdvertiserShard", "TopNByAdvertiserMerge"),
        |d| {
            [
                advertiser_scope(all_countries(), d.advertiser_id),
                advertiser_scope(d.country, d.advertiser_id),
            ]
        },
        advertiser_retire_at,
    )
}

/// Rankings changed in one activation, newest per window ahead of what was emitted: a window
/// may change more than once before anything is emitted.
#[derive(Default)]
struct Changed {
    latest: HashMap<RankKey, Ranking>,
    list: Vec<(RankKey, Ranking, u64)>,
}

impl Changed {
    /// Sets `key`'s ranking at `at` to `next(shard, newest ranking so far)`. An empty ranking
    /// is no ranking: nothing to emit unless one is retracted.
    fn set(
        &mut self,
        shard: &Shard,
        key: RankKey,
        at: u64,
        next: impl FnOnce(&Shard, &Ranking) -> Ranking,
    ) {
        let none = Ranking::new();
        let current = self
            .latest
            .get(&key)
            .or_else(|| shard.emitted.get(&key))
            .unwrap_or(&none);
        let ranking = next(shard, current);
        if ranking != *current {
            self.latest.insert(key, ranking.clone());
            self.list.push((key, ranking, at));
        }
    }
}

/// Stage 1 on one worker: its shard's counts and rankings, and the changes waiting for the
/// frontier. The operator only buffers input and asks it to [`Ranker::step`].
struct Ranker {
    shard_id: u64,
    n: usize,
    windows: Vec<u64>,
    longest: u64,
    allowed_lateness_ms: u64,
    scopes_of: Scopes,
    shard: Shard,
    pending: BTreeMap<u64, Vec<Change>>,
    /// The scopes of each minute kept, and how many minutes each scope has kept (the scopes
    /// ranked): what the shard holds, by minute and by scope. Each step reads the first and last minute and forgets the
    /// oldest; a scan of the shard for them, every step, was a sixth of a long stream's time
    /// (there are as many advertiser scopes as advertisers and their countries).
    minute_scopes: BTreeMap<u64, Vec<Scope>>,
    scope_minutes: BTreeMap<Scope, u32>,
    /// The earliest time at which an emitted ranking is final (`u64::MAX`: none emitted).
    first_final: u64,
    /// Minutes whose windows have been ranked at least once: everything before.
    ranked_through: Option<u64>,
}

impl Ranker {
    fn new(
        shard_id: u64,
        n: usize,
        windows: Vec<u64>,
        allowed_lateness_ms: u64,
        scopes_of: Scopes,
    ) -> Self {
        Ranker {
            shard_id,
            n,
            longest: windows.iter().copied().max().unwrap_or(1),
            windows,
            allowed_lateness_ms,
            scopes_of,
            shard: Shard::default(),
            pending: BTreeMap::new(),
            minute_scopes: BTreeMap::new(),
            scope_minutes: BTreeMap::new(),
            first_final: u64::MAX,
            ranked_through: None,
        }
    }

    /// Buffers a minute row's change at time `t`.
    fn take(&mut self, t: u64, (minute, dims): Row, clicks: i64) {
        if clicks != 0 {
            self.pending.entry(t).or_default().push((
                minute,
                (self.scopes_of)(&dims),
                (dims.ad_id, dims.advertiser_id),
                clicks,
            ));
        }
    }

    /// Everything the frontier (`bound`; `None` when input ended) now allows: late changes
    /// re-ranked, windows of passed minutes ranked, as updates at times not before `now`.
    fn step(&mut self, bound: Option<u64>, now: u64) -> Vec<ShardUpdate> {
        let limit = bound.unwrap_or(u64::MAX);
        let mut changed = Changed::default();
        self.apply_changes(limit, &mut changed);
        self.rank_passed_minutes(limit, now, &mut changed);
        let updates = self.emit(changed, now);
        self.forget(limit, bound.is_none());
        updates
    }

    /// Applies the changes at times before `limit`; late changes to minutes already ranked
    /// re-rank their windows, at the change's time, while they are not final.
    fn apply_changes(&mut self, limit: u64, changed: &mut Changed) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= limit {
                break;
            }
            let (t, changes) = entry.remove_entry();
            // Windows already ranked and not final that a change falls in: the ads that
            // changed in each, and those that lost clicks.
            let mut dirty: BTreeMap<RankKey, (BTreeSet<Ad>, BTreeSet<Ad>)> = BTreeMap::new();
            for (minute, in_scopes, ad, clicks) in changes {
                for scope in in_scopes {
                    let ads = self
                        .shard
                        .minutes
                        .entry((scope, minute))
                        .or_insert_with(|| {
                            self.minute_scopes.entry(minute).or_default().push(scope);
                            *self.scope_minutes.entry(scope).or_default() += 1;
                            HashMap::default()
                        });
                    *ads.entry(ad).or_default() += clicks;
                    for &m in self.windows.iter().filter(|m| **m >= SLIDE_FROM_MINUTES) {
                        if let Some(w) = self.shard.sliding.get_mut(&(scope, m))
                            && w.holds(m, minute)
                        {
                            w.add(ad, clicks);
                        }
                    }
                    if self.ranked_through.is_none_or(|r| minute > r) {
                        continue; // ranked when the frontier passes it
                    }
                    for &m in &self.windows {
                        for k in 0..m {
                            let end = minute + k * MINUTE_MS;
                            if self.ranked_through.is_some_and(|r| end <= r)
                                && t < final_at(end, self.allowed_lateness_ms)
                            {
                                let d = dirty.entry((m, end, scope)).or_default();
                                d.0.insert(ad);
                                if clicks < 0 {
                                    d.1.insert(ad);
                                }
                            }
                        }
                    }
                }
            }
            let n = self.n;
            for (key, (ads, lost)) in dirty {
                changed.set(&self.shard, key, t, |s, cur| {
                    s.rerank(&key, cur, &ads, &lost, n)
                });
            }
        }
    }

    /// Ranks the windows of the minutes the frontier has passed the end of.
    fn rank_passed_minutes(&mut self, limit: u64, now: u64, changed: &mut Changed) {
        let first_data = self.minute_scopes.first_key_value().map(|(m, _)| *m);
        let mut minute = self
            .ranked_through
            .map_or(first_data.unwrap_or(u64::MAX), |r| r + MINUTE_MS);
        let last_data = self.minute_scopes.last_key_value().map_or(0, |(m, _)| *m);
        while minute != u64::MAX && minute + MINUTE_MS <= limit {
            if minute > last_data + (self.longest - 1) * MINUTE_MS {
                break; // no window ending here or later holds data
            }
            let at = ranked_at(minute).max(now);
            for scope in self.scope_minutes.keys() {
                for &m in &self.windows {
                    let key = (m, minute, *scope);
                    let ranking = self.shard.slide(&key, self.n);
                    changed.set(&self.shard, key, at, |_, _| ranking);
                }
            }
            self.ranked_through = Some(minute);
            minute += MINUTE_MS;
        }
    }

    /// The updates for `changed`: the previous ranking retracted, the new one inserted.
    fn emit(&mut self, changed: Changed, now: u64) -> Vec<ShardUpdate> {
        let mut out = Vec::new();
        for (key, ranking, at) in changed.list {
            let at = at.max(now);
            if let Some(old) = self.shard.emitted.remove(&key) {
                out.push((((key, self.shard_id), old), at, -1));
            }
            if !ranking.is_empty() {
                let final_at = final_at(key.1, self.allowed_lateness_ms);
                self.first_final = self.first_final.min(final_at);
                self.shard.emitted.insert(key, ranking.clone());
                out.push((((key, self.shard_id), ranking), at, 1));
            }
        }
        out
    }

    /// Forgets final rankings (they no longer change; [`retire`] retracts them) and minutes
    /// no window that can still change needs.
    fn forget(&mut self, limit: u64, ended: bool) {
        let lateness = self.allowed_lateness_ms;
        if self.first_final <= limit {
            let emitted = &mut self.shard.emitted;
            emitted.retain(|(_, end, _), _| final_at(*end, lateness) > limit);
            self.first_final = emitted
                .keys()
                .map(|(_, end, _)| final_at(*end, lateness))
                .min()
                .unwrap_or(u64::MAX);
        }
        if ended {
            return;
        }
        let keep_from = limit.saturating_sub(lateness + self.longest * MINUTE_MS + MINUTE_MS);
        if self
            .minute_scopes
            .first_key_value()
            .is_some_and(|(m, _)| *m < keep_from)
        {
            // A window sum must not outlive a minute it holds.
            self.shard
                .sliding
                .retain(|(_, m), w| w.end + MINUTE_MS >= keep_from + m * MINUTE_MS);
        }
        while let Some(first) = self.minute_scopes.first_entry() {
            if *first.key() >= keep_from {
                break;
            }
            let (minute, scopes) = first.remove_entry();
            for scope in scopes {
                self.shard.minutes.remove(&(scope, minute));
                let left = self.scope_minutes.get_mut(&scope).expect("a kept scope");
                *left -= 1;
                if *left == 0 {
                    // A scope with no minute left ranks empty: it is no longer ranked.
                    self.scope_minutes.remove(&scope);
                }
            }
        }
    }
}

/// The rankings of every scope `scopes` puts minute rows in, each retracted at
/// `retire_at(window end)`.
fn rankings<'s>(
    minute_rows: VecCollection<'s, u64, Row, Measures>,
    cfg: &TopNConfig,
    allowed_lateness_ms: u64,
    (shard_name, merge_name): (&str, &str),
    scopes_of: Scopes,
    retire_at: impl Fn(u64) -> u64 + 'static,
) -> VecCollection<'s, u64, (RankKey, Ranking), isize> {
    let (n, windows) = (cfg.n, cfg.window_minutes.clone());
    let exchange = Exchange::new(|((_, d), _, _): &(Row, u64, Measures)| d.ad_id.0);
    let shards = minute_rows
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<ShardUpdate>>, _, _, _>(
            exchange,
            shard_name,
            move |cap, info| {
                let mut cap = Some(cap);
                let mut ranker = Ranker::new(
                    info.global_id as u64,
                    n,
                    windows,
                    allowed_lateness_ms,
                    scopes_of,
                );
                move |(input, frontier), output| {
                    input.for_each(|_, data| {
                        for (row, t, m) in data.drain(..) {
                            ranker.take(t, row, m.clicks);
                        }
                    });
                    let Some(c) = cap.as_mut() else { return };
                    let bound = frontier.frontier().first().copied();
                    let updates = ranker.step(bound, *c.time());
                    output.session(&*c).give_iterator(updates.into_iter());
                    match bound {
                        Some(b) if b > *c.time() => c.downgrade(&b),
                        Some(_) => {}
                        None => cap = None::<Capability<u64>>,
                    }
                }
            },
        )
        .as_collection();
    retire(shards, move |(((_, end, _), _), _)| retire_at(*end))
        .map(|((key, _shard), ranking)| (key, ranking))
        .reduce_named(
            merge_name,
            move |_key, shards: &[(&Ranking, isize)], out| {
                let candidates = shards.iter().flat_map(|(r, _)| r.iter().copied());
                let ranking = best(candidates, n);
                if !ranking.is_empty() {
                    out.push((ranking, 1));
                }
            },
        )
}

/// The `n` best (ad, clicks): most clicks first, then smallest ad fingerprint; zero counts
/// excluded.
///
/// Only the `n` best are sorted, and the ranking holds exactly them: rankings are kept (the
/// last one per window, the arrangement, the retention queue), and a vector truncated from
/// every ad of a shard would keep the room of them all.
pub fn best(ads: impl Iterator<Item = (Ad, i64)>, n: usize) -> Ranking {
    let order = |a: &(Ad, i64), b: &(Ad, i64)| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0));
    let mut all: Ranking = ads.filter(|(_, c)| *c > 0).collect();
    if all.len() > n {
        if n == 0 {
            return Ranking::new();
        }
        all.select_nth_unstable_by(n - 1, order);
        all.truncate(n);
    }
    all.shrink_to_fit();
    all.sort_by(order);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::click::Dims;

    /// Every ranking a shard emits, of windows ranked as they pass (summed by sliding) and of
    /// windows re-ranked by late changes and retractions, equals the window's ranking over
    /// every click it ever took, through a silence long enough to forget every minute held.
    #[test]
    fn sliding_windows_rank_as_full_sums() {
        let lateness = 2 * MINUTE_MS;
        let n = 3;
        let mut r = Ranker::new(0, n, vec![1, 3, SLIDE_FROM_MINUTES + 2], lateness, |d| {
            [all_countries(), d.country]
        });
        let mut next = crate::testing::numbers(11u64);
        let mut truth: BTreeMap<(Scope, u64), HashMap<Ad, i64>> = BTreeMap::new();
        let mut ranked = 0;
        for step in 1..140u64 {
            let now = step * MINUTE_MS;
            let silent = (50..80).contains(&step);
            for _ in 0..if silent { 0 } else { 25 } {
                let minute = (step - next(3).min(step)) * MINUTE_MS;
                let dims = Dims {
                    ad_id: Sym(next(8)),
                    country: Sym(next(3)),
                    ..Dims::default()
                };
                let ad = (dims.ad_id, dims.advertiser_id);
                let scopes = [all_countries(), dims.country];
                // A retraction where the click was counted, else one or two clicks.
                let held = truth.get(&(scopes[1], minute)).and_then(|a| a.get(&ad));
                let clicks = if held.is_some_and(|c| *c > 0) && next(3) == 0 {
                    -1
                } else {
                    1 + next(2) as i64
                };
                for scope in scopes {
                    *truth
                        .entry((scope, minute))
                        .or_default()
                        .entry(ad)
                        .or_default() += clicks;
                }
                r.take(now, (minute, dims), clicks);
            }
            for (((key, _), ranking), _, diff) in r.step(Some(now + 1), now) {
                if diff > 0 {
                    let (m, end, scope) = key;
                    let first = end.saturating_sub((m - 1) * MINUTE_MS);
                    let mut sums: HashMap<Ad, i64> = HashMap::new();
                    for (_, ads) in truth.range((scope, first)..=(scope, end)) {
                        for (ad, c) in ads {
                            *sums.entry(*ad).or_default() += c;
                        }
                    }
                    assert_eq!(
                        ranking,
                        best(sums.into_iter(), n),
                        "window {key:?} at {now}"
                    );
                    ranked += 1;
                }
            }
        }
        assert!(ranked > 1_000, "only {ranked} rankings checked");
    }

    /// As a stream moves on, a shard forgets exactly the minutes no window that can still
    /// change needs, and the scopes left without minutes; its indexes by minute and by scope
    /// agree with the minutes it holds, and no final ranking is kept.
    #[test]
    fn a_shard_forgets_old_minutes_and_scopes_left_empty() {
        let lateness = 2 * MINUTE_MS;
        let mut r = Ranker::new(0, 3, vec![1, 5], lateness, |d| [d.country, d.advertiser_id]);
        let mut next = crate::testing::numbers(5u64);
        let mut added = BTreeSet::new();
        let mut forgot_a_scope = false;
        for step in 1..60u64 {
            let now = step * MINUTE_MS;
            for _ in 0..30 {
                let minute = (step - next(3).min(step)) * MINUTE_MS;
                // Countries come and go every ten minutes; advertisers stay.
                let dims = Dims {
                    ad_id: Sym(next(10)),
                    advertiser_id: Sym(next(4)),
                    country: Sym(100 + step / 10 * 10 + next(3)),
                    ..Dims::default()
                };
                r.take(now, (minute, dims), 1);
                added.insert((dims.country, minute));
                added.insert((dims.advertiser_id, minute));
            }
            let scopes_before = r.scope_minutes.len();
            r.step(Some(now + 1), now);
            let keep_from = (now + 1).saturating_sub(lateness + 5 * MINUTE_MS + MINUTE_MS);
            let held: BTreeSet<(Scope, u64)> = r.shard.minutes.keys().copied().collect();
            let want: BTreeSet<(Scope, u64)> = added
                .iter()
                .filter(|(_, m)| *m >= keep_from)
                .copied()
                .collect();
            assert_eq!(held, want, "minutes held after the step at {now}");
            let by_minute: BTreeSet<(Scope, u64)> = r
                .minute_scopes
                .iter()
                .flat_map(|(m, ss)| ss.iter().map(move |s| (*s, *m)))
                .collect();
            assert_eq!(by_minute, held);
            let scopes: BTreeSet<Scope> = held.iter().map(|(s, _)| *s).collect();
            assert_eq!(
                r.scope_minutes.keys().copied().collect::<BTreeSet<_>>(),
                scopes
            );
            for (s, n) in &r.scope_minutes {
                assert_eq!(*n as usize, held.iter().filter(|(h, _)| h == s).count());
            }
            assert_eq!(r.scope_minutes.len(), scopes.len());
            assert!(
                r.shard
                    .emitted
                    .keys()
                    .all(|(_, end, _)| final_at(*end, lateness) > now + 1)
            );
            forgot_a_scope |= r.scope_minutes.len() < scopes_before;
        }
        assert!(
            forgot_a_scope,
            "the countries that left were never forgotten"
        );
    }

    #[test]
    fn ranking_breaks_ties_by_ad_fingerprint_and_drops_zeros() {
        let r = best(
            [(2, 3), (1, 3), (3, 5), (9, 0)]
                .into_iter()
                .map(|(a, c)| ((Sym(a), Sym(0)), c)),
            3,
        );
        let ad = |a| (Sym(a), Sym(0));
        assert_eq!(r, vec![(ad(3), 5), (ad(1), 3), (ad(2), 3)]);
    }

    /// The partial sort gives the full sort's first `n`, ties included, and holds no more
    /// room than they need.
    #[test]
    fn best_is_the_first_n_of_a_full_sort() {
        let mut next = crate::testing::numbers(7u64);
        for _ in 0..200 {
            let len = next(300) as usize;
            let n = next(120) as usize;
            let ads: Vec<(Ad, i64)> = (0..len)
                .map(|i| ((Sym(next(1_000)), Sym(i as u64)), next(8) as i64 - 1))
                .collect();
            let mut full: Ranking = ads.iter().copied().filter(|(_, c)| *c > 0).collect();
            full.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            full.truncate(n);
            let r = best(ads.into_iter(), n);
            assert_eq!(r, full, "n = {n}");
            assert!(
                r.capacity() <= n.max(r.len()),
                "room for {} of {n}",
                r.capacity()
            );
        }
    }

    /// Every kind of late change, applied to a window of two minutes ranked to 2 ads: the
    /// ranking updated from the one before equals a full re-rank.
    #[test]
    fn a_late_change_reranks_a_window_as_a_full_rank_would() {
        let ad = |a| (Sym(a), Sym(0));
        let scope = all_countries();
        let key: RankKey = (2, MINUTE_MS, scope);
        // (ad, minute, clicks) changes, each from the same starting counts: A 5, B 4, C 3, D 1.
        let cases: [&[(u64, u64, i64)]; 6] = [
            &[(3, 0, 2)],             // an outside ad grows past the cut
            &[(2, MINUTE_MS, 1)],     // a ranked ad grows
            &[(4, 0, -1)],            // an outside ad loses clicks: nothing changes
            &[(2, 0, -2)],            // a ranked ad loses clicks: an outside ad enters
            &[(1, 0, -5), (4, 0, 9)], // both at once
            &[(5, MINUTE_MS, 7)],     // a new ad
        ];
        for changes in cases {
            let mut shard = Shard::default();
            for (a, c) in [(1, 5), (2, 4), (3, 3), (4, 1)] {
                shard
                    .minutes
                    .entry((scope, 0))
                    .or_default()
                    .insert(ad(a), c);
            }
            let before = shard.rank(&key, 2);
            let (mut changed, mut lost) = (BTreeSet::new(), BTreeSet::new());
            for &(a, minute, c) in changes {
                *shard
                    .minutes
                    .entry((scope, minute))
                    .or_default()
                    .entry(ad(a))
                    .or_default() += c;
                changed.insert(ad(a));
                if c < 0 {
                    lost.insert(ad(a));
                }
            }
            assert_eq!(
                shard.rerank(&key, &before, &changed, &lost, 2),
                shard.rank(&key, 2),
                "{changes:?}"
            );
        }
    }

    type Seen = Vec<((RankKey, Ranking), u64, isize)>;

    /// The global rankings and the advertisers' rankings of `rows` (each at time 0), as
    /// updates, once the frontier has passed each of `frontiers`.
    fn rankings_of(cfg: TopNConfig, rows: Vec<(Row, Measures)>, frontiers: &[u64]) -> (Seen, Seen) {
        use differential_dataflow::input::Input as _;
        use std::sync::{Arc, Mutex};
        use timely::dataflow::operators::Probe;

        let seen: Arc<Mutex<(Seen, Seen)>> = Arc::default();
        let out = seen.clone();
        let frontiers = frontiers.to_vec();
        timely::execute_directly(move |worker| {
            let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, minute) = scope.new_collection::<Row, Measures>();
                let (o1, o2) = (out.clone(), out.clone());
                let global = top_n(minute.clone(), &cfg, 0, 48 * 3_600_000);
                global.inspect(move |u| o1.lock().unwrap().0.push(u.clone()));
                let own = top_n_by_advertiser(minute, &cfg, 0);
                let (probe, own) = own.inner.probe();
                own.as_collection()
                    .inspect(move |u| o2.lock().unwrap().1.push(u.clone()));
                (input, probe)
            });
            for (row, m) in rows {
                input.update(row, m);
            }
            for t in frontiers {
                input.advance_to(t);
                input.flush();
                while probe.less_than(&t) {
                    worker.step();
                }
            }
        });
        std::mem::take(&mut *seen.lock().unwrap())
    }

    fn row(minute: u64, ad: u64, advertiser: Sym, country: Sym) -> Row {
        let dims = crate::click::Dims {
            ad_id: Sym(ad),
            advertiser_id: advertiser,
            country,
            ..Default::default()
        };
        (minute, dims)
    }

    /// Issue 11, item 9: an advertiser whose ads are all outside the global top N has a top
    /// N of its own, over all countries and per country; it leaves once no query can read it.
    #[test]
    fn each_advertiser_has_its_own_top_n() {
        let cfg = TopNConfig {
            n: 3,
            window_minutes: vec![1],
        };
        let (small, big, us) = (Sym::of("adv_small"), Sym::of("adv_big"), Sym::of("US"));
        // adv_big's 6 ads have 10 to 15 clicks, adv_small's 6 ads 1 to 6, in minute 0.
        let mut rows = Vec::new();
        for (adv, base) in [(big, 9), (small, 0)] {
            for a in 1..=6u64 {
                let clicks = Measures::billable((base + a) as i64);
                rows.push((row(0, base * 100 + a, adv, us), clicks));
            }
        }
        let (global, own) = rankings_of(cfg, rows, &[1, 3 * MINUTE_MS]);
        let ads = |r: &Ranking| r.iter().map(|((a, _), c)| (a.0, *c)).collect::<Vec<_>>();
        let key = (1, 0, all_countries());
        let global: Vec<_> = global
            .iter()
            .filter(|((k, _), _, d)| *k == key && *d > 0)
            .collect();
        assert_eq!(global.len(), 1, "{global:?}");
        assert_eq!(ads(&global[0].0.1), [(906, 15), (905, 14), (904, 13)]);
        for country in [all_countries(), us] {
            let key = (1, 0, advertiser_scope(country, small));
            let mine: Vec<_> = own.iter().filter(|((k, _), ..)| *k == key).collect();
            assert_eq!(mine.len(), 2, "inserted and retired: {mine:?}");
            assert_eq!(ads(&mine[0].0.1), [(6, 6), (5, 5), (4, 4)]);
            assert_eq!((mine[0].1, mine[0].2), (MINUTE_MS, 1));
            assert_eq!((mine[1].1, mine[1].2), (advertiser_retire_at(0), -1));
        }
    }

    /// A ranking query finds its window's ranking at every read time, the frontier standing
    /// inside a minute or exactly at a minute's end. (With the window chosen as the latest
    /// minute complete at the read time, a frontier at a minute's end read that minute before
    /// its ranking came: an empty top N, marked complete.)
    #[test]
    fn a_ranking_query_reads_a_ranking_at_every_read_time() {
        let cfg = TopNConfig {
            n: 3,
            window_minutes: vec![1, 5],
        };
        let (adv, us) = (Sym::of("adv"), Sym::of("US"));
        let minutes = 6;
        let rows = (0..minutes)
            .map(|m| {
                (
                    row(m * MINUTE_MS, 1 + m % 2, adv, us),
                    Measures::billable(1),
                )
            })
            .collect();
        let frontiers: Vec<u64> = (1..=minutes * 4).map(|q| q * MINUTE_MS / 4).collect();
        let (global, own) = rankings_of(cfg.clone(), rows, &frontiers);
        let scopes = [all_countries(), advertiser_scope(all_countries(), adv)];
        for read_at in (2 * MINUTE_MS - 1..minutes * MINUTE_MS).step_by(250) {
            for read_at in [read_at, read_at + 1] {
                let mut stamps = crate::query::Stamps::default();
                stamps.batch(read_at + 1);
                for (&m, scope) in cfg.window_minutes.iter().zip(scopes) {
                    let q = stamps.stamp(crate::query::QueryKind::Top {
                        key: (m, 0, scope),
                        n: 3,
                        advertiser: None,
                    });
                    let crate::query::QueryKind::Top { key, .. } = q.kind else {
                        unreachable!()
                    };
                    let updates = if scope == all_countries() {
                        &global
                    } else {
                        &own
                    };
                    let live: isize = updates
                        .iter()
                        .filter(|((k, _), t, _)| *k == key && *t <= q.read_at)
                        .map(|(_, _, d)| d)
                        .sum();
                    assert_eq!(live, 1, "{key:?} at {}: {updates:?}", q.read_at);
                }
            }
        }
    }
}
