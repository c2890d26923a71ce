//! Buffers handed from evicted batches to the next renders. A batch buffer is large (about
//! 1 MiB for 256 rows) and gets a mapping of its own (`map_large_allocations`): a fresh one
//! costs a page fault and the zeroing of every page, and its unmapping a TLB flush, which
//! together took a quarter of the daemon's CPU per warm batch. Only a few are kept, so the
//! memory they hold stays small next to the batch budget.

use std::sync::Mutex;

/// Buffers kept at most: a render takes one and an eviction gives one back, so a few suffice.
const KEPT_BUFFERS: usize = 8;
/// Bytes kept at most, over all buffers.
const KEPT_BYTES: usize = 8 << 20;

/// A small store of empty buffers for reuse.
#[derive(Default)]
pub struct Recycler {
    free: Mutex<Vec<Vec<u8>>>,
}

impl Recycler {
    /// An empty buffer with room for at least `capacity` bytes: a kept one when one is large
    /// enough but not much larger (the smallest such), else a new one. Not much larger, since
    /// its pages were all touched: the cache counts a buffer's capacity against its budget, and
    /// a batch in a buffer far larger than itself would waste that room.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        let fits = |b: &Vec<u8>| {
            b.capacity() >= capacity && b.capacity() <= capacity + capacity / 8 + 4096
        };
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, b)| fits(b))
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        match best {
            Some(i) => free.swap_remove(i),
            None => {
                drop(free);
                Vec::with_capacity(capacity)
            }
        }
    }

    /// Keeps `buf` for a later `take`, unless enough are kept already (then it is freed).
    pub fn give(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let kept: usize = free.iter().map(Vec::capacity).sum();
        if free.len() < KEPT_BUFFERS && kept + buf.capacity() <= KEPT_BYTES {
            free.push(buf);
        }
    }

    /// Bytes held by kept buffers.
    pub fn kept_bytes(&self) -> usize {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.iter().map(Vec::capacity).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_taken_again_and_the_limits_hold() {
        let r = Recycler::default();
        let mut a = r.take(1000);
        a.extend_from_slice(&[1; 1000]);
        let at = a.as_ptr();
        r.give(a);
        let b = r.take(500);
        assert_eq!(b.as_ptr(), at, "the kept buffer is reused");
        assert!(b.is_empty(), "handed over empty");
        assert!(
            r.take(2000).capacity() >= 2000,
            "too small kept ones are not handed out"
        );
        for _ in 0..100 {
            r.give(Vec::with_capacity(4 << 20));
        }
        assert!(r.kept_bytes() <= KEPT_BYTES);
        assert!(r.free.lock().unwrap().len() <= KEPT_BUFFERS);
    }
}
