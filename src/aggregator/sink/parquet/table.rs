//! Parquet files that become visible only with the checkpoint they belong to.
//!
//! The sinks (final windows, the raw archive) write each epoch's rows to files named
//! `part-{F}…parquet.pending`, `F` being the checkpoint frontier that closes the epoch. Once
//! `F`'s manifest is on disk, every pending file up to `F` is renamed to `.parquet`; at start,
//! pending files of the restored checkpoint or earlier are renamed (the crash came between
//! manifest and rename) and later ones deleted (the restored run writes them again). Readers
//! (DuckDB, pyarrow) read `*.parquet` only, so they see each epoch whole or not at all, and
//! each row once: epochs never overlap.
//!
//! The tables are flat: UTF-8 strings, 64-bit integers, booleans and binary (a reach sketch's
//! bytes), written with the low-level column API (no Arrow dependency for small schemas).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::SerializedFileReader;
use parquet::file::writer::SerializedFileWriter;
use parquet::record::Field;

/// One column's values.
pub enum Column {
    Text(Vec<String>),
    Long(Vec<i64>),
    /// Milliseconds since the epoch, typed as a UTC timestamp for readers.
    Millis(Vec<i64>),
    Bool(Vec<bool>),
    /// Bytes, not text (BYTE_ARRAY without a UTF8 annotation).
    Bytes(Vec<Vec<u8>>),
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Column::Text(v) => v.len(),
            Column::Long(v) | Column::Millis(v) => v.len(),
            Column::Bool(v) => v.len(),
            Column::Bytes(v) => v.len(),
        }
    }

    fn schema(&self, name: &str) -> String {
        match self {
            Column::Text(_) => format!("REQUIRED BYTE_ARRAY {name} (UTF8);"),
            Column::Long(_) => format!("REQUIRED INT64 {name};"),
            Column::Millis(_) => format!("REQUIRED INT64 {name} (TIMESTAMP(MILLIS,true));"),
            Column::Bool(_) => format!("REQUIRED BOOLEAN {name};"),
            Column::Bytes(_) => format!("REQUIRED BYTE_ARRAY {name};"),
        }
    }
}

/// Writes `columns` (all of one length) as one row group to `path`, synced.
pub fn write_table(path: &Path, columns: &[(&str, Column)]) -> anyhow::Result<()> {
    let rows = columns.first().map_or(0, |(_, c)| c.len());
    anyhow::ensure!(
        columns.iter().all(|(_, c)| c.len() == rows),
        "columns of different lengths"
    );
    let fields: String = columns.iter().map(|(n, c)| c.schema(n)).collect();
    let schema = parquet::schema::parser::parse_message_type(&format!("message t {{ {fields} }}"))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props))?;
    let mut group = writer.next_row_group()?;
    for (_, column) in columns {
        let mut col = group.next_column()?.context("a column per schema field")?;
        match column {
            Column::Text(v) => {
                let values: Vec<ByteArray> = v.iter().map(|s| s.as_str().into()).collect();
                col.typed::<ByteArrayType>()
                    .write_batch(&values, None, None)?;
            }
            Column::Long(v) | Column::Millis(v) => {
                col.typed::<Int64Type>().write_batch(v, None, None)?;
            }
            Column::Bool(v) => {
                col.typed::<BoolType>().write_batch(v, None, None)?;
            }
            Column::Bytes(v) => {
                let values: Vec<ByteArray> = v.iter().map(|b| b.clone().into()).collect();
                col.typed::<ByteArrayType>()
                    .write_batch(&values, None, None)?;
            }
        }
        col.close()?;
    }
    group.close()?;
    let file = writer.into_inner()?;
    file.sync_all()?;
    Ok(())
}

/// A value read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Long(i64),
    Bool(bool),
    Bytes(Vec<u8>),
}

