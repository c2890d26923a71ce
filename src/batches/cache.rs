//! Rendered batch files kept in memory within a byte budget: what a reader's open finds ready
//! when the next batches were rendered ahead of it (prefetch), and what several readers of one
//! plan (DataLoader workers) share.
//!
//! The cache only holds bytes and decides what fits; who renders (the reader's own request, or a
//! prefetch thread) is the caller's. Every byte it holds or has promised to a render in flight
//! counts against the budget, so many plans read at once cannot grow it: a prefetch that does not
//! fit is not started, a demand render that does not fit is handed to its reader uncached, and
//! batches already read are evicted first (least recently used), then the oldest unread ones.
//! An unread batch nobody has touched for `ABANDONED_AFTER` (its plan is no longer read) counts
//! as read: prefetches of the plans being read may push it out.
//! A batch being rendered is rendered once: a second reader waits for it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::buffers::Recycler;

/// Bytes of rendered batches kept by default (`--batch-memory`).
pub const DEFAULT_BATCH_MEMORY: usize = 512 << 20;

/// How long an unread batch stays safe from prefetches of other batches.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(30);

/// Allocations from this size up get mappings of their own (`map_large_allocations`).
const MMAP_THRESHOLD: i32 = 128 << 10;

/// Makes the allocator give rendered batches mappings of their own, returned to the system when
/// freed. Otherwise glibc raises its mmap threshold to the largest block freed so far, and
/// later batch buffers are carved from the heaps of the many request and read threads' arenas,
/// where freed memory stays in the process: the daemon's RSS then exceeds the budget by
/// hundreds of MB. Process-wide: the daemon calls it once at start.
pub fn map_large_allocations() {
    // SAFETY: mallopt only sets a parameter of glibc's allocator, which may be set at any time;
    // a refused value leaves the default (nothing to check).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Why a `--batch-memory` value is not a size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a size: a number of bytes, optionally with K, M, G or T (powers of 1024), e.g. 512M")]
pub struct SizeError(pub String);

/// A memory size as the mount option takes it: `1073741824`, `512M`, `512MiB`, `2G`, `0`.
pub fn parse_memory_size(s: &str) -> Result<usize, SizeError> {
    let bad = || SizeError(s.to_string());
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = t.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    number
        .checked_mul(1 << shift)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(bad)
}

enum Slot {
    /// A render in flight, `bytes` promised to it.
    Rendering,
    Ready(Arc<Vec<u8>>),
}

struct Entry {
    slot: Slot,
    bytes: usize,
    /// When it was last used (a tick of the cache's clock).
    used_at: u64,
    /// When it was last used, in time (for `ABANDONED_AFTER`).
    touched: Instant,
    /// Whether a reader has had it (prefetched entries start unread).
    read: bool,
}

/// Counters for `.stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// Reads that found the batch ready.
    pub hits: u64,
    /// Reads that found it being rendered and waited for it.
    pub waits: u64,
    /// Reads that had to render it.
    pub misses: u64,
    /// Prefetches started.
    pub prefetches: u64,
    /// Prefetches not started for want of room.
    pub prefetches_refused: u64,
    /// Entries dropped to make room.
    pub evictions: u64,
    /// Bytes held or promised now.
    pub bytes: usize,
    pub entries: usize,
}

struct Inner<K> {
    entries: HashMap<K, Entry>,
    bytes: usize,
    clock: u64,
    stats: CacheStats,
}

/// A byte-budgeted cache of rendered files keyed by `K` (dataset, plan, epoch, batch, format).
pub struct BatchCache<K> {
    budget: usize,
    /// The buffers of evicted batches, for the next renders.
    recycler: Recycler,
    abandoned_after: Duration,
    inner: Mutex<Inner<K>>,
    rendered: Condvar,
}

/// Whether the caller should render, and what it gets if not.
enum Claim {
    Ready(Arc<Vec<u8>>),
    /// The caller renders; room was reserved for it (or not, when it does not fit).
    Render {
        reserved: bool,
    },
}

impl<K: Hash + Eq + Clone> BatchCache<K> {
    pub fn new(budget: usize) -> BatchCache<K> {
        BatchCache::with_abandoned_after(budget, ABANDONED_AFTER)
    }

