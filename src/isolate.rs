//! Workers in child processes. libhdf5 is a C library with a long record of memory-safety bugs
//! on malformed files; the daemon must trust it neither with its own life nor with its
//! privileges. Each conversion runs as `scdl-fs convert-worker` (this same binary), each concat
//! as `scdl-fs concat-worker`, under resource limits and confined (`confine.rs`): the parent
//! opens the inputs and passes them as descriptors 3, 4, ..., hands the worker a staging
//! directory (`stage.rs`) as the next descriptor, reads its progress from a pipe, and publishes
//! what it wrote; a crash, a limit or a forbidden system call becomes a failed dataset with a
//! clear message.
//!
//! Protocol: the child prints `layers {json}` once confined, `total N` once, then `rows N` (rows
//! written so far) lines on stdout; on failure it prints the one-line error on stderr and exits 1.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::confine::{self, Identity, Layers};
use crate::convert::{ConvertOptions, DataDtypeChoice, Progress};
use crate::error::{Error, IoContext, Result};
use crate::h5ad::MatrixChoice;
use crate::stage::{self, Stage};

/// Limits applied to a converter process.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Address space, bytes.
    pub address_space: u64,
    /// CPU time, seconds.
    pub cpu_seconds: u64,
    pub open_files: u64,
    /// Largest file the worker may write (RLIMIT_FSIZE), bytes; `None`: what the output's file
    /// system can take (its available space less the reserve, see `space`), decided at start.
    pub file_size: Option<u64>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            address_space: 8 << 30,
            cpu_seconds: 6 * 3600,
            open_files: 256,
            file_size: None,
        }
    }
}

/// The environment variable of the test-only fault switch: `abort` makes the worker abort (as a
/// crashing libhdf5 would) after opening its input; `stall` makes it hang (as a converter stuck on
/// a slow disk would) until killed; `escape` makes it, once confined, try what an exploit would
/// (`confine::try_escapes`); `KIND:TEXT` only for inputs whose path contains TEXT.
pub const FAULT_ENV: &str = "SCDL_FS_CONVERTER_FAULT";

fn matrix_arg(m: &MatrixChoice) -> String {
    match m {
        MatrixChoice::Auto => "auto".into(),
        MatrixChoice::X => "X".into(),
        MatrixChoice::Raw => "raw".into(),
        MatrixChoice::Layer(n) => format!("layers/{n}"),
    }
}

fn dtype_arg(d: DataDtypeChoice) -> String {
    match d {
        DataDtypeChoice::Keep => "keep".into(),
        DataDtypeChoice::Auto => "auto".into(),
        DataDtypeChoice::Fixed(d) => d.name().into(),
    }
}

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

/// How workers are confined: the identity a worker started as root drops to, and whether the
/// layers of `confine.rs` are applied at all.
#[derive(Clone, Debug)]
pub struct Confinement {
    /// `None` when this process is not root (there is no privilege to drop).
    pub identity: Option<Identity>,
    /// False only with [`UNCONFINED_ENV`] set (benchmark comparisons; not for production).
    pub enabled: bool,
    /// Stay root (the other layers still apply): set by [`check_confinement`] only, for a store
    /// whose file system refuses every user but root (FUSE without allow_other, root squash).
    pub keep_root: bool,
}

impl Default for Confinement {
    /// As [`Confinement::for_user`] with [`DEFAULT_WORKER_USER`]; without that user, root's
    /// workers have no identity to drop to and refuse to run.
    fn default() -> Confinement {
        Confinement::for_user(DEFAULT_WORKER_USER).unwrap_or(Confinement {
            identity: None,
            enabled: true,
            keep_root: false,
        })
    }
}

/// `SCDL_FS_UNCONFINED=1` runs workers without the confinement layers (still in a child process
/// with the rlimits, through the same staging directory): only to measure what confinement costs.
pub const UNCONFINED_ENV: &str = "SCDL_FS_UNCONFINED";

