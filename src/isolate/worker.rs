//! How a worker process is started and watched: its inputs placed as descriptors 3, 4, ...,
//! every other descriptor closed, resource limits applied, progress read from its stdout, and its
//! end (exit, signal, limit) turned into a result or a one-line error.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::confine::Layers;
use crate::convert::Progress;
use crate::error::{Error, Result};
use crate::stage::{self, Stage};

use super::grants::{Confinement, WorkerGrants};
use super::{output_space, Limits};

fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGKILL => "SIGKILL (out of memory or killed)",
        libc::SIGXCPU => "SIGXCPU (CPU time limit)",
        libc::SIGXFSZ => "SIGXFSZ (file size limit)",
        libc::SIGFPE => "SIGFPE",
        libc::SIGSYS => "SIGSYS (a forbidden system call)",
        libc::SIGILL => "SIGILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        _ => "",
    };
    if name.is_empty() {
        format!("signal {sig}")
    } else {
        format!("signal {sig} ({name})")
    }
}

/// A worker to run: the subcommand and its arguments, the files and directories it reads (passed
/// as descriptors 3, 4, ...), the stage it writes into (the next descriptor).
pub(super) struct WorkerJob<'a> {
    pub(super) subcommand: &'static str,
    pub(super) args: Vec<OsString>,
    pub(super) inputs: Vec<(PathBuf, File)>,
    pub(super) stage: Option<&'a Stage>,
    pub(super) output: Option<&'a Path>,
    pub(super) limits: Limits,
    pub(super) confinement: &'a Confinement,
}

pub(super) const FIRST_FD: RawFd = 3;

/// The path through which a worker reaches descriptor `fd` of its own.
pub(super) fn fd_path(fd: RawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{fd}"))
}

impl WorkerJob<'_> {
    pub(super) fn input_fd(i: usize) -> RawFd {
        FIRST_FD + i as RawFd
    }

    fn stage_fd(&self) -> RawFd {
        FIRST_FD + self.inputs.len() as RawFd
    }

    /// Where the worker writes its archive.
    pub(super) fn worker_output(&self) -> PathBuf {
        fd_path(self.stage_fd()).join(stage::ARCHIVE)
    }

    pub(super) fn grants(&self) -> WorkerGrants {
        WorkerGrants {
            identity: self.confinement.stage_owner(),
            keep_root: self.confinement.keep_root,
            read_fds: (0..self.inputs.len()).map(Self::input_fd).collect(),
            stage_fd: self.stage.map(|_| self.stage_fd()),
            unconfined: !self.confinement.enabled,
        }
    }

    /// The worker's paths as the user knows them, longest first (for its messages).
    fn real_paths(&self) -> Vec<(String, String)> {
        let mut m: Vec<(String, String)> = Vec::new();
        if let Some(out) = self.output {
            m.push((
                self.worker_output().display().to_string(),
                out.display().to_string(),
            ));
        }
        for (i, (p, _)) in self.inputs.iter().enumerate().rev() {
            m.push((
                fd_path(Self::input_fd(i)).display().to_string(),
                p.display().to_string(),
            ));
        }
        m
    }
}

