//! Incremental checkpoints (issue 16 item 4): a chain of a full checkpoint and links, each
//! link holding only what changed since the chain's tip, the newest committed checkpoint.
//!
//! - Dedup winners: the dedup records each winner that changes, with its traits
//!   ([`DedupState::take_changed`]); a link holds the current winners, and their traits, of
//!   the impressions changed since the tip: those recorded since the previous save, or, after
//!   checkpoints that failed in between, those of every save since the tip, looked up (a
//!   worker keeps each save's impressions until a newer checkpoint is committed).
//! - Rows and reach sketches, by window: a worker keeps an order-free digest of its rows per
//!   (granularity, window start) ([`Digests`]); a link holds the rows of the windows whose
//!   digest changed since the tip, and names the windows that emptied (retired by retention,
//!   or cancelled out). It reads and digests only the windows with an update since the tip
//!   (`Traces::changed_since`); the others keep the previous checkpoint's digests.
//! - A changed window's reach sketch that the tip had goes into a link as what it gained
//!   since ([`Growth`]: the users an exact set gained, the registers of a dense one that
//!   rose) when that is smaller than the sketch, which it is for an open hour or day late in
//!   its window. For that, a worker keeps a copy of the sketches of the windows its previous
//!   checkpoint saw change (the open ones); a restore grows the tip's sketch as it reads the
//!   link ([`push_part`]).
//! - Everything else of a part (source cut, report writer, texts) is small and whole in
//!   every link.
//!
//! A restore folds each worker's base and links oldest first, later ones overriding
//! ([`fold`]), dropping what each part overrides as it is read ([`push_part`]); winners swept since the base are dropped by the dedup's own sweep, which a
//! restored state runs at its first step, and traits older than the newest link's cut are
//! dropped here. The first checkpoint of a run is full, so a chain never spans two worker
//! counts, and a full one follows every `full_every` links ([`plan`]), which bounds what a
//! restore reads. Pruning keeps every checkpoint a kept manifest builds on ([`kept`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hash;

use adclick_dataflows::click::{Measures, Row};
use adclick_dataflows::dedup::{DedupState, Impressions};
use adclick_dataflows::reach::Group;
use adclick_dataflows::sketch::{Growth, UserSketch};
use adclick_dataflows::{RestoredRows, Windows};
use serde::{Deserialize, Serialize};

use super::corrupt::Corrupt;
use super::part::{LegacyWinners, Winners, WorkerPart};

/// What a part file holds (format 5): a whole part, or a link of a chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Part {
    Full(WorkerPart),
    Link(LinkPart),
}

impl Part {
    pub fn worker(&self) -> usize {
        match self {
            Part::Full(p) => p.worker,
            Part::Link(l) => l.part.worker,
        }
    }

    /// The worker's part, whole or (in a link) of what changed.
    pub fn worker_part_mut(&mut self) -> &mut WorkerPart {
        match self {
            Part::Full(w) => w,
            Part::Link(l) => &mut l.part,
        }
    }
}

/// Format 4's part (before growths, winners encoded the old way), read as a format 5 one
/// whose links grow nothing.
#[derive(Deserialize)]
pub enum PartV4 {
    Full(WorkerPart<LegacyWinners>),
    Link {
        tip: u64,
        part: WorkerPart<LegacyWinners>,
        emptied: Emptied,
        judged_from: u64,
    },
}

impl From<PartV4> for Part {
    fn from(p: PartV4) -> Self {
        match p {
            PartV4::Full(w) => Part::Full(w.into()),
            PartV4::Link {
                tip,
                part,
                emptied,
                judged_from,
            } => Part::Link(LinkPart {
                tip,
                part: part.into(),
                emptied,
                judged_from,
                grown: Vec::new(),
            }),
        }
    }
}

/// One worker's changes since the checkpoint at `tip`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkPart {
    /// The checkpoint this link applies to (the previous one in its chain).
    pub tip: u64,
    /// As a full part, except: `winners` holds the winners (and their traits) of the
    /// impressions changed since `tip`, and `rows` the rows of the windows that changed.
    pub part: WorkerPart,
    /// The windows that had rows at `tip` and have none now.
    pub emptied: Emptied,
    /// The dedup's traits cut ([`DedupState::judged_from`]): older traits are gone.
    pub judged_from: u64,
    /// The reach sketches of the changed windows that are given as what they gained since
    /// the tip (the others of those windows are whole in `part.rows.reach`).
    pub grown: Vec<(Group, Growth)>,
}

/// Windows without rows any more, by granularity; reach by (length, start).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Emptied {
    pub minute: Vec<u64>,
    pub hour: Vec<u64>,
    pub day: Vec<u64>,
    pub reach: Vec<(u64, u64)>,
}

/// What the next checkpoint of a worker is, decided alike by every worker from the
/// manifests on disk (the previous checkpoint has settled before the next is asked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    Full,
    /// A link on `tip`; `chain` is what the new checkpoint builds on, oldest first.
    Link {
        tip: u64,
        chain: Vec<u64>,
    },
}

impl Plan {
    pub fn chain(&self) -> Vec<u64> {
        match self {
            Plan::Full => Vec::new(),
            Plan::Link { chain, .. } => chain.clone(),
        }
    }
}

/// The next checkpoint's plan: a link on the newest committed checkpoint `tip` (its
/// frontier and the chain it builds on) when this run took it (`ours`: the worker holds its
/// digests) and its chain has fewer than `full_every` links; otherwise full. `full_every` 0:
/// always full.
pub fn plan(tip: Option<(u64, &[u64])>, ours: impl Fn(u64) -> bool, full_every: usize) -> Plan {
    match tip {
        Some((f, chain)) if full_every > 0 && ours(f) && chain.len() < full_every => {
            let mut chain = chain.to_vec();
            chain.push(f);
            Plan::Link { tip: f, chain }
        }
        _ => Plan::Full,
    }
}

