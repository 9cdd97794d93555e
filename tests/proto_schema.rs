//! The Rust `ClickEvent` and `proto/adclick/v1/click.proto` describe the same bytes: checked
//! with `protoc` itself in both directions, so other producers can trust the .proto.

use std::io::Write;
use std::process::{Command, Stdio};

use adclick::event::{ClickEvent, Device, device_to_proto};

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
"#;

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
