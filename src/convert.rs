//! Conversion: one .h5ad file, or a directory of them, into one SCDL archive.
//!
//! Two threads form a pipeline: the calling thread reads row blocks out of HDF5 (libhdf5 is
//! serialised by a global lock anyway), a writer thread converts each block's values to the
//! archive's data type (checking that no value changes) and appends it to the archive. At most
//! a few blocks are in flight, so memory stays bounded whatever the input size. Files of a
//! directory are streamed one after the other into the same archive, each becoming a feature
//! block (merged with the previous one when their genes are identical).
//!
//! Everything that decides the archive's types is known once the sources are open, before the
//! first byte is written: the index widths from the number of values and columns
//! (`IndexWidths::for_shape`), the data type from the option (with `auto`, from a first pass
//! that only reads the values, `exact_fit`).

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use crate::archive::{ArchiveWriter, IndexDtypes, IndexWidths, WrittenArchive, ARCHIVE_VERSION};
use crate::dtype::{convert_into, Dtype, Element};
use crate::error::{Error, IoContext, Result};
use crate::exact_fit::ExactFit;
use crate::features::{FeatureBlock, FeatureFrame, FeatureIndex};
use crate::h5ad::{Block, H5ad, MatrixChoice};
use crate::with_element_type;

/// The archive's data type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDtypeChoice {
    /// The source's own type (signed integers become the unsigned type of the same width,
    /// since SCDL has no signed types; a negative value is then reported as a change).
    Keep,
    /// The smallest archive type that stores every value exactly (`exact_fit`).
    Auto,
    Fixed(Dtype),
}

impl Default for DataDtypeChoice {
    /// float32, as bionemo-scdl writes.
    fn default() -> Self {
        DataDtypeChoice::Fixed(Dtype::F32)
    }
}

impl std::str::FromStr for DataDtypeChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "keep" => return Ok(DataDtypeChoice::Keep),
            "auto" => return Ok(DataDtypeChoice::Auto),
            _ => {}
        }
        match Dtype::from_numpy(s) {
            Some(d) if d.is_archive_data_type() => Ok(DataDtypeChoice::Fixed(d)),
            _ => Err(format!(
                "unsupported data dtype '{s}': expected float16, float32, float64, uint8, uint16, uint32, uint64, keep or auto"
            )),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    pub matrix: MatrixChoice,
    pub data_dtype: DataDtypeChoice,
    pub allow_lossy: bool,
    pub index_dtypes: IndexDtypes,
}

/// Receives progress: the total number of rows once known, then rows as they are written.
pub trait Progress: Sync {
    fn start(&self, _total_rows: u64) {}
    fn rows_done(&self, _rows: u64) {}
}

/// No progress reporting.
pub struct Quiet;
impl Progress for Quiet {}

