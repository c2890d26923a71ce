//! Per-cell metadata in the mounted tree (rendered by `cellmeta::render`):
//!
//! ```text
//! /NAME/obs/<i>.json              row i's obs as one JSON object
//! /NAME/obs/<a>-<b>.parquet       rows [a, b) of obs (within one obs block)
//! /NAME/neighbors/<i>.npz         row i's neighbors: indices (int64), values (stored dtype)
//! /NAME/obsm/<KEY>/<i>.npy        row i of obsm KEY (1-D)   /NAME/obsm/<KEY>/<a>-<b>.npy (2-D)
//! /NAME/obsm/<KEY>.npy            the archive's own file     /NAME/obs_features/  the archive's obs
//! ```
//!
//! Inodes: `MetaDir` (index: which directory), `MetaFile` (index: what << 32 | row, so rows
//! below 2^32), `MetaRange` (an id in the metadata range table), `MetaStore` (a real file:
//! obs_features/ file i, or 1 << 32 | k for obsm key k's .npy). Directories list their row files
//! from the offset on, as `rows/` does.

use std::path::PathBuf;

use super::inode::{ino, parse_index, parse_range, Kind};
use super::page::Page;
use super::{io_err, FsError, FsResult, Namespace, NodeType};
use crate::catalog::ReadyDataset;
use crate::render::cells;

/// The most rows one `obs/<a>-<b>.parquet` may hold.
const MAX_PARQUET_ROWS: u64 = 1 << 20;
const ROW_BITS: u32 = 32;
const WHAT_OBS: u64 = 0;
const WHAT_NEIGHBORS: u64 = 1;
/// obsm key k is `WHAT_OBSM + k`.
const WHAT_OBSM: u64 = 16;

/// A metadata node of a ready dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Meta {
    Dir(MetaDir),
    ObsJson(u64),
    ObsParquet {
        first: u64,
        end: u64,
    },
    NeighborNpz(u64),
    /// Rows [first, end) of obsm key `key`; `single`: `<i>.npy`.
    Obsm {
        key: usize,
        first: u64,
        end: u64,
        single: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MetaDir {
    Obs,
    Neighbors,
    Obsm,
    ObsFeatures,
    ObsmKey(usize),
}

impl MetaDir {
    fn index(self) -> u64 {
        match self {
            MetaDir::Obs => WHAT_OBS,
            MetaDir::Neighbors => WHAT_NEIGHBORS,
            MetaDir::Obsm => 2,
            MetaDir::ObsFeatures => 3,
            MetaDir::ObsmKey(k) => WHAT_OBSM + k as u64,
        }
    }

    fn of_index(i: u64) -> MetaDir {
        match i {
            WHAT_OBS => MetaDir::Obs,
            WHAT_NEIGHBORS => MetaDir::Neighbors,
            2 => MetaDir::Obsm,
            3 => MetaDir::ObsFeatures,
            k => MetaDir::ObsmKey((k - WHAT_OBSM) as usize),
        }
    }

    /// Whether dataset `r` has this directory.
    fn exists(self, r: &ReadyDataset) -> bool {
        let a = &r.archive;
        match self {
            MetaDir::Obs | MetaDir::ObsFeatures => a.obs.is_some(),
            MetaDir::Neighbors => a.neighbors().is_some(),
            MetaDir::Obsm => !a.obsm_keys().is_empty(),
            MetaDir::ObsmKey(k) => k < a.obsm_keys().len(),
        }
    }
}

/// A metadata range: obs parquet (`what` 0) or obsm key k (`WHAT_OBSM + k`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct MetaRange {
    dataset: u16,
    what: u64,
    first: u64,
    end: u64,
}

fn dir_ino(id: u16, d: MetaDir) -> u64 {
    ino(Kind::MetaDir, id, d.index())
}

fn file_ino(id: u16, what: u64, row: u64) -> u64 {
    ino(Kind::MetaFile, id, (what << ROW_BITS) | row)
}

