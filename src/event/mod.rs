//! The click event: one type, the validation every ingest path shares, and its encodings:
//! Protocol Buffers on Kafka (`proto/adclick/v1/click.proto`), JSON for people, files and
//! partner feeds, and seed 003's raw log lines (see [`observed`]).
//!
//! One struct carries both the protobuf and the serde derives so the two encodings can never
//! drift apart field by field; `tests/proto_schema.rs` checks the struct against the `.proto`
//! with `protoc` itself.

pub mod country;
pub mod dead_letter;
pub mod device;
pub mod enrich;
pub mod invalid;
pub mod observed;

use adclick_dataflows::invalid::{Reason, Reasons};
use serde::{Deserialize, Serialize};

pub use device::Device;

/// Longest accepted id (impression, ad, campaign, advertiser, publisher), in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest accepted user agent, in bytes; longer ones are truncated at ingest, rejected on decode.
pub const MAX_USER_AGENT_LEN: usize = 1024;
/// Event times outside [2000-01-01, 2100-01-01) are clock bugs or forgeries, not clicks.
pub const MIN_EVENT_TIME_MS: i64 = 946_684_800_000;
pub const MAX_EVENT_TIME_MS: i64 = 4_102_444_800_000;

/// One click, as the aggregator counts it.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickEvent {
    #[prost(string, tag = "1")]
    pub impression_id: String,
    #[prost(string, tag = "2")]
    pub click_id: String,
    #[prost(string, tag = "3")]
    pub ad_id: String,
    #[prost(string, tag = "4")]
    pub campaign_id: String,
    #[prost(string, tag = "5")]
    pub advertiser_id: String,
    #[prost(string, tag = "6")]
    pub publisher_id: String,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "7")]
    #[serde(rename = "event_time")]
    pub event_time_ms: i64,
    #[prost(string, tag = "8")]
    pub country: String,
    /// The protobuf enum value; see [`ClickEvent::device`].
    #[prost(int32, tag = "9")]
    #[serde(with = "device_json")]
    pub device: i32,
    #[prost(string, tag = "10")]
    #[serde(default)]
    pub ip_hash: String,
    #[prost(string, tag = "11")]
    #[serde(default)]
    pub user_id_hash: String,
    #[prost(string, tag = "12")]
    #[serde(default)]
    pub user_agent: String,
    #[prost(string, tag = "13")]
    pub source: String,
    /// Values of `adclick.v1.InvalidReason` ([`Reason::to_proto`]); JSON carries the names.
    /// Meaningful only when `classified`; read them with [`ClickEvent::reasons`].
    #[prost(int32, repeated, tag = "14")]
    #[serde(default, with = "reasons_json")]
    pub invalid_reasons: Vec<i32>,
    /// True when the ingest path classified the click (then no reasons means clean); false
    /// when nobody did, and the aggregator applies the user-agent rules itself.
    #[prost(bool, tag = "15")]
    #[serde(default)]
    pub classified: bool,
    /// When the impression was served, ms since the Unix epoch (signed in the click URL);
    /// 0 unknown.
    #[prost(int64, tag = "16")]
    #[serde(default, rename = "impression_time")]
    pub impression_time_ms: i64,
}

/// Which field of an event is wrong and how; the field name is what a partner needs to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {problem}")]
pub struct InvalidEvent {
    pub field: &'static str,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("missing")]
    Missing,
    #[error("longer than {max} bytes")]
    TooLong { max: usize },
    #[error("may only contain ASCII letters, digits and _ - . :")]
    BadCharacters,
    #[error("{0}")]
    BadValue(String),
}

impl InvalidEvent {
    pub fn new(field: &'static str, problem: Problem) -> Self {
        Self { field, problem }
    }
}

/// Why bytes could not become a valid event; kept with the record in the dead-letter topic.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a Protocol Buffers ClickEvent: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("not a JSON click event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not a log line: {0}")]
    RawLog(String),
    #[error("{0}")]
    Invalid(#[from] InvalidEvent),
    /// A clock far ahead (a partner's clock in 2099): counting it would move the watermark
    /// past every honest click behind it.
    #[error(
        "event_time {event_time_ms} is {ahead_ms} ms ahead of the clock reading it, more than \
         {setting} ({max_skew_ms} ms)"
    )]
    InFuture {
        event_time_ms: i64,
        ahead_ms: i64,
        max_skew_ms: u64,
        /// The setting that allows it, so the reason says what to change.
        setting: &'static str,
    },
}

