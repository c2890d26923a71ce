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

use super::{Neighbors, ObsmArray};
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
