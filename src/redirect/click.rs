//! GET /api/v1/click/{impression_id}: verify, enqueue, redirect.
//!
//! Ad platforms and mail tools append tracking parameters (`utm_*`, `gclid`, ...) to click
//! URLs after they are signed. Those are outside the signature ([`crate::token`]); the ones
//! matching `redirect.forward_params` are appended to the landing page's query, the others
//! dropped. Scheme, host and path always come from the signed `url` alone: the appended
//! parameters are re-encoded into the query, so nothing a client adds can move the redirect.

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
    let link = state
        .keyring
        .verify_link(req.impression_id, req.query, now.div_euclid(1000))?;
    let claims = link.claims;
    let cfg = &state.config.redirect;
    let landing = landing_url(&claims.url, &link.unsigned, &cfg.forward_params);
    let header = |name: &str| header_value(req.headers, name);
    let ip = client_ip(req.headers, &cfg.client_ip_header, req.remote);
    let user_agent = header(header::USER_AGENT.as_str());
    // Before the IP is hashed; an absent user agent is judged as an empty one. Flagged,
    // never refused: the click is redirected and counted, as invalid.
    let reasons = state
        .classifier
        .classify(Some(user_agent.unwrap_or("")), ip.as_deref());
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
        user_agent: user_agent.map(str::to_string),
    };
    let mut click = state.enricher.enrich(observed, "redirect")?;
    click.set_reasons(reasons);
    click.impression_time_ms = link
        .impression_time_ms
        .map_or(0, |t| i64::try_from(t).unwrap_or(0));
    match state.outbox.send(
        &state.config.kafka.clicks_topic,
        click.impression_id.as_bytes(),
        &click.to_protobuf(),
    ) {
        Ok(_) => {
            state.metrics.classified("click", reasons);
            Ok(Ok(landing))
        }
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// Longest landing URL the forwarded parameters may grow the signed one to; parameters that
/// would pass it are dropped (the signed URL itself is at most 2048 bytes).
pub const MAX_LANDING_URL: usize = 4096;

/// The signed landing URL with the unsigned parameters that match `forward` appended to its
/// query (merged with any query it has, before its fragment). A parameter the signed URL
/// already carries is not appended: the advertiser's own value wins over one added on the way.
/// Names and values are form-urlencoded afresh, so they can only ever add query parameters.
pub fn landing_url(signed: &str, unsigned: &[(String, String)], forward: &[String]) -> String {
    let (base, fragment) = match signed.find('#') {
        Some(i) => signed.split_at(i),
        None => (signed, ""),
    };
    let existing: Vec<String> = base
        .split_once('?')
        .map(|(_, q)| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, _)| k.into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut out = base.to_string();
    let mut sep = if !base.contains('?') {
        "?"
    } else if base.ends_with(['?', '&']) {
        ""
    } else {
        "&"
    };
    let mut added: Vec<&str> = Vec::new();
    for (name, value) in unsigned {
        if !forward.iter().any(|p| glob_match(p, name))
            || existing.iter().any(|e| e == name)
            || added.contains(&name.as_str())
        {
            continue;
        }
        let pair = form_urlencoded::Serializer::new(String::new())
            .append_pair(name, value)
            .finish();
        if out.len() + sep.len() + pair.len() + fragment.len() > MAX_LANDING_URL {
            continue;
        }
        out.push_str(sep);
        out.push_str(&pair);
        sep = "&";
        added.push(name);
    }
    out.push_str(fragment);
    out
}

/// `*` matches any run of characters (including none); everything else matches itself.
/// Case-sensitive, like query parameter names.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((prefix, rest)) => {
            let Some(tail) = name.strip_prefix(prefix) else {
                return false;
            };
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| glob_match(rest, &tail[i..]))
        }
    }
}

/// A header's value as text; `None` if absent, not visible ASCII, or `name` is empty.
fn header_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    (!name.is_empty())
        .then(|| headers.get(name))
        .flatten()
        .and_then(|v| v.to_str().ok())
}

