//! Synthetic files computed from a memory-mapped archive on demand: a row or a range of rows as
//! a dense `.npy`, a range as a scipy `.npz` (CSR), a feature block as JSON. Sizes are computed
//! exactly without rendering (np.load checks them); dense files are rendered piecewise for the
//! byte range asked, so a read never costs more than the rows it touches. `cells.rs`: the
//! per-cell metadata files (obs rows as JSON and parquet, neighbors as `.npz`, obsm rows).

pub mod cells;

use crate::archive::Archive;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::h5ad::Column;
use crate::npy;

/// Rows [first, end) of one feature block: the unit a synthetic file shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowSpan {
    pub first: u64,
    pub end: u64,
    /// The width (num_vars) of the block holding the rows.
    pub width: u64,
    /// 1-D file (`rows/<i>.npy`) rather than 2-D (`rows/<a>-<b>.npy`).
    pub single: bool,
}

impl RowSpan {
    /// The span for rows [first, end), if they exist and lie in one feature block.
    pub fn new(archive: &Archive, first: u64, end: u64, single: bool) -> Option<RowSpan> {
        if first >= end || end > archive.num_rows {
            return None;
        }
        let (block, start) = archive.features.block_of_row(first)?;
        let b = &archive.features.blocks[block];
        if end > start + b.rows {
            return None;
        }
        // The width comes from the feature index: a file whose size would not fit in u64 does
        // not exist (found by fuzzing: a corrupt parquet row count overflowed dense_size).
        (end - first)
            .checked_mul(b.frame.num_vars)?
            .checked_mul(archive.data_dtype.size() as u64)?
            .checked_add(1 << 16)?;
        Some(RowSpan {
            first,
            end,
            width: b.frame.num_vars,
            single,
        })
    }

    fn rows(&self) -> u64 {
        self.end - self.first
    }

    fn header(&self, archive: &Archive) -> Vec<u8> {
        let shape: Vec<u64> = if self.single {
            vec![self.width]
        } else {
            vec![self.rows(), self.width]
        };
        npy::header(archive.data_dtype.descr(), &shape)
    }

    /// Exact size of the dense .npy file.
    pub fn dense_size(&self, archive: &Archive) -> u64 {
        self.header(archive).len() as u64
            + self.rows() * self.width * archive.data_dtype.size() as u64
    }

    /// Bytes [offset, offset + len) of the dense .npy file.
    pub fn dense_read(&self, archive: &Archive, offset: u64, len: usize) -> Result<Vec<u8>> {
        let header = self.header(archive);
        let total = self.dense_size(archive);
        let end = (offset + len as u64).min(total);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        let h = header.len() as u64;
        if offset < h {
            out.extend_from_slice(&header[offset as usize..h.min(end) as usize]);
        }
        let item = archive.data_dtype.size() as u64;
        let row_bytes = self.width * item;
        if end <= h || row_bytes == 0 {
            return Ok(out);
        }
        // Body bytes [b0, b1) relative to the first row.
        let b0 = offset.max(h) - h;
        let b1 = end - h;
        let (r0, r1) = (b0 / row_bytes, (b1 - 1) / row_bytes + 1);
        // One read of row_ptr, columns and values for all the rows touched.
        let ptrs = archive.row_ptrs(self.first + r0, self.first + r1 + 1)?;
        let (a, b) = (ptrs[0], ptrs[ptrs.len() - 1]);
        let cols = archive.cols(a, b)?;
        let values = archive.data_bytes(a, b)?;
        let item = item as usize;
        for r in r0..r1 {
            let k = (r - r0) as usize;
            let (ra, rb) = ((ptrs[k] - a) as usize, (ptrs[k + 1] - a) as usize);
            // Only the asked part [lo, hi) of the row is materialised: a row may be far wider
            // than the read (a corrupt or hostile feature index can claim 2^40 genes).
            let row_start = r * row_bytes;
            let lo = b0.max(row_start) - row_start;
            let hi = b1.min(row_start + row_bytes) - row_start;
            let base = out.len();
            out.resize(base + (hi - lo) as usize, 0);
            for (e, col) in (ra..rb).zip(&cols[ra..rb]) {
                // A column past the block width would be a corrupt archive: skip, not panic.
                let Some(c0) = col.checked_mul(item as u64) else {
                    continue;
                };
                let c1 = c0.saturating_add(item as u64);
                let (from, to) = (c0.max(lo), c1.min(hi));
                if from >= to {
                    continue;
                }
                let v = e * item + (from - c0) as usize;
                out[base + (from - lo) as usize..base + (to - lo) as usize]
                    .copy_from_slice(&values[v..v + (to - from) as usize]);
            }
        }
        Ok(out)
    }
}

