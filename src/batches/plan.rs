//! The `<PLAN>` directory name of `batches/<PLAN>/<EPOCH>/<K>.<ext>`: parsing it into a `Plan`
//! (keys in any order, defaults, bounds), its canonical spelling, and the canonical decimals of
//! `<EPOCH>` and `<K>`. Parsing never allocates more than its input and never panics: a name
//! that is not a plan is a `PlanError` whose message says why (for the daemon's log; the mount
//! answers ENOENT).

use std::fmt;

use thiserror::Error;

/// Largest `size` (rows per batch) a plan may ask for.
pub const MAX_BATCH_ROWS: u64 = 1 << 16;
/// Largest `block` (rows per aligned block) a plan may ask for.
pub const MAX_BLOCK_ROWS: u64 = 1 << 16;
/// Largest `ranks` a plan may ask for.
pub const MAX_RANKS: u64 = 1 << 16;
/// Epochs are numbered 0 .. 2^32.
pub const MAX_EPOCH: u64 = u32::MAX as u64;
/// Longest plan name considered at all (a valid one is far shorter).
const MAX_PLAN_NAME: usize = 160;

/// How the rows of one dataset are cut into shuffled batches: the parsed `<PLAN>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Plan {
    /// Rows per batch (`size=B`, required, 1..=65536).
    pub size: u64,
    /// Seed of the epoch permutations (`seed=S`, default 0, any u64).
    pub seed: u64,
    /// Rows per aligned block (`block=R`, default 1, 1..=65536): the epoch permutes blocks.
    pub block: u64,
    /// Number of ranks the epoch is split among (`ranks=W`, default 1, 1..=65536).
    pub ranks: u64,
    /// This reader's rank (`rank=I`, default 0, below `ranks`).
    pub rank: u64,
}

/// Why a name is not a plan.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    #[error("plan name is longer than {MAX_PLAN_NAME} bytes")]
    TooLong,
    #[error("plan item {0:?} is not key=value")]
    NotKeyValue(String),
    #[error("plan key {0:?} is unknown (known: size, seed, block, ranks, rank)")]
    UnknownKey(String),
    #[error("plan key {0} is given twice")]
    Repeated(&'static str),
    #[error("plan has no size=B (rows per batch)")]
    NoSize,
    #[error("plan value {key}={value:?} is not a canonical decimal number")]
    NotDecimal { key: &'static str, value: String },
    #[error("plan value {key}={value} is outside {min}..={max}")]
    OutOfRange {
        key: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("plan rank={rank} is not below ranks={ranks}")]
    RankNotBelowRanks { rank: u64, ranks: u64 },
}

/// The canonical decimal spelling of a number: digits only, no sign, no leading zero (except
/// "0" itself), within u64. Anything else is `None`.
pub fn parse_canonical_decimal(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 20 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if b.len() > 1 && b[0] == b'0' {
        return None;
    }
    s.parse().ok()
}

/// `<EPOCH>`: a canonical decimal below 2^32.
pub fn parse_epoch(s: &str) -> Option<u32> {
    parse_canonical_decimal(s)
        .filter(|&e| e <= MAX_EPOCH)
        .map(|e| e as u32)
}

/// The two renderings of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BatchFormat {
    /// `<K>.npz`: what `scipy.sparse.save_npz` writes, plus `row_ids` and `feature_block`.
    Npz,
    /// `<K>.safetensors`: the same arrays; `shape` and `format` in `__metadata__`.
    Safetensors,
}

impl BatchFormat {
    pub const ALL: [BatchFormat; 2] = [BatchFormat::Npz, BatchFormat::Safetensors];

    pub fn extension(self) -> &'static str {
        match self {
            BatchFormat::Npz => "npz",
            BatchFormat::Safetensors => "safetensors",
        }
    }

    /// The file name of batch `k` in this format.
    pub fn file_name(self, k: u64) -> String {
        format!("{k}.{}", self.extension())
    }
}

/// `<K>.npz` or `<K>.safetensors` with `<K>` a canonical decimal; whether K exists depends on
/// the plan and the dataset (`EpochOrder::batches`).
pub fn parse_batch_file(name: &str) -> Option<(u64, BatchFormat)> {
    let (stem, ext) = name.split_once('.')?;
    let format = BatchFormat::ALL
        .into_iter()
        .find(|f| f.extension() == ext)?;
    Some((parse_canonical_decimal(stem)?, format))
}

const KEYS: [&str; 5] = ["size", "seed", "block", "ranks", "rank"];

