//! The feature index of an SCDL archive (`features/`): which genes (var rows) describe which
//! block of cells. Stored as BioNeMo stores it: `dataframe_<i>.parquet` per block,
//! `cumulative_sum_index.npy` (int64: -1, then each block's end row), `labels.npy` (a unicode
//! array, never pickled) and `version.npy`.
//!
//! Unlike BioNeMo, the var index (the gene ids) is always kept as a column.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;

use crate::error::{Error, IoContext, Result};
use crate::h5ad::{Column, DataFrame};
use crate::npy;

/// Column name for an unnamed var index (bionemo-scdl 0.1.3's name for it).
pub const UNNAMED_INDEX_COLUMN: &str = "var_feature_id";

/// The genes of one block: its columns, each `num_vars` long.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureFrame {
    pub num_vars: u64,
    pub columns: Vec<(String, Column)>,
}

impl FeatureFrame {
    /// The var dataframe as stored: the index first (as a column), then the columns.
    pub fn from_var(var: DataFrame) -> FeatureFrame {
        Self::with_index_column(var, UNNAMED_INDEX_COLUMN)
    }

    /// A dataframe as stored: its index first, as a column named after the index (`unnamed`
    /// when anndata's default name says it has none), then its columns.
    pub fn with_index_column(var: DataFrame, unnamed: &str) -> FeatureFrame {
        let mut name = match var.index_name.as_str() {
            "_index" | "index" | "" => unnamed.to_string(),
            other => other.to_string(),
        };
        let index = Column::Str(var.index.into_iter().map(Some).collect());
        let duplicate = var.columns.iter().any(|(n, c)| n == &name && *c == index);
        let mut columns = Vec::with_capacity(var.columns.len() + 1);
        if !duplicate {
            while var.columns.iter().any(|(n, _)| n == &name) {
                name.push_str("_index");
            }
            columns.push((name, index));
        }
        let num_vars = columns
            .first()
            .map(|(_, c)| c.len())
            .or_else(|| var.columns.first().map(|(_, c)| c.len()))
            .unwrap_or(0) as u64;
        columns.extend(var.columns);
        FeatureFrame { num_vars, columns }
    }
}

/// A block: `rows` consecutive cells described by `frame`.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureBlock {
    pub rows: u64,
    pub label: String,
    pub frame: FeatureFrame,
}

/// The whole index: blocks in row order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeatureIndex {
    pub blocks: Vec<FeatureBlock>,
    /// The version string stored in `version.npy`.
    pub version: String,
}

impl FeatureIndex {
    pub fn new(version: &str) -> FeatureIndex {
        FeatureIndex {
            blocks: Vec::new(),
            version: version.to_string(),
        }
    }

    /// Appends a block; merges it into the previous one when the features are identical (as
    /// bionemo-scdl 0.1.3 does), so consecutive parts with one gene set form one block.
    pub fn push(&mut self, block: FeatureBlock) {
        if let Some(last) = self.blocks.last_mut() {
            if last.frame == block.frame {
                last.rows += block.rows;
                return;
            }
        }
        self.blocks.push(block);
    }

    pub fn num_rows(&self) -> u64 {
        self.blocks.iter().map(|b| b.rows).sum()
    }

    /// [-1, end of block 0, end of block 1, ...].
    pub fn cumulative_sum_index(&self) -> Vec<i64> {
        let mut out = vec![-1i64];
        let mut end = 0i64;
        for b in &self.blocks {
            end += b.rows as i64;
            out.push(end);
        }
        out
    }

    /// The block holding `row`, with the first row of that block.
    pub fn block_of_row(&self, row: u64) -> Option<(usize, u64)> {
        let mut start = 0;
        for (i, b) in self.blocks.iter().enumerate() {
            if row < start + b.rows {
                return Some((i, start));
            }
            start += b.rows;
        }
        None
    }

