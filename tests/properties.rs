//! Property tests of every parser that reads hostile input (issue 11, item 10): the click
//! token verifier, the protobuf/JSON event decoder, the partner NDJSON parser, the seed-003
//! log parser and the query parameter parser. Each one classifies every input (accepted, or
//! rejected with a reason or code) and none panics; valid inputs round-trip.
//!
//! CI runs a small fixed budget per property (the whole file takes seconds in a debug build).
//! A longer campaign sets the budget from the environment, e.g.
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test --release --test properties
//! ```
//!
//! A failure prints the minimal input proptest shrank it to; add it as a unit test in the
//! module concerned (no regression files are written).

use std::collections::HashMap;

use adclick::aggregator::source::decode::{FutureBound, file_line, kafka_record, to_click};
use adclick::event::enrich::Enricher;
use adclick::event::observed::{UNKNOWN_DIMENSION, parse_log_line, parse_partner_json};
use adclick::event::{
    ClickEvent, Device, MAX_EVENT_TIME_MS, MAX_ID_LEN, MIN_EVENT_TIME_MS, check_id, country,
    device_to_proto,
};
use adclick::query::params::{self, Access, Plan, QueryError};
use adclick::redirect::click::landing_url;
use adclick::token::{
    ClickClaims, Keyring, MAX_UNSIGNED_PARAMS, OPTIONAL_SIGNED_PARAMS, SIGNED_PARAMS, SigningKey,
    TokenError, check_landing_url,
};
use adclick_dataflows::invalid::{Reason, Reasons};
use adclick_dataflows::source::Record;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

/// The CI budget `cases`, unless `PROPTEST_CASES` asks for another.
fn budget(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config.failure_persistence = None;
    config
}

/// Text that is sometimes anything at all and sometimes close to what the parser expects
/// (`near`), so both the outer and the inner checks are reached.
fn text_near(near: BoxedStrategy<String>) -> BoxedStrategy<String> {
    prop_oneof![
        2 => any::<String>(),
        1 => "[ -~]{0,64}",
        3 => near,
    ]
    .boxed()
}

/// An id ingest accepts: 1 to 128 of `[A-Za-z0-9_.:-]`.
fn valid_id() -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Za-z0-9_.:-]{{1,{MAX_ID_LEN}}}")).unwrap()
}

/// `Record` has no `Debug`; what a failure message shows of one.
fn show(record: Option<&Record>) -> String {
    match record {
        None => "skipped".into(),
        Some(Record::Click(c)) => format!("{c:?}"),
        Some(Record::Rejected(r)) => format!("{r:?}"),
        Some(Record::Lost(g)) => format!("{g:?}"),
    }
}

const COUNTRIES: &[&str] = &["US", "DE", "FR", "GB", "JP", "BR", "IN", "ZZ", "NG", "AU"];

// ------------------------------------------------------------------------------------------
// 1. The click token verifier (src/token.rs) and the landing URL (src/redirect/click.rs)
// ------------------------------------------------------------------------------------------

fn keys() -> Vec<SigningKey> {
    vec![
        SigningKey {
            kid: "k1".into(),
            secret: "first-secret-0123456789".into(),
        },
        SigningKey {
            kid: "k2".into(),
            secret: "second-secret-0123456789".into(),
        },
    ]
}

/// A landing page `check_landing_url` accepts: scheme, host, optional port, path, query and
/// fragment.
fn landing_page() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("http"), Just("https")],
        "[a-z0-9]([a-z0-9-]{0,12}[a-z0-9])?(\\.[a-z]{2,6}){0,2}",
        proptest::option::of(1u16..),
        "(/[A-Za-z0-9._~%+-]{0,10}){0,3}",
        proptest::option::of("[A-Za-z0-9=&_%.+-]{0,30}"),
        proptest::option::of("[A-Za-z0-9?=&/_-]{0,15}"),
    )
        .prop_map(|(scheme, host, port, path, query, fragment)| {
            let mut url = format!("{scheme}://{host}");
            if let Some(p) = port {
                url += &format!(":{p}");
            }
            url += &path;
            if let Some(q) = query {
                url += &format!("?{q}");
            }
            if let Some(f) = fragment {
                url += &format!("#{f}");
            }
            url
        })
}

/// Claims as an ad server may mint them: ids and impression ids are anything (the signature
/// covers them byte for byte), the landing page is a valid one.
fn claims() -> impl Strategy<Value = ClickClaims> {
    let any_id = || text_near(valid_id().boxed());
    (
        any_id(),
        (any_id(), any_id(), any_id(), any_id()),
        landing_page(),
        1_000_000_000i64..4_000_000_000,
    )
        .prop_map(
            |(impression_id, (ad_id, campaign_id, advertiser_id, publisher_id), url, exp)| {
                ClickClaims {
                    impression_id,
                    ad_id,
                    campaign_id,
                    advertiser_id,
                    publisher_id,
                    url,
                    exp,
                }
            },
        )
}

