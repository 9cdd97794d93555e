//! Child processes of a test: killed when the test ends however it ends, with their
//! standard output read line by line on a thread, so a test can wait for a line with a
//! deadline; and a blocking HTTP GET for polling their servers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Spawned {
    pub child: Child,
    lines: Option<Receiver<String>>,
}

impl Spawned {
    /// Spawns `command` with its standard output piped to this handle.
    pub fn start(command: &mut Command) -> Self {
        let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines: Some(rx),
        }
    }

    /// The rest of the first output line starting with `prefix`; panics after `timeout` or
    /// when the process exits first.
    pub fn line_with_prefix(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let lines = self.lines.as_ref().expect("stdout is read");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_string();
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("no line `{prefix}…` in {timeout:?}"),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the process exited before printing `{prefix}…`")
                }
            }
        }
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

/// `GET url` over HTTP/1.0 (so the answer is never chunked) with an optional bearer key:
/// (status, body).
pub fn get(url: &str, key: Option<&str>) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n{auth}\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// What the dashboard at `base` (`http://HOST:PORT/`) shows in Debian's headless Chromium,
/// as `tests/browser/dashboard.mjs` prints it; the screenshot goes to `screenshot`. Panics
/// when the page reports an error or never becomes ready.
pub fn dashboard(base: &str, key: &str, screenshot: &std::path::Path) -> serde_json::Value {
    let browser_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
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
