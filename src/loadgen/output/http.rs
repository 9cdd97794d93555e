//! Real HTTP to a running `adclick-redirect`: clicks (and forgeries) as GETs of signed click
//! URLs with a browser's headers, allowed-late, too-late and malformed events as partner
//! batches on `POST /api/v1/events`. Sent in real time at the configured rate by
//! `concurrency` workers over keep-alive connections.
//!
//! The redirect stamps a click with its own clock, so the truth takes the time a GET was sent,
//! and no GET is sent within `boundary_guard_ms` of a minute boundary: a click whose response
//! still comes back in another minute is tallied `ambiguous`. Every emission of one impression
//! goes through the same worker, so a duplicate is requested only after its original was
//! answered, and the original wins.
//!
//! Hostile emissions (`--hostile`): future, ancient and oversized events are partner lines
//! (rejected `event_time_in_future`, accepted, rejected `line_too_long`); tracked clicks are
//! GETs with tracking parameters appended, whose 302 must carry the forwarded ones and not the
//! others; keyless batches must get 401; a stalled click opens its own connection, sends half
//! of its request head and then one byte at a time, never the end, until the redirect closes
//! it (an error if it is still open after [`STALL_LIMIT`], or if it was answered 302).
//!
//! Failed requests: the truth holds only what the redirect answered as expected. A request
//! the redirect provably did not take (the connection could not be opened, so nothing was
//! sent; or the answer was `503`/`429`, which the redirect gives only without recording an
//! event: its connection limit, or neither Kafka nor its spool taking the click) is sent again,
//! freshly stamped, after a short backoff, until it is answered (or the run is stopped, when
//! it is dropped like any queued emission). Any other failure (a wrong answer, or a
//! connection lost after the request was sent, when the redirect may or may not have recorded
//! it) is an error and stays out of the truth: errors say the truth no longer describes what
//! the redirect recorded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{
    AUTHORIZATION, CONNECTION, CONTENT_TYPE, COOKIE, HeaderName, LOCATION, USER_AGENT,
};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use indicatif::ProgressBar;

use crate::config::Config;
use crate::loadgen::catalog::Catalog;
use crate::loadgen::encode::partner_line;
use crate::loadgen::output::pause::PauseSwitch;
use crate::loadgen::traffic::{Emission, Forgery, Hostile, Kind, TRACKING_PARAMS, Traffic};
use crate::loadgen::truth::GroundTruth;
use crate::loadgen::{LoadgenConfig, Pacer};
use crate::timefmt::now_millis;
use crate::token::{ClickClaims, Keyring, SigningKey};

/// Lifetime of the click URLs the loadgen mints.
const LINK_TTL_S: i64 = 3_600;
/// The key forgeries with an unknown `kid` are signed with.
const ROGUE_KEY: (&str, &str) = ("loadgen-rogue", "a-key-no-redirect-should-have-0123");
/// Unexpected answers logged in full; the rest are only counted.
const LOGGED_ERRORS: u64 = 10;
const MINUTE_MS: i64 = 60_000;
/// A stalled connection the redirect has not closed after this long is an error: its
/// header-read timeout (10 s by default) should have closed it.
pub const STALL_LIMIT: Duration = Duration::from_secs(30);
/// A stalled connection sends one more byte of its never-ending head this often, so it is
/// slow, not idle: only a header-read timeout closes it.
const STALL_TRICKLE: Duration = Duration::from_millis(200);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Everything needed to turn an emission into a request, and what the answer must be.
pub struct Target {
    base: String,
    keyring: Keyring,
    rogue: Keyring,
    catalog: Catalog,
    country_header: HeaderName,
    ip_header: Option<HeaderName>,
    /// Without a client IP header, the address the redirect sees for every click URL: this
    /// process's, on a loopback connection.
    own_ip: String,
    /// Whether the redirect judges addresses (`redirect.datacenter_cidrs_file` is set).
    datacenter_checked: bool,
    user_id_cookie: String,
    partner_key: Option<String>,
}