/// A parameter name outside the signed set: tracking parameters and anything else.
fn unsigned_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("gclid".to_string()),
        Just("fbclid".to_string()),
        Just("msclkid".to_string()),
        "utm_[a-z]{0,8}",
        any::<String>(),
    ]
    .prop_filter("outside the signed set", |n| {
        n != "sig"
            && !SIGNED_PARAMS.contains(&n.as_str())
            && !OPTIONAL_SIGNED_PARAMS.contains(&n.as_str())
    })
}

fn unsigned_params() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((unsigned_name(), any::<String>()), 0..8)
}

fn encode(pairs: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn decode(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// Query strings an attacker might send: anything, and pairs of known and unknown names with
/// any values, in any spelling.
fn hostile_query() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        proptest::sample::select(&SIGNED_PARAMS[..]).prop_map(str::to_string),
        proptest::sample::select(&OPTIONAL_SIGNED_PARAMS[..]).prop_map(str::to_string),
        Just("sig".to_string()),
        Just("%75rl".to_string()),
        unsigned_name(),
    ];
    let value = prop_oneof![
        any::<String>(),
        Just("k1".to_string()),
        Just("k2".to_string()),
        "[A-Za-z0-9_-]{43}",
        "-?[0-9]{1,20}",
        landing_page(),
    ];
    let pairs = proptest::collection::vec((name, value), 0..12).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    });
    prop_oneof![any::<String>(), "[ -~]{0,200}", pairs]
}

/// What the verifier answers: the claims and the unsigned parameters, or why not.
type Verdict = Result<(ClickClaims, Vec<(String, String)>), TokenError>;

/// What may come back from the verifier, whatever it is given.
fn assert_classified(result: &Verdict, impression_id: &str, now: i64) {
    match result {
        Ok((claims, unsigned)) => {
            assert_eq!(claims.impression_id, impression_id);
            assert!(check_landing_url(&claims.url).is_ok(), "{}", claims.url);
            assert!(now <= claims.exp);
            assert!(unsigned.len() <= MAX_UNSIGNED_PARAMS);
            for (name, _) in unsigned {
                assert!(name != "sig" && !SIGNED_PARAMS.contains(&name.as_str()));
                assert!(!OPTIONAL_SIGNED_PARAMS.contains(&name.as_str()));
            }
        }
        Err(e) => {
            assert!(
                ["malformed", "unknown_key", "bad_signature", "expired"].contains(&e.label()),
                "{e:?}"
            );
            assert!(!e.to_string().is_empty());
        }
    }
}

