//! Where the clicks come from: each source is a [`PartitionReader`] that the dataflow's
//! checkpointed or clock source polls, one per worker over its share of the partitions.
//!
//! - [`kafka`]: the clicks topic, resumable from a checkpoint's offsets, with gap detection;
//! - [`file`]: NDJSON events or seed-003 log lines (a batch job);
//! - [`archive`]: the raw Parquet archive's clicks, for replay and reconciliation;
//! - [`decode`]: a record's bytes to a click or a rejection, shared by all three.
//!
//! [`PartitionReader`]: adclick_dataflows::source::PartitionReader

pub mod archive;
pub mod decode;
pub mod file;
pub mod kafka;
