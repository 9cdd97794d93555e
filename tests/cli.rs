//! The binaries as a user runs them: flags, `sign`, configuration precedence, the embedded
//! broker and a clean exit on SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use adclick::config::Config;
use adclick::token::Keyring;
use adclick_testkit::demo_config;
use adclick_testkit::http::blocking_get;
use adclick_testkit::process::{Spawned, run_ok};

const REDIRECT: &str = env!("CARGO_BIN_EXE_adclick-redirect");

fn sign(envs: &[(&str, &str)]) -> String {
    let out = run_ok(
        Command::new(REDIRECT)
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
            .envs(envs.iter().copied()),
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
    let mut redirect = Spawned::start(
        Command::new(REDIRECT)
            .args([
                "--config",
                &demo_config(),
                "--embedded-kafka",
                "--listen",
                "127.0.0.1:0",
            ])
            .arg("--spool-dir")
            .arg(spool.path())
            .stderr(Stdio::null()),
    );
    let wait = Duration::from_secs(60);
    let first = redirect.next_line(wait);
    let brokers = first.strip_prefix("embedded kafka: ").expect(&first);
    assert!(brokers.starts_with("127.0.0.1:"), "{brokers}");
    // What the broker keeps, so nobody mistakes a bounded one for a real one.
    let keeps = redirect.next_line(wait);
    assert!(
        keeps.starts_with("embedded kafka keeps: built-in broker")
            && keeps.contains("every record"),
        "{keeps}"
    );
    let second = redirect.next_line(wait);
    assert!(
        second.starts_with("adclick-redirect listening on http://127.0.0.1:"),
        "{second}"
    );
    let addr = second.rsplit("http://").next().unwrap().to_string();
    let health = blocking_get(&format!("http://{addr}/healthz"), None);
    assert_eq!(health.status, 200, "{}", health.body);
    redirect.terminate();
    let status = redirect.wait(Duration::from_secs(20));
    assert!(status.success(), "no clean exit after SIGTERM: {status}");
}
