//! The dead-letter record: what was rejected, by whom and why, written as JSON to the
//! dead-letter topic (`clicks-dlq`), keyed like the input.
//!
//! The payload is kept whole up to a limit (`redirect.dlq_max_payload_bytes`, default
//! [`DEFAULT_MAX_PAYLOAD_BYTES`]) and cut beyond it. Rejected input is exactly what an
//! attacker or a broken partner controls: kept whole, a 1.5 MB line became a dead letter
//! larger than the broker's maximum message size, which no broker would take. A cut payload
//! still says what the input looked like, and its length and SHA-256 identify the original
//! (the partner still has it) without our having to carry it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Payload bytes kept in a dead letter unless configured otherwise: far below any broker's
/// message limit (1 MB by default), far above any honest click (a few hundred bytes).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 16 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Short stable label, e.g. `invalid_country`, `json`, `protobuf`.
    pub code: String,
    /// The full reason, naming the field.
    pub reason: String,
    /// Which component rejected it: `redirect:partner:<name>`, `aggregator`, ...
    pub rejected_by: String,
    /// When it was rejected, epoch milliseconds.
    pub rejected_at_ms: i64,
    /// The input as received, or its first bytes when `payload_truncated`: UTF-8 text as is,
    /// anything else base64 (standard alphabet). Either way at most the configured limit.
    pub payload: String,
    pub payload_base64: bool,
    /// Whether `payload` holds only the start of the input. Absent in letters written before
    /// payloads were cut, hence the defaults.
    #[serde(default)]
    pub payload_truncated: bool,
    /// Length in bytes of the whole original input.
    #[serde(default)]
    pub payload_bytes: u64,
    /// SHA-256 of the whole original input, lowercase hex: matches the letter to the
    /// partner's copy when the payload was cut.
    #[serde(default)]
    pub payload_sha256: String,
}

impl DeadLetter {
    /// A dead letter whose payload is cut at [`DEFAULT_MAX_PAYLOAD_BYTES`].
    pub fn new(code: String, reason: String, rejected_by: &str, payload: &[u8]) -> Self {
        Self::with_max_payload(
            code,
            reason,
            rejected_by,
            payload,
            DEFAULT_MAX_PAYLOAD_BYTES,
        )
    }

    /// A dead letter whose `payload` field takes at most `max_payload` bytes (after base64,
    /// if the input is not UTF-8). Text is cut on a character boundary, so the field stays
    /// valid UTF-8 and the JSON is what it says.
    pub fn with_max_payload(
        code: String,
        reason: String,
        rejected_by: &str,
        payload: &[u8],
        max_payload: usize,
    ) -> Self {
        use base64::Engine;
        let payload_sha256 = sha256_hex(payload);
        let (kept, payload_base64, payload_truncated) = match std::str::from_utf8(payload) {
            Ok(s) => {
                let cut = floor_char_boundary(s, max_payload);
                (s[..cut].to_string(), false, cut < s.len())
            }
            Err(_) => {
                // Base64 turns 3 bytes into 4 characters.
                let raw = payload.len().min(max_payload / 4 * 3);
                (
                    base64::engine::general_purpose::STANDARD.encode(&payload[..raw]),
                    true,
                    raw < payload.len(),
                )
            }
        };
        Self {
            code,
            reason,
            rejected_by: rejected_by.to_string(),
            rejected_at_ms: crate::timefmt::now_millis(),
            payload: kept,
            payload_base64,
            payload_truncated,
            payload_bytes: payload.len() as u64,
            payload_sha256,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a DeadLetter always serializes")
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The largest index `<= max` that is a character boundary of `s`.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn letter(payload: &[u8], max: usize) -> DeadLetter {
        DeadLetter::with_max_payload("json".into(), "bad".into(), "test", payload, max)
    }

    #[test]
    fn a_small_payload_is_kept_whole_with_its_length_and_hash() {
        let l = letter(b"{not json", 64);
        assert_eq!(l.payload, "{not json");
        assert!(!l.payload_truncated && !l.payload_base64);
        assert_eq!(l.payload_bytes, 9);
        assert_eq!(l.payload_sha256, sha256_hex(b"{not json"));
    }

    #[test]
    fn sha256_is_the_standard_digest() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_huge_text_payload_is_cut_and_the_letter_stays_small() {
        // The reproduction of issue 11: a 1.5 MB partner line.
        let line = format!("{{\"ad_id\":\"{}\"}}", "x".repeat(1_500_000));
        let l = DeadLetter::new("json".into(), "bad".into(), "test", line.as_bytes());
        assert!(l.payload_truncated);
        assert_eq!(l.payload.len(), DEFAULT_MAX_PAYLOAD_BYTES);
        assert!(line.starts_with(&l.payload));
        assert_eq!(l.payload_bytes, line.len() as u64);
        assert_eq!(l.payload_sha256, sha256_hex(line.as_bytes()));
        assert!(l.to_json().len() < DEFAULT_MAX_PAYLOAD_BYTES + 1024);
    }

    #[test]
    fn text_is_cut_on_a_character_boundary() {
        // "é" is two bytes: a cut at 5 bytes would split the third one.
        let l = letter("ééééé".as_bytes(), 5);
        assert_eq!(l.payload, "éé");
        assert!(l.payload_truncated);
        assert_eq!(l.payload_bytes, 10);
    }

    #[test]
    fn binary_payloads_are_cut_before_base64_and_fit_the_limit() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 256) as u8).collect();
        let l = letter(&bytes, 1000);
        assert!(l.payload_base64 && l.payload_truncated);
        assert!(l.payload.len() <= 1000, "{}", l.payload.len());
        let kept = base64::engine::general_purpose::STANDARD
            .decode(&l.payload)
            .unwrap();
        assert_eq!(kept[..], bytes[..kept.len()]);
        assert_eq!(l.payload_bytes, 10_000);
        assert_eq!(l.payload_sha256, sha256_hex(&bytes));
    }

    #[test]
    fn letters_written_before_the_cut_still_parse() {
        let old = r#"{"code":"json","reason":"r","rejected_by":"x","rejected_at_ms":1,"payload":"p","payload_base64":false}"#;
        let l: DeadLetter = serde_json::from_str(old).unwrap();
        assert!(!l.payload_truncated);
        assert_eq!(l.payload, "p");
    }
}
