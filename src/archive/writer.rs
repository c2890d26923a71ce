//! Writing an archive atomically: everything goes into a temporary directory beside the output,
//! is flushed and fsynced, and is renamed into place only when complete. Dropping an unfinished
//! writer removes the temporary directory, so an error never leaves a partial archive.
//!
//! Column indices arrive as u32 and row ends as u64 and are written in the archive's index
//! widths (`IndexWidths`, fixed at creation), each checked: an entry that does not fit is an
//! error, never a wrap.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::publish::{
    fault, sync_dir, sync_files, write_synced, write_synced_bytes, SealedArchive, Step, TempDir,
    WrittenArchive,
};
use super::widths::{unsigned_max, IndexWidths};
use super::{header, FileNames, ARCHIVE_VERSION};
use crate::dtype::{Dtype, Element};
use crate::error::{Error, IoContext, Result};
use crate::features::FeatureIndex;
use crate::obs::{ObsIndex, OBS_DIR};

const WRITE_BUFFER: usize = 4 << 20;
/// Column indices narrowed at a time.
const NARROW_PIECE: usize = 64 << 10;

pub struct ArchiveWriter {
    output: PathBuf,
    tmp: TempDir,
    dtype: Dtype,
    widths: IndexWidths,
    data: BufWriter<File>,
    cols: BufWriter<File>,
    row_ptr: BufWriter<File>,
    /// Column indices narrowed to `widths.col_ptr` (None: uint32, written as they are), reused
    /// between appends.
    narrowed: Option<Narrowed>,
    rows: u64,
    nnz: u64,
    obs: Option<ObsIndex>,
    /// Arrays beside the matrix (neighbor graphs): recorded in dtypes.json and header.sch.
    extra_arrays: Vec<(&'static str, header::ArrayEntry)>,
}

/// The temporary directory name used for `output` (hidden, so nothing serves it).
pub fn temp_path_for(output: &Path) -> Result<PathBuf> {
    let name = output
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{}: not a valid output path", output.display())))?;
    let parent = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(parent.join(format!(
        ".{}.scdl-tmp.{}.{}",
        name.to_string_lossy(),
        std::process::id(),
        n
    )))
}

fn create(path: &Path) -> Result<BufWriter<File>> {
    Ok(BufWriter::with_capacity(
        WRITE_BUFFER,
        File::create(path).at(path)?,
    ))
}

impl ArchiveWriter {
    /// Starts an archive that will appear at `output` with data type `dtype` and index arrays
    /// of `widths`.
    pub fn create(output: &Path, dtype: Dtype, widths: IndexWidths) -> Result<ArchiveWriter> {
        if !dtype.is_archive_data_type() {
            return Err(Error::Usage(format!(
                "SCDL archives cannot store {dtype} data (bionemo-scdl has no signed integer types)"
            )));
        }
        if output.symlink_metadata().is_ok() {
            return Err(Error::Usage(format!(
                "{}: already exists",
                output.display()
            )));
        }
        let tmp_path = temp_path_for(output)?;
        fs::create_dir(&tmp_path).at(&tmp_path)?;
        let tmp = TempDir {
            path: tmp_path,
            keep: false,
        };
        let data = create(&tmp.path.join(FileNames::DATA))?;
        let cols = create(&tmp.path.join(FileNames::COL_PTR))?;
        let row_ptr = create(&tmp.path.join(FileNames::ROW_PTR))?;
        let mut writer = ArchiveWriter {
            output: output.to_path_buf(),
            tmp,
            dtype,
            widths,
            data,
            cols,
            row_ptr,
            narrowed: Narrowed::for_width(widths.col_ptr),
            rows: 0,
            nnz: 0,
            obs: None,
            extra_arrays: Vec::new(),
        };
        writer.write_row_end(0)?;
        Ok(writer)
    }

    /// A directory for scratch files (removed with the temporary directory).
    pub fn scratch_dir(&self) -> Result<PathBuf> {
        let p = self.tmp.path.join("scratch");
        fs::create_dir_all(&p).at(&p)?;
        Ok(p)
    }

