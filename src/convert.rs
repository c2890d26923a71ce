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

use crate::archive::cellmeta::{CellArrays, CellSource};
use crate::archive::{ArchiveWriter, IndexDtypes, IndexWidths, WrittenArchive, ARCHIVE_VERSION};
use crate::dtype::{convert_into, Dtype, Element};
use crate::error::{Error, IoContext, Result};
use crate::exact_fit::ExactFit;
use crate::features::{FeatureBlock, FeatureFrame, FeatureIndex};
use crate::h5ad::{Block, H5ad, Layout, MatrixChoice};
use crate::obs::{ObsChoice, ObsIndex};
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
    /// Which obs columns go into `obs_features/` (the index always, unless none).
    pub obs: crate::obs::ObsChoice,
    /// Which obsp graph becomes the archive's neighbors (`auto`: bionemo's default key if present).
    pub neighbors: crate::archive::cellmeta::NeighborChoice,
    /// Which obsm keys go into `obsm/`.
    pub obsm: crate::archive::cellmeta::ObsmChoice,
    /// Lower this process's file-size limit to the computed output size before writing (for
    /// worker processes, whose only job is this conversion).
    pub cap_file_size: bool,
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
    let labels: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    convert_labelled(files, &labels, output, opts, progress)
}

/// As `convert_files`, with each file's feature block labelled `labels[i]` (a confined worker
/// reads its inputs through descriptors, `/proc/self/fd/N`, but labels them by their real paths).
pub fn convert_labelled(
    files: &[PathBuf],
    labels: &[String],
    output: &Path,
    opts: &ConvertOptions,
    progress: &dyn Progress,
) -> Result<WrittenArchive> {
    assert_eq!(files.len(), labels.len());
    if output.symlink_metadata().is_ok() {
        return Err(Error::Usage(format!(
            "{}: already exists",
            output.display()
        )));
    }
    // Everything is checked before anything is written, cheapest first: the declared shapes
    // (is there room for the output?), then whether the file really holds the data it
    // declares, then (for --data-dtype auto) its values, then the var dataframes, which are
    // read whole. The index widths follow from the shapes alone.
    let sources = files
        .iter()
        .map(|f| Source::open(f, &opts.matrix))
        .collect::<Result<Vec<_>>>()?;
    let total_rows: u64 = sources.iter().map(|s| s.rows).sum();
    let widths = index_widths(&sources, opts.index_dtypes);
    let cells: Vec<CellSource> = sources
        .iter()
        .map(|s| CellSource {
            h5: &s.h5,
            rows: s.rows,
        })
        .collect();
    let meta = CellArrays::plan(&cells, &opts.neighbors, &opts.obsm)?;
    let obs_bytes = metadata_bytes(files, &opts.obs, &meta, total_rows);
    let needed_for = |t: Dtype| disk_bytes(&sources, t, widths).saturating_add(obs_bytes);
    let target = archive_dtype(&sources, opts.data_dtype, output, &needed_for)?;
    let needed = needed_for(target);
    let frames = sources
        .iter()
        .map(|s| Ok(FeatureFrame::from_var(s.h5.dataframe(&s.var, s.cols)?)))
        .collect::<Result<Vec<_>>>()?;
    let obs = read_obs(&sources, labels, &opts.obs)?;
    if opts.cap_file_size {
        crate::space::cap_file_size(needed.saturating_add(needed / 16 + (64 << 20)))?;
    }
    progress.start(total_rows);
    let mut writer = ArchiveWriter::create(output, target, widths)?;
    let scratch = writer.scratch_dir()?;
    let mut features = FeatureIndex::new(ARCHIVE_VERSION);
    for ((s, frame), label) in sources.iter().zip(frames).zip(labels) {
        let m = s.h5.matrix(&s.matrix)?;
        with_element_type!(s.dtype, S => with_element_type!(target, T => {
            stream_into::<S, T>(&s.h5, &m, &scratch, &mut writer, opts.allow_lossy, progress)?
        }));
        features.push(FeatureBlock {
            rows: s.rows,
            label: label.clone(),
            frame,
        });
    }
    meta.write(&cells, &mut writer, &scratch)?;
    if let Some(obs) = obs {
        writer.set_obs(obs);
    }
    writer.finish(&features)
}

/// The archive's data type, with the room for the output checked for it. A fixed type (or
/// `keep`) is checked for room before the values are known to be stored in the file (the
/// cheaper check first); `auto` reads every value, so only after.
fn archive_dtype(
    sources: &[Source],
    choice: DataDtypeChoice,
    output: &Path,
    needed_for: &dyn Fn(Dtype) -> u64,
) -> Result<Dtype> {
    let fixed = match choice {
        DataDtypeChoice::Fixed(d) => Some(d),
        DataDtypeChoice::Keep => sources
            .iter()
            .map(|s| s.dtype.unsigned_counterpart())
            .reduce(crate::dtype::promote)
            .or(Some(Dtype::F32)),
        DataDtypeChoice::Auto => None,
    };
    if let Some(t) = fixed {
        crate::space::ensure_room(output, needed_for(t))?;
    }
    for s in sources {
        s.h5.matrix(&s.matrix)?.check_backed_by_storage()?;
    }
    let Some(target) = fixed else {
        let t = smallest_exact_dtype(sources)?;
        crate::space::ensure_room(output, needed_for(t))?;
        return Ok(t);
    };
    Ok(target)
}