/// A request about to be sent.
#[derive(Debug)]
pub struct Planned {
    pub request: Request<Full<Bytes>>,
    pub expect: Expect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// 302 to the landing page.
    Redirect,
    /// 403: a forgery.
    Forbidden,
    /// 200, and the one partner line accepted.
    Accepted,
    /// 200, and the one partner line rejected.
    Rejected,
    /// 200, and the one partner line rejected with a reason containing this.
    RejectedFor(&'static str),
    /// 401: a partner batch without a valid key.
    Unauthorized,
}

impl Target {
    pub fn new(cfg: &LoadgenConfig, config: &Config, catalog: Catalog) -> anyhow::Result<Self> {
        let keyring = Keyring::new(&config.signing.keys, config.signing.active_kid.as_deref())
            .context("signing the click URLs (the redirect's [signing] keys)")?;
        if config.signing.keys.iter().any(|k| k.kid == ROGUE_KEY.0) {
            bail!("signing key id `{}` is reserved for forgeries", ROGUE_KEY.0);
        }
        let rogue = Keyring::new(
            &[SigningKey {
                kid: ROGUE_KEY.0.into(),
                secret: ROGUE_KEY.1.into(),
            }],
            None,
        )?;
        let r = &config.redirect;
        if r.country_header.is_empty() {
            bail!(
                "redirect.country_header is empty: the loadgen could not tell the redirect a \
                 click's country, and the truth would not hold"
            );
        }
        let header = |name: &str, key: &str| {
            HeaderName::try_from(name).with_context(|| format!("{key}: bad header name"))
        };
        let partner_key = r.partners.first().map(|p| p.api_key.clone());
        if partner_key.is_none()
            && cfg.allowed_late_share + cfg.late_share + cfg.malformed_share + cfg.hostile > 0.0
        {
            bail!(
                "redirect.partners is empty: late, malformed and hostile events are POSTed as a \
                 partner (or set --allowed-late-share, --late-share, --malformed-share and \
                 --hostile to 0)"
            );
        }
        let ip_header = (!r.client_ip_header.is_empty())
            .then(|| header(&r.client_ip_header, "redirect.client_ip_header"))
            .transpose()?;
        let own_ip = match &ip_header {
            Some(_) => String::new(),
            None => loopback(&cfg.target).with_context(|| {
                format!(
                    "redirect.client_ip_header is empty and the target {} is not a loopback \
                     address: the truth could not know the address the redirect sees (the \
                     invalid-traffic rules count clicks per address)",
                    cfg.target
                )
            })?,
        };
        Ok(Self {
            base: cfg.target.trim_end_matches('/').to_string(),
            keyring,
            rogue,
            catalog,
            country_header: header(&r.country_header, "redirect.country_header")?,
            ip_header,
            own_ip,
            datacenter_checked: r.datacenter_cidrs_file.is_some(),
            user_id_cookie: r.user_id_cookie.clone(),
            partner_key,
        })
    }

    /// The request for `e` at wall-clock second `now_s`. A duplicate or retry requests `link`,
    /// the URL its original requested, when given; other clicks get a freshly signed one.
    pub fn plan(&self, e: &Emission, now_s: i64, link: Option<String>) -> Planned {
        match &e.kind {
            Kind::Click | Kind::Bot | Kind::Duplicate | Kind::Retry | Kind::Scheme(_) => Planned {
                request: self.get(e, &link.unwrap_or_else(|| self.url(e, None, now_s))),
                expect: Expect::Redirect,
            },
            Kind::Forged(forgery) => Planned {
                request: self.get(e, &self.url(e, Some(*forgery), now_s)),
                expect: Expect::Forbidden,
            },
            Kind::Hostile(Hostile::Tracked(params)) => {
                let mut url = link.unwrap_or_else(|| self.url(e, None, now_s));
                let mut q = form_urlencoded::Serializer::new(String::new());
                q.extend_pairs(params);
                url.push('&');
                url.push_str(&q.finish());
                Planned {
                    request: self.get(e, &url),
                    expect: Expect::Redirect,
                }
            }
            Kind::Hostile(Hostile::Stalled) => {
                panic!("a stalled click is no request: see Target::stalled_head")
            }
            Kind::AllowedLate
            | Kind::TooLate
            | Kind::Malformed(_)
            | Kind::Hostile(
                Hostile::Future
                | Hostile::Ancient
                | Hostile::Oversized(_)
                | Hostile::Keyless { .. },
            ) => {
                let mut body = partner_line(e);
                body.push('\n');
                let mut request = Request::builder()
                    .method(Method::POST)
                    .uri(format!("{}/api/v1/events", self.base))
                    .header(CONTENT_TYPE, "application/x-ndjson");
                let key = self.partner_key.as_deref().unwrap_or("");
                request = match e.kind {
                    // The redirect answers before it reads the body and may then close the
                    // connection: keep it out of the pool.
                    Kind::Hostile(Hostile::Keyless { wrong_key }) => {
                        let r = request.header(CONNECTION, "close");
                        if wrong_key {
                            r.header(AUTHORIZATION, format!("Bearer not-{key}"))
                        } else {
                            r
                        }
                    }
                    _ => request.header(AUTHORIZATION, format!("Bearer {key}")),
                };
                let request = request
                    .body(Full::new(Bytes::from(body)))
                    .expect("valid request parts");
                let expect = match e.kind {
                    Kind::Malformed(_) => Expect::Rejected,
                    Kind::Hostile(Hostile::Future) => Expect::RejectedFor("ahead of the clock"),
                    Kind::Hostile(Hostile::Oversized(_)) => Expect::RejectedFor("max_line_bytes"),
                    Kind::Hostile(Hostile::Keyless { .. }) => Expect::Unauthorized,
                    _ => Expect::Accepted,
                };
                Planned { request, expect }
            }
        }
    }

