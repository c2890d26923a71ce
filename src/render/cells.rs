//! The mount's files of per-cell metadata, rendered from an archive, with their exact sizes:
//!
//! - `obs/<i>.json`: row i's obs as one JSON object (column -> value, in the stored order; the
//!   index under the name the archive keeps it as; categoricals as their category; missing
//!   values and NaN as null);
//! - `obs/<a>-<b>.parquet`: rows [a, b) of obs (within one obs block) as a parquet file;
//! - `neighbors/<i>.npz`: `indices` (int64, global rows) and `values` (the stored weights) of row i;
//! - `obsm/<KEY>/<i>.npy` (1-D) and `obsm/<KEY>/<a>-<b>.npy` (2-D), in the stored dtype.
//!
//! `CellCache` keeps what a ready dataset reads once for them (its obs values, read whole).

use std::sync::{Arc, OnceLock};

use crate::archive::cellmeta::{Neighbors, ObsmArray};
use crate::error::{Error, Result};
use crate::features::FeatureFrame;
use crate::h5ad::Column;
use crate::obs::ObsIndex;
use crate::render::{npy_size, zip_size, ZipBuilder};

/// A ready dataset's obs values, read at their first use.
#[derive(Default)]
pub struct CellCache {
    obs: OnceLock<std::result::Result<Option<Arc<ObsIndex>>, String>>,
}

impl CellCache {
    /// The archive's obs (None when it has none).
    pub fn obs(&self, archive: &std::path::Path) -> Result<Option<Arc<ObsIndex>>> {
        let cached = self.obs.get_or_init(|| {
            ObsIndex::read(archive)
                .map(|o| o.map(Arc::new))
                .map_err(|e| e.to_string())
        });
        cached.clone().map_err(|m| Error::archive(archive, m))
    }
}

/// The block holding row `row` and the row's position in it.
fn block_of(obs: &ObsIndex, row: u64) -> Option<(&FeatureFrame, usize)> {
    let (b, start) = obs.index.block_of_row(row)?;
    Some((&obs.index.blocks[b].frame, (row - start) as usize))
}

/// `obs/<i>.json` (None past the last row).
pub fn obs_row_json(obs: &ObsIndex, row: u64) -> Option<Vec<u8>> {
    let (frame, at) = block_of(obs, row)?;
    // Written by hand to keep the stored column order (serde_json's maps sort their keys).
    let mut out = vec![b'{'];
    for (k, (name, col)) in frame.columns.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, name).expect("serialisable");
        out.push(b':');
        serde_json::to_writer(&mut out, &crate::render::cell_json(col, at)).expect("serialisable");
    }
    out.extend_from_slice(b"}\n");
    Some(out)
}

fn slice(col: &Column, a: usize, b: usize) -> Column {
    match col {
        Column::Str(v) => Column::Str(v[a..b].to_vec()),
        Column::Int(v) => Column::Int(v[a..b].to_vec()),
        Column::UInt(v) => Column::UInt(v[a..b].to_vec()),
        Column::Float(v) => Column::Float(v[a..b].to_vec()),
        Column::Bool(v) => Column::Bool(v[a..b].to_vec()),
    }
}

/// `obs/<a>-<b>.parquet`, when rows [a, b) lie in one obs block (blocks differ in columns).
pub fn obs_range_parquet(obs: &ObsIndex, a: u64, b: u64) -> Option<Result<Vec<u8>>> {
    let (frame, at) = block_of(obs, a)?;
    let (last, _) = block_of(obs, b.checked_sub(1)?)?;
    if !std::ptr::eq(frame, last) {
        return None;
    }
    let n = (b - a) as usize;
    let part = FeatureFrame {
        num_vars: n as u64,
        columns: frame
            .columns
            .iter()
            .map(|(name, c)| (name.clone(), slice(c, at, at + n)))
            .collect(),
    };
    Some(
        crate::features::parquet_bytes(&part)
            .map_err(|m| Error::Usage(format!("obs parquet: {m}"))),
    )
}

