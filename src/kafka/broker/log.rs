//! Per-partition append-only logs of Kafka RecordBatch v2 bytes.
//!
//! Each partition is one file `{dir}/{topic}-{partition}.log` holding the batches back to back,
//! exactly as they are served to consumers (base offsets already rewritten). An in-memory index
//! of `(base offset, last offset, file position, length, max timestamp)` per batch is rebuilt by
//! scanning the files at start; reads use positioned reads, so memory stays bounded whatever the
//! backlog.
//!
//! Durability: batches are written with `write_all_at` and no fsync. An acknowledged batch is in
//! the OS page cache, so it survives a restart of the broker (or of the process that hosts it),
//! not a crash of the machine. A torn batch at the end of a file (the process died mid-write) is
//! cut off at start.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use bytes::Bytes;

/// Bytes of a RecordBatch v2 header up to and including the record count.
pub const BATCH_HEADER_LEN: usize = 61;
/// How many recent batches per producer are remembered to answer retried batches.
const RECENT_PER_PRODUCER: usize = 8;

#[derive(Clone, Copy, Debug)]
pub struct BatchEntry {
    pub base: i64,
    pub last: i64,
    pub pos: u64,
    pub len: u32,
    pub max_ts: i64,
}

/// Fields of a RecordBatch v2 header that the broker needs.
#[derive(Clone, Copy, Debug)]
pub struct BatchHeader {
    pub total_len: usize,
    pub magic: i8,
    pub last_offset_delta: i32,
    pub max_ts: i64,
    pub producer_id: i64,
    pub base_sequence: i32,
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses the header of the batch starting at `b[0]` (needs `BATCH_HEADER_LEN` bytes).
pub fn parse_header(b: &[u8]) -> Result<BatchHeader> {
    if b.len() < BATCH_HEADER_LEN {
        bail!("record batch header truncated ({} bytes)", b.len());
    }
    let batch_len = be_i32(b, 8);
    if batch_len < (BATCH_HEADER_LEN - 12) as i32 {
        bail!("record batch length {batch_len} too small");
    }
    Ok(BatchHeader {
        total_len: 12 + batch_len as usize,
        magic: b[16] as i8,
        last_offset_delta: be_i32(b, 23),
        max_ts: be_i64(b, 35),
        producer_id: be_i64(b, 43),
        base_sequence: be_i32(b, 53),
    })
}

/// Why an append was refused.
#[derive(Debug)]
pub enum AppendError {
    /// Not RecordBatch v2 (old message formats are not supported).
    UnsupportedFormat,
    /// Truncated or inconsistent batch bytes.
    Corrupt,
    Io(std::io::Error),
}

pub struct PartitionLog {
    file: Arc<File>,
    file_len: u64,
    index: Vec<BatchEntry>,
    next_offset: i64,
    /// producer id → recent (base sequence, base offset), newest last.
    recent: HashMap<i64, VecDeque<(i32, i64)>>,
}

/// A consistent snapshot of what a fetch needs, taken under the partition lock.
pub struct ReadPlan {
    pub file: Arc<File>,
    pub high_watermark: i64,
    /// (file position, length) of consecutive batches to return.
    pub range: Option<(u64, usize)>,
}

impl PartitionLog {
    fn open(path: &Path) -> Result<PartitionLog> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let size = file.metadata()?.len();
        let mut log = PartitionLog {
            file: Arc::new(file),
            file_len: 0,
            index: Vec::new(),
            next_offset: 0,
            recent: HashMap::new(),
        };
        let mut index = Vec::new();
        // One sequential pass through a large buffer (not a read per batch): start-up time
        // is the file size over the disk's (or page cache's) bandwidth.
        let file = log.file.clone();
        let mut reader = std::io::BufReader::with_capacity(1 << 20, &*file);
        let mut head = [0u8; BATCH_HEADER_LEN];
        let mut pos = 0u64;
        while pos + BATCH_HEADER_LEN as u64 <= size {
            reader.read_exact(&mut head)?;
            let Ok(h) = parse_header(&head) else { break };
            if pos + h.total_len as u64 > size || h.last_offset_delta < 0 {
                break;
            }
            reader.seek_relative((h.total_len - BATCH_HEADER_LEN) as i64)?;
            let base = be_i64(&head, 0);
            let entry = BatchEntry {
                base,
                last: base + h.last_offset_delta as i64,
                pos,
                len: h.total_len as u32,
                max_ts: h.max_ts,
            };
            index.push(entry);
            log.remember(h.producer_id, h.base_sequence, base);
            pos += h.total_len as u64;
        }
        drop(reader);
        log.next_offset = index.last().map_or(0, |b| b.last + 1);
        log.index = index;
        if pos < size {
            tracing::warn!(
                path = %path.display(),
                kept = pos,
                size,
                "cutting a torn batch off the end of a partition log"
            );
            log.file.set_len(pos)?;
        }
        log.file_len = pos;
        Ok(log)
    }

    fn remember(&mut self, producer_id: i64, base_sequence: i32, base_offset: i64) {
        if producer_id < 0 {
            return;
        }
        let q = self.recent.entry(producer_id).or_default();
        if q.len() == RECENT_PER_PRODUCER {
            q.pop_front();
        }
        q.push_back((base_sequence, base_offset));
    }

    pub fn high_watermark(&self) -> i64 {
        self.next_offset
    }

    pub fn log_start(&self) -> i64 {
        self.index.first().map_or(self.next_offset, |b| b.base)
    }

    pub fn max_producer_id(&self) -> i64 {
        self.recent.keys().copied().max().unwrap_or(-1)
    }

