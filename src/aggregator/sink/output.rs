//! The NDJSON report stream: one line per window report (complete, correction, final), per
//! late click and per dead letter, and the tallies at the end. Everything is gathered on
//! worker 0 so that a cluster writes one file.

use std::collections::BTreeMap;
use std::io::Write;

use adclick_dataflows::click::Measures;

use adclick_dataflows::click::RawClick;
use adclick_dataflows::names::{Dictionary, Name};
use adclick_dataflows::reach::{GroupBy, ReachReport};
use adclick_dataflows::report::{Status, WindowReport};
use adclick_dataflows::source::{Gap, Rejected};
use adclick_dataflows::time::{DAY_MS, HOUR_MS, MINUTE_MS};
use serde::{Deserialize, Serialize};

pub use crate::health::Tallies;
use crate::timefmt::format_millis;

/// What travels to the writer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
///
/// Every line waits here, one `Out` each, until the frontier passes its time (at the end of a
/// batch input, every row's final report at once), so the rare large variants are boxed to
/// keep each `Out` the size of a window report.
pub enum Out {
    Report(WindowReport),
    Late(Box<RawClick>),
    Rejected(Box<Rejected>),
    /// A dimension text, needed before any report that uses it is written.
    Name(Name),
    /// Records a source read in one batch.
    Received(u64),
    /// Offsets deleted before a source read them.
    Lost(Gap),
    /// A group's final reach sketch.
    Reach(ReachReport),
}

/// One NDJSON line. Readers (tests, reconciliation) parse it back with this type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    Window {
        granularity: String,
        window_start: String,
        window_start_ms: u64,
        ad_id: String,
        campaign_id: String,
        advertiser_id: String,
        publisher_id: String,
        country: String,
        device: String,
        /// Billable clicks.
        clicks: i64,
        duplicates: i64,
        /// Invalid clicks by reason name; present, possibly empty, on every window line.
        #[serde(default)]
        invalid: BTreeMap<String, i64>,
        status: String,
    },
    /// A group's final distinct users (reach) in an hour or a day, once, with its sketch.
    Reach {
        /// `hour` or `day`.
        granularity: String,
        window_start: String,
        window_start_ms: u64,
        /// What the users are grouped by: `ad`, `campaign`, `campaign_country`, `publisher`
        /// or `country`; the dimensions the group is not by (nor owned by) are empty.
        group_by: String,
        /// `billable` (billable clicks' users) or `all` (every deduplicated click's).
        traffic: String,
        ad_id: String,
        campaign_id: String,
        advertiser_id: String,
        publisher_id: String,
        country: String,
        /// The estimate: exact when `exact`, else the HyperLogLog's (standard error 0.57 %).
        unique_users: u64,
        exact: bool,
        /// The sketch, base64 (standard alphabet, padded) of the bytes
        /// `UserSketch::to_bytes` documents, for consumers that merge groups or windows.
        sketch: String,
    },
    Late {
        impression_id: String,
        click_id: String,
        event_time: u64,
        ad_id: String,
    },
    DeadLetter {
        code: String,
        reason: String,
        origin: String,
        payload: String,
    },
    /// Records of `partition` at offsets `[from, to)` were deleted before they were read.
    Lost {
        partition: String,
        from: u64,
        to: u64,
        records: u64,
    },
    Tallies(Tallies),
}

/// A window line's parts, for the readers that key windows (sinks, reconciliation, tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowParts<'a> {
    pub granularity: &'a str,
    pub start: u64,
    /// Ad, campaign, advertiser, publisher, country, device.
    pub dims: [&'a str; 6],
    pub clicks: i64,
    pub duplicates: i64,
    /// Invalid clicks by reason, indexed by [`Reason::index`].
    pub invalid: [i64; 7],
    pub status: &'a str,
}

impl WindowParts<'_> {
    pub fn measures(&self) -> Measures {
        Measures::new(self.clicks, self.duplicates, self.invalid)
    }
}

