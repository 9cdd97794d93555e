//! A small, real Kafka-protocol broker that runs in-process: one node, no replication, no
//! consumer groups, every record kept.
//!
//! It speaks just enough of the protocol for librdkafka's idempotent producer and for a
//! consumer that `assign`s partitions: ApiVersions, Metadata, InitProducerId, Produce, Fetch
//! (with long-polling), ListOffsets and FindCoordinator. Record batches are stored as they
//! arrive (RecordBatch v2, never decompressed) in one append-only file per partition; see
//! [`log`] for the storage and its durability.
//!
//! Retried batches of an idempotent producer (same producer id and base sequence as one of
//! the partition's recent batches) are answered with the earlier offset and not stored again.
//! Topics are fixed at start (no auto-creation); a dropped [`Broker`] stops serving and, when
//! it made its own temporary directory, removes it.

pub mod log;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, FetchRequest, FetchResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, InitProducerIdRequest, InitProducerIdResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest,
    ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use self::log::{AppendError, Store};

const NODE_ID: i32 = 1;
const CLUSTER_ID: &str = "adclick-builtin";
/// Largest request accepted (a produce request is at most librdkafka's message.max.bytes).
const MAX_FRAME: usize = 256 << 20;

mod code {
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
}

/// The APIs served and their versions (all within what `kafka-protocol` supports).
const APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::InitProducerId, 0, 4),
];

fn supported(key: ApiKey, version: i16) -> bool {
    APIS.iter()
        .any(|&(k, lo, hi)| k == key && (lo..=hi).contains(&version))
}

/// How a broker's own temporary directory is named: `<prefix><pid>-<nanos>`.
const TEMP_PREFIX: &str = "adclick-broker-";
/// The file in its temporary directory a broker holds locked while it runs.
const TEMP_LOCK: &str = "LOCK";

/// A broker's own temporary directory, removed on drop and locked while its process runs:
/// the kernel drops the lock when the process ends, however it ends, so a sweep can tell a
/// live broker's directory from an orphan even where the process ids of another PID
/// namespace (a container sharing `/tmp`) mean nothing.
struct TempDir {
    path: PathBuf,
    _lock: File,
}

impl TempDir {
    fn create(temp: &Path) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = temp.join(format!("{TEMP_PREFIX}{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let lock = File::create(path.join(TEMP_LOCK))?;
        lock.try_lock()
            .map_err(std::io::Error::from)
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(Self { path, _lock: lock })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Whether another open file holds `dir`'s broker lock.
fn held(dir: &Path) -> bool {
    File::open(dir.join(TEMP_LOCK)).is_ok_and(|f| f.try_lock().is_err())
}

/// Removes the temporary directories of brokers whose process is gone. A process killed with
/// SIGKILL never runs [`Broker`]'s drop, and its directory holds every record it was given
/// (often hundreds of MB); without this, each crash or `kill -9` test would leave one behind
/// for good. A directory is kept while its process runs or its lock is held (see
/// [`TempDir`]; directories from before the lock have none), as is any name not of the form.
fn sweep_orphans(temp: &Path, alive: impl Fn(u32) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(temp) else {
        return 0;
    };
    let mut swept = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, nanos)| nanos.parse::<u128>().ok().and(pid.parse::<u32>().ok()))
        else {
            continue;
        };
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let path = entry.path();
        if is_dir && !alive(pid) && !held(&path) && std::fs::remove_dir_all(&path).is_ok() {
            swept += 1;
        }
    }
    swept
}

/// Whether process `pid` runs; where that cannot be known, it is taken to run.
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// An in-process single-node Kafka broker on 127.0.0.1. Stops when dropped.
pub struct Broker {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Whether it serves: [`Broker::down`] and [`Broker::up`] flip it.
    online: watch::Sender<bool>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Dropped after the broker has stopped.
    temp_dir: Option<TempDir>,
}

struct Shared {
    store: Store,
    /// Bumped after every append; long-polling fetches wait for a change.
    appended: watch::Sender<u64>,
    next_producer_id: AtomicI64,
    host: String,
    port: i32,
    /// Set by [`Broker::lose_next_produce_answer`].
    lose_produce_answer: AtomicBool,
}

