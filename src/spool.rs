//! An append-only spool on disk: where clicks wait while Kafka cannot take them.
//!
//! Records are appended to numbered segment files and read back in order. A `cursor` file,
//! replaced atomically, says how far the drainer has delivered; segments wholly behind it are
//! deleted. Every append is a `write` to the file, so a killed process loses nothing; when
//! the data is also forced to the disk is the [`FsyncPolicy`].
//!
//! Frame: `len: u32 LE | crc32(body): u32 LE | body`, body: `topic_len: u8 | topic |
//! key_len: u32 LE | key | value`. A frame cut short by a crash fails its length or checksum;
//! on open the tail from the first bad frame on is cut off, so a torn write is never replayed
//! as garbage.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::FsyncPolicy;

const SEGMENT_SUFFIX: &str = ".spool";
const CURSOR: &str = "cursor";
const MAX_FRAME: u32 = 64 << 20;

/// One Kafka record waiting to be produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecord {
    pub topic: String,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Where a record ends: (segment, byte offset just past it). Committing it marks everything
/// up to there delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

pub struct Spool {
    dir: PathBuf,
    fsync: FsyncPolicy,
    fsync_interval: Duration,
    segment_bytes: u64,
    writer: File,
    write_pos: Position,
    unsynced: bool,
    last_sync: Instant,
    read_pos: Position,
    reader: Option<(u64, File)>,
    pending_records: u64,
    pending_bytes: u64,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, repairing a torn tail and counting what is pending.
    pub fn open(
        dir: &Path,
        fsync: FsyncPolicy,
        fsync_interval: Duration,
        segment_bytes: u64,
    ) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let cursor = read_cursor(dir)?;
        let mut segments = list_segments(dir)?;
        // Segments fully behind the cursor may survive a crash between commit and delete.
        for s in segments.iter().filter(|s| **s < cursor.segment) {
            fs::remove_file(segment_path(dir, *s))?;
        }
        segments.retain(|s| *s >= cursor.segment);
        let mut pending_records = 0;
        let mut pending_bytes = 0;
        let mut last = cursor;
        for (i, seg) in segments.iter().enumerate() {
            let start = if *seg == cursor.segment {
                cursor.offset
            } else {
                0
            };
            let path = segment_path(dir, *seg);
            let (records, valid_end) = scan(&path, start)?;
            pending_records += records;
            pending_bytes += valid_end - start;
            let len = fs::metadata(&path)?.len();
            if valid_end < len {
                tracing::warn!(
                    segment = %path.display(),
                    cut = len - valid_end,
                    "spool: cutting a torn tail"
                );
                OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(valid_end)?;
                // Anything after a torn frame cannot be trusted to be in order; later
                // segments would only exist if the process appended after a tear, which
                // `append` never does.
                debug_assert!(i + 1 == segments.len());
            }
            last = Position {
                segment: *seg,
                offset: valid_end,
            };
        }
        // With nothing on disk, start a fresh segment after the cursor's, so positions only grow.
        let (write_pos, read_pos) = match segments.first() {
            None => {
                let fresh = Position {
                    segment: cursor.segment + 1,
                    offset: 0,
                };
                (fresh, fresh)
            }
            Some(first) if cursor.segment == 0 => (
                last,
                Position {
                    segment: *first,
                    offset: 0,
                },
            ),
            Some(_) => (last, cursor),
        };
        let writer = open_append(&segment_path(dir, write_pos.segment))?;
        sync_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            fsync,
            fsync_interval,
            segment_bytes,
            writer,
            write_pos,
            unsynced: false,
            last_sync: Instant::now(),
            read_pos,
            reader: None,
            pending_records,
            pending_bytes,
        })
    }

    /// Appends one record; it is in the kernel's hands when this returns.
    pub fn append(&mut self, rec: &SpoolRecord) -> io::Result<()> {
        let frame = encode_frame(rec);
        if self.write_pos.offset > 0
            && self.write_pos.offset + frame.len() as u64 > self.segment_bytes
        {
            self.rotate()?;
        }
        self.writer.write_all(&frame)?;
        self.write_pos.offset += frame.len() as u64;
        self.pending_records += 1;
        self.pending_bytes += frame.len() as u64;
        self.unsynced = true;
        match self.fsync {
            FsyncPolicy::Always => self.sync()?,
            FsyncPolicy::Interval if self.last_sync.elapsed() >= self.fsync_interval => {
                self.sync()?
            }
            _ => {}
        }
        Ok(())
    }

    /// Forces appended data to disk; the drainer calls it on a timer under the interval policy.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced && self.fsync != FsyncPolicy::Never {
            self.writer.sync_data()?;
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Whether an interval fsync is due.
    pub fn sync_due(&self) -> bool {
        self.unsynced
            && self.fsync == FsyncPolicy::Interval
            && self.last_sync.elapsed() >= self.fsync_interval
    }

    /// Reads up to `max` records after the read position, in append order, without consuming
    /// them: only [`Spool::commit`] does that, once they are delivered.
    pub fn peek(&mut self, max: usize) -> io::Result<Vec<(Position, SpoolRecord)>> {
        let mut out = Vec::new();
        let mut pos = self.read_pos;
        while out.len() < max && pos < self.write_pos {
            if self.reader.as_ref().map(|(s, _)| *s) != Some(pos.segment) {
                self.reader = Some((
                    pos.segment,
                    File::open(segment_path(&self.dir, pos.segment))?,
                ));
            }
            let file = &mut self.reader.as_mut().unwrap().1;
            let end = if pos.segment == self.write_pos.segment {
                self.write_pos.offset
            } else {
                file.metadata()?.len()
            };
            if pos.offset >= end {
                pos = Position {
                    segment: pos.segment + 1,
                    offset: 0,
                };
                continue;
            }
            file.seek(SeekFrom::Start(pos.offset))?;
            match read_frame(file)? {
                Some((rec, len)) => {
                    pos.offset += len;
                    out.push((pos, rec));
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("spool segment {} corrupt at {}", pos.segment, pos.offset),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Marks everything up to `pos` delivered: persists the cursor, then deletes segments
    /// wholly behind it.
    pub fn commit(&mut self, pos: Position, records: u64, bytes: u64) -> io::Result<()> {
        let tmp = self.dir.join("cursor.tmp");
        let mut f = File::create(&tmp)?;
        writeln!(f, "{} {}", pos.segment, pos.offset)?;
        f.sync_data()?;
        fs::rename(&tmp, self.dir.join(CURSOR))?;
        sync_dir(&self.dir)?;
        for seg in self.read_pos.segment..pos.segment {
            if self.reader.as_ref().map(|(s, _)| *s) == Some(seg) {
                self.reader = None;
            }
            match fs::remove_file(segment_path(&self.dir, seg)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.read_pos = pos;
        self.pending_records -= records;
        self.pending_bytes -= bytes;
        Ok(())
    }

    pub fn pending_records(&self) -> u64 {
        self.pending_records
    }

    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.sync()?;
        self.write_pos = Position {
            segment: self.write_pos.segment + 1,
            offset: 0,
        };
        self.writer = open_append(&segment_path(&self.dir, self.write_pos.segment))?;
        sync_dir(&self.dir)
    }
}

/// Frame length of a record; what [`Spool::commit`]'s `bytes` adds up.
pub fn frame_len(rec: &SpoolRecord) -> u64 {
    (8 + 1 + rec.topic.len() + 4 + rec.key.len() + rec.value.len()) as u64
}

fn encode_frame(rec: &SpoolRecord) -> Vec<u8> {
    assert!(
        rec.topic.len() <= 255,
        "topic names are at most 249 bytes in Kafka"
    );
    let body_len = frame_len(rec) as usize - 8;
    let mut buf = Vec::with_capacity(body_len + 8);
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.push(rec.topic.len() as u8);
    buf.extend_from_slice(rec.topic.as_bytes());
    buf.extend_from_slice(&(rec.key.len() as u32).to_le_bytes());
    buf.extend_from_slice(&rec.key);
    buf.extend_from_slice(&rec.value);
    let crc = crc32fast::hash(&buf[8..]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// Reads one frame; `None` at a clean or torn end.
fn read_frame(r: &mut impl Read) -> io::Result<Option<(SpoolRecord, u64)>> {
    let mut head = [0u8; 8];
    if !read_full(r, &mut head)? {
        return Ok(None);
    }
    let len = u32::from_le_bytes(head[..4].try_into().unwrap());
    let crc = u32::from_le_bytes(head[4..].try_into().unwrap());
    if !(5..=MAX_FRAME).contains(&len) {
        return Ok(None);
    }
    let mut body = vec![0u8; len as usize];
    if !read_full(r, &mut body)? || crc32fast::hash(&body) != crc {
        return Ok(None);
    }
    let topic_len = body[0] as usize;
    if body.len() < 1 + topic_len + 4 {
        return Ok(None);
    }
    let topic = String::from_utf8_lossy(&body[1..1 + topic_len]).into_owned();
    let k = 1 + topic_len;
    let key_len = u32::from_le_bytes(body[k..k + 4].try_into().unwrap()) as usize;
    if body.len() < k + 4 + key_len {
        return Ok(None);
    }
    let key = body[k + 4..k + 4 + key_len].to_vec();
    let value = body[k + 4 + key_len..].to_vec();
    Ok(Some((SpoolRecord { topic, key, value }, 8 + len as u64)))
}

/// `read_exact`, but a short read at the end (a torn last frame) is `false` rather than an
/// error.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Counts the valid frames from `start` and returns (records, offset after the last good one).
fn scan(path: &Path, start: u64) -> io::Result<(u64, u64)> {
    let mut f = io::BufReader::new(File::open(path)?);
    f.seek(SeekFrom::Start(start))?;
    let (mut records, mut end) = (0, start);
    while let Some((_, len)) = read_frame(&mut f)? {
        records += 1;
        end += len;
    }
    Ok((records, end))
}

fn read_cursor(dir: &Path) -> io::Result<Position> {
    match fs::read_to_string(dir.join(CURSOR)) {
        Ok(text) => {
            let mut it = text.split_whitespace().map(str::parse::<u64>);
            match (it.next(), it.next()) {
                (Some(Ok(segment)), Some(Ok(offset))) => Ok(Position { segment, offset }),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unreadable spool cursor in {}", dir.display()),
                )),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Position {
            segment: 0,
            offset: 0,
        }),
        Err(e) => Err(e),
    }
}

fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(n) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
            && let Ok(n) = n.parse()
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:016}{SEGMENT_SUFFIX}"))
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Records the broker refused for good, set aside so they never block the spool: one JSON
/// object per line in `quarantine.ndjson` beside the spool segments, appended and fsynced
/// (quarantining is rare, and the file may hold the only copy of a click). An operator can
/// fix the cause (create the topic, grant the ACL) and replay the lines.
pub struct Quarantine {
    path: PathBuf,
    file: File,
}

/// File name of the quarantine inside the spool directory.
pub const QUARANTINE_FILE: &str = "quarantine.ndjson";

/// Payloads up to this size are kept in the quarantine line (base64); larger ones only by
/// length and SHA-256, so one absurd record cannot turn into an absurd line.
pub const QUARANTINE_MAX_PAYLOAD: usize = 4 << 20;

impl Quarantine {
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let path = dir.join(QUARANTINE_FILE);
        let file = open_append(&path)?;
        Ok(Self { path, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line for `rec`: its topic, key, why it was refused (`reason`, a stable
    /// label, and `error`, librdkafka's text), where it was refused (`via`: `memory` or
    /// `spool`), when, and its payload (or only its length and hash when over
    /// [`QUARANTINE_MAX_PAYLOAD`]).
    pub fn append(
        &mut self,
        rec: &SpoolRecord,
        reason: &str,
        error: &str,
        via: &str,
    ) -> io::Result<()> {
        use base64::Engine;
        let b64 = &base64::engine::general_purpose::STANDARD;
        let (key, key_base64) = match std::str::from_utf8(&rec.key) {
            Ok(k) => (k.to_string(), false),
            Err(_) => (b64.encode(&rec.key), true),
        };
        let payload = (rec.value.len() <= QUARANTINE_MAX_PAYLOAD).then(|| b64.encode(&rec.value));
        let line = serde_json::json!({
            "time_ms": crate::timefmt::now_millis(),
            "topic": rec.topic,
            "key": key,
            "key_base64": key_base64,
            "reason": reason,
            "error": error,
            "via": via,
            "payload_bytes": rec.value.len(),
            "payload_sha256": crate::event::dead_letter::sha256_hex(&rec.value),
            "payload_base64": payload,
        });
        let mut bytes = serde_json::to_vec(&line).expect("JSON values serialize");
        bytes.push(b'\n');
        // One write of the whole line to an O_APPEND file: lines never interleave.
        self.file.write_all(&bytes)?;
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize) -> SpoolRecord {
        SpoolRecord {
            topic: "clicks".into(),
            key: format!("imp-{i}").into_bytes(),
            value: vec![i as u8; i % 50],
        }
    }

    fn open(dir: &Path, segment_bytes: u64) -> Spool {
        Spool::open(dir, FsyncPolicy::Never, Duration::ZERO, segment_bytes).unwrap()
    }

    fn drain(s: &mut Spool, batch: usize) -> Vec<SpoolRecord> {
        let mut out = Vec::new();
        loop {
            let got = s.peek(batch).unwrap();
            let Some((pos, _)) = got.last().cloned() else {
                return out;
            };
            let bytes = got.iter().map(|(_, r)| frame_len(r)).sum();
            s.commit(pos, got.len() as u64, bytes).unwrap();
            out.extend(got.into_iter().map(|(_, r)| r));
        }
    }

    #[test]
    fn records_come_back_in_order_across_segments_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 200);
        for i in 0..50 {
            s.append(&rec(i)).unwrap();
        }
        assert_eq!(s.pending_records(), 50);
        let first: Vec<_> = drain_n(&mut s, 20);
        drop(s);
        let mut s = open(dir.path(), 200);
        assert_eq!(s.pending_records(), 30);
        for i in 50..60 {
            s.append(&rec(i)).unwrap();
        }
        let rest = drain(&mut s, 7);
        let all: Vec<_> = first.into_iter().chain(rest).collect();
        assert_eq!(all, (0..60).map(rec).collect::<Vec<_>>());
        assert_eq!(s.pending_records(), 0);
        assert_eq!(s.pending_bytes(), 0);
        // Drained segments are gone; only the one being written remains.
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
    }

    fn drain_n(s: &mut Spool, n: usize) -> Vec<SpoolRecord> {
        let got = s.peek(n).unwrap();
        let (pos, _) = got.last().cloned().unwrap();
        let bytes = got.iter().map(|(_, r)| frame_len(r)).sum();
        s.commit(pos, got.len() as u64, bytes).unwrap();
        got.into_iter().map(|(_, r)| r).collect()
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 1 << 20);
        for i in 0..5 {
            s.append(&rec(i)).unwrap();
        }
        drop(s);
        let seg = segment_path(dir.path(), list_segments(dir.path()).unwrap()[0]);
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let mut s = open(dir.path(), 1 << 20);
        assert_eq!(s.pending_records(), 4);
        s.append(&rec(9)).unwrap();
        let got = drain(&mut s, 100);
        assert_eq!(got, vec![rec(0), rec(1), rec(2), rec(3), rec(9)]);
    }

    #[test]
    fn uncommitted_records_are_read_again_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 1 << 20);
        for i in 0..3 {
            s.append(&rec(i)).unwrap();
        }
        assert_eq!(s.peek(10).unwrap().len(), 3);
        drop(s);
        let mut s = open(dir.path(), 1 << 20);
        assert_eq!(drain(&mut s, 10), vec![rec(0), rec(1), rec(2)]);
    }

    #[test]
    fn quarantine_lines_carry_topic_key_reason_and_payload() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let mut q = Quarantine::open(dir.path()).unwrap();
        let r = rec(42);
        q.append(
            &r,
            "message_too_large",
            "Broker: Message size too large",
            "spool",
        )
        .unwrap();
        let big = SpoolRecord {
            topic: "clicks-dlq".into(),
            key: vec![0xff, 0xfe],
            value: vec![7; QUARANTINE_MAX_PAYLOAD + 1],
        };
        q.append(&big, "message_too_large", "too large", "memory")
            .unwrap();
        drop(q);
        let text = fs::read_to_string(dir.path().join(QUARANTINE_FILE)).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["topic"], "clicks");
        assert_eq!(lines[0]["key"], "imp-42");
        assert_eq!(lines[0]["reason"], "message_too_large");
        assert_eq!(lines[0]["via"], "spool");
        let payload = base64::engine::general_purpose::STANDARD
            .decode(lines[0]["payload_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(payload, r.value);
        // Too big to copy: only its length and hash; a binary key is base64.
        assert!(lines[1]["payload_base64"].is_null());
        assert_eq!(lines[1]["payload_bytes"], QUARANTINE_MAX_PAYLOAD + 1);
        assert_eq!(
            lines[1]["payload_sha256"],
            crate::event::dead_letter::sha256_hex(&big.value)
        );
        assert_eq!(lines[1]["key_base64"], true);
    }

    #[test]
    fn corrupt_frame_checksum_is_detected() {
        let mut buf = encode_frame(&rec(7));
        let last = buf.len() - 1;
        buf[last] ^= 0xff;
        assert!(read_frame(&mut &buf[..]).unwrap().is_none());
        let good = encode_frame(&rec(7));
        assert_eq!(read_frame(&mut &good[..]).unwrap().unwrap().0, rec(7));
    }
}