/// A window line of one ad whose other dimensions are fixed: the fixture the tests of every
/// reader of window lines (reconciliation, replay's compare) build their outputs from.
#[cfg(test)]
impl Line {
    pub fn window_fixture(
        granularity: &str,
        start: u64,
        ad: &str,
        clicks: i64,
        duplicates: i64,
        invalid: &[(&str, i64)],
        status: &str,
    ) -> Self {
        Line::Window {
            granularity: granularity.into(),
            window_start: String::new(),
            window_start_ms: start,
            ad_id: ad.into(),
            campaign_id: "c".into(),
            advertiser_id: "a".into(),
            publisher_id: "p".into(),
            country: "US".into(),
            device: "mobile".into(),
            clicks,
            duplicates,
            invalid: invalid.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
            status: status.into(),
        }
    }
}

impl Line {
    /// The parts of a window line; `None` for other lines.
    pub fn window(&self) -> Option<WindowParts<'_>> {
        let Line::Window {
            granularity,
            window_start_ms,
            ad_id,
            campaign_id,
            advertiser_id,
            publisher_id,
            country,
            device,
            clicks,
            duplicates,
            invalid,
            status,
            ..
        } = self
        else {
            return None;
        };
        Some(WindowParts {
            granularity,
            start: *window_start_ms,
            dims: [
                ad_id,
                campaign_id,
                advertiser_id,
                publisher_id,
                country,
                device,
            ],
            clicks: *clicks,
            duplicates: *duplicates,
            invalid: Measures::invalid_from_names(invalid),
            status,
        })
    }
}

/// The name a reach line gives what its group is by.
pub fn group_by_name(by: GroupBy) -> &'static str {
    match by {
        GroupBy::Ad => "ad",
        GroupBy::Campaign => "campaign",
        GroupBy::CampaignCountry => "campaign_country",
        GroupBy::Publisher => "publisher",
        GroupBy::Country => "country",
    }
}

pub fn granularity(window_ms: u64) -> &'static str {
    match window_ms {
        MINUTE_MS => "minute",
        HOUR_MS => "hour",
        DAY_MS => "day",
        _ => "other",
    }
}

/// The writer as a checkpoint keeps it: the output's length once every line before the
/// checkpoint's frontier was written (lines after it are cut off on restore), and the tallies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterState {
    pub output_len: u64,
    pub tallies: Tallies,
}

/// Writes lines and keeps the tallies.
pub struct Writer {
    out: Box<dyn Write>,
    /// The output file, to sync at checkpoints (none for stdout).
    file: Option<std::fs::File>,
    /// Bytes written so far: where a restore cuts the file back to.
    len: u64,
    names: Dictionary,
    pub tallies: Tallies,
    /// The line being encoded, reused: a fresh vector per line cost an allocation and its
    /// regrowths for every line written.
    encoded: Vec<u8>,
}

impl Writer {
    pub fn open(target: &str) -> std::io::Result<Self> {
        Self::resume(target, None)
    }

