//! Writes a checkpoint part past the page cache (`O_DIRECT`) where the file system allows it.
//!
//! At 100 M clicks of dedup state a full checkpoint is ~4 GB, written every few minutes, and
//! the links ~60 MB every interval. Copying them into the page cache was half of the
//! checkpoint thread's CPU in a checkpointed load (3.6 % of all samples, ~2 s per GB on the
//! benchmark machine), taken from the workers on 2 cores, and it pushed out pages the process
//! and the broker use. A restore reads a part by mmap either way, from the cache or the disk.
//!
//! Writes go out in whole aligned blocks; the tail, and everything after a file system or a
//! write refuses direct I/O, goes through the page cache as before. The bytes on disk are the
//! same either way.

use std::fs::File;
use std::io::{self, Write};

/// What `O_DIRECT` asks of a buffer's address, a write's length and the file offset.
const ALIGN: usize = 4096;
/// One direct write.
const BLOCK: usize = 1 << 20;

/// A file written in aligned blocks, past the page cache while it can be. [`DirectFile::finish`]
/// writes the tail: without it, up to a block of the data is not in the file.
pub struct DirectFile<'a> {
    file: &'a mut File,
    raw: Vec<u8>,
    /// Where the aligned block starts in `raw`.
    start: usize,
    filled: usize,
    direct: bool,
}

impl<'a> DirectFile<'a> {
    /// Turns on direct I/O for `file` (opened for writing, at offset 0) where it is allowed.
    pub fn new(file: &'a mut File) -> Self {
        let direct = set_direct(file, true).is_ok();
        Self::with(file, direct)
    }

    /// Writes through the page cache only: a file system that refuses direct I/O.
    #[cfg(test)]
    fn buffered_only(file: &'a mut File) -> Self {
        Self::with(file, false)
    }

    fn with(file: &'a mut File, direct: bool) -> Self {
        let raw = vec![0u8; BLOCK + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        Self {
            file,
            raw,
            start,
            filled: 0,
            direct,
        }
    }

    /// Whether the blocks so far went past the page cache.
    #[cfg(test)]
    fn is_direct(&self) -> bool {
        self.direct
    }

    /// Writes what is buffered, through the page cache (a tail is not a whole block).
    pub fn finish(mut self) -> io::Result<()> {
        self.buffered()?;
        self.put()
    }

    fn buffered(&mut self) -> io::Result<()> {
        if self.direct {
            self.direct = false;
            set_direct(self.file, false)?;
        }
        Ok(())
    }

    /// Writes the buffer out. A direct write that is refused or comes back short leaves the
    /// file offset where a direct write may not go on: the rest goes through the page cache.
    fn put(&mut self) -> io::Result<()> {
        let mut at = self.start;
        let end = self.start + self.filled;
        while at < end {
            match self.file.write(&self.raw[at..end]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    at += n;
                    if at < end {
                        self.buffered()?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    self.buffered()?
                }
                Err(e) => return Err(e),
            }
        }
        self.filled = 0;
        Ok(())
    }
}

impl Write for DirectFile<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(BLOCK - self.filled);
        let at = self.start + self.filled;
        self.raw[at..at + n].copy_from_slice(&buf[..n]);
        self.filled += n;
        if self.filled == BLOCK {
            self.put()?;
        }
        Ok(n)
    }

    /// Only whole blocks are ever written before [`DirectFile::finish`].
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this `File` owns, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_direct(_file: &File, on: bool) -> io::Result<()> {
    if on {
        Err(io::ErrorKind::Unsupported.into())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that show any misplaced or lost block.
    fn data(len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8)
            .collect()
    }

    fn on_ext4(path: &std::path::Path) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: statfs fills the zeroed struct given; the path is a valid C string.
        let mut s: libc::statfs = unsafe { std::mem::zeroed() };
        unsafe { libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type == libc::EXT4_SUPER_MAGIC }
    }

    /// Sizes around the block and the alignment, written in odd-sized pieces, read back the
    /// same, direct or not; on ext4 (this machine's) the whole blocks go direct.
    #[test]
    fn a_file_reads_back_as_written_in_any_size_direct_or_not() {
        let dir = tempfile::tempdir().unwrap();
        for len in [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            3 * BLOCK + 777,
        ] {
            for direct in [true, false] {
                let path = dir.path().join(format!("{len}-{direct}"));
                let want = data(len);
                let mut file = File::create(&path).unwrap();
                let mut w = if direct {
                    DirectFile::new(&mut file)
                } else {
                    DirectFile::buffered_only(&mut file)
                };
                for piece in want.chunks(4_099) {
                    w.write_all(piece).unwrap();
                }
                if direct && on_ext4(dir.path()) {
                    assert!(w.is_direct(), "ext4 takes whole aligned blocks direct");
                }
                w.finish().unwrap();
                file.sync_all().unwrap();
                drop(file);
                assert_eq!(
                    std::fs::read(&path).unwrap(),
                    want,
                    "{len} bytes, direct {direct}"
                );
            }
        }
    }
}
