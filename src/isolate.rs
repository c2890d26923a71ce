//! Conversions in a child process. libhdf5 is a C library with a long record of crashes on
//! malformed files; the daemon must not trust it with its own life. The mount runs each
//! conversion as `scdl-fs convert-worker` (this same binary) under resource limits, reads its
//! progress from a pipe, and turns a crash or a limit into a failed dataset with a clear message.
//!
//! Protocol: the child prints `total N` once, then `rows N` (rows written so far) lines on stdout;
//! on failure it prints the one-line error on stderr and exits 1.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::convert::{ConvertOptions, DataDtypeChoice, Progress};
use crate::error::{Error, Result};
use crate::h5ad::MatrixChoice;

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
/// a slow disk would) until killed; `abort:TEXT` or `stall:TEXT` only for inputs whose path
/// contains TEXT.
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

/// Converts `input` into `output` in a child process running `converter` (the scdl-fs binary).
pub fn convert_in_child(
    converter: &Path,
    input: &Path,
    output: &Path,
    opts: &ConvertOptions,
    limits: &Limits,
    progress: &dyn Progress,
) -> Result<()> {
    let mut cmd = Command::new(converter);
    cmd.arg("convert-worker")
        .arg(input)
        .arg(output)
        .arg("--matrix")
        .arg(matrix_arg(&opts.matrix))
        .arg("--data-dtype")
        .arg(dtype_arg(opts.data_dtype))
        .arg("--index-dtypes")
        .arg(opts.index_dtypes.name())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if opts.allow_lossy {
        cmd.arg("--allow-lossy");
    }
    // One argument with '=': a column name may start with '-'.
    cmd.arg(format!("--obs={}", opts.obs));
    let l = limits.clone();
    // No single file the worker writes may outgrow what its output's file system can take; the
    // worker lowers this further to its computed output size once it knows it.
    let file_size = match l.file_size {
        Some(n) => n,
        None => output_space(output)?,
    };
    // SAFETY: the closure runs between fork and exec and only calls prctl, signal and setrlimit,
    // which are async-signal-safe; it allocates nothing and touches no locks.
    unsafe {
        cmd.pre_exec(move || {
            // Die with the daemon: a converter must not outlive the process that owns its job.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A write past RLIMIT_FSIZE then fails with EFBIG (reported, temporaries removed)
            // instead of killing the worker; an ignored signal stays ignored across exec.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            for (res, v) in [
                (libc::RLIMIT_AS, l.address_space),
                (libc::RLIMIT_CPU, l.cpu_seconds),
                (libc::RLIMIT_NOFILE, l.open_files),
                (libc::RLIMIT_FSIZE, file_size),
                // A crashing libhdf5 is expected now and then: no core files in the store.
                (libc::RLIMIT_CORE, 0),
            ] {
                let lim = libc::rlimit {
                    rlim_cur: v,
                    rlim_max: v,
                };
                if libc::setrlimit(res, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        Error::Usage(format!(
            "cannot start the converter {}: {e}",
            converter.display()
        ))
    })?;
    let pid = child.id();
    let mut stderr = child.stderr.take().expect("piped stderr");
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut done = 0u64;
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
        }
    }
    let status = child
        .wait()
        .map_err(|e| Error::Usage(format!("converter: {e}")))?;
    let stderr_text = errors.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    // A crashed child cannot clean up: remove its temporary directory here.
    remove_child_temporaries(output, pid);
    if let Some(sig @ (libc::SIGTERM | libc::SIGINT | libc::SIGHUP)) = status.signal() {
        return Err(Error::Interrupted(format!(
            "converter interrupted by {} while converting {}; it runs again at the next start",
            signal_name(sig),
            input.display()
        )));
    }
    if let Some(sig) = status.signal() {
        return Err(Error::Usage(format!(
            "converter crashed: {} while converting {}",
            signal_name(sig),
            input.display()
        )));
    }
    let last = stderr_text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let msg = last.strip_prefix("scdl-fs: ").unwrap_or(last).to_string();
    Err(Error::Usage(if msg.is_empty() {
        format!("converter failed ({status}) on {}", input.display())
    } else {
        msg
    }))
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

/// Removes `.NAME.scdl-tmp.<pid>.*` beside `output`.
fn remove_child_temporaries(output: &Path, pid: u32) {
    let (Some(parent), Some(name)) = (output.parent(), output.file_name()) else {
        return;
    };
    let prefix = format!(".{}.scdl-tmp.{pid}.", name.to_string_lossy());
    if let Ok(entries) = std::fs::read_dir(parent) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
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

/// The child's entry point: runs one conversion; the test-only fault switch may abort it.
pub fn worker_main(input: &Path, output: &Path, opts: &ConvertOptions) -> Result<()> {
    let fault = std::env::var(FAULT_ENV).unwrap_or_default();
    let hit = |kind: &str| match fault.strip_prefix(kind) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix(':')
            .is_some_and(|t| input.to_string_lossy().contains(t)),
        None => false,
    };
    if hit("abort") {
        let _ = crate::h5ad::H5ad::open(input);
        std::process::abort();
    }
    if hit("stall") {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    crate::convert::convert(input, output, opts, &PipeProgress::new()).map(|_| ())
}

/// Where the daemon finds its converter: this executable.
pub fn own_executable() -> Option<PathBuf> {
    std::env::current_exe().ok()
}
