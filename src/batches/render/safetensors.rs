//! A batch as a `.safetensors` file. The header is the safetensors crate's own `Metadata`,
//! serialised and padded as the crate's `serialize` does; the tensors' bytes are then written
//! in place (values and columns read straight into the file's buffer), in the crate's order,
//! instead of being read into buffers of their own for `serialize` to copy again (two extra
//! copies of the batch). `with_crate` renders through `safetensors::serialize` itself: the tests
//! require the same bytes.

use std::borrow::Cow;
use std::collections::HashMap;

use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::View;

use super::{BatchLayout, ReadPool, Recycler};
use crate::archive::Archive;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::render::{append_read, wide_indices};

/// The tensors of a batch file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Data,
    Indices,
    Indptr,
    RowIds,
    FeatureBlock,
}

impl Part {
    const ALL: [Part; 5] = [
        Part::Data,
        Part::Indices,
        Part::Indptr,
        Part::RowIds,
        Part::FeatureBlock,
    ];

    fn name(self) -> &'static str {
        match self {
            Part::Data => "data",
            Part::Indices => "indices",
            Part::Indptr => "indptr",
            Part::RowIds => "row_ids",
            Part::FeatureBlock => "feature_block",
        }
    }
}

/// A tensor of the file: what it is, its dtype and element count.
type Entry = (Part, safetensors::Dtype, u64);

impl BatchLayout {
    /// The `__metadata__` of the safetensors file, `format` before `shape`. The crate takes a
    /// std `HashMap`, which iterates (and so serialises) in an order its random hash keys
    /// decide; two keys land in the canonical order for about half of all maps, so maps are
    /// made until one does: every daemon writes the same bytes for a batch.
    fn safetensors_metadata(&self) -> HashMap<String, String> {
        let make = || {
            HashMap::from([
                ("format".to_string(), "csr".to_string()),
                (
                    "shape".to_string(),
                    format!("[{}, {}]", self.rows(), self.width),
                ),
            ])
        };
        let mut map = make();
        // Each try fails with probability 1/2: 200 tries all failing does not happen.
        for _ in 0..200 {
            if map.keys().next().map(String::as_str) == Some("format") {
                break;
            }
            map = make();
        }
        map
    }

    /// Every tensor, in the order the crate lays them out: dtype alignment descending, then
    /// name.
    fn safetensors_entries(&self, archive: &Archive) -> Vec<Entry> {
        let index = if wide_indices(self.width) {
            safetensors::Dtype::I64
        } else {
            safetensors::Dtype::I32
        };
        let rows = self.rows();
        let mut entries: Vec<Entry> = Part::ALL
            .iter()
            .map(|&part| match part {
                Part::Data => (part, safetensors_dtype(archive.data_dtype), self.nnz),
                Part::Indices => (part, index, self.nnz),
                Part::Indptr => (part, safetensors::Dtype::I64, rows + 1),
                Part::RowIds => (part, safetensors::Dtype::I64, rows),
                Part::FeatureBlock => (part, safetensors::Dtype::I32, rows),
            })
            .collect();
        entries.sort_by(|(l, ld, _), (r, rd, _)| rd.cmp(ld).then(l.name().cmp(r.name())));
        entries
    }

    /// The header as the crate writes it (its `Metadata` serialised, padded with spaces to 8
    /// bytes), and the tensors' bytes after it.
    fn safetensors_header(&self, archive: &Archive) -> Result<(Vec<u8>, u64)> {
        let mut offset = 0usize;
        let infos = self
            .safetensors_entries(archive)
            .iter()
            .map(|(part, dtype, n)| {
                let len = *n as usize * dtype.bitsize() / 8;
                let info = TensorInfo {
                    dtype: *dtype,
                    shape: vec![*n as usize],
                    data_offsets: (offset, offset + len),
                };
                offset += len;
                (part.name().to_string(), info)
            })
            .collect();
        let bad = |e: String| Error::Usage(format!("safetensors header: {e}"));
        let metadata = Metadata::new(Some(self.safetensors_metadata()), infos)
            .map_err(|e| bad(e.to_string()))?;
        let mut header = serde_json::to_vec(&metadata).map_err(|e| bad(e.to_string()))?;
        header.resize(header.len().next_multiple_of(8), b' ');
        Ok((header, offset as u64))
    }