impl DecodeError {
    /// A short stable label for metrics and dead-letter headers.
    pub fn code(&self) -> String {
        match self {
            DecodeError::Protobuf(_) => "protobuf".into(),
            DecodeError::Json(_) => "json".into(),
            DecodeError::RawLog(_) => "raw_log".into(),
            DecodeError::Invalid(e) => format!("invalid_{}", e.field),
            DecodeError::InFuture { .. } => "event_time_in_future".into(),
        }
    }
}

/// Rejects an event time more than `max_skew_ms` ahead of `now_ms`, the clock of whoever
/// reads it (the redirect's partner API, the aggregator's sources). One rule for every entry,
/// so no path lets a far-future time move a watermark.
pub fn check_not_future(
    event_time_ms: i64,
    now_ms: i64,
    max_skew_ms: u64,
    setting: &'static str,
) -> Result<(), DecodeError> {
    let ahead_ms = event_time_ms.saturating_sub(now_ms);
    // A skew beyond i64 (a configured u64::MAX) means no bound, not a negative one.
    if ahead_ms > i64::try_from(max_skew_ms).unwrap_or(i64::MAX) {
        return Err(DecodeError::InFuture {
            event_time_ms,
            ahead_ms,
            max_skew_ms,
            setting,
        });
    }
    Ok(())
}

impl ClickEvent {
    /// The device, or `None` for a value this build does not know (a newer writer) or 0.
    pub fn device(&self) -> Option<Device> {
        device_from_proto(self.device)
    }

    /// Checks every field; the same rules hold whichever path produced the event.
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        check_id("impression_id", &self.impression_id)?;
        if uuid::Uuid::try_parse(&self.click_id).is_err() {
            return Err(InvalidEvent::new(
                "click_id",
                if self.click_id.is_empty() {
                    Problem::Missing
                } else {
                    Problem::BadValue("not a UUID".into())
                },
            ));
        }
        check_id("ad_id", &self.ad_id)?;
        check_id("campaign_id", &self.campaign_id)?;
        check_id("advertiser_id", &self.advertiser_id)?;
        check_id("publisher_id", &self.publisher_id)?;
        check_event_time(self.event_time_ms)?;
        if !country::is_alpha2(&self.country) {
            return Err(InvalidEvent::new(
                "country",
                Problem::BadValue(format!(
                    "{:?} is not an ISO 3166-1 alpha-2 code or ZZ",
                    self.country
                )),
            ));
        }
        if self.device().is_none() {
            return Err(InvalidEvent::new(
                "device",
                Problem::BadValue(format!("unknown device value {}", self.device)),
            ));
        }
        check_hash("ip_hash", &self.ip_hash)?;
        check_hash("user_id_hash", &self.user_id_hash)?;
        if self.user_agent.len() > MAX_USER_AGENT_LEN {
            return Err(InvalidEvent::new(
                "user_agent",
                Problem::TooLong {
                    max: MAX_USER_AGENT_LEN,
                },
            ));
        }
        if self.source.is_empty() {
            return Err(InvalidEvent::new("source", Problem::Missing));
        }
        if self.source.len() > 64 {
            return Err(InvalidEvent::new("source", Problem::TooLong { max: 64 }));
        }
        Ok(())
    }

    /// The reasons the ingest path found, `None` if it did not classify the event. Values
    /// this build does not know (a newer writer's) are ignored: no reason to count under.
    pub fn reasons(&self) -> Option<Reasons> {
        self.classified.then(|| {
            Reasons::of(
                self.invalid_reasons
                    .iter()
                    .filter_map(|v| Reason::from_proto(*v)),
            )
        })
    }

    /// Records the ingest path's verdict: classified, with these reasons (none: clean).
    pub fn set_reasons(&mut self, reasons: Reasons) {
        self.classified = true;
        self.invalid_reasons = reasons.iter().map(Reason::to_proto).collect();
    }

    pub fn to_protobuf(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }

    /// Decodes and validates a Kafka record value, Protocol Buffers or JSON.
    ///
    /// JSON is recognised by its first non-blank byte `{`: no valid encoding of this schema
    /// starts with 0x7B (that would be field 15 with the deprecated group wire type).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        let event = if first == Some(&b'{') {
            match serde_json::from_slice::<ClickEvent>(bytes) {
                Ok(e) => e,
                // Protobuf can look like JSON after "blanks": 0x0A is field 1's tag, and an
                // impression id of 123 bytes makes its length byte `{`.
                Err(json) if bytes[0] != b'{' => {
                    <ClickEvent as prost::Message>::decode(bytes).map_err(|_| json)?
                }
                Err(json) => return Err(json.into()),
            }
        } else {
            <ClickEvent as prost::Message>::decode(bytes)?
        };
        event.validate()?;
        Ok(event)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a ClickEvent always serializes")
    }
}