/// One change to a signed click URL that must make it fail.
#[derive(Debug, Clone)]
enum Mutation {
    /// Parameter `index` (of the signed query, `sig` included) gets another value.
    Value(usize, String),
    /// Parameter `index` is left out.
    Drop(usize),
    /// Parameter `index` is given a second time, before or after the first.
    Repeat(usize, String, bool),
    /// The impression id in the path is another one.
    Impression(String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let n = SIGNED_PARAMS.len() + 1;
    let value = || {
        prop_oneof![
            any::<String>(),
            Just("k1".to_string()),
            "[A-Za-z0-9_-]{43}",
            "[0-9]{1,11}",
            landing_page()
        ]
    };
    prop_oneof![
        (0..n, value()).prop_map(|(i, v)| Mutation::Value(i, v)),
        (0..n).prop_map(Mutation::Drop),
        (0..n, value(), any::<bool>()).prop_map(|(i, v, b)| Mutation::Repeat(i, v, b)),
        any::<String>().prop_map(Mutation::Impression),
    ]
}

proptest! {
    #![proptest_config(budget(256))]

    /// Any query and impression id is answered: claims, or a refusal with a reason.
    #[test]
    fn token_any_query_is_classified(
        impression_id in any::<String>(),
        query in hostile_query(),
        now in 0i64..4_000_000_000,
    ) {
        let ring = Keyring::new(&keys(), None).unwrap();
        let result = ring.verify_click(&impression_id, &query, now);
        assert_classified(&result, &impression_id, now);
    }

    /// A URL the signer minted verifies, with either active key, before its expiry; with
    /// tracking parameters anywhere around it, which come back separately and in order.
    #[test]
    fn token_minted_urls_verify(
        claims in claims(),
        active in prop_oneof![Just("k1"), Just("k2")],
        before in unsigned_params(),
        after in unsigned_params(),
        early in 0i64..=1_000,
        served in proptest::option::of(MIN_EVENT_TIME_MS as u64..MAX_EVENT_TIME_MS as u64),
    ) {
        let signer = Keyring::new(&keys(), Some(active)).unwrap();
        let verifier = Keyring::new(&keys(), None).unwrap();
        let signed = signer.sign_query_served(&claims, served);
        let now = claims.exp - early;
        let link = verifier.verify_link(&claims.impression_id, &signed, now).unwrap();
        prop_assert_eq!(&link.claims, &claims);
        prop_assert_eq!(link.impression_time_ms, served);
        prop_assert!(link.unsigned.is_empty());

        let mut query = encode(&before);
        for part in [signed.as_str(), &encode(&after)] {
            if !query.is_empty() && !part.is_empty() {
                query.push('&');
            }
            query.push_str(part);
        }
        let (got, unsigned) = verifier.verify_click(&claims.impression_id, &query, now).unwrap();
        prop_assert_eq!(got, claims.clone());
        let expected: Vec<_> = before.iter().chain(&after).cloned().collect();
        prop_assert_eq!(unsigned, expected);
        // And once expired, the same URL is refused as expired.
        prop_assert_eq!(
            verifier.verify(&claims.impression_id, &signed, claims.exp + 1),
            Err(TokenError::Expired)
        );
    }

    /// Any single change to what the signature covers is refused.
    #[test]
    fn token_any_mutation_is_rejected(
        claims in claims(),
        mutation in mutation(),
        now in 0i64..4_000_000_000,
    ) {
        let ring = Keyring::new(&keys(), None).unwrap();
        let mut pairs = decode(&ring.sign_query(&claims));
        prop_assert_eq!(pairs.len(), SIGNED_PARAMS.len() + 1);
        let mut impression_id = claims.impression_id.clone();
        match &mutation {
            Mutation::Value(i, v) => {
                prop_assume!(pairs[*i].1 != *v);
                pairs[*i].1 = v.clone();
            }
            Mutation::Drop(i) => {
                pairs.remove(*i);
            }
            Mutation::Repeat(i, v, first) => {
                let pair = (pairs[*i].0.clone(), v.clone());
                pairs.insert(if *first { *i } else { *i + 1 }, pair);
            }
            Mutation::Impression(other) => {
                prop_assume!(*other != impression_id);
                impression_id = other.clone();
            }
        }
        let result = ring.verify_click(&impression_id, &encode(&pairs), now);
        assert_classified(&result, &impression_id, now);
        prop_assert!(result.is_err(), "{:?} accepted", mutation);
    }

    /// Unsigned parameters never move the landing page: the forwarded URL is the signed one
    /// (scheme, host, path, its own query) with pairs appended before its fragment, and is
    /// still a valid `Location`.
    #[test]
    fn token_unsigned_params_never_change_the_landing_page(
        claims in claims(),
        unsigned in unsigned_params(),
        forward_all in any::<bool>(),
    ) {
        let ring = Keyring::new(&keys(), None).unwrap();
        let query = format!("{}&{}", ring.sign_query(&claims), encode(&unsigned));
        let (got, kept) = ring.verify_click(&claims.impression_id, &query, 0).unwrap();
        prop_assert_eq!(&kept, &unsigned);
        let forward: Vec<String> = if forward_all {
            vec!["*".into()]
        } else {
            adclick::config::Config::default().redirect.forward_params
        };
        let landing = landing_url(&got.url, &kept, &forward);
        let (base, fragment) = got.url.split_at(got.url.find('#').unwrap_or(got.url.len()));
        prop_assert!(landing.starts_with(base), "{} from {}", landing, got.url);
        prop_assert!(landing.ends_with(fragment), "{} from {}", landing, got.url);
        let added = &landing[base.len()..landing.len() - fragment.len()];
        if !added.is_empty() {
            prop_assert!(
                ["?", "&"].iter().any(|s| added.starts_with(s)) || base.ends_with(['?', '&']),
                "{} from {}", landing, got.url
            );
            prop_assert!(!added.contains('#'), "{}", landing);
        }
        prop_assert!(
            landing.bytes().all(|b| b.is_ascii_graphic()),
            "not a valid Location: {}", landing
        );
    }
}

// ------------------------------------------------------------------------------------------
// 2. The event decoder (ClickEvent::decode, aggregator::source::decode::{kafka_record, file_line})
// ------------------------------------------------------------------------------------------

fn valid_event() -> impl Strategy<Value = ClickEvent> {
    let hash = prop_oneof![Just(String::new()), "[0-9a-f]{32}"];
    (
        (valid_id(), any::<u128>(), valid_id(), valid_id()),
        (valid_id(), valid_id(), MIN_EVENT_TIME_MS..MAX_EVENT_TIME_MS),
        (
            proptest::sample::select(COUNTRIES),
            proptest::sample::select(Device::ALL.to_vec()),
        ),
        (hash.clone(), hash, "\\PC{0,100}", "[a-z:_-]{1,64}"),
        (any::<u8>(), any::<bool>(), 0..MAX_EVENT_TIME_MS),
    )
        .prop_map(
            |(
                (impression_id, click, ad_id, campaign_id),
                (advertiser_id, publisher_id, event_time_ms),
                (country, device),
                (ip_hash, user_id_hash, user_agent, source),
                (reasons, classified, impression_time_ms),
            )| ClickEvent {
                impression_id,
                click_id: uuid::Uuid::from_u128(click).to_string(),
                ad_id,
                campaign_id,
                advertiser_id,
                publisher_id,
                event_time_ms,
                country: country.to_string(),
                device: device_to_proto(device),
                ip_hash,
                user_id_hash,
                user_agent,
                source,
                invalid_reasons: Reasons(reasons & 0x7f)
                    .iter()
                    .map(Reason::to_proto)
                    .collect(),
                classified,
                impression_time_ms,
            },
        )
}

/// Bytes a decoder may meet: anything, and valid encodings (protobuf or JSON) with one byte
/// changed, inserted or cut.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    let near = (
        valid_event(),
        any::<bool>(),
        any::<prop::sample::Index>(),
        any::<u8>(),
        0..3u8,
    )
        .prop_map(|(e, json, at, byte, how)| {
            let mut bytes = if json {
                e.to_json().into_bytes()
            } else {
                e.to_protobuf()
            };
            let i = at.index(bytes.len() + 1);
            match how {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => bytes.truncate(i),
            }
            bytes
        });
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        "[ -~\\n]{0,200}".prop_map(String::into_bytes),
        near,
    ]
}