/// The most disk the per-cell metadata takes: obs_features/ holds what the inputs' obs hold
/// (their files' sizes bound it), and the graph and obsm files.
fn metadata_bytes(files: &[PathBuf], obs: &ObsChoice, meta: &CellArrays, rows: u64) -> u64 {
    let obs_bytes: u64 = match obs {
        ObsChoice::None => 0,
        _ => files
            .iter()
            .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
            .sum(),
    };
    obs_bytes.saturating_add(meta.disk_bytes(rows))
}

/// The obs of every source, one block per source (merged when their columns agree); None with
/// `--obs none`.
fn read_obs(sources: &[Source], labels: &[String], choice: &ObsChoice) -> Result<Option<ObsIndex>> {
    if *choice == ObsChoice::None {
        return Ok(None);
    }
    let mut obs = ObsIndex::new(ARCHIVE_VERSION);
    for (s, label) in sources.iter().zip(labels) {
        let frame = crate::obs::select(s.h5.obs(s.rows)?, choice, s.h5.path())?;
        obs.push(frame, label.clone());
    }
    Ok(Some(obs))
}

/// An opened input file and what its matrix declares.
struct Source {
    h5: H5ad,
    matrix: String,
    var: String,
    rows: u64,
    cols: u64,
    dtype: Dtype,
    /// At most this many values (nnz, or every cell of a dense matrix).
    max_values: u64,
    /// CSC is transposed through scratch files as large as its values.
    csc: bool,
}

impl Source {
    fn open(file: &Path, choice: &MatrixChoice) -> Result<Source> {
        let h5 = H5ad::open(file)?;
        let (matrix, var) = h5.locate(choice)?;
        let m = h5.matrix(&matrix)?;
        let (rows, cols, dtype) = (m.n_rows, m.n_cols, m.dtype);
        let (max_values, csc) = (m.max_values(), m.layout == Layout::Csc);
        drop(m);
        Ok(Source {
            h5,
            matrix,
            var,
            rows,
            cols,
            dtype,
            max_values,
            csc,
        })
    }
}

/// The index widths of `sources` stacked, from the most values they can hold (a dense source's
/// non-zeros are only counted while it is converted) and their widest feature block.
fn index_widths(sources: &[Source], index: IndexDtypes) -> IndexWidths {
    let values = sources
        .iter()
        .fold(0u64, |n, s| n.saturating_add(s.max_values));
    let columns = sources.iter().map(|s| s.cols).max().unwrap_or(0);
    IndexWidths::for_shape(index, values, columns)
}

/// `--data-dtype auto`: one pass over every source's values (nothing else is read).
fn smallest_exact_dtype(sources: &[Source]) -> Result<Dtype> {
    let mut fit = ExactFit::default();
    for s in sources {
        let m = s.h5.matrix(&s.matrix)?;
        with_element_type!(s.dtype, S => m.for_each_value_block::<S>(&mut |vals| {
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

/// The most disk the conversion of `sources` into `target` takes at once, known before a byte
/// is written: the archive, plus a CSC input's transpose scratch (12 bytes of row and column
/// and the value, per value), which exists while the archive is being written.
fn disk_bytes(sources: &[Source], target: Dtype, widths: IndexWidths) -> u64 {
    let sum = |f: fn(&Source) -> u64| sources.iter().map(f).fold(0u64, u64::saturating_add);
    let archive = crate::space::archive_bytes(
        sum(|s| s.rows),
        sum(|s| s.max_values),
        target,
        widths,
        sum(|s| s.cols),
        sources.len() as u64,
    );
    let scratch = sources
        .iter()
        .filter(|s| s.csc)
        .map(|s| s.max_values.saturating_mul(12 + s.dtype.size() as u64))
        .max()
        .unwrap_or(0);
    archive.saturating_add(scratch)
}

/// Values converted and appended at a time (256 KiB of float32): the writer's buffers stay this
/// small, whatever the size of the blocks read.
const WRITE_PIECE: usize = 64 << 10;

/// Converts `block`'s values to `T` and appends them, a piece at a time in `vals` so that a
/// block is never held twice (as read and as converted); `Ok(Err(i))`: value `i` of the block
/// does not convert exactly.
fn append_converted<S: Element, T: Element>(
    block: &Block<S>,
    vals: &mut Vec<T>,
    writer: &mut ArchiveWriter,
    allow_lossy: bool,
) -> Result<Result<(), usize>> {
    let pieces = block
        .vals
        .chunks(WRITE_PIECE)
        .zip(block.cols.chunks(WRITE_PIECE));
    for (p, (src, cols)) in pieces.enumerate() {
        vals.clear();
        if let Err(i) = convert_into(src, vals, allow_lossy) {
            return Ok(Err(p * WRITE_PIECE + i));
        }
        writer.append_elements(cols, vals)?;
    }
    Ok(Ok(()))
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
            let mut vals: Vec<T> = Vec::with_capacity(WRITE_PIECE);
            for block in rx {
                if S::DTYPE == T::DTYPE {
                    // Nothing to convert: the values are written as they were read.
                    let same: &[T] = bytemuck::cast_slice(&block.vals);
                    writer.append_elements(&block.cols, same)?;
                } else if let Err(i) = append_converted(&block, &mut vals, writer, allow_lossy)? {
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
