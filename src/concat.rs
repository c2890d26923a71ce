//! Concatenation: several archives into one new archive, rows in order, each input's feature
//! blocks kept (consecutive identical blocks merged, as bionemo-scdl 0.1.3 does).
//!
//! The result's index widths come from its shape (all values, the widest feature block), as
//! for a conversion: concat widens when the result needs it and narrows wide inputs.
//! Values and column indices are copied with large sequential copies (copy_file_range) when
//! their types already match the result, else converted in bounded chunks with the same exact
//! check as conversion; row_ptr is rebased in u64 (no 2^32 wrap). Inputs are only read; the
//! result is written atomically, so a failure leaves nothing behind.

use std::path::{Path, PathBuf};

use crate::archive::{
    Archive, ArchiveWriter, IndexDtypes, IndexWidths, WrittenArchive, ARCHIVE_VERSION,
};
use crate::convert::Progress;
use crate::dtype::{convert_into, Dtype, Element};
use crate::error::{Error, Result};
use crate::features::FeatureIndex;
use crate::obs::ObsIndex;
use crate::with_element_type;

/// Elements per chunk when values or columns must be converted.
const CHUNK: u64 = 1 << 20;

/// The result's data type: `wanted` if given; else the common type of the inputs (floats widen
/// to the widest float, unsigned integers to the widest unsigned); mixing integers and floats
/// needs `wanted`.
pub fn result_dtype(inputs: &[(PathBuf, Dtype)], wanted: Option<Dtype>) -> Result<Dtype> {
    if let Some(d) = wanted {
        return Ok(d);
    }
    let widest = |pred: fn(Dtype) -> bool| {
        inputs
            .iter()
            .map(|i| i.1)
            .filter(|d| pred(*d))
            .max_by_key(|d| d.size())
    };
    match (widest(Dtype::is_float), widest(|d| !d.is_float())) {
        (Some(f), None) => Ok(f),
        (None, Some(i)) => Ok(i),
        (None, None) => Ok(Dtype::F32),
        (Some(_), Some(_)) => {
            let list = inputs
                .iter()
                .map(|(p, d)| format!("{} ({d})", p.display()))
                .collect::<Vec<_>>()
                .join(", ");
            Err(Error::Usage(format!(
                "inputs mix integer and float data: {list}; choose the result with --data-dtype"
            )))
        }
    }
}

/// Adds `base` to row_ptr entries (checked: an overflow is an error, never a wrap).
pub fn rebase(entries: &[u64], base: u64) -> Option<Vec<u64>> {
    entries.iter().map(|&e| e.checked_add(base)).collect()
}

/// The index widths of the concatenation of `archives`.
pub fn result_widths(archives: &[Archive], index: IndexDtypes) -> IndexWidths {
    let values = archives.iter().fold(0u64, |n, a| n.saturating_add(a.nnz));
    let columns = archives
        .iter()
        .flat_map(|a| &a.features.blocks)
        .map(|b| b.frame.num_vars)
        .max()
        .unwrap_or(0);
    IndexWidths::for_shape(index, values, columns)
}

/// How a concatenation writes its result.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConcatOptions {
    /// The result's data type (default: the inputs' common type, `result_dtype`).
    pub data_dtype: Option<Dtype>,
    pub allow_lossy: bool,
    pub index_dtypes: IndexDtypes,
}

/// Concatenates `inputs` (archive directories, in order) into a new archive at `output`, with
/// narrow index arrays.
pub fn concat(
    inputs: &[PathBuf],
    output: &Path,
    data_dtype: Option<Dtype>,
    allow_lossy: bool,
    progress: &dyn Progress,
) -> Result<WrittenArchive> {
    let opts = ConcatOptions {
        data_dtype,
        allow_lossy,
        index_dtypes: IndexDtypes::Narrow,
    };
    concat_with(inputs, output, &opts, progress)
}

