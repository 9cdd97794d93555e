//! POST /api/v1/events: a partner's batch of clicks, one JSON object per line (NDJSON).
//! Each line is accepted (into the clicks topic) or rejected (into the dead-letter topic, with
//! the reason), and the answer lists every line's fate so the partner can fix and resend.

use std::time::Instant;

use bytes::{Buf, Bytes};
use futures::{Stream, StreamExt};
use serde::Serialize;
use subtle::ConstantTimeEq;
use warp::http::{HeaderMap, Response, StatusCode, header};

use super::{State, json_response};
use crate::config::Partner;
use crate::event::dead_letter::DeadLetter;
use crate::event::observed::parse_partner_json;
use crate::event::{ClickEvent, DecodeError, check_not_future};

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

/// Answers one partner batch. The key is checked before a byte of the body is read (a keyless
/// upload costs one answer, not its size in memory); the body is then read as a stream and
/// handled line by line as lines complete, so memory stays at one line (at most
/// `redirect.max_line_bytes`) plus one network chunk, however large the batch and whether it
/// comes with a `Content-Length` or chunked.
pub async fn handle<S, B>(state: &State, headers: &HeaderMap, body: S) -> Response<Bytes>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let started = Instant::now();
    let cfg = &state.config.redirect;
    let (status, body, outcome) = match authenticate(state, headers) {
        None => (
            StatusCode::UNAUTHORIZED,
            serde_json::json!({ "error": "missing or unknown API key (Authorization: Bearer KEY or X-Api-Key)" }),
            "unauthorized",
        ),
        Some(_) if declared_length(headers).is_some_and(|n| n > cfg.max_batch_bytes) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            serde_json::json!({ "error": format!(
                "batch larger than {} bytes (redirect.max_batch_bytes); split it",
                cfg.max_batch_bytes
            ) }),
            "too_large",
        ),
        Some(partner) => match ingest(state, partner, body).await {
            Ok(batch) if batch.result.results.is_empty() && batch.unread.is_none() => (
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": "empty batch: send one JSON click per line" }),
                "bad_request",
            ),
            Ok(batch) => {
                let status = match &batch.unread {
                    None => StatusCode::OK,
                    Some(Unread::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
                    Some(Unread::BodyError(_)) => StatusCode::BAD_REQUEST,
                };
                let outcome = if status == StatusCode::OK {
                    "ingested"
                } else {
                    "partial"
                };
                let mut v = serde_json::to_value(&batch.result).expect("serializable");
                if let Some(unread) = &batch.unread {
                    v["error"] = serde_json::Value::String(match unread {
                        Unread::TooLarge => format!(
                            "batch larger than {} bytes (redirect.max_batch_bytes): lines after \
                             line {} were not read; the results above stand",
                            cfg.max_batch_bytes, batch.lines
                        ),
                        Unread::BodyError(e) => format!(
                            "reading the body failed after line {}: {e}; the results above stand",
                            batch.lines
                        ),
                    });
                }
                (status, v, outcome)
            }
            Err(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "error": e }),
                "unavailable",
            ),
        },
    };
    state
        .metrics
        .request("events", outcome, started.elapsed().as_secs_f64());
    json_response(status, body.to_string())
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
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
        // In constant time: timing must not tell how much of a guess was right.
        .find(|p| p.api_key.as_bytes().ct_eq(key.as_bytes()).into())
}

/// Why a batch was not read to its end.
enum Unread {
    TooLarge,
    BodyError(String),
}

struct Ingested {
    result: BatchResult,
    /// Lines seen, blank ones included.
    lines: usize,
    unread: Option<Unread>,
}

