//! The Parquet sinks under `aggregator.parquet_dir`, both published per checkpoint epoch
//! ([`table`]):
//!
//! ```text
//! DIR/windows/part-{F}.parquet                       final windows of the epoch ending at F
//! DIR/reach/part-{F}.parquet                         final reach sketches of that epoch
//! DIR/raw/hour=2026-11-22T17/part-{F}-w{W}.parquet   accepted clicks worker W read in it
//! ```
//!
//! `raw` is the cold store: every valid click as read (on time, late or duplicate), with
//! its partition and offset, so that reconciliation and replay can feed each partition's
//! records to the same dataflow in their original order. It keeps what the invalid-traffic
//! rules judge by (keyed IP and user hashes, impression time, the edge's reasons as names,
//! comma-separated), so a replay classifies as the live run did; archives written before
//! those columns existed read as clicks without them (no reasons, hashes or time). DuckDB reads it with
//! `read_parquet('DIR/raw/*/*.parquet', hive_partitioning = true)`.

pub mod table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use adclick_dataflows::click::{Origin, RawClick, Traits};
use adclick_dataflows::invalid::{Reason, Reasons};
use adclick_dataflows::time::HOUR_MS;

use table::{Column, Value, pending_path, read_table, write_table};
pub use table::{commit, recover};

use crate::aggregator::raw::Archived;
use crate::aggregator::sink::output::Line;
use crate::timefmt::format_millis;

/// Final windows and final reach of the current epoch, written when it ends.
pub struct WindowFiles {
    root: PathBuf,
    dir: PathBuf,
    lines: Vec<Line>,
    reach_dir: PathBuf,
    reach: Vec<Line>,
}

impl WindowFiles {
    pub fn new(root: &Path) -> anyhow::Result<Self> {
        let dir = root.join("windows");
        std::fs::create_dir_all(&dir)?;
        let reach_dir = root.join("reach");
        std::fs::create_dir_all(&reach_dir)?;
        Ok(Self {
            root: root.into(),
            dir,
            lines: Vec::new(),
            reach_dir,
            reach: Vec::new(),
        })
    }

