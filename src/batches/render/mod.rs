//! A shuffled batch as a file: its exact size from `row_ptr` alone, and its bytes as a scipy
//! CSR `.npz` (here: the zip writer and member sizes of `crate::render`, plus `row_ids` and
//! `feature_block`) or as `.safetensors` (`safetensors.rs`: the crate's header, the tensors
//! laid out in place).
//!
//! A batch's rows are known before it is read, so their slices go to `gather::read_slices`
//! all at once (those not cached are read concurrently), and each run of consecutive rows (a
//! block, with `block=R`) is read with one read of its row pointers (none when the archive
//! holds `row_ptr`), one of its columns and one of its values, straight into the file's buffer.

mod safetensors;

use std::cell::RefCell;

use super::buffers::Recycler;
use super::gather::{read_slices, ReadPool, Slice};
use super::order::{EpochOrder, Run};
use super::plan::BatchFormat;
use crate::archive::{decode_uints, Archive, CsrArray};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::npy;
use crate::render::{
    append_read, csr_members, csr_shape_members, npy_size, wide_indices, zip_size, ZipBuilder,
};

/// Largest batch file served: beyond it the batch does not exist (ask for a smaller size).
pub const MAX_BATCH_BYTES: u64 = 1 << 30;

/// A run of consecutive rows with their row pointers (len + 1 entries, absolute).
struct RunPtrs {
    run: Run,
    ptrs: Vec<u64>,
}

impl RunPtrs {
    fn elements(&self) -> (u64, u64) {
        (self.ptrs[0], self.ptrs[self.ptrs.len() - 1])
    }

    fn nnz(&self) -> u64 {
        let (a, b) = self.elements();
        b - a
    }
}

/// What a batch holds, read from `row_ptr` and the feature index only: enough to size its
/// files exactly, and the plan to render them.
pub struct BatchLayout {
    runs: Vec<RunPtrs>,
    /// Global row numbers, in batch order.
    pub row_ids: Vec<u64>,
    /// The feature block of each row.
    pub feature_blocks: Vec<i32>,
    /// The widest width among the rows' feature blocks.
    pub width: u64,
    pub nnz: u64,
}

impl BatchLayout {
    /// The layout of this rank's batch `k` of `order` over `archive`, or `None` when there is
    /// no such batch.
    pub fn of_batch(
        archive: &Archive,
        order: &EpochOrder,
        k: u64,
        pool: &ReadPool,
    ) -> Result<Option<BatchLayout>> {
        match order.batch_runs(k) {
            Some(runs) => BatchLayout::read(archive, &runs, pool).map(Some),
            None => Ok(None),
        }
    }

    /// The layout of the rows `runs` cover, in that order; row pointers read concurrently.
    pub fn read(archive: &Archive, runs: &[Run], pool: &ReadPool) -> Result<BatchLayout> {
        if let Some(bad) = runs.iter().find(|r| {
            r.len == 0
                || r.first
                    .checked_add(r.len)
                    .is_none_or(|e| e > archive.num_rows)
        }) {
            return Err(Error::archive(
                &archive.path,
                format!(
                    "batch rows {}..{} beyond the archive's {} rows",
                    bad.first,
                    bad.first.saturating_add(bad.len),
                    archive.num_rows
                ),
            ));
        }
        let runs = run_pointers(archive, runs, pool)?;
        let row_ids: Vec<u64> = runs
            .iter()
            .flat_map(|r| r.run.first..r.run.first + r.run.len)
            .collect();
        let mut feature_blocks = Vec::with_capacity(row_ids.len());
        let mut width = 0;
        let blocks = &archive.features.blocks;
        for r in &runs {
            // One search per run, then the run's rows walk forward through the blocks.
            let (mut block, mut start) =
                archive.features.block_of_row(r.run.first).ok_or_else(|| {
                    Error::archive(
                        &archive.path,
                        format!("row {} is in no feature block", r.run.first),
                    )
                })?;
            for row in r.run.first..r.run.first + r.run.len {
                while row >= start + blocks[block].rows {
                    start += blocks[block].rows;
                    block += 1;
                    if block == blocks.len() {
                        return Err(Error::archive(
                            &archive.path,
                            format!("row {row} is in no feature block"),
                        ));
                    }
                }
                feature_blocks.push(block as i32);
                width = width.max(blocks[block].frame.num_vars);
            }
        }
        let nnz = runs.iter().map(RunPtrs::nnz).sum();
        Ok(BatchLayout {
            runs,
            row_ids,
            feature_blocks,
            width,
            nnz,
        })
    }

    pub fn rows(&self) -> u64 {
        self.row_ids.len() as u64
    }

    fn index_size(&self) -> u64 {
        if wide_indices(self.width) {
            8
        } else {
            4
        }
    }

    /// The exact size of the batch file in `format`; an error when it would exceed
    /// `MAX_BATCH_BYTES`.
    pub fn file_size(&self, archive: &Archive, format: BatchFormat) -> Result<u64> {
        let size = match format {
            BatchFormat::Npz => zip_size(&self.npz_members(archive)),
            BatchFormat::Safetensors => self.safetensors_size(archive)?,
        };
        if size > MAX_BATCH_BYTES {
            return Err(Error::Usage(format!(
                "a batch of {} rows with {} values would make a {size}-byte file, over the {MAX_BATCH_BYTES}-byte limit; ask for a smaller size",
                self.rows(),
                self.nnz
            )));
        }
        Ok(size)
    }

