//! The click endpoint end to end: real HTTP on loopback into the embedded Kafka broker.

use adclick_testkit as common;

use std::collections::HashSet;
use std::time::Duration;

use adclick::event::{ClickEvent, Device, dead_letter::DeadLetter};
use adclick::kafka::embedded::EmbeddedKafka;
use adclick::token::{ClickClaims, Keyring, SigningKey};
use common::*;

fn claims(impression: &str, exp: i64) -> ClickClaims {
    common::claims(
        impression,
        "https://shop.example/landing?utm_source=adclick",
        exp,
    )
}

fn far_future() -> i64 {
    adclick::timefmt::now_millis() / 1000 + 3600
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_click_redirects_and_lands_in_kafka_once_with_every_field() {
    let kafka = EmbeddedKafka::mock(&Default::default()).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let config = test_config(&kafka.bootstrap_servers(), spool.path());
    let keyring = Keyring::new(&config.signing.keys, None).unwrap();
    let server = RunningRedirect::start(config.clone()).await;
    let client = http_client();

    let url = keyring.click_url(&server.base(), &claims("imp-e2e-1", far_future()));
    let before = adclick::timefmt::now_millis();
    let resp = request(
        &client,
        "GET",
        &url,
        &[
            (
                "user-agent",
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148",
            ),
            ("x-edge-country", "de"),
            ("cookie", "uid=user-77"),
        ],
        "",
    )
    .await;
    let after = adclick::timefmt::now_millis();
    assert_eq!(resp.status, 302, "{}", resp.body);
    assert_eq!(
        resp.headers["location"],
        "https://shop.example/landing?utm_source=adclick"
    );

    let records = read_topic(
        &kafka.bootstrap_servers(),
        "clicks",
        1,
        Duration::from_secs(10),
    );
    assert_eq!(records.len(), 1, "exactly one record");
    let (key, value) = &records[0];
    assert_eq!(key, b"imp-e2e-1");
    let e = ClickEvent::decode(value).unwrap();
    assert_eq!(e.impression_id, "imp-e2e-1");
    assert_eq!(
        (
            e.ad_id.as_str(),
            e.campaign_id.as_str(),
            e.advertiser_id.as_str(),
            e.publisher_id.as_str()
        ),
        ("ad_9", "cmp_3", "adv_1", "pub_7")
    );
    assert!((before..=after).contains(&e.event_time_ms));
    assert_eq!(e.country, "DE");
    assert_eq!(e.device(), Some(Device::Mobile));
    assert_eq!(
        uuid::Uuid::parse_str(&e.click_id)
            .unwrap()
            .get_version_num(),
        7
    );
    let enricher = adclick::event::enrich::Enricher::new(config.privacy.salt.as_bytes());
    assert_eq!(e.ip_hash, enricher.keyed_hash("ip", "127.0.0.1"));
    assert_eq!(e.user_id_hash, enricher.keyed_hash("user", "user-77"));
    assert!(e.user_agent.contains("iPhone"));
    assert_eq!(e.source, "redirect");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_unknown_key_links_get_403_and_produce_nothing() {
    let kafka = EmbeddedKafka::mock(&Default::default()).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let config = test_config(&kafka.bootstrap_servers(), spool.path());
    let keyring = Keyring::new(&config.signing.keys, None).unwrap();
    let stranger = Keyring::new(
        &[SigningKey {
            kid: "2025-99".into(),
            secret: "a-key-nobody-configured".into(),
        }],
        None,
    )
    .unwrap();
    let server = RunningRedirect::start(config).await;
    let client = http_client();
    let base = server.base();

    let good = keyring.click_url(&base, &claims("imp-ok", far_future()));
    let cases = [
        (
            "tampered landing page",
            good.replace("shop.example", "evil.example"),
        ),
        ("tampered ad", good.replace("ad_id=ad_9", "ad_id=ad_1")),
        ("other impression", good.replace("/imp-ok?", "/imp-other?")),
        ("signature cut", good[..good.len() - 4].to_string()),
        (
            "no signature",
            good.split("&sig=").next().unwrap().to_string(),
        ),
        (
            "expired",
            keyring.click_url(&base, &claims("imp-old", 1_000)),
        ),
        (
            "unknown key",
            stranger.click_url(&base, &claims("imp-k", far_future())),
        ),
        ("no query", format!("{base}/api/v1/click/imp-ok")),
        (
            "bad impression id",
            keyring.click_url(&base, &claims("imp%20x", far_future())),
        ),
    ];
    for (what, url) in &cases {
        let resp = get(&client, url).await;
        assert_eq!(resp.status, 403, "{what}: {}", resp.body);
        assert!(resp.headers.get("location").is_none(), "{what}");
        let body: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(body["error"], "forbidden", "{what}");
        assert!(
            body["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{what}"
        );
    }
    // The one good click is the only record.
    assert_eq!(get(&client, &good).await.status, 302);
    let records = read_topic(
        &kafka.bootstrap_servers(),
        "clicks",
        1,
        Duration::from_secs(10),
    );
    let keys: Vec<_> = records.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, vec![b"imp-ok".to_vec()]);

    let metrics = get(&client, &format!("{base}/metrics")).await.body;
    let count = |outcome: &str| -> u64 {
        let prefix =
            format!("adclick_redirect_requests_total{{endpoint=\"click\",outcome=\"{outcome}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{outcome} missing from /metrics:\n{metrics}"))
            .parse()
            .unwrap()
    };
    // Six forgeries (altered, cut, unsigned, no query), a bad impression id, one expired link
    // and one unknown key.
    assert_eq!(count("bad_signature") + count("malformed"), 6);
    assert_eq!(count("invalid_event"), 1);
    assert!(count("bad_signature") >= 3);
    assert_eq!(count("expired"), 1);
    assert_eq!(count("unknown_key"), 1);
    assert_eq!(count("redirected"), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_batches_are_answered_per_event_and_rejects_are_dead_lettered() {
    let kafka = EmbeddedKafka::mock(&Default::default()).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let server =
        RunningRedirect::start(test_config(&kafka.bootstrap_servers(), spool.path())).await;
    let client = http_client();
    let url = format!("{}/api/v1/events", server.base());
    let good = r#"{"impression_id":"p-1","ad_id":"ad_1","campaign_id":"cmp_1","advertiser_id":"adv_1","publisher_id":"pub_1","click_timestamp":"2026-11-22T10:00:00Z","ip":"198.51.100.7","country":"FRA","user_agent":"Mozilla/5.0 (Windows NT 10.0; Win64; x64)"}"#;
    let bad_country = good.replace("p-1", "p-2").replace("FRA", "Narnia");
    let body = format!("{good}\n{{not json\n\n{bad_country}\n");

    let unauthorized = request(&client, "POST", &url, &[], &body).await;
    assert_eq!(unauthorized.status, 401);
    let wrong = request(
        &client,
        "POST",
        &url,
        &[("authorization", "Bearer nope")],
        &body,
    )
    .await;
    assert_eq!(wrong.status, 401);

    let auth = format!("Bearer {PARTNER_KEY}");
    let resp = request(&client, "POST", &url, &[("authorization", &auth)], &body).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let v: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(v["accepted"], 1);
    assert_eq!(v["rejected"], 2);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results[0]["line"], 1);
    assert_eq!(results[0]["status"], "accepted");
    assert_eq!(results[1]["line"], 2);
    assert_eq!(results[1]["status"], "rejected");
    assert_eq!(results[2]["line"], 4);
    assert!(
        results[2]["error"].as_str().unwrap().contains("country"),
        "{}",
        resp.body
    );

    let empty = request(&client, "POST", &url, &[("x-api-key", PARTNER_KEY)], " \n").await;
    assert_eq!(empty.status, 400);

    let brokers = kafka.bootstrap_servers();
    let clicks = read_topic(&brokers, "clicks", 1, Duration::from_secs(10));
    assert_eq!(clicks.len(), 1);
    let e = ClickEvent::decode(&clicks[0].1).unwrap();
    assert_eq!(
        (e.impression_id.as_str(), e.country.as_str()),
        ("p-1", "FR")
    );
    assert_eq!(
        e.event_time_ms,
        adclick::timefmt::parse_millis("2026-11-22T10:00:00Z").unwrap()
    );
    assert_eq!(e.source, "partner:acme");
    assert_eq!(e.device(), Some(Device::Desktop));

    let dlq = read_topic(&brokers, "clicks-dlq", 2, Duration::from_secs(10));
    let letters: Vec<DeadLetter> = dlq
        .iter()
        .map(|(_, v)| serde_json::from_slice(v).unwrap())
        .collect();
    let codes: HashSet<_> = letters.iter().map(|l| l.code.as_str()).collect();
    assert_eq!(codes, HashSet::from(["json", "invalid_country"]));
    assert!(
        letters
            .iter()
            .all(|l| l.rejected_by == "redirect:partner:acme")
    );
    assert!(letters.iter().any(|l| l.payload == "{not json"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_unknown_paths() {
    let kafka = EmbeddedKafka::mock(&Default::default()).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let server =
        RunningRedirect::start(test_config(&kafka.bootstrap_servers(), spool.path())).await;
    let client = http_client();
    let base = server.base();
    assert_eq!(get(&client, &format!("{base}/healthz")).await.status, 200);
    let ready = get(&client, &format!("{base}/readyz")).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(get(&client, &format!("{base}/nope")).await.status, 404);
    let metrics = get(&client, &format!("{base}/metrics")).await;
    assert!(
        metrics
            .body
            .contains("adclick_redirect_outbox_spool_records"),
        "{}",
        metrics.body
    );
    server.stop().await;
}