    /// A cache whose unread entries count as abandoned after `after` without use.
    pub fn with_abandoned_after(budget: usize, after: Duration) -> BatchCache<K> {
        BatchCache {
            budget,
            recycler: Recycler::default(),
            abandoned_after: after,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                bytes: 0,
                clock: 0,
                stats: CacheStats::default(),
            }),
            rendered: Condvar::new(),
        }
    }

    /// Where renders take their buffers: those of evicted batches when there are some.
    pub fn recycler(&self) -> &Recycler {
        &self.recycler
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            bytes: inner.bytes,
            entries: inner.entries.len(),
            ..inner.stats
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K>> {
        // A panic while holding the lock leaves counters, never a broken map: carry on.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file `key` of `size` bytes for a reader: from the cache, or rendered by `render` in
    /// this thread (and kept when it fits).
    pub fn get_or_render<E>(
        &self,
        key: &K,
        size: usize,
        render: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<Arc<Vec<u8>>, E> {
        match self.claim(key, size) {
            Claim::Ready(bytes) => Ok(bytes),
            Claim::Render { reserved } => {
                let result = render().map(Arc::new);
                if reserved {
                    self.settle(key, result.as_ref().ok().cloned(), true);
                }
                result
            }
        }
    }

    /// Renders `key` ahead of its reader if it is not cached and `size` bytes fit without
    /// evicting anything unread. Returns whether it rendered (successfully).
    pub fn prefetch<E>(
        &self,
        key: &K,
        size: usize,
        render: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> bool {
        {
            let mut inner = self.lock();
            if inner.entries.contains_key(key) {
                return false;
            }
            if !self.make_room(&mut inner, size, false) {
                inner.stats.prefetches_refused += 1;
                return false;
            }
            inner.stats.prefetches += 1;
            self.insert_rendering(&mut inner, key, size, false);
        }
        let bytes = render().ok().map(Arc::new);
        let ok = bytes.is_some();
        self.settle(key, bytes, false);
        ok
    }

    /// Whether `key` is cached or being rendered.
    pub fn contains(&self, key: &K) -> bool {
        self.lock().entries.contains_key(key)
    }

    /// The length of `key`'s rendered bytes when they are cached (not counted as a read).
    pub fn ready_len(&self, key: &K) -> Option<usize> {
        match self.lock().entries.get(key) {
            Some(Entry {
                slot: Slot::Ready(bytes),
                ..
            }) => Some(bytes.len()),
            _ => None,
        }
    }

    fn claim(&self, key: &K, size: usize) -> Claim {
        let mut inner = self.lock();
        let mut waited = false;
        loop {
            inner.clock += 1;
            let now = inner.clock;
            match inner.entries.get_mut(key) {
                Some(Entry {
                    slot: Slot::Ready(bytes),
                    used_at,
                    touched,
                    read,
                    ..
                }) => {
                    let bytes = bytes.clone();
                    *used_at = now;
                    *touched = Instant::now();
                    *read = true;
                    if waited {
                        inner.stats.waits += 1;
                    } else {
                        inner.stats.hits += 1;
                    }
                    return Claim::Ready(bytes);
                }
                Some(Entry {
                    slot: Slot::Rendering,
                    ..
                }) => {
                    waited = true;
                    inner = self.rendered.wait(inner).unwrap_or_else(|e| e.into_inner());
                }
                None => {
                    // Not cached (or its render failed while we waited): render it here.
                    inner.stats.misses += 1;
                    let reserved = self.make_room(&mut inner, size, true);
                    if reserved {
                        self.insert_rendering(&mut inner, key, size, true);
                    }
                    return Claim::Render { reserved };
                }
            }
        }
    }

    fn insert_rendering(&self, inner: &mut Inner<K>, key: &K, size: usize, read: bool) {
        // A tick of its own: prefetches in a row must not tie, or "oldest first" is the hash
        // map's order.
        inner.clock += 1;
        let used_at = inner.clock;
        inner.bytes += size;
        inner.entries.insert(
            key.clone(),
            Entry {
                slot: Slot::Rendering,
                bytes: size,
                used_at,
                touched: Instant::now(),
                read,
            },
        );
    }

    /// Ends a render: keeps its bytes (the reservation stays counted) or, when it failed,
    /// gives the room back. Wakes the readers waiting for it.
    fn settle(&self, key: &K, bytes: Option<Arc<Vec<u8>>>, read: bool) {
        let mut inner = self.lock();
        match bytes {
            Some(bytes) => {
                if let Some(e) = inner.entries.get_mut(key) {
                    // The reservation was the exact size; the memory held is the buffer's
                    // capacity (a reused buffer may be a little larger): count that.
                    let (reserved, actual) = (e.bytes, bytes.capacity().max(bytes.len()));
                    e.bytes = actual;
                    e.slot = Slot::Ready(bytes);
                    e.read |= read;
                    inner.bytes = inner.bytes - reserved + actual;
                }
            }
            None => {
                if let Some(e) = inner.entries.remove(key) {
                    inner.bytes -= e.bytes;
                }
            }
        }
        drop(inner);
        self.rendered.notify_all();
    }

    /// Evicts ready entries until `size` more bytes fit in the budget: read (or abandoned) ones
    /// first (least recently used first), then, for a reader's own render (`evict_unread`),
    /// unread ones (oldest first). Entries being rendered are never evicted. False if it cannot fit.
    fn make_room(&self, inner: &mut Inner<K>, size: usize, evict_unread: bool) -> bool {
        if size > self.budget {
            return false;
        }
        while inner.bytes + size > self.budget {
            let victim = inner
                .entries
                .iter()
                .map(|(k, e)| (k, e, e.read || e.touched.elapsed() >= self.abandoned_after))
                .filter(|(_, e, done)| matches!(e.slot, Slot::Ready(_)) && (*done || evict_unread))
                .min_by_key(|(_, e, done)| (!done, e.used_at))
                .map(|(k, _, _)| k.clone());
            let Some(victim) = victim else {
                return false;
            };
            let e = inner.entries.remove(&victim).expect("victim present");
            inner.bytes -= e.bytes;
            inner.stats.evictions += 1;
            if let Slot::Ready(bytes) = e.slot {
                // A reply still sending it keeps it; otherwise its memory serves the next render.
                if let Ok(buf) = Arc::try_unwrap(bytes) {
                    self.recycler.give(buf);
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn bytes(n: usize, v: u8) -> Result<Vec<u8>, String> {
        Ok(vec![v; n])
    }

    #[test]
    fn a_prefetched_batch_is_a_hit_and_rendered_once() {
        let cache = BatchCache::new(1000);
        let renders = AtomicUsize::new(0);
        let render = |v| {
            renders.fetch_add(1, Ordering::SeqCst);
            bytes(100, v)
        };
        assert!(cache.prefetch(&1, 100, || render(1)));
        assert!(!cache.prefetch(&1, 100, || render(9)), "already there");
        let got = cache.get_or_render(&1, 100, || render(9)).unwrap();
        assert_eq!(&got[..], &[1u8; 100][..]);
        assert_eq!(renders.load(Ordering::SeqCst), 1);
        let got = cache.get_or_render(&2, 100, || render(2)).unwrap();
        assert_eq!(got[0], 2);
        let s = cache.stats();
        assert_eq!(
            (s.hits, s.misses, s.prefetches, s.bytes, s.entries),
            (1, 1, 1, 200, 2)
        );
    }

    #[test]
    fn the_budget_holds_and_read_batches_go_first() {
        let cache = BatchCache::new(300);
        for k in 0..3 {
            assert!(cache.prefetch(&k, 100, || bytes(100, k as u8)));
        }
        // Full of unread batches: a prefetch may not push them out.
        assert!(!cache.prefetch(&3, 100, || bytes(100, 3)));
        assert_eq!(cache.stats().prefetches_refused, 1);
        cache.get_or_render(&1, 100, || bytes(100, 0)).unwrap();
        // Now batch 1 has been read: it is the one that makes room.
        assert!(cache.prefetch(&3, 100, || bytes(100, 3)));
        assert!(!cache.contains(&1));
        assert!(cache.contains(&0) && cache.contains(&2) && cache.contains(&3));
        // A reader's own render evicts unread ones when it must (oldest first).
        cache.get_or_render(&4, 200, || bytes(200, 4)).unwrap();
        assert!(!cache.contains(&0) && !cache.contains(&2));
        assert!(cache.stats().bytes <= 300);
        // Larger than the whole budget: served, not kept.
        let big = cache.get_or_render(&5, 400, || bytes(400, 5)).unwrap();
        assert_eq!(big.len(), 400);
        assert!(!cache.contains(&5));
        assert!(!cache.prefetch(&6, 400, || bytes(400, 6)));
        assert!(cache.stats().bytes <= 300);
    }

    #[test]
    fn memory_sizes_parse_with_binary_units() {
        assert_eq!(parse_memory_size("0"), Ok(0));
        assert_eq!(parse_memory_size("4096"), Ok(4096));
        assert_eq!(parse_memory_size("512M"), Ok(512 << 20));
        assert_eq!(parse_memory_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_memory_size("2g"), Ok(2 << 30));
        for bad in [
            "",
            "M",
            "-1",
            "1.5G",
            "12X",
            "99999999999999999999",
            "99999999T",
        ] {
            assert!(parse_memory_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ready_len_sees_only_finished_renders() {
        let cache = BatchCache::new(1000);
        assert_eq!(cache.ready_len(&1), None);
        assert!(cache.prefetch(&1, 10, || bytes(10, 1)));
        assert_eq!(cache.ready_len(&1), Some(10));
        assert_eq!(cache.stats().hits, 0, "not counted as a read");
    }

    #[test]
    fn unread_batches_of_an_abandoned_plan_make_room_for_prefetches() {
        // Abandoned at once: every unread batch may go, the oldest first.
        let cache = BatchCache::with_abandoned_after(200, Duration::ZERO);
        assert!(cache.prefetch(&1, 100, || bytes(100, 1)));
        assert!(cache.prefetch(&2, 100, || bytes(100, 2)));
        assert!(cache.prefetch(&3, 100, || bytes(100, 3)));
        assert!(!cache.contains(&1) && cache.contains(&2) && cache.contains(&3));
        // With the default, unread batches are kept from prefetches.
        let cache = BatchCache::new(200);
        assert!(cache.prefetch(&1, 100, || bytes(100, 1)));
        assert!(cache.prefetch(&2, 100, || bytes(100, 2)));
        assert!(!cache.prefetch(&3, 100, || bytes(100, 3)));
    }

    #[test]
    fn a_failed_render_gives_its_room_back() {
        let cache: BatchCache<u32> = BatchCache::new(100);
        let r: Result<Arc<Vec<u8>>, String> = cache.get_or_render(&1, 100, || Err("disk".into()));
        assert_eq!(r.unwrap_err(), "disk");
        assert!(!cache.prefetch(&2, 100, || Err::<Vec<u8>, _>("disk".to_string())));
        let s = cache.stats();
        assert_eq!((s.bytes, s.entries), (0, 0));
        assert!(cache.prefetch(&3, 100, || bytes(100, 3)));
    }

    #[test]
    fn readers_of_a_batch_in_flight_wait_for_it_instead_of_rendering_it_again() {
        let cache = Arc::new(BatchCache::new(1000));
        let renders = Arc::new(AtomicUsize::new(0));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let prefetcher = {
            let (cache, renders) = (cache.clone(), renders.clone());
            std::thread::spawn(move || {
                cache.prefetch(&7, 10, || {
                    renders.fetch_add(1, Ordering::SeqCst);
                    started_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    bytes(10, 7)
                })
            })
        };
        started_rx.recv().unwrap();
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (cache, renders) = (cache.clone(), renders.clone());
                std::thread::spawn(move || {
                    cache
                        .get_or_render(&7, 10, || {
                            renders.fetch_add(1, Ordering::SeqCst);
                            bytes(10, 0)
                        })
                        .unwrap()
                })
            })
            .collect();
        // Give the readers time to reach the wait; a reader that comes later finds the batch
        // ready instead (a hit, not a wait): either way nobody renders it again.
        std::thread::sleep(std::time::Duration::from_millis(50));
        go_tx.send(()).unwrap();
        assert!(prefetcher.join().unwrap());
        for r in readers {
            assert_eq!(&r.join().unwrap()[..], &[7u8; 10][..]);
        }
        assert_eq!(renders.load(Ordering::SeqCst), 1);
        let s = cache.stats();
        assert_eq!(s.hits + s.waits, 3);
        assert_eq!(s.misses, 0);
    }
}
