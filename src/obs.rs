//! Per-cell metadata (`obs`: cell type, donor, batch, ...) in an archive, kept as bionemo-scdl
//! 0.1.3 keeps it: `obs_features/` holds one `dataframe_<i>.parquet` per block of cells (one
//! parquet row per cell), `cumulative_sum_index.npy` (-1, then each block's end row), `labels.npy`
//! and `version.npy` — the layout of the var feature index, with cells for rows. bionemo 0.1.3's
//! `get_row(i, return_obs_features=True)` returns row i's values from it.
//!
//! Unlike bionemo, the obs index (the cell ids) is kept, as a column named after the index
//! (`_index` when it has none), so that no cell loses its id. Missing values stay missing
//! (parquet nulls). Consecutive blocks with the same columns (names and kinds) merge into one,
//! as bionemo 0.1.3 merges blocks with identical keys.

use std::path::Path;

use crate::error::{Error, Result};
use crate::features::{FeatureBlock, FeatureFrame, FeatureIndex};
use crate::h5ad::DataFrame;
use crate::selection::Selection;

/// The directory of an archive holding obs.
pub const OBS_DIR: &str = "obs_features";

/// The column name of an unnamed obs index.
pub const UNNAMED_OBS_INDEX: &str = "_index";

/// Which obs columns a conversion keeps (the index always): all, none, or these in this order.
pub type ObsChoice = Selection;

/// The columns of `obs` that `choice` keeps, the index first as a column. A requested column the
/// file does not have is an error naming the file and what it has.
pub fn select(obs: DataFrame, choice: &ObsChoice, file: &Path) -> Result<FeatureFrame> {
    let DataFrame {
        index_name,
        index,
        mut columns,
    } = obs;
    if let Selection::Names(wanted) = choice {
        let mut kept = Vec::with_capacity(wanted.len());
        for w in wanted {
            match columns.iter().position(|(n, _)| n == w) {
                Some(i) => kept.push(columns.swap_remove(i)),
                None if w == &index_name => {}
                None => {
                    let have: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
                    return Err(Error::Input {
                        file: file.to_path_buf(),
                        location: format!("/obs/{w}"),
                        message: format!(
                            "no such obs column (--obs); obs has: {}",
                            if have.is_empty() {
                                "no columns".to_string()
                            } else {
                                have.join(", ")
                            }
                        ),
                    });
                }
            }
        }
        columns = kept;
    }
    Ok(FeatureFrame::with_index_column(
        DataFrame {
            index_name,
            index,
            columns,
        },
        UNNAMED_OBS_INDEX,
    ))
}

/// The obs of an archive being written or concatenated: blocks of cells in row order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObsIndex {
    pub index: FeatureIndex,
}

impl ObsIndex {
    pub fn new(version: &str) -> ObsIndex {
        ObsIndex {
            index: FeatureIndex::new(version),
        }
    }

    /// Appends the obs of `frame.num_vars` cells; merged into the last block when both have the
    /// same columns of the same kinds.
    pub fn push(&mut self, frame: FeatureFrame, label: String) {
        let rows = frame.num_vars;
        if let Some(last) = self.index.blocks.last_mut() {
            let same = last.frame.columns.len() == frame.columns.len()
                && last
                    .frame
                    .columns
                    .iter()
                    .zip(&frame.columns)
                    .all(|((a, ca), (b, cb))| a == b && ca.kind() == cb.kind());
            if same {
                for ((_, into), (_, more)) in last.frame.columns.iter_mut().zip(frame.columns) {
                    into.extend(more).expect("kinds checked above");
                }
                last.frame.num_vars += rows;
                last.rows += rows;
                return;
            }
        }
        self.index.blocks.push(FeatureBlock { rows, label, frame });
    }

    pub fn num_rows(&self) -> u64 {
        self.index.num_rows()
    }

    /// Writes `obs_features/` into the archive directory `archive`.
    pub fn write(&self, archive: &Path) -> Result<()> {
        self.index.write(&archive.join(OBS_DIR))
    }

    /// Reads an archive's `obs_features/` whole, or None when it has none.
    pub fn read(archive: &Path) -> Result<Option<ObsIndex>> {
        let dir = archive.join(OBS_DIR);
        if !dir.is_dir() {
            return Ok(None);
        }
        let index = FeatureIndex::read(&dir)?;
        for (i, b) in index.blocks.iter().enumerate() {
            if b.frame.num_vars != b.rows {
                return Err(Error::archive(
                    &dir,
                    format!(
                        "block {i} covers {} rows but its parquet file holds {}",
                        b.rows, b.frame.num_vars
                    ),
                ));
            }
        }
        Ok(Some(ObsIndex { index }))
    }
}

/// What `Archive::open` checks of an archive's obs without reading its values: the cumulative
/// index, and each parquet file's row count and columns (from its footer). The values are read
/// when asked for, not held by every open archive.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ObsSummary {
    /// Per block: rows, and the columns as (name, arrow type).
    pub blocks: Vec<ObsBlockSummary>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ObsBlockSummary {
    pub rows: u64,
    pub columns: Vec<(String, String)>,
}

