//! Resolving the tree: a name in a directory to an inode (`child`), and an inode to the node it
//! stands for (`node`), on which getattr, open, read and readdir match.

use std::path::PathBuf;
use std::sync::Arc;

use super::batches::{BatchKey, BatchNode, Level};
use super::inode::{
    self, ino, parse_index, parse_range, Kind, Range, CONTROL_INO, ROOT_INO, STATS_INO,
};
use super::metadata::MetaNode;
use super::{io_err, FsError, FsResult, Namespace};
use crate::catalog::{Dataset, ReadyDataset, ARCHIVE_FILES};
use crate::render::{self, RowSpan};

/// What an inode stands for, with what serving it needs.
pub(super) enum Node {
    Root,
    Control,
    Stats,
    DatasetDir(Arc<Dataset>),
    Status(Arc<Dataset>),
    Input(Arc<Dataset>),
    /// A node inside a ready dataset.
    Ready(Arc<Dataset>, Arc<ReadyDataset>, Part),
}

/// A node inside a ready dataset.
pub(super) enum Part {
    FeaturesDir,
    RowsDir,
    CsrDir,
    /// A real store file: an archive file or a file of the feature index.
    File(PathBuf),
    FeatureJson(usize),
    /// `rows/<i>.npy`.
    Row(RowSpan),
    /// `rows/<a>-<b>.npy`, or `csr/<a>-<b>.npz` when `csr`.
    Range {
        span: RowSpan,
        csr: bool,
    },
    /// Per-cell metadata (`metadata.rs`).
    Meta(super::metadata::Meta),
    /// `batches/`.
    BatchesDir,
    /// `batches/<PLAN>/` or `batches/<PLAN>/<EPOCH>/`.
    BatchDir(BatchNode),
    /// `batches/<PLAN>/<EPOCH>/<K>.<ext>`, with its size once computed.
    BatchFile(BatchKey, Option<u64>),
}

/// The inode of archive file `name` of dataset `id`.
pub(super) fn archive_file_ino(id: u16, name: &str) -> u64 {
    let index = ARCHIVE_FILES
        .iter()
        .position(|f| *f == name)
        .expect("known");
    ino(Kind::ArchiveFile, id, index as u64)
}

impl Namespace {
    /// The node of `ino`, if it still exists.
    pub(super) fn node(&self, ino: u64) -> FsResult<Node> {
        match ino {
            ROOT_INO => return Ok(Node::Root),
            CONTROL_INO => return Ok(Node::Control),
            STATS_INO => return Ok(Node::Stats),
            _ => {}
        }
        let (kind, id, index) = inode::split(ino).ok_or(FsError::NotFound)?;
        let ds = self.catalog.dataset(id).ok_or(FsError::NotFound)?;
        match kind {
            Kind::DatasetDir => Ok(Node::DatasetDir(ds)),
            Kind::Status => Ok(Node::Status(ds)),
            Kind::Input => Ok(Node::Input(ds)),
            _ => {
                let r = ds.ready().ok_or(FsError::NotFound)?;
                let part = self.part(&r, kind, index).ok_or(FsError::NotFound)?;
                Ok(Node::Ready(ds, r, part))
            }
        }
    }

    fn part(&self, r: &ReadyDataset, kind: Kind, index: u64) -> Option<Part> {
        match kind {
            Kind::FeaturesDir => Some(Part::FeaturesDir),
            Kind::RowsDir => Some(Part::RowsDir),
            Kind::CsrDir => Some(Part::CsrDir),
            Kind::ArchiveFile => r.archive_file_path(index as usize).map(Part::File),
            Kind::FeatureFile => r.feature_file_path(index as usize).map(Part::File),
            Kind::FeatureJson => ((index as usize) < r.archive.features.blocks.len())
                .then_some(Part::FeatureJson(index as usize)),
            Kind::Row => RowSpan::new(&r.archive, index, index + 1, true).map(Part::Row),
            Kind::Range => {
                let range = self.ranges.get(index)?;
                let span = RowSpan::new(&r.archive, range.first, range.end, false)?;
                Some(Part::Range {
                    span,
                    csr: range.csr,
                })
            }
            Kind::MetaDir | Kind::MetaFile | Kind::MetaRange | Kind::MetaStore => {
                Some(match self.meta_part(r, kind, index)? {
                    MetaNode::Meta(m) => Part::Meta(m),
                    MetaNode::StoreFile(path) => Part::File(path),
                })
            }
            Kind::BatchesDir => Some(Part::BatchesDir),
            Kind::Batch => match self.batches.node(index)? {
                (
                    BatchNode {
                        level: Level::File(key),
                        ..
                    },
                    size,
                ) => Some(Part::BatchFile(key, size)),
                (node, _) => Some(Part::BatchDir(node)),
            },
            Kind::DatasetDir | Kind::Input | Kind::Status => None,
        }
    }

    /// The ready dataset numbered `id`.
    pub(super) fn ready(&self, id: u16) -> FsResult<Arc<ReadyDataset>> {
        let ds = self.catalog.dataset(id).ok_or(FsError::NotFound)?;
        ds.ready().ok_or(FsError::NotFound)
    }