    /// A stalled click's connection: the redirect's `host:port`, the first half of the
    /// click's request head (signed, with the browser's headers), and the rest of it, which
    /// still lacks the blank line that would end it.
    pub fn stalled_head(&self, e: &Emission, now_s: i64) -> (String, Vec<u8>, Vec<u8>) {
        let request = self.get(e, &self.url(e, None, now_s));
        let uri = request.uri();
        let authority = uri
            .authority()
            .map_or_else(|| "127.0.0.1:80".to_string(), |a| a.to_string());
        let authority = if authority.contains(':') {
            authority
        } else {
            format!("{authority}:80")
        };
        let mut head = format!(
            "GET {} HTTP/1.1\r\nhost: {authority}\r\n",
            uri.path_and_query().map_or("/", |p| p.as_str())
        );
        for (name, value) in request.headers() {
            head.push_str(&format!(
                "{name}: {}\r\n",
                value.to_str().expect("generated headers are text")
            ));
        }
        let mut head = head.into_bytes();
        let rest = head.split_off(head.len() / 2);
        (authority, head, rest)
    }

    /// A click URL for `e`, signed, or forged as asked.
    fn url(&self, e: &Emission, forgery: Option<Forgery>, now_s: i64) -> String {
        let ev = &e.click.event;
        let mut claims = ClickClaims {
            impression_id: ev.impression_id.clone(),
            ad_id: ev.ad_id.clone(),
            campaign_id: ev.campaign_id.clone(),
            advertiser_id: ev.advertiser_id.clone(),
            publisher_id: ev.publisher_id.clone(),
            url: self.catalog.landing_url(e.click.ad),
            exp: now_s + LINK_TTL_S,
        };
        let query = match forgery {
            // Signed with the impression's time when the click has one.
            None => {
                let served = u64::try_from(ev.impression_time_ms).ok().filter(|&t| t > 0);
                self.keyring.sign_query_served(&claims, served)
            }
            Some(Forgery::Expired) => {
                claims.exp = now_s - 60;
                self.keyring.sign_query(&claims)
            }
            Some(Forgery::UnknownKey) => self.rogue.sign_query(&claims),
            Some(Forgery::BadSignature) => edit_query(&self.keyring.sign_query(&claims), "sig"),
            Some(Forgery::AlteredParam) => {
                edit_query(&self.keyring.sign_query(&claims), "publisher_id")
            }
        };
        format!("{}/api/v1/click/{}?{query}", self.base, ev.impression_id)
    }

    fn get(&self, e: &Emission, url: &str) -> Request<Full<Bytes>> {
        let c = &e.click;
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(url)
            .header(USER_AGENT, &c.event.user_agent)
            .header(&self.country_header, c.country);
        if let Some(h) = &self.ip_header {
            req = req.header(h, &c.ip);
        }
        if let Some(user) = c
            .user_id
            .as_deref()
            .filter(|_| !self.user_id_cookie.is_empty())
        {
            req = req.header(COOKIE, format!("{}={user}", self.user_id_cookie));
        }
        req.body(Full::new(Bytes::new()))
            .expect("generated URLs and headers are valid")
    }
}

/// The address a connection to `target` comes from, if its host is a loopback address.
fn loopback(target: &str) -> Option<String> {
    let uri: hyper::Uri = target.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = if host == "localhost" {
        std::net::Ipv4Addr::LOCALHOST.into()
    } else {
        host.parse().ok()?
    };
    ip.is_loopback().then(|| ip.to_string())
}

/// `query` with parameter `name`'s value changed: its first character swapped for another
/// (which keeps a signature valid base64url, so it fails as a signature, not as a format).
fn edit_query(query: &str, name: &str) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let v = if k == name {
            let mut chars = v.chars();
            let first = chars.next().unwrap_or('A');
            let swapped = if first == 'A' { 'B' } else { 'A' };
            std::iter::once(swapped).chain(chars).collect()
        } else {
            v.into_owned()
        };
        q.append_pair(&k, &v);
    }
    q.finish()
}

/// How long to wait so that a request sent now is at least `guard_ms` from a minute boundary.
pub fn boundary_wait(now_ms: i64, guard_ms: i64) -> Option<Duration> {
    let into = now_ms.rem_euclid(MINUTE_MS);
    let wait = if into < guard_ms {
        guard_ms - into
    } else if into >= MINUTE_MS - guard_ms {
        MINUTE_MS - into + guard_ms
    } else {
        return None;
    };
    Some(Duration::from_millis(wait as u64))
}

/// What the workers share.
struct Shared {
    target: Target,
    /// Replaced, with its connections, at each pause.
    client: RwLock<HttpClient>,
    /// Emissions handed to workers and not yet answered and recorded.
    outstanding: AtomicU64,
    truth: Mutex<GroundTruth>,
    errors: AtomicU64,
    guard_ms: i64,
    progress: ProgressBar,
    /// Set when the run is stopped early: queued emissions are dropped, not sent.
    stopping: AtomicBool,
    /// Stalled connections, each ending with what became of it.
    stalls: Mutex<Vec<tokio::task::JoinHandle<anyhow::Result<Duration>>>>,
    /// Requests the redirect provably did not take, sent again.
    retried: AtomicU64,
}

/// What the HTTP output did: the truth of what the redirect took, the unexpected answers,
/// and the requests sent again because the redirect refused or never saw them.
pub struct Delivery {
    pub truth: GroundTruth,
    pub errors: u64,
    pub retried: u64,
}

