//! The order of an epoch, computed without state: which global rows batch K of (plan, epoch,
//! rank) holds, in O(size) time and with no memory that grows with the dataset.
//!
//! The algorithm is specified in docs/SEMANTICS.md ("The epoch permutation") so that anyone
//! can recompute it (tests/batches/order_oracle.py does, from that text alone):
//! - round keys: a SplitMix64 stream started at `seed XOR mix64(epoch)`, six outputs;
//! - a six-round balanced Feistel network on `2h`-bit numbers (the smallest `h >= 1` with
//!   `4^h >= n`), round function `mix64(right XOR key) AND (2^h - 1)`, made a permutation of
//!   `[0, n)` by cycle-walking;
//! - the permuted units are rows (`block=1`) or aligned full blocks of `block` rows; the rows of
//!   the short last block (if `block` does not divide the row count) open the epoch;
//! - global batch `j` is epoch positions `[j*size, (j+1)*size)`; rank `i` of `W` gets batches
//!   `j = k*W + i` for `k < floor(ceil(rows/size) / W)`.

use super::plan::Plan;

/// Number of Feistel rounds.
pub const ROUNDS: usize = 6;
/// SplitMix64's increment (2^64 / golden ratio).
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function (Steele, Lea and Flood 2014; the finaliser of
/// `java.util.SplittableRandom`): a bijection on u64 with strong avalanche.
pub fn mix64(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The SplitMix64 generator: add the gamma, then mix.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        mix64(self.0)
    }
}

/// A keyed bijection of `[0, n)`: a Feistel network over the smallest even-width power of two
/// holding `n`, cycle-walked back into `[0, n)`.
#[derive(Clone, Debug)]
pub struct Feistel {
    n: u64,
    half_bits: u32,
    keys: [u64; ROUNDS],
}

impl Feistel {
    /// The permutation of `[0, n)` for (seed, epoch).
    pub fn new(n: u64, seed: u64, epoch: u32) -> Feistel {
        let mut rng = SplitMix64(seed ^ mix64(epoch as u64));
        let keys = std::array::from_fn(|_| rng.next());
        let mut half_bits = 1;
        // 4^h >= n; h = 32 covers every u64.
        while half_bits < 32 && (1u64 << (2 * half_bits)) < n {
            half_bits += 1;
        }
        Feistel { n, half_bits, keys }
    }

    /// One pass of the network over `2h`-bit `x`.
    fn encrypt(&self, x: u64) -> u64 {
        let h = self.half_bits;
        let mask = (1u64 << h) - 1;
        let (mut left, mut right) = (x >> h, x & mask);
        for key in self.keys {
            let f = mix64(right ^ key) & mask;
            (left, right) = (right, left ^ f);
        }
        (left << h) | right
    }

    /// The image of `x < n`.
    pub fn permute(&self, x: u64) -> u64 {
        debug_assert!(x < self.n);
        let mut y = self.encrypt(x);
        // Cycle-walking: the network permutes [0, 4^h) and 4^h < 4n, so on average fewer than
        // four passes land back in [0, n).
        while y >= self.n {
            y = self.encrypt(y);
        }
        y
    }
}

/// A run of consecutive rows `[first, first + len)` in a batch, in batch order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub first: u64,
    pub len: u64,
}

/// One epoch of one plan over a dataset of `rows` rows.
#[derive(Clone, Debug)]
pub struct EpochOrder {
    rows: u64,
    size: u64,
    block: u64,
    ranks: u64,
    rank: u64,
    /// Rows of the short last block, which open the epoch.
    tail: u64,
    /// The permutation of the full blocks (of rows, when block = 1).
    blocks: Feistel,
}

impl EpochOrder {
    pub fn new(plan: &Plan, rows: u64, epoch: u32) -> EpochOrder {
        let full_blocks = rows / plan.block;
        EpochOrder {
            rows,
            size: plan.size,
            block: plan.block,
            ranks: plan.ranks,
            rank: plan.rank,
            tail: rows % plan.block,
            blocks: Feistel::new(full_blocks, plan.seed, epoch),
        }
    }

    /// Batches of the whole epoch, before the split among ranks: ceil(rows / size).
    pub fn global_batches(&self) -> u64 {
        self.rows.div_ceil(self.size)
    }

    /// Batches of this rank: every rank gets floor(global / ranks); the at most ranks - 1
    /// trailing global batches beyond are left out.
    pub fn batches(&self) -> u64 {
        self.global_batches() / self.ranks
    }