impl Plan {
    /// Parses `size=B,seed=S,block=R,ranks=W,rank=I` (keys in any order, each at most once;
    /// all but `size` optional).
    pub fn parse(name: &str) -> Result<Plan, PlanError> {
        if name.len() > MAX_PLAN_NAME {
            return Err(PlanError::TooLong);
        }
        let mut values: [Option<u64>; 5] = [None; 5];
        for item in name.split(',') {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| PlanError::NotKeyValue(item.to_string()))?;
            let slot = KEYS
                .iter()
                .position(|k| *k == key)
                .ok_or_else(|| PlanError::UnknownKey(key.to_string()))?;
            let key = KEYS[slot];
            if values[slot].is_some() {
                return Err(PlanError::Repeated(key));
            }
            let v = parse_canonical_decimal(value).ok_or_else(|| PlanError::NotDecimal {
                key,
                value: value.to_string(),
            })?;
            values[slot] = Some(v);
        }
        let [size, seed, block, ranks, rank] = values;
        let plan = Plan {
            size: in_range("size", size.ok_or(PlanError::NoSize)?, 1, MAX_BATCH_ROWS)?,
            seed: seed.unwrap_or(0),
            block: in_range("block", block.unwrap_or(1), 1, MAX_BLOCK_ROWS)?,
            ranks: in_range("ranks", ranks.unwrap_or(1), 1, MAX_RANKS)?,
            rank: rank.unwrap_or(0),
        };
        if plan.rank >= plan.ranks {
            return Err(PlanError::RankNotBelowRanks {
                rank: plan.rank,
                ranks: plan.ranks,
            });
        }
        Ok(plan)
    }

    /// The canonical name: every key, in the order size, seed, block, ranks, rank.
    pub fn canonical(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "size={},seed={},block={},ranks={},rank={}",
            self.size, self.seed, self.block, self.ranks, self.rank
        )
    }
}

fn in_range(key: &'static str, value: u64, min: u64, max: u64) -> Result<u64, PlanError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(PlanError::OutOfRange {
            key,
            value,
            min,
            max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_any_order_name_the_same_plan_and_defaults_apply() {
        let a = Plan::parse("size=256").unwrap();
        assert_eq!(
            a,
            Plan {
                size: 256,
                seed: 0,
                block: 1,
                ranks: 1,
                rank: 0
            }
        );
        let b = Plan::parse("rank=1,seed=7,size=64,ranks=4,block=8").unwrap();
        let c = Plan::parse("block=8,ranks=4,size=64,rank=1,seed=7").unwrap();
        assert_eq!(b, c);
        assert_eq!(b.canonical(), "size=64,seed=7,block=8,ranks=4,rank=1");
        assert_eq!(Plan::parse(&b.canonical()).unwrap(), b);
        let max =
            Plan::parse("size=65536,seed=18446744073709551615,block=65536,ranks=65536,rank=65535")
                .unwrap();
        assert_eq!(max.seed, u64::MAX);
    }

    #[test]
    fn bad_plans_say_what_is_wrong() {
        let err = |s: &str| Plan::parse(s).unwrap_err().to_string();
        assert_eq!(err(""), "plan item \"\" is not key=value");
        assert_eq!(err("size=4,"), "plan item \"\" is not key=value");
        assert_eq!(err("seed=1"), "plan has no size=B (rows per batch)");
        assert!(err("size=4,colour=2").contains("\"colour\" is unknown"));
        assert!(err("size=4,Size=4").contains("unknown"));
        assert_eq!(err("size=4,size=4"), "plan key size is given twice");
        assert_eq!(err("size=0"), "plan value size=0 is outside 1..=65536");
        assert_eq!(
            err("size=65537"),
            "plan value size=65537 is outside 1..=65536"
        );
        assert_eq!(
            err("size=4,block=0"),
            "plan value block=0 is outside 1..=65536"
        );
        assert_eq!(
            err("size=4,ranks=0"),
            "plan value ranks=0 is outside 1..=65536"
        );
        assert_eq!(
            err("size=4,ranks=2,rank=2"),
            "plan rank=2 is not below ranks=2"
        );
        assert_eq!(err("size=4,rank=1"), "plan rank=1 is not below ranks=1");
        for bad in [
            "size=04",
            "size=+4",
            "size=-4",
            "size= 4",
            "size=4x",
            "size=",
            "size=1e3",
            "size=4,seed=18446744073709551616",
            "size=99999999999999999999999",
        ] {
            assert!(
                err(bad).contains("not a canonical decimal"),
                "{bad}: {}",
                err(bad)
            );
        }
        assert_eq!(
            err(&"size=1,".repeat(40)),
            "plan name is longer than 160 bytes"
        );
        assert!(err("size=4=4").contains("not a canonical decimal"));
    }

    #[test]
    fn epochs_and_batch_files_are_canonical_decimals() {
        assert_eq!(parse_epoch("0"), Some(0));
        assert_eq!(parse_epoch("4294967295"), Some(u32::MAX));
        for bad in ["", "00", "01", "+1", "-1", "4294967296", "1.0", " 1", "١"] {
            assert_eq!(parse_epoch(bad), None, "{bad}");
        }
        assert_eq!(parse_batch_file("0.npz"), Some((0, BatchFormat::Npz)));
        assert_eq!(
            parse_batch_file("17.safetensors"),
            Some((17, BatchFormat::Safetensors))
        );
        for bad in [
            "07.npz",
            "7",
            "7.npy",
            "7.npz.npz",
            ".npz",
            "7.NPZ",
            "-1.npz",
        ] {
            assert_eq!(parse_batch_file(bad), None, "{bad}");
        }
        assert_eq!(BatchFormat::Safetensors.file_name(3), "3.safetensors");
    }
}
