//! `adclick-loadgen compare EXPECTED ACTUAL`: two aggregator outputs (NDJSON) must hold the
//! same final windows, every granularity and dimension, with the same billable, duplicate and
//! invalid counts, each reported final once, and end with the same tallies. A replay's
//! truth is the batch aggregator's output on the recording; the live aggregator's output is
//! held to it. Windows are keyed and compared by the aggregator's own reconciliation
//! ([`finals_in`], [`compare`]); this adds the tallies and prints every difference.

use std::fmt;
use std::io::BufRead;
use std::path::Path;

use anyhow::Context;

use crate::aggregator::output::Line;
use crate::aggregator::reconcile::{Report, WindowKey, compare, finals_in};
use crate::health::Tallies;
use crate::timefmt::format_millis;

/// Differences printed of each kind, at most.
const SHOWN: usize = 50;

/// Final windows and the last tallies of one output.
pub struct Output {
    lines: Vec<Line>,
}

impl Output {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let lines = std::io::BufReader::with_capacity(1 << 20, file)
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.as_ref().is_ok_and(|l| l.trim().is_empty()))
            .map(|(i, l)| {
                let l = l.with_context(|| format!("reading {}", path.display()))?;
                serde_json::from_str(&l).with_context(|| {
                    format!(
                        "{} line {}: not an aggregator output line",
                        path.display(),
                        i + 1
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { lines })
    }

    pub fn from_lines(lines: Vec<Line>) -> Self {
        Self { lines }
    }

    fn tallies(&self) -> Option<Tallies> {
        self.lines.iter().rev().find_map(|l| match l {
            Line::Tallies(t) => Some(*t),
            _ => None,
        })
    }
}

/// How the actual output compares with the expected one.
pub struct Comparison {
    pub windows: Report,
    pub tallies: (Option<Tallies>, Option<Tallies>),
}

impl Comparison {
    pub fn ok(&self) -> bool {
        self.windows.ok() && self.tallies.0.is_some() && self.tallies.0 == self.tallies.1
    }
}

pub fn outputs(expected: &Output, actual: &Output, name: &str) -> Comparison {
    let (want, twice_expected) = finals_in(expected.lines.iter().cloned(), 0, u64::MAX);
    let (held, mut twice) = finals_in(actual.lines.iter().cloned(), 0, u64::MAX);
    // A window final twice in the expected output is as wrong as one in the actual.
    twice.extend(twice_expected);
    Comparison {
        windows: compare(name, &want, &held, twice),
        tallies: (expected.tallies(), actual.tallies()),
    }
}

fn key(k: &WindowKey) -> String {
    let (g, start, d) = k;
    format!(
        "{g} {} ad={} campaign={} advertiser={} publisher={} country={} device={}",
        format_millis(*start as i64),
        d[0],
        d[1],
        d[2],
        d[3],
        d[4],
        d[5]
    )
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.windows;
        let verdict = if self.ok() { "EQUAL" } else { "DIFFERENT" };
        let equal: Vec<String> = r.matched.iter().map(|(g, n)| format!("{n} {g}")).collect();
        writeln!(
            f,
            "compare {}: {verdict}: final windows equal: {}",
            r.sink,
            if equal.is_empty() {
                "none".into()
            } else {
                equal.join(", ")
            }
        )?;
        let kind = |f: &mut fmt::Formatter<'_>, what: &str, rows: Vec<String>| {
            if !rows.is_empty() {
                writeln!(f, "  {} windows {what}:", rows.len())?;
                for row in rows.iter().take(SHOWN) {
                    writeln!(f, "    {row}")?;
                }
                if rows.len() > SHOWN {
                    writeln!(f, "    ... and {} more", rows.len() - SHOWN)?;
                }
            }
            Ok(())
        };
        kind(
            f,
            "differ (expected, actual)",
            r.differ
                .iter()
                .map(|(k, want, got)| format!("{}: {want:?}, {got:?}", key(k)))
                .collect(),
        )?;
        kind(
            f,
            "expected but missing",
            r.missing
                .iter()
                .map(|(k, want)| format!("{}: {want:?}", key(k)))
                .collect(),
        )?;
        kind(
            f,
            "not expected",
            r.extra
                .iter()
                .map(|(k, got)| format!("{}: {got:?}", key(k)))
                .collect(),
        )?;
        kind(
            f,
            "reported final more than once",
            r.twice.iter().map(key).collect(),
        )?;
        match self.tallies {
            (Some(a), Some(b)) if a == b => writeln!(f, "  tallies equal: {a:?}"),
            (Some(a), Some(b)) => {
                writeln!(
                    f,
                    "  tallies differ:\n    expected {a:?}\n    actual   {b:?}"
                )
            }
            (a, b) => writeln!(
                f,
                "  tallies missing (an output ends with them once its run finished): expected \
                 {a:?}, actual {b:?}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start: u64, ad: &str, clicks: i64, status: &str) -> Line {
        Line::window_fixture("minute", start, ad, clicks, 1, &[("ip_flood", 2)], status)
    }

    fn tallies(received: u64) -> Line {
        Line::Tallies(Tallies {
            received,
            ..Tallies::default()
        })
    }

    fn compared(a: Vec<Line>, b: Vec<Line>) -> Comparison {
        outputs(&Output::from_lines(a), &Output::from_lines(b), "live")
    }

    #[test]
    fn equal_outputs_compare_equal_whatever_else_they_hold() {
        let batch = vec![
            window(0, "a", 3, "final"),
            window(60_000, "b", 1, "final"),
            tallies(9),
        ];
        // The live run reported the window complete and corrected first, and was restarted.
        let live = vec![
            window(0, "a", 2, "complete"),
            window(0, "a", 3, "correction"),
            window(60_000, "b", 1, "final"),
            window(0, "a", 3, "final"),
            tallies(9),
        ];
        let c = compared(batch, live);
        assert!(c.ok(), "{c}");
        assert!(
            c.to_string()
                .starts_with("compare live: EQUAL: final windows equal: 2 minute")
        );
    }

    #[test]
    fn every_difference_is_named() {
        let batch = vec![
            window(0, "a", 3, "final"),
            window(0, "b", 1, "final"),
            window(60_000, "c", 1, "final"),
            tallies(9),
        ];
        let live = vec![
            window(0, "a", 4, "final"),
            window(0, "b", 1, "final"),
            window(0, "b", 1, "final"),
            window(120_000, "d", 1, "final"),
            tallies(10),
        ];
        let c = compared(batch, live);
        assert!(!c.ok());
        let text = c.to_string();
        for needle in [
            "DIFFERENT",
            "1 windows differ",
            "minute 1970-01-01T00:00:00",
            "ad=a",
            "1 windows expected but missing",
            "ad=c",
            "1 windows not expected",
            "ad=d",
            "1 windows reported final more than once",
            "tallies differ",
        ] {
            assert!(text.contains(needle), "{needle:?} in {text}");
        }
        // Tallies alone.
        let c = compared(vec![tallies(1)], vec![tallies(2)]);
        assert!(!c.ok());
        // An output without its tallies (its run never finished) is not equal.
        let c = compared(vec![tallies(1)], vec![]);
        assert!(!c.ok() && c.to_string().contains("tallies missing"), "{c}");
    }

    #[test]
    fn outputs_are_read_from_files_with_errors_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        let text: Vec<String> = [window(0, "a", 3, "final"), tallies(4)]
            .iter()
            .map(|l| serde_json::to_string(l).unwrap())
            .collect();
        std::fs::write(&path, text.join("\n") + "\n\n").unwrap();
        let out = Output::read(&path).unwrap();
        assert_eq!(out.tallies().unwrap().received, 4);
        std::fs::write(&path, "{\"type\":\"window\"}\nnot json\n").unwrap();
        let err = Output::read(&path).err().unwrap();
        assert!(format!("{err:#}").contains("line 1"), "{err:#}");
        assert!(Output::read(&dir.path().join("none")).is_err());
    }
}