/// The checkpoints pruning keeps, given every complete one (frontier, the chain it builds on;
/// any order): the `keep` newest with everything they build on, and the newest on another
/// base than the newest's with everything it builds on, so that a damaged base still leaves
/// a checkpoint to fall back to.
pub fn kept(complete: &[(u64, Vec<u64>)], keep: usize) -> BTreeSet<u64> {
    let mut newest_first: Vec<&(u64, Vec<u64>)> = complete.iter().collect();
    newest_first.sort_by_key(|c| std::cmp::Reverse(c.0));
    let base = |c: &(u64, Vec<u64>)| c.1.first().copied().unwrap_or(c.0);
    let mut out = BTreeSet::new();
    let mut take = |c: &(u64, Vec<u64>)| {
        out.insert(c.0);
        out.extend(c.1.iter().copied());
    };
    for c in newest_first.iter().take(keep.max(1)) {
        take(c);
    }
    if let Some(newest) = newest_first.first()
        && let Some(other) = newest_first.iter().find(|c| base(c) != base(newest))
    {
        take(other);
    }
    out
}

/// An order-free digest of a worker's rows per window: the sum of the rows' 128-bit hashes
/// (with their measures), per (granularity, window start). Two different sets of rows of a
/// window share a digest with a chance of 2⁻¹²⁸. Kept in memory only, by the process that
/// computed them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    minute: HashMap<u64, u128>,
    hour: HashMap<u64, u128>,
    day: HashMap<u64, u128>,
    reach: HashMap<(u64, u64), u128>,
}

/// xxh3's 128-bit hash, in one pass. Every checkpoint digests every row and reach sketch on
/// the worker threads; two SipHash passes (the 128 bits as two seeded halves) were 4.6 % of
/// the workers' time in a checkpointed load at 20 M clicks of state, mostly the sketches'
/// registers.
fn hash128<T: Hash>(x: &T) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    x.hash(&mut h);
    h.digest128()
}

fn row_digests(rows: &[(Row, Measures)]) -> HashMap<u64, u128> {
    let mut out: HashMap<u64, u128> = HashMap::new();
    for r in rows {
        let d = out.entry(r.0.0).or_default();
        *d = d.wrapping_add(hash128(r));
    }
    out
}

fn reach_window(g: &Group) -> (u64, u64) {
    (g.len_ms, g.start)
}

/// The rows of the windows whose digest is not `tip`'s, and the windows of `tip` that `now`
/// has not.
fn changed<K: Hash + Eq + Ord + Copy, T>(
    rows: Vec<T>,
    window: impl Fn(&T) -> K,
    now: &HashMap<K, u128>,
    tip: &HashMap<K, u128>,
) -> (Vec<T>, Vec<K>) {
    let rows = rows
        .into_iter()
        .filter(|r| {
            let w = window(r);
            tip.get(&w) != now.get(&w)
        })
        .collect();
    let mut emptied: Vec<K> = tip
        .keys()
        .filter(|w| !now.contains_key(w))
        .copied()
        .collect();
    emptied.sort();
    (rows, emptied)
}

impl Digests {
    pub fn of(rows: &RestoredRows) -> Self {
        let mut reach: HashMap<(u64, u64), u128> = HashMap::new();
        for r in &rows.reach {
            let d = reach.entry(reach_window(&r.0)).or_default();
            *d = d.wrapping_add(hash128(r));
        }
        Self {
            minute: row_digests(&rows.minute),
            hour: row_digests(&rows.hour),
            day: row_digests(&rows.day),
            reach,
        }
    }

    /// These digests with the windows `read` digested again from `rows`, which holds the rows
    /// of those windows only: the digests of a later checkpoint when no other window changed
    /// since this one (a window of `read` without rows has emptied).
    fn updated(&self, read: &Windows, rows: &RestoredRows) -> Self {
        fn redo<K: Hash + Eq + Copy>(
            digests: &HashMap<K, u128>,
            read: &[K],
            now: HashMap<K, u128>,
        ) -> HashMap<K, u128> {
            let mut out = digests.clone();
            for w in read {
                out.remove(w);
            }
            out.extend(now);
            out
        }
        let now = Digests::of(rows);
        Self {
            minute: redo(&self.minute, &read.minute, now.minute),
            hour: redo(&self.hour, &read.hour, now.hour),
            day: redo(&self.day, &read.day, now.day),
            reach: redo(&self.reach, &read.reach, now.reach),
        }
    }

    /// What of `rows` (whose digests are `self`) a link on `tip` carries.
    pub fn delta(&self, tip: &Digests, rows: RestoredRows) -> (RestoredRows, Emptied) {
        let start = |r: &(Row, Measures)| r.0.0;
        let (minute, em) = changed(rows.minute, start, &self.minute, &tip.minute);
        let (hour, eh) = changed(rows.hour, start, &self.hour, &tip.hour);
        let (day, ed) = changed(rows.day, start, &self.day, &tip.day);
        let (reach, er) = changed(
            rows.reach,
            |r: &(Group, UserSketch)| reach_window(&r.0),
            &self.reach,
            &tip.reach,
        );
        let delta = RestoredRows {
            frontier: rows.frontier,
            minute,
            hour,
            day,
            names: rows.names,
            reach,
        };
        let emptied = Emptied {
            minute: em,
            hour: eh,
            day: ed,
            reach: er,
        };
        (delta, emptied)
    }
}

/// `base`'s rows with the windows of each link replaced by the link's, oldest first.
fn fold_windows<K: Hash + Eq + Copy, T>(
    base: Vec<T>,
    links: Vec<(Vec<T>, Vec<K>)>,
    window: impl Fn(&T) -> K,
) -> Vec<T> {
    if links.is_empty() {
        return base;
    }
    let mut by_window: HashMap<K, Vec<T>> = HashMap::new();
    for r in base {
        by_window.entry(window(&r)).or_default().push(r);
    }
    for (rows, emptied) in links {
        for w in emptied {
            by_window.remove(&w);
        }
        let mut replaced: HashMap<K, Vec<T>> = HashMap::new();
        for r in rows {
            replaced.entry(window(&r)).or_default().push(r);
        }
        by_window.extend(replaced);
    }
    by_window.into_values().flatten().collect()
}

