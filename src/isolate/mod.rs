//! Workers in child processes. libhdf5 is a C library with a long record of memory-safety bugs
//! on malformed files; the daemon must trust it neither with its own life nor with its
//! privileges. Each conversion runs as `scdl-fs convert-worker` (this same binary), each concat
//! as `scdl-fs concat-worker`, under resource limits and confined (`confine.rs`): the parent
//! opens the inputs and passes them as descriptors 3, 4, ..., hands the worker a staging
//! directory (`stage.rs`) as the next descriptor, reads its progress from a pipe, and publishes
//! what it wrote; a crash, a limit or a forbidden system call becomes a failed dataset with a
//! clear message.
//!
//! `mod.rs` holds what the parent calls (`convert_in_child`, `concat_in_child`, the start-up
//! `probe`); `worker.rs` how a worker process is started and watched; `grants.rs` what it is
//! allowed; `child.rs` the worker's own side.
//!
//! Protocol: the child prints `layers {json}` once confined, `total N` once, then `rows N` (rows
//! written so far) lines on stdout; on failure it prints the one-line error on stderr and exits 1.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::confine::Layers;
use crate::convert::{ConvertOptions, DataDtypeChoice, Progress};
use crate::error::{IoContext, Result};
use crate::h5ad::MatrixChoice;
use crate::stage::Stage;

mod child;
mod grants;
mod worker;

pub use child::{concat_worker_main, probe_main, worker_main, PipeProgress};
pub use grants::{confine_worker, Confinement, WorkerGrants, DEFAULT_WORKER_USER, UNCONFINED_ENV};
use worker::{fd_path, run_worker, worker_error, WorkerJob};

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

/// Where the daemon finds its converter: this executable.
pub fn own_executable() -> Option<PathBuf> {
    std::env::current_exe().ok()
}
