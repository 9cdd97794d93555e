//! Configuration shared by every binary: one TOML file can serve them all, each binary reading
//! the sections it needs. Precedence, lowest first: built-in defaults, the file (`--config`),
//! command-line flags, then `ADCLICK_<SECTION>_<KEY>` environment variables (for example
//! `ADCLICK_KAFKA_BROKERS`), so that a deployment can pin a value whatever the command says.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::token::SigningKey;

/// Sections that environment variables may address.
const SECTIONS: [&str; 6] = [
    "kafka",
    "redirect",
    "signing",
    "privacy",
    "loadgen",
    "aggregator",
];
const ENV_PREFIX: &str = "ADCLICK_";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub redirect: RedirectConfig,
    pub signing: SigningConfig,
    pub privacy: PrivacyConfig,
    /// Read by `adclick-loadgen`; kept as a table so its flags stay beside its code.
    pub loadgen: toml::Table,
    /// Read by `adclick-aggregator`.
    pub aggregator: toml::Table,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port,...`.
    pub brokers: String,
    pub clicks_topic: String,
    pub dlq_topic: String,
    pub late_topic: String,
    pub aggregates_topic: String,
    /// Traffic anomaly alerts (`[aggregator.alerts]`), keyed by kind, dimension, key and minute.
    pub alerts_topic: String,
    /// Partitions of the clicks topic when adclick creates it (embedded broker).
    pub partitions: i32,
    /// Extra librdkafka properties for producers, e.g. `{ "linger.ms" = "2" }`.
    pub producer: toml::Table,
    /// The broker `--embedded-kafka` starts: `tansu` (keeps every record) or `mock`
    /// (librdkafka's mock cluster: about 5 MB per partition, older records dropped).
    pub embedded: crate::kafka::embedded::EmbeddedKind,
    /// Where the embedded Tansu broker keeps its storage, kept across restarts; unset: a
    /// temporary directory removed at exit.
    pub embedded_dir: Option<PathBuf>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            clicks_topic: "clicks".into(),
            dlq_topic: "clicks-dlq".into(),
            late_topic: "clicks-late".into(),
            aggregates_topic: "click-aggregates".into(),
            alerts_topic: "click-alerts".into(),
            partitions: 8,
            producer: toml::Table::new(),
            embedded: Default::default(),
            embedded_dir: None,
        }
    }
}

/// When the spool forces its writes to disk. Every record is written to the file (the kernel)
/// before the redirect answers, so a killed process loses nothing; fsync only guards against
/// losing the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// fsync after every record: nothing lost even on power failure, slowest.
    Always,
    /// fsync at most every `spool_fsync_interval_ms` while records are arriving.
    Interval,
    /// Leave it to the kernel.
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedirectConfig {
    pub listen: SocketAddr,
    /// Header set by the trusted edge with the client's country (ISO alpha-2); empty: none.
    pub country_header: String,
    /// Header set by the trusted edge with the client IP (first entry wins); empty: use the
    /// TCP peer address.
    pub client_ip_header: String,
    /// Cookie holding the user id, hashed before it goes anywhere.
    pub user_id_cookie: String,
    /// Messages librdkafka may hold in memory before new clicks go to the spool.
    pub queue_capacity: usize,
    pub spool_dir: PathBuf,
    pub spool_fsync: FsyncPolicy,
    pub spool_fsync_interval_ms: u64,
    pub spool_segment_bytes: u64,
    /// Clicks go to the spool once the oldest undelivered one is this old.
    pub degraded_after_ms: u64,
    /// /readyz answers 503 once delivery to Kafka has made no progress for this long while
    /// records wait (in memory or in the spool): clicks are still taken, but none arrive.
    pub delivery_stuck_after_ms: u64,
    /// Dead letters keep at most this many bytes of the rejected input (plus its length and
    /// SHA-256): rejected input is attacker-sized, a dead letter must fit a Kafka message.
    pub dlq_max_payload_bytes: usize,
    /// How long shutdown waits for Kafka before spooling what is left.
    pub shutdown_grace_ms: u64,
    /// Largest partner batch accepted by POST /api/v1/events.
    pub max_batch_bytes: u64,
    /// Longest partner line (bytes, without its newline). Longer lines are rejected before
    /// they are parsed (`line_too_long`), and only this much of them reaches the dead letter.
    pub max_line_bytes: usize,
    /// A partner's `click_timestamp` may be this far ahead of the redirect's clock; later ones
    /// are rejected (`event_time_in_future`), since one such event would carry its
    /// partition's watermark into the future.
    pub max_future_skew_ms: u64,
    /// Unsigned click parameters appended to the landing URL (`*` is a wildcard); all other
    /// unsigned parameters are dropped.
    pub forward_params: Vec<String>,
    /// Connections served at once; one more is answered 503 (JSON) and closed.
    pub max_connections: usize,
    /// A request head must arrive in full within this long of the connection opening or of
    /// the previous response; it is also how long an idle keep-alive connection stays open.
    pub header_read_timeout_ms: u64,
    /// A connection on which no byte moves either way for this long is closed (a stalled
    /// upload, a client that stopped reading).
    pub idle_timeout_ms: u64,
    /// Longest request target (path and query) served; longer ones get 414.
    pub max_uri_bytes: usize,
    pub partners: Vec<Partner>,
    /// Bot and crawler markers added to the built-in list (`config/bots.txt`, same format);
    /// unset: the built-in list alone.
    pub extra_bots_file: Option<PathBuf>,
    /// Data-center address ranges (one CIDR a line, IPv4 and IPv6); clicks from them are
    /// flagged `datacenter`. Unset: no address is judged (sample: `config/datacenter-cidrs.txt`).
    pub datacenter_cidrs_file: Option<PathBuf>,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().unwrap(),
            country_header: "x-edge-country".into(),
            client_ip_header: String::new(),
            user_id_cookie: "uid".into(),
            queue_capacity: 100_000,
            spool_dir: "spool".into(),
            spool_fsync: FsyncPolicy::Interval,
            spool_fsync_interval_ms: 50,
            spool_segment_bytes: 64 << 20,
            degraded_after_ms: 2_000,
            delivery_stuck_after_ms: 10_000,
            dlq_max_payload_bytes: crate::event::dead_letter::DEFAULT_MAX_PAYLOAD_BYTES,
            shutdown_grace_ms: 10_000,
            max_batch_bytes: 16 << 20,
            max_line_bytes: 64 << 10,
            max_future_skew_ms: 300_000,
            forward_params: ["utm_*", "gclid", "fbclid", "msclkid"]
                .map(String::from)
                .to_vec(),
            max_connections: 4096,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_uri_bytes: 8192,
            partners: Vec::new(),
            extra_bots_file: None,
            datacenter_cidrs_file: None,
        }
    }
}

/// A partner allowed to POST click batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partner {
    pub name: String,
    pub api_key: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    /// The key `sign` uses; default: the last one listed.
    pub active_kid: Option<String>,
    pub keys: Vec<SigningKey>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Secret salt of the IP and user-id hashes. Changing it changes every hash.
    pub salt: String,
}

/// Builds a configuration of type `T` from the layers. `flags` are `(section.key, value)`
/// pairs for the flags the user actually gave.
pub fn load<T: serde::de::DeserializeOwned>(
    file: Option<&Path>,
    flags: Vec<(&str, toml::Value)>,
) -> anyhow::Result<T> {
    load_with_env(file, flags, std::env::vars())
}

fn load_with_env<T: serde::de::DeserializeOwned>(
    file: Option<&Path>,
    flags: Vec<(&str, toml::Value)>,
    env: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<T> {
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            text.parse::<toml::Table>()
                .with_context(|| format!("parsing config file {}", path.display()))?
        }
        None => toml::Table::new(),
    };
    for (path, value) in flags {
        set(&mut table, path, value);
    }
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let Some((section, key)) = rest.split_once('_') else {
            continue;
        };
        if !SECTIONS.contains(&section) || key.is_empty() {
            continue;
        }
        set(&mut table, &format!("{section}.{key}"), env_value(&raw));
    }
    let source = file.map_or("defaults".to_string(), |p| p.display().to_string());
    T::deserialize(toml::Value::Table(table))
        .map_err(|e| anyhow::anyhow!("configuration ({source} + flags + ADCLICK_* env): {e}"))
}

/// `a.b.c` → nested tables, created as needed.
fn set(table: &mut toml::Table, path: &str, value: toml::Value) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().expect("non-empty path");
    let mut t = table;
    for p in parts {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        t = entry.as_table_mut().unwrap();
    }
    t.insert(last.to_string(), value);
}

/// Environment values are TOML literals when they parse as one (numbers, booleans, arrays,
/// inline tables) and strings otherwise, so `ADCLICK_KAFKA_PARTITIONS=4` is a number and
/// `ADCLICK_KAFKA_BROKERS=127.0.0.1:9092` a string.
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

impl Config {
    /// Fails early, with the key to fix, on settings the redirect cannot run without.
    pub fn check_redirect(&self) -> anyhow::Result<()> {
        if self.signing.keys.is_empty() {
            bail!("signing.keys is empty: configure at least one {{ kid, secret }} (see README)");
        }
        if self.privacy.salt.len() < 16 {
            bail!("privacy.salt must be set, at least 16 bytes (it keys the IP and user hashes)");
        }
        for p in &self.redirect.partners {
            if p.api_key.len() < 16 {
                bail!(
                    "redirect.partners: api_key of `{}` is shorter than 16 bytes",
                    p.name
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_env_overrides_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("adclick.toml");
        std::fs::write(
            &path,
            "[kafka]\nbrokers = \"file:1\"\npartitions = 3\n[redirect]\nlisten = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let cfg: Config = load_with_env(
            Some(&path),
            vec![
                ("kafka.brokers", "flag:2".into()),
                ("redirect.listen", "127.0.0.1:2".into()),
            ],
            [
                ("ADCLICK_KAFKA_BROKERS".to_string(), "env:3".to_string()),
                ("ADCLICK_KAFKA_PARTITIONS".into(), "12".into()),
                ("OTHER_THING".into(), "x".into()),
            ],
        )
        .unwrap();
        assert_eq!(cfg.kafka.brokers, "env:3");
        assert_eq!(cfg.kafka.partitions, 12);
        assert_eq!(cfg.redirect.listen.port(), 2);
        assert_eq!(cfg.kafka.clicks_topic, "clicks");
    }

    #[test]
    fn typos_are_errors_that_name_the_key() {
        let err = load_with_env::<Config>(
            None,
            vec![],
            [("ADCLICK_REDIRECT_LISTN".to_string(), "x".to_string())],
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("listn"), "{err:#}");
    }

    #[test]
    fn redirect_needs_keys_and_salt() {
        let mut cfg = Config::default();
        assert!(cfg.check_redirect().is_err());
        cfg.signing.keys.push(SigningKey {
            kid: "k".into(),
            secret: "0123456789abcdef".into(),
        });
        assert!(cfg.check_redirect().is_err());
        cfg.privacy.salt = "0123456789abcdef".into();
        cfg.check_redirect().unwrap();
    }
}
