//! One timely worker: its dataflows, built once, and the loop that steps them until the input
//! is exhausted (batch) or forever (streaming).

use std::sync::atomic::Ordering;

use adclick_dataflows::time::MINUTE_MS;
use timely::progress::Antichain;
use timely::worker::Worker;

use super::cluster::Cluster;
use super::dataflow::{Aggregation, now_ms};
use super::health_share::HealthShare;
use super::queries::Queries;
use crate::query::Server;

/// A worker's dataflows and what its loop keeps between steps.
pub(super) struct WorkerLoop {
    index: usize,
    aggregation: Aggregation,
    queries: Queries,
    /// Streaming only: every process's read positions and gaps, gathered on process 0.
    share: Option<HealthShare>,
    /// Worker 0 reports when the restored state is first readable: a restart's downtime.
    restoring: Option<u64>,
    /// The frontier at the last step, for window completion latency (worker 0).
    last_frontier: Option<u64>,
    out_of_orderness_ms: u64,
}

impl WorkerLoop {
    /// Builds this worker's dataflows, in the same order on every worker: the aggregation,
    /// the query dataflow, the health share.
    pub fn build(worker: &mut Worker, cluster: &Cluster) -> Self {
        let index = worker.index();
        let aggregation = Aggregation::build(worker, cluster);
        let queries = Queries::build(
            worker,
            cluster,
            &aggregation.traces,
            &aggregation.dictionary,
        );
        let share = cluster
            .serving
            .then(|| HealthShare::build(worker, cluster.health.clone(), cluster.cfg.workers));
        let restoring = cluster
            .restored
            .as_ref()
            .map(|r| r.frontier)
            .filter(|_| index == 0);
        Self {
            index,
            aggregation,
            queries,
            share,
            restoring,
            last_frontier: None,
            out_of_orderness_ms: cluster
                .cfg
                .time(cluster.input.is_batch())
                .out_of_orderness_ms,
        }
    }

    /// Steps the worker until its dataflows are done, then archives what the input left; or
    /// until the cluster's [`Failure`](super::exit::Failure) is set, which `run` returns.
    pub fn run(mut self, worker: &mut Worker, cluster: &Cluster) {
        let failure = &cluster.failure;
        while !failure.failed() && worker.step_or_park(Some(self.queries.park())) {
            self.step(cluster);
        }
        if failure.failed() {
            return;
        }
        // The input is exhausted: every click read is in the results.
        if let Some(c) = self.aggregation.checkpointer.as_mut()
            && let Err(e) = c.archive_the_rest()
        {
            failure.fail(e.context(format!("worker {}: archiving", self.index)));
        }
    }

    /// One step of the loop, after timely's: the checkpointer's step, compaction of the
    /// traces, the health share's tick, then at the data frontier the restore report, health
    /// and completion latency (worker 0) and the next batch of queries.
    fn step(&mut self, cluster: &Cluster) {
        let a = &mut self.aggregation;
        let frontier = a.probe.with_frontier(|f| f.first().copied());
        let mut compact_to = frontier;
        if let Some(c) = a.checkpointer.as_mut() {
            let names = a.dictionary.borrow();
            let source_frontier = a.sources.with_frontier(|f| f.first().copied());
            c.step(
                source_frontier,
                &mut a.traces,
                (self.index == 0).then_some(&*names),
            );
            compact_to = c.compaction_bound(frontier);
        }
        let bound: Antichain<u64> = compact_to.into_iter().collect();
        a.traces.compact_to(bound.borrow());
        if let Some(s) = self.share.as_mut() {
            s.tick();
        }
        let Some(f) = frontier else { return };
        if let Some(at) = self.restoring.filter(|at| f >= *at) {
            tracing::info!(
                frontier = at,
                ms = cluster.started.elapsed().as_millis() as u64,
                "restored state readable"
            );
            self.restoring = None;
        }
        if self.index == 0 {
            cluster.health.frontier.store(f, Ordering::Relaxed);
            let bound_ms = self.out_of_orderness_ms;
            observe_completions(&cluster.server, self.last_frontier, f, bound_ms);
            self.last_frontier = Some(f);
        }
        self.queries.batch(f);
    }
}

/// Window completion latency: for each minute end the frontier passed since the last look,
/// the wall clock minus (end + out-of-orderness bound), the earliest it could have completed.
/// The first real frontier is where observations start: before it the frontier sat at 0 (or
/// below a restored checkpoint), and counting every minute since then would record decades.
fn observe_completions(server: &Server, last: Option<u64>, frontier: u64, bound_ms: u64) {
    let Some(last) = last.filter(|l| *l > 0) else {
        return;
    };
    let now = now_ms();
    let mut end = last - last % MINUTE_MS + MINUTE_MS;
    while end <= frontier {
        let late_by = now.saturating_sub(end + bound_ms);
        server
            .metrics
            .window_completion
            .observe(late_by as f64 / 1000.0);
        end += MINUTE_MS;
    }
}