fn code_is_known(code: &str) -> bool {
    ["protobuf", "json", "raw_log", "event_time_in_future"].contains(&code)
        || code.strip_prefix("invalid_").is_some_and(|f| !f.is_empty())
}

fn assert_record(record: &Record, key: &[u8], payload: &[u8], bound: FutureBound) {
    match record {
        Record::Click(c) => {
            assert!(c.event_time as i64 <= bound.now_ms + bound.max_skew_ms as i64);
            check_id("impression_id", &c.impression_id).unwrap();
        }
        Record::Rejected(r) => {
            assert!(code_is_known(&r.code), "{r:?}");
            assert!(!r.reason.is_empty());
            assert_eq!(r.key, key);
            assert_eq!(r.payload, payload);
        }
        Record::Lost(g) => panic!("a decoder made a gap: {g:?}"),
    }
}

/// The clock the decoder properties read at: mid-2026, five minutes of skew.
const BOUND: FutureBound = FutureBound {
    now_ms: 1_780_000_000_000,
    max_skew_ms: 300_000,
};

proptest! {
    #![proptest_config(budget(512))]

    /// Any bytes decode to a valid event or a rejection with a known code.
    #[test]
    fn decoder_any_bytes_are_classified(bytes in hostile_bytes(), key in any::<Vec<u8>>()) {
        match ClickEvent::decode(&bytes) {
            Ok(e) => prop_assert!(e.validate().is_ok()),
            Err(err) => prop_assert!(code_is_known(&err.code()), "{}", err.code()),
        }
        let record = kafka_record(&key, &bytes, BOUND, || "clicks/0@0".into());
        assert_record(&record, &key, &bytes, BOUND);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let enricher = Enricher::new("salt-0123456789");
            for line in text.lines() {
                if let Some(record) = file_line(line, &enricher, BOUND, || "f:1".into()) {
                    let payload = if line.trim().starts_with('{') { line.trim() } else { line };
                    assert_record(&record, b"", payload.as_bytes(), BOUND);
                }
            }
        }
    }

    /// A valid event survives protobuf and JSON (with or without leading blanks), and the
    /// aggregator counts it with its own fields.
    #[test]
    fn decoder_valid_events_round_trip(e in valid_event(), blanks in "[ \\t\\r\\n]{0,3}") {
        prop_assert_eq!(ClickEvent::decode(&e.to_protobuf()).unwrap(), e.clone());
        prop_assert_eq!(ClickEvent::decode(e.to_json().as_bytes()).unwrap(), e.clone());
        let padded = format!("{blanks}{}", e.to_json());
        prop_assert_eq!(ClickEvent::decode(padded.as_bytes()).unwrap(), e.clone());
        let bound = FutureBound { now_ms: MAX_EVENT_TIME_MS, max_skew_ms: 0 };
        match kafka_record(e.impression_id.as_bytes(), &e.to_protobuf(), bound, String::new) {
            Record::Click(c) => prop_assert_eq!(c, to_click(e.clone())),
            other => prop_assert!(false, "{}", show(Some(&other))),
        }
        match file_line(&e.to_json(), &Enricher::new("s"), bound, String::new) {
            Some(Record::Click(c)) => prop_assert_eq!(c, to_click(e)),
            other => prop_assert!(false, "{}", show(other.as_ref())),
        }
    }
}

