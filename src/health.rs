//! What the aggregator process knows about its own progress, for `/api/v1/health`, the
//! dashboard and `/metrics`: the data frontier (the watermark), the tallies, and each of this
//! process's partitions' read position against its high watermark.
//!
//! A leaf module: the aggregator writes it, the query server reads it, and it imports
//! neither.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use adclick_dataflows::source::Gap;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::timefmt::{format_millis, now_millis};

/// Every input record ends up in exactly one of counted, duplicates, late, dead_lettered;
/// `received + lost` is what the partitions held over the offsets read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tallies {
    pub received: u64,
    /// Billable clicks.
    pub counted: i64,
    /// Deduplicated clicks flagged as invalid traffic, whatever the reason: received =
    /// counted + invalid + duplicates + late + dead_lettered.
    #[serde(default)]
    pub invalid: i64,
    /// `invalid` by reason, indexed by precedence; a map of reason names in JSON.
    #[serde(default, with = "by_reason")]
    pub invalid_by_reason: [i64; 7],
    pub duplicates: i64,
    pub late: u64,
    pub dead_lettered: u64,
    /// Records deleted before they were read (gaps in the offsets): never in `received`.
    #[serde(default)]
    pub lost: u64,
}

/// `[i64; 7]` indexed by [`Reason`] precedence, as a map from reason name to count: readable
/// in the tallies line, and robust to reasons a newer build adds.
mod by_reason {
    use std::collections::BTreeMap;

    use adclick_dataflows::click::Measures;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[i64; 7], s: S) -> Result<S::Ok, S::Error> {
        let m = Measures::new(0, 0, *v);
        m.invalid_names().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[i64; 7], D::Error> {
        Ok(Measures::invalid_from_names(&BTreeMap::deserialize(d)?))
    }
}

/// What health reports of the newest committed checkpoint (a part of its manifest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpointed {
    /// Every update before this event time (ms) is in the checkpoint.
    pub frontier: u64,
    /// Total size of its parts.
    pub bytes: u64,
    /// Wall clock from the request to the manifest.
    pub duration_ms: u64,
}

/// What the cluster's supervisor (`adclick-aggregator cluster`) told this process: how
/// often it restarted the whole cluster before this start, and why it last did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restarts {
    /// Whether a supervisor started this process at all.
    pub supervised: bool,
    pub count: u64,
    /// The process that ended the previous run and how (exit code or signal), and when.
    pub last_cause: Option<String>,
}

/// How many times the supervisor restarted the cluster before starting this process...
pub const ENV_RESTARTS: &str = "ADCLICK_SUPERVISOR_RESTARTS";
/// ...and why it last did.
pub const ENV_LAST_CAUSE: &str = "ADCLICK_SUPERVISOR_LAST_CAUSE";

impl Restarts {
    /// What the supervisor put in this process's environment.
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars())
    }

    /// From `(name, value)` pairs: not supervised when the restart count is absent.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let (mut count, mut last_cause) = (None, None);
        for (name, value) in vars {
            match name.as_str() {
                ENV_RESTARTS => count = value.trim().parse().ok(),
                ENV_LAST_CAUSE => last_cause = Some(value),
                _ => {}
            }
        }
        match count {
            Some(count) => Self {
                supervised: true,
                count,
                last_cause,
            },
            None => Self::default(),
        }
    }
}

