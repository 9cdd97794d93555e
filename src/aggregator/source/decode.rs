//! From input bytes to what the dataflow counts: a [`Click`] or a [`Rejected`] record.

use adclick_dataflows::click::{Labels, RawClick};
use adclick_dataflows::source::{Record, Rejected};

use crate::event::enrich::Enricher;
use crate::event::observed::parse_log_line;
use crate::event::{ClickEvent, DecodeError, check_not_future};

/// How far ahead of the reading clock an event time may be (`aggregator.max_future_skew_ms`).
/// A reader takes `now` once per poll: the bound is the reading time, so historical files
/// are unaffected and a far-future record is dead-lettered, never counted.
#[derive(Clone, Copy, Debug)]
pub struct FutureBound {
    pub now_ms: i64,
    pub max_skew_ms: u64,
}

impl FutureBound {
    /// The bound at this moment.
    pub fn now(max_skew_ms: u64) -> Self {
        Self {
            now_ms: crate::timefmt::now_millis(),
            max_skew_ms,
        }
    }

    fn check(&self, e: ClickEvent) -> Result<ClickEvent, DecodeError> {
        check_not_future(
            e.event_time_ms,
            self.now_ms,
            self.max_skew_ms,
            "aggregator.max_future_skew_ms",
        )
        .map(|()| e)
    }
}

/// The dataflow's view of a valid event.
pub fn to_click(e: ClickEvent) -> RawClick {
    let device = e.device().map_or("other", |d| d.as_str());
    RawClick {
        event_time: e.event_time_ms as u64,
        labels: Labels {
            ad_id: e.ad_id,
            campaign_id: e.campaign_id,
            advertiser_id: e.advertiser_id,
            publisher_id: e.publisher_id,
            country: e.country,
            device: device.into(),
        },
        impression_id: e.impression_id,
        click_id: e.click_id,
    }
}

pub fn rejected(err: &DecodeError, origin: String, key: &[u8], payload: &[u8]) -> Record {
    Record::Rejected(Rejected {
        code: err.code(),
        reason: err.to_string(),
        origin,
        key: key.to_vec(),
        payload: payload.to_vec(),
    })
}

/// A Kafka record value: Protocol Buffers or JSON.
pub fn kafka_record(
    key: &[u8],
    value: &[u8],
    bound: FutureBound,
    origin: impl FnOnce() -> String,
) -> Record {
    match ClickEvent::decode(value).and_then(|e| bound.check(e)) {
        Ok(e) => Record::Click(to_click(e)),
        Err(err) => rejected(&err, origin(), key, value),
    }
}

/// A line of an input file: a JSON event, or a seed-003 log line (enriched here, since logs
/// carry raw IPs and user ids). `None` for blank lines, comments and headers.
pub fn file_line(
    line: &str,
    enricher: &Enricher,
    bound: FutureBound,
    origin: impl FnOnce() -> String,
) -> Option<Record> {
    let trimmed = line.trim();
    if trimmed.starts_with('{') {
        return Some(kafka_record(b"", trimmed.as_bytes(), bound, origin));
    }
    match parse_log_line(line) {
        Ok(None) => None,
        Ok(Some(obs)) => Some(
            match enricher
                .enrich(obs, "log")
                .map_err(DecodeError::from)
                .and_then(|e| bound.check(e))
            {
                Ok(e) => Record::Click(to_click(e)),
                Err(err) => rejected(&err, origin(), b"", line.as_bytes()),
            },
        ),
        Err(err) => Some(rejected(&err, origin(), b"", line.as_bytes())),
    }
}
