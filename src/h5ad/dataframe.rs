//! Reading AnnData dataframes (var, raw/var, obs): the index (gene or cell ids) and every column, in the
//! encodings anndata has used: string arrays, numeric arrays, categoricals, nullable integers,
//! booleans and strings, and the compound datasets of files written before anndata 0.7.

use hdf5::types::{FixedAscii, TypeDescriptor, VarLenUnicode};

use super::attrs::{checked_utf8, is_string_type, read_strings, string_attr, string_list_attr};
use super::H5ad;
use crate::error::Result;

/// One column of a dataframe. `None` is a missing value.
#[derive(Clone, Debug, PartialEq)]
pub enum Column {
    Str(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    UInt(Vec<Option<u64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
}

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::Str(v) => v.len(),
            Column::Int(v) => v.len(),
            Column::UInt(v) => v.len(),
            Column::Float(v) => v.len(),
            Column::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The kind's name, for messages and `scdl-fs info`.
    pub fn kind(&self) -> &'static str {
        match self {
            Column::Str(_) => "string",
            Column::Int(_) => "int64",
            Column::UInt(_) => "uint64",
            Column::Float(_) => "float64",
            Column::Bool(_) => "bool",
        }
    }

    /// Appends `more`, which must be of the same kind (else it is given back).
    pub fn extend(&mut self, more: Column) -> Result<(), Column> {
        match (self, more) {
            (Column::Str(a), Column::Str(b)) => a.extend(b),
            (Column::Int(a), Column::Int(b)) => a.extend(b),
            (Column::UInt(a), Column::UInt(b)) => a.extend(b),
            (Column::Float(a), Column::Float(b)) => a.extend(b),
            (Column::Bool(a), Column::Bool(b)) => a.extend(b),
            (_, other) => return Err(other),
        }
        Ok(())
    }
}

/// A dataframe: its index (kept as a column when written) and its columns, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct DataFrame {
    /// The name anndata gave the index (`_index` unless the file says otherwise).
    pub index_name: String,
    pub index: Vec<String>,
    pub columns: Vec<(String, Column)>,
}

