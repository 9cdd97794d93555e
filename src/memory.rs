//! The aggregator process's memory budget, as the sources' flow control sees it: one flag, set
//! while the resident set is over `aggregator.memory_budget_mb`, sampled by one thread per
//! process; `/metrics` shows the same readings.
//!
//! Resident memory is the figure that the kernel's OOM killer and a container's limit judge,
//! so it is what the budget is about; it is read from `/proc/self/statm` (Linux), which costs
//! a few microseconds, every [`SAMPLE_EVERY`]. Where it cannot be read the flag stays clear
//! and the sources are throttled by the dataflow's progress alone.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// The process's budget and what was last read of it.
pub struct Budget {
    /// The budget in bytes (0: none).
    pub limit_bytes: u64,
    /// The resident set at the last sample.
    pub resident_bytes: AtomicU64,
    /// Set while `resident_bytes` is over the limit.
    pub over: Arc<AtomicBool>,
    /// Samples found over the limit, for `/metrics`: how often the sources were held back.
    pub over_samples: AtomicU64,
}

impl Budget {
    /// The process's budget (one per process: there is one resident set), sampled by a
    /// thread that ends once the last handle is dropped.
    pub fn start(limit_mb: u64) -> Arc<Budget> {
        let b = Arc::new(Budget {
            limit_bytes: limit_mb.saturating_mul(1 << 20),
            resident_bytes: AtomicU64::new(0),
            over: Arc::new(AtomicBool::new(false)),
            over_samples: AtomicU64::new(0),
        });
        b.sample(resident_bytes());
        let weak: Weak<Budget> = Arc::downgrade(&b);
        std::thread::Builder::new()
            .name("memory-budget".into())
            .spawn(move || {
                while let Some(b) = weak.upgrade() {
                    b.sample(resident_bytes());
                    drop(b);
                    std::thread::sleep(SAMPLE_EVERY);
                }
            })
            .expect("spawning the memory sampler");
        b
    }

    /// Takes one reading (none where it cannot be read).
    fn sample(&self, resident: Option<u64>) {
        let Some(r) = resident else { return };
        self.resident_bytes.store(r, Ordering::Relaxed);
        let over = self.limit_bytes > 0 && r > self.limit_bytes;
        self.over.store(over, Ordering::Relaxed);
        if over {
            self.over_samples.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// This process's resident set in bytes, from `/proc/self/statm`.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    parse_statm(&statm)
}

/// The second field of statm is the resident set in pages (4 KiB on every platform this
/// runs on; `sysconf` would be the portable way, for a libc call's worth of difference).
fn parse_statm(statm: &str) -> Option<u64> {
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm_gives_the_resident_pages_and_garbage_gives_nothing() {
        assert_eq!(parse_statm("1000 256 30 5 0 200 0\n"), Some(256 * 4096));
        assert_eq!(parse_statm(""), None);
        assert_eq!(parse_statm("12 x"), None);
        assert!(resident_bytes().is_some_and(|r| r > 0));
    }

    #[test]
    fn the_flag_follows_the_resident_set_and_no_budget_never_sets_it() {
        let b = Budget {
            limit_bytes: 100 << 20,
            resident_bytes: AtomicU64::new(0),
            over: Arc::new(AtomicBool::new(false)),
            over_samples: AtomicU64::new(0),
        };
        b.sample(Some(101 << 20));
        assert!(b.over.load(Ordering::Relaxed));
        b.sample(None);
        assert!(b.over.load(Ordering::Relaxed), "no reading changes nothing");
        b.sample(Some(99 << 20));
        assert!(!b.over.load(Ordering::Relaxed));
        assert_eq!(b.over_samples.load(Ordering::Relaxed), 1);
        let none = Budget {
            limit_bytes: 0,
            ..b
        };
        none.sample(Some(u64::MAX));
        assert!(!none.over.load(Ordering::Relaxed));
    }
}
