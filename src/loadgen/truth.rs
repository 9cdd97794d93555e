//! The ground truth: what an exactly-once aggregator must report for the traffic that was
//! emitted, computed exactly and independently of the pipeline.
//!
//! Per impression, the winner is the click with the earliest event time, ties broken by the
//! smallest click id; every other click on it is a duplicate, counted in its own row (the row of its own event
//! time and dimensions), so a duplicate's measure never moves when the winner changes.
//! Rows are keyed by (minute, ad, campaign, advertiser, publisher, country, device), with the
//! country and device the generator intended. Every emission lands in exactly one tally:
//! `emitted = counted + duplicates + late + invalid`.
//!
//! Hostile emissions ([`Hostile`]) are booked by the fate the pipeline owes them: future-dated,
//! oversized, keyless and stalled ones are `invalid` (each with its own tally too), ancient ones
//! `late` (and `ancient`), and clicks with tracking parameters are clicks (and `tracked`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::catalog::Catalog;
use super::traffic::{Click, Emission, Hostile, Kind};
use crate::event::Device;

const MINUTE_MS: i64 = 60_000;

/// The accumulator. Impressions are kept only until their last emission (see
/// [`Emission::settles`]), so memory stays bounded however long the stream.
pub struct GroundTruth {
    catalog: Catalog,
    open: HashMap<String, Winner>,
    rows: HashMap<RowKey, Counts>,
    tallies: Tallies,
    kinds: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RowKey {
    minute_ms: i64,
    ad: u32,
    publisher: u32,
    country: &'static str,
    device: Device,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    clicks: u64,
    duplicates: u64,
}

/// The best click on an open impression so far.
struct Winner {
    event_time_ms: i64,
    /// UUIDs order like their canonical lowercase text, so this is the click-id order.
    click_id: uuid::Uuid,
    row: RowKey,
    duplicates: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tallies {
    pub emitted: u64,
    /// Distinct valid impressions within the allowed lateness (= the sum of `clicks`).
    pub counted: u64,
    pub duplicates: u64,
    /// Beyond the allowed lateness.
    pub late: u64,
    /// `malformed + forged + future + oversized + keyless + stalled`: never counted, not late.
    pub invalid: u64,
    pub malformed: u64,
    /// Forged click URLs, which the redirect refuses (403) before anything is recorded.
    pub forged: u64,
    /// Hostile: event times in 2099, dead-lettered `event_time_in_future` (by the redirect's
    /// partner API over HTTP, by the aggregator otherwise).
    #[serde(default)]
    pub future: u64,
    /// Hostile: records and partner lines over 64 KiB, dead-lettered (`line_too_long` at the
    /// redirect, `invalid_user_agent` at the aggregator).
    #[serde(default)]
    pub oversized: u64,
    /// Hostile, HTTP: partner batches without a valid API key, answered 401; never received.
    #[serde(default)]
    pub keyless: u64,
    /// Hostile, HTTP: half-sent click requests on stalled connections; never received.
    #[serde(default)]
    pub stalled: u64,
    /// Hostile: days-old events, part of `late`.
    #[serde(default)]
    pub ancient: u64,
    /// Hostile, HTTP: clicks with tracking parameters, part of `counted` (or `duplicates`).
    #[serde(default)]
    pub tracked: u64,
    /// HTTP clicks whose response came in another minute than their request went out: the
    /// redirect's timestamp may put them in the next minute's row.
    pub ambiguous: u64,
}

impl Tallies {
    /// Hostile emissions of every variant.
    pub fn hostile(&self) -> u64 {
        self.future + self.oversized + self.keyless + self.stalled + self.ancient + self.tracked
    }
}

/// One window row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    /// RFC 3339, UTC.
    pub minute: String,
    pub minute_ms: i64,
    pub ad_id: String,
    pub campaign_id: String,
    pub advertiser_id: String,
    pub publisher_id: String,
    pub country: String,
    pub device: String,
    pub clicks: u64,
    pub duplicates: u64,
}

/// The truth file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TruthReport {
    /// The resolved configuration that produced the traffic.
    pub config: serde_json::Value,
    pub tallies: Tallies,
    /// Emissions by kind (click, bot, duplicate, retry, allowed_late, too_late, malformed,
    /// forged), for diagnosis.
    pub kinds: BTreeMap<String, u64>,
    /// Sorted by minute, then the dimensions.
    pub windows: Vec<Row>,
}

impl GroundTruth {
    pub fn new(catalog: Catalog) -> Self {
        Self {
            catalog,
            open: HashMap::new(),
            rows: HashMap::new(),
            tallies: Tallies::default(),
            kinds: BTreeMap::new(),
        }
    }

