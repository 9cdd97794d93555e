//! What one worker contributes to a checkpoint, and how a restarted cluster, of the same
//! shape or another, divides a checkpoint's parts among its workers.
//!
//! Each piece goes where the running dataflow would route it, so the worker count may change
//! across a restart: dedup winners to the worker their impression's exchange reaches, Kafka
//! partitions with their offsets and clocks to the worker that now reads them. Rows and the
//! events a source had sent ahead may start on any worker (the dataflow exchanges them).

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use adclick_dataflows::RestoredRows;
use adclick_dataflows::click::Dims;
use adclick_dataflows::dedup::{ChangedWinners, DedupConfig, DedupState, Judged, PassThrough};
use adclick_dataflows::source::SourceSnapshot;
use adclick_dataflows::time::MINUTE_MS;
use adclick_dataflows::watermark::ClockState;
use serde::{Deserialize, Serialize};

pub use crate::aggregator::sink::output::WriterState;

/// `W`: how the winners are encoded; [`LegacyWinners`] for parts of formats 3 and 4.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerPart<W = Winners> {
    pub worker: usize,
    pub peers: usize,
    /// The Kafka partitions this worker read, in its reader's order (the snapshot's order).
    pub partitions: Vec<i32>,
    pub source: SourceSnapshot,
    pub winners: W,
    /// This worker's rows; worker 0's also carries every dimension text.
    pub rows: RestoredRows,
    /// Worker 0 only: the report output as it stood.
    pub writer: Option<WriterState>,
}

/// Winners as parts of formats 3 and 4 encode them: the traits in a list of their own, ids
/// as varints.
#[derive(Deserialize)]
pub struct LegacyWinners {
    dims: Vec<Dims>,
    entries: Vec<(u128, u64, u64, u32)>,
    judged: Vec<(u128, u64, Judged)>,
}

impl From<WorkerPart<LegacyWinners>> for WorkerPart {
    fn from(p: WorkerPart<LegacyWinners>) -> Self {
        let LegacyWinners {
            dims,
            entries,
            judged,
        } = p.winners;
        WorkerPart {
            worker: p.worker,
            peers: p.peers,
            partitions: p.partitions,
            source: p.source,
            winners: Winners {
                dims,
                entries,
                judged,
            },
            rows: p.rows,
            writer: p.writer,
        }
    }
}

impl WorkerPart {
    pub fn empty(worker: usize, peers: usize) -> Self {
        Self {
            worker,
            peers,
            partitions: Vec::new(),
            source: SourceSnapshot::default(),
            winners: Winners::default(),
            rows: RestoredRows::default(),
            writer: None,
        }
    }
}

/// Dedup winners with their dimensions stored once per distinct combination (the dedup's
/// own table), which is far fewer than the impressions: (impression, event time, click id,
/// index into `dims`); and the recent winners' traits, from which a restore rebuilds the
/// invalid-traffic rules' state.
/// Encoded as `wire.rs` says (each trait beside its entry, ids in fixed width).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Winners {
    pub(super) dims: Vec<Dims>,
    pub(super) entries: Vec<(u128, u64, u64, u32)>,
    pub(super) judged: Vec<(u128, u64, Judged)>,
}

impl From<ChangedWinners> for Winners {
    fn from(c: ChangedWinners) -> Self {
        Winners {
            dims: c.dims,
            entries: c.entries,
            judged: c.judged,
        }
    }
}

impl Winners {
    pub fn of(state: &DedupState) -> Self {
        let (dims, winners) = state.interned_winners();
        Self {
            dims: dims.to_vec(),
            entries: winners.collect(),
            judged: state.judged().collect(),
        }
    }