/// Appends `part` to a worker's chain as it is read (oldest first). A link's growths are
/// applied to the sketches they grow, found in the parts before it, and become whole
/// sketches of the link ([`Corrupt`] when a sketch to grow is missing, ambiguous or of
/// another kind). Then the parts before it drop what [`fold`] would override anyway: their
/// rows, sketches and winners when `part` is full (a fold starts from the newest full part);
/// the rows and sketches of the windows `part` rewrites or empties when it is a link. A
/// restore then holds the base and one copy of each live window, not every link's copy of
/// the same open windows: at 20 M clicks, 28 links of about 80 MB, nearly all of it the open
/// hour and day sketches rewritten (docs/benchmarks.md).
pub fn push_part(chain: &mut Vec<Part>, mut part: Part) -> Result<(), Corrupt> {
    if let Part::Link(l) = &mut part {
        grow_sketches(chain, l)?;
    }
    match &part {
        Part::Full(_) => {
            for p in chain.iter_mut() {
                let w = p.worker_part_mut();
                w.rows = RestoredRows::default();
                w.winners = Winners::default();
            }
        }
        Part::Link(l) => {
            let (r, e) = (&l.part.rows, &l.emptied);
            let starts = |rows: &[(Row, Measures)], emptied: &[u64]| -> HashSet<u64> {
                rows.iter()
                    .map(|r| r.0.0)
                    .chain(emptied.iter().copied())
                    .collect()
            };
            let (minute, hour, day) = (
                starts(&r.minute, &e.minute),
                starts(&r.hour, &e.hour),
                starts(&r.day, &e.day),
            );
            let reach: HashSet<(u64, u64)> = r
                .reach
                .iter()
                .map(|(g, _)| reach_window(g))
                .chain(e.reach.iter().copied())
                .collect();
            for p in chain.iter_mut() {
                let rows = &mut p.worker_part_mut().rows;
                rows.minute.retain(|r| !minute.contains(&r.0.0));
                rows.hour.retain(|r| !hour.contains(&r.0.0));
                rows.day.retain(|r| !day.contains(&r.0.0));
                rows.reach
                    .retain(|(g, _)| !reach.contains(&reach_window(g)));
            }
        }
    }
    chain.push(part);
    Ok(())
}

/// Turns `link`'s growths into whole sketches: each grows the one sketch of its group that
/// the parts before the link hold (taken out of them: the link rewrites its window).
fn grow_sketches(chain: &mut [Part], link: &mut LinkPart) -> Result<(), Corrupt> {
    if link.grown.is_empty() {
        return Ok(());
    }
    let worker = link.part.worker;
    let mut grown: HashMap<Group, Growth> = HashMap::with_capacity(link.grown.len());
    for (g, growth) in std::mem::take(&mut link.grown) {
        if grown.insert(g, growth).is_some() {
            return Err(Corrupt(format!("worker {worker}'s link grows {g:?} twice")));
        }
    }
    let mut found: Vec<(Group, UserSketch)> = Vec::with_capacity(grown.len());
    for p in chain.iter_mut() {
        let reach = &mut p.worker_part_mut().rows.reach;
        if !reach.iter().any(|(g, _)| grown.contains_key(g)) {
            continue;
        }
        let (taken, kept) = std::mem::take(reach)
            .into_iter()
            .partition(|(g, _)| grown.contains_key(g));
        *reach = kept;
        found.extend(taken);
    }
    if found.len() != grown.len() {
        return Err(Corrupt(format!(
            "worker {worker}'s link at tip {} grows {} sketches, and the chain before it holds \
             {} of them",
            link.tip,
            grown.len(),
            found.len()
        )));
    }
    for (g, mut sketch) in found {
        let Some(growth) = grown.remove(&g) else {
            return Err(Corrupt(format!(
                "worker {worker}'s chain holds {g:?} twice"
            )));
        };
        sketch
            .grow(&growth)
            .map_err(|e| Corrupt(format!("worker {worker}'s sketch of {g:?}: {e}")))?;
        link.part.rows.reach.push((g, sketch));
    }
    Ok(())
}

/// One worker's state at the newest of `parts` (oldest first, the first one full; a full
/// one later starts afresh; as [`push_part`] leaves them, their growths applied), each link
/// checked to apply to the one before it (`frontiers`, the parts' checkpoints, oldest first).
pub fn fold(parts: Vec<Part>, frontiers: &[u64]) -> Result<WorkerPart, Corrupt> {
    assert_eq!(parts.len(), frontiers.len());
    if parts
        .iter()
        .any(|p| matches!(p, Part::Link(l) if !l.grown.is_empty()))
    {
        return Err(Corrupt("a link's sketch growths were not applied".into()));
    }
    // Start from the newest full part: what is before it is overridden whole.
    let Some(from) = parts.iter().rposition(|p| matches!(p, Part::Full(_))) else {
        return Err(Corrupt(format!(
            "the chain ending at {} has no full part",
            frontiers.last().copied().unwrap_or_default()
        )));
    };
    let mut parts = parts.into_iter().skip(from);
    let Some(Part::Full(base)) = parts.next() else {
        unreachable!("a full part")
    };
    let mut links = Vec::new();
    for (p, at) in parts.zip(frontiers[from..].windows(2)) {
        let Part::Link(link) = p else {
            unreachable!("links only after the newest full part")
        };
        if link.tip != at[0] {
            return Err(Corrupt(format!(
                "worker {}'s link at {} applies to {}, not to {}",
                link.part.worker, at[1], link.tip, at[0]
            )));
        }
        links.push(link);
    }
    let Some(newest) = links.last() else {
        return Ok(base);
    };
    let judged_from = newest.judged_from;
    let mut out = newest.part.clone();
    out.winners = Winners::fold(
        base.winners,
        links
            .iter_mut()
            .map(|l| std::mem::take(&mut l.part.winners))
            .collect(),
        judged_from,
    );
    let mut minute = Vec::new();
    let mut hour = Vec::new();
    let mut day = Vec::new();
    let mut reach = Vec::new();
    for l in links {
        let (r, e) = (l.part.rows, l.emptied);
        minute.push((r.minute, e.minute));
        hour.push((r.hour, e.hour));
        day.push((r.day, e.day));
        reach.push((r.reach, e.reach));
    }
    let start = |r: &(Row, Measures)| r.0.0;
    let base_rows = base.rows;
    out.rows.minute = fold_windows(base_rows.minute, minute, start);
    out.rows.hour = fold_windows(base_rows.hour, hour, start);
    out.rows.day = fold_windows(base_rows.day, day, start);
    out.rows.reach = fold_windows(base_rows.reach, reach, |r: &(Group, UserSketch)| {
        reach_window(&r.0)
    });
    Ok(out)
}