    fn file_name(i: usize, n: usize) -> String {
        let width = n.to_string().len();
        format!("dataframe_{i:0width$}.parquet")
    }

    /// Writes the index into directory `dir` (created).
    pub fn write(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).at(dir)?;
        let n = self.blocks.len();
        for (i, b) in self.blocks.iter().enumerate() {
            write_parquet(&dir.join(Self::file_name(i, n)), &b.frame)?;
        }
        let csum = dir.join("cumulative_sum_index.npy");
        fs::write(&csum, npy::int64_array(&self.cumulative_sum_index())).at(&csum)?;
        let labels: Vec<String> = self.blocks.iter().map(|b| b.label.clone()).collect();
        let lp = dir.join("labels.npy");
        fs::write(&lp, npy::unicode_array(&labels, &[labels.len() as u64])).at(&lp)?;
        let vp = dir.join("version.npy");
        fs::write(
            &vp,
            npy::unicode_array(std::slice::from_ref(&self.version), &[]),
        )
        .at(&vp)?;
        Ok(())
    }

    /// Reads an index written by us or by bionemo-scdl (0.0.5 or 0.1.3).
    pub fn read(dir: &Path) -> Result<FeatureIndex> {
        let ends = read_cumulative_sum_index(dir)?;
        let labels = read_labels(dir)?;
        let version = fs::read(dir.join("version.npy"))
            .ok()
            .and_then(|b| match npy::read_array(&b) {
                Ok(npy::NpyArray::Unicode(v)) => v.into_iter().next(),
                _ => None,
            })
            .unwrap_or_default();
        let parquets = parquet_files(dir)?;
        if ends.len() != parquets.len() {
            return Err(Error::archive(
                dir,
                format!(
                    "cumulative_sum_index.npy has {} block ends but there are {} parquet files",
                    ends.len(),
                    parquets.len()
                ),
            ));
        }
        let mut blocks = Vec::with_capacity(parquets.len());
        let mut start = 0u64;
        for (i, (p, &end)) in parquets.iter().zip(&ends).enumerate() {
            blocks.push(FeatureBlock {
                rows: end - start,
                label: labels.get(i).cloned().unwrap_or_default(),
                frame: read_parquet(p)?,
            });
            start = end;
        }
        Ok(FeatureIndex { blocks, version })
    }
}

/// The block labels: `labels.json` (bionemo-scdl after 0.1.3: a JSON list of strings or nulls,
/// null read as ""), else `labels.npy` (a unicode array, never unpickled), else none.
fn read_labels(dir: &Path) -> Result<Vec<String>> {
    let json_path = dir.join("labels.json");
    if let Ok(text) = fs::read_to_string(&json_path) {
        let v: Vec<Option<String>> = serde_json::from_str(&text).map_err(|e| {
            Error::archive(
                &json_path,
                format!("not a JSON list of strings or nulls: {e}"),
            )
        })?;
        return Ok(v.into_iter().map(Option::unwrap_or_default).collect());
    }
    Ok(match fs::read(dir.join("labels.npy")) {
        Ok(b) => match npy::read_array(&b) {
            Ok(npy::NpyArray::Unicode(v)) => v,
            _ => Vec::new(),
        },
        Err(_) => Vec::new(),
    })
}

/// The block ends of a feature directory's `cumulative_sum_index.npy` ([-1, end0, end1, ...]
/// read as [end0, end1, ...]), checked to start at -1 and never decrease.
pub fn read_cumulative_sum_index(dir: &Path) -> Result<Vec<u64>> {
    let bad = |m: String| Error::archive(dir, m);
    let path = dir.join("cumulative_sum_index.npy");
    let csum = match npy::read_array(&fs::read(&path).at(&path)?) {
        Ok(npy::NpyArray::Int64(v)) => v,
        Ok(_) => return Err(bad("cumulative_sum_index.npy is not int64".into())),
        Err(e) => return Err(bad(format!("cumulative_sum_index.npy: {e}"))),
    };
    if csum.first() != Some(&-1) {
        return Err(bad("cumulative_sum_index.npy does not start with -1".into()));
    }
    let mut prev = 0i64;
    let mut ends = Vec::with_capacity(csum.len() - 1);
    for (i, &e) in csum[1..].iter().enumerate() {
        if e < prev {
            return Err(bad(format!(
                "cumulative_sum_index.npy decreases at block {i}"
            )));
        }
        ends.push(e as u64);
        prev = e;
    }
    Ok(ends)
}