/// Descriptors `sources` become `FIRST_FD`, `FIRST_FD + 1`, ... in the child; every other
/// descriptor above stderr is closed (a worker must not inherit /dev/fuse or the store's).
/// Runs between fork and exec: only async-signal-safe system calls, no allocation.
fn place_descriptors(sources: &[RawFd]) -> std::io::Result<()> {
    let n = sources.len() as RawFd;
    let mut moved = [0 as RawFd; MAX_WORKER_FDS];
    // First above the target range (so no source is overwritten), then into place.
    for (i, &fd) in sources.iter().enumerate() {
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor this process holds.
        let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, FIRST_FD + n) };
        if d < 0 {
            return Err(std::io::Error::last_os_error());
        }
        moved[i] = d;
    }
    for (i, &fd) in moved[..sources.len()].iter().enumerate() {
        // SAFETY: dup2 onto a number in the target range; the copy is not close-on-exec.
        if unsafe { libc::dup2(fd, FIRST_FD + i as RawFd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // SAFETY: close_range closes descriptors of this (forked) process only.
    if unsafe { libc::syscall(libc::SYS_close_range, FIRST_FD + n, u32::MAX, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Inputs one worker may be given (each a descriptor).
const MAX_WORKER_FDS: usize = 4096;

/// The rlimits of `Limits` (with `file_size` decided for this worker), applied to the calling
/// (forked) process, never above what it already has: async-signal-safe.
fn apply_limits(l: &Limits, file_size: u64) -> std::io::Result<()> {
    for (res, v) in [
        (libc::RLIMIT_AS, l.address_space),
        (libc::RLIMIT_CPU, l.cpu_seconds),
        (libc::RLIMIT_NOFILE, l.open_files),
        (libc::RLIMIT_FSIZE, file_size),
        // A crashing libhdf5 is expected now and then: no core files in the store.
        (libc::RLIMIT_CORE, 0),
    ] {
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given.
        if unsafe { libc::getrlimit(res, &mut cur) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Only ever lowered: a limit the caller set (ulimit) stands.
        let v = v.min(cur.rlim_max);
        let lim = libc::rlimit {
            rlim_cur: v,
            rlim_max: v,
        };
        // SAFETY: setrlimit reads the struct it is given and changes this process only.
        if unsafe { libc::setrlimit(res, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// What a worker printed and how it ended.
pub(super) struct WorkerOutcome {
    pub(super) status: std::process::ExitStatus,
    pub(super) stderr: String,
    pub(super) pid: u32,
    pub(super) layers: Option<Layers>,
}

/// Runs `job` in a child process of `exe`, feeding its progress lines to `progress`.
pub(super) fn run_worker(
    exe: &Path,
    job: &WorkerJob,
    progress: &dyn Progress,
) -> Result<WorkerOutcome> {
    if job.inputs.len() + 1 > MAX_WORKER_FDS {
        return Err(Error::Usage(format!(
            "too many inputs for one worker ({})",
            job.inputs.len()
        )));
    }
    let mut cmd = Command::new(exe);
    cmd.arg(job.subcommand)
        .args(&job.args)
        .args(job.grants().args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut fds: Vec<RawFd> = job.inputs.iter().map(|(_, f)| f.as_raw_fd()).collect();
    if let Some(stage) = job.stage {
        fds.push(stage.fd().as_raw_fd());
    }
    let l = job.limits.clone();
    // No single file the worker writes may outgrow what its output's file system can take; the
    // worker lowers this further to its computed output size once it knows it.
    let file_size = match (l.file_size, job.output) {
        (Some(n), _) => n,
        (None, Some(out)) => output_space(out)?,
        (None, None) => libc::RLIM_INFINITY,
    };
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system
    // calls (prctl, signal, setrlimit, fcntl, dup2, close_range); it allocates nothing and
    // touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            // Die with the daemon: a worker must not outlive the process that owns its job.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A write past RLIMIT_FSIZE then fails with EFBIG (reported, temporaries removed)
            // instead of killing the worker; an ignored signal stays ignored across exec.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            apply_limits(&l, file_size)?;
            place_descriptors(&fds)
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Usage(format!("cannot start the worker {}: {e}", exe.display())))?;
    let pid = child.id();
    let mut stderr = child.stderr.take().expect("piped stderr");
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let layers = follow_progress(child.stdout.take().expect("piped stdout"), progress);
    let status = child
        .wait()
        .map_err(|e| Error::Usage(format!("worker: {e}")))?;
    let mut stderr = errors.join().unwrap_or_default();
    for (worker_path, real) in job.real_paths() {
        stderr = stderr.replace(&worker_path, &real);
    }
    Ok(WorkerOutcome {
        status,
        stderr,
        pid,
        layers,
    })
}

/// Reads a worker's stdout to its end (the protocol of `mod.rs`), feeding `progress`; the
/// confinement layers it reported, if any.
fn follow_progress(stdout: impl Read, progress: &dyn Progress) -> Option<Layers> {
    let mut done = 0u64;
    let mut layers = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(n) = line.strip_prefix("total ").and_then(|n| n.parse().ok()) {
            progress.start(n);
        } else if let Some(n) = line
            .strip_prefix("rows ")
            .and_then(|n| n.parse::<u64>().ok())
        {
            progress.rows_done(n.saturating_sub(done));
            done = n;
        } else if let Some(l) = line.strip_prefix("layers ") {
            layers = Layers::decode(l);
        }
    }
    layers
}

/// The error of a worker that did not succeed: its signal, or its last line on stderr. Every
/// line it printed is logged (at info) under `what`.
pub(super) fn worker_error(
    outcome: &WorkerOutcome,
    what: &str,
    action: &str,
    input: &Path,
) -> Error {
    let status = outcome.status;
    for line in outcome.stderr.lines().filter(|l| !l.trim().is_empty()) {
        log::info!("{what}: worker {}: {line}", outcome.pid);
    }
    if let Some(sig @ (libc::SIGTERM | libc::SIGINT | libc::SIGHUP)) = status.signal() {
        return Error::Interrupted(format!(
            "{what} interrupted by {} while {action} {}; it runs again at the next start",
            signal_name(sig),
            input.display()
        ));
    }
    if let Some(sig) = status.signal() {
        return Error::Usage(format!(
            "{what} crashed: {} while {action} {}",
            signal_name(sig),
            input.display()
        ));
    }
    let last = outcome
        .stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let msg = last.strip_prefix("scdl-fs: ").unwrap_or(last).to_string();
    Error::Usage(if msg.is_empty() {
        format!("{what} failed ({status}) on {}", input.display())
    } else {
        msg
    })
}
