//! Reading recorded traffic as lanes of records to send, with the decoders the aggregator
//! reads the same recording with, so that a record is a click, a malformed record or nothing
//! exactly as the batch aggregator sees it:
//!
//! - NDJSON event files (`adclick-loadgen --output file`) and seed-003 log files, line by line
//!   through the file source's [`file_line`]: an event line is sent as it is (JSON), a log line
//!   as the event the file source makes of it (Protocol Buffers), anything it rejects as it is
//!   (the aggregator dead-letters it), blank, comment and header lines not at all;
//! - partner NDJSON (`POST /api/v1/events` batches), line by line, for the redirect;
//! - the raw Parquet archive ([`read_archive`]), each partition's clicks in offset order.
//!
//! A lane is one file, or one archived partition: a recording's unit of order.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use adclick_dataflows::click::RawClick;
use adclick_dataflows::source::Record;
use anyhow::{Context, bail};

use crate::aggregator::sink::parquet::read_archive;
use crate::aggregator::source::decode::{FutureBound, file_line};
use crate::event::enrich::Enricher;
use crate::event::observed::parse_partner_json;
use crate::event::{ClickEvent, Device, device_to_proto};

/// What a recording holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Decide per path: a directory with `raw/` is an archive; a file whose first record is
    /// a JSON object with `click_timestamp` is partner NDJSON, another JSON object event
    /// NDJSON, anything else seed-003 log lines.
    Auto,
    /// NDJSON click events, as `adclick-loadgen --output file` and the aggregator's `--input`
    /// read them (seed-003 log lines mixed in are read too).
    Events,
    /// Seed-003 log lines (`ad_id,click_timestamp,user_id,ip,country`; event lines mixed in
    /// are read too).
    Log,
    /// Partner NDJSON, as `POST /api/v1/events` takes it (replayed through the redirect).
    Partner,
    /// The raw Parquet archive under a `--parquet-dir` (its `raw/`).
    Archive,
}

/// How a record counts in the replay's summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Decodes to a click (it may still be a duplicate, late or invalid traffic).
    Click,
    /// Does not decode: sent as it is, for the aggregator (or redirect) to reject.
    Malformed,
}

/// One record to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its event time, when it decodes.
    pub time: Option<i64>,
    pub kind: Kind,
    /// Kafka key (the impression id; empty when unknown).
    pub key: Vec<u8>,
    /// Kafka value, or the partner line.
    pub value: Vec<u8>,
}

/// A lane's records, in order; an I/O error ends the replay.
pub type Records = Box<dyn Iterator<Item = anyhow::Result<Entry>> + Send>;

pub struct Lane {
    /// File path, or `archive partition N`.
    pub name: String,
    /// The Kafka partition the recording implies: the file's position among the files, or the
    /// archived partition.
    pub partition: u32,
    pub format: Format,
    /// Records it holds, for the progress bar (lines, blank ones included, for files).
    pub len: u64,
    pub records: Records,
}

/// Opens every path as lanes. Files become lanes in the order given (lane i implies
/// partition i, as the batch aggregator's `--input` reads file i as its partition i); a
/// directory holding `raw/` is an archive; another directory stands for its files, by name.
pub fn open(
    paths: &[PathBuf],
    format: Format,
    enricher: &Enricher,
    max_future_skew_ms: u64,
) -> anyhow::Result<Vec<Lane>> {
    let mut files = Vec::new();
    let mut lanes = Vec::new();
    for path in paths {
        let meta =
            std::fs::metadata(path).with_context(|| format!("recording {}", path.display()))?;
        if meta.is_dir() && (format == Format::Archive || path.join("raw").is_dir()) {
            lanes.extend(archive_lanes(path)?);
        } else if meta.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("listing {}", path.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            inside.retain(|p| p.is_file());
            inside.sort();
            if inside.is_empty() {
                bail!("{} holds no files to replay", path.display());
            }
            files.extend(inside);
        } else if format == Format::Archive {
            bail!(
                "{}: --format archive takes the Parquet directory (holding raw/)",
                path.display()
            );
        } else {
            files.push(path.clone());
        }
    }
    if !lanes.is_empty() && !files.is_empty() {
        bail!("a replay is either an archive or files, not both");
    }
    for (i, path) in files.into_iter().enumerate() {
        let format = match format {
            Format::Auto => sniff(&path)?,
            f => f,
        };
        lanes.push(file_lane(
            path,
            i as u32,
            format,
            enricher.clone(),
            max_future_skew_ms,
        )?);
    }
    if lanes.is_empty() {
        bail!("nothing to replay");
    }
    Ok(lanes)
}

/// The format of a file, from its first line that is not blank.
fn sniff(path: &Path) -> anyhow::Result<Format> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut line = Vec::new();
    let mut reader = BufReader::new(file);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(Format::Events);
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        return Ok(match text.starts_with('{') {
            true if text.contains("\"click_timestamp\"") => Format::Partner,
            true => Format::Events,
            false => Format::Log,
        });
    }
}

fn count_lines(path: &Path) -> anyhow::Result<u64> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut lines, mut last) = (0u64, b'\n');
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(lines + u64::from(last != b'\n'));
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[n - 1];
    }
}

