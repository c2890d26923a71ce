//! Neighbor graphs (`obsp[KEY]`) as bionemo-scdl 0.1.3 keeps them: `neighbor_indptr.npy` (row
//! offsets, num_rows + 1 entries), `neighbor_indices.npy` (the neighbors' global row numbers) and
//! `neighbor_values.npy` (the weights), raw little-endian like the matrix files, their dtypes in
//! `dtypes.json` and as `NEIGHBOR_INDICES_PTR` / `NEIGHBOR_INDICES` / `NEIGHBOR_VALUES` arrays in
//! `header.sch`, so that 0.1.3's `load_neighbors=True` reads them in the types written (its own
//! writer casts weights to float32; here they keep their source type). `neighbors.json`
//! (`{"key": KEY}`) records which obsp matrix it was, for `info`.
//!
//! Converted in bounded memory through the matrix reader (CSR read by hyperslabs, CSC transposed
//! through scratch files): per cell, the stored order of a CSR graph is kept; a CSC graph comes out
//! with its neighbors ascending. Several inputs (a directory, a concat) give a block-diagonal
//! graph, each part's indices rebased by its first row.

use std::path::{Path, PathBuf};

use super::{listing, members, recorded_dtype, ArrayFile, CellSource, UintFile};
use crate::archive::ArchiveWriter;
use crate::dtype::{convert_into, Dtype, Element};
use crate::error::{Error, Result};
use crate::h5ad::{Block, Layout};
use crate::with_element_type;

/// bionemo-scdl 0.1.3's default `neighbor_key`.
pub const DEFAULT_KEY: &str = "next_cell_ids";
pub const INDPTR: &str = "neighbor_indptr.npy";
pub const INDICES: &str = "neighbor_indices.npy";
pub const VALUES: &str = "neighbor_values.npy";
/// scdl-fs's record of the obsp key the graph came from.
pub const KEY_FILE: &str = "neighbors.json";
const HEADER_INDPTR: &str = "NEIGHBOR_INDICES_PTR";
const HEADER_INDICES: &str = "NEIGHBOR_INDICES";
const HEADER_VALUES: &str = "NEIGHBOR_VALUES";

/// Which neighbor graph a conversion keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NeighborChoice {
    /// `obsp/next_cell_ids` when the inputs have it (bionemo's default key), else none.
    #[default]
    Auto,
    None,
    Key(String),
}

impl std::str::FromStr for NeighborChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(NeighborChoice::Auto),
            "none" => Ok(NeighborChoice::None),
            "" => Err("bad --neighbors '': expected auto, none or an obsp KEY".into()),
            k => Ok(NeighborChoice::Key(k.to_string())),
        }
    }
}

impl std::fmt::Display for NeighborChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NeighborChoice::Auto => f.write_str("auto"),
            NeighborChoice::None => f.write_str("none"),
            NeighborChoice::Key(k) => f.write_str(k),
        }
    }
}

/// A graph to convert, checked before anything is written.
pub struct NeighborPlan {
    pub key: String,
    /// The weights' archive type: the sources' types promoted, signed integers unsigned (bionemo's
    /// header has no signed types).
    pub values: Dtype,
    pub indices: Dtype,
    pub nnz: u64,
}

impl NeighborPlan {
    /// The graph `choice` asks for in `sources`, its shape checked (sparse, square, n_obs wide,
    /// backed by storage); None when there is none to keep.
    pub fn new(sources: &[CellSource], choice: &NeighborChoice) -> Result<Option<NeighborPlan>> {
        let key = match choice {
            NeighborChoice::None => return Ok(None),
            NeighborChoice::Key(k) => k.clone(),
            NeighborChoice::Auto => {
                let has = |s: &CellSource| members(s.h5, "obsp").iter().any(|m| m == DEFAULT_KEY);
                if !sources.iter().any(has) {
                    return Ok(None);
                }
                DEFAULT_KEY.to_string()
            }
        };
        let mut values: Option<Dtype> = None;
        let mut nnz = 0u64;
        for s in sources {
            let have = members(s.h5, "obsp");
            if !have.contains(&key) {
                let why = match choice {
                    NeighborChoice::Key(_) => "no such obsp matrix (--neighbors)".to_string(),
                    _ => format!("no neighbor graph here, though another input has obsp/{key} (--neighbors none skips it)"),
                };
                return Err(s.h5.error(
                    &format!("/obsp/{key}"),
                    format!("{why}; obsp has: {}", listing(&have)),
                ));
            }
            let m = check_graph(s, &key)?;
            let d = m.dtype.unsigned_counterpart();
            values = Some(values.map_or(d, |v| crate::dtype::promote(v, d)));
            nnz = nnz.saturating_add(m.nnz);
        }
        let rows: u64 = sources.iter().map(|s| s.rows).sum();
        Ok(Some(NeighborPlan {
            key,
            values: values.unwrap_or(Dtype::F32),
            indices: if rows <= u32::MAX as u64 + 1 {
                Dtype::U32
            } else {
                Dtype::U64
            },
            nnz,
        }))
    }

