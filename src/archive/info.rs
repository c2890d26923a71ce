//! `scdl-fs info`: what an archive holds, as a serialisable summary (`--json`) and as the text
//! the command prints (`Display`); and the bytes an archive (any directory) takes on disk.

use std::fmt;
use std::path::Path;

use serde::Serialize;

use super::Archive;

/// A summary for `scdl-fs info`.
#[derive(Debug, Serialize)]
pub struct ArchiveInfo {
    pub path: String,
    pub version: String,
    pub rows: u64,
    pub nnz: u64,
    pub dtypes: DtypesInfo,
    pub feature_blocks: Vec<BlockInfo>,
    /// obs_features/: per block, its rows and (column, type) pairs; null when absent.
    pub obs: Option<crate::obs::ObsSummary>,
    /// The neighbor graph's key, nnz and types; null when absent.
    pub neighbors: Option<crate::archive::cellmeta::neighbors::NeighborInfo>,
    /// obsm keys with dtypes and shapes.
    pub obsm: Vec<crate::archive::cellmeta::obsm::ObsmInfo>,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct DtypesInfo {
    pub data: String,
    pub col_ptr: String,
    pub row_ptr: String,
}

#[derive(Debug, Serialize)]
pub struct BlockInfo {
    pub first_row: u64,
    pub rows: u64,
    pub num_vars: u64,
    pub label: String,
    pub columns: Vec<String>,
}

impl Archive {
    /// Total bytes of the archive's files (recursive).
    pub fn disk_bytes(&self) -> u64 {
        tree_size(&self.path)
    }

    pub fn info(&self) -> ArchiveInfo {
        let mut first_row = 0;
        let feature_blocks = self
            .features
            .blocks
            .iter()
            .map(|b| {
                let info = BlockInfo {
                    first_row,
                    rows: b.rows,
                    num_vars: b.frame.num_vars,
                    label: b.label.clone(),
                    columns: b.frame.columns.iter().map(|(n, _)| n.clone()).collect(),
                };
                first_row += b.rows;
                info
            })
            .collect();
        ArchiveInfo {
            path: self.path.display().to_string(),
            version: self.version.clone(),
            rows: self.num_rows,
            nnz: self.nnz,
            dtypes: DtypesInfo {
                data: self.data_dtype.name().into(),
                col_ptr: self.col_dtype.name().into(),
                row_ptr: self.row_ptr_dtype.name().into(),
            },
            feature_blocks,
            obs: self.obs.clone(),
            neighbors: self.neighbors().map(|n| n.info()),
            obsm: self.obsm_keys().iter().map(|o| o.info()).collect(),
            bytes: self.disk_bytes(),
        }
    }
}

/// Bytes of the files below `dir` (0 when it does not exist).
pub fn tree_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => tree_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

impl fmt::Display for ArchiveInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "archive   {}", self.path)?;
        writeln!(f, "version   {}", self.version)?;
        writeln!(f, "rows      {}", self.rows)?;
        writeln!(f, "values    {}", self.nnz)?;
        let d = &self.dtypes;
        writeln!(
            f,
            "dtypes    data {}, col_ptr {}, row_ptr {}",
            d.data, d.col_ptr, d.row_ptr
        )?;
        writeln!(f, "bytes     {}", self.bytes)?;
        writeln!(f, "blocks    {}", self.feature_blocks.len())?;
        for (i, b) in self.feature_blocks.iter().enumerate() {
            writeln!(
                f,
                "  {i}: rows {}..{} ({} genes) columns [{}] label {}",
                b.first_row,
                b.first_row + b.rows,
                b.num_vars,
                b.columns.join(", "),
                b.label
            )?;
        }
        match &self.obs {
            None => writeln!(f, "obs       none")?,
            Some(obs) => {
                writeln!(f, "obs       {} block(s)", obs.blocks.len())?;
                for (i, b) in obs.blocks.iter().enumerate() {
                    let cols: Vec<String> =
                        b.columns.iter().map(|(n, t)| format!("{n}: {t}")).collect();
                    writeln!(f, "  {i}: {} rows, columns [{}]", b.rows, cols.join(", "))?;
                }
            }
        }
        for line in crate::archive::cellmeta::info_lines(self) {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}