/// The client's address: the first entry of the trusted edge's header
/// (`redirect.client_ip_header`) when one is configured and present, else the TCP peer. The
/// IP hash and the data-center rule both take it from here.
pub fn client_ip(
    headers: &HeaderMap,
    trusted_header: &str,
    remote: Option<SocketAddr>,
) -> Option<String> {
    header_value(headers, trusted_header)
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_string())
        .or_else(|| remote.map(|a| a.ip().to_string()))
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

    fn forward() -> Vec<String> {
        crate::config::RedirectConfig::default().forward_params
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn globs() {
        assert!(glob_match("utm_*", "utm_source"));
        assert!(glob_match("utm_*", "utm_"));
        assert!(!glob_match("utm_*", "xutm_source"));
        assert!(glob_match("gclid", "gclid"));
        assert!(!glob_match("gclid", "gclid2"));
        assert!(glob_match("*_id", "ref_id"));
        assert!(glob_match("a*b*c", "a__b__c"));
        assert!(!glob_match("a*b*c", "a__c"));
        assert!(glob_match("*", "anything"));
    }

    #[test]
    fn forwarded_parameters_merge_with_the_query_and_keep_the_fragment() {
        let f = forward();
        let p = pairs(&[
            ("utm_source", "news letter"),
            ("fbclid", "F"),
            ("other", "x"),
        ]);
        assert_eq!(
            landing_url("https://shop.example/a", &p, &f),
            "https://shop.example/a?utm_source=news+letter&fbclid=F"
        );
        assert_eq!(
            landing_url("https://shop.example/a?b=1#top", &p, &f),
            "https://shop.example/a?b=1&utm_source=news+letter&fbclid=F#top"
        );
        assert_eq!(
            landing_url("https://shop.example/a?", &p, &f),
            "https://shop.example/a?utm_source=news+letter&fbclid=F"
        );
        assert_eq!(
            landing_url("https://shop.example/a?b=1&#x", &p, &f),
            "https://shop.example/a?b=1&utm_source=news+letter&fbclid=F#x"
        );
        // The signed URL's own value wins; the first of two repeats is taken.
        let p = pairs(&[("utm_source", "added"), ("gclid", "1"), ("gclid", "2")]);
        assert_eq!(
            landing_url("https://shop.example/?utm_source=signed", &p, &f),
            "https://shop.example/?utm_source=signed&gclid=1"
        );
        // Nothing forwarded: the signed URL exactly.
        assert_eq!(
            landing_url("https://shop.example/p?q#f", &pairs(&[("x", "1")]), &f),
            "https://shop.example/p?q#f"
        );
        assert_eq!(
            landing_url("https://shop.example/p", &p, &[]),
            "https://shop.example/p"
        );
    }

    #[test]
    fn forwarded_values_cannot_move_the_redirect() {
        let f = forward();
        let hostile = pairs(&[
            ("utm_a", "x#@evil.example/"),
            ("utm_b", "?url=https://evil.example&"),
            ("utm_c\r\nLocation: https://evil.example", "1"),
            ("utm_d", "\u{0}é/../.."),
        ]);
        let url = landing_url("https://shop.example/p", &hostile, &f);
        assert!(url.starts_with("https://shop.example/p?utm_a="), "{url}");
        assert!(!url.contains('#') && !url.contains('@'), "{url}");
        assert_eq!(url.matches('?').count(), 1, "{url}");
        assert!(crate::token::check_landing_url(&url).is_ok(), "{url}");
        assert!(
            url.bytes().all(|b| b.is_ascii_graphic()),
            "a valid Location header: {url}"
        );
        // A flood of parameters is cut at the length limit, never past it.
        let long = vec![("utm_x".to_string(), "y".repeat(3000)); 3];
        let many: Vec<_> = (0..64)
            .map(|i| (format!("utm_{i}"), "v".repeat(200)))
            .chain(long)
            .collect();
        let url = landing_url("https://shop.example/p", &many, &f);
        assert!(url.len() <= MAX_LANDING_URL, "{}", url.len());
    }
}