/// Concatenates `inputs` into a new archive at `output` as `opts` say.
pub fn concat_with(
    inputs: &[PathBuf],
    output: &Path,
    opts: &ConcatOptions,
    progress: &dyn Progress,
) -> Result<WrittenArchive> {
    check_inputs(inputs, output)?;
    let archives = inputs
        .iter()
        .map(|p| Archive::open(p))
        .collect::<Result<Vec<_>>>()?;
    let kinds: Vec<(PathBuf, Dtype)> = archives
        .iter()
        .map(|a| (a.path.clone(), a.data_dtype))
        .collect();
    let target = result_dtype(&kinds, opts.data_dtype)?;
    let widths = result_widths(&archives, opts.index_dtypes);
    let needed = crate::space::archive_bytes(
        archives.iter().map(|a| a.num_rows).sum(),
        archives.iter().map(|a| a.nnz).sum(),
        target,
        widths,
        archives
            .iter()
            .flat_map(|a| &a.features.blocks)
            .map(|b| b.frame.num_vars)
            .sum(),
        archives
            .iter()
            .map(|a| a.features.blocks.len() as u64)
            .sum(),
    );
    let obs_bytes: u64 = archives
        .iter()
        .map(|a| crate::archive::tree_size(&a.path.join(crate::obs::OBS_DIR)))
        .sum();
    let cells = crate::archive::cellmeta::ConcatArrays::plan(&archives)?;
    let obs_bytes = obs_bytes.saturating_add(cells.disk_bytes(&archives));
    crate::space::ensure_room(output, needed.saturating_add(obs_bytes))?;
    progress.start(archives.iter().map(|a| a.num_rows).sum());
    let mut writer = ArchiveWriter::create(output, target, widths)?;
    let obs = concat_obs(&archives)?;
    let mut features = FeatureIndex::new(ARCHIVE_VERSION);
    for a in &archives {
        append_archive(&mut writer, a, opts.allow_lossy, progress)?;
        for b in &a.features.blocks {
            features.push(b.clone());
        }
    }
    cells.write(&archives, &mut writer)?;
    if let Some(obs) = obs {
        writer.set_obs(obs);
    }
    writer.finish(&features)
}

/// At least one input, none given twice, none the output.
pub fn check_inputs(inputs: &[PathBuf], output: &Path) -> Result<()> {
    if inputs.is_empty() {
        return Err(Error::Usage("concat needs at least one input".into()));
    }
    for (i, a) in inputs.iter().enumerate() {
        if inputs[..i].iter().any(|b| same_file(a, b)) {
            return Err(Error::Usage(format!("{}: given twice", a.display())));
        }
        if same_file(a, output) {
            return Err(Error::Usage(format!(
                "{}: is both input and output",
                a.display()
            )));
        }
    }
    Ok(())
}

