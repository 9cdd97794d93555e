//! How the aggregator stops when it must not simply be restarted: its exit codes, the error
//! that carries a lost fence, and the test for a lost peer. A leaf module, so that sources and
//! checkpoints can exit without importing the cluster's module.

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