/// `obs`, `neighbors`, `obsm`, `obs_features` of a dataset directory, those it has.
pub(super) fn dataset_entries(id: u16, r: &ReadyDataset) -> Vec<(u64, NodeType, String)> {
    [
        (MetaDir::ObsFeatures, "obs_features"),
        (MetaDir::Obs, "obs"),
        (MetaDir::Neighbors, "neighbors"),
        (MetaDir::Obsm, "obsm"),
    ]
    .into_iter()
    .filter(|(d, _)| d.exists(r))
    .map(|(d, name)| (dir_ino(id, d), NodeType::Dir, name.to_string()))
    .collect()
}

/// The inode of `name` in a dataset directory, when it is a metadata directory.
pub(super) fn dataset_child(id: u16, r: &ReadyDataset, name: &str) -> Option<u64> {
    dataset_entries(id, r)
        .into_iter()
        .find(|(_, _, n)| n == name)
        .map(|(i, _, _)| i)
}

/// What a metadata inode stands for: a rendered file or directory, or a real file of the store
/// (`obs_features/`, `obsm/<KEY>.npy`, the neighbor arrays).
pub(super) enum MetaNode {
    Meta(Meta),
    StoreFile(PathBuf),
}

impl Namespace {
    /// The node of a metadata inode.
    pub(super) fn meta_part(&self, r: &ReadyDataset, kind: Kind, index: u64) -> Option<MetaNode> {
        let (what, row) = (index >> ROW_BITS, index & ((1 << ROW_BITS) - 1));
        let meta = match kind {
            Kind::MetaDir => {
                let d = MetaDir::of_index(index);
                return d.exists(r).then_some(MetaNode::Meta(Meta::Dir(d)));
            }
            Kind::MetaStore => return self.store_file(r, what, row).map(MetaNode::StoreFile),
            Kind::MetaFile => match what {
                WHAT_OBS => Meta::ObsJson(row),
                WHAT_NEIGHBORS => Meta::NeighborNpz(row),
                k => Meta::Obsm {
                    key: (k - WHAT_OBSM) as usize,
                    first: row,
                    end: row + 1,
                    single: true,
                },
            },
            Kind::MetaRange => {
                let m = self.meta_ranges.get(index)?;
                match m.what {
                    WHAT_OBS => Meta::ObsParquet {
                        first: m.first,
                        end: m.end,
                    },
                    k => Meta::Obsm {
                        key: (k - WHAT_OBSM) as usize,
                        first: m.first,
                        end: m.end,
                        single: false,
                    },
                }
            }
            _ => return None,
        };
        valid(r, &meta).then_some(MetaNode::Meta(meta))
    }

    fn store_file(&self, r: &ReadyDataset, what: u64, i: u64) -> Option<PathBuf> {
        let a = &r.archive;
        match what {
            0 => r
                .obs_feature_files
                .get(i as usize)
                .map(|f| a.path.join(crate::obs::OBS_DIR).join(f)),
            _ => a.obsm_keys().get(i as usize).map(|o| o.path.clone()),
        }
    }

