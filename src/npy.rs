//! The numpy `.npy` format (version 1.0): headers for the small index files of the feature
//! index (`cumulative_sum_index.npy`, `labels.npy`, `version.npy`) and for the row files the
//! mount serves; and a reader for the same small arrays, never for pickled objects.
//!
//! Note that SCDL's `data.npy`, `col_ptr.npy` and `row_ptr.npy` are *not* .npy files: they are
//! raw little-endian arrays without a header, despite the name.

use std::fmt::Write as _;

const MAGIC: &[u8] = b"\x93NUMPY";

/// The complete header (magic, version, length, dict, padding) for a C-order array.
/// `descr` is a numpy array-protocol string (`<f4`, `<U12`); `shape` may be empty (0-d).
pub fn header(descr: &str, shape: &[u64]) -> Vec<u8> {
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (");
    for (i, d) in shape.iter().enumerate() {
        if i > 0 {
            dict.push_str(", ");
        }
        let _ = write!(dict, "{d}");
    }
    if shape.len() == 1 {
        dict.push(',');
    }
    dict.push_str("), }");
    // Total length (magic 6 + version 2 + len 2 + dict + newline) is padded to a multiple of 64
    // so that the data that follows is aligned, as numpy itself does.
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    let padding = (64 - unpadded % 64) % 64;
    dict.push_str(&" ".repeat(padding));
    dict.push('\n');
    let mut out = Vec::with_capacity(unpadded + padding);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// A whole .npy file holding a 1-D int64 array.
pub fn int64_array(values: &[i64]) -> Vec<u8> {
    let mut out = header("<i8", &[values.len() as u64]);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// A whole .npy file holding a unicode array (`<U{n}`, UTF-32LE, zero padded), 1-D or, with
/// `shape` empty, a 0-d scalar (then `values` must hold exactly one string).
pub fn unicode_array(values: &[String], shape: &[u64]) -> Vec<u8> {
    let width = values
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut out = header(&format!("<U{width}"), shape);
    for s in values {
        let mut n = 0;
        for c in s.chars() {
            out.extend_from_slice(&(c as u32).to_le_bytes());
            n += 1;
        }
        out.resize(out.len() + 4 * (width - n), 0);
    }
    out
}

/// A parsed .npy array of the kinds the feature index uses.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyArray {
    Int64(Vec<i64>),
    Unicode(Vec<String>),
}

/// Parses the header: returns (descr, shape, offset of the data).
pub fn parse_header(bytes: &[u8]) -> Result<(String, Vec<u64>, usize), String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (bad magic)".into());
    }
    let (len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated .npy header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let end = start
        .checked_add(len)
        .filter(|&e| e <= bytes.len())
        .ok_or("truncated .npy header")?;
    let dict = std::str::from_utf8(&bytes[start..end]).map_err(|_| "non-UTF-8 .npy header")?;
    let descr = dict_value(dict, "descr")
        .ok_or("no 'descr' in .npy header")?
        .trim_matches(|c| c == '\'' || c == '"')
        .to_string();
    if dict_value(dict, "fortran_order").map(str::trim) == Some("True") {
        return Err("Fortran-order .npy arrays are not supported".into());
    }
    let shape_text = dict_value(dict, "shape").ok_or("no 'shape' in .npy header")?;
    let shape = shape_text
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| format!("bad .npy shape {shape_text}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((descr, shape, end))
}

/// The text after `'key':` up to the next top-level comma (shapes keep their parentheses).
fn dict_value<'a>(dict: &'a str, key: &str) -> Option<&'a str> {
    let at = dict.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = dict[at..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&rest[..=i]);
                }
            }
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

/// Reads a 1-D (or 0-d) int64 or unicode array.
pub fn read_array(bytes: &[u8]) -> Result<NpyArray, String> {
    let (descr, shape, offset) = parse_header(bytes)?;
    // The shape comes from the file: its product (and the byte sizes below) may overflow, and
    // nothing is allocated before the data is known to be there.
    let count = shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("bad .npy shape {shape:?}: too many elements"))?;
    let body = &bytes[offset..];
    let fits = |item: usize| count.checked_mul(item).is_some_and(|n| n <= body.len());
    match descr.as_str() {
        "<i8" | "|i8" => {
            if !fits(8) {
                return Err("truncated int64 .npy data".into());
            }
            Ok(NpyArray::Int64(
                body.chunks_exact(8)
                    .take(count)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("chunk of 8")))
                    .collect(),
            ))
        }
        d if d.starts_with("<U") => {
            // Zero-width strings would let a tiny file claim any number of elements.
            let width: usize = d[2..]
                .parse()
                .ok()
                .filter(|&w| w > 0)
                .ok_or_else(|| format!("bad descr {d}"))?;
            if !width.checked_mul(4).is_some_and(fits) {
                return Err("truncated unicode .npy data".into());
            }
            let mut out = Vec::with_capacity(count);
            for i in 0..count {
                let cell = &body[i * width * 4..(i + 1) * width * 4];
                let s: String = cell
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().expect("chunk of 4")))
                    .take_while(|&c| c != 0)
                    .map(|c| char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER))
                    .collect();
                out.push(s);
            }
            Ok(NpyArray::Unicode(out))
        }
        d => Err(format!(
            "unsupported .npy dtype {d} (pickled objects are never loaded)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_parses_back() {
        for shape in [vec![], vec![0], vec![7], vec![3, 20000]] {
            let h = header("<f4", &shape);
            assert_eq!(h.len() % 64, 0);
            assert_eq!(*h.last().unwrap(), b'\n');
            let (descr, parsed, off) = parse_header(&h).unwrap();
            assert_eq!(descr, "<f4");
            assert_eq!(parsed, shape);
            assert_eq!(off, h.len());
        }
    }

    #[test]
    fn arrays_round_trip() {
        let f = int64_array(&[-1, 200, 350]);
        assert_eq!(read_array(&f).unwrap(), NpyArray::Int64(vec![-1, 200, 350]));
        let labels = vec!["a.h5ad".to_string(), "ü/b".to_string()];
        let f = unicode_array(&labels, &[2]);
        assert_eq!(read_array(&f).unwrap(), NpyArray::Unicode(labels));
        let f = unicode_array(&["0.1.3".to_string()], &[]);
        assert_eq!(
            read_array(&f).unwrap(),
            NpyArray::Unicode(vec!["0.1.3".to_string()])
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(read_array(b"hello").is_err());
        // Found by fuzzing: a header alone claiming 10^12 empty strings, or a shape whose
        // element count overflows, must be refused without allocating.
        let huge = |descr: &str, shape: &[u64]| header(descr, shape);
        assert!(read_array(&huge("<U0", &[1_000_000_000_000])).is_err());
        assert!(read_array(&huge("<i8", &[1 << 32, 1 << 32])).is_err());
        assert!(read_array(&huge("<i8", &[1 << 61])).is_err());
        assert!(read_array(&huge("<U4611686018427387904", &[4])).is_err());
        let mut f = int64_array(&[1, 2, 3]);
        f.truncate(f.len() - 4);
        assert!(read_array(&f).is_err());
    }
}