/// Per asked frontier, what a worker keeps to write the links after it: the impressions
/// changed up to each checkpoint not yet known committed, and the digests of the rows of
/// each checkpoint from the newest committed one on, with the sketches of its open windows.
#[derive(Default)]
pub struct ChainState {
    changed: BTreeMap<u64, Vec<u128>>,
    digests: BTreeMap<u64, Digests>,
    sketches: BTreeMap<u64, HashMap<Group, UserSketch>>,
}

/// What a part carries of a worker's rows ([`ChainState::part_rows`]).
#[derive(Debug, PartialEq)]
pub enum PartRows {
    Full(RestoredRows),
    Link {
        tip: u64,
        rows: RestoredRows,
        emptied: Emptied,
        grown: Vec<(Group, Growth)>,
    },
}

impl ChainState {
    /// The plan of the checkpoint at `f` and the dedup winners its part holds, given the
    /// newest committed checkpoint (its frontier and the chain it builds on): all of `state`'s
    /// for a full checkpoint, those changed since the tip for a link. Takes what the state
    /// recorded as changed since the previous save (`full_every` 0: nothing is recorded, every
    /// checkpoint is full) and forgets what the committed checkpoint covers.
    pub fn dedup_part(
        &mut self,
        f: u64,
        committed: Option<(u64, &[u64])>,
        state: &mut DedupState,
        full_every: usize,
    ) -> (Plan, Winners) {
        let changed = (full_every > 0).then(|| state.take_changed()).flatten();
        let impressions = changed
            .as_ref()
            .map(|c| c.entries.iter().map(|e| e.0).collect());
        let plan = self.plan(f, committed, impressions, full_every);
        let winners = match (&plan, changed) {
            (Plan::Full, _) => Winners::of(state),
            // The usual link: the tip is the previous save, whose changes are the recorded ones.
            (Plan::Link { tip, .. }, Some(changed)) if self.saves_since(*tip) == 1 => {
                Winners::from(changed)
            }
            (Plan::Link { tip, .. }, _) => Winners::changed(state, self.changed_since(*tip)),
        };
        (plan, winners)
    }

    /// The plan of the checkpoint at `f`, given the newest committed checkpoint, recording
    /// `changed` (the impressions changed since the previous save; `None` before any) and
    /// forgetting what the committed checkpoint covers.
    fn plan(
        &mut self,
        f: u64,
        committed: Option<(u64, &[u64])>,
        changed: Option<Vec<u128>>,
        full_every: usize,
    ) -> Plan {
        if let Some((c, _)) = committed {
            self.changed = self.changed.split_off(&(c + 1));
            self.digests = self.digests.split_off(&c);
            self.sketches = self.sketches.split_off(&c);
        }
        let Some(changed) = changed else {
            // Nothing recorded before this save: it is the run's first.
            return Plan::Full;
        };
        self.changed.insert(f, changed);
        plan(committed, |t| self.digests.contains_key(&t), full_every)
    }

    /// How many saves recorded their changes after `tip`.
    fn saves_since(&self, tip: u64) -> usize {
        self.changed.range(tip + 1..).count()
    }

    /// The impressions changed since `tip`, up to the newest save, each once: the union of
    /// several saves' only after a checkpoint failed (building it costs a hash set).
    fn changed_since(&self, tip: u64) -> impl Iterator<Item = u128> + '_ {
        let mut seen = Impressions::default();
        self.changed
            .range(tip + 1..)
            .flat_map(|(_, imps)| imps.iter().copied())
            .filter(move |imp| seen.insert(*imp))
    }

    /// What the part at `f` carries of `rows`, the worker's rows at `f`: all of them when
    /// `tip` is `None`; else the windows changed since `tip` (which must be one this state
    /// recorded: the plan saw to that), each changed sketch the tip had given as its growth
    /// where that is smaller. Records what the links after `f` need: the rows' digests, and a
    /// copy of the sketches of the windows that changed since the previous checkpoint (the
    /// open windows, which the next link's growths are taken against).
    ///
    /// `read`: `rows` holds only these windows, every window that changed since `tip` (a
    /// link's, [`adclick_dataflows::Traces::changed_since`]); the others' digests are the
    /// previous checkpoint's.
    pub fn part_rows(
        &mut self,
        f: u64,
        rows: RestoredRows,
        tip: Option<u64>,
        read: Option<&Windows>,
    ) -> PartRows {
        let digests = match read {
            None => Digests::of(&rows),
            Some(read) => {
                let (_, before) = self.digests.range(..f).next_back().unwrap_or_else(|| {
                    unreachable!("a link's tip {tip:?} has its digests, kept until a newer commit")
                });
                before.updated(read, &rows)
            }
        };
        let open: HashSet<(u64, u64)> = match self.digests.range(..f).next_back() {
            Some((_, before)) => digests
                .reach
                .iter()
                .filter(|(w, d)| before.reach.get(w) != Some(d))
                .map(|(w, _)| *w)
                .collect(),
            // The run's first checkpoint: which windows are open shows at the next one.
            None => HashSet::new(),
        };
        let mut copies: HashMap<Group, UserSketch> = HashMap::new();
        let mut twice: HashSet<Group> = HashSet::new();
        for (g, sketch) in &rows.reach {
            if open.contains(&reach_window(g)) && copies.insert(*g, sketch.clone()).is_some() {
                twice.insert(*g);
            }
        }
        // A group held twice has no single value to grow (never expected: one sketch a group).
        copies.retain(|g, _| !twice.contains(g));
        let out = match tip {
            None => PartRows::Full(rows),
            Some(tip) => {
                let at_tip = self.digests.get(&tip).unwrap_or_else(|| {
                    unreachable!("the digests of the tip {tip} are kept until a newer commit")
                });
                let (mut rows, emptied) = digests.delta(at_tip, rows);
                let tip_sketches = self.sketches.get(&tip);
                let mut grown = Vec::new();
                rows.reach.retain(|(g, sketch)| {
                    let growth = tip_sketches
                        .and_then(|t| t.get(g))
                        .filter(|_| !twice.contains(g))
                        .and_then(|before| sketch.growth_since(before));
                    match growth {
                        Some(growth) => {
                            grown.push((*g, growth));
                            false
                        }
                        None => true,
                    }
                });
                PartRows::Link {
                    tip,
                    rows,
                    emptied,
                    grown,
                }
            }
        };
        self.digests.insert(f, digests);
        self.sketches.insert(f, copies);
        out
    }
}

