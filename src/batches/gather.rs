//! Reading a batch's slices of the archive's arrays, all at once, without waking another
//! thread: every slice is a read submitted to the calling thread's io_uring (`ring`), which
//! copies what the page cache holds during the submission itself (a few system calls for a
//! batch's ~500 slices instead of one each) and keeps the rest in flight together, so that a
//! cold cache sees many reads at once.
//!
//! Where the kernel gives no io_uring: the slices the page cache holds are copied in the calling
//! thread (`preadv2` with `RWF_NOWAIT`), the rest read on a pool of blocking threads. Handing
//! cached slices to other threads costs more than the copies (waking, then idle-spinning pool
//! threads took a quarter of a batch's CPU); reading uncached ones one after another waits for
//! each in turn, the page-fault-bound regime a shuffled loader must avoid.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::ring::{self, RingRead};
use crate::archive::{Archive, CsrArray};
use crate::error::{Error, Result};

/// Threads that read the slices the page cache does not hold where there is no io_uring;
/// blocking preads, so more than the CPUs: they wait on storage, not compute.
pub const DEFAULT_READ_THREADS: usize = 16;

/// How uncached batch slices are read concurrently: on the calling thread's io_uring, or on
/// threads of blocking reads where there is no io_uring (or the pool is made without it). The
/// threads start at their first use: with an io_uring they are never needed.
pub struct ReadPool {
    threads: usize,
    pool: OnceLock<std::result::Result<rayon::ThreadPool, String>>,
    ring: bool,
}

impl ReadPool {
    /// Reads on each calling thread's io_uring, and on `threads` threads where there is none.
    pub fn new(threads: usize) -> ReadPool {
        ReadPool {
            ring: true,
            ..ReadPool::threads_only(threads)
        }
    }

    /// Reads on `threads` threads of blocking reads, never on an io_uring.
    pub fn threads_only(threads: usize) -> ReadPool {
        ReadPool {
            threads: threads.max(1),
            pool: OnceLock::new(),
            ring: false,
        }
    }

    /// Runs `f` on every piece of work, concurrently; the first error wins. A failure to start
    /// the threads is this call's error.
    fn each<W: Send>(&self, work: Vec<W>, f: impl Fn(W) -> Result<()> + Sync + Send) -> Result<()> {
        if work.is_empty() {
            return Ok(());
        }
        let pool = self.pool.get_or_init(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(self.threads)
                .thread_name(|i| format!("batch-read-{i}"))
                .build()
                .map_err(|e| e.to_string())
        });
        let pool = pool
            .as_ref()
            .map_err(|e| Error::Usage(format!("cannot start the batch read threads: {e}")))?;
        pool.install(|| work.into_par_iter().try_for_each(f))
    }
}

/// Bytes `[offset, offset + buf.len())` of one array, to be read into `buf`.
pub(crate) struct Slice<'a> {
    pub array: CsrArray,
    pub offset: u64,
    pub buf: &'a mut [u8],
}

/// Fills every slice, all at once: on this thread's io_uring if it has one, else the cached
/// ones here and the others on the pool's threads.
pub(crate) fn read_slices(
    archive: &Archive,
    pool: &ReadPool,
    mut slices: Vec<Slice<'_>>,
) -> Result<()> {
    if slices.is_empty() {
        return Ok(());
    }
    if pool.ring {
        if let Some(r) = read_on_ring(archive, &mut slices) {
            return r;
        }
    }
    read_on_threads(archive, pool, slices)
}