impl Broker {
    /// Starts a broker keeping its logs in `dir` (a fresh temporary directory, removed on drop,
    /// when `None`), with `topics` (name, partitions) created if missing. Logs already in `dir`
    /// are served again, topics included.
    pub fn start(dir: Option<&Path>, topics: &[(String, i32)]) -> Result<Broker> {
        let (dir, temp_dir) = match dir {
            Some(d) => (d.to_path_buf(), None),
            None => {
                let temp = std::env::temp_dir();
                let swept = sweep_orphans(&temp, process_alive);
                if swept > 0 {
                    tracing::info!(
                        swept,
                        "removed brokers' directories left by killed processes"
                    );
                }
                let d = TempDir::create(&temp)?;
                (d.path.clone(), Some(d))
            }
        };
        let store = Store::open(&dir, topics)?;
        let listener =
            bind(SocketAddr::from(([127, 0, 0, 1], 0))).context("binding the broker's port")?;
        let addr = listener.local_addr()?;
        let first_pid = (store.max_producer_id() + 1).max(1000);
        let shared = Arc::new(Shared {
            store,
            appended: watch::Sender::new(0),
            next_producer_id: AtomicI64::new(first_pid),
            lose_produce_answer: AtomicBool::new(false),
            host: addr.ip().to_string(),
            port: i32::from(addr.port()),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("adclick-broker")
            .enable_all()
            .build()
            .context("building the broker's runtime")?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let online = watch::Sender::new(true);
        let online_rx = online.subscribe();
        let shared_for_broker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("adclick-broker".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        _ = rx => {}
                        _ = serve_while_online(listener, online_rx, shared) => {}
                    }
                });
                // Dropping the runtime here cancels every connection task.
                drop(runtime);
            })
            .context("spawning the broker thread")?;
        Ok(Broker {
            addr,
            shared: shared_for_broker,
            online,
            shutdown: Some(tx),
            thread: Some(thread),
            temp_dir,
        })
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        self.addr.to_string()
    }

    /// Goes away as a crashed broker does, keeping its logs: the port refuses connections and
    /// every open connection is closed at once, whatever it was doing. A produce request being
    /// handled may be stored without its answer reaching the client: what outage tests need,
    /// since the producer's retry of it must not be stored twice.
    pub fn down(&self) {
        self.online.send_replace(false);
    }

    /// Serves again on the same port after [`Broker::down`].
    pub fn up(&self) {
        self.online.send_replace(true);
    }

    /// Drops the next produce request's answer, after its records are stored, with its
    /// connection: a broker dying between the two, which tests of retries need on demand.
    pub fn lose_next_produce_answer(&self) {
        self.shared
            .lose_produce_answer
            .store(true, Ordering::SeqCst);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        drop(self.temp_dir.take());
    }
}

/// Accepts and serves connections while `online`; while not, the port is closed and so is
/// every connection. The first listener is the one bound at start; later ones bind its
/// address again.
async fn serve_while_online(
    first: std::net::TcpListener,
    mut online: watch::Receiver<bool>,
    shared: Arc<Shared>,
) {
    let addr = first.local_addr().ok();
    let mut next = Some(first);
    loop {
        if online.wait_for(|up| *up).await.is_err() {
            return;
        }
        let bound = match next.take() {
            Some(l) => Ok(l),
            None => addr
                .context("no address to bind again")
                .and_then(|a| Ok(bind(a)?)),
        };
        let listener = match bound.and_then(|l| Ok(TcpListener::from_std(l)?)) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "broker listener");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut going_down = online.clone();
        tokio::select! {
            _ = going_down.wait_for(|up| !*up) => {}
            _ = accept_loop(listener, online.clone(), shared.clone()) => {}
        }
    }
}

/// A nonblocking listener on `addr` (the OS's choice of port when it is 0).
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

