//! Consistent checkpoints of the running aggregator (issue 5). The cut itself is the
//! dataflows crate's (docs/design.md, "Checkpoints"): worker 0 asks for a frontier `F`, every
//! dedup saves its state between the times before `F` and after, every source remembers where
//! it stood when its capability crossed `F`, and the arrangements hold their history back
//! until their rows before `F` are read. This module gathers those pieces per worker, writes
//! them off the worker thread, and has worker 0 commit the checkpoint once every part is on
//! disk. Between full checkpoints, each is a link holding only what changed (`chain.rs`).

pub mod chain;
mod corrupt;
mod direct;
pub mod part;
pub mod store;
mod wire;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use adclick_dataflows::dedup::{DedupState, SaveDedup};
use adclick_dataflows::names::Dictionary;
use adclick_dataflows::source::{Cuts, SourceSnapshot};
use adclick_dataflows::{RestoredRows, Traces};
use timely::dataflow::InputHandleVec;

pub use corrupt::Corrupt;
pub use part::{Restored, WorkerPart, WriterState};
pub use store::{Manifest, PART_FORMAT, StateSettings, Store};

use chain::{ChainState, LinkPart, Part, PartRows, Plan};
use part::Winners;

use super::raw::{Archived, RawBuffer};
use super::sink::aggregates::Committer;
use super::sink::parquet::{self, archive};
use super::sink::report::WriterHook;
use crate::health::{Checkpointed, Health};

/// Where and how often.
#[derive(Clone, Debug)]
pub struct CheckpointConfig {
    pub dir: PathBuf,
    pub interval: Duration,
    /// Complete checkpoints kept on disk (the newest ones, with those they build on).
    pub keep: usize,
    /// Links between full checkpoints (0: every checkpoint is full): a restore reads one
    /// full checkpoint and at most this many links.
    pub full_every: usize,
    /// This run's settings that a checkpoint's state is cut by: recorded in every manifest
    /// it commits, and checked against the manifest it restores (`None`: neither, for tools
    /// that only read checkpoints).
    pub settings: Option<StateSettings>,
}

/// The checkpoints whose parts a restore found damaged only once it had begun (their winners,
/// [`part::DamagedWinners`]), for the process it restarts into: `,`-separated frontiers.
const DAMAGED_ENV: &str = "ADCLICK_DAMAGED_CHECKPOINTS";

