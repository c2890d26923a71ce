//! The `scdl-fs` command line: parses arguments, calls the library, prints one-line errors.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use scdl_fs::archive::{Archive, IndexDtypes};
use scdl_fs::concat::ConcatOptions;
use scdl_fs::convert::{ConvertOptions, DataDtypeChoice, Progress};
use scdl_fs::h5ad::MatrixChoice;
use scdl_fs::mount::{self, MountOptions};

/// Exit codes (documented in README.md).
const EXIT_FAILED: u8 = 1;

#[derive(Parser)]
#[command(
    name = "scdl-fs",
    version,
    about = "Single-cell data as SCDL archives and as a filesystem"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How a conversion is done: shared by `convert`, `mount` (for dropped files) and the internal
/// worker.
#[derive(clap::Args)]
struct ConversionArgs {
    /// Which matrix: auto (raw.X if present, else X), X, raw, or layers/NAME.
    #[arg(long, default_value = "auto")]
    matrix: MatrixChoice,
    /// Data type of data.npy: float16, float32, float64, uint8..uint64, keep (the source's), or
    /// auto (the smallest that stores every value exactly).
    #[arg(long, default_value = "float32")]
    data_dtype: DataDtypeChoice,
    /// Convert values that the data type cannot hold exactly instead of failing.
    #[arg(long)]
    allow_lossy: bool,
    /// col_ptr.npy/row_ptr.npy: narrow (the smallest unsigned type holding every entry) or wide
    /// (uint32/uint64, for readers that assume them).
    #[arg(long, default_value = "narrow")]
    index_dtypes: IndexDtypes,
    /// Per-cell metadata kept in obs_features/: all, none, or COL,COL,... (the obs index, the
    /// cell ids, is always kept as a column).
    #[arg(long, default_value = "all", value_parser = parse_obs)]
    obs: scdl_fs::obs::ObsChoice,
    /// The obsp neighbor graph kept as bionemo-scdl 0.1.3's neighbor files: auto (obsp/next_cell_ids,
    /// bionemo's default key, when present), none, or KEY.
    #[arg(long, default_value = "auto")]
    neighbors: scdl_fs::archive::cellmeta::NeighborChoice,
    /// obsm keys kept in obsm/ (dense arrays): all, none, or KEY,KEY,...
    #[arg(long, default_value = "all", value_parser = parse_obsm)]
    obsm: scdl_fs::archive::cellmeta::ObsmChoice,
}

impl ConversionArgs {
    /// The options; a worker (`cap_file_size`) may cap its own file sizes, its only job being
    /// this conversion.
    fn options(&self, cap_file_size: bool) -> ConvertOptions {
        ConvertOptions {
            matrix: self.matrix.clone(),
            data_dtype: self.data_dtype,
            allow_lossy: self.allow_lossy,
            index_dtypes: self.index_dtypes,
            obs: self.obs.clone(),
            neighbors: self.neighbors.clone(),
            obsm: self.obsm.clone(),
            cap_file_size,
        }
    }
}

/// How a concat is done: shared by `concat` and its internal worker.
#[derive(clap::Args)]
struct ConcatArgs {
    /// Data type of the result (default: the inputs' common type).
    #[arg(long)]
    data_dtype: Option<scdl_fs::dtype::Dtype>,
    /// Convert values the data type cannot hold exactly instead of failing.
    #[arg(long)]
    allow_lossy: bool,
    /// col_ptr.npy/row_ptr.npy of the result: narrow or wide (as for convert).
    #[arg(long, default_value = "narrow")]
    index_dtypes: IndexDtypes,
}

impl ConcatArgs {
    fn options(&self) -> ConcatOptions {
        ConcatOptions {
            data_dtype: self.data_dtype,
            allow_lossy: self.allow_lossy,
            index_dtypes: self.index_dtypes,
        }
    }
}

/// How a worker is confined (hidden options its parent passes; see isolate/grants.rs).
#[derive(clap::Args)]
struct GrantArgs {
    /// Drop root to this UID:GID.
    #[arg(long, value_parser = parse_identity)]
    as_user: Option<scdl_fs::confine::Identity>,
    /// A descriptor the worker may read beneath (repeated).
    #[arg(long)]
    read_fd: Vec<i32>,
    /// The staging directory's descriptor, the only place the worker may write.
    #[arg(long)]
    stage_fd: Option<i32>,
    /// Apply no confinement layer (SCDL_FS_UNCONFINED=1 in the parent).
    #[arg(long)]
    unconfined: bool,
    /// Started as root, stay uid 0 (the store's file system refuses other users).
    #[arg(long)]
    keep_root: bool,
}