impl DataFrame {
    /// A dataframe with only a positional index "0", "1", ... (anndata's default).
    pub fn positional(n: u64) -> DataFrame {
        DataFrame {
            index_name: "_index".into(),
            index: (0..n).map(|i| i.to_string()).collect(),
            columns: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

pub(super) fn read(h5: &H5ad, path: &str) -> Result<DataFrame> {
    let file = h5.file();
    if let Ok(ds) = file.dataset(path) {
        return read_compound(h5, path, &ds);
    }
    let group = file
        .group(path)
        .map_err(|_| h5.error(path, "dataframe is neither a group nor a dataset"))?;
    let attr_error = |name: &str, e: super::attrs::NotUtf8| {
        h5.error(&format!("{path}@{name}"), format!("attribute {e}"))
    };
    let index_name = string_attr(&group, "_index")
        .map_err(|e| attr_error("_index", e))?
        .unwrap_or_else(|| "_index".into());
    let index_column = read_column(h5, &group, path, &index_name)?;
    let index = match index_column {
        Column::Str(v) => v.into_iter().map(Option::unwrap_or_default).collect(),
        other => stringify(other),
    };
    let order = match string_list_attr(&group, "column-order")
        .map_err(|e| attr_error("column-order", e))?
    {
        Some(order) => order,
        None => {
            let names = group.member_names().unwrap_or_default();
            // The hdf5 crate does not check link names: a name that is not UTF-8 is refused.
            let mut names = checked_utf8(names.iter().map(|n| n.as_bytes()))
                .map_err(|e| h5.error(path, format!("member name {e}")))?;
            names.retain(|n| n != &index_name && !n.starts_with("__"));
            names
        }
    };
    let mut columns = Vec::with_capacity(order.len());
    for name in order {
        let col = read_column(h5, &group, path, &name)?;
        if col.len() != index.len() {
            return Err(h5.error(
                &format!("{path}/{name}"),
                format!(
                    "column has {} values but the index has {}",
                    col.len(),
                    index.len()
                ),
            ));
        }
        columns.push((name, col));
    }
    Ok(DataFrame {
        index_name,
        index,
        columns,
    })
}

fn stringify(col: Column) -> Vec<String> {
    fn s<T: ToString>(v: Vec<Option<T>>) -> Vec<String> {
        v.into_iter()
            .map(|x| x.map(|x| x.to_string()).unwrap_or_default())
            .collect()
    }
    match col {
        Column::Str(v) => s(v),
        Column::Int(v) => s(v),
        Column::UInt(v) => s(v),
        Column::Float(v) => s(v),
        Column::Bool(v) => s(v),
    }
}

fn read_column(h5: &H5ad, group: &hdf5::Group, path: &str, name: &str) -> Result<Column> {
    let loc = format!("{path}/{name}");
    if let Ok(ds) = group.dataset(name) {
        return read_array(h5, &loc, &ds);
    }
    let sub = group
        .group(name)
        .map_err(|_| h5.error(&loc, "column is missing"))?;
    let encoding = string_attr(&sub, "encoding-type")
        .map_err(|e| h5.error(&format!("{loc}@encoding-type"), format!("attribute {e}")))?
        .unwrap_or_default();
    let member = |m: &str| {
        sub.dataset(m)
            .map_err(|_| h5.error(&format!("{loc}/{m}"), "missing"))
    };
    match encoding.as_str() {
        "categorical" => {
            let categories = stringify(read_array(
                h5,
                &format!("{loc}/categories"),
                &member("categories")?,
            )?);
            let codes_ds = member("codes")?;
            check_size(h5, &format!("{loc}/codes"), &codes_ds)?;
            let codes = codes_ds
                .read_raw::<i64>()
                .map_err(|e| h5.error(&format!("{loc}/codes"), e.to_string()))?;
            codes
                .into_iter()
                .map(|c| match c {
                    c if c < 0 => Ok(None),
                    c => categories
                        .get(c as usize)
                        .cloned()
                        .map(Some)
                        .ok_or_else(|| {
                            h5.error(&format!("{loc}/codes"), format!("code {c} has no category"))
                        }),
                })
                .collect::<Result<Vec<_>>>()
                .map(Column::Str)
        }
        "nullable-integer" | "nullable-boolean" | "nullable-string-array" => {
            let values = read_array(h5, &format!("{loc}/values"), &member("values")?)?;
            let mask_ds = member("mask")?;
            check_size(h5, &format!("{loc}/mask"), &mask_ds)?;
            let mask = mask_ds
                .read_raw::<u8>()
                .map_err(|e| h5.error(&format!("{loc}/mask"), e.to_string()))?;
            if mask.len() != values.len() {
                return Err(h5.error(&loc, "mask and values differ in length"));
            }
            Ok(apply_mask(values, &mask))
        }
        other => Err(h5.error(&loc, format!("unsupported column encoding '{other}'"))),
    }
}

fn apply_mask(values: Column, mask: &[u8]) -> Column {
    fn m<T>(v: Vec<Option<T>>, mask: &[u8]) -> Vec<Option<T>> {
        v.into_iter()
            .zip(mask)
            .map(|(x, &k)| if k != 0 { None } else { x })
            .collect()
    }
    match values {
        Column::Str(v) => Column::Str(m(v, mask)),
        Column::Int(v) => Column::Int(m(v, mask)),
        Column::UInt(v) => Column::UInt(m(v, mask)),
        Column::Float(v) => Column::Float(m(v, mask)),
        Column::Bool(v) => Column::Bool(m(v, mask)),
    }
}

/// Dataframes describe genes or cells: a column beyond this is a corrupt size, not data (and
/// reading it whole would exhaust memory).
const MAX_FRAME_ELEMENTS: usize = 1 << 28;

fn check_size(h5: &H5ad, loc: &str, ds: &hdf5::Dataset) -> Result<()> {
    if let Some(u) = super::unbacked(ds) {
        return Err(h5.error(loc, u.to_string()));
    }
    if ds.size() > MAX_FRAME_ELEMENTS {
        return Err(h5.error(
            loc,
            format!(
                "implausibly large dataframe column ({} elements)",
                ds.size()
            ),
        ));
    }
    Ok(())
}

fn read_array(h5: &H5ad, loc: &str, ds: &hdf5::Dataset) -> Result<Column> {
    let fail = |e: hdf5::Error| h5.error(loc, format!("read failed: {e}"));
    check_size(h5, loc, ds)?;
    if ds.ndim() > 1 {
        return Err(h5.error(
            loc,
            format!("expected a 1-D column, found shape {:?}", ds.shape()),
        ));
    }
    let desc = ds.dtype().and_then(|t| t.to_descriptor()).map_err(fail)?;
    Ok(match desc {
        d if is_string_type(&d) => Column::Str(some_all(
            read_strings(ds).map_err(|e| h5.error(loc, e.to_string()))?,
        )),
        TypeDescriptor::Integer(_) => Column::Int(some_all(ds.read_raw::<i64>().map_err(fail)?)),
        TypeDescriptor::Unsigned(_) => Column::UInt(some_all(ds.read_raw::<u64>().map_err(fail)?)),
        TypeDescriptor::Float(_) => Column::Float(some_all(ds.read_raw::<f64>().map_err(fail)?)),
        TypeDescriptor::Boolean => Column::Bool(some_all(ds.read_raw::<bool>().map_err(fail)?)),
        other => return Err(h5.error(loc, format!("unsupported column type {other:?}"))),
    })
}

/// Files written before anndata 0.7 store a dataframe as one compound dataset with an `index`
/// field. We read the index (the gene ids); the other fields are not carried over.
fn read_compound(h5: &H5ad, path: &str, ds: &hdf5::Dataset) -> Result<DataFrame> {
    let desc = ds
        .dtype()
        .and_then(|t| t.to_descriptor())
        .map_err(|e| h5.error(path, e.to_string()))?;
    check_size(h5, path, ds)?;
    let TypeDescriptor::Compound(compound) = desc else {
        return Err(h5.error(path, "dataframe dataset is not a compound (legacy) table"));
    };
    let index_field = compound
        .fields
        .iter()
        .find(|f| f.name == "index")
        .ok_or_else(|| h5.error(path, "legacy dataframe has no 'index' field"))?;
    let index = match index_field.ty {
        TypeDescriptor::VarLenUnicode | TypeDescriptor::VarLenAscii => {
            #[derive(hdf5::H5Type, Clone)]
            #[repr(C)]
            struct VarIndex {
                index: VarLenUnicode,
            }
            let rows = ds
                .read_raw::<VarIndex>()
                .map_err(|e| h5.error(path, format!("cannot read index: {e}")))?;
            checked_utf8(rows.iter().map(|r| r.index.as_bytes()))
                .map_err(|e| h5.error(&format!("{path}/index"), e.to_string()))?
        }
        _ => {
            #[derive(hdf5::H5Type, Clone)]
            #[repr(C)]
            struct FixedIndex {
                index: FixedAscii<1024>,
            }
            let rows = ds
                .read_raw::<FixedIndex>()
                .map_err(|e| h5.error(path, format!("cannot read index: {e}")))?;
            checked_utf8(rows.iter().map(|r| r.index.as_bytes()))
                .map_err(|e| h5.error(&format!("{path}/index"), e.to_string()))?
        }
    };
    Ok(DataFrame {
        index_name: "index".into(),
        index,
        columns: Vec::new(),
    })
}

fn some_all<T>(v: Vec<T>) -> Vec<Option<T>> {
    v.into_iter().map(Some).collect()
}
