//! When each window of an arrangement last changed, so that an incremental checkpoint reads
//! only the windows changed since the one it builds on, not every retained row (issue 16
//! item 4: reading and digesting every row and sketch at each checkpoint was 4–5 % of a
//! checkpointed load's samples at 100 M clicks of state, docs/benchmarks.md).
//!
//! The operator that schedules an arrangement's retirements (`retire::arrange_retiring`) sees
//! every update the arrangement receives, and makes every retraction: it records here the
//! latest time at which each window got one. A window none of whose updates is at or after
//! `since` holds at every later frontier what it held at `since`.

use std::cell::RefCell;
use std::hash::Hash;
use std::rc::Rc;

use foldhash::HashMap;

/// The latest update time of each window of one arrangement, once recording is on.
pub struct Touched<W> {
    recording: bool,
    latest: HashMap<W, u64>,
    /// Every update at a time before this one has been recorded.
    complete_before: u64,
}

/// A [`Touched`] shared by the operator that records it and the checkpoints that read it.
pub type TouchedHandle<W> = Rc<RefCell<Touched<W>>>;

impl<W> Default for Touched<W> {
    fn default() -> Self {
        Self {
            recording: false,
            latest: HashMap::default(),
            complete_before: 0,
        }
    }
}

impl<W: Hash + Eq + Ord + Clone> Touched<W> {
    /// Records from now on (before any update arrives: a window changed before would be
    /// missed). Off, nothing is recorded: a run without incremental checkpoints pays nothing.
    pub fn record(&mut self) {
        self.recording = true;
    }

    pub fn recording(&self) -> bool {
        self.recording
    }

    /// `window` got an update at `time`.
    pub fn touch(&mut self, window: &W, time: u64) {
        if !self.recording {
            return;
        }
        match self.latest.get_mut(window) {
            Some(t) => *t = (*t).max(time),
            None => {
                self.latest.insert(window.clone(), time);
            }
        }
    }

    /// Every update before `frontier` has been recorded.
    pub fn complete_before(&mut self, frontier: u64) {
        self.complete_before = self.complete_before.max(frontier);
    }

    /// Whether every update before `f` has been recorded (recording on).
    pub fn complete_through(&self, f: u64) -> bool {
        !self.recording || self.complete_before >= f
    }

    /// The windows with an update at or after `since`, sorted. Forgets the windows whose latest
    /// update is before it: a later caller asks from a later time (a chain's tip only moves
    /// forward).
    pub fn since(&mut self, since: u64) -> Vec<W> {
        assert!(self.recording, "the windows changed are not recorded");
        self.latest.retain(|_, t| *t >= since);
        let mut out: Vec<W> = self.latest.keys().cloned().collect();
        out.sort();
        out
    }
}

/// Records a run of updates `(window, time)`, one map update per run of one window (an
/// arrangement's updates come in runs of a window: the current minute's, hour's, day's).
pub fn touch_all<W: Hash + Eq + Ord + Clone>(
    touched: &TouchedHandle<W>,
    updates: impl Iterator<Item = (W, u64)>,
) {
    let mut touched = touched.borrow_mut();
    if !touched.recording {
        return;
    }
    let mut run: Option<(W, u64)> = None;
    for (w, t) in updates {
        match &mut run {
            Some((rw, rt)) if *rw == w => *rt = (*rt).max(t),
            _ => {
                if let Some((rw, rt)) = run.replace((w, t)) {
                    touched.touch(&rw, rt);
                }
            }
        }
    }
    if let Some((rw, rt)) = run {
        touched.touch(&rw, rt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_since_a_time_are_those_with_an_update_at_or_after_it() {
        let h: TouchedHandle<u64> = Rc::default();
        touch_all(&h, [(1, 5)].into_iter());
        assert!(h.borrow().latest.is_empty(), "not recording yet");
        h.borrow_mut().record();
        touch_all(&h, [(1, 5), (1, 9), (2, 7), (1, 6), (3, 2)].into_iter());
        let mut t = h.borrow_mut();
        assert_eq!(t.latest.get(&1), Some(&9), "the latest of a window's runs");
        assert_eq!(t.since(3), vec![1, 2]);
        assert_eq!(t.since(8), vec![1]);
        assert_eq!(t.since(0), vec![1], "forgotten below an earlier since");
        assert!(!t.complete_through(1));
        t.complete_before(4);
        assert!(t.complete_through(4) && !t.complete_through(5));
    }
}
