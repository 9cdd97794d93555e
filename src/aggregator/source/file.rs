//! Files as partitions: NDJSON events or seed-003 log lines, read line by line. Files are
//! spread over all workers of the cluster (file i to worker i mod workers); a file at its end
//! is a finished partition, so once every file is read the frontier closes and every window
//! becomes final: the aggregator runs as a batch job.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use adclick_dataflows::source::{PartitionReader, Polled, Record, Rejected};
use anyhow::anyhow;

use super::decode::{FutureBound, file_line};
use crate::aggregator::exit::Failure;
use crate::event::enrich::Enricher;

pub struct FileReader {
    files: Vec<OpenFile>,
    enricher: Enricher,
    max_future_skew_ms: u64,
    /// Where an unreadable input goes: it stops the job with its message.
    failure: Failure,
}

struct OpenFile {
    path: PathBuf,
    reader: Option<BufReader<File>>,
    line_no: u64,
    line: Vec<u8>,
}

impl FileReader {
    /// The files of `all` that belong to worker `index` of `peers`.
    pub fn new(
        all: &[PathBuf],
        index: usize,
        peers: usize,
        enricher: Enricher,
        max_future_skew_ms: u64,
        failure: Failure,
    ) -> Self {
        let files = all
            .iter()
            .enumerate()
            .filter(|(i, _)| i % peers == index)
            .map(|(_, p)| OpenFile {
                path: p.clone(),
                reader: None,
                line_no: 0,
                line: Vec::new(),
            })
            .collect();
        Self {
            files,
            enricher,
            max_future_skew_ms,
            failure,
        }
    }
}

impl PartitionReader for FileReader {
    fn partitions(&self) -> usize {
        self.files.len()
    }

    fn poll(&mut self, p: usize, max: usize, out: &mut Vec<Record>) -> Polled {
        // An unreadable input is a fault of the job, not of a record: it stops the job (the
        // partition stays open meanwhile, so no window is finalised without it).
        if self.failure.failed() {
            return Polled::Empty;
        }
        let f = &mut self.files[p];
        if f.reader.is_none() {
            match File::open(&f.path) {
                Ok(file) => f.reader = Some(BufReader::with_capacity(1 << 20, file)),
                Err(e) => {
                    let e = anyhow!("cannot open input {}: {e}", f.path.display());
                    self.failure.fail(e);
                    return Polled::Empty;
                }
            }
        }
        let reader = f.reader.as_mut().unwrap();
        let bound = FutureBound::now(self.max_future_skew_ms);
        let mut produced = 0;
        while produced < max {
            f.line.clear();
            match reader.read_until(b'\n', &mut f.line) {
                Ok(0) => return Polled::Finished,
                Ok(_) => {
                    f.line_no += 1;
                    let origin = || format!("{}:{}", f.path.display(), f.line_no);
                    let record = match std::str::from_utf8(&f.line) {
                        Ok(text) => file_line(text, &self.enricher, bound, origin),
                        Err(e) => Some(Record::Rejected(Rejected {
                            code: "utf8".into(),
                            reason: format!("line is not UTF-8: {e}"),
                            origin: origin(),
                            key: Vec::new(),
                            payload: f.line.clone(),
                        })),
                    };
                    if let Some(r) = record {
                        out.push(r);
                        produced += 1;
                    }
                }
                Err(e) => {
                    self.failure
                        .fail(anyhow!("reading {}: {e}", f.path.display()));
                    return Polled::Empty;
                }
            }
        }
        Polled::More
    }
}
