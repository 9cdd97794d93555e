//! The HTTP/1.1 server both services run their warp routes on: the redirect
//! (`adclick-redirect`) and the aggregator's query server.
//!
//! `warp::serve` has no timeouts and no connection limit: a client that opens a connection and
//! sends half a request holds it (and its task and socket) forever, and enough of them starve
//! everyone else. This server runs the same routes (through `warp::service`) on hyper's
//! HTTP/1 connection, with:
//!
//! - a **header-read timeout**: a request head must arrive in full within
//!   `header_read_timeout` of the connection opening or of the previous response. hyper's
//!   timer starts as soon as the connection waits for a head, so it is also the keep-alive
//!   idle timeout: an idle keep-alive connection is closed after it.
//! - an **idle timeout**: a connection on which no byte moves either way for `idle_timeout`
//!   is closed, which covers what the head timer does not (a body that stalls, a client that
//!   stops reading its answer).
//! - a **connection limit**: past `max_connections` open connections, a new one is answered
//!   `503` with a JSON body and closed at once, instead of waiting in the backlog until the
//!   client gives up. The answer goes out even when the client has not finished its request,
//!   and the few connections being refused are themselves capped.
//! - a **URI limit**: a request target longer than `max_uri_bytes` is answered `414` in JSON
//!   (hyper's own parse errors, for heads it cannot parse at all, stay hyper's bare answers).
//!
//! Client-side failures (resets, disconnects, timeouts, garbage) are logged at debug: they
//! are the clients' business, and logging them as errors lets any client flood the log.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower_service::Service;
use warp::Filter;
use warp::http::{Request, StatusCode, header};
use warp::reply::Response;

/// The limits of one server.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_uri_bytes: usize,
}

impl Limits {
    /// Checks values that would make the server useless.
    pub fn check(&self, section: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_connections >= 1,
            "{section}max_connections must be at least 1"
        );
        anyhow::ensure!(
            self.header_read_timeout >= Duration::from_millis(100)
                && self.idle_timeout >= Duration::from_millis(100),
            "{section}header_read_timeout_ms and {section}idle_timeout_ms must be at least 100"
        );
        anyhow::ensure!(
            self.max_uri_bytes >= 256,
            "{section}max_uri_bytes must be at least 256"
        );
        Ok(())
    }
}

/// The peer address of the request's connection, as a request extension (`warp::addr::remote`
/// only sees what `warp::serve` sets).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The peer address of the connection, for routes served here.
pub fn remote() -> impl Filter<Extract = (Option<SocketAddr>,), Error = Infallible> + Copy {
    warp::ext::optional::<ClientAddr>().map(|a: Option<ClientAddr>| a.map(|a| a.0))
}

/// A JSON error answer, as every answer of both servers is.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// Connections being refused at once, at most: beyond it a connection is closed unanswered.
const MAX_REFUSING: usize = 256;
/// How long a refused connection's unread request is drained before closing (closing with
/// unread input would reset the connection and could destroy the 503 before it is read).
const REFUSE_DRAIN: Duration = Duration::from_millis(500);

const OVERLOADED_BODY: &str = r#"{"error":"too many connections: retry shortly"}"#;

/// Serves `service` (e.g. `warp::service(routes)`) on `listener` until `shutdown` resolves,
/// then lets the open requests finish (idle connections close at once).
pub async fn serve<S>(
    service: S,
    listener: TcpListener,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let mut last_overload_warning: Option<Instant> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if last_overload_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached: answering 503 to new connections"
                );
                last_overload_warning = Some(Instant::now());
            }
            if let Ok(p) = refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(p);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let idle_timeout = limits.idle_timeout;
        let max_uri = limits.max_uri_bytes;
        tokio::spawn(async move {
            let activity = Activity::new();
            let io = TokioIo::new(Tracked {
                inner: stream,
                activity: activity.clone(),
            });
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let mut service = service.clone();
                async move {
                    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
                    if target > max_uri {
                        return Ok::<_, Infallible>(json_error(
                            StatusCode::URI_TOO_LONG,
                            &format!("request target longer than {max_uri} bytes"),
                        ));
                    }
                    req.extensions_mut().insert(ClientAddr(peer));
                    service.call(req).await
                }
            });
            let conn = watcher.watch(builder.serve_connection(io, svc));
            tokio::select! {
                result = conn => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                }
                () = activity.idle_for(idle_timeout) => {
                    tracing::debug!(%peer, "closing a connection idle for {idle_timeout:?}");
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Answers 503 to a connection over the limit, whatever it has sent so far.
async fn refuse(mut stream: TcpStream) {
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         cache-control: no-store\r\nretry-after: 1\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{OVERLOADED_BODY}",
        OVERLOADED_BODY.len()
    );
    let _ = tokio::time::timeout(REFUSE_DRAIN, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < 64 << 10 {
            let n = tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await?;
            if n == 0 {
                break;
            }
            drained += n;
        }
        io::Result::Ok(())
    })
    .await;
}