    /// Records an emission as delivered. Emissions about one impression must be recorded in
    /// the order they were generated.
    pub fn record(&mut self, e: &Emission) {
        self.tallies.emitted += 1;
        *self.kinds.entry(e.kind.name().to_string()).or_default() += 1;
        match e.kind {
            Kind::TooLate => self.tallies.late += 1,
            Kind::Malformed(_) => {
                self.tallies.invalid += 1;
                self.tallies.malformed += 1;
            }
            Kind::Forged(_) => {
                self.tallies.invalid += 1;
                self.tallies.forged += 1;
            }
            Kind::Hostile(Hostile::Ancient) => {
                self.tallies.late += 1;
                self.tallies.ancient += 1;
            }
            Kind::Hostile(Hostile::Tracked(_)) => {
                self.tallies.tracked += 1;
                self.click(&e.click, e.settles)
            }
            Kind::Hostile(ref h) => {
                self.tallies.invalid += 1;
                *match h {
                    Hostile::Future => &mut self.tallies.future,
                    Hostile::Oversized(_) => &mut self.tallies.oversized,
                    Hostile::Keyless { .. } => &mut self.tallies.keyless,
                    Hostile::Stalled => &mut self.tallies.stalled,
                    Hostile::Ancient | Hostile::Tracked(_) => unreachable!("matched above"),
                } += 1;
            }
            Kind::Click | Kind::Bot | Kind::Duplicate | Kind::Retry | Kind::AllowedLate => {
                self.click(&e.click, e.settles)
            }
        }
    }

    pub fn note_ambiguous(&mut self) {
        self.tallies.ambiguous += 1;
    }

    pub fn tallies(&self) -> &Tallies {
        &self.tallies
    }

    fn click(&mut self, click: &Click, settles: bool) {
        let e = &click.event;
        let click_id = uuid::Uuid::parse_str(&e.click_id).expect("generated click ids are UUIDs");
        let row = RowKey {
            minute_ms: e.event_time_ms.div_euclid(MINUTE_MS) * MINUTE_MS,
            ad: click.ad,
            publisher: click.publisher,
            country: click.country,
            device: click.device,
        };
        let winner = match self.open.get_mut(&e.impression_id) {
            Some(w) => {
                // The loser of the two is a duplicate, counted in its own row.
                let loser = if (e.event_time_ms, click_id) < (w.event_time_ms, w.click_id) {
                    w.event_time_ms = e.event_time_ms;
                    w.click_id = click_id;
                    std::mem::replace(&mut w.row, row)
                } else {
                    row
                };
                w.duplicates += 1;
                self.rows.entry(loser).or_default().duplicates += 1;
                if !settles {
                    return;
                }
                self.open.remove(&e.impression_id).expect("just found")
            }
            None => {
                let w = Winner {
                    event_time_ms: e.event_time_ms,
                    click_id,
                    row,
                    duplicates: 0,
                };
                if !settles {
                    self.open.insert(e.impression_id.clone(), w);
                    return;
                }
                w
            }
        };
        self.settle(winner);
    }

    fn settle(&mut self, w: Winner) {
        self.rows.entry(w.row).or_default().clicks += 1;
        self.tallies.counted += 1;
        self.tallies.duplicates += w.duplicates;
    }

    /// Settles what is still open and builds the report. Panics if the tallies do not add
    /// up: that is a bug here, and a truth that is wrong must never be written.
    pub fn finish(mut self, config: serde_json::Value) -> TruthReport {
        for (_, w) in std::mem::take(&mut self.open) {
            self.settle(w);
        }
        let mut windows: Vec<Row> = self
            .rows
            .iter()
            .map(|(k, c)| {
                let ad = self.catalog.ad(k.ad);
                Row {
                    minute: crate::timefmt::format_millis(k.minute_ms),
                    minute_ms: k.minute_ms,
                    ad_id: ad.ad_id.to_string(),
                    campaign_id: ad.campaign_id.to_string(),
                    advertiser_id: ad.advertiser_id.to_string(),
                    publisher_id: self.catalog.publisher_id(k.publisher).to_string(),
                    country: k.country.to_string(),
                    device: k.device.as_str().to_string(),
                    clicks: c.clicks,
                    duplicates: c.duplicates,
                }
            })
            .collect();
        windows.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        let report = TruthReport {
            config,
            tallies: self.tallies,
            kinds: self.kinds,
            windows,
        };
        if let Err(e) = report.verify() {
            panic!("ground truth is inconsistent: {e}");
        }
        report
    }

    /// Reads a truth file written by [`TruthReport::write`].
    pub fn read(path: &Path) -> anyhow::Result<TruthReport> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading truth file {}", path.display()))?;
        let report: TruthReport = serde_json::from_str(&text)
            .with_context(|| format!("parsing truth file {}", path.display()))?;
        report
            .verify()
            .map_err(|e| anyhow::anyhow!("truth file {}: {e}", path.display()))?;
        Ok(report)
    }
}

