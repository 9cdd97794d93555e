//! Checkpoints on disk: one directory per checkpoint frontier, one file per worker, and a
//! manifest written last. A checkpoint without its manifest is incomplete and never read, so
//! a crash at any moment leaves either a whole checkpoint or none.
//!
//! ```text
//! DIR/ckpt-00000001763833260000/worker-0.bin   (postcard: a Part, full or link, without its
//!                                               winners; its winners; then a trailer)
//!                              /worker-1.bin
//!                              /MANIFEST.json  (renamed into place once every part is)
//! DIR/corrupt-ckpt-…/                          (set aside by a restore that could not read it)
//! ```
//!
//! Every process of a cluster writes into the same directory (shared storage when the
//! processes run on several hosts).
//!
//! A part ends with a 32-byte trailer: the length of its head (the part without its winners),
//! the CRC-32 of the head, the CRC-32 of the winners after it, the length of both (all little
//! endian) and the magic `ADCKSUM2` (format 7; formats 5 and 6 end with 20 bytes: one CRC-32 of
//! the whole, the length, `ADCKSUM1`). The rename makes a part whole or absent on a working
//! file system; the trailer catches what the rename cannot: a part torn by a disk or file
//! system that lost the end of a write, or damaged since. A manifest that says `checksummed`
//! is read only with its parts' lengths and heads intact; older manifests' parts have none.
//! The winners' own checksum is checked as they are decoded, after the restore serves the
//! rows: at 100 M clicks the winners are 4 GB, and reading them from a cold disk before
//! serving took 5 s of a restart's 11 (docs/benchmarks.md). Damage found there restarts the
//! process past the checkpoint (`checkpoint::restore`).
//!
//! A manifest whose `chain` is not empty is a link of an incremental chain (`chain.rs`): it
//! names the checkpoints it builds on, oldest first, the first one full, and is read only
//! with all of them whole.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::chain::{Part, PartV4, fold, kept, push_part};
use super::corrupt::Corrupt;
use super::direct::DirectFile;
use super::part::{ChainWinners, LazyWinners, LegacyWinners, WorkerPart};

/// What a complete checkpoint holds, written once all its parts are in place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Every update before this event time (ms) is in the checkpoint, none after.
    pub frontier: u64,
    /// The cluster's worker count when it was taken: one part per worker.
    pub workers: usize,
    /// Total size of the parts.
    pub bytes: u64,
    /// Wall clock from the request to the manifest.
    pub duration_ms: u64,
    /// The run that took it: its sinks' records before `frontier` carry this id.
    pub run: String,
    /// The fencing epoch of the run that took it ([`Store::claim_epoch`]).
    #[serde(default)]
    pub epoch: u64,
    /// The parts' encoding ([`PART_FORMAT`]); manifests from before it existed are format 1.
    #[serde(default = "first_format")]
    pub format: u32,
    /// The settings its state is cut by (absent in manifests from before they were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<StateSettings>,
    /// Whether every part ends with its checksum trailer (absent, false, in older manifests).
    #[serde(default)]
    pub checksummed: bool,
    /// The checkpoints this one builds on, oldest first (the first is full): empty for a
    /// full checkpoint, and in manifests from before incremental checkpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<u64>,
}

/// The end of a checksummed part of formats 5 and 6: CRC-32 (4 bytes), length (8 bytes), this
/// magic.
const TRAILER_MAGIC: &[u8; 8] = b"ADCKSUM1";
const TRAILER: usize = 4 + 8 + 8;
/// The end of a part of format 7: head length (8 bytes), the head's CRC-32 (4), the winners'
/// CRC-32 (4), length (8), this magic.
const SPLIT_MAGIC: &[u8; 8] = b"ADCKSUM2";
const SPLIT_TRAILER: usize = 8 + 4 + 4 + 8 + 8;

/// The trailer of a part of `len` bytes whose first `head.0` bytes have checksum `head.1` and
/// whose winners after them have checksum `winners`.
fn split_trailer(head: (u64, u32), winners: u32, len: u64) -> [u8; SPLIT_TRAILER] {
    let mut t = [0; SPLIT_TRAILER];
    t[..8].copy_from_slice(&head.0.to_le_bytes());
    t[8..12].copy_from_slice(&head.1.to_le_bytes());
    t[12..16].copy_from_slice(&winners.to_le_bytes());
    t[16..24].copy_from_slice(&len.to_le_bytes());
    t[24..].copy_from_slice(SPLIT_MAGIC);
    t
}

/// `head` and `winners` as a part of format 7 lays them out, with its trailer.
#[cfg(test)]
fn with_trailer(mut head: Vec<u8>, winners: &[u8]) -> Vec<u8> {
    let h = (head.len() as u64, crc32fast::hash(&head));
    head.extend_from_slice(winners);
    let t = split_trailer(h, crc32fast::hash(winners), head.len() as u64);
    head.extend_from_slice(&t);
    head
}

/// `payload` with the trailer of formats 5 and 6.
#[cfg(test)]
fn with_whole_trailer(mut payload: Vec<u8>) -> Vec<u8> {
    let len = payload.len() as u64;
    payload.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    payload.extend_from_slice(&len.to_le_bytes());
    payload.extend_from_slice(TRAILER_MAGIC);
    payload
}

/// A writer that checksums and counts the bytes passing to `inner`: a part's trailer is
/// computed as the part is written, so no encoded copy of the part is ever held.
struct Checksummed<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
    /// The head's length and checksum, once [`Checksummed::end_head`] has marked it.
    head: Option<(u64, u32)>,
}

