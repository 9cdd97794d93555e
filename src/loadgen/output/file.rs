//! NDJSON files: one click-event JSON object per line (malformed records as they are), split
//! over `events-{k:03}.ndjson` by impression like Kafka partitions, so a file is a
//! partition's worth of traffic in order.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::Sink;
use crate::loadgen::encode::{Format, event_record};
use crate::loadgen::traffic::Emission;

pub struct FileSink {
    files: Vec<(PathBuf, BufWriter<File>)>,
}

/// The name of shard `k`'s file.
pub fn file_name(k: u32) -> String {
    format!("events-{k:03}.ndjson")
}

impl FileSink {
    /// Creates (or truncates) `files` files in `dir`. Refuses to run beside other
    /// `events-*.ndjson` files: a reader of the directory would count them too.
    pub fn create(dir: &Path, files: u32) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ours: Vec<String> = (0..files).map(file_name).collect();
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with("events-") && name.ends_with(".ndjson") && !ours.contains(&name) {
                bail!(
                    "{} already holds {name} from another run; remove it or use another --out-dir",
                    dir.display()
                );
            }
        }
        let files = ours
            .into_iter()
            .map(|name| {
                let path = dir.join(name);
                let file =
                    File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                Ok((path, BufWriter::with_capacity(1 << 20, file)))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { files })
    }
}

impl Sink for FileSink {
    fn send(&mut self, e: &Emission) -> anyhow::Result<()> {
        let (path, w) = &mut self.files[e.shard as usize];
        let mut line = event_record(e, Format::Json);
        line.push(b'\n');
        w.write_all(&line)
            .with_context(|| format!("writing {}", path.display()))
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        for (path, w) in &mut self.files {
            w.flush()
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        for (path, w) in &mut self.files {
            w.flush()
                .and_then(|()| w.get_ref().sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_foreign_event_files_but_reuses_its_own() {
        let dir = tempfile::tempdir().unwrap();
        FileSink::create(dir.path(), 3).unwrap();
        FileSink::create(dir.path(), 3).unwrap();
        let err = FileSink::create(dir.path(), 2).err().unwrap();
        assert!(err.to_string().contains("events-002.ndjson"), "{err}");
        std::fs::write(dir.path().join("notes.txt"), "hi").unwrap();
        FileSink::create(dir.path(), 4).unwrap();
        assert_eq!(file_name(7), "events-007.ndjson");
    }
}
