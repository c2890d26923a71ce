//! Small readers for HDF5 attributes and string datasets, whatever string flavour (variable or
//! fixed length, ASCII or UTF-8) the writer chose: h5py, old anndata and R writers all differ.

use hdf5::types::{FixedAscii, FixedUnicode, TypeDescriptor, VarLenAscii, VarLenUnicode};

/// Longest fixed-length string we read (HDF5 converts shorter fixed strings up to it).
const MAX_FIXED: usize = 4096;

/// Reads a scalar (or 1-element) string attribute; None when absent or not a string.
pub fn string_attr(loc: &hdf5::Location, name: &str) -> Option<String> {
    let attr = loc.attr(name).ok()?;
    let desc = attr.dtype().ok()?.to_descriptor().ok()?;
    let values = read_string_values(&attr, &desc).ok()?;
    values.into_iter().next()
}

/// Reads an attribute holding an array of strings (e.g. `column-order`). An empty array of any
/// type (h5py writes an empty list as float64) reads as empty.
pub fn string_list_attr(loc: &hdf5::Location, name: &str) -> Option<Vec<String>> {
    let attr = loc.attr(name).ok()?;
    if attr.size() == 0 {
        return Some(Vec::new());
    }
    let desc = attr.dtype().ok()?.to_descriptor().ok()?;
    read_string_values(&attr, &desc).ok()
}

/// Reads an integer-array attribute such as `shape` or `h5sparse_shape`.
pub fn int_list_attr(loc: &hdf5::Location, name: &str) -> Option<Vec<i64>> {
    let attr = loc.attr(name).ok()?;
    match attr.dtype().ok()?.to_descriptor().ok()? {
        TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) => attr.read_raw::<i64>().ok(),
        _ => None,
    }
}

/// Reads every string of a 1-D string dataset.
pub fn read_strings(ds: &hdf5::Dataset) -> hdf5::Result<Vec<String>> {
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

fn read_string_values(c: &hdf5::Container, desc: &TypeDescriptor) -> hdf5::Result<Vec<String>> {
    Ok(match desc {
        TypeDescriptor::VarLenUnicode => c
            .read_raw::<VarLenUnicode>()?
            .into_iter()
            .map(|s| s.as_str().to_string())
            .collect(),
        TypeDescriptor::VarLenAscii => c
            .read_raw::<VarLenAscii>()?
            .into_iter()
            .map(|s| s.as_str().to_string())
            .collect(),
        TypeDescriptor::FixedAscii(n) if *n <= MAX_FIXED => c
            .read_raw::<FixedAscii<MAX_FIXED>>()?
            .into_iter()
            .map(|s| s.as_str().to_string())
            .collect(),
        TypeDescriptor::FixedUnicode(n) if *n <= MAX_FIXED => c
            .read_raw::<FixedUnicode<MAX_FIXED>>()?
            .into_iter()
            .map(|s| s.as_str().to_string())
            .collect(),
        other => return Err(format!("not a string type: {other:?}").into()),
    })
}
