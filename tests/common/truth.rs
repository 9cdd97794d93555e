//! The aggregator's NDJSON output against the load generator's ground truth, exactly: every
//! final window (minute, and its hour and day rollups) reported once and equal to the truth
//! (billable clicks, duplicates, and invalid clicks by reason), none missing, none extra, and
//! the tallies equal to the truth's and adding up. Used by
//! tests/aggregator.rs and, through the chaos test's checker, by scripts/chaos.sh.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use adclick::aggregator::output::{Line, Tallies};
use adclick::aggregator::sink::aggregates::{AggregateRecord, CommittedReader};
use adclick::aggregator::sink::parquet::{read_archive, read_windows};
use adclick::loadgen::truth::{REASONS, TruthReport};
use adclick_dataflows::time::{DAY_MS, HOUR_MS, MINUTE_MS};

/// (granularity, window start, [ad, campaign, advertiser, publisher, country, device]).
pub type Key = (&'static str, u64, [String; 6]);
pub type Rows = BTreeMap<Key, Counts>;

/// What a window row counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Billable clicks.
    pub clicks: i64,
    pub duplicates: i64,
    /// Invalid clicks by reason name; reasons without clicks left out.
    pub invalid: BTreeMap<&'static str, i64>,
}

impl Counts {
    /// From a window line's invalid clicks, indexed by precedence.
    pub fn of(clicks: i64, duplicates: i64, invalid: [i64; 7]) -> Counts {
        Counts {
            clicks,
            duplicates,
            invalid: REASONS
                .into_iter()
                .zip(invalid)
                .filter(|(_, n)| *n != 0)
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Counts::default()
    }

    /// Invalid clicks, whatever the reason.
    pub fn invalid_total(&self) -> i64 {
        self.invalid.values().sum()
    }
}

pub const GRANULARITIES: [(&str, u64); 3] =
    [("minute", MINUTE_MS), ("hour", HOUR_MS), ("day", DAY_MS)];

fn granularity(name: &str) -> Option<&'static str> {
    GRANULARITIES
        .iter()
        .find(|(g, _)| *g == name)
        .map(|(g, _)| *g)
}

/// A truth row's dimensions, in the order of a window key.
pub fn dims_of(w: &adclick::loadgen::truth::Row) -> [String; 6] {
    [
        &w.ad_id,
        &w.campaign_id,
        &w.advertiser_id,
        &w.publisher_id,
        &w.country,
        &w.device,
    ]
    .map(|s| s.to_string())
}

/// The truth's rows at every granularity: its minute rows, and their sums per hour and day.
pub fn expected(t: &TruthReport) -> Rows {
    let mut rows = Rows::new();
    for w in &t.windows {
        let dims = dims_of(w);
        for (g, ms) in GRANULARITIES {
            let start = (w.minute_ms as u64) / ms * ms;
            let v = rows.entry((g, start, dims.clone())).or_default();
            v.clicks += w.clicks as i64;
            v.duplicates += w.duplicates as i64;
            for (reason, n) in &w.invalid {
                let reason = REASONS
                    .into_iter()
                    .find(|r| r == reason)
                    .unwrap_or_else(|| panic!("the truth counts under {reason:?}"));
                *v.invalid.entry(reason).or_default() += *n as i64;
            }
        }
    }
    rows
}

/// Final window rows (empty ones left out) and the tallies from the aggregator's NDJSON
/// output. Panics if a window is reported final twice or the tallies are missing.
pub fn read_output(path: &Path) -> (Rows, Tallies) {
    let (rows, tallies) = final_rows(output_lines(path));
    (rows, tallies.expect("the output ends with the tallies"))
}

/// The lines of an NDJSON output.
pub fn output_lines(path: &Path) -> impl Iterator<Item = Line> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let lines: Vec<Line> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{} line {}: {e}: {:.80?}", path.display(), i + 1, l))
        })
        .collect();
    lines.into_iter()
}

/// Final window rows (empty ones left out) and the tallies, if any, of `lines`. Panics if a
/// window is final twice.
pub fn final_rows(lines: impl Iterator<Item = Line>) -> (Rows, Option<Tallies>) {
    let mut rows = Rows::new();
    let mut tallies = None;
    for line in lines {
        if let Some(w) = line.window() {
            let counts = Counts::of(w.clicks, w.duplicates, w.invalid);
            if w.status == "final" && !counts.is_empty() {
                let g = w.granularity;
                let g = granularity(g).unwrap_or_else(|| panic!("granularity {g:?}"));
                let key = (g, w.start, w.dims.map(String::from));
                assert!(
                    rows.insert(key.clone(), counts).is_none(),
                    "a window reported final twice: {key:?}"
                );
            }
            continue;
        }
        if let Line::Tallies(t) = line {
            tallies = Some(t);
        }
    }
    (rows, tallies)
}

