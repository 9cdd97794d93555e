//! The records the dataflows work on: a click as the dedup sees it, and the row key of every
//! window (window start, dimensions).

use serde::{Deserialize, Serialize};

/// A dimension value. Rows are copied at every stage (rollups, retention, reports), so values
/// are shared, not duplicated: a copy is a reference count, not an allocation.
pub type Text = std::sync::Arc<str>;

/// The dimensions a window is counted by (brief §2).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dims {
    pub ad_id: Text,
    pub campaign_id: Text,
    pub advertiser_id: Text,
    pub publisher_id: Text,
    pub country: Text,
    pub device: Text,
}

/// One valid, on-time click.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Click {
    pub impression_id: String,
    pub click_id: String,
    /// Event time, ms since the epoch. The timely time it travels at may be later (a late but
    /// allowed click travels at its source's watermark); its window is always this one's.
    pub event_time: u64,
    pub dims: Dims,
}

impl Click {
    /// The order that picks the winner among an impression's clicks: earliest event time, then
    /// smallest click id. It depends only on the clicks, never on when they arrived.
    pub fn rank(&self) -> (u64, &str) {
        (self.event_time, &self.click_id)
    }
}

/// A window row: (window start in ms, dimensions).
pub type Row = (u64, Dims);

/// The measures of a row, as a differential difference: (clicks, duplicates). Accumulating a
/// row's updates gives its measures; corrections are just more updates.
pub type Measures = (i64, i64);
