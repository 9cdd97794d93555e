//! What the aggregator reads: files, the clicks topic, or the raw archive.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::raw::Archived;

/// Where the clicks come from.
#[derive(Clone, Debug)]
pub enum Input {
    /// NDJSON events or seed-003 log lines; a batch job.
    Files(Vec<PathBuf>),
    /// The clicks topic; with `until_end`, a batch job over what the topic holds at start.
    Kafka {
        kafka: crate::config::KafkaConfig,
        until_end: bool,
    },
    /// The raw Parquet archive's clicks, by partition; a batch job (replay, reconciliation)
    /// that writes only its own output.
    Archive(Arc<BTreeMap<i32, Vec<Archived>>>),
}

impl Input {
    pub(super) fn is_batch(&self) -> bool {
        matches!(
            self,
            Input::Files(_)
                | Input::Archive(_)
                | Input::Kafka {
                    until_end: true,
                    ..
                }
        )
    }
}
