//! The raw archive's unit: one accepted click with its partition and offset, and the buffer
//! in which a worker's Kafka source keeps them until a checkpoint hands them to the Parquet
//! sink. A neutral module, so that the source and the sink both depend on it and not on each
//! other.

use std::collections::BTreeMap;

use adclick_dataflows::click::RawClick;

/// One accepted click as read, with where it came from.
#[derive(Clone, Debug)]
pub struct Archived {
    pub partition: i32,
    pub offset: i64,
    pub click: RawClick,
}

/// A worker's accepted clicks not yet archived.
#[derive(Default)]
pub struct RawBuffer {
    records: Vec<Archived>,
}

impl RawBuffer {
    pub fn push(&mut self, record: Archived) {
        self.records.push(record);
    }

    pub fn into_records(self) -> Vec<Archived> {
        self.records
    }

    /// Takes the records before `positions` (partition → next offset at the checkpoint):
    /// exactly the records the checkpoint's state has read.
    pub fn take_before(&mut self, positions: &BTreeMap<i32, u64>) -> Vec<Archived> {
        let (before, after) = std::mem::take(&mut self.records)
            .into_iter()
            .partition(|r| {
                positions
                    .get(&r.partition)
                    .is_some_and(|p| (r.offset as u64) < *p)
            });
        self.records = after;
        before
    }
}
