//! The records the dataflows work on: a click as the dedup sees it, and the row key of every
//! window (window start, dimensions).

use serde::{Deserialize, Serialize};

/// The dimensions a window is counted by (brief §2).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dims {
    pub ad_id: String,
    pub campaign_id: String,
    pub advertiser_id: String,
    pub publisher_id: String,
    pub country: String,
    pub device: String,
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
