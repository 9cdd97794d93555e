//! Timestamps as people and partners write them, to and from epoch milliseconds (UTC).

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};

/// Accepts epoch milliseconds, RFC 3339 (`2026-04-20T12:00:00Z`, any offset), seed 003's
/// `2026-04-20 12:00:00` (UTC) and a bare date (`2026-04-20`, midnight UTC).
pub fn parse_millis(text: &str) -> Result<i64, String> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<i64>().map_err(|e| format!("{t:?}: {e}"));
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.timestamp_millis());
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(t, fmt) {
            return Ok(dt.and_utc().timestamp_millis());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_millis());
    }
    Err(format!(
        "{t:?} is not epoch milliseconds, an RFC 3339 time or a YYYY-MM-DD date"
    ))
}

/// RFC 3339 with a `Z` and only as many fractional digits as needed.
pub fn format_millis(ms: i64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(dt) => dt.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        None => ms.to_string(),
    }
}

/// The wall clock in epoch milliseconds.
pub fn now_millis() -> i64 {
    Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_accepted_form() {
        let ms = 1_776_686_400_000; // 2026-04-20T12:00:00Z
        assert_eq!(parse_millis("1776686400000"), Ok(ms));
        assert_eq!(parse_millis("2026-04-20T12:00:00Z"), Ok(ms));
        assert_eq!(parse_millis("2026-04-20T14:00:00+02:00"), Ok(ms));
        assert_eq!(parse_millis("2026-04-20 12:00:00"), Ok(ms));
        assert_eq!(parse_millis("2026-04-20 12:00:00.250"), Ok(ms + 250));
        assert_eq!(parse_millis("2026-04-20"), Ok(ms - 12 * 3_600_000));
        assert!(parse_millis("yesterday").is_err());
        assert!(parse_millis("").is_err());
    }

    #[test]
    fn formats_as_rfc3339_utc() {
        assert_eq!(format_millis(1_776_686_400_000), "2026-04-20T12:00:00Z");
        assert_eq!(format_millis(1_776_686_400_250), "2026-04-20T12:00:00.250Z");
    }
}
