//! CSC matrices streamed as CSR row blocks with bounded memory: pass 1 counts the values of
//! each row; pass 2 scatters (row, column, value) triples into bucket files, each bucket a range
//! of rows holding at most one block of values; each bucket is then ordered by row in memory
//! and emitted. Column order within a row comes out ascending because columns are visited in
//! order.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::{Block, MatrixReader, BLOCK_ELEMENTS};
use crate::dtype::Element;
use crate::error::{IoContext, Result};

/// Receives (first element, end element, column of each element) for a run of CSC elements.
type CscRunVisitor<'v> = dyn FnMut(u64, u64, &[u32]) -> Result<()> + 'v;

/// Buffer size of a bucket file's reader and writer.
const BUCKET_BUFFER: usize = 256 << 10;

/// Consecutive row ranges of at most one block of values each (a bigger row alone).
struct Buckets {
    /// The bucket of each row.
    of_row: Vec<u32>,
    /// The first row of each bucket.
    starts: Vec<u64>,
}

impl Buckets {
    fn plan(counts: &[u64]) -> Buckets {
        let budget = BLOCK_ELEMENTS as u64;
        let mut of_row = Vec::with_capacity(counts.len());
        let mut starts = vec![0u64];
        let mut filled = 0u64;
        for (r, &c) in counts.iter().enumerate() {
            if filled > 0 && filled + c > budget {
                starts.push(r as u64);
                filled = 0;
            }
            filled += c;
            of_row.push((starts.len() - 1) as u32);
        }
        Buckets { of_row, starts }
    }

    fn len(&self) -> usize {
        self.starts.len()
    }
}

fn bucket_path(scratch: &Path, k: usize) -> PathBuf {
    scratch.join(format!("csc-bucket-{k}"))
}

impl MatrixReader<'_> {
    /// The whole CSC matrix as CSR blocks, through bucket files in `scratch`.
    pub(super) fn stream_csc<S: Element>(
        &self,
        scratch: &Path,
        sink: &mut dyn FnMut(Block<S>) -> Result<()>,
    ) -> Result<()> {
        let counts = self.row_counts()?;
        let buckets = Buckets::plan(&counts);
        self.scatter::<S>(scratch, &buckets)?;
        let mut element = 0u64;
        for k in 0..buckets.len() {
            let r0 = buckets.starts[k];
            let r1 = buckets.starts.get(k + 1).copied().unwrap_or(self.n_rows);
            let block = gather::<S>(
                &bucket_path(scratch, k),
                &counts[r0 as usize..r1 as usize],
                r0,
                element,
            )?;
            element += block.cols.len() as u64;
            sink(block)?;
        }
        Ok(())
    }

    /// Pass 1: the number of values of each row (checks indptr and row indices on the way).
    fn row_counts(&self) -> Result<Vec<u64>> {
        let mut counts: Vec<u64> = Vec::new();
        counts
            .try_reserve_exact(self.n_rows as usize)
            .map_err(|_| {
                self.err(
                    "",
                    format!(
                        "cannot hold row counts for {} rows (absurd shape?)",
                        self.n_rows
                    ),
                )
            })?;
        counts.resize(self.n_rows as usize, 0);
        self.for_each_csc_run(false, &mut |a, b, _| {
            let rows =
                self.read_minor::<u64>(a, b, self.n_rows, &|pos| format!("element {pos}"))?;
            for r in rows {
                counts[r as usize] += 1;
            }
            Ok(())
        })?;
        Ok(counts)
    }

    /// Pass 2: every (row, column, value) into the file of its row's bucket.
    fn scatter<S: Element>(&self, scratch: &Path, buckets: &Buckets) -> Result<()> {
        let mut writers = (0..buckets.len())
            .map(|k| {
                let p = bucket_path(scratch, k);
                File::create(&p)
                    .map(|f| BufWriter::with_capacity(BUCKET_BUFFER, f))
                    .at(&p)
            })
            .collect::<Result<Vec<_>>>()?;
        self.for_each_csc_run(true, &mut |a, b, columns| {
            let rows =
                self.read_minor::<u64>(a, b, self.n_rows, &|pos| format!("element {pos}"))?;
            let vals = self.read_values::<S>(a, b)?;
            for ((r, v), &col) in rows.into_iter().zip(vals).zip(columns) {
                let k = buckets.of_row[r as usize] as usize;
                let w = &mut writers[k];
                let rec = (|| {
                    w.write_all(&r.to_le_bytes())?;
                    w.write_all(&col.to_le_bytes())?;
                    w.write_all(bytemuck::bytes_of(&v))
                })();
                rec.at(bucket_path(scratch, k))?;
            }
            Ok(())
        })?;
        for (k, w) in writers.into_iter().enumerate() {
            w.into_inner()
                .map_err(|e| e.into_error())
                .at(bucket_path(scratch, k))?;
        }
        Ok(())
    }

    /// Calls `visit(a, b, columns)` for runs of CSC elements [a, b) of at most one block,
    /// with the column of each element when `with_columns` (pass 1 needs none).
    fn for_each_csc_run(&self, with_columns: bool, visit: &mut CscRunVisitor<'_>) -> Result<()> {
        let budget = BLOCK_ELEMENTS as u64;
        let mut columns = Vec::new();
        self.walk_indptr(self.n_cols, &mut |first_col, ip| {
            let (lo, hi) = (ip[0], ip[ip.len() - 1]);
            let mut a = lo;
            let mut k = 0; // column within the window holding element a
            while a < hi {
                let b = (a + budget).min(hi);
                columns.clear();
                if with_columns {
                    for e in a..b {
                        while ip[k + 1] <= e {
                            k += 1;
                        }
                        columns.push((first_col + k as u64) as u32);
                    }
                }
                visit(a, b, &columns)?;
                a = b;
            }
            Ok(())
        })
    }
}

/// Orders the bucket file `p` (rows from `r0`, `counts` values each) by row into one block
/// starting at `element`, and removes the file.
fn gather<S: Element>(p: &Path, counts: &[u64], r0: u64, element: u64) -> Result<Block<S>> {
    let total: u64 = counts.iter().sum();
    let mut offsets: Vec<u64> = Vec::with_capacity(counts.len());
    let mut acc = 0;
    for &c in counts {
        offsets.push(acc);
        acc += c;
    }
    let mut cols = vec![0u32; total as usize];
    let mut vals = vec![S::from_f64(0.0); total as usize];
    let mut rd = BufReader::with_capacity(BUCKET_BUFFER, File::open(p).at(p)?);
    let mut rec = vec![0u8; 8 + 4 + std::mem::size_of::<S>()];
    for _ in 0..total {
        rd.read_exact(&mut rec).at(p)?;
        let r = u64::from_le_bytes(rec[..8].try_into().expect("8 bytes"));
        let c = u32::from_le_bytes(rec[8..12].try_into().expect("4 bytes"));
        let v: S = bytemuck::pod_read_unaligned(&rec[12..]);
        let slot = &mut offsets[(r - r0) as usize];
        cols[*slot as usize] = c;
        vals[*slot as usize] = v;
        *slot += 1;
    }
    drop(rd);
    std::fs::remove_file(p).at(p)?;
    // After the scatter, offsets[i] is where row i ends (relative to the bucket).
    let row_ends = offsets.iter().map(|&o| element + o).collect();
    Ok(Block {
        first_row: r0,
        first_element: element,
        row_ends,
        cols,
        vals,
    })
}
