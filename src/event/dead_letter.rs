//! The dead-letter record: what was rejected, by whom and why, kept whole so it can be fixed
//! and replayed. Written as JSON to the dead-letter topic (`clicks-dlq`), keyed like the input.

use serde::{Deserialize, Serialize};

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
    /// The input as received: UTF-8 text as is, anything else base64 (standard alphabet).
    pub payload: String,
    pub payload_base64: bool,
}

impl DeadLetter {
    pub fn new(code: String, reason: String, rejected_by: &str, payload: &[u8]) -> Self {
        use base64::Engine;
        let (payload, payload_base64) = match std::str::from_utf8(payload) {
            Ok(s) => (s.to_string(), false),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(payload),
                true,
            ),
        };
        Self {
            code,
            reason,
            rejected_by: rejected_by.to_string(),
            rejected_at_ms: crate::timefmt::now_millis(),
            payload,
            payload_base64,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a DeadLetter always serializes")
    }
}
