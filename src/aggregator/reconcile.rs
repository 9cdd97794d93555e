//! Reconciliation: the final windows recomputed from the raw archive (the same dataflow, in
//! batch mode) against what a sink holds, window by window, with a report.

use std::collections::BTreeMap;
use std::fmt;

use adclick_dataflows::click::Measures;
use adclick_dataflows::time::{DAY_MS, HOUR_MS, MINUTE_MS};

use super::sink::output::Line;
use super::sink::parquet::{read_archive, read_windows};

/// (granularity, window start, [ad, campaign, advertiser, publisher, country, device]).
pub type WindowKey = (String, u64, [String; 6]);
/// Billable clicks, duplicates and invalid clicks by reason.
pub type Counts = Measures;
pub type Windows = BTreeMap<WindowKey, Counts>;

fn window_ms(granularity: &str) -> Option<u64> {
    match granularity {
        "minute" => Some(MINUTE_MS),
        "hour" => Some(HOUR_MS),
        "day" => Some(DAY_MS),
        _ => None,
    }
}

/// The final windows of `lines` that lie wholly in `[from, to)`, empty ones left out. A
/// window reported final twice is an error of the sink: it is returned as the second value.
pub fn finals_in(
    lines: impl Iterator<Item = Line>,
    from: u64,
    to: u64,
) -> (Windows, Vec<WindowKey>) {
    let mut windows = Windows::new();
    let mut twice = Vec::new();
    for line in lines {
        let Some(w) = line.window() else {
            continue;
        };
        let Some(len) = window_ms(w.granularity) else {
            continue;
        };
        let (start, measures) = (w.start, w.measures());
        if w.status != "final"
            || measures == Measures::default()
            || start < from
            || start + len > to
        {
            continue;
        }
        let key = (w.granularity.to_string(), start, w.dims.map(String::from));
        if windows.insert(key.clone(), measures).is_some() {
            twice.push(key);
        }
    }
    (windows, twice)
}

/// How a sink compares with the recomputation.
#[derive(Debug, Default)]
pub struct Report {
    pub sink: String,
    /// Per granularity: windows that agree.
    pub matched: BTreeMap<String, usize>,
    /// Recomputed but absent from the sink.
    pub missing: Vec<(WindowKey, Counts)>,
    /// In the sink but not recomputed.
    pub extra: Vec<(WindowKey, Counts)>,
    /// (key, recomputed, sink).
    pub differ: Vec<(WindowKey, Counts, Counts)>,
    /// Reported final more than once by the sink.
    pub twice: Vec<WindowKey>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.missing.is_empty()
            && self.extra.is_empty()
            && self.differ.is_empty()
            && self.twice.is_empty()
    }
}

pub fn compare(sink: &str, recomputed: &Windows, held: &Windows, twice: Vec<WindowKey>) -> Report {
    let mut r = Report {
        sink: sink.into(),
        twice,
        ..Report::default()
    };
    for (key, want) in recomputed {
        match held.get(key) {
            Some(got) if got == want => *r.matched.entry(key.0.clone()).or_default() += 1,
            Some(got) => r.differ.push((key.clone(), want.clone(), got.clone())),
            None => r.missing.push((key.clone(), want.clone())),
        }
    }
    for (key, got) in held {
        if !recomputed.contains_key(key) {
            r.extra.push((key.clone(), got.clone()));
        }
    }
    r
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.ok() { "OK" } else { "MISMATCH" };
        writeln!(f, "{}: {verdict}", self.sink)?;
        for (g, n) in &self.matched {
            writeln!(f, "  {g}: {n} windows equal")?;
        }
        let show = |f: &mut fmt::Formatter<'_>, what: &str, n: usize| {
            if n > 0 {
                writeln!(f, "  {n} windows {what}")?;
            }
            Ok(())
        };
        show(
            f,
            "missing from the sink (recomputed, not held)",
            self.missing.len(),
        )?;
        for (k, v) in self.missing.iter().take(5) {
            writeln!(f, "    {k:?} recomputed {v:?}")?;
        }
        show(f, "only in the sink", self.extra.len())?;
        for (k, v) in self.extra.iter().take(5) {
            writeln!(f, "    {k:?} held {v:?}")?;
        }
        show(f, "with other counts", self.differ.len())?;
        for (k, want, got) in self.differ.iter().take(5) {
            writeln!(f, "    {k:?} recomputed {want:?}, held {got:?}")?;
        }
        show(f, "reported final more than once", self.twice.len())?;
        Ok(())
    }
}