/// The worker user when none is given.
pub const DEFAULT_WORKER_USER: &str = "nobody";

impl Confinement {
    /// The confinement of workers started by this process: as root, dropping to `worker_user`.
    pub fn for_user(worker_user: &str) -> Result<Confinement> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let identity = if unsafe { libc::geteuid() } == 0 {
            let id = Identity::of_user(worker_user).map_err(|e| Error::Usage(e.to_string()))?;
            if id.uid == 0 {
                return Err(Error::Usage(format!(
                    "the converter's user {worker_user:?} is root: choose an unprivileged one (--worker-user)"
                )));
            }
            Some(id)
        } else {
            None
        };
        let enabled = !std::env::var(UNCONFINED_ENV).is_ok_and(|v| v == "1");
        Ok(Confinement {
            identity,
            enabled,
            keep_root: false,
        })
    }

    /// Who owns what a worker writes: its identity when it drops one.
    fn stage_owner(&self) -> Option<Identity> {
        self.identity.filter(|_| self.enabled && !self.keep_root)
    }
}

/// What a worker is told about its confinement (the hidden options of `convert-worker`,
/// `concat-worker` and `confine-probe`): the identity to drop to, the descriptors it may read
/// beneath and the staging directory it may write beneath.
#[derive(Clone, Debug, Default)]
pub struct WorkerGrants {
    pub identity: Option<Identity>,
    pub read_fds: Vec<RawFd>,
    pub stage_fd: Option<RawFd>,
    pub unconfined: bool,
    pub keep_root: bool,
}

impl WorkerGrants {
    fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        if let Some(id) = self.identity {
            a.extend(["--as-user".into(), id.arg().into()]);
        }
        for fd in &self.read_fds {
            a.extend(["--read-fd".into(), fd.to_string().into()]);
        }
        if let Some(fd) = self.stage_fd {
            a.extend(["--stage-fd".into(), fd.to_string().into()]);
        }
        if self.unconfined {
            a.push("--unconfined".into());
        }
        if self.keep_root {
            a.push("--keep-root".into());
        }
        a
    }
}

/// The worker side: confines this process as its parent asked, and reports the layers on stdout
/// (`layers {json}`). Call it first thing, while single-threaded.
pub fn confine_worker(grants: &WorkerGrants) -> Result<Option<Layers>> {
    if grants.unconfined {
        return Ok(None);
    }
    let borrow = |fd: &RawFd| {
        // SAFETY: the parent opened these descriptors for this process (`run_worker`), and
        // nothing closes them before the process exits.
        unsafe { BorrowedFd::borrow_raw(*fd) }
    };
    let confine_grants = confine::Grants {
        read: grants.read_fds.iter().map(borrow).collect(),
        write: grants.stage_fd.iter().map(borrow).collect(),
    };
    let layers = confine::confine(grants.identity, grants.keep_root, &confine_grants)
        .map_err(|e| Error::Usage(e.to_string()))?;
    println!("layers {}", layers.encode());
    Ok(Some(layers))
}

/// A worker to run: the subcommand and its arguments, the files and directories it reads (passed
/// as descriptors 3, 4, ...), the stage it writes into (the next descriptor).
struct WorkerJob<'a> {
    subcommand: &'static str,
    args: Vec<OsString>,
    inputs: Vec<(PathBuf, File)>,
    stage: Option<&'a Stage>,
    output: Option<&'a Path>,
    limits: Limits,
    confinement: &'a Confinement,
}

const FIRST_FD: RawFd = 3;

/// The path through which a worker reaches descriptor `fd` of its own.
fn fd_path(fd: RawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{fd}"))
}

