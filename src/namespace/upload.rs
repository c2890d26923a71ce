//! The writes the tree accepts besides `.control`: dropping `NAME.h5ad` into the root (an
//! upload, published when its last descriptor is released), truncating it, and removing an
//! input. What they do to the store is the catalogue's; here they meet inodes and handles.

use super::inode::{self, ino, Kind, CONTROL_INO, ROOT_INO};
use super::{Attr, FsError, FsResult, Handle, Namespace, Opened};

impl Namespace {
    /// Creates `NAME.h5ad` in the root: a new upload, converted when its writer closes it.
    pub fn create(&self, parent: u64, name: &str) -> FsResult<(Attr, Opened)> {
        if parent != ROOT_INO {
            return Err(FsError::ReadOnly);
        }
        if name == ".control" {
            return Err(FsError::Exists);
        }
        let (dataset, file) = self.catalog.begin_upload(name)?;
        let input = ino(Kind::Input, dataset.id(), 0);
        let opened = self.opened(Handle::Upload { dataset, file }, false, false);
        Ok((self.getattr(input)?, opened))
    }

    /// Truncates an upload (the only node whose size may be set).
    pub fn set_size(&self, ino: u64, size: u64) -> FsResult<Attr> {
        if ino == CONTROL_INO {
            return self.getattr(ino);
        }
        let (kind, id, _) = inode::split(ino).ok_or(FsError::NotFound)?;
        let ds = self.catalog.dataset(id).ok_or(FsError::NotFound)?;
        match kind {
            Kind::Input if ds.is_uploading() => self.catalog.truncate_upload(&ds, size)?,
            Kind::Input => return Err(FsError::Access),
            _ => return Err(FsError::ReadOnly),
        }
        self.getattr(ino)
    }

    /// close(2) of a descriptor (FUSE flush, synchronous with close). An upload is published
    /// only at release, when its last descriptor is gone: a flush also comes from a forked child
    /// closing an inherited copy while the writer goes on. A flush only marks the upload as
    /// closing, so that a lookup of NAME/ waits for the imminent release (when `cp` returns,
    /// NAME/ exists); a later write clears the mark.
    pub fn flush(&self, fh: u64) -> FsResult<()> {
        if let Some(Handle::Upload { dataset, .. }) = self.handles.lock().expect("handles").get(&fh)
        {
            dataset.mark_upload_flushed(true);
        }
        Ok(())
    }

    /// Mode or owner changes: accepted (as no-ops) on inputs, refused elsewhere.
    pub fn accept_metadata_change(&self, ino: u64) -> FsResult<Attr> {
        match inode::split(ino) {
            // Copy tools (shutil.copy, cp -p) set modes and times on the file they wrote, also
            // after closing it: accepted on inputs, and ignored (modes are the store's).
            Some((Kind::Input, _, _)) => self.getattr(ino),
            _ => Err(FsError::Access),
        }
    }

    /// Removes `NAME.h5ad` from the root (the dataset, if converted, stays).
    pub fn unlink(&self, parent: u64, name: &str) -> FsResult<()> {
        if parent != ROOT_INO {
            return Err(FsError::ReadOnly);
        }
        let stem = name.strip_suffix(".h5ad").ok_or(FsError::Access)?;
        Ok(self.catalog.remove_input(stem)?)
    }
}
