//! POST /api/v1/events: a partner's batch of clicks, one JSON object per line (NDJSON).
//! Each line is accepted (into the clicks topic) or rejected (into the dead-letter topic, with
//! the reason), and the answer lists every line's fate so the partner can fix and resend.

use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use warp::http::{HeaderMap, Response, StatusCode, header};

use super::{State, json_response};
use crate::config::Partner;
use crate::event::dead_letter::DeadLetter;
use crate::event::observed::parse_partner_json;

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct LineResult {
    /// 1-based line number in the request body.
    pub line: usize,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub click_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BatchResult {
    pub accepted: usize,
    pub rejected: usize,
    pub results: Vec<LineResult>,
}

pub fn handle(state: &State, headers: &HeaderMap, body: &[u8]) -> Response<Bytes> {
    let started = Instant::now();
    let (status, body, outcome) = match authenticate(state, headers) {
        None => (
            StatusCode::UNAUTHORIZED,
            serde_json::json!({ "error": "missing or unknown API key (Authorization: Bearer KEY or X-Api-Key)" }),
            "unauthorized",
        ),
        Some(partner) => match std::str::from_utf8(body) {
            Err(e) => (
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": format!("body is not UTF-8: {e}") }),
                "bad_request",
            ),
            Ok(text) if text.trim().is_empty() => (
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": "empty batch: send one JSON click per line" }),
                "bad_request",
            ),
            Ok(text) => match ingest(state, partner, text) {
                Ok(batch) => (
                    StatusCode::OK,
                    serde_json::to_value(batch).expect("serializable"),
                    "ingested",
                ),
                Err(e) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({ "error": e }),
                    "unavailable",
                ),
            },
        },
    };
    state
        .metrics
        .request("events", outcome, started.elapsed().as_secs_f64());
    json_response(status, body.to_string())
}

fn authenticate<'a>(state: &'a State, headers: &HeaderMap) -> Option<&'a Partner> {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))?
        .trim();
    state
        .config
        .redirect
        .partners
        .iter()
        .find(|p| constant_time_eq(p.api_key.as_bytes(), key.as_bytes()))
}

/// Compares keys without leaking, through timing, how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Routes every line; fails only if a record could be kept neither in Kafka nor on disk.
fn ingest(state: &State, partner: &Partner, text: &str) -> Result<BatchResult, String> {
    let source = format!("partner:{}", partner.name);
    let topics = &state.config.kafka;
    let mut out = BatchResult {
        accepted: 0,
        rejected: 0,
        results: Vec::new(),
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed =
            parse_partner_json(line).and_then(|obs| Ok(state.enricher.enrich(obs, &source)?));
        let result = match parsed {
            Ok(click) => {
                state
                    .outbox
                    .send(
                        &topics.clicks_topic,
                        click.impression_id.as_bytes(),
                        &click.to_protobuf(),
                    )
                    .map_err(|e| e.to_string())?;
                out.accepted += 1;
                LineResult {
                    line: i + 1,
                    status: "accepted",
                    click_id: Some(click.click_id),
                    error: None,
                }
            }
            Err(e) => {
                let letter = DeadLetter::new(
                    e.code(),
                    e.to_string(),
                    &format!("redirect:{source}"),
                    line.as_bytes(),
                );
                state
                    .outbox
                    .send(&topics.dlq_topic, b"", letter.to_json().as_bytes())
                    .map_err(|e| e.to_string())?;
                out.rejected += 1;
                LineResult {
                    line: i + 1,
                    status: "rejected",
                    click_id: None,
                    error: Some(e.to_string()),
                }
            }
        };
        state
            .metrics
            .partner_events
            .get_or_create(&vec![("outcome", result.status)])
            .inc();
        out.results.push(result);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn key_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
