//! Element types: the numeric dtypes an h5ad matrix may hold, the dtypes an SCDL archive may
//! store, and the exact (value-preserving) conversion between them.
//!
//! Every conversion is checked: a value that would change (70000 into uint16, 0.1 into an
//! integer, 0.1 float64 into float32) is reported unless the caller allows lossy conversion.

use std::fmt;
use std::str::FromStr;

use half::f16;

#[cfg(not(target_endian = "little"))]
compile_error!(
    "scdl-fs writes SCDL arrays by casting memory to bytes; it supports little-endian targets only"
);

/// A numeric element type, named as numpy names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F16,
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
}

impl Dtype {
    pub const ALL: [Dtype; 11] = [
        Dtype::F16,
        Dtype::F32,
        Dtype::F64,
        Dtype::I8,
        Dtype::I16,
        Dtype::I32,
        Dtype::I64,
        Dtype::U8,
        Dtype::U16,
        Dtype::U32,
        Dtype::U64,
    ];

    /// The numpy name (`float32`, `uint16`, ...), as written in dtypes.json.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F16 => "float16",
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
            Dtype::I8 => "int8",
            Dtype::I16 => "int16",
            Dtype::I32 => "int32",
            Dtype::I64 => "int64",
            Dtype::U8 => "uint8",
            Dtype::U16 => "uint16",
            Dtype::U32 => "uint32",
            Dtype::U64 => "uint64",
        }
    }

    /// The numpy array-protocol string (`<f4`, `|u1`, ...), as used in .npy headers.
    pub fn descr(self) -> &'static str {
        match self {
            Dtype::F16 => "<f2",
            Dtype::F32 => "<f4",
            Dtype::F64 => "<f8",
            Dtype::I8 => "|i1",
            Dtype::I16 => "<i2",
            Dtype::I32 => "<i4",
            Dtype::I64 => "<i8",
            Dtype::U8 => "|u1",
            Dtype::U16 => "<u2",
            Dtype::U32 => "<u4",
            Dtype::U64 => "<u8",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::I8 | Dtype::U8 => 1,
            Dtype::F16 | Dtype::I16 | Dtype::U16 => 2,
            Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::F32 | Dtype::F64)
    }

    pub fn is_signed_int(self) -> bool {
        matches!(self, Dtype::I8 | Dtype::I16 | Dtype::I32 | Dtype::I64)
    }

    /// Whether SCDL archives may store data of this type. bionemo-scdl 0.1.3's header has no
    /// signed integer types, so archives hold only floats and unsigned integers.
    pub fn is_archive_data_type(self) -> bool {
        !self.is_signed_int()
    }

    /// The unsigned type of the same width (identity for floats and unsigned types).
    pub fn unsigned_counterpart(self) -> Dtype {
        match self {
            Dtype::I8 => Dtype::U8,
            Dtype::I16 => Dtype::U16,
            Dtype::I32 => Dtype::U32,
            Dtype::I64 => Dtype::U64,
            other => other,
        }
    }

    /// Parses a numpy dtype name or array-protocol string (`float32`, `<f4`, `f4`, `uint8`).
    pub fn from_numpy(s: &str) -> Option<Dtype> {
        let s = s.trim();
        if let Some(d) = Dtype::ALL.iter().find(|d| d.name() == s) {
            return Some(*d);
        }
        let code = s.trim_start_matches(['<', '|', '=']);
        Dtype::ALL
            .iter()
            .find(|d| d.descr().trim_start_matches(['<', '|']) == code)
            .copied()
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dtype::from_numpy(s).ok_or_else(|| format!("unknown dtype '{s}'"))
    }
}

/// A value compared across types without rounding: integers as i128, floats as f64 (which
/// holds every f16 and f32 exactly).
#[derive(Clone, Copy, Debug)]
pub enum Exact {
    Int(i128),
    Float(f64),
}

impl Exact {
    /// True when both denote the same number (NaN equals NaN: NaN is data, kept as NaN).
    pub fn same_as(self, other: Exact) -> bool {
        match (self, other) {
            (Exact::Int(a), Exact::Int(b)) => a == b,
            (Exact::Float(a), Exact::Float(b)) => a == b || (a.is_nan() && b.is_nan()),
            (Exact::Int(i), Exact::Float(f)) | (Exact::Float(f), Exact::Int(i)) => {
                const TWO_63: f64 = 9_223_372_036_854_775_808.0;
                if (-TWO_63..TWO_63).contains(&f) {
                    if let Ok(i) = i64::try_from(i) {
                        // Both casts are exact where it matters and compile to single
                        // instructions (the i128 ones below are library calls, the cost of
                        // every checked float <-> integer conversion): `f as i64` truncates, so
                        // it equals `i` only if `i` is f's integer part, and `i as f64` then
                        // equals `f` only if `f` has no fractional part.
                        return f as i64 == i && i as f64 == f;
                    }
                }
                // 2^127 bounds every integer type we handle, so the cast below is exact
                // whenever the comparison can succeed.
                f.is_finite() && f.fract() == 0.0 && f.abs() < 1.7e38 && f as i128 == i
            }
        }
    }
}