    /// The per-cell metadata to write into `obs_features/` (it must cover every row).
    pub fn set_obs(&mut self, obs: ObsIndex) {
        self.obs = Some(obs);
    }

    /// The temporary directory, where per-cell arrays (`cellmeta`) write their files.
    pub fn dir(&self) -> &Path {
        &self.tmp.path
    }

    /// Records an array file written into `dir()` (synced by its writer): `file` in
    /// dtypes.json, `name` in header.sch.
    pub fn add_array(&mut self, file: &'static str, name: &str, length: u64, dtype: Dtype) {
        let entry = header::ArrayEntry {
            name: name.into(),
            length,
            dtype,
        };
        self.extra_arrays.push((file, entry));
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn nnz(&self) -> u64 {
        self.nnz
    }

    pub fn widths(&self) -> IndexWidths {
        self.widths
    }

    /// Appends values (already of the archive's type) and their column indices.
    pub fn append_elements<T: Element>(&mut self, cols: &[u32], vals: &[T]) -> Result<()> {
        assert_eq!(T::DTYPE, self.dtype);
        assert_eq!(cols.len(), vals.len());
        let cols_path = self.tmp.path.join(FileNames::COL_PTR);
        let Some(narrowed) = &mut self.narrowed else {
            self.cols
                .write_all(bytemuck::cast_slice(cols))
                .at(&cols_path)?;
            return self.append_values(vals);
        };
        if let Some(i) = first_too_wide(cols, self.widths.col_ptr) {
            return Err(Error::archive(
                &self.output,
                format!(
                    "column index {} of value {} does not fit the archive's {} column indices",
                    cols[i],
                    self.nnz + i as u64,
                    self.widths.col_ptr
                ),
            ));
        }
        // In pieces, so that the narrowed copy stays small whatever the caller appends.
        for piece in cols.chunks(NARROW_PIECE) {
            self.cols.write_all(narrowed.fill(piece)).at(&cols_path)?;
        }
        self.append_values(vals)
    }

    fn append_values<T: Element>(&mut self, vals: &[T]) -> Result<()> {
        self.data
            .write_all(bytemuck::cast_slice(vals))
            .at(self.tmp.path.join(FileNames::DATA))?;
        self.nnz += vals.len() as u64;
        Ok(())
    }

    /// Appends `n` elements copied byte for byte from another archive's files (already of this
    /// archive's types: values of `dtype`, columns of `widths.col_ptr`), with large sequential
    /// copies (copy_file_range where the file system supports it), never element by element.
    pub fn copy_elements(&mut self, data: &File, cols: &File, n: u64) -> Result<()> {
        let data_path = self.tmp.path.join(FileNames::DATA);
        let cols_path = self.tmp.path.join(FileNames::COL_PTR);
        self.data.flush().at(&data_path)?;
        self.cols.flush().at(&cols_path)?;
        copy_range(data, self.data.get_mut(), n * self.dtype.size() as u64).at(&data_path)?;
        let col_bytes = n * self.widths.col_ptr.size() as u64;
        copy_range(cols, self.cols.get_mut(), col_bytes).at(&cols_path)?;
        self.nnz += n;
        Ok(())
    }

    /// Ends rows at the given element offsets (counted from the start of the archive).
    pub fn end_rows(&mut self, ends: impl IntoIterator<Item = u64>) -> Result<()> {
        for e in ends {
            debug_assert!(e <= self.nnz);
            self.write_row_end(e)?;
            self.rows += 1;
        }
        Ok(())
    }

    /// One row_ptr entry in the archive's row_ptr width.
    fn write_row_end(&mut self, end: u64) -> Result<()> {
        let width = self.widths.row_ptr;
        if end > unsigned_max(width) {
            return Err(Error::archive(
                &self.output,
                format!("row offset {end} does not fit the archive's {width} row_ptr.npy"),
            ));
        }
        let bytes = end.to_le_bytes();
        // The path is built only on error: this runs once per row.
        self.row_ptr
            .write_all(&bytes[..width.size()])
            .map_err(|e| Error::io(self.tmp.path.join(FileNames::ROW_PTR), e))
    }

    /// Writes the metadata, the feature index and header.sch, flushes and fsyncs everything, then
    /// re-opens the result as a reader would: all inside the temporary directory, so whatever
    /// fails (a write, a file that does not read back) leaves nothing under the output's name.
    pub fn seal(mut self, features: &FeatureIndex) -> Result<SealedArchive> {
        if features.num_rows() != self.rows {
            return Err(Error::archive(
                &self.output,
                format!(
                    "internal error: feature index covers {} rows, matrix has {}",
                    features.num_rows(),
                    self.rows
                ),
            ));
        }
        let dir = self.tmp.path.clone();
        let _ = fs::remove_dir_all(dir.join("scratch"));
        self.sync_arrays()?;
        fault::at(Step::Arrays, &self.output)?;
        self.write_metadata()?;
        let fdir = dir.join(FileNames::FEATURES);
        features.write(&fdir)?;
        sync_files(&fdir)?;
        if let Some(obs) = &self.obs {
            if obs.num_rows() != self.rows {
                return Err(Error::archive(
                    &self.output,
                    format!(
                        "internal error: obs covers {} rows, matrix has {}",
                        obs.num_rows(),
                        self.rows
                    ),
                ));
            }
            obs.write(&dir)?;
            sync_files(&dir.join(OBS_DIR))?;
        }
        fault::at(Step::Features, &self.output)?;
        write_synced_bytes(&dir.join(FileNames::HEADER), &self.header(&fdir)?)?;
        sync_dir(&dir)?;
        fault::at(Step::Header, &self.output)?;
        self.validate(features)?;
        // The sealed archive owns the directory from here: this writer must not remove it.
        self.tmp.keep = true;
        Ok(SealedArchive {
            output: self.output.clone(),
            written: WrittenArchive {
                path: self.output.clone(),
                rows: self.rows,
                nnz: self.nnz,
                dtype: self.dtype,
                widths: self.widths,
            },
            tmp: TempDir {
                path: self.tmp.path.clone(),
                keep: false,
            },
        })
    }

    /// Seals and publishes: the archive appears at its output path, complete, or not at all.
    pub fn finish(self, features: &FeatureIndex) -> Result<WrittenArchive> {
        self.seal(features)?.publish()
    }

    fn sync_arrays(&mut self) -> Result<()> {
        let dir = &self.tmp.path;
        for (w, name) in [
            (&mut self.data, FileNames::DATA),
            (&mut self.cols, FileNames::COL_PTR),
            (&mut self.row_ptr, FileNames::ROW_PTR),
        ] {
            let p = dir.join(name);
            w.flush().at(&p)?;
            w.get_ref().sync_all().at(&p)?;
        }
        Ok(())
    }

    fn write_metadata(&self) -> Result<()> {
        let dir = &self.tmp.path;
        write_synced(
            &dir.join(FileNames::METADATA),
            &serde_json::json!({ "num_rows": self.rows }).to_string(),
        )?;
        let mut dtypes = serde_json::json!({
            FileNames::DATA: self.dtype.name(),
            FileNames::COL_PTR: self.widths.col_ptr.name(),
            FileNames::ROW_PTR: self.widths.row_ptr.name(),
        });
        for (file, a) in &self.extra_arrays {
            dtypes[*file] = a.dtype.name().into();
        }
        write_synced(&dir.join(FileNames::DTYPES), &dtypes.to_string())?;
        write_synced(
            &dir.join(FileNames::VERSION),
            &serde_json::json!(ARCHIVE_VERSION).to_string(),
        )
    }

    fn header(&self, fdir: &Path) -> Result<Vec<u8>> {
        let mut arrays = vec![
            header::ArrayEntry {
                name: "DATA".into(),
                length: self.nnz,
                dtype: self.dtype,
            },
            header::ArrayEntry {
                name: "ROWPTR".into(),
                length: self.rows + 1,
                dtype: self.widths.row_ptr,
            },
            header::ArrayEntry {
                name: "COLPTR".into(),
                length: self.nnz,
                dtype: self.widths.col_ptr,
            },
        ];
        arrays.extend(self.extra_arrays.iter().map(|(_, a)| a.clone()));
        Ok(header::encode(&arrays, &self.feature_index_entries(fdir)?))
    }

    /// header.sch's feature indexes: the var features, and obs_features when there is obs.
    fn feature_index_entries(&self, fdir: &Path) -> Result<Vec<header::FeatureIndexEntry>> {
        let mut out = vec![header::FeatureIndexEntry {
            name: FileNames::FEATURES.into(),
            length: self.rows,
            files: feature_files(fdir, FileNames::FEATURES)?,
        }];
        if self.obs.is_some() {
            out.push(header::FeatureIndexEntry {
                name: OBS_DIR.into(),
                length: self.rows,
                files: feature_files(&self.tmp.path.join(OBS_DIR), OBS_DIR)?,
            });
        }
        Ok(out)
    }

    /// Opens the sealed directory as `Archive::open` would open the published one (every file,
    /// row_ptr checked, every parquet block read back) and checks it holds what was written.
    fn validate(&self, features: &FeatureIndex) -> Result<()> {
        let a = super::Archive::open(&self.tmp.path).map_err(|e| self.rebase_error(e))?;
        if let Some(obs) = &self.obs {
            let back = ObsIndex::read(&self.tmp.path).map_err(|e| self.rebase_error(e))?;
            // Shapes, names and kinds (values hold NaN, which equality would call changed).
            let shape = |o: &ObsIndex| -> Vec<(u64, Vec<(String, &'static str)>)> {
                o.index
                    .blocks
                    .iter()
                    .map(|b| {
                        let cols = b.frame.columns.iter();
                        (b.rows, cols.map(|(n, c)| (n.clone(), c.kind())).collect())
                    })
                    .collect()
            };
            if back.as_ref().map(shape) != Some(shape(obs)) {
                return Err(Error::archive(
                    &self.output,
                    "internal error: obs_features/ does not read back as written",
                ));
            }
        }
        let blocks = a.features.blocks.len();
        if a.num_rows != self.rows || a.nnz != self.nnz || blocks != features.blocks.len() {
            return Err(Error::archive(
                &self.output,
                format!(
                    "internal error: the archive reads back as {} rows, {} values, {blocks} feature blocks; {} rows, {} values, {} blocks were written",
                    a.num_rows,
                    a.nnz,
                    self.rows,
                    self.nnz,
                    features.blocks.len()
                ),
            ));
        }
        Ok(())
    }

    /// An error found while reading back the temporary directory, told with the output's name
    /// (the temporary one means nothing to the user and no longer exists once we return).
    fn rebase_error(&self, e: Error) -> Error {
        let tmp = self.tmp.path.to_string_lossy().into_owned();
        let out = self.output.to_string_lossy().into_owned();
        Error::archive(
            &self.output,
            format!(
                "the written archive does not read back: {}",
                e.to_string().replace(&tmp, &out)
            ),
        )
    }
}

/// The files of feature directory `fdir`, as `NAME/file` paths, sorted.
fn feature_files(fdir: &Path, name: &str) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(fdir)
        .at(fdir)?
        .filter_map(|e| e.ok())
        .map(|e| format!("{name}/{}", e.file_name().to_string_lossy()))
        .collect();
    names.sort();
    Ok(names)
}

/// Copies `len` bytes from the start of `src` to the current end of `dst`: copy_file_range in
/// large steps, falling back to read/write where the kernel or file system cannot (EXDEV,
/// EINVAL, ENOSYS, EOPNOTSUPP).
fn copy_range(src: &File, dst: &mut File, len: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let mut dst_off = dst.seek(SeekFrom::End(0))? as i64;
    let mut src_off: i64 = 0;
    let mut left = len;
    while left > 0 {
        let step = left.min(1 << 30) as usize;
        // SAFETY: both descriptors are open for the duration of the call and the offset
        // pointers point to live i64s; the kernel reads/writes nothing else of ours.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut src_off,
                dst.as_raw_fd(),
                &mut dst_off,
                step,
                0,
            )
        };
        if n > 0 {
            left -= n as u64;
            continue;
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "source shorter than expected",
            ));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => break,
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
    // Fallback: plain buffered copy of what is left.
    let mut buf = vec![0u8; 8 << 20];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..want], src_off as u64)?;
        dst.write_all_at(&buf[..want], dst_off as u64)?;
        src_off += want as i64;
        dst_off += want as i64;
        left -= want as u64;
    }
    dst.seek(SeekFrom::Start(dst_off as u64))?;
    Ok(())
}

