//! The worker's own side: the entry points of `convert-worker`, `concat-worker` and
//! `confine-probe`, progress reported on stdout, and the test-only fault switch.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::confine;
use crate::convert::{ConvertOptions, Progress};
use crate::error::{Error, Result};

use super::grants::{confine_worker, WorkerGrants};
use super::worker::fd_path;
use super::FAULT_ENV;

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
