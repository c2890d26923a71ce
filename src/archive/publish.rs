//! Putting a written archive in place: `SealedArchive::publish` (one rename that never
//! replaces, then the parent directory's fsync, withdrawn if that fails), the temporary
//! directory removed unless published, the synced-write helpers the writer and the confined
//! workers' publisher share, and the test-only fault switch for every step.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::widths::IndexWidths;
use crate::dtype::Dtype;
use crate::error::{Error, IoContext, Result};

/// What a finished archive holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenArchive {
    pub path: PathBuf,
    pub rows: u64,
    pub nnz: u64,
    pub dtype: Dtype,
    pub widths: IndexWidths,
}

/// A temporary directory removed on drop unless it was renamed into place.
pub(super) struct TempDir {
    pub(super) path: PathBuf,
    pub(super) keep: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A complete archive in its temporary directory, every file written, synced and read back:
/// only the rename into place is left. Dropped unpublished, the directory is removed.
pub struct SealedArchive {
    pub(super) output: PathBuf,
    pub(super) written: WrittenArchive,
    pub(super) tmp: TempDir,
}

impl SealedArchive {
    /// The temporary directory holding the sealed archive.
    pub fn path(&self) -> &Path {
        &self.tmp.path
    }

    /// Renames the archive into place (never over an existing entry) and syncs the parent
    /// directory. If that sync fails the rename may not survive a crash, and a half-durable
    /// archive is what a later start must not find: it is renamed back and removed, and the
    /// error reported.
    pub fn publish(mut self) -> Result<WrittenArchive> {
        fault::at(Step::Rename, &self.output)?;
        rename_no_replace(&self.tmp.path, &self.output)?;
        let parent = self
            .output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let synced = fault::at(Step::DirSync, &self.output).and_then(|_| sync_dir(&parent));
        if let Err(e) = synced {
            // Withdraw: back under the temporary name, which `TempDir` removes on drop.
            if fs::rename(&self.output, &self.tmp.path).is_err() {
                let _ = fs::remove_dir_all(&self.output);
            }
            return Err(Error::archive(
                &self.output,
                format!("withdrawn after publishing, the directory could not be synced: {e}"),
            ));
        }
        self.tmp.keep = true;
        Ok(self.written.clone())
    }
}

/// The test-only fault switch of the writer: `SCDL_FS_WRITER_FAULT=STEP` (or `STEP:TEXT`, only
/// for outputs whose path contains TEXT) makes the writer fail at that step as a full disk or a
/// failing device would, so tests can check that no step leaves anything behind.
/// The test-only writer fault switch at the two publication steps, for a publisher outside this
/// module (the parent of a confined worker publishing its stage, `stage.rs`).
pub(crate) fn publication_fault(dirsync: bool, output: &Path) -> Result<()> {
    fault::at(
        if dirsync {
            fault::Step::DirSync
        } else {
            fault::Step::Rename
        },
        output,
    )
}

pub(super) mod fault {
    use super::*;

    pub const ENV: &str = "SCDL_FS_WRITER_FAULT";

    /// The steps between the first write and publication, in order.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Step {
        /// The three arrays written and synced.
        Arrays,
        /// The feature index written.
        Features,
        /// header.sch written: the archive is complete in its temporary directory.
        Header,
        /// The rename into place.
        Rename,
        /// The sync of the parent directory after the rename.
        DirSync,
    }

    impl Step {
        pub fn name(self) -> &'static str {
            match self {
                Step::Arrays => "arrays",
                Step::Features => "features",
                Step::Header => "header",
                Step::Rename => "rename",
                Step::DirSync => "dirsync",
            }
        }
    }

    pub fn at(step: Step, output: &Path) -> Result<()> {
        let Ok(fault) = std::env::var(ENV) else {
            return Ok(());
        };
        let hit = match fault.split_once(':') {
            Some((s, text)) => s == step.name() && output.to_string_lossy().contains(text),
            None => fault == step.name(),
        };
        if hit {
            return Err(Error::io(
                output,
                std::io::Error::other(format!("injected fault at step '{}'", step.name())),
            ));
        }
        Ok(())
    }
}

pub(super) use fault::Step;
pub use fault::{Step as WriterStep, ENV as WRITER_FAULT_ENV};

/// fsyncs every file of `dir`, then `dir`.
pub(super) fn sync_files(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).at(dir)? {
        let p = entry.at(dir)?.path();
        File::open(&p).and_then(|f| f.sync_all()).at(&p)?;
    }
    sync_dir(dir)
}

pub(super) fn write_synced(path: &Path, text: &str) -> Result<()> {
    write_synced_bytes(path, text.as_bytes())
}

pub(crate) fn write_synced_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).at(path)?;
    f.write_all(bytes).at(path)?;
    f.sync_all().at(path)
}

pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    File::open(path).and_then(|d| d.sync_all()).at(path)
}

/// rename(2) that fails instead of replacing an existing target (renameat2 RENAME_NOREPLACE),
/// so two writers racing for one name cannot clobber each other.
pub(crate) fn rename_no_replace(from: &Path, to: &Path) -> Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| Error::Usage(format!("{}: path contains NUL", p.display())))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINVAL) || err.raw_os_error() == Some(libc::ENOSYS) {
        // File systems without RENAME_NOREPLACE (some network ones): check, then rename.
        if to.symlink_metadata().is_ok() {
            return Err(Error::Usage(format!("{}: already exists", to.display())));
        }
        return fs::rename(from, to).at(to);
    }
    if err.raw_os_error() == Some(libc::EEXIST) {
        return Err(Error::Usage(format!("{}: already exists", to.display())));
    }
    Err(Error::io(to, err))
}