/// The parquet files of a feature directory, in the order bionemo loads them (sorted paths).
pub fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .at(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    out.sort();
    Ok(out)
}

fn to_arrow(col: &Column) -> ArrayRef {
    match col {
        Column::Str(v) => Arc::new(StringArray::from(v.clone())),
        Column::Int(v) => Arc::new(Int64Array::from(v.clone())),
        Column::UInt(v) => Arc::new(UInt64Array::from(v.clone())),
        Column::Float(v) => Arc::new(Float64Array::from(v.clone())),
        Column::Bool(v) => Arc::new(BooleanArray::from(v.clone())),
    }
}

fn write_parquet(path: &Path, frame: &FeatureFrame) -> Result<()> {
    let file = fs::File::create(path).at(path)?;
    write_parquet_to(file, frame).map_err(|e| Error::archive(path, e))
}

/// `frame` as a parquet file in memory (the mount's `obs/<a>-<b>.parquet`).
pub(crate) fn parquet_bytes(frame: &FeatureFrame) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    write_parquet_to(&mut out, frame)?;
    Ok(out)
}

fn write_parquet_to<W: std::io::Write + Send>(
    out: W,
    frame: &FeatureFrame,
) -> std::result::Result<(), String> {
    let fail = |e: parquet::errors::ParquetError| e.to_string();
    let fields: Vec<Field> = frame
        .columns
        .iter()
        .map(|(name, col)| Field::new(name, to_arrow(col).data_type().clone(), true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let arrays: Vec<ArrayRef> = frame.columns.iter().map(|(_, c)| to_arrow(c)).collect();
    let batch = if arrays.is_empty() {
        RecordBatch::new_empty(schema.clone())
    } else {
        RecordBatch::try_new(schema.clone(), arrays).map_err(|e| e.to_string())?
    };
    // Snappy, as pandas writes them (what bionemo-scdl's own parquet files use): a block of
    // 200,000 cell ids takes 1.2 MB instead of 2.9 MB.
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut w = ArrowWriter::try_new(out, schema, Some(props)).map_err(fail)?;
    w.write(&batch).map_err(fail)?;
    w.close().map_err(fail)?;
    Ok(())
}

fn from_arrow(path: &Path, name: &str, array: &dyn Array) -> Result<Column> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    let n = array.len();
    let opt = |i: usize| !array.is_null(i);
    macro_rules! prim {
        ($t:ty, $variant:ident, $conv:expr) => {{
            let a = array.as_primitive::<$t>();
            Column::$variant((0..n).map(|i| opt(i).then(|| $conv(a.value(i)))).collect())
        }};
    }
    Ok(match array.data_type() {
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            Column::Str(
                (0..n)
                    .map(|i| opt(i).then(|| a.value(i).to_string()))
                    .collect(),
            )
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            Column::Str(
                (0..n)
                    .map(|i| opt(i).then(|| a.value(i).to_string()))
                    .collect(),
            )
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            Column::Str(
                (0..n)
                    .map(|i| opt(i).then(|| a.value(i).to_string()))
                    .collect(),
            )
        }
        DataType::Boolean => {
            let a = array.as_boolean();
            Column::Bool((0..n).map(|i| opt(i).then(|| a.value(i))).collect())
        }
        DataType::Int8 => prim!(Int8Type, Int, i64::from),
        DataType::Int16 => prim!(Int16Type, Int, i64::from),
        DataType::Int32 => prim!(Int32Type, Int, i64::from),
        DataType::Int64 => prim!(Int64Type, Int, |v| v),
        DataType::UInt8 => prim!(UInt8Type, UInt, u64::from),
        DataType::UInt16 => prim!(UInt16Type, UInt, u64::from),
        DataType::UInt32 => prim!(UInt32Type, UInt, u64::from),
        DataType::UInt64 => prim!(UInt64Type, UInt, |v| v),
        DataType::Float16 => prim!(Float16Type, Float, |v: half::f16| v.to_f64()),
        DataType::Float32 => prim!(Float32Type, Float, f64::from),
        DataType::Float64 => prim!(Float64Type, Float, |v| v),
        DataType::Dictionary(_, _) => {
            // pandas categoricals: decode through the dictionary.
            let dict = array.as_any_dictionary();
            let values = from_arrow(path, name, dict.values().as_ref())?;
            let all_keys = dict.normalized_keys();
            let keys: Vec<Option<usize>> = (0..n).map(|i| opt(i).then(|| all_keys[i])).collect();
            let pick = |k: Option<usize>| -> Option<String> {
                let k = k?;
                match &values {
                    Column::Str(v) => v.get(k).cloned().flatten(),
                    Column::Int(v) => v.get(k).copied().flatten().map(|x| x.to_string()),
                    Column::UInt(v) => v.get(k).copied().flatten().map(|x| x.to_string()),
                    Column::Float(v) => v.get(k).copied().flatten().map(|x| x.to_string()),
                    Column::Bool(v) => v.get(k).copied().flatten().map(|x| x.to_string()),
                }
            };
            Column::Str(keys.into_iter().map(pick).collect())
        }
        other => {
            return Err(Error::archive(
                path,
                format!("column '{name}' has unsupported type {other}"),
            ))
        }
    })
}

