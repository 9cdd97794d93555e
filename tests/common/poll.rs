//! The one way a test waits for something: poll a check until it holds or a deadline passes
//! (mini-redis's tests wait the same way), blocking or in a tokio test. A check returns
//! `Option<T>` (`Some` when done), `bool`, or `Result<T, E>` whose `Err` says what it saw
//! last, which the timeout's message then shows.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// How often a check runs unless the test says otherwise.
pub const EVERY: Duration = Duration::from_millis(50);

/// A check's answer: done with a value, or not yet, with what it saw if it says.
pub trait Check<T> {
    fn done(self) -> Result<T, Option<String>>;
}

impl<T> Check<T> for Option<T> {
    fn done(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl Check<()> for bool {
    fn done(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T, E: Display> Check<T> for Result<T, E> {
    fn done(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(e.to_string()))
    }
}

/// A deadline for `what`, and the judgement of each check against it.
struct Deadline<'a> {
    at: Instant,
    timeout: Duration,
    what: &'a str,
}

impl<'a> Deadline<'a> {
    fn new(timeout: Duration, what: &'a str) -> Self {
        let at = Instant::now() + timeout;
        Self { at, timeout, what }
    }

    /// The check's value once done; `None` to check again; a panic once time is up.
    fn judge<T>(&self, answer: Result<T, Option<String>>) -> Option<T> {
        let (timeout, what) = (self.timeout, self.what);
        match answer {
            Ok(value) => Some(value),
            Err(_) if Instant::now() < self.at => None,
            Err(Some(seen)) => panic!("timed out after {timeout:?} waiting for {what}: {seen}"),
            Err(None) => panic!("timed out after {timeout:?} waiting for {what}"),
        }
    }
}

/// Runs `check` every [`EVERY`] until it is done, and returns its value; panics, naming
/// `what`, after `timeout`.
pub fn wait_until<T, C: Check<T>>(timeout: Duration, what: &str, check: impl FnMut() -> C) -> T {
    wait_every(timeout, EVERY, what, check)
}

/// [`wait_until`], checking every `every`.
pub fn wait_every<T, C: Check<T>>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut check: impl FnMut() -> C,
) -> T {
    let deadline = Deadline::new(timeout, what);
    loop {
        if let Some(value) = deadline.judge(check().done()) {
            return value;
        }
        std::thread::sleep(every);
    }
}

/// [`wait_every`] in a tokio test, for an async check: sleeps without blocking the runtime.
pub async fn wait_every_async<T, C: Check<T>>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> C,
) -> T {
    let deadline = Deadline::new(timeout, what);
    loop {
        if let Some(value) = deadline.judge(check().await.done()) {
            return value;
        }
        tokio::time::sleep(every).await;
    }
}

/// [`wait_until`] in a tokio test, for an async check.
pub async fn wait_until_async<T, C: Check<T>>(
    timeout: Duration,
    what: &str,
    check: impl AsyncFnMut() -> C,
) -> T {
    wait_every_async(timeout, EVERY, what, check).await
}
