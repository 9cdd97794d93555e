//! The dataflow alone, on pre-built clicks in memory: events per second through source clock,
//! dedup, invalid-traffic rules, minute/hour/day rows, top-N and window reports, on 1 and 2
//! workers; and the heap bytes the dedup keeps per tracked impression and the flood rules per
//! click they hold. Reach (unique-user sketches) is on, as by default.
//!
//!     cargo bench -p adclick-dataflows --bench throughput -- [EVENTS] [ROUNDS]
//!     cargo bench -p adclick-dataflows --bench throughput -- [EVENTS] [ROUNDS] alerts|reach
//!
//! `alerts` and `reach` alternate runs without and with that part, round by round, and
//! report the ratios of events/s and of CPU time; `reach` also the sketches' bytes.

mod traffic;

use std::alloc::{GlobalAlloc, Layout, System};

use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use adclick_dataflows::anomaly::{self, AlertConfig, Detector, Minute, Scope};
use adclick_dataflows::click::{Click, RawClick, Sym};
use adclick_dataflows::dedup::{DedupConfig, DedupState};
use adclick_dataflows::flood::{Flood, FloodState, InvalidConfig};
use adclick_dataflows::report::reports;
use adclick_dataflows::source::{PartitionReader, Polled, Record, clock_source};
use adclick_dataflows::time::MINUTE_MS;
use adclick_dataflows::watermark::TimeConfig;
use adclick_dataflows::{AggregateConfig, aggregate};
use timely::dataflow::operators::Probe;

/// Counts live heap bytes, but only while `COUNTING` is on, so the throughput runs pay nothing.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static A: Counting = Counting;

const START: u64 = 1_776_686_400_000;

/// `n` clicks over 8 partitions at 50 000 clicks/s of event time, 10 000 ads (Zipf-ish via
/// squaring), 5 % duplicates, up to 3 s of disorder.
fn clicks(n: usize) -> Vec<Vec<RawClick>> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut parts: Vec<Vec<RawClick>> = (0..8).map(|_| Vec::with_capacity(n / 8 + 1)).collect();
    for i in 0..n as u64 {
        let r = rnd();
        let imp = if r % 20 == 0 && i > 10 {
            i - 1 - (r % 10)
        } else {
            i
        };
        let event_time = START + i / 50 - (r >> 40) % 3_000;
        parts[(imp % 8) as usize].push(RawClick {
            impression_id: format!("imp-{imp}"),
            click_id: format!("{:016x}", rnd()),
            event_time,
            labels: traffic::labels(r),
            traits: traffic::traits(r, event_time),
            origin: Default::default(),
        });
    }
    parts
}

struct Memory(Vec<std::vec::IntoIter<RawClick>>);
impl PartitionReader for Memory {
    fn partitions(&self) -> usize {
        self.0.len()
    }
    fn poll(&mut self, p: usize, max: usize, out: &mut Vec<Record>) -> Polled {
        let before = out.len();
        out.extend(self.0[p].by_ref().take(max).map(Record::Click));
        if out.len() - before < max {
            Polled::Finished
        } else {
            Polled::More
        }
    }
}

/// What a run computes beside the rows, reports and top-N.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Extra {
    None,
    Alerts,
    /// Reach off: the rest as by default.
    NoReach,
}

fn run(workers: usize, parts: Vec<Vec<RawClick>>, top_windows: Vec<u64>, extra: Extra) -> f64 {
    let total: usize = parts.iter().map(Vec::len).sum();
    // Each worker's partitions, handed over outside the timed region.
    let mut shares: Vec<Vec<std::vec::IntoIter<RawClick>>> = (0..workers).map(|_| vec![]).collect();
    for (p, part) in parts.into_iter().enumerate() {
        shares[p % workers].push(part.into_iter());
    }
    let shares = Arc::new(Mutex::new(shares));
    let started = Instant::now();
    timely::execute(timely::Config::process(workers), move |worker| {
        let mine = std::mem::take(&mut shares.lock().unwrap()[worker.index()]);
        let top = top_windows.clone();
        let probe = worker.dataflow::<u64, _, _>(move |scope| {
            let cfg = TimeConfig {
                idle_timeout_ms: None,
                idle_advance_lag_ms: None,
                ..TimeConfig::default()
            };
            let events = clock_source(scope, "Memory", Memory(mine), cfg, || 0);
            let mut acfg = AggregateConfig::default();
            acfg.top.window_minutes = top;
            acfg.reach.enabled = extra != Extra::NoReach;
            let a = aggregate(events, &acfg);
            let (probe, _) = reports(a.minute.clone(), MINUTE_MS, 300_000).probe();
            a.top.probe_with(&probe);
            // The sketches and their final reports (once per group, for the sinks).
            adclick_dataflows::reach::final_reports(a.reach.clone(), 300_000, None)
                .probe_with(&probe);
            a.reach.inner.probe_with(&probe);
            if extra == Extra::Alerts {
                anomaly::alerts(a.minute, &AlertConfig::default(), 300_000).probe_with(&probe);
            }
            probe
        });
        while !probe.done() {
            worker.step();
        }
    })
    .unwrap()
    .join();
    total as f64 / started.elapsed().as_secs_f64()
}