#[cfg(test)]
mod tests {
    use adclick_dataflows::click::{Click, Dims, Sym};
    use adclick_dataflows::dedup::{DedupConfig, DedupState};
    use adclick_dataflows::invalid::Reasons;
    use adclick_dataflows::reach::GroupBy;

    use super::*;

    fn dims(ad: u64) -> Dims {
        Dims {
            ad_id: Sym(ad),
            ..Dims::default()
        }
    }

    fn row(start: u64, ad: u64, clicks: i64) -> (Row, Measures) {
        ((start, dims(ad)), Measures::billable(clicks))
    }

    fn rows(minute: Vec<(Row, Measures)>) -> RestoredRows {
        RestoredRows {
            minute,
            ..RestoredRows::default()
        }
    }

    /// The link on the checkpoint at `tip_frontier` (state `tip`) to state `now`.
    fn link(tip_frontier: u64, tip: &RestoredRows, now: &RestoredRows) -> Part {
        let (delta, emptied) = Digests::of(now).delta(&Digests::of(tip), now.clone());
        Part::Link(LinkPart {
            tip: tip_frontier,
            part: WorkerPart {
                rows: delta,
                ..WorkerPart::empty(0, 1)
            },
            emptied,
            judged_from: 0,
            grown: Vec::new(),
        })
    }

    fn sorted(mut v: Vec<(Row, Measures)>) -> Vec<(Row, Measures)> {
        v.sort();
        v
    }

    #[test]
    fn a_link_carries_the_windows_whose_digest_changed_and_those_that_emptied() {
        let tip = rows(vec![
            row(0, 1, 1),
            row(0, 2, 1),
            row(60, 1, 3),
            row(120, 1, 1),
        ]);
        // Window 0 reordered but equal; 60 changed; 120 emptied; 180 new.
        let now = rows(vec![
            row(0, 2, 1),
            row(0, 1, 1),
            row(60, 1, 4),
            row(180, 9, 1),
        ]);
        let (delta, emptied) = Digests::of(&now).delta(&Digests::of(&tip), now.clone());
        assert_eq!(sorted(delta.minute), vec![row(60, 1, 4), row(180, 9, 1)]);
        assert_eq!(emptied.minute, vec![120]);
        // A row moving between two ads of one window changes its digest (not a plain sum).
        let moved = rows(vec![row(0, 1, 2), row(0, 2, 0)]);
        let (d, _) = Digests::of(&moved).delta(&Digests::of(&tip), moved.clone());
        assert!(d.minute.contains(&row(0, 1, 2)));
        // Reach by (length, start).
        let group = |start, len_ms| Group {
            start,
            len_ms,
            by: GroupBy::Ad,
            billable: true,
            dims: dims(1),
        };
        let sk = |u: Vec<u64>| UserSketch::Exact(u.into());
        let tip = RestoredRows {
            reach: vec![
                (group(0, 3_600), sk(vec![1])),
                (group(0, 86_400), sk(vec![1])),
            ],
            ..RestoredRows::default()
        };
        let now = RestoredRows {
            reach: vec![(group(0, 3_600), sk(vec![1, 2]))],
            ..RestoredRows::default()
        };
        let (d, e) = Digests::of(&now).delta(&Digests::of(&tip), now.clone());
        assert_eq!(d.reach, now.reach);
        assert_eq!(e.reach, vec![(86_400, 0)]);
    }

    #[test]
    fn links_apply_oldest_first_and_later_ones_override() {
        let base = rows(vec![row(0, 1, 1), row(60, 1, 1), row(120, 1, 1)]);
        let mut states = vec![base.clone()];
        let steps = [
            rows(vec![row(0, 1, 2), row(60, 1, 1), row(120, 1, 1)]),
            rows(vec![row(0, 1, 2), row(120, 1, 1), row(180, 1, 5)]),
            rows(vec![
                row(0, 1, 3),
                row(120, 1, 1),
                row(180, 1, 5),
                row(60, 2, 1),
            ]),
        ];
        let mut parts = vec![Part::Full(WorkerPart {
            rows: base,
            ..WorkerPart::empty(0, 1)
        })];
        for (i, now) in steps.iter().enumerate() {
            parts.push(link(i as u64, states.last().unwrap(), now));
            states.push(now.clone());
        }
        let folded = fold(parts.clone(), &[0, 1, 2, 3]).unwrap();
        assert_eq!(sorted(folded.rows.minute), sorted(steps[2].minute.clone()));
        // Any prefix folds to the state at its end.
        let folded = fold(parts[..2].to_vec(), &[0, 1]).unwrap();
        assert_eq!(sorted(folded.rows.minute), sorted(steps[0].minute.clone()));
        // A link on another tip, or a chain without a full part, is corrupt.
        assert!(fold(parts.clone(), &[0, 1, 5, 6]).is_err());
        assert!(fold(parts[1..].to_vec(), &[1, 2, 3]).is_err());
    }

