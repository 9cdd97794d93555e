//! Invalid traffic at the edge, end to end: real HTTP on loopback into the embedded broker.
//! Every reason the redirect finds, on clicks and on partner lines; flagged clicks are
//! redirected and counted like any other (flag, never drop); the signed impression time
//! reaches the event, and a tampered one is refused.

use adclick_testkit as common;

use std::collections::BTreeMap;
use std::time::Duration;

use adclick::config::Config;
use adclick::event::ClickEvent;
use adclick::kafka::embedded::EmbeddedKafka;
use adclick::token::{ClickClaims, Keyring};
use adclick_dataflows::invalid::{Reason, Reasons};
use common::*;

const BROWSER: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) \
    AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
const HEADLESS: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
    HeadlessChrome/124.0.0.0 Safari/537.36";

fn claims(impression: &str) -> ClickClaims {
    common::claims(
        impression,
        "https://shop.example/landing",
        common::in_an_hour(),
    )
}

/// A redirect judging addresses from `x-client-ip` (as behind a trusted edge) against two
/// documentation ranges, so loopback clicks can come "from" anywhere.
fn config(kafka: &EmbeddedKafka, spool: &std::path::Path, ranges: &std::path::Path) -> Config {
    let mut c = test_config(&kafka.bootstrap_servers(), spool);
    c.redirect.client_ip_header = "x-client-ip".into();
    c.redirect.datacenter_cidrs_file = Some(ranges.to_path_buf());
    c
}

fn write_ranges(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("datacenter.txt");
    std::fs::write(&path, "# test ranges\n203.0.113.0/24\n2001:db8::/32\n").unwrap();
    path
}

/// The events of `clicks` by impression id, once `n` have arrived.
fn events(kafka: &EmbeddedKafka, n: usize) -> BTreeMap<String, ClickEvent> {
    read_topic(
        &kafka.bootstrap_servers(),
        "clicks",
        n,
        Duration::from_secs(15),
    )
    .iter()
    .map(|(_, v)| {
        let e = ClickEvent::decode(v).unwrap();
        (e.impression_id.clone(), e)
    })
    .collect()
}

/// A click: impression, user agent (none: no header), `x-client-ip` (none: no header), the
/// reasons the edge must find.
type Case = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    &'static [Reason],
);