#[derive(Default)]
pub struct Health {
    /// The data frontier in ms (0 before the first progress): every window ending at or
    /// before it is complete.
    pub frontier: AtomicU64,
    pub tallies: Mutex<Tallies>,
    /// Partition → (next offset to read, high watermark as last fetched).
    pub partitions: Mutex<BTreeMap<i32, (i64, i64)>>,
    pub workers: usize,
    pub processes: usize,
    /// The newest checkpoint committed by this process, and how many it committed.
    pub checkpoint: Mutex<Option<Checkpointed>>,
    pub checkpoints_committed: AtomicU64,
    /// With checkpoints on: their interval, and when this process last committed one (ms
    /// since the epoch; its start until the first), so an alert can tell a stalled
    /// checkpointer from one not yet due. Both 0 without checkpoints.
    pub checkpoint_interval_ms: AtomicU64,
    pub checkpoint_committed_at_ms: AtomicU64,
    /// Traffic anomaly alerts raised by this process (process 0 holds them all).
    pub alerts: crate::alert_log::AlertLog,
    /// Offset ranges deleted before this process read them; any makes health `degraded`.
    pub gaps: Mutex<BTreeSet<Gap>>,
    /// The supervisor's restarts of the whole cluster before this process started.
    pub restarts: Restarts,
    /// This process's workers whose restored dedup state is still being built: they serve
    /// the restored windows, and count no click past the checkpoint until it is built.
    pub restoring_workers: AtomicUsize,
    /// The process's memory budget and its last reading (aggregator processes).
    pub memory: Mutex<Option<std::sync::Arc<crate::memory::Budget>>>,
}

impl Health {
    /// This process's health, with the supervisor's restarts from the environment.
    pub fn new(workers: usize, processes: usize) -> Self {
        Self {
            workers,
            processes,
            restarts: Restarts::from_env(),
            ..Self::default()
        }
    }

    pub fn watermark(&self) -> Option<u64> {
        Some(self.frontier.load(Ordering::Relaxed)).filter(|f| *f > 0)
    }

    /// Wall clock minus watermark: how far behind real time the complete windows are.
    pub fn watermark_delay_ms(&self) -> Option<i64> {
        self.watermark().map(|w| now_millis() - w as i64)
    }

    pub fn set_partition(&self, p: i32, next: i64, high: i64) {
        self.partitions.lock().unwrap().insert(p, (next, high));
    }

    /// Notes records lost to a gap, for health, the dashboard and `/metrics`.
    pub fn record_gap(&self, gap: &Gap) {
        self.gaps.lock().unwrap().insert(gap.clone());
    }

    /// Records this process saw vanish before it read them.
    pub fn lost_records(&self) -> u64 {
        self.gaps.lock().unwrap().iter().map(Gap::records).sum()
    }

    /// `degraded` once any records were lost: the counts are short of the topic.
    pub fn status(&self) -> &'static str {
        if self.gaps.lock().unwrap().is_empty() {
            "ok"
        } else {
            "degraded"
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let parts: Vec<_> = self
            .partitions
            .lock()
            .unwrap()
            .iter()
            .map(|(p, (next, high))| {
                // The high watermark is fetched now and then, the offset read every batch: a
                // partition read past its last fetched end has an end at least that far.
                let high = (*high).max(*next);
                json!({"partition": p, "offset": next, "high_watermark": high,
                       "lag": high - next})
            })
            .collect();
        let t = *self.tallies.lock().unwrap();
        let gaps: Vec<_> = self
            .gaps
            .lock()
            .unwrap()
            .iter()
            .map(|g| json!({"partition": g.partition, "from": g.from, "to": g.to, "records": g.records()}))
            .collect();
        json!({
            "status": self.status(),
            "lost_records": self.lost_records(),
            "gaps": gaps,
            "watermark": self.watermark().map(|w| format_millis(w as i64)),
            "watermark_ms": self.watermark(),
            "watermark_delay_ms": self.watermark_delay_ms(),
            "partitions": parts,
            "tallies": t,
            "workers": self.workers,
            "processes": self.processes,
            "supervised": self.restarts.supervised,
            "restarts": self.restarts.count,
            "last_restart_cause": self.restarts.last_cause,
            "restoring_workers": self.restoring_workers.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partition read past the end last fetched for it reports that end as at least its
    /// offset, and no negative lag.
    #[test]
    fn a_partition_is_never_read_past_its_reported_end() {
        let health = Health::new(1, 1);
        health.set_partition(0, 120, 100);
        health.set_partition(1, 50, 80);
        let parts = health.to_json()["partitions"].clone();
        assert_eq!(parts[0]["high_watermark"], 120);
        assert_eq!(parts[0]["lag"], 0);
        assert_eq!(parts[1]["high_watermark"], 80);
        assert_eq!(parts[1]["lag"], 30);
    }
}