/// The archive's clicks a recomputation of `[from, to)` needs: those hours, and before them
/// the dedup horizon and lateness (an earlier original makes a click in range a duplicate;
/// earlier clicks set the watermark that judges it), and after them the lateness (late
/// clicks still reach windows in range).
pub fn replay_input(
    cfg: &super::config::AggregatorConfig,
    archive: &std::path::Path,
    from: u64,
    to: u64,
) -> anyhow::Result<super::input::Input> {
    let margin = cfg.allowed_lateness_ms + cfg.out_of_orderness_ms + HOUR_MS;
    let hours = from.saturating_sub(cfg.dedup_horizon_ms + margin)..to.saturating_add(margin);
    let clicks = read_archive(archive, Some(hours))?;
    anyhow::ensure!(
        !clicks.is_empty(),
        "no archived clicks for [{}, {}) under {}",
        crate::timefmt::format_millis(from as i64),
        crate::timefmt::format_millis(to as i64),
        archive.display()
    );
    Ok(super::input::Input::Archive(std::sync::Arc::new(clicks)))
}

/// Compares the recomputed output (NDJSON) with the sinks: the Parquet windows under
/// `parquet` and each NDJSON output in `ndjson`.
pub fn check_sinks(
    recomputed: &std::path::Path,
    parquet: Option<&std::path::Path>,
    ndjson: &[std::path::PathBuf],
    from: u64,
    to: u64,
) -> anyhow::Result<Vec<Report>> {
    let (want, _) = finals_in(read_ndjson(recomputed)?.into_iter(), from, to);
    let mut reports = Vec::new();
    if let Some(root) = parquet {
        let lines = read_windows(root)?;
        let (held, twice) = finals_in(lines.into_iter(), from, to);
        let name = format!("Parquet windows under {}", root.display());
        reports.push(compare(&name, &want, &held, twice));
    }
    for path in ndjson {
        let (held, twice) = finals_in(read_ndjson(path)?.into_iter(), from, to);
        reports.push(compare(&path.display().to_string(), &want, &held, twice));
    }
    Ok(reports)
}

fn read_ndjson(path: &std::path::Path) -> anyhow::Result<Vec<Line>> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(granularity: &str, start: u64, ad: &str, clicks: i64, status: &str) -> Line {
        Line::window_fixture(granularity, start, ad, clicks, 0, &[], status)
    }

    #[test]
    fn a_report_names_every_kind_of_difference() {
        let m = MINUTE_MS;
        let (recomputed, _) = finals_in(
            [
                line("minute", 0, "a", 2, "final"),
                line("minute", 0, "b", 1, "final"),
                line("minute", m, "c", 1, "final"),
                line("minute", 2 * m, "d", 5, "final"), // outside [0, 2m)
                line("hour", 0, "a", 3, "final"),       // not wholly inside
            ]
            .into_iter(),
            0,
            2 * m,
        );
        assert_eq!(recomputed.len(), 3);
        let (held, twice) = finals_in(
            [
                line("minute", 0, "a", 2, "complete"),
                line("minute", 0, "a", 2, "final"),
                line("minute", 0, "b", 2, "final"),
                line("minute", m, "e", 1, "final"),
                line("minute", m, "e", 1, "final"),
            ]
            .into_iter(),
            0,
            2 * m,
        );
        let r = compare("test", &recomputed, &held, twice);
        assert!(!r.ok());
        assert_eq!(r.matched["minute"], 1);
        assert_eq!(r.differ.len(), 1); // b
        assert_eq!(r.missing.len(), 1); // c
        assert_eq!(r.extra.len(), 1); // e
        assert_eq!(r.twice.len(), 1); // e again
        let text = r.to_string();
        assert!(text.starts_with("test: MISMATCH"), "{text}");
        let ok = compare("same", &recomputed, &recomputed, Vec::new());
        assert!(ok.ok() && ok.to_string().starts_with("same: OK"));
    }
}