/// Every row of a file, as (column name, value) pairs in schema order.
pub fn read_table(path: &Path) -> anyhow::Result<Vec<Vec<(String, Value)>>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = SerializedFileReader::new(file)?;
    let mut rows = Vec::new();
    for row in reader.get_row_iter(None)? {
        let row = row?;
        let values = row
            .get_column_iter()
            .map(|(name, field)| {
                let v = match field {
                    Field::Str(s) => Value::Text(s.clone()),
                    Field::Long(n) => Value::Long(*n),
                    Field::TimestampMillis(n) => Value::Long(*n),
                    Field::Bool(b) => Value::Bool(*b),
                    Field::Bytes(b) => Value::Bytes(b.data().to_vec()),
                    other => anyhow::bail!("column {name}: unexpected {other:?}"),
                };
                Ok((name.clone(), v))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        rows.push(values);
    }
    Ok(rows)
}

/// The pending file of epoch `f` named `name` in `dir`.
pub fn pending_path(dir: &Path, f: u64, name: &str) -> PathBuf {
    dir.join(format!("part-{f:020}{name}.parquet.pending"))
}

/// The epoch frontier in a pending file's name.
fn pending_epoch(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".parquet.pending")?;
    name.strip_prefix("part-")?.get(..20)?.parse().ok()
}

fn pending_files(root: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            pending_files(&path, out)?;
        } else if pending_epoch(&path).is_some() {
            out.push(path);
        }
    }
    Ok(())
}

/// Publishes every pending file under `root` of an epoch up to `f`.
pub fn commit(root: &Path, f: u64) -> anyhow::Result<()> {
    let mut files = Vec::new();
    pending_files(root, &mut files)?;
    for path in files {
        if pending_epoch(&path).is_some_and(|e| e <= f) {
            let published = path.with_extension(""); // drops ".pending"
            std::fs::rename(&path, &published)
                .with_context(|| format!("publishing {}", path.display()))?;
        }
    }
    Ok(())
}

/// At start, after restoring checkpoint `g` (or none): publishes the pending files up to `g`
/// and deletes the later ones, and withdraws published files of epochs after `g`, which the
/// restored run writes again. Those exist only when the restore fell back past a checkpoint
/// it could not read (its epochs were published) or a finished `--until-end` job runs again
/// (its last epoch, `u64::MAX`): left, they would hold those windows and clicks twice.
pub fn recover(root: &Path, g: Option<u64>) -> anyhow::Result<()> {
    let mut files = Vec::new();
    if let Some(g) = g {
        commit(root, g)?;
        published_files(root, &mut files)?;
        files.retain(|p| published_epoch(p).is_some_and(|e| e > g));
    }
    pending_files(root, &mut files)?;
    for path in files {
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// The epoch frontier in a published file's name.
fn published_epoch(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".parquet")?;
    name.strip_prefix("part-")?.get(..20)?.parse().ok()
}

fn published_files(root: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            published_files(&path, out)?;
        } else if published_epoch(&path).is_some() {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_reads_back_and_pending_files_publish_only_with_their_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let hour = root.join("hour=2026-11-22T17");
        std::fs::create_dir_all(&hour).unwrap();
        let table = |n: i64| {
            vec![
                ("ad_id", Column::Text(vec![format!("ad_{n}")])),
                ("clicks", Column::Long(vec![n])),
                ("window_start", Column::Millis(vec![60_000 * n])),
            ]
        };
        for f in [10, 20, 30] {
            write_table(&pending_path(&hour, f, "-w0"), &table(f as i64)).unwrap();
        }
        let published = |root: &Path| {
            let mut names: Vec<String> = std::fs::read_dir(root.join("hour=2026-11-22T17"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        commit(root, 10).unwrap();
        // The crash came after checkpoint 20's manifest, before its files were published.
        recover(root, Some(20)).unwrap();
        assert_eq!(
            published(root),
            vec![
                "part-00000000000000000010-w0.parquet",
                "part-00000000000000000020-w0.parquet"
            ]
        );
        let rows = read_table(&hour.join("part-00000000000000000020-w0.parquet")).unwrap();
        assert_eq!(
            rows,
            vec![vec![
                ("ad_id".to_string(), Value::Text("ad_20".into())),
                ("clicks".to_string(), Value::Long(20)),
                ("window_start".to_string(), Value::Long(1_200_000)),
            ]]
        );
        // A restore that fell back to checkpoint 10 (20's parts unreadable): the epoch after
        // it is withdrawn, for the restored run to write again.
        recover(root, Some(10)).unwrap();
        assert_eq!(
            published(root),
            vec!["part-00000000000000000010-w0.parquet"]
        );
    }
}