impl Row {
    fn sort_key(&self) -> (i64, &str, &str, &str, &str, &str, &str) {
        (
            self.minute_ms,
            &self.ad_id,
            &self.campaign_id,
            &self.advertiser_id,
            &self.publisher_id,
            &self.country,
            &self.device,
        )
    }
}

impl TruthReport {
    /// Checks that the tallies add up and agree with the rows.
    pub fn verify(&self) -> Result<(), String> {
        let t = &self.tallies;
        let accounted = t.counted + t.duplicates + t.late + t.invalid;
        if t.emitted != accounted {
            return Err(format!(
                "emitted {} != counted {} + duplicates {} + late {} + invalid {}",
                t.emitted, t.counted, t.duplicates, t.late, t.invalid
            ));
        }
        if t.invalid != t.malformed + t.forged + t.future + t.oversized + t.keyless + t.stalled {
            return Err(format!(
                "invalid {} != malformed {} + forged {} + future {} + oversized {} + keyless {} \
                 + stalled {}",
                t.invalid, t.malformed, t.forged, t.future, t.oversized, t.keyless, t.stalled
            ));
        }
        if t.ancient > t.late {
            return Err(format!("ancient {} > late {}", t.ancient, t.late));
        }
        let clicks: u64 = self.windows.iter().map(|r| r.clicks).sum();
        let duplicates: u64 = self.windows.iter().map(|r| r.duplicates).sum();
        if (clicks, duplicates) != (t.counted, t.duplicates) {
            return Err(format!(
                "rows hold {clicks} clicks and {duplicates} duplicates, tallies say {} and {}",
                t.counted, t.duplicates
            ));
        }
        if self.kinds.values().sum::<u64>() != t.emitted {
            return Err("kinds do not add up to emitted".into());
        }
        if !self
            .windows
            .windows(2)
            .all(|w| w[0].sort_key() < w[1].sort_key())
        {
            return Err("rows are not sorted and unique".into());
        }
        Ok(())
    }

    /// Writes pretty JSON, atomically: a reader never sees half a truth.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        let mut text = serde_json::to_string_pretty(self).expect("a report serializes");
        text.push('\n');
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::LoadgenConfig;
    use crate::loadgen::traffic::tests::{START, traffic};

    fn sample(n: u64) -> (LoadgenConfig, Vec<Emission>) {
        let cfg = LoadgenConfig {
            duplicate_share: 0.2,
            retry_share: 0.05,
            late_share: 0.02,
            ..LoadgenConfig::default()
        };
        let all = traffic(&cfg, n, 3).collect();
        (cfg, all)
    }

    fn report(cfg: &LoadgenConfig, emissions: &[Emission]) -> TruthReport {
        let mut truth = GroundTruth::new(Catalog::new(cfg.catalog_size()));
        for e in emissions {
            truth.record(e);
        }
        truth.finish(serde_json::json!({}))
    }

    #[test]
    fn tallies_add_up_and_match_the_kinds() {
        let (cfg, all) = sample(30_000);
        let r = report(&cfg, &all);
        r.verify().unwrap();
        let t = &r.tallies;
        assert_eq!(t.emitted, 30_000);
        assert_eq!(t.duplicates, r.kinds["duplicate"] + r.kinds["retry"]);
        assert_eq!(t.late, r.kinds["too_late"]);
        assert_eq!(t.malformed, r.kinds["malformed"]);
        assert_eq!(
            t.counted,
            r.kinds["click"] + r.kinds["bot"] + r.kinds["allowed_late"]
        );
        assert!(t.late > 0 && t.duplicates > 0 && t.invalid > 0);
    }

    #[test]
    fn hostile_emissions_are_booked_by_their_fate() {
        let cfg = LoadgenConfig {
            hostile: 0.2,
            ..LoadgenConfig::default()
        };
        let all: Vec<_> = crate::loadgen::traffic::tests::http_traffic(&cfg, 20_000, 3).collect();
        let r = report(&cfg, &all);
        let t = &r.tallies;
        let kind = |k: &str| r.kinds.get(k).copied().unwrap_or(0);
        assert_eq!(t.future, kind("hostile_future"));
        assert_eq!(t.oversized, kind("hostile_oversized"));
        assert_eq!(t.keyless, kind("hostile_keyless"));
        assert_eq!(t.stalled, kind("hostile_stalled"));
        assert_eq!(t.ancient, kind("hostile_ancient"));
        assert_eq!(t.tracked, kind("hostile_tracked"));
        assert_eq!(t.late, kind("too_late") + t.ancient);
        assert_eq!(
            t.counted,
            kind("click") + kind("bot") + kind("allowed_late") + t.tracked
        );
        assert!(t.future > 0 && t.oversized > 0 && t.keyless > 0 && t.stalled > 0);
        assert!(t.ancient > 0 && t.tracked > 0);
        assert_eq!(
            t.hostile(),
            (8..14).map(|i| kind(Kind::NAMES[i])).sum::<u64>()
        );
        let mut broken = r.clone();
        broken.tallies.stalled += 1;
        assert!(broken.verify().unwrap_err().contains("stalled"));
    }

