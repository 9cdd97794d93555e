//! How the aggregator stops when it must not simply be restarted: its exit codes, the error
//! that carries a lost fence, the test for a lost peer, and the [`Failure`] that carries an
//! error of the input out of the cluster. A leaf module, so that sources and
//! checkpoints can exit without importing the cluster's module.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Exit code when records were deleted before they were read and `aggregator.on_gap` is
/// `fail` (or the topic's offsets went backwards): a supervisor must not just restart.
pub const EXIT_DATA_LOST: i32 = 3;

/// Another aggregator owns this one's checkpoint directory or output; the binary exits with
/// [`EXIT_FENCED`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Fenced(pub String);

/// Exit code when another aggregator holds this one's checkpoint directory or output, or
/// took it over (a newer fencing epoch).
pub const EXIT_FENCED: i32 = 5;

/// Exit code when a peer process of the cluster went away: a timely cluster cannot go on
/// without a member, so the survivors stop and a supervisor restarts the whole cluster.
pub const EXIT_PEER_LOST: i32 = 4;

/// Whether a panic is timely's network threads losing a peer (its connection closed or
/// failed), and if so the cause as timely reported it.
pub fn peer_lost(info: &std::panic::PanicHookInfo<'_>) -> Option<String> {
    let message = info
        .payload()
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| info.payload().downcast_ref::<&str>().copied())?;
    // timely_communication's tcp_panic, which it asks downstream crates to sniff.
    message
        .strip_prefix("timely communication error: ")
        .map(str::to_string)
}

/// The first error that stops the job, when it is the input's or the environment's fault
/// rather than a bug: an unreadable input file, a record Kafka will never take, a report
/// that cannot be written. Whichever operator meets it records it here; every worker's loop
/// sees it and stops; `aggregator::run` returns it, so the binary exits with code 1 and the
/// message, where a panic would end it with 101, "a worker panicked", which is for bugs.
#[derive(Clone, Default)]
pub struct Failure(Arc<FailureSlot>);

#[derive(Default)]
struct FailureSlot {
    set: AtomicBool,
    first: Mutex<Option<anyhow::Error>>,
}

impl Failure {
    /// Records `error` (logged at once: a peer process may end this one before `run`
    /// returns it); the first one recorded is the one returned.
    pub fn fail(&self, error: anyhow::Error) {
        tracing::error!("stopping the job: {error:#}");
        let mut first = self.0.first.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(error);
        self.0.set.store(true, Ordering::Release);
    }

    /// Whether the job must stop.
    pub fn failed(&self) -> bool {
        self.0.set.load(Ordering::Acquire)
    }

    /// The first error recorded, if any.
    pub fn take(&self) -> Option<anyhow::Error> {
        let mut first = self.0.first.lock().unwrap_or_else(|p| p.into_inner());
        first.take()
    }
}