    /// The windows whose rows or sketches differ between `a` and `b`, and window 0 of each
    /// granularity (changed or not: reading a window more is harmless).
    fn changed_windows(a: &RestoredRows, b: &RestoredRows) -> Windows {
        fn differ<K: Ord + Copy, T: PartialEq + Clone + Ord>(
            a: &[T],
            b: &[T],
            window: impl Fn(&T) -> K,
            zero: K,
        ) -> Vec<K> {
            let of = |rows: &[T], w: K| {
                let mut v: Vec<T> = rows.iter().filter(|r| window(r) == w).cloned().collect();
                v.sort();
                v
            };
            let mut ws: Vec<K> = a.iter().chain(b).map(&window).collect();
            ws.push(zero);
            ws.sort();
            ws.dedup();
            ws.retain(|w| *w == zero || of(a, *w) != of(b, *w));
            ws
        }
        let start = |r: &(Row, Measures)| r.0.0;
        Windows {
            minute: differ(&a.minute, &b.minute, start, 0),
            hour: differ(&a.hour, &b.hour, start, 0),
            day: differ(&a.day, &b.day, start, 0),
            reach: differ(&a.reach, &b.reach, |r| reach_window(&r.0), (3_600, 0)),
        }
    }

    /// `rows` of the windows `read` only.
    fn only(rows: &RestoredRows, read: &Windows) -> RestoredRows {
        let keep = |rows: &[(Row, Measures)], ws: &[u64]| -> Vec<(Row, Measures)> {
            rows.iter()
                .filter(|r| ws.contains(&r.0.0))
                .cloned()
                .collect()
        };
        RestoredRows {
            frontier: rows.frontier,
            minute: keep(&rows.minute, &read.minute),
            hour: keep(&rows.hour, &read.hour),
            day: keep(&rows.day, &read.day),
            names: rows.names.clone(),
            reach: rows
                .reach
                .iter()
                .filter(|r| read.reach.contains(&reach_window(&r.0)))
                .cloned()
                .collect(),
        }
    }

    /// A chain written by [`ChainState::part_rows`] and read part by part ([`push_part`])
    /// folds to the worker's state after every part: with full parts, emptied windows, a
    /// checkpoint that failed (the next link builds on the one before it), and open hour and
    /// day sketches, exact and dense, carried as their growth. What is left of earlier parts
    /// is only the windows no later part touches.
    #[test]
    fn a_chain_read_part_by_part_folds_to_the_state_at_every_part() {
        let group = |start, len_ms, ad| Group {
            start,
            len_ms,
            by: GroupBy::Ad,
            billable: true,
            dims: dims(ad),
        };
        let sk = |u: Vec<u64>| UserSketch::Exact(u.into());
        let users =
            |n: u64| UserSketch::of((0..n).map(adclick_dataflows::sketch::user_hash).collect());
        let state = |minute: Vec<(Row, Measures)>, reach: Vec<(Group, UserSketch)>| RestoredRows {
            minute,
            hour: vec![row(0, 1, 1)],
            reach,
            ..RestoredRows::default()
        };
        let states = [
            state(
                vec![row(0, 1, 1), row(60, 1, 1), row(120, 1, 1)],
                vec![
                    (group(0, 3_600, 1), sk(vec![1])),
                    (group(0, 86_400, 1), sk(vec![1])),
                    (group(0, 86_400, 2), users(20_000)),
                ],
            ),
            state(
                vec![row(0, 1, 2), row(60, 1, 1), row(120, 1, 1)],
                vec![
                    (group(0, 3_600, 1), sk(vec![1, 2])),
                    (group(0, 86_400, 1), sk(vec![1])),
                    (group(0, 86_400, 2), users(200_000)),
                ],
            ),
            state(
                vec![row(0, 1, 2), row(120, 1, 1), row(180, 1, 5)],
                vec![
                    (group(0, 86_400, 1), sk(vec![1, 2])),
                    (group(0, 86_400, 2), users(210_000)),
                ],
            ),
            // Fails to commit: the next link builds on the one before.
            state(
                vec![row(0, 1, 2), row(120, 1, 1), row(180, 1, 6)],
                vec![
                    (group(0, 86_400, 1), sk(vec![1, 2, 3])),
                    (group(0, 86_400, 2), users(215_000)),
                ],
            ),
            state(
                vec![row(0, 1, 3), row(120, 1, 1), row(180, 1, 5), row(60, 2, 1)],
                vec![
                    (group(0, 86_400, 1), sk(vec![1, 2, 3, 7])),
                    (group(0, 86_400, 2), users(220_000)),
                    (group(3_600, 3_600, 2), sk(vec![4])),
                ],
            ),
            state(
                vec![row(0, 1, 3), row(240, 1, 1)],
                vec![
                    (group(0, 86_400, 2), users(230_000)),
                    (group(3_600, 3_600, 2), sk(vec![4, 5])),
                ],
            ),
            state(
                vec![row(0, 1, 4), row(240, 1, 1)],
                vec![
                    (group(0, 86_400, 2), users(240_000)),
                    (group(3_600, 3_600, 2), sk(vec![4, 5, 6])),
                ],
            ),
        ];
        // (full, commits): full, links (the fourth fails), full again, a link.
        let kinds = [
            (true, true),
            (false, true),
            (false, true),
            (false, false),
            (false, true),
            (true, true),
            (false, true),
        ];
        let mut chain = ChainState::default();
        let mut pruned: Vec<Part> = Vec::new();
        let mut frontiers = Vec::new();
        let mut tip = None;
        let mut grown = 0;
        for (i, now) in states.iter().enumerate() {
            let (full, commits) = kinds[i];
            let f = i as u64;
            let tip_now = (!full).then_some(tip).flatten();
            // A link reads only the windows changed since its tip (and one more that did not),
            // as `Traces::changed_since` gives them.
            let read = tip_now.map(|t| changed_windows(&states[t as usize], now));
            let rows = match &read {
                Some(read) => only(now, read),
                None => now.clone(),
            };
            let part = match chain.part_rows(f, rows, tip_now, read.as_ref()) {
                PartRows::Full(rows) => Part::Full(WorkerPart {
                    rows,
                    ..WorkerPart::empty(0, 1)
                }),
                PartRows::Link {
                    tip,
                    rows,
                    emptied,
                    grown: g,
                } => {
                    assert!(!full, "part {i} is full");
                    grown += g.len();
                    Part::Link(LinkPart {
                        tip,
                        part: WorkerPart {
                            rows,
                            ..WorkerPart::empty(0, 1)
                        },
                        emptied,
                        judged_from: 0,
                        grown: g,
                    })
                }
            };
            if !commits {
                continue;
            }
            push_part(&mut pruned, part).unwrap();
            frontiers.push(f);
            tip = Some(f);
            let norm = |r: &RestoredRows| {
                let mut r = r.clone();
                r.minute.sort();
                r.hour.sort();
                r.reach.sort();
                (r.minute, r.hour, r.reach)
            };
            let folded = fold(pruned.clone(), &frontiers).unwrap();
            assert_eq!(norm(&folded.rows), norm(now), "after part {i}");
        }
        // The open day sketch grew in every link after the first (the tip's copy is of the
        // windows that changed before it), and exact sets grew too.
        assert!(grown >= 5, "{grown} growths");
        // Before the second full part nothing is left; the full part itself keeps only the
        // windows its link does not rewrite (minute 240 is unchanged).
        let held = |p: &Part| match p {
            Part::Full(w) => w.rows.clone(),
            Part::Link(l) => l.part.rows.clone(),
        };
        for p in &pruned[..4] {
            assert_eq!(held(p), RestoredRows::default());
        }
        let base = held(&pruned[4]);
        assert_eq!(base.minute, vec![row(240, 1, 1)]);
        assert!(base.reach.is_empty(), "{:?}", base.reach);
    }

