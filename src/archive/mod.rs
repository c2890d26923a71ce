//! The SCDL archive format: a directory of raw little-endian arrays (`data.npy` values,
//! `col_ptr.npy` column indices, `row_ptr.npy` row offsets — headerless despite the name),
//! `metadata.json`, `dtypes.json`, `version.json`, `header.sch` and the feature index.
//!
//! `Archive` opens one read-only, whoever wrote it (scdl-fs, bionemo-scdl 0.0.5 or 0.1.3),
//! validating its shape first, and reads it with positional reads (pread), not memory maps: a
//! daemon serving millions of random rows keeps its resident memory flat, the data staying in
//! the kernel's page cache. `ArchiveWriter` writes one atomically.

pub mod cellmeta;
pub mod header;
mod held;
mod info;
mod publish;
pub mod widths;
mod writer;

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use std::os::unix::fs::FileExt;

pub use info::{tree_size, ArchiveInfo, BlockInfo, DtypesInfo};
pub(crate) use publish::{publication_fault, rename_no_replace, sync_dir, write_synced_bytes};
pub use publish::{SealedArchive, WriterStep, WrittenArchive, WRITER_FAULT_ENV};
pub use widths::{IndexDtypes, IndexWidths};
pub use writer::{temp_path_for, ArchiveWriter};

use crate::dtype::Dtype;
use crate::error::{Error, IoContext, Result};
use crate::features::FeatureIndex;

/// The version string written to version.json and features/version.npy: the bionemo-scdl
/// release whose layout (plus header.sch) we write.
pub const ARCHIVE_VERSION: &str = "0.1.3";

/// File names inside an archive.
pub struct FileNames;

impl FileNames {
    pub const DATA: &'static str = "data.npy";
    pub const COL_PTR: &'static str = "col_ptr.npy";
    pub const ROW_PTR: &'static str = "row_ptr.npy";
    pub const METADATA: &'static str = "metadata.json";
    pub const DTYPES: &'static str = "dtypes.json";
    pub const VERSION: &'static str = "version.json";
    pub const HEADER: &'static str = "header.sch";
    pub const FEATURES: &'static str = "features";
    /// Where bionemo-scdl 0.1.3 keeps the var feature index.
    pub const VAR_FEATURES: &'static str = "var_features";
}

/// A read-only archive.
pub struct Archive {
    pub path: PathBuf,
    pub num_rows: u64,
    pub nnz: u64,
    pub data_dtype: Dtype,
    pub col_dtype: Dtype,
    pub row_ptr_dtype: Dtype,
    pub features: FeatureIndex,
    /// The per-cell metadata's layout, when the archive has `obs_features/`.
    pub obs: Option<crate::obs::ObsSummary>,
    /// The neighbor graph and obsm keys (`cellmeta`).
    neighbors: Option<crate::archive::cellmeta::Neighbors>,
    obsm: Vec<crate::archive::cellmeta::ObsmArray>,
    pub version: String,
    data: File,
    cols: File,
    row_ptr: File,
    /// `row_ptr` in memory once a shuffled reader asked for it, when small enough (`held`).
    held_row_ptr: std::sync::OnceLock<Option<held::HeldFile>>,
}

/// Opens an array file and returns it with its length in bytes.
fn open_array(path: &Path) -> Result<(File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    // Shuffled reads make hundreds of small reads per batch; without O_NOATIME each one checks
    // and may update the file's access time. Only the owner (or root) may ask for it.
    let f = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => File::open(path),
        other => other,
    }
    .at(path)?;
    let len = f.metadata().at(path)?.len();
    Ok((f, len))
}

