//! Inode numbers and file names of the mounted tree: an inode is (kind, dataset id, index)
//! packed in 64 bits, so reading 10^6 distinct row files allocates nothing; only ranges (two
//! numbers) and batch nodes (a plan) live in tables (`NodeTable`), dropped when the kernel
//! forgets them. Also the canonical row indexes and ranges that name row and range files.

use std::collections::HashMap;
use std::sync::Mutex;

pub const ROOT_INO: u64 = 1;
pub const CONTROL_INO: u64 = 2;
pub const STATS_INO: u64 = 3;
const KIND_SHIFT: u32 = 56;
const DATASET_SHIFT: u32 = 40;
const INDEX_MASK: u64 = (1 << DATASET_SHIFT) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    DatasetDir = 1,
    Input = 2,
    Status = 3,
    ArchiveFile = 4,
    FeaturesDir = 5,
    FeatureJson = 6,
    FeatureFile = 7,
    RowsDir = 8,
    Row = 9,
    CsrDir = 10,
    Range = 11,
    /// Per-cell metadata (`metadata.rs`): directories, row files, ranges, store files.
    MetaDir = 12,
    MetaFile = 13,
    MetaRange = 14,
    MetaStore = 15,
    /// `batches/` (index 0) and the nodes below it (`NodeTable` ids): numbered apart from the
    /// other kinds.
    BatchesDir = 40,
    Batch = 41,
}

impl Kind {
    fn from_u8(k: u8) -> Option<Kind> {
        use Kind::*;
        [
            DatasetDir,
            Input,
            Status,
            ArchiveFile,
            FeaturesDir,
            FeatureJson,
            FeatureFile,
            RowsDir,
            Row,
            CsrDir,
            Range,
            MetaDir,
            MetaFile,
            MetaRange,
            MetaStore,
            BatchesDir,
            Batch,
        ]
        .into_iter()
        .find(|x| *x as u8 == k)
    }
}

pub fn ino(kind: Kind, dataset: u16, index: u64) -> u64 {
    ((kind as u64) << KIND_SHIFT) | ((dataset as u64) << DATASET_SHIFT) | (index & INDEX_MASK)
}

pub fn split(ino: u64) -> Option<(Kind, u16, u64)> {
    let kind = Kind::from_u8((ino >> KIND_SHIFT) as u8)?;
    Some((
        kind,
        ((ino >> DATASET_SHIFT) & 0xffff) as u16,
        ino & INDEX_MASK,
    ))
}

/// Rows [first, end) of one dataset, as a dense `.npy` (`rows/`) or a CSR `.npz` (`csr/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Range {
    pub dataset: u16,
    pub csr: bool,
    pub first: u64,
    pub end: u64,
}

/// Inodes that carry more than an index (ranges, batch nodes): a table of keys the kernel
/// holds, with its lookup counts and a value kept with each (`V`, e.g. a size once computed);
/// an entry goes when the kernel forgets it.
pub struct NodeTable<K, V = ()> {
    inner: Mutex<Nodes<K, V>>,
}

/// The range inodes.
pub type RangeTable = NodeTable<Range>;

struct Nodes<K, V> {
    ids: HashMap<K, u64>,
    nodes: HashMap<u64, (K, V, u64)>,
    next: u64,
}

impl<K, V> Default for NodeTable<K, V> {
    fn default() -> Self {
        NodeTable {
            inner: Mutex::new(Nodes {
                ids: HashMap::new(),
                nodes: HashMap::new(),
                next: 0,
            }),
        }
    }
}

impl<K: Clone + Eq + std::hash::Hash, V: Clone + Default> NodeTable<K, V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Nodes<K, V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The index of `key` (numbered from 1); counts a lookup (the kernel forgets it later).
    pub fn lookup_index(&self, key: K) -> u64 {
        let mut t = self.lock();
        let id = match t.ids.get(&key) {
            Some(&id) => id,
            None => {
                t.next += 1;
                let id = t.next & INDEX_MASK;
                t.ids.insert(key.clone(), id);
                t.nodes.insert(id, (key, V::default(), 0));
                id
            }
        };
        t.nodes.get_mut(&id).expect("inserted").2 += 1;
        id
    }

    /// The index of `key` if the kernel holds it (no lookup counted).
    pub fn index_of(&self, key: &K) -> Option<u64> {
        self.lock().ids.get(key).copied()
    }

    /// The kernel dropped `n` references to `id`.
    pub fn forget(&self, id: u64, n: u64) {
        let mut t = self.lock();
        let gone = match t.nodes.get_mut(&id) {
            Some((_, _, lookups)) => {
                *lookups = lookups.saturating_sub(n);
                *lookups == 0
            }
            None => false,
        };
        if gone {
            let (key, _, _) = t.nodes.remove(&id).expect("present");
            t.ids.remove(&key);
        }
    }

    pub fn get(&self, id: u64) -> Option<K> {
        self.lock().nodes.get(&id).map(|(k, _, _)| k.clone())
    }

    /// The key and the value kept with `id`.
    pub fn get_with_value(&self, id: u64) -> Option<(K, V)> {
        self.lock()
            .nodes
            .get(&id)
            .map(|(k, v, _)| (k.clone(), v.clone()))
    }

    /// Keeps `value` with `id` (if the kernel still holds it).
    pub fn set_value(&self, id: u64, value: V) {
        if let Some(e) = self.lock().nodes.get_mut(&id) {
            e.1 = value;
        }
    }

    pub fn len(&self) -> usize {
        self.lock().nodes.len()
    }
}

impl RangeTable {
    /// The inode of `range`; counts a lookup.
    pub fn lookup(&self, range: Range) -> u64 {
        ino(Kind::Range, range.dataset, self.lookup_index(range))
    }
}

/// A canonical decimal index ("0", "42"; not "042", "+1" or "").
pub fn parse_index(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// "a-b" with canonical a < b.
pub fn parse_range(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once('-')?;
    let (a, b) = (parse_index(a)?, parse_index(b)?);
    (a < b).then_some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_fields_round_trip() {
        let i = ino(Kind::Row, 513, 123_456_789);
        assert_eq!(split(i), Some((Kind::Row, 513, 123_456_789)));
        assert_eq!(split(ROOT_INO), None);
    }

    #[test]
    fn names_of_rows_are_canonical() {
        assert_eq!(parse_index("0"), Some(0));
        assert_eq!(parse_index("42"), Some(42));
        for bad in ["", "042", "+1", "-1", "1e3", "x"] {
            assert_eq!(parse_index(bad), None, "{bad}");
        }
        assert_eq!(parse_range("3-5"), Some((3, 5)));
        assert_eq!(parse_range("5-5"), None);
        assert_eq!(parse_range("5-3"), None);
        assert_eq!(parse_range("3-"), None);
    }
}
