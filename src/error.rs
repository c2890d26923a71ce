//! The library's error type. Every variant renders as one line naming what is wrong and where
//! (file, dataset, row), so the CLI and the mount's status files can show it as it is.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::dtype::Dtype;

#[derive(Debug, Error)]
pub enum Error {
    /// An I/O failure on a named path.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    /// The input is not a usable h5ad file, or its matrix breaks an invariant.
    #[error("{}: {location}: {message}", file.display())]
    Input {
        file: PathBuf,
        location: String,
        message: String,
    },

    /// A value would change in the conversion to the archive's data type.
    #[error(
        "{}: {location}: value {value} at row {row}, column {column} cannot be stored as {target} without changing it (choose another --data-dtype, or pass --allow-lossy)",
        file.display()
    )]
    Lossy {
        file: PathBuf,
        location: String,
        value: String,
        row: u64,
        column: u64,
        target: Dtype,
    },

    /// An SCDL archive is missing a file or is inconsistent.
    #[error("{}: {message}", path.display())]
    Archive { path: PathBuf, message: String },

    /// Work stopped from outside (the converter was terminated, the daemon is stopping): not a
    /// verdict on the input, so it is not remembered as a failure and is retried at next start.
    #[error("{0}")]
    Interrupted(String),

    /// The output would not fit in its file system's free space less the reserve.
    #[error(
        "{}: needs {} ({needed} bytes) but its file system has {} available, less a reserve of {}: refused before writing",
        path.display(),
        human(*needed),
        human(*available),
        human(*reserve)
    )]
    NoSpace {
        path: PathBuf,
        needed: u64,
        available: u64,
        reserve: u64,
    },

    /// A request that cannot be carried out as asked (bad option, existing output, ...).
    #[error("{0}")]
    Usage(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Error {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn archive(path: impl AsRef<Path>, message: impl Into<String>) -> Error {
        Error::Archive {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }
}

/// Attaches a path to `io::Result`s.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

/// Bytes in a human unit, for messages ("8.0 TiB").
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(8 << 40), "8.0 TiB");
    }
}