/// Ids are opaque to us but end up in URLs, file names and dashboards, so keep them tame.
pub fn check_id(field: &'static str, value: &str) -> Result<(), InvalidEvent> {
    if value.is_empty() {
        return Err(InvalidEvent::new(field, Problem::Missing));
    }
    if value.len() > MAX_ID_LEN {
        return Err(InvalidEvent::new(
            field,
            Problem::TooLong { max: MAX_ID_LEN },
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        return Err(InvalidEvent::new(field, Problem::BadCharacters));
    }
    Ok(())
}

pub fn check_event_time(ms: i64) -> Result<(), InvalidEvent> {
    if ms == 0 {
        return Err(InvalidEvent::new("event_time", Problem::Missing));
    }
    if !(MIN_EVENT_TIME_MS..MAX_EVENT_TIME_MS).contains(&ms) {
        return Err(InvalidEvent::new(
            "event_time",
            Problem::BadValue(format!("{ms} ms is outside the years 2000 to 2099")),
        ));
    }
    Ok(())
}

fn check_hash(field: &'static str, value: &str) -> Result<(), InvalidEvent> {
    if value.is_empty()
        || (value.len() == enrich::HASH_HEX_LEN
            && value
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    {
        Ok(())
    } else {
        Err(InvalidEvent::new(
            field,
            Problem::BadValue(format!(
                "expected {} lowercase hex digits",
                enrich::HASH_HEX_LEN
            )),
        ))
    }
}

/// Protobuf numbering of [`Device`] (see `enum Device` in the .proto).
pub fn device_to_proto(device: Device) -> i32 {
    match device {
        Device::Mobile => 1,
        Device::Desktop => 2,
        Device::Tablet => 3,
        Device::Bot => 4,
        Device::Other => 5,
    }
}

pub fn device_from_proto(value: i32) -> Option<Device> {
    Some(match value {
        1 => Device::Mobile,
        2 => Device::Desktop,
        3 => Device::Tablet,
        4 => Device::Bot,
        5 => Device::Other,
        _ => return None,
    })
}

/// JSON carries the reasons by name (`["known_bot"]`), protobuf by number. Names (and
/// numbers) this build does not know are skipped on reading, as protobuf readers skip values.
mod reasons_json {
    use adclick_dataflows::invalid::Reason;
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::ser::{SerializeSeq, Serializer};

    pub fn serialize<S: Serializer>(values: &[i32], s: S) -> Result<S::Ok, S::Error> {
        let known: Vec<Reason> = values
            .iter()
            .filter_map(|v| Reason::from_proto(*v))
            .collect();
        let mut seq = s.serialize_seq(Some(known.len()))?;
        for r in known {
            seq.serialize_element(r.name())?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i32>, D::Error> {
        struct Names;
        impl<'de> Visitor<'de> for Names {
            type Value = Vec<i32>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of invalid-traffic reason names")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<i32>, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<NameOrNumber>()? {
                    let reason = match item {
                        NameOrNumber::Name(n) => Reason::from_name(&n),
                        NameOrNumber::Number(v) => {
                            i32::try_from(v).ok().and_then(Reason::from_proto)
                        }
                    };
                    // A bounded list: each known reason once, whatever the input repeats.
                    if let Some(v) = reason.map(Reason::to_proto)
                        && !out.contains(&v)
                    {
                        out.push(v);
                    }
                }
                Ok(out)
            }
        }

        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum NameOrNumber {
            Name(String),
            Number(i64),
        }

        d.deserialize_seq(Names)
    }
}

/// JSON carries the device by name ("mobile"), protobuf by number.
mod device_json {
    use super::{Device, device_from_proto, device_to_proto};
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
        match device_from_proto(*value) {
            Some(d) => s.serialize_str(d.as_str()),
            None => s.serialize_str("unspecified"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let device: Device = name.parse().map_err(D::Error::custom)?;
        Ok(device_to_proto(device))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> ClickEvent {
        ClickEvent {
            impression_id: "imp-0001".into(),
            click_id: "0192f6a4-7c1e-7b3a-9c44-6f1d2e3a4b5c".into(),
            ad_id: "ad_9".into(),
            campaign_id: "cmp_3".into(),
            advertiser_id: "adv_1".into(),
            publisher_id: "pub_7".into(),
            event_time_ms: 1_776_686_400_123,
            country: "US".into(),
            device: device_to_proto(Device::Mobile),
            ip_hash: "0123456789abcdef0123456789abcdef".into(),
            user_id_hash: String::new(),
            user_agent: "Mozilla/5.0 (iPhone)".into(),
            source: "redirect".into(),
            invalid_reasons: Vec::new(),
            classified: false,
            impression_time_ms: 0,
        }
    }

    #[test]
    fn future_times_are_judged_against_the_reading_clock_whatever_the_skew() {
        let now = 1_800_000_000_000;
        let s = "aggregator.max_future_skew_ms";
        assert!(check_not_future(now + 300_000, now, 300_000, s).is_ok());
        let err = check_not_future(now + 300_001, now, 300_000, s).unwrap_err();
        assert_eq!(err.code(), "event_time_in_future");
        assert!(err.to_string().contains(s), "{err}");
        // Far past and far future never overflow; a skew past i64 is no bound at all.
        assert!(check_not_future(i64::MIN, now, 0, s).is_ok());
        assert!(check_not_future(i64::MAX, i64::MIN, u64::MAX, s).is_ok());
        assert!(check_not_future(now + 1, now, u64::MAX, s).is_ok());
        assert!(check_not_future(i64::MAX, now, 0, s).is_err());
    }

    #[test]
    fn protobuf_and_json_round_trip() {
        let e = sample();
        e.validate().unwrap();
        assert_eq!(ClickEvent::decode(&e.to_protobuf()).unwrap(), e);
        let json = e.to_json();
        assert!(json.contains(r#""device":"mobile""#), "{json}");
        assert!(json.contains(r#""event_time":1776686400123"#), "{json}");
        assert_eq!(ClickEvent::decode(json.as_bytes()).unwrap(), e);
    }

    #[test]
    fn every_device_maps_both_ways() {
        for d in Device::ALL {
            assert_eq!(device_from_proto(device_to_proto(d)), Some(d));
        }
        assert_eq!(device_from_proto(0), None);
    }

    #[test]
    fn validation_names_the_field() {
        type Breaker = fn(&mut ClickEvent);
        let cases: Vec<(Breaker, &str)> = vec![
            (|e| e.impression_id.clear(), "impression_id"),
            (|e| e.click_id = "nope".into(), "click_id"),
            (|e| e.ad_id = "ad 9".into(), "ad_id"),
            (|e| e.campaign_id = "c".repeat(129), "campaign_id"),
            (|e| e.advertiser_id.clear(), "advertiser_id"),
            (|e| e.publisher_id = "p/1".into(), "publisher_id"),
            (|e| e.event_time_ms = 0, "event_time"),
            (|e| e.event_time_ms = 5_000_000_000_000, "event_time"),
            (|e| e.country = "XX".into(), "country"),
            (|e| e.device = 0, "device"),
            (|e| e.ip_hash = "ABC".into(), "ip_hash"),
            (|e| e.user_id_hash = "0123".into(), "user_id_hash"),
            (|e| e.user_agent = "x".repeat(2000), "user_agent"),
            (|e| e.source.clear(), "source"),
        ];
        for (break_it, field) in cases {
            let mut e = sample();
            break_it(&mut e);
            let err = e.validate().unwrap_err();
            assert_eq!(err.field, field, "{err}");
            let decoded = ClickEvent::decode(&e.to_protobuf()).unwrap_err();
            assert_eq!(decoded.code(), format!("invalid_{field}"));
        }
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        for bytes in [&b"\xff\xff\xff"[..], b"{not json", b"{}", b"\x08"] {
            assert!(ClickEvent::decode(bytes).is_err());
        }
        let unknown = r#"{"impression_id":"i","surprise":1}"#;
        let err = ClickEvent::decode(unknown.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("surprise"), "{err}");
    }

    /// Found by tests/properties.rs: a protobuf event whose impression id is 123 bytes long
    /// starts 0x0A 0x7B (field 1's tag, then its length, `{`) and was read as broken JSON.
    #[test]
    fn protobuf_that_starts_like_json_after_a_blank_is_protobuf() {
        let mut e = sample();
        e.impression_id = "i".repeat(123);
        let bytes = e.to_protobuf();
        assert_eq!(&bytes[..2], b"\n{");
        assert_eq!(ClickEvent::decode(&bytes).unwrap(), e);
        // JSON with leading blanks is still JSON, and broken JSON still says so.
        assert_eq!(
            ClickEvent::decode(format!("\n {}", e.to_json()).as_bytes()).unwrap(),
            e
        );
        assert_eq!(ClickEvent::decode(b"\n{\"a\"").unwrap_err().code(), "json");
    }

    #[test]
    fn unknown_protobuf_fields_are_ignored() {
        // A newer writer adds field 20 (string); this reader must still accept the event.
        let mut bytes = sample().to_protobuf();
        bytes.extend_from_slice(&[0xa2, 0x01, 0x02, b'h', b'i']);
        assert_eq!(ClickEvent::decode(&bytes).unwrap(), sample());
    }
}
