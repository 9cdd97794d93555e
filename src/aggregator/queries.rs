//! The query dataflow: every worker answers from its own traces, worker 0 merges and replies.
//! Worker 0 of process 0 also takes the asks from the HTTP server and enters them in batches,
//! each batch reading exactly the updates before the data frontier.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use adclick_dataflows::Traces;
use adclick_dataflows::names::Dictionary;
use adclick_dataflows::query::{Query, QueryTime, Stamps, serve};
use timely::dataflow::InputHandleVec;
use timely::dataflow::operators::Input as _;
use timely::worker::Worker;
use tokio::sync::oneshot;

use super::cluster::Cluster;
use crate::query::Ask;
use crate::query::render::Resolved;

/// The replies owed, by query id.
type Waiting = Rc<RefCell<HashMap<u64, oneshot::Sender<Resolved>>>>;

/// A worker's side of the query dataflow.
pub(super) struct Queries {
    /// The asks, on the one worker that takes them (worker 0 of process 0).
    asks: Option<Receiver<Ask>>,
    /// The query input, on that worker of a streaming job; closed on every other.
    input: Option<InputHandleVec<QueryTime, Query>>,
    waiting: Waiting,
    stamps: Stamps,
}

impl Queries {
    /// Builds the query dataflow on `worker` (streaming jobs only: a batch job ends when its
    /// dataflows do, and this one never would), answering from `traces` with the texts of
    /// `dictionary`.
    pub fn build(
        worker: &mut Worker,
        cluster: &Cluster,
        traces: &Traces,
        dictionary: &Rc<RefCell<Dictionary>>,
    ) -> Self {
        let waiting = Waiting::default();
        let mut input = cluster.serving.then(|| {
            let waiting = waiting.clone();
            let dictionary = dictionary.clone();
            let query_traces = traces.for_queries();
            worker.dataflow::<QueryTime, _, _>(move |scope| {
                let (input, stream) = scope.new_input::<Vec<Query>>();
                serve(stream, query_traces, move |q, answer| {
                    if let Some(reply) = waiting.borrow_mut().remove(&q.id) {
                        let _ = reply.send(Resolved::new(q, answer, &dictionary.borrow()));
                    }
                });
                input
            })
        });
        // Only worker 0 of process 0 takes queries; the other inputs close at once.
        let asks = cluster.take_asks(worker.index());
        if asks.is_none() {
            input = None;
        } else {
            cluster.server.bridge.register_worker();
        }
        Self {
            asks,
            input,
            waiting,
            stamps: Stamps::default(),
        }
    }

    /// How long the worker may park: briefly where queries arrive, so that they are answered
    /// promptly (the bridge also unparks it).
    pub fn park(&self) -> Duration {
        Duration::from_millis(if self.asks.is_some() { 2 } else { 20 })
    }

    /// Enters the queries waiting now as one batch, whose reads see exactly the updates
    /// before `frontier`.
    pub fn batch(&mut self, frontier: u64) {
        let (Some(input), Some(asks)) = (self.input.as_mut(), self.asks.as_ref()) else {
            return;
        };
        self.stamps.batch(frontier);
        while let Ok(Ask { kind, reply }) = asks.try_recv() {
            let q = self.stamps.stamp(kind);
            input.advance_to(q.time());
            self.waiting.borrow_mut().insert(q.id, reply);
            input.send(q);
        }
        input.advance_to(self.stamps.next_time());
    }
}