/// Reads the three array dtypes: dtypes.json if present (0.0.5 and us), else header.sch
/// (0.1.3), else bionemo's defaults.
fn read_dtypes(path: &Path) -> Result<(Dtype, Dtype, Dtype)> {
    let bad = |m: String| Error::archive(path, m);
    let mut data = Dtype::F32;
    let mut cols = Dtype::U32;
    let mut rows = Dtype::U64;
    let dtypes_path = path.join(FileNames::DTYPES);
    let header_path = path.join(FileNames::HEADER);
    if let Ok(text) = fs::read_to_string(&dtypes_path) {
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("dtypes.json: {e}")))?;
        let get = |k: &str, default: Dtype| -> Result<Dtype> {
            match v.get(k) {
                None => Ok(default),
                Some(serde_json::Value::String(s)) => Dtype::from_numpy(s)
                    .ok_or_else(|| bad(format!("dtypes.json: unknown dtype {s} for {k}"))),
                Some(other) => Err(bad(format!("dtypes.json: bad entry {other} for {k}"))),
            }
        };
        data = get(FileNames::DATA, data)?;
        cols = get(FileNames::COL_PTR, cols)?;
        rows = get(FileNames::ROW_PTR, rows)?;
    } else if let Ok(bytes) = fs::read(&header_path) {
        for a in header::decode_arrays(&bytes).map_err(bad)? {
            match a.name.as_str() {
                "DATA" => data = a.dtype,
                "COLPTR" => cols = a.dtype,
                "ROWPTR" => rows = a.dtype,
                _ => {}
            }
        }
    }
    for (what, d) in [("col_ptr.npy", cols), ("row_ptr.npy", rows)] {
        if d.is_float() || d.is_signed_int() {
            return Err(bad(format!("{what} must hold unsigned integers, not {d}")));
        }
    }
    Ok((data, cols, rows))
}

/// `num_rows` from metadata.json.
fn read_num_rows(path: &Path) -> Result<u64> {
    let meta_path = path.join(FileNames::METADATA);
    let meta: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&meta_path).at(&meta_path)?)
            .map_err(|e| Error::archive(path, format!("metadata.json: {e}")))?;
    meta.get("num_rows")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| Error::archive(path, "metadata.json has no num_rows"))
}

/// The version string of version.json (empty when it has none: bionemo 0.0.5 writes none).
fn read_version(path: &Path) -> String {
    fs::read_to_string(path.join(FileNames::VERSION))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string())
        })
        .unwrap_or_default()
}

/// The var feature index (`features/`, or bionemo 0.1.3's `var_features/`), covering every row.
fn read_features(path: &Path, num_rows: u64) -> Result<FeatureIndex> {
    let dir = [FileNames::FEATURES, FileNames::VAR_FEATURES]
        .iter()
        .map(|d| path.join(d))
        .find(|d| d.is_dir())
        .ok_or_else(|| Error::archive(path, "no features/ directory"))?;
    let features = FeatureIndex::read(&dir)?;
    if features.num_rows() != num_rows {
        return Err(Error::archive(
            path,
            format!(
                "feature index covers {} rows but metadata.json says {num_rows}",
                features.num_rows()
            ),
        ));
    }
    Ok(features)
}

/// The three array files, open, with sizes that agree with each other and with `num_rows`.
struct Arrays {
    data: File,
    cols: File,
    row_ptr: File,
    /// data, col_ptr, row_ptr.
    dtypes: (Dtype, Dtype, Dtype),
    nnz: u64,
}

impl Arrays {
    fn open(path: &Path, num_rows: u64) -> Result<Arrays> {
        let bad = |m: String| Error::archive(path, m);
        let (data_dtype, col_dtype, row_ptr_dtype) = read_dtypes(path)?;
        let (data, data_len) = open_array(&path.join(FileNames::DATA))?;
        let (cols, cols_len) = open_array(&path.join(FileNames::COL_PTR))?;
        let (row_ptr, row_ptr_len) = open_array(&path.join(FileNames::ROW_PTR))?;
        for (name, len, d) in [
            (FileNames::DATA, data_len, data_dtype),
            (FileNames::COL_PTR, cols_len, col_dtype),
            (FileNames::ROW_PTR, row_ptr_len, row_ptr_dtype),
        ] {
            if len % d.size() as u64 != 0 {
                return Err(bad(format!(
                    "{name}: {len} bytes is not a whole number of {d} values"
                )));
            }
        }
        let nnz = data_len / data_dtype.size() as u64;
        if cols_len / col_dtype.size() as u64 != nnz {
            return Err(bad(format!(
                "col_ptr.npy has {} entries but data.npy has {nnz}",
                cols_len / col_dtype.size() as u64
            )));
        }
        let ptr_len = row_ptr_len / row_ptr_dtype.size() as u64;
        // An empty archive may have an empty row_ptr (bionemo) or [0] (us). num_rows comes from
        // metadata.json: u64::MAX must not overflow (found by fuzzing).
        if !(Some(ptr_len) == num_rows.checked_add(1) || (num_rows == 0 && ptr_len == 0)) {
            return Err(bad(format!(
                "row_ptr.npy has {ptr_len} entries but metadata.json says {num_rows} rows"
            )));
        }
        Ok(Arrays {
            data,
            cols,
            row_ptr,
            dtypes: (data_dtype, col_dtype, row_ptr_dtype),
            nnz,
        })
    }
}

