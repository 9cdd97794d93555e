//! adclick's dataflows: small functions over timely streams and differential collections,
//! free of I/O so that tests drive them with plain data. Sources' reading, sinks and servers
//! live in the `adclick` crate.
//!
//! ```text
//! source events ─┬─ on time ─▶ dedup ─▶ minute rows ─┬─▶ hour rows, day rows (rollup)
//!                ├─ late ───▶ (late sink)           └─▶ top-N per window length, country
//!                └─ rejected ▶ (dead-letter sink)
//! ```

pub mod click;
pub mod dedup;
pub mod report;
pub mod rollup;
pub mod source;
pub mod time;
pub mod topn;
pub mod watermark;

use differential_dataflow::VecCollection;
use timely::dataflow::Stream;
use timely::dataflow::operators::vec::Map;

use click::{Click, Measures, Row};
use rollup::{Retention, rollup};
use source::{Rejected, SourceEvent};
use time::{DAY_MS, HOUR_MS, MINUTE_MS};
use topn::{RankKey, Ranking, TopNConfig, top_n};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregateConfig {
    /// Event time over which duplicates of an impression are recognised (default 24 h).
    pub dedup_horizon_ms: u64,
    /// Must equal the sources' allowed lateness: it says when rankings are final.
    pub allowed_lateness_ms: u64,
    pub retention: Retention,
    pub top: TopNConfig,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        Self {
            dedup_horizon_ms: 24 * HOUR_MS,
            allowed_lateness_ms: watermark::TimeConfig::default().allowed_lateness_ms,
            retention: Retention::default(),
            top: TopNConfig::default(),
        }
    }
}

/// What the aggregation produces; sinks and the query server take it from here.
pub struct Aggregates<'s> {
    pub minute: VecCollection<'s, u64, Row, Measures>,
    pub hour: VecCollection<'s, u64, Row, Measures>,
    pub day: VecCollection<'s, u64, Row, Measures>,
    pub top: VecCollection<'s, u64, (RankKey, Ranking), isize>,
    pub late: Stream<'s, u64, Vec<Click>>,
    pub rejected: Stream<'s, u64, Vec<Rejected>>,
}

/// The whole aggregation, as a function of the sources' events.
pub fn aggregate<'s>(
    events: Stream<'s, u64, Vec<SourceEvent>>,
    cfg: &AggregateConfig,
) -> Aggregates<'s> {
    let on_time = events.clone().flat_map(|e| match e {
        SourceEvent::OnTime(c) => Some(c),
        _ => None,
    });
    let late = events.clone().flat_map(|e| match e {
        SourceEvent::Late(c) => Some(c),
        _ => None,
    });
    let rejected = events.flat_map(|e| match e {
        SourceEvent::Rejected(r) => Some(r),
        _ => None,
    });
    // Local pre-aggregation before rows are exchanged: a hot ad's clicks are summed on every
    // worker first, so no single worker receives them one by one.
    let deduped = dedup::dedup(on_time, cfg.dedup_horizon_ms).consolidate_stream();
    let r = cfg.retention;
    let minute = rollup(deduped.clone(), MINUTE_MS, r.minute_ms);
    let hour = rollup(deduped.clone(), HOUR_MS, r.hour_ms);
    let day = rollup(deduped.clone(), DAY_MS, r.day_ms);
    let top = top_n(deduped, &cfg.top, cfg.allowed_lateness_ms, r.minute_ms);
    Aggregates {
        minute,
        hour,
        day,
        top,
        late,
        rejected,
    }
}
