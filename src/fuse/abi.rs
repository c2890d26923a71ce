//! The FUSE kernel protocol as bytes, for the io_uring transport (fuser keeps its own codec
//! private): request headers and arguments read at fixed offsets, replies written in place.
//! Layouts are those of `include/uapi/linux/fuse.h` (protocol 7.42), little-endian.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType};

pub const LOOKUP: u32 = 1;
pub const GETATTR: u32 = 3;
pub const SETATTR: u32 = 4;
pub const MKDIR: u32 = 9;
pub const UNLINK: u32 = 10;
pub const RMDIR: u32 = 11;
pub const RENAME: u32 = 12;
pub const OPEN: u32 = 14;
pub const READ: u32 = 15;
pub const WRITE: u32 = 16;
pub const STATFS: u32 = 17;
pub const RELEASE: u32 = 18;
pub const FSYNC: u32 = 20;
pub const FLUSH: u32 = 25;
pub const OPENDIR: u32 = 27;
pub const READDIR: u32 = 28;
pub const RELEASEDIR: u32 = 29;
pub const CREATE: u32 = 35;
pub const DESTROY: u32 = 38;
pub const RENAME2: u32 = 45;

/// `FATTR_*` bits of `fuse_setattr_in.valid`.
pub const FATTR_MODE: u32 = 1 << 0;
pub const FATTR_UID: u32 = 1 << 1;
pub const FATTR_GID: u32 = 1 << 2;
pub const FATTR_SIZE: u32 = 1 << 3;

/// `_IOW(229, 2, uint32_t)`: closes a passthrough backing id.
pub const FUSE_DEV_IOC_BACKING_CLOSE: libc::c_ulong = 0x4004_e502;

/// `struct fuse_uring_req_header`: the request or reply header (`fuse_in_header` /
/// `fuse_out_header`), then the operation's own header, then `fuse_uring_ent_in_out`.
pub const RING_IN_OUT: usize = 0;
pub const RING_OP: usize = 128;
pub const RING_ENT: usize = 256;
pub const RING_HEADER_SIZE: usize = 288;
/// `fuse_uring_ent_in_out.commit_id` and `.payload_sz`, relative to `RING_ENT`.
pub const ENT_COMMIT_ID: usize = 8;
pub const ENT_PAYLOAD_SIZE: usize = 16;

pub const URING_CMD_REGISTER: u32 = 1;
pub const URING_CMD_COMMIT_AND_FETCH: u32 = 2;

/// `struct fuse_uring_cmd_req` in the SQE's command area: flags, commit id, queue id.
pub fn uring_cmd(commit_id: u64, qid: u16) -> [u8; 80] {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_le_bytes());
    cmd[16..18].copy_from_slice(&qid.to_le_bytes());
    cmd
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
}

pub fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

/// `struct fuse_in_header`, the fields a handler needs.
#[derive(Debug, Clone, Copy)]
pub struct InHeader {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
}

impl InHeader {
    pub fn parse(b: &[u8]) -> InHeader {
        InHeader {
            opcode: u32_at(b, 4),
            unique: u64_at(b, 8),
            nodeid: u64_at(b, 16),
        }
    }
}

/// `struct fuse_out_header`.
pub fn out_header(len: u32, error: i32, unique: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..8].copy_from_slice(&error.to_le_bytes());
    h[8..16].copy_from_slice(&unique.to_le_bytes());
    h
}

/// A name argument: the bytes before its NUL.
pub fn name(b: &[u8]) -> &[u8] {
    b.split(|&c| c == 0).next().unwrap_or(b)
}