    /// The inode of `name` in metadata directory `dir` of dataset `id`.
    pub(super) fn meta_child(
        &self,
        id: u16,
        r: &ReadyDataset,
        dir: u64,
        name: &str,
    ) -> FsResult<u64> {
        let d = MetaDir::of_index(dir);
        if !d.exists(r) {
            return Err(FsError::NotFound);
        }
        let rows = r.archive.num_rows;
        let row_file = |what: u64, ext: &str| -> FsResult<u64> {
            let i = name
                .strip_suffix(ext)
                .and_then(parse_index)
                .ok_or(FsError::NotFound)?;
            if i >= rows || i >= 1 << ROW_BITS {
                return Err(FsError::NotFound);
            }
            Ok(file_ino(id, what, i))
        };
        let range = |what: u64, ext: &str| -> FsResult<u64> {
            let (first, end) = name
                .strip_suffix(ext)
                .and_then(parse_range)
                .ok_or(FsError::NotFound)?;
            if end > rows {
                return Err(FsError::NotFound);
            }
            let key = MetaRange {
                dataset: id,
                what,
                first,
                end,
            };
            let meta = match what {
                WHAT_OBS => Meta::ObsParquet { first, end },
                k => Meta::Obsm {
                    key: (k - WHAT_OBSM) as usize,
                    first,
                    end,
                    single: false,
                },
            };
            if !valid(r, &meta) {
                return Err(if what == WHAT_OBS && end - first > MAX_PARQUET_ROWS {
                    FsError::TooBig
                } else {
                    FsError::NotFound
                });
            }
            Ok(ino(Kind::MetaRange, id, self.meta_ranges.lookup_index(key)))
        };
        match d {
            MetaDir::Obs if name.ends_with(".parquet") => range(WHAT_OBS, ".parquet"),
            MetaDir::Obs => row_file(WHAT_OBS, ".json"),
            MetaDir::Neighbors => row_file(WHAT_NEIGHBORS, ".npz"),
            MetaDir::ObsmKey(k) if name.contains('-') => range(WHAT_OBSM + k as u64, ".npy"),
            MetaDir::ObsmKey(k) => row_file(WHAT_OBSM + k as u64, ".npy"),
            MetaDir::Obsm => obsm_child(id, r, name),
            MetaDir::ObsFeatures => {
                let i = r
                    .obs_feature_files
                    .iter()
                    .position(|f| f == name)
                    .ok_or(FsError::NotFound)?;
                Ok(ino(Kind::MetaStore, id, i as u64))
            }
        }
    }

    /// The bytes of an opened metadata file rendered whole (obs, neighbors), or None when it is
    /// read by range (obsm).
    pub(super) fn meta_render(&self, r: &ReadyDataset, m: &Meta) -> FsResult<Option<Vec<u8>>> {
        let a = &r.archive;
        Ok(match *m {
            Meta::Dir(_) | Meta::Obsm { .. } => None,
            Meta::ObsJson(i) => {
                let obs = r
                    .cells
                    .obs(&a.path)
                    .map_err(io_err)?
                    .ok_or(FsError::NotFound)?;
                Some(cells::obs_row_json(&obs, i).ok_or(FsError::NotFound)?)
            }
            Meta::ObsParquet { first, end } => {
                let obs = r
                    .cells
                    .obs(&a.path)
                    .map_err(io_err)?
                    .ok_or(FsError::NotFound)?;
                Some(
                    cells::obs_range_parquet(&obs, first, end)
                        .ok_or(FsError::NotFound)?
                        .map_err(io_err)?,
                )
            }
            Meta::NeighborNpz(i) => {
                let g = a.neighbors().ok_or(FsError::NotFound)?;
                Some(cells::neighbors_npz(g, i).map_err(io_err)?)
            }
        })
    }

    /// The exact size of a metadata file (None for a directory).
    pub(super) fn meta_size(&self, r: &ReadyDataset, m: &Meta) -> FsResult<Option<u64>> {
        let a = &r.archive;
        match *m {
            Meta::Dir(_) => Ok(None),
            Meta::NeighborNpz(i) => {
                let g = a.neighbors().ok_or(FsError::NotFound)?;
                cells::neighbors_npz_size(g, i).map(Some).map_err(io_err)
            }
            Meta::Obsm {
                key,
                first,
                end,
                single,
            } => {
                let o = a.obsm_keys().get(key).ok_or(FsError::NotFound)?;
                Ok(Some(cells::obsm_size(o, first, end, single)))
            }
            _ => Ok(self.meta_render(r, m)?.map(|b| b.len() as u64)),
        }
    }