    /// Bytes the three files take.
    pub fn disk_bytes(&self, rows: u64) -> u64 {
        let per = (self.indices.size() + self.values.size()) as u64;
        self.nnz
            .saturating_mul(per)
            .saturating_add(rows.saturating_add(1) * 8)
    }

    /// Streams every source's graph into the archive being written.
    pub fn write(
        &self,
        sources: &[CellSource],
        writer: &mut ArchiveWriter,
        scratch: &Path,
    ) -> Result<()> {
        let mut out = GraphFiles::create(writer.dir(), self)?;
        for s in sources {
            let m = s.h5.matrix(&format!("/obsp/{}", self.key))?;
            with_element_type!(m.dtype, S => with_element_type!(self.values, T => {
                let mut sink = |b: Block<S>| out.append::<S, T>(&b, s, m.values_location());
                m.stream::<S>(scratch, &mut sink)?
            }));
            out.end_part(s.rows);
        }
        out.finish(writer, &self.key)
    }
}

/// Opens `obsp/KEY` of one source and checks its shape.
fn check_graph<'a>(s: &CellSource<'a>, key: &str) -> Result<crate::h5ad::MatrixReader<'a>> {
    let loc = format!("/obsp/{key}");
    let m = s.h5.matrix(&loc)?;
    if m.layout == Layout::Dense {
        return Err(s.h5.error(
            &loc,
            "a dense array: a neighbor graph must be a sparse (CSR or CSC) matrix",
        ));
    }
    if m.n_rows != s.rows || m.n_cols != s.rows {
        let what = if m.n_rows != m.n_cols {
            "not square"
        } else {
            "not n_obs wide"
        };
        let n = s.rows;
        return Err(s.h5.error(
            &loc,
            format!(
                "shape ({}, {}) is {what}: the graph of {n} cells must be ({n}, {n})",
                m.n_rows, m.n_cols
            ),
        ));
    }
    m.check_backed_by_storage()?;
    Ok(m)
}

/// The three files being written, and where the current part starts.
struct GraphFiles {
    indptr: ArrayFile,
    indices: ArrayFile,
    values: ArrayFile,
    index_dtype: Dtype,
    value_dtype: Dtype,
    first_row: u64,
    first_value: u64,
    nnz: u64,
    rows: u64,
}

impl GraphFiles {
    fn create(dir: &Path, plan: &NeighborPlan) -> Result<GraphFiles> {
        let mut indptr = ArrayFile::create(dir.join(INDPTR))?;
        indptr.write_uints(&[0], Dtype::U64)?;
        Ok(GraphFiles {
            indptr,
            indices: ArrayFile::create(dir.join(INDICES))?,
            values: ArrayFile::create(dir.join(VALUES))?,
            index_dtype: plan.indices,
            value_dtype: plan.values,
            first_row: 0,
            first_value: 0,
            nnz: 0,
            rows: 0,
        })
    }

    fn append<S: Element, T: Element>(
        &mut self,
        b: &Block<S>,
        s: &CellSource,
        location: String,
    ) -> Result<()> {
        let mut vals: Vec<T> = Vec::with_capacity(b.vals.len());
        if let Err(i) = convert_into(&b.vals, &mut vals, false) {
            let element = b.first_element + i as u64;
            return Err(s.h5.error(
                &location,
                format!(
                    "weight {} of row {} (neighbor {}) cannot be stored as {} (bionemo-scdl has no signed types)",
                    b.vals[i],
                    b.row_of(element),
                    b.cols[i],
                    T::DTYPE
                ),
            ));
        }
        let rebased: Vec<u64> = b.cols.iter().map(|&c| c as u64 + self.first_row).collect();
        self.indices.write_uints(&rebased, self.index_dtype)?;
        self.values.write(bytemuck::cast_slice(&vals))?;
        let ends: Vec<u64> = b.row_ends.iter().map(|e| e + self.first_value).collect();
        self.indptr.write_uints(&ends, Dtype::U64)?;
        self.nnz += b.vals.len() as u64;
        self.rows += b.row_ends.len() as u64;
        Ok(())
    }

    fn end_part(&mut self, rows: u64) {
        self.first_row += rows;
        self.first_value = self.nnz;
    }

