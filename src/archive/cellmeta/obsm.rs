//! Per-cell embeddings and coordinates (`obsm`: `X_pca`, `X_umap`, `spatial`), which bionemo-scdl
//! drops: scdl-fs's extension keeps each chosen key as `obsm/<KEY>.npy`, a real `.npy` file
//! (C order, the source's dtype, shape `(num_rows, width)` or `(num_rows,)`), so numpy opens it
//! with `np.load(..., mmap_mode="r")`. Neither bionemo release looks in `obsm/`.
//!
//! Converted in bounded memory (slabs of rows); several inputs (a directory, a concat) are
//! stacked, and must have the same keys with the same widths and dtypes.

use std::path::{Path, PathBuf};

use super::{listing, members, ArrayFile, CellSource};
use crate::archive::ArchiveWriter;
use crate::dtype::Dtype;
use crate::error::{Error, IoContext, Result};
use crate::selection::Selection;
use crate::with_element_type;

/// The directory of an archive holding obsm.
pub const OBSM_DIR: &str = "obsm";

/// Which obsm keys a conversion keeps: all, none, or these in this order.
pub type ObsmChoice = Selection;

/// One key to convert: its dtype and the shape of a row (`[]` for 1-D, `[width]` for 2-D).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObsmKey {
    pub key: String,
    pub dtype: Dtype,
    pub row_shape: Vec<u64>,
}

impl ObsmKey {
    fn width(&self) -> u64 {
        self.row_shape.iter().product()
    }
}

/// The keys `choice` asks for, checked in every source (dense, numeric, n_obs rows, the same in
/// every source) before anything is written.
pub fn plan(sources: &[CellSource], choice: &ObsmChoice) -> Result<Vec<ObsmKey>> {
    let Some(first) = sources.first() else {
        return Ok(Vec::new());
    };
    let keys = match choice {
        Selection::None => return Ok(Vec::new()),
        Selection::All => members(first.h5, "obsm"),
        Selection::Names(k) => k.clone(),
    };
    let mut out: Vec<ObsmKey> = Vec::new();
    for s in sources {
        let have = members(s.h5, "obsm");
        if *choice == Selection::All && have != keys {
            return Err(s.h5.error("/obsm", format!("has keys [{}] but {} has [{}]: inputs must have the same obsm keys (or choose with --obsm)", listing(&have), first.h5.path().display(), listing(&keys))));
        }
        for (i, key) in keys.iter().enumerate() {
            if !have.contains(key) {
                return Err(s.h5.error(
                    &format!("/obsm/{key}"),
                    format!("no such obsm key (--obsm); obsm has: {}", listing(&have)),
                ));
            }
            let k = check_key(s, key)?;
            match out.get(i) {
                None => out.push(k),
                Some(prev) if *prev != k => {
                    return Err(s.h5.error(&format!("/obsm/{key}"), format!("is {} of rows {:?}, but {} has {} of rows {:?}: obsm keys must match in width and dtype", k.dtype, k.row_shape, first.h5.path().display(), prev.dtype, prev.row_shape)));
                }
                Some(_) => {}
            }
        }
    }
    Ok(out)
}

/// Opens `obsm/KEY` of one source: a dense numeric 1-D or 2-D array of `rows` rows.
fn check_key(s: &CellSource, key: &str) -> Result<ObsmKey> {
    let loc = format!("/obsm/{key}");
    let ds = s.h5.file().dataset(&loc).map_err(|_| {
        s.h5.error(&loc, "not a dense array (a dataframe or sparse matrix?): only dense numeric obsm is kept; choose keys with --obsm")
    })?;
    let shape: Vec<u64> = ds.shape().iter().map(|&d| d as u64).collect();
    if shape.is_empty() || shape.len() > 2 {
        return Err(s
            .h5
            .error(&loc, format!("shape {shape:?}: expected 1-D or 2-D")));
    }
    if shape[0] != s.rows {
        return Err(s.h5.error(
            &loc,
            format!(
                "has {} rows (first dimension) but the file has {} cells",
                shape[0], s.rows
            ),
        ));
    }
    let desc = ds
        .dtype()
        .and_then(|t| t.to_descriptor())
        .map_err(|e| s.h5.error(&loc, format!("unreadable datatype: {e}")))?;
    let dtype = crate::h5ad::element_dtype(&desc).ok_or_else(|| {
        s.h5.error(&loc, format!("values must be numeric, found {desc:?}"))
    })?;
    if let Some(u) = crate::h5ad::unbacked(&ds) {
        return Err(s.h5.error(&loc, u.to_string()));
    }
    Ok(ObsmKey {
        key: key.to_string(),
        dtype,
        row_shape: shape[1..].to_vec(),
    })
}

