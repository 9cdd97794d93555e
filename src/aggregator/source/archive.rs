//! The raw Parquet archive as source partitions, for replay and reconciliation: each Kafka
//! partition's archived clicks in their original offset order (partition p to worker
//! p mod workers, as when they were read), so the same dataflow judges time, lateness and
//! duplicates as it did live. A partition at its end is finished: a batch job.

use std::collections::BTreeMap;

use adclick_dataflows::source::{PartitionReader, Polled, Record};

use crate::aggregator::raw::Archived;

pub struct ArchiveReader {
    partitions: Vec<std::vec::IntoIter<Archived>>,
}

impl ArchiveReader {
    /// The partitions of `all` that belong to worker `index` of `peers`.
    pub fn new(all: &BTreeMap<i32, Vec<Archived>>, index: usize, peers: usize) -> Self {
        let partitions = all
            .iter()
            .filter(|(p, _)| **p as usize % peers == index)
            .map(|(_, records)| records.clone().into_iter())
            .collect();
        Self { partitions }
    }
}

impl PartitionReader for ArchiveReader {
    fn partitions(&self) -> usize {
        self.partitions.len()
    }

    fn poll(&mut self, p: usize, max: usize, out: &mut Vec<Record>) -> Polled {
        let before = out.len();
        out.extend(
            self.partitions[p]
                .by_ref()
                .take(max)
                .map(|r| Record::Click(r.click)),
        );
        if out.len() - before < max {
            Polled::Finished
        } else {
            Polled::More
        }
    }
}
