//! The mounted tree as plain Rust, independent of FUSE, over the catalogue of datasets: path →
//! node, attributes, directory listings, reads at an offset, and the few writes the mount
//! accepts (drops, `.control`, removing an input). `fuse/` adapts it to the kernel; most tests
//! drive it directly.
//!
//! ```text
//! /.control                      commands in, JSON lines out
//! /NAME.h5ad                     a dropped input
//! /NAME/status.json              state and progress of NAME
//! /NAME/{data.npy,...,features/} the archive's files (read-only, the real store files)
//! /NAME/features/<k>.json        feature block k as JSON
//! /NAME/rows/<i>.npy             row i, dense .npy        /NAME/rows/<a>-<b>.npy  rows [a, b)
//! /NAME/csr/<a>-<b>.npz          rows [a, b) as scipy CSR
//! /NAME/{obs,neighbors,obsm}/    per-cell metadata (metadata.rs)
//! /NAME/batches/<PLAN>/<EPOCH>/<K>.npz|.safetensors   shuffled minibatch K
//! /.stats                        request counters (JSON)
//! ```
//!
//! Files: `inode.rs` (inode numbers, the node tables, names of rows), `node.rs` (names and
//! inodes to nodes), `readdir.rs`, `upload.rs` (drops and removals), `control.rs`,
//! `batches.rs` (the `batches/` tree and its cache); here the attributes, opens and reads, and
//! the request counters of `.stats`.

mod batches;
mod control;
mod inode;
mod metadata;
mod node;
mod page;
mod readdir;
mod upload;

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

pub use batches::BatchOptions;
pub use inode::ROOT_INO;

use crate::catalog::{Catalog, CatalogError, CatalogOptions, Dataset, Observer, ReadyDataset};
use crate::names::DatasetName;
use crate::render;
use crate::stats::RequestStats;
use batches::{BatchKey, Batches};
use control::ControlLog;
use inode::{Kind, RangeTable};
use node::{Node, Part};

/// What went wrong, as the kernel will be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsError {
    NotFound,
    ReadOnly,
    Access,
    Exists,
    Busy,
    NotDir,
    IsDir,
    TooBig,
    /// A rejected command or name, with the reason (also recorded in `.control`).
    Invalid(String),
    Io(String),
}

pub type FsResult<T> = Result<T, FsError>;

impl From<CatalogError> for FsError {
    fn from(e: CatalogError) -> FsError {
        match e {
            CatalogError::NotFound => FsError::NotFound,
            CatalogError::Exists => FsError::Exists,
            CatalogError::Busy => FsError::Busy,
            CatalogError::Refused(m) => FsError::Invalid(m),
            CatalogError::Io(m) => FsError::Io(m),
        }
    }
}

fn io_err(e: impl std::fmt::Display) -> FsError {
    FsError::Io(e.to_string())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeType {
    Dir,
    File,
}

/// Attributes of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: NodeType,
    pub size: u64,
    pub perm: u16,
    /// The owning group when it is not the daemon's: the writers group (`--writers`) on the
    /// nodes it may write (the root, `.control`, uploads).
    pub group: Option<u32>,
    pub mtime: SystemTime,
    /// How long the kernel may cache this node's attributes and name.
    pub ttl: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    /// The offset of the entry after this one (what readdir is called with next).
    pub next: u64,
    pub kind: NodeType,
    pub name: String,
}

/// How an opened file should be served.
#[derive(Debug)]
pub struct Opened {
    pub fh: u64,
    /// Contents change while open (status, .control): bypass the page cache.
    pub direct_io: bool,
    /// Immutable contents: the kernel may keep its cache across opens.
    pub keep_cache: bool,
    /// A real store file the kernel may read directly (FUSE passthrough).
    pub backing: Option<Arc<File>>,
}

/// The bytes a read answers with: its own, or a slice of a rendered batch that the cache
/// shares (no copy on the way to the transport, which copies it into the kernel's buffer).
pub enum ReadBytes {
    Owned(Vec<u8>),
    Shared(Arc<Vec<u8>>, std::ops::Range<usize>),
}

