//! Shuffled minibatches (`batches/<PLAN>/<EPOCH>/<K>.npz|.safetensors`), everything but the
//! mounted tree: `plan` parses the names, `order` computes which rows a batch holds (a keyed
//! permutation, no state), `render` sizes and renders a batch from an `Archive`, `cache` keeps
//! rendered batches within a memory budget for readers and prefetching, `prefetch` renders the
//! next batches in the background.

pub mod cache;
pub mod order;
pub mod plan;
pub mod prefetch;
pub mod render;

pub use cache::{
    map_large_allocations, parse_memory_size, BatchCache, CacheStats, SizeError,
    DEFAULT_BATCH_MEMORY,
};
pub use order::{EpochOrder, Run};
pub use plan::{parse_batch_file, parse_epoch, BatchFormat, Plan, PlanError};
pub use prefetch::{Prefetcher, DEFAULT_PREFETCH_DEPTH};
pub use render::{BatchLayout, ReadPool, DEFAULT_READ_THREADS, MAX_BATCH_BYTES};