/// Heap bytes per impression the dedup keeps, with realistic ids (UUID-sized click ids).
fn dedup_bytes_per_impression(n: usize) -> f64 {
    let clicks: Vec<Click> = clicks(n).iter().flatten().map(Click::of).collect();
    COUNTING.store(true, Ordering::SeqCst);
    let before = LIVE.load(Ordering::Relaxed);
    let mut state = DedupState::new(DedupConfig {
        horizon_ms: 86_400_000,
        allowed_lateness_ms: 300_000,
        lookback_ms: 3_600_000,
    });
    let mut updates = Vec::new();
    for c in &clicks {
        state.decide(c, &mut updates);
        updates.clear();
    }
    drop(updates);
    let held = LIVE.load(Ordering::Relaxed) - before;
    COUNTING.store(false, Ordering::SeqCst);
    held as f64 / state.len() as f64
}

/// Heap bytes per counted click each flood rule keeps (every click of a window until it
/// retires), and the dedup's traits for recent winners, per winner: the invalid-traffic
/// rules' memory.
fn flood_bytes_per_click(n: usize) -> Vec<(&'static str, f64)> {
    let clicks: Vec<Click> = clicks(n).iter().flatten().map(Click::of).collect();
    let rules = InvalidConfig::default();
    let mut out = Vec::new();
    for (name, flood, rule) in [
        ("ip_flood", Flood::Ip, rules.ip_flood.unwrap()),
        ("user_flood", Flood::User, rules.user_flood.unwrap()),
    ] {
        COUNTING.store(true, Ordering::SeqCst);
        let before = LIVE.load(Ordering::Relaxed);
        let mut state = FloodState::new(flood, rule, 300_000);
        let mut sent = Vec::new();
        for chunk in clicks.chunks(1_000) {
            state.apply(chunk.iter().map(|c| (*c, 1)).collect(), &mut sent);
            sent.clear();
        }
        drop(sent);
        let held = LIVE.load(Ordering::Relaxed) - before;
        COUNTING.store(false, Ordering::SeqCst);
        out.push((name, held as f64 / state.len() as f64));
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| !a.starts_with('-')).collect();
    let n: usize = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let parts = clicks(n);
    match args.get(3).map(String::as_str) {
        Some("alerts") => return cost(parts, rounds, "alerts", Extra::None, Extra::Alerts),
        Some("reach") => {
            cost(parts, rounds, "reach", Extra::NoReach, Extra::None);
            return reach_bytes(n.min(1_000_000));
        }
        _ => {}
    }
    println!("{n} clicks in memory, median of {rounds} rounds");
    let shapes = [
        ("no top-N", vec![], Extra::None),
        ("top-N over 1 min", vec![1], Extra::None),
        ("top-N over 1 min + alerts", vec![1], Extra::Alerts),
        ("top-N over 1, 5, 60 min", vec![1, 5, 60], Extra::None),
    ];
    for (label, top, extra) in shapes {
        for workers in [1, 2] {
            let r = median(
                (0..rounds)
                    .map(|_| run(workers, parts.clone(), top.clone(), extra))
                    .collect(),
            );
            println!(
                "{label:>24}, {workers} worker(s): {:>10.0} events/s ({:.0} per worker)",
                r,
                r / workers as f64
            );
        }
    }
    println!(
        "dedup state: {:.0} heap bytes per tracked impression (with the recent winners' traits)",
        dedup_bytes_per_impression(n.min(1_000_000))
    );
    for (rule, bytes) in flood_bytes_per_click(n.min(1_000_000)) {
        println!("{rule} state: {bytes:.0} heap bytes per counted click held");
    }
    println!(
        "alerts baseline: {:.0} bytes per tracked key (heap, table included; {} estimated)",
        alert_bytes_per_key(100_000),
        Detector::bytes_per_key()
    );
}