    fn npz_members(&self, archive: &Archive) -> Vec<(&'static str, u64)> {
        let rows = self.rows();
        let mut members = csr_members(self.nnz, rows, self.width, archive.data_dtype).to_vec();
        members.push(("row_ids.npy", npy_size("<i8", &[rows], rows * 8)));
        members.push(("feature_block.npy", npy_size("<i4", &[rows], rows * 4)));
        members
    }

    /// Renders the batch file in `format`, in buffers from `buffers`.
    pub fn render(
        &self,
        archive: &Archive,
        format: BatchFormat,
        pool: &ReadPool,
        buffers: &Recycler,
    ) -> Result<Vec<u8>> {
        let size = self.file_size(archive, format)?;
        let out = match format {
            BatchFormat::Npz => self.render_npz(archive, size, pool, buffers)?,
            BatchFormat::Safetensors => self.render_safetensors(archive, pool, buffers)?,
        };
        debug_assert_eq!(out.len() as u64, size);
        Ok(out)
    }

    /// Splits `buf` into one slice per run, `item` bytes per element.
    fn per_run<'a>(&self, mut buf: &'a mut [u8], item: u64) -> Vec<&'a mut [u8]> {
        let mut parts = Vec::with_capacity(self.runs.len());
        for r in &self.runs {
            let (head, rest) = buf.split_at_mut((r.nnz() * item) as usize);
            parts.push(head);
            buf = rest;
        }
        parts
    }

    /// The values of every run, in batch order, into `buf` (nnz × item size bytes).
    fn read_values(&self, archive: &Archive, buf: &mut [u8], pool: &ReadPool) -> Result<()> {
        let item = archive.data_dtype.size() as u64;
        let slices = self.slices(CsrArray::Data, item, buf);
        read_slices(archive, pool, slices)
    }

    /// One slice of `array` per run, `item` bytes per element, into consecutive parts of `buf`.
    fn slices<'a>(&self, array: CsrArray, item: u64, buf: &'a mut [u8]) -> Vec<Slice<'a>> {
        self.runs
            .iter()
            .zip(self.per_run(buf, item))
            .map(|(r, part)| Slice {
                array,
                offset: r.elements().0 * item,
                buf: part,
            })
            .collect()
    }

    /// The column indices of every run as int32 (int64 when wide) little-endian, into `buf`.
    fn read_indices(
        &self,
        archive: &Archive,
        buf: &mut [u8],
        pool: &ReadPool,
        buffers: &Recycler,
    ) -> Result<()> {
        let wide = wide_indices(self.width);
        let stored = archive.col_dtype;
        let item = stored.size() as u64;
        if !wide && stored == Dtype::U32 {
            // Columns below 2^31 stored as little-endian u32 are already the int32 bytes.
            let slices = self.slices(CsrArray::Cols, item, buf);
            return read_slices(archive, pool, slices);
        }
        let len = (self.nnz * item) as usize;
        with_column_scratch(len, buffers, |raw| {
            let slices = self.slices(CsrArray::Cols, item, raw);
            let read = read_slices(archive, pool, slices);
            if read.is_ok() {
                widen_columns(raw, stored, wide, buf);
            }
            read
        })
    }

    /// indptr: each row's end, relative to the batch, from the runs' row pointers.
    fn indptr(&self) -> Vec<i64> {
        let mut out = Vec::with_capacity(self.row_ids.len() + 1);
        out.push(0i64);
        let mut base = 0i64;
        for r in &self.runs {
            let first = r.ptrs[0];
            for p in &r.ptrs[1..] {
                out.push(base + (p - first) as i64);
            }
            base += r.nnz() as i64;
        }
        out
    }

    /// `indptr` as little-endian int64 bytes.
    fn indptr_bytes(&self) -> impl Iterator<Item = u8> {
        self.indptr().into_iter().flat_map(i64::to_le_bytes)
    }

    /// `row_ids` as little-endian int64 bytes.
    fn row_id_bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.row_ids.iter().flat_map(|r| (*r as i64).to_le_bytes())
    }

    /// `feature_block` as little-endian int32 bytes.
    fn feature_block_bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.feature_blocks.iter().flat_map(|b| b.to_le_bytes())
    }

    fn render_npz(
        &self,
        archive: &Archive,
        size: u64,
        pool: &ReadPool,
        buffers: &Recycler,
    ) -> Result<Vec<u8>> {
        let (nnz, rows) = (self.nnz, self.rows());
        let index_descr = if wide_indices(self.width) {
            "<i8"
        } else {
            "<i4"
        };
        let dtype = archive.data_dtype;
        let mut zip = ZipBuilder::in_buffer(buffers.take(size as usize));
        zip.member("indices.npy", |out| {
            out.extend_from_slice(&npy::header(index_descr, &[nnz]));
            append_read(out, nnz * self.index_size(), |buf| {
                self.read_indices(archive, buf, pool, buffers)
            })
        })?;
        csr_shape_members(&mut zip, rows, self.width, self.indptr().into_iter())?;
        zip.member("data.npy", |out| {
            out.extend_from_slice(&npy::header(dtype.descr(), &[nnz]));
            append_read(out, nnz * dtype.size() as u64, |buf| {
                self.read_values(archive, buf, pool)
            })
        })?;
        zip.member("row_ids.npy", |out| {
            out.extend_from_slice(&npy::header("<i8", &[rows]));
            out.extend(self.row_id_bytes());
            Ok(())
        })?;
        zip.member("feature_block.npy", |out| {
            out.extend_from_slice(&npy::header("<i4", &[rows]));
            out.extend(self.feature_block_bytes());
            Ok(())
        })?;
        Ok(zip.finish())
    }
}