/// A reply under construction in a fixed buffer; `None` once it would not fit.
pub struct Reply<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Reply<'a> {
    pub fn new(buf: &'a mut [u8]) -> Reply<'a> {
        Reply { buf, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn bytes(&mut self, b: &[u8]) -> Option<&mut Self> {
        let end = self.len.checked_add(b.len())?;
        self.buf.get_mut(self.len..end)?.copy_from_slice(b);
        self.len = end;
        Some(self)
    }

    pub fn u32(&mut self, v: u32) -> Option<&mut Self> {
        self.bytes(&v.to_le_bytes())
    }

    pub fn u64(&mut self, v: u64) -> Option<&mut Self> {
        self.bytes(&v.to_le_bytes())
    }

    fn pad_to_8(&mut self) -> Option<&mut Self> {
        let pad = self.len.next_multiple_of(8) - self.len;
        self.bytes(&[0u8; 8][..pad])
    }

    /// `struct fuse_attr`.
    fn attr(&mut self, a: &FileAttr) -> Option<&mut Self> {
        let (at, mt, ct) = (secs(a.atime), secs(a.mtime), secs(a.ctime));
        self.u64(a.ino.0)?.u64(a.size)?.u64(a.blocks)?;
        self.u64(at.0)?.u64(mt.0)?.u64(ct.0)?;
        self.u32(at.1)?.u32(mt.1)?.u32(ct.1)?;
        self.u32(mode(a))?.u32(a.nlink)?.u32(a.uid)?.u32(a.gid)?;
        self.u32(a.rdev)?.u32(a.blksize)?.u32(a.flags)
    }

    /// `struct fuse_entry_out`.
    pub fn entry(&mut self, a: &FileAttr, ttl: Duration) -> Option<&mut Self> {
        self.u64(a.ino.0)?.u64(0)?; // node id, generation
        self.u64(ttl.as_secs())?.u64(ttl.as_secs())?;
        self.u32(ttl.subsec_nanos())?.u32(ttl.subsec_nanos())?;
        self.attr(a)
    }

    /// `struct fuse_attr_out`.
    pub fn attr_out(&mut self, a: &FileAttr, ttl: Duration) -> Option<&mut Self> {
        self.u64(ttl.as_secs())?.u32(ttl.subsec_nanos())?.u32(0)?;
        self.attr(a)
    }

    /// `struct fuse_open_out`.
    pub fn open(&mut self, fh: u64, flags: u32, backing_id: u32) -> Option<&mut Self> {
        self.u64(fh)?.u32(flags)?.u32(backing_id)
    }

    /// `struct fuse_write_out`.
    pub fn written(&mut self, size: u32) -> Option<&mut Self> {
        self.u32(size)?.u32(0)
    }

    /// `struct fuse_statfs_out` as fuser answers by default: an empty file system.
    pub fn statfs(&mut self) -> Option<&mut Self> {
        for _ in 0..5 {
            self.u64(0)?;
        }
        self.u32(512)?.u32(255)?.u32(0)?.u32(0)?;
        self.bytes(&[0u8; 24])
    }

    /// One `struct fuse_dirent` with its name, padded to 8 bytes.
    pub fn dirent(&mut self, ino: u64, next: u64, dir: bool, name: &str) -> Option<&mut Self> {
        let kind = if dir { libc::DT_DIR } else { libc::DT_REG };
        self.u64(ino)?.u64(next)?.u32(name.len() as u32)?;
        self.u32(kind as u32)?.bytes(name.as_bytes())?.pad_to_8()
    }
}

fn secs(t: SystemTime) -> (u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

fn mode(a: &FileAttr) -> u32 {
    let kind = match a.kind {
        FileType::Directory => libc::S_IFDIR,
        _ => libc::S_IFREG,
    };
    kind | a.perm as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuser::INodeNo;

    fn file_attr() -> FileAttr {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        FileAttr {
            ino: INodeNo(42),
            size: 80_128,
            blocks: 157,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: FileType::RegularFile,
            perm: 0o444,
            nlink: 1,
            uid: 7,
            gid: 8,
            rdev: 0,
            blksize: 1 << 20,
            flags: 0,
        }
    }

    #[test]
    fn structs_have_the_kernel_sizes() {
        let mut buf = [0u8; 512];
        let a = file_attr();
        let ttl = Duration::from_secs(3600);
        assert_eq!(Reply::new(&mut buf).entry(&a, ttl).unwrap().len(), 128);
        assert_eq!(Reply::new(&mut buf).attr_out(&a, ttl).unwrap().len(), 104);
        assert_eq!(Reply::new(&mut buf).open(1, 2, 3).unwrap().len(), 16);
        assert_eq!(Reply::new(&mut buf).statfs().unwrap().len(), 80);
        assert_eq!(
            Reply::new(&mut buf)
                .dirent(1, 2, false, "abc")
                .unwrap()
                .len(),
            32
        );
    }

    #[test]
    fn attr_fields_land_where_the_kernel_reads_them() {
        let mut buf = [0u8; 128];
        Reply::new(&mut buf)
            .entry(&file_attr(), Duration::from_secs(9))
            .unwrap();
        assert_eq!(u64_at(&buf, 0), 42); // nodeid
        assert_eq!(u64_at(&buf, 16), 9); // entry_valid
        assert_eq!(u64_at(&buf, 40), 42); // attr.ino
        assert_eq!(u64_at(&buf, 48), 80_128); // attr.size
        assert_eq!(u64_at(&buf, 72), 1_700_000_000); // attr.mtime
        assert_eq!(u32_at(&buf, 88), 5); // attr.atimensec
        assert_eq!(u32_at(&buf, 100), libc::S_IFREG | 0o444); // attr.mode
        assert_eq!(u32_at(&buf, 108), 7); // attr.uid
        assert_eq!(u32_at(&buf, 120), 1 << 20); // attr.blksize
    }

    #[test]
    fn a_reply_that_does_not_fit_is_refused() {
        let mut buf = [0u8; 100];
        assert!(Reply::new(&mut buf)
            .entry(&file_attr(), Duration::ZERO)
            .is_none());
        // 24 bytes of header, then the name padded to 8.
        assert!(Reply::new(&mut buf[..32])
            .dirent(1, 2, true, "abcdefgh")
            .is_some());
        assert!(Reply::new(&mut buf[..32])
            .dirent(1, 2, true, "abcdefghi")
            .is_none());
    }
}