/// Sends the traffic and returns the truth of what the redirect took, with the number of
/// unexpected answers (each is an error: the truth no longer describes what the redirect
/// recorded) and of requests sent again.
pub fn run(
    cfg: &LoadgenConfig,
    config: &Config,
    traffic: Traffic,
    truth: GroundTruth,
    progress: ProgressBar,
    stop: &AtomicBool,
) -> anyhow::Result<Delivery> {
    let target = Target::new(cfg, config, traffic.catalog().clone())?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let new_client = || -> HttpClient {
            Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(cfg.concurrency)
                .build_http()
        };
        let client = new_client();
        check_reachable(&client, &target.base).await?;
        let pause = PauseSwitch::on_signals().context("listening for SIGUSR1 and SIGUSR2")?;
        let shared = Arc::new(Shared {
            target,
            client: RwLock::new(client),
            outstanding: AtomicU64::new(0),
            truth: Mutex::new(truth),
            errors: AtomicU64::new(0),
            guard_ms: cfg.boundary_guard_ms,
            progress,
            stopping: AtomicBool::new(false),
            stalls: Mutex::new(Vec::new()),
            retried: AtomicU64::new(0),
        });
        let mut queues = Vec::with_capacity(cfg.concurrency);
        let mut workers = Vec::with_capacity(cfg.concurrency);
        for _ in 0..cfg.concurrency {
            let (tx, rx) = tokio::sync::mpsc::channel::<Emission>(256);
            queues.push(tx);
            workers.push(tokio::spawn(worker(rx, shared.clone())));
        }
        let mut pacer = Pacer::new(traffic.schedule().start_ms, 1.0);
        for e in traffic {
            loop {
                if let Some(wait) = pacer.wait(e.base_ms) {
                    tokio::time::sleep(wait).await;
                }
                if !pause.is_paused() || stop.load(Ordering::Relaxed) {
                    break;
                }
                let paused_at = Instant::now();
                quiesce(&shared, new_client()).await;
                while pause.is_paused() && !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                pacer.shift(paused_at.elapsed());
                tracing::info!(
                    "traffic resumed after {:.1} s",
                    paused_at.elapsed().as_secs_f64()
                );
            }
            if stop.load(Ordering::Relaxed) {
                shared.stopping.store(true, Ordering::Relaxed);
                break;
            }
            let w = crc32fast::hash(e.click.event.impression_id.as_bytes()) as usize % queues.len();
            shared.outstanding.fetch_add(1, Ordering::SeqCst);
            queues[w]
                .send(e)
                .await
                .map_err(|_| anyhow::anyhow!("an HTTP worker stopped"))?;
        }
        drop(queues);
        for w in workers {
            w.await.context("an HTTP worker panicked")?;
        }
        await_stalls(&shared).await?;
        let shared =
            Arc::try_unwrap(shared).map_err(|_| anyhow::anyhow!("workers still hold the truth"))?;
        shared.progress.finish_and_clear();
        Ok(Delivery {
            truth: shared.truth.into_inner().expect("not poisoned"),
            errors: shared.errors.into_inner(),
            retried: shared.retried.into_inner(),
        })
    })
}

/// Waits until every request sent has been answered and recorded, then closes the
/// connections (by dropping the client that holds them), so that nothing is in flight and no
/// later request goes over a connection opened before the pause.
async fn quiesce(s: &Shared, fresh: HttpClient) {
    while s.outstanding.load(Ordering::SeqCst) > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(std::mem::replace(
        &mut *s.client.write().expect("not poisoned"),
        fresh,
    ));
    tracing::info!("traffic paused: every request answered, connections closed");
}

/// Fails fast, with the address, if nothing answers there.
async fn check_reachable(client: &HttpClient, base: &str) -> anyhow::Result<()> {
    let url = format!("{base}/healthz");
    let req = Request::get(&url)
        .body(Full::new(Bytes::new()))
        .with_context(|| format!("--target {base}"))?;
    let resp = client
        .request(req)
        .await
        .with_context(|| format!("no adclick-redirect answering at {url}"))?;
    if resp.status() != StatusCode::OK {
        bail!("{url} answered {}", resp.status());
    }
    Ok(())
}

/// Waits for every stalled connection to be closed by the redirect, counting those it kept
/// open (or answered) as errors.
async fn await_stalls(s: &Shared) -> anyhow::Result<()> {
    let stalls = std::mem::take(&mut *s.stalls.lock().expect("not poisoned"));
    if stalls.is_empty() {
        return Ok(());
    }
    let (n, mut longest) = (stalls.len(), Duration::ZERO);
    for stall in stalls {
        match stall.await.context("a stalled connection panicked")? {
            Ok(held) => longest = longest.max(held),
            Err(err) => {
                let n = s.errors.fetch_add(1, Ordering::Relaxed) + 1;
                if n <= LOGGED_ERRORS {
                    tracing::error!("stalled connection: {err:#}");
                }
            }
        }
    }
    tracing::info!(
        "{n} stalled connections, the longest closed by the redirect after {:.1} s",
        longest.as_secs_f64()
    );
    Ok(())
}