/// Decodes little-endian unsigned integers of `dtype` into `out`.
/// (One loop per width, so that each is a plain widening loop.)
pub(crate) fn decode_uints(bytes: &[u8], dtype: Dtype, out: &mut Vec<u64>) {
    match dtype {
        Dtype::U8 => out.extend(bytes.iter().map(|&b| b as u64)),
        Dtype::U16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as u64),
        ),
        Dtype::U32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as u64),
        ),
        _ => out.extend(
            bytes
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))),
        ),
    }
}

impl Archive {
    /// Opens and validates an archive: files present, sizes consistent, row_ptr monotonic
    /// from 0 to nnz, feature index covering every row.
    pub fn open(path: &Path) -> Result<Archive> {
        if !path.is_dir() {
            return Err(Error::archive(path, "not a directory"));
        }
        let num_rows = read_num_rows(path)?;
        let arrays = Arrays::open(path, num_rows)?;
        let features = read_features(path, num_rows)?;
        let obs = crate::obs::ObsSummary::read(path, num_rows)?;
        let (neighbors, obsm) = crate::archive::cellmeta::open(path, num_rows)?;
        let archive = Archive {
            path: path.to_path_buf(),
            num_rows,
            nnz: arrays.nnz,
            data_dtype: arrays.dtypes.0,
            col_dtype: arrays.dtypes.1,
            row_ptr_dtype: arrays.dtypes.2,
            features,
            obs,
            neighbors,
            obsm,
            version: read_version(path),
            data: arrays.data,
            cols: arrays.cols,
            row_ptr: arrays.row_ptr,
            held_row_ptr: std::sync::OnceLock::new(),
        };
        archive.check_row_ptr()?;
        Ok(archive)
    }

    /// Checks row_ptr in chunks: starts at 0, never decreases, ends at nnz.
    fn check_row_ptr(&self) -> Result<()> {
        if self.num_rows == 0 && self.row_ptr_entries() == 0 {
            return Ok(());
        }
        const CHUNK: u64 = 1 << 20;
        let mut prev = 0u64;
        let mut i = 0u64;
        while i <= self.num_rows {
            let end = (i + CHUNK).min(self.num_rows + 1);
            for (k, v) in self.row_ptrs(i, end)?.into_iter().enumerate() {
                let at = i + k as u64;
                if at == 0 && v != 0 {
                    return Err(Error::archive(
                        &self.path,
                        format!("row_ptr.npy starts at {v}, not 0"),
                    ));
                }
                if v < prev {
                    return Err(Error::archive(
                        &self.path,
                        format!("row_ptr.npy decreases at row {}", at - 1),
                    ));
                }
                prev = v;
            }
            i = end;
        }
        if prev != self.nnz {
            return Err(Error::archive(
                &self.path,
                format!(
                    "row_ptr.npy ends at {prev} but data.npy holds {} values",
                    self.nnz
                ),
            ));
        }
        Ok(())
    }

    fn row_ptr_entries(&self) -> u64 {
        self.row_ptr.metadata().map(|m| m.len()).unwrap_or(0) / self.row_ptr_dtype.size() as u64
    }

    /// Bytes [offset, offset + len) of one of the archive's files.
    fn read_bytes(&self, file: &File, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_into(file, name, offset, &mut buf)?;
        Ok(buf)
    }

    fn read_into(&self, file: &File, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        file.read_exact_at(buf, offset)
            .map_err(|e| self.read_error(name, offset, buf.len(), e))
    }

    /// Bytes `[offset, offset + buf.len())` of one of the CSR arrays into `buf`, blocking.
    pub(crate) fn read_array_into(
        &self,
        array: CsrArray,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let (file, name) = self.array_file(array);
        self.read_into(file, name, offset, buf)
    }

    /// The error of a failed read of `len` bytes at `offset` of the archive's file `name`.
    pub(crate) fn read_error(
        &self,
        name: &str,
        offset: u64,
        len: usize,
        e: std::io::Error,
    ) -> Error {
        Error::archive(
            self.path.join(name),
            format!("read of {len} bytes at {offset}: {e}"),
        )
    }

