//! The store: a plain directory holding one SCDL archive per dataset (`NAME/`), the dropped
//! inputs (`NAME.h5ad`), and the daemon's own state under `.scdl-fs/` (uploads in progress,
//! the status of failed conversions). Temporary archive directories (`.NAME.scdl-tmp.*`) live
//! beside their target until renamed into place. Paths are only ever built from validated
//! `DatasetName`s.
//!
//! Several daemons (one per node) may share one store: whatever one of them does to a NAME
//! (upload, convert, concat, delete) it does holding NAME's lease (`lease.rs`), and it only
//! cleans up leftovers of a NAME whose lease is free or whose holder is dead. Pending concats
//! are written down (`.scdl-fs/jobs/NAME.json`) so that a crash does not lose them.
//!
//! Symlinks: the store is a plain directory other people and daemons write into, and the daemon
//! may run as root. A symlink in it is never followed, opened or deleted through, so nothing
//! outside the store is ever read, served, created, modified or removed because of what the
//! store holds:
//! - `NAME/` or `NAME.h5ad` that is a symlink: ignored at scan (logged), left in place by
//!   `delete`;
//! - an archive with a symlink anywhere inside it (`NAME/data.npy -> /elsewhere`): refused by
//!   `open_archive`, so the dataset is served as failed, its files never opened;
//! - `.scdl-fs/` or one of its directories (`uploads/`, `failed/`, `jobs/`, `leases/`) that
//!   is a symlink: `Store::open` fails (it would otherwise clean, write or rename files in the
//!   directory it points to).
//!
//! The store root itself may be a symlink (`/var/lib/scdl-fs -> /data/scdl`): it is resolved once,
//! when the store is opened. [tests/store_traversal.rs]

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::archive::{write_synced_bytes, Archive, FileNames};
use crate::error::{Error, IoContext, Result};
use crate::lease::Leases;
use crate::names::DatasetName;

const STATE_DIR: &str = ".scdl-fs";

/// The default store: /var/lib/scdl-fs as root, else the XDG data directory.
pub fn default_store() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/scdl-fs");
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("scdl-fs");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/share/scdl-fs")
}

/// A failed conversion, remembered so a restart does not retry an input known to be bad.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FailureRecord {
    pub error: String,
    /// Size and mtime of the input that failed: a different file under the same name is retried.
    pub input_size: u64,
    pub input_mtime: i64,
}

/// A concat waiting to run (or failed), written down before it starts so that a daemon killed
/// midway leaves it to be restarted by the next one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConcatJob {
    /// The `.control` line that asked for it.
    pub command: String,
    pub sources: Vec<String>,
    /// Set when the concat failed: the target is shown as failed until deleted.
    #[serde(default)]
    pub error: Option<String>,
}

/// What the store holds under one name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Entry {
    pub has_archive: bool,
    pub has_input: bool,
    pub has_job: bool,
}

#[derive(Clone)]
pub struct Store {
    root: PathBuf,
    leases: std::sync::Arc<Leases>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<Store> {
        fs::create_dir_all(root).at(root)?;
        let root = root.canonicalize().at(root)?;
        // Not create_dir_all, which follows symlinks: the state directories must be our own.
        let state = root.join(STATE_DIR);
        own_dir(&state)?;
        own_dir(&state.join("leases"))?; // lease.rs's directory
        let leases = Leases::open(&state)?;
        let store = Store { root, leases };
        for d in [store.uploads_dir(), store.failures_dir(), store.jobs_dir()] {
            own_dir(&d)?;
        }
        store.clean_temporaries();
        Ok(store)
    }