/// The .h5ad files an input names: the file itself, or every `*.h5ad` below a directory,
/// sorted by path (as bionemo's directory conversion orders them).
pub fn input_files(input: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(input).at(input)?;
    if !meta.is_dir() {
        return Ok(vec![input.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![input.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).at(&dir)? {
            let p = entry.at(&dir)?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "h5ad") {
                out.push(p);
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Usage(format!(
            "{}: no .h5ad files in this directory",
            input.display()
        )));
    }
    out.sort();
    Ok(out)
}

/// The smallest archive type that holds both `a` and `b` (for `keep` over several files).
fn promote(a: Dtype, b: Dtype) -> Dtype {
    let (a, b) = (a.unsigned_counterpart(), b.unsigned_counterpart());
    let size = a.size().max(b.size());
    match (a.is_float(), b.is_float()) {
        (false, false) => {
            [Dtype::U8, Dtype::U16, Dtype::U32, Dtype::U64][size.trailing_zeros() as usize]
        }
        (true, true) => [Dtype::F16, Dtype::F32, Dtype::F64][size.trailing_zeros() as usize - 1],
        _ => {
            let (f, i) = if a.is_float() { (a, b) } else { (b, a) };
            // A float wide enough for every value of the integer type where possible.
            if i.size() >= 4 || f == Dtype::F64 {
                Dtype::F64
            } else {
                Dtype::F32
            }
        }
    }
}

/// Converts `input` (a file or a directory of files) into a new archive at `output`.
pub fn convert(
    input: &Path,
    output: &Path,
    opts: &ConvertOptions,
    progress: &dyn Progress,
) -> Result<WrittenArchive> {
    let files = input_files(input)?;
    convert_files(&files, output, opts, progress)
}

/// Converts `files`, in order, into one archive at `output`.
pub fn convert_files(
    files: &[PathBuf],
    output: &Path,
    opts: &ConvertOptions,
    progress: &dyn Progress,
) -> Result<WrittenArchive> {
    if output.symlink_metadata().is_ok() {
        return Err(Error::Usage(format!(
            "{}: already exists",
            output.display()
        )));
    }
    // Open everything first: a bad file is reported before anything is written.
    let mut sources = Vec::with_capacity(files.len());
    for f in files {
        let h5 = H5ad::open(f)?;
        let (matrix, var) = h5.locate(&opts.matrix)?;
        let shape = SourceShape::of(&h5.matrix(&matrix)?);
        let frame = FeatureFrame::from_var(h5.dataframe(&var, shape.cols)?);
        sources.push((h5, matrix, frame, shape));
    }
    let shapes: Vec<SourceShape> = sources.iter().map(|s| s.3).collect();
    let target = match opts.data_dtype {
        DataDtypeChoice::Fixed(d) => d,
        DataDtypeChoice::Keep => shapes
            .iter()
            .map(|s| s.dtype.unsigned_counterpart())
            .reduce(promote)
            .unwrap_or(Dtype::F32),
        DataDtypeChoice::Auto => smallest_exact_dtype(&sources)?,
    };
    let widths = index_widths(&shapes, opts.index_dtypes);
    progress.start(shapes.iter().map(|s| s.rows).sum());
    let mut writer = ArchiveWriter::create(output, target, widths)?;
    let scratch = writer.scratch_dir()?;
    let mut features = FeatureIndex::new(ARCHIVE_VERSION);
    for (h5, matrix, frame, shape) in sources {
        let m = h5.matrix(&matrix)?;
        with_element_type!(shape.dtype, S => with_element_type!(target, T => {
            stream_into::<S, T>(&h5, &m, &scratch, &mut writer, opts.allow_lossy, progress)?
        }));
        features.push(FeatureBlock {
            rows: shape.rows,
            label: h5.path().display().to_string(),
            frame,
        });
    }
    writer.finish(&features)
}

/// What an opened source will contribute, known before anything is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceShape {
    pub rows: u64,
    pub cols: u64,
    /// The most values it can store: its nnz when sparse; rows x columns when dense (its
    /// non-zeros are only counted while it is converted).
    pub max_values: u64,
    pub dtype: Dtype,
}

impl SourceShape {
    pub fn of(m: &crate::h5ad::MatrixReader<'_>) -> SourceShape {
        let max_values = match m.layout {
            crate::h5ad::Layout::Dense => m.n_rows.saturating_mul(m.n_cols),
            _ => m.nnz,
        };
        SourceShape {
            rows: m.n_rows,
            cols: m.n_cols,
            max_values,
            dtype: m.dtype,
        }
    }
}

/// The index widths for `shapes` stacked: from the most values they can hold and their widest
/// feature block.
pub fn index_widths(shapes: &[SourceShape], index: IndexDtypes) -> IndexWidths {
    let values = shapes
        .iter()
        .fold(0u64, |n, s| n.saturating_add(s.max_values));
    let columns = shapes.iter().map(|s| s.cols).max().unwrap_or(0);
    IndexWidths::for_shape(index, values, columns)
}

/// `--data-dtype auto`: one pass over every source's values (nothing else is read).
fn smallest_exact_dtype(sources: &[(H5ad, String, FeatureFrame, SourceShape)]) -> Result<Dtype> {
    let mut fit = ExactFit::default();
    for (h5, matrix, _, shape) in sources {
        let m = h5.matrix(matrix)?;
        with_element_type!(shape.dtype, S => m.for_each_value_block::<S>(&mut |vals| {
            fit.observe(vals);
            Ok(())
        })?);
    }
    fit.smallest().ok_or_else(|| {
        Error::Usage(
            "--data-dtype auto: no SCDL data type holds every value exactly (negative integers beyond 2^53); choose one with --data-dtype and --allow-lossy".into(),
        )
    })
}

/// Streams one matrix into the writer: this thread reads, a scoped thread converts and writes.
fn stream_into<S: Element, T: Element>(
    h5: &H5ad,
    m: &crate::h5ad::MatrixReader<'_>,
    scratch: &Path,
    writer: &mut ArchiveWriter,
    allow_lossy: bool,
    progress: &dyn Progress,
) -> Result<()> {
    let base = writer.nnz();
    let file = h5.path().to_path_buf();
    let location = m.values_location();
    let (tx, rx) = mpsc::sync_channel::<Block<S>>(1);
    std::thread::scope(|scope| {
        let consumer = scope.spawn(move || -> Result<()> {
            let mut vals: Vec<T> = Vec::new();
            for block in rx {
                vals.clear();
                if let Err(i) = convert_into(&block.vals, &mut vals, allow_lossy) {
                    let element = block.first_element + i as u64;
                    return Err(Error::Lossy {
                        file,
                        location,
                        value: block.vals[i].to_string(),
                        row: block.row_of(element),
                        column: block.cols[i] as u64,
                        target: T::DTYPE,
                    });
                }
                writer.append_elements(&block.cols, &vals)?;
                writer.end_rows(block.row_ends.iter().map(|e| e + base))?;
                progress.rows_done(block.row_ends.len() as u64);
            }
            Ok(())
        });
        // A send fails only when the writer stopped on an error; join() returns that error.
        let read = m.stream::<S>(scratch, &mut |block| {
            tx.send(block)
                .map_err(|_| Error::Usage("conversion stopped".into()))
        });
        drop(tx);
        let written = consumer.join().expect("writer thread panicked");
        written.and(read)
    })
}