impl ObsSummary {
    /// Summarises `archive/obs_features/` (None when absent), checking that it covers
    /// `num_rows` rows.
    pub fn read(archive: &Path, num_rows: u64) -> Result<Option<ObsSummary>> {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let dir = archive.join(OBS_DIR);
        if !dir.is_dir() {
            return Ok(None);
        }
        let bad = |m: String| Error::archive(&dir, m);
        let ends = crate::features::read_cumulative_sum_index(&dir)?;
        let files = crate::features::parquet_files(&dir)?;
        if ends.len() != files.len() {
            return Err(bad(format!(
                "cumulative_sum_index.npy has {} blocks but there are {} parquet files",
                ends.len(),
                files.len()
            )));
        }
        let mut blocks = Vec::with_capacity(files.len());
        let mut start = 0u64;
        for (end, path) in ends.iter().zip(&files) {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            let meta = std::panic::catch_unwind(|| ParquetRecordBatchReaderBuilder::try_new(file))
                .map_err(|_| Error::archive(path, "corrupt parquet footer"))?
                .map_err(|e| Error::archive(path, e.to_string()))?;
            let rows = meta.metadata().file_metadata().num_rows();
            if u64::try_from(rows).ok() != end.checked_sub(start) {
                return Err(Error::archive(
                    path,
                    format!(
                        "holds {rows} rows but cumulative_sum_index.npy gives its block rows {start}..{end}"
                    ),
                ));
            }
            let columns = meta
                .schema()
                .fields()
                .iter()
                .map(|f| (f.name().clone(), f.data_type().to_string()))
                .collect();
            blocks.push(ObsBlockSummary {
                rows: end - start,
                columns,
            });
            start = *end;
        }
        if start != num_rows {
            return Err(bad(format!(
                "obs covers {start} rows but the archive has {num_rows}"
            )));
        }
        Ok(Some(ObsSummary { blocks }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h5ad::Column;

    fn obs(ids: &[&str], kind: &str) -> DataFrame {
        DataFrame {
            index_name: "_index".into(),
            index: ids.iter().map(|s| s.to_string()).collect(),
            columns: vec![
                (
                    "cell_type".into(),
                    Column::Str(ids.iter().map(|_| Some(kind.to_string())).collect()),
                ),
                (
                    "n".into(),
                    Column::Int((0..ids.len()).map(|i| Some(i as i64)).collect()),
                ),
            ],
        }
    }

    #[test]
    fn the_index_is_kept_and_columns_are_chosen() {
        let f = Path::new("x.h5ad");
        let all = select(obs(&["a", "b"], "T"), &Selection::All, f).unwrap();
        let names: Vec<&str> = all.columns.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["_index", "cell_type", "n"]);
        assert_eq!(all.num_vars, 2);
        let some = select(
            obs(&["a", "b"], "T"),
            &Selection::Names(vec!["n".into()]),
            f,
        )
        .unwrap();
        let names: Vec<&str> = some.columns.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["_index", "n"]);
        let err = select(obs(&["a"], "T"), &Selection::Names(vec!["donor".into()]), f)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/obs/donor") && err.contains("cell_type, n"),
            "{err}"
        );
    }

    #[test]
    fn blocks_with_the_same_columns_merge() {
        let f = Path::new("x.h5ad");
        let mut o = ObsIndex::new("0.1.3");
        o.push(
            select(obs(&["a", "b"], "T"), &Selection::All, f).unwrap(),
            "1".into(),
        );
        o.push(
            select(obs(&["c"], "B"), &Selection::All, f).unwrap(),
            "2".into(),
        );
        assert_eq!(o.index.blocks.len(), 1);
        assert_eq!(o.num_rows(), 3);
        assert_eq!(o.index.blocks[0].frame.num_vars, 3);
        let other = select(obs(&["d"], "NK"), &Selection::Names(vec!["n".into()]), f).unwrap();
        o.push(other, "3".into());
        assert_eq!(o.index.blocks.len(), 2);
        assert_eq!(o.index.cumulative_sum_index(), vec![-1, 3, 4]);
    }

    #[test]
    fn obs_round_trips_through_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let f = Path::new("x.h5ad");
        let mut o = ObsIndex::new("0.1.3");
        let mut df = obs(&["a", "b", "c"], "T");
        df.columns.push((
            "maybe".into(),
            Column::Float(vec![Some(1.5), None, Some(-2.0)]),
        ));
        o.push(select(df, &Selection::All, f).unwrap(), "in.h5ad".into());
        o.write(dir.path()).unwrap();
        let back = ObsIndex::read(dir.path()).unwrap().unwrap();
        assert_eq!(back.index.blocks, o.index.blocks);
        assert!(ObsIndex::read(&dir.path().join("nothing"))
            .unwrap()
            .is_none());
    }
}
