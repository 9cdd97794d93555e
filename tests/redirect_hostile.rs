//! The redirect under hostile and careless input (issue 11): tracking parameters, partner
//! lines from the future or of absurd size, keyless and chunked uploads, slow and idle
//! connections, too many connections, and error answers. Real HTTP over loopback, into the
//! embedded Kafka broker.

use adclick_testkit as common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use adclick::event::dead_letter::DeadLetter;
use adclick::token::{ClickClaims, Keyring};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn claims(impression: &str, url: &str) -> ClickClaims {
    common::claims(impression, url, common::in_an_hour())
}

const GOOD_LINE: &str = r#"{"impression_id":"p-1","ad_id":"ad_1","campaign_id":"cmp_1","advertiser_id":"adv_1","publisher_id":"pub_1","click_timestamp":"2026-11-22T10:00:00Z","ip":"198.51.100.7","country":"FR","user_agent":"Mozilla/5.0 (Windows NT 10.0; Win64; x64)"}"#;

fn dead_letters(brokers: &str, expected: usize) -> Vec<DeadLetter> {
    read_topic(brokers, "clicks-dlq", expected, Duration::from_secs(10))
        .iter()
        .map(|(_, v)| serde_json::from_slice(v).unwrap())
        .collect()
}

/// Writes `request` on a fresh connection and reads the answer until the server closes it or
/// `timeout` passes; `None` if nothing came back in time.
async fn raw(addr: std::net::SocketAddr, request: &[u8], timeout: Duration) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_answer(&mut s, timeout).await
}

/// Reads one answer: up to the end of its body as given by `content-length`, or to EOF.
async fn read_answer(s: &mut TcpStream, timeout: Duration) -> Option<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if len.is_some_and(|n| body.len() >= n) {
                return Some(text);
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (!got.is_empty()).then(|| String::from_utf8_lossy(&got).into_owned());
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (!got.is_empty()).then(|| String::from_utf8_lossy(&got).into_owned()),
        }
    }
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

