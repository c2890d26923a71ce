//! The `NAME/batches/` tree (docs/SEMANTICS.md, "Shuffled batches"): `<PLAN>/`, `<EPOCH>/` and
//! `<K>.npz|.safetensors` resolved from their names (nothing stored: any valid plan exists at
//! once), their inodes in a `NodeTable` the kernel's forgets empty, exact sizes without
//! rendering, reads from the daemon's `BatchCache`, and the prefetch of the next batches at
//! each open. The library pieces are `crate::batches`; this file only wires them to the tree.

use std::sync::Arc;

use super::inode::{ino, Kind, NodeTable};
use super::{DirEntry, FsError, FsResult, NodeType, ReadBytes};
use crate::batches::{
    parse_batch_file, parse_epoch, BatchCache, BatchFormat, BatchLayout, CacheStats, EpochOrder,
    Plan, Prefetcher, ReadPool, DEFAULT_BATCH_MEMORY, DEFAULT_PREFETCH_DEPTH, DEFAULT_READ_THREADS,
};
use crate::catalog::ReadyDataset;

/// How the mount serves batches (`--batch-memory`).
#[derive(Clone, Debug)]
pub struct BatchOptions {
    /// Bytes of rendered batches kept for readers and prefetch (`--batch-memory`).
    pub memory: usize,
    /// Batches rendered ahead of each open (K+1 ..= K+depth).
    pub prefetch_depth: u64,
    /// Threads that read the slices of a batch concurrently.
    pub read_threads: usize,
    /// Threads that render prefetched batches.
    pub prefetch_threads: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            memory: DEFAULT_BATCH_MEMORY,
            prefetch_depth: DEFAULT_PREFETCH_DEPTH,
            read_threads: DEFAULT_READ_THREADS,
            prefetch_threads: std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
        }
    }
}

/// Where a batch node is: `<PLAN>/`, `<PLAN>/<EPOCH>/`, or a batch file in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Level {
    Plan,
    Epoch(u32),
    File(BatchKey),
}

/// A node below `NAME/batches/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct BatchNode {
    pub dataset: u16,
    pub plan: Plan,
    pub level: Level,
}

/// One batch file: what the cache keys it by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct BatchKey {
    pub dataset: u16,
    pub plan: Plan,
    pub epoch: u32,
    pub k: u64,
    pub format: BatchFormat,
}

/// The daemon's batch service: the node table, the cache, the read threads, the prefetcher.
pub(super) struct Batches {
    /// Batch nodes the kernel holds; a file's size once computed.
    nodes: NodeTable<BatchNode, Option<u64>>,
    cache: Arc<BatchCache<BatchKey>>,
    pool: ReadPool,
    prefetcher: Prefetcher<BatchKey>,
    options: BatchOptions,
    /// Batch files closed since their names were last dropped from the kernel's cache.
    closed: std::sync::Mutex<Vec<BatchKey>>,
}

/// Closed batch files whose names are dropped from the kernel's cache together.
const FORGET_EVERY: usize = 512;

/// A library error of a batch as the tree tells it: a batch too large does not exist.
fn fs_error(e: crate::Error) -> FsError {
    match e {
        crate::Error::Usage(m) => {
            log::debug!("{m}");
            FsError::NotFound
        }
        e => FsError::Io(e.to_string()),
    }
}