    /// A growth whose sketch the chain does not hold, or holds of another kind, makes the
    /// chain corrupt; a link read without its growths applied does not fold.
    #[test]
    fn a_growth_without_its_sketch_is_corrupt() {
        let g = Group {
            start: 0,
            len_ms: 3_600,
            by: GroupBy::Ad,
            billable: true,
            dims: dims(1),
        };
        let base = |reach| {
            Part::Full(WorkerPart {
                rows: RestoredRows {
                    reach,
                    ..RestoredRows::default()
                },
                ..WorkerPart::empty(0, 1)
            })
        };
        let link = |growth| {
            Part::Link(LinkPart {
                tip: 0,
                part: WorkerPart::empty(0, 1),
                emptied: Emptied::default(),
                judged_from: 0,
                grown: vec![(g, growth)],
            })
        };
        let users = Growth::Users(vec![5]);
        let mut chain = vec![base(Vec::new())];
        assert!(push_part(&mut chain, link(users.clone())).is_err());
        let mut chain = vec![base(vec![(g, UserSketch::Exact(vec![1].into()))])];
        let registers = Growth::Registers {
            skips: vec![0],
            values: vec![1],
        };
        assert!(push_part(&mut chain, link(registers)).is_err());
        let mut chain = vec![base(vec![(g, UserSketch::Exact(vec![1].into()))])];
        push_part(&mut chain, link(users.clone())).unwrap();
        let folded = fold(chain, &[0, 1]).unwrap();
        assert_eq!(
            folded.rows.reach,
            vec![(g, UserSketch::Exact(vec![1, 5].into()))]
        );
        let unapplied = vec![
            base(vec![(g, UserSketch::Exact(vec![1].into()))]),
            link(users),
        ];
        assert!(fold(unapplied, &[0, 1]).is_err());
    }

    /// A link after checkpoints that failed holds the impressions changed in each save since
    /// its tip: every one once, none from the saves the tip covers.
    #[test]
    fn the_impressions_changed_since_a_tip_come_once_each_across_saves() {
        let mut chain = ChainState::default();
        let set = |imps: &[u128]| Some(imps.to_vec());
        assert_eq!(chain.plan(10, None, None, 4), Plan::Full);
        chain.part_rows(10, RestoredRows::default(), None, None);
        chain.plan(20, Some((10, &[])), set(&[1, 2, 3]), 4);
        // 20 fails: 30 builds on 10 and holds what changed in both intervals.
        chain.plan(30, Some((10, &[])), set(&[3, 4, 1, 5]), 4);
        chain.plan(40, Some((10, &[])), set(&[5, 6]), 4);
        let mut since: Vec<u128> = chain.changed_since(10).collect();
        since.sort();
        assert_eq!(since, vec![1, 2, 3, 4, 5, 6]);
        let mut since: Vec<u128> = chain.changed_since(20).collect();
        since.sort();
        assert_eq!(since, vec![1, 3, 4, 5, 6], "not 2, changed only up to 20");
        assert_eq!(chain.changed_since(40).count(), 0);
    }

    #[test]
    fn the_plan_is_a_link_on_our_committed_tip_until_the_chain_is_full_every_long() {
        let ours = |f: u64| f >= 10;
        assert_eq!(plan(None, ours, 3), Plan::Full);
        assert_eq!(plan(Some((5, &[])), ours, 3), Plan::Full, "not this run's");
        assert_eq!(
            plan(Some((10, &[])), ours, 3),
            Plan::Link {
                tip: 10,
                chain: vec![10]
            }
        );
        assert_eq!(
            plan(Some((30, &[10, 20])), ours, 3),
            Plan::Link {
                tip: 30,
                chain: vec![10, 20, 30]
            }
        );
        assert_eq!(plan(Some((40, &[10, 20, 30])), ours, 3), Plan::Full);
        assert_eq!(
            plan(Some((10, &[])), ours, 0),
            Plan::Full,
            "incremental off"
        );
    }

