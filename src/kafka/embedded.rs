//! The embedded broker behind `--embedded-kafka`: the demo's and quick start's Kafka, so a
//! new user needs no broker of their own. Three kinds, chosen by `kafka.embedded`:
//!
//! - `builtin` (default): adclick's own single-node Kafka-protocol broker ([`Broker`]), in
//!   this process. It keeps every record it acknowledged in one append-only file per
//!   partition (in `kafka.embedded_dir`, kept across restarts; a temporary directory
//!   otherwise), however large the backlog, and serves it at hundreds of thousands of
//!   records per second.
//! - `tansu`: the Tansu broker (a real Kafka-protocol broker from crates.io, our failure-test
//!   broker) as a child process with SQLite storage. It keeps everything too, but reads a
//!   backlog at a few thousand records per second (its fetch rescans the rest of the
//!   partition). `scripts/tansu.sh install` builds it once.
//! - `mock`: librdkafka's mock cluster, in this process. It keeps only about 5 MB per
//!   partition (`max_size` in rdkafka_mock.c, which no public API changes) and silently drops
//!   older message sets beyond that, and it checks an idempotent producer's sequence numbers
//!   only for transactional producers: a batch retried after its acknowledgement was lost (a
//!   connection dropped) is stored twice. For small tests; the aggregator reports what it
//!   drops as a gap. Outage tests take the built-in broker down and up, which keeps both
//!   promises.
//!
//! Why: see docs/design.md, "The embedded broker".

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use serde::{Deserialize, Serialize};

use crate::config::KafkaConfig;
use crate::kafka::broker::Broker;

/// Which broker `--embedded-kafka` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddedKind {
    /// adclick's own broker, in-process: keeps what it is given, fast.
    #[default]
    Builtin,
    /// Tansu as a child process: keeps what it is given, slow to read a backlog.
    Tansu,
    /// librdkafka's mock cluster: about 5 MB per partition, older records dropped.
    Mock,
}

/// What the mock cluster keeps per partition before it drops the oldest message sets.
pub const MOCK_PARTITION_BYTES: u64 = 5 << 20;

/// The Tansu version the scripts install and this module starts.
pub const TANSU_VERSION: &str = "0.6.0";

pub enum EmbeddedKafka {
    Builtin(Broker, Option<PathBuf>),
    Tansu(TansuBroker),
    Mock(MockCluster<'static, DefaultProducerContext>),
}

impl EmbeddedKafka {
    /// Starts the configured kind with adclick's topics.
    pub fn start(kafka: &KafkaConfig) -> anyhow::Result<Self> {
        match kafka.embedded {
            EmbeddedKind::Builtin => Self::builtin(kafka),
            EmbeddedKind::Tansu => {
                let bin = find_tansu().with_context(|| {
                    format!(
                        "the embedded broker is Tansu {TANSU_VERSION}, which is not installed: \
                         run scripts/tansu.sh install (or set TANSU_BIN), or set \
                         kafka.embedded = \"mock\" for librdkafka's mock cluster, which keeps \
                         only about 5 MB per partition"
                    )
                })?;
                Ok(Self::Tansu(TansuBroker::start(
                    &bin,
                    kafka.embedded_dir.as_deref(),
                    kafka,
                )?))
            }
            EmbeddedKind::Mock => Self::mock(kafka),
        }
    }

    /// adclick's own broker with the topics `kafka` names, its logs in `kafka.embedded_dir`.
    pub fn builtin(kafka: &KafkaConfig) -> anyhow::Result<Self> {
        let topics: Vec<(String, i32)> = topics(kafka)
            .into_iter()
            .map(|(name, p)| (name.clone(), p))
            .collect();
        let dir = kafka.embedded_dir.as_deref();
        let broker = Broker::start(dir, &topics).context("starting the built-in broker")?;
        Ok(Self::Builtin(broker, dir.map(Path::to_path_buf)))
    }

    /// librdkafka's mock cluster, whatever the configuration says: for small tests, and for
    /// tests that take the broker down and up.
    pub fn mock(kafka: &KafkaConfig) -> anyhow::Result<Self> {
        let cluster = MockCluster::new(1)?;
        // Topics are created through the mock cluster's own API: its admin-API path times out.
        for (name, partitions) in topics(kafka) {
            cluster.create_topic(name, partitions, 1)?;
        }
        Ok(Self::Mock(cluster))
    }

    /// `host:port` for `--brokers`.
    pub fn bootstrap_servers(&self) -> String {
        match self {
            Self::Builtin(b, _) => b.bootstrap_servers(),
            Self::Tansu(t) => t.bootstrap_servers(),
            Self::Mock(m) => m.bootstrap_servers(),
        }
    }