    /// The exact size of the `.safetensors` file: an 8-byte length, the header, the tensors.
    pub(super) fn safetensors_size(&self, archive: &Archive) -> Result<u64> {
        let (header, data) = self.safetensors_header(archive)?;
        Ok(8 + header.len() as u64 + data)
    }

    /// Renders the `.safetensors` file into one buffer from `buffers`.
    pub(super) fn render_safetensors(
        &self,
        archive: &Archive,
        pool: &ReadPool,
        buffers: &Recycler,
    ) -> Result<Vec<u8>> {
        let (header, data) = self.safetensors_header(archive)?;
        let mut out = buffers.take(8 + header.len() + data as usize);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        for (part, dtype, n) in self.safetensors_entries(archive) {
            let len = n * dtype.bitsize() as u64 / 8;
            match part {
                Part::Data => {
                    append_read(&mut out, len, |buf| self.read_values(archive, buf, pool))?
                }
                Part::Indices => append_read(&mut out, len, |buf| {
                    self.read_indices(archive, buf, pool, buffers)
                })?,
                Part::Indptr => out.extend(self.indptr_bytes()),
                Part::RowIds => out.extend(self.row_id_bytes()),
                Part::FeatureBlock => out.extend(self.feature_block_bytes()),
            }
        }
        Ok(out)
    }

    /// The same file rendered by `safetensors::serialize` (every tensor read into a buffer of
    /// its own first): what the tests compare `render` with.
    #[doc(hidden)]
    pub fn render_safetensors_with_crate(
        &self,
        archive: &Archive,
        pool: &ReadPool,
    ) -> Result<Vec<u8>> {
        let mut parts: Vec<(Part, Vec<u8>)> = Vec::new();
        for (part, _, n) in self.safetensors_entries(archive) {
            let bytes = match part {
                Part::Data => {
                    let mut b = vec![0u8; (n * archive.data_dtype.size() as u64) as usize];
                    self.read_values(archive, &mut b, pool)?;
                    b
                }
                Part::Indices => {
                    let mut b = vec![0u8; (n * self.index_size()) as usize];
                    self.read_indices(archive, &mut b, pool, &Recycler::default())?;
                    b
                }
                Part::Indptr => self.indptr_bytes().collect(),
                Part::RowIds => self.row_id_bytes().collect(),
                Part::FeatureBlock => self.feature_block_bytes().collect(),
            };
            parts.push((part, bytes));
        }
        let entries = self.safetensors_entries(archive);
        let tensors = entries
            .iter()
            .zip(&parts)
            .map(|((part, dtype, n), (_, bytes))| {
                (
                    part.name(),
                    Tensor {
                        dtype: *dtype,
                        shape: [*n as usize],
                        bytes,
                    },
                )
            });
        safetensors::serialize(tensors, Some(self.safetensors_metadata()))
            .map_err(|e| Error::Usage(format!("safetensors: {e}")))
    }
}

/// A 1-D tensor over bytes already laid out, for `safetensors::serialize`.
struct Tensor<'a> {
    dtype: safetensors::Dtype,
    shape: [usize; 1],
    bytes: &'a [u8],
}

impl View for Tensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn safetensors_dtype(d: Dtype) -> safetensors::Dtype {
    use safetensors::Dtype as S;
    match d {
        Dtype::F16 => S::F16,
        Dtype::F32 => S::F32,
        Dtype::F64 => S::F64,
        Dtype::I8 => S::I8,
        Dtype::I16 => S::I16,
        Dtype::I32 => S::I32,
        Dtype::I64 => S::I64,
        Dtype::U8 => S::U8,
        Dtype::U16 => S::U16,
        Dtype::U32 => S::U32,
        Dtype::U64 => S::U64,
    }
}
