//! The Parquet sinks under `aggregator.parquet_dir`, both published per checkpoint epoch
//! ([`super::parquet`]):
//!
//! ```text
//! DIR/windows/part-{F}.parquet                       final windows of the epoch ending at F
//! DIR/raw/hour=2026-11-22T17/part-{F}-w{W}.parquet   accepted clicks worker W read in it
//! ```
//!
//! `raw` is the cold store: every valid click as read (on time, late or duplicate), with
//! its partition and offset, so that reconciliation and replay can feed each partition's
//! records to the same dataflow in their original order. DuckDB reads it with
//! `read_parquet('DIR/raw/*/*.parquet', hive_partitioning = true)`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use adclick_dataflows::click::RawClick;
use adclick_dataflows::time::HOUR_MS;

use super::output::Line;
use super::parquet::{Column, pending_path, write_table};
use crate::timefmt::format_millis;

/// Final windows of the current epoch, written when it ends.
pub struct WindowFiles {
    root: PathBuf,
    dir: PathBuf,
    lines: Vec<Line>,
}

impl WindowFiles {
    pub fn new(root: &Path) -> anyhow::Result<Self> {
        let dir = root.join("windows");
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            root: root.into(),
            dir,
            lines: Vec::new(),
        })
    }

    /// The Parquet directory (where pending files are published).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn push(&mut self, line: &Line) {
        if matches!(line, Line::Window { .. }) {
            self.lines.push(line.clone());
        }
    }

    /// Ends the epoch at `f`: its windows go to a pending file (none if there were none).
    pub fn seal(&mut self, f: u64) -> anyhow::Result<()> {
        if self.lines.is_empty() {
            return Ok(());
        }
        let mut text: [Vec<String>; 7] = Default::default();
        let mut long: [Vec<i64>; 3] = Default::default();
        for line in std::mem::take(&mut self.lines) {
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
                ..
            } = line
            else {
                continue;
            };
            let texts = [
                granularity,
                ad_id,
                campaign_id,
                advertiser_id,
                publisher_id,
                country,
                device,
            ];
            for (column, v) in text.iter_mut().zip(texts) {
                column.push(v);
            }
            for (column, v) in long
                .iter_mut()
                .zip([window_start_ms as i64, clicks, duplicates])
            {
                column.push(v);
            }
        }
        let [
            granularity,
            ad,
            campaign,
            advertiser,
            publisher,
            country,
            device,
        ] = text;
        let [start, clicks, duplicates] = long;
        let columns = [
            ("granularity", Column::Text(granularity)),
            ("window_start", Column::Millis(start)),
            ("ad_id", Column::Text(ad)),
            ("campaign_id", Column::Text(campaign)),
            ("advertiser_id", Column::Text(advertiser)),
            ("publisher_id", Column::Text(publisher)),
            ("country", Column::Text(country)),
            ("device", Column::Text(device)),
            ("clicks", Column::Long(clicks)),
            ("duplicates", Column::Long(duplicates)),
        ];
        write_table(&pending_path(&self.dir, f, ""), &columns)
    }
}

/// One accepted click as read, with where it came from.
#[derive(Clone, Debug)]
pub struct Archived {
    pub partition: i32,
    pub offset: i64,
    pub click: RawClick,
}

/// A worker's accepted clicks not yet archived.
#[derive(Default)]
pub struct RawBuffer {
    records: Vec<Archived>,
}

impl RawBuffer {
    pub fn push(&mut self, record: Archived) {
        self.records.push(record);
    }

    pub fn into_records(self) -> Vec<Archived> {
        self.records
    }

    /// Takes the records before `positions` (partition → next offset at the checkpoint):
    /// exactly the records the checkpoint's state has read.
    pub fn take_before(&mut self, positions: &BTreeMap<i32, u64>) -> Vec<Archived> {
        let (before, after) = std::mem::take(&mut self.records)
            .into_iter()
            .partition(|r| {
                positions
                    .get(&r.partition)
                    .is_some_and(|p| (r.offset as u64) < *p)
            });
        self.records = after;
        before
    }
}

/// Writes `records` of the epoch ending at `f`, read by `worker`, one pending file per hour
/// of event time.
pub fn archive(root: &Path, f: u64, worker: usize, records: Vec<Archived>) -> anyhow::Result<()> {
    let mut by_hour: BTreeMap<u64, Vec<Archived>> = BTreeMap::new();
    for r in records {
        by_hour
            .entry(r.click.event_time / HOUR_MS * HOUR_MS)
            .or_default()
            .push(r);
    }
    for (hour, records) in by_hour {
        let dir = root.join("raw").join(hour_partition(hour));
        std::fs::create_dir_all(&dir)?;
        let text = |get: fn(&Archived) -> &str| {
            Column::Text(records.iter().map(|r| get(r).to_string()).collect())
        };
        let columns = [
            (
                "partition",
                Column::Long(records.iter().map(|r| r.partition as i64).collect()),
            ),
            (
                "offset",
                Column::Long(records.iter().map(|r| r.offset).collect()),
            ),
            ("impression_id", text(|r| &r.click.impression_id)),
            ("click_id", text(|r| &r.click.click_id)),
            (
                "event_time",
                Column::Millis(records.iter().map(|r| r.click.event_time as i64).collect()),
            ),
            ("ad_id", text(|r| &r.click.labels.ad_id)),
            ("campaign_id", text(|r| &r.click.labels.campaign_id)),
            ("advertiser_id", text(|r| &r.click.labels.advertiser_id)),
            ("publisher_id", text(|r| &r.click.labels.publisher_id)),
            ("country", text(|r| &r.click.labels.country)),
            ("device", text(|r| &r.click.labels.device)),
        ];
        write_table(&pending_path(&dir, f, &format!("-w{worker}")), &columns)?;
    }
    Ok(())
}

/// `hour=2026-11-22T17`: Hive-style, so readers can prune by hour.
pub fn hour_partition(hour_ms: u64) -> String {
    let t = format_millis(hour_ms as i64);
    format!("hour={}", &t[..13])
}