    /// The current winners (and kept traits) of `impressions` only: what a link holds after a
    /// checkpoint failed (the usual link takes the winners the dedup recorded as it changed
    /// them, [`DedupState::take_changed`]). Their dimensions are stored once each, in a table
    /// of their own.
    pub fn changed(state: &DedupState, impressions: impl Iterator<Item = u128>) -> Self {
        let table = state.dims_table();
        // The table's index to the link's, looked up per winner: an array, not a hash map.
        let mut remap: Vec<u32> = vec![u32::MAX; table.len()];
        let mut out = Self::default();
        for ((imp, t, click, d), judged) in state.winners_of(impressions) {
            let slot = &mut remap[d as usize];
            if *slot == u32::MAX {
                out.dims.push(table[d as usize]);
                *slot = (out.dims.len() - 1) as u32;
            }
            let mine = *slot;
            out.entries.push((imp, t, click, mine));
            if let Some(j) = judged {
                out.judged.push((imp, t, j));
            }
        }
        out
    }

    /// `base` with `links` applied oldest first ([`WinnersFold`]).
    pub fn fold(base: Winners, links: Vec<Winners>, judged_from: u64) -> Winners {
        let mut fold = WinnersFold::new(base);
        for link in links {
            fold.apply(link);
        }
        fold.finish(judged_from)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// How many distinct dimension combinations the winners refer to.
    pub fn dims_len(&self) -> usize {
        self.dims.len()
    }

    /// Adds the winner of `impression` (event time, click id, and its dimensions as an index
    /// below [`Winners::dims_len`]) without a dedup state: how benches/inflate_checkpoint.rs
    /// grows a kept checkpoint to a size no benchmark has time to load.
    pub fn push(&mut self, impression: u128, time_ms: u64, click: u64, dims: u32) {
        assert!((dims as usize) < self.dims.len(), "no dimensions {dims}");
        self.entries.push((impression, time_ms, click, dims));
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A chain's winners folded one link at a time, later winners overriding, so that a restore
/// holds the base, what the links changed, and one link decoded: not every link decoded at
/// once (30 links at 100 M clicks of state are ~20 M winners and their traits).
pub struct WinnersFold {
    base: Winners,
    index: HashMap<Dims, u32>,
    newer: HashMap<u128, (u64, u64, u32), BuildHasherDefault<PassThrough>>,
    newer_judged: HashMap<u128, (u64, Judged), BuildHasherDefault<PassThrough>>,
}

impl WinnersFold {
    pub fn new(base: Winners) -> Self {
        let index = base
            .dims
            .iter()
            .enumerate()
            .map(|(i, d)| (*d, i as u32))
            .collect();
        Self {
            base,
            index,
            newer: HashMap::default(),
            newer_judged: HashMap::default(),
        }
    }

    /// Applies the next link (oldest first): its winners override those before them, and a
    /// changed impression's older trait goes with its old winner.
    pub fn apply(&mut self, link: Winners) {
        let Self {
            base,
            index,
            newer,
            newer_judged,
        } = self;
        // A link's few dimension combinations are looked up once each, not once per winner
        // (hashing 48 bytes per winner was a third of a long chain's fold).
        let to_base: Vec<u32> = link
            .dims
            .iter()
            .map(|d| {
                *index.entry(*d).or_insert_with(|| {
                    base.dims.push(*d);
                    (base.dims.len() - 1) as u32
                })
            })
            .collect();
        for (imp, t, click, d) in link.entries {
            newer.insert(imp, (t, click, to_base[d as usize]));
            newer_judged.remove(&imp);
        }
        for (imp, t, j) in link.judged {
            newer_judged.insert(imp, (t, j));
        }
    }

    /// The winners after every link applied; a trait is kept where no later link changed its
    /// impression's winner and its minute is not before `judged_from` (the newest link's cut:
    /// the live state had dropped older ones).
    pub fn finish(self, judged_from: u64) -> Winners {
        let Self {
            base,
            newer,
            newer_judged,
            ..
        } = self;
        let recent = |t: u64| t / MINUTE_MS >= judged_from;
        let mut entries = base.entries;
        entries.retain(|(imp, ..)| !newer.contains_key(imp));
        entries.extend(newer.iter().map(|(imp, (t, c, d))| (*imp, *t, *c, *d)));
        let mut judged = base.judged;
        judged.retain(|(imp, t, _)| !newer.contains_key(imp) && recent(*t));
        judged.extend(
            newer_judged
                .into_iter()
                .filter(|(imp, (t, _))| recent(*t) && newer.get(imp).is_some_and(|w| w.0 == *t))
                .map(|(imp, (t, j))| (imp, t, j)),
        );
        Winners {
            dims: base.dims,
            entries,
            judged,
        }
    }
}

/// A part's winners as read: decoded with the part (formats before 6), or still encoded in
/// the part's mapped file, whose length and head have been checked.
pub enum LazyWinners {
    Decoded(Winners),
    Mapped {
        map: Arc<memmap2::Mmap>,
        range: Range<usize>,
        /// The checksum `range` must have (format 7); `None`: checked with the whole part.
        crc: Option<u32>,
        /// The checkpoint the part belongs to.
        frontier: u64,
        path: PathBuf,
    },
}

/// Winners found damaged as they were decoded, after the restore had begun with their
/// checkpoint (`checkpoint::restore` restarts the process past it).
#[derive(Clone, Debug)]
pub struct DamagedWinners {
    /// The checkpoint whose part is damaged: every checkpoint whose chain holds it is too.
    pub frontier: u64,
    pub why: String,
}

impl std::fmt::Display for DamagedWinners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

impl std::error::Error for DamagedWinners {}

impl LazyWinners {
    pub fn decode(self) -> anyhow::Result<Winners> {
        match self {
            LazyWinners::Decoded(w) => Ok(w),
            LazyWinners::Mapped {
                map,
                range,
                crc,
                frontier,
                path,
            } => {
                let bytes = &map[range];
                let damaged = |why: String| DamagedWinners {
                    frontier,
                    why: format!("{}: {why}", path.display()),
                };
                if crc.is_some_and(|crc| crc32fast::hash(bytes) != crc) {
                    return Err(damaged("checksum mismatch in its winners: damaged".into()).into());
                }
                postcard::from_bytes(bytes)
                    .map_err(|e| damaged(format!("decoding its winners: {e}")).into())
            }
        }
    }
}

/// One worker's winners through its chain, as `chain::fold` folds them, still encoded: those of
/// the newest full part and of each link after it, and the newest link's traits cut.
#[derive(Default)]
pub struct ChainWinners {
    parts: Vec<LazyWinners>,
    judged_from: Option<u64>,
}

impl ChainWinners {
    /// Adds a part's winners, read after those before it: a full part's (`link_cut` `None`)
    /// start afresh; a link's carry its traits cut ([`DedupState::judged_from`]).
    pub fn push(&mut self, winners: LazyWinners, link_cut: Option<u64>) {
        if link_cut.is_none() {
            self.parts.clear();
        }
        self.judged_from = link_cut;
        self.parts.push(winners);
    }

    /// The winners at the chain's newest checkpoint, each link decoded only as it is folded.
    pub fn decode(self) -> anyhow::Result<Winners> {
        let mut parts = self.parts.into_iter();
        let base = parts
            .next()
            .map(LazyWinners::decode)
            .transpose()?
            .unwrap_or_default();
        match self.judged_from {
            Some(judged_from) if parts.len() > 0 => {
                let mut fold = WinnersFold::new(base);
                for link in parts {
                    fold.apply(link.decode()?);
                }
                Ok(fold.finish(judged_from))
            }
            _ => Ok(base),
        }
    }
}

/// A complete checkpoint, read back for a cluster that may have another shape.
pub struct Restored {
    pub frontier: u64,
    /// The run that took it.
    pub run: String,
    /// Every worker's part without its winners; the rows only until each worker of this
    /// process has taken its own.
    parts: RwLock<Vec<WorkerPart>>,
    /// Each old worker's winners, still encoded until the first dedup state is built.
    encoded: Mutex<Vec<ChainWinners>>,
    /// Each old worker's winners, decoded once for every worker of this process, and dropped
    /// when the last has taken its dedup state.
    winners: Mutex<Option<Arc<Vec<Winners>>>>,
    /// This process's workers yet to take their dedup state ([`Restored::take_dedup`]).
    takers: AtomicUsize,
    /// What to do when winners turn out damaged as they decode (never returns); a panic
    /// without it. Dropped once they have decoded.
    on_damage: Mutex<Option<DamageHandler>>,
}

/// See [`Restored::on_damage`].
pub type DamageHandler = Box<dyn Fn(&DamagedWinners) + Send + Sync>;

impl Restored {
    /// A checkpoint whose `parts` hold their winners decoded.
    pub fn new(frontier: u64, run: String, mut parts: Vec<WorkerPart>) -> Self {
        let winners = parts
            .iter_mut()
            .map(|p| {
                let mut chain = ChainWinners::default();
                chain.push(LazyWinners::Decoded(std::mem::take(&mut p.winners)), None);
                chain
            })
            .collect();
        Self::lazy(frontier, run, parts, winners)
    }

    /// A checkpoint whose winners (`winners`, by old worker) are decoded when the first
    /// dedup state is built ([`Restored::take_dedup`]), after the rows are served.
    pub fn lazy(
        frontier: u64,
        run: String,
        parts: Vec<WorkerPart>,
        winners: Vec<ChainWinners>,
    ) -> Self {
        Self {
            frontier,
            run,
            parts: RwLock::new(parts),
            encoded: Mutex::new(winners),
            winners: Mutex::new(None),
            takers: AtomicUsize::new(usize::MAX),
            on_damage: Mutex::new(None),
        }
    }

    /// What handles winners found damaged as they decode, after the rows were served from
    /// this checkpoint: it is not to return (the restore restarts the process past the
    /// checkpoint); if it does, the decoding panics.
    pub fn on_damage(self, handler: DamageHandler) -> Self {
        *self.on_damage.lock().unwrap_or_else(|e| e.into_inner()) = Some(handler);
        self
    }

    /// Every old worker's winners: decoded by the first caller, each chain on a thread of its
    /// own, while the others wait. Damaged winners go to the [`Restored::on_damage`] handler.
    ///
    /// # Panics
    /// On winners that do not decode, without a handler (or if it returns).
    fn winners(&self) -> Arc<Vec<Winners>> {
        let mut winners = self.winners.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = winners.as_ref() {
            return w.clone();
        }
        let encoded = std::mem::take(&mut *self.encoded.lock().unwrap_or_else(|e| e.into_inner()));
        let decoded = std::thread::scope(|scope| {
            let threads: Vec<_> = encoded
                .into_iter()
                .map(|c| scope.spawn(move || c.decode()))
                .collect();
            threads
                .into_iter()
                .map(|t| match t.join().expect("a winners decoder panicked") {
                    Ok(w) => w,
                    Err(e) => {
                        let handler = self.on_damage.lock().unwrap_or_else(|e| e.into_inner());
                        if let (Some(d), Some(handle)) =
                            (e.downcast_ref::<DamagedWinners>(), handler.as_ref())
                        {
                            handle(d);
                        }
                        panic!("restoring the checkpoint at {}: {e:#}", self.frontier)
                    }
                })
                .collect::<Vec<_>>()
        });
        // Whole: nothing is left for the handler to restart past.
        drop(
            self.on_damage
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        let decoded = Arc::new(decoded);
        *winners = Some(decoded.clone());
        decoded
    }

    /// Restored for the `workers` of this process: once each has taken its dedup state, the
    /// checkpoint's winners are dropped.
    pub fn shared_by(self, workers: usize) -> Self {
        self.takers.store(workers, Ordering::Relaxed);
        self
    }

    fn parts(&self) -> std::sync::RwLockReadGuard<'_, Vec<WorkerPart>> {
        self.parts.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The rows (and texts) worker `worker` of `peers` starts from, taken out of the parts:
    /// each part's rows start exactly one worker (the dataflow exchanges them from there), so
    /// they are moved, not copied.
    pub fn take_rows(&self, worker: usize, peers: usize) -> RestoredRows {
        let mut rows = RestoredRows {
            frontier: self.frontier,
            ..RestoredRows::default()
        };
        let mut parts = self.parts.write().unwrap_or_else(|e| e.into_inner());
        for part in parts.iter_mut().filter(|p| p.worker % peers == worker) {
            let taken = std::mem::take(&mut part.rows);
            rows.minute.extend(taken.minute);
            rows.hour.extend(taken.hour);
            rows.day.extend(taken.day);
            rows.names.extend(taken.names);
            rows.reach.extend(taken.reach);
        }
        rows
    }

    /// Worker `worker` of `peers`'s dedup state, which each worker of the process takes once:
    /// the last one ([`Restored::shared_by`]) drops every part's winners, which would
    /// otherwise stay resident for the life of the process beside the state built from them
    /// (with the rows, about 1.3 GB after a restore at 20 M clicks, docs/benchmarks.md).
    pub fn take_dedup(&self, worker: usize, peers: usize, cfg: DedupConfig) -> DedupState {
        let state = self.dedup_for(worker, peers, cfg);
        if self.takers.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.winners.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        state
    }

    /// Where every partition resumes.
    pub fn offsets(&self) -> BTreeMap<i32, u64> {
        self.parts()
            .iter()
            .flat_map(|p| p.partitions.iter().copied().zip(p.source.positions.clone()))
            .collect()
    }

    /// The snapshot for worker `worker` of `peers` that reads `partitions` (in its reader's
    /// order). Its clock starts at the earliest capability among the old workers that read
    /// those partitions (each at or past the frontier); partitions new since the checkpoint
    /// start with no clock of their own.
    pub fn source_for(&self, worker: usize, peers: usize, partitions: &[i32]) -> SourceSnapshot {
        let mut positions = Vec::new();
        let mut max_seen = Vec::new();
        let mut capability: Option<u64> = None;
        let parts = self.parts();
        for p in partitions {
            let old = parts.iter().find_map(|part| {
                let i = part.partitions.iter().position(|q| q == p)?;
                Some((part, i))
            });
            match old {
                Some((part, i)) => {
                    positions.push(part.source.positions[i]);
                    max_seen.push(part.source.clock.max_seen[i]);
                    let c = part.source.clock.capability;
                    capability = Some(capability.map_or(c, |m| m.min(c)));
                }
                None => {
                    positions.push(0);
                    max_seen.push(None);
                }
            }
        }
        // Through the guard already held: a second read lock of the same `RwLock` waits behind
        // a writer that is waiting for the first one (another worker's `take_rows`), and both
        // wait forever. A 2 × 2 cluster's restart hung here in the stress test.
        let events = parts
            .iter()
            .filter(|p| p.worker % peers == worker)
            .flat_map(|p| p.source.events.iter().cloned())
            .collect();
        SourceSnapshot {
            positions,
            clock: ClockState {
                max_seen,
                capability: capability.unwrap_or(self.frontier).max(self.frontier),
            },
            events,
        }
    }

    /// The winners worker `worker` of `peers` decides for.
    pub fn dedup_for(&self, worker: usize, peers: usize, cfg: DedupConfig) -> DedupState {
        let all = self.winners();
        let total: usize = all.iter().map(|w| w.len()).sum();
        // Impressions spread evenly over workers; a little room spares a late rehash.
        let mut state = DedupState::with_capacity(cfg, total / peers + total / peers / 16);
        for winners in all.iter() {
            let mine = winners
                .entries
                .iter()
                .filter(|(imp, ..)| DedupState::owner(*imp, peers) == worker)
                .copied();
            state.restore_winners(&winners.dims, mine);
        }
        for winners in all.iter() {
            for (imp, t, judged) in &winners.judged {
                if DedupState::owner(*imp, peers) == worker {
                    state.restore_judged(*imp, *t, *judged);
                }
            }
        }
        state
    }

    /// The report writer's state (worker 0's).
    pub fn writer(&self) -> Option<WriterState> {
        self.parts().iter().find_map(|p| p.writer)
    }
}

#[cfg(test)]
mod tests {
    use adclick_dataflows::click::Sym;

    use super::*;

    fn part(worker: usize, peers: usize, partitions: &[i32], capability: u64) -> WorkerPart {
        let mut p = WorkerPart::empty(worker, peers);
        p.partitions = partitions.to_vec();
        p.source.positions = partitions.iter().map(|q| 100 + *q as u64).collect();
        p.source.clock = ClockState {
            max_seen: partitions.iter().map(|q| Some(1_000 + *q as u64)).collect(),
            capability,
        };
        p
    }

    #[test]
    fn partitions_keep_their_offsets_and_clocks_when_the_worker_count_changes() {
        // Two workers read partitions {0, 2} and {1, 3}; one worker now reads them all.
        let r = Restored::new(
            500,
            String::new(),
            vec![part(0, 2, &[0, 2], 700), part(1, 2, &[1, 3], 600)],
        );
        let s = r.source_for(0, 1, &[0, 1, 2, 3]);
        assert_eq!(s.positions, vec![100, 101, 102, 103]);
        assert_eq!(
            s.clock.max_seen,
            vec![Some(1_000), Some(1_001), Some(1_002), Some(1_003)]
        );
        assert_eq!(s.clock.capability, 600);
        // Three workers: worker 2 reads partition 2 alone; worker 0 reads 0 and 3.
        assert_eq!(r.source_for(2, 3, &[2]).positions, vec![102]);
        assert_eq!(r.source_for(2, 3, &[2]).clock.capability, 700);
        assert_eq!(r.source_for(0, 3, &[0, 3]).clock.capability, 600);
        // A partition the checkpoint never saw starts afresh.
        let new = r.source_for(0, 1, &[4]);
        assert_eq!(new.positions, vec![0]);
        assert_eq!(new.clock.max_seen, vec![None]);
        assert_eq!(new.clock.capability, 500);
        assert_eq!(
            r.offsets(),
            BTreeMap::from([(0, 100), (1, 101), (2, 102), (3, 103)])
        );
    }

    #[test]
    fn winners_go_to_the_worker_their_impression_is_routed_to() {
        let cfg = DedupConfig {
            horizon_ms: 86_400_000,
            allowed_lateness_ms: 300_000,
            lookback_ms: 3_600_000,
        };
        let mut state = DedupState::new(cfg);
        let dims = |ad: &str| Dims {
            ad_id: Sym::of(ad),
            ..Dims::default()
        };
        for imp in 0..10u128 {
            state.restore_winner(
                imp,
                1_000 + imp as u64,
                imp as u64,
                dims(&format!("{}", imp % 2)),
            );
        }
        let mut p = WorkerPart::empty(0, 1);
        p.winners = Winners::of(&state);
        assert_eq!(p.winners.dims.len(), 2, "dimensions are stored once");
        let r = Restored::new(0, String::new(), vec![p]);
        for peers in [1, 3] {
            let mut seen = Vec::new();
            for w in 0..peers {
                let s = r.dedup_for(w, peers, cfg);
                for (imp, ..) in s.winners() {
                    assert_eq!(DedupState::owner(imp, peers), w);
                    seen.push(imp);
                }
            }
            seen.sort();
            assert_eq!(seen, (0..10).collect::<Vec<_>>());
        }
        // Shared by the 3 workers of a process: each takes what it would have read, and once
        // the last has, the checkpoint's winners and rows are gone; the rest stays.
        let mut p = WorkerPart::empty(0, 1);
        p.winners = Winners::of(&state);
        p.rows.minute = vec![(
            (0, dims("0")),
            adclick_dataflows::click::Measures::billable(1),
        )];
        p.partitions = vec![0];
        p.source.positions = vec![7];
        let r = Restored::new(0, String::new(), vec![p]).shared_by(3);
        let mut seen = Vec::new();
        let mut rows = Vec::new();
        let decoded = |r: &Restored| r.winners.lock().unwrap().as_ref().map(|w| w[0].len());
        assert_eq!(decoded(&r), None, "decoded only for the first dedup state");
        for w in 0..3 {
            let (dedup, share) = (r.take_dedup(w, 3, cfg), r.take_rows(w, 3));
            seen.extend(dedup.winners().map(|w| w.0));
            rows.extend(share.minute);
            let kept = (w < 2).then_some(10);
            assert_eq!(decoded(&r), kept, "kept until the last share");
        }
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(
            rows.len(),
            1,
            "worker 0 of 1 starts worker 0 of 3 with its rows"
        );
        assert!(r.parts()[0].rows.minute.is_empty());
        assert_eq!(r.offsets(), BTreeMap::from([(0, 7)]));
    }
}