/// A part's cost (`what`: the anomaly operators, reach): top-N over 1 min `without` and
/// `with` it, alternating within each round so that a noisy machine's drift hits both alike;
/// the median of the rounds' ratios.
fn cost(parts: Vec<Vec<RawClick>>, rounds: usize, what: &str, without: Extra, with: Extra) {
    let (off, on) = (without, with);
    let n: usize = parts.iter().map(Vec::len).sum();
    println!("{n} clicks in memory, top-N over 1 min, without and with {what}, {rounds} rounds");
    for workers in [1, 2] {
        let mut ratios = Vec::new();
        let (mut without, mut with) = (Vec::new(), Vec::new());
        let mut cpu_ratios = Vec::new();
        for _ in 0..rounds {
            let c0 = cpu_seconds();
            let a = run(workers, parts.clone(), vec![1], off);
            let c1 = cpu_seconds();
            let b = run(workers, parts.clone(), vec![1], on);
            let c2 = cpu_seconds();
            let (ca, cb) = (c1 - c0, c2 - c1);
            println!(
                "  {workers} worker(s): {a:>10.0} events/s without, {b:>10.0} with; \
                 CPU {ca:.2} s without, {cb:.2} s with"
            );
            ratios.push(b / a);
            cpu_ratios.push(cb / ca);
            without.push(a);
            with.push(b);
        }
        println!(
            "{workers} worker(s): median {:.0} events/s without, {:.0} with; median ratio {:.3}; \
             median CPU ratio (with / without) {:.3}",
            median(without),
            median(with),
            median(ratios),
            median(cpu_ratios)
        );
    }
    if with == Extra::Alerts {
        println!(
            "alerts baseline: {:.0} bytes per tracked key (heap, table included; {} estimated)",
            alert_bytes_per_key(100_000),
            Detector::bytes_per_key()
        );
    }
}

/// The reach sketches' memory: the clicks' users grouped as the dataflow groups them (per
/// ad, campaign, campaign x country, publisher, country; per minute, hour and day; billable),
/// each group's sketch built and its heap bytes counted, per group and per user in it; for
/// minutes too, which the dataflow does not keep, to show what they would cost.
fn reach_bytes(n: usize) {
    use adclick_dataflows::reach::{GroupBy, user_of};
    use adclick_dataflows::sketch::UserSketch;
    use adclick_dataflows::time::{DAY_MS, HOUR_MS, window_start};
    let clicks: Vec<Click> = clicks(n).iter().flatten().map(Click::of).collect();
    let span = clicks.iter().map(|c| c.event_time).max().unwrap_or(0)
        - clicks.iter().map(|c| c.event_time).min().unwrap_or(0);
    println!(
        "reach memory over {n} clicks ({:.0} s of event time):",
        span as f64 / 1_000.0
    );
    for (name, len) in [("minute", MINUTE_MS), ("hour", HOUR_MS), ("day", DAY_MS)] {
        let mut groups: foldhash::HashMap<
            (u64, GroupBy, adclick_dataflows::click::Dims),
            Vec<u64>,
        > = Default::default();
        for c in &clicks {
            let Some(u) = user_of(c) else { continue };
            for by in GroupBy::ALL {
                groups
                    .entry((window_start(c.event_time, len), by, by.dims(&c.dims)))
                    .or_default()
                    .push(u);
            }
        }
        let users: usize = groups.values().map(Vec::len).sum();
        let count = groups.len();
        let sketches: Vec<UserSketch> = groups.into_values().map(UserSketch::of).collect();
        let heap: usize = sketches.iter().map(UserSketch::heap_bytes).sum();
        let distinct: u64 = sketches.iter().map(UserSketch::estimate).sum();
        let dense = sketches.iter().filter(|s| !s.is_exact()).count();
        let inline = std::mem::size_of::<UserSketch>()
            + std::mem::size_of::<adclick_dataflows::reach::Group>();
        println!(
            "  {name:>6}: {count} groups ({dense} dense), {:.0} heap + {inline} inline bytes per \
             group, {:.1} heap bytes per distinct user in a group ({users} clicks, {distinct} \
             group-users)",
            heap as f64 / count as f64,
            heap as f64 / distinct as f64
        );
    }
}

/// This process's CPU time (user + system) so far, from /proc/self/stat (Linux; 10 ms
/// ticks): less disturbed than wall time by other work on a shared machine.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command's closing parenthesis: state is field 0, utime 11, stime 12.
    (ticks(11) + ticks(12)) / 100.0
}

/// Heap bytes per key the anomaly detector keeps, over `keys` keys of every kind.
fn alert_bytes_per_key(keys: u64) -> f64 {
    COUNTING.store(true, Ordering::SeqCst);
    let before = LIVE.load(Ordering::Relaxed);
    let mut d = Detector::new(AlertConfig::default());
    let mut data = foldhash::HashMap::default();
    for k in 0..keys {
        let scope = match k % 3 {
            0 => Scope::Campaign(Sym(k)),
            1 => Scope::Publisher(Sym(k)),
            _ => Scope::CampaignCountry(Sym(k), Sym(k >> 8)),
        };
        data.insert(
            scope,
            Minute {
                clicks: 1,
                invalid: 0,
            },
        );
    }
    let mut out = Vec::new();
    d.minute(START, data, &mut out);
    drop(out);
    let held = LIVE.load(Ordering::Relaxed) - before;
    COUNTING.store(false, Ordering::SeqCst);
    held as f64 / d.len() as f64
}