/// Bytes the keys take for `rows` rows.
pub fn disk_bytes(keys: &[ObsmKey], rows: u64) -> u64 {
    keys.iter()
        .map(|k| {
            rows.saturating_mul(k.width())
                .saturating_mul(k.dtype.size() as u64)
        })
        .fold(0, u64::saturating_add)
}

/// The `.npy` file of one key being written.
struct KeyFile {
    file: ArrayFile,
    key: ObsmKey,
}

fn create_files(dir: &Path, keys: &[ObsmKey], rows: u64) -> Result<Vec<KeyFile>> {
    let d = dir.join(OBSM_DIR);
    std::fs::create_dir(&d).at(&d)?;
    keys.iter()
        .map(|k| {
            let mut file = ArrayFile::create(d.join(format!("{}.npy", k.key)))?;
            let mut shape = vec![rows];
            shape.extend(&k.row_shape);
            file.write(&crate::npy::header(k.dtype.descr(), &shape))?;
            Ok(KeyFile {
                file,
                key: k.clone(),
            })
        })
        .collect()
}

fn finish_files(files: Vec<KeyFile>, dir: &Path) -> Result<()> {
    for f in files {
        f.file.finish()?;
    }
    crate::archive::sync_dir(&dir.join(OBSM_DIR))
}

/// Streams every source's keys into the archive being written.
pub fn write(keys: &[ObsmKey], sources: &[CellSource], writer: &ArchiveWriter) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let rows = sources.iter().map(|s| s.rows).sum();
    let mut files = create_files(writer.dir(), keys, rows)?;
    for s in sources {
        for f in &mut files {
            let loc = format!("/obsm/{}", f.key.key);
            let ds =
                s.h5.file()
                    .dataset(&loc)
                    .map_err(|e| s.h5.error(&loc, e.to_string()))?;
            let width = f.key.width().max(1);
            let step = (crate::h5ad::BLOCK_ELEMENTS as u64 / width).max(1);
            let mut r = 0;
            while r < s.rows {
                let end = (r + step).min(s.rows);
                let range = r as usize..end as usize;
                with_element_type!(f.key.dtype, S => {
                    let v: Vec<S> = if f.key.row_shape.is_empty() {
                        ds.read_slice_1d::<S, _>(range).map(|a| a.into_raw_vec_and_offset().0)
                    } else {
                        ds.read_slice_2d::<S, _>((range, ..)).map(|a| a.as_standard_layout().to_owned().into_raw_vec_and_offset().0)
                    }
                    .map_err(|e| s.h5.error(&loc, format!("read of rows {r}..{end} failed (truncated or corrupt file?): {e}")))?;
                    f.file.write(bytemuck::cast_slice(&v))?
                });
                r = end;
            }
        }
    }
    finish_files(files, writer.dir())
}

/// An archive's obsm key, validated when the archive opens.
pub struct ObsmArray {
    pub path: PathBuf,
    pub key: String,
    pub dtype: Dtype,
    /// `[num_rows]` or `[num_rows, width]`.
    pub shape: Vec<u64>,
    /// Where the values start (after the .npy header).
    pub data_offset: u64,
    file: std::fs::File,
}

/// What `info` shows of an obsm key.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ObsmInfo {
    pub key: String,
    pub dtype: String,
    pub shape: Vec<u64>,
}

