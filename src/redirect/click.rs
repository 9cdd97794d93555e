//! GET /api/v1/click/{impression_id}: verify, enqueue, redirect.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use warp::http::{HeaderMap, Response, StatusCode, header};

use super::{State, json_response};
use crate::event::enrich::Observed;
use crate::event::{self, InvalidEvent};
use crate::token::TokenError;

pub struct ClickRequest<'a> {
    pub impression_id: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub remote: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Event(#[from] InvalidEvent),
}

/// 302 to the signed landing page once the click is in the outbox; 403 with a JSON error and
/// no event for anything not signed as it stands; 503 if neither Kafka nor the disk can take it.
pub fn handle(state: &State, req: &ClickRequest<'_>) -> Response<Bytes> {
    let started = Instant::now();
    let (response, outcome) = match accept(state, req) {
        Ok(Ok(url)) => (
            Response::builder()
                .status(StatusCode::FOUND)
                .header(header::LOCATION, url)
                .header(header::CACHE_CONTROL, "no-store")
                .body(Bytes::new())
                .expect("the landing URL was checked to be a valid header value"),
            "redirected",
        ),
        Ok(Err(unavailable)) => (
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "error": unavailable }).to_string(),
            ),
            "unavailable",
        ),
        Err(refusal) => {
            let label = match &refusal {
                Refusal::Token(t) => t.label(),
                Refusal::Event(_) => "invalid_event",
            };
            let body = serde_json::json!({ "error": "forbidden", "reason": refusal.to_string() });
            (
                json_response(StatusCode::FORBIDDEN, body.to_string()),
                label,
            )
        }
    };
    state
        .metrics
        .request("click", outcome, started.elapsed().as_secs_f64());
    response
}

/// `Ok(Ok(landing url))`, `Ok(Err(why unavailable))` or `Err(refusal)`.
fn accept(state: &State, req: &ClickRequest<'_>) -> Result<Result<String, String>, Refusal> {
    event::check_id("impression_id", req.impression_id)?;
    let now = crate::timefmt::now_millis();
    let claims = state
        .keyring
        .verify(req.impression_id, req.query, now.div_euclid(1000))?;
    let cfg = &state.config.redirect;
    let header = |name: &str| {
        (!name.is_empty())
            .then(|| req.headers.get(name))
            .flatten()
            .and_then(|v| v.to_str().ok())
    };
    let ip = header(&cfg.client_ip_header)
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_string())
        .or_else(|| req.remote.map(|a| a.ip().to_string()));
    let observed = Observed {
        impression_id: claims.impression_id,
        ad_id: claims.ad_id,
        campaign_id: claims.campaign_id,
        advertiser_id: claims.advertiser_id,
        publisher_id: claims.publisher_id,
        event_time_ms: now,
        // The edge header is trusted but not infallible: anything not a code counts as unknown.
        country: header(&cfg.country_header)
            .and_then(crate::event::country::normalize)
            .map(str::to_string),
        ip,
        user_id: cookie(req.headers, &cfg.user_id_cookie),
        user_agent: header(header::USER_AGENT.as_str()).map(str::to_string),
    };
    let click = state.enricher.enrich(observed, "redirect")?;
    match state.outbox.send(
        &state.config.kafka.clicks_topic,
        click.impression_id.as_bytes(),
        &click.to_protobuf(),
    ) {
        Ok(_) => Ok(Ok(claims.url)),
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// The value of cookie `name`, if the request has one.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cookie_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; uid=u-42; b=2".parse().unwrap());
        assert_eq!(cookie(&h, "uid").as_deref(), Some("u-42"));
        assert_eq!(cookie(&h, "missing"), None);
        assert_eq!(cookie(&h, ""), None);
    }
}
