//! Reading AnnData `.h5ad` files: which matrix to convert (X, raw, a layer; modern and legacy
//! layouts), streaming it in bounded row blocks whatever its storage (CSR, CSC, dense), and the
//! `var` dataframe that describes its columns.
//!
//! Everything here reads; nothing here writes. Errors name the file and the HDF5 object.

mod attrs;
mod dataframe;
mod matrix;

use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use dataframe::{Column, DataFrame};
pub(crate) use matrix::element_dtype;
pub use matrix::{Block, Layout, MatrixReader, BLOCK_ELEMENTS};

use crate::error::{Error, Result};

/// Which matrix of the file to convert.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum MatrixChoice {
    /// `raw.X` when the file has a raw matrix, else `X` (what BioNeMo SCDL does).
    #[default]
    Auto,
    X,
    Raw,
    Layer(String),
}

impl FromStr for MatrixChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(MatrixChoice::Auto),
            "X" => Ok(MatrixChoice::X),
            "raw" | "raw.X" | "raw/X" => Ok(MatrixChoice::Raw),
            _ => match s.strip_prefix("layers/") {
                Some(name) if !name.is_empty() && !name.contains('/') => {
                    Ok(MatrixChoice::Layer(name.to_string()))
                }
                _ => Err(format!(
                    "unknown matrix '{s}': expected auto, X, raw or layers/NAME"
                )),
            },
        }
    }
}

/// An open .h5ad file.
pub struct H5ad {
    path: PathBuf,
    file: hdf5::File,
}

/// The HDF5 signature every HDF5 file starts with (at offset 0 for files h5py writes).
const HDF5_SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";

impl H5ad {
    pub fn open(path: &Path) -> Result<H5ad> {
        use std::io::Read;
        let bad = |message: String| Error::Input {
            file: path.to_path_buf(),
            location: "/".into(),
            message,
        };
        let mut head = [0u8; 8];
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let n = f.read(&mut head).map_err(|e| Error::io(path, e))?;
        if n < 8 || &head != HDF5_SIGNATURE {
            let what = if n == 0 {
                "empty file"
            } else {
                "no HDF5 signature"
            };
            return Err(bad(format!("not an HDF5 file ({what})")));
        }
        let file = hdf5::File::open(path)
            .map_err(|e| bad(format!("cannot open as HDF5 (truncated or corrupt?): {e}")))?;
        Ok(H5ad {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn error(&self, location: &str, message: impl Into<String>) -> Error {
        Error::Input {
            file: self.path.clone(),
            location: location.to_string(),
            message: message.into(),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.file.link_exists(name)
    }

    /// Where the chosen matrix and its var dataframe live: (matrix path, var path).
    pub fn locate(&self, choice: &MatrixChoice) -> Result<(String, String)> {
        let modern_raw =
            self.has("raw") && self.file.group("raw").is_ok_and(|g| g.link_exists("X"));
        let legacy_raw = self.has("raw.X");
        let raw = if modern_raw {
            Some(("/raw/X".to_string(), "/raw/var".to_string()))
        } else if legacy_raw {
            Some(("/raw.X".to_string(), "/raw.var".to_string()))
        } else {
            None
        };
        let x = || -> Result<(String, String)> {
            if self.has("X") {
                Ok(("/X".into(), "/var".into()))
            } else {
                Err(self.error("/X", "no X matrix: not an AnnData file?"))
            }
        };
        match choice {
            MatrixChoice::Auto => raw.map_or_else(x, Ok),
            MatrixChoice::X => x(),
            MatrixChoice::Raw => {
                raw.ok_or_else(|| self.error("/raw", "no raw matrix (neither raw/X nor raw.X)"))
            }
            MatrixChoice::Layer(name) => {
                let layers = self.file.group("layers").ok();
                if layers.as_ref().is_some_and(|g| g.link_exists(name)) {
                    Ok((format!("/layers/{name}"), "/var".into()))
                } else {
                    let have = layers
                        .and_then(|g| g.member_names().ok())
                        .unwrap_or_default();
                    Err(self.error(
                        &format!("/layers/{name}"),
                        format!("no such layer (layers: {})", display_list(&have)),
                    ))
                }
            }
        }
    }

    /// Opens the chosen matrix for streaming.
    pub fn matrix(&self, path: &str) -> Result<MatrixReader<'_>> {
        MatrixReader::open(self, path)
    }

    /// Reads the dataframe at `path` (var or raw/var); `expected_rows` is the matrix's number of
    /// columns. A missing dataframe gets a positional index ("0", "1", ...) as anndata does.
    pub fn dataframe(&self, path: &str, expected_rows: u64) -> Result<DataFrame> {
        let df = if self.has(path.trim_start_matches('/')) {
            dataframe::read(self, path)?
        } else {
            DataFrame::positional(expected_rows)
        };
        if df.len() as u64 != expected_rows {
            return Err(self.error(
                path,
                format!(
                    "has {} rows but the matrix has {} columns",
                    df.len(),
                    expected_rows
                ),
            ));
        }
        Ok(df)
    }

    /// Reads `/obs`, which must describe each of the matrix's `rows` rows (a file without one
    /// gets a positional index, as anndata does). `raw` shares the file's obs.
    pub fn obs(&self, rows: u64) -> Result<DataFrame> {
        let df = if self.has("obs") {
            dataframe::read(self, "/obs")?
        } else {
            DataFrame::positional(rows)
        };
        if df.len() as u64 != rows {
            return Err(self.error(
                "/obs",
                format!("has {} rows but the matrix has {rows} rows", df.len()),
            ));
        }
        Ok(df)
    }

    pub(crate) fn file(&self) -> &hdf5::File {
        &self.file
    }
}

/// The most a dataset may expand from its stored bytes: deflate, the strongest filter an .h5ad
/// uses, never exceeds 1032:1.
pub const MAX_EXPANSION: u64 = 1100;
/// Declared bytes allowed beyond that, whatever is stored (small arrays, fill-value padding).
const UNBACKED_ALLOWANCE: u64 = 1 << 20;

/// The most bytes `stored` bytes of a file can stand for.
fn expansion_limit(stored: u64) -> u128 {
    stored as u128 * MAX_EXPANSION as u128 + UNBACKED_ALLOWANCE as u128
}

/// A dataset that declares far more than the file stores for it.
#[derive(Debug)]
pub(crate) struct Unbacked {
    elements: usize,
    declared: u128,
    stored: u64,
}

impl std::fmt::Display for Unbacked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "declares {} values ({} bytes) but the file stores only {} bytes of them: refused (chunks never written?)",
            self.elements, self.declared, self.stored
        )
    }
}

/// Checks that `ds` is backed by bytes in the file. HDF5 lets a tiny file declare a huge
/// chunked dataset whose chunks were never written (they read as the fill value): converting
/// one would run for hours, or write terabytes, on data the file does not contain.
pub(crate) fn unbacked(ds: &hdf5::Dataset) -> Option<Unbacked> {
    let item = ds.dtype().map(|t| t.size()).unwrap_or(1) as u128;
    let declared = ds.size() as u128 * item;
    let stored = ds.storage_size();
    (declared > expansion_limit(stored)).then_some(Unbacked {
        elements: ds.size(),
        declared,
        stored,
    })
}

fn display_list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}
