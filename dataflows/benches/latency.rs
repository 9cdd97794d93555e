//! Event → window complete, beyond the configured delays: clicks are generated in real time at
//! a fixed rate (event time = the wall clock, minus up to 3 s of disorder) and run through the
//! whole aggregation; for every tick boundary E the frontier of the window reports passes, we
//! record `wall clock − (E + out-of-orderness bound)`. No click at or after E + bound can exist
//! before that wall-clock time, so the figure is what the pipeline adds to the delays the
//! configuration imposes. Window ends are tick boundaries, so the same figure holds for them.
//! Only boundaries due while clicks are generated count: those due after it are passed when
//! the input ends, which measures the shutdown (up to a second late), not the pipeline.
//!
//!     cargo bench -p adclick-dataflows --bench latency -- [RATE] [SECONDS] [WORKERS]

mod traffic;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use adclick_dataflows::click::RawClick;
use adclick_dataflows::report::reports;
use adclick_dataflows::source::{PartitionReader, Polled, Record, clock_source};
use adclick_dataflows::time::MINUTE_MS;
use adclick_dataflows::watermark::TimeConfig;
use adclick_dataflows::{AggregateConfig, aggregate};
use timely::dataflow::operators::Probe;

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Generates this worker's share of `rate` clicks per second, as they fall due.
struct Paced {
    partitions: usize,
    rate_per_partition: f64,
    started: Instant,
    emitted: Vec<u64>,
    until: Instant,
    seq: u64,
}

impl PartitionReader for Paced {
    fn partitions(&self) -> usize {
        self.partitions
    }
    fn poll(&mut self, p: usize, max: usize, out: &mut Vec<Record>) -> Polled {
        if Instant::now() >= self.until {
            return Polled::Finished;
        }
        let due = (self.started.elapsed().as_secs_f64() * self.rate_per_partition) as u64;
        let n = due.saturating_sub(self.emitted[p]).min(max as u64);
        let now = wall_ms();
        for _ in 0..n {
            self.seq = self.seq.wrapping_mul(6364136223846793005).wrapping_add(1);
            let r = self.seq >> 11;
            let event_time = now - (r >> 20) % 3_000;
            out.push(Record::Click(RawClick {
                impression_id: format!("imp-{p}-{}", self.emitted[p]),
                click_id: format!("{r:016x}"),
                event_time,
                labels: traffic::labels(r),
                traits: traffic::traits(r, event_time),
                origin: Default::default(),
            }));
            self.emitted[p] += 1;
        }
        if n == max as u64 {
            Polled::More
        } else {
            Polled::Empty
        }
    }
}

fn percentile(sorted: &[i64], q: f64) -> i64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| !a.starts_with('-')).collect();
    let arg = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (rate, seconds, workers) = (arg(1, 50_000), arg(2, 60), arg(3, 1) as usize);
    let cfg = TimeConfig::default();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let collected = samples.clone();
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let until_ms = wall_ms() + seconds * 1000;
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let partitions = (0..4).filter(|p| p % peers == index).count();
        let reader = Paced {
            partitions,
            rate_per_partition: rate as f64 / 4.0,
            started,
            emitted: vec![0; partitions],
            until,
            seq: index as u64 + 1,
        };
        let probe = worker.dataflow::<u64, _, _>(|scope| {
            let events = clock_source(scope, "Paced", reader, cfg, wall_ms);
            let mut acfg = AggregateConfig::default();
            if let Ok(w) = std::env::var("TOP_WINDOWS") {
                acfg.top.window_minutes = w.split(',').filter_map(|m| m.parse().ok()).collect();
            }
            let a = aggregate(events, &acfg);
            let (probe, _) = reports(a.minute, MINUTE_MS, cfg.allowed_lateness_ms).probe();
            a.top.probe_with(&probe);
            probe
        });
        let mut seen: Option<u64> = None;
        let mut mine = Vec::new();
        while !probe.done() {
            worker.step_or_park(Some(Duration::from_millis(1)));
            let Some(f) = probe.with_frontier(|f| f.first().copied()) else {
                break;
            };
            let now = wall_ms() as i64;
            // Every tick boundary passed since the last look, after a warm-up while the first
            // sparse clicks of each partition (up to 3 s old) set its watermark.
            let warm = started.elapsed() > Duration::from_secs(3);
            let first = seen.map_or(f, |s| s + cfg.tick_ms);
            let mut e = first - first % cfg.tick_ms;
            while e <= f && seen.is_some() && warm {
                let due = e + cfg.out_of_orderness_ms;
                if due < until_ms {
                    mine.push(now - due as i64);
                }
                e += cfg.tick_ms;
            }
            if f > 0 {
                seen = Some(f - f % cfg.tick_ms);
            }
        }
        collected.lock().unwrap().extend(mine);
    })
    .unwrap()
    .join();
    let mut v = std::mem::take(&mut *samples.lock().unwrap());
    v.sort_unstable();
    println!(
        "{rate} clicks/s for {seconds} s, {workers} worker(s), tick {} ms: {} tick boundaries; \
         beyond the configured delays: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
        cfg.tick_ms,
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.9),
        percentile(&v, 0.99),
        v.last().unwrap()
    );
}
