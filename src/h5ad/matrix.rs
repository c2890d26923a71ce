//! Streaming a count matrix out of an h5ad file as CSR row blocks of bounded size, whatever
//! its storage: CSR (read by hyperslabs), dense (row slabs, zeros dropped) or CSC (an external
//! transpose through temporary bucket files). Every CSR/CSC invariant is checked on the way.

use std::path::Path;

mod csc;

use hdf5::types::{IntSize, TypeDescriptor};

use super::attrs::{int_list_attr, string_attr};
use super::H5ad;
use crate::dtype::{Dtype, Element};
use crate::error::{Error, Result};

/// Elements per block: bounds the memory of a conversion (a block of f64 values and u32
/// columns is 24 MB) while keeping HDF5 reads large.
pub const BLOCK_ELEMENTS: usize = 2 << 20;

/// Rows of indptr read at a time.
const INDPTR_ROWS: u64 = 1 << 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Csr,
    Csc,
    Dense,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Csr => "csr_matrix",
            Layout::Csc => "csc_matrix",
            Layout::Dense => "dense array",
        }
    }
}

/// A run of CSR elements in row order. Rows may span blocks: `row_ends` lists the absolute
/// element offsets at which the rows `first_row`, `first_row + 1`, ... end, for the rows that
/// end inside this block (including empty rows).
#[derive(Debug)]
pub struct Block<S> {
    pub first_row: u64,
    pub first_element: u64,
    pub row_ends: Vec<u64>,
    pub cols: Vec<u32>,
    pub vals: Vec<S>,
}

impl<S> Block<S> {
    /// The row that holds the element at absolute offset `element` of this block.
    pub fn row_of(&self, element: u64) -> u64 {
        self.first_row + self.row_ends.partition_point(|&end| end <= element) as u64
    }
}

/// A value from the file shortened for a one-line message.
fn clip(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        format!(
            "{}... ({} bytes)",
            s.chars().take(MAX).collect::<String>(),
            s.len()
        )
    }
}

/// An opened matrix, ready to stream.
pub struct MatrixReader<'a> {
    h5: &'a H5ad,
    path: String,
    pub layout: Layout,
    pub n_rows: u64,
    pub n_cols: u64,
    pub dtype: Dtype,
    pub nnz: u64,
    data: hdf5::Dataset,
    indices: Option<hdf5::Dataset>,
    indptr: Option<hdf5::Dataset>,
}

/// CSR or CSC, from the group's `encoding-type` (or legacy `h5sparse_format`).
fn sparse_layout(h5: &H5ad, path: &str, group: &hdf5::Group) -> Result<Layout> {
    let attr = |name: &str| {
        string_attr(group, name)
            .map_err(|e| h5.error(&format!("{path}@{name}"), format!("attribute {e}")))
    };
    let encoding = attr("encoding-type")?;
    let legacy = attr("h5sparse_format")?;
    match (encoding.as_deref(), legacy.as_deref()) {
        (Some("csr_matrix"), _) | (None, Some("csr")) => Ok(Layout::Csr),
        (Some("csc_matrix"), _) | (None, Some("csc")) => Ok(Layout::Csc),
        (Some(other), _) => Err(h5.error(
            path,
            format!("unsupported matrix encoding '{}'", clip(other)),
        )),
        (None, Some(other)) => Err(h5.error(
            path,
            format!("unsupported h5sparse_format '{}'", clip(other)),
        )),
        (None, None) => Err(h5.error(
            path,
            "group has no encoding-type or h5sparse_format: not a sparse matrix",
        )),
    }
}

/// (rows, columns) from the group's `shape` (or legacy `h5sparse_shape`).
fn sparse_shape(h5: &H5ad, path: &str, group: &hdf5::Group) -> Result<(u64, u64)> {
    let shape = int_list_attr(group, "shape")
        .or_else(|| int_list_attr(group, "h5sparse_shape"))
        .ok_or_else(|| h5.error(path, "sparse matrix without a shape attribute"))?;
    match shape[..] {
        [r, c] if r >= 0 && c >= 0 => Ok((r as u64, c as u64)),
        _ => Err(h5.error(path, format!("invalid shape {shape:?}"))),
    }
}