impl<W> Checksummed<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            crc: crc32fast::Hasher::new(),
            len: 0,
            head: None,
        }
    }

    /// Everything so far is the head; what follows, the winners, is checksummed on its own.
    fn end_head(&mut self) {
        let crc = std::mem::take(&mut self.crc).finalize();
        self.head = Some((self.len, crc));
    }
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A part's payload as its trailer vouches for it.
#[derive(Debug)]
struct Checked<'a> {
    payload: &'a [u8],
    /// Where the head ends (format 7), checked; `None`: the whole payload is checked.
    head: Option<usize>,
    /// The checksum the winners after the head must have, not checked yet.
    winners_crc: Option<u32>,
}

/// The payload of a checksummed part, or why it is not whole. Only the head of a format 7
/// part is checked here (see the module's doc); the whole of an older one.
fn checked(bytes: &[u8]) -> Result<Checked<'_>, String> {
    let magic = bytes.len().checked_sub(8).map(|at| &bytes[at..]);
    let split = magic == Some(&SPLIT_MAGIC[..]);
    let size = if split { SPLIT_TRAILER } else { TRAILER };
    let Some(body) = bytes.len().checked_sub(size) else {
        return Err(format!(
            "{} bytes, shorter than its trailer: torn",
            bytes.len()
        ));
    };
    let (payload, trailer) = bytes.split_at(body);
    if !split && &trailer[12..] != TRAILER_MAGIC {
        return Err("no checksum trailer at its end: torn or damaged".into());
    }
    let u64_at = |at: usize| u64::from_le_bytes(trailer[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_le_bytes(trailer[at..at + 4].try_into().expect("4 bytes"));
    let len = if split { u64_at(16) } else { u64_at(4) };
    if len != payload.len() as u64 {
        return Err(format!(
            "{} bytes where its trailer says {len}: torn",
            payload.len()
        ));
    }
    if !split {
        if crc32fast::hash(payload) != u32_at(0) {
            return Err("checksum mismatch: damaged".into());
        }
        return Ok(Checked {
            payload,
            head: None,
            winners_crc: None,
        });
    }
    let head = u64_at(0);
    if head > len {
        return Err(format!("a head of {head} bytes in {len}: damaged"));
    }
    let head = head as usize;
    if crc32fast::hash(&payload[..head]) != u32_at(8) {
        return Err("checksum mismatch in its head: damaged".into());
    }
    Ok(Checked {
        payload,
        head: Some(head),
        winners_crc: Some(u32_at(12)),
    })
}

/// The settings a checkpoint's state is cut by, so that a run under other ones cannot
/// restore it: the windows it reports final are final at the lateness it ran with, its dedup
/// winners are kept for its horizon, its times are multiples of its tick. Restoring under
/// others would be wrong, not merely different. The worker and process counts are not among
/// them: any shape restores any checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSettings {
    pub tick_ms: u64,
    pub allowed_lateness_ms: u64,
    pub dedup_horizon_ms: u64,
}

impl StateSettings {
    /// Fails, naming every setting that differs, when a run with `now` would restore a
    /// checkpoint (at `frontier` in `dir`) taken with `self`.
    pub fn check_restorable(&self, now: &Self, frontier: u64, dir: &Path) -> anyhow::Result<()> {
        let differ: Vec<String> = [
            ("tick_ms", self.tick_ms, now.tick_ms),
            (
                "allowed_lateness_ms",
                self.allowed_lateness_ms,
                now.allowed_lateness_ms,
            ),
            (
                "dedup_horizon_ms",
                self.dedup_horizon_ms,
                now.dedup_horizon_ms,
            ),
        ]
        .into_iter()
        .filter(|(_, took, run)| took != run)
        .map(|(name, took, run)| format!("aggregator.{name} = {took} (this run: {run})"))
        .collect();
        anyhow::ensure!(
            differ.is_empty(),
            "the checkpoint at frontier {frontier} in {} was taken with {}: its windows, dedup \
             winners and times are cut by those settings, so this run cannot restore it; run \
             with the same settings, or move the checkpoint directory away to start from the \
             topic's beginning",
            dir.display(),
            differ.join(", ")
        );
        Ok(())
    }
}

/// The encoding of the parts this build writes and reads. Postcard is not self-describing, so
/// a part of another format cannot be read at all: format 2 added invalid-traffic measures
/// and the recent winners' traits, format 3 the reach sketches (`RestoredRows::reach`),
/// format 4 the links of incremental chains (a part is a `Part`: full, or a link), format 5
/// the links' sketch growths (`LinkPart::grown`) and the winners' compact encoding
/// (`wire.rs`), format 6 moved the winners after the rest of the part, so that a restore
/// decodes the rows first and the winners later, off the path to serving (`Encoded`), format 7
/// checksums the head and the winners apart (the module's doc). Format 3 parts are still read,
/// as full parts, and format 4 ones as links without growths (both with their winners' old
/// encoding, `LegacyWinners`), format 5 ones with their winners inside, format 6 ones checked
/// whole.
pub const PART_FORMAT: u32 = 7;

fn first_format() -> u32 {
    1
}

pub struct Store {
    dir: PathBuf,
}

const MANIFEST: &str = "MANIFEST.json";
/// The newest run's epoch: a run commits only while it is still the newest.
const EPOCH: &str = "EPOCH";

