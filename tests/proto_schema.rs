//! The Rust `ClickEvent` and `proto/adclick/v1/click.proto` describe the same bytes: checked
//! with `protoc` itself in both directions, so other producers can trust the .proto.

use std::io::Write;
use std::process::{Command, Stdio};

use adclick::event::{ClickEvent, Device, device_to_proto};
use adclick_dataflows::invalid::{Reason, Reasons};

fn protoc(mode: &str, input: &[u8]) -> Vec<u8> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut child = Command::new("protoc")
        .arg(format!("--{mode}=adclick.v1.ClickEvent"))
        .arg(format!("-I{root}/proto"))
        .arg("adclick/v1/click.proto")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("protoc is required (Debian package protobuf-compiler; scripts/install-deps.sh)");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn sample() -> ClickEvent {
    ClickEvent {
        impression_id: "imp-77".into(),
        click_id: "0192f6a4-7c1e-7b3a-9c44-6f1d2e3a4b5c".into(),
        ad_id: "ad_1".into(),
        campaign_id: "cmp_2".into(),
        advertiser_id: "adv_3".into(),
        publisher_id: "pub_4".into(),
        event_time_ms: 1_776_686_400_123,
        country: "JP".into(),
        device: device_to_proto(Device::Tablet),
        ip_hash: "00112233445566778899aabbccddeeff".into(),
        user_id_hash: "ffeeddccbbaa99887766554433221100".into(),
        user_agent: "Mozilla/5.0 (iPad)".into(),
        source: "redirect".into(),
        invalid_reasons: vec![Reason::KnownBot.to_proto(), Reason::Headless.to_proto()],
        classified: true,
        impression_time_ms: 1_776_686_399_000,
    }
}

const TEXT: &str = r#"impression_id: "imp-77"
click_id: "0192f6a4-7c1e-7b3a-9c44-6f1d2e3a4b5c"
ad_id: "ad_1"
campaign_id: "cmp_2"
advertiser_id: "adv_3"
publisher_id: "pub_4"
event_time_ms: 1776686400123
country: "JP"
device: DEVICE_TABLET
ip_hash: "00112233445566778899aabbccddeeff"
user_id_hash: "ffeeddccbbaa99887766554433221100"
user_agent: "Mozilla/5.0 (iPad)"
source: "redirect"
invalid_reasons: INVALID_REASON_KNOWN_BOT
invalid_reasons: INVALID_REASON_HEADLESS
classified: true
impression_time_ms: 1776686399000
"#;

