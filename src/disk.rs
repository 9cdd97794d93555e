//! How full the filesystem holding a directory is: the `disk_used_ratio` gauges both
//! services export, so an alert fires before the spool, checkpoints or sinks run out of room
//! (a full spool disk loses clicks; a full checkpoint disk stops commits).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Used share of the filesystem under `dir`, as `df` computes `Use%`: used blocks over used
/// plus those available to unprivileged users (blocks reserved for root count as neither).
pub fn used_ratio(dir: &Path) -> std::io::Result<f64> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid C string and `st` is written by a successful call before it
    // is read.
    let st = unsafe {
        if libc::statvfs(path.as_ptr(), st.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        st.assume_init()
    };
    let used = st.f_blocks.saturating_sub(st.f_bfree) as f64;
    let avail = st.f_bavail as f64;
    Ok(if used + avail == 0.0 {
        0.0
    } else {
        used / (used + avail)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_has_a_used_share_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let r = used_ratio(dir.path()).unwrap();
        assert!(r > 0.0 && r <= 1.0, "{r}");
        let e = used_ratio(&dir.path().join("missing")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }
}
