//! The FUSE front: how `Namespace` meets the kernel. Two transports share one core: the fuser
//! session over /dev/fuse (`adapter`, always there: it mounts, initialises and serves whatever
//! the other does not), and FUSE over io_uring (`uring`, when the kernel offers it), whose
//! per-CPU queues serve each request on the CPU that made it. The core owns what both need:
//! attributes in kernel terms, errors, opens with FUSE passthrough of the real archive files.

mod abi;
mod adapter;
pub mod uring;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use fuser::{Errno, FileAttr, FileType, FopenFlags, INodeNo};

pub use adapter::ScdlFs;

use crate::namespace::{Attr, FsError, Namespace, NodeType, Opened};

/// The largest READ/WRITE payload: it sizes every io_uring queue entry's buffer.
pub const MAX_TRANSFER: u32 = 1 << 20;

/// Directory entries produced per READDIR (the kernel asks again from the last offset).
pub const READDIR_BATCH: usize = 256;

/// How long the kernel may cache the attributes of an upload just created (it still grows).
pub const CREATED_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// The state both transports serve from.
pub struct Core {
    pub ns: Arc<Namespace>,
    uid: u32,
    gid: u32,
    passthrough: AtomicBool,
    /// FUSE over io_uring was negotiated at INIT.
    io_uring: AtomicBool,
    /// A descriptor of this mount's /dev/fuse connection, for the backing-file ioctls.
    dev: OnceLock<OwnedFd>,
    /// Rows whose pages the kernel should drop, for the thread that tells it (known once
    /// mounted). Not done by the request thread: invalidating waits for the pages' locks, which
    /// a READ still queued for this daemon may hold.
    page_drops: OnceLock<std::sync::mpsc::Sender<u64>>,
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

impl Core {
    pub fn new(ns: Arc<Namespace>) -> Core {
        Core {
            ns,
            // SAFETY: getuid/getgid have no preconditions and cannot fail.
            uid: unsafe { libc::getuid() },
            // SAFETY: as above.
            gid: unsafe { libc::getgid() },
            passthrough: AtomicBool::new(false),
            io_uring: AtomicBool::new(false),
            dev: OnceLock::new(),
            page_drops: OnceLock::new(),
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

    /// The mount's /dev/fuse connection (a duplicate the core owns), known once mounted.
    pub fn set_device(&self, dev: OwnedFd) {
        let _ = self.dev.set(dev);
    }

    /// Starts the thread that asks the kernel to drop pages, through `notifier`.
    pub fn set_notifier(&self, notifier: fuser::Notifier) {
        let (drops, inodes) = std::sync::mpsc::channel::<u64>();
        if self.page_drops.set(drops).is_err() {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("page-drops".into())
            .spawn(move || {
                for ino in inodes {
                    // Offset 0, length 0: every page of the file.
                    let _ = notifier.inval_inode(INodeNo(ino), 0, 0);
                }
            });
        if let Err(e) = spawned {
            log::warn!("no page-drop thread ({e}): row pages stay cached");
        }
    }

    pub fn attr(&self, a: &Attr) -> FileAttr {
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

    /// Creates the upload `name` in `parent`: its attributes and its open handle.
    pub fn create(&self, parent: u64, name: &str) -> Result<(FileAttr, OpenReply), Errno> {
        let (a, o) = self.ns.create(parent, name).map_err(|e| errno(&e))?;
        let opened = OpenReply {
            fh: o.fh,
            flags: Self::cache_flags(&o),
            backing_id: None,
        };
        Ok((self.attr(&a), opened))
    }

    /// Modes, owners and times are the store's: changing them is accepted (and ignored) only on
    /// inputs, as copy tools set them on the file they wrote; a size change truncates an upload.
    pub fn setattr(&self, ino: u64, owner_or_mode: bool, size: Option<u64>) -> Result<Attr, Errno> {
        let r = if owner_or_mode {
            self.ns.accept_metadata_change(ino)
        } else {
            match size {
                Some(s) => self.ns.set_size(ino, s),
                None => self.ns.getattr(ino),
            }
        };
        r.map_err(|e| errno(&e))
    }

    /// Opens `ino` with open(2) `flags`; real store files go to the kernel as passthrough
    /// backing files when it was negotiated.
    pub fn open(&self, ino: u64, flags: i32) -> Result<OpenReply, Errno> {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let truncate = flags & libc::O_TRUNC != 0;
        let o = self.ns.open(ino, write, truncate).map_err(|e| errno(&e))?;
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
        if Namespace::drop_cache_at_close(ino) {
            if let Some(drops) = self.page_drops.get() {
                let _ = drops.send(ino);
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
        self.ns.release(fh).map_err(|e| errno(&e))
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

pub fn errno(e: &FsError) -> Errno {
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