const ZIP_LOCAL: usize = 30;
const ZIP_CENTRAL: usize = 46;
const ZIP_END: usize = 22;

/// A zip of stored (uncompressed) members, as np.savez writes, built in one buffer: each
/// member's bytes are written in place (values and columns read straight into it) and its CRC
/// patched into the local header afterwards. Also used for the shuffled batches' `.npz`.
pub(crate) struct ZipBuilder {
    out: Vec<u8>,
    central: Vec<u8>,
    members: u16,
}

impl ZipBuilder {
    pub(crate) fn with_capacity(size: usize) -> ZipBuilder {
        ZipBuilder::in_buffer(Vec::with_capacity(size))
    }

    /// A builder writing into `out` (emptied first), for callers that reuse buffers.
    pub(crate) fn in_buffer(mut out: Vec<u8>) -> ZipBuilder {
        out.clear();
        ZipBuilder {
            out,
            central: Vec::new(),
            members: 0,
        }
    }

    /// Appends member `name` whose bytes `fill` appends to the buffer it is given.
    pub(crate) fn member(
        &mut self,
        name: &str,
        fill: impl FnOnce(&mut Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        let offset = self.out.len();
        // Local file header: version 2.0, no flags, stored, DOS time/date 1980-01-01; CRC and
        // sizes patched below.
        self.out.extend_from_slice(&0x04034b50u32.to_le_bytes());
        self.out
            .extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0x21, 0]);
        self.out.extend_from_slice(&[0; 12]);
        self.out
            .extend_from_slice(&(name.len() as u16).to_le_bytes());
        self.out.extend_from_slice(&0u16.to_le_bytes());
        self.out.extend_from_slice(name.as_bytes());
        let body = self.out.len();
        fill(&mut self.out)?;
        let crc = crc32fast::hash(&self.out[body..]);
        let size = (self.out.len() - body) as u32;
        let mut sizes = [0u8; 12];
        sizes[..4].copy_from_slice(&crc.to_le_bytes());
        sizes[4..8].copy_from_slice(&size.to_le_bytes());
        sizes[8..].copy_from_slice(&size.to_le_bytes());
        self.out[offset + 14..offset + 26].copy_from_slice(&sizes);
        let c = &mut self.central;
        c.extend_from_slice(&0x02014b50u32.to_le_bytes());
        c.extend_from_slice(&[20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0x21, 0]);
        c.extend_from_slice(&sizes);
        c.extend_from_slice(&(name.len() as u16).to_le_bytes());
        c.extend_from_slice(&[0; 8]); // extra len, comment len, disk, internal attrs
        c.extend_from_slice(&(0o100444u32 << 16).to_le_bytes()); // external attrs: -r--r--r--
        c.extend_from_slice(&(offset as u32).to_le_bytes());
        c.extend_from_slice(name.as_bytes());
        self.members += 1;
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        let cd_offset = self.out.len() as u32;
        let cd_size = self.central.len() as u32;
        self.out.extend_from_slice(&self.central);
        self.out.extend_from_slice(&0x06054b50u32.to_le_bytes());
        self.out.extend_from_slice(&[0, 0, 0, 0]);
        self.out.extend_from_slice(&self.members.to_le_bytes());
        self.out.extend_from_slice(&self.members.to_le_bytes());
        self.out.extend_from_slice(&cd_size.to_le_bytes());
        self.out.extend_from_slice(&cd_offset.to_le_bytes());
        self.out.extend_from_slice(&0u16.to_le_bytes());
        self.out
    }
}