/// A feature parquet file, in memory (feature files are small: one row per gene), whose readers
/// fail after a few reads past its end. The parquet crate (60.1) skips the fields of a corrupt
/// page header (a thrift list claiming 2^31 UUIDs) with reads that return nothing at end of input
/// and goes on, up to 2^31 times: minutes of a daemon thread (rescan holds the registry lock) for
/// a 2 KB file. Found by fuzzing (fuzz/seeds/archive/parquet-header-loop); a valid file never
/// reads past its end more than once or twice.
struct ParquetInput(bytes::Bytes);

/// Reads past the end that are answered with 0 bytes before a reader fails.
const PARQUET_EOF_READS: u32 = 64;

struct EofLimited {
    rest: bytes::Bytes,
    eof_reads: u32,
}

impl std::io::Read for EofLimited {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.rest.is_empty() && !buf.is_empty() {
            self.eof_reads += 1;
            if self.eof_reads > PARQUET_EOF_READS {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "corrupt parquet: reads past the end of the file",
                ));
            }
            return Ok(0);
        }
        let n = buf.len().min(self.rest.len());
        buf[..n].copy_from_slice(&self.rest.split_to(n));
        Ok(n)
    }
}

impl parquet::file::reader::Length for ParquetInput {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
}

impl parquet::file::reader::ChunkReader for ParquetInput {
    type T = EofLimited;

    fn get_read(&self, start: u64) -> parquet::errors::Result<EofLimited> {
        let start = usize::try_from(start).unwrap_or(usize::MAX);
        if start > self.0.len() {
            return Err(parquet::errors::ParquetError::EOF(format!(
                "read at {start} of a {}-byte file",
                self.0.len()
            )));
        }
        Ok(EofLimited {
            rest: self.0.slice(start..),
            eof_reads: 0,
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        self.0.get_bytes(start, length)
    }
}

/// Reads a feature parquet file. The parquet and arrow crates assert on some corrupt inputs
/// (found by fuzzing: a definition-level run past the end of its buffer trips an assert in
/// arrow-buffer's `BitChunks::new`). A corrupt feature file must fail its archive, not take a
/// thread of the daemon down — the rescan opens archives holding the registry lock, which a
/// panic would poison. So a panic while decoding becomes this file's error.
fn read_parquet(path: &Path) -> Result<FeatureFrame> {
    std::panic::catch_unwind(|| read_parquet_unguarded(path)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Error::archive(
            path,
            format!("corrupt parquet file (the parquet reader panicked: {what})"),
        ))
    })
}