impl GrantArgs {
    fn grants(&self) -> scdl_fs::isolate::WorkerGrants {
        scdl_fs::isolate::WorkerGrants {
            identity: self.as_user,
            read_fds: self.read_fd.clone(),
            stage_fd: self.stage_fd,
            unconfined: self.unconfined,
            keep_root: self.keep_root,
        }
    }
}

fn parse_memory(s: &str) -> Result<usize, String> {
    scdl_fs::batches::parse_memory_size(s).map_err(|e| e.to_string())
}

fn parse_obs(s: &str) -> Result<scdl_fs::selection::Selection, String> {
    scdl_fs::selection::Selection::parse(s, "--obs", "COL")
}

fn parse_obsm(s: &str) -> Result<scdl_fs::selection::Selection, String> {
    scdl_fs::selection::Selection::parse(s, "--obsm", "KEY")
}

fn parse_identity(s: &str) -> Result<scdl_fs::confine::Identity, String> {
    scdl_fs::confine::Identity::of_user(s).map_err(|e| e.to_string())
}

/// The user conversions and concats run as when started by root (`nobody` unless given).
#[derive(clap::Args)]
struct WorkerUserArg {
    /// The unprivileged user (name, or UID:GID) that converters and concats run as when scdl-fs
    /// runs as root; inputs must be readable by it.
    #[arg(long, value_name = "USER", default_value = scdl_fs::isolate::DEFAULT_WORKER_USER)]
    worker_user: String,
}

/// `scdl-fs mount`'s options.
#[derive(clap::Args)]
struct MountArgs {
    mountpoint: PathBuf,
    /// The store directory (default: /var/lib/scdl-fs as root, else the XDG data dir).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Stay in the foreground (otherwise return once the mount is live).
    #[arg(long)]
    foreground: bool,
    /// Let other users read through the mount.
    #[arg(long)]
    allow_other: bool,
    /// With --allow-other: a group (name or gid) whose members may also drop files, remove
    /// inputs and write .control (otherwise only the mounting user may).
    #[arg(long, value_name = "GROUP", value_parser = parse_group)]
    writers: Option<u32>,
    /// Serve only: a read-only mount (no drops, no .control writes; inputs that appear in the
    /// store are still converted). Reads then cost one round trip less (no atime refresh).
    #[arg(long)]
    read_only: bool,
    /// FUSE worker threads (with FUSE over io_uring: per CPU, at least 2).
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Serve every request through /dev/fuse even when the kernel offers FUSE over io_uring
    /// (`fuse.enable_uring=1`, Linux >= 6.14), whose per-CPU queues are otherwise used.
    #[arg(long, env = "SCDL_FS_NO_IO_URING", value_parser = clap::builder::BoolishValueParser::new())]
    no_io_uring: bool,
    /// Concurrent conversions.
    #[arg(long, default_value_t = 1)]
    conversions: usize,
    /// Memory for rendered shuffled batches (batches/...), read and prefetched: bytes, or
    /// with K, M, G (powers of 1024).
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_memory)]
    batch_memory: usize,
    /// How dropped files are converted (as for convert).
    #[command(flatten)]
    conversion: ConversionArgs,
    #[command(flatten)]
    worker: WorkerUserArg,
}