/// `TEXT` as a writer from before invalid-traffic classification wrote it.
fn old_text() -> String {
    TEXT.lines()
        .take_while(|l| !l.starts_with("invalid_reasons"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn protoc_decodes_what_we_encode() {
    let text = protoc("decode", &sample().to_protobuf());
    assert_eq!(String::from_utf8(text).unwrap(), TEXT);
}

#[test]
fn we_decode_what_protoc_encodes() {
    let bytes = protoc("encode", TEXT.as_bytes());
    assert_eq!(ClickEvent::decode(&bytes).unwrap(), sample());
}

#[test]
fn every_device_name_in_the_proto_maps_to_ours() {
    for d in Device::ALL {
        let text = format!(
            "{}device: DEVICE_{}\n",
            TEXT.lines()
                .filter(|l| !l.starts_with("device:"))
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
            d.as_str().to_uppercase()
        );
        let e = ClickEvent::decode(&protoc("encode", text.as_bytes())).unwrap();
        assert_eq!(e.device(), Some(d));
    }
}

#[test]
fn every_invalid_reason_in_the_proto_maps_to_ours() {
    for r in Reason::ALL {
        let text = format!(
            "{}invalid_reasons: INVALID_REASON_{}\nclassified: true\n",
            old_text(),
            r.name().to_uppercase()
        );
        let e = ClickEvent::decode(&protoc("encode", text.as_bytes())).unwrap();
        assert_eq!(e.reasons(), Some(Reasons::of([r])), "{r:?}");
    }
}

/// An event written before the invalid-traffic fields existed decodes, unclassified and
/// without an impression time, in both encodings; the aggregator then applies its own rules.
#[test]
fn old_events_decode_without_the_new_fields() {
    let bytes = protoc("encode", old_text().as_bytes());
    let e = ClickEvent::decode(&bytes).unwrap();
    let want = ClickEvent {
        invalid_reasons: Vec::new(),
        classified: false,
        impression_time_ms: 0,
        ..sample()
    };
    assert_eq!(e, want);
    assert_eq!(e.reasons(), None);
    let old_json = r#"{"impression_id":"imp-77","click_id":"0192f6a4-7c1e-7b3a-9c44-6f1d2e3a4b5c","ad_id":"ad_1","campaign_id":"cmp_2","advertiser_id":"adv_3","publisher_id":"pub_4","event_time":1776686400123,"country":"JP","device":"tablet","ip_hash":"00112233445566778899aabbccddeeff","user_id_hash":"ffeeddccbbaa99887766554433221100","user_agent":"Mozilla/5.0 (iPad)","source":"redirect"}"#;
    assert_eq!(ClickEvent::decode(old_json.as_bytes()).unwrap(), want);
}

/// The schema before fields 14 to 16, as a reader built then knows it.
#[derive(Clone, PartialEq, prost::Message)]
struct OldClickEvent {
    #[prost(string, tag = "1")]
    impression_id: String,
    #[prost(string, tag = "2")]
    click_id: String,
    #[prost(int64, tag = "7")]
    event_time_ms: i64,
    #[prost(int32, tag = "9")]
    device: i32,
    #[prost(string, tag = "12")]
    user_agent: String,
    #[prost(string, tag = "13")]
    source: String,
}

/// What this build writes, a reader built before the new fields reads: it skips them.
#[test]
fn old_readers_read_new_events() {
    let old = <OldClickEvent as prost::Message>::decode(&sample().to_protobuf()[..]).unwrap();
    assert_eq!(old.impression_id, "imp-77");
    assert_eq!(old.event_time_ms, 1_776_686_400_123);
    assert_eq!(old.source, "redirect");
}

/// A newer writer's reason (a value this build has no name for) is ignored, not fatal: the
/// event is valid and counts under the reasons this build knows.
#[test]
fn unknown_reasons_from_a_newer_writer_are_ignored() {
    let text = format!(
        "{}invalid_reasons: 42\ninvalid_reasons: INVALID_REASON_DATACENTER\ninvalid_reasons: 0\nclassified: true\n",
        old_text()
    );
    let e = ClickEvent::decode(&protoc("encode", text.as_bytes())).unwrap();
    assert_eq!(e.reasons(), Some(Reasons::of([Reason::Datacenter])));
    // Only unknown ones: classified and clean as far as this build can tell.
    let text = format!("{}invalid_reasons: 42\nclassified: true\n", old_text());
    let e = ClickEvent::decode(&protoc("encode", text.as_bytes())).unwrap();
    assert_eq!(e.reasons(), Some(Reasons::NONE));
    // JSON: unknown names are skipped the same way.
    let mut json: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
    json["invalid_reasons"] = serde_json::json!(["from_the_future", "datacenter", "datacenter"]);
    let e = ClickEvent::decode(json.to_string().as_bytes()).unwrap();
    assert_eq!(e.invalid_reasons, vec![Reason::Datacenter.to_proto()]);
}

#[test]
fn json_names_the_reasons_and_the_impression_time() {
    let json = sample().to_json();
    assert!(
        json.contains(r#""invalid_reasons":["known_bot","headless"],"classified":true,"impression_time":1776686399000"#),
        "{json}"
    );
    assert_eq!(ClickEvent::decode(json.as_bytes()).unwrap(), sample());
}