/// Every slice read on this thread's io_uring; `None` if the thread has none.
fn read_on_ring(archive: &Archive, slices: &mut [Slice<'_>]) -> Option<Result<()>> {
    let reads: Vec<RingRead> = slices
        .iter_mut()
        .map(|s| RingRead {
            fd: archive.array_file(s.array).0.as_raw_fd(),
            offset: s.offset,
            buf: s.buf.as_mut_ptr(),
            len: s.buf.len(),
        })
        .collect();
    // SAFETY: every read targets a slice's buffer, borrowed mutably through `slices` (which
    // nothing else touches) for the whole call; the descriptors are the archive's, open while
    // it is borrowed.
    let done = unsafe { ring::read_all(&reads) }?;
    Some(done.map_err(|e| {
        let s = &slices[e.index];
        let name = archive.array_file(s.array).1;
        archive.read_error(name, s.offset, s.buf.len(), e.error)
    }))
}

/// Without an io_uring: the slices the page cache holds copied here without blocking, the rest
/// read on the pool's threads.
fn read_on_threads(archive: &Archive, pool: &ReadPool, slices: Vec<Slice<'_>>) -> Result<()> {
    let mut uncached = Vec::new();
    let mut inline = true;
    for s in slices {
        let (file, name) = archive.array_file(s.array);
        let done = if inline {
            match read_cached(file, s.buf, s.offset) {
                Ok(Some(n)) => n,
                Ok(None) => {
                    // The file system cannot say (RWF_NOWAIT unsupported): read the rest on
                    // the pool.
                    inline = false;
                    0
                }
                Err(e) => return Err(archive.read_error(name, s.offset, s.buf.len(), e)),
            }
        } else {
            0
        };
        if done < s.buf.len() {
            uncached.push(Slice {
                array: s.array,
                offset: s.offset + done as u64,
                buf: &mut s.buf[done..],
            });
        }
    }
    pool.each(uncached, |s| {
        archive.read_array_into(s.array, s.offset, s.buf)
    })
}

/// Copies into `buf` what the page cache holds of `file` from `offset` on, without waiting
/// for storage: how many leading bytes were filled, or `None` when the file system does not
/// support the question.
fn read_cached(file: &File, buf: &mut [u8], offset: u64) -> io::Result<Option<usize>> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let iov = libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        };
        // SAFETY: the one iovec describes `rest`, which is valid for writes of its length and
        // outlives the call; the file descriptor is open for as long as `file` is borrowed.
        let n = unsafe {
            libc::preadv2(
                file.as_raw_fd(),
                &iov,
                1,
                (offset + done as u64) as libc::off_t,
                libc::RWF_NOWAIT,
            )
        };
        if n > 0 {
            done += n as usize;
            continue;
        }
        if n == 0 {
            break; // end of file: the blocking read reports it
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => break,
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS) if done == 0 => {
                return Ok(None)
            }
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS) => break,
            _ => return Err(e),
        }
    }
    Ok(Some(done))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_cached_file_is_read_whole_without_blocking() {
        let mut f = tempfile::tempfile().unwrap();
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&bytes).unwrap();
        let mut buf = vec![0u8; 5000];
        // Local file systems (ext4, xfs, btrfs, tmpfs) answer RWF_NOWAIT.
        let n = read_cached(&f, &mut buf, 1234)
            .unwrap()
            .expect("RWF_NOWAIT answered");
        assert_eq!(n, 5000, "just written: the page cache holds it");
        assert_eq!(buf, bytes[1234..6234]);
        // Past the end: what there is, then the end.
        let mut buf = vec![0u8; 10];
        assert_eq!(read_cached(&f, &mut buf, 99_995).unwrap(), Some(5));
        assert_eq!(buf[..5], bytes[99_995..]);
    }

    #[test]
    fn an_evicted_file_is_left_to_the_blocking_reads() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![3u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        let mut buf = vec![0u8; 4096];
        // The kernel skips pages it is still busy with (a writeback just finished): evict
        // again, a few times, before calling the answer wrong.
        let mut got = None;
        for _ in 0..20 {
            // SAFETY: posix_fadvise reads no memory of ours; the descriptor is open.
            let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(rc, 0);
            got = read_cached(&f, &mut buf, 512 << 10).unwrap();
            if got == Some(0) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(got, Some(0), "evicted pages are not copied without waiting");
    }
}