    /// `size` bytes at `offset` of an obsm rendering.
    pub(super) fn meta_read(
        &self,
        r: &ReadyDataset,
        m: &Meta,
        offset: u64,
        size: u32,
    ) -> FsResult<Vec<u8>> {
        let Meta::Obsm {
            key,
            first,
            end,
            single,
        } = *m
        else {
            return Err(FsError::NotFound);
        };
        let o = r.archive.obsm_keys().get(key).ok_or(FsError::NotFound)?;
        cells::obsm_read(o, first, end, single, offset, size as usize).map_err(io_err)
    }
}

/// Whether `m` exists in `r` (rows in range, the key present, a parquet range in one block).
fn valid(r: &ReadyDataset, m: &Meta) -> bool {
    let a = &r.archive;
    match *m {
        Meta::Dir(d) => d.exists(r),
        Meta::ObsJson(i) => a.obs.is_some() && i < a.num_rows,
        Meta::NeighborNpz(i) => a.neighbors().is_some() && i < a.num_rows,
        Meta::Obsm { key, end, .. } => key < a.obsm_keys().len() && end <= a.num_rows,
        Meta::ObsParquet { first, end } => {
            let Some(obs) = &a.obs else { return false };
            let mut start = 0;
            let one_block = obs.blocks.iter().any(|b| {
                let inside = first >= start && end <= start + b.rows;
                start += b.rows;
                inside
            });
            one_block && end - first <= MAX_PARQUET_ROWS
        }
    }
}

/// `obsm/<KEY>` (a directory) or `obsm/<KEY>.npy` (the archive's file).
fn obsm_child(id: u16, r: &ReadyDataset, name: &str) -> FsResult<u64> {
    let keys = r.archive.obsm_keys();
    if let Some(k) = keys.iter().position(|o| o.key == name) {
        return Ok(dir_ino(id, MetaDir::ObsmKey(k)));
    }
    let stem = name.strip_suffix(".npy").ok_or(FsError::NotFound)?;
    let k = keys
        .iter()
        .position(|o| o.key == stem)
        .ok_or(FsError::NotFound)?;
    Ok(ino(Kind::MetaStore, id, (1 << ROW_BITS) | k as u64))
}

/// The listing of a metadata directory: row files from the page's offset on, or names.
pub(super) fn entries(page: &mut Page, id: u16, r: &ReadyDataset, d: MetaDir) {
    let rows = r.archive.num_rows.min(1 << ROW_BITS);
    let row_files = |page: &mut Page, what: u64, ext: &str| {
        let first = page.offset.max(Page::BASE) - Page::BASE;
        let end = rows.min(first + page.max as u64);
        for i in first..end {
            page.push(
                Page::BASE + i,
                file_ino(id, what, i),
                NodeType::File,
                format!("{i}{ext}"),
            );
        }
    };
    match d {
        MetaDir::Obs => row_files(page, WHAT_OBS, ".json"),
        MetaDir::Neighbors => row_files(page, WHAT_NEIGHBORS, ".npz"),
        MetaDir::ObsmKey(k) => row_files(page, WHAT_OBSM + k as u64, ".npy"),
        MetaDir::Obsm => {
            let mut v = Vec::new();
            for (k, o) in r.archive.obsm_keys().iter().enumerate() {
                v.push((
                    dir_ino(id, MetaDir::ObsmKey(k)),
                    NodeType::Dir,
                    o.key.clone(),
                ));
                let file = ino(Kind::MetaStore, id, (1 << ROW_BITS) | k as u64);
                v.push((file, NodeType::File, format!("{}.npy", o.key)));
            }
            page.extend(v);
        }
        MetaDir::ObsFeatures => {
            let files = r.obs_feature_files.iter().enumerate();
            page.extend(
                files
                    .map(|(i, f)| {
                        (
                            ino(Kind::MetaStore, id, i as u64),
                            NodeType::File,
                            f.clone(),
                        )
                    })
                    .collect(),
            );
        }
    }
}