/// Accept errors: the per-connection ones (reset before accept) are nobody's problem; running
/// out of file descriptors is, and retrying at once would spin.
async fn accept_failed(e: io::Error) {
    match e.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionRefused => tracing::debug!("accept: {e}"),
        _ => {
            tracing::warn!("accept failed (out of file descriptors?): {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// When a connection last moved a byte, in milliseconds since it opened.
#[derive(Clone)]
struct Activity {
    opened: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// A stream that notes every byte it moves in its [`Activity`].
struct Tracked {
    inner: TcpStream,
    activity: Activity,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    //! The shared server on its own, with a filter like the query server's (one that rejects:
    //! `warp::service` turns rejections into answers), over real loopback TCP.
    use super::*;
    use tokio::io::AsyncReadExt;

    fn limits(max_connections: usize) -> Limits {
        Limits {
            max_connections,
            header_read_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_millis(500),
            max_uri_bytes: 1024,
        }
    }

    async fn start(limits: Limits) -> SocketAddr {
        let routes = warp::path!("who")
            .and(remote())
            .map(|addr: Option<SocketAddr>| format!("{addr:?}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            warp::service(routes),
            listener,
            limits,
            std::future::pending(),
        ));
        addr
    }

    /// Everything the server sends until it closes, or what came within `timeout`.
    async fn exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn serves_routes_with_the_peer_address() {
        let addr = start(limits(8)).await;
        let answer = exchange(
            addr,
            b"GET /who HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("Some(127.0.0.1:"), "{answer}");
    }

    #[tokio::test]
    async fn over_the_limit_is_503_json_at_once_and_slots_come_back() {
        let addr = start(limits(2)).await;
        let held = [
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        // Half a request: the refusal does not wait for the rest.
        let answer = exchange(addr, b"GET /who HTTP/1.1\r\n", Duration::from_secs(2)).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            answer.contains("content-type: application/json"),
            "{answer}"
        );
        let body = answer.split_once("\r\n\r\n").unwrap().1;
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["error"].is_string());
        assert!(started.elapsed() < Duration::from_millis(REFUSE_DRAIN.as_millis() as u64));
        drop(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let answer = exchange(
            addr,
            b"GET /who HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn long_targets_are_414_json() {
        let addr = start(limits(8)).await;
        let request = format!(
            "GET /who?{} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            "a".repeat(2000)
        );
        let answer = exchange(addr, request.as_bytes(), Duration::from_secs(2)).await;
        assert!(answer.starts_with("HTTP/1.1 414"), "{answer}");
        assert!(answer.contains(r#"{"error":"request target longer than 1024 bytes"}"#));
    }

    #[tokio::test]
    async fn slow_heads_idle_keep_alives_and_stalled_bodies_are_closed() {
        let addr = start(limits(8)).await;
        let started = Instant::now();
        // Half a head, never finished.
        let slow = exchange(addr, b"GET /who HTTP/1.1\r\nhost", Duration::from_secs(3)).await;
        assert!(started.elapsed() < Duration::from_millis(1500), "{slow}");
        // A finished request, then an idle keep-alive connection.
        let started = Instant::now();
        let kept = exchange(
            addr,
            b"GET /who HTTP/1.1\r\nhost: x\r\n\r\n",
            Duration::from_secs(3),
        )
        .await;
        assert!(kept.starts_with("HTTP/1.1 200"), "{kept}");
        assert!(started.elapsed() < Duration::from_millis(1500));
        // A body that stalls (the route does not read it; the idle timeout still ends it).
        let started = Instant::now();
        exchange(
            addr,
            b"POST /who HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\nabc",
            Duration::from_secs(3),
        )
        .await;
        assert!(started.elapsed() < Duration::from_millis(1500));
    }
}