    /// Goes on from a checkpoint: the file is cut back to the checkpoint's length (dropping
    /// what was written after it, which the restored run writes again) and appended to.
    /// Without a checkpoint, the file starts empty. Stdout and devices cannot be cut: lines
    /// written after the checkpoint appear twice there.
    pub fn resume(target: &str, from: Option<WriterState>) -> std::io::Result<Self> {
        let WriterState {
            output_len: len,
            tallies,
        } = from.unwrap_or_default();
        let (out, file): (Box<dyn Write>, _) = if target == "-" {
            (Box::new(std::io::BufWriter::new(std::io::stdout())), None)
        } else if from.is_none() {
            let file = std::fs::File::create(target)?;
            let sync = file.try_clone()?;
            (Box::new(std::io::BufWriter::new(file)), Some(sync))
        } else {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(target)?;
            let meta = file.metadata()?;
            // A file shorter than the checkpoint lost lines the restored state counts as
            // written: going on would leave a hole (and pad it with zeros). Devices and pipes
            // cannot be cut back: lines after the checkpoint appear there twice.
            if meta.is_file() {
                let have = meta.len();
                if have < len {
                    return Err(std::io::Error::other(format!(
                        "{target} holds {have} bytes but the checkpoint restored from wrote \
                         {len}: the output was lost or cut; restore it, or start over without \
                         the checkpoints"
                    )));
                }
                file.set_len(len)?;
                std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(len))?;
            }
            let sync = file.try_clone()?;
            (Box::new(std::io::BufWriter::new(file)), Some(sync))
        };
        Ok(Self {
            out,
            file,
            len,
            names: Dictionary::new(),
            tallies,
            encoded: Vec::new(),
        })
    }

    /// Flushes and syncs what was written: its length and the tallies, for a checkpoint.
    pub fn sync(&mut self) -> std::io::Result<WriterState> {
        self.out.flush()?;
        if let Some(f) = &self.file {
            f.sync_data()?;
        }
        Ok(WriterState {
            output_len: self.len,
            tallies: self.tallies,
        })
    }

    /// Writes lines of one timely time, the texts among them first. The caller hands times
    /// over in order, once the frontier has passed them, so every text a report needs has
    /// arrived: a text is announced no later than the first click that carries it, and
    /// reports come no earlier. (Final reports of the frontier's own time may come before the
    /// frontier passes it: their texts are all earlier.) Final window reports also go to
    /// `finals` (the Kafka sink).
    pub fn write_time(
        &mut self,
        items: Vec<Out>,
        finals: &mut dyn FnMut(&Line),
    ) -> std::io::Result<()> {
        for item in &items {
            if let Out::Name(n) = item {
                self.names.insert(n.clone());
            }
        }
        for item in items {
            let is_final = match &item {
                Out::Report(r) => r.status == Status::Final,
                Out::Reach(_) => true,
                _ => false,
            };
            if let Some(line) = self.write(item)?
                && is_final
            {
                finals(&line);
            }
        }
        Ok(())
    }

    /// Writes the line of `item`, if it has one, and returns it.
    fn write(&mut self, item: Out) -> std::io::Result<Option<Line>> {
        let line = match item {
            // Applied before the time's other lines (`write_time`).
            Out::Name(_) => return Ok(None),
            Out::Received(n) => {
                self.tallies.received += n;
                return Ok(None);
            }
            Out::Lost(g) => {
                self.tallies.lost += g.records();
                Line::Lost {
                    records: g.records(),
                    partition: g.partition,
                    from: g.from,
                    to: g.to,
                }
            }
            Out::Report(r) => {
                if r.window_ms == MINUTE_MS && r.status == Status::Final {
                    self.tallies.counted += r.measures.clicks;
                    self.tallies.invalid += r.measures.invalid_total();
                    for (t, n) in self
                        .tallies
                        .invalid_by_reason
                        .iter_mut()
                        .zip(r.measures.invalid_counts())
                    {
                        *t += n;
                    }
                    self.tallies.duplicates += r.measures.duplicates;
                }
                let (start, dims) = r.row;
                let d = self.names.labels(&dims);
                Line::Window {
                    granularity: granularity(r.window_ms).into(),
                    window_start: format_millis(start as i64),
                    window_start_ms: start,
                    ad_id: d.ad_id,
                    campaign_id: d.campaign_id,
                    advertiser_id: d.advertiser_id,
                    publisher_id: d.publisher_id,
                    country: d.country,
                    device: d.device,
                    clicks: r.measures.clicks,
                    duplicates: r.measures.duplicates,
                    invalid: r.measures.invalid_names(),
                    status: match r.status {
                        Status::Complete => "complete",
                        Status::Correction => "correction",
                        Status::Final => "final",
                    }
                    .into(),
                }
            }
            Out::Reach(r) => self.reach_line(r),
            Out::Late(c) => {
                let c = *c;
                self.tallies.late += 1;
                Line::Late {
                    impression_id: c.impression_id,
                    click_id: c.click_id,
                    event_time: c.event_time,
                    ad_id: c.labels.ad_id,
                }
            }
            Out::Rejected(r) => {
                let r = *r;
                self.tallies.dead_lettered += 1;
                Line::DeadLetter {
                    code: r.code,
                    reason: r.reason,
                    origin: r.origin,
                    payload: String::from_utf8_lossy(&r.payload).into_owned(),
                }
            }
        };
        self.line(&line)?;
        Ok(Some(line))
    }

    fn reach_line(&self, r: ReachReport) -> Line {
        use base64::Engine as _;
        let g = r.group;
        let mut d = self.names.labels(&g.dims);
        // The dimensions the group is not by are zero in its key: empty, not a fingerprint.
        let all = adclick_dataflows::click::Sym(1);
        let of = g.by.dims(&adclick_dataflows::click::Dims {
            ad_id: all,
            campaign_id: all,
            advertiser_id: all,
            publisher_id: all,
            country: all,
            device: all,
        });
        for (has, text) in [
            (of.ad_id, &mut d.ad_id),
            (of.campaign_id, &mut d.campaign_id),
            (of.advertiser_id, &mut d.advertiser_id),
            (of.publisher_id, &mut d.publisher_id),
            (of.country, &mut d.country),
        ] {
            if has != all {
                text.clear();
            }
        }
        Line::Reach {
            granularity: granularity(g.len_ms).into(),
            window_start: format_millis(g.start as i64),
            window_start_ms: g.start,
            group_by: group_by_name(g.by).into(),
            traffic: if g.billable { "billable" } else { "all" }.into(),
            ad_id: d.ad_id,
            campaign_id: d.campaign_id,
            advertiser_id: d.advertiser_id,
            publisher_id: d.publisher_id,
            country: d.country,
            unique_users: r.sketch.estimate(),
            exact: r.sketch.is_exact(),
            sketch: base64::engine::general_purpose::STANDARD.encode(r.sketch.to_bytes()),
        }
    }

    fn line(&mut self, line: &Line) -> std::io::Result<()> {
        let bytes = &mut self.encoded;
        bytes.clear();
        serde_json::to_writer(&mut *bytes, line)?;
        bytes.push(b'\n');
        self.out.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// The last line, once the input is exhausted.
    pub fn finish(&mut self) -> std::io::Result<()> {
        self.line(&Line::Tallies(self.tallies))?;
        self.out.flush()
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter() -> Out {
        Out::Rejected(Box::new(Rejected {
            code: "test".into(),
            reason: "a test record".into(),
            origin: "test:1".into(),
            key: Vec::new(),
            payload: b"{}".to_vec(),
        }))
    }

    /// Every line waits as an `Out` until its time is written: no variant may make every
    /// window report pay for a late click's texts.
    #[test]
    fn an_out_is_the_size_of_a_window_report() {
        assert!(
            std::mem::size_of::<Out>() <= std::mem::size_of::<WindowReport>() + 8,
            "Out is {} bytes, a window report {}",
            std::mem::size_of::<Out>(),
            std::mem::size_of::<WindowReport>()
        );
    }

    #[test]
    fn resuming_cuts_the_output_back_and_refuses_one_that_lost_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        let target = path.to_str().unwrap();
        let mut w = Writer::open(target).unwrap();
        w.write_time(vec![Out::Received(3)], &mut |_| {}).unwrap();
        w.write_time(vec![letter()], &mut |_| {}).unwrap();
        let state = w.sync().unwrap();
        assert_eq!(state.tallies.received, 3);
        w.write_time(vec![letter()], &mut |_| {}).unwrap();
        w.flush().unwrap();
        drop(w);
        // Lines after the checkpoint are cut off; the tallies are the checkpoint's.
        let w = Writer::resume(target, Some(state)).unwrap();
        assert_eq!(w.tallies, state.tallies);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), state.output_len);
        drop(w);
        std::fs::write(&path, b"").unwrap();
        let err = Writer::resume(target, Some(state)).err().unwrap();
        assert!(err.to_string().contains("lost or cut"), "{err}");
    }
}