impl std::ops::Deref for ReadBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            ReadBytes::Owned(v) => v,
            ReadBytes::Shared(b, r) => &b[r.clone()],
        }
    }
}

impl ReadBytes {
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            ReadBytes::Owned(v) => v,
            ReadBytes::Shared(..) => self.to_vec(),
        }
    }
}

/// Time-to-live of names and attributes that can change (the root, dataset directories, status).
const SHORT_TTL: Duration = Duration::from_secs(1);
/// Inside a ready dataset nothing changes: cache for long.
const LONG_TTL: Duration = Duration::from_secs(3600);

/// Options of the mount that affect the tree.
#[derive(Clone, Debug, Default)]
pub struct NamespaceOptions {
    pub catalog: CatalogOptions,
    /// A group whose members may drop files, remove inputs and write `.control` (with
    /// `--allow-other`); otherwise only the mounting user may.
    pub writers: Option<u32>,
    pub batches: BatchOptions,
}

/// The kernel's cache of names, as the tree corrects it when datasets go away.
pub trait KernelCache: Send + Sync {
    /// Drops the cached entry `name` of directory `parent` now. Not to be called during a
    /// request for which the kernel holds `parent` locked (unlink, lookup): it would deadlock.
    fn forget_entry(&self, parent: u64, name: &str);
    /// The same, from another thread: safe during any request.
    fn forget_entry_later(&self, parent: u64, name: &str);
}

/// Where the kernel's cache is, once mounted.
#[derive(Default)]
struct KernelLink(OnceLock<Arc<dyn KernelCache>>);

impl KernelLink {
    /// Drops the kernel's cached names of a dataset that went away (see `forget_entry`).
    fn forget_names(&self, name: &DatasetName) {
        if let Some(k) = self.0.get() {
            k.forget_entry(ROOT_INO, name.as_str());
            k.forget_entry(ROOT_INO, &name.input_file_name());
        }
    }

    /// Drops the kernel's name `name` in directory `parent`, from another thread.
    fn forget_entry_later(&self, parent: u64, name: &str) {
        if let Some(k) = self.0.get() {
            k.forget_entry_later(parent, name);
        }
    }

    fn forget_names_later(&self, name: &DatasetName) {
        if let Some(k) = self.0.get() {
            k.forget_entry_later(ROOT_INO, name.as_str());
            k.forget_entry_later(ROOT_INO, &name.input_file_name());
        }
    }
}

/// What the tree does when the catalogue reports: stale names leave the kernel's cache, and
/// concat outcomes go to the `.control` log.
struct TreeObserver {
    kernel: Arc<KernelLink>,
    control: Arc<ControlLog>,
}

impl Observer for TreeObserver {
    fn gone(&self, name: &DatasetName) {
        self.kernel.forget_names_later(name);
    }

    fn concat_ended(&self, command: &str, outcome: Result<String, String>) {
        self.control.record(command, outcome);
    }
}

enum Handle {
    /// A real file read with pread (inputs, archive files when passthrough is off).
    File(Arc<File>),
    /// A csr .npz, rendered whole at the first read that reaches the daemon (a re-opened range
    /// whose pages the kernel still caches is never rendered again), immutable after.
    Npz(Arc<OnceLock<FsResult<Vec<u8>>>>),
    /// Contents computed at each read (rows, ranges, feature json).
    Computed,
    /// Contents taken once at open (status.json, `.control` read): however the reader splits
    /// its reads, one open reads one consistent document, and the next open a newer one.
    Snapshot(Arc<[u8]>),
    /// An input being written through the mount.
    Upload { dataset: Arc<Dataset>, file: File },
    /// `.control` opened for writing: bytes of an unfinished line.
    Control(Vec<u8>),
    /// A batch file: its bytes are the cache's (or rendered again), never held by the handle,
    /// so that open handles cannot hold memory beyond the budget.
    Batch(Arc<ReadyDataset>, BatchKey, u64),
}