    /// The Parquet directory (where pending files are published).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn push(&mut self, line: &Line) {
        match line {
            Line::Window { .. } => self.lines.push(line.clone()),
            Line::Reach { .. } => self.reach.push(line.clone()),
            _ => {}
        }
    }

    /// Ends the epoch at `f`: its windows and its reach go to pending files (none if there
    /// were none).
    pub fn seal(&mut self, f: u64) -> anyhow::Result<()> {
        self.seal_reach(f)?;
        if self.lines.is_empty() {
            return Ok(());
        }
        let mut text: [Vec<String>; 7] = Default::default();
        let mut long: [Vec<i64>; 3] = Default::default();
        let mut invalid: [Vec<i64>; 7] = Default::default();
        for line in std::mem::take(&mut self.lines) {
            let Some(w) = line.window() else { continue };
            let texts = std::iter::once(w.granularity).chain(w.dims);
            for (column, v) in text.iter_mut().zip(texts) {
                column.push(v.to_string());
            }
            for (column, v) in long
                .iter_mut()
                .zip([w.start as i64, w.clicks, w.duplicates])
            {
                column.push(v);
            }
            for (column, v) in invalid.iter_mut().zip(w.invalid) {
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
        let invalid_columns = invalid_columns();
        let mut columns = vec![
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
        for (name, values) in invalid_columns.iter().zip(invalid) {
            columns.push((name.as_str(), Column::Long(values)));
        }
        write_table(&pending_path(&self.dir, f, ""), &columns)
    }
}

impl WindowFiles {
    /// The reach table: one row per final group, its estimate and its sketch's bytes
    /// (`UserSketch::to_bytes`: merge rows to unite their users).
    fn seal_reach(&mut self, f: u64) -> anyhow::Result<()> {
        if self.reach.is_empty() {
            return Ok(());
        }
        let mut text: [Vec<String>; 8] = Default::default();
        let (mut start, mut users, mut exact, mut sketch) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for line in std::mem::take(&mut self.reach) {
            let Line::Reach {
                granularity,
                window_start_ms,
                group_by,
                traffic,
                ad_id,
                campaign_id,
                advertiser_id,
                publisher_id,
                country,
                unique_users,
                exact: is_exact,
                sketch: encoded,
                ..
            } = line
            else {
                continue;
            };
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD.decode(&encoded)?;
            let texts = [
                granularity,
                group_by,
                traffic,
                ad_id,
                campaign_id,
                advertiser_id,
                publisher_id,
                country,
            ];
            for (column, v) in text.iter_mut().zip(texts) {
                column.push(v);
            }
            start.push(window_start_ms as i64);
            users.push(unique_users as i64);
            exact.push(is_exact);
            sketch.push(bytes);
        }
        let [
            granularity,
            group_by,
            traffic,
            ad,
            campaign,
            advertiser,
            publisher,
            country,
        ] = text;
        let columns = [
            ("granularity", Column::Text(granularity)),
            ("window_start", Column::Millis(start)),
            ("group_by", Column::Text(group_by)),
            ("traffic", Column::Text(traffic)),
            ("ad_id", Column::Text(ad)),
            ("campaign_id", Column::Text(campaign)),
            ("advertiser_id", Column::Text(advertiser)),
            ("publisher_id", Column::Text(publisher)),
            ("country", Column::Text(country)),
            ("unique_users", Column::Long(users)),
            ("exact", Column::Bool(exact)),
            ("sketch", Column::Bytes(sketch)),
        ];
        write_table(&pending_path(&self.reach_dir, f, ""), &columns)
    }
}

/// The final reach the window sink published under `root` (`DIR/reach`), as report lines.
pub fn read_reach(root: &Path) -> anyhow::Result<Vec<Line>> {
    use base64::Engine as _;
    rows(&root.join("reach"))?
        .iter()
        .map(|r| {
            let start = long(r, "window_start")?;
            let exact = match r.get("exact") {
                Some(Value::Bool(b)) => *b,
                other => anyhow::bail!("column exact: {other:?}, not a boolean"),
            };
            let sketch = match r.get("sketch") {
                Some(Value::Bytes(b)) => base64::engine::general_purpose::STANDARD.encode(b),
                other => anyhow::bail!("column sketch: {other:?}, not bytes"),
            };
            Ok(Line::Reach {
                granularity: text(r, "granularity")?,
                window_start: format_millis(start),
                window_start_ms: start as u64,
                group_by: text(r, "group_by")?,
                traffic: text(r, "traffic")?,
                ad_id: text(r, "ad_id")?,
                campaign_id: text(r, "campaign_id")?,
                advertiser_id: text(r, "advertiser_id")?,
                publisher_id: text(r, "publisher_id")?,
                country: text(r, "country")?,
                unique_users: long(r, "unique_users")? as u64,
                exact,
                sketch,
            })
        })
        .collect()
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
            ("ip_hash", text(|r| &r.click.traits.ip_hash)),
            ("user_id_hash", text(|r| &r.click.traits.user_id_hash)),
            (
                "impression_time",
                Column::Long(
                    records
                        .iter()
                        .map(|r| r.click.traits.impression_time as i64)
                        .collect(),
                ),
            ),
            (
                "invalid_reasons",
                Column::Text(
                    records
                        .iter()
                        .map(|r| reason_names(r.click.traits.reasons))
                        .collect(),
                ),
            ),
        ];
        write_table(&pending_path(&dir, f, &format!("-w{worker}")), &columns)?;
    }
    Ok(())
}

/// `known_bot,datacenter`: the reasons' names in precedence order; empty for none.
pub fn reason_names(reasons: Reasons) -> String {
    reasons
        .iter()
        .map(Reason::name)
        .collect::<Vec<_>>()
        .join(",")
}

/// The reasons named in `names` (as [`reason_names`] writes them); names this build does not
/// know (a newer writer's) are ignored.
pub fn parse_reason_names(names: &str) -> Reasons {
    Reasons::of(names.split(',').filter_map(|n| Reason::from_name(n.trim())))
}

/// `hour=2026-11-22T17`: Hive-style, so readers can prune by hour.
pub fn hour_partition(hour_ms: u64) -> String {
    let t = format_millis(hour_ms as i64);
    format!("hour={}", &t[..13])
}

