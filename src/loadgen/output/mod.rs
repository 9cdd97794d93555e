//! Where emissions go. Each output delivers what it is given and nothing more; the traffic,
//! its encoding and the truth are decided elsewhere.

pub mod file;
pub mod http;
pub mod kafka;
pub mod pause;

use super::traffic::Emission;

/// An output that takes emissions one at a time, in order (files and Kafka).
pub trait Sink {
    fn send(&mut self, e: &Emission) -> anyhow::Result<()>;
    /// Makes what was sent visible to readers, without waiting for durability.
    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// Flushes everything; fails if anything sent did not arrive.
    fn finish(&mut self) -> anyhow::Result<()>;
}