fn reasons(list: &[Reason]) -> Option<Reasons> {
    Some(Reasons::of(list.iter().copied()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_edge_reason_is_flagged_and_every_click_still_redirected() {
    let kafka = EmbeddedKafka::mock(&Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ranges = write_ranges(dir.path());
    let config = config(&kafka, &dir.path().join("spool"), &ranges);
    let keyring = Keyring::new(&config.signing.keys, None).unwrap();
    let server = RunningRedirect::start(config).await;
    let client = http_client();

    let cases: [Case; 8] = [
        ("imp-clean", Some(BROWSER), Some("198.51.100.1"), &[]),
        (
            "imp-bot",
            Some(GOOGLEBOT),
            Some("198.51.100.1"),
            &[Reason::KnownBot],
        ),
        (
            "imp-dc",
            Some(BROWSER),
            Some("203.0.113.9"),
            &[Reason::Datacenter],
        ),
        (
            "imp-dc6",
            Some(BROWSER),
            Some("2001:db8::7, 198.51.100.1"),
            &[Reason::Datacenter],
        ),
        (
            "imp-no-ua",
            None,
            Some("198.51.100.1"),
            &[Reason::NoUserAgent],
        ),
        ("imp-headless", Some(HEADLESS), None, &[Reason::Headless]),
        (
            "imp-curl-dc",
            Some("curl/8.5.0"),
            Some("203.0.113.200"),
            &[Reason::KnownBot, Reason::Datacenter],
        ),
        // The first address of the header is the client's; later ones are proxies.
        (
            "imp-proxied",
            Some(BROWSER),
            Some("198.51.100.1, 203.0.113.9"),
            &[],
        ),
    ];
    for (impression, ua, ip, _) in &cases {
        let url = keyring.click_url(&server.base(), &claims(impression));
        let mut headers = Vec::new();
        if let Some(ua) = ua {
            headers.push(("user-agent", *ua));
        }
        if let Some(ip) = ip {
            headers.push(("x-client-ip", *ip));
        }
        let resp = request(&client, "GET", &url, &headers, "").await;
        assert_eq!(resp.status, 302, "{impression}: flagged, never refused");
        assert_eq!(resp.headers["location"], "https://shop.example/landing");
    }

    let got = events(&kafka, cases.len());
    assert_eq!(got.len(), cases.len(), "{:?}", got.keys());
    for (impression, _, ip, want) in &cases {
        let e = &got[*impression];
        assert!(e.classified, "{impression}");
        assert_eq!(e.reasons(), reasons(want), "{impression}");
        // The hash is of the same address the data-center rule judged.
        let client = ip.map_or("127.0.0.1", |v| v.split(',').next().unwrap().trim());
        let enricher = adclick::event::enrich::Enricher::new("test-salt-0123456789");
        assert_eq!(e.ip_hash, enricher.keyed_hash("ip", client), "{impression}");
    }

    // /metrics counts each verdict by reason.
    let metrics = get(&client, &format!("{}/metrics", server.base())).await;
    for line in [
        r#"adclick_redirect_classified_total{path="click",result="clean"} 2"#,
        r#"adclick_redirect_classified_total{path="click",result="invalid"} 6"#,
        r#"adclick_redirect_invalid_reasons_total{path="click",reason="known_bot"} 2"#,
        r#"adclick_redirect_invalid_reasons_total{path="click",reason="datacenter"} 3"#,
        r#"adclick_redirect_invalid_reasons_total{path="click",reason="no_user_agent"} 1"#,
        r#"adclick_redirect_invalid_reasons_total{path="click",reason="headless"} 1"#,
        r#"adclick_redirect_invalid_reasons_total{path="click",reason="too_fast"} 0"#,
    ] {
        assert!(metrics.body.contains(line), "{line} in\n{}", metrics.body);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_lines_are_judged_by_the_fields_they_carry() {
    let kafka = EmbeddedKafka::mock(&Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ranges = write_ranges(dir.path());
    let server = RunningRedirect::start(config(&kafka, &dir.path().join("spool"), &ranges)).await;
    let client = http_client();

    let line = |impression: &str, extra: &str| {
        format!(
            r#"{{"impression_id":"{impression}","ad_id":"ad_1","campaign_id":"cmp_1","advertiser_id":"adv_1","publisher_id":"pub_1","click_timestamp":{}{extra}}}"#,
            adclick::timefmt::now_millis() - 1_000
        )
    };
    let lines = [
        line(
            "p-clean",
            &format!(r#","user_agent":"{BROWSER}","ip":"198.51.100.4""#),
        ),
        line("p-bot", &format!(r#","user_agent":"{GOOGLEBOT}""#)),
        line("p-dc", r#","ip":"2001:db8::1""#),
        line("p-blank-ua", r#","user_agent":"""#),
        line("p-headless", &format!(r#","user_agent":"{HEADLESS}""#)),
        // A feed that relays neither: nothing to judge, so clean.
        line("p-bare", ""),
    ];
    let resp = request(
        &client,
        "POST",
        &format!("{}/api/v1/events", server.base()),
        &[("authorization", &format!("Bearer {PARTNER_KEY}"))],
        &lines.join("\n"),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.json()["accepted"], 6, "{}", resp.body);

    let got = events(&kafka, lines.len());
    let expect: [(&str, &[Reason]); 6] = [
        ("p-clean", &[]),
        ("p-bot", &[Reason::KnownBot]),
        ("p-dc", &[Reason::Datacenter]),
        ("p-blank-ua", &[Reason::NoUserAgent]),
        ("p-headless", &[Reason::Headless]),
        ("p-bare", &[]),
    ];
    for (impression, want) in expect {
        let e = &got[impression];
        assert_eq!(e.source, "partner:acme");
        assert_eq!(e.reasons(), reasons(want), "{impression}");
        assert_eq!(e.impression_time_ms, 0, "partners sign no impression time");
    }
    let metrics = get(&client, &format!("{}/metrics", server.base())).await;
    assert!(
        metrics
            .body
            .contains(r#"adclick_redirect_classified_total{path="events",result="invalid"} 4"#),
        "{}",
        metrics.body
    );
    server.stop().await;
}

/// Without `redirect.client_ip_header` configured, a header naming another address is not
/// believed: the TCP peer (loopback) is judged and hashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_forwarding_header_cannot_move_a_click_into_a_range() {
    let kafka = EmbeddedKafka::mock(&Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ranges = write_ranges(dir.path());
    let mut config = config(&kafka, &dir.path().join("spool"), &ranges);
    config.redirect.client_ip_header = String::new();
    let keyring = Keyring::new(&config.signing.keys, None).unwrap();
    let server = RunningRedirect::start(config).await;
    let client = http_client();
    let url = keyring.click_url(&server.base(), &claims("imp-spoof"));
    let headers = [("user-agent", BROWSER), ("x-client-ip", "203.0.113.9")];
    let resp = request(&client, "GET", &url, &headers, "").await;
    assert_eq!(resp.status, 302);
    let e = &events(&kafka, 1)["imp-spoof"];
    assert_eq!(e.reasons(), Some(Reasons::NONE));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signed_impression_time_reaches_the_event_and_cannot_be_altered() {
    let kafka = EmbeddedKafka::mock(&Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ranges = write_ranges(dir.path());
    let config = config(&kafka, &dir.path().join("spool"), &ranges);
    let keyring = Keyring::new(&config.signing.keys, None).unwrap();
    let server = RunningRedirect::start(config).await;
    let client = http_client();
    let served = adclick::timefmt::now_millis() as u64 - 30_000;
    let headers = [("user-agent", BROWSER)];

    let new = keyring.click_url_served(&server.base(), &claims("imp-served"), Some(served));
    let old = keyring.click_url(&server.base(), &claims("imp-old-link"));
    for url in [&new, &old] {
        let resp = request(&client, "GET", url, &headers, "").await;
        assert_eq!(resp.status, 302, "{url}: {}", resp.body);
    }
    // Tampered (a second earlier: a too-fast click made to look slow), added to an old
    // link, removed from a new one: 403, no event.
    let stamp = format!("imp_time={served}");
    let tampered = [
        new.replace(&stamp, &format!("imp_time={}", served - 1_000)),
        format!("{old}&imp_time={served}"),
        new.replace(&format!("&{stamp}"), ""),
    ];
    for url in &tampered {
        assert_ne!(url, &new);
        let resp = request(&client, "GET", url, &headers, "").await;
        assert_eq!(resp.status, 403, "{url}");
        assert_eq!(resp.json()["error"], "forbidden");
    }
    let got = events(&kafka, 2);
    assert_eq!(got.len(), 2, "{:?}", got.keys());
    assert_eq!(got["imp-served"].impression_time_ms, served as i64);
    assert_eq!(got["imp-old-link"].impression_time_ms, 0);
    server.stop().await;
}

/// `adclick-redirect sign` signs the moment of signing as the impression time, or the one it
/// is given, or none.
#[test]
fn sign_signs_the_impression_time() {
    let cfg: Config = adclick::config::load(Some(demo_config().as_ref()), vec![]).unwrap();
    let ring = Keyring::new(&cfg.signing.keys, cfg.signing.active_kid.as_deref()).unwrap();
    let sign = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_adclick-redirect"))
            .args([
                "--config",
                &demo_config(),
                "sign",
                "--impression-id",
                "imp-t",
            ])
            .args([
                "--ad-id",
                "ad_1",
                "--campaign-id",
                "cmp_1",
                "--advertiser-id",
            ])
            .args([
                "adv_1",
                "--publisher-id",
                "pub_1",
                "--url",
                "https://shop.example/",
            ])
            .args(extra)
            .output()
            .unwrap();
        let url = String::from_utf8(out.stdout).unwrap();
        (out.status.success(), url.trim().to_string())
    };
    let time_of = |url: &str| {
        let query = url.split_once('?').unwrap().1;
        ring.verify_link("imp-t", query, adclick::timefmt::now_millis() / 1000)
            .unwrap()
            .impression_time_ms
    };
    let before = adclick::timefmt::now_millis() as u64;
    let (ok, url) = sign(&[]);
    let after = adclick::timefmt::now_millis() as u64;
    assert!(ok, "{url}");
    let t = time_of(&url).expect("signed by default");
    assert!((before..=after).contains(&t), "{t}");
    let (ok, url) = sign(&["--impression-time", "2026-04-20T12:00:00Z"]);
    assert!(ok);
    assert_eq!(time_of(&url), Some(1_776_686_400_000));
    let (ok, url) = sign(&["--impression-time", "1776686400123"]);
    assert!(ok);
    assert_eq!(time_of(&url), Some(1_776_686_400_123));
    let (ok, url) = sign(&["--no-impression-time"]);
    assert!(ok);
    assert_eq!(time_of(&url), None);
    assert!(!url.contains("imp_time"));
    assert!(!sign(&["--impression-time", "soon"]).0);
    assert!(
        !sign(&["--impression-time", "5"]).0,
        "1970 is no impression time"
    );
}
