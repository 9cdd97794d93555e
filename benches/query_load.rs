//! Query latency under concurrent load, against a running `adclick-aggregator` query server:
//! C clients, each on its own keep-alive HTTP/1.1 connection, send requests back to back for S
//! seconds in each of three phases of one run:
//!
//! - `healthz`: `/healthz`, answered by warp alone (HTTP, routing and JSON: the baseline);
//! - `ad_count`: `/ads/ad_{k}/aggregated_count?from=FROM&to=TO` for ads `k` drawn uniformly
//!   among `0..ADS` (one ad's count over the range, read from the live minute arrangement);
//! - `popular_ads`: `/ads/popular_ads?count=N&window=W`, `W` cycling through the windows.
//!
//! Latency is from sending a request to having read all of its response body. Percentiles are
//! exact (sorted samples). Every response must be a 200: any other status is counted, the first
//! few are printed, and the run exits with an error.
//!
//!     cargo bench --bench query_load -- BASE_URL API_KEY ADS CONCURRENCY SECONDS FROM TO \
//!         [TOP_COUNT [TOP_WINDOWS]]
//!
//! FROM and TO are RFC 3339 times; TOP_COUNT defaults to 10, TOP_WINDOWS (comma-separated
//! minutes) to 1,5,60. `scripts/bench-query.sh` sets up the data and runs this.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rand::Rng as _;
use rand::SeedableRng as _;
use rand_chacha::ChaCha8Rng;

struct Args {
    authority: String,
    key: String,
    ads: u64,
    concurrency: usize,
    seconds: f64,
    from: String,
    to: String,
    top_count: usize,
    top_windows: Vec<u64>,
}

const USAGE: &str = "usage: query_load BASE_URL API_KEY ADS CONCURRENCY SECONDS FROM TO \
                     [TOP_COUNT [TOP_WINDOWS]]";

fn args() -> anyhow::Result<Args> {
    // `cargo bench` appends `--bench` to a harness-less bench's arguments.
    let a: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    anyhow::ensure!((7..=9).contains(&a.len()), "{USAGE}");
    let base: hyper::Uri = a[0].parse()?;
    anyhow::ensure!(
        base.scheme_str() == Some("http"),
        "BASE_URL must be http://"
    );
    let authority = base
        .authority()
        .ok_or_else(|| anyhow::anyhow!("BASE_URL has no host:port"))?
        .to_string();
    let top_windows = match a.get(8) {
        Some(w) => w
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<u64>, _>>()?,
        None => vec![1, 5, 60],
    };
    anyhow::ensure!(!top_windows.is_empty(), "TOP_WINDOWS is empty");
    let args = Args {
        authority,
        key: a[1].clone(),
        ads: a[2].parse()?,
        concurrency: a[3].parse()?,
        seconds: a[4].parse()?,
        from: a[5].clone(),
        to: a[6].clone(),
        top_count: a.get(7).map_or(Ok(10), |n| n.parse())?,
        top_windows,
    };
    anyhow::ensure!(args.ads >= 1 && args.concurrency >= 1 && args.seconds > 0.0);
    Ok(args)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Healthz,
    AdCount,
    Popular,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Healthz => "healthz",
            Phase::AdCount => "ad_count",
            Phase::Popular => "popular_ads",
        }
    }

    /// The `i`th path this phase asks for.
    fn path(self, args: &Args, rng: &mut ChaCha8Rng, i: usize) -> String {
        match self {
            Phase::Healthz => "/healthz".into(),
            Phase::AdCount => format!(
                "/ads/ad_{}/aggregated_count?from={}&to={}",
                rng.random_range(0..args.ads),
                args.from,
                args.to
            ),
            Phase::Popular => format!(
                "/ads/popular_ads?count={}&window={}",
                args.top_count,
                args.top_windows[i % args.top_windows.len()]
            ),
        }
    }
}

/// What one client saw in one phase.
#[derive(Default)]
struct Seen {
    latencies: Vec<Duration>,
    /// Non-200 answers, and the first few of them (status, path, body; 5 in all).
    failures: usize,
    examples: Vec<String>,
    /// `ad_count`: answers with a count above zero, and the sum of the counts.
    nonzero: u64,
    clicks: u64,
    /// `popular_ads`: ads listed, over all answers.
    listed: u64,
    /// The first answer's body, to show what was measured.
    sample: Option<String>,
}

async fn connect(authority: &str) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("query_load: connection: {e}");
        }
    });
    Ok(sender)
}

