//! The fuser transport: a thin `fuser::Filesystem` over the `Connection`. It negotiates the
//! connection at INIT (transfer sizes, FUSE passthrough for the real archive files, FUSE over
//! io_uring) and passes every request that comes through /dev/fuse on.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileHandle, FileType, Filesystem, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use std::os::unix::ffi::OsStrExt;

use super::{Connection, CREATED_TTL, MAX_TRANSFER};
use crate::namespace::NodeType;

pub struct ScdlFs {
    conn: Arc<Connection>,
    io_uring: bool,
}

impl ScdlFs {
    /// `io_uring`: ask the kernel for FUSE over io_uring at INIT (used when it offers it).
    pub fn new(conn: Arc<Connection>, io_uring: bool) -> ScdlFs {
        ScdlFs { conn, io_uring }
    }
}

const GENERATION: Generation = Generation(0);

impl Filesystem for ScdlFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(MAX_TRANSFER);
        let _ = config.set_max_write(MAX_TRANSFER);
        let passthrough = std::env::var_os("SCDL_FS_NO_PASSTHROUGH").is_none()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(2).is_ok();
        self.conn.set_passthrough(passthrough);
        // Ranges are direct I/O (no page cache); np.load(mmap_mode=...) should still work.
        let _ = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        // Once agreed, the kernel holds every request until the queues are registered: ask only
        // when this process can create io_uring rings at all.
        let offered = config
            .capabilities()
            .contains(InitFlags::FUSE_OVER_IO_URING);
        let uring = if !self.io_uring {
            false
        } else if !offered {
            log::info!(
                "the kernel does not offer FUSE over io_uring (Linux >= 6.14 has it when \
                 /sys/module/fuse/parameters/enable_uring is Y): serving through /dev/fuse"
            );
            false
        } else if !super::uring::available() {
            log::warn!("io_uring is unavailable to this process: serving through /dev/fuse");
            false
        } else {
            config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .is_ok()
        };
        self.conn.set_io_uring(uring);
        log::info!("FUSE initialised (passthrough: {passthrough}, io_uring: {uring})");
        Ok(())
    }

    fn destroy(&mut self) {
        self.conn.destroy();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.conn.lookup(parent.0, name.as_bytes()) {
            Ok((attr, ttl)) => reply.entry(&ttl, &attr, GENERATION),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.conn.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.conn.getattr(ino.0) {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(e),
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
        match self.conn.setattr(
            ino.0,
            mode.is_some() || uid.is_some() || gid.is_some(),
            size,
        ) {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.conn.unlink(parent.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.conn.open(ino.0, flags.0) {
            Ok(o) => match o.backing_id {
                Some(id) => {
                    // SAFETY: `id` is a live backing id of this connection, owned by the core;
                    // the wrapper is turned back into the raw id below, so it never closes it.
                    let wrapped = unsafe { reply.wrap_backing(id) };
                    reply.opened_passthrough(FileHandle(o.fh), o.flags, &wrapped);
                    wrapped.into_raw();
                }
                None => reply.opened(FileHandle(o.fh), o.flags),
            },
            Err(e) => reply.error(e),
        }
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
        match self.conn.read(ino.0, fh.0, offset, size) {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(e),
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
        match self.conn.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
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
        match self.conn.flush(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
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
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        match self.conn.release(ino.0, fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
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
        match self.conn.readdir(ino.0, offset) {
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
            Err(e) => reply.error(e),
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
        match self.conn.create(parent.0, name.as_bytes()) {
            Ok((attr, o)) => {
                reply.created(&CREATED_TTL, &attr, GENERATION, FileHandle(o.fh), o.flags)
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
