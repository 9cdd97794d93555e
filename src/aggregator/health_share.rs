//! Every process's read positions and gaps, gathered on process 0 (which serves health,
//! `/metrics` and the dashboard), so that lag and lost records cover the whole cluster, not
//! only the partitions process 0 reads. A small dataflow of its own, apart from the
//! aggregation: its input advances with its own clock and never holds back the watermark.

use std::sync::Arc;
use std::time::{Duration, Instant};

use adclick_dataflows::source::Gap;
use serde::{Deserialize, Serialize};
use timely::dataflow::InputHandleVec;
use timely::dataflow::operators::{Exchange, Input, Inspect};
use timely::worker::Worker;

use crate::health::Health;

/// What one process reports of itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Report {
    /// (partition, next offset to read, high watermark).
    partitions: Vec<(i32, i64, i64)>,
    gaps: Vec<Gap>,
}

/// How often each process reports.
const EVERY: Duration = Duration::from_secs(1);

pub struct HealthShare {
    input: InputHandleVec<u64, Report>,
    health: Arc<Health>,
    /// One worker per process reports (its process's `Health` covers all of them).
    reports: bool,
    last: Instant,
    round: u64,
}

impl HealthShare {
    /// Builds the dataflow on `worker`; `workers` is the worker count per process.
    pub fn build(worker: &mut Worker, health: Arc<Health>, workers: usize) -> Self {
        let process_leader = worker.index().is_multiple_of(workers.max(1));
        let gather = (worker.index() == 0).then(|| health.clone());
        let input = worker.dataflow::<u64, _, _>(move |scope| {
            let (input, stream) = scope.new_input::<Vec<Report>>();
            stream.exchange(|_| 0).inspect(move |r: &Report| {
                if let Some(h) = &gather {
                    for (p, next, high) in &r.partitions {
                        h.set_partition(*p, *next, *high);
                    }
                    for g in &r.gaps {
                        h.record_gap(g);
                    }
                }
            });
            input
        });
        Self {
            input,
            health,
            reports: process_leader && worker.index() != 0,
            last: Instant::now(),
            round: 0,
        }
    }

    /// Reports once a second (processes other than 0; process 0's own are in place).
    pub fn tick(&mut self) {
        if self.last.elapsed() < EVERY {
            return;
        }
        self.last = Instant::now();
        if self.reports {
            let partitions = self
                .health
                .partitions
                .lock()
                .unwrap()
                .iter()
                .map(|(p, (next, high))| (*p, *next, *high))
                .collect();
            let gaps = self.health.gaps.lock().unwrap().iter().cloned().collect();
            self.input.send(Report { partitions, gaps });
        }
        self.round += 1;
        self.input.advance_to(self.round);
    }
}