/// One request on the connection: (status, body), the body read to its end.
async fn get(
    sender: &mut SendRequest<Empty<Bytes>>,
    args: &Args,
    path: &str,
) -> anyhow::Result<(u16, Bytes)> {
    sender.ready().await?;
    let req = Request::get(path)
        .header(hyper::header::HOST, &args.authority)
        .header(hyper::header::AUTHORIZATION, format!("Bearer {}", args.key))
        .body(Empty::<Bytes>::new())?;
    let res = sender.send_request(req).await?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn client(
    args: Arc<Args>,
    mut sender: SendRequest<Empty<Bytes>>,
    phase: Phase,
    seed: u64,
    until: Instant,
) -> anyhow::Result<(SendRequest<Empty<Bytes>>, Seen)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut seen = Seen::default();
    let mut i = seed as usize;
    while Instant::now() < until {
        let path = phase.path(&args, &mut rng, i);
        i += 1;
        let started = Instant::now();
        let (status, body) = get(&mut sender, &args, &path).await?;
        seen.latencies.push(started.elapsed());
        let text = String::from_utf8_lossy(&body);
        if status != 200 {
            seen.failures += 1;
            if seen.examples.len() < 3 {
                seen.examples.push(format!("{status} {path}: {text}"));
            }
            continue;
        }
        if seen.sample.is_none() {
            seen.sample = Some(format!("{path} -> {text}"));
        }
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        match phase {
            Phase::Healthz => {}
            Phase::AdCount => {
                let c = v["count"]
                    .as_u64()
                    .ok_or_else(|| anyhow::anyhow!("no count in {text}"))?;
                seen.nonzero += u64::from(c > 0);
                seen.clicks += c;
            }
            Phase::Popular => {
                let ads = v["ad_ids"]
                    .as_array()
                    .ok_or_else(|| anyhow::anyhow!("no ad_ids in {text}"))?;
                seen.listed += ads.len() as u64;
            }
        }
    }
    Ok((sender, seen))
}

struct Figures {
    count: usize,
    qps: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

/// Runs `phase` on every connection for `seconds`; merges what the clients saw.
async fn run(
    args: &Arc<Args>,
    senders: &mut Vec<SendRequest<Empty<Bytes>>>,
    phase: Phase,
    seconds: f64,
) -> anyhow::Result<(Figures, Seen)> {
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = senders
        .drain(..)
        .enumerate()
        .map(|(c, s)| {
            let seed = c as u64 * 1_000_003 + phase as u64;
            tokio::spawn(client(args.clone(), s, phase, seed, until))
        })
        .collect();
    let mut all = Seen::default();
    for t in tasks {
        let (sender, s) = t.await??;
        senders.push(sender);
        all.latencies.extend(s.latencies);
        all.failures += s.failures;
        all.examples.extend(s.examples);
        all.examples.truncate(5);
        all.nonzero += s.nonzero;
        all.clicks += s.clicks;
        all.listed += s.listed;
        all.sample = all.sample.or(s.sample);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.latencies.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let n = all.latencies.len();
    anyhow::ensure!(n > 0, "{}: no request completed", phase.name());
    // Exact percentiles: the smallest sample with at least q of the samples at or below it.
    let pct = |q: f64| ms(all.latencies[((q * n as f64).ceil() as usize).clamp(1, n) - 1]);
    let figures = Figures {
        count: n,
        qps: n as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        max: ms(all.latencies[n - 1]),
    };
    Ok((figures, all))
}

fn main() -> anyhow::Result<()> {
    let args = Arc::new(args()?);
    // One client thread: the server shares the machine's cores with us.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut senders = Vec::with_capacity(args.concurrency);
        for _ in 0..args.concurrency {
            senders.push(connect(&args.authority).await?);
        }
        println!(
            "query_load: {} concurrent keep-alive connections to {}, {} s per phase, \
             ads ad_0..ad_{}, range [{}, {}), top-N count={} windows={:?}",
            args.concurrency,
            args.authority,
            args.seconds,
            args.ads - 1,
            args.from,
            args.to,
            args.top_count,
            args.top_windows
        );
        // Warm up the connections and the server's code paths; not measured.
        for phase in [Phase::Healthz, Phase::AdCount, Phase::Popular] {
            run(&args, &mut senders, phase, 1.0).await?;
        }
        let mut rows = Vec::new();
        let mut failed = 0;
        for phase in [Phase::Healthz, Phase::AdCount, Phase::Popular] {
            let (f, seen) = run(&args, &mut senders, phase, args.seconds).await?;
            if let Some(s) = &seen.sample {
                let s: String = s.chars().take(300).collect();
                println!("{:<12} sample: {s}", phase.name());
            }
            match phase {
                Phase::AdCount => println!(
                    "{:<12} {} of {} answers counted clicks ({:.1} %), {:.1} clicks per answer",
                    phase.name(),
                    seen.nonzero,
                    f.count,
                    100.0 * seen.nonzero as f64 / f.count as f64,
                    seen.clicks as f64 / f.count as f64
                ),
                Phase::Popular => println!(
                    "{:<12} {:.1} ads listed per answer",
                    phase.name(),
                    seen.listed as f64 / f.count as f64
                ),
                Phase::Healthz => {}
            }
            for e in &seen.examples {
                eprintln!("{:<12} NOT 200: {e}", phase.name());
            }
            failed += seen.failures;
            rows.push((phase, f, seen.failures));
        }
        let base = &rows[0].1;
        let (b50, b99) = (base.p50, base.p99);
        println!();
        println!(
            "| phase | requests | req/s | p50 ms | p99 ms | max ms | p50 / baseline | \
             p99 / baseline | non-200 |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for (phase, f, failures) in &rows {
            println!(
                "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.1} | {:.1} | {} |",
                phase.name(),
                f.count,
                f.qps,
                f.p50,
                f.p99,
                f.max,
                f.p50 / b50,
                f.p99 / b99,
                failures
            );
        }
        anyhow::ensure!(failed == 0, "{failed} answers were not 200");
        Ok(())
    })
}