/// Published Parquet files (`*.parquet`) under `dir`, at any depth, in name order.
fn published(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "parquet") {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// Rows of the published files under `dir`, each as column → value.
fn rows(dir: &Path) -> anyhow::Result<Vec<BTreeMap<String, Value>>> {
    let mut all = Vec::new();
    for file in published(dir)? {
        all.extend(
            read_table(&file)?
                .into_iter()
                .map(|r| r.into_iter().collect()),
        );
    }
    Ok(all)
}

fn text(row: &BTreeMap<String, Value>, column: &str) -> anyhow::Result<String> {
    match row.get(column) {
        Some(Value::Text(s)) => Ok(s.clone()),
        other => anyhow::bail!("column {column}: {other:?}, not text"),
    }
}

fn long(row: &BTreeMap<String, Value>, column: &str) -> anyhow::Result<i64> {
    match row.get(column) {
        Some(Value::Long(n)) => Ok(*n),
        other => anyhow::bail!("column {column}: {other:?}, not an integer"),
    }
}

/// The dimension columns both tables share.
fn labels(r: &BTreeMap<String, Value>) -> anyhow::Result<adclick_dataflows::click::Labels> {
    Ok(adclick_dataflows::click::Labels {
        ad_id: text(r, "ad_id")?,
        campaign_id: text(r, "campaign_id")?,
        advertiser_id: text(r, "advertiser_id")?,
        publisher_id: text(r, "publisher_id")?,
        country: text(r, "country")?,
        device: text(r, "device")?,
    })
}

/// The window table's invalid-click columns, one per reason in precedence order
/// (`invalid_known_bot`, ..., `invalid_too_fast`): flat columns any Parquet reader sums.
fn invalid_columns() -> Vec<String> {
    Reason::ALL
        .iter()
        .map(|r| format!("invalid_{}", r.name()))
        .collect()
}

/// The final windows the window sink published under `root`, as report lines.
pub fn read_windows(root: &Path) -> anyhow::Result<Vec<Line>> {
    rows(&root.join("windows"))?
        .iter()
        .map(|r| {
            let start = long(r, "window_start")?;
            let l = labels(r)?;
            Ok(Line::Window {
                granularity: text(r, "granularity")?,
                window_start: format_millis(start),
                window_start_ms: start as u64,
                ad_id: l.ad_id,
                campaign_id: l.campaign_id,
                advertiser_id: l.advertiser_id,
                publisher_id: l.publisher_id,
                country: l.country,
                device: l.device,
                clicks: long(r, "clicks")?,
                duplicates: long(r, "duplicates")?,
                // Files written before invalid traffic was counted have no such columns.
                invalid: Reason::ALL
                    .iter()
                    .zip(invalid_columns())
                    .filter_map(|(reason, c)| {
                        let n = long(r, &c).unwrap_or(0);
                        (n != 0).then(|| (reason.name().to_string(), n))
                    })
                    .collect(),
                status: "final".into(),
            })
        })
        .collect()
}

/// The archived clicks under `root` whose hour of event time is in `hours` (ms, hour
/// aligned; all of them if `None`), by partition in offset order: each partition's records
/// as it was read.
pub fn read_archive(
    root: &Path,
    hours: Option<std::ops::Range<u64>>,
) -> anyhow::Result<BTreeMap<i32, Vec<Archived>>> {
    let raw = root.join("raw");
    let dirs = match hours {
        Some(hours) => (hours.start / HOUR_MS..hours.end.div_ceil(HOUR_MS))
            .map(|h| raw.join(hour_partition(h * HOUR_MS)))
            .collect(),
        None => vec![raw],
    };
    let mut by_partition: BTreeMap<i32, Vec<Archived>> = BTreeMap::new();
    for dir in dirs {
        for r in rows(&dir)? {
            let record = archived(&r)?;
            by_partition
                .entry(record.partition)
                .or_default()
                .push(record);
        }
    }
    for records in by_partition.values_mut() {
        records.sort_by_key(|r| r.offset);
    }
    Ok(by_partition)
}

fn archived(r: &BTreeMap<String, Value>) -> anyhow::Result<Archived> {
    // Columns added later are optional: an older archive lacks them.
    let optional_text = |column| match r.get(column) {
        None => Ok(String::new()),
        Some(_) => text(r, column),
    };
    Ok(Archived {
        partition: long(r, "partition")? as i32,
        offset: long(r, "offset")?,
        click: RawClick {
            impression_id: text(r, "impression_id")?,
            click_id: text(r, "click_id")?,
            event_time: long(r, "event_time")? as u64,
            labels: labels(r)?,
            traits: Traits {
                ip_hash: optional_text("ip_hash")?,
                user_id_hash: optional_text("user_id_hash")?,
                impression_time: match r.get("impression_time") {
                    None => 0,
                    Some(_) => u64::try_from(long(r, "impression_time")?).unwrap_or(0),
                },
                reasons: parse_reason_names(&optional_text("invalid_reasons")?),
            },
            origin: Origin {
                partition: long(r, "partition")? as i32,
                offset: long(r, "offset")? as u64,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use adclick_dataflows::click::Labels;

    use super::*;

    fn click(n: u64, traits: Traits) -> RawClick {
        RawClick {
            impression_id: format!("imp-{n}"),
            click_id: format!("0192f6a4-7c1e-7b3a-9c44-{n:012x}"),
            event_time: 1_776_686_400_000 + n,
            labels: Labels {
                ad_id: "ad_1".into(),
                campaign_id: "cmp_1".into(),
                advertiser_id: "adv_1".into(),
                publisher_id: "pub_1".into(),
                country: "US".into(),
                device: "mobile".into(),
            },
            traits,
            origin: Default::default(),
        }
    }

    #[test]
    fn the_archive_keeps_what_the_invalid_traffic_rules_read() {
        let tmp = tempfile::tempdir().unwrap();
        let flagged = Traits {
            ip_hash: "00112233445566778899aabbccddeeff".into(),
            user_id_hash: "ffeeddccbbaa99887766554433221100".into(),
            impression_time: 1_776_686_399_000,
            reasons: Reasons::of([Reason::KnownBot, Reason::Datacenter]),
        };
        let records = vec![
            // A click read from Kafka carries its partition and offset as its origin.
            Archived {
                partition: 0,
                offset: 7,
                click: RawClick {
                    origin: Origin {
                        partition: 0,
                        offset: 7,
                    },
                    ..click(1, flagged)
                },
            },
            Archived {
                partition: 0,
                offset: 8,
                click: RawClick {
                    origin: Origin {
                        partition: 0,
                        offset: 8,
                    },
                    ..click(2, Traits::default())
                },
            },
        ];
        archive(tmp.path(), 10, 0, records.clone()).unwrap();
        commit(tmp.path(), 10).unwrap();
        let back = read_archive(tmp.path(), None).unwrap();
        let got: Vec<&RawClick> = back[&0].iter().map(|a| &a.click).collect();
        assert_eq!(got, vec![&records[0].click, &records[1].click]);
    }

    #[test]
    fn an_archive_from_before_classification_reads_as_unclassified_clicks() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("raw").join("hour=2026-04-20T12");
        std::fs::create_dir_all(&dir).unwrap();
        let text = |s: &str| Column::Text(vec![s.to_string()]);
        // The columns an archive had before the invalid-traffic ones.
        let columns = [
            ("partition", Column::Long(vec![3])),
            ("offset", Column::Long(vec![42])),
            ("impression_id", text("imp-old")),
            ("click_id", text("0192f6a4-7c1e-7b3a-9c44-000000000001")),
            ("event_time", Column::Millis(vec![1_776_686_400_000])),
            ("ad_id", text("ad_1")),
            ("campaign_id", text("cmp_1")),
            ("advertiser_id", text("adv_1")),
            ("publisher_id", text("pub_1")),
            ("country", text("US")),
            ("device", text("mobile")),
        ];
        write_table(&dir.join("part-00000000000000000001-w0.parquet"), &columns).unwrap();
        let back = read_archive(tmp.path(), None).unwrap();
        let a = &back[&3][0];
        assert_eq!((a.offset, a.click.impression_id.as_str()), (42, "imp-old"));
        assert_eq!(a.click.traits, Traits::default());
    }

    /// Final reach lines go to `DIR/reach`, published with their epoch, and read back as
    /// written: the sketch's bytes raw in the table, base64 in the line.
    #[test]
    fn the_reach_table_reads_back_with_its_sketches() {
        use adclick_dataflows::sketch::UserSketch;
        use base64::Engine as _;
        let tmp = tempfile::tempdir().unwrap();
        let line = |start: u64, hashes: Vec<u64>| {
            let s = UserSketch::of(hashes);
            Line::Reach {
                granularity: "hour".into(),
                window_start: format_millis(start as i64),
                window_start_ms: start,
                group_by: "ad".into(),
                traffic: "billable".into(),
                ad_id: "ad_1".into(),
                campaign_id: "cmp_1".into(),
                advertiser_id: "adv_1".into(),
                publisher_id: String::new(),
                country: String::new(),
                unique_users: s.estimate(),
                exact: s.is_exact(),
                sketch: base64::engine::general_purpose::STANDARD.encode(s.to_bytes()),
            }
        };
        let lines = vec![
            line(1_776_686_400_000, vec![3, 1, 2]),
            line(
                1_776_690_000_000,
                (0..10_000u64).map(|i| i * 0x9e37_79b9).collect(),
            ),
        ];
        let mut files = WindowFiles::new(tmp.path()).unwrap();
        for l in &lines {
            files.push(l);
        }
        files.seal(10).unwrap();
        assert_eq!(
            read_reach(tmp.path()).unwrap(),
            vec![],
            "pending until committed"
        );
        commit(tmp.path(), 10).unwrap();
        assert_eq!(read_reach(tmp.path()).unwrap(), lines);
        assert!(read_windows(tmp.path()).unwrap().is_empty());
    }

    #[test]
    fn reason_names_round_trip_and_skip_unknown_ones() {
        let all = Reasons::of(Reason::ALL);
        assert_eq!(parse_reason_names(&reason_names(all)), all);
        assert_eq!(reason_names(Reasons::NONE), "");
        assert_eq!(parse_reason_names(""), Reasons::NONE);
        assert_eq!(
            parse_reason_names("from_the_future,headless"),
            Reasons::of([Reason::Headless])
        );
    }
}
