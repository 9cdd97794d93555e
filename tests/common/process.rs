//! Child processes of a test: killed when the test ends however it ends (no test shells out
//! to `kill` or keeps a guard of its own), with their standard output read line by line on a
//! thread, so a test can wait for a line with a deadline, and their standard error, when
//! piped, kept for the test to read.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;
use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::poll::wait_until;

/// Runs `command` to its end and returns its output; panics with its standard error unless
/// it succeeded. For the tools a test runs before it checks anything (the load generator, the
/// broker's admin commands).
pub fn run_ok(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Spawned {
    pub child: Child,
    lines: Option<Receiver<String>>,
    /// A piped standard error as read so far, and the thread reading it.
    stderr: Option<(Arc<Mutex<String>>, JoinHandle<()>)>,
}

impl Spawned {
    /// Spawns `command` with its standard output piped to this handle, for
    /// [`Spawned::line_with_prefix`].
    pub fn start(command: &mut Command) -> Self {
        let mut spawned = Self::spawn(command.stdout(Stdio::piped()));
        let stdout = spawned.child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        spawned.lines = Some(rx);
        spawned
    }

    /// Spawns `command` with its output where the command sends it; a piped standard error is
    /// read as it comes (so the child never blocks on it), for [`Spawned::stderr`].
    pub fn spawn(command: &mut Command) -> Self {
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().map(|mut pipe| {
            let text = Arc::new(Mutex::new(String::new()));
            let kept = text.clone();
            let reader = std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    kept.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
            (text, reader)
        });
        Self {
            child,
            lines: None,
            stderr,
        }
    }

    /// The rest of the first output line starting with `prefix`; panics after `timeout` or
    /// when the process exits first.
    pub fn line_with_prefix(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.read_line(left, &format!("`{prefix}…`"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_string();
            }
        }
    }

    /// The next output line; panics after `timeout` or when the process exits first.
    pub fn next_line(&mut self, timeout: Duration) -> String {
        self.read_line(timeout, "a line")
    }

    fn read_line(&mut self, timeout: Duration, what: &str) -> String {
        let lines = self.lines.as_ref().expect("stdout is read");
        match lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!("no {what} in {timeout:?}"),
            Err(RecvTimeoutError::Disconnected) => {
                panic!("the process exited before printing {what}")
            }
        }
    }

    /// Whether the process has not exited yet.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// How it exited; panics if it still runs after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = &mut self.child;
        wait_until(timeout, "the process to exit", || child.try_wait().unwrap())
    }

    /// What it wrote to its standard error so far (empty unless it was piped): all of it
    /// once it has exited.
    pub fn stderr(&mut self) -> String {
        let Some((text, reader)) = self.stderr.take() else {
            return String::new();
        };
        if self.running() {
            self.stderr = Some((text.clone(), reader));
        } else {
            let _ = reader.join();
        }
        text.lock().unwrap().clone()
    }

    /// SIGTERM: asks for a clean shutdown.
    pub fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(self.child.id() as i32);
        kill(pid, signal).unwrap_or_else(|e| panic!("kill -{signal} {pid}: {e}"));
    }

    /// kill -9, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the dashboard at `base` (`http://HOST:PORT/`) shows in Debian's headless Chromium,
/// as `tests/browser/dashboard.mjs` prints it; the screenshot goes to `screenshot`. Panics
/// when the page reports an error or never becomes ready.
pub fn dashboard(base: &str, key: &str, screenshot: &std::path::Path) -> serde_json::Value {
    let browser_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../browser");
    assert!(
        std::path::Path::new(browser_dir)
            .join("node_modules/playwright-core")
            .is_dir()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "the browser test needs Debian's chromium and tests/browser/node_modules: run \
         scripts/install-deps.sh"
    );
    let out = Command::new("node")
        .arg(format!("{browser_dir}/dashboard.mjs"))
        .args(["--url", base, "--key", key])
        .arg("--screenshot")
        .arg(screenshot)
        .args(["--timeout-ms", "30000"])
        .output()
        .expect("running node");
    assert!(
        out.status.success(),
        "dashboard.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("dashboard screenshot: {}", screenshot.display());
    serde_json::from_slice(&out.stdout).expect("dashboard.mjs prints JSON")
}