// ------------------------------------------------------------------------------------------
// 3. The partner NDJSON parser (parse_partner_json, redirect::partner::handle)
// ------------------------------------------------------------------------------------------

/// A partner record's fields as JSON values, valid ones and broken ones.
fn partner_object() -> impl Strategy<Value = serde_json::Value> {
    let id = || {
        prop_oneof![
            4 => valid_id().prop_map(serde_json::Value::from),
            1 => any::<String>().prop_map(serde_json::Value::from),
            1 => any::<i64>().prop_map(serde_json::Value::from),
            1 => Just(serde_json::Value::Null),
        ]
    };
    let timestamp = prop_oneof![
        (MIN_EVENT_TIME_MS..1_770_000_000_000).prop_map(serde_json::Value::from),
        (MIN_EVENT_TIME_MS..1_770_000_000_000)
            .prop_map(|ms| adclick::timefmt::format_millis(ms).into()),
        Just("2099-12-31T23:59:00Z".into()),
        any::<String>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
    ];
    let optional = prop_oneof![
        Just(None),
        "[ -~]{0,20}".prop_map(Some),
        proptest::sample::select(COUNTRIES).prop_map(|c| Some(c.to_lowercase())),
    ];
    (
        (id(), id(), id(), id(), id()),
        timestamp,
        (
            optional.clone(),
            optional.clone(),
            optional.clone(),
            optional,
        ),
        proptest::option::of("[a-zA-Z_]{1,10}"),
        proptest::collection::vec(any::<bool>(), 10),
    )
        .prop_map(|(ids, ts, (user, ip, country, ua), extra, keep)| {
            let mut m = serde_json::Map::new();
            let names = [
                "impression_id",
                "ad_id",
                "campaign_id",
                "advertiser_id",
                "publisher_id",
            ];
            let values = [ids.0, ids.1, ids.2, ids.3, ids.4];
            for (i, (name, value)) in names.into_iter().zip(values).enumerate() {
                // Now and then a required field is missing.
                if keep[i] || keep[i + 5] {
                    m.insert(name.into(), value);
                }
            }
            m.insert("click_timestamp".into(), ts);
            for (name, value) in [
                ("user_id", user),
                ("ip", ip),
                ("country", country),
                ("user_agent", ua),
            ] {
                if let Some(v) = value {
                    m.insert(name.into(), v.into());
                }
            }
            if let Some(name) = extra {
                m.insert(name, 1.into());
            }
            serde_json::Value::Object(m)
        })
}

/// One NDJSON line: mostly partner records, sometimes anything.
fn partner_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => partner_object().prop_map(|v| v.to_string().into_bytes()),
        1 => "[ -~]{0,40}".prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>().prop_filter("one line", |b| *b != b'\n'), 0..40),
        1 => Just(Vec::new()),
        1 => "[ -~]{300,400}".prop_map(String::into_bytes),
    ]
}

fn partner_body() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec((partner_line(), any::<bool>()), 0..6),
        any::<bool>(),
    )
        .prop_map(|(lines, trailing)| {
            let mut body = Vec::new();
            for (i, (line, crlf)) in lines.iter().enumerate() {
                if i > 0 {
                    body.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
                }
                body.extend_from_slice(line);
            }
            if trailing && !body.is_empty() {
                body.push(b'\n');
            }
            body
        })
}

/// A redirect's state on the mock broker, with one partner and the smallest line limit.
struct Redirect {
    state: adclick::redirect::State,
    _kafka: adclick::kafka::embedded::EmbeddedKafka,
    _spool: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
}

const PARTNER_KEY: &str = "partner-key-0123456789";

impl Redirect {
    fn start() -> Self {
        let mut config = adclick::config::Config::default();
        let kafka = adclick::kafka::embedded::EmbeddedKafka::mock(&config.kafka).unwrap();
        let spool = tempfile::tempdir().unwrap();
        config.kafka.brokers = kafka.bootstrap_servers();
        config.redirect.spool_dir = spool.path().to_path_buf();
        config.redirect.max_line_bytes = 256;
        config.redirect.partners = vec![adclick::config::Partner {
            name: "acme".into(),
            api_key: PARTNER_KEY.into(),
        }];
        config.signing.keys = keys();
        config.privacy.salt = "test-salt-0123456789".into();
        Self {
            state: adclick::redirect::State::new(config).unwrap(),
            _kafka: kafka,
            _spool: spool,
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
        }
    }

