//! The one error a restore goes past: a checkpoint that cannot be read as written. Its own
//! module because both the chain (a link that does not fit its base) and the store (a part
//! torn or damaged) find such checkpoints.

/// A checkpoint that cannot be read as written: a manifest that does not parse, a part
/// missing, torn or damaged (its checksum). A restore skips it for the previous one; any
/// other error (settings, format, I/O) stops the restore.
#[derive(Debug)]
pub struct Corrupt(pub String);

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Corrupt {}