impl Batches {
    pub fn new(options: BatchOptions) -> Batches {
        Batches {
            nodes: NodeTable::default(),
            cache: Arc::new(BatchCache::new(options.memory)),
            pool: ReadPool::new(options.read_threads),
            prefetcher: Prefetcher::new(options.prefetch_threads),
            options,
            closed: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Notes that batch file `key` was closed; every `FORGET_EVERY` closes, the names (epoch
    /// directory inode, file name) the kernel should drop now. In bulk, because each dropped
    /// name also makes the kernel check its directory's attributes again on the next open: one
    /// extra request per `FORGET_EVERY` batches instead of one per batch.
    pub fn closed(&self, key: &BatchKey) -> Vec<(u64, String)> {
        let mut closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        closed.push(*key);
        if closed.len() < FORGET_EVERY {
            return Vec::new();
        }
        let keys = std::mem::take(&mut *closed);
        drop(closed);
        keys.iter()
            .filter_map(|k| Some((self.epoch_ino(k)?, k.format.file_name(k.k))))
            .collect()
    }

    /// The inode of the epoch directory holding batch `key`, while the kernel holds it.
    fn epoch_ino(&self, key: &BatchKey) -> Option<u64> {
        let dir = BatchNode {
            dataset: key.dataset,
            plan: key.plan,
            level: Level::Epoch(key.epoch),
        };
        self.nodes
            .index_of(&dir)
            .map(|i| ino(Kind::Batch, key.dataset, i))
    }

    pub fn node(&self, index: u64) -> Option<(BatchNode, Option<u64>)> {
        self.nodes.get_with_value(index)
    }

    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    pub fn forget(&self, index: u64, n: u64) {
        self.nodes.forget(index, n);
    }

    pub fn stop(&self) {
        self.prefetcher.stop();
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    pub fn budget(&self) -> usize {
        self.cache.budget()
    }

    /// The inode of `name` in `batches/` (`parent` None) or in the batch directory `parent`.
    pub fn child(
        &self,
        id: u16,
        r: &ReadyDataset,
        parent: Option<BatchNode>,
        name: &str,
    ) -> FsResult<u64> {
        let node = match parent {
            None => {
                let plan = Plan::parse(name).map_err(|e| {
                    log::debug!("batches/{name}: {e}");
                    FsError::NotFound
                })?;
                BatchNode {
                    dataset: id,
                    plan,
                    level: Level::Plan,
                }
            }
            Some(BatchNode {
                level: Level::Plan,
                plan,
                ..
            }) => BatchNode {
                dataset: id,
                plan,
                level: Level::Epoch(parse_epoch(name).ok_or(FsError::NotFound)?),
            },
            Some(BatchNode {
                level: Level::Epoch(epoch),
                plan,
                ..
            }) => {
                let (k, format) = parse_batch_file(name).ok_or(FsError::NotFound)?;
                let key = BatchKey {
                    dataset: id,
                    plan,
                    epoch,
                    k,
                    format,
                };
                // Sized before the kernel holds it: a batch over the size limit does not exist.
                let size = self.file_size(r, &key)?;
                let index = self.nodes.lookup_index(BatchNode {
                    dataset: id,
                    plan,
                    level: Level::File(key),
                });
                self.nodes.set_value(index, Some(size));
                return Ok(ino(Kind::Batch, id, index));
            }
            Some(_) => return Err(FsError::NotDir),
        };
        Ok(ino(Kind::Batch, id, self.nodes.lookup_index(node)))
    }

    /// The exact size of batch `key`'s file: the rendered length when cached, otherwise from
    /// row_ptr. `NotFound` for a batch the plan does not have or one over the size limit.
    pub fn file_size(&self, r: &ReadyDataset, key: &BatchKey) -> FsResult<u64> {
        if let Some(n) = self.cache.ready_len(key) {
            return Ok(n as u64);
        }
        let layout = self.layout(r, key)?;
        layout.file_size(&r.archive, key.format).map_err(fs_error)
    }

    fn layout(&self, r: &ReadyDataset, key: &BatchKey) -> FsResult<BatchLayout> {
        let order = EpochOrder::new(&key.plan, r.archive.num_rows, key.epoch);
        if key.k >= order.batches() {
            return Err(FsError::NotFound);
        }
        BatchLayout::of_batch(&r.archive, &order, key.k, &self.pool)
            .map_err(fs_error)?
            .ok_or(FsError::NotFound)
    }

    fn render(&self, r: &ReadyDataset, key: &BatchKey) -> FsResult<Vec<u8>> {
        let layout = self.layout(r, key)?;
        layout
            .render(&r.archive, key.format, &self.pool, self.cache.recycler())
            .map_err(fs_error)
    }

    /// `len` bytes at `offset` of batch `key` (`size` bytes), from the cache or rendered now.
    pub fn read(
        &self,
        r: &ReadyDataset,
        key: &BatchKey,
        size: u64,
        offset: u64,
        len: u32,
    ) -> FsResult<ReadBytes> {
        let bytes = self
            .cache
            .get_or_render(key, size as usize, || self.render(r, key))?;
        let start = (offset as usize).min(bytes.len());
        let end = start.saturating_add(len as usize).min(bytes.len());
        Ok(ReadBytes::Shared(bytes, start..end))
    }

    /// At the open of batch `key`: queues the renders of the next batches of its (plan, epoch,
    /// format), those not cached yet, for the prefetch threads.
    pub fn prefetch_after(self: &Arc<Self>, r: &Arc<ReadyDataset>, key: &BatchKey) {
        if self.cache.budget() == 0 {
            return; // nothing could be kept
        }
        let order = EpochOrder::new(&key.plan, r.archive.num_rows, key.epoch);
        let last = order
            .batches()
            .min(key.k.saturating_add(self.options.prefetch_depth + 1));
        for k in key.k + 1..last {
            let next = BatchKey { k, ..*key };
            if self.cache.contains(&next) {
                continue;
            }
            let (this, r) = (self.clone(), r.clone());
            self.prefetcher
                .submit(next, move || this.prefetch_one(&r, &next));
        }
    }

    /// One prefetch: sized first, so that the cache decides whether it fits before rendering.
    fn prefetch_one(&self, r: &ReadyDataset, key: &BatchKey) {
        if self.cache.contains(key) {
            return;
        }
        let Ok(layout) = self.layout(r, key) else {
            return;
        };
        let Ok(size) = layout.file_size(&r.archive, key.format) else {
            return;
        };
        self.cache.prefetch(key, size as usize, || {
            layout.render(&r.archive, key.format, &self.pool, self.cache.recycler())
        });
    }
}

/// The entries of an `<EPOCH>/` directory at positions `first..`, at most `max`: batch k is
/// at positions `base + 2k` (`.npz`) and `base + 2k + 1` (`.safetensors`). Only that page is
/// produced, whatever the number of batches.
pub(super) fn epoch_entries(
    r: &ReadyDataset,
    node: &BatchNode,
    base: u64,
    first: u64,
    max: usize,
) -> Vec<DirEntry> {
    let Level::Epoch(epoch) = node.level else {
        return Vec::new();
    };
    let files = EpochOrder::new(&node.plan, r.archive.num_rows, epoch)
        .batches()
        .saturating_mul(2);
    let start = first.max(base) - base;
    let end = files.min(start.saturating_add(max as u64));
    (start..end)
        .map(|i| DirEntry {
            // A listing does not make the kernel hold the file: index 0 names no node (the
            // table numbers from 1); a lookup gives the real inode.
            ino: ino(Kind::Batch, node.dataset, 0),
            next: base + i + 1,
            kind: NodeType::File,
            name: BatchFormat::ALL[(i % 2) as usize].file_name(i / 2),
        })
        .collect()
}