    /// Posts `chunks` as one body; the status and the per-line results without click ids
    /// (new for every request).
    fn post(&self, chunks: Vec<Vec<u8>>) -> (u16, serde_json::Value) {
        let mut headers = warp::http::HeaderMap::new();
        headers.insert("x-api-key", PARTNER_KEY.parse().unwrap());
        let body = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, warp::Error>(bytes::Bytes::from(c))),
        );
        let response = self.runtime.block_on(adclick::redirect::partner::handle(
            &self.state,
            &headers,
            body,
        ));
        let status = response.status().as_u16();
        let mut v: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        if let Some(results) = v.get_mut("results").and_then(|r| r.as_array_mut()) {
            for r in results {
                let r = r.as_object_mut().unwrap();
                assert_eq!(
                    r.remove("click_id").is_some(),
                    r["status"] == "accepted",
                    "{r:?}"
                );
                assert!(
                    r["status"] == "accepted" || r.get("error").is_some(),
                    "{r:?}"
                );
            }
        }
        (status, v)
    }
}

proptest! {
    #![proptest_config(budget(512))]

    /// Any line parses to an observation or a rejection with a known code; a valid record
    /// parses back to its fields.
    #[test]
    fn partner_any_line_is_classified(
        line in text_near(partner_object().prop_map(|v| v.to_string()).boxed()),
    ) {
        match parse_partner_json(&line) {
            Ok(obs) => {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                for (name, got) in [
                    ("impression_id", &obs.impression_id),
                    ("ad_id", &obs.ad_id),
                    ("campaign_id", &obs.campaign_id),
                    ("advertiser_id", &obs.advertiser_id),
                    ("publisher_id", &obs.publisher_id),
                ] {
                    prop_assert_eq!(v[name].as_str(), Some(got.as_str()));
                }
                let ts = &v["click_timestamp"];
                let ms = match ts.as_i64() {
                    Some(ms) => ms,
                    None => adclick::timefmt::parse_millis(ts.as_str().unwrap()).unwrap(),
                };
                prop_assert_eq!(obs.event_time_ms, ms);
                prop_assert_eq!(obs.country.as_deref(), v["country"].as_str());
                prop_assert_eq!(obs.ip.as_deref(), v["ip"].as_str());
            }
            Err(e) => prop_assert!(code_is_known(&e.code()), "{}", e.code()),
        }
    }
}

