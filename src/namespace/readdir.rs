//! Directory listings: one helper per kind of directory. Offsets are positions in the listing
//! ("." is 0, ".." is 1); the rows directory and a batch epoch's directory are produced from the
//! offset on, so `ls | head` on 10^8 rows returns at once.

use super::batches::epoch_entries;
use super::inode::{ino, Kind, CONTROL_INO, ROOT_INO};
use super::node::{archive_file_ino, Node, Part};
use super::page::Page;
use super::{DirEntry, FsError, FsResult, Namespace, NodeType};
use crate::catalog::{Dataset, ReadyDataset};

impl Namespace {
    /// Up to `max` entries after `offset` (0 = from the start; "." and ".." included).
    pub fn readdir(&self, dir: u64, offset: u64, max: usize) -> FsResult<Vec<DirEntry>> {
        let node = self.node(dir)?;
        let mut page = Page::new(offset, max);
        page.push(0, dir, NodeType::Dir, ".".into());
        page.push(1, ROOT_INO, NodeType::Dir, "..".into());
        match &node {
            Node::Root => page.extend(self.root_entries(offset)),
            Node::DatasetDir(ds) => page.extend(dataset_entries(ds)),
            Node::Ready(ds, r, Part::FeaturesDir) => page.extend(feature_entries(ds.id(), r)),
            Node::Ready(ds, r, Part::RowsDir) => row_entries(&mut page, ds.id(), r),
            Node::Ready(_, _, Part::CsrDir | Part::BatchesDir) => {}
            Node::Ready(_, r, Part::BatchDir(node)) => {
                let rest = page.room();
                page.append(epoch_entries(r, node, Page::BASE, offset, rest));
            }
            Node::Ready(ds, r, Part::Meta(super::metadata::Meta::Dir(d))) => {
                super::metadata::entries(&mut page, ds.id(), r, *d)
            }
            _ => {
                self.attr(dir, &node)?;
                return Err(FsError::NotDir);
            }
        }
        Ok(page.into_entries())
    }

    /// `.control`, then each dataset's directory and input, by name.
    fn root_entries(&self, offset: u64) -> Vec<(u64, NodeType, String)> {
        if offset == 0 {
            // A fresh listing sees what other daemons (or people) put in the store.
            self.catalog.rescan_if_stale();
        }
        let mut entries = vec![(CONTROL_INO, NodeType::File, ".control".to_string())];
        for ds in self.catalog.datasets() {
            let uploading = ds.is_uploading();
            if !uploading {
                let dir = ino(Kind::DatasetDir, ds.id(), 0);
                entries.push((dir, NodeType::Dir, ds.name().to_string()));
            }
            if uploading || ds.has_input() {
                let input = ino(Kind::Input, ds.id(), 0);
                entries.push((input, NodeType::File, ds.name().input_file_name()));
            }
        }
        entries
    }
}

/// `status.json`, and once ready the archive files, `features`, `rows`, `csr` and `batches`.
fn dataset_entries(ds: &Dataset) -> Vec<(u64, NodeType, String)> {
    let id = ds.id();
    let mut entries = vec![(
        ino(Kind::Status, id, 0),
        NodeType::File,
        "status.json".to_string(),
    )];
    if let Some(r) = ds.ready() {
        for f in &r.archive_files {
            entries.push((archive_file_ino(id, f), NodeType::File, f.to_string()));
        }
        for (kind, name) in [
            (Kind::FeaturesDir, "features"),
            (Kind::RowsDir, "rows"),
            (Kind::CsrDir, "csr"),
            (Kind::BatchesDir, "batches"),
        ] {
            entries.push((ino(kind, id, 0), NodeType::Dir, name.into()));
        }
        entries.extend(super::metadata::dataset_entries(id, &r));
    }
    entries
}

/// `<k>.json` per feature block, then the feature index's own files.
fn feature_entries(id: u16, r: &ReadyDataset) -> Vec<(u64, NodeType, String)> {
    let blocks = r.archive.features.blocks.len() as u64;
    let json = (0..blocks).map(|k| {
        let name = format!("{k}.json");
        (ino(Kind::FeatureJson, id, k), NodeType::File, name)
    });
    let files = r.feature_files.iter().enumerate().map(|(i, f)| {
        (
            ino(Kind::FeatureFile, id, i as u64),
            NodeType::File,
            f.clone(),
        )
    });
    json.chain(files).collect()
}

/// Only the rows of this page are produced.
fn row_entries(page: &mut Page, id: u16, r: &ReadyDataset) {
    let first = page.offset.max(Page::BASE) - Page::BASE;
    let end = r.archive.num_rows.min(first + page.max as u64);
    for i in first..end {
        page.push(
            Page::BASE + i,
            ino(Kind::Row, id, i),
            NodeType::File,
            format!("{i}.npy"),
        );
    }
}
