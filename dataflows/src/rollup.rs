//! Minute rows rolled up to hours and days, each with its own retention. Retention is applied
//! where the rows are kept, in their arrangements ([`crate::retire::arrange_rows`]): once the
//! frontier passes a window's end plus its retention, its rows are retracted and compacted
//! away, so state stays bounded by the retention.

use differential_dataflow::VecCollection;

use crate::click::{Measures, Row};
use crate::time::window_start;

/// How long rows of each granularity stay (seed 000's TTL policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub minute_ms: u64,
    pub hour_ms: u64,
    pub day_ms: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            minute_ms: 48 * crate::time::HOUR_MS,
            hour_ms: 90 * crate::time::DAY_MS,
            day_ms: 365 * crate::time::DAY_MS,
        }
    }
}

/// Rows of `len_ms` windows from minute rows.
pub fn rollup<'s>(
    minute_rows: VecCollection<'s, u64, Row, Measures>,
    len_ms: u64,
) -> VecCollection<'s, u64, Row, Measures> {
    minute_rows.map(move |(start, dims)| (window_start(start, len_ms), dims))
}