/// A body cut into two chunks at every byte, and into random chunks, gets the same answer,
/// line for line, as the body in one piece.
#[test]
fn partner_chunk_splits_give_the_same_results() {
    let redirect = Redirect::start();
    let mut runner = TestRunner::new(budget(24));
    let strategy = (
        partner_body(),
        proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    );
    runner
        .run(&strategy, |(body, cuts)| {
            let whole = redirect.post(vec![body.clone()]);
            if let Some(results) = whole.1["results"].as_array() {
                let lines = results.len();
                prop_assert!(lines <= body.split(|b| *b == b'\n').count());
            }
            for at in 0..=body.len() {
                let split = redirect.post(vec![body[..at].to_vec(), body[at..].to_vec()]);
                prop_assert_eq!(&split, &whole, "cut at {}", at);
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for p in points.into_iter().chain([body.len()]) {
                chunks.push(body[from..p].to_vec());
                from = p;
            }
            prop_assert_eq!(&redirect.post(chunks), &whole);
            Ok(())
        })
        .unwrap();
}

// ------------------------------------------------------------------------------------------
// 4. The seed-003 log parser (parse_log_line)
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct LogLine {
    ad_id: String,
    event_time_ms: i64,
    user_id: String,
    ip: String,
    country: String,
}

fn log_line() -> impl Strategy<Value = (LogLine, String, String, u8)> {
    let ad_id = prop_oneof![
        valid_id(),
        // An ad id may begin like the header's first column.
        "ad_id[A-Za-z0-9_]{0,8}",
    ];
    let seconds = MIN_EVENT_TIME_MS / 1000..MAX_EVENT_TIME_MS / 1000;
    (
        (
            ad_id,
            seconds,
            "[A-Za-z0-9_.@-]{0,16}",
            prop_oneof![
                Just(String::new()),
                (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
                    .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
                "[0-9a-f:]{2,39}",
            ],
            prop_oneof![
                Just(String::new()),
                proptest::sample::select(COUNTRIES).prop_map(str::to_string),
                Just("USA".into()),
                Just("deu".into()),
            ],
        ),
        prop_oneof![Just(","), Just("\t")],
        prop_oneof![Just(""), Just(" ")],
        0..3u8,
    )
        .prop_map(|((ad_id, secs, user_id, ip, country), sep, pad, format)| {
            let l = LogLine {
                ad_id,
                event_time_ms: secs * 1000,
                user_id,
                ip,
                country,
            };
            let ts = match format {
                0 => chrono::DateTime::from_timestamp(secs, 0)
                    .unwrap()
                    .format("%Y-%m-%d %H:%M:%S")
                    .to_string(),
                1 => adclick::timefmt::format_millis(l.event_time_ms),
                _ => l.event_time_ms.to_string(),
            };
            let text = [&l.ad_id, &ts, &l.user_id, &l.ip, &l.country]
                .map(|f| format!("{pad}{f}{pad}"))
                .join(sep);
            (l, text, sep.to_string(), format)
        })
}

proptest! {
    #![proptest_config(budget(512))]

    /// Any line is skipped (blank, comment, header), parsed, or a `raw_log` rejection.
    #[test]
    fn log_any_line_is_classified(line in text_near(log_line().prop_map(|l| l.1).boxed())) {
        match parse_log_line(&line) {
            Ok(None) => {
                let t = line.trim_end_matches(['\r', '\n']);
                prop_assert!(
                    t.trim().is_empty() || t.starts_with('#') || t.trim_start().starts_with("ad_id")
                );
            }
            Ok(Some(obs)) => {
                prop_assert!(obs.impression_id.starts_with("log:"));
                prop_assert_eq!(obs.campaign_id, UNKNOWN_DIMENSION);
            }
            Err(e) => prop_assert_eq!(e.code(), "raw_log"),
        }
        let enricher = Enricher::new("salt-0123456789");
        if let Some(record) = file_line(&line, &enricher, BOUND, || "f:1".into()) {
            let payload = if line.trim().starts_with('{') { line.trim() } else { &line };
            assert_record(&record, b"", payload.as_bytes(), BOUND);
        }
    }

    /// A valid line parses back to its fields, whatever the separator, padding and line end,
    /// and the aggregator counts it.
    #[test]
    fn log_valid_lines_parse_to_their_fields(
        (l, text, _sep, _format) in log_line(),
        crlf in any::<bool>(),
    ) {
        let line = if crlf { format!("{text}\r\n") } else { text.clone() };
        let obs = parse_log_line(&line).unwrap();
        prop_assert!(obs.is_some(), "{:?} skipped", line);
        let obs = obs.unwrap();
        prop_assert_eq!(&obs.ad_id, &l.ad_id);
        prop_assert_eq!(obs.event_time_ms, l.event_time_ms);
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        prop_assert_eq!(&obs.user_id, &some(&l.user_id));
        prop_assert_eq!(&obs.ip, &some(&l.ip));
        prop_assert_eq!(&obs.country, &some(&l.country));
        prop_assert_eq!(obs.impression_id.len(), "log:".len() + 24);
        // The same click in the other separator is the same impression.
        let other = if text.contains('\t') {
            text.replace('\t', ",")
        } else {
            text.replace(',', "\t")
        };
        let again = parse_log_line(&other).unwrap().unwrap();
        prop_assert_eq!(again.impression_id, obs.impression_id);

        let bound = FutureBound { now_ms: MAX_EVENT_TIME_MS, max_skew_ms: 0 };
        match file_line(&line, &Enricher::new("s"), bound, String::new) {
            Some(Record::Click(c)) => {
                prop_assert_eq!(c.labels.ad_id, l.ad_id);
                prop_assert_eq!(c.event_time, l.event_time_ms as u64);
                let want = country::normalize(&l.country).unwrap_or(country::UNKNOWN);
                prop_assert_eq!(c.labels.country, want);
            }
            other => prop_assert!(false, "{:?}: {}", line, show(other.as_ref())),
        }
    }
}

// ------------------------------------------------------------------------------------------
// 5. The query parameter parser (src/query/params.rs)
// ------------------------------------------------------------------------------------------

fn plan() -> Plan {
    Plan {
        frontier: 1_776_690_000_000,
        minute_retention_ms: 48 * 3_600_000,
        top_n: 100,
        top_windows: vec![1, 5, 60],
    }
}

const QUERY_NAMES: &[&str] = &[
    "from",
    "to",
    "filter",
    "groupBy",
    "count",
    "window",
    "ad_id",
    "campaign_id",
    "advertiser_id",
    "publisher_id",
    "country",
    "device",
];

/// A query string: anything, or known names with plausible and implausible values.
fn hostile_params() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        4 => proptest::sample::select(QUERY_NAMES).prop_map(str::to_string),
        1 => any::<String>(),
    ];
    let value = prop_oneof![
        "20[0-9]{2}-[01][0-9]-[0-3][0-9]",
        "20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9]Z",
        "[0-9]{1,20}",
        "-[0-9]{1,20}",
        "(minute|hour|day|ad_id|country|device|week)(,(minute|hour|day|ad_id|country|device)){0,3}",
        "(country|device|ad_id|campaign_id|x):[A-Za-z_ ]{0,6}\
         (,(country|device):[a-zA-Z]{0,4}){0,2}",
        proptest::sample::select(COUNTRIES).prop_map(str::to_string),
        "(mobile|MOBILE|robot|usa|us)",
        any::<String>(),
        "[a-z]{200,300}",
    ];
    let pairs = proptest::collection::vec((name, value), 0..7).prop_map(|pairs| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    });
    prop_oneof![3 => pairs, 1 => any::<String>(), 1 => "[ -~]{0,80}"]
}