    /// The raw bytes of values [a, a + n) into `buf` (n = buf.len() / element size): for
    /// renderers that lay them out in place, without an intermediate copy.
    pub fn read_data_into(&self, a: u64, buf: &mut [u8]) -> Result<()> {
        let s = self.data_dtype.size() as u64;
        self.read_into(&self.data, FileNames::DATA, a * s, buf)
    }

    /// The raw bytes of column indices [a, a + n) into `buf` (in `col_dtype`).
    pub fn read_cols_into(&self, a: u64, buf: &mut [u8]) -> Result<()> {
        let s = self.col_dtype.size() as u64;
        self.read_into(&self.cols, FileNames::COL_PTR, a * s, buf)
    }

    /// Entries [a, b) of an unsigned-integer file (row_ptr, col_ptr) of element type `dtype`.
    fn read_uints(
        &self,
        file: &File,
        name: &str,
        dtype: Dtype,
        a: u64,
        b: u64,
    ) -> Result<Vec<u64>> {
        let s = dtype.size() as u64;
        let bytes = self.read_bytes(file, name, a * s, ((b - a) * s) as usize)?;
        let mut out = Vec::with_capacity((b - a) as usize);
        decode_uints(&bytes, dtype, &mut out);
        Ok(out)
    }

    /// row_ptr entries [a, b).
    pub fn row_ptrs(&self, a: u64, b: u64) -> Result<Vec<u64>> {
        self.read_uints(&self.row_ptr, FileNames::ROW_PTR, self.row_ptr_dtype, a, b)
    }

    /// The element range [start, end) of row `row`.
    pub fn row_range(&self, row: u64) -> Result<(u64, u64)> {
        let p = self.row_ptrs(row, row + 2)?;
        Ok((p[0], p[1]))
    }

    /// Column indices of elements [a, b).
    pub fn cols(&self, a: u64, b: u64) -> Result<Vec<u64>> {
        self.read_uints(&self.cols, FileNames::COL_PTR, self.col_dtype, a, b)
    }

    /// The raw little-endian bytes of values [a, b).
    pub fn data_bytes(&self, a: u64, b: u64) -> Result<Vec<u8>> {
        let s = self.data_dtype.size() as u64;
        self.read_bytes(&self.data, FileNames::DATA, a * s, ((b - a) * s) as usize)
    }

    /// The neighbor graph, when the archive has one.
    pub fn neighbors(&self) -> Option<&crate::archive::cellmeta::Neighbors> {
        self.neighbors.as_ref()
    }

    /// Every obsm key, sorted by name.
    pub fn obsm_keys(&self) -> &[crate::archive::cellmeta::ObsmArray] {
        &self.obsm
    }

    /// One obsm key.
    pub fn obsm(&self, key: &str) -> Option<&crate::archive::cellmeta::ObsmArray> {
        self.obsm.iter().find(|o| o.key == key)
    }

    /// The value and column files, for bulk copies (concat).
    pub(crate) fn element_files(&self) -> (&File, &File) {
        (&self.data, &self.cols)
    }

    /// The bytes of `row_ptr.npy`, read once at the first call, when the file is small enough
    /// to hold and the process's budget for held files allows (`held`); `None` otherwise.
    pub(crate) fn held_row_ptr(&self) -> Option<&[u8]> {
        self.held_row_ptr
            .get_or_init(|| {
                let len = self.row_ptr.metadata().ok()?.len();
                held::HeldFile::load(&self.row_ptr, len)
            })
            .as_ref()
            .map(held::HeldFile::bytes)
    }

    /// This archive, never holding `row_ptr` in memory: every row lookup reads it (what very
    /// large archives do; tests compare both ways).
    pub fn with_row_ptr_reads(self) -> Archive {
        Archive {
            held_row_ptr: std::sync::OnceLock::from(None),
            ..self
        }
    }

    /// One of the three CSR arrays, its open file and its name, for readers that issue their
    /// own reads (the shuffled batches' gather).
    pub(crate) fn array_file(&self, array: CsrArray) -> (&File, &'static str) {
        match array {
            CsrArray::Data => (&self.data, FileNames::DATA),
            CsrArray::Cols => (&self.cols, FileNames::COL_PTR),
            CsrArray::RowPtr => (&self.row_ptr, FileNames::ROW_PTR),
        }
    }
}

/// The three arrays of an archive's CSR matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CsrArray {
    /// `data.npy`: the values.
    Data,
    /// `col_ptr.npy`: each value's column.
    Cols,
    /// `row_ptr.npy`: where each row's values start.
    RowPtr,
}