    /// The leases through which the daemons sharing this store take turns on each name.
    pub fn leases(&self) -> &std::sync::Arc<Leases> {
        &self.leases
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn archive_path(&self, name: &DatasetName) -> PathBuf {
        self.root.join(name.as_str())
    }

    pub fn input_path(&self, name: &DatasetName) -> PathBuf {
        self.root.join(name.input_file_name())
    }

    fn uploads_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR).join("uploads")
    }

    fn failures_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR).join("failed")
    }

    fn jobs_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR).join("jobs")
    }

    fn job_path(&self, name: &DatasetName) -> PathBuf {
        self.jobs_dir().join(format!("{}.json", name.as_str()))
    }

    /// Writes down (durably) the concat that will produce NAME, or its failure.
    pub fn write_job(&self, name: &DatasetName, job: &ConcatJob) -> Result<()> {
        let bytes = serde_json::to_vec(job).expect("serialisable");
        write_synced_bytes(&self.job_path(name), &bytes)
    }

    pub fn job(&self, name: &DatasetName) -> Option<ConcatJob> {
        serde_json::from_slice(&fs::read(self.job_path(name)).ok()?).ok()
    }

    pub fn remove_job(&self, name: &DatasetName) {
        let _ = fs::remove_file(self.job_path(name));
    }

    /// Where a file being dropped through the mount is written until its writer closes it.
    pub fn upload_path(&self, name: &DatasetName) -> PathBuf {
        self.uploads_dir().join(name.input_file_name())
    }

    /// What the store holds under `name` right now.
    pub fn entry(&self, name: &DatasetName) -> Entry {
        Entry {
            has_archive: self.archive_path(name).is_dir(),
            has_input: self.input_path(name).is_file(),
            has_job: self.job(name).is_some(),
        }
    }

    /// Whether `name` is taken in the store: an archive or an input (of any file type) is there.
    pub fn holds(&self, name: &DatasetName) -> bool {
        self.input_path(name).exists() || self.archive_path(name).exists()
    }

    /// Creates the upload file of `name` (`O_EXCL`: an `AlreadyExists` error when one is there),
    /// readable by the converter's unprivileged user whatever the daemon's umask.
    pub fn create_upload(&self, name: &DatasetName) -> std::io::Result<fs::File> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.upload_path(name);
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        if let Err(e) = f.set_permissions(fs::Permissions::from_mode(0o644)) {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(f)
    }

    /// Sets the length of `name`'s upload in progress (a truncating open or `truncate(2)`).
    pub fn truncate_upload(&self, name: &DatasetName, size: u64) -> Result<()> {
        let path = self.upload_path(name);
        let f = fs::OpenOptions::new().write(true).open(&path).at(&path)?;
        f.set_len(size).at(&path)
    }

    /// Makes a finished upload `NAME.h5ad` in the store, durably (file and directory synced) and
    /// without replacing anything there; on failure the upload file is removed.
    pub fn publish_upload(&self, name: &DatasetName, file: &fs::File) -> Result<()> {
        let from = self.upload_path(name);
        let to = self.input_path(name);
        let published = file
            .sync_all()
            .at(&from)
            .and_then(|_| crate::archive::rename_no_replace(&from, &to))
            .and_then(|_| crate::archive::sync_dir(&self.root));
        if published.is_err() {
            let _ = fs::remove_file(&from);
        }
        published
    }

    /// Removes the input `NAME.h5ad` and the record of its failed conversion.
    pub fn remove_input(&self, name: &DatasetName) -> Result<()> {
        let path = self.input_path(name);
        fs::remove_file(&path).at(&path)?;
        self.clear_failure(name);
        Ok(())
    }

    /// Removes what interrupted daemons left: temporary archive directories and uploads that
    /// were never closed (a cut-off upload must not be converted as if complete). Only for names
    /// no live daemon holds: another node may be converting or uploading right now.
    fn clean_temporaries(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if let Some(name) = temp_owner(&file) {
                if self.leases.holder(&name).is_none() {
                    log::info!("removing interrupted work {file}");
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        if let Ok(entries) = fs::read_dir(self.uploads_dir()) {
            for e in entries.flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                let name = DatasetName::from_input_file(&file).ok();
                if name.is_none_or(|n| self.leases.holder(&n).is_none()) {
                    log::warn!("discarding unfinished upload {}", e.path().display());
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    /// Takes NAME's lease for work that writes NAME (upload, convert, concat) and, once taken,
    /// removes the leftovers of whoever held it before.
    pub fn claim(&self, name: &DatasetName, purpose: &str) -> Result<crate::lease::Claim> {
        let claim = self.leases.try_acquire(name, purpose)?;
        if let crate::lease::Claim::Taken(_) = &claim {
            self.clean_leftovers(name);
        }
        Ok(claim)
    }

    /// Removes NAME's leftovers (temporary archives, an unfinished upload) once this daemon holds
    /// NAME's lease: whoever made them is gone.
    fn clean_leftovers(&self, name: &DatasetName) {
        if let Ok(entries) = fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                if temp_owner(&file).as_ref() == Some(name) {
                    log::info!("removing interrupted work {file}");
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let _ = fs::remove_file(self.upload_path(name));
    }

    /// Every dataset name the store knows: archive directories, dropped inputs, pending concats.
    pub fn scan(&self) -> Result<Vec<(DatasetName, Entry)>> {
        let mut found: std::collections::BTreeMap<DatasetName, Entry> = Default::default();
        for e in fs::read_dir(&self.root).at(&self.root)?.flatten() {
            let file_name = e.file_name().to_string_lossy().into_owned();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if let Ok(name) = DatasetName::parse(&file_name) {
                    found.entry(name).or_default().has_archive = true;
                }
            } else if ft.is_file() {
                if let Ok(name) = DatasetName::from_input_file(&file_name) {
                    found.entry(name).or_default().has_input = true;
                }
            } else if ft.is_symlink() {
                log::warn!("ignoring symlink {} in the store", e.path().display());
            }
        }
        if let Ok(entries) = fs::read_dir(self.jobs_dir()) {
            for e in entries.flatten() {
                let file_name = e.file_name().to_string_lossy().into_owned();
                let name = file_name.strip_suffix(".json").map(DatasetName::parse);
                if let Some(Ok(name)) = name {
                    found.entry(name).or_default().has_job = true;
                }
            }
        }
        Ok(found.into_iter().collect())
    }

    /// Opens the archive `NAME/`, refusing one that is, or holds, a symlink (module doc).
    pub fn open_archive(&self, name: &DatasetName) -> Result<Archive> {
        let path = self.archive_path(name);
        if let Some(link) = find_symlink(&path)? {
            return Err(Error::archive(
                &path,
                format!(
                    "{} is a symlink; archives in the store must not contain symlinks",
                    link.display()
                ),
            ));
        }
        Archive::open(&path)
    }

    pub fn has_archive(&self, name: &DatasetName) -> bool {
        self.archive_path(name).join(FileNames::METADATA).exists()
    }

    fn failure_path(&self, name: &DatasetName) -> PathBuf {
        self.failures_dir().join(format!("{}.json", name.as_str()))
    }

    fn input_identity(&self, name: &DatasetName) -> Option<(u64, i64)> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(self.input_path(name)).ok()?;
        Some((m.len(), m.mtime()))
    }

    pub fn record_failure(&self, name: &DatasetName, error: &str) -> Result<()> {
        let (input_size, input_mtime) = self.input_identity(name).unwrap_or((0, 0));
        let rec = FailureRecord {
            error: error.to_string(),
            input_size,
            input_mtime,
        };
        let bytes = serde_json::to_vec(&rec).expect("serialisable");
        write_synced_bytes(&self.failure_path(name), &bytes)
    }

    /// The recorded failure of this name's current input, if any.
    pub fn failure(&self, name: &DatasetName) -> Option<String> {
        let rec: FailureRecord =
            serde_json::from_slice(&fs::read(self.failure_path(name)).ok()?).ok()?;
        (self.input_identity(name) == Some((rec.input_size, rec.input_mtime))).then_some(rec.error)
    }

    pub fn clear_failure(&self, name: &DatasetName) {
        let _ = fs::remove_file(self.failure_path(name));
    }

    /// Deletes a dataset's archive (atomically hidden first, then removed) and its input.
    pub fn delete(&self, name: &DatasetName) -> Result<()> {
        // lstat, not exists(): a symlink put in the place of NAME/ or NAME.h5ad is left alone.
        let kind = |p: &Path| fs::symlink_metadata(p).ok().map(|m| m.file_type());
        let archive = self.archive_path(name);
        if kind(&archive).is_some_and(|t| t.is_dir()) {
            let hidden = crate::archive::temp_path_for(&archive)?;
            fs::rename(&archive, &hidden).at(&archive)?;
            fs::remove_dir_all(&hidden).at(&hidden)?;
        }
        let input = self.input_path(name);
        if kind(&input).is_some_and(|t| t.is_file()) {
            match fs::remove_file(&input) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&input, e)),
            }
        }
        self.clear_failure(name);
        self.remove_job(name);
        Ok(())
    }
}