pub struct Namespace {
    catalog: Arc<Catalog>,
    writers: Option<u32>,
    ranges: RangeTable,
    meta_ranges: inode::NodeTable<metadata::MetaRange>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    control: Arc<ControlLog>,
    kernel: Arc<KernelLink>,
    started: SystemTime,
    batches: Arc<Batches>,
    requests: RequestStats,
}

impl Namespace {
    /// The tree over the catalogue of `store` (which registers what the store holds).
    pub fn new(store: crate::store::Store, options: NamespaceOptions) -> Arc<Namespace> {
        let kernel = Arc::new(KernelLink::default());
        let control = Arc::new(ControlLog::default());
        let observer = TreeObserver {
            kernel: kernel.clone(),
            control: control.clone(),
        };
        Arc::new(Namespace {
            catalog: Catalog::new(store, options.catalog, Arc::new(observer)),
            writers: options.writers,
            ranges: RangeTable::default(),
            meta_ranges: Default::default(),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            control,
            kernel,
            started: SystemTime::now(),
            batches: Arc::new(Batches::new(options.batches)),
            requests: RequestStats::new(),
        })
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn store(&self) -> &crate::store::Store {
        self.catalog.store()
    }

    /// Connects the tree to the kernel's cache of names (once mounted).
    pub fn set_kernel_cache(&self, cache: Arc<dyn KernelCache>) {
        let _ = self.kernel.0.set(cache);
    }

    /// Starts the catalogue's workers and rescans (they stop at `shutdown`).
    pub fn start_workers(&self) -> Vec<std::thread::JoinHandle<()>> {
        self.catalog.start_workers()
    }

    pub fn shutdown(&self) {
        self.batches.stop();
        self.catalog.shutdown();
    }

    /// Waits until no conversion is queued or running (for tests and orderly shutdown).
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        self.catalog.wait_idle(timeout)
    }

    /// Number of range inodes the kernel still holds (for tests: memory stays flat).
    pub fn range_nodes(&self) -> usize {
        self.ranges.len()
    }