/// `data`, `indices`, `indptr`: 1-D, as many indices as values, one indptr entry per row (CSR)
/// or column (CSC) and one more, integer indices.
fn check_sparse_members(
    h5: &H5ad,
    path: &str,
    members: [(&str, &hdf5::Dataset); 3],
    major: u64,
    (n_rows, n_cols): (u64, u64),
) -> Result<()> {
    for (name, ds) in members {
        if ds.ndim() != 1 {
            return Err(h5.error(
                &format!("{path}/{name}"),
                format!("expected a 1-D array, found shape {:?}", ds.shape()),
            ));
        }
    }
    let [(_, data), (_, indices), (_, indptr)] = members;
    let nnz = data.size() as u64;
    if indices.size() as u64 != nnz {
        return Err(h5.error(
            &format!("{path}/indices"),
            format!("has {} entries but data has {nnz}", indices.size()),
        ));
    }
    if indptr.size() as u64 != major + 1 {
        return Err(h5.error(
            &format!("{path}/indptr"),
            format!(
                "has {} entries but the shape ({n_rows}, {n_cols}) needs {}",
                indptr.size(),
                major as u128 + 1
            ),
        ));
    }
    Ok(())
}

/// `indices` and `indptr` hold integers.
fn check_index_types(h5: &H5ad, path: &str, members: [(&str, &hdf5::Dataset); 2]) -> Result<()> {
    for (name, ds) in members {
        match ds.dtype().and_then(|t| t.to_descriptor()) {
            Ok(TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_)) => {}
            Ok(other) => {
                return Err(h5.error(
                    &format!("{path}/{name}"),
                    format!("expected integers, found {other:?}"),
                ))
            }
            Err(e) => return Err(h5.error(&format!("{path}/{name}"), e.to_string())),
        }
    }
    Ok(())
}

pub(crate) fn element_dtype(desc: &TypeDescriptor) -> Option<Dtype> {
    use hdf5::types::FloatSize;
    Some(match desc {
        TypeDescriptor::Float(FloatSize::U2) => Dtype::F16,
        TypeDescriptor::Float(FloatSize::U4) => Dtype::F32,
        TypeDescriptor::Float(FloatSize::U8) => Dtype::F64,
        TypeDescriptor::Integer(IntSize::U1) => Dtype::I8,
        TypeDescriptor::Integer(IntSize::U2) => Dtype::I16,
        TypeDescriptor::Integer(IntSize::U4) => Dtype::I32,
        TypeDescriptor::Integer(IntSize::U8) => Dtype::I64,
        TypeDescriptor::Unsigned(IntSize::U1) => Dtype::U8,
        TypeDescriptor::Unsigned(IntSize::U2) => Dtype::U16,
        TypeDescriptor::Unsigned(IntSize::U4) => Dtype::U32,
        TypeDescriptor::Unsigned(IntSize::U8) => Dtype::U64,
        TypeDescriptor::Boolean => Dtype::U8,
        _ => return None,
    })
}

