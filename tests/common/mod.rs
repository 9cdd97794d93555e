//! adclick's integration-test harness, one library every test binary links (so a helper some
//! tests do not use is no dead code in theirs): the configurations tests run with, servers
//! that start on port 0 and report their address (an in-process redirect here; the binaries
//! print theirs, read through [`process::Spawned`]), child processes killed on drop, one poll
//! helper for every wait ([`poll`]), one HTTP client ([`http`]), and a Kafka reader that
//! returns everything in a topic.

pub mod http;
pub mod outage;
pub mod poll;
pub mod process;
pub mod tansu;
pub mod truth;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adclick::config::{Config, Partner};
use adclick::redirect::{self, State};
use adclick::token::SigningKey;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub use http::{HttpResponse, get, http_client, request};
pub use poll::{wait_every, wait_every_async, wait_until, wait_until_async};

/// The demo configuration (`config/demo.toml`), which the binaries under test read.
pub fn demo_config() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/demo.toml").to_string()
}

pub const PARTNER_KEY: &str = "partner-key-0123456789";

/// A batch job as a user runs one: the load generator's traffic (`args` beside the demo
/// configuration) written as 2 NDJSON files into `dir/events` with its truth, then the batch
/// aggregator (2 workers, the demo configuration, logging at info) over those files into
/// `dir/out.ndjson`. Returns the truth and the aggregator's finished process (its log in
/// `stderr`). `loadgen` and `aggregator` are the binaries (`CARGO_BIN_EXE_*`, known to the
/// test binaries only).
pub fn batch_job(
    loadgen: &str,
    aggregator: &str,
    dir: &Path,
    args: &[&str],
) -> (adclick::loadgen::truth::TruthReport, std::process::Output) {
    let (events, truth_path) = (dir.join("events"), dir.join("truth.json"));
    process::run_ok(
        std::process::Command::new(loadgen)
            .args([
                "--config",
                &demo_config(),
                "--output",
                "file",
                "--files",
                "2",
            ])
            .arg("--out-dir")
            .arg(&events)
            .arg("--truth")
            .arg(&truth_path)
            .args(args),
    );
    let truth = adclick::loadgen::truth::GroundTruth::read(&truth_path).unwrap();
    let ran = process::run_ok(
        std::process::Command::new(aggregator)
            .args(["--config", &demo_config(), "--workers", "2", "--input"])
            .args(event_files(&events))
            .arg("--output")
            .arg(dir.join("out.ndjson"))
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info"),
    );
    (truth, ran)
}

/// The files the load generator wrote into `dir` (`--output file --out-dir DIR`), in name
/// order: the order its `events-NNN` files are numbered, which the batch aggregator is given.
pub fn event_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// A timely hostfile in `dir` for `processes` processes on loopback. The ports are held
/// together while they are picked, so no two are the same (another process can still take
/// one before the cluster binds it).
pub fn hostfile(dir: &Path, processes: usize) -> std::path::PathBuf {
    let held: Vec<_> = (0..processes)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let lines: String = held
        .iter()
        .map(|l| format!("127.0.0.1:{}\n", l.local_addr().unwrap().port()))
        .collect();
    let path = dir.join("hosts");
    std::fs::write(&path, lines).unwrap();
    path
}

/// The aggregator's arguments for process `process` of a cluster of `processes` processes
/// of `workers` workers each, described by `hostfile`.
pub fn cluster_args(
    workers: usize,
    processes: usize,
    process: usize,
    hostfile: &Path,
) -> Vec<String> {
    let mut args: Vec<String> = ["--workers", &workers.to_string()]
        .map(String::from)
        .to_vec();
    if processes > 1 {
        args.extend([
            "--processes".into(),
            processes.to_string(),
            "--process".into(),
            process.to_string(),
        ]);
        args.extend(["--hostfile".into(), hostfile.display().to_string()]);
    }
    args
}

/// librdkafka's mock cluster with `partitions` per topic, for tests that spread clicks over
/// several partitions.
pub fn embedded_kafka(partitions: i32) -> adclick::kafka::embedded::EmbeddedKafka {
    adclick::kafka::embedded::EmbeddedKafka::mock(&adclick::config::KafkaConfig {
        partitions,
        ..Default::default()
    })
    .unwrap()
}

