//! What an emission looks like on each wire: a click-event record (JSON or Protocol Buffers,
//! for the clicks topic and NDJSON files) or a partner NDJSON line (for `POST
//! /api/v1/events`). Malformed emissions are rendered here too, so each flaw means the same
//! thing in every format.

use serde_json::{Map, Value, json};

use super::traffic::{Emission, Flaw, Hostile, Kind};
use crate::event::ClickEvent;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One line of text; garbage is rendered as text too.
    Json,
    Protobuf,
}

/// The record to write to the clicks topic or a file. Panics on a forged emission and the
/// HTTP-only hostile ones: they are requests, which only the HTTP output sends.
pub fn event_record(e: &Emission, format: Format) -> Vec<u8> {
    let flaw = match &e.kind {
        Kind::Forged(_) => panic!("forged clicks are click URLs, not records"),
        Kind::Hostile(h @ (Hostile::Tracked(_) | Hostile::Keyless { .. } | Hostile::Stalled)) => {
            panic!("{h:?} is an HTTP request, not a record")
        }
        Kind::Malformed(flaw) => Some(flaw),
        _ => None,
    };
    let event = oversized(flawed(&e.click.event, flaw), &e.kind);
    let whole = || match (format, flaw) {
        (Format::Json, Some(Flaw::Missing(field))) => {
            let mut obj = object(&event);
            obj.remove(*field);
            Value::Object(obj).to_string().into_bytes()
        }
        (Format::Json, _) => event.to_json().into_bytes(),
        (Format::Protobuf, _) => event.to_protobuf(),
    };
    match flaw {
        Some(Flaw::Garbage(bytes)) => match format {
            Format::Json => garbage_text(bytes).into_bytes(),
            Format::Protobuf => bytes.clone(),
        },
        Some(Flaw::Truncated(fraction)) => truncate(whole(), *fraction),
        _ => whole(),
    }
}

/// The partner NDJSON line (without newline) for a click, as an ad network would report it:
/// raw IP and user id, the country as a code, the time as epoch milliseconds.
pub fn partner_line(e: &Emission) -> String {
    let flaw = match &e.kind {
        Kind::Malformed(flaw) => Some(flaw),
        _ => None,
    };
    let click = &e.click;
    let event = oversized(flawed(&click.event, flaw), &e.kind);
    let mut obj = match json!({
        "impression_id": event.impression_id,
        "ad_id": event.ad_id,
        "campaign_id": event.campaign_id,
        "advertiser_id": event.advertiser_id,
        "publisher_id": event.publisher_id,
        "click_timestamp": event.event_time_ms,
        "ip": click.ip,
        "country": event.country,
        "user_agent": event.user_agent,
    }) {
        Value::Object(obj) => obj,
        _ => unreachable!("a json! object"),
    };
    if let Some(user) = &click.user_id {
        obj.insert("user_id".into(), user.clone().into());
    }
    match flaw {
        Some(Flaw::Missing(field)) => {
            obj.remove(if *field == "event_time" {
                "click_timestamp"
            } else {
                field
            });
        }
        // Partners do not send click ids; one is an unknown field, which is refused.
        Some(Flaw::BadClickId) => {
            obj.insert("click_id".into(), event.click_id.into());
        }
        Some(Flaw::Garbage(bytes)) => return garbage_text(bytes),
        _ => {}
    }
    let line = Value::Object(obj).to_string();
    match flaw {
        Some(Flaw::Truncated(fraction)) => {
            String::from_utf8(truncate(line.into_bytes(), *fraction)).expect("ASCII JSON")
        }
        _ => line,
    }
}

/// The event with the flaw applied to its fields. A missing field is emptied here; text
/// formats then leave its key out altogether.
fn flawed(event: &ClickEvent, flaw: Option<&Flaw>) -> ClickEvent {
    let mut e = event.clone();
    match flaw {
        Some(Flaw::Missing(field)) => match *field {
            "impression_id" => e.impression_id.clear(),
            "ad_id" => e.ad_id.clear(),
            "campaign_id" => e.campaign_id.clear(),
            "advertiser_id" => e.advertiser_id.clear(),
            "publisher_id" => e.publisher_id.clear(),
            "event_time" => e.event_time_ms = 0,
            other => panic!("no rule to leave out {other}"),
        },
        Some(Flaw::BadCountry) => e.country = "XX".into(),
        Some(Flaw::ZeroTime) => e.event_time_ms = 0,
        Some(Flaw::BadAdId) => e.ad_id = e.ad_id.replace('_', " "),
        Some(Flaw::BadClickId) => e.click_id = format!("click-{}", e.impression_id),
        Some(Flaw::Garbage(_) | Flaw::Truncated(_)) | None => {}
    }
    e
}

