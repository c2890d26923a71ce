//! The staging directory of a confined worker, and how the daemon takes the worker's archive back.
//!
//! An unprivileged worker cannot create entries in a root-owned store, so its parent makes
//! `.NAME.scdl-tmp.PID.N/` beside the output (the hidden temporary name the store already cleans
//! up after a crash), hands it to the worker's identity and passes it as a descriptor. The worker
//! writes and seals its archive in `STAGE/archive` and exits. The parent then checks that the
//! worker left nothing but plain directories and singly linked regular files (a compromised worker
//! may have planted symlinks or hard links), gives everything back to its own uid and gid, renames
//! `STAGE/archive` to the output (no replace) and fsyncs the output's directory. Dropped before
//! that, a stage removes itself and everything in it.

use std::fs::{self, File};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::archive::{publication_fault, rename_no_replace, sync_dir, temp_path_for};
use crate::confine::Identity;
use crate::error::{Error, IoContext, Result};

/// The worker's archive inside the stage.
pub const ARCHIVE: &str = "archive";

pub struct Stage {
    dir: PathBuf,
    handle: File,
    output: PathBuf,
    /// The identity the stage was handed to (its contents are taken back from it).
    owner: Option<Identity>,
    published: bool,
}

impl Stage {
    /// A new empty stage for `output` (which must not exist), writable by `owner` only.
    pub fn create(output: &Path, owner: Option<Identity>) -> Result<Stage> {
        if output.symlink_metadata().is_ok() {
            return Err(Error::Usage(format!(
                "{}: already exists",
                output.display()
            )));
        }
        let dir = temp_path_for(output)?;
        fs::DirBuilder::new().mode(0o700).create(&dir).at(&dir)?;
        let stage = Stage {
            handle: File::open(&dir).at(&dir)?,
            dir,
            output: output.to_path_buf(),
            owner,
            published: false,
        };
        if let Some(id) = owner {
            std::os::unix::fs::fchown(&stage.handle, Some(id.uid), Some(id.gid)).at(&stage.dir)?;
        }
        Ok(stage)
    }

    /// The stage directory, for the worker (read and write beneath it).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.handle.as_fd()
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Takes the worker's sealed archive back and renames it into place.
    pub fn publish(mut self) -> Result<()> {
        let archive = self.dir.join(ARCHIVE);
        let meta = archive.symlink_metadata().at(&archive)?;
        if !meta.is_dir() {
            return Err(Error::archive(
                &self.output,
                "the converter left no archive directory",
            ));
        }
        self.reclaim(&archive)?;
        publication_fault(false, &self.output)?;
        rename_no_replace(&archive, &self.output)?;
        if let Some(parent) = self.output.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Err(e) = publication_fault(true, &self.output).and_then(|_| sync_dir(parent)) {
                // Not durable: take it back (the stage is then removed), as ArchiveWriter's own
                // publish does, so a later start never serves an archive that may vanish.
                let _ = std::fs::rename(&self.output, &archive);
                return Err(e);
            }
        }
        self.published = true;
        let _ = fs::remove_dir_all(&self.dir);
        Ok(())
    }

    /// Checks every entry below `dir` (never following a link) and gives it back to this process.
    fn reclaim(&self, dir: &Path) -> Result<()> {
        // SAFETY: geteuid/getegid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let mut pending = vec![dir.to_path_buf()];
        while let Some(d) = pending.pop() {
            for entry in fs::read_dir(&d).at(&d)? {
                let path = entry.at(&d)?.path();
                let meta = path.symlink_metadata().at(&path)?;
                let ft = meta.file_type();
                if ft.is_dir() {
                    pending.push(path.clone());
                } else if !ft.is_file() || meta.nlink() != 1 {
                    return Err(Error::archive(
                        &self.output,
                        format!(
                            "the converter left {} that is not a plain file",
                            path.strip_prefix(dir).unwrap_or(&path).display()
                        ),
                    ));
                }
                if self.owner.is_some() {
                    std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).at(&path)?;
                }
            }
        }
        if self.owner.is_some() {
            std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).at(dir)?;
        }
        Ok(())
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
