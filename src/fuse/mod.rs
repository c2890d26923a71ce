//! The FUSE front: how `Namespace` meets the kernel. One `Connection` offers every operation
//! in kernel terms (inode numbers, `FileAttr`, open flags, errno) with what was negotiated at
//! INIT; two transports call it: the fuser session over /dev/fuse (`adapter`, always there: it
//! mounts, initialises and serves whatever the other does not), and FUSE over io_uring
//! (`uring`, when the kernel offers it), whose per-CPU queues serve each request on the CPU that
//! made it. `session` mounts and wires them; `notify` tells the kernel what to drop from its
//! caches. Every request is timed and counted here, for `.stats`, whichever transport brought it.

mod abi;
mod adapter;
mod notify;
mod session;
pub mod uring;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use fuser::{Errno, FileAttr, FileType, FopenFlags, INodeNo};

pub use session::{mount, Mounted, SessionOptions, Unmounter};

use crate::namespace::{Attr, DirEntry, FsError, Namespace, NodeType, Opened, ReadBytes, ROOT_INO};

/// The largest READ/WRITE payload: it sizes every io_uring queue entry's buffer.
pub const MAX_TRANSFER: u32 = 1 << 20;

/// Directory entries produced per READDIR (the kernel asks again from the last offset).
pub const READDIR_BATCH: usize = 256;

/// How long the kernel may cache the attributes of an upload just created (it still grows).
pub const CREATED_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// One FUSE connection: the namespace's operations in kernel terms, for both transports, with
/// what was negotiated at INIT.
pub struct Connection {
    ns: Arc<Namespace>,
    uid: u32,
    gid: u32,
    passthrough: AtomicBool,
    /// FUSE over io_uring was negotiated at INIT.
    io_uring: AtomicBool,
    /// A descriptor of this mount's /dev/fuse connection, for the backing-file ioctls.
    dev: OnceLock<OwnedFd>,
    /// What the kernel is told to drop from its caches (known once mounted).
    notifier: OnceLock<Arc<notify::KernelNotifier>>,
    /// Backing ids of passthrough opens by inode, with their open count: the kernel wants every
    /// open of one inode to share one backing file, and closing the id releases it.
    backing: Mutex<HashMap<u64, (u32, usize)>>,
    /// Which inode each passthrough handle belongs to.
    backing_handles: Mutex<HashMap<u64, u64>>,
}

/// The answer to an open: the handle, the kernel's open flags and, for passthrough, the backing id.
pub struct OpenReply {
    pub fh: u64,
    pub flags: FopenFlags,
    pub backing_id: Option<u32>,
}

impl Connection {
    pub fn new(ns: Arc<Namespace>) -> Connection {
        Connection {
            ns,
            // SAFETY: getuid/getgid have no preconditions and cannot fail.
            uid: unsafe { libc::getuid() },
            // SAFETY: as above.
            gid: unsafe { libc::getgid() },
            passthrough: AtomicBool::new(false),
            io_uring: AtomicBool::new(false),
            dev: OnceLock::new(),
            notifier: OnceLock::new(),
            backing: Mutex::new(HashMap::new()),
            backing_handles: Mutex::new(HashMap::new()),
        }
    }

    /// Passthrough was negotiated at INIT; it is used once the connection's descriptor is known.
    fn set_passthrough(&self, on: bool) {
        self.passthrough.store(on, Ordering::Relaxed);
    }

    fn set_io_uring(&self, on: bool) {
        self.io_uring.store(on, Ordering::Relaxed);
    }

    /// Whether the kernel agreed to FUSE over io_uring for this connection.
    pub fn io_uring(&self) -> bool {
        self.io_uring.load(Ordering::Relaxed)
    }

    /// The mount's /dev/fuse connection (a duplicate the connection owns), known once mounted.
    pub fn set_device(&self, dev: OwnedFd) {
        let _ = self.dev.set(dev);
    }

    /// Starts the thread that tells the kernel what to drop from its caches, through
    /// `notifier`, for the core (row pages) and the tree (names of datasets gone).
    pub fn set_notifier(&self, notifier: fuser::Notifier) {
        let notifier = Arc::new(notify::KernelNotifier::start(notifier));
        if self.notifier.set(notifier.clone()).is_ok() {
            self.ns.set_kernel_cache(notifier);
        }
    }

