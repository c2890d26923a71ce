//! The element types of `col_ptr.npy` and `row_ptr.npy`: decided once, from the shape of what
//! will be written (number of values, number of columns), before the first byte is written.
//!
//! By default each is the smallest unsigned type that holds every entry, the rule bionemo-scdl
//! 0.1.3 applies (`smallest_uint_dtype`): column indices need `columns - 1`, row offsets need
//! the number of values. `IndexDtypes::Wide` keeps uint32/uint64 for readers that assume them.

use crate::dtype::Dtype;

/// How wide the index arrays are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IndexDtypes {
    /// The smallest unsigned type holding every entry.
    #[default]
    Narrow,
    /// uint32 column indices and uint64 row offsets, whatever the shape.
    Wide,
}

impl std::str::FromStr for IndexDtypes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "narrow" => Ok(IndexDtypes::Narrow),
            "wide" => Ok(IndexDtypes::Wide),
            _ => Err(format!(
                "unsupported index dtypes '{s}': expected narrow or wide"
            )),
        }
    }
}

impl IndexDtypes {
    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            IndexDtypes::Narrow => "narrow",
            IndexDtypes::Wide => "wide",
        }
    }
}

/// The element types of the two index arrays of one archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexWidths {
    pub col_ptr: Dtype,
    pub row_ptr: Dtype,
}

impl IndexWidths {
    /// bionemo-scdl 0.0.5's layout: uint32 columns, uint64 row offsets.
    pub const WIDE: IndexWidths = IndexWidths {
        col_ptr: Dtype::U32,
        row_ptr: Dtype::U64,
    };

    /// The widths for an archive of at most `values` stored values over at most `columns`
    /// columns (the widest feature block).
    pub fn for_shape(choice: IndexDtypes, values: u64, columns: u64) -> IndexWidths {
        match choice {
            IndexDtypes::Wide => IndexWidths::WIDE,
            IndexDtypes::Narrow => IndexWidths {
                col_ptr: smallest_unsigned(columns.saturating_sub(1)),
                row_ptr: smallest_unsigned(values),
            },
        }
    }

    /// Bytes of data.npy, col_ptr.npy and row_ptr.npy for `rows` rows and `values` values of
    /// `data` (for a free-space estimate; the feature index comes on top).
    pub fn array_bytes(&self, rows: u64, values: u64, data: Dtype) -> u64 {
        let per_value = (data.size() + self.col_ptr.size()) as u64;
        values.saturating_mul(per_value).saturating_add(
            rows.saturating_add(1)
                .saturating_mul(self.row_ptr.size() as u64),
        )
    }
}

/// The smallest unsigned type that holds `max`.
pub fn smallest_unsigned(max: u64) -> Dtype {
    if max <= u8::MAX as u64 {
        Dtype::U8
    } else if max <= u16::MAX as u64 {
        Dtype::U16
    } else if max <= u32::MAX as u64 {
        Dtype::U32
    } else {
        Dtype::U64
    }
}

/// The largest value an unsigned `dtype` holds.
pub fn unsigned_max(dtype: Dtype) -> u64 {
    match dtype {
        Dtype::U8 => u8::MAX as u64,
        Dtype::U16 => u16::MAX as u64,
        Dtype::U32 => u32::MAX as u64,
        _ => u64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smallest_type_at_each_boundary() {
        assert_eq!(smallest_unsigned(0), Dtype::U8);
        assert_eq!(smallest_unsigned(255), Dtype::U8);
        assert_eq!(smallest_unsigned(256), Dtype::U16);
        assert_eq!(smallest_unsigned(65_535), Dtype::U16);
        assert_eq!(smallest_unsigned(65_536), Dtype::U32);
        assert_eq!(smallest_unsigned(u32::MAX as u64), Dtype::U32);
        assert_eq!(smallest_unsigned(u32::MAX as u64 + 1), Dtype::U64);
    }

    #[test]
    fn columns_need_the_largest_index_values_need_the_count() {
        // 65,536 genes: indices 0..=65,535 fit uint16 (bionemo's num_cols - 1).
        let w = IndexWidths::for_shape(IndexDtypes::Narrow, 256, 65_536);
        assert_eq!((w.col_ptr, w.row_ptr), (Dtype::U16, Dtype::U16));
        let w = IndexWidths::for_shape(IndexDtypes::Narrow, 255, 0);
        assert_eq!((w.col_ptr, w.row_ptr), (Dtype::U8, Dtype::U8));
        let w = IndexWidths::for_shape(IndexDtypes::Wide, 3, 3);
        assert_eq!(w, IndexWidths::WIDE);
    }

    #[test]
    fn array_bytes_of_the_benchmark_shape() {
        let w = IndexWidths::for_shape(IndexDtypes::Narrow, 95_987_584, 20_000);
        assert_eq!((w.col_ptr, w.row_ptr), (Dtype::U16, Dtype::U32));
        assert_eq!(
            w.array_bytes(200_000, 95_987_584, Dtype::F32),
            95_987_584 * 6 + 200_001 * 4
        );
    }
}