/// Loads the newest complete checkpoint that reads whole, after clearing what a crash left
/// half written. `clear` on exactly one process of the cluster, which also sets aside the
/// newer checkpoints that could not be read ([`Corrupt`]: a torn or damaged part, a manifest
/// that does not parse). If checkpoints exist but none reads whole, the restore fails rather
/// than start from the topic's beginning, which would count everything again.
///
/// The restore serves a checkpoint's rows once their parts' heads are checked, and checks the
/// winners as they decode. Winners found damaged then mean the process began with a
/// checkpoint it cannot count from: nothing after its frontier has been counted, committed or
/// written yet (every dedup waits for its state), so the process starts over in place (the
/// same pid, arguments and environment, `exec`) with the damaged checkpoint, and every one
/// that builds on it, skipped like one whose part was torn.
pub fn restore(cfg: &CheckpointConfig, clear: bool) -> anyhow::Result<Option<Restored>> {
    let store = Store::new(&cfg.dir)?;
    if clear {
        store.remove_incomplete()?;
    }
    let damaged = damaged_before();
    let mut skipped = Vec::new();
    for f in store.complete_newest_first()? {
        let started = Instant::now();
        let loaded = store.manifest(f).and_then(|manifest| {
            if let Some(d) = std::iter::once(&manifest.frontier)
                .chain(&manifest.chain)
                .find(|f| damaged.contains(f))
            {
                return Err(Corrupt(format!(
                    "the winners of the checkpoint at {d}, which it holds, were found damaged"
                ))
                .into());
            }
            if let (Some(took), Some(now)) = (&manifest.settings, &cfg.settings) {
                took.check_restorable(now, manifest.frontier, &cfg.dir)?;
            }
            let parts = store.read_chain_lazily(&manifest)?;
            Ok((manifest, parts))
        });
        let (manifest, (parts, winners)) = match loaded {
            Ok(loaded) => loaded,
            Err(e) if e.downcast_ref::<Corrupt>().is_some() => {
                tracing::error!(
                    frontier = f,
                    "checkpoint unreadable, falling back to the previous one: {e:#}"
                );
                skipped.push(f);
                continue;
            }
            Err(e) => return Err(e),
        };
        if clear {
            for f in &skipped {
                store.set_aside(*f)?;
            }
        }
        tracing::info!(
            frontier = manifest.frontier,
            workers = manifest.workers,
            bytes = manifest.bytes,
            links = manifest.chain.len(),
            read_ms = started.elapsed().as_millis() as u64,
            skipped = skipped.len(),
            "restoring checkpoint"
        );
        // The restart runs on a thread started here, at this thread's priority: the winners
        // decode on threads that lowered theirs (`dataflow.rs`), and the nice value of the
        // thread calling `exec` is the new process's (an unprivileged one cannot raise it back).
        let (found, damage) = std::sync::mpsc::channel::<part::DamagedWinners>();
        std::thread::Builder::new()
            .name("restore-restarter".into())
            .spawn(move || {
                if let Ok(d) = damage.recv() {
                    restart_past(f, &d, &damaged);
                }
            })?;
        let restored = Restored::lazy(manifest.frontier, manifest.run, parts, winners).on_damage(
            Box::new(move |d| {
                if found.send(d.clone()).is_ok() {
                    loop {
                        std::thread::park();
                    }
                }
            }),
        );
        return Ok(Some(restored));
    }
    anyhow::ensure!(
        skipped.is_empty(),
        "none of the {} checkpoints in {} reads whole (see the errors above): starting from the \
         topic's beginning would count everything again; restore the directory from a backup, \
         or move it away to start over",
        skipped.len(),
        cfg.dir.display()
    );
    Ok(None)
}

/// The checkpoints found damaged by the restores this process restarted from.
fn damaged_before() -> Vec<u64> {
    std::env::var(DAMAGED_ENV)
        .unwrap_or_default()
        .split(',')
        .filter_map(|f| f.trim().parse().ok())
        .collect()
}

/// Starts this process over in place, the checkpoint at `d.frontier` (and so the one restored,
/// `restored`, which holds it) to be skipped; exits with an error if it cannot.
fn restart_past(restored: u64, d: &part::DamagedWinners, before: &[u64]) -> ! {
    use std::os::unix::process::CommandExt;
    tracing::error!(
        frontier = restored,
        "checkpoint unreadable, falling back to the previous one: {d}; restarting the process"
    );
    let mut damaged = before.to_vec();
    damaged.push(d.frontier);
    let list: Vec<String> = damaged.iter().map(u64::to_string).collect();
    let mut args = std::env::args_os();
    let program = args.next().unwrap_or_default();
    let e = std::env::current_exe().map(|exe| {
        std::process::Command::new(exe)
            .arg0(program)
            .args(args)
            .env(DAMAGED_ENV, list.join(","))
            .exec()
    });
    tracing::error!("restarting the process past a damaged checkpoint: {e:?}");
    std::process::exit(1);
}

/// One worker's side of checkpointing.
pub struct Checkpointer {
    store: Arc<Store>,
    cfg: CheckpointConfig,
    worker: usize,
    peers: usize,
    partitions: Vec<i32>,
    publish: Arc<Publish>,
    /// With a Parquet directory: the clicks this worker read, until archived.
    pub raw: Option<Rc<RefCell<RawBuffer>>>,
    /// The source's cuts.
    pub cuts: Rc<RefCell<Cuts>>,
    /// Dedup winners saved at each asked frontier whose part is not yet written.
    saved: Rc<RefCell<BTreeMap<u64, Saved>>>,
    /// Set by the dedup: no frontier it has still to save is before this one.
    unsaved_from: Rc<std::cell::Cell<u64>>,
    /// What the links after the newest committed checkpoint need.
    chain: Rc<RefCell<ChainState>>,
    /// Worker 0: the report writer's state at each asked frontier.
    written: Rc<RefCell<BTreeMap<u64, WriterState>>>,
    /// Worker 0: the frontiers the writer must record its state at.
    asked: Rc<RefCell<std::collections::BTreeSet<u64>>>,
    /// Worker 0: the latest time the writer began before the frontier passed it (see
    /// [`WriterHook::new`]); no frontier at or before it is asked.
    begun: Rc<std::cell::Cell<u64>>,
    requests: Option<Requests>,
}