/// An oversized emission's event: its user agent padded to the emission's size, so the
/// record (or line) is over 64 KiB and otherwise valid.
fn oversized(mut event: ClickEvent, kind: &Kind) -> ClickEvent {
    if let Kind::Hostile(Hostile::Oversized(bytes)) = kind {
        let pad = bytes.saturating_sub(event.user_agent.len() + 1);
        event.user_agent.push(' ');
        event.user_agent.extend(std::iter::repeat_n('A', pad));
    }
    event
}

fn object(event: &ClickEvent) -> Map<String, Value> {
    match serde_json::to_value(event).expect("a ClickEvent always serializes") {
        Value::Object(obj) => obj,
        _ => unreachable!("a struct serializes to an object"),
    }
}

/// Garbage in a text format: printable, one line, and no encoding of anything (its first
/// byte, `g`, is not a valid Protocol Buffers tag either).
fn garbage_text(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("garbage:{hex}")
}

/// The first `fraction` of the record (at least one byte, never all of it).
fn truncate(mut bytes: Vec<u8>, fraction: f64) -> Vec<u8> {
    let keep = ((bytes.len() as f64 * fraction) as usize).clamp(1, bytes.len() - 1);
    bytes.truncate(keep);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::enrich::Enricher;
    use crate::event::observed::parse_partner_json;
    use crate::loadgen::LoadgenConfig;
    use crate::loadgen::traffic::tests::traffic;

    fn emissions() -> Vec<Emission> {
        let cfg = LoadgenConfig {
            malformed_share: 0.3,
            late_share: 0.05,
            allowed_late_share: 0.05,
            ..LoadgenConfig::default()
        };
        traffic(&cfg, 20_000, 2).collect()
    }

    #[test]
    fn records_decode_exactly_unless_malformed() {
        let mut flaws = std::collections::HashSet::new();
        for e in emissions() {
            for format in [Format::Json, Format::Protobuf] {
                let bytes = event_record(&e, format);
                let decoded = ClickEvent::decode(&bytes);
                if let Kind::Malformed(flaw) = &e.kind {
                    assert!(decoded.is_err(), "{flaw:?} {format:?} decoded");
                    flaws.insert(std::mem::discriminant(flaw));
                } else {
                    assert_eq!(decoded.unwrap(), e.click.event);
                }
                if format == Format::Json {
                    let line = String::from_utf8(bytes).expect("text");
                    assert!(!line.contains('\n') && !line.trim().is_empty());
                }
            }
        }
        assert_eq!(flaws.len(), 7, "every kind of flaw was exercised");
    }

    #[test]
    fn partner_lines_enrich_to_the_same_event_unless_malformed() {
        let enricher = Enricher::new("test-salt");
        for e in emissions() {
            let line = partner_line(&e);
            assert!(!line.contains('\n'));
            let result =
                parse_partner_json(&line).and_then(|obs| Ok(enricher.enrich(obs, "partner:x")?));
            match &e.kind {
                Kind::Malformed(flaw) => assert!(result.is_err(), "{flaw:?}: {line}"),
                _ => {
                    let got = result.unwrap();
                    let want = ClickEvent {
                        click_id: got.click_id.clone(),
                        source: "partner:x".into(),
                        ..e.click.event.clone()
                    };
                    assert_eq!(got, want);
                }
            }
        }
    }

    #[test]
    fn oversized_records_and_lines_are_over_64_kib_and_otherwise_valid() {
        let mut e = emissions().remove(0);
        e.kind = Kind::Hostile(Hostile::Oversized(70_000));
        for format in [Format::Json, Format::Protobuf] {
            let bytes = event_record(&e, format);
            assert!(bytes.len() > 64 << 10);
            let err = ClickEvent::decode(&bytes).unwrap_err();
            assert_eq!(err.code(), "invalid_user_agent", "{format:?}");
        }
        let line = partner_line(&e);
        assert!(line.len() > 64 << 10 && !line.contains('\n'));
        // Within the line limit, it would be a valid partner line (the user agent is cut).
        parse_partner_json(&line).unwrap();
        e.kind = Kind::Hostile(Hostile::Future);
        assert_eq!(
            ClickEvent::decode(&event_record(&e, Format::Protobuf)).unwrap(),
            e.click.event
        );
    }

    #[test]
    fn missing_means_absent_in_text() {
        let mut e = emissions().remove(0);
        e.kind = Kind::Malformed(Flaw::Missing("event_time"));
        let json = String::from_utf8(event_record(&e, Format::Json)).unwrap();
        assert!(!json.contains("event_time"), "{json}");
        assert!(!partner_line(&e).contains("click_timestamp"));
        e.kind = Kind::Malformed(Flaw::Missing("ad_id"));
        assert!(!partner_line(&e).contains("\"ad_id\""));
    }
}
