//! `--data-dtype auto`: the smallest archive data type that stores every value of a matrix
//! exactly, found in one pass over the values in bounded memory (a block at a time).
//!
//! The candidates are the types an SCDL archive may hold (bionemo-scdl has no signed integer
//! types), smallest first and, at equal size, the integer type first (counts stay integers):
//! uint8, uint16, float16, uint32, float32, uint64, float64. A block that fits a candidate
//! also fits every candidate that holds all of its values (uint8 values fit every type), so
//! those are not checked again for that block: counts that fit uint8 cost one check per value.

use crate::dtype::{Dtype, Element};
use crate::with_element_type;

/// The candidates in order of preference.
const CANDIDATES: [Dtype; 7] = [
    Dtype::U8,
    Dtype::U16,
    Dtype::F16,
    Dtype::U32,
    Dtype::F32,
    Dtype::U64,
    Dtype::F64,
];

/// The candidates that hold every value `d` holds (besides `d` itself).
fn wider_than(d: Dtype) -> &'static [Dtype] {
    match d {
        // Every candidate holds every uint8 value.
        Dtype::U8 => &CANDIDATES[1..],
        Dtype::U16 => &[Dtype::U32, Dtype::F32, Dtype::U64, Dtype::F64],
        Dtype::F16 => &[Dtype::F32, Dtype::F64],
        Dtype::U32 => &[Dtype::U64, Dtype::F64],
        Dtype::F32 => &[Dtype::F64],
        _ => &[],
    }
}

fn slot(d: Dtype) -> usize {
    CANDIDATES
        .iter()
        .position(|c| *c == d)
        .expect("a candidate")
}

/// Whether every value of `vals` converts to `T` and back unchanged (NaN stays NaN).
fn all_exact<S: Element, T: Element>(vals: &[S]) -> bool {
    S::DTYPE == T::DTYPE
        || vals
            .iter()
            .all(|v| v.exact().same_as(v.cast::<T>().exact()))
}

/// Which candidates still hold every value seen so far.
#[derive(Clone, Debug)]
pub struct ExactFit {
    possible: [bool; CANDIDATES.len()],
}

impl Default for ExactFit {
    fn default() -> Self {
        ExactFit {
            possible: [true; CANDIDATES.len()],
        }
    }
}

impl ExactFit {
    /// Takes a block of values into account.
    pub fn observe<S: Element>(&mut self, vals: &[S]) {
        let mut proven = [false; CANDIDATES.len()];
        for (i, &c) in CANDIDATES.iter().enumerate() {
            if !self.possible[i] || proven[i] {
                continue;
            }
            if with_element_type!(c, T => all_exact::<S, T>(vals)) {
                for &w in wider_than(c) {
                    proven[slot(w)] = true;
                }
            } else {
                self.possible[i] = false;
            }
        }
    }

    /// The smallest candidate holding every value seen (uint8 when none was), or None when no
    /// archive type holds them all (negative integers beyond float64's 2^53).
    pub fn smallest(&self) -> Option<Dtype> {
        CANDIDATES
            .iter()
            .zip(self.possible)
            .find(|(_, possible)| *possible)
            .map(|(d, _)| *d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    fn fit<S: Element>(blocks: &[&[S]]) -> Option<Dtype> {
        let mut f = ExactFit::default();
        for b in blocks {
            f.observe(b);
        }
        f.smallest()
    }

    #[test]
    fn integer_counts_in_floats_become_the_smallest_unsigned_type() {
        assert_eq!(fit::<f32>(&[&[0.0, 1.0, 49.0, 255.0]]), Some(Dtype::U8));
        assert_eq!(fit::<f32>(&[&[1.0], &[256.0]]), Some(Dtype::U16));
        assert_eq!(fit::<f64>(&[&[65_536.0]]), Some(Dtype::U32));
        assert_eq!(fit::<u64>(&[&[u64::MAX]]), Some(Dtype::U64));
    }

    #[test]
    fn a_later_block_can_rule_out_what_an_earlier_one_proved() {
        // Block 1 fits uint8 (so everything wider is proven for it); block 2 is fractional.
        assert_eq!(fit::<f64>(&[&[3.0], &[0.5]]), Some(Dtype::F16));
        assert_eq!(fit::<f64>(&[&[3.0], &[0.1]]), Some(Dtype::F64));
        assert_eq!(fit::<f64>(&[&[0.1f32 as f64]]), Some(Dtype::F32));
    }

    #[test]
    fn signs_nan_and_infinity_need_floats() {
        assert_eq!(fit::<i32>(&[&[-3, 2000]]), Some(Dtype::F16));
        assert_eq!(fit::<i32>(&[&[-3, 2049]]), Some(Dtype::F32));
        assert_eq!(fit::<f32>(&[&[f32::NAN, 1.0]]), Some(Dtype::F16));
        assert_eq!(fit::<f32>(&[&[f32::INFINITY, 1e6]]), Some(Dtype::F32));
        assert_eq!(fit::<f16>(&[&[f16::from_f32(0.25)]]), Some(Dtype::F16));
        assert_eq!(fit::<i64>(&[&[-(1 << 60) - 1]]), None);
    }

    #[test]
    fn no_values_fit_the_smallest_type() {
        assert_eq!(fit::<f32>(&[]), Some(Dtype::U8));
    }
}