/// Appends `len` bytes to `out` and lets `read` fill them.
pub(crate) fn append_read(
    out: &mut Vec<u8>,
    len: u64,
    read: impl FnOnce(&mut [u8]) -> Result<()>,
) -> Result<()> {
    let start = out.len();
    out.resize(start + len as usize, 0);
    read(&mut out[start..])
}

/// Whether column indices need int64 (scipy's choice for widths past int32).
pub(crate) fn wide_indices(width: u64) -> bool {
    width > i32::MAX as u64
}

/// Size of a `.npy` member body: its header and `bytes` of values.
pub(crate) fn npy_size(descr: &str, shape: &[u64], bytes: u64) -> u64 {
    npy::header(descr, shape).len() as u64 + bytes
}

/// The members of a scipy CSR `.npz` of `rows` rows, `width` columns and `nnz` values, with
/// the size of each member's body, in the order scipy.sparse.save_npz writes them.
pub(crate) fn csr_members(
    nnz: u64,
    rows: u64,
    width: u64,
    data: crate::dtype::Dtype,
) -> [(&'static str, u64); 5] {
    let wide = wide_indices(width);
    let (index_descr, index_size) = if wide { ("<i8", 8) } else { ("<i4", 4) };
    [
        (
            "indices.npy",
            npy_size(index_descr, &[nnz], nnz * index_size),
        ),
        ("indptr.npy", npy_size("<i8", &[rows + 1], (rows + 1) * 8)),
        ("format.npy", npy_size("|S3", &[], 3)),
        ("shape.npy", npy_size("<i8", &[2], 16)),
        (
            "data.npy",
            npy_size(data.descr(), &[nnz], nnz * data.size() as u64),
        ),
    ]
}

/// The `indptr.npy`, `format.npy` and `shape.npy` members of a CSR `.npz` (what
/// `scipy.sparse.load_npz` needs besides `indices` and `data`): `rows + 1` offsets from
/// `indptr`, format `csr`, shape (rows, width).
pub(crate) fn csr_shape_members(
    zip: &mut ZipBuilder,
    rows: u64,
    width: u64,
    indptr: impl Iterator<Item = i64>,
) -> Result<()> {
    zip.member("indptr.npy", |out| {
        out.extend_from_slice(&npy::header("<i8", &[rows + 1]));
        out.extend(indptr.flat_map(i64::to_le_bytes));
        Ok(())
    })?;
    zip.member("format.npy", |out| {
        out.extend_from_slice(&npy::header("|S3", &[]));
        out.extend_from_slice(b"csr");
        Ok(())
    })?;
    zip.member("shape.npy", |out| {
        out.extend_from_slice(&npy::header("<i8", &[2]));
        out.extend_from_slice(&(rows as i64).to_le_bytes());
        out.extend_from_slice(&(width as i64).to_le_bytes());
        Ok(())
    })
}

/// Exact size of a stored zip of these members (name, body size), as `ZipBuilder` writes it.
pub(crate) fn zip_size(members: &[(&str, u64)]) -> u64 {
    members
        .iter()
        .map(|(n, len)| (ZIP_LOCAL + ZIP_CENTRAL + 2 * n.len()) as u64 + len)
        .sum::<u64>()
        + ZIP_END as u64
}

/// Column indices [a, a + nnz) as little-endian int32 (every column is below 2^31 here): uint32
/// columns are already those bytes; narrower ones are read in one piece and widened.
fn append_int32_columns(out: &mut Vec<u8>, archive: &Archive, a: u64, nnz: u64) -> Result<()> {
    let width = archive.col_dtype;
    if width == Dtype::U32 {
        return append_read(out, nnz * 4, |buf| archive.read_cols_into(a, buf));
    }
    let mut raw = vec![0u8; (nnz * width.size() as u64) as usize];
    archive.read_cols_into(a, &mut raw)?;
    match width {
        Dtype::U8 => out.extend(raw.iter().flat_map(|&c| (c as i32).to_le_bytes())),
        Dtype::U16 => out.extend(
            raw.chunks_exact(2)
                .flat_map(|c| (u16::from_le_bytes([c[0], c[1]]) as i32).to_le_bytes()),
        ),
        // uint64 columns of a block narrower than 2^31 columns: each fits int32.
        _ => out.extend(raw.chunks_exact(8).flat_map(|c| {
            (u64::from_le_bytes(c.try_into().expect("8 bytes")) as i32).to_le_bytes()
        })),
    }
    Ok(())
}

/// Exact size of `csr/<a>-<b>.npz`, computed from the row pointers only.
pub fn npz_size(archive: &Archive, span: &RowSpan) -> Result<u64> {
    let (a, _) = archive.row_range(span.first)?;
    let (_, b) = archive.row_range(span.end - 1)?;
    Ok(zip_size(&csr_members(
        b - a,
        span.rows(),
        span.width,
        archive.data_dtype,
    )))
}

/// Largest .npz we render (zip without the zip64 extension).
pub const MAX_NPZ_BYTES: u64 = u32::MAX as u64;

/// Renders `csr/<a>-<b>.npz` completely, in the layout scipy.sparse.save_npz writes: a zip of
/// stored members; column indices int32 (int64 past 2^31 columns), indptr int64.
pub fn npz(archive: &Archive, span: &RowSpan) -> Result<Vec<u8>> {
    let size = npz_size(archive, span)?;
    if size > MAX_NPZ_BYTES {
        return Err(Error::Usage(format!(
            "rows {}-{} would make an .npz over 4 GiB; ask for a smaller range",
            span.first, span.end
        )));
    }
    let ptrs = archive.row_ptrs(span.first, span.end + 1)?;
    let (a, b) = (ptrs[0], ptrs[ptrs.len() - 1]);
    let nnz = b - a;
    let wide = wide_indices(span.width);
    let mut zip = ZipBuilder::with_capacity(size as usize);
    zip.member("indices.npy", |out| {
        out.extend_from_slice(&npy::header(if wide { "<i8" } else { "<i4" }, &[nnz]));
        if !wide {
            return append_int32_columns(out, archive, a, nnz);
        }
        for c in archive.cols(a, b)? {
            out.extend_from_slice(&(c as i64).to_le_bytes());
        }
        Ok(())
    })?;
    let indptr = ptrs.iter().map(|p| (p - a) as i64);
    csr_shape_members(&mut zip, span.rows(), span.width, indptr)?;
    let dtype = archive.data_dtype;
    zip.member("data.npy", |out| {
        out.extend_from_slice(&npy::header(dtype.descr(), &[nnz]));
        append_read(out, nnz * dtype.size() as u64, |buf| {
            archive.read_data_into(a, buf)
        })
    })?;
    let out = zip.finish();
    debug_assert_eq!(out.len() as u64, size);
    Ok(out)
}

fn column_json(col: &Column) -> serde_json::Value {
    (0..col.len()).map(|i| cell_json(col, i)).collect()
}

/// Value `i` of `col` as JSON: missing values and NaN as null.
pub(crate) fn cell_json(col: &Column, i: usize) -> serde_json::Value {
    use serde_json::Value;
    let float = |f: f64| {
        serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    };
    match col {
        Column::Str(v) => v[i].clone().map(Value::String).unwrap_or(Value::Null),
        Column::Int(v) => v[i].map(Value::from).unwrap_or(Value::Null),
        Column::UInt(v) => v[i].map(Value::from).unwrap_or(Value::Null),
        Column::Float(v) => v[i].map(float).unwrap_or(Value::Null),
        Column::Bool(v) => v[i].map(Value::Bool).unwrap_or(Value::Null),
    }
}

/// `features/<k>.json`: the block's rows, width, label and columns (NaN as null).
pub fn feature_json(archive: &Archive, block: usize) -> Option<Vec<u8>> {
    let b = archive.features.blocks.get(block)?;
    let first_row: u64 = archive.features.blocks[..block]
        .iter()
        .map(|b| b.rows)
        .sum();
    let mut columns = serde_json::Map::new();
    for (name, col) in &b.frame.columns {
        columns.insert(name.clone(), column_json(col));
    }
    let v = serde_json::json!({
        "first_row": first_row,
        "num_rows": b.rows,
        "num_vars": b.frame.num_vars,
        "label": b.label,
        "columns": columns,
    });
    let mut bytes = serde_json::to_vec(&v).expect("serialisable");
    bytes.push(b'\n');
    Some(bytes)
}