/// The dataset a temporary directory (`.NAME.scdl-tmp.PID.N`) belongs to.
fn temp_owner(file: &str) -> Option<DatasetName> {
    let (name, _) = file.strip_prefix('.')?.split_once(".scdl-tmp.")?;
    DatasetName::parse(name).ok()
}

/// The first symlink at or below `path` (not following any), if there is one.
fn find_symlink(path: &Path) -> Result<Option<PathBuf>> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        // Archive::open reports a missing archive with its own message.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    if meta.file_type().is_symlink() {
        return Ok(Some(path.to_path_buf()));
    }
    if meta.is_dir() {
        for e in fs::read_dir(path).at(path)? {
            let e = e.at(path)?;
            if let Some(link) = find_symlink(&e.path())? {
                return Ok(Some(link));
            }
        }
    }
    Ok(None)
}

/// Makes directory `d` unless it exists; refuses anything there that is not a real directory
/// (a symlink would lead the store's own writes and clean-ups elsewhere).
fn own_dir(d: &Path) -> Result<()> {
    match fs::symlink_metadata(d) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::Usage(format!(
            "{}: not a directory (a symlink?): the store's state directories must be real \
             directories",
            d.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match fs::create_dir(d) {
            Ok(()) => Ok(()),
            // Another daemon opening the same store just made it.
            Err(e)
                if e.kind() == std::io::ErrorKind::AlreadyExists
                    && fs::symlink_metadata(d).is_ok_and(|m| m.is_dir()) =>
            {
                Ok(())
            }
            Err(e) => Err(Error::io(d, e)),
        },
        Err(e) => Err(Error::io(d, e)),
    }
}