    #[test]
    fn pruning_keeps_every_checkpoint_a_kept_one_builds_on_and_another_chain() {
        let c = |f: u64, chain: &[u64]| (f, chain.to_vec());
        // Chain A: 1, 2, 3; chain B: 4, 5, 6.
        let all = vec![
            c(1, &[]),
            c(2, &[1]),
            c(3, &[1, 2]),
            c(4, &[]),
            c(5, &[4]),
            c(6, &[4, 5]),
        ];
        assert_eq!(kept(&all, 2), BTreeSet::from([1, 2, 3, 4, 5, 6]));
        assert_eq!(kept(&all, 1), BTreeSet::from([1, 2, 3, 4, 5, 6]));
        // A third chain started: B is the other one, A goes.
        let mut more = all.clone();
        more.push(c(7, &[]));
        assert_eq!(kept(&more, 2), BTreeSet::from([4, 5, 6, 7]));
        more.push(c(8, &[7]));
        assert_eq!(kept(&more, 2), BTreeSet::from([4, 5, 6, 7, 8]));
        // Full checkpoints only: the keep newest, as before chains.
        let full: Vec<_> = (1..=5).map(|f| c(f, &[])).collect();
        assert_eq!(kept(&full, 2), BTreeSet::from([4, 5]));
        assert_eq!(kept(&full, 3), BTreeSet::from([3, 4, 5]));
    }

    fn click(imp: u128, id: u64, t: u64, ad: u64) -> Click {
        Click {
            impression: imp,
            click: id,
            event_time: t,
            dims: dims(ad),
            click_id: u128::from(id),
            ip: None,
            user: Some(Sym(imp as u64)),
            impression_time: t,
            reasons: Reasons::NONE,
        }
    }

    type Judgeds = Vec<(u128, u64, adclick_dataflows::dedup::Judged)>;

    fn winners_and_judged(state: &DedupState) -> (Vec<(u128, u64, u64, Dims)>, Judgeds) {
        let mut w: Vec<_> = state.winners().collect();
        w.sort();
        let mut j: Vec<_> = state.judged().collect();
        j.sort_by_key(|x| x.0);
        (w, j)
    }

    /// The dedup through a run with checkpoints every few thousand clicks, a full one and
    /// links (one of which fails to commit), duplicates winning across links, sweeps
    /// expiring winners and traits: every chain folds to exactly the live state, once the
    /// restored state has swept as the live one did.
    #[test]
    fn a_chain_of_dedup_links_folds_to_the_live_state() {
        let cfg = DedupConfig {
            horizon_ms: 600_000,
            allowed_lateness_ms: 5_000,
            lookback_ms: 60_000,
        };
        let mut state = DedupState::new(cfg);
        let mut chain = ChainState::default();
        let mut out = Vec::new();
        // (frontier, its part, whether it committed, what it builds on)
        let mut written: Vec<(u64, Part, bool, Vec<u64>)> = Vec::new();
        let mut seed = 7u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut t = 0u64;
        for round in 0..12u64 {
            for _ in 0..2_000 {
                t += 50;
                // Impressions recur within and beyond the horizon; earlier clicks win.
                let imp = u128::from(rand() % 3_000);
                let at = t.saturating_sub(rand() % 4_000);
                state.decide(&click(imp, rand() % 1_000, at, rand() % 5), &mut out);
            }
            state.sweep(t.saturating_sub(5_000));
            let f = t;
            let committed = written
                .iter()
                .rev()
                .find(|w| w.2)
                .map(|w| (w.0, w.3.clone()));
            let (plan, winners) = chain.dedup_part(
                f,
                committed.as_ref().map(|(c, ch)| (*c, ch.as_slice())),
                &mut state,
                4,
            );
            let part = WorkerPart {
                winners,
                ..WorkerPart::empty(0, 1)
            };
            let part = match &plan {
                Plan::Full => Part::Full(part),
                Plan::Link { tip, .. } => Part::Link(LinkPart {
                    tip: *tip,
                    part,
                    emptied: Emptied::default(),
                    judged_from: state.judged_from(),
                    grown: Vec::new(),
                }),
            };
            chain.part_rows(f, RestoredRows::default(), None, None);
            // The fifth checkpoint fails: its changes roll into the next one.
            let commits = round != 4;
            written.push((f, part, commits, plan.chain()));
            if !commits {
                continue;
            }
            let links = plan.chain();
            let frontiers: Vec<u64> = links.iter().copied().chain([f]).collect();
            let parts = frontiers
                .iter()
                .map(|g| written.iter().find(|w| w.0 == *g).unwrap().1.clone())
                .collect();
            let folded = fold(parts, &frontiers).unwrap();
            let mut restored = Restored::new(f, String::new(), vec![folded]).dedup_for(0, 1, cfg);
            // The traits are read before the restored state first sweeps: they rebuild the
            // invalid-traffic rules.
            let (mut w, j) = winners_and_judged(&state);
            let (_, rj) = winners_and_judged(&restored);
            // Winners past their horizon change no verdict; the live state drops them at its
            // next sweep (every 1/16 of the horizon), the restored one at its first.
            restored.sweep(t.saturating_sub(5_000));
            let (rw, _) = winners_and_judged(&restored);
            w.retain(|w| w.1 + cfg.horizon_ms + cfg.allowed_lateness_ms >= t - 5_000);
            assert_eq!(rw, w, "winners after round {round} ({plan:?})");
            assert_eq!(rj, j, "traits after round {round} ({plan:?})");
        }
        let kinds: Vec<bool> = written
            .iter()
            .map(|w| matches!(w.1, Part::Full(_)))
            .collect();
        assert_eq!(
            kinds,
            vec![
                true, false, false, false, false, false, true, false, false, false, false, true
            ],
            "full, then links on the newest committed tip (the fifth failed), full after four"
        );
    }

    use super::super::part::Restored;
}
