//! The `scdl-fs` command line: parses arguments, calls the library, prints one-line errors.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use scdl_fs::archive::Archive;
use scdl_fs::convert::{self, ConvertOptions, DataDtypeChoice, Progress};
use scdl_fs::h5ad::MatrixChoice;

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

#[derive(Subcommand)]
enum Command {
    /// Convert an .h5ad file, or a directory of them, into an SCDL archive.
    Convert {
        /// An .h5ad file, or a directory searched recursively for *.h5ad (sorted by path).
        input: PathBuf,
        /// The archive directory to create (must not exist).
        output: PathBuf,
        /// Which matrix: auto (raw.X if present, else X), X, raw, or layers/NAME.
        #[arg(long, default_value = "auto")]
        matrix: MatrixChoice,
        /// Data type of data.npy: float16, float32, float64, uint8..uint64, or keep.
        #[arg(long, default_value = "float32")]
        data_dtype: DataDtypeChoice,
        /// Convert values that the data type cannot hold exactly instead of failing.
        #[arg(long)]
        allow_lossy: bool,
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

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Convert {
            input,
            output,
            matrix,
            data_dtype,
            allow_lossy,
        } => {
            let opts = ConvertOptions {
                matrix,
                data_dtype,
                allow_lossy,
            };
            let bar = progress_bar();
            let written =
                convert::convert(&input, &output, &opts, &bar).map_err(|e| e.to_string())?;
            bar.0.finish_and_clear();
            eprintln!(
                "{}: {} rows, {} values ({})",
                written.path.display(),
                written.rows,
                written.nnz,
                written.dtype
            );
            Ok(())
        }
        Command::Info { archive, json } => {
            let a = Archive::open(&archive).map_err(|e| e.to_string())?;
            let info = a.info();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&info).expect("serialisable")
                );
            } else {
                println!("archive   {}", info.path);
                println!("version   {}", info.version);
                println!("rows      {}", info.rows);
                println!("values    {}", info.nnz);
                println!(
                    "dtypes    data {}, col_ptr {}, row_ptr {}",
                    info.dtypes.data, info.dtypes.col_ptr, info.dtypes.row_ptr
                );
                println!("bytes     {}", info.bytes);
                println!("blocks    {}", info.feature_blocks.len());
                for (i, b) in info.feature_blocks.iter().enumerate() {
                    println!(
                        "  {i}: rows {}..{} ({} genes) columns [{}] label {}",
                        b.first_row,
                        b.first_row + b.rows,
                        b.num_vars,
                        b.columns.join(", "),
                        b.label
                    );
                }
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("scdl-fs: {message}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}