    /// Appends the batches in `records` (one or more RecordBatch v2), rewriting their base
    /// offsets. Returns the base offset of the first batch. A batch that repeats a recent
    /// (producer id, base sequence) of this partition is not appended again: its earlier base
    /// offset is answered instead.
    pub fn append(&mut self, records: &[u8]) -> Result<i64, AppendError> {
        // Validate everything first so a request is appended whole or not at all.
        let mut batches = Vec::new();
        let mut at = 0usize;
        while at < records.len() {
            let h = parse_header(&records[at..]).map_err(|_| AppendError::Corrupt)?;
            if h.magic != 2 {
                return Err(AppendError::UnsupportedFormat);
            }
            if at + h.total_len > records.len() || h.last_offset_delta < 0 {
                return Err(AppendError::Corrupt);
            }
            batches.push((at, h));
            at += h.total_len;
        }
        if batches.is_empty() {
            return Err(AppendError::Corrupt);
        }
        let mut first_base = None;
        let mut out: Vec<u8> = Vec::with_capacity(records.len());
        let mut new_entries = Vec::new();
        let mut offset = self.next_offset;
        for (start, h) in batches {
            if h.producer_id >= 0
                && let Some(&(_, base)) = self
                    .recent
                    .get(&h.producer_id)
                    .and_then(|q| q.iter().find(|(seq, _)| *seq == h.base_sequence))
            {
                first_base.get_or_insert(base);
                continue;
            }
            let pos = self.file_len + out.len() as u64;
            out.extend_from_slice(&records[start..start + h.total_len]);
            let at = out.len() - h.total_len;
            out[at..at + 8].copy_from_slice(&offset.to_be_bytes());
            first_base.get_or_insert(offset);
            new_entries.push((
                BatchEntry {
                    base: offset,
                    last: offset + h.last_offset_delta as i64,
                    pos,
                    len: h.total_len as u32,
                    max_ts: h.max_ts,
                },
                h.producer_id,
                h.base_sequence,
            ));
            offset += h.last_offset_delta as i64 + 1;
        }
        if !out.is_empty() {
            self.file
                .write_all_at(&out, self.file_len)
                .map_err(AppendError::Io)?;
            self.file_len += out.len() as u64;
            for (e, pid, seq) in new_entries {
                self.index.push(e);
                self.remember(pid, seq, e.base);
            }
            self.next_offset = offset;
        }
        Ok(first_base.expect("at least one batch"))
    }

    /// Plans a read from `offset` (which must be within [log start, high watermark]): whole
    /// batches starting with the one containing `offset`, up to `max_bytes` (at least one).
    pub fn plan_read(&self, offset: i64, max_bytes: usize) -> ReadPlan {
        let first = self.index.partition_point(|b| b.last < offset);
        let range = self.index.get(first).map(|b| {
            let mut len = b.len as usize;
            for next in &self.index[first + 1..] {
                if len + next.len as usize > max_bytes {
                    break;
                }
                len += next.len as usize;
            }
            (b.pos, len)
        });
        ReadPlan {
            file: self.file.clone(),
            high_watermark: self.next_offset,
            range,
        }
    }

    /// The first offset whose batch has a max timestamp ≥ `ts` (batch granularity), or the
    /// high watermark when none does.
    pub fn offset_for_timestamp(&self, ts: i64) -> (i64, i64) {
        match self.index.iter().find(|b| b.max_ts >= ts) {
            Some(b) => (b.base, b.max_ts),
            None => (self.next_offset, -1),
        }
    }
}

impl ReadPlan {
    pub fn read(&self) -> std::io::Result<Option<Bytes>> {
        let Some((pos, len)) = self.range else {
            return Ok(None);
        };
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, pos)?;
        Ok(Some(Bytes::from(buf)))
    }
}

pub type Partitions = Vec<Mutex<PartitionLog>>;

/// All topics of the broker. The topic set is fixed at start.
pub struct Store {
    pub topics: BTreeMap<String, Partitions>,
}

impl Store {
    /// Opens every `*.log` in `dir` and creates the partitions of `topics` that are missing.
    pub fn open(dir: &Path, topics: &[(String, i32)]) -> Result<Store> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut counts: BTreeMap<String, i32> = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stem) = name.strip_suffix(".log") else {
                continue;
            };
            let Some((topic, p)) = stem.rsplit_once('-') else {
                continue;
            };
            let Ok(p) = p.parse::<i32>() else { continue };
            let c = counts.entry(topic.to_string()).or_default();
            *c = (*c).max(p + 1);
        }
        for (topic, n) in topics {
            let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if topic.is_empty() || topic.len() > 249 || !topic.chars().all(legal) || *n <= 0 {
                bail!("invalid topic {topic:?} with {n} partitions");
            }
            let c = counts.entry(topic.clone()).or_default();
            *c = (*c).max(*n);
        }
        let mut out = BTreeMap::new();
        for (topic, n) in counts {
            let mut parts = Vec::with_capacity(n as usize);
            for p in 0..n {
                let path = partition_path(dir, &topic, p);
                parts.push(Mutex::new(PartitionLog::open(&path)?));
            }
            out.insert(topic, parts);
        }
        Ok(Store { topics: out })
    }

    pub fn partition(&self, topic: &str, p: i32) -> Option<&Mutex<PartitionLog>> {
        self.topics.get(topic)?.get(usize::try_from(p).ok()?)
    }

    pub fn max_producer_id(&self) -> i64 {
        self.topics
            .values()
            .flatten()
            .map(|p| p.lock().expect("partition lock").max_producer_id())
            .max()
            .unwrap_or(-1)
    }
}

fn partition_path(dir: &Path, topic: &str, p: i32) -> PathBuf {
    dir.join(format!("{topic}-{p}.log"))
}