    /// Syncs the files and records them in the archive's dtypes and header.
    fn finish(self, writer: &mut ArchiveWriter, key: &str) -> Result<()> {
        let (rows, nnz) = (self.rows, self.nnz);
        self.indptr.finish()?;
        self.indices.finish()?;
        self.values.finish()?;
        writer.add_array(INDPTR, HEADER_INDPTR, rows + 1, Dtype::U64);
        writer.add_array(INDICES, HEADER_INDICES, nnz, self.index_dtype);
        writer.add_array(VALUES, HEADER_VALUES, nnz, self.value_dtype);
        let p = writer.dir().join(KEY_FILE);
        crate::archive::write_synced_bytes(
            &p,
            serde_json::json!({ "key": key }).to_string().as_bytes(),
        )
    }
}

/// Copies archives' graphs into one, block-diagonally (concat).
pub struct GraphConcat {
    files: GraphFiles,
}

impl GraphConcat {
    /// The graph of `parts` (each archive's graph and rows) joined, or None when none has one;
    /// an archive without a graph among archives with one is refused, naming both.
    pub fn plan(parts: &[(&Path, Option<&Neighbors>, u64)]) -> Result<Option<NeighborPlan>> {
        let Some((with, _, _)) = parts.iter().find(|p| p.1.is_some()) else {
            return Ok(None);
        };
        if let Some((without, _, _)) = parts.iter().find(|p| p.1.is_none()) {
            return Err(Error::Usage(format!(
                "{}: has no neighbor graph, but {} has one: concat would leave its cells without neighbors",
                without.display(),
                with.display()
            )));
        }
        let graphs: Vec<&Neighbors> = parts.iter().filter_map(|p| p.1).collect();
        let values = graphs
            .iter()
            .map(|g| g.values_dtype)
            .reduce(crate::dtype::promote)
            .unwrap_or(Dtype::F32);
        let rows: u64 = parts.iter().map(|p| p.2).sum();
        let key = graphs
            .iter()
            .find_map(|g| g.key.clone())
            .unwrap_or_else(|| DEFAULT_KEY.into());
        let plan = NeighborPlan {
            key,
            values,
            indices: if rows <= u32::MAX as u64 + 1 {
                Dtype::U32
            } else {
                Dtype::U64
            },
            nnz: graphs.iter().map(|g| g.nnz).sum(),
        };
        Ok(Some(plan))
    }

    pub fn create(writer: &ArchiveWriter, plan: &NeighborPlan) -> Result<GraphConcat> {
        Ok(GraphConcat {
            files: GraphFiles::create(writer.dir(), plan)?,
        })
    }

    /// Appends one archive's graph, rows rebased by the rows before it.
    pub fn append(&mut self, g: &Neighbors, rows: u64) -> Result<()> {
        const CHUNK: u64 = 1 << 20;
        let f = &mut self.files;
        let ptr = &g.indptr;
        let mut r = 0;
        while r < rows {
            let end = (r + CHUNK).min(rows);
            let ends: Vec<u64> = ptr
                .read(r + 1, end + 1)?
                .iter()
                .map(|e| e + f.first_value)
                .collect();
            f.indptr.write_uints(&ends, Dtype::U64)?;
            r = end;
        }
        let mut a = 0;
        while a < g.nnz {
            let b = (a + CHUNK).min(g.nnz);
            let idx: Vec<u64> = g
                .indices
                .read(a, b)?
                .iter()
                .map(|i| i + f.first_row)
                .collect();
            f.indices.write_uints(&idx, f.index_dtype)?;
            let raw = g.values_bytes(a, b)?;
            with_element_type!(g.values_dtype, S => with_element_type!(f.value_dtype, T => {
                let mut src: Vec<S> = vec![S::default(); raw.len() / std::mem::size_of::<S>()];
                bytemuck::cast_slice_mut::<S, u8>(&mut src).copy_from_slice(&raw);
                let mut out: Vec<T> = Vec::with_capacity(src.len());
                if let Err(i) = convert_into(&src, &mut out, false) {
                    return Err(Error::archive(
                        g.path.join(VALUES),
                        format!("weight {} at position {} does not fit {}", src[i], a + i as u64, f.value_dtype),
                    ));
                }
                f.values.write(bytemuck::cast_slice(&out))?
            }));
            a = b;
        }
        f.nnz += g.nnz;
        f.rows += rows;
        f.end_part(rows);
        Ok(())
    }

    pub fn finish(self, writer: &mut ArchiveWriter, key: &str) -> Result<()> {
        self.files.finish(writer, key)
    }
}

