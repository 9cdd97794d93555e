//! Fencing: one aggregator per checkpoint directory (per process index) and per output.
//! Two aggregators started on the same ones would both write: interleaved output lines, and
//! checkpoints committed by a process whose successor already runs. Each takes an exclusive
//! advisory lock (`flock`) at start, and the second fails at once, naming the holder. The
//! kernel drops the lock when its holder dies, however it dies, so a crash never leaves a
//! stale lock behind. Where advisory locks do not hold (some network file systems), the
//! checkpoint epoch (`checkpoint::store`) still stops a paused zombie from committing.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// An exclusive lock, held until dropped (or the process ends).
#[derive(Debug)]
pub struct Fence {
    _file: File,
    pub path: PathBuf,
}

/// Takes the lock at `path` for `what` (said in the error), writing this process's PID, host
/// and start time into it for whoever finds it taken.
pub fn lock(path: &Path, what: &str) -> anyhow::Result<Fence> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening lock {}", path.display()))?;
    // SAFETY: flock on a descriptor we own; it has no memory effects.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if taken != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::WouldBlock {
            return Err(err).with_context(|| format!("locking {}", path.display()));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        bail!(
            "{what} is in use by another aggregator ({}; lock {}): stop it first, or give \
             this one its own",
            holder.trim(),
            path.display()
        );
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(
        file,
        "pid {} on host {} since {}",
        std::process::id(),
        hostname(),
        crate::timefmt::format_millis(crate::timefmt::now_millis())
    )?;
    file.sync_data()?;
    Ok(Fence {
        _file: file,
        path: path.to_path_buf(),
    })
}

/// The locks a process of the cluster takes: its share of the checkpoint directory (every
/// process writes its parts there) and, on process 0, the output it writes.
pub fn lock_process(
    checkpoint_dir: Option<&Path>,
    output: Option<&str>,
    process: usize,
) -> anyhow::Result<Vec<Fence>> {
    let mut fences = Vec::new();
    if let Some(dir) = checkpoint_dir {
        fences.push(lock(
            &dir.join(format!("LOCK.process-{process}")),
            &format!("checkpoint directory {} (process {process})", dir.display()),
        )?);
    }
    if let Some(out) = output.filter(|o| *o != "-" && !o.starts_with("/dev/")) {
        fences.push(lock(
            Path::new(&format!("{out}.lock")),
            &format!("output {out}"),
        )?);
    }
    Ok(fences)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_fails_at_once_naming_the_first_and_a_drop_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("LOCK");
        let first = lock(&path, "the thing").unwrap();
        let err = format!("{:#}", lock(&path, "the thing").unwrap_err());
        assert!(err.contains("in use by another aggregator"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        lock(&path, "the thing").unwrap();
    }
}
