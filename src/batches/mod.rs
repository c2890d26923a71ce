//! Shuffled minibatches (`batches/<PLAN>/<EPOCH>/<K>.npz|.safetensors`), everything but the
//! mounted tree: `plan` parses the names, `order` computes which rows a batch holds (a keyed
//! permutation, no state), `gather` reads a batch's slices of the archive (all at once, on
//! the calling thread's io_uring: `ring`), `render` sizes and renders a batch from an
//! `Archive`, `cache` keeps rendered batches within a memory budget for readers and prefetching, `buffers` hands the
//! memory of evicted batches to the next renders, `prefetch` renders the next batches in the
//! background.

pub mod buffers;
pub mod cache;
pub mod gather;
pub mod order;
pub mod plan;
pub mod prefetch;
pub mod render;
mod ring;

pub use buffers::Recycler;
pub use cache::{
    map_large_allocations, parse_memory_size, BatchCache, CacheStats, SizeError,
    DEFAULT_BATCH_MEMORY,
};
pub use gather::{ReadPool, DEFAULT_READ_THREADS};
pub use order::{EpochOrder, Run};
pub use plan::{parse_batch_file, parse_epoch, BatchFormat, Plan, PlanError};
pub use prefetch::{Prefetcher, DEFAULT_PREFETCH_DEPTH};
pub use render::{BatchLayout, MAX_BATCH_BYTES};
