//! Per-cell arrays beside the count matrix: neighbor graphs (`neighbors.rs`, bionemo-scdl
//! 0.1.3's `neighbor_*.npy` files, from `obsp`) and embeddings or coordinates (`obsm.rs`,
//! scdl-fs's `obsm/<KEY>.npy`, from `obsm`). Both are converted in bounded memory, carried by
//! concat, validated when an archive opens and read with positional reads.
//!
//! This file holds what both share: the archive's recorded dtype of an extra array
//! (`dtypes.json`, else `header.sch`, else bionemo's default), appending to a raw array file in
//! the archive being written, and reading unsigned integers back by position.

pub mod neighbors;
pub mod obsm;

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::archive::{header, FileNames};
use crate::dtype::Dtype;
use crate::error::{Error, IoContext, Result};
use crate::h5ad::H5ad;

pub use neighbors::{NeighborChoice, Neighbors};
pub use obsm::{ObsmArray, ObsmChoice};

/// One input of a conversion, as the per-cell arrays see it: its file and its number of rows.
pub struct CellSource<'a> {
    pub h5: &'a H5ad,
    pub rows: u64,
}

/// The dtype an archive records for `file` (its `header.sch` name `header_name`): dtypes.json
/// first (0.0.5 and us), then header.sch (0.1.3), else `default` (bionemo's).
pub fn recorded_dtype(
    archive: &Path,
    file: &str,
    header_name: &str,
    default: Dtype,
) -> Result<Dtype> {
    let bad = |m: String| Error::archive(archive, m);
    if let Ok(text) = fs::read_to_string(archive.join(FileNames::DTYPES)) {
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("dtypes.json: {e}")))?;
        if let Some(entry) = v.get(file) {
            return entry
                .as_str()
                .and_then(Dtype::from_numpy)
                .ok_or_else(|| bad(format!("dtypes.json: bad entry {entry} for {file}")));
        }
    }
    if let Ok(bytes) = fs::read(archive.join(FileNames::HEADER)) {
        let arrays = header::decode_arrays(&bytes).map_err(bad)?;
        if let Some(a) = arrays.iter().find(|a| a.name == header_name) {
            return Ok(a.dtype);
        }
    }
    Ok(default)
}

/// A raw little-endian array file being written into an archive's temporary directory.
pub(crate) struct ArrayFile {
    path: PathBuf,
    out: BufWriter<File>,
    pub bytes: u64,
}

impl ArrayFile {
    pub fn create(path: PathBuf) -> Result<ArrayFile> {
        let f = File::create(&path).at(&path)?;
        Ok(ArrayFile {
            out: BufWriter::with_capacity(1 << 20, f),
            path,
            bytes: 0,
        })
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).at(&self.path)?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Writes `values` as little-endian unsigned integers of `width`.
    pub fn write_uints(&mut self, values: &[u64], width: Dtype) -> Result<()> {
        let mut buf = Vec::with_capacity(values.len() * width.size());
        for &v in values {
            buf.extend_from_slice(&v.to_le_bytes()[..width.size()]);
        }
        self.write(&buf)
    }

    /// Flushes and fsyncs.
    pub fn finish(self) -> Result<()> {
        let f = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        f.sync_all().at(&self.path)
    }
}

/// An unsigned-integer array file of an archive, read by position.
pub struct UintFile {
    pub path: PathBuf,
    pub dtype: Dtype,
    pub len: u64,
    file: File,
}

impl UintFile {
    /// Opens `path` holding `dtype` integers (a float or signed type is refused).
    pub fn open(path: PathBuf, dtype: Dtype) -> Result<UintFile> {
        if dtype.is_float() || dtype.is_signed_int() {
            return Err(Error::archive(
                &path,
                format!("must hold unsigned integers, not {dtype}"),
            ));
        }
        let (file, bytes) = open_sized(&path, dtype)?;
        Ok(UintFile {
            len: bytes / dtype.size() as u64,
            path,
            dtype,
            file,
        })
    }

    /// Entries [a, b).
    pub fn read(&self, a: u64, b: u64) -> Result<Vec<u64>> {
        let s = self.dtype.size() as u64;
        let bytes = read_at(&self.file, &self.path, a * s, ((b - a) * s) as usize)?;
        let mut out = Vec::with_capacity((b - a) as usize);
        crate::archive::decode_uints(&bytes, self.dtype, &mut out);
        Ok(out)
    }

    /// Visits every entry in chunks: `visit(first_position, entries)`.
    pub fn for_each_chunk(&self, visit: &mut dyn FnMut(u64, &[u64]) -> Result<()>) -> Result<()> {
        const CHUNK: u64 = 1 << 20;
        let mut a = 0;
        while a < self.len {
            let b = (a + CHUNK).min(self.len);
            visit(a, &self.read(a, b)?)?;
            a = b;
        }
        Ok(())
    }
}

/// Opens a file and checks it holds a whole number of `dtype` values; returns it with its size.
pub(crate) fn open_sized(path: &Path, dtype: Dtype) -> Result<(File, u64)> {
    let file = File::open(path).at(path)?;
    let bytes = file.metadata().at(path)?.len();
    if bytes % dtype.size() as u64 != 0 {
        return Err(Error::archive(
            path,
            format!("{bytes} bytes is not a whole number of {dtype} values"),
        ));
    }
    Ok((file, bytes))
}

