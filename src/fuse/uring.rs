//! FUSE over io_uring (kernel >= 6.14 with `fuse.enable_uring=1`): one queue per CPU, each
//! served by threads pinned to that CPU. The kernel puts a request on the queue of the CPU the
//! requesting thread runs on, so the reader and the thread that answers it share a CPU: a round
//! trip costs a context switch instead of waking an idle CPU (on a VM, tens of microseconds).
//!
//! Requests arrive in a per-entry header buffer (`fuse_in_header`, the operation's header) and
//! payload buffer (names, written data); the answer goes back in the same buffers with
//! COMMIT_AND_FETCH, which also waits for the next request. FORGET and INTERRUPT still come
//! through /dev/fuse (the fuser session). Once io_uring is agreed at INIT, the kernel holds new
//! requests until every queue is registered, or until the daemon gives io_uring up.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::abi::{self, InHeader, Reply};
use super::{Connection, OpenReply, CREATED_TTL, MAX_TRANSFER};
use crate::namespace::NodeType;

/// How many requests one queue serves at once: a lookup may wait for a release of the same
/// CPU, so at least two.
pub const MIN_THREADS_PER_QUEUE: usize = 2;

/// The kernel needs room for the largest READ or WRITE in every entry's payload buffer.
const PAYLOAD_SIZE: usize = MAX_TRANSFER as usize;

/// Whether this process can create the rings: asked before INIT requests FUSE over io_uring,
/// because once it is agreed the kernel holds every request until all queues are registered.
pub fn available() -> bool {
    IoUring::<squeue::Entry128, cqueue::Entry>::builder()
        .setup_single_issuer()
        .build(1)
        .is_ok()
}

/// Starts the queue threads over `dev` (this mount's /dev/fuse), one queue per possible CPU,
/// `threads` in all (at least two per queue). Returns how many threads run. On failure the
/// kernel is told to give io_uring up for this connection, so requests go on through /dev/fuse.
pub fn start(conn: Arc<Connection>, dev: &OwnedFd, threads: usize) -> std::io::Result<usize> {
    register_queues(conn, dev, threads).inspect_err(|_| give_up(dev))
}

/// A REGISTER the kernel must refuse (no such queue): refusing it, the kernel turns io_uring off
/// for the connection and releases the requests waiting for the queues.
fn give_up(dev: &OwnedFd) {
    let refused = dev
        .try_clone()
        .and_then(|dev| Queue::register(dev, u16::MAX))
        .and_then(|mut q| q.next_completion());
    match refused {
        Ok(r) if r < 0 => log::info!("FUSE over io_uring given up for this mount"),
        other => log::error!("FUSE over io_uring could not be given up ({other:?})"),
    }
}

fn register_queues(conn: Arc<Connection>, dev: &OwnedFd, threads: usize) -> std::io::Result<usize> {
    let queues = possible_cpus();
    let threads_per_queue = threads.div_ceil(queues);
    let mut started = 0;
    for qid in 0..queues {
        for _ in 0..threads_per_queue.max(MIN_THREADS_PER_QUEUE) {
            // The ring is created by the thread that uses it (it is single-issuer).
            let (dev, conn) = (dev.try_clone()?, conn.clone());
            let (registered, outcome) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("fuse-uring-{qid}"))
                .spawn(move || match Queue::register(dev, qid as u16) {
                    Ok(queue) => {
                        let _ = registered.send(Ok(()));
                        queue.serve(&conn)
                    }
                    Err(e) => {
                        let _ = registered.send(Err(e));
                    }
                })?;
            outcome
                .recv()
                .map_err(|_| std::io::Error::other("queue thread died"))??;
            started += 1;
        }
    }
    Ok(started)
}

/// Queue ids are CPU numbers: the kernel makes one queue per possible CPU.
fn possible_cpus() -> usize {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    let last = text
        .trim()
        .split([',', '-'])
        .filter_map(|n| n.parse::<usize>().ok())
        .max();
    match last {
        Some(n) => n + 1,
        // SAFETY: sysconf has no preconditions.
        None => unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as usize,
    }
}

/// One ring entry: its own io_uring, the buffers the kernel reads and writes, its queue id.
struct Queue {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    dev: OwnedFd,
    qid: u16,
    /// Never freed: the kernel may write a request into them until the connection is gone.
    header: &'static mut [u8],
    payload: &'static mut [u8],
}

