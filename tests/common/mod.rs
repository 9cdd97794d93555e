//! Shared pieces of the integration tests: a configuration for tests, an in-process redirect
//! server, an HTTP client, and a Kafka reader that returns everything in a topic.
#![allow(dead_code)]

pub mod outage;
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
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub const PARTNER_KEY: &str = "partner-key-0123456789";

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

pub struct HttpResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

pub fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn request(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(client: &Client<HttpConnector, Full<Bytes>>, url: &str) -> HttpResponse {
    request(client, "GET", url, &[], "").await
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
    let partitions = loop {
        match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(md)
                if md
                    .topics()
                    .first()
                    .is_some_and(|t| !t.partitions().is_empty()) =>
            {
                break md.topics()[0].partitions().len();
            }
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("no metadata for {topic}: {:?}", other.err()),
        }
    };
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
