//! The store: a plain directory holding one SCDL archive per dataset (`NAME/`), the dropped
//! inputs (`NAME.h5ad`), and the daemon's own state under `.scdl-fs/` (uploads in progress,
//! the status of failed conversions). Temporary archive directories (`.NAME.scdl-tmp.*`) live
//! beside their target until renamed into place. Paths are only ever built from validated
//! `DatasetName`s.
//!
//! Symlinks: the store is a plain directory other people and daemons write into, and the daemon
//! may run as root. A symlink in it is never followed, opened or deleted through, so nothing
//! outside the store is ever read, served, created, modified or removed because of what the
//! store holds:
//! - `NAME/` or `NAME.h5ad` that is a symlink: ignored at scan (logged), left in place by
//!   `delete`;
//! - an archive with a symlink anywhere inside it (`NAME/data.npy -> /elsewhere`): refused by
//!   `open_archive`, so the dataset is served as failed, its files never opened;
//! - `.scdl-fs/`, `.scdl-fs/uploads/` or `.scdl-fs/failed/` that is a symlink: `Store::open`
//!   fails (it would otherwise clean, write or rename files in the directory it points to).
//!
//! The store root itself may be a symlink (`/var/lib/scdl-fs -> /data/scdl`): it is resolved once,
//! when the store is opened. [tests/store_traversal.rs]

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::archive::{write_synced_bytes, Archive, FileNames};
use crate::error::{Error, IoContext, Result};
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

#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<Store> {
        fs::create_dir_all(root).at(root)?;
        let root = root.canonicalize().at(root)?;
        let store = Store { root };
        // Not create_dir_all, which follows symlinks: the state directories must be our own.
        for d in [
            store.root.join(STATE_DIR),
            store.uploads_dir(),
            store.failures_dir(),
        ] {
            match fs::symlink_metadata(&d) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(Error::Usage(format!(
                        "{}: not a directory (a symlink?): the store's state directories must \
                         be real directories",
                        d.display()
                    )))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => match fs::create_dir(&d) {
                    Ok(()) => {}
                    // Another daemon opening the same store just made it.
                    Err(e)
                        if e.kind() == std::io::ErrorKind::AlreadyExists
                            && fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir()) => {}
                    Err(e) => return Err(Error::io(&d, e)),
                },
                Err(e) => return Err(Error::io(&d, e)),
            }
        }
        store.clean_temporaries();
        Ok(store)
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

    /// Where a file being dropped through the mount is written until its writer closes it.
    pub fn upload_path(&self, name: &DatasetName) -> PathBuf {
        self.uploads_dir().join(name.input_file_name())
    }

    /// Removes what an interrupted daemon left: temporary archive directories and uploads that
    /// were never closed (a cut-off upload must not be converted as if complete).
    fn clean_temporaries(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".scdl-tmp.") {
                log::info!("removing interrupted conversion {name}");
                let _ = fs::remove_dir_all(e.path());
            }
        }
        if let Ok(entries) = fs::read_dir(self.uploads_dir()) {
            for e in entries.flatten() {
                log::warn!("discarding unfinished upload {}", e.path().display());
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Every dataset name the store knows: archive directories and dropped inputs.
    pub fn scan(&self) -> Result<Vec<(DatasetName, bool, bool)>> {
        let mut found: std::collections::BTreeMap<DatasetName, (bool, bool)> = Default::default();
        for e in fs::read_dir(&self.root).at(&self.root)?.flatten() {
            let file_name = e.file_name().to_string_lossy().into_owned();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if let Ok(name) = DatasetName::parse(&file_name) {
                    found.entry(name).or_default().0 = true;
                }
            } else if ft.is_file() {
                if let Ok(name) = DatasetName::from_input_file(&file_name) {
                    found.entry(name).or_default().1 = true;
                }
            } else if ft.is_symlink() {
                log::warn!("ignoring symlink {} in the store", e.path().display());
            }
        }
        Ok(found.into_iter().map(|(n, (a, i))| (n, a, i)).collect())
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
        Ok(())
    }
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