pub fn test_config(brokers: &str, spool_dir: &Path) -> Config {
    let mut c = Config::default();
    c.kafka.brokers = brokers.to_string();
    c.kafka.partitions = 4;
    c.redirect.listen = "127.0.0.1:0".parse().unwrap();
    c.redirect.spool_dir = spool_dir.to_path_buf();
    c.redirect.degraded_after_ms = 500;
    c.redirect.shutdown_grace_ms = 3_000;
    c.redirect.partners = vec![Partner {
        name: "acme".into(),
        api_key: PARTNER_KEY.into(),
    }];
    c.signing.keys = vec![
        SigningKey {
            kid: "2026-01".into(),
            secret: "test-secret-one-0123456789".into(),
        },
        SigningKey {
            kid: "2026-02".into(),
            secret: "test-secret-two-0123456789".into(),
        },
    ];
    c.privacy.salt = "test-salt-0123456789".into();
    c
}

/// A redirect server running in this process on a loopback port.
pub struct RunningRedirect {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningRedirect {
    pub async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind(config.redirect.listen)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::new(config).unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(redirect::serve(state.clone(), listener, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            state,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful shutdown, as on SIGTERM.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

/// The in-process redirect most HTTP tests send to: serving on a runtime of its own over an
/// embedded broker, its spool in a scratch directory. Stop it with [`LocalRedirect::stop`].
pub struct LocalRedirect {
    pub kafka: adclick::kafka::embedded::EmbeddedKafka,
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub runtime: tokio::runtime::Runtime,
    pub server: RunningRedirect,
}

impl LocalRedirect {
    /// On a broker of `partitions` per topic, with [`test_config`] changed by `adjust`.
    pub fn start(partitions: i32, adjust: impl FnOnce(&mut Config)) -> Self {
        let kafka = embedded_kafka(partitions);
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(&kafka.bootstrap_servers(), &dir.path().join("spool"));
        adjust(&mut config);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let server = runtime.block_on(RunningRedirect::start(config.clone()));
        Self {
            kafka,
            dir,
            config,
            runtime,
            server,
        }
    }

    pub fn brokers(&self) -> String {
        self.kafka.bootstrap_servers()
    }

    /// Graceful shutdown, as on SIGTERM.
    pub fn stop(self) {
        self.runtime.block_on(self.server.stop());
    }
}

/// A record's key and value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Every record in `topic`, read from the beginning of each partition, once at least
/// `expected` have arrived and nothing new came for a second (or `timeout` passed).
pub fn read_topic(brokers: &str, topic: &str, expected: usize, timeout: Duration) -> Vec<KeyValue> {
    read_partitions(brokers, topic, expected, timeout)
        .into_values()
        .flatten()
        .collect()
}

/// [`read_topic`], by partition, each in its order.
pub fn read_partitions(
    brokers: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> std::collections::BTreeMap<i32, Vec<KeyValue>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "adclick-tests")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let deadline = Instant::now() + timeout;
    let what = format!("metadata for {topic}");
    let partitions = wait_every(
        timeout,
        Duration::from_millis(200),
        &what,
        || match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(md) => match md.topics().first().map(|t| t.partitions().len()) {
                Some(n) if n > 0 => Ok(n),
                _ => Err("no partitions yet".to_string()),
            },
            Err(e) => Err(e.to_string()),
        },
    );
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out: std::collections::BTreeMap<i32, Vec<_>> = Default::default();
    let (mut n, mut last_new) = (0, Instant::now());
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                out.entry(m.partition()).or_default().push((
                    m.key().unwrap_or_default().to_vec(),
                    m.payload().unwrap_or_default().to_vec(),
                ));
                n += 1;
                last_new = Instant::now();
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None if n >= expected && last_new.elapsed() > Duration::from_secs(1) => break,
            None => {}
        }
    }
    out
}

/// The claims of a signed link to `url` for `impression` (ad_9 of cmp_3, adv_1, on pub_7),
/// expiring at `exp` (Unix seconds): the link every redirect test signs.
pub fn claims(impression: &str, url: &str, exp: i64) -> adclick::token::ClickClaims {
    adclick::token::ClickClaims {
        impression_id: impression.into(),
        ad_id: "ad_9".into(),
        campaign_id: "cmp_3".into(),
        advertiser_id: "adv_1".into(),
        publisher_id: "pub_7".into(),
        url: url.into(),
        exp,
    }
}

/// An expiry an hour from now, in Unix seconds.
pub fn in_an_hour() -> i64 {
    adclick::timefmt::now_millis() / 1000 + 3600
}