    pub fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        let ino = self.child(parent, name)?;
        self.getattr(ino)
    }

    /// Number of batch nodes (below `batches/`) the kernel still holds (also in `.stats`).
    pub fn batch_nodes(&self) -> usize {
        self.batches.nodes()
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        match inode::split(ino) {
            Some((Kind::Range, _, id)) => self.ranges.forget(id, n),
            Some((Kind::MetaRange, _, id)) => self.meta_ranges.forget(id, n),
            Some((Kind::Batch, _, id)) => self.batches.forget(id, n),
            _ => {}
        }
    }

    /// Counts one request (`op`) on `ino` for `.stats`.
    pub fn record(&self, ino: u64, op: &'static str, bytes: u64, latency: Duration, ok: bool) {
        self.requests
            .record(self.path_kind(ino), op, bytes, latency, ok);
    }

    /// What `.stats` files a request on `ino` under.
    fn path_kind(&self, ino: u64) -> &'static str {
        let Some((kind, _, index)) = inode::split(ino) else {
            return "root";
        };
        match kind {
            Kind::DatasetDir | Kind::Status => "dataset",
            Kind::Input => "input",
            Kind::ArchiveFile => "archive",
            Kind::FeaturesDir | Kind::FeatureJson | Kind::FeatureFile => "features",
            Kind::RowsDir | Kind::Row => "rows",
            Kind::CsrDir => "csr",
            Kind::Range => match self.ranges.get(index) {
                Some(r) if r.csr => "csr",
                _ => "rows",
            },
            Kind::BatchesDir | Kind::Batch => "batches",
            Kind::MetaDir | Kind::MetaFile | Kind::MetaRange | Kind::MetaStore => "cells",
        }
    }

    /// The `.stats` document: requests per path kind and operation, the batch cache's counters.
    fn stats_json(&self) -> Vec<u8> {
        let mut extra = serde_json::Map::new();
        let cache = self.batches.cache_stats();
        extra.insert(
            "prefetch".into(),
            serde_json::to_value(cache).expect("serialisable"),
        );
        extra.insert("batch_memory".into(), self.batches.budget().into());
        extra.insert("batch_nodes".into(), self.batches.nodes().into());
        self.requests.to_json(extra)
    }

    /// Whether the kernel should drop `ino`'s cached pages when it is closed: a row file, computed
    /// on demand and rarely read twice. Kept, the page cache of randomly read rows only grows,
    /// and every row then fills newly allocated pages, which costs more than the row itself
    /// (on VMs that return free memory to the host, a fault in the host per page); dropped,
    /// the next row reuses the same pages. Ranges are not cached at all (direct I/O).
    pub fn drop_cache_at_close(ino: u64) -> bool {
        matches!(inode::split(ino), Some((Kind::Row, _, _)))
    }

    // ------------------------------------------------------------------------------ getattr

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let node = self.node(ino)?;
        self.attr(ino, &node)
    }

    fn attr(&self, ino: u64, node: &Node) -> FsResult<Attr> {
        let now = SystemTime::now();
        match node {
            Node::Root => Ok(self.writable(dir(ino, 0o755, self.started, SHORT_TTL))),
            Node::Control => {
                let size = self.control.text().len() as u64;
                Ok(self.writable(file(ino, size, 0o644, now, Duration::ZERO)))
            }
            Node::DatasetDir(ds) => Ok(dir(ino, 0o555, ds.since(), SHORT_TTL)),
            Node::Status(ds) => {
                let size = ds.status_json().len() as u64;
                Ok(file(ino, size, 0o444, now, Duration::ZERO))
            }
            Node::Stats => {
                let size = self.stats_json().len() as u64;
                Ok(file(ino, size, 0o444, now, Duration::ZERO))
            }
            Node::Input(ds) => self.input_attr(ino, ds),
            Node::Ready(ds, r, part) => {
                let mtime = ds.since();
                let size = match part {
                    Part::FeaturesDir | Part::RowsDir | Part::CsrDir | Part::BatchesDir => {
                        return Ok(dir(ino, 0o555, mtime, LONG_TTL))
                    }
                    Part::BatchDir(_) => return Ok(dir(ino, 0o555, mtime, LONG_TTL)),
                    Part::BatchFile(_, Some(size)) => *size,
                    Part::BatchFile(key, None) => self.batches.file_size(r, key)?,
                    Part::File(path) => {
                        let m = std::fs::metadata(path).map_err(io_err)?;
                        let mtime = m.modified().unwrap_or(mtime);
                        return Ok(file(ino, m.len(), 0o444, mtime, LONG_TTL));
                    }
                    Part::FeatureJson(k) => {
                        r.feature_json(*k).ok_or(FsError::NotFound)?.len() as u64
                    }
                    Part::Row(span) => span.dense_size(&r.archive),
                    Part::Range { span, csr: false } => span.dense_size(&r.archive),
                    Part::Range { span, csr: true } => {
                        render::npz_size(&r.archive, span).map_err(io_err)?
                    }
                    Part::Meta(m) => match self.meta_size(r, m)? {
                        Some(size) => size,
                        None => return Ok(dir(ino, 0o555, mtime, LONG_TTL)),
                    },
                };
                Ok(file(ino, size, 0o444, mtime, LONG_TTL))
            }
        }
    }

    /// An input: read-only once published, writable (by the writers) while uploading.
    fn input_attr(&self, ino: u64, ds: &Dataset) -> FsResult<Attr> {
        let m = std::fs::metadata(self.catalog.input_path(ds)).map_err(|_| FsError::NotFound)?;
        let mtime = m.modified().unwrap_or(ds.since());
        if ds.is_uploading() {
            Ok(self.writable(file(ino, m.len(), 0o644, mtime, SHORT_TTL)))
        } else {
            Ok(file(ino, m.len(), 0o444, mtime, SHORT_TTL))
        }
    }

    /// The kernel checks modes (default_permissions): who may write is decided here.
    fn writable(&self, a: Attr) -> Attr {
        match self.writers {
            Some(gid) => Attr {
                perm: a.perm | 0o020,
                group: Some(gid),
                ..a
            },
            None => a,
        }
    }

    // ------------------------------------------------------------------------------ open/read

    fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().expect("handles").insert(fh, h);
        fh
    }

    fn opened(&self, h: Handle, direct_io: bool, keep_cache: bool) -> Opened {
        Opened {
            fh: self.new_handle(h),
            direct_io,
            keep_cache,
            backing: None,
        }
    }

    /// Opens `ino`; `write` when the caller asked for write access, `truncate` for O_TRUNC.
    pub fn open(&self, ino: u64, write: bool, truncate: bool) -> FsResult<Opened> {
        let _ = truncate;
        let node = self.node(ino)?;
        if let Node::Control = node {
            return Ok(self.opened(self.control.open(write), true, false));
        }
        let attr = self.attr(ino, &node)?;
        if attr.kind == NodeType::Dir {
            return Err(FsError::IsDir);
        }
        if write {
            // Only an upload in progress is writable (by the handle that created it).
            return Err(match node {
                Node::Input(_) => FsError::Access,
                _ => FsError::ReadOnly,
            });
        }
        match node {
            Node::Status(ds) => {
                Ok(self.opened(Handle::Snapshot(ds.status_json().into()), true, false))
            }
            Node::Stats => Ok(self.opened(Handle::Snapshot(self.stats_json().into()), true, false)),
            Node::Ready(_, r, Part::BatchFile(key, _)) => {
                self.batches.prefetch_after(&r, &key);
                Ok(self.opened(Handle::Batch(r, key, attr.size), true, false))
            }
            Node::Input(ds) => {
                let f = File::open(self.catalog.input_path(&ds)).map_err(|_| FsError::NotFound)?;
                Ok(self.opened(Handle::File(Arc::new(f)), false, false))
            }
            Node::Ready(_, _, Part::File(path)) => {
                let f = Arc::new(File::open(path).map_err(io_err)?);
                // The real file: with passthrough the kernel reads it without the daemon.
                let backing = Some(f.clone());
                Ok(Opened {
                    backing,
                    ..self.opened(Handle::File(f), false, true)
                })
            }
            Node::Ready(_, _, Part::Range { csr: true, .. }) => {
                if attr.size > render::MAX_NPZ_BYTES {
                    return Err(FsError::TooBig);
                }
                Ok(self.opened(Handle::Npz(Arc::new(OnceLock::new())), true, false))
            }
            Node::Ready(_, _, Part::Range { .. }) => Ok(self.opened(Handle::Computed, true, false)),
            Node::Ready(_, r, Part::Meta(m)) => match self.meta_render(&r, &m)? {
                Some(bytes) => Ok(self.opened(Handle::Snapshot(bytes.into()), false, true)),
                None => Ok(self.opened(Handle::Computed, false, true)),
            },
            _ => Ok(self.opened(Handle::Computed, false, true)),
        }
    }

    pub fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        self.read_bytes(ino, fh, offset, size)
            .map(ReadBytes::into_vec)
    }

    /// `read`, without copying what the batch cache already holds.
    pub fn read_bytes(&self, ino: u64, fh: u64, offset: u64, size: u32) -> FsResult<ReadBytes> {
        let owned = |r: FsResult<Vec<u8>>| r.map(ReadBytes::Owned);
        let slice = |bytes: &[u8]| {
            let start = (offset as usize).min(bytes.len());
            let end = start.saturating_add(size as usize).min(bytes.len());
            bytes[start..end].to_vec()
        };
        let handle = match self.handles.lock().expect("handles").get(&fh) {
            Some(Handle::File(f)) => Some(Handle::File(f.clone())),
            Some(Handle::Npz(b)) => Some(Handle::Npz(b.clone())),
            Some(Handle::Snapshot(b)) => Some(Handle::Snapshot(b.clone())),
            Some(Handle::Batch(r, key, size)) => Some(Handle::Batch(r.clone(), *key, *size)),
            _ => None,
        };
        match handle {
            Some(Handle::File(file)) => return owned(read_at(&file, offset, size)),
            Some(Handle::Npz(npz)) => {
                let bytes = npz.get_or_init(|| self.render_npz(ino));
                return owned(bytes.as_ref().map(|b| slice(b)).map_err(Clone::clone));
            }
            Some(Handle::Snapshot(bytes)) => return Ok(ReadBytes::Owned(slice(&bytes))),
            Some(Handle::Batch(r, key, file_size)) => {
                return self.batches.read(&r, &key, file_size, offset, size);
            }
            _ => {}
        }
        owned(match self.node(ino)? {
            Node::Control => Ok(slice(self.control.text().as_bytes())),
            Node::Ready(_, r, Part::FeatureJson(k)) => {
                Ok(slice(r.feature_json(k).ok_or(FsError::NotFound)?))
            }
            Node::Ready(_, r, Part::Row(span) | Part::Range { span, .. }) => span
                .dense_read(&r.archive, offset, size as usize)
                .map_err(io_err),
            Node::Ready(_, r, Part::Meta(m)) => self.meta_read(&r, &m, offset, size),
            _ => Err(FsError::NotFound),
        })
    }

    /// The whole `csr/<a>-<b>.npz` of range inode `ino`.
    fn render_npz(&self, ino: u64) -> FsResult<Vec<u8>> {
        let Node::Ready(_, r, Part::Range { span, .. }) = self.node(ino)? else {
            return Err(FsError::NotFound);
        };
        render::npz(&r.archive, &span).map_err(|e| match e {
            crate::Error::Usage(_) => FsError::TooBig,
            e => io_err(e),
        })
    }

    /// Writes to an upload, or commands to `.control`.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let mut handles = self.handles.lock().expect("handles");
        match handles.get_mut(&fh) {
            Some(Handle::Upload { file, dataset }) => {
                dataset.mark_upload_flushed(false);
                file.write_all_at(data, offset).map_err(io_err)?;
                Ok(data.len() as u32)
            }
            Some(Handle::Control(pending)) => {
                let lines = control::complete_lines(pending, data);
                drop(handles);
                for line in lines {
                    self.run_command_bytes(&line)?;
                }
                Ok(data.len() as u32)
            }
            Some(_) => Err(FsError::ReadOnly),
            None => Err(FsError::Io("bad file handle".into())),
        }
    }

    /// Closes a handle: a finished upload becomes NAME.h5ad and is queued for conversion; a
    /// `.control` line without a final newline is run.
    pub fn release(&self, fh: u64) -> FsResult<()> {
        let h = self.handles.lock().expect("handles").remove(&fh);
        match h {
            Some(Handle::Upload { dataset, file }) => {
                Ok(self.catalog.publish_upload(dataset, file)?)
            }
            Some(Handle::Control(pending)) if !pending.iter().all(u8::is_ascii_whitespace) => {
                self.run_command_bytes(&pending)
            }
            Some(Handle::Batch(_, key, _)) => {
                // A batch file is read once an epoch: the names of closed ones are dropped from
                // the kernel's cache, so that the kernel forgets their nodes and the daemon's
                // table of batch nodes stays small however many files a run reads. (The kernel
                // keeps unused FUSE names until memory pressure, even with no time to live.)
                for (parent, name) in self.batches.closed(&key) {
                    self.kernel.forget_entry_later(parent, &name);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn dir(ino: u64, perm: u16, mtime: SystemTime, ttl: Duration) -> Attr {
    Attr {
        ino,
        kind: NodeType::Dir,
        size: 0,
        perm,
        group: None,
        mtime,
        ttl,
    }
}

fn file(ino: u64, size: u64, perm: u16, mtime: SystemTime, ttl: Duration) -> Attr {
    Attr {
        ino,
        kind: NodeType::File,
        size,
        perm,
        group: None,
        mtime,
        ttl,
    }
}

/// Up to `size` bytes of `f` at `offset`: pread until full or end of file.
fn read_at(f: &File, offset: u64, size: u32) -> FsResult<Vec<u8>> {
    let mut buf = vec![0u8; size as usize];
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    buf.truncate(n);
    Ok(buf)
}
