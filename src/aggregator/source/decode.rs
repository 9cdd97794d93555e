//! From input bytes to what the dataflow counts: a [`Click`] or a [`Rejected`] record.

use adclick_dataflows::click::{Labels, Origin, RawClick, Traits};
use adclick_dataflows::invalid::Reasons;
use adclick_dataflows::source::{Record, Rejected};

use crate::event::enrich::Enricher;
use crate::event::invalid::user_agent_reasons;
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

/// The dataflow's view of a valid event. Its invalid-traffic reasons are the edge's when the
/// edge classified it (values this build does not know are ignored), else the user-agent
/// rules applied here (events of older writers); the flood and timing rules come later, in
/// the dataflow.
pub fn to_click(e: ClickEvent) -> RawClick {
    let device = e.device().map_or("other", |d| d.as_str());
    let reasons = e
        .reasons()
        .unwrap_or_else(|| user_agent_reasons(&e.user_agent));
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
        traits: Traits {
            ip_hash: e.ip_hash,
            user_id_hash: e.user_id_hash,
            // Negative is no time at all: unknown.
            impression_time: u64::try_from(e.impression_time_ms).unwrap_or(0),
            reasons,
        },
        origin: Origin::default(),
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
                .map(|mut e| {
                    // Log lines carry no user agent by format, not because the client sent
                    // none: they are classified here, with nothing to judge them by.
                    e.set_reasons(Reasons::NONE);
                    e
                })
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

#[cfg(test)]
mod tests {
    use adclick_dataflows::invalid::Reason;

    use super::*;

    const BOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

    fn event() -> ClickEvent {
        crate::event::tests::sample()
    }

    #[test]
    fn traits_come_from_the_event() {
        let mut e = event();
        e.user_id_hash = "ffeeddccbbaa99887766554433221100".into();
        e.impression_time_ms = 1_776_686_399_500;
        let c = to_click(e.clone());
        assert_eq!(c.traits.ip_hash, e.ip_hash);
        assert_eq!(c.traits.user_id_hash, e.user_id_hash);
        assert_eq!(c.traits.impression_time, 1_776_686_399_500);
        // A negative time is no time: unknown.
        e.impression_time_ms = -5;
        assert_eq!(to_click(e).traits.impression_time, 0);
    }

    #[test]
    fn the_edges_verdict_wins_when_it_classified() {
        // Classified clean: a bot's user agent does not overrule the edge (its own lists).
        let mut e = event();
        e.user_agent = BOT.into();
        e.set_reasons(Reasons::NONE);
        assert_eq!(to_click(e.clone()).traits.reasons, Reasons::NONE);
        // Classified with reasons, one from a newer writer: the known ones count.
        e.invalid_reasons = vec![99, Reason::Datacenter.to_proto(), 0];
        assert_eq!(
            to_click(e).traits.reasons,
            Reasons::of([Reason::Datacenter])
        );
    }

    #[test]
    fn unclassified_events_get_the_user_agent_rules() {
        let mut e = event();
        assert!(!e.classified);
        assert_eq!(to_click(e.clone()).traits.reasons, Reasons::NONE);
        e.user_agent = BOT.into();
        assert_eq!(
            to_click(e.clone()).traits.reasons,
            Reasons::of([Reason::KnownBot])
        );
        e.user_agent = "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/124.0".into();
        assert_eq!(
            to_click(e.clone()).traits.reasons,
            Reasons::of([Reason::Headless])
        );
        e.user_agent.clear();
        assert_eq!(
            to_click(e.clone()).traits.reasons,
            Reasons::of([Reason::NoUserAgent])
        );
        // Reasons without `classified` (a writer that got it wrong) are not trusted.
        e.user_agent = "Mozilla/5.0 (iPhone)".into();
        e.invalid_reasons = vec![Reason::KnownBot.to_proto()];
        assert_eq!(to_click(e).traits.reasons, Reasons::NONE);
    }

    #[test]
    fn records_and_file_lines_decode_the_same_way() {
        let bound = FutureBound {
            now_ms: crate::event::MAX_EVENT_TIME_MS,
            max_skew_ms: 0,
        };
        let mut e = event();
        e.user_agent = BOT.into();
        let want = to_click(e.clone());
        assert_eq!(want.traits.reasons, Reasons::of([Reason::KnownBot]));
        let Record::Click(c) = kafka_record(b"k", &e.to_protobuf(), bound, String::new) else {
            panic!("a click");
        };
        assert_eq!(c, want);
        let enricher = Enricher::new("s");
        let Some(Record::Click(c)) = file_line(&e.to_json(), &enricher, bound, String::new) else {
            panic!("a click");
        };
        assert_eq!(c, want);
        // Seed-003 log lines carry no user agent by format: not `no_user_agent`.
        let line = "ad001,2021-01-01 00:00:01,user1,207.148.22.22,USA";
        let Some(Record::Click(c)) = file_line(line, &enricher, bound, String::new) else {
            panic!("a click");
        };
        assert_eq!(c.traits.reasons, Reasons::NONE);
        assert!(!c.traits.ip_hash.is_empty() && !c.traits.user_id_hash.is_empty());
    }
}