    /// The global batch number of this rank's batch `k`.
    pub fn global_batch(&self, k: u64) -> u64 {
        k * self.ranks + self.rank
    }

    /// The row at epoch position `p < rows`.
    pub fn row_at(&self, p: u64) -> u64 {
        if p < self.tail {
            return self.rows - self.tail + p;
        }
        let q = p - self.tail;
        self.blocks.permute(q / self.block) * self.block + q % self.block
    }

    /// The epoch positions of this rank's batch `k`, if it exists.
    fn positions(&self, k: u64) -> Option<std::ops::Range<u64>> {
        if k >= self.batches() {
            return None;
        }
        let start = self.global_batch(k) * self.size;
        Some(start..start + (self.rows - start).min(self.size))
    }

    /// The global row numbers of this rank's batch `k`, in batch order.
    pub fn batch_rows(&self, k: u64) -> Option<Vec<u64>> {
        let runs = self.batch_runs(k)?;
        Some(runs.iter().flat_map(|r| r.first..r.first + r.len).collect())
    }

    /// This rank's batch `k` as runs of consecutive rows, in batch order: one run per block
    /// touched (a block split by the short tail's rows aside), one per row when block = 1 and
    /// the permutation happens to place no two consecutive rows next to each other.
    pub fn batch_runs(&self, k: u64) -> Option<Vec<Run>> {
        let positions = self.positions(k)?;
        let mut runs: Vec<Run> = Vec::new();
        let mut p = positions.start;
        while p < positions.end {
            // The rows from p to the end of its block (or of the tail) are consecutive.
            let segment_end = if p < self.tail {
                self.tail
            } else {
                let q = p - self.tail;
                p + (self.block - q % self.block)
            }
            .min(positions.end);
            let first = self.row_at(p);
            let len = segment_end - p;
            match runs.last_mut() {
                Some(last) if last.first + last.len == first => last.len += len,
                _ => runs.push(Run { first, len }),
            }
            p = segment_end;
        }
        Some(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(s: &str) -> Plan {
        Plan::parse(s).unwrap()
    }

    #[test]
    fn mix64_matches_splitmix64_reference_values() {
        // The first outputs of SplitMix64 seeded with 0 and with 1234567, as published with
        // the reference C implementation (Vigna, prng.di.unimi.it/splitmix64.c).
        let mut g = SplitMix64(0);
        assert_eq!(g.next(), 0xe220a8397b1dcdaf);
        assert_eq!(g.next(), 0x6e789e6aa1b965f4);
        let mut g = SplitMix64(1234567);
        assert_eq!(g.next(), 6457827717110365317);
        assert_eq!(g.next(), 3203168211198807973);
    }

    #[test]
    fn feistel_is_a_bijection_for_every_small_domain() {
        for n in 0..300u64 {
            let f = Feistel::new(n, 42, 3);
            let mut seen = vec![false; n as usize];
            for x in 0..n {
                let y = f.permute(x);
                assert!(y < n && !seen[y as usize], "n={n} x={x} y={y}");
                seen[y as usize] = true;
            }
        }
    }

    #[test]
    fn one_rank_sees_every_row_once_per_epoch() {
        for (p, rows) in [
            ("size=7", 100),
            ("size=256", 1000),
            ("size=5,block=3", 101),
            ("size=64,block=64", 1000),
            ("size=10,block=128", 1000),
            ("size=1", 1),
            ("size=3", 0),
        ] {
            let plan = plan(p);
            for epoch in [0, 1, u32::MAX] {
                let order = EpochOrder::new(&plan, rows, epoch);
                let mut seen = vec![0u32; rows as usize];
                for k in 0..order.batches() {
                    let b = order.batch_rows(k).unwrap();
                    let last = k + 1 == order.batches();
                    assert!(b.len() as u64 == plan.size || last && b.len() as u64 <= plan.size);
                    for r in b {
                        seen[r as usize] += 1;
                    }
                }
                assert!(
                    seen.iter().all(|&c| c == 1),
                    "{p} rows={rows} epoch={epoch}"
                );
                assert_eq!(order.batch_rows(order.batches()), None);
            }
        }
    }

    #[test]
    fn ranks_are_disjoint_equal_and_leave_out_at_most_ranks_minus_one_batches() {
        for (p, rows, w) in [
            ("size=7", 100u64, 3u64),
            ("size=4,block=2", 50, 4),
            ("size=10", 95, 5),
            ("size=8", 30, 8),
        ] {
            let mut seen = vec![0u32; rows as usize];
            let mut counts = Vec::new();
            for i in 0..w {
                let plan = plan(&format!("{p},ranks={w},rank={i}"));
                let order = EpochOrder::new(&plan, rows, 9);
                counts.push(order.batches());
                for k in 0..order.batches() {
                    for r in order.batch_rows(k).unwrap() {
                        seen[r as usize] += 1;
                    }
                }
            }
            assert!(counts.iter().all(|&c| c == counts[0]), "{p}: {counts:?}");
            assert!(seen.iter().all(|&c| c <= 1), "{p}: a row in two ranks");
            let size = plan(p).size;
            let global = rows.div_ceil(size);
            let left_out_batches = global - counts[0] * w;
            assert!(left_out_batches < w);
            let missing = seen.iter().filter(|&&c| c == 0).count() as u64;
            assert!(missing <= left_out_batches * size);
        }
    }

    #[test]
    fn epochs_and_seeds_give_different_orders() {
        let order = |s: &str, e| EpochOrder::new(&plan(s), 10_000, e).batch_rows(0).unwrap();
        assert_ne!(order("size=64", 0), order("size=64", 1));
        assert_ne!(order("size=64", 0), order("size=64,seed=1", 0));
        assert_eq!(order("size=64,ranks=1", 5), order("size=64", 5));
    }

    #[test]
    fn blocks_are_read_whole_and_a_batch_touches_few_blocks() {
        for (p, rows) in [
            ("size=256,block=64", 100_000u64),
            ("size=256,block=64", 100_037),
            ("size=100,block=64", 10_001),
        ] {
            let plan = plan(p);
            let order = EpochOrder::new(&plan, rows, 2);
            for k in 0..order.batches() {
                let runs = order.batch_runs(k).unwrap();
                let blocks: std::collections::BTreeSet<u64> = runs
                    .iter()
                    .flat_map(|r| [r.first / plan.block, (r.first + r.len - 1) / plan.block])
                    .collect();
                assert!(
                    blocks.len() as u64 <= plan.size.div_ceil(plan.block) + 1,
                    "{p} k={k}"
                );
                assert!(runs.len() as u64 <= plan.size.div_ceil(plan.block) + 1);
            }
        }
    }

    #[test]
    fn a_batch_of_a_hundred_million_rows_needs_no_table() {
        let order = EpochOrder::new(&plan("size=256,seed=5"), 100_000_000, 77);
        let k = order.batches() - 1;
        let rows = order.batch_rows(k).unwrap();
        assert_eq!(rows.len(), 256);
        assert!(rows.iter().all(|&r| r < 100_000_000));
        let distinct: std::collections::HashSet<_> = rows.iter().collect();
        assert_eq!(distinct.len(), 256);
        // The whole state of an epoch is a few words, whatever the number of rows.
        assert!(std::mem::size_of::<EpochOrder>() <= 128);
    }
}

#[cfg(test)]
mod pinned {
    use super::*;

    /// The rows of a few batches, pinned: the algorithm is part of the interface (every node,
    /// version and restart must agree), so any change to it must show here.
    /// tests/batches_order.rs checks many more against the Python re-implementation.
    #[test]
    fn pinned_batches_keep_their_rows() {
        let pins: &[(&str, u64, u32, u64, &[u64])] = &[
            (
                "size=8",
                1000,
                0,
                0,
                &[751, 370, 638, 367, 406, 882, 383, 258],
            ),
            (
                "size=8,seed=42",
                1_000_000,
                7,
                3,
                &[764112, 396739, 331633, 890927, 424460, 899490, 923980, 5463],
            ),
            ("size=6,seed=1,block=4", 30, 1, 0, &[28, 29, 0, 1, 2, 3]),
            (
                "size=5,seed=3,ranks=3,rank=2",
                100_000_000,
                4_000_000_000,
                123_456,
                &[86222783, 26519484, 34720141, 25217036, 16218531],
            ),
        ];
        for (p, rows, epoch, k, want) in pins {
            let order = EpochOrder::new(&Plan::parse(p).unwrap(), *rows, *epoch);
            assert_eq!(
                order.batch_rows(*k).unwrap(),
                *want,
                "{p} rows={rows} epoch={epoch} k={k}"
            );
        }
    }
}