async fn accept_loop(listener: TcpListener, online: watch::Receiver<bool>, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                let mut online = online.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = online.wait_for(|up| !*up) => {}
                        served = serve(stream, shared) => if let Err(e) = served {
                            tracing::debug!(error = %e, "broker connection closed");
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "broker accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one connection: requests are answered in order, one at a time (as Kafka does).
async fn serve(stream: TcpStream, shared: Arc<Shared>) -> Result<()> {
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    loop {
        let len = match rd.read_u32().await {
            Ok(n) => n as usize,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        anyhow::ensure!(len <= MAX_FRAME, "request of {len} bytes too large");
        let mut frame = BytesMut::zeroed(len);
        rd.read_exact(&mut frame).await?;
        let produce = frame.starts_with(&(ApiKey::Produce as i16).to_be_bytes());
        let Some(resp) = handle(frame.freeze(), &shared).await? else {
            continue;
        };
        if produce && shared.lose_produce_answer.swap(false, Ordering::SeqCst) {
            anyhow::bail!("the answer to a stored produce request dropped on purpose");
        }
        wr.write_all(&resp).await?;
    }
}

/// Answers one request frame; `None` when no response is due (acks=0 produce).
async fn handle(mut frame: Bytes, shared: &Shared) -> Result<Option<BytesMut>> {
    anyhow::ensure!(frame.len() >= 4, "request too short");
    let key_raw = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let key =
        ApiKey::try_from(key_raw).map_err(|()| anyhow::anyhow!("unknown api key {key_raw}"))?;
    if key == ApiKey::ApiVersions && !supported(key, version) {
        // Answer at v0, as Kafka does, so the client can pick a version we speak.
        let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let mut body = api_versions();
        body.error_code = code::UNSUPPORTED_VERSION;
        return encode(key, 0, correlation_id, &body).map(Some);
    }
    anyhow::ensure!(
        supported(key, version),
        "unsupported {key:?} version {version}"
    );
    let header = RequestHeader::decode(&mut frame, key.request_header_version(version))?;
    let cid = header.correlation_id;
    let out = match key {
        ApiKey::ApiVersions => {
            let _req = ApiVersionsRequest::decode(&mut frame, version)?;
            encode(key, version, cid, &api_versions())?
        }
        ApiKey::Metadata => {
            let req = MetadataRequest::decode(&mut frame, version)?;
            encode(key, version, cid, &metadata(shared, req))?
        }
        ApiKey::InitProducerId => {
            let _req = InitProducerIdRequest::decode(&mut frame, version)?;
            let mut r = InitProducerIdResponse::default();
            r.producer_id = shared
                .next_producer_id
                .fetch_add(1, Ordering::Relaxed)
                .into();
            r.producer_epoch = 0;
            encode(key, version, cid, &r)?
        }
        ApiKey::FindCoordinator => {
            let req = FindCoordinatorRequest::decode(&mut frame, version)?;
            encode(key, version, cid, &find_coordinator(shared, req, version))?
        }
        ApiKey::Produce => {
            let req = ProduceRequest::decode(&mut frame, version)?;
            let acks = req.acks;
            let r = produce(shared, req);
            if acks == 0 {
                return Ok(None);
            }
            encode(key, version, cid, &r)?
        }
        ApiKey::Fetch => {
            let req = FetchRequest::decode(&mut frame, version)?;
            let r = fetch(shared, req).await?;
            encode(key, version, cid, &r)?
        }
        ApiKey::ListOffsets => {
            let req = ListOffsetsRequest::decode(&mut frame, version)?;
            encode(key, version, cid, &list_offsets(shared, req))?
        }
        other => anyhow::bail!("unsupported api {other:?}"),
    };
    Ok(Some(out))
}

fn encode<M: Encodable>(key: ApiKey, version: i16, cid: i32, body: &M) -> Result<BytesMut> {
    let mut out = BytesMut::new();
    out.put_u32(0);
    let mut h = ResponseHeader::default();
    h.correlation_id = cid;
    h.encode(&mut out, key.response_header_version(version))?;
    body.encode(&mut out, version)?;
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

fn api_versions() -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.api_keys = APIS
        .iter()
        .map(|&(k, lo, hi)| {
            let mut v = ApiVersion::default();
            v.api_key = k as i16;
            v.min_version = lo;
            v.max_version = hi;
            v
        })
        .collect();
    r
}

fn topic_id(name: &str) -> uuid::Uuid {
    // Stable per name (FNV-1a), never the nil id.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    uuid::Uuid::from_u64_pair(h, h.rotate_left(17) | 1)
}

fn metadata(shared: &Shared, req: MetadataRequest) -> MetadataResponse {
    let mut r = MetadataResponse::default();
    let mut b = MetadataResponseBroker::default();
    b.node_id = BrokerId(NODE_ID);
    b.host = StrBytes::from_string(shared.host.clone());
    b.port = shared.port;
    r.brokers = vec![b];
    r.cluster_id = Some(StrBytes::from_static_str(CLUSTER_ID));
    r.controller_id = BrokerId(NODE_ID);
    let names: Vec<String> = match req.topics {
        None => shared.store.topics.keys().cloned().collect(),
        Some(ts) => ts
            .into_iter()
            .filter_map(|t| t.name.map(|n| n.0.to_string()))
            .collect(),
    };
    r.topics = names
        .into_iter()
        .map(|name| {
            let mut t = MetadataResponseTopic::default();
            t.topic_id = topic_id(&name);
            match shared.store.topics.get(&name) {
                Some(parts) => {
                    t.partitions = (0..parts.len() as i32)
                        .map(|p| {
                            let mut mp = MetadataResponsePartition::default();
                            mp.partition_index = p;
                            mp.leader_id = BrokerId(NODE_ID);
                            mp.leader_epoch = 0;
                            mp.replica_nodes = vec![BrokerId(NODE_ID)];
                            mp.isr_nodes = vec![BrokerId(NODE_ID)];
                            mp
                        })
                        .collect();
                }
                None => {
                    t.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                    t.topic_id = uuid::Uuid::nil();
                }
            }
            t.name = Some(TopicName(StrBytes::from_string(name)));
            t
        })
        .collect();
    r
}

fn find_coordinator(
    shared: &Shared,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let mut r = FindCoordinatorResponse::default();
    let host = StrBytes::from_string(shared.host.clone());
    if version >= 4 {
        r.coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|k| {
                let mut c = Coordinator::default();
                c.key = k;
                c.node_id = BrokerId(NODE_ID);
                c.host = host.clone();
                c.port = shared.port;
                c
            })
            .collect();
    } else {
        r.node_id = BrokerId(NODE_ID);
        r.host = host;
        r.port = shared.port;
    }
    r
}

fn produce(shared: &Shared, req: ProduceRequest) -> ProduceResponse {
    let mut r = ProduceResponse::default();
    let mut appended = false;
    for t in req.topic_data {
        let name = t.name.0.to_string();
        let mut tr = TopicProduceResponse::default();
        for pd in t.partition_data {
            let mut pr = PartitionProduceResponse::default();
            pr.index = pd.index;
            pr.log_append_time_ms = -1;
            match shared.store.partition(&name, pd.index) {
                None => {
                    pr.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                    pr.base_offset = -1;
                }
                Some(part) => {
                    let records = pd.records.unwrap_or_default();
                    let mut log = part.lock().expect("partition lock");
                    let hw_before = log.high_watermark();
                    match log.append(&records) {
                        Ok(base) => {
                            pr.base_offset = base;
                            appended |= log.high_watermark() != hw_before;
                        }
                        Err(e) => {
                            pr.base_offset = -1;
                            pr.error_code = match e {
                                AppendError::UnsupportedFormat => {
                                    code::UNSUPPORTED_FOR_MESSAGE_FORMAT
                                }
                                AppendError::Corrupt => code::CORRUPT_MESSAGE,
                                AppendError::Io(e) => {
                                    tracing::error!(error = %e, topic = %name, "broker append");
                                    code::KAFKA_STORAGE_ERROR
                                }
                            };
                        }
                    }
                    pr.log_start_offset = log.log_start();
                }
            }
            tr.partition_responses.push(pr);
        }
        tr.name = t.name;
        r.responses.push(tr);
    }
    if appended {
        shared.appended.send_modify(|n| *n += 1);
    }
    r
}

async fn fetch(shared: &Shared, req: FetchRequest) -> Result<FetchResponse> {
    let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let mut changes = shared.appended.subscribe();
    loop {
        let (resp, bytes, errors) = fetch_once(shared, &req)?;
        let now = Instant::now();
        if bytes > 0 || errors || req.min_bytes <= 0 || now >= deadline {
            return Ok(resp);
        }
        if tokio::time::timeout(deadline - now, changes.changed())
            .await
            .is_err()
        {
            return fetch_once(shared, &req).map(|(r, _, _)| r);
        }
    }
}

fn fetch_once(shared: &Shared, req: &FetchRequest) -> Result<(FetchResponse, usize, bool)> {
    let mut r = FetchResponse::default();
    let mut budget = req.max_bytes.max(0) as usize;
    let mut total = 0usize;
    let mut errors = false;
    for t in &req.topics {
        let name = t.topic.0.to_string();
        let mut tr = FetchableTopicResponse::default();
        tr.topic = t.topic.clone();
        tr.topic_id = t.topic_id;
        for p in &t.partitions {
            let mut pd = PartitionData::default();
            pd.partition_index = p.partition;
            pd.aborted_transactions = Some(Vec::new());
            match shared.store.partition(&name, p.partition) {
                None => {
                    pd.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                    pd.high_watermark = -1;
                    pd.last_stable_offset = -1;
                    pd.log_start_offset = -1;
                }
                Some(part) => {
                    let (plan, log_start) = {
                        let log = part.lock().expect("partition lock");
                        let log_start = log.log_start();
                        let hw = log.high_watermark();
                        if p.fetch_offset < log_start || p.fetch_offset > hw {
                            (None, (log_start, hw))
                        } else {
                            // At least one batch per response, as KIP-74 asks.
                            let limit = (p.partition_max_bytes.max(0) as usize).min(budget);
                            let limit = if total == 0 { limit.max(1) } else { limit };
                            (Some(log.plan_read(p.fetch_offset, limit)), (log_start, hw))
                        }
                    };
                    let (log_start, hw) = log_start;
                    pd.high_watermark = hw;
                    pd.last_stable_offset = hw;
                    pd.log_start_offset = log_start;
                    match plan {
                        None => pd.error_code = code::OFFSET_OUT_OF_RANGE,
                        Some(plan) => {
                            // Past the budget (another partition filled it): return nothing.
                            let fits = match plan.range {
                                Some((_, len)) => total == 0 || len <= budget,
                                None => true,
                            };
                            if fits && let Some(records) = plan.read()? {
                                total += records.len();
                                budget = budget.saturating_sub(records.len());
                                pd.records = Some(records);
                            } else {
                                pd.records = Some(Bytes::new());
                            }
                        }
                    }
                }
            }
            errors |= pd.error_code != 0;
            tr.partitions.push(pd);
        }
        r.responses.push(tr);
    }
    Ok((r, total, errors))
}

fn list_offsets(shared: &Shared, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut r = ListOffsetsResponse::default();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut tr = ListOffsetsTopicResponse::default();
        for p in t.partitions {
            let mut pr = ListOffsetsPartitionResponse::default();
            pr.partition_index = p.partition_index;
            pr.timestamp = -1;
            match shared.store.partition(&name, p.partition_index) {
                None => {
                    pr.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                    pr.offset = -1;
                }
                Some(part) => {
                    let log = part.lock().expect("partition lock");
                    pr.leader_epoch = 0;
                    pr.offset = match p.timestamp {
                        -2 => log.log_start(),
                        // -1 latest; -3 max timestamp and others below: the end.
                        ts if ts < 0 => log.high_watermark(),
                        ts => {
                            let (off, found_ts) = log.offset_for_timestamp(ts);
                            pr.timestamp = found_ts;
                            off
                        }
                    };
                }
            }
            tr.partitions.push(pr);
        }
        tr.name = t.name;
        r.topics.push(tr);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_directories_of_dead_brokers_are_swept() {
        let temp = tempfile::tempdir().expect("temp dir");
        let make = |name: &str| {
            let d = temp.path().join(name);
            std::fs::create_dir(&d).expect("dir");
            std::fs::write(d.join("clicks-0.log"), b"records").expect("log");
            d
        };
        let dead = make("adclick-broker-41-1796289154385769816");
        let running = make("adclick-broker-42-1796289154385769816");
        // Its process looks gone (another PID namespace), but its lock is held.
        let locked = make("adclick-broker-43-1796289154385769816");
        let lock = File::create(locked.join(TEMP_LOCK)).expect("lock file");
        lock.try_lock().expect("locked");
        // A lock file no one holds: its broker died.
        let released = make("adclick-broker-44-1796289154385769816");
        File::create(released.join(TEMP_LOCK)).expect("lock file");
        let unlike = [
            make("adclick-broker-41"),
            make("adclick-broker-x-1796289154385769816"),
            make("adclick-broker-41-later"),
            make("other-41-1796289154385769816"),
        ];
        let file = temp.path().join("adclick-broker-41-1796289154385769817");
        std::fs::write(&file, b"not a directory").expect("file");

        assert_eq!(sweep_orphans(temp.path(), |pid| pid == 42), 2);
        assert!(!dead.exists());
        assert!(!released.exists());
        assert!(running.exists());
        assert!(locked.exists());
        assert!(unlike.iter().all(|d| d.exists()));
        assert!(file.exists());
        assert_eq!(sweep_orphans(temp.path(), |pid| pid == 42), 0);
    }

    #[test]
    fn this_process_is_alive() {
        assert!(process_alive(std::process::id()));
    }

    /// A broker's own directory is locked while it runs and gone once it is dropped.
    #[test]
    fn a_temporary_directory_is_held_until_dropped() {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = TempDir::create(temp.path()).expect("created");
        let path = dir.path.clone();
        assert!(held(&path));
        assert_eq!(sweep_orphans(temp.path(), |_| false), 0);
        drop(dir);
        assert!(!path.exists());
    }
}
