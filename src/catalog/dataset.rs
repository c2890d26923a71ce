//! One dataset of the catalogue: its state (uploading, queued, converting, ready, failed),
//! progress, lease, and once ready its open archive with the listing of its files. The
//! registry numbers datasets with ids that are never reused while the daemon runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use crate::archive::{Archive, FileNames};
use crate::convert::Progress;
use crate::lease::{Holder, Lease};
use crate::names::DatasetName;
use crate::render;

/// The archive files served at the top of a ready dataset, in listing order.
pub const ARCHIVE_FILES: [&str; 11] = [
    FileNames::DATA,
    FileNames::COL_PTR,
    FileNames::ROW_PTR,
    FileNames::METADATA,
    FileNames::DTYPES,
    FileNames::VERSION,
    FileNames::HEADER,
    crate::archive::cellmeta::neighbors::INDPTR,
    crate::archive::cellmeta::neighbors::INDICES,
    crate::archive::cellmeta::neighbors::VALUES,
    crate::archive::cellmeta::neighbors::KEY_FILE,
];

#[derive(Clone)]
pub enum State {
    Uploading,
    Queued,
    Converting,
    /// Being converted or concatenated by another daemon over the same store.
    Remote(Holder),
    Ready(Arc<ReadyDataset>),
    Failed(String),
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Uploading => "uploading",
            State::Queued => "queued",
            State::Converting | State::Remote(_) => "converting",
            State::Ready(_) => "ready",
            State::Failed(_) => "failed",
        }
    }
}

/// A published archive and the listing of its files.
pub struct ReadyDataset {
    pub archive: Archive,
    /// The files of `ARCHIVE_FILES` this archive has, in that order.
    pub archive_files: Vec<&'static str>,
    feature_dir: PathBuf,
    /// The files of the feature index directory, sorted.
    pub feature_files: Vec<String>,
    /// The files of `obs_features/`, sorted (none without it): listed once, as a published
    /// archive does not change.
    pub obs_feature_files: Vec<String>,
    feature_json: Vec<OnceLock<Vec<u8>>>,
    /// What the per-cell metadata files read once (`cellmeta::render`).
    pub cells: crate::render::cells::CellCache,
}

impl ReadyDataset {
    fn new(archive: Archive) -> ReadyDataset {
        let archive_files = ARCHIVE_FILES
            .iter()
            .copied()
            .filter(|f| archive.path.join(f).is_file())
            .collect();
        let feature_dir = [FileNames::FEATURES, FileNames::VAR_FEATURES]
            .iter()
            .map(|d| archive.path.join(d))
            .find(|d| d.is_dir())
            .unwrap_or_else(|| archive.path.join(FileNames::FEATURES));
        let feature_files = sorted_file_names(&feature_dir);
        let obs_feature_files = sorted_file_names(&archive.path.join(crate::obs::OBS_DIR));
        let blocks = archive.features.blocks.len();
        ReadyDataset {
            archive,
            archive_files,
            feature_dir,
            feature_files,
            obs_feature_files,
            feature_json: (0..blocks).map(|_| OnceLock::new()).collect(),
            cells: Default::default(),
        }
    }

    /// Feature block `k` as JSON, rendered at its first use.
    pub fn feature_json(&self, k: usize) -> Option<&[u8]> {
        let cell = self.feature_json.get(k)?;
        Some(cell.get_or_init(|| render::feature_json(&self.archive, k).unwrap_or_default()))
    }

    /// The path of `ARCHIVE_FILES[index]` in the archive.
    pub fn archive_file_path(&self, index: usize) -> Option<PathBuf> {
        ARCHIVE_FILES.get(index).map(|f| self.archive.path.join(f))
    }

    /// The path of `feature_files[index]`.
    pub fn feature_file_path(&self, index: usize) -> Option<PathBuf> {
        self.feature_files
            .get(index)
            .map(|f| self.feature_dir.join(f))
    }
}

pub struct Dataset {
    id: u16,
    name: DatasetName,
    state: Mutex<State>,
    rows_done: AtomicU64,
    rows_total: AtomicU64,
    has_input: AtomicBool,
    /// An upload whose writer has closed a descriptor (FUSE flush) but not yet released the
    /// file: it is about to be published (see `Catalog::await_publication`).
    upload_flushed: AtomicBool,
    /// NAME's store-wide lease while this daemon uploads, converts or concatenates it.
    lease: Mutex<Option<Lease>>,
    since: SystemTime,
}

impl Dataset {
    /// The registry's number for this dataset (never reused while the daemon runs).
    pub fn id(&self) -> u16 {
        self.id
    }

    pub fn name(&self) -> &DatasetName {
        &self.name
    }

    /// When this dataset was registered: the modification time of its directories.
    pub fn since(&self) -> SystemTime {
        self.since
    }

