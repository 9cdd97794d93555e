//! A value another thread is still building, for an operator that must not start without it.
//!
//! A restart serves the restored rows at once, while the dedup state (by far the largest part
//! of a checkpoint, and the slowest to rebuild) is built off the worker threads: the operators
//! that need it wait for it, holding back only the times after the checkpoint.

use std::sync::{Arc, Mutex};

use timely::scheduling::SyncActivator;

/// The consuming side: the operator asks on each activation and is woken once it is filled.
pub struct Pending<T>(Arc<Mutex<Slot<T>>>);

/// The building side, on another thread. Dropped unfilled (the builder failed), it wakes the
/// operator, whose next ask panics rather than wait for ever.
pub struct Fill<T>(Arc<Mutex<Slot<T>>>);

enum Slot<T> {
    /// Not built yet; the operator to wake when it is.
    Waiting(Option<SyncActivator>),
    Ready(T),
    Taken,
    Abandoned,
}

impl<T> Pending<T> {
    /// A value there from the start (no restore, or one built before the dataflow).
    pub fn ready(value: T) -> Self {
        Self(Arc::new(Mutex::new(Slot::Ready(value))))
    }

    /// A value to come, and the handle that gives it.
    pub fn later() -> (Self, Fill<T>) {
        let slot = Arc::new(Mutex::new(Slot::Waiting(None)));
        (Self(slot.clone()), Fill(slot))
    }

    /// The value, once (later asks get `None`); until it is filled, `None`, and `wake` is
    /// activated when it is.
    ///
    /// # Panics
    /// If the builder dropped its [`Fill`] without filling it.
    pub fn take(&self, wake: &SyncActivator) -> Option<T> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *slot, Slot::Taken) {
            Slot::Ready(value) => Some(value),
            Slot::Waiting(_) => {
                *slot = Slot::Waiting(Some(wake.clone()));
                None
            }
            Slot::Taken => None,
            Slot::Abandoned => panic!("the restored state was never built (its builder failed)"),
        }
    }
}

impl<T> Fill<T> {
    pub fn fill(self, value: T) {
        self.settle(Slot::Ready(value));
    }

    /// Puts `to` in the slot if it is still waiting, and wakes the waiting operator.
    fn settle(&self, to: Slot<T>) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Slot::Waiting(wake) = &*slot {
            // A worker that has gone away needs no waking.
            if let Some(w) = wake {
                let _ = w.activate();
            }
            *slot = to;
        }
    }
}

impl<T> Drop for Fill<T> {
    fn drop(&mut self) {
        // Filled, this finds the slot settled and leaves it.
        self.settle(Slot::Abandoned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle to wake, from a worker of its own (the tests below take no operator's).
    fn waker() -> SyncActivator {
        timely::execute_directly(|worker| worker.sync_activator_for(vec![0]))
    }

    #[test]
    fn a_value_is_taken_once_whenever_it_comes() {
        let wake = waker();
        let ready = Pending::ready(7);
        assert_eq!(ready.take(&wake), Some(7));
        assert_eq!(ready.take(&wake), None, "taken once");
        let (later, fill) = Pending::later();
        assert_eq!(later.take(&wake), None, "not built yet");
        std::thread::spawn(move || fill.fill(8)).join().unwrap();
        assert_eq!(later.take(&wake), Some(8));
        assert_eq!(later.take(&wake), None);
    }

    #[test]
    #[should_panic(expected = "never built")]
    fn a_value_whose_builder_failed_is_not_waited_for() {
        let wake = waker();
        let (later, fill) = Pending::<u32>::later();
        assert_eq!(later.take(&wake), None);
        // The builder panics (or returns) without filling.
        let _ = std::thread::spawn(move || {
            let _fill = fill;
            panic!("building failed");
        })
        .join();
        later.take(&wake);
    }
}
