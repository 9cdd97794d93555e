//! The binaries as a user runs them: flags, `sign`, configuration precedence, the embedded
//! broker and a clean exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use adclick::config::Config;
use adclick::token::Keyring;

const REDIRECT: &str = env!("CARGO_BIN_EXE_adclick-redirect");

fn demo_config() -> String {
    format!("{}/config/demo.toml", env!("CARGO_MANIFEST_DIR"))
}

fn sign(envs: &[(&str, &str)]) -> String {
    let out = Command::new(REDIRECT)
        .args([
            "--config",
            &demo_config(),
            "sign",
            "--impression-id",
            "imp-cli",
        ])
        .args([
            "--ad-id",
            "ad_1",
            "--campaign-id",
            "cmp_1",
            "--advertiser-id",
            "adv_1",
        ])
        .args(["--publisher-id", "pub_1", "--url", "https://shop.example/x"])
        .args(["--base", "http://127.0.0.1:9"])
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn help_lists_the_shared_flags() {
    let out = Command::new(REDIRECT).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--config",
        "--brokers",
        "--topic",
        "--embedded-kafka",
        "--listen",
        "sign",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help:\n{text}");
    }
}

#[test]
fn sign_mints_urls_the_configured_keys_verify() {
    let url = sign(&[]);
    let (path, query) = url.split_once('?').unwrap();
    assert_eq!(path, "http://127.0.0.1:9/api/v1/click/imp-cli");
    let cfg: Config = adclick::config::load(Some(demo_config().as_ref()), vec![]).unwrap();
    let ring = Keyring::new(&cfg.signing.keys, cfg.signing.active_kid.as_deref()).unwrap();
    let claims = ring
        .verify("imp-cli", query, adclick::timefmt::now_millis() / 1000)
        .unwrap();
    assert_eq!(claims.url, "https://shop.example/x");
    assert!(query.contains("kid=demo-2026-11"), "{query}");
}

#[test]
fn environment_overrides_the_file() {
    let url = sign(&[("ADCLICK_SIGNING_ACTIVE_KID", "demo-2026-10")]);
    assert!(url.contains("kid=demo-2026-10"), "{url}");
    let out = Command::new(REDIRECT)
        .args(["--config", &demo_config(), "sign"])
        .env("ADCLICK_REDIRECT_LISTN", "oops")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn serves_with_the_embedded_broker_and_exits_cleanly_on_sigterm() {
    let spool = tempfile::tempdir().unwrap();
    let mut child = Command::new(REDIRECT)
        .args([
            "--config",
            &demo_config(),
            "--embedded-kafka",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--spool-dir")
        .arg(spool.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let brokers = first.strip_prefix("embedded kafka: ").expect(&first);
    assert!(brokers.starts_with("127.0.0.1:"), "{brokers}");
    // What the broker keeps, so nobody mistakes a bounded one for a real one.
    let keeps = lines.next().unwrap().unwrap();
    assert!(
        keeps.starts_with("embedded kafka keeps: built-in broker")
            && keeps.contains("every record"),
        "{keeps}"
    );
    let second = lines.next().unwrap().unwrap();
    assert!(
        second.starts_with("adclick-redirect listening on http://127.0.0.1:"),
        "{second}"
    );
    let addr = second.rsplit("http://").next().unwrap().to_string();
    let health = std::net::TcpStream::connect(&addr);
    assert!(health.is_ok(), "cannot connect to {addr}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