/// `len` bytes of `file` at `offset`.
pub(crate) fn read_at(file: &File, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| Error::archive(path, format!("read of {len} bytes at {offset}: {e}")))?;
    Ok(buf)
}

/// The names under an HDF5 group of the input (`obsp`, `obsm`), sorted; none when absent.
pub(crate) fn members(h5: &H5ad, group: &str) -> Vec<String> {
    let mut names = h5
        .file()
        .group(group)
        .and_then(|g| g.member_names())
        .unwrap_or_default();
    names.sort();
    names
}

/// "a, b, c", or "none".
pub(crate) fn listing(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// The per-cell arrays a conversion writes, decided and checked before anything is written.
pub struct CellArrays {
    pub neighbors: Option<neighbors::NeighborPlan>,
    pub obsm: Vec<obsm::ObsmKey>,
}

impl CellArrays {
    pub fn plan(
        sources: &[CellSource],
        neighbors: &NeighborChoice,
        obsm: &ObsmChoice,
    ) -> Result<CellArrays> {
        Ok(CellArrays {
            neighbors: neighbors::NeighborPlan::new(sources, neighbors)?,
            obsm: obsm::plan(sources, obsm)?,
        })
    }

    /// The most disk their files take for `rows` rows.
    pub fn disk_bytes(&self, rows: u64) -> u64 {
        let graph = self.neighbors.as_ref().map_or(0, |n| n.disk_bytes(rows));
        graph.saturating_add(obsm::disk_bytes(&self.obsm, rows))
    }

    /// Streams them into the archive being written (CSC graphs transpose through `scratch`).
    pub fn write(
        &self,
        sources: &[CellSource],
        writer: &mut crate::archive::ArchiveWriter,
        scratch: &Path,
    ) -> Result<()> {
        if let Some(n) = &self.neighbors {
            n.write(sources, writer, scratch)?;
        }
        obsm::write(&self.obsm, sources, writer)
    }
}

/// An archive's per-cell arrays, validated (`Archive::open`).
pub fn open(archive: &Path, num_rows: u64) -> Result<(Option<Neighbors>, Vec<ObsmArray>)> {
    Ok((
        Neighbors::open(archive, num_rows)?,
        ObsmArray::open_all(archive, num_rows)?,
    ))
}

/// The per-cell arrays of archives joined (concat), checked before anything is written.
pub struct ConcatArrays {
    neighbors: Option<neighbors::NeighborPlan>,
}

impl ConcatArrays {
    /// Refuses inputs that disagree: a graph in some but not all, obsm keys that differ.
    pub fn plan(archives: &[crate::archive::Archive]) -> Result<ConcatArrays> {
        let parts: Vec<(&Path, Option<&Neighbors>, u64)> = archives
            .iter()
            .map(|a| (a.path.as_path(), a.neighbors(), a.num_rows))
            .collect();
        let neighbors = neighbors::GraphConcat::plan(&parts)?;
        obsm::check_concat(&obsm_parts(archives))?;
        Ok(ConcatArrays { neighbors })
    }

    /// The most disk their files take.
    pub fn disk_bytes(&self, archives: &[crate::archive::Archive]) -> u64 {
        let rows = archives.iter().map(|a| a.num_rows).sum();
        let graph = self.neighbors.as_ref().map_or(0, |n| n.disk_bytes(rows));
        let obsm = archives
            .iter()
            .map(|a| crate::archive::tree_size(&a.path.join(obsm::OBSM_DIR)))
            .fold(0, u64::saturating_add);
        graph.saturating_add(obsm)
    }

    /// Writes the joined graph (block-diagonal) and obsm into the archive being written.
    pub fn write(
        &self,
        archives: &[crate::archive::Archive],
        writer: &mut crate::archive::ArchiveWriter,
    ) -> Result<()> {
        if let Some(plan) = &self.neighbors {
            let mut g = neighbors::GraphConcat::create(writer, plan)?;
            for a in archives {
                let n = a.neighbors().expect("checked by plan");
                g.append(n, a.num_rows)?;
            }
            g.finish(writer, &plan.key)?;
        }
        obsm::concat(&obsm_parts(archives), writer)
    }
}

fn obsm_parts(archives: &[crate::archive::Archive]) -> Vec<(&Path, &[ObsmArray])> {
    archives
        .iter()
        .map(|a| (a.path.as_path(), a.obsm_keys()))
        .collect()
}

/// `scdl-fs info`'s lines for the neighbor graph and obsm.
pub fn info_lines(info: &crate::archive::ArchiveInfo) -> Vec<String> {
    let mut out = vec![match &info.neighbors {
        None => "neighbors none".to_string(),
        Some(n) => format!(
            "neighbors key {}, {} edges (indices {}, weights {})",
            n.key.as_deref().unwrap_or("(not recorded)"),
            n.nnz,
            n.indices,
            n.values
        ),
    }];
    if info.obsm.is_empty() {
        out.push("obsm      none".into());
    }
    for (i, o) in info.obsm.iter().enumerate() {
        let head = if i == 0 { "obsm     " } else { "         " };
        out.push(format!("{head} {} {} {:?}", o.key, o.dtype, o.shape));
    }
    out
}