    /// What a user must know about what this broker keeps, printed at start.
    pub fn retention_note(&self) -> String {
        match self {
            Self::Builtin(_, dir) => match dir {
                Some(d) => format!(
                    "built-in broker, logs in {} (keeps every record, across restarts)",
                    d.display()
                ),
                None => "built-in broker, logs in a temporary directory (keeps every record; \
                         removed at exit)"
                    .to_string(),
            },
            Self::Tansu(t) => format!(
                "Tansu {TANSU_VERSION}, SQLite storage in {} (keeps every record{})",
                t.dir.display(),
                if t.temporary.is_some() {
                    "; removed at exit"
                } else {
                    ", across restarts"
                }
            ),
            Self::Mock(_) => format!(
                "librdkafka mock cluster: keeps only the newest ~{} MB per partition (about \
                 35,000 clicks) and drops older records; the aggregator reports drops as gaps",
                MOCK_PARTITION_BYTES >> 20
            ),
        }
    }

    /// Makes the broker refuse connections and drop the open ones, as if it had died; its
    /// records are kept. Tansu, a child process, is taken down by killing it instead.
    pub fn broker_down(&self) -> anyhow::Result<()> {
        match self {
            Self::Builtin(b, _) => {
                b.down();
                Ok(())
            }
            Self::Mock(m) => Ok(m.broker_down(1)?),
            Self::Tansu(_) => bail!("broker_down: stop the Tansu process instead"),
        }
    }

    pub fn broker_up(&self) -> anyhow::Result<()> {
        match self {
            Self::Builtin(b, _) => {
                b.up();
                Ok(())
            }
            Self::Mock(m) => Ok(m.broker_up(1)?),
            Self::Tansu(_) => bail!("broker_up: start the Tansu process again instead"),
        }
    }
}

/// adclick's topics with their partition counts: the clicks topic as configured, the others
/// at most 4.
fn topics(kafka: &KafkaConfig) -> [(&String, i32); 5] {
    [
        (&kafka.clicks_topic, kafka.partitions),
        (&kafka.dlq_topic, kafka.partitions.clamp(1, 4)),
        (&kafka.late_topic, kafka.partitions.clamp(1, 4)),
        (&kafka.aggregates_topic, kafka.partitions.clamp(1, 4)),
        (&kafka.alerts_topic, 1),
    ]
}

/// The Tansu binary: `$TANSU_BIN`, then `PATH`, then where `scripts/tansu.sh` installs it.
pub fn find_tansu() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("tansu"))
        .chain([
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/adclick/tansu/bin/tansu"),
            PathBuf::from("/opt/tansu/bin/tansu"),
        ])
        .find(|p| p.is_file())
}

/// A Tansu broker process owned by this one: it dies with us (SIGKILL from the kernel if we
/// die first, SIGTERM when dropped).
pub struct TansuBroker {
    child: Child,
    port: u16,
    dir: PathBuf,
    /// Set when the storage directory is ours to remove.
    temporary: Option<PathBuf>,
}

impl TansuBroker {
    /// Starts `bin` on a free loopback port with its SQLite storage in `dir` (a fresh
    /// temporary directory when `None`) and creates the topics `kafka` names, if missing.
    pub fn start(bin: &Path, dir: Option<&Path>, kafka: &KafkaConfig) -> anyhow::Result<Self> {
        let (dir, temporary) = match dir {
            Some(d) => (d.to_path_buf(), None),
            None => {
                let d = std::env::temp_dir().join(format!(
                    "adclick-embedded-kafka-{}-{}",
                    std::process::id(),
                    uuid::Uuid::now_v7().simple()
                ));
                (d.clone(), Some(d))
            }
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("tansu.log"))?;
        let mut command = Command::new(bin);
        command
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut broker = Self {
            child,
            port,
            dir,
            temporary,
        };
        broker.wait_ready()?;
        broker.create_topics(bin, kafka)?;
        Ok(broker)
    }

    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "tansu exited at start ({status}); its log: {}",
                    self.dir.join("tansu.log").display()
                );
            }
            if Instant::now() > deadline {
                bail!("tansu did not listen on port {} within 30 s", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Creates each topic the storage does not hold yet (a restart on kept storage has them).
    fn create_topics(&self, bin: &Path, kafka: &KafkaConfig) -> anyhow::Result<()> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .create()?;
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .context("metadata of the embedded broker")?;
        let exists = |name: &str| {
            metadata
                .topics()
                .iter()
                .any(|t| t.name() == name && !t.partitions().is_empty())
        };
        for (name, partitions) in topics(kafka) {
            if exists(name) {
                continue;
            }
            let out = Command::new(bin)
                .args(["topic", "create", name, "--partitions"])
                .arg(partitions.to_string())
                .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
                .output()
                .with_context(|| format!("creating topic {name}"))?;
            if !out.status.success() {
                bail!(
                    "creating topic {name} on the embedded broker: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(())
    }
}

impl Drop for TansuBroker {
    fn drop(&mut self) {
        // SIGTERM first, so SQLite closes cleanly; then make sure.
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.temporary {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Asks the kernel to SIGKILL the child when this process dies, however it dies (kill -9
/// included), so no orphaned broker keeps the port and the storage.
pub(crate) fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child's own state.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