fn json_body(answer: &str) -> serde_json::Value {
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// Whether the server has closed `s` (EOF or reset) within `within`.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_parameters_are_forwarded_or_dropped_and_never_move_the_redirect() {
    let kafka = embedded_kafka(1);
    let spool = tempfile::tempdir().unwrap();
    let config = test_config(&kafka.bootstrap_servers(), spool.path());
    let keyring = Keyring::new(&config.signing.keys, None).unwrap();
    let server = RunningRedirect::start(config).await;
    let client = http_client();
    let base = server.base();
    let landing = "https://shop.example/landing?ref=ad#offer";

    let mut redirected = 0;
    // What ad platforms and mail tools append: forwarded in order, unknown ones dropped.
    let signed = keyring.click_url(&base, &claims("imp-utm-1", landing));
    let tracked = format!(
        "{signed}&utm_source=newsletter&utm_medium=e%20mail&gclid=G-1&fbclid=F1&msclkid=M1&foo=bar&ref=evil"
    );
    let resp = get(&client, &tracked).await;
    assert_eq!(resp.status, 302, "{}", resp.body);
    redirected += 1;
    assert_eq!(
        resp.headers["location"],
        "https://shop.example/landing?ref=ad&utm_source=newsletter&utm_medium=e+mail&gclid=G-1&fbclid=F1&msclkid=M1#offer"
    );
    // Parameters before the signed ones work as well; an unknown one alone changes nothing.
    let signed = keyring.click_url(&base, &claims("imp-utm-2", "https://shop.example/p"));
    let (path, query) = signed.split_once('?').unwrap();
    let resp = get(&client, &format!("{path}?utm_campaign=spring&{query}&x=1")).await;
    assert_eq!(resp.status, 302, "{}", resp.body);
    redirected += 1;
    assert_eq!(
        resp.headers["location"],
        "https://shop.example/p?utm_campaign=spring"
    );
    let resp = get(&client, &format!("{signed}&unknown=1")).await;
    assert_eq!(resp.status, 302, "{}", resp.body);
    redirected += 1;
    assert_eq!(resp.headers["location"], "https://shop.example/p");

    // Values that try to become a host, a fragment or a second query stay inside one value.
    let resp = get(
        &client,
        &format!("{signed}&utm_term=%23%40evil.example%2F&utm_content=%3Furl%3Dhttps%3A%2F%2Fevil.example"),
    )
    .await;
    assert_eq!(resp.status, 302, "{}", resp.body);
    redirected += 1;
    let location = resp.headers["location"].to_str().unwrap();
    assert!(
        location.starts_with("https://shop.example/p?utm_term="),
        "{location}"
    );
    assert!(
        !location.contains('#') && !location.contains('@'),
        "{location}"
    );
    assert_eq!(location.matches('?').count(), 1, "{location}");

    // A second landing page, however it is spelled, is refused: never a redirect elsewhere.
    for smuggled in [
        "url=https%3A%2F%2Fevil.example%2F",
        "%75rl=https%3A%2F%2Fevil.example%2F",
        "u%72l=https://evil.example/",
        "%75%72%6c=https://evil.example/",
    ] {
        for url in [
            format!("{signed}&{smuggled}"),
            format!("{path}?{smuggled}&{query}"),
        ] {
            let resp = get(&client, &url).await;
            assert_eq!(resp.status, 403, "{url}: {}", resp.body);
            assert!(resp.headers.get("location").is_none(), "{url}");
        }
    }
    // A name that decodes to something close to `url` is just an unknown parameter.
    let resp = get(&client, &format!("{signed}&url%00=https://evil.example/")).await;
    assert_eq!(resp.status, 302, "{}", resp.body);
    redirected += 1;
    assert_eq!(resp.headers["location"], "https://shop.example/p");

    let records = read_topic(
        &kafka.bootstrap_servers(),
        "clicks",
        redirected,
        Duration::from_secs(10),
    );
    assert_eq!(
        records.len(),
        redirected,
        "one click per redirect, none for a refusal"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_lines_from_the_future_or_over_the_line_limit_are_dead_lettered() {
    let kafka = embedded_kafka(1);
    let brokers = kafka.bootstrap_servers();
    let spool = tempfile::tempdir().unwrap();
    let config = test_config(&brokers, spool.path());
    let max_line = config.redirect.max_line_bytes;
    let server = RunningRedirect::start(config).await;
    let client = http_client();
    let url = format!("{}/api/v1/events", server.base());

    let future = GOOD_LINE
        .replace("p-1", "p-future")
        .replace("2026-11-22T10:00:00Z", "2099-12-31T23:59:00Z");
    // A 1.5 MB line that would otherwise parse (and fail later, or worse, succeed).
    let huge = GOOD_LINE
        .replace("p-1", "p-huge")
        .replace("Mozilla/5.0", &"M".repeat(1_500_000));
    let soon = GOOD_LINE.replace("p-1", "p-soon").replace(
        "\"2026-11-22T10:00:00Z\"",
        &(adclick::timefmt::now_millis() + 60_000).to_string(),
    );
    let body = format!("{GOOD_LINE}\n{future}\n{huge}\n{soon}\n");
    let auth = format!("Bearer {PARTNER_KEY}");
    let resp = request(&client, "POST", &url, &[("authorization", &auth)], &body).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let v: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
    let results = v["results"].as_array().unwrap();
    let fate = |i: usize| results[i]["status"].as_str().unwrap().to_string();
    assert_eq!(
        (0..4).map(fate).collect::<Vec<_>>(),
        ["accepted", "rejected", "rejected", "accepted"],
        "{}",
        resp.body
    );
    assert!(
        results[1]["error"]
            .as_str()
            .unwrap()
            .contains("max_future_skew_ms"),
        "{}",
        resp.body
    );
    assert!(
        results[2]["error"]
            .as_str()
            .unwrap()
            .contains("max_line_bytes"),
        "{}",
        resp.body
    );
    assert_eq!(results[3]["line"], 4);

    let clicks = read_topic(&brokers, "clicks", 2, Duration::from_secs(10));
    assert_eq!(clicks.len(), 2);
    let letters = dead_letters(&brokers, 2);
    assert_eq!(letters.len(), 2);
    let future_letter = letters
        .iter()
        .find(|l| l.code == "event_time_in_future")
        .unwrap();
    assert!(future_letter.payload.contains("2099-12-31T23:59:00Z"));
    let long = letters.iter().find(|l| l.code == "line_too_long").unwrap();
    assert!(long.payload.len() <= max_line, "{}", long.payload.len());
    assert!(
        huge.starts_with(&long.payload),
        "the payload is the line's beginning"
    );
    assert!(long.rejected_by == "redirect:partner:acme");
    server.stop().await;
}

/// The key is checked before the body is read: a keyless upload announcing 16 MiB is answered
/// 401 while not one byte of its body has been sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_uploads_are_refused_before_their_body_is_read() {
    let kafka = embedded_kafka(1);
    let spool = tempfile::tempdir().unwrap();
    let server =
        RunningRedirect::start(test_config(&kafka.bootstrap_servers(), spool.path())).await;
    for auth in ["", "authorization: Bearer wrong-key-0123456789\r\n"] {
        let head = format!(
            "POST /api/v1/events HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/x-ndjson\r\n\
             content-length: {}\r\n\r\n",
            16 << 20
        );
        let started = Instant::now();
        let answer = raw(server.addr, head.as_bytes(), Duration::from_secs(3))
            .await
            .expect("an answer before the body is sent");
        assert_eq!(status_of(&answer), 401, "{answer}");
        assert!(
            json_body(&answer)["error"]
                .as_str()
                .unwrap()
                .contains("API key")
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // With a key, an announced body over the batch limit is refused up front too.
    let head = format!(
        "POST /api/v1/events HTTP/1.1\r\nhost: x\r\nx-api-key: {PARTNER_KEY}\r\ncontent-length: {}\r\n\r\n",
        (16 << 20) + 1
    );
    let answer = raw(server.addr, head.as_bytes(), Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(status_of(&answer), 413, "{answer}");
    json_body(&answer);
    server.stop().await;
}

/// Chunked uploads are streamed line by line; a chunked body past the batch limit is cut
/// there, and the answer says which lines were handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_partner_uploads_are_streamed_and_cut_at_the_batch_limit() {
    let kafka = embedded_kafka(1);
    let brokers = kafka.bootstrap_servers();
    let spool = tempfile::tempdir().unwrap();
    let mut config = test_config(&brokers, spool.path());
    config.redirect.max_batch_bytes = 4096;
    let server = RunningRedirect::start(config).await;

    let chunked = |lines: &[String], split: usize| {
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let mut out = format!(
            "POST /api/v1/events HTTP/1.1\r\nhost: x\r\nx-api-key: {PARTNER_KEY}\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
        for piece in body.as_bytes().chunks(split) {
            out.push_str(&format!(
                "{:x}\r\n{}\r\n",
                piece.len(),
                String::from_utf8_lossy(piece)
            ));
        }
        out.push_str("0\r\n\r\n");
        out
    };
    let lines: Vec<String> = (0..3)
        .map(|i| GOOD_LINE.replace("p-1", &format!("chunk-{i}")))
        .collect();
    // Chunks of 37 bytes: lines end in the middle of chunks and chunks in the middle of lines.
    let answer = raw(
        server.addr,
        chunked(&lines, 37).as_bytes(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(status_of(&answer), 200, "{answer}");
    let v = json_body(&answer);
    assert_eq!(v["accepted"], 3, "{v}");

    // 40 lines of ~240 bytes: about 10 KB, over the 4 KiB limit.
    let many: Vec<String> = (0..40)
        .map(|i| GOOD_LINE.replace("p-1", &format!("many-{i}")))
        .collect();
    let answer = raw(
        server.addr,
        chunked(&many, 1000).as_bytes(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(status_of(&answer), 413, "{answer}");
    let v = json_body(&answer);
    let accepted = v["accepted"].as_u64().unwrap() as usize;
    assert!((1..40).contains(&accepted), "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("max_batch_bytes"),
        "{v}"
    );
    let clicks = read_topic(&brokers, "clicks", 3 + accepted, Duration::from_secs(10));
    assert_eq!(
        clicks.len(),
        3 + accepted,
        "exactly the lines answered as accepted"
    );
    server.stop().await;
}

/// 300 clients that send half a request (and trickle a byte now and then) neither keep a
/// normal click from its 302 nor keep their connections: the header-read timeout closes them.
/// An upload that stalls mid-body is closed by the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_and_never_block_clicks() {
    let kafka = embedded_kafka(1);
    let spool = tempfile::tempdir().unwrap();
    let mut config = test_config(&kafka.bootstrap_servers(), spool.path());
    config.redirect.header_read_timeout_ms = 1_000;
    config.redirect.idle_timeout_ms = 1_000;
    let keyring = Keyring::new(&config.signing.keys, None).unwrap();
    let server = RunningRedirect::start(config).await;
    let addr = server.addr;

    let mut slow = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET /api/v1/click/imp-slow-{i}?ad_id=").as_bytes())
            .await
            .unwrap();
        slow.push(s);
    }
    let trickle = {
        let mut conns: Vec<TcpStream> = slow.drain(..150).collect();
        tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                for c in &mut conns {
                    let _ = c.write_all(b"x").await;
                }
            }
            conns
        })
    };
    // A stalled upload: a key, a length, a few bytes, then nothing.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(
            format!(
                "POST /api/v1/events HTTP/1.1\r\nhost: x\r\nx-api-key: {PARTNER_KEY}\r\n\
                 content-length: 100000\r\n\r\n{{\"impression_id\""
            )
            .as_bytes(),
        )
        .await
        .unwrap();

    let client = http_client();
    let url = keyring.click_url(
        &server.base(),
        &claims("imp-while-slow", "https://shop.example/p"),
    );
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(2), get(&client, &url))
        .await
        .expect("a click is answered while 300 slow clients are connected");
    assert_eq!(resp.status, 302, "{}", resp.body);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );

    // Within the timeout (plus slack), every slow connection has been closed by the server.
    let deadline = Duration::from_millis(2_500);
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(
            closed_by_server(s, deadline).await,
            "idle half-request {i} still open"
        );
    }
    let mut trickled = trickle.await.unwrap();
    for (i, s) in trickled.iter_mut().enumerate() {
        assert!(
            closed_by_server(s, deadline).await,
            "trickling half-request {i} still open"
        );
    }
    assert!(
        closed_by_server(&mut stalled, deadline).await,
        "stalled upload still open"
    );
    // And the server still serves.
    let again = keyring.click_url(
        &server.base(),
        &claims("imp-after", "https://shop.example/p"),
    );
    assert_eq!(get(&http_client(), &again).await.status, 302);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_answered_503_in_json() {
    let kafka = embedded_kafka(1);
    let spool = tempfile::tempdir().unwrap();
    let mut config = test_config(&kafka.bootstrap_servers(), spool.path());
    config.redirect.max_connections = 20;
    let server = RunningRedirect::start(config).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let answer = raw(
        server.addr,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await
    .expect("an answer over the limit");
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(
        json_body(&answer)["error"]
            .as_str()
            .unwrap()
            .contains("too many connections")
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    // Slots free up as connections close.
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = raw(
        server.addr,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    assert_eq!(status_of(&answer), 200, "{answer}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_answer_is_json() {
    let kafka = embedded_kafka(1);
    let spool = tempfile::tempdir().unwrap();
    let server =
        RunningRedirect::start(test_config(&kafka.bootstrap_servers(), spool.path())).await;
    let long = format!("/api/v1/click/imp?ad_id={}", "a".repeat(10_000));
    for (request, status) in [
        ("GET /nope HTTP/1.1\r\nhost: x\r\n\r\n".to_string(), 404),
        ("DELETE /healthz HTTP/1.1\r\nhost: x\r\n\r\n".into(), 405),
        ("GET /api/v1/events HTTP/1.1\r\nhost: x\r\n\r\n".into(), 405),
        (
            "POST /api/v1/click/imp HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".into(),
            405,
        ),
        (format!("GET {long} HTTP/1.1\r\nhost: x\r\n\r\n"), 414),
    ] {
        let answer = raw(server.addr, request.as_bytes(), Duration::from_secs(3))
            .await
            .unwrap();
        assert_eq!(status_of(&answer), status, "{request:.60}: {answer}");
        assert!(json_body(&answer)["error"].is_string(), "{answer}");
    }
    server.stop().await;
}

/// WARN and ERROR events logged by this test binary.
fn loud_events() -> Arc<Mutex<Vec<String>>> {
    static EVENTS: OnceLock<Arc<Mutex<Vec<String>>>> = OnceLock::new();
    EVENTS
        .get_or_init(|| {
            let events = Arc::new(Mutex::new(Vec::new()));
            let sink = events.clone();
            let writer = move || Capture(sink.clone());
            let _ = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::WARN)
                .with_writer(writer)
                .try_init();
            events
        })
        .clone()
}

struct Capture(Arc<Mutex<Vec<String>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(buf).into_owned());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Clients that hang up mid-request, or send garbage, are their own business: nothing at WARN
/// or ERROR about their connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnects_are_not_errors() {
    let events = loud_events();
    let kafka = embedded_kafka(1);
    let spool = tempfile::tempdir().unwrap();
    let server =
        RunningRedirect::start(test_config(&kafka.bootstrap_servers(), spool.path())).await;
    for request in [
        &b"GET /api/v1/click/imp?ad_id="[..],
        b"POST /api/v1/events HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc",
        b"\x16\x03\x01 not http at all\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop().await;
    let loud: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|l| {
            ["warp", "hyper", "http_server"]
                .iter()
                .any(|t| l.contains(t))
        })
        // The capture is process-wide and the tests of this file run at once: another one
        // fills its own server to the connection limit on purpose, and that warning is its.
        .filter(|l| !l.contains("connection limit reached"))
        .cloned()
        .collect();
    assert!(loud.is_empty(), "{loud:?}");
}