/// Opens a connection, sends `head`, then `rest` and endless header lines one byte at a time,
/// never the blank line that ends a head, until the redirect closes the connection. The time
/// it was held, or an error if the redirect answered a redirect or kept it open too long.
async fn stall(addr: String, head: Vec<u8>, rest: Vec<u8>) -> anyhow::Result<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut conn = tokio::net::TcpStream::connect(&addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut trickle = rest
        .into_iter()
        .chain(std::iter::repeat(b"x-stall: 1\r\n".iter().copied()).flatten());
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = |answer: &[u8]| -> anyhow::Result<Duration> {
        let text = String::from_utf8_lossy(answer);
        if text.starts_with("HTTP/1.1 302") || text.starts_with("HTTP/1.0 302") {
            bail!("a half-sent click was answered: {text:.80}");
        }
        Ok(started.elapsed())
    };
    if conn.write_all(&head).await.is_err() {
        return closed(&answer);
    }
    loop {
        if started.elapsed() > STALL_LIMIT {
            bail!(
                "the redirect kept a connection open for {STALL_LIMIT:?} without a whole \
                 request head (no header-read timeout?)"
            );
        }
        tokio::select! {
            read = conn.read(&mut buf) => match read {
                Ok(0) | Err(_) => return closed(&answer),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(STALL_TRICKLE) => {
                let byte = trickle.next().expect("endless");
                if conn.write_all(&[byte]).await.is_err() {
                    return closed(&answer);
                }
            }
        }
    }
}

async fn worker(mut rx: tokio::sync::mpsc::Receiver<Emission>, s: Arc<Shared>) {
    // The URLs (and impression times) of clicks whose duplicate or retry is still to come.
    let mut links: HashMap<String, (String, i64)> = HashMap::new();
    while let Some(first) = rx.recv().await {
        let mut backoff = RETRY_FIRST;
        let mut e = first.clone();
        let outcome = loop {
            if s.stopping.load(Ordering::Relaxed) {
                break None;
            }
            match deliver(&s, &mut e, &mut links).await {
                Ok(Delivered::Refused(why)) => {
                    let n = s.retried.fetch_add(1, Ordering::Relaxed) + 1;
                    if n <= LOGGED_ERRORS {
                        tracing::warn!(seq = e.seq, "{why}; sending it again");
                    }
                    // Stamped afresh when sent again: the redirect never saw this one.
                    e = first.clone();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
                other => break Some(other),
            }
        };
        let mut truth = s.truth.lock().expect("not poisoned");
        match outcome {
            // Stopped before the redirect took it: dropped, like a queued emission.
            None => {}
            Some(Ok(answered)) => {
                truth.record(&e);
                if answered == (Delivered::Answered { ambiguous: true }) {
                    truth.note_ambiguous();
                }
            }
            Some(Err(err)) => {
                let n = s.errors.fetch_add(1, Ordering::Relaxed) + 1;
                if n <= LOGGED_ERRORS {
                    tracing::error!(seq = e.seq, kind = e.kind.name(), "{err:#}");
                }
            }
        }
        drop(truth);
        s.outstanding.fetch_sub(1, Ordering::SeqCst);
        s.progress.inc(1);
    }
}

/// The first wait before a refused request is sent again, doubled each time up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, PartialEq, Eq)]
enum Delivered {
    /// Answered as planned; `ambiguous` if the redirect may have stamped another minute.
    Answered { ambiguous: bool },
    /// The redirect provably did not take it (why): it must be sent again.
    Refused(String),
}

/// Whether hyper failed the request because the server spoke first, on a connection where
/// no request had been sent yet: the redirect refusing a connection over its limit writes its
/// 503 at once, and a request the server answered before reading it was never taken. hyper
/// has no predicate for this error kind, so its message is matched.
fn answered_unasked(err: &hyper_util::client::legacy::Error) -> bool {
    std::error::Error::source(err)
        .and_then(|e| e.downcast_ref::<hyper::Error>())
        .is_some_and(|e| e.to_string().contains("unexpected message"))
}

/// Whether hyper gave the request up before writing it: a pooled connection that closed
/// before it was ready ("connection was not ready"). A canceled request never reached the
/// wire, so the redirect never saw it.
fn never_sent(err: &hyper_util::client::legacy::Error) -> bool {
    std::error::Error::source(err)
        .and_then(|e| e.downcast_ref::<hyper::Error>())
        .is_some_and(hyper::Error::is_canceled)
}

/// Whether an answer says the redirect took nothing: `503` (connection limit, or neither
/// Kafka nor the spool could take the click) and `429`.
fn refused(status: StatusCode) -> bool {
    status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS
}

/// Sends `e`, setting its event time to what the redirect will record, and checks the answer.
async fn deliver(
    s: &Shared,
    e: &mut Emission,
    links: &mut HashMap<String, (String, i64)>,
) -> anyhow::Result<Delivered> {
    if e.kind == Kind::Hostile(Hostile::Stalled) {
        let (addr, head, rest) = s.target.stalled_head(e, now_millis().div_euclid(1000));
        let stall = tokio::spawn(stall(addr, head, rest));
        s.stalls.lock().expect("not poisoned").push(stall);
        return Ok(Delivered::Answered { ambiguous: false });
    }
    let is_get = matches!(
        e.kind,
        Kind::Click
            | Kind::Bot
            | Kind::Duplicate
            | Kind::Retry
            | Kind::Forged(_)
            | Kind::Hostile(Hostile::Tracked(_))
            | Kind::Scheme(_)
    );
    if is_get {
        while let Some(wait) = boundary_wait(now_millis(), s.guard_ms) {
            tokio::time::sleep(wait).await;
        }
    }
    // How long after its impression the generator meant the click to come.
    let ev = &e.click.event;
    let gap = (ev.impression_time_ms != 0).then(|| ev.event_time_ms - ev.impression_time_ms);
    let sent_ms = now_millis();
    if is_get {
        e.click.event.event_time_ms = sent_ms;
        // The address the redirect sees: the client IP header's, raw (so it can find a data
        // center if it is given ranges), or this connection's own.
        match &s.target.ip_header {
            Some(_) => e.click.edge = s.target.datacenter_checked,
            None => e.click.ip = s.target.own_ip.clone(),
        }
    } else if e.kind != Kind::Hostile(Hostile::Future) {
        // Partner events keep their distance behind real time, however late the worker runs.
        e.click.event.event_time_ms += sent_ms - e.base_ms;
    }
    let impression = e.click.event.impression_id.clone();
    // Kept until the redirect takes the request: one it refused is sent again with it.
    let link = links.get(&impression).cloned();
    if is_get {
        // The impression was served as long before the request as the generator meant, or,
        // for a duplicate or retry, when its original's link says.
        let ev = &mut e.click.event;
        ev.impression_time_ms = match &link {
            Some((_, served)) => *served,
            None => gap.map_or(0, |gap| sent_ms - gap),
        };
    }
    let served = e.click.event.impression_time_ms;
    let planned = s
        .target
        .plan(e, sent_ms.div_euclid(1000), link.map(|(url, _)| url));
    let uri = planned.request.uri().to_string();
    let client = s.client.read().expect("not poisoned").clone();
    let resp = match client.request(planned.request).await {
        Ok(resp) => resp,
        // No connection, so no request; an answer before the request (the redirect's 503
        // to a connection over its limit); or a request canceled before it was written: the
        // redirect never read it.
        Err(err) if err.is_connect() || answered_unasked(&err) || never_sent(&err) => {
            return Ok(Delivered::Refused(format!("not taken: {err}")));
        }
        Err(err) => return Err(err).context("request failed"),
    };
    let status = resp.status();
    if refused(status) {
        return Ok(Delivered::Refused(format!("answered {status}")));
    }
    links.remove(&impression);
    if !e.settles {
        links.insert(impression, (uri, served));
    }
    let location = resp
        .headers()
        .get(LOCATION)
        .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned());
    let body = resp
        .into_body()
        .collect()
        .await
        .context("reading the answer")?
        .to_bytes();
    let received_ms = now_millis();
    let line_status = || -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
        Some(v["results"][0]["status"].as_str()?.to_string())
    };
    let line_error = || -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
        Some(v["results"][0]["error"].as_str()?.to_string())
    };
    let ok = match planned.expect {
        Expect::Redirect => status == StatusCode::FOUND,
        Expect::Forbidden => status == StatusCode::FORBIDDEN,
        Expect::Accepted => {
            status == StatusCode::OK && line_status().as_deref() == Some("accepted")
        }
        Expect::Rejected => {
            status == StatusCode::OK && line_status().as_deref() == Some("rejected")
        }
        Expect::RejectedFor(reason) => {
            status == StatusCode::OK
                && line_status().as_deref() == Some("rejected")
                && line_error().is_some_and(|e| e.contains(reason))
        }
        Expect::Unauthorized => status == StatusCode::UNAUTHORIZED,
    };
    if !ok {
        bail!(
            "expected {:?}, got {status}: {}",
            planned.expect,
            String::from_utf8_lossy(&body)
        );
    }
    if let Kind::Hostile(Hostile::Tracked(params)) = &e.kind {
        check_forwarded(location.as_deref().unwrap_or(""), params)?;
    }
    // A click near the too-fast limit answered late may have been stamped beyond it.
    let near_limit = served != 0 && sent_ms - served < 2_600 && received_ms - sent_ms > 500;
    Ok(Delivered::Answered {
        ambiguous: planned.expect == Expect::Redirect
            && (sent_ms.div_euclid(MINUTE_MS) != received_ms.div_euclid(MINUTE_MS) || near_limit),
    })
}

