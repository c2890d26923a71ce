//! `header.sch`, the binary header bionemo-scdl 0.1.3 reads to learn the arrays' dtypes (it
//! ignores dtypes.json). Big-endian ("network order") throughout:
//!
//! ```text
//! "SCDL" | major u8 | minor u8 | point u8 | endianness u8 (1) | backend u32 (1 = memmap v0)
//! | array count u32 | arrays | feature-index count u32 | feature indices
//! array:         name (u32 len + UTF-8) | length u64 | dtype u32 | has_shape u8 [dims u32, dim u32...]
//! feature index: name | length u64 | dtype u32 | file count u32 | files (strings) | has_shape u8 [...]
//! ```
//! Array names are bionemo's enum names: DATA, ROWPTR, COLPTR.

use crate::dtype::Dtype;

const MAGIC: &[u8; 4] = b"SCDL";
const SCHEMA_VERSION: [u8; 3] = [0, 1, 0];
const BACKEND_MEMMAP_V0: u32 = 1;
const STRING_ARRAY: u32 = 8;

/// bionemo's ArrayDType codes; it has no signed integer types.
pub fn dtype_code(d: Dtype) -> Option<u32> {
    Some(match d {
        Dtype::U8 => 1,
        Dtype::U16 => 2,
        Dtype::U32 => 3,
        Dtype::U64 => 4,
        Dtype::F16 => 5,
        Dtype::F32 => 6,
        Dtype::F64 => 7,
        _ => return None,
    })
}

fn dtype_of_code(c: u32) -> Option<Dtype> {
    [
        Dtype::U8,
        Dtype::U16,
        Dtype::U32,
        Dtype::U64,
        Dtype::F16,
        Dtype::F32,
        Dtype::F64,
    ]
    .into_iter()
    .find(|d| dtype_code(*d) == Some(c))
}

#[derive(Clone, Debug, PartialEq)]
pub struct ArrayEntry {
    pub name: String,
    pub length: u64,
    pub dtype: Dtype,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FeatureIndexEntry {
    pub name: String,
    pub length: u64,
    pub files: Vec<String>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Serialises a header. Panics if an array has a dtype bionemo cannot express (callers only
/// write archive data types, see `Dtype::is_archive_data_type`).
pub fn encode(arrays: &[ArrayEntry], indices: &[FeatureIndexEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&SCHEMA_VERSION);
    out.push(1);
    out.extend_from_slice(&BACKEND_MEMMAP_V0.to_be_bytes());
    out.extend_from_slice(&(arrays.len() as u32).to_be_bytes());
    for a in arrays {
        put_str(&mut out, &a.name);
        out.extend_from_slice(&a.length.to_be_bytes());
        let code = dtype_code(a.dtype).expect("archive arrays have bionemo dtypes");
        out.extend_from_slice(&code.to_be_bytes());
        out.push(0);
    }
    out.extend_from_slice(&(indices.len() as u32).to_be_bytes());
    for f in indices {
        put_str(&mut out, &f.name);
        out.extend_from_slice(&f.length.to_be_bytes());
        out.extend_from_slice(&STRING_ARRAY.to_be_bytes());
        out.extend_from_slice(&(f.files.len() as u32).to_be_bytes());
        for file in &f.files {
            put_str(&mut out, file);
        }
        out.push(0);
    }
    out
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("header.sch truncated at byte {}", self.at))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "header.sch: non-UTF-8 name".into())
    }
    fn skip_shape(&mut self) -> Result<(), String> {
        if self.u8()? != 0 {
            let dims = self.u32()? as usize;
            self.take(dims.checked_mul(4).ok_or("header.sch: absurd shape")?)?;
        }
        Ok(())
    }
}

/// Parses the arrays of a header (feature-index entries are not needed to read an archive).
pub fn decode_arrays(bytes: &[u8]) -> Result<Vec<ArrayEntry>, String> {
    let mut c = Cursor { bytes, at: 0 };
    if c.take(4)? != MAGIC {
        return Err("header.sch: bad magic".into());
    }
    c.take(4)?; // version + endianness
    c.u32()?; // backend
    let count = c.u32()?;
    let mut arrays = Vec::new();
    for _ in 0..count {
        let name = c.string()?;
        let length = c.u64()?;
        let code = c.u32()?;
        c.skip_shape()?;
        let dtype = dtype_of_code(code)
            .ok_or_else(|| format!("header.sch: array {name} has unsupported dtype code {code}"))?;
        arrays.push(ArrayEntry {
            name,
            length,
            dtype,
        });
    }
    Ok(arrays)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_round_trip() {
        let arrays = vec![
            ArrayEntry {
                name: "DATA".into(),
                length: 10,
                dtype: Dtype::F64,
            },
            ArrayEntry {
                name: "ROWPTR".into(),
                length: 4,
                dtype: Dtype::U64,
            },
        ];
        let idx = vec![FeatureIndexEntry {
            name: "features".into(),
            length: 3,
            files: vec!["features/labels.npy".into()],
        }];
        let bytes = encode(&arrays, &idx);
        assert_eq!(&bytes[..4], b"SCDL");
        assert_eq!(decode_arrays(&bytes).unwrap(), arrays);
        assert!(decode_arrays(&bytes[..20]).is_err());
    }
}