/// A worker's dedup state at an asked frontier, and what its part is to be.
struct Saved {
    asked_at: Instant,
    winners: Winners,
    plan: Plan,
    judged_from: u64,
}

/// What a committed checkpoint makes visible, and where it is reported.
pub struct Publish {
    /// This run's id, for the manifests.
    pub run: String,
    /// Worker 0: commits the click-aggregates records of each checkpoint.
    pub sinks: Option<Committer>,
    /// The Parquet sinks' directory: each worker archives its clicks there, worker 0
    /// publishes each checkpoint's files.
    pub parquet: Option<PathBuf>,
    pub health: Arc<Health>,
    /// This run's fencing epoch, claimed by process 0 at start.
    pub epoch: u64,
}

/// Worker 0's request input, and the last checkpoint settled (committed or failed).
struct Requests {
    input: InputHandleVec<u64, u64>,
    last_asked: u64,
    asked_at: Instant,
    settled: Arc<AtomicU64>,
}

impl Checkpointer {
    pub fn new(
        cfg: CheckpointConfig,
        worker: usize,
        peers: usize,
        partitions: Vec<i32>,
        publish: Publish,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            store: Arc::new(Store::new(&cfg.dir)?),
            cfg,
            worker,
            peers,
            partitions,
            raw: publish.parquet.as_ref().map(|_| Rc::default()),
            publish: Arc::new(publish),
            cuts: Rc::default(),
            saved: Rc::default(),
            unsaved_from: Rc::default(),
            chain: Rc::default(),
            written: Rc::default(),
            asked: Rc::default(),
            begun: Rc::default(),
            requests: None,
        })
    }

    /// Where the dedup puts its state at an asked frontier: all of it for a full checkpoint,
    /// the winners changed since the newest committed checkpoint for a link. Every worker
    /// plans alike: the previous checkpoint has settled (committed or not) before `F` is
    /// asked, so all of them see the same newest manifest.
    pub fn save_dedup(&self) -> SaveDedup {
        let saved = self.saved.clone();
        let chain = self.chain.clone();
        let store = self.store.clone();
        let full_every = self.cfg.full_every;
        Box::new(move |f, state: &mut DedupState| {
            let asked_at = Instant::now();
            let committed = if full_every > 0 {
                match store.latest() {
                    Ok(m) => m,
                    Err(e) => {
                        // Every worker reads the same manifest: none builds a link on it.
                        tracing::warn!("checkpoint at {f}: the newest manifest: {e:#}");
                        None
                    }
                }
            } else {
                None
            };
            let committed = committed.as_ref().map(|m| (m.frontier, m.chain.as_slice()));
            let (plan, winners) = chain
                .borrow_mut()
                .dedup_part(f, committed, state, full_every);
            saved.borrow_mut().insert(
                f,
                Saved {
                    asked_at,
                    winners,
                    plan,
                    judged_from: state.judged_from(),
                },
            );
        })
    }

    /// Has `traces` record which windows change, before the dataflow runs, when checkpoints
    /// are incremental: a link reads only the windows changed since its tip.
    pub fn watch(&self, traces: &Traces) {
        if self.cfg.full_every > 0 {
            traces.record_changes();
        }
    }

    /// Where the dedup tells which checkpoints it has still to save ([`Checkpointer::step`]
    /// releases the source's cuts before them).
    pub fn unsaved_from(&self) -> Rc<std::cell::Cell<u64>> {
        self.unsaved_from.clone()
    }

    /// Worker 0 asks for checkpoints through `input` (the other workers close theirs); the
    /// first waits a full interval, and none repeats the one restored from.
    pub fn take_requests(&mut self, input: InputHandleVec<u64, u64>, restored_at: Option<u64>) {
        let start = restored_at.unwrap_or(0);
        self.requests = Some(Requests {
            input,
            last_asked: start,
            asked_at: Instant::now(),
            settled: Arc::new(AtomicU64::new(start)),
        });
    }

    /// What the report writer needs to record its state at asked frontiers (worker 0).
    pub fn writer_hook(&self) -> WriterHook {
        WriterHook::new(self.asked.clone(), self.written.clone(), self.begun.clone())
    }

    /// How far the arrangements may compact: to `frontier − 1`, not `frontier`, since the
    /// frontier may be exactly a checkpoint frontier `F` whose dedup has not saved yet (it
    /// saves as the frontier reaches `F`), and compacting to `F` would fold the updates at
    /// `F − 1` into `F`; and no further than `F − 1` while a part still has its rows to read.
    pub fn compaction_bound(&self, frontier: Option<u64>) -> Option<u64> {
        let hold = self.saved.borrow().keys().next().map(|f| f - 1);
        let frontier = frontier.map(|f| f.saturating_sub(1));
        match (frontier, hold) {
            (Some(f), Some(h)) => Some(f.min(h)),
            (f, None) => f,
            (None, h) => h,
        }
    }

    /// Asks for a checkpoint when one is due (worker 0), and writes this worker's parts whose
    /// pieces are all in. `sources` is the sources' frontier; `names`, worker 0's texts.
    pub fn step(&mut self, sources: Option<u64>, traces: &mut Traces, names: Option<&Dictionary>) {
        self.ask(sources);
        loop {
            let Some(f) = self.saved.borrow().keys().next().copied() else {
                break;
            };
            if !traces.sealed_through(f) {
                break;
            }
            let writer = if self.worker == 0 {
                match self.written.borrow_mut().remove(&f) {
                    Some(w) => Some(w),
                    None => break,
                }
            } else {
                None
            };
            let saved = self.saved.borrow_mut().remove(&f).expect("saved");
            let tip = match &saved.plan {
                Plan::Full => None,
                Plan::Link { tip, .. } => Some(*tip),
            };
            // A link reads only the windows changed since its tip.
            let read = tip.map(|tip| traces.changed_since(tip));
            let mut rows = traces.rows_before(f, read.as_ref());
            if let Some(names) = names {
                // Texts of clicks after `F` too, which is harmless: a text never changes.
                rows.names = names.names();
            }
            let cuts = self.cuts.borrow();
            let source = cuts.at(f).unwrap_or_else(|| SourceSnapshot {
                // A worker without partitions: its source finished at once.
                clock: adclick_dataflows::watermark::ClockState {
                    max_seen: Vec::new(),
                    capability: f,
                },
                ..SourceSnapshot::default()
            });
            // The clicks the checkpoint's state has read, for the raw archive.
            let raw = self.raw.as_ref().map(|r| {
                let positions = self
                    .partitions
                    .iter()
                    .copied()
                    .zip(source.positions.iter().copied())
                    .collect();
                r.borrow_mut().take_before(&positions)
            });
            let mut part = WorkerPart {
                worker: self.worker,
                peers: self.peers,
                partitions: self.partitions.clone(),
                source,
                winners: saved.winners,
                rows: RestoredRows::default(),
                writer,
            };
            let part = if self.cfg.full_every == 0 {
                part.rows = rows;
                Part::Full(part)
            } else {
                match self
                    .chain
                    .borrow_mut()
                    .part_rows(f, rows, tip, read.as_ref())
                {
                    PartRows::Full(rows) => {
                        part.rows = rows;
                        Part::Full(part)
                    }
                    PartRows::Link {
                        tip,
                        rows,
                        emptied,
                        grown,
                    } => {
                        part.rows = rows;
                        Part::Link(LinkPart {
                            tip,
                            part,
                            emptied,
                            judged_from: saved.judged_from,
                            grown,
                        })
                    }
                }
            };
            self.write(
                f,
                part,
                saved.plan.chain(),
                raw.unwrap_or_default(),
                saved.asked_at,
            );
        }
        // A checkpoint needs the source's cut and the events sent at or after its frontier:
        // none still to be written or saved is before this.
        let unwritten = self.saved.borrow().keys().next().copied();
        let needed = unwritten.unwrap_or(u64::MAX).min(self.unsaved_from.get());
        self.cuts.borrow_mut().release_before(needed);
    }

    /// Archives every click still buffered, in the epoch that ends the job (`u64::MAX`):
    /// once the input is exhausted, all of them are in the results.
    pub fn archive_the_rest(&mut self) -> anyhow::Result<()> {
        let (Some(dir), Some(raw)) = (&self.publish.parquet, &self.raw) else {
            return Ok(());
        };
        let rest = std::mem::take(&mut *raw.borrow_mut()).into_records();
        archive(dir, u64::MAX, self.worker, rest)
    }

    fn ask(&mut self, sources: Option<u64>) {
        let Some(r) = self.requests.as_mut() else {
            return;
        };
        let Some(sf) = sources else {
            // The input is exhausted: no checkpoint can be asked for any more.
            self.requests = None;
            return;
        };
        let settled = r.settled.load(Ordering::Acquire) >= r.last_asked;
        let begun = self.begun.get();
        if settled && sf > r.last_asked && sf > begun && r.asked_at.elapsed() >= self.cfg.interval {
            r.input.advance_to(sf);
            r.input.send(sf);
            r.last_asked = sf;
            r.asked_at = Instant::now();
            self.asked.borrow_mut().insert(sf);
        }
        if sf > *r.input.time() {
            r.input.advance_to(sf);
        }
    }

    /// Writes the part on a thread of its own; worker 0's thread then waits for every other
    /// part and commits the checkpoint.
    fn write(
        &self,
        f: u64,
        mut part: Part,
        chain: Vec<u64>,
        raw: Vec<Archived>,
        asked_at: Instant,
    ) {
        let store = self.store.clone();
        let peers = self.peers;
        let keep = self.cfg.keep;
        let settings = self.cfg.settings.clone();
        let settled = self.requests.as_ref().map(|r| r.settled.clone());
        let commit = self.worker == 0;
        let (publish, worker) = (self.publish.clone(), self.worker);
        let run = move || -> anyhow::Result<()> {
            // The archive's files first: a part on disk implies its worker's are too.
            if let Some(dir) = &publish.parquet {
                archive(dir, f, worker, raw)?;
            }
            store.write_part(f, &mut part)?;
            drop(part);
            if !commit {
                return Ok(());
            }
            let deadline = Instant::now() + Duration::from_secs(600);
            while !store.parts_written(f, peers) {
                anyhow::ensure!(Instant::now() < deadline, "parts of {f} never arrived");
                std::thread::sleep(Duration::from_millis(10));
            }
            let manifest = Manifest {
                frontier: f,
                workers: peers,
                bytes: store.parts_size(f, peers),
                duration_ms: asked_at.elapsed().as_millis() as u64,
                run: publish.run.clone(),
                epoch: publish.epoch,
                format: PART_FORMAT,
                settings,
                checksummed: true,
                chain,
            };
            store.commit(&manifest, keep)?;
            if let Some(sinks) = &publish.sinks {
                sinks.commit(&publish.run, f)?;
            }
            if let Some(dir) = &publish.parquet {
                parquet::commit(dir, f)?;
            }
            tracing::info!(
                frontier = f,
                bytes = manifest.bytes,
                duration_ms = manifest.duration_ms,
                links = manifest.chain.len(),
                "checkpoint committed"
            );
            let health = &publish.health;
            health.checkpoints_committed.fetch_add(1, Ordering::Relaxed);
            let now = crate::timefmt::now_millis() as u64;
            health
                .checkpoint_committed_at_ms
                .store(now, Ordering::Relaxed);
            *health.checkpoint.lock().unwrap() = Some(Checkpointed {
                frontier: manifest.frontier,
                bytes: manifest.bytes,
                duration_ms: manifest.duration_ms,
            });
            Ok(())
        };
        std::thread::Builder::new()
            .name(format!("checkpoint-{f}"))
            .spawn(move || {
                if let Err(e) = run() {
                    tracing::error!("checkpoint at {f}: {e:#}");
                    if format!("{e:#}").contains("fenced:") {
                        // A successor owns the directory: anything more from us is a zombie's.
                        std::process::exit(super::exit::EXIT_FENCED);
                    }
                }
                if let Some(s) = settled {
                    s.store(f, Ordering::Release);
                }
            })
            .expect("spawning a checkpoint writer");
    }
}
