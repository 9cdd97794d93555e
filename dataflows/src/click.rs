//! The records the dataflows work on: a click as a reader produces it ([`RawClick`], texts),
//! the compact click the dataflow counts ([`Click`], fixed-size fingerprints), and the row key
//! of every window (window start, dimensions).
//!
//! Every stage copies, hashes, compares and exchanges rows, so rows are fixed-size and `Copy`:
//! each dimension value travels as its 64-bit fingerprint ([`Sym`]) and its text is announced
//! once per source in the [`crate::names`] dictionary, which the edges (writers, query server)
//! use to turn fingerprints back into texts.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

use crate::invalid::Reasons;

/// A dimension value, by the 64-bit fingerprint of its text (xxh3, unseeded, so every process
/// of a cluster computes the same one). Two texts with one fingerprint are detected by the
/// dictionary; among millions of distinct values the chance is below 10⁻⁶.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Sym(pub u64);

impl Sym {
    pub fn of(text: &str) -> Self {
        Sym(xxh3_64(text.as_bytes()))
    }
}

/// The dimensions a window is counted by (brief §2), as fingerprints.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Dims {
    pub ad_id: Sym,
    pub campaign_id: Sym,
    pub advertiser_id: Sym,
    pub publisher_id: Sym,
    pub country: Sym,
    pub device: Sym,
}

/// The dimension texts of a click as read.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Labels {
    pub ad_id: String,
    pub campaign_id: String,
    pub advertiser_id: String,
    pub publisher_id: String,
    pub country: String,
    pub device: String,
}

impl Labels {
    /// The texts in `Dims` field order, for announcing them to the dictionary.
    pub fn texts(&self) -> [&str; 6] {
        [
            &self.ad_id,
            &self.campaign_id,
            &self.advertiser_id,
            &self.publisher_id,
            &self.country,
            &self.device,
        ]
    }

    pub fn dims(&self) -> Dims {
        Dims {
            ad_id: Sym::of(&self.ad_id),
            campaign_id: Sym::of(&self.campaign_id),
            advertiser_id: Sym::of(&self.advertiser_id),
            publisher_id: Sym::of(&self.publisher_id),
            country: Sym::of(&self.country),
            device: Sym::of(&self.device),
        }
    }
}

/// One valid click as a reader produced it. Late clicks leave the dataflow in this form, for
/// the late topic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RawClick {
    pub impression_id: String,
    pub click_id: String,
    /// Event time, ms since the epoch.
    pub event_time: u64,
    pub labels: Labels,
    #[serde(default)]
    pub traits: Traits,
    /// Where it was read: a late click's identity in the late topic.
    #[serde(default)]
    pub origin: Origin,
}

/// Where a record was read: its Kafka partition and offset, which name it uniquely within
/// its topic however often it is read again (zero for sources without offsets).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Origin {
    pub partition: i32,
    pub offset: u64,
}

/// What the invalid-traffic rules judge a click by, beyond its dimensions.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Traits {
    /// Keyed hashes as the event carries them; empty when the ingest path did not see one.
    pub ip_hash: String,
    pub user_id_hash: String,
    /// When the impression was served (ms since the epoch, from the signed token); 0 unknown.
    pub impression_time: u64,
    /// The reasons the edge found (or, for events it never classified, the user-agent rules).
    pub reasons: Reasons,
}

/// One valid, on-time click, compact: what dedup and the windows see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Click {
    /// 128-bit fingerprint of the impression id: the dedup key. A collision would merge two
    /// impressions; at 10⁹ impressions per horizon its chance is about 10⁻²¹.
    pub impression: u128,
    /// 54-bit fingerprint of the click id, the tie-breaker between clicks of one impression
    /// with the same event time (54 bits so that dedup packs it beside the event time).
    pub click: u64,
    /// Event time, ms since the epoch. The timely time it travels at may be later (a late but
    /// allowed click travels at its source's watermark); its window is always this one's.
    pub event_time: u64,
    pub dims: Dims,
    /// The click id's 128-bit UUID value: the flood rules order clicks by (event time, click
    /// id), and for UUIDs in canonical lowercase text this is the text's order.
    pub click_id: u128,
    /// Fingerprints of the keyed IP and user hashes; `None` when the event had none.
    pub ip: Option<Sym>,
    pub user: Option<Sym>,
    /// When its impression was served, ms since the epoch; 0 unknown.
    pub impression_time: u64,
    /// Reasons found so far: the edge's, then the dataflow's rules add theirs.
    pub reasons: Reasons,
}

impl Click {
    pub fn of(raw: &RawClick) -> Self {
        let t = &raw.traits;
        let sym = |s: &str| (!s.is_empty()).then(|| Sym::of(s));
        Click {
            impression: xxh3_128(raw.impression_id.as_bytes()),
            click: xxh3_64(raw.click_id.as_bytes()) >> 10,
            event_time: raw.event_time,
            dims: raw.labels.dims(),
            click_id: uuid_value(&raw.click_id),
            ip: sym(&t.ip_hash),
            user: sym(&t.user_id_hash),
            impression_time: t.impression_time,
            reasons: t.reasons,
        }
    }

    /// The order that picks the winner among an impression's clicks: earliest event time, then
    /// smallest click fingerprint. It depends only on the clicks, never on when they arrived.
    pub fn rank(&self) -> (u64, u64) {
        (self.event_time, self.click)
    }
}

/// The 128-bit value of a UUID in any of its text forms (hyphenated, simple, braced, URN).
/// Ingest validates click ids as UUIDs; anything else (never counted today) falls back to a
/// fingerprint, so the order stays total.
pub fn uuid_value(text: &str) -> u128 {
    let core = text.strip_prefix("urn:uuid:").unwrap_or(text);
    let core = core.trim_start_matches('{').trim_end_matches('}');
    let mut value: u128 = 0;
    let mut digits = 0;
    for c in core.bytes() {
        if c == b'-' {
            continue;
        }
        match (c as char).to_digit(16) {
            Some(d) if digits < 32 => {
                value = value << 4 | u128::from(d);
                digits += 1;
            }
            _ => return xxh3_128(text.as_bytes()),
        }
    }
    if digits == 32 {
        value
    } else {
        xxh3_128(text.as_bytes())
    }
}

/// A window row: (window start in ms, dimensions).
pub type Row = (u64, Dims);

pub use crate::measures::Measures;