/// Routes every line as the body streams in; fails only if a record could be kept neither in
/// Kafka nor on disk. Reading stops at `redirect.max_batch_bytes`, even without a length.
async fn ingest<S, B>(state: &State, partner: &Partner, body: S) -> Result<Ingested, String>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let cfg = &state.config.redirect;
    let mut line = Line {
        state,
        source: format!("partner:{}", partner.name),
        out: BatchResult {
            accepted: 0,
            rejected: 0,
            results: Vec::new(),
        },
        number: 0,
    };
    let mut splitter = LineSplitter::new(cfg.max_line_bytes);
    let mut pieces = Vec::new();
    let mut read: u64 = 0;
    let mut unread = None;
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let mut chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                unread = Some(Unread::BodyError(e.to_string()));
                break;
            }
        };
        while chunk.has_remaining() {
            let bytes = chunk.chunk();
            let n = bytes.len();
            read += n as u64;
            if read > cfg.max_batch_bytes {
                unread = Some(Unread::TooLarge);
                break;
            }
            splitter.push(bytes, &mut pieces);
            chunk.advance(n);
            for piece in pieces.drain(..) {
                line.handle(piece)?;
            }
        }
        if unread.is_some() {
            break;
        }
    }
    if unread.is_none() {
        splitter.finish(&mut pieces);
        for piece in pieces.drain(..) {
            line.handle(piece)?;
        }
    }
    Ok(Ingested {
        result: line.out,
        lines: line.number,
        unread,
    })
}

/// What one batch's lines share.
struct Line<'a> {
    state: &'a State,
    source: String,
    out: BatchResult,
    /// The last line's number.
    number: usize,
}

impl Line<'_> {
    /// Accepts or rejects one line (blank lines are counted, not answered).
    fn handle(&mut self, piece: Piece) -> Result<(), String> {
        self.number += 1;
        let cfg = &self.state.config.redirect;
        let verdict = match &piece {
            Piece::Line(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) if text.trim().is_empty() => return Ok(()),
                Ok(text) => self.check(text),
                Err(e) => Err(("not_utf8".to_string(), format!("line is not UTF-8: {e}"))),
            },
            Piece::TooLong { len, .. } => Err((
                "line_too_long".to_string(),
                format!(
                    "line is {len} bytes, over the limit of {} bytes (redirect.max_line_bytes); \
                     it was not parsed",
                    cfg.max_line_bytes
                ),
            )),
        };
        let topics = &self.state.config.kafka;
        let result = match verdict {
            Ok(click) => {
                self.state
                    .outbox
                    .send(
                        &topics.clicks_topic,
                        click.impression_id.as_bytes(),
                        &click.to_protobuf(),
                    )
                    .map_err(|e| e.to_string())?;
                self.state
                    .metrics
                    .classified("events", click.reasons().unwrap_or_default());
                self.out.accepted += 1;
                LineResult {
                    line: self.number,
                    status: "accepted",
                    click_id: Some(click.click_id),
                    error: None,
                }
            }
            Err((code, reason)) => {
                let payload = match &piece {
                    Piece::Line(bytes) => bytes.as_slice(),
                    Piece::TooLong { prefix, .. } => utf8_prefix(prefix),
                };
                let letter = DeadLetter::with_max_payload(
                    code,
                    reason.clone(),
                    &format!("redirect:{}", self.source),
                    payload,
                    self.state.config.redirect.dlq_max_payload_bytes,
                );
                self.state
                    .outbox
                    .send(&topics.dlq_topic, b"", letter.to_json().as_bytes())
                    .map_err(|e| e.to_string())?;
                self.out.rejected += 1;
                LineResult {
                    line: self.number,
                    status: "rejected",
                    click_id: None,
                    error: Some(reason),
                }
            }
        };
        self.state
            .metrics
            .partner_events
            .get_or_create(&vec![("outcome", result.status)])
            .inc();
        self.out.results.push(result);
        Ok(())
    }

    /// Parses, checks the event time against this clock, enriches: the click, or (code, reason).
    fn check(&self, text: &str) -> Result<ClickEvent, (String, String)> {
        let reject = |e: DecodeError| (e.code(), e.to_string());
        let observed = parse_partner_json(text).map_err(reject)?;
        // The same rule the aggregator's sources apply, against this clock.
        check_not_future(
            observed.event_time_ms,
            crate::timefmt::now_millis(),
            self.state.config.redirect.max_future_skew_ms,
            "redirect.max_future_skew_ms",
        )
        .map_err(reject)?;
        // The same rules as a click's, on what the partner relayed: a field the line leaves
        // out is not judged (a feed that relays no user agent is not `no_user_agent`); an
        // empty `user_agent` is.
        let reasons = self
            .state
            .classifier
            .classify(observed.user_agent.as_deref(), observed.ip.as_deref());
        let mut click = self
            .state
            .enricher
            .enrich(observed, &self.source)
            .map_err(|e| reject(e.into()))?;
        click.set_reasons(reasons);
        Ok(click)
    }
}

