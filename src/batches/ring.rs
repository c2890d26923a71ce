//! Reading many slices of files at once from one thread: each thread that gathers a batch has
//! an io_uring of its own, every slice is one read submitted to it, and the thread waits for
//! all of them together. The storage sees every read of a batch in flight at once (on ext4,
//! xfs and btrfs buffered reads are asynchronous in the kernel), and no other thread is woken
//! for it: a pool of blocking readers cost more in context switches and in waking idle workers
//! than the reads themselves when the page cache is smaller than the archive.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring};

/// Reads submitted at most at once per thread; a batch with more slices refills as they
/// complete. A `block=1` batch is ~500 slices: two submissions.
const RING_ENTRIES: u32 = 256;

/// One read: `len` bytes of descriptor `fd` from `offset` into `buf`.
pub(crate) struct RingRead {
    pub fd: RawFd,
    pub offset: u64,
    pub buf: *mut u8,
    pub len: usize,
}

/// A read that failed: its index in the list given, and the error.
#[derive(Debug)]
pub(crate) struct RingError {
    pub index: usize,
    pub error: io::Error,
}

thread_local! {
    /// This thread's ring: made at its first batch, `None` if the kernel refused one.
    static RING: RefCell<Option<Option<IoUring>>> = const { RefCell::new(None) };
}

/// Runs every read to completion on this thread's ring (short reads are continued). `None`
/// when there is no ring here (the kernel has no io_uring, or refused this thread one): the
/// caller reads another way. The first failure is returned once every read submitted has
/// completed.
///
/// # Safety
/// Every `buf` must be valid for writes of its `len` bytes, and not be read or written by
/// anything else, until this returns.
pub(crate) unsafe fn read_all(reads: &[RingRead]) -> Option<Result<(), RingError>> {
    RING.with(|cell| {
        let mut cell = cell.borrow_mut();
        let ring = cell.get_or_insert_with(|| match IoUring::new(RING_ENTRIES) {
            Ok(r) => Some(r),
            Err(e) => {
                log::debug!("no io_uring for batch reads ({e}): a thread pool reads them");
                None
            }
        });
        // SAFETY: passed on from this function's contract.
        ring.as_mut().map(|r| unsafe { run(r, reads) })
    })
}

/// # Safety
/// As for `read_all`.
unsafe fn run(ring: &mut IoUring, reads: &[RingRead]) -> Result<(), RingError> {
    let mut done = vec![0usize; reads.len()];
    let mut todo: VecDeque<usize> = (0..reads.len()).filter(|&i| reads[i].len > 0).collect();
    let mut in_flight = 0usize;
    let mut failed: Option<RingError> = None;
    loop {
        // Nothing new is submitted after a failure; what is in flight is still waited for, as
        // it writes into the callers' buffers.
        while failed.is_none() && in_flight < RING_ENTRIES as usize {
            let Some(i) = todo.pop_front() else { break };
            let r = &reads[i];
            let rest = r.len - done[i];
            let entry = opcode::Read::new(
                types::Fd(r.fd),
                // SAFETY: `done[i] < len`, so the pointer stays inside the caller's buffer.
                unsafe { r.buf.add(done[i]) },
                rest.min(u32::MAX as usize) as u32,
            )
            .offset(r.offset + done[i] as u64)
            .build()
            .user_data(i as u64);
            // SAFETY: the buffer is valid until this function returns (the caller's contract),
            // and this function does not return while the read is in flight.
            if unsafe { ring.submission().push(&entry) }.is_err() {
                todo.push_front(i);
                break;
            }
            in_flight += 1;
        }
        if in_flight == 0 {
            break;
        }
        if let Err(e) = ring.submit_and_wait(1) {
            // Interrupted, or the kernel is short of memory for now: the submitted reads are
            // still in flight and their entries still queued, so the only safe way on is to
            // wait again.
            if !matches!(e.raw_os_error(), Some(libc::EINTR)) {
                log::debug!("io_uring submit: {e}; waiting again");
                std::thread::yield_now();
            }
            continue;
        }
        for cqe in ring.completion() {
            in_flight -= 1;
            let i = cqe.user_data() as usize;
            let n = cqe.result();
            if n > 0 {
                done[i] += n as usize;
                if done[i] < reads[i].len {
                    todo.push_back(i);
                }
            } else if n == -libc::EINTR || n == -libc::EAGAIN {
                todo.push_back(i);
            } else if failed.is_none() {
                let error = if n == 0 {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file ends before the slice",
                    )
                } else {
                    io::Error::from_raw_os_error(-n)
                };
                failed = Some(RingError { index: i, error });
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    fn file_of(n: usize) -> (std::fs::File, Vec<u8>) {
        let mut f = tempfile::tempfile().unwrap();
        let bytes: Vec<u8> = (0..n).map(|i| (i * 7 % 253) as u8).collect();
        f.write_all(&bytes).unwrap();
        (f, bytes)
    }

    #[test]
    fn more_reads_than_the_ring_holds_all_land_where_asked() {
        let (f, bytes) = file_of(1 << 20);
        // 200 slices of varied sizes and places, more than RING_ENTRIES.
        let spans: Vec<(usize, usize)> = (0..200)
            .map(|i| ((i * 5003) % 900_000, 1 + i * 517))
            .collect();
        let mut bufs: Vec<Vec<u8>> = spans.iter().map(|&(_, len)| vec![0u8; len]).collect();
        let reads: Vec<RingRead> = spans
            .iter()
            .zip(bufs.iter_mut())
            .map(|(&(offset, len), b)| RingRead {
                fd: f.as_raw_fd(),
                offset: offset as u64,
                buf: b.as_mut_ptr(),
                len,
            })
            .collect();
        // SAFETY: each buffer is its own Vec, alive and untouched until the call returns.
        let r = unsafe { read_all(&reads) }.expect("this kernel has io_uring");
        r.unwrap();
        for (&(offset, len), b) in spans.iter().zip(&bufs) {
            assert_eq!(&b[..], &bytes[offset..offset + len]);
        }
    }

    #[test]
    fn a_slice_past_the_end_fails_with_its_index_and_the_others_are_still_read() {
        let (f, bytes) = file_of(10_000);
        let mut good = vec![0u8; 100];
        let mut past = vec![0u8; 100];
        let reads = [
            RingRead {
                fd: f.as_raw_fd(),
                offset: 20_000,
                buf: past.as_mut_ptr(),
                len: 100,
            },
            RingRead {
                fd: f.as_raw_fd(),
                offset: 500,
                buf: good.as_mut_ptr(),
                len: 100,
            },
        ];
        // SAFETY: both buffers are alive and untouched until the call returns.
        let err = unsafe { read_all(&reads) }.expect("io_uring").unwrap_err();
        assert_eq!(err.index, 0);
        assert_eq!(err.error.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(&good[..], &bytes[500..600]);
    }

    #[test]
    fn a_bad_descriptor_is_an_error_not_a_hang() {
        let mut buf = vec![0u8; 10];
        let reads = [RingRead {
            fd: -1,
            offset: 0,
            buf: buf.as_mut_ptr(),
            len: 10,
        }];
        // SAFETY: the buffer is alive and untouched until the call returns.
        let err = unsafe { read_all(&reads) }.expect("io_uring").unwrap_err();
        assert_eq!(err.error.raw_os_error(), Some(libc::EBADF));
    }
}
