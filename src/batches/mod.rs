//! Shuffled minibatches (`batches/<PLAN>/<EPOCH>/<K>.npz|.safetensors`), everything but the
//! mounted tree: `plan` parses the names, `order` computes which rows a batch holds (a keyed
//! permutation, no state), `render` sizes and renders a batch from an `Archive`, `cache` keeps
//! rendered batches within a memory budget for readers and prefetching.

pub mod cache;
pub mod order;
pub mod plan;
pub mod render;

pub use cache::{BatchCache, CacheStats, DEFAULT_BATCH_MEMORY};
pub use order::{EpochOrder, Run};
pub use plan::{parse_batch_file, parse_epoch, BatchFormat, Plan, PlanError};
pub use render::{BatchLayout, ReadPool, MAX_BATCH_BYTES};