impl Store {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating checkpoint directory {}", dir.display()))?;
        Ok(Self { dir: dir.into() })
    }

    fn checkpoint_dir(&self, frontier: u64) -> PathBuf {
        self.dir.join(format!("ckpt-{frontier:020}"))
    }

    fn part_path(&self, frontier: u64, worker: usize) -> PathBuf {
        self.checkpoint_dir(frontier)
            .join(format!("worker-{worker}.bin"))
    }

    /// Writes one worker's part whole or not at all: into a temporary file, synced, then
    /// renamed. Returns its size. The part is encoded straight into the file: a full part is
    /// hundreds of MB, and encoding it into memory first (a vector grown by doubling) held
    /// up to twice that beside the state. Its winners go last (format 6; the part is given
    /// back as it was).
    pub fn write_part(&self, frontier: u64, part: &mut Part) -> anyhow::Result<u64> {
        let dir = self.checkpoint_dir(frontier);
        std::fs::create_dir_all(&dir)?;
        let path = self.part_path(frontier, part.worker());
        write_atomically_with(&path, |file| {
            let checksummed = Checksummed::new(DirectFile::new(file));
            let buffered = std::io::BufWriter::with_capacity(1 << 20, checksummed);
            let winners = std::mem::take(&mut part.worker_part_mut().winners);
            let encoded = (|| -> anyhow::Result<_> {
                let mut b = postcard::to_io(&*part, buffered)?;
                b.flush()?;
                b.get_mut().end_head();
                super::wire::write_winners(&winners, &mut b)?;
                Ok(b)
            })();
            part.worker_part_mut().winners = winners;
            let buffered = encoded.context("encoding a checkpoint part")?;
            let Checksummed {
                mut inner,
                crc,
                len,
                head,
            } = buffered
                .into_inner()
                .map_err(|e| e.into_error())
                .context("writing a checkpoint part")?;
            let head = head.expect("the head was marked");
            inner.write_all(&split_trailer(head, crc.finalize(), len))?;
            inner.finish().context("writing a checkpoint part")?;
            Ok(len + SPLIT_TRAILER as u64)
        })
    }

    /// Whether the parts of all `workers` are in place for `frontier`.
    pub fn parts_written(&self, frontier: u64, workers: usize) -> bool {
        (0..workers).all(|w| self.part_path(frontier, w).exists())
    }

    /// Sizes of the parts of `frontier`.
    pub fn parts_size(&self, frontier: u64, workers: usize) -> u64 {
        (0..workers)
            .filter_map(|w| std::fs::metadata(self.part_path(frontier, w)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Claims the next epoch for a run starting now: one more than any run before. A run
    /// that finds a newer epoch than its own at commit time has a successor, and stops.
    pub fn claim_epoch(&self) -> anyhow::Result<u64> {
        let epoch = self.epoch()? + 1;
        write_atomically(&self.dir.join(EPOCH), epoch.to_string().as_bytes())?;
        Ok(epoch)
    }

    /// The newest claimed epoch (0 before any).
    pub fn epoch(&self) -> anyhow::Result<u64> {
        match std::fs::read_to_string(self.dir.join(EPOCH)) {
            Ok(text) => text
                .trim()
                .parse()
                .with_context(|| format!("parsing {}", self.dir.join(EPOCH).display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes the checkpoint complete by writing its manifest, then prunes all but the `keep`
    /// newest complete checkpoints. Refuses when a newer run has claimed an epoch since this
    /// one started: a paused zombie must never commit after its successor.
    pub fn commit(&self, manifest: &Manifest, keep: usize) -> anyhow::Result<()> {
        let newest = self.epoch()?;
        anyhow::ensure!(
            newest <= manifest.epoch,
            "fenced: this run's epoch {} was superseded by epoch {newest}; another aggregator \
             took over the checkpoint directory {}",
            manifest.epoch,
            self.dir.display()
        );
        let dir = self.checkpoint_dir(manifest.frontier);
        write_atomically(&dir.join(MANIFEST), &serde_json::to_vec_pretty(manifest)?)?;
        self.prune(keep.max(1))
    }

    /// Checkpoint frontiers on disk, oldest first, with whether each is complete.
    fn list(&self) -> anyhow::Result<Vec<(u64, bool)>> {
        let mut all = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(f) = name
                .to_str()
                .and_then(|n| n.strip_prefix("ckpt-"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            all.push((f, entry.path().join(MANIFEST).exists()));
        }
        all.sort();
        Ok(all)
    }

    /// Removes complete checkpoints that neither are among the `keep` newest nor anything
    /// these build on (nor the newest on another base, with what it builds on: `chain::kept`),
    /// and incomplete ones older than the newest complete one (abandoned by a crash). A
    /// manifest that does not parse counts as full.
    fn prune(&self, keep: usize) -> anyhow::Result<()> {
        let all = self.list()?;
        let complete: Vec<(u64, Vec<u64>)> = all
            .iter()
            .filter(|(_, c)| *c)
            .map(|(f, _)| (*f, self.manifest(*f).map(|m| m.chain).unwrap_or_default()))
            .collect();
        let Some(&(newest, _)) = complete.last() else {
            return Ok(());
        };
        let keep = kept(&complete, keep);
        for (f, done) in all {
            if (done && !keep.contains(&f)) || (!done && f < newest) {
                std::fs::remove_dir_all(self.checkpoint_dir(f))?;
            }
        }
        Ok(())
    }

    /// Removes every incomplete checkpoint: at start, before any is taken, so that parts a
    /// crashed run left behind are never mistaken for parts of a new one.
    pub fn remove_incomplete(&self) -> anyhow::Result<()> {
        for (f, done) in self.list()? {
            if !done {
                std::fs::remove_dir_all(self.checkpoint_dir(f))?;
            }
        }
        Ok(())
    }

    /// The newest complete checkpoint's manifest.
    pub fn latest(&self) -> anyhow::Result<Option<Manifest>> {
        let Some((f, _)) = self.list()?.into_iter().rev().find(|(_, done)| *done) else {
            return Ok(None);
        };
        self.manifest(f).map(Some)
    }

    /// Frontiers of the complete checkpoints, newest first.
    pub fn complete_newest_first(&self) -> anyhow::Result<Vec<u64>> {
        let all = self.list()?;
        Ok(all
            .into_iter()
            .rev()
            .filter(|(_, c)| *c)
            .map(|(f, _)| f)
            .collect())
    }

    /// The manifest of the complete checkpoint at `f`; [`Corrupt`] if it does not parse.
    pub fn manifest(&self, f: u64) -> anyhow::Result<Manifest> {
        let path = self.checkpoint_dir(f).join(MANIFEST);
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text)
            .map_err(|e| Corrupt(format!("{}: {e}", path.display())).into())
    }

    /// Moves the checkpoint at `f`, which could not be read, out of the way (`corrupt-ckpt-…`,
    /// kept for a look): never restored, pruned or written into again.
    pub fn set_aside(&self, f: u64) -> anyhow::Result<()> {
        let from = self.checkpoint_dir(f);
        let to = self.dir.join(format!("corrupt-ckpt-{f:020}"));
        match std::fs::rename(&from, &to) {
            // Another process of the cluster set it aside first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r.with_context(|| format!("moving {} aside", from.display())),
        }
    }

    /// Every part of `manifest`'s checkpoint, each read and decoded on a thread of its own (a
    /// restart waits for all of them, and one part is about one worker's share of the state),
    /// with its winners decoded (what the tests compare; a restore reads them lazily).
    #[cfg(test)]
    pub fn read_parts(&self, manifest: &Manifest) -> anyhow::Result<Vec<Part>> {
        self.read_parts_lazily(manifest)?
            .into_iter()
            .map(|(mut part, winners)| {
                let decoded = winners.decode().map_err(|e| Corrupt(format!("{e:#}")))?;
                part.worker_part_mut().winners = decoded;
                Ok(part)
            })
            .collect()
    }

    /// Every part of `manifest`'s checkpoint, as `read_parts` reads them, each part's winners
    /// still encoded where its format puts them last: checked whole (the trailer), but
    /// decoded only when [`LazyWinners::decode`]d.
    fn read_parts_lazily(&self, manifest: &Manifest) -> anyhow::Result<Vec<(Part, LazyWinners)>> {
        anyhow::ensure!(
            (3..=PART_FORMAT).contains(&manifest.format),
            "the checkpoint at frontier {} in {} has parts of format {}, and this build reads \
             formats 3 to {PART_FORMAT}: restore it with the build that wrote it, or move the \
             checkpoint directory away to start from the topic's beginning",
            manifest.frontier,
            self.dir.display(),
            manifest.format
        );
        std::thread::scope(|scope| {
            let readers: Vec<_> = (0..manifest.workers)
                .map(|w| {
                    let path = self.part_path(manifest.frontier, w);
                    let checksummed = manifest.checksummed;
                    let format = manifest.format;
                    scope.spawn(move || -> anyhow::Result<(Part, LazyWinners)> {
                        let corrupt = |why: String| Corrupt(format!("{}: {why}", path.display()));
                        let file = match File::open(&path) {
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                                return Err(corrupt("missing".into()).into());
                            }
                            r => r.with_context(|| format!("opening {}", path.display()))?,
                        };
                        // Mapped, not read into a buffer: the part is decoded straight from
                        // the page cache, so a restore does not first fault in a fresh copy
                        // of every part (the base alone is hundreds of MB at 20 M clicks, and
                        // fresh pages were most of a restore's time, docs/benchmarks.md).
                        // SAFETY: a part file is written once, to a temporary name renamed
                        // into place, and never modified in place; pruning only unlinks it,
                        // which leaves the mapping valid.
                        let bytes = unsafe { memmap2::Mmap::map(&file) }
                            .with_context(|| format!("mapping {}", path.display()))?;
                        let checked = if checksummed {
                            checked(&bytes).map_err(corrupt)?
                        } else {
                            Checked {
                                payload: &bytes,
                                head: None,
                                winners_crc: None,
                            }
                        };
                        let payload = checked.payload;
                        let decoding = |e: postcard::Error| corrupt(format!("decoding: {e}"));
                        let decoded = |mut part: Part| {
                            let winners = std::mem::take(&mut part.worker_part_mut().winners);
                            (part, LazyWinners::Decoded(winners))
                        };
                        let (part, winners) = match format {
                            3 => decoded(Part::Full(
                                postcard::from_bytes::<WorkerPart<LegacyWinners>>(payload)
                                    .map_err(decoding)?
                                    .into(),
                            )),
                            4 => decoded(
                                postcard::from_bytes::<PartV4>(payload)
                                    .map_err(decoding)?
                                    .into(),
                            ),
                            5 => decoded(postcard::from_bytes(payload).map_err(decoding)?),
                            _ => {
                                // Only the checked head is decoded now.
                                let head = &payload[..checked.head.unwrap_or(payload.len())];
                                let (part, rest) =
                                    postcard::take_from_bytes::<Part>(head).map_err(decoding)?;
                                if checked.head.is_some() && !rest.is_empty() {
                                    return Err(corrupt(format!(
                                        "{} bytes of its head after its part",
                                        rest.len()
                                    ))
                                    .into());
                                }
                                let range = head.len() - rest.len()..payload.len();
                                let crc = checked.winners_crc;
                                let winners = LazyWinners::Mapped {
                                    map: Arc::new(bytes),
                                    range,
                                    crc,
                                    frontier: manifest.frontier,
                                    path: path.clone(),
                                };
                                (part, winners)
                            }
                        };
                        anyhow::ensure!(
                            part.worker() == w,
                            corrupt(format!("holds worker {}'s part", part.worker()))
                        );
                        Ok((part, winners))
                    })
                })
                .collect();
            readers
                .into_iter()
                .map(|r| r.join().expect("a checkpoint reader panicked"))
                .collect()
        })
    }

    /// Each worker's state at `manifest`'s checkpoint: its parts, folded onto those of every
    /// checkpoint it builds on. [`Corrupt`] when any of them is missing, incomplete, of
    /// another worker count, or not whole. Winners decoded (what the tests compare; a restore
    /// reads them lazily).
    #[cfg(test)]
    pub fn read_chain(&self, manifest: &Manifest) -> anyhow::Result<Vec<WorkerPart>> {
        let (mut parts, winners) = self.read_chain_lazily(manifest)?;
        for (p, w) in parts.iter_mut().zip(winners) {
            p.winners = w.decode().map_err(|e| Corrupt(format!("{e:#}")))?;
        }
        Ok(parts)
    }

    /// Each worker's state, as `read_chain` folds it, each worker's winners folded only when
    /// its [`ChainWinners`] is decoded: a restore serves the rows meanwhile.
    pub fn read_chain_lazily(
        &self,
        manifest: &Manifest,
    ) -> anyhow::Result<(Vec<WorkerPart>, Vec<ChainWinners>)> {
        let mut frontiers = manifest.chain.clone();
        frontiers.push(manifest.frontier);
        let mut parts: Vec<Vec<Part>> = (0..manifest.workers).map(|_| Vec::new()).collect();
        let mut winners: Vec<ChainWinners> = (0..manifest.workers)
            .map(|_| ChainWinners::default())
            .collect();
        for f in &frontiers {
            let m = if *f == manifest.frontier {
                manifest.clone()
            } else {
                if !self.checkpoint_dir(*f).join(MANIFEST).exists() {
                    return Err(Corrupt(format!(
                        "the checkpoint at {} builds on the one at {f}, which is gone",
                        manifest.frontier
                    ))
                    .into());
                }
                self.manifest(*f)?
            };
            if m.workers != manifest.workers {
                return Err(Corrupt(format!(
                    "the checkpoint at {} of {} workers builds on the one at {f} of {}",
                    manifest.frontier, manifest.workers, m.workers
                ))
                .into());
            }
            for (w, (p, lazy)) in self.read_parts_lazily(&m)?.into_iter().enumerate() {
                let link_cut = match &p {
                    Part::Full(_) => None,
                    Part::Link(l) => Some(l.judged_from),
                };
                winners[w].push(lazy, link_cut);
                push_part(&mut parts[w], p)?;
            }
        }
        // Each worker's chain folds on a thread of its own, as its parts were read.
        let frontiers = &frontiers;
        let folded = std::thread::scope(|scope| {
            let folds: Vec<_> = parts
                .into_iter()
                .map(|p| scope.spawn(move || fold(p, frontiers)))
                .collect();
            folds
                .into_iter()
                .map(|f| {
                    let folded = f.join().expect("a checkpoint fold panicked");
                    folded.map_err(anyhow::Error::from)
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        Ok((folded, winners))
    }
}

/// `bytes` at `path`, or nothing there: a synced temporary file renamed into place, and the
/// directory synced so the rename itself survives a power cut.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomically_with(path, |file| Ok(file.write_all(bytes)?))
}

/// [`write_atomically`], the file's contents written by `write`.
fn write_atomically_with<T>(
    path: &Path,
    write: impl FnOnce(&mut File) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let written = write(&mut file)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(frontier: u64) -> Manifest {
        Manifest {
            frontier,
            workers: 1,
            bytes: 0,
            duration_ms: 0,
            run: "test".into(),
            epoch: 0,
            format: PART_FORMAT,
            settings: None,
            checksummed: true,
            chain: Vec::new(),
        }
    }

    fn part(frontier: u64) -> Part {
        let mut p = WorkerPart::empty(0, 1);
        p.rows.frontier = frontier;
        Part::Full(p)
    }

    /// A part written as it is encoded, through a buffer it overflows many times, is the
    /// part's encoding and its trailer, byte for byte, and reads back as written.
    #[test]
    fn a_part_is_written_as_it_is_encoded() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path()).unwrap();
        let mut p = WorkerPart::empty(0, 1);
        p.rows.frontier = 7_000;
        p.winners.dims = vec![adclick_dataflows::click::Dims::default()];
        p.winners.entries = (0..200_000u128)
            .map(|i| {
                (
                    i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    7_000 + i as u64,
                    i as u64,
                    0,
                )
            })
            .collect();
        let mut part = Part::Full(p);
        let size = store.write_part(7_000, &mut part).unwrap();
        let written = std::fs::read(store.part_path(7_000, 0)).unwrap();
        assert!(written.len() > 4 << 20, "{} bytes", written.len());
        // The part without its winners, then its winners, each checksummed (format 7).
        let (head, winners) = encoded(&part);
        assert_eq!(written, with_trailer(head, &winners));
        assert_eq!(size, written.len() as u64);
        store.commit(&manifest(7_000), 2).unwrap();
        let m = store.latest().unwrap().unwrap();
        assert_eq!(store.read_parts(&m).unwrap(), vec![part]);
    }

    /// `part`'s head (the part without its winners) and its winners, encoded.
    fn encoded(part: &Part) -> (Vec<u8>, Vec<u8>) {
        let mut head = part.clone();
        let winners = std::mem::take(&mut head.worker_part_mut().winners);
        let encoded = postcard::to_stdvec(&head).unwrap();
        (encoded, postcard::to_stdvec(&winners).unwrap())
    }

    /// A part with winners, at `frontier`.
    fn part_with_winners(frontier: u64) -> Part {
        let mut p = WorkerPart::empty(0, 1);
        p.rows.frontier = frontier;
        p.winners.dims = vec![adclick_dataflows::click::Dims::default()];
        p.winners.entries = (0..100u128).map(|i| (i, frontier, i as u64, 0)).collect();
        Part::Full(p)
    }

    /// A part's head is checked when it is read, its winners only as they decode: a torn part
    /// or a damaged head is [`Corrupt`] at once, damaged winners are [`DamagedWinners`] of their
    /// checkpoint when decoded (and every bit of the part is covered by one of the two).
    /// Format 6 parts, with one checksum of the whole, are checked whole when read.
    #[test]
    fn a_part_head_is_checked_when_read_and_its_winners_when_decoded() {
        use super::super::part::DamagedWinners;
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path()).unwrap();
        let mut part = part_with_winners(5_000);
        store.write_part(5_000, &mut part).unwrap();
        store.commit(&manifest(5_000), 2).unwrap();
        let path = store.part_path(5_000, 0);
        let whole = std::fs::read(&path).unwrap();
        let (head, winners) = encoded(&part);
        assert_eq!(whole.len(), head.len() + winners.len() + SPLIT_TRAILER);
        let m = store.latest().unwrap().unwrap();
        let read = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            let mut lazy = store.read_parts_lazily(&m)?;
            let (head, winners) = lazy.pop().unwrap();
            Ok::<_, anyhow::Error>((head, winners.decode()))
        };
        let written = part.worker_part_mut().winners.clone();
        let (_, decoded) = read(&whole).unwrap();
        assert_eq!(decoded.unwrap(), written);
        for at in 0..whole.len() {
            let mut bad = whole.clone();
            bad[at] ^= 0x01;
            // The winners, or their checksum in the trailer.
            let end = head.len() + winners.len();
            let in_winners = (head.len()..end).contains(&at) || (end + 12..end + 16).contains(&at);
            match read(&bad) {
                Ok((_, decoded)) => {
                    assert!(in_winners, "a bit at {at} read as a whole head");
                    let e = decoded.unwrap_err();
                    let d = e.downcast_ref::<DamagedWinners>().expect("damaged winners");
                    assert_eq!(d.frontier, 5_000, "{e:#}");
                }
                Err(e) => {
                    assert!(!in_winners, "a bit at {at} in the winners: {e:#}");
                    assert!(e.downcast_ref::<Corrupt>().is_some(), "bit at {at}: {e:#}");
                }
            }
        }
        // Format 6: one checksum of the whole, checked when read.
        let mut payload = with_whole_trailer([head.clone(), winners.clone()].concat());
        let (_, decoded) = read(&payload).unwrap();
        assert_eq!(decoded.unwrap(), written);
        payload[head.len() + 3] ^= 0x01;
        let e = read(&payload).unwrap_err();
        assert!(e.downcast_ref::<Corrupt>().is_some(), "{e:#}");
    }

    #[test]
    fn only_complete_checkpoints_are_read_and_old_ones_are_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path()).unwrap();
        assert_eq!(store.latest().unwrap(), None);
        for f in [1_000, 2_000, 3_000] {
            store.write_part(f, &mut part(f)).unwrap();
            assert!(store.parts_written(f, 1));
            store.commit(&manifest(f), 2).unwrap();
        }
        // A part without its manifest: a crash mid-checkpoint.
        store.write_part(4_000, &mut part(4_000)).unwrap();
        let latest = store.latest().unwrap().unwrap();
        assert_eq!(latest.frontier, 3_000);
        let parts = store.read_parts(&latest).unwrap();
        assert_eq!(parts, vec![part(3_000)]);
        assert_eq!(
            store.list().unwrap(),
            vec![(2_000, true), (3_000, true), (4_000, false)]
        );
        store.remove_incomplete().unwrap();
        assert_eq!(store.list().unwrap(), vec![(2_000, true), (3_000, true)]);
    }

    #[test]
    fn torn_or_damaged_parts_and_unparsable_manifests_are_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path()).unwrap();
        for f in [1_000, 2_000] {
            store.write_part(f, &mut part(f)).unwrap();
            store.commit(&manifest(f), 2).unwrap();
        }
        assert_eq!(store.complete_newest_first().unwrap(), vec![2_000, 1_000]);
        let path = store.part_path(2_000, 0);
        let whole = std::fs::read(&path).unwrap();
        let is_corrupt = |store: &Store| {
            let m = store.manifest(2_000)?;
            store.read_parts(&m).map(|_| ())
        };
        is_corrupt(&store).unwrap();
        // Torn: the end of the write lost, at every length.
        for len in [0, 1, whole.len() / 2, whole.len() - 1] {
            std::fs::write(&path, &whole[..len]).unwrap();
            let e = is_corrupt(&store).unwrap_err();
            assert!(e.downcast_ref::<Corrupt>().is_some(), "{len}: {e:#}");
        }
        // Damaged: one bit anywhere.
        for at in [0, whole.len() / 2, whole.len() - 1] {
            let mut bad = whole.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let e = is_corrupt(&store).unwrap_err();
            assert!(e.downcast_ref::<Corrupt>().is_some(), "bit at {at}: {e:#}");
        }
        std::fs::remove_file(&path).unwrap();
        let e = is_corrupt(&store).unwrap_err();
        assert!(format!("{e:#}").contains("missing"), "{e:#}");
        std::fs::write(&path, &whole).unwrap();
        is_corrupt(&store).unwrap();
        // A manifest that does not parse.
        let m = store.checkpoint_dir(2_000).join(MANIFEST);
        std::fs::write(&m, b"{\"frontier\": 2").unwrap();
        assert!(
            store
                .manifest(2_000)
                .unwrap_err()
                .downcast_ref::<Corrupt>()
                .is_some()
        );
        // Set aside, it is no longer a checkpoint; the previous one is the newest.
        store.set_aside(2_000).unwrap();
        store.set_aside(2_000).unwrap();
        assert_eq!(store.complete_newest_first().unwrap(), vec![1_000]);
        assert!(
            tmp.path()
                .join("corrupt-ckpt-00000000000000002000")
                .is_dir()
        );
        // A part from before checksums (its manifest says so) is read without a trailer.
        let old = store.part_path(1_000, 0);
        let bytes = std::fs::read(&old).unwrap();
        std::fs::write(&old, &bytes[..bytes.len() - SPLIT_TRAILER]).unwrap();
        let legacy = Manifest {
            checksummed: false,
            ..manifest(1_000)
        };
        assert_eq!(store.read_parts(&legacy).unwrap(), vec![part(1_000)]);
    }

    /// A link at `frontier` on `tip` whose minute rows are `rows`.
    fn link(frontier: u64, tip: u64, rows: Vec<u64>, emptied: Vec<u64>) -> Part {
        use super::super::chain::{Emptied, LinkPart};
        use adclick_dataflows::click::{Dims, Measures};
        let mut p = WorkerPart::empty(0, 1);
        p.rows.frontier = frontier;
        p.rows.minute = rows
            .into_iter()
            .map(|start| ((start, Dims::default()), Measures::billable(1)))
            .collect();
        Part::Link(LinkPart {
            tip,
            part: p,
            emptied: Emptied {
                minute: emptied,
                ..Emptied::default()
            },
            judged_from: 0,
            grown: Vec::new(),
        })
    }

    #[test]
    fn a_chain_is_read_whole_or_is_corrupt_and_pruning_keeps_what_it_builds_on() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path()).unwrap();
        let with_chain = |f: u64, chain: &[u64]| Manifest {
            chain: chain.to_vec(),
            ..manifest(f)
        };
        // An old full checkpoint, then a chain: a full one at 2 000 and links on it.
        store.write_part(1_000, &mut part(1_000)).unwrap();
        store.commit(&manifest(1_000), 2).unwrap();
        let mut base = WorkerPart::empty(0, 1);
        base.rows.minute = vec![(
            (0, adclick_dataflows::click::Dims::default()),
            adclick_dataflows::click::Measures::billable(5),
        )];
        store.write_part(2_000, &mut Part::Full(base)).unwrap();
        store.commit(&manifest(2_000), 2).unwrap();
        store
            .write_part(3_000, &mut link(3_000, 2_000, vec![60_000], vec![]))
            .unwrap();
        store.commit(&with_chain(3_000, &[2_000]), 2).unwrap();
        store
            .write_part(4_000, &mut link(4_000, 3_000, vec![120_000], vec![0]))
            .unwrap();
        store
            .commit(&with_chain(4_000, &[2_000, 3_000]), 2)
            .unwrap();
        // The two newest, what they build on, and the newest on another base.
        let frontiers = |store: &Store| -> Vec<u64> {
            store.list().unwrap().into_iter().map(|(f, _)| f).collect()
        };
        assert_eq!(frontiers(&store), vec![1_000, 2_000, 3_000, 4_000]);
        let newest = store.manifest(4_000).unwrap();
        let parts = store.read_chain(&newest).unwrap();
        let mut starts: Vec<u64> = parts[0].rows.minute.iter().map(|r| r.0.0).collect();
        starts.sort();
        assert_eq!(starts, vec![60_000, 120_000], "window 0 emptied, two added");
        assert_eq!(parts[0].rows.frontier, 4_000);
        // A torn link: that checkpoint, and any built on it, is corrupt; the one before reads.
        let torn = store.part_path(3_000, 0);
        let whole = std::fs::read(&torn).unwrap();
        // Cut in half, or to nothing (parts are mapped, and an empty file maps to nothing).
        for cut in [whole.len() / 2, 0] {
            std::fs::write(&torn, &whole[..cut]).unwrap();
            for f in [4_000, 3_000] {
                let e = store.read_chain(&store.manifest(f).unwrap()).unwrap_err();
                assert!(e.downcast_ref::<Corrupt>().is_some(), "{cut}, {f}: {e:#}");
            }
        }
        assert_eq!(
            store.read_chain(&manifest(2_000)).unwrap()[0]
                .rows
                .minute
                .len(),
            1
        );
        std::fs::write(&torn, &whole).unwrap();
        // A base that is gone.
        std::fs::remove_file(store.checkpoint_dir(2_000).join(MANIFEST)).unwrap();
        let e = store.read_chain(&newest).unwrap_err();
        assert!(format!("{e:#}").contains("which is gone"), "{e:#}");
        store.commit(&manifest(2_000), 2).unwrap();
        // A new full checkpoint: the old chain stays as the one on another base, 1 000 goes.
        store.write_part(5_000, &mut part(5_000)).unwrap();
        store.commit(&manifest(5_000), 2).unwrap();
        assert_eq!(frontiers(&store), vec![2_000, 3_000, 4_000, 5_000]);
        store
            .write_part(6_000, &mut link(6_000, 5_000, vec![], vec![]))
            .unwrap();
        store.commit(&with_chain(6_000, &[5_000]), 2).unwrap();
        assert_eq!(frontiers(&store), vec![2_000, 3_000, 4_000, 5_000, 6_000]);
        store.write_part(7_000, &mut part(7_000)).unwrap();
        store.commit(&manifest(7_000), 2).unwrap();
        assert_eq!(frontiers(&store), vec![5_000, 6_000, 7_000]);
        // Parts of format 3 (a plain part, before links) read as full ones.
        let old = WorkerPart::empty(0, 1);
        let bytes = with_whole_trailer(postcard::to_stdvec(&old).unwrap());
        std::fs::write(store.part_path(7_000, 0), bytes).unwrap();
        let legacy = Manifest {
            format: 3,
            ..manifest(7_000)
        };
        assert_eq!(store.read_parts(&legacy).unwrap(), vec![Part::Full(old)]);
        // Links of format 4 (before growths: the same fields without the last) read as links
        // that grow nothing.
        let link4 = link(8_000, 7_000, vec![60], vec![0]);
        let mut encoded = postcard::to_stdvec(&link4).unwrap();
        assert_eq!(encoded.pop(), Some(0), "an empty `grown` is its length, 0");
        std::fs::create_dir_all(store.checkpoint_dir(8_000)).unwrap();
        std::fs::write(store.part_path(8_000, 0), with_whole_trailer(encoded)).unwrap();
        let format4 = Manifest {
            format: 4,
            ..manifest(8_000)
        };
        assert_eq!(store.read_parts(&format4).unwrap(), vec![link4]);
        // Parts of format 5 (winners inside the part, not after it) read with their winners.
        let mut part5 = part(9_000);
        part5.worker_part_mut().winners.entries = vec![(7, 9_000, 3, 0)];
        part5.worker_part_mut().winners.dims = vec![Default::default()];
        std::fs::create_dir_all(store.checkpoint_dir(9_000)).unwrap();
        let bytes = with_whole_trailer(postcard::to_stdvec(&part5).unwrap());
        std::fs::write(store.part_path(9_000, 0), bytes).unwrap();
        let format5 = Manifest {
            format: 5,
            ..manifest(9_000)
        };
        assert_eq!(store.read_parts(&format5).unwrap(), vec![part5]);
    }

    /// A chain read for a restore holds its rows decoded and its winners still encoded: they
    /// decode, later, to the winners the chain folds to.
    #[test]
    fn a_chain_is_read_with_its_winners_left_encoded() {
        use super::super::part::Winners;
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path()).unwrap();
        let winners = |entries: Vec<(u128, u64, u64, u32)>| Winners {
            dims: vec![Default::default()],
            entries,
            judged: Vec::new(),
        };
        let mut base = part(1_000);
        base.worker_part_mut().winners = winners(vec![(1, 10, 1, 0), (2, 20, 2, 0)]);
        let mut next = link(2_000, 1_000, vec![60_000], vec![]);
        next.worker_part_mut().winners = winners(vec![(2, 15, 5, 0), (3, 30, 3, 0)]);
        store.write_part(1_000, &mut base.clone()).unwrap();
        store.commit(&manifest(1_000), 2).unwrap();
        store.write_part(2_000, &mut next.clone()).unwrap();
        let newest = Manifest {
            chain: vec![1_000],
            ..manifest(2_000)
        };
        store.commit(&newest, 2).unwrap();
        let (parts, lazy) = store.read_chain_lazily(&newest).unwrap();
        assert!(parts[0].winners.is_empty(), "read without its winners");
        assert_eq!(parts[0].rows.minute.len(), 1, "with its rows");
        let decoded = lazy.into_iter().next().unwrap().decode().unwrap();
        let folded = Winners::fold(
            base.worker_part_mut().winners.clone(),
            vec![next.worker_part_mut().winners.clone()],
            0,
        );
        assert_eq!(decoded, folded);
        assert_eq!(store.read_chain(&newest).unwrap()[0].winners, folded);
        let mut imps: Vec<_> = decoded.entries.iter().map(|e| (e.0, e.1)).collect();
        imps.sort();
        assert_eq!(imps, vec![(1, 10), (2, 15), (3, 30)]);
    }

    #[test]
    fn a_checkpoint_is_restorable_only_under_the_settings_it_was_cut_by() {
        let took = StateSettings {
            tick_ms: 100,
            allowed_lateness_ms: 300_000,
            dedup_horizon_ms: 86_400_000,
        };
        let dir = Path::new("/ckpt");
        took.check_restorable(&took.clone(), 5, dir).unwrap();
        let now = StateSettings {
            allowed_lateness_ms: 40_000,
            dedup_horizon_ms: 3_600_000,
            ..took.clone()
        };
        let e = took.check_restorable(&now, 5, dir).unwrap_err().to_string();
        assert!(
            e.contains("frontier 5 in /ckpt was taken with aggregator.allowed_lateness_ms = 300000 (this run: 40000), aggregator.dedup_horizon_ms = 86400000 (this run: 3600000)"),
            "{e}"
        );
        assert!(!e.contains("tick_ms"), "{e}");
        // Manifests from before the settings were recorded still parse (no check then).
        let old = r#"{"frontier":1,"workers":2,"bytes":0,"duration_ms":0,"run":"r","epoch":1,"format":2}"#;
        let m: Manifest = serde_json::from_str(old).unwrap();
        assert_eq!(m.settings, None);
    }

    #[test]
    fn a_run_superseded_by_a_newer_epoch_cannot_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path()).unwrap();
        let zombie = store.claim_epoch().unwrap();
        let successor = store.claim_epoch().unwrap();
        assert_eq!((zombie, successor), (1, 2));
        store.write_part(1_000, &mut part(1_000)).unwrap();
        let late = Manifest {
            epoch: zombie,
            format: PART_FORMAT,
            ..manifest(1_000)
        };
        let err = format!("{:#}", store.commit(&late, 2).unwrap_err());
        assert!(err.contains("superseded by epoch 2"), "{err}");
        assert_eq!(store.latest().unwrap(), None, "nothing committed");
        store
            .commit(
                &Manifest {
                    epoch: successor,
                    format: PART_FORMAT,
                    ..manifest(1_000)
                },
                2,
            )
            .unwrap();
        assert_eq!(store.latest().unwrap().unwrap().epoch, 2);
    }
}