/// A numeric element of an h5ad matrix or an SCDL archive.
pub trait Element:
    Copy + Send + Sync + 'static + bytemuck::Pod + hdf5::H5Type + PartialEq + fmt::Display
{
    const DTYPE: Dtype;
    fn exact(self) -> Exact;
    fn is_zero(self) -> bool;
    /// Converts with Rust `as` semantics (saturating, rounding to nearest).
    fn cast<T: Element>(self) -> T;
    fn from_f64(v: f64) -> Self;
    fn from_i128(v: i128) -> Self;
}

macro_rules! int_element {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DTYPE: Dtype = $d;
            #[inline]
            fn exact(self) -> Exact {
                Exact::Int(self as i128)
            }
            #[inline]
            fn is_zero(self) -> bool {
                self == 0
            }
            #[inline]
            fn cast<T: Element>(self) -> T {
                T::from_i128(self as i128)
            }
            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline]
            fn from_i128(v: i128) -> Self {
                v.clamp(<$t>::MIN as i128, <$t>::MAX as i128) as $t
            }
        }
    };
}

macro_rules! float_element {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DTYPE: Dtype = $d;
            #[inline]
            fn exact(self) -> Exact {
                Exact::Float(self as f64)
            }
            #[inline]
            fn is_zero(self) -> bool {
                self == 0.0
            }
            #[inline]
            fn cast<T: Element>(self) -> T {
                T::from_f64(self as f64)
            }
            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline]
            fn from_i128(v: i128) -> Self {
                v as $t
            }
        }
    };
}

int_element!(i8, Dtype::I8);
int_element!(i16, Dtype::I16);
int_element!(i32, Dtype::I32);
int_element!(i64, Dtype::I64);
int_element!(u8, Dtype::U8);
int_element!(u16, Dtype::U16);
int_element!(u32, Dtype::U32);
int_element!(u64, Dtype::U64);
float_element!(f32, Dtype::F32);
float_element!(f64, Dtype::F64);

impl Element for f16 {
    const DTYPE: Dtype = Dtype::F16;
    #[inline]
    fn exact(self) -> Exact {
        Exact::Float(self.to_f64())
    }
    #[inline]
    fn is_zero(self) -> bool {
        self.to_f64() == 0.0
    }
    #[inline]
    fn cast<T: Element>(self) -> T {
        T::from_f64(self.to_f64())
    }
    #[inline]
    fn from_f64(v: f64) -> Self {
        f16::from_f64(v)
    }
    #[inline]
    fn from_i128(v: i128) -> Self {
        f16::from_f64(v as f64)
    }
}

/// Converts `src` into `dst` (appending). Returns the index of the first value that the
/// conversion would change, unless `allow_lossy`; nothing past that value is appended.
pub fn convert_into<S: Element, T: Element>(
    src: &[S],
    dst: &mut Vec<T>,
    allow_lossy: bool,
) -> Result<(), usize> {
    dst.reserve(src.len());
    if S::DTYPE == T::DTYPE {
        // Same type: a plain copy (bytemuck proves the layouts are identical).
        dst.extend_from_slice(bytemuck::cast_slice(src));
        return Ok(());
    }
    if allow_lossy {
        dst.extend(src.iter().map(|v| v.cast::<T>()));
        return Ok(());
    }
    for (i, v) in src.iter().enumerate() {
        let t: T = v.cast();
        if !v.exact().same_as(t.exact()) {
            return Err(i);
        }
        dst.push(t);
    }
    Ok(())
}

/// The smallest archive type that holds both `a` and `b` (for `keep` over several files).
pub fn promote(a: Dtype, b: Dtype) -> Dtype {
    let (a, b) = (a.unsigned_counterpart(), b.unsigned_counterpart());
    let size = a.size().max(b.size());
    match (a.is_float(), b.is_float()) {
        (false, false) => {
            [Dtype::U8, Dtype::U16, Dtype::U32, Dtype::U64][size.trailing_zeros() as usize]
        }
        (true, true) => [Dtype::F16, Dtype::F32, Dtype::F64][size.trailing_zeros() as usize - 1],
        _ => {
            let (f, i) = if a.is_float() { (a, b) } else { (b, a) };
            // A float wide enough for every value of the integer type where possible.
            if i.size() >= 4 || f == Dtype::F64 {
                Dtype::F64
            } else {
                Dtype::F32
            }
        }
    }
}

