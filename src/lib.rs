//! scdl-fs: BioNeMo SCDL single-cell archives, converted from AnnData `.h5ad` files and served
//! as a FUSE filesystem.
//!
//! Data flows one way through the modules:
//!
//! ```text
//! h5ad (read AnnData) -> convert (pipeline) -> archive (SCDL files) + features (gene index)
//! ```
//!
//! `dtype` (element types and exact conversion), `npy` (the .npy format) and `error` serve all
//! of them. The binary (`main.rs`) is a thin command-line edge over this library.

pub mod archive;
pub mod convert;
pub mod dtype;
pub mod error;
pub mod features;
pub mod h5ad;
pub mod npy;

pub use error::{Error, Result};