impl WorkerJob<'_> {
    fn input_fd(i: usize) -> RawFd {
        FIRST_FD + i as RawFd
    }

    fn stage_fd(&self) -> RawFd {
        FIRST_FD + self.inputs.len() as RawFd
    }

    /// Where the worker writes its archive.
    fn worker_output(&self) -> PathBuf {
        fd_path(self.stage_fd()).join(stage::ARCHIVE)
    }

    fn grants(&self) -> WorkerGrants {
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
struct WorkerOutcome {
    status: std::process::ExitStatus,
    stderr: String,
    pid: u32,
    layers: Option<Layers>,
}

/// Runs `job` in a child process of `exe`, feeding its progress lines to `progress`.
fn run_worker(exe: &Path, job: &WorkerJob, progress: &dyn Progress) -> Result<WorkerOutcome> {
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
    let mut done = 0u64;
    let mut layers = None;
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
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

/// The error of a worker that did not succeed: its signal, or its last line on stderr. Every
/// line it printed is logged (at info) under `what`.
fn worker_error(outcome: &WorkerOutcome, what: &str, action: &str, input: &Path) -> Error {
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

/// What `output`'s file system can take: its available space less the reserve (at least one
/// byte, so that a full disk gives EFBIG, not an unlimited worker).
fn output_space(output: &Path) -> Result<u64> {
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(crate::space::FsSpace::of(dir)?.usable().max(1))
}

fn open_input(path: &Path) -> Result<(PathBuf, File)> {
    Ok((path.to_path_buf(), File::open(path).at(path)?))
}

/// Converts `input` (a file or a directory of them) into `output` in a confined child process
/// running `converter` (the scdl-fs binary), which writes into a stage this process publishes.
pub fn convert_in_child(
    converter: &Path,
    input: &Path,
    output: &Path,
    opts: &ConvertOptions,
    limits: &Limits,
    confinement: &Confinement,
    progress: &dyn Progress,
) -> Result<()> {
    // Listing a directory parses nothing: done here, so the worker gets only its files.
    let files = crate::convert::input_files(input)?;
    let inputs = files
        .iter()
        .map(|f| open_input(f))
        .collect::<Result<Vec<_>>>()?;
    let stage = Stage::create(output, confinement.stage_owner())?;
    let mut job = WorkerJob {
        subcommand: "convert-worker",
        args: Vec::new(),
        inputs,
        stage: Some(&stage),
        output: Some(output),
        limits: limits.clone(),
        confinement,
    };
    let mut args: Vec<OsString> = vec![job.worker_output().into()];
    for (i, f) in files.iter().enumerate() {
        args.extend([
            "--input".into(),
            fd_path(WorkerJob::input_fd(i)).into(),
            "--label".into(),
            f.clone().into(),
        ]);
    }
    args.extend([
        "--matrix".into(),
        matrix_arg(&opts.matrix).into(),
        "--data-dtype".into(),
        dtype_arg(opts.data_dtype).into(),
        "--index-dtypes".into(),
        opts.index_dtypes.name().into(),
    ]);
    if opts.allow_lossy {
        args.push("--allow-lossy".into());
    }
    // One argument with '=': a column name may start with '-'.
    args.push(format!("--obs={}", opts.obs).into());
    args.push(format!("--neighbors={}", opts.neighbors).into());
    args.push(format!("--obsm={}", opts.obsm).into());
    job.args = args;
    let outcome = run_worker(converter, &job, progress)?;
    if !outcome.status.success() {
        return Err(worker_error(&outcome, "converter", "converting", input));
    }
    stage.publish()
}

/// Concatenates archives `inputs` into `output` in a confined child process (`concat-worker`),
/// as `concat::concat` does in-process.
pub fn concat_in_child(
    exe: &Path,
    inputs: &[PathBuf],
    output: &Path,
    opts: &crate::concat::ConcatOptions,
    limits: &Limits,
    confinement: &Confinement,
    progress: &dyn Progress,
) -> Result<()> {
    crate::concat::check_inputs(inputs, output)?;
    let opened = inputs
        .iter()
        .map(|p| open_input(p))
        .collect::<Result<Vec<_>>>()?;
    let stage = Stage::create(output, confinement.stage_owner())?;
    let mut limits = limits.clone();
    // Each archive holds a few files open at once (data, columns, row_ptr, features).
    limits.open_files = limits.open_files.max(8 * inputs.len() as u64 + 64);
    let mut job = WorkerJob {
        subcommand: "concat-worker",
        args: Vec::new(),
        inputs: opened,
        stage: Some(&stage),
        output: Some(output),
        limits,
        confinement,
    };
    let mut args: Vec<OsString> = vec![job.worker_output().into()];
    for i in 0..inputs.len() {
        args.extend(["--input".into(), fd_path(WorkerJob::input_fd(i)).into()]);
    }
    if let Some(d) = opts.data_dtype {
        args.extend(["--data-dtype".into(), d.name().into()]);
    }
    if opts.allow_lossy {
        args.push("--allow-lossy".into());
    }
    args.extend(["--index-dtypes".into(), opts.index_dtypes.name().into()]);
    job.args = args;
    let outcome = run_worker(exe, &job, progress)?;
    if !outcome.status.success() {
        let first = inputs.first().map(PathBuf::as_path).unwrap_or(output);
        return Err(worker_error(&outcome, "concat", "concatenating", first));
    }
    stage.publish()
}

/// Starts a worker that only confines itself, writes one file into `stage` if given, and
/// reports the layers it got: what every worker of this process gets.
pub fn probe(
    exe: &Path,
    confinement: &Confinement,
    stage: Option<&Stage>,
) -> Result<Option<Layers>> {
    let job = WorkerJob {
        subcommand: "confine-probe",
        args: Vec::new(),
        inputs: Vec::new(),
        stage,
        output: None,
        limits: Limits::default(),
        confinement,
    };
    let outcome = run_worker(exe, &job, &crate::convert::Quiet)?;
    if !outcome.status.success() {
        return Err(worker_error(&outcome, "confinement probe", "starting", exe));
    }
    Ok(outcome.layers)
}

/// Checks, once at the daemon's start, that confined workers can write into a stage in `state_dir`
/// (the store's own directory), and logs the layers they get (target `confinement`, shown at the
/// default log level; a missing layer is a warning). Where the store's file system refuses the
/// worker user (FUSE without allow_other such as sshfs, NFS with root squash), workers keep uid 0
/// and that is a warning too; the returned confinement is what the workers then get.
pub fn check_confinement(
    exe: &Path,
    mut confinement: Confinement,
    state_dir: &Path,
) -> Result<Confinement> {
    if !confinement.enabled {
        log::warn!(target: "confinement", "workers run UNCONFINED ({UNCONFINED_ENV}=1): for benchmarks only, not for production");
        return Ok(confinement);
    }
    let probe_in_store = |c: &Confinement| -> Result<Option<Layers>> {
        let stage = Stage::create(&state_dir.join("confinement-probe"), c.stage_owner())?;
        probe(exe, c, Some(&stage))
    };
    let layers = match probe_in_store(&confinement) {
        Ok(layers) => layers,
        Err(e) if confinement.stage_owner().is_some() => {
            log::warn!(target: "confinement", "the worker user cannot write in this store ({e}): its file system refuses other users (FUSE without allow_other, NFS root squash?); workers keep uid 0, the other layers still apply");
            confinement.keep_root = true;
            probe_in_store(&confinement)?
        }
        Err(e) => return Err(e),
    };
    match layers {
        Some(layers) if layers.complete() => {
            log::info!(target: "confinement", "workers confined: {layers}")
        }
        Some(layers) => {
            log::warn!(target: "confinement", "workers partly confined (the missing layers are not available here; the others still apply): {layers}")
        }
        None => log::warn!(target: "confinement", "the confinement probe reported nothing"),
    }
    Ok(confinement)
}

/// Reports progress on stdout in the protocol above (the child side).
pub struct PipeProgress {
    done: std::sync::atomic::AtomicU64,
}

impl PipeProgress {
    pub fn new() -> PipeProgress {
        PipeProgress {
            done: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Default for PipeProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for PipeProgress {
    fn start(&self, total_rows: u64) {
        println!("total {total_rows}");
    }
    fn rows_done(&self, rows: u64) {
        let n = self
            .done
            .fetch_add(rows, std::sync::atomic::Ordering::Relaxed)
            + rows;
        println!("rows {n}");
    }
}

/// The fault switch's value, and whether it asks for `kind` on an input labelled like `labels`.
fn fault_hits(kind: &str, labels: &[String]) -> bool {
    let fault = std::env::var(FAULT_ENV).unwrap_or_default();
    match fault.strip_prefix(kind) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix(':')
            .is_some_and(|t| labels.iter().any(|l| l.contains(t))),
        None => false,
    }
}

/// The entries beside the first input (its store), for the `escape` fault switch only.
fn escape_targets(labels: &[String]) -> (PathBuf, Vec<PathBuf>) {
    let first = Path::new(labels.first().map(String::as_str).unwrap_or("/"));
    let dir = first.parent().unwrap_or(Path::new("/")).to_path_buf();
    let visible = |p: &PathBuf| {
        p.file_name()
            .is_none_or(|n| n.as_encoded_bytes()[0] != b'.')
    };
    let mut others: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p != first && visible(p))
                .map(|p| if p.is_dir() { p.join("data.npy") } else { p })
                .collect()
        })
        .unwrap_or_default();
    others.sort();
    (dir, others)
}

/// The child's entry point: confines itself, then runs one conversion of `inputs` (descriptor
/// paths, labelled by their real paths) into `output`; the test-only fault switch may make it
/// abort, stall, or try to escape first.
pub fn worker_main(
    inputs: &[PathBuf],
    labels: &[String],
    output: &Path,
    opts: &ConvertOptions,
    grants: &WorkerGrants,
) -> Result<()> {
    let escape = fault_hits("escape", labels).then(|| escape_targets(labels));
    let layers = confine_worker(grants)?;
    for (input, label) in inputs.iter().zip(labels) {
        if let Err(e) = File::open(input) {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                return Err(Error::Usage(format!(
                    "{label}: not readable by the converter's user ({}): make it readable by others (chmod o+r) or choose --worker-user",
                    layers.map(|l| l.identity).unwrap_or_default()
                )));
            }
        }
    }
    if let Some((store, others)) = escape {
        confine::try_escapes(&store, &others);
    }
    if fault_hits("abort", labels) {
        let _ = crate::h5ad::H5ad::open(&inputs[0]);
        std::process::abort();
    }
    if fault_hits("stall", labels) {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    crate::convert::convert_labelled(inputs, labels, output, opts, &PipeProgress::new()).map(|_| ())
}

/// The concat child's entry point: confines itself, then concatenates `inputs` into `output`.
pub fn concat_worker_main(
    inputs: &[PathBuf],
    output: &Path,
    opts: &crate::concat::ConcatOptions,
    grants: &WorkerGrants,
) -> Result<()> {
    confine_worker(grants)?;
    crate::concat::concat_with(inputs, output, opts, &PipeProgress::new()).map(|_| ())
}

/// The probe's entry point: confines itself, reports the layers, and writes (then removes) one
/// file in its stage, as a worker would.
pub fn probe_main(grants: &WorkerGrants) -> Result<()> {
    confine_worker(grants)?;
    if let Some(fd) = grants.stage_fd {
        let p = fd_path(fd).join("probe");
        std::fs::write(&p, b"probe")
            .and_then(|_| std::fs::remove_file(&p))
            .map_err(|e| Error::Usage(format!("cannot write in its staging directory: {e}")))?;
    }
    Ok(())
}

/// Where the daemon finds its converter: this executable.
pub fn own_executable() -> Option<PathBuf> {
    std::env::current_exe().ok()
}
