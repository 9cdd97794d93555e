//! Pausing HTTP traffic from outside: SIGUSR1 pauses, SIGUSR2 resumes.
//!
//! A failure test that restarts the redirect needs the load generator quiet first. Freezing it
//! (SIGSTOP) is not enough: a request it was writing, or a connection it was opening, when it
//! froze reaches a redirect that is gone by the time it thaws, and a kept-alive connection to
//! the old process fails its next request. Either way a click the truth counts never arrives.
//! A pause instead stops sending between requests, waits for every answer, and closes its
//! connections, so after the resume every request goes to whatever listens then.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::signal::unix::{SignalKind, signal};

/// The pause switch, flipped by signals.
#[derive(Clone, Default)]
pub struct PauseSwitch(Arc<AtomicBool>);

impl PauseSwitch {
    /// Listens for SIGUSR1 (pause) and SIGUSR2 (resume) on the current tokio runtime.
    pub fn on_signals() -> std::io::Result<Self> {
        let switch = Self::default();
        let (mut pause, mut resume) = (
            signal(SignalKind::user_defined1())?,
            signal(SignalKind::user_defined2())?,
        );
        let flag = switch.0.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = pause.recv() => flag.store(true, Ordering::SeqCst),
                    Some(()) = resume.recv() => flag.store(false, Ordering::SeqCst),
                    else => break,
                }
            }
        });
        Ok(switch)
    }

    pub fn is_paused(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