/// The position of the first column index that `width` cannot hold, if any. (The maximum is
/// found first: a loop the compiler vectorises, where a search for the position would not be.)
fn first_too_wide(cols: &[u32], width: Dtype) -> Option<usize> {
    let limit = unsigned_max(width);
    if cols.iter().copied().max().is_none_or(|m| m as u64 <= limit) {
        return None;
    }
    cols.iter().position(|&c| c as u64 > limit)
}

/// Column indices narrowed to the archive's width, in a buffer of that element type, so that
/// narrowing is a plain casting loop (vectorised) and the bytes written are the buffer's own.
/// (Archives are little-endian, as the host is: the uint32 indices are written as they are.)
enum Narrowed {
    U8(Vec<u8>),
    U16(Vec<u16>),
    U64(Vec<u64>),
}

impl Narrowed {
    /// None for uint32, the width column indices already have.
    fn for_width(width: Dtype) -> Option<Narrowed> {
        match width {
            Dtype::U8 => Some(Narrowed::U8(Vec::new())),
            Dtype::U16 => Some(Narrowed::U16(Vec::new())),
            Dtype::U64 => Some(Narrowed::U64(Vec::new())),
            _ => None,
        }
    }

    /// `cols` narrowed (each must fit: see `first_too_wide`), as bytes.
    fn fill(&mut self, cols: &[u32]) -> &[u8] {
        fn cast<'a, T: bytemuck::Pod>(
            out: &'a mut Vec<T>,
            cols: &[u32],
            f: fn(u32) -> T,
        ) -> &'a [u8] {
            out.clear();
            out.extend(cols.iter().map(|&c| f(c)));
            bytemuck::cast_slice(out)
        }
        match self {
            Narrowed::U8(v) => cast(v, cols, |c| c as u8),
            Narrowed::U16(v) => cast(v, cols, |c| c as u16),
            Narrowed::U64(v) => cast(v, cols, u64::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn narrowed(cols: &[u32], width: Dtype) -> Result<Vec<u8>, usize> {
        if let Some(i) = first_too_wide(cols, width) {
            return Err(i);
        }
        Ok(Narrowed::for_width(width).unwrap().fill(cols).to_vec())
    }

    #[test]
    fn columns_narrow_exactly_or_name_the_first_that_does_not_fit() {
        assert_eq!(
            narrowed(&[1, 300, 65_535], Dtype::U16).unwrap(),
            [1, 0, 44, 1, 255, 255]
        );
        assert_eq!(narrowed(&[7, 255], Dtype::U8).unwrap(), [7, 255]);
        assert_eq!(narrowed(&[2], Dtype::U64).unwrap(), 2u64.to_le_bytes());
        assert_eq!(narrowed(&[3, 256, 9999], Dtype::U8), Err(1));
        assert_eq!(narrowed(&[65_536], Dtype::U16), Err(0));
        assert_eq!(first_too_wide(&[], Dtype::U8), None);
    }
}