/// The tallies an exactly-once aggregator reports for the truth's traffic. Through the
/// redirect (`--output http`), nothing rejected reaches the clicks topic: forged links are
/// refused, malformed, future-dated and oversized partner lines rejected (to `clicks-dlq`),
/// keyless batches answered 401, stalled requests never finished. Written straight to Kafka
/// or files, malformed, future-dated and oversized records reach the aggregator and are
/// dead-lettered there. Ancient (hostile) events are part of `late` either way. Invalid
/// traffic is received and counted apart from billable clicks: `counted` is billable.
pub fn expected_tallies(truth: &TruthReport) -> Tallies {
    let t = &truth.tallies;
    let via_redirect = truth.config["loadgen"]["output"] == "http";
    let (received, dead_lettered) = if via_redirect {
        (t.emitted - t.rejected, 0)
    } else {
        let dead = t.malformed + t.future + t.oversized;
        (t.emitted - (t.rejected - dead), dead)
    };
    Tallies {
        received,
        counted: t.counted as i64,
        invalid: t.invalid as i64,
        invalid_by_reason: REASONS.map(|r| t.invalid_by_reason.get(r).map_or(0, |&n| n as i64)),
        duplicates: t.duplicates as i64,
        late: t.late,
        dead_lettered,
        lost: 0,
    }
}

/// What [`check`] compared.
#[derive(Debug, Clone)]
pub struct Compared {
    /// Final windows per granularity, in the order of [`GRANULARITIES`].
    pub windows: [usize; 3],
    pub tallies: Tallies,
}

/// Compares the output at `out` with the truth; panics, naming `what`, on any difference.
pub fn check(out: &Path, truth: &TruthReport, what: &str) -> Compared {
    let (rows, tallies) = read_output(out);
    compare_rows(&rows, truth, what);
    assert_eq!(
        tallies,
        expected_tallies(truth),
        "{what}: tallies (left: output, right: truth){}",
        ambiguity(truth)
    );
    assert_eq!(
        tallies.received as i64,
        tallies.counted
            + tallies.invalid
            + tallies.duplicates
            + tallies.late as i64
            + tallies.dead_lettered as i64,
        "{what}: tallies add up"
    );
    let windows = GRANULARITIES.map(|(g, _)| rows.keys().filter(|k| k.0 == g).count());
    Compared { windows, tallies }
}

fn ambiguity(truth: &TruthReport) -> String {
    match truth.tallies.ambiguous {
        0 => String::new(),
        n => format!(
            " ({n} HTTP clicks were answered in another minute than they were sent, so the \
             truth may place them in the wrong minute)"
        ),
    }
}

/// Final window rows equal the truth's, exactly; panics, naming `what`, on any difference.
pub fn compare_rows(rows: &Rows, truth: &TruthReport, what: &str) {
    compare_rows_of(rows, truth, what, &GRANULARITIES.map(|(g, _)| g));
}

/// [`compare_rows`] over the windows of the `granularities` named (a streaming job's hours
/// and days are final only once they end).
pub fn compare_rows_of(rows: &Rows, truth: &TruthReport, what: &str, granularities: &[&str]) {
    let mut want = expected(truth);
    want.retain(|k, _| granularities.contains(&k.0));
    let mut rows = rows.clone();
    rows.retain(|k, _| granularities.contains(&k.0));
    let rows = &rows;
    let wrong: Vec<_> = want
        .iter()
        .filter(|(k, v)| rows.get(*k) != Some(v))
        .map(|(k, v)| (k, v, rows.get(k)))
        .collect();
    let extra: Vec<_> = rows
        .iter()
        .filter(|(k, _)| !want.contains_key(*k))
        .collect();
    let ambiguous = ambiguity(truth);
    let by_granularity = GRANULARITIES.map(|(g, _)| {
        let wrong = wrong.iter().filter(|(k, ..)| k.0 == g).count();
        let extra = extra.iter().filter(|(k, _)| k.0 == g).count();
        format!("{g}: {wrong} missing or wrong, {extra} extra")
    });
    assert!(
        wrong.is_empty() && extra.is_empty(),
        "{what}: differs from the truth{ambiguous} ({by_granularity:?}): {} windows missing or \
         wrong (key, truth, output), e.g. {:?}; {} extra, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)],
        extra.len(),
        &extra[..extra.len().min(3)],
    );
}

/// The committed final rows of the click-aggregates topic, read as a consumer that honours
/// the commit markers would.
pub fn read_aggregates(brokers: &str) -> Rows {
    let mut lines = Vec::new();
    let topic = super::read_partitions(brokers, "click-aggregates", 1, Duration::from_secs(20));
    for (_, records) in topic {
        let mut reader = CommittedReader::default();
        for (_, value) in records {
            let record: AggregateRecord = serde_json::from_slice(&value).unwrap();
            lines.extend(reader.push(record));
        }
    }
    final_rows(lines.into_iter()).0
}

/// The final window rows of the Parquet sink's published files (`DIR/windows`).
pub fn read_parquet_windows(root: &Path) -> Rows {
    final_rows(read_windows(root).unwrap().into_iter()).0
}

/// The (partition, offset) of every published row of the raw archive (`DIR/raw`); panics if
/// a record is archived twice.
pub fn read_raw_archive(root: &Path) -> std::collections::BTreeSet<(i32, i64)> {
    let mut seen = std::collections::BTreeSet::new();
    for r in read_archive(root, None).unwrap().into_values().flatten() {
        assert!(
            seen.insert((r.partition, r.offset)),
            "record {}@{} archived twice",
            r.partition,
            r.offset
        );
    }
    seen
}
