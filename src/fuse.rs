//! The FUSE adapter: a thin `fuser::Filesystem` over `Namespace`, translating inode numbers,
//! attributes and errors, and using FUSE passthrough for the real archive files when the
//! kernel offers it (reads then never enter the daemon).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::namespace::{Attr, FsError, Namespace, NodeType, Opened};

pub struct ScdlFs {
    ns: Arc<Namespace>,
    uid: u32,
    gid: u32,
    passthrough: bool,
    /// Backing ids of passthrough opens by inode, with their open count: the kernel wants every
    /// open of one inode to share one backing file, and dropping the id closes it.
    backing: Mutex<HashMap<u64, (Arc<BackingId>, usize)>>,
    /// Which inode each passthrough handle belongs to.
    backing_handles: Mutex<HashMap<u64, u64>>,
}

impl ScdlFs {
    pub fn new(ns: Arc<Namespace>) -> ScdlFs {
        ScdlFs {
            ns,
            // SAFETY: getuid/getgid have no preconditions and cannot fail.
            uid: unsafe { libc::getuid() },
            // SAFETY: as above.
            gid: unsafe { libc::getgid() },
            passthrough: false,
            backing: Mutex::new(HashMap::new()),
            backing_handles: Mutex::new(HashMap::new()),
        }
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        let (kind, nlink) = match a.kind {
            NodeType::Dir => (FileType::Directory, 2),
            NodeType::File => (FileType::RegularFile, 1),
        };
        FileAttr {
            ino: INodeNo(a.ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: a.mtime,
            mtime: a.mtime,
            ctime: a.mtime,
            crtime: a.mtime,
            kind,
            perm: a.perm,
            nlink,
            uid: self.uid,
            gid: a.group.unwrap_or(self.gid),
            rdev: 0,
            blksize: 1 << 20,
            flags: 0,
        }
    }

    fn open_flags(&self, o: &Opened) -> FopenFlags {
        let mut f = FopenFlags::empty();
        if o.direct_io {
            f |= FopenFlags::FOPEN_DIRECT_IO;
        }
        if o.keep_cache {
            f |= FopenFlags::FOPEN_KEEP_CACHE;
        }
        f
    }
}

fn errno(e: &FsError) -> Errno {
    match e {
        FsError::NotFound => Errno::ENOENT,
        FsError::ReadOnly => Errno::EROFS,
        FsError::Access => Errno::EACCES,
        FsError::Exists => Errno::EEXIST,
        FsError::Busy => Errno::from_i32(libc::EBUSY),
        FsError::NotDir => Errno::ENOTDIR,
        FsError::IsDir => Errno::EISDIR,
        FsError::TooBig => Errno::from_i32(libc::EFBIG),
        FsError::Invalid(_) => Errno::EINVAL,
        FsError::Io(m) => {
            log::warn!("I/O error: {m}");
            Errno::EIO
        }
    }
}

fn name_str(name: &OsStr) -> Result<&str, Errno> {
    name.to_str().ok_or(Errno::ENOENT)
}

const GENERATION: Generation = Generation(0);

impl Filesystem for ScdlFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1 << 20);
        if std::env::var_os("SCDL_FS_NO_PASSTHROUGH").is_none()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(2).is_ok()
        {
            self.passthrough = true;
        }
        log::info!("FUSE initialised (passthrough: {})", self.passthrough);
        Ok(())
    }

    fn destroy(&mut self) {
        self.ns.shutdown();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = name_str(name).and_then(|n| self.ns.lookup(parent.0, n).map_err(|e| errno(&e)));
        match r {
            Ok(a) => reply.entry(&a.ttl, &self.attr(&a), GENERATION),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.ns.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.ns.getattr(ino.0) {
            Ok(a) => reply.attr(&a.ttl, &self.attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Modes, owners and times are the store's: changing them is accepted (and ignored) only
        // on inputs, as copy tools set them on the file they wrote.
        let r = if mode.is_some() || uid.is_some() || gid.is_some() {
            self.ns.accept_metadata_change(ino.0)
        } else {
            match size {
                Some(s) => self.ns.set_size(ino.0, s),
                None => self.ns.getattr(ino.0),
            }
        };
        match r {
            Ok(a) => reply.attr(&a.ttl, &self.attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match name_str(name).and_then(|n| self.ns.unlink(parent.0, n).map_err(|e| errno(&e))) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let truncate = flags.0 & libc::O_TRUNC != 0;
        let o = match self.ns.open(ino.0, write, truncate) {
            Ok(o) => o,
            Err(e) => return reply.error(errno(&e)),
        };
        let mut fopen = self.open_flags(&o);
        if !write {
            // Nothing happens at close of a read-only file: spare the kernel a FLUSH round trip.
            fopen |= FopenFlags::FOPEN_NOFLUSH;
        }
        if let (true, Some(file)) = (self.passthrough, o.backing.as_ref()) {
            let mut backing = self.backing.lock().expect("backing");
            let id = match backing.get_mut(&ino.0) {
                Some((id, count)) => {
                    *count += 1;
                    Ok(id.clone())
                }
                None => reply.open_backing(file.as_ref()).map(|id| {
                    let id = Arc::new(id);
                    backing.insert(ino.0, (id.clone(), 1));
                    id
                }),
            };
            drop(backing);
            match id {
                Ok(id) => {
                    self.backing_handles
                        .lock()
                        .expect("backing")
                        .insert(o.fh, ino.0);
                    // The page cache belongs to the backing file: no cache flags here; and
                    // nothing happens at close, so no FLUSH either.
                    reply.opened_passthrough(FileHandle(o.fh), FopenFlags::FOPEN_NOFLUSH, &id);
                    return;
                }
                Err(e) => log::debug!("passthrough refused ({e}); serving through the daemon"),
            }
        }
        reply.opened(FileHandle(o.fh), fopen);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.ns.read(ino.0, fh.0, offset, size) {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.ns.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.ns.flush(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Lock order: never hold `backing_handles` while taking `backing` (open does the reverse).
        let passthrough_ino = self.backing_handles.lock().expect("backing").remove(&fh.0);
        if let Some(ino) = passthrough_ino {
            let mut backing = self.backing.lock().expect("backing");
            if let Some((_, count)) = backing.get_mut(&ino) {
                *count -= 1;
                if *count == 0 {
                    backing.remove(&ino);
                }
            }
        }
        match self.ns.release(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.ns.readdir(ino.0, offset, 256) {
            Ok(entries) => {
                for e in entries {
                    let kind = match e.kind {
                        NodeType::Dir => FileType::Directory,
                        NodeType::File => FileType::RegularFile,
                    };
                    if reply.add(INodeNo(e.ino), e.next, kind, &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let r = name_str(name).and_then(|n| self.ns.create(parent.0, n).map_err(|e| errno(&e)));
        match r {
            Ok((a, o)) => {
                let flags = self.open_flags(&o);
                reply.created(
                    &Duration::from_secs(1),
                    &self.attr(&a),
                    GENERATION,
                    FileHandle(o.fh),
                    flags,
                )
            }
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
}