fn file_lane(
    path: PathBuf,
    partition: u32,
    format: Format,
    enricher: Enricher,
    max_future_skew_ms: u64,
) -> anyhow::Result<Lane> {
    let len = count_lines(&path)?;
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let name = path.display().to_string();
    let mut line = Vec::new();
    let records = std::iter::from_fn(move || {
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(anyhow::anyhow!("reading {}: {e}", path.display()))),
            }
            while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                line.pop();
            }
            let entry = match format {
                Format::Partner => partner_entry(&line),
                _ => line_entry(&line, &enricher, FutureBound::now(max_future_skew_ms)),
            };
            if let Some(entry) = entry {
                return Some(Ok(entry));
            }
        }
    });
    Ok(Lane {
        name,
        partition,
        format,
        len,
        records: Box::new(records),
    })
}

/// An event or log line as the file source reads it; `None` for what it skips.
pub fn line_entry(line: &[u8], enricher: &Enricher, bound: FutureBound) -> Option<Entry> {
    let malformed = |key: Vec<u8>, value: Vec<u8>| Entry {
        time: None,
        kind: Kind::Malformed,
        key,
        value,
    };
    let Ok(text) = std::str::from_utf8(line) else {
        return Some(malformed(Vec::new(), line.to_vec()));
    };
    match file_line(text, enricher, bound, String::new)? {
        Record::Click(click) => {
            // An event line goes as it was recorded (its click id and all); a log line as the
            // event the file source made of it.
            let value = if text.trim_start().starts_with('{') {
                line.to_vec()
            } else {
                event_of(&click, "log").to_protobuf()
            };
            Some(Entry {
                time: Some(click.event_time as i64),
                kind: Kind::Click,
                key: click.impression_id.into_bytes(),
                value,
            })
        }
        // As recorded, to the byte (the file source's payload is trimmed).
        Record::Rejected(r) => Some(malformed(r.key, line.to_vec())),
        Record::Lost(_) => None,
    }
}

/// A partner line, as the redirect will read it; `None` for a blank line.
pub fn partner_entry(line: &[u8]) -> Option<Entry> {
    let text = String::from_utf8_lossy(line);
    if text.trim().is_empty() {
        return None;
    }
    let parsed = parse_partner_json(&text).ok();
    Some(Entry {
        time: parsed.as_ref().map(|o| o.event_time_ms),
        kind: if parsed.is_some() {
            Kind::Click
        } else {
            Kind::Malformed
        },
        key: parsed
            .map(|o| o.impression_id.into_bytes())
            .unwrap_or_default(),
        value: line.to_vec(),
    })
}

fn archive_lanes(root: &Path) -> anyhow::Result<Vec<Lane>> {
    let archive = read_archive(root, None)
        .with_context(|| format!("reading the raw archive under {}", root.display()))?;
    if archive.is_empty() {
        bail!("no archived clicks under {}", root.join("raw").display());
    }
    archive
        .into_iter()
        .map(|(partition, records)| {
            let partition = u32::try_from(partition)
                .with_context(|| format!("archived partition {partition}"))?;
            Ok(Lane {
                name: format!("{} partition {partition}", root.display()),
                partition,
                format: Format::Archive,
                len: records.len() as u64,
                records: Box::new(records.into_iter().map(|r| {
                    Ok(Entry {
                        time: Some(r.click.event_time as i64),
                        kind: Kind::Click,
                        key: r.click.impression_id.clone().into_bytes(),
                        value: event_of(&r.click, "replay").to_protobuf(),
                    })
                })),
            })
        })
        .collect()
}

/// The event the aggregator decodes back into `click` (what a Kafka record carries of it):
/// classified with the click's reasons, so no rule is applied twice or differently.
pub fn event_of(click: &RawClick, source: &str) -> ClickEvent {
    let l = &click.labels;
    let device = l.device.parse().unwrap_or(Device::Other);
    let mut e = ClickEvent {
        impression_id: click.impression_id.clone(),
        click_id: click.click_id.clone(),
        ad_id: l.ad_id.clone(),
        campaign_id: l.campaign_id.clone(),
        advertiser_id: l.advertiser_id.clone(),
        publisher_id: l.publisher_id.clone(),
        event_time_ms: click.event_time as i64,
        country: l.country.clone(),
        device: device_to_proto(device),
        ip_hash: click.traits.ip_hash.clone(),
        user_id_hash: click.traits.user_id_hash.clone(),
        user_agent: String::new(),
        source: source.into(),
        invalid_reasons: Vec::new(),
        classified: false,
        impression_time_ms: click.traits.impression_time as i64,
    };
    e.set_reasons(click.traits.reasons);
    e
}

#[cfg(test)]
mod tests {
    use adclick_dataflows::invalid::{Reason, Reasons};

    use super::*;
    use crate::aggregator::source::decode::to_click;

    const ANY_TIME: FutureBound = FutureBound {
        now_ms: crate::event::MAX_EVENT_TIME_MS,
        max_skew_ms: 0,
    };