    /// The kernel's attributes of `a`, and how long it may cache them (and the name).
    fn entry(&self, a: &Attr) -> Entry {
        (self.file_attr(a), a.ttl)
    }

    fn file_attr(&self, a: &Attr) -> FileAttr {
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

    fn cache_flags(o: &Opened) -> FopenFlags {
        let mut f = FopenFlags::empty();
        if o.direct_io {
            f |= FopenFlags::FOPEN_DIRECT_IO;
        }
        if o.keep_cache {
            f |= FopenFlags::FOPEN_KEEP_CACHE;
        }
        f
    }

    /// Runs request `op` on `ino` and counts it (with the bytes `bytes` says it served).
    fn counted<T>(
        &self,
        ino: u64,
        op: &'static str,
        bytes: impl FnOnce(&T) -> u64,
        f: impl FnOnce() -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let start = std::time::Instant::now();
        let r = f();
        let n = r.as_ref().map_or(0, bytes);
        self.ns.record(ino, op, n, start.elapsed(), r.is_ok());
        r
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Entry, Errno> {
        self.counted(
            parent,
            "lookup",
            |_| 0,
            || {
                let a = fs(self.ns.lookup(parent, name_str(name)?))?;
                Ok(self.entry(&a))
            },
        )
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.ns.forget(ino, n);
    }

    pub fn getattr(&self, ino: u64) -> Result<Entry, Errno> {
        self.counted(
            ino,
            "getattr",
            |_| 0,
            || Ok(self.entry(&fs(self.ns.getattr(ino))?)),
        )
    }

    /// Modes, owners and times are the store's: changing them is accepted (and ignored) only on
    /// inputs, as copy tools set them on the file they wrote; a size change truncates an upload.
    pub fn setattr(
        &self,
        ino: u64,
        owner_or_mode: bool,
        size: Option<u64>,
    ) -> Result<Entry, Errno> {
        self.counted(
            ino,
            "setattr",
            |_| 0,
            || {
                let r = if owner_or_mode {
                    self.ns.accept_metadata_change(ino)
                } else {
                    match size {
                        Some(s) => self.ns.set_size(ino, s),
                        None => self.ns.getattr(ino),
                    }
                };
                Ok(self.entry(&fs(r)?))
            },
        )
    }

    /// Creates the upload `name` in `parent`: its attributes and its open handle.
    pub fn create(&self, parent: u64, name: &[u8]) -> Result<(FileAttr, OpenReply), Errno> {
        self.counted(
            parent,
            "create",
            |_| 0,
            || {
                let (a, o) = fs(self.ns.create(parent, name_str(name)?))?;
                let opened = OpenReply {
                    fh: o.fh,
                    flags: Self::cache_flags(&o),
                    backing_id: None,
                };
                Ok((self.file_attr(&a), opened))
            },
        )
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), Errno> {
        self.counted(
            parent,
            "unlink",
            |_| 0,
            || fs(self.ns.unlink(parent, name_str(name)?)),
        )
    }

    pub fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<ReadBytes, Errno> {
        self.counted(
            ino,
            "read",
            |b: &ReadBytes| b.len() as u64,
            || fs(self.ns.read_bytes(ino, fh, offset, size)),
        )
    }

    /// A write to handle `fh` (counted under the root: writes go to `.control` and uploads).
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        self.counted(
            ROOT_INO,
            "write",
            |n| u64::from(*n),
            || fs(self.ns.write(fh, offset, data)),
        )
    }

    /// close(2) of a descriptor of `fh`.
    pub fn flush(&self, fh: u64) -> Result<(), Errno> {
        self.counted(ROOT_INO, "flush", |_| 0, || fs(self.ns.flush(fh)))
    }

    /// The next entries of directory `ino` from `offset`, one batch.
    pub fn readdir(&self, ino: u64, offset: u64) -> Result<Vec<DirEntry>, Errno> {
        self.counted(
            ino,
            "readdir",
            |d: &Vec<DirEntry>| d.len() as u64,
            || fs(self.ns.readdir(ino, offset, READDIR_BATCH)),
        )
    }

    /// The kernel ends the connection: the workers stop.
    pub fn destroy(&self) {
        self.ns.shutdown();
    }

    /// Opens `ino` with open(2) `flags`; real store files go to the kernel as passthrough
    /// backing files when it was negotiated.
    pub fn open(&self, ino: u64, flags: i32) -> Result<OpenReply, Errno> {
        self.counted(ino, "open", |_| 0, || self.open_uncounted(ino, flags))
    }

    fn open_uncounted(&self, ino: u64, flags: i32) -> Result<OpenReply, Errno> {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let truncate = flags & libc::O_TRUNC != 0;
        let o = fs(self.ns.open(ino, write, truncate))?;
        let mut fopen = Self::cache_flags(&o);
        if !write {
            // Nothing happens at close of a read-only file: spare the kernel a FLUSH round trip.
            fopen |= FopenFlags::FOPEN_NOFLUSH;
        }
        if let Some(file) = o.backing.as_ref() {
            if let Some(id) = self.backing_for(ino, o.fh, file) {
                // The page cache belongs to the backing file: no cache flags here.
                return Ok(OpenReply {
                    fh: o.fh,
                    flags: FopenFlags::FOPEN_NOFLUSH | FopenFlags::FOPEN_PASSTHROUGH,
                    backing_id: Some(id),
                });
            }
        }
        Ok(OpenReply {
            fh: o.fh,
            flags: fopen,
            backing_id: None,
        })
    }

    /// The backing id of `ino` for a new handle `fh`, registered at its first open.
    fn backing_for(&self, ino: u64, fh: u64, file: &std::fs::File) -> Option<u32> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return None;
        }
        let dev = self.dev.get()?;
        let mut backing = self.backing.lock().expect("backing");
        let id = match backing.get_mut(&ino) {
            Some((id, count)) => {
                *count += 1;
                *id
            }
            None => match fuser::BackingId::create_raw(dev, file) {
                Ok(id) => {
                    backing.insert(ino, (id, 1));
                    id
                }
                Err(e) => {
                    log::debug!("passthrough refused ({e}); serving through the daemon");
                    return None;
                }
            },
        };
        drop(backing);
        self.backing_handles
            .lock()
            .expect("backing")
            .insert(fh, ino);
        Some(id)
    }

    /// Closes handle `fh` of `ino`, and its inode's backing file with its last passthrough
    /// handle.
    pub fn release(&self, ino: u64, fh: u64) -> Result<(), Errno> {
        self.counted(ino, "release", |_| 0, || self.release_uncounted(ino, fh))
    }

    fn release_uncounted(&self, ino: u64, fh: u64) -> Result<(), Errno> {
        if Namespace::drop_cache_at_close(ino) {
            if let Some(notifier) = self.notifier.get() {
                notifier.drop_pages(ino);
            }
        }
        // Lock order: never hold `backing_handles` while taking `backing` (open does the reverse).
        let passthrough_ino = self.backing_handles.lock().expect("backing").remove(&fh);
        if let Some(ino) = passthrough_ino {
            let mut backing = self.backing.lock().expect("backing");
            if let Some((id, count)) = backing.get_mut(&ino) {
                *count -= 1;
                if *count == 0 {
                    let id = *id;
                    backing.remove(&ino);
                    self.close_backing(id);
                }
            }
        }
        fs(self.ns.release(fh))
    }

    fn close_backing(&self, id: u32) {
        let Some(dev) = self.dev.get() else { return };
        // SAFETY: FUSE_DEV_IOC_BACKING_CLOSE reads one u32 through the pointer, which is valid
        // for the call; the descriptor is this connection's /dev/fuse.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), abi::FUSE_DEV_IOC_BACKING_CLOSE, &id) };
        if r < 0 {
            log::debug!(
                "closing backing id {id}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Attributes, and how long the kernel may cache them and the name they were looked up by.
pub type Entry = (FileAttr, std::time::Duration);

/// A name from the kernel: one that is not UTF-8 names nothing here.
fn name_str(name: &[u8]) -> Result<&str, Errno> {
    std::str::from_utf8(name).map_err(|_| Errno::ENOENT)
}

fn fs<T>(r: Result<T, FsError>) -> Result<T, Errno> {
    r.map_err(|e| errno(&e))
}

/// The one mapping of the tree's errors to the kernel's.
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