impl ObsmArray {
    /// Every key of `archive/obsm/` (sorted), each checked: a little-endian C-order .npy of
    /// `num_rows` rows whose size matches its header.
    pub fn open_all(archive: &Path, num_rows: u64) -> Result<Vec<ObsmArray>> {
        let dir = archive.join(OBSM_DIR);
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).at(&dir)? {
            let p = e.at(&dir)?.path();
            let Some(key) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".npy"))
            else {
                return Err(Error::archive(
                    &p,
                    "not a .npy file: obsm/ holds only KEY.npy files",
                ));
            };
            out.push(ObsmArray::open(&p, key.to_string(), num_rows)?);
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn open(path: &Path, key: String, num_rows: u64) -> Result<ObsmArray> {
        use std::io::Read;
        let bad = |m: String| Error::archive(path, m);
        let mut file = std::fs::File::open(path).at(path)?;
        let size = file.metadata().at(path)?.len();
        let mut head = vec![0u8; 4096.min(size as usize)];
        file.read_exact(&mut head).at(path)?;
        let (descr, shape, data_offset) = crate::npy::parse_header(&head).map_err(bad)?;
        let dtype = Dtype::from_numpy(&descr)
            .filter(|_| !descr.starts_with('>'))
            .ok_or_else(|| bad(format!("unsupported dtype {descr}")))?;
        if shape.is_empty() || shape.len() > 2 || shape[0] != num_rows {
            return Err(bad(format!(
                "shape {shape:?}: expected ({num_rows},) or ({num_rows}, width)"
            )));
        }
        let want = shape
            .iter()
            .try_fold(dtype.size() as u64, |a, &d| a.checked_mul(d))
            .and_then(|b| b.checked_add(data_offset as u64));
        if want != Some(size) {
            return Err(bad(format!(
                "{size} bytes, but its header ({descr}, {shape:?}) needs {want:?}"
            )));
        }
        Ok(ObsmArray {
            path: path.to_path_buf(),
            key,
            dtype,
            shape,
            data_offset: data_offset as u64,
            file,
        })
    }

    /// Values per row.
    pub fn width(&self) -> u64 {
        self.shape.get(1).copied().unwrap_or(1)
    }

    /// The raw little-endian bytes of rows [a, b).
    pub fn rows_bytes(&self, a: u64, b: u64) -> Result<Vec<u8>> {
        let row = self.width() * self.dtype.size() as u64;
        super::read_at(
            &self.file,
            &self.path,
            self.data_offset + a * row,
            ((b - a) * row) as usize,
        )
    }

    pub fn info(&self) -> ObsmInfo {
        ObsmInfo {
            key: self.key.clone(),
            dtype: self.dtype.name().into(),
            shape: self.shape.clone(),
        }
    }
}

fn keys_of(arrays: &[ObsmArray]) -> Vec<ObsmKey> {
    arrays
        .iter()
        .map(|a| ObsmKey {
            key: a.key.clone(),
            dtype: a.dtype,
            row_shape: a.shape[1..].to_vec(),
        })
        .collect()
}

/// Archives joined (concat) must have the same obsm keys with the same widths and dtypes: else
/// an error naming the archive and the key.
pub fn check_concat(parts: &[(&Path, &[ObsmArray])]) -> Result<()> {
    let Some((first_path, first)) = parts.first() else {
        return Ok(());
    };
    let keys = keys_of(first);
    for (path, arrays) in parts {
        let theirs = keys_of(arrays);
        let odd = keys
            .iter()
            .find(|k| !theirs.contains(k))
            .map(|k| (first_path, k, path));
        let odd = odd.or_else(|| {
            theirs
                .iter()
                .find(|k| !keys.contains(k))
                .map(|k| (path, k, first_path))
        });
        if let Some((has, k, lacks)) = odd {
            return Err(Error::Usage(format!(
                "{}: has obsm key '{}' ({}, rows {:?}) but {} has no such key of that width and dtype: concat needs the same obsm keys in every input",
                has.display(), k.key, k.dtype, k.row_shape, lacks.display()
            )));
        }
    }
    Ok(())
}

/// The obsm of archives joined (concat, checked by `check_concat`): rows copied in order.
pub fn concat(parts: &[(&Path, &[ObsmArray])], writer: &ArchiveWriter) -> Result<()> {
    let Some((_, first)) = parts.first() else {
        return Ok(());
    };
    let keys = keys_of(first);
    if keys.is_empty() {
        return Ok(());
    }
    let rows = parts
        .iter()
        .map(|(_, a)| a.first().map_or(0, |x| x.shape[0]))
        .sum();
    let mut files = create_files(writer.dir(), &keys, rows)?;
    for (_, arrays) in parts {
        for (f, a) in files.iter_mut().zip(arrays.iter()) {
            let step = (crate::h5ad::BLOCK_ELEMENTS as u64 / a.width().max(1)).max(1);
            let mut r = 0;
            while r < a.shape[0] {
                let end = (r + step).min(a.shape[0]);
                f.file.write(&a.rows_bytes(r, end)?)?;
                r = end;
            }
        }
    }
    finish_files(files, writer.dir())
}