impl<'a> MatrixReader<'a> {
    pub(super) fn open(h5: &'a H5ad, path: &str) -> Result<MatrixReader<'a>> {
        let file = h5.file();
        if let Ok(ds) = file.dataset(path) {
            return Self::open_dense(h5, path, ds);
        }
        let group = file
            .group(path)
            .map_err(|_| h5.error(path, "is neither a dataset nor a group"))?;
        let layout = sparse_layout(h5, path, &group)?;
        let (n_rows, n_cols) = sparse_shape(h5, path, &group)?;
        let member = |name: &str| {
            group
                .dataset(name)
                .map_err(|_| h5.error(&format!("{path}/{name}"), "missing"))
        };
        let data = member("data")?;
        let indices = member("indices")?;
        let indptr = member("indptr")?;
        let major = if layout == Layout::Csr {
            n_rows
        } else {
            n_cols
        };
        let members = [("data", &data), ("indices", &indices), ("indptr", &indptr)];
        check_sparse_members(h5, path, members, major, (n_rows, n_cols))?;
        let dtype = Self::data_dtype(h5, &format!("{path}/data"), &data)?;
        check_index_types(h5, path, [("indices", &indices), ("indptr", &indptr)])?;
        let reader = MatrixReader {
            h5,
            path: path.to_string(),
            layout,
            n_rows,
            n_cols,
            dtype,
            nnz: data.size() as u64,
            data,
            indices: Some(indices),
            indptr: Some(indptr),
        };
        reader.check_column_count()?;
        Ok(reader)
    }

    fn open_dense(h5: &'a H5ad, path: &str, ds: hdf5::Dataset) -> Result<MatrixReader<'a>> {
        let shape = ds.shape();
        if shape.len() != 2 {
            return Err(h5.error(
                path,
                format!("dense matrix must be 2-D, found shape {shape:?}"),
            ));
        }
        let dtype = Self::data_dtype(h5, path, &ds)?;
        let reader = MatrixReader {
            h5,
            path: path.to_string(),
            layout: Layout::Dense,
            n_rows: shape[0] as u64,
            n_cols: shape[1] as u64,
            dtype,
            nnz: 0,
            data: ds,
            indices: None,
            indptr: None,
        };
        reader.check_column_count()?;
        Ok(reader)
    }

    fn data_dtype(h5: &H5ad, location: &str, ds: &hdf5::Dataset) -> Result<Dtype> {
        let desc = ds
            .dtype()
            .and_then(|t| t.to_descriptor())
            .map_err(|e| h5.error(location, format!("unreadable datatype: {e}")))?;
        element_dtype(&desc).ok_or_else(|| {
            h5.error(
                location,
                format!("matrix values must be numeric, found {desc:?}"),
            )
        })
    }

    /// SCDL stores column indices as uint32.
    fn check_column_count(&self) -> Result<()> {
        if self.n_cols > u32::MAX as u64 + 1 {
            return Err(self.h5.error(
                &self.path,
                format!(
                    "{} columns exceed SCDL's uint32 column indices",
                    self.n_cols
                ),
            ));
        }
        Ok(())
    }

    pub fn location(&self) -> &str {
        &self.path
    }

    /// An upper bound of the values this matrix gives: nnz for a sparse matrix, every cell for
    /// a dense one (its zeros are only found by reading it).
    pub fn max_values(&self) -> u64 {
        match self.layout {
            Layout::Dense => self.n_rows.saturating_mul(self.n_cols),
            Layout::Csr | Layout::Csc => self.nnz,
        }
    }

    /// Checks that every array the conversion will read is backed by bytes in the file. HDF5
    /// lets a tiny file declare a huge chunked dataset whose chunks were never written (they
    /// read as the fill value): converting one would run for hours, or write terabytes, on
    /// data the file does not contain. Compression can legitimately shrink data, but deflate
    /// never beyond 1032:1, so a declared size over `h5ad::MAX_EXPANSION` times the stored
    /// bytes (plus a small allowance) is refused, and so is a shape too large for the file.
    pub fn check_backed_by_storage(&self) -> Result<()> {
        let members: Vec<(&str, &hdf5::Dataset)> = match self.layout {
            Layout::Dense => vec![("", &self.data)],
            Layout::Csr | Layout::Csc => {
                let mut v = vec![("data", &self.data)];
                v.extend(self.indices.as_ref().map(|d| ("indices", d)));
                v.extend(self.indptr.as_ref().map(|d| ("indptr", d)));
                v
            }
        };
        for (member, ds) in members {
            if let Some(u) = super::unbacked(ds) {
                return Err(self.err(member, u.to_string()));
            }
        }
        // A row or a column costs at least 8 bytes of output (its row_ptr entry, its feature),
        // and a real file stores something for each (cell and gene ids): a shape the file
        // cannot have come from is refused, whatever its layout.
        let file_len = std::fs::metadata(self.h5.path()).map_or(u64::MAX, |m| m.len());
        let limit = super::expansion_limit(file_len);
        for (what, n) in [("rows", self.n_rows), ("columns", self.n_cols)] {
            if n as u128 * 8 > limit {
                return Err(self.err(
                    "",
                    format!("declares {n} {what}, more than a {file_len}-byte file can describe: refused"),
                ));
            }
        }
        Ok(())
    }

    /// The HDF5 dataset holding the values (for messages).
    pub fn values_location(&self) -> String {
        match self.layout {
            Layout::Dense => self.path.clone(),
            Layout::Csr | Layout::Csc => format!("{}/data", self.path),
        }
    }

    fn err(&self, member: &str, message: impl Into<String>) -> Error {
        let loc = if member.is_empty() {
            self.path.clone()
        } else {
            format!("{}/{member}", self.path)
        };
        self.h5.error(&loc, message)
    }

    fn read_failed(&self, member: &str, e: hdf5::Error) -> Error {
        self.err(
            member,
            format!("read failed (truncated or corrupt file?): {e}"),
        )
    }

    /// Streams the matrix as CSR blocks in row order. `S` must be the matrix's own element type
    /// (`self.dtype`). Temporary files (CSC only) go into `scratch`.
    pub fn stream<S: Element>(
        &self,
        scratch: &Path,
        sink: &mut dyn FnMut(Block<S>) -> Result<()>,
    ) -> Result<()> {
        assert_eq!(
            S::DTYPE,
            self.dtype,
            "stream() called with the wrong element type"
        );
        match self.layout {
            Layout::Csr => self.stream_csr(sink),
            Layout::Dense => self.stream_dense(sink),
            Layout::Csc => self.stream_csc(scratch, sink),
        }
    }

    /// Visits every stored value in blocks of at most `BLOCK_ELEMENTS`, in storage order, without
    /// the matrix structure (sparse: the `data` array; dense: row slabs, zeros included). For a
    /// pass that only looks at values, e.g. to choose a data type. `S` as for `stream`.
    pub fn for_each_value_block<S: Element>(
        &self,
        visit: &mut dyn FnMut(&[S]) -> Result<()>,
    ) -> Result<()> {
        assert_eq!(S::DTYPE, self.dtype, "wrong element type");
        if self.layout != Layout::Dense {
            let mut a = 0;
            while a < self.nnz {
                let b = (a + BLOCK_ELEMENTS as u64).min(self.nnz);
                visit(&self.read_values::<S>(a, b)?)?;
                a = b;
            }
            return Ok(());
        }
        let n_cols = self.n_cols.max(1);
        let rows_per_slab = (BLOCK_ELEMENTS as u64 / n_cols).max(1);
        let col_piece = (BLOCK_ELEMENTS as u64).min(n_cols);
        for r in (0..self.n_rows).step_by(rows_per_slab as usize) {
            let r_end = (r + rows_per_slab).min(self.n_rows);
            for c in (0..self.n_cols).step_by(col_piece as usize) {
                let c_end = (c + col_piece).min(self.n_cols);
                let slab = self
                    .data
                    .read_slice_2d::<S, _>((r as usize..r_end as usize, c as usize..c_end as usize))
                    .map_err(|e| self.read_failed("", e))?;
                visit(&slab.into_raw_vec_and_offset().0)?;
            }
        }
        Ok(())
    }

    fn read_values<S: Element>(&self, a: u64, b: u64) -> Result<Vec<S>> {
        Ok(self
            .data
            .read_slice_1d::<S, _>(a as usize..b as usize)
            .map_err(|e| self.read_failed("data", e))?
            .into_raw_vec_and_offset()
            .0)
    }

    /// Reads indptr entries [a, b) as u64, checking they are non-negative.
    fn read_indptr(&self, a: u64, b: u64) -> Result<Vec<u64>> {
        let ds = self.indptr.as_ref().expect("sparse matrix has indptr");
        let signed = matches!(
            ds.dtype().and_then(|t| t.to_descriptor()),
            Ok(TypeDescriptor::Integer(_))
        );
        let range = a as usize..b as usize;
        if signed {
            let v = ds
                .read_slice_1d::<i64, _>(range)
                .map_err(|e| self.read_failed("indptr", e))?;
            v.iter()
                .enumerate()
                .map(|(i, &x)| {
                    u64::try_from(x).map_err(|_| {
                        self.err(
                            "indptr",
                            format!("negative entry {x} at position {}", a + i as u64),
                        )
                    })
                })
                .collect()
        } else {
            Ok(ds
                .read_slice_1d::<u64, _>(range)
                .map_err(|e| self.read_failed("indptr", e))?
                .into_raw_vec_and_offset()
                .0)
        }
    }

    /// Reads minor indices [a, b) (column indices for CSR, row indices for CSC) in their
    /// stored integer type, checking 0 <= i < bound, and narrows them to `O` (which holds
    /// every value below `bound`). `describe` places a bad entry for the message.
    fn read_minor<O: TryFrom<u64>>(
        &self,
        a: u64,
        b: u64,
        bound: u64,
        describe: &dyn Fn(u64) -> String,
    ) -> Result<Vec<O>> {
        let ds = self.indices.as_ref().expect("sparse matrix has indices");
        let desc = ds
            .dtype()
            .and_then(|t| t.to_descriptor())
            .map_err(|e| self.read_failed("indices", e))?;
        match desc {
            TypeDescriptor::Integer(IntSize::U1) => {
                self.read_minor_as::<i8, O>(ds, a, b, bound, describe)
            }
            TypeDescriptor::Integer(IntSize::U2) => {
                self.read_minor_as::<i16, O>(ds, a, b, bound, describe)
            }
            TypeDescriptor::Integer(IntSize::U4) => {
                self.read_minor_as::<i32, O>(ds, a, b, bound, describe)
            }
            TypeDescriptor::Integer(IntSize::U8) => {
                self.read_minor_as::<i64, O>(ds, a, b, bound, describe)
            }
            TypeDescriptor::Unsigned(IntSize::U1) => {
                self.read_minor_as::<u8, O>(ds, a, b, bound, describe)
            }
            TypeDescriptor::Unsigned(IntSize::U2) => {
                self.read_minor_as::<u16, O>(ds, a, b, bound, describe)
            }
            TypeDescriptor::Unsigned(IntSize::U4) => {
                self.read_minor_as::<u32, O>(ds, a, b, bound, describe)
            }
            _ => self.read_minor_as::<u64, O>(ds, a, b, bound, describe),
        }
    }

    fn read_minor_as<I, O>(
        &self,
        ds: &hdf5::Dataset,
        a: u64,
        b: u64,
        bound: u64,
        describe: &dyn Fn(u64) -> String,
    ) -> Result<Vec<O>>
    where
        I: hdf5::H5Type + Copy + Into<i128> + std::fmt::Display,
        O: TryFrom<u64>,
    {
        let raw = ds
            .read_slice_1d::<I, _>(a as usize..b as usize)
            .map_err(|e| self.read_failed("indices", e))?;
        let mut out = Vec::with_capacity(raw.len());
        for (i, &x) in raw.iter().enumerate() {
            let wide: i128 = x.into();
            match (wide >= 0 && (wide as u64) < bound)
                .then(|| O::try_from(wide as u64).ok())
                .flatten()
            {
                Some(v) => out.push(v),
                None => {
                    return Err(self.err(
                        "indices",
                        format!(
                            "index {x} out of range 0..{bound} at {}",
                            describe(a + i as u64)
                        ),
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Walks indptr in chunks, checking it starts at 0, never decreases and ends at nnz; calls
    /// `visit(first_major, entries)` with overlapping windows (`entries[k]` is the start of
    /// major `first_major + k`; the last entry of one window is the first of the next).
    fn walk_indptr(
        &self,
        major: u64,
        visit: &mut dyn FnMut(u64, &[u64]) -> Result<()>,
    ) -> Result<()> {
        let what = if self.layout == Layout::Csr {
            "row"
        } else {
            "column"
        };
        let mut m = 0;
        loop {
            let end = (m + INDPTR_ROWS).min(major);
            let ip = self.read_indptr(m, end + 1)?;
            if m == 0 && ip[0] != 0 {
                return Err(self.err("indptr", format!("starts at {} instead of 0", ip[0])));
            }
            if let Some(k) = ip.windows(2).position(|w| w[1] < w[0]) {
                return Err(self.err(
                    "indptr",
                    format!(
                        "decreases at {what} {} ({} then {})",
                        m + k as u64,
                        ip[k],
                        ip[k + 1]
                    ),
                ));
            }
            if let Some(k) = ip.iter().position(|&x| x > self.nnz) {
                return Err(self.err(
                    "indptr",
                    format!(
                        "entry {} at {what} {} exceeds the {} stored values",
                        ip[k],
                        m + k as u64,
                        self.nnz
                    ),
                ));
            }
            if end == major && *ip.last().expect("non-empty") != self.nnz {
                return Err(self.err(
                    "indptr",
                    format!(
                        "ends at {} but data has {} values",
                        ip.last().expect("non-empty"),
                        self.nnz
                    ),
                ));
            }
            visit(m, &ip)?;
            if end == major {
                return Ok(());
            }
            m = end;
        }
    }

    fn stream_csr<S: Element>(&self, sink: &mut dyn FnMut(Block<S>) -> Result<()>) -> Result<()> {
        let budget = BLOCK_ELEMENTS as u64;
        self.walk_indptr(self.n_rows, &mut |first_row, ip| {
            let rows = ip.len() - 1;
            let mut r = 0; // row index within this window
            while r < rows {
                let start = ip[r];
                // Extend over as many rows as fit in the budget.
                let mut r_end = r + 1;
                while r_end < rows && ip[r_end + 1] - start <= budget {
                    r_end += 1;
                }
                let end = ip[r_end];
                let row = first_row + r as u64;
                if end - start <= budget {
                    self.emit_csr(row, start, end, ip[r + 1..=r_end].to_vec(), sink)?;
                } else {
                    // One row larger than the budget: its elements in several blocks.
                    let mut p = start;
                    while p < end {
                        let q = (p + budget).min(end);
                        let ends = if q == end { vec![end] } else { Vec::new() };
                        self.emit_csr(row, p, q, ends, sink)?;
                        p = q;
                    }
                }
                r = r_end;
            }
            Ok(())
        })
    }

    fn emit_csr<S: Element>(
        &self,
        first_row: u64,
        start: u64,
        end: u64,
        row_ends: Vec<u64>,
        sink: &mut dyn FnMut(Block<S>) -> Result<()>,
    ) -> Result<()> {
        let vals = self.read_values::<S>(start, end)?;
        let describe = |pos: u64| {
            let row = first_row + row_ends.partition_point(|&e| e <= pos) as u64;
            format!("row {row} (element {pos})")
        };
        let cols = self.read_minor::<u32>(start, end, self.n_cols, &describe)?;
        sink(Block {
            first_row,
            first_element: start,
            row_ends,
            cols,
            vals,
        })
    }

    fn stream_dense<S: Element>(&self, sink: &mut dyn FnMut(Block<S>) -> Result<()>) -> Result<()> {
        let n_cols = self.n_cols.max(1);
        let rows_per_slab = (BLOCK_ELEMENTS as u64 / n_cols).max(1);
        let col_piece = (BLOCK_ELEMENTS as u64).min(n_cols);
        let mut element = 0u64;
        let mut r = 0u64;
        while r < self.n_rows {
            let r_end = (r + rows_per_slab).min(self.n_rows);
            let mut block = Block {
                first_row: r,
                first_element: element,
                row_ends: Vec::new(),
                cols: Vec::new(),
                vals: Vec::new(),
            };
            // Very wide rows are read in column pieces; each piece is a 2-D hyperslab.
            let mut pieces = Vec::new();
            let mut c = 0;
            while c < self.n_cols {
                let c_end = (c + col_piece).min(self.n_cols);
                let slab = self
                    .data
                    .read_slice_2d::<S, _>((r as usize..r_end as usize, c as usize..c_end as usize))
                    .map_err(|e| self.read_failed("", e))?;
                pieces.push((c, slab));
                c = c_end;
            }
            for i in 0..(r_end - r) as usize {
                for (c0, slab) in &pieces {
                    for (j, &v) in slab.row(i).iter().enumerate() {
                        if !v.is_zero() {
                            block.cols.push((*c0 as usize + j) as u32);
                            block.vals.push(v);
                        }
                    }
                }
                element = block.first_element + block.cols.len() as u64;
                block.row_ends.push(element);
            }
            sink(block)?;
            r = r_end;
        }
        Ok(())
    }
}