/// Parses a query string as the server's `warp::query::<HashMap<String, String>>()` does
/// (form-urlencoded; for a repeated name, the last value).
fn query_map(query: &str) -> HashMap<String, String> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// The query, or a 400 whose message names a parameter the request had, or a required one;
/// or, for an advertiser, the 404 `not found`.
fn assert_answer(
    result: Result<impl std::fmt::Debug, QueryError>,
    params: &HashMap<String, String>,
    access: &Access,
    path: &[&str],
) {
    let message = match result {
        Ok(_) => return,
        Err(QueryError::NotFound) => {
            assert!(matches!(access, Access::Advertiser(_)), "not found");
            return;
        }
        Err(QueryError::BadParam(message)) => message,
        // Only the server says reach is off; the parameters never do.
        Err(e @ QueryError::Off(_)) => panic!("{e}"),
    };
    let named = message
        .strip_prefix("parameter `")
        .and_then(|m| {
            params
                .keys()
                .map(String::as_str)
                .chain(["from", "to"])
                .chain(path.iter().copied())
                .find(|n| m.starts_with(&format!("{n}`")))
        })
        .is_some();
    assert!(
        named,
        "names no parameter of the request: {message:?} for {params:?}"
    );
}

proptest! {
    #![proptest_config(budget(512))]

    /// Every endpoint's parameters are a query or a 400 naming a parameter, for an admin and
    /// for an advertiser.
    #[test]
    fn query_any_params_are_a_query_or_a_400_naming_one(
        query in hostile_params(),
        ad in text_near(valid_id().boxed()),
        advertiser in any::<bool>(),
    ) {
        let params = query_map(&query);
        let access = if advertiser {
            Access::Advertiser("adv_1".into())
        } else {
            Access::Admin
        };
        let plan = plan();
        let ad_count = params::path_id("ad_id", &ad)
            .and_then(|ad| params::ad_count(&ad, &params, &access, &plan));
        assert_answer(ad_count, &params, &access, &["ad_id"]);
        assert_answer(params::report(&params, &access, &plan), &params, &access, &[]);
        assert_answer(params::popular(&params, &access, &plan), &params, &access, &[]);
    }

    /// A path id is its percent-decoding if ingest would accept that, else a 400 naming it;
    /// any spelling of a valid id, escaped byte by byte or not, is that id.
    #[test]
    fn query_path_ids_decode_or_name_the_parameter(
        raw in text_near("([A-Za-z0-9_.:+-]|%[0-9A-Fa-f]{2}|%.?){0,40}".boxed()),
        id in valid_id(),
        escape in proptest::collection::vec(any::<bool>(), MAX_ID_LEN),
    ) {
        match params::path_id("ad_id", &raw) {
            Ok(decoded) => prop_assert!(check_id("ad_id", &decoded).is_ok()),
            Err(e) => {
                let m = e.to_string();
                prop_assert!(m.starts_with("parameter `ad_id`"), "{}", m);
                prop_assert!(m.len() < 300, "echoes the whole value: {} bytes", m.len());
            }
        }
        let spelled: String = id
            .bytes()
            .zip(&escape)
            .map(|(b, e)| if *e { format!("%{b:02X}") } else { (b as char).to_string() })
            .collect();
        prop_assert_eq!(params::path_id("ad_id", &spelled).unwrap(), id);
    }

    /// A well-formed report query over a valid range is answered with that range.
    #[test]
    fn query_valid_reports_parse(
        from_day in 0u64..200,
        days in 1u64..30,
        group in proptest::sample::subsequence(
            vec!["day", "ad_id", "campaign_id", "publisher_id", "country", "device"], 0..=6),
        country in proptest::option::of(proptest::sample::select(COUNTRIES)),
    ) {
        let day = 86_400_000u64;
        let from = 1_750_000_000_000 / day * day + from_day * day;
        let to = from + days * day;
        let fmt = |ms: u64| adclick::timefmt::format_millis(ms as i64);
        let mut params: HashMap<String, String> = [
            ("from", fmt(from)),
            ("to", fmt(to)),
            ("groupBy", group.join(",")),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .into();
        if let Some(c) = country {
            params.insert("filter".into(), format!("country:{}", c.to_lowercase()));
        }
        match params::report(&params, &Access::Admin, &plan()) {
            Ok(adclick_dataflows::query::QueryKind::Report { from: f, to: t, .. }) => {
                prop_assert_eq!((f, t), (from, to));
            }
            other => prop_assert!(false, "{:?} for {:?}", other, params),
        }
    }
}