/// The inputs' obs blocks in order (merged where their columns agree), when every input has
/// obs; an input without obs among inputs with obs is refused, since the result's obs must
/// cover every row and dropping the others' would lose them silently.
fn concat_obs(archives: &[Archive]) -> Result<Option<ObsIndex>> {
    let with: Vec<&Archive> = archives.iter().filter(|a| a.obs.is_some()).collect();
    if with.is_empty() {
        return Ok(None);
    }
    if let Some(without) = archives.iter().find(|a| a.obs.is_none()) {
        return Err(Error::Usage(format!(
            "{}: has no obs_features/ but {} has: the result's per-cell metadata would cover only some rows (convert it again, or concat archives that agree)",
            without.path.display(),
            with[0].path.display()
        )));
    }
    let mut out = ObsIndex::new(ARCHIVE_VERSION);
    for a in archives {
        let obs = ObsIndex::read(&a.path)?.ok_or_else(|| {
            Error::archive(&a.path, "obs_features/ disappeared while concatenating")
        })?;
        for b in obs.index.blocks {
            out.push(b.frame, b.label);
        }
    }
    Ok(Some(out))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

fn append_archive(
    writer: &mut ArchiveWriter,
    a: &Archive,
    allow_lossy: bool,
    progress: &dyn Progress,
) -> Result<()> {
    let base = writer.nnz();
    if a.data_dtype == writer.dtype() && a.col_dtype == writer.widths().col_ptr {
        let (data, cols) = a.element_files();
        writer.copy_elements(data, cols, a.nnz)?;
    } else {
        let target = writer.dtype();
        with_element_type!(a.data_dtype, S => with_element_type!(target, T => {
            append_converted::<S, T>(writer, a, allow_lossy)?
        }));
    }
    let mut r = 0;
    while r < a.num_rows {
        let end = (r + CHUNK).min(a.num_rows);
        let ends = a.row_ptrs(r + 1, end + 1)?;
        let rebased = rebase(&ends, base)
            .ok_or_else(|| Error::archive(&a.path, "row offsets overflow 64 bits"))?;
        writer.end_rows(rebased)?;
        progress.rows_done(end - r);
        r = end;
    }
    Ok(())
}

/// Values converted from `S` to `T` (exactly unless `allow_lossy`), columns in the result's
/// width (the writer checks that each fits).
fn append_converted<S: Element, T: Element>(
    writer: &mut ArchiveWriter,
    a: &Archive,
    allow_lossy: bool,
) -> Result<()> {
    let mut out: Vec<T> = Vec::new();
    let mut e = 0;
    while e < a.nnz {
        let end = (e + CHUNK).min(a.nnz);
        let raw = a.data_bytes(e, end)?;
        let vals: Vec<S> = raw
            .chunks_exact(std::mem::size_of::<S>())
            .map(bytemuck::pod_read_unaligned)
            .collect();
        let cols = columns_u32(a, e, end)?;
        out.clear();
        if let Err(i) = convert_into(&vals, &mut out, allow_lossy) {
            let element = e + i as u64;
            return Err(Error::Usage(format!(
                "{}: value {} (element {element}, column {}) cannot be stored as {} without changing it; choose another --data-dtype",
                a.path.display(),
                vals[i],
                cols[i],
                T::DTYPE
            )));
        }
        writer.append_elements(&cols, &out)?;
        e = end;
    }
    Ok(())
}

/// Column indices [a, b) of `archive` as u32 (SCDL's widest column index).
fn columns_u32(archive: &Archive, a: u64, b: u64) -> Result<Vec<u32>> {
    archive
        .cols(a, b)?
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            u32::try_from(c).map_err(|_| {
                Error::archive(
                    &archive.path,
                    format!(
                        "col_ptr.npy: column index {c} of value {} exceeds uint32",
                        a + i as u64
                    ),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebasing_past_two_to_the_32_does_not_wrap() {
        let base = (1u64 << 32) + 5;
        assert_eq!(
            rebase(&[0, 3, 7], base).unwrap(),
            vec![base, base + 3, base + 7]
        );
        assert!(rebase(&[u64::MAX], 1).is_none());
    }

    #[test]
    fn result_types() {
        let p = |d| (PathBuf::from("x"), d);
        assert_eq!(
            result_dtype(&[p(Dtype::F32), p(Dtype::F32)], None).unwrap(),
            Dtype::F32
        );
        assert_eq!(
            result_dtype(&[p(Dtype::F16), p(Dtype::F64), p(Dtype::F32)], None).unwrap(),
            Dtype::F64
        );
        assert_eq!(
            result_dtype(&[p(Dtype::U8), p(Dtype::U32)], None).unwrap(),
            Dtype::U32
        );
        let err = result_dtype(&[p(Dtype::U8), p(Dtype::F32)], None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mix integer and float") && err.contains("--data-dtype"),
            "{err}"
        );
        assert_eq!(
            result_dtype(&[p(Dtype::U8), p(Dtype::F32)], Some(Dtype::F32)).unwrap(),
            Dtype::F32
        );
    }
}