    #[test]
    fn settling_early_changes_nothing() {
        let (cfg, all) = sample(10_000);
        let never_settled: Vec<_> = all
            .iter()
            .cloned()
            .map(|e| Emission {
                settles: false,
                ..e
            })
            .collect();
        assert_eq!(report(&cfg, &all), report(&cfg, &never_settled));
    }

    /// An original and a duplicate on one impression, straddling a minute boundary.
    fn pair(orig_time: i64, dup_time: i64, orig_id: &str, dup_id: &str) -> TruthReport {
        let (cfg, all) = sample(1);
        let mut orig = all[0].clone();
        orig.kind = Kind::Click;
        orig.settles = false;
        orig.click.event.event_time_ms = orig_time;
        orig.click.event.click_id = orig_id.into();
        let mut dup = orig.clone();
        dup.kind = Kind::Duplicate;
        dup.settles = true;
        dup.click.event.event_time_ms = dup_time;
        dup.click.event.click_id = dup_id.into();
        report(&cfg, &[orig, dup])
    }

    const LOW: &str = "01900000-0000-7000-8000-000000000001";
    const HIGH: &str = "01900000-0000-7000-8000-000000000002";

    #[test]
    fn the_earlier_duplicate_wins_and_carries_the_row() {
        // The later original loses: a duplicate in its own minute; the click counts in the
        // duplicate's (earlier) minute.
        let r = pair(START + 60_500, START + 59_500, LOW, HIGH);
        assert_eq!(r.windows.len(), 2);
        assert_eq!(r.windows[0].minute_ms, START);
        assert_eq!(r.windows[0].minute, "2026-04-20T12:00:00Z");
        assert_eq!((r.windows[0].clicks, r.windows[0].duplicates), (1, 0));
        assert_eq!(r.windows[1].minute_ms, START + 60_000);
        assert_eq!((r.windows[1].clicks, r.windows[1].duplicates), (0, 1));
        let r = pair(START + 59_500, START + 60_500, HIGH, LOW);
        assert_eq!((r.windows[0].minute_ms, r.windows[0].clicks), (START, 1));
        assert_eq!((r.windows[1].clicks, r.windows[1].duplicates), (0, 1));
    }

    #[test]
    fn ties_go_to_the_smaller_click_id() {
        // Same event time: the rows only differ through the winner's dimensions, so give the
        // duplicate another publisher and see whose row is counted.
        let (cfg, all) = sample(1);
        let mut orig = all[0].clone();
        orig.kind = Kind::Click;
        orig.settles = false;
        orig.click.event.click_id = HIGH.into();
        let mut dup = orig.clone();
        dup.kind = Kind::Duplicate;
        dup.settles = true;
        dup.click.publisher = (orig.click.publisher + 1) % cfg.publishers;
        dup.click.event.click_id = LOW.into();
        let counted = |r: &TruthReport| {
            let rows: Vec<_> = r.windows.iter().filter(|w| w.clicks == 1).collect();
            assert_eq!(rows.len(), 1);
            assert_eq!(
                r.windows.len(),
                2,
                "the loser is a duplicate in its own row"
            );
            rows[0].publisher_id.clone()
        };
        let r = report(&cfg, &[orig.clone(), dup.clone()]);
        assert_eq!(counted(&r), cfg_publisher(dup.click.publisher));
        // And the other way round.
        dup.click.event.click_id = "01900000-0000-7000-8000-000000000003".into();
        let r = report(&cfg, &[orig.clone(), dup]);
        assert_eq!(counted(&r), cfg_publisher(orig.click.publisher));
    }

    fn cfg_publisher(p: u32) -> String {
        format!("pub_{p}")
    }

    #[test]
    fn written_reports_read_back_and_bad_ones_are_refused() {
        let (cfg, all) = sample(2_000);
        let r = report(&cfg, &all);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truth.json");
        r.write(&path).unwrap();
        assert_eq!(GroundTruth::read(&path).unwrap(), r);
        let mut broken = r.clone();
        broken.tallies.counted += 1;
        broken.write(&path).unwrap();
        let err = GroundTruth::read(&path).unwrap_err();
        assert!(format!("{err:#}").contains("emitted"), "{err:#}");
    }
}
