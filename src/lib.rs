//! scdl-fs: BioNeMo SCDL single-cell archives, converted from AnnData `.h5ad` files and served
//! as a FUSE filesystem.
//!
//! Data flows one way through the modules:
//!
//! ```text
//! h5ad (read AnnData) -> convert (pipeline) -> archive (SCDL files) + features (gene index)
//!     archives -> concat -> archive
//!     -> store (archives and inputs on disk) -> catalog (datasets, their states and the work
//!     on them) -> namespace (the mounted tree, plain Rust)
//!     -> fuse (kernel adapter) <- mount (daemon lifecycle)
//! ```
//!
//! `isolate` runs conversions and concats in child processes under resource limits, confined by
//! `confine` (identity, Landlock, seccomp, namespaces) and writing into a `stage` the parent
//! publishes;
//! `render` computes the synthetic files (rows, ranges, npz, feature JSON) from an archive;
//! `obs` keeps per-cell metadata as bionemo-scdl 0.1.3 does, `archive::cellmeta` the neighbor graphs and obsm arrays; `names` validates every user-given name; `space` decides whether an output fits on its disk; `dtype` (element types and exact conversion), `npy`
//! (the .npy format) and `error` serve all of them. The binary (`main.rs`) is a thin
//! command-line edge over this library.

pub mod archive;
pub mod batches;
pub mod catalog;
pub mod concat;
pub mod confine;
pub mod convert;
pub mod dtype;
pub mod error;
pub mod exact_fit;
pub mod features;
pub mod fuse;
pub mod h5ad;
pub mod helper;
pub mod isolate;
pub mod lease;
pub mod mount;
pub mod names;
pub mod namespace;
pub mod npy;
pub mod obs;
pub mod render;
pub mod selection;
pub mod space;
pub mod stage;
pub mod stats;
pub mod store;

pub use error::{Error, Result};