    /// The inode of `name` in directory `parent`.
    pub(super) fn child(&self, parent: u64, name: &str) -> FsResult<u64> {
        if parent == ROOT_INO {
            return self.child_of_root(name);
        }
        let (kind, id, index) = inode::split(parent).ok_or(FsError::NotFound)?;
        if kind == Kind::DatasetDir && name == "status.json" {
            self.catalog.dataset(id).ok_or(FsError::NotFound)?;
            return Ok(ino(Kind::Status, id, 0));
        }
        if !matches!(
            kind,
            Kind::DatasetDir
                | Kind::FeaturesDir
                | Kind::RowsDir
                | Kind::CsrDir
                | Kind::BatchesDir
                | Kind::Batch
                | Kind::MetaDir
        ) {
            return Err(FsError::NotDir);
        }
        let r = self.ready(id)?;
        match kind {
            Kind::DatasetDir => dataset_child(id, &r, name),
            Kind::FeaturesDir => features_child(id, &r, name),
            Kind::RowsDir => self.rows_child(id, &r, name),
            Kind::MetaDir => self.meta_child(id, &r, index, name),
            Kind::BatchesDir => self.batches.child(id, &r, None, name),
            Kind::Batch => {
                let (parent, _) = self.batches.node(index).ok_or(FsError::NotFound)?;
                self.batches.child(id, &r, Some(parent), name)
            }
            _ => self.csr_child(id, &r, name),
        }
    }

    fn child_of_root(&self, name: &str) -> FsResult<u64> {
        if name == ".control" {
            return Ok(CONTROL_INO);
        }
        if name == ".stats" {
            return Ok(STATS_INO);
        }
        if let Some(stem) = name.strip_suffix(".h5ad") {
            let ds = self.catalog.dataset_named(stem).ok_or(FsError::NotFound)?;
            return if ds.is_uploading() || ds.has_input() {
                Ok(ino(Kind::Input, ds.id(), 0))
            } else {
                Err(FsError::NotFound)
            };
        }
        let ds = self.catalog.dataset_named(name).ok_or(FsError::NotFound)?;
        self.catalog.await_publication(&ds);
        if ds.is_uploading() {
            return Err(FsError::NotFound);
        }
        Ok(ino(Kind::DatasetDir, ds.id(), 0))
    }

    /// `rows/<i>.npy` or `rows/<a>-<b>.npy`.
    fn rows_child(&self, id: u16, r: &ReadyDataset, name: &str) -> FsResult<u64> {
        let stem = name.strip_suffix(".npy").ok_or(FsError::NotFound)?;
        if let Some(i) = parse_index(stem) {
            // saturating: "18446744073709551615.npy" is no row (found by fuzzing: overflow).
            RowSpan::new(&r.archive, i, i.saturating_add(1), true).ok_or(FsError::NotFound)?;
            return Ok(ino(Kind::Row, id, i));
        }
        let (first, end) = parse_range(stem).ok_or(FsError::NotFound)?;
        RowSpan::new(&r.archive, first, end, false).ok_or(FsError::NotFound)?;
        Ok(self.ranges.lookup(Range {
            dataset: id,
            csr: false,
            first,
            end,
        }))
    }

    /// `csr/<a>-<b>.npz`, unless it would be larger than a rendered `.npz` may be.
    fn csr_child(&self, id: u16, r: &ReadyDataset, name: &str) -> FsResult<u64> {
        let stem = name.strip_suffix(".npz").ok_or(FsError::NotFound)?;
        let (first, end) = parse_range(stem).ok_or(FsError::NotFound)?;
        let span = RowSpan::new(&r.archive, first, end, false).ok_or(FsError::NotFound)?;
        if render::npz_size(&r.archive, &span).map_err(io_err)? > render::MAX_NPZ_BYTES {
            return Err(FsError::TooBig);
        }
        Ok(self.ranges.lookup(Range {
            dataset: id,
            csr: true,
            first,
            end,
        }))
    }
}

/// An archive file, or `features`, `rows`, `csr`, `batches`.
fn dataset_child(id: u16, r: &ReadyDataset, name: &str) -> FsResult<u64> {
    if r.archive_files.contains(&name) {
        return Ok(archive_file_ino(id, name));
    }
    match name {
        "features" => Ok(ino(Kind::FeaturesDir, id, 0)),
        "rows" => Ok(ino(Kind::RowsDir, id, 0)),
        "csr" => Ok(ino(Kind::CsrDir, id, 0)),
        "batches" => Ok(ino(Kind::BatchesDir, id, 0)),
        _ => super::metadata::dataset_child(id, r, name).ok_or(FsError::NotFound),
    }
}

/// `features/<k>.json`, or a file of the feature index.
fn features_child(id: u16, r: &ReadyDataset, name: &str) -> FsResult<u64> {
    if let Some(k) = name.strip_suffix(".json").and_then(parse_index) {
        if (k as usize) < r.archive.features.blocks.len() {
            return Ok(ino(Kind::FeatureJson, id, k));
        }
    }
    let i = r
        .feature_files
        .iter()
        .position(|f| f == name)
        .ok_or(FsError::NotFound)?;
    Ok(ino(Kind::FeatureFile, id, i as u64))
}