    pub fn state(&self) -> State {
        self.state.lock().expect("state lock").clone()
    }

    pub(super) fn set_state(&self, s: State) {
        *self.state.lock().expect("state lock") = s;
    }

    pub fn is_uploading(&self) -> bool {
        matches!(self.state(), State::Uploading)
    }

    /// Whether its input `NAME.h5ad` is in the store.
    pub fn has_input(&self) -> bool {
        self.has_input.load(Ordering::Relaxed)
    }

    pub(super) fn set_has_input(&self, yes: bool) {
        self.has_input.store(yes, Ordering::Relaxed);
    }

    /// Some work on it is waiting or running, here or in another daemon.
    pub fn busy(&self) -> bool {
        matches!(
            self.state(),
            State::Uploading | State::Queued | State::Converting | State::Remote(_)
        )
    }

    /// Serves `archive` as this dataset, with its progress complete.
    pub(super) fn set_ready(&self, archive: Archive) {
        self.rows_total.store(archive.num_rows, Ordering::Relaxed);
        self.rows_done.store(archive.num_rows, Ordering::Relaxed);
        self.set_state(State::Ready(Arc::new(ReadyDataset::new(archive))));
    }

    pub(super) fn keep_lease(&self, lease: Lease) {
        *self.lease.lock().expect("lease") = Some(lease);
    }

    pub(super) fn take_lease(&self) -> Option<Lease> {
        self.lease.lock().expect("lease").take()
    }

    pub fn ready(&self) -> Option<Arc<ReadyDataset>> {
        match self.state() {
            State::Ready(r) => Some(r),
            _ => None,
        }
    }

    /// The upload's writer closed a descriptor (`true`) or wrote again (`false`).
    pub fn mark_upload_flushed(&self, flushed: bool) {
        self.upload_flushed.store(flushed, Ordering::SeqCst);
    }

    pub(super) fn upload_flushed(&self) -> bool {
        self.upload_flushed.load(Ordering::SeqCst)
    }

    /// `status.json`: state, progress and, once ready, the archive's shape.
    pub fn status_json(&self) -> Vec<u8> {
        let state = self.state();
        let mut v = serde_json::json!({
            "name": self.name.as_str(),
            "state": state.name(),
            "rows_done": self.rows_done.load(Ordering::Relaxed),
            "rows_total": self.rows_total.load(Ordering::Relaxed),
            "error": match &state { State::Failed(e) => Some(e.clone()), _ => None },
            "input": self.has_input(),
        });
        if let State::Remote(h) = &state {
            v["by"] = format!("{} (pid {})", h.host, h.pid).into();
        }
        if let State::Ready(r) = &state {
            v["nnz"] = r.archive.nnz.into();
            v["data_dtype"] = r.archive.data_dtype.name().into();
            v["feature_blocks"] = r.archive.features.blocks.len().into();
        }
        let mut b = serde_json::to_vec(&v).expect("serialisable");
        b.push(b'\n');
        b
    }
}

impl Progress for Dataset {
    fn start(&self, total_rows: u64) {
        self.rows_total.store(total_rows, Ordering::Relaxed);
        self.rows_done.store(0, Ordering::Relaxed);
    }
    fn rows_done(&self, rows: u64) {
        self.rows_done.fetch_add(rows, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub(super) struct Registry {
    pub by_name: HashMap<DatasetName, Arc<Dataset>>,
    pub by_id: HashMap<u16, Arc<Dataset>>,
    next_id: u16,
}

impl Registry {
    pub fn insert(&mut self, name: DatasetName, state: State) -> Option<Arc<Dataset>> {
        if self.by_id.len() >= u16::MAX as usize {
            return None;
        }
        // Ids are not reused while the daemon runs, so a re-created name gets fresh inodes.
        let id = loop {
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if !self.by_id.contains_key(&self.next_id) {
                break self.next_id;
            }
        };
        let ds = Arc::new(Dataset {
            id,
            name: name.clone(),
            state: Mutex::new(state),
            rows_done: AtomicU64::new(0),
            rows_total: AtomicU64::new(0),
            has_input: AtomicBool::new(false),
            upload_flushed: AtomicBool::new(false),
            lease: Mutex::new(None),
            since: SystemTime::now(),
        });
        self.by_name.insert(name, ds.clone());
        self.by_id.insert(id, ds.clone());
        Some(ds)
    }

    pub fn remove(&mut self, name: &DatasetName) {
        if let Some(ds) = self.by_name.remove(name) {
            self.by_id.remove(&ds.id);
        }
    }
}

/// The names of the plain files in `dir`, sorted (none when it cannot be read): the files of a
/// feature or obs feature directory, as the mount lists them.
pub(crate) fn sorted_file_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