/// An archive's neighbor graph, validated when the archive opens.
pub struct Neighbors {
    pub path: PathBuf,
    /// The obsp key it came from (archives from bionemo-scdl do not record it).
    pub key: Option<String>,
    pub nnz: u64,
    pub values_dtype: Dtype,
    pub indptr: UintFile,
    pub indices: UintFile,
    values: std::fs::File,
}

/// What `info` shows of a graph.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NeighborInfo {
    pub key: Option<String>,
    pub nnz: u64,
    pub indices: String,
    pub values: String,
}

impl Neighbors {
    /// Opens `archive`'s graph (None when it has no `neighbor_indptr.npy`), checking that the
    /// three files agree, that the offsets run from 0 to nnz without decreasing and that every
    /// neighbor is a row of the archive.
    pub fn open(archive: &Path, num_rows: u64) -> Result<Option<Neighbors>> {
        let p = |f: &str| archive.join(f);
        if !p(INDPTR).exists() {
            return Ok(None);
        }
        let dt = |f, h, d| recorded_dtype(archive, f, h, d);
        let indptr = UintFile::open(p(INDPTR), dt(INDPTR, HEADER_INDPTR, Dtype::U64)?)?;
        let indices = UintFile::open(p(INDICES), dt(INDICES, HEADER_INDICES, Dtype::U32)?)?;
        let values_dtype = dt(VALUES, HEADER_VALUES, Dtype::F32)?;
        let (values, vbytes) = super::open_sized(&p(VALUES), values_dtype)?;
        let nnz = indices.len;
        if vbytes / values_dtype.size() as u64 != nnz {
            return Err(Error::archive(
                p(VALUES),
                format!(
                    "holds {} weights but {INDICES} holds {nnz} neighbors",
                    vbytes / values_dtype.size() as u64
                ),
            ));
        }
        check_shape(&indptr, &indices, num_rows)?;
        let key = std::fs::read_to_string(p(KEY_FILE))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("key").and_then(|k| k.as_str()).map(str::to_string));
        Ok(Some(Neighbors {
            path: archive.to_path_buf(),
            key,
            nnz,
            values_dtype,
            indptr,
            indices,
            values,
        }))
    }

    /// The neighbor positions [start, end) of `row`.
    pub fn row_range(&self, row: u64) -> Result<(u64, u64)> {
        let p = self.indptr.read(row, row + 2)?;
        Ok((p[0], p[1]))
    }

    /// The raw little-endian weights [a, b).
    pub fn values_bytes(&self, a: u64, b: u64) -> Result<Vec<u8>> {
        let s = self.values_dtype.size() as u64;
        super::read_at(
            &self.values,
            &self.path.join(VALUES),
            a * s,
            ((b - a) * s) as usize,
        )
    }

    pub fn info(&self) -> NeighborInfo {
        NeighborInfo {
            key: self.key.clone(),
            nnz: self.nnz,
            indices: self.indices.dtype.name().into(),
            values: self.values_dtype.name().into(),
        }
    }
}

/// One offset per row and one more, valid offsets, every neighbor a row.
fn check_shape(indptr: &UintFile, indices: &UintFile, num_rows: u64) -> Result<()> {
    if indptr.len != num_rows + 1 {
        return Err(Error::archive(
            &indptr.path,
            format!(
                "has {} entries but the archive has {num_rows} rows (needs {})",
                indptr.len,
                num_rows + 1
            ),
        ));
    }
    check_offsets(indptr, indices.len)?;
    indices.for_each_chunk(&mut |at, v| match v.iter().position(|&i| i >= num_rows) {
        Some(k) => Err(Error::archive(
            &indices.path,
            format!(
                "neighbor {} at position {} is not a row (the archive has {num_rows})",
                v[k],
                at + k as u64
            ),
        )),
        None => Ok(()),
    })
}

/// Offsets start at 0, never decrease and end at `nnz`.
fn check_offsets(indptr: &UintFile, nnz: u64) -> Result<()> {
    let mut prev = 0u64;
    indptr.for_each_chunk(&mut |at, v| {
        for (k, &e) in v.iter().enumerate() {
            let pos = at + k as u64;
            if (pos == 0 && e != 0) || e < prev {
                return Err(Error::archive(&indptr.path, format!("entry {e} at position {pos} breaks the offsets (start at 0, never decrease)")));
            }
            prev = e;
        }
        Ok(())
    })?;
    if prev != nnz {
        return Err(Error::archive(
            &indptr.path,
            format!("ends at {prev} but there are {nnz} neighbors"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_print_back() {
        for s in ["auto", "none", "knn"] {
            assert_eq!(s.parse::<NeighborChoice>().unwrap().to_string(), s);
        }
        assert!("".parse::<NeighborChoice>().is_err());
    }
}
