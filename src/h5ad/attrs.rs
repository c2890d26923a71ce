//! Small readers for HDF5 attributes and string datasets, whatever string flavour (variable or
//! fixed length, ASCII or UTF-8) the writer chose: h5py, old anndata and R writers all differ.

use hdf5::types::{FixedAscii, FixedUnicode, TypeDescriptor, VarLenAscii, VarLenUnicode};

/// Longest fixed-length string we read (HDF5 converts shorter fixed strings up to it).
const MAX_FIXED: usize = 4096;

/// A string that is not valid UTF-8: anndata cannot read it either, and replacing the bad bytes
/// would silently change a gene or cell id, so it is an error naming its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotUtf8 {
    /// Index of the value in its dataset or attribute.
    pub position: usize,
    /// The first bytes of the value, escaped.
    pub bytes: String,
}

impl std::fmt::Display for NotUtf8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "string {} is not valid UTF-8 (b\"{}\")",
            self.position, self.bytes
        )
    }
}

/// Byte strings as Rust strings, each checked to be UTF-8 (the first that is not is named).
pub fn checked_utf8<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Vec<String>, NotUtf8> {
    values
        .enumerate()
        .map(|(position, b)| {
            std::str::from_utf8(b)
                .map(str::to_string)
                .map_err(|_| NotUtf8 {
                    position,
                    bytes: b
                        .iter()
                        .take(32)
                        .flat_map(|c| c.escape_ascii())
                        .map(char::from)
                        .collect(),
                })
        })
        .collect()
}

/// Reads a scalar (or 1-element) string attribute: Ok(None) when absent or not a string.
pub fn string_attr(loc: &hdf5::Location, name: &str) -> Result<Option<String>, NotUtf8> {
    Ok(string_list_attr(loc, name)?.and_then(|v| v.into_iter().next()))
}

/// Reads an attribute holding an array of strings (e.g. `column-order`): Ok(None) when absent
/// or not a string. An empty array of any type (h5py writes an empty list as float64) reads as
/// empty.
pub fn string_list_attr(loc: &hdf5::Location, name: &str) -> Result<Option<Vec<String>>, NotUtf8> {
    let Ok(attr) = loc.attr(name) else {
        return Ok(None);
    };
    if attr.size() == 0 {
        return Ok(Some(Vec::new()));
    }
    let Some(desc) = attr.dtype().ok().and_then(|t| t.to_descriptor().ok()) else {
        return Ok(None);
    };
    match read_string_values(&attr, &desc) {
        Ok(values) => Ok(Some(values)),
        Err(StringsError::NotUtf8(e)) => Err(e),
        Err(StringsError::Hdf5(_)) => Ok(None),
    }
}

/// Reads an integer-array attribute such as `shape` or `h5sparse_shape`.
pub fn int_list_attr(loc: &hdf5::Location, name: &str) -> Option<Vec<i64>> {
    let attr = loc.attr(name).ok()?;
    match attr.dtype().ok()?.to_descriptor().ok()? {
        TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) => attr.read_raw::<i64>().ok(),
        _ => None,
    }
}

/// Why strings could not be read.
#[derive(Debug)]
pub enum StringsError {
    Hdf5(hdf5::Error),
    NotUtf8(NotUtf8),
}

impl std::fmt::Display for StringsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StringsError::Hdf5(e) => write!(f, "read failed: {e}"),
            StringsError::NotUtf8(e) => e.fmt(f),
        }
    }
}

impl From<hdf5::Error> for StringsError {
    fn from(e: hdf5::Error) -> Self {
        StringsError::Hdf5(e)
    }
}

/// Reads every string of a 1-D string dataset.
pub fn read_strings(ds: &hdf5::Dataset) -> Result<Vec<String>, StringsError> {
    let desc = ds.dtype()?.to_descriptor()?;
    read_string_values(ds, &desc)
}

pub fn is_string_type(desc: &TypeDescriptor) -> bool {
    matches!(
        desc,
        TypeDescriptor::VarLenUnicode
            | TypeDescriptor::VarLenAscii
            | TypeDescriptor::FixedAscii(_)
            | TypeDescriptor::FixedUnicode(_)
    )
}

/// The strings as Rust strings, each checked to be UTF-8. (The hdf5 crate's `as_str` assumes
/// valid UTF-8 without checking; the bytes are what the file holds, so they are checked here.)
fn read_string_values(
    c: &hdf5::Container,
    desc: &TypeDescriptor,
) -> Result<Vec<String>, StringsError> {
    fn utf8<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Vec<String>, StringsError> {
        checked_utf8(values).map_err(StringsError::NotUtf8)
    }
    match desc {
        TypeDescriptor::VarLenUnicode => {
            utf8(c.read_raw::<VarLenUnicode>()?.iter().map(|s| s.as_bytes()))
        }
        TypeDescriptor::VarLenAscii => {
            utf8(c.read_raw::<VarLenAscii>()?.iter().map(|s| s.as_bytes()))
        }
        TypeDescriptor::FixedAscii(n) if *n <= MAX_FIXED => utf8(
            c.read_raw::<FixedAscii<MAX_FIXED>>()?
                .iter()
                .map(|s| s.as_bytes()),
        ),
        TypeDescriptor::FixedUnicode(n) if *n <= MAX_FIXED => utf8(
            c.read_raw::<FixedUnicode<MAX_FIXED>>()?
                .iter()
                .map(|s| s.as_bytes()),
        ),
        other => Err(StringsError::Hdf5(
            format!("not a string type: {other:?}").into(),
        )),
    }
}