/// The members of `neighbors/<i>.npz` with `n` neighbors.
fn neighbor_members(g: &Neighbors, n: u64) -> [(&'static str, u64); 2] {
    let v = g.values_dtype;
    [
        ("indices.npy", npy_size("<i8", &[n], n * 8)),
        ("values.npy", npy_size(v.descr(), &[n], n * v.size() as u64)),
    ]
}

/// The exact size of `neighbors/<i>.npz`.
pub fn neighbors_npz_size(g: &Neighbors, row: u64) -> Result<u64> {
    let (s, e) = g.row_range(row)?;
    Ok(zip_size(&neighbor_members(g, e - s)))
}

/// `neighbors/<i>.npz`.
pub fn neighbors_npz(g: &Neighbors, row: u64) -> Result<Vec<u8>> {
    let (s, e) = g.row_range(row)?;
    let n = e - s;
    let size = zip_size(&neighbor_members(g, n));
    let mut zip = ZipBuilder::with_capacity(size as usize);
    zip.member("indices.npy", |out| {
        out.extend_from_slice(&crate::npy::header("<i8", &[n]));
        for i in g.indices.read(s, e)? {
            out.extend_from_slice(&(i as i64).to_le_bytes());
        }
        Ok(())
    })?;
    zip.member("values.npy", |out| {
        out.extend_from_slice(&crate::npy::header(g.values_dtype.descr(), &[n]));
        out.extend_from_slice(&g.values_bytes(s, e)?);
        Ok(())
    })?;
    let out = zip.finish();
    debug_assert_eq!(out.len() as u64, size);
    Ok(out)
}

/// The shape of `obsm/<KEY>/<a>-<b>.npy` (`single`: `<a>.npy`, one row without its row axis).
fn obsm_shape(a: &ObsmArray, first: u64, end: u64, single: bool) -> Vec<u64> {
    let mut shape: Vec<u64> = if single { vec![] } else { vec![end - first] };
    shape.extend(a.shape.get(1));
    shape
}

/// The exact size of an obsm rendering of rows [first, end).
pub fn obsm_size(a: &ObsmArray, first: u64, end: u64, single: bool) -> u64 {
    let bytes = (end - first) * a.width() * a.dtype.size() as u64;
    npy_size(a.dtype.descr(), &obsm_shape(a, first, end, single), bytes)
}

/// `len` bytes at `offset` of the obsm rendering of rows [first, end).
pub fn obsm_read(
    a: &ObsmArray,
    first: u64,
    end: u64,
    single: bool,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>> {
    let header = crate::npy::header(a.dtype.descr(), &obsm_shape(a, first, end, single));
    let total = obsm_size(a, first, end, single);
    let (start, stop) = (
        offset.min(total),
        offset.saturating_add(len as u64).min(total),
    );
    let mut out = Vec::with_capacity((stop - start) as usize);
    let h = header.len() as u64;
    if start < h {
        out.extend_from_slice(&header[start as usize..stop.min(h) as usize]);
    }
    let (da, db) = (start.max(h) - h, stop.max(h) - h);
    if db > da {
        let row = a.width() * a.dtype.size() as u64;
        let (ra, rb) = (first + da / row, first + db.div_ceil(row));
        let bytes = a.rows_bytes(ra, rb)?;
        let skip = (da - (ra - first) * row) as usize;
        out.extend_from_slice(&bytes[skip..skip + (db - da) as usize]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An archive directory holding only `obsm/k.npy`: 5 rows of 3 float32.
    fn obsm_archive(dir: &std::path::Path) -> ObsmArray {
        std::fs::create_dir(dir.join("obsm")).unwrap();
        let mut bytes = crate::npy::header("<f4", &[5, 3]);
        for v in 0..15 {
            bytes.extend_from_slice(&(v as f32).to_le_bytes());
        }
        std::fs::write(dir.join("obsm/k.npy"), bytes).unwrap();
        ObsmArray::open_all(dir, 5).unwrap().remove(0)
    }

    #[test]
    fn obsm_reads_at_any_offset_agree_with_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = obsm_archive(dir.path());
        for (first, end, single) in [(0, 5, false), (2, 4, false), (3, 4, true)] {
            let size = obsm_size(&a, first, end, single);
            let whole = obsm_read(&a, first, end, single, 0, size as usize + 10).unwrap();
            assert_eq!(whole.len() as u64, size);
            let (_, shape, off) = crate::npy::parse_header(&whole).unwrap();
            let rows = if single {
                vec![3]
            } else {
                vec![end - first, 3]
            };
            assert_eq!(shape, rows);
            let first_value = f32::from_le_bytes(whole[off..off + 4].try_into().unwrap());
            assert_eq!(first_value, (first * 3) as f32);
            for offset in 0..size {
                for len in [1, 7, 64] {
                    let part = obsm_read(&a, first, end, single, offset, len).unwrap();
                    let stop = (offset as usize + len).min(whole.len());
                    assert_eq!(part, whole[offset as usize..stop], "{offset}+{len}");
                }
            }
        }
    }

    #[test]
    fn an_obsm_file_whose_size_disagrees_with_its_header_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        obsm_archive(dir.path());
        let err = ObsmArray::open_all(dir.path(), 6)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("k.npy") && err.contains("(6,)"), "{err}");
        let p = dir.path().join("obsm/k.npy");
        let mut b = std::fs::read(&p).unwrap();
        b.pop();
        std::fs::write(&p, b).unwrap();
        let err = ObsmArray::open_all(dir.path(), 5)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("needs"), "{err}");
    }
}
