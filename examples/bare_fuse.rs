//! A bare FUSE filesystem for benchmarks: the ceiling scdl-fs's row reads are compared with.
//!
//! It serves N files `0`, `1`, ... `N-1` of SIZE zero bytes (or of the bytes of FILE) in its
//! root, over /dev/fuse with the same fuser session settings as `scdl-fs mount` (threads, cloned
//! descriptors, long TTLs, kept cache) and no work per request beyond the FUSE protocol itself.
//!
//!     cargo run --release --example bare_fuse -- MOUNTPOINT [FILES] [SIZE|@FILE] [THREADS]
//!
//! It runs in the foreground until unmounted.

use std::ffi::OsStr;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyEntry, ReplyOpen, Request,
};

const TTL: Duration = Duration::from_secs(3600);
const ROOT: u64 = 1;

struct Bare {
    files: u64,
    content: Vec<u8>,
}

impl Bare {
    fn attr(&self, ino: u64) -> FileAttr {
        let dir = ino == ROOT;
        FileAttr {
            ino: INodeNo(ino),
            size: if dir { 0 } else { self.content.len() as u64 },
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if dir { 0o555 } else { 0o444 },
            nlink: if dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 1 << 20,
            flags: 0,
        }
    }
}

impl Filesystem for Bare {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let index = name.to_str().and_then(|n| n.parse::<u64>().ok());
        match index {
            Some(i) if parent.0 == ROOT && i < self.files => {
                reply.entry(&TTL, &self.attr(i + 2), Generation(0))
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply.attr(&TTL, &self.attr(ino.0));
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let flags = if std::env::var_os("BARE_DIRECT_IO").is_some() {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::FOPEN_KEEP_CACHE
        };
        reply.opened(FileHandle(0), flags);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let start = (offset as usize).min(self.content.len());
        let end = (start + size as usize).min(self.content.len());
        reply.data(&self.content[start..end]);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(mountpoint) = args.get(1) else {
        eprintln!("usage: bare_fuse MOUNTPOINT [FILES] [SIZE|@FILE] [THREADS]");
        std::process::exit(2);
    };
    let number = |i: usize, default: u64| args.get(i).map_or(default, |a| a.parse().unwrap());
    // SIZE zero bytes, or `@FILE`: the bytes of FILE (say a real row .npy, for np.load).
    let content = match args.get(3).and_then(|a| a.strip_prefix('@')) {
        Some(file) => std::fs::read(file).expect("read the content file"),
        None => vec![0; number(3, 128) as usize],
    };
    let fs = Bare {
        files: number(2, 1_000_000),
        content,
    };
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName("bare".into()),
        MountOption::RO,
        MountOption::NoAtime,
    ];
    cfg.n_threads = Some(number(4, 4) as usize);
    cfg.clone_fd = true;
    let session = fuser::Session::new(fs, mountpoint, &cfg).expect("mount");
    session.run().expect("serve");
}