fn read_parquet_unguarded(path: &Path) -> Result<FeatureFrame> {
    let fail = |e: String| Error::archive(path, e);
    let input = ParquetInput(bytes::Bytes::from(fs::read(path).at(path)?));
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(input).map_err(|e| fail(e.to_string()))?;
    let rows = builder.metadata().file_metadata().num_rows();
    let num_vars =
        u64::try_from(rows).map_err(|_| fail(format!("parquet row count {rows} is negative")))?;
    let schema = builder.schema().clone();
    let reader = builder.build().map_err(|e| fail(e.to_string()))?;
    let mut columns: Vec<(String, Column)> = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| fail(e.to_string()))?;
        for (i, field) in schema.fields().iter().enumerate() {
            let col = from_arrow(path, field.name(), batch.column(i).as_ref())?;
            match columns.get_mut(i) {
                Some((_, existing)) => append(existing, col),
                None => columns.push((field.name().clone(), col)),
            }
        }
    }
    if columns.is_empty() {
        // A file with no batches still has its schema.
        for field in schema.fields() {
            let empty = arrow_array::new_empty_array(field.data_type());
            columns.push((
                field.name().clone(),
                from_arrow(path, field.name(), empty.as_ref())?,
            ));
        }
    }
    // The width of every rendered row comes from num_vars: it must be what the columns hold.
    if let Some((name, c)) = columns.iter().find(|(_, c)| c.len() as u64 != num_vars) {
        return Err(fail(format!(
            "column '{name}' has {} values but the file says {num_vars} rows",
            c.len()
        )));
    }
    Ok(FeatureFrame { num_vars, columns })
}

fn append(into: &mut Column, more: Column) {
    if into.extend(more).is_err() {
        unreachable!("batches of one parquet file share a schema")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ids: &[&str]) -> FeatureFrame {
        FeatureFrame::from_var(DataFrame {
            index_name: "_index".into(),
            index: ids.iter().map(|s| s.to_string()).collect(),
            columns: vec![(
                "n".into(),
                Column::Int(
                    ids.iter()
                        .enumerate()
                        .map(|(i, _)| Some(i as i64))
                        .collect(),
                ),
            )],
        })
    }

    #[test]
    fn index_round_trips_and_merges_identical_neighbours() {
        let mut idx = FeatureIndex::new("0.1.3");
        idx.push(FeatureBlock {
            rows: 5,
            label: "a".into(),
            frame: frame(&["G1", "G2"]),
        });
        idx.push(FeatureBlock {
            rows: 3,
            label: "b".into(),
            frame: frame(&["G1", "G2"]),
        });
        idx.push(FeatureBlock {
            rows: 0,
            label: "c".into(),
            frame: frame(&["G3"]),
        });
        idx.push(FeatureBlock {
            rows: 2,
            label: "d".into(),
            frame: frame(&["G1", "G2"]),
        });
        assert_eq!(idx.blocks.len(), 3);
        assert_eq!(idx.cumulative_sum_index(), vec![-1, 8, 8, 10]);
        assert_eq!(idx.block_of_row(8), Some((2, 8)));
        let dir = tempfile::tempdir().unwrap();
        idx.write(dir.path()).unwrap();
        let back = FeatureIndex::read(dir.path()).unwrap();
        assert_eq!(back, idx);
        assert_eq!(back.blocks[0].frame.columns[0].0, UNNAMED_INDEX_COLUMN);
    }
}
