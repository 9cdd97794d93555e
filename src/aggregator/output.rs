//! The NDJSON report stream: one line per window report (complete, correction, final), per
//! late click and per dead letter, and the tallies at the end. Everything is gathered on
//! worker 0 so that a cluster writes one file.

use std::io::Write;

use adclick_dataflows::click::Click;
use adclick_dataflows::report::{Status, WindowReport};
use adclick_dataflows::source::Rejected;
use adclick_dataflows::time::{DAY_MS, HOUR_MS, MINUTE_MS};
use serde::{Deserialize, Serialize};

use crate::timefmt::format_millis;

/// What travels to the writer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Out {
    Report(WindowReport),
    Late(Click),
    Rejected(Rejected),
    /// Records a source read in one batch.
    Received(u64),
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
        clicks: i64,
        duplicates: i64,
        status: String,
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
    Tallies(Tallies),
}

/// Every input record ends up in exactly one of counted, duplicates, late, dead_lettered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tallies {
    pub received: u64,
    pub counted: i64,
    pub duplicates: i64,
    pub late: u64,
    pub dead_lettered: u64,
}

pub fn granularity(window_ms: u64) -> &'static str {
    match window_ms {
        MINUTE_MS => "minute",
        HOUR_MS => "hour",
        DAY_MS => "day",
        _ => "other",
    }
}

/// Writes lines and keeps the tallies.
pub struct Writer {
    out: Box<dyn Write>,
    pub tallies: Tallies,
}

impl Writer {
    pub fn open(target: &str) -> std::io::Result<Self> {
        let out: Box<dyn Write> = if target == "-" {
            Box::new(std::io::BufWriter::new(std::io::stdout()))
        } else {
            Box::new(std::io::BufWriter::new(std::fs::File::create(target)?))
        };
        Ok(Self {
            out,
            tallies: Tallies::default(),
        })
    }

    pub fn write(&mut self, item: Out) -> std::io::Result<()> {
        let line = match item {
            Out::Received(n) => {
                self.tallies.received += n;
                return Ok(());
            }
            Out::Report(r) => {
                if r.window_ms == MINUTE_MS && r.status == Status::Final {
                    self.tallies.counted += r.clicks;
                    self.tallies.duplicates += r.duplicates;
                }
                let (start, d) = r.row;
                Line::Window {
                    granularity: granularity(r.window_ms).into(),
                    window_start: format_millis(start as i64),
                    window_start_ms: start,
                    ad_id: d.ad_id.to_string(),
                    campaign_id: d.campaign_id.to_string(),
                    advertiser_id: d.advertiser_id.to_string(),
                    publisher_id: d.publisher_id.to_string(),
                    country: d.country.to_string(),
                    device: d.device.to_string(),
                    clicks: r.clicks,
                    duplicates: r.duplicates,
                    status: match r.status {
                        Status::Complete => "complete",
                        Status::Correction => "correction",
                        Status::Final => "final",
                    }
                    .into(),
                }
            }
            Out::Late(c) => {
                self.tallies.late += 1;
                Line::Late {
                    impression_id: c.impression_id,
                    click_id: c.click_id,
                    event_time: c.event_time,
                    ad_id: c.dims.ad_id.to_string(),
                }
            }
            Out::Rejected(r) => {
                self.tallies.dead_lettered += 1;
                Line::DeadLetter {
                    code: r.code,
                    reason: r.reason,
                    origin: r.origin,
                    payload: String::from_utf8_lossy(&r.payload).into_owned(),
                }
            }
        };
        serde_json::to_writer(&mut self.out, &line)?;
        self.out.write_all(b"\n")
    }

    /// The last line, once the input is exhausted.
    pub fn finish(&mut self) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, &Line::Tallies(self.tallies))?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
