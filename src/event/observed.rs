//! The two inbound formats that carry raw observations rather than finished events: partner
//! records (one JSON object per NDJSON line) and seed 003's log lines
//! (`ad_id,click_timestamp,user_id,ip,country`). Both become [`Observed`] for the [`Enricher`].
//!
//! [`Enricher`]: super::enrich::Enricher

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::DecodeError;
use super::enrich::Observed;
use crate::timefmt;

/// Log lines name no campaign, advertiser or publisher; they count under this id.
pub const UNKNOWN_DIMENSION: &str = "unknown";

/// A partner's click. Unknown fields are rejected so that a misspelt field is an error the
/// partner sees, not a dimension silently missing from their bill.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartnerRecord {
    impression_id: String,
    ad_id: String,
    campaign_id: String,
    advertiser_id: String,
    publisher_id: String,
    click_timestamp: Timestamp,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    country: Option<String>,
    #[serde(default)]
    user_agent: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Timestamp {
    Millis(i64),
    Text(String),
}

/// Parses one partner NDJSON line.
pub fn parse_partner_json(line: &str) -> Result<Observed, DecodeError> {
    let r: PartnerRecord = serde_json::from_str(line)?;
    let event_time_ms = match r.click_timestamp {
        Timestamp::Millis(ms) => ms,
        Timestamp::Text(t) => timefmt::parse_millis(&t).map_err(|reason| {
            super::InvalidEvent::new("click_timestamp", super::Problem::BadValue(reason))
        })?,
    };
    Ok(Observed {
        impression_id: r.impression_id,
        ad_id: r.ad_id,
        campaign_id: r.campaign_id,
        advertiser_id: r.advertiser_id,
        publisher_id: r.publisher_id,
        event_time_ms,
        country: r.country,
        ip: r.ip,
        user_id: r.user_id,
        user_agent: r.user_agent,
    })
}

/// Parses one seed-003 log line, comma- or tab-separated. Returns `Ok(None)` for blank lines,
/// `#` comments and the header line.
///
/// Log lines carry no impression id, so one is derived from the whole line: the same line
/// logged twice (a retried shipment) is one click, which is what dedup is for.
pub fn parse_log_line(line: &str) -> Result<Option<Observed>, DecodeError> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let sep = if line.contains('\t') { '\t' } else { ',' };
    let fields: Vec<&str> = line.split(sep).map(str::trim).collect();
    // The header's first column is `ad_id`, but an ad may be called `ad_id7` or even `ad_id`:
    // only a line whose second field is no timestamp is the header, never a click.
    if fields[0] == "ad_id"
        && fields
            .get(1)
            .is_none_or(|ts| timefmt::parse_millis(ts).is_err())
    {
        return Ok(None);
    }
    let [ad_id, ts, user_id, ip, country] = fields[..] else {
        return Err(DecodeError::RawLog(format!(
            "expected 5 fields (ad_id, click_timestamp, user_id, ip, country), found {}",
            fields.len()
        )));
    };
    let event_time_ms = timefmt::parse_millis(ts)
        .map_err(|reason| DecodeError::RawLog(format!("click_timestamp: {reason}")))?;
    let digest = Sha256::digest(format!("{ad_id}\0{event_time_ms}\0{user_id}\0{ip}").as_bytes());
    let impression_id = format!("log:{}", hex16(&digest[..12]));
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(Some(Observed {
        impression_id,
        ad_id: ad_id.to_string(),
        campaign_id: UNKNOWN_DIMENSION.into(),
        advertiser_id: UNKNOWN_DIMENSION.into(),
        publisher_id: UNKNOWN_DIMENSION.into(),
        event_time_ms,
        country: some(country),
        ip: some(ip),
        user_id: some(user_id),
        user_agent: None,
    }))
}

fn hex16(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::enrich::Enricher;

    #[test]
    fn partner_json_with_text_or_millis_timestamps() {
        let a = parse_partner_json(
            r#"{"impression_id":"i1","ad_id":"a","campaign_id":"c","advertiser_id":"v","publisher_id":"p","click_timestamp":"2026-04-20T12:00:00Z","ip":"198.51.100.4","country":"DE"}"#,
        )
        .unwrap();
        assert_eq!(a.event_time_ms, 1_776_686_400_000);
        let b = parse_partner_json(
            r#"{"impression_id":"i1","ad_id":"a","campaign_id":"c","advertiser_id":"v","publisher_id":"p","click_timestamp":1776686400000}"#,
        )
        .unwrap();
        assert_eq!(b.event_time_ms, a.event_time_ms);
    }

    #[test]
    fn partner_errors_name_the_field() {
        let err = parse_partner_json(r#"{"impression_id":"i1","ad_id":"a"}"#).unwrap_err();
        assert!(err.to_string().contains("campaign_id"), "{err}");
        let err = parse_partner_json(
            r#"{"impression_id":"i","ad_id":"a","campaign_id":"c","advertiser_id":"v","publisher_id":"p","click_timestamp":"soon"}"#,
        )
        .unwrap_err();
        assert_eq!(err.code(), "invalid_click_timestamp");
        let err = parse_partner_json(r#"{"adId":"a"}"#).unwrap_err();
        assert!(err.to_string().contains("adId"), "{err}");
    }

    /// Found by tests/properties.rs: a line whose ad id begins with (or is) `ad_id` was taken
    /// for the header and skipped, a click neither counted nor dead-lettered.
    #[test]
    fn ad_ids_that_look_like_the_header_are_clicks() {
        for (line, ad) in [
            ("ad_id,2000-01-01 00:00:00,,,", "ad_id"),
            (
                "ad_id7,2021-01-01 00:00:01,user1,207.148.22.22,USA",
                "ad_id7",
            ),
            ("ad_id\t1609459201000\tu\t\t", "ad_id"),
        ] {
            let o = parse_log_line(line).unwrap().expect(line);
            assert_eq!(o.ad_id, ad);
        }
    }

    #[test]
    fn seed_log_lines() {
        let o = parse_log_line("ad001,2021-01-01 00:00:01,user1,207.148.22.22,USA")
            .unwrap()
            .unwrap();
        assert_eq!(o.ad_id, "ad001");
        assert_eq!(o.event_time_ms, 1_609_459_201_000);
        let e = Enricher::new("s").enrich(o.clone(), "log").unwrap();
        assert_eq!(e.country, "US");
        assert_eq!(e.campaign_id, UNKNOWN_DIMENSION);
        // The same line twice is the same impression; another user is another one.
        let again = parse_log_line("ad001\t2021-01-01 00:00:01\tuser1\t207.148.22.22\tUSA");
        assert_eq!(again.unwrap().unwrap().impression_id, o.impression_id);
        let other = parse_log_line("ad001,2021-01-01 00:00:01,user2,207.148.22.22,USA");
        assert_ne!(other.unwrap().unwrap().impression_id, o.impression_id);
        assert!(
            parse_log_line("ad_id,click_timestamp,user_id,ip,country")
                .unwrap()
                .is_none()
        );
        assert!(parse_log_line("").unwrap().is_none());
        assert!(
            parse_log_line("ad_id\tts\tuser\tip\tcountry")
                .unwrap()
                .is_none()
        );
        assert_eq!(parse_log_line("ad001,2021").unwrap_err().code(), "raw_log");
        assert_eq!(
            parse_log_line("ad001,later,u,1.2.3.4,US")
                .unwrap_err()
                .code(),
            "raw_log"
        );
    }
}