impl Queue {
    /// Creates the ring and registers the entry with the kernel; the first completion is the
    /// first request.
    fn register(dev: OwnedFd, qid: u16) -> std::io::Result<Queue> {
        // Test-only fault switch: a queue that cannot be registered.
        if qid == 1 && std::env::var_os("SCDL_FS_IO_URING_FAULT").is_some_and(|v| v == "register") {
            return Err(std::io::Error::other(
                "queue 1 refused (SCDL_FS_IO_URING_FAULT)",
            ));
        }
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_single_issuer()
            .build(4)?;
        let header: &'static mut [u8] = Box::leak(vec![0u8; abi::RING_HEADER_SIZE].into());
        let payload: &'static mut [u8] = Box::leak(vec![0u8; PAYLOAD_SIZE].into());
        let iov: &'static [libc::iovec; 2] = Box::leak(Box::new([
            libc::iovec {
                iov_base: header.as_mut_ptr().cast(),
                iov_len: header.len(),
            },
            libc::iovec {
                iov_base: payload.as_mut_ptr().cast(),
                iov_len: payload.len(),
            },
        ]));
        let mut queue = Queue {
            ring,
            dev,
            qid,
            header,
            payload,
        };
        let sqe =
            opcode::UringCmd80::new(types::Fd(queue.dev.as_raw_fd()), abi::URING_CMD_REGISTER)
                .cmd(abi::uring_cmd(0, qid))
                .addr(Some(iov.as_ptr() as u64))
                .build();
        queue.submit(with_len(sqe, 2))?;
        Ok(queue)
    }

    fn submit(&mut self, sqe: squeue::Entry128) -> std::io::Result<()> {
        // SAFETY: the SQE refers to the leaked, never-freed header and payload buffers and iovec
        // array, and to `self.dev`, which outlives the ring.
        unsafe { self.ring.submission().push(&sqe) }
            .map_err(|_| std::io::Error::other("io_uring submission queue full"))?;
        // An entry whose answer is never committed would leave its reader waiting for good.
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) =>
                {
                    std::thread::yield_now()
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits for a request, answers it, and hands the answer back with the next fetch, until
    /// the connection ends.
    fn serve(mut self, conn: &Connection) {
        pin_to_cpu(self.qid as usize);
        loop {
            let result = match self.next_completion() {
                Ok(r) => r,
                Err(e) => {
                    log::warn!("io_uring queue {}: {e}", self.qid);
                    return;
                }
            };
            if result < 0 {
                // ENOTCONN/ECANCELED at unmount; anything else is worth a line in the log.
                let err = std::io::Error::from_raw_os_error(-result);
                match -result {
                    libc::ENOTCONN | libc::ECANCELED | libc::ENODEV => {
                        log::debug!("io_uring queue {} ends: {err}", self.qid)
                    }
                    _ => log::warn!("io_uring queue {} ends: {err}", self.qid),
                }
                return;
            }
            let commit_id = abi::u64_at(self.header, abi::RING_ENT + abi::ENT_COMMIT_ID);
            self.answer(conn);
            let sqe = opcode::UringCmd80::new(
                types::Fd(self.dev.as_raw_fd()),
                abi::URING_CMD_COMMIT_AND_FETCH,
            )
            .cmd(abi::uring_cmd(commit_id, self.qid))
            .build();
            if let Err(e) = self.submit(sqe) {
                log::warn!("io_uring queue {}: {e}", self.qid);
                return;
            }
        }
    }

    fn next_completion(&mut self) -> std::io::Result<i32> {
        loop {
            if let Some(cqe) = self.ring.completion().next() {
                return Ok(cqe.result());
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Handles the request in the buffers and writes the reply into them.
    fn answer(&mut self, conn: &Connection) {
        let req = InHeader::parse(&self.header[abi::RING_IN_OUT..]);
        let payload_in = abi::u32_at(self.header, abi::RING_ENT + abi::ENT_PAYLOAD_SIZE) as usize;
        let op: [u8; 128] = self.header[abi::RING_OP..abi::RING_ENT]
            .try_into()
            .expect("128-byte operation header");
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handle(
                conn,
                &req,
                &op,
                &self.payload[..payload_in.min(PAYLOAD_SIZE)],
            )
        }))
        .unwrap_or_else(|_| {
            log::error!("request {} (opcode {}) panicked", req.unique, req.opcode);
            Err(libc::EIO)
        });
        let (error, len) = match answer.and_then(|a| encode(&a, self.payload)) {
            Ok(len) => (0, len),
            Err(e) => (-e, 0),
        };
        let out = abi::out_header(16 + len as u32, error, req.unique);
        self.header[abi::RING_IN_OUT..abi::RING_IN_OUT + 16].copy_from_slice(&out);
        let at = abi::RING_ENT + abi::ENT_PAYLOAD_SIZE;
        self.header[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
    }
}

/// An SQE with its `len` field set (the iovec count of a REGISTER), which the io-uring crate's
/// URING_CMD builder does not expose.
fn with_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: `Entry128` is `repr(C)`: the kernel's 64-byte `io_uring_sqe` followed by 64 bytes,
    // and every byte pattern is a valid SQE; `len` is the u32 at offset 24 of `io_uring_sqe`.
    let mut bytes: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    bytes[24..28].copy_from_slice(&len.to_le_bytes());
    // SAFETY: as above, the bytes came from an `Entry128`.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(bytes) }
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only touch
    // the set passed by reference, for the calling thread (pid 0).
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r != 0 {
        log::debug!(
            "io_uring queue {cpu}: not pinned ({})",
            std::io::Error::last_os_error()
        );
    }
}