impl MountArgs {
    /// The daemon's options (the store is filled in where the daemon starts).
    fn options(&self) -> MountOptions {
        MountOptions {
            mountpoint: self.mountpoint.clone(),
            store: PathBuf::new(),
            allow_other: self.allow_other,
            writers: self.writers,
            read_only: self.read_only,
            threads: self.threads,
            io_uring: !self.no_io_uring,
            workers: self.conversions,
            batch_memory: self.batch_memory,
            convert: self.conversion.options(false),
            worker_user: self.worker.worker_user.clone(),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Convert an .h5ad file, or a directory of them, into an SCDL archive.
    Convert {
        /// An .h5ad file, or a directory searched recursively for *.h5ad (sorted by path).
        input: PathBuf,
        /// The archive directory to create (must not exist).
        output: PathBuf,
        #[command(flatten)]
        conversion: ConversionArgs,
        #[command(flatten)]
        worker: WorkerUserArg,
    },
    /// Mount the filesystem: drop .h5ad files in, read cells out (see docs/SEMANTICS.md).
    Mount(MountArgs),
    /// Concatenate archives (in order) into a new archive.
    Concat {
        /// The archive directory to create (must not exist).
        output: PathBuf,
        /// The archives to join, in row order.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        #[command(flatten)]
        concat: ConcatArgs,
        #[command(flatten)]
        worker: WorkerUserArg,
    },
    /// (internal) One conversion in a confined child process; progress on stdout.
    #[command(hide = true)]
    ConvertWorker {
        /// The archive directory to create (inside the stage).
        output: PathBuf,
        /// An input file (a descriptor path), repeated in order.
        #[arg(long = "input", required = true)]
        inputs: Vec<PathBuf>,
        /// The real path of each input (feature block labels, messages).
        #[arg(long = "label", required = true)]
        labels: Vec<String>,
        #[command(flatten)]
        conversion: ConversionArgs,
        #[command(flatten)]
        grants: GrantArgs,
    },
    /// (internal) One concat in a confined child process; progress on stdout.
    #[command(hide = true)]
    ConcatWorker {
        output: PathBuf,
        #[arg(long = "input", required = true)]
        inputs: Vec<PathBuf>,
        #[command(flatten)]
        concat: ConcatArgs,
        #[command(flatten)]
        grants: GrantArgs,
    },
    /// (internal) Confine a child process as workers are and print the layers it got.
    #[command(hide = true)]
    ConfineProbe {
        #[command(flatten)]
        grants: GrantArgs,
    },
    /// Describe an SCDL archive (ours or bionemo-scdl's).
    Info {
        archive: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, total_rows: u64) {
        self.0.set_length(total_rows);
    }
    fn rows_done(&self, rows: u64) {
        self.0.inc(rows);
    }
}

fn progress_bar() -> Bar {
    // indicatif draws to stderr only when it is a terminal.
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} rows ({per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    Bar(bar)
}

fn mount(cli_args: &[std::ffi::OsString], args: &MountArgs) -> Result<(), (u8, String)> {
    if !args.foreground {
        // Same arguments, with the store made explicit, in a background daemon.
        let mut argv: Vec<std::ffi::OsString> = cli_args.to_vec();
        let store = args.store.clone().unwrap_or_else(|| {
            let default = scdl_fs::store::default_store();
            argv.push("--store".into());
            argv.push(default.clone().into());
            default
        });
        return mount::run_background(&argv, &store);
    }
    let opts = MountOptions {
        store: (args.store.clone()).unwrap_or_else(scdl_fs::store::default_store),
        ..args.options()
    };
    mount::run_foreground(&opts).map_err(|e| {
        mount::report_startup_error(&e.to_string());
        (e.exit_code(), e.to_string())
    })
}

/// A group given by name or number, as its gid.
fn parse_group(s: &str) -> Result<u32, String> {
    if let Ok(gid) = s.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(s).map_err(|_| format!("bad group name {s:?}"))?;
    // SAFETY: `name` is a valid C string; getgrnam returns null or a pointer to a static entry,
    // read at once (the CLI is single-threaded while parsing its arguments).
    let entry = unsafe { libc::getgrnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(format!("no group named {s:?}"));
    }
    // SAFETY: non-null, so it points to a valid group entry.
    Ok(unsafe { (*entry).gr_gid })
}

/// The worker executable (this one) and how its workers are confined.
fn worker_setup(
    worker: &WorkerUserArg,
) -> scdl_fs::Result<(PathBuf, scdl_fs::isolate::Confinement)> {
    let exe = scdl_fs::isolate::own_executable()
        .ok_or_else(|| scdl_fs::Error::Usage("cannot find own executable".into()))?;
    let confinement = scdl_fs::isolate::Confinement::for_user(&worker.worker_user)?;
    Ok((exe, confinement))
}

/// One line on stderr describing a new archive. The archive was read back before it was
/// published; this read is for the summary line only, and the archive stands whatever it says.
fn report(output: &std::path::Path) {
    match Archive::open(output) {
        Ok(a) => eprintln!(
            "{}: {} rows, {} values ({})",
            output.display(),
            a.num_rows,
            a.nnz,
            a.data_dtype
        ),
        Err(e) => eprintln!("{}: written ({e})", output.display()),
    }
}

fn failed(e: scdl_fs::Error) -> (u8, String) {
    (EXIT_FAILED, e.to_string())
}

/// Runs the parsed command; `cli_args` are the arguments it was parsed from (without argv[0]),
/// which a background mount passes on to its daemon.
fn run(cli: Cli, cli_args: &[std::ffi::OsString]) -> Result<(), (u8, String)> {
    match cli.command {
        Command::Mount(args) => mount(cli_args, &args),
        Command::Convert {
            input,
            output,
            conversion,
            worker,
        } => run_convert(&input, &output, &conversion.options(false), &worker),
        Command::Concat {
            output,
            inputs,
            concat,
            worker,
        } => run_concat(&inputs, &output, &concat.options(), &worker),
        Command::ConvertWorker {
            output,
            inputs,
            labels,
            conversion,
            grants,
        } => {
            if labels.len() != inputs.len() {
                return Err((EXIT_FAILED, "one --label per --input".to_string()));
            }
            let opts = conversion.options(true);
            scdl_fs::isolate::worker_main(&inputs, &labels, &output, &opts, &grants.grants())
                .map_err(failed)
        }
        Command::ConcatWorker {
            output,
            inputs,
            concat,
            grants,
        } => scdl_fs::isolate::concat_worker_main(
            &inputs,
            &output,
            &concat.options(),
            &grants.grants(),
        )
        .map_err(failed),
        Command::ConfineProbe { grants } => {
            scdl_fs::isolate::probe_main(&grants.grants()).map_err(failed)
        }
        Command::Info { archive, json } => {
            let info = Archive::open(&archive).map_err(failed)?.info();
            if json {
                let text = serde_json::to_string_pretty(&info).expect("serialisable");
                println!("{text}");
            } else {
                print!("{info}");
            }
            Ok(())
        }
    }
}

/// `scdl-fs convert`. The conversion runs in a confined child process (this binary's
/// convert-worker): a libhdf5 crash on a malformed file becomes a one-line error, and an
/// exploited one reaches nothing but its input and its own output.
fn run_convert(
    input: &std::path::Path,
    output: &std::path::Path,
    opts: &ConvertOptions,
    worker: &WorkerUserArg,
) -> Result<(), (u8, String)> {
    let bar = progress_bar();
    let (exe, confinement) = worker_setup(worker).map_err(failed)?;
    let limits = scdl_fs::isolate::Limits::default();
    scdl_fs::isolate::convert_in_child(&exe, input, output, opts, &limits, &confinement, &bar)
        .map_err(failed)?;
    bar.0.finish_and_clear();
    report(output);
    Ok(())
}

/// `scdl-fs concat`, in a confined child process as conversions are.
fn run_concat(
    inputs: &[PathBuf],
    output: &std::path::Path,
    opts: &ConcatOptions,
    worker: &WorkerUserArg,
) -> Result<(), (u8, String)> {
    let bar = progress_bar();
    let (exe, confinement) = worker_setup(worker).map_err(failed)?;
    let limits = scdl_fs::isolate::Limits::default();
    scdl_fs::isolate::concat_in_child(&exe, inputs, output, opts, &limits, &confinement, &bar)
        .map_err(failed)?;
    bar.0.finish_and_clear();
    report(output);
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,fuser=error,confinement=info"),
    )
    .init();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if scdl_fs::helper::is_helper_invocation(&argv) {
        // mount(8) / fstab: translate and mount in the background like `scdl-fs mount`.
        let args = match scdl_fs::helper::mount_args(&argv[1..]) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("scdl-fs: {e}");
                return ExitCode::from(scdl_fs::helper::EXIT_BAD_OPTION);
            }
        };
        let mut full = vec![std::ffi::OsString::from("scdl-fs")];
        full.extend(args.iter().cloned());
        return finish(run(Cli::parse_from(full), &args));
    }
    finish(run(Cli::parse(), &argv[1..]))
}

fn finish(result: Result<(), (u8, String)>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("scdl-fs: {message}");
            ExitCode::from(code)
        }
    }
}