/// The row pointers of every run: sliced from `row_ptr` when the archive holds it in memory,
/// else read (concurrently where uncached).
fn run_pointers(archive: &Archive, runs: &[Run], pool: &ReadPool) -> Result<Vec<RunPtrs>> {
    let item = archive.row_ptr_dtype.size();
    if let Some(held) = archive.held_row_ptr() {
        return Ok(runs
            .iter()
            .map(|&run| {
                let (a, b) = (
                    run.first as usize * item,
                    (run.first + run.len + 1) as usize * item,
                );
                let mut ptrs = Vec::with_capacity(run.len as usize + 1);
                decode_uints(&held[a..b], archive.row_ptr_dtype, &mut ptrs);
                RunPtrs { run, ptrs }
            })
            .collect());
    }
    let mut raw = vec![0u8; runs.iter().map(|r| (r.len as usize + 1) * item).sum()];
    let mut rest = &mut raw[..];
    let mut slices = Vec::with_capacity(runs.len());
    for r in runs {
        let (head, tail) = rest.split_at_mut((r.len as usize + 1) * item);
        slices.push(Slice {
            array: CsrArray::RowPtr,
            offset: r.first * item as u64,
            buf: head,
        });
        rest = tail;
    }
    read_slices(archive, pool, slices)?;
    let mut at = 0;
    Ok(runs
        .iter()
        .map(|&run| {
            let len = (run.len as usize + 1) * item;
            let mut ptrs = Vec::with_capacity(run.len as usize + 1);
            decode_uints(&raw[at..at + len], archive.row_ptr_dtype, &mut ptrs);
            at += len;
            RunPtrs { run, ptrs }
        })
        .collect())
}

/// Stored column indices of one batch at most this large are read into a buffer its thread
/// keeps (a `block=1` batch of 256 rows of ~480 values: 245 KB of uint16); larger ones into a
/// buffer from the recycler.
const KEPT_COLUMN_SCRATCH: usize = 4 << 20;

thread_local! {
    /// This thread's buffer for stored column indices before they are widened: kept, so that a
    /// batch neither zeroes nor faults in fresh pages for them (a new buffer per batch, zeroed
    /// and then overwritten by the reads, was a tenth of the daemon's CPU).
    static COLUMN_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` bytes of scratch (their contents left from earlier batches).
fn with_column_scratch<T>(len: usize, buffers: &Recycler, f: impl FnOnce(&mut [u8]) -> T) -> T {
    if len > KEPT_COLUMN_SCRATCH {
        let mut raw = buffers.take(len);
        raw.resize(len, 0);
        let r = f(&mut raw);
        buffers.give(raw);
        return r;
    }
    COLUMN_SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut raw) => {
            if raw.len() < len {
                raw.resize(len, 0);
            }
            f(&mut raw[..len])
        }
        // Not reentrant, but never wrong: a fresh buffer if the thread's is in use.
        Err(_) => f(&mut vec![0u8; len]),
    })
}

/// Column indices stored as `stored` (unsigned, little-endian) written as little-endian int32,
/// or int64 when `wide`, into `out` (4 or 8 bytes per index).
fn widen_columns(raw: &[u8], stored: Dtype, wide: bool, out: &mut [u8]) {
    fn write<const N: usize>(cols: impl Iterator<Item = u64>, out: &mut [u8]) {
        for (c, o) in cols.zip(out.chunks_exact_mut(N)) {
            o.copy_from_slice(&c.to_le_bytes()[..N]);
        }
    }
    fn each(raw: &[u8], stored: Dtype, wide: bool, out: &mut [u8]) {
        match stored.size() {
            1 => pick(raw.iter().map(|&b| b as u64), wide, out),
            2 => pick(
                raw.chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]) as u64),
                wide,
                out,
            ),
            4 => pick(
                raw.chunks_exact(4)
                    .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as u64),
                wide,
                out,
            ),
            _ => pick(
                raw.chunks_exact(8)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))),
                wide,
                out,
            ),
        }
    }
    fn pick(cols: impl Iterator<Item = u64>, wide: bool, out: &mut [u8]) {
        if wide {
            write::<8>(cols, out)
        } else {
            write::<4>(cols, out)
        }
    }
    each(raw, stored, wide, out)
}