/// What a request is answered with, before it is encoded into the payload buffer.
enum Answer {
    Empty,
    Entry(fuser::FileAttr, Duration),
    Attr(fuser::FileAttr, Duration),
    Open(OpenReply),
    Created(fuser::FileAttr, OpenReply),
    Written(u32),
    Data(crate::namespace::ReadBytes),
    Dir(Vec<crate::namespace::DirEntry>, usize),
    Statfs,
}

type Answered = Result<Answer, i32>;

/// Errors as the ring wants them: the errno's number.
fn code<T>(r: Result<T, fuser::Errno>) -> Result<T, i32> {
    r.map_err(|e| e.code())
}

/// The same semantics as the fuser adapter, operation by operation.
fn handle(conn: &Connection, req: &InHeader, op: &[u8], payload: &[u8]) -> Answered {
    let ino = req.nodeid;
    let name = || abi::name(payload);
    match req.opcode {
        abi::LOOKUP => code(conn.lookup(ino, name())).map(|(a, ttl)| Answer::Entry(a, ttl)),
        abi::GETATTR => code(conn.getattr(ino)).map(|(a, ttl)| Answer::Attr(a, ttl)),
        abi::SETATTR => {
            let valid = abi::u32_at(op, 0);
            let size = (valid & abi::FATTR_SIZE != 0).then(|| abi::u64_at(op, 16));
            let owner_or_mode = valid & (abi::FATTR_MODE | abi::FATTR_UID | abi::FATTR_GID) != 0;
            code(conn.setattr(ino, owner_or_mode, size)).map(|(a, ttl)| Answer::Attr(a, ttl))
        }
        abi::UNLINK => code(conn.unlink(ino, name())).map(|()| Answer::Empty),
        abi::OPEN => code(conn.open(ino, abi::u32_at(op, 0) as i32)).map(Answer::Open),
        abi::READ => {
            let (fh, offset, size) = (abi::u64_at(op, 0), abi::u64_at(op, 8), abi::u32_at(op, 16));
            code(conn.read(ino, fh, offset, size)).map(Answer::Data)
        }
        abi::WRITE => {
            let (fh, offset, size) = (abi::u64_at(op, 0), abi::u64_at(op, 8), abi::u32_at(op, 16));
            let data = payload.get(..size as usize).ok_or(libc::EINVAL)?;
            code(conn.write(fh, offset, data)).map(Answer::Written)
        }
        abi::STATFS => Ok(Answer::Statfs),
        abi::RELEASE => code(conn.release(ino, abi::u64_at(op, 0))).map(|()| Answer::Empty),
        abi::FLUSH => code(conn.flush(abi::u64_at(op, 0))).map(|()| Answer::Empty),
        abi::FSYNC | abi::RELEASEDIR | abi::DESTROY => Ok(Answer::Empty),
        abi::OPENDIR => Ok(Answer::Open(OpenReply {
            fh: 0,
            flags: fuser::FopenFlags::empty(),
            backing_id: None,
        })),
        abi::READDIR => {
            let (offset, size) = (abi::u64_at(op, 8), abi::u32_at(op, 16));
            code(conn.readdir(ino, offset)).map(|d| Answer::Dir(d, size as usize))
        }
        abi::CREATE => code(conn.create(ino, name())).map(|(a, o)| Answer::Created(a, o)),
        abi::MKDIR | abi::RMDIR | abi::RENAME | abi::RENAME2 => Err(libc::EROFS),
        _ => Err(libc::ENOSYS),
    }
}

/// Writes `answer` into `payload`; returns its length.
fn encode(answer: &Answer, payload: &mut [u8]) -> Result<usize, i32> {
    // A directory listing is cut to the size the kernel asked for, whole entries only.
    let limit = match answer {
        Answer::Dir(_, size) => (*size).min(payload.len()),
        _ => payload.len(),
    };
    let mut out = Reply::new(&mut payload[..limit]);
    let open = |out: &mut Reply, o: &OpenReply| {
        out.open(o.fh, o.flags.bits(), o.backing_id.unwrap_or(0))
            .map(|_| ())
    };
    let done = match answer {
        Answer::Empty => Some(()),
        Answer::Entry(a, ttl) => out.entry(a, *ttl).map(|_| ()),
        Answer::Attr(a, ttl) => out.attr_out(a, *ttl).map(|_| ()),
        Answer::Open(o) => open(&mut out, o),
        Answer::Created(a, o) => out.entry(a, CREATED_TTL).and_then(|out| open(out, o)),
        Answer::Written(n) => out.written(*n).map(|_| ()),
        Answer::Data(bytes) => out.bytes(bytes).map(|_| ()),
        Answer::Statfs => out.statfs().map(|_| ()),
        Answer::Dir(entries, _) => {
            dirents(&mut out, entries);
            Some(())
        }
    };
    done.map(|()| out.len()).ok_or(libc::EIO)
}

/// As many entries as fit, in order.
fn dirents(dir: &mut Reply, entries: &[crate::namespace::DirEntry]) {
    for e in entries {
        if dir
            .dirent(e.ino, e.next, e.kind == NodeType::Dir, &e.name)
            .is_none()
        {
            break;
        }
    }
}