    #[test]
    fn a_click_survives_the_trip_through_its_event() {
        let mut e = crate::event::tests::sample();
        e.impression_time_ms = 1_776_686_399_000;
        let mut click = to_click(e);
        click.traits.reasons = Reasons::of([Reason::Datacenter, Reason::Headless]);
        let back = ClickEvent::decode(&event_of(&click, "replay").to_protobuf()).unwrap();
        assert_eq!(to_click(back), click);
    }

    #[test]
    fn lines_are_clicks_malformed_or_nothing_as_the_file_source_reads_them() {
        let enricher = Enricher::new("salt");
        let event = crate::event::tests::sample();
        let json = event.to_json();
        let e = line_entry(json.as_bytes(), &enricher, ANY_TIME).unwrap();
        assert_eq!(e.kind, Kind::Click);
        assert_eq!(e.value, json.as_bytes(), "an event line goes as recorded");
        assert_eq!(e.key, event.impression_id.as_bytes());
        assert_eq!(e.time, Some(event.event_time_ms));

        let log = "ad001,2021-01-01 00:00:01,user1,207.148.22.22,USA";
        let e = line_entry(log.as_bytes(), &enricher, ANY_TIME).unwrap();
        assert_eq!(e.kind, Kind::Click);
        let sent = ClickEvent::decode(&e.value).unwrap();
        assert_eq!(sent.ad_id, "ad001");
        assert_eq!(
            sent.reasons(),
            Some(Reasons::NONE),
            "judged by nothing, as in files"
        );
        assert_eq!(e.key, sent.impression_id.as_bytes());

        for bad in [&b"{\"impression_id\": 7 "[..], b" ad001,2021", b"\xff\xfe{"] {
            let e = line_entry(bad, &enricher, ANY_TIME).unwrap();
            assert_eq!((e.kind, e.time), (Kind::Malformed, None));
            assert_eq!(e.value, bad, "sent as it is");
        }
        for nothing in [
            "",
            "   ",
            "# a comment",
            "ad_id,click_timestamp,user_id,ip,country",
        ] {
            assert_eq!(line_entry(nothing.as_bytes(), &enricher, ANY_TIME), None);
        }
        // From the future (beyond the skew): malformed, and no time to pace it by.
        let now = FutureBound {
            now_ms: event.event_time_ms - 600_000,
            max_skew_ms: 300_000,
        };
        let e = line_entry(json.as_bytes(), &enricher, now).unwrap();
        assert_eq!((e.kind, e.time), (Kind::Malformed, None));
    }

    #[test]
    fn partner_lines_and_formats_are_recognised() {
        let line = br#"{"impression_id":"i1","ad_id":"a","campaign_id":"c","advertiser_id":"v","publisher_id":"p","click_timestamp":1776686400000}"#;
        let e = partner_entry(line).unwrap();
        assert_eq!((e.kind, e.time), (Kind::Click, Some(1_776_686_400_000)));
        assert_eq!(e.key, b"i1");
        let e = partner_entry(b"{\"ad_id\":1}").unwrap();
        assert_eq!((e.kind, e.time), (Kind::Malformed, None));
        assert_eq!(partner_entry(b"  "), None);

        let dir = tempfile::tempdir().unwrap();
        let event = crate::event::tests::sample().to_json();
        let cases = [
            ("p.ndjson", &line[..], Format::Partner),
            ("e.ndjson", event.as_bytes(), Format::Events),
            (
                "l.log",
                b"\n\nad001,2021-01-01 00:00:01,u,1.2.3.4,US",
                Format::Log,
            ),
        ];
        for (name, text, want) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            assert_eq!(sniff(&path).unwrap(), want, "{name}");
        }
        assert_eq!(count_lines(&dir.path().join("l.log")).unwrap(), 3);
    }

    #[test]
    fn files_are_lanes_in_the_order_given() {
        let dir = tempfile::tempdir().unwrap();
        let enricher = Enricher::new("s");
        let log = "ad001,2021-01-01 00:00:01,u,1.2.3.4,US\nnot a record\n\n";
        for name in ["b.log", "a.log"] {
            std::fs::write(dir.path().join(name), log).unwrap();
        }
        let given = [dir.path().join("b.log"), dir.path().join("a.log")];
        let lanes = open(&given, Format::Auto, &enricher, 0).unwrap();
        let names: Vec<_> = lanes.iter().map(|l| (l.partition, l.len)).collect();
        assert_eq!(names, [(0, 3), (1, 3)]);
        assert!(lanes[0].name.ends_with("b.log"));
        let kinds: Vec<_> = lanes
            .into_iter()
            .next()
            .unwrap()
            .records
            .map(|r| r.unwrap().kind)
            .collect();
        assert_eq!(kinds, [Kind::Click, Kind::Malformed]);
        // A directory stands for its files, by name.
        let lanes = open(&[dir.path().to_path_buf()], Format::Auto, &enricher, 0).unwrap();
        assert!(lanes[0].name.ends_with("a.log"));
        let err = open(&[dir.path().join("missing")], Format::Auto, &enricher, 0)
            .err()
            .unwrap();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