/// Calls `$body` with the type alias `$T` bound to the Rust type of `$dtype`.
#[macro_export]
macro_rules! with_element_type {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::dtype::Dtype::F16 => {
                type $T = half::f16;
                $body
            }
            $crate::dtype::Dtype::F32 => {
                type $T = f32;
                $body
            }
            $crate::dtype::Dtype::F64 => {
                type $T = f64;
                $body
            }
            $crate::dtype::Dtype::I8 => {
                type $T = i8;
                $body
            }
            $crate::dtype::Dtype::I16 => {
                type $T = i16;
                $body
            }
            $crate::dtype::Dtype::I32 => {
                type $T = i32;
                $body
            }
            $crate::dtype::Dtype::I64 => {
                type $T = i64;
                $body
            }
            $crate::dtype::Dtype::U8 => {
                type $T = u8;
                $body
            }
            $crate::dtype::Dtype::U16 => {
                type $T = u16;
                $body
            }
            $crate::dtype::Dtype::U32 => {
                type $T = u32;
                $body
            }
            $crate::dtype::Dtype::U64 => {
                type $T = u64;
                $body
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv<S: Element, T: Element>(v: S) -> Result<T, usize> {
        let mut out: Vec<T> = Vec::new();
        convert_into(&[v], &mut out, false).map(|_| out[0])
    }

    #[test]
    fn exact_conversions_pass() {
        assert_eq!(conv::<f64, f32>(3.0).unwrap(), 3.0f32);
        assert_eq!(conv::<i32, u16>(65535).unwrap(), 65535u16);
        assert_eq!(conv::<f32, u8>(255.0).unwrap(), 255u8);
        assert_eq!(conv::<u64, f64>(1 << 53).unwrap(), (1u64 << 53) as f64);
        assert!(conv::<f64, f32>(f64::NAN).unwrap().is_nan());
        assert_eq!(conv::<f64, f16>(f64::INFINITY).unwrap(), f16::INFINITY);
        assert_eq!(conv::<f32, f16>(0.5).unwrap(), f16::from_f32(0.5));
    }

    #[test]
    fn changing_conversions_fail() {
        assert!(conv::<i32, u16>(70000).is_err());
        assert!(conv::<f64, u8>(0.1).is_err());
        assert!(conv::<f64, f32>(0.1).is_err());
        assert!(conv::<i8, u8>(-1).is_err());
        assert!(conv::<f32, u32>(f32::NAN).is_err());
        assert!(conv::<u64, f64>((1 << 53) + 1).is_err());
        // u64::MAX rounds to 2^64 in f32, which `as` saturates back to u64::MAX: still lossy.
        assert!(conv::<u64, f32>(u64::MAX).is_err());
        assert!(conv::<f64, f16>(70000.0).is_err());
    }

    #[test]
    fn integer_float_comparison_agrees_with_the_i128_one() {
        let reference = |i: i128, f: f64| {
            f.is_finite() && f.fract() == 0.0 && f.abs() < 1.7e38 && f as i128 == i
        };
        let two53 = (1u64 << 53) as f64;
        let floats = [
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.0,
            255.0,
            256.0,
            -1.0,
            two53,
            two53 + 2.0,
            -two53,
            9_223_372_036_854_775_808.0,
            -9_223_372_036_854_775_808.0,
            18_446_744_073_709_551_616.0,
            4_294_967_296.0,
            1e30,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ];
        let ints: Vec<i128> = [
            0i128,
            1,
            -1,
            255,
            256,
            1 << 53,
            (1 << 53) + 1,
            i64::MAX as i128,
            i64::MIN as i128,
            u64::MAX as i128,
            1 << 63,
            4_294_967_296,
        ]
        .into_iter()
        .chain(floats.iter().filter(|f| f.is_finite()).map(|&f| f as i128))
        .collect();
        for &f in &floats {
            for &i in &ints {
                assert_eq!(
                    Exact::Int(i).same_as(Exact::Float(f)),
                    reference(i, f),
                    "{i} vs {f}"
                );
            }
        }
    }

    #[test]
    fn first_offending_index_is_reported() {
        let mut out: Vec<u8> = Vec::new();
        assert_eq!(convert_into(&[1i32, 2, 300, 4], &mut out, false), Err(2));
        let mut out: Vec<u8> = Vec::new();
        assert_eq!(convert_into(&[1i32, 2, 300, 4], &mut out, true), Ok(()));
        assert_eq!(out, vec![1, 2, 255, 4]);
    }

    #[test]
    fn parses_numpy_names() {
        assert_eq!(Dtype::from_numpy("float32"), Some(Dtype::F32));
        assert_eq!(Dtype::from_numpy("<f4"), Some(Dtype::F32));
        assert_eq!(Dtype::from_numpy("|u1"), Some(Dtype::U8));
        assert_eq!(Dtype::from_numpy("u8"), Some(Dtype::U64));
        assert_eq!(Dtype::from_numpy("complex64"), None);
    }
}