/// The landing URL of a click with tracking parameters carries each forwarded one, with its
/// value, and none of the others.
fn check_forwarded(location: &str, params: &[(String, String)]) -> anyhow::Result<()> {
    let query = location.split_once('?').map_or("", |(_, q)| q);
    let got: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    for (k, v) in params {
        let forwarded = TRACKING_PARAMS.contains(&k.as_str());
        let present = got.iter().any(|(gk, gv)| gk == k && gv == v);
        if forwarded != present {
            bail!(
                "tracking parameter {k}={v} was {} the landing URL {location:?}",
                if forwarded {
                    "not forwarded to"
                } else {
                    "forwarded to"
                }
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Partner;
    use crate::loadgen::partition::Partitioner;
    use crate::loadgen::traffic::{Flaw, Schedule};
    use crate::token::TokenError;
    use warp::Filter;

    fn config() -> Config {
        let mut c = Config::default();
        c.signing.keys = vec![SigningKey {
            kid: "k1".into(),
            secret: "test-secret-0123456789".into(),
        }];
        c.redirect.partners = vec![Partner {
            name: "p".into(),
            api_key: "partner-key-0123456789".into(),
        }];
        c
    }

    fn emission() -> Emission {
        let cfg = LoadgenConfig::default();
        let mut t = Traffic::new(
            &cfg,
            Schedule {
                start_ms: 1_776_686_400_000,
                count: 10,
                partitioner: Partitioner::Murmur2 { shards: 1 },
                forgeries: true,
            },
            crate::event::enrich::Enricher::new("s"),
        );
        t.find(|e| e.kind == Kind::Click).unwrap()
    }

    fn target() -> Target {
        let cfg = LoadgenConfig::default();
        Target::new(&cfg, &config(), Catalog::new(cfg.catalog_size())).unwrap()
    }

    /// What the redirect's verifier makes of the planned request.
    fn verify(e: &Emission) -> Result<ClickClaims, TokenError> {
        let t = target();
        let now_s = 1_776_686_400;
        let planned = t.plan(e, now_s, None);
        let uri = planned.request.uri();
        let impression = uri.path().rsplit('/').next().unwrap();
        assert_eq!(impression, e.click.event.impression_id);
        Keyring::new(&config().signing.keys, None).unwrap().verify(
            impression,
            uri.query().unwrap(),
            now_s,
        )
    }

    #[test]
    fn clicks_are_signed_with_the_browser_headers() {
        let e = emission();
        let claims = verify(&e).unwrap();
        assert_eq!(claims.ad_id, e.click.event.ad_id);
        assert_eq!(claims.publisher_id, e.click.event.publisher_id);
        let planned = target().plan(&e, 0, None);
        assert_eq!(planned.expect, Expect::Redirect);
        // A double click requests the very same link again.
        let link = planned.request.uri().to_string();
        let again = target().plan(&e, 5_000, Some(link.clone()));
        assert_eq!(again.request.uri().to_string(), link);
        assert_ne!(
            target().plan(&e, 5_000, None).request.uri().to_string(),
            link
        );
        let h = planned.request.headers();
        assert_eq!(h[USER_AGENT], e.click.event.user_agent.as_str());
        assert_eq!(h["x-edge-country"], e.click.country);
        assert_eq!(
            h[COOKIE],
            format!("uid={}", e.click.user_id.as_deref().unwrap()).as_str()
        );
    }

    #[test]
    fn every_forgery_is_refused_for_its_own_reason() {
        let mut e = emission();
        for (forgery, label) in [
            (Forgery::BadSignature, "bad_signature"),
            (Forgery::AlteredParam, "bad_signature"),
            (Forgery::Expired, "expired"),
            (Forgery::UnknownKey, "unknown_key"),
        ] {
            e.kind = Kind::Forged(forgery);
            assert_eq!(target().plan(&e, 0, None).expect, Expect::Forbidden);
            assert_eq!(verify(&e).unwrap_err().label(), label, "{forgery:?}");
        }
    }

    #[test]
    fn late_and_malformed_events_are_partner_posts() {
        let mut e = emission();
        for (kind, expect) in [
            (Kind::AllowedLate, Expect::Accepted),
            (Kind::TooLate, Expect::Accepted),
            (Kind::Malformed(Flaw::BadCountry), Expect::Rejected),
        ] {
            e.kind = kind;
            let planned = target().plan(&e, 0, None);
            assert_eq!(planned.expect, expect);
            assert_eq!(planned.request.method(), Method::POST);
            assert_eq!(planned.request.uri().path(), "/api/v1/events");
            assert_eq!(
                planned.request.headers()[AUTHORIZATION],
                "Bearer partner-key-0123456789"
            );
        }
    }

    #[test]
    fn hostile_emissions_are_planned_with_their_answers() {
        let mut e = emission();
        let t = target();
        e.kind = Kind::Hostile(Hostile::Tracked(vec![
            ("utm_source".into(), "news letter".into()),
            ("ref".into(), "x".into()),
        ]));
        let planned = t.plan(&e, 0, None);
        assert_eq!(planned.expect, Expect::Redirect);
        let uri = planned.request.uri().to_string();
        assert!(uri.ends_with("&utm_source=news+letter&ref=x"), "{uri}");
        for (kind, expect) in [
            (Hostile::Future, Expect::RejectedFor("ahead of the clock")),
            (
                Hostile::Oversized(70_000),
                Expect::RejectedFor("max_line_bytes"),
            ),
            (Hostile::Ancient, Expect::Accepted),
        ] {
            e.kind = Kind::Hostile(kind);
            let planned = t.plan(&e, 0, None);
            assert_eq!(planned.expect, expect);
            assert_eq!(planned.request.uri().path(), "/api/v1/events");
        }
        for wrong_key in [false, true] {
            e.kind = Kind::Hostile(Hostile::Keyless { wrong_key });
            let planned = t.plan(&e, 0, None);
            assert_eq!(planned.expect, Expect::Unauthorized);
            let h = planned.request.headers();
            assert_eq!(h[CONNECTION], "close");
            assert_eq!(h.contains_key(AUTHORIZATION), wrong_key);
            if wrong_key {
                assert_ne!(h[AUTHORIZATION], "Bearer partner-key-0123456789");
            }
        }
    }

    #[test]
    fn forwarded_parameters_are_checked_both_ways() {
        let params = [
            ("gclid".to_string(), "a b".to_string()),
            ("session".to_string(), "s1".to_string()),
        ];
        check_forwarded("https://x.example/p?k=1&gclid=a+b", &params).unwrap();
        let err = check_forwarded("https://x.example/p?k=1", &params).unwrap_err();
        assert!(err.to_string().contains("not forwarded"), "{err}");
        let err =
            check_forwarded("https://x.example/p?gclid=a%20b&session=s1", &params).unwrap_err();
        assert!(err.to_string().contains("session"), "{err}");
    }

    /// A stalled click sends half its head, then a byte at a time without ever ending it, and
    /// is held until the server's header-read timeout closes it; finished, the same head would
    /// be answered.
    #[tokio::test]
    async fn a_stalled_click_lasts_until_the_header_read_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = crate::http_server::Limits {
            max_connections: 8,
            header_read_timeout: Duration::from_millis(600),
            idle_timeout: Duration::from_secs(10),
            max_uri_bytes: 8192,
        };
        tokio::spawn(crate::http_server::serve(
            warp::service(warp::any().map(|| "counted")),
            listener,
            limits,
            std::future::pending(),
        ));
        let cfg = LoadgenConfig {
            target: format!("http://{addr}"),
            ..LoadgenConfig::default()
        };
        let t = Target::new(&cfg, &config(), Catalog::new(cfg.catalog_size())).unwrap();
        let mut e = emission();
        e.kind = Kind::Hostile(Hostile::Stalled);
        let (to, head, rest) = t.stalled_head(&e, 1_776_686_400);
        assert_eq!(to, addr.to_string());
        let whole = [head.clone(), rest.clone()].concat();
        let text = String::from_utf8(whole.clone()).unwrap();
        assert!(text.starts_with("GET /api/v1/click/imp_"), "{text}");
        assert!(
            text.ends_with("\r\n") && !text.contains("\r\n\r\n"),
            "{text}"
        );
        let held = stall(to, head, rest).await.unwrap();
        assert!(
            held >= Duration::from_millis(550) && held < Duration::from_secs(5),
            "{held:?}"
        );
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(&[whole, b"\r\n".to_vec()].concat())
            .await
            .unwrap();
        let mut answer = vec![0u8; 64];
        let n = conn.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{answer:?}");
    }

    #[test]
    fn misconfigurations_are_named() {
        let cfg = LoadgenConfig::default();
        let catalog = || Catalog::new(cfg.catalog_size());
        let mut c = config();
        c.redirect.partners.clear();
        let err = Target::new(&cfg, &c, catalog()).err().unwrap();
        assert!(err.to_string().contains("redirect.partners"), "{err}");
        let quiet = LoadgenConfig {
            allowed_late_share: 0.0,
            late_share: 0.0,
            malformed_share: 0.0,
            ..cfg.clone()
        };
        Target::new(&quiet, &c, catalog()).unwrap();
        let mut c = config();
        c.redirect.country_header.clear();
        let err = Target::new(&cfg, &c, catalog()).err().unwrap();
        assert!(err.to_string().contains("country_header"), "{err}");
        let mut c = config();
        c.signing.keys.clear();
        assert!(Target::new(&cfg, &c, catalog()).is_err());
    }

    #[test]
    fn requests_keep_clear_of_minute_boundaries() {
        let m = 1_776_686_400_000;
        assert_eq!(boundary_wait(m + 30_000, 250), None);
        assert_eq!(boundary_wait(m + 250, 250), None);
        assert_eq!(
            boundary_wait(m + 100, 250),
            Some(Duration::from_millis(150))
        );
        assert_eq!(
            boundary_wait(m - 100, 250),
            Some(Duration::from_millis(350))
        );
        assert_eq!(
            boundary_wait(m - 250, 250),
            Some(Duration::from_millis(500))
        );
        assert_eq!(boundary_wait(m - 251, 250), None);
        assert_eq!(boundary_wait(m, 0), None);
    }

    #[test]
    fn edited_queries_differ_in_one_parameter_only() {
        let q = "ad_id=ad_1&sig=Abc&url=https%3A%2F%2Fx.example%2F";
        assert_eq!(
            edit_query(q, "sig"),
            "ad_id=ad_1&sig=Bbc&url=https%3A%2F%2Fx.example%2F"
        );
        assert_eq!(
            edit_query(q, "ad_id"),
            "ad_id=Ad_1&sig=Abc&url=https%3A%2F%2Fx.example%2F"
        );
    }
}