/// `bytes`, cut back to whole UTF-8 characters when a cut split one, so a truncated text line
/// stays text in the dead letter.
fn utf8_prefix(bytes: &[u8]) -> &[u8] {
    match std::str::from_utf8(bytes) {
        Err(e) if e.error_len().is_none() => &bytes[..e.valid_up_to()],
        _ => bytes,
    }
}

/// One line of the body, as [`LineSplitter`] cut it.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    /// A line within the limit, without its `\n` (or `\r\n`).
    Line(Vec<u8>),
    /// A line over the limit: its first `max_line_bytes` bytes, and its whole length.
    TooLong { prefix: Vec<u8>, len: usize },
}

/// Cuts a byte stream into lines, holding at most `max` bytes of any one line: past that it
/// only counts the line's length until its newline.
struct LineSplitter {
    max: usize,
    buf: Vec<u8>,
    /// Length so far of a line already over the limit.
    skipping: Option<usize>,
}

impl LineSplitter {
    fn new(max: usize) -> Self {
        Self {
            max,
            buf: Vec::new(),
            skipping: None,
        }
    }

    fn push(&mut self, mut chunk: &[u8], out: &mut Vec<Piece>) {
        while !chunk.is_empty() {
            let newline = chunk.iter().position(|&b| b == b'\n');
            let segment = &chunk[..newline.unwrap_or(chunk.len())];
            match self.skipping.as_mut() {
                Some(len) => *len += segment.len(),
                None if self.buf.len() + segment.len() > self.max => {
                    let keep = self.max - self.buf.len();
                    self.skipping = Some(self.buf.len() + segment.len());
                    self.buf.extend_from_slice(&segment[..keep]);
                }
                None => self.buf.extend_from_slice(segment),
            }
            match newline {
                Some(i) => {
                    self.emit(out);
                    chunk = &chunk[i + 1..];
                }
                None => break,
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<Piece>) {
        if self.skipping.is_some() || !self.buf.is_empty() {
            self.emit(out);
        }
    }

    fn emit(&mut self, out: &mut Vec<Piece>) {
        let mut line = std::mem::take(&mut self.buf);
        match self.skipping.take() {
            Some(len) => out.push(Piece::TooLong { prefix: line, len }),
            None => {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                out.push(Piece::Line(line));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, chunks: &[&[u8]]) -> Vec<Piece> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
            assert!(s.buf.len() <= max, "holds at most one line's limit");
        }
        s.finish(&mut out);
        out
    }

    fn line(s: &str) -> Piece {
        Piece::Line(s.as_bytes().to_vec())
    }

    #[test]
    fn lines_are_cut_wherever_the_chunks_end() {
        let text = b"one\r\ntwo\n\nthree";
        let whole = split(8, &[text]);
        assert_eq!(
            whole,
            vec![line("one"), line("two"), line(""), line("three")]
        );
        for at in 0..text.len() {
            assert_eq!(split(8, &[&text[..at], &text[at..]]), whole, "cut at {at}");
        }
        let bytewise: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(split(8, &bytewise), whole);
    }

    #[test]
    fn long_lines_keep_their_prefix_and_length_only() {
        let pieces = split(4, &[b"abc\nabcdefgh", b"ij\nxy"]);
        assert_eq!(
            pieces,
            vec![
                line("abc"),
                Piece::TooLong {
                    prefix: b"abcd".to_vec(),
                    len: 10
                },
                line("xy")
            ]
        );
        assert_eq!(
            split(4, &[b"abcde"]),
            vec![Piece::TooLong {
                prefix: b"abcd".to_vec(),
                len: 5
            }]
        );
        // Exactly at the limit is fine.
        assert_eq!(split(4, &[b"abcd\n"]), vec![line("abcd")]);
    }

    #[test]
    fn prefixes_end_on_a_character() {
        let s = "aé".as_bytes();
        assert_eq!(utf8_prefix(&s[..2]), b"a");
        assert_eq!(utf8_prefix(s), s);
        assert_eq!(utf8_prefix(b"\xff\xfe"), b"\xff\xfe");
    }
}
