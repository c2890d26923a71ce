//! The mounted tree as plain Rust, independent of FUSE: path → node, attributes, directory
//! listings, reads at an offset, and the few writes the mount accepts (drops, `.control`,
//! removing an input). `fuse.rs` adapts it to the kernel; most tests drive it directly.
//!
//! ```text
//! /.control                      commands in, JSON lines out
//! /NAME.h5ad                     a dropped input
//! /NAME/status.json              state and progress of NAME
//! /NAME/{data.npy,...,features/} the archive's files (read-only, the real store files)
//! /NAME/features/<k>.json        feature block k as JSON
//! /NAME/rows/<i>.npy             row i, dense .npy        /NAME/rows/<a>-<b>.npy  rows [a, b)
//! /NAME/csr/<a>-<b>.npz          rows [a, b) as scipy CSR
//! ```
//!
//! Inode numbers are derived from (kind, dataset, index), so reading 10^6 distinct row files
//! allocates nothing; only ranges (two numbers) live in a table, dropped when the kernel forgets
//! them.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::archive::{Archive, FileNames};
use crate::convert::{self, ConvertOptions, Progress};
use crate::lease::{Claim, Holder, Lease};
use crate::names::DatasetName;
use crate::render::{self, RowSpan};
use crate::store::{ConcatJob, Store};

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

// ---------------------------------------------------------------------------------- inodes

pub const ROOT_INO: u64 = 1;
const CONTROL_INO: u64 = 2;
const KIND_SHIFT: u32 = 56;
const DATASET_SHIFT: u32 = 40;
const INDEX_MASK: u64 = (1 << DATASET_SHIFT) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
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
        ]
        .into_iter()
        .find(|x| *x as u8 == k)
    }
}

fn ino(kind: Kind, dataset: u16, index: u64) -> u64 {
    ((kind as u64) << KIND_SHIFT) | ((dataset as u64) << DATASET_SHIFT) | (index & INDEX_MASK)
}

fn split(ino: u64) -> Option<(Kind, u16, u64)> {
    let kind = Kind::from_u8((ino >> KIND_SHIFT) as u8)?;
    Some((
        kind,
        ((ino >> DATASET_SHIFT) & 0xffff) as u16,
        ino & INDEX_MASK,
    ))
}

/// The archive files served at the top of a ready dataset, in listing order.
const ARCHIVE_FILES: [&str; 7] = [
    FileNames::DATA,
    FileNames::COL_PTR,
    FileNames::ROW_PTR,
    FileNames::METADATA,
    FileNames::DTYPES,
    FileNames::VERSION,
    FileNames::HEADER,
];

/// Time-to-live of names and attributes that can change (the root, dataset directories, status).
const SHORT_TTL: Duration = Duration::from_secs(1);
/// Inside a ready dataset nothing changes: cache for long.
const LONG_TTL: Duration = Duration::from_secs(3600);
/// A lookup miss rescans the store at most this often (other daemons publish into it).
const RESCAN_AFTER_MISS: Duration = Duration::from_millis(250);
/// The store is also rescanned this often, so datasets published or deleted by other daemons
/// over a shared store appear and disappear without a lookup (no inotify: it misses NFS).
const RESCAN_INTERVAL: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------- datasets

#[derive(Clone)]
enum State {
    Uploading,
    Queued,
    Converting,
    /// Being converted or concatenated by another daemon over the same store.
    Remote(Holder),
    Ready(Arc<ReadyDataset>),
    Failed(String),
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Uploading => "uploading",
            State::Queued => "queued",
            State::Converting | State::Remote(_) => "converting",
            State::Ready(_) => "ready",
            State::Failed(_) => "failed",
        }
    }
}

/// A published archive and the listing of its files.
pub struct ReadyDataset {
    pub archive: Archive,
    archive_files: Vec<&'static str>,
    feature_dir: PathBuf,
    feature_files: Vec<String>,
    feature_json: Vec<std::sync::OnceLock<Vec<u8>>>,
}

impl ReadyDataset {
    fn new(archive: Archive) -> ReadyDataset {
        let archive_files = ARCHIVE_FILES
            .iter()
            .copied()
            .filter(|f| archive.path.join(f).is_file())
            .collect();
        let feature_dir = [FileNames::FEATURES, FileNames::VAR_FEATURES]
            .iter()
            .map(|d| archive.path.join(d))
            .find(|d| d.is_dir())
            .unwrap_or_else(|| archive.path.join(FileNames::FEATURES));
        let mut feature_files: Vec<String> = std::fs::read_dir(&feature_dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        feature_files.sort();
        let blocks = archive.features.blocks.len();
        ReadyDataset {
            archive,
            archive_files,
            feature_dir,
            feature_files,
            feature_json: (0..blocks).map(|_| std::sync::OnceLock::new()).collect(),
        }
    }

    fn feature_json(&self, k: usize) -> Option<&[u8]> {
        let cell = self.feature_json.get(k)?;
        Some(cell.get_or_init(|| render::feature_json(&self.archive, k).unwrap_or_default()))
    }
}

struct Dataset {
    id: u16,
    name: DatasetName,
    state: Mutex<State>,
    rows_done: AtomicU64,
    rows_total: AtomicU64,
    has_input: AtomicBool,
    /// An upload whose writer has closed a descriptor (FUSE flush) but not yet released the
    /// file: it is about to be published (see `Namespace::flush`).
    upload_flushed: AtomicBool,
    /// NAME's store-wide lease while this daemon uploads, converts or concatenates it.
    lease: Mutex<Option<Lease>>,
    since: SystemTime,
}

impl Dataset {
    fn state(&self) -> State {
        self.state.lock().expect("state lock").clone()
    }

    fn set_state(&self, s: State) {
        *self.state.lock().expect("state lock") = s;
    }

    fn busy(&self) -> bool {
        matches!(
            self.state(),
            State::Uploading | State::Queued | State::Converting | State::Remote(_)
        )
    }

    /// Serves `archive` as this dataset, with its progress complete.
    fn set_ready(&self, archive: Archive) {
        self.rows_total.store(archive.num_rows, Ordering::Relaxed);
        self.rows_done.store(archive.num_rows, Ordering::Relaxed);
        self.set_state(State::Ready(Arc::new(ReadyDataset::new(archive))));
    }

    fn keep_lease(&self, lease: Lease) {
        *self.lease.lock().expect("lease") = Some(lease);
    }

    fn take_lease(&self) -> Option<Lease> {
        self.lease.lock().expect("lease").take()
    }

    fn ready(&self) -> Option<Arc<ReadyDataset>> {
        match self.state() {
            State::Ready(r) => Some(r),
            _ => None,
        }
    }

    fn status_json(&self) -> Vec<u8> {
        let state = self.state();
        let mut v = serde_json::json!({
            "name": self.name.as_str(),
            "state": state.name(),
            "rows_done": self.rows_done.load(Ordering::Relaxed),
            "rows_total": self.rows_total.load(Ordering::Relaxed),
            "error": match &state { State::Failed(e) => Some(e.clone()), _ => None },
            "input": self.has_input.load(Ordering::Relaxed),
        });
        if let State::Remote(h) = &state {
            v["by"] = format!("{} (pid {})", h.host, h.pid).into();
        }
        if let State::Ready(r) = &state {
            v["nnz"] = r.archive.nnz.into();
            v["data_dtype"] = r.archive.data_dtype.name().into();
            v["feature_blocks"] = r.archive.features.blocks.len().into();
        }
        let mut b = serde_json::to_vec(&v).expect("serialisable");
        b.push(b'\n');
        b
    }
}

impl Progress for Dataset {
    fn start(&self, total_rows: u64) {
        self.rows_total.store(total_rows, Ordering::Relaxed);
        self.rows_done.store(0, Ordering::Relaxed);
    }
    fn rows_done(&self, rows: u64) {
        self.rows_done.fetch_add(rows, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Registry {
    by_name: HashMap<DatasetName, Arc<Dataset>>,
    by_id: HashMap<u16, Arc<Dataset>>,
    next_id: u16,
}

impl Registry {
    fn insert(&mut self, name: DatasetName, state: State) -> Option<Arc<Dataset>> {
        if self.by_id.len() >= u16::MAX as usize {
            return None;
        }
        // Ids are not reused while the daemon runs, so a re-created name gets fresh inodes.
        let id = loop {
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if !self.by_id.contains_key(&self.next_id) {
                break self.next_id;
            }
        };
        let ds = Arc::new(Dataset {
            id,
            name: name.clone(),
            state: Mutex::new(state),
            rows_done: AtomicU64::new(0),
            rows_total: AtomicU64::new(0),
            has_input: AtomicBool::new(false),
            upload_flushed: AtomicBool::new(false),
            lease: Mutex::new(None),
            since: SystemTime::now(),
        });
        self.by_name.insert(name, ds.clone());
        self.by_id.insert(id, ds.clone());
        Some(ds)
    }

    fn remove(&mut self, name: &DatasetName) {
        if let Some(ds) = self.by_name.remove(name) {
            self.by_id.remove(&ds.id);
        }
    }
}

// ---------------------------------------------------------------------------------- handles

struct RangeNode {
    dataset: u16,
    csr: bool,
    first: u64,
    end: u64,
    lookups: u64,
}

#[derive(Default)]
struct RangeTable {
    ids: HashMap<(u16, bool, u64, u64), u64>,
    nodes: HashMap<u64, RangeNode>,
    next: u64,
}

enum Handle {
    /// A real file read with pread (inputs, archive files when passthrough is off).
    File(Arc<File>),
    /// A csr .npz, rendered whole at the first read that reaches the daemon (a re-opened range
    /// whose pages the kernel still caches is never rendered again), immutable after.
    Npz(Arc<std::sync::OnceLock<FsResult<Vec<u8>>>>),
    /// Contents computed at each read (rows, ranges, feature json).
    Computed,
    /// Contents taken once at open (status.json, `.control` read): however the reader splits
    /// its reads, one open reads one consistent document, and the next open a newer one.
    Snapshot(Arc<[u8]>),
    /// An input being written through the mount.
    Upload { dataset: Arc<Dataset>, file: File },
    /// `.control` opened for writing: bytes of an unfinished line.
    Control(Vec<u8>),
}

/// One command and its outcome, as `.control` shows it.
#[derive(serde::Serialize)]
struct ControlRecord {
    time: u64,
    command: String,
    ok: bool,
    message: String,
}

const CONTROL_HISTORY: usize = 100;

/// Work for the conversion workers.
enum Job {
    Convert(Arc<Dataset>),
    /// Concatenate ready datasets `sources` into `target` (created in state converting).
    Concat {
        target: Arc<Dataset>,
        sources: Vec<String>,
        command: String,
    },
}

// ---------------------------------------------------------------------------------- namespace

/// Options of the mount that affect the namespace.
#[derive(Clone, Debug, Default)]
pub struct NamespaceOptions {
    pub convert: ConvertOptions,
    /// Conversion worker threads.
    pub workers: usize,
    /// Run each conversion in a child process of this binary (the mount always does); `None`
    /// converts in-process (tests of the namespace alone).
    pub converter: Option<PathBuf>,
    pub limits: crate::isolate::Limits,
    /// How the child processes are confined.
    pub confinement: crate::isolate::Confinement,
    /// A group whose members may drop files, remove inputs and write `.control` (with
    /// `--allow-other`); otherwise only the mounting user may.
    pub writers: Option<u32>,
}

pub struct Namespace {
    store: Store,
    options: NamespaceOptions,
    registry: RwLock<Registry>,
    ranges: Mutex<RangeTable>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    control_log: Mutex<VecDeque<String>>,
    jobs: Mutex<VecDeque<Job>>,
    jobs_ready: Condvar,
    shutting_down: AtomicBool,
    last_rescan: Mutex<std::time::Instant>,
    started: SystemTime,
    invalidator: std::sync::OnceLock<Arc<Invalidator>>,
    /// Names to invalidate from outside any request (see `forget_names_later`).
    invalidations: Mutex<Option<std::sync::mpsc::Sender<DatasetName>>>,
}

/// Tells the kernel to drop a cached name (parent inode, name) that no longer exists.
pub type Invalidator = Box<dyn Fn(u64, &str) + Send + Sync>;

fn io_err(e: impl std::fmt::Display) -> FsError {
    FsError::Io(e.to_string())
}

impl Namespace {
    /// Opens the store and registers what it holds: archives (ready, or failed when corrupt)
    /// and inputs (queued for conversion unless their failure is recorded).
    pub fn new(store: Store, options: NamespaceOptions) -> Arc<Namespace> {
        let ns = Arc::new(Namespace {
            store,
            options,
            registry: RwLock::new(Registry::default()),
            ranges: Mutex::new(RangeTable::default()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            control_log: Mutex::new(VecDeque::new()),
            jobs: Mutex::new(VecDeque::new()),
            jobs_ready: Condvar::new(),
            shutting_down: AtomicBool::new(false),
            last_rescan: Mutex::new(std::time::Instant::now()),
            started: SystemTime::now(),
            invalidator: std::sync::OnceLock::new(),
            invalidations: Mutex::new(None),
        });
        ns.rescan();
        ns
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Installs the kernel-cache invalidation hook (the FUSE adapter's notifier).
    pub fn set_invalidator(&self, f: Invalidator) {
        let f = Arc::new(f);
        if self.invalidator.set(f.clone()).is_err() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel::<DatasetName>();
        *self.invalidations.lock().expect("invalidations") = Some(tx);
        std::thread::spawn(move || {
            for name in rx {
                f(ROOT_INO, name.as_str());
                f(ROOT_INO, &name.input_file_name());
            }
        });
    }

    /// Drops the kernel's cached names of a dataset that went away. Not to be called while the
    /// kernel holds the root directory locked for this request (unlink): see `forget_names_later`.
    fn forget_names(&self, name: &DatasetName) {
        if let Some(f) = self.invalidator.get() {
            f(ROOT_INO, name.as_str());
            f(ROOT_INO, &name.input_file_name());
        }
    }

    /// Invalidation from a thread of its own: for requests during which the kernel holds the
    /// root directory (unlink, lookup), where a synchronous invalidation would deadlock.
    fn forget_names_later(&self, name: DatasetName) {
        if let Some(tx) = self.invalidations.lock().expect("invalidations").as_ref() {
            let _ = tx.send(name);
        }
    }

    /// Starts the conversion workers and the periodic store rescan (they stop at `shutdown`).
    pub fn start_workers(self: &Arc<Self>) -> Vec<std::thread::JoinHandle<()>> {
        let ns = self.clone();
        let rescanner = std::thread::Builder::new()
            .name("rescan".into())
            .spawn(move || {
                // The heartbeat keeps this daemon's leases alive; it must beat well within the
                // stale period, which may be shorter than the rescan interval.
                let beat = ns.store.leases().heartbeat_interval().min(RESCAN_INTERVAL);
                let mut last_scan = std::time::Instant::now();
                while !ns.shutting_down.load(Ordering::SeqCst) {
                    std::thread::sleep(beat);
                    ns.store.leases().heartbeat();
                    if last_scan.elapsed() >= RESCAN_INTERVAL {
                        last_scan = std::time::Instant::now();
                        ns.rescan();
                    }
                }
            })
            .expect("spawn rescan");
        std::iter::once(rescanner)
            .chain((0..self.options.workers.max(1)).map(|i| {
                let ns = self.clone();
                std::thread::Builder::new()
                    .name(format!("convert-{i}"))
                    .spawn(move || ns.worker())
                    .expect("spawn worker")
            }))
            .collect()
    }

    pub fn shutdown(&self) {
        // Under the jobs lock: a worker between its check of the flag and its wait would miss a
        // notification sent without it and wait forever (found by the control fuzz target, a
        // join of the workers hung).
        let _jobs = self.jobs.lock().expect("jobs");
        self.shutting_down.store(true, Ordering::SeqCst);
        self.jobs_ready.notify_all();
    }

    /// Registers datasets found in the store that the registry does not know yet, follows those
    /// another daemon is working on, and forgets those whose files disappeared (deleted by hand
    /// or by another daemon).
    pub fn rescan(&self) {
        let Ok(found) = self.store.scan() else { return };
        let mut reg = self.registry.write().expect("registry");
        let present: std::collections::HashSet<&DatasetName> =
            found.iter().map(|(n, _)| n).collect();
        let gone: Vec<DatasetName> = reg
            .by_name
            .iter()
            .filter(|(n, ds)| {
                !present.contains(n)
                    && matches!(
                        ds.state(),
                        State::Ready(_) | State::Failed(_) | State::Remote(_)
                    )
            })
            .map(|(n, _)| n.clone())
            .collect();
        for n in &gone {
            reg.remove(n);
        }
        drop(reg);
        for n in gone {
            self.forget_names_later(n);
        }
        let mut reg = self.registry.write().expect("registry");
        for (name, entry) in found {
            if let Some(ds) = reg.by_name.get(&name) {
                ds.has_input.store(entry.has_input, Ordering::Relaxed);
                if let State::Remote(_) = ds.state() {
                    // Another daemon's work: follow its outcome, or redo it if that daemon died.
                    let ds = ds.clone();
                    self.settle(&ds, &entry);
                }
                continue;
            }
            let Some(ds) = reg.insert(name, State::Queued) else {
                continue;
            };
            ds.has_input.store(entry.has_input, Ordering::Relaxed);
            self.settle(&ds, &entry);
        }
    }

    /// Sets the state of a dataset that no job of this daemon is working on from what the store
    /// holds, and queues the work still to do (the job takes NAME's lease before doing it).
    fn settle(&self, ds: &Arc<Dataset>, entry: &crate::store::Entry) {
        let name = &ds.name;
        if entry.has_archive {
            match self.store.open_archive(name) {
                Ok(a) => {
                    ds.set_ready(a);
                    if entry.has_job {
                        self.store.remove_job(name); // published just before a crash
                    }
                }
                Err(e) if self.store.leases().holder(name).is_some() => {
                    // Being deleted or published by another daemon right now: look again later.
                    log::debug!("{name}: not readable yet: {e}");
                }
                Err(e) => {
                    log::error!("{name}: cannot serve: {e}");
                    ds.set_state(State::Failed(e.to_string()));
                }
            }
        } else if entry.has_job {
            match self.store.job(name) {
                Some(ConcatJob { error: Some(e), .. }) => ds.set_state(State::Failed(e)),
                Some(job) => {
                    ds.set_state(State::Queued);
                    self.push_job(Job::Concat {
                        target: ds.clone(),
                        sources: job.sources.clone(),
                        command: job.command,
                    });
                }
                None => {} // being written: next scan
            }
        } else if let Some(err) = self.store.failure(name) {
            ds.set_state(State::Failed(err));
        } else if entry.has_input {
            ds.set_state(State::Queued);
            self.enqueue(ds.clone());
        }
    }

    /// Takes NAME's lease for a job (unless the dataset already holds it, as an upload does).
    /// On a busy lease the dataset shows the other daemon's work, and rescans follow it.
    fn lease_for(&self, ds: &Dataset, purpose: &str) -> Option<Lease> {
        if let Some(l) = ds.take_lease() {
            return Some(l);
        }
        match self.store.claim(&ds.name, purpose) {
            Ok(Claim::Taken(l)) => Some(l),
            Ok(Claim::Busy(holder)) => {
                log::info!("{}: {} elsewhere: {holder}", ds.name, purpose);
                ds.set_state(State::Remote(holder));
                None
            }
            Err(e) => {
                log::error!("{}: cannot take its lease: {e}", ds.name);
                ds.set_state(State::Failed(format!("cannot take the lease: {e}")));
                None
            }
        }
    }

    /// After taking the lease: the work may have been done (or found impossible) meanwhile by
    /// the daemon that held it. True when there is nothing left to do.
    fn done_elsewhere(&self, ds: &Arc<Dataset>) -> bool {
        let entry = crate::store::Entry {
            has_archive: self.store.archive_path(&ds.name).is_dir(),
            has_input: self.store.input_path(&ds.name).is_file(),
            has_job: self.store.job(&ds.name).is_some(),
        };
        let failed = self.store.failure(&ds.name).is_some();
        if entry.has_archive || failed || (!entry.has_input && !entry.has_job) {
            self.settle(ds, &entry);
            if !entry.has_archive && !failed {
                // Deleted meanwhile.
                self.registry.write().expect("registry").remove(&ds.name);
                self.forget_names_later(ds.name.clone());
            }
            return true;
        }
        false
    }

    fn rescan_if_stale(&self) {
        let mut last = self.last_rescan.lock().expect("rescan lock");
        if last.elapsed() >= RESCAN_AFTER_MISS {
            *last = std::time::Instant::now();
            drop(last);
            self.rescan();
        }
    }

    fn enqueue(&self, ds: Arc<Dataset>) {
        self.push_job(Job::Convert(ds));
    }

    fn push_job(&self, job: Job) {
        self.jobs.lock().expect("jobs").push_back(job);
        self.jobs_ready.notify_one();
    }

    fn worker(&self) {
        loop {
            let job = {
                let mut q = self.jobs.lock().expect("jobs");
                loop {
                    if self.shutting_down.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Some(job) = q.pop_front() {
                        break job;
                    }
                    q = self.jobs_ready.wait(q).expect("jobs");
                }
            };
            match job {
                Job::Convert(ds) => self.convert_dataset(&ds),
                Job::Concat {
                    target,
                    sources,
                    command,
                } => self.concat_datasets(&target, &sources, &command),
            }
        }
    }

    fn concat_datasets(&self, target: &Arc<Dataset>, sources: &[String], command: &str) {
        let Some(_lease) = self.lease_for(target, "concat") else {
            return;
        };
        if self.done_elsewhere(target) {
            return;
        }
        target.set_state(State::Converting);
        log::info!("{}: concatenating {}", target.name, sources.join(" "));
        let inputs: Vec<PathBuf> = sources
            .iter()
            .map(|s| match DatasetName::parse(s) {
                Ok(n) => Ok(self.store.archive_path(&n)),
                Err(e) => Err(crate::Error::Usage(e.to_string())),
            })
            .collect::<crate::Result<_>>()
            .unwrap_or_default();
        let output = self.store.archive_path(&target.name);
        let result = if inputs.len() != sources.len() {
            Err(crate::Error::Usage("a source name is not valid".into()))
        } else {
            // The mount's index widths (--index-dtypes) apply to its concats too.
            let opts = crate::concat::ConcatOptions {
                data_dtype: None,
                allow_lossy: false,
                index_dtypes: self.options.convert.index_dtypes,
            };
            match &self.options.converter {
                Some(exe) => crate::isolate::concat_in_child(
                    exe,
                    &inputs,
                    &output,
                    &opts,
                    &self.options.limits,
                    &self.options.confinement,
                    target.as_ref(),
                ),
                None => crate::concat::concat_with(&inputs, &output, &opts, target.as_ref())
                    .map(|_| ()),
            }
            .and_then(|_| self.store.open_archive(&target.name))
        };
        match result {
            Ok(archive) => {
                log::info!("{}: concatenated ({} rows)", target.name, archive.num_rows);
                self.store.remove_job(&target.name);
                target.set_ready(archive);
                self.record(command, &Ok(format!("{} ready", target.name)));
            }
            Err(e) if self.shutting_down.load(Ordering::SeqCst) => {
                // Not the sources' fault: the job stays written down for the next start.
                log::warn!("{}: concat interrupted: {e}", target.name);
                target.set_state(State::Failed(format!("interrupted: {e}")));
            }
            Err(e) => {
                // Nothing was published (the writer removed its temporary directory): the target
                // shows the reason until deleted, and so does .control.
                let msg = format!("concat failed: {e}");
                log::warn!("{}: {msg}", target.name);
                let job = ConcatJob {
                    command: command.to_string(),
                    sources: sources.to_vec(),
                    error: Some(msg.clone()),
                };
                if let Err(e) = self.store.write_job(&target.name, &job) {
                    log::error!("{}: cannot record the failure: {e}", target.name);
                }
                target.set_state(State::Failed(msg.clone()));
                self.record(command, &Err(FsError::Invalid(msg)));
            }
        }
    }

    fn convert_dataset(&self, ds: &Arc<Dataset>) {
        if !matches!(ds.state(), State::Queued) {
            return;
        }
        let Some(lease) = self.lease_for(ds, "convert") else {
            return;
        };
        if self.done_elsewhere(ds) {
            return;
        }
        ds.set_state(State::Converting);
        let input = self.store.input_path(&ds.name);
        let output = self.store.archive_path(&ds.name);
        log::info!("{}: converting {}", ds.name, input.display());
        let converted = match &self.options.converter {
            Some(exe) => crate::isolate::convert_in_child(
                exe,
                &input,
                &output,
                &self.options.convert,
                &self.options.limits,
                &self.options.confinement,
                ds.as_ref(),
            ),
            None => convert::convert_files(&[input], &output, &self.options.convert, ds.as_ref())
                .map(|_| ()),
        };
        let result = converted.and_then(|_| self.store.open_archive(&ds.name));
        // A daemon that took the lease over while this one was silent may have published first.
        let result = match result {
            Err(e) if lease.is_lost() || self.store.has_archive(&ds.name) => {
                log::warn!("{}: {e}; another daemon published it", ds.name);
                self.store.open_archive(&ds.name)
            }
            r => r,
        };
        drop(lease);
        match result {
            Ok(archive) => {
                log::info!("{}: ready ({} rows)", ds.name, archive.num_rows);
                self.store.clear_failure(&ds.name);
                ds.set_ready(archive);
            }
            Err(e)
                if matches!(e, crate::Error::Interrupted(_))
                    || self.shutting_down.load(Ordering::SeqCst) =>
            {
                // Not the input's fault: shown, not remembered; the next start converts again.
                log::warn!("{}: conversion interrupted: {e}", ds.name);
                ds.set_state(State::Failed(e.to_string()));
            }
            Err(e) => {
                let msg = e.to_string();
                log::warn!("{}: conversion failed: {msg}", ds.name);
                if let Err(e) = self.store.record_failure(&ds.name, &msg) {
                    log::error!("{}: cannot record the failure: {e}", ds.name);
                }
                ds.set_state(State::Failed(msg));
            }
        }
    }

    /// Waits until no conversion is queued or running (for tests and orderly shutdown).
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            let busy = !self.jobs.lock().expect("jobs").is_empty()
                || self
                    .registry
                    .read()
                    .expect("registry")
                    .by_name
                    .values()
                    .any(|d| d.busy());
            if !busy {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn dataset_by_id(&self, id: u16) -> FsResult<Arc<Dataset>> {
        self.registry
            .read()
            .expect("registry")
            .by_id
            .get(&id)
            .cloned()
            .ok_or(FsError::NotFound)
    }

    fn dataset_by_name(&self, name: &str) -> Option<Arc<Dataset>> {
        let name = DatasetName::parse(name).ok()?;
        if let Some(d) = self
            .registry
            .read()
            .expect("registry")
            .by_name
            .get(&name)
            .cloned()
        {
            return Some(d);
        }
        // Not known here: maybe another daemon (or a person) just put it in the store.
        self.rescan_if_stale();
        self.registry
            .read()
            .expect("registry")
            .by_name
            .get(&name)
            .cloned()
    }

    fn ready_by_id(&self, id: u16) -> FsResult<(Arc<Dataset>, Arc<ReadyDataset>)> {
        let ds = self.dataset_by_id(id)?;
        let r = ds.ready().ok_or(FsError::NotFound)?;
        Ok((ds, r))
    }

    // ------------------------------------------------------------------------------ lookup

    pub fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        let ino = self.child(parent, name)?;
        self.getattr(ino)
    }

    fn child(&self, parent: u64, name: &str) -> FsResult<u64> {
        if parent == ROOT_INO {
            if name == ".control" {
                return Ok(CONTROL_INO);
            }
            if let Some(stem) = name.strip_suffix(".h5ad") {
                let ds = self.dataset_by_name(stem).ok_or(FsError::NotFound)?;
                let uploading = matches!(ds.state(), State::Uploading);
                return if uploading || ds.has_input.load(Ordering::Relaxed) {
                    Ok(ino(Kind::Input, ds.id, 0))
                } else {
                    Err(FsError::NotFound)
                };
            }
            let ds = self.dataset_by_name(name).ok_or(FsError::NotFound)?;
            self.await_publication(&ds);
            if matches!(ds.state(), State::Uploading) {
                return Err(FsError::NotFound);
            }
            return Ok(ino(Kind::DatasetDir, ds.id, 0));
        }
        let (kind, id, _) = split(parent).ok_or(FsError::NotFound)?;
        match kind {
            Kind::DatasetDir => {
                if name == "status.json" {
                    self.dataset_by_id(id)?;
                    return Ok(ino(Kind::Status, id, 0));
                }
                let (_, r) = self.ready_by_id(id)?;
                if let Some(i) = r.archive_files.iter().position(|f| *f == name) {
                    let file_index = ARCHIVE_FILES
                        .iter()
                        .position(|f| *f == r.archive_files[i])
                        .expect("known");
                    return Ok(ino(Kind::ArchiveFile, id, file_index as u64));
                }
                match name {
                    "features" => Ok(ino(Kind::FeaturesDir, id, 0)),
                    "rows" => Ok(ino(Kind::RowsDir, id, 0)),
                    "csr" => Ok(ino(Kind::CsrDir, id, 0)),
                    _ => Err(FsError::NotFound),
                }
            }
            Kind::FeaturesDir => {
                let (_, r) = self.ready_by_id(id)?;
                if let Some(k) = name.strip_suffix(".json").and_then(parse_index) {
                    if (k as usize) < r.archive.features.blocks.len() {
                        return Ok(ino(Kind::FeatureJson, id, k));
                    }
                }
                let i = r
                    .feature_files
                    .iter()
                    .position(|f| f == name)
                    .ok_or(FsError::NotFound)?;
                Ok(ino(Kind::FeatureFile, id, i as u64))
            }
            Kind::RowsDir => {
                let (_, r) = self.ready_by_id(id)?;
                let stem = name.strip_suffix(".npy").ok_or(FsError::NotFound)?;
                if let Some(i) = parse_index(stem) {
                    // saturating: "18446744073709551615.npy" is no row (found by fuzzing: overflow).
                    RowSpan::new(&r.archive, i, i.saturating_add(1), true)
                        .ok_or(FsError::NotFound)?;
                    return Ok(ino(Kind::Row, id, i));
                }
                let (a, b) = parse_range(stem).ok_or(FsError::NotFound)?;
                RowSpan::new(&r.archive, a, b, false).ok_or(FsError::NotFound)?;
                Ok(self.range_ino(id, false, a, b))
            }
            Kind::CsrDir => {
                let (_, r) = self.ready_by_id(id)?;
                let stem = name.strip_suffix(".npz").ok_or(FsError::NotFound)?;
                let (a, b) = parse_range(stem).ok_or(FsError::NotFound)?;
                let span = RowSpan::new(&r.archive, a, b, false).ok_or(FsError::NotFound)?;
                if render::npz_size(&r.archive, &span).map_err(io_err)? > render::MAX_NPZ_BYTES {
                    return Err(FsError::TooBig);
                }
                Ok(self.range_ino(id, true, a, b))
            }
            _ => Err(FsError::NotDir),
        }
    }

    /// The inode of a range file; counts a lookup (the kernel forgets it later).
    fn range_ino(&self, dataset: u16, csr: bool, first: u64, end: u64) -> u64 {
        let mut t = self.ranges.lock().expect("ranges");
        let id = match t.ids.get(&(dataset, csr, first, end)) {
            Some(&id) => id,
            None => {
                t.next += 1;
                let id = t.next & INDEX_MASK;
                t.ids.insert((dataset, csr, first, end), id);
                t.nodes.insert(
                    id,
                    RangeNode {
                        dataset,
                        csr,
                        first,
                        end,
                        lookups: 0,
                    },
                );
                id
            }
        };
        t.nodes.get_mut(&id).expect("inserted").lookups += 1;
        ino(Kind::Range, dataset, id)
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if let Some((Kind::Range, _, id)) = split(ino) {
            let mut t = self.ranges.lock().expect("ranges");
            let gone = match t.nodes.get_mut(&id) {
                Some(node) => {
                    node.lookups = node.lookups.saturating_sub(n);
                    node.lookups == 0
                }
                None => false,
            };
            if gone {
                let node = t.nodes.remove(&id).expect("present");
                t.ids
                    .remove(&(node.dataset, node.csr, node.first, node.end));
            }
        }
    }

    /// Number of range inodes the kernel still holds (for tests: memory stays flat).
    pub fn range_nodes(&self) -> usize {
        self.ranges.lock().expect("ranges").nodes.len()
    }

    fn range(&self, id: u64) -> FsResult<(u16, bool, u64, u64)> {
        let t = self.ranges.lock().expect("ranges");
        let n = t.nodes.get(&id).ok_or(FsError::NotFound)?;
        Ok((n.dataset, n.csr, n.first, n.end))
    }

    // ------------------------------------------------------------------------------ getattr

    pub fn getattr(&self, ino_: u64) -> FsResult<Attr> {
        let dir = |perm, mtime, ttl| Attr {
            ino: ino_,
            kind: NodeType::Dir,
            size: 0,
            perm,
            group: None,
            mtime,
            ttl,
        };
        let file = |size, perm, mtime, ttl| Attr {
            ino: ino_,
            kind: NodeType::File,
            size,
            perm,
            group: None,
            mtime,
            ttl,
        };
        // The kernel checks these modes (default_permissions): who may write is decided here.
        let writable = |a: Attr| match self.options.writers {
            Some(gid) => Attr {
                perm: a.perm | 0o020,
                group: Some(gid),
                ..a
            },
            None => a,
        };
        if ino_ == ROOT_INO {
            return Ok(writable(dir(0o755, self.started, SHORT_TTL)));
        }
        if ino_ == CONTROL_INO {
            return Ok(writable(file(
                self.control_text().len() as u64,
                0o644,
                SystemTime::now(),
                Duration::ZERO,
            )));
        }
        let (kind, id, index) = split(ino_).ok_or(FsError::NotFound)?;
        let ds = self.dataset_by_id(id)?;
        match kind {
            Kind::DatasetDir => Ok(dir(0o555, ds.since, SHORT_TTL)),
            Kind::Status => Ok(file(
                ds.status_json().len() as u64,
                0o444,
                SystemTime::now(),
                Duration::ZERO,
            )),
            Kind::Input => {
                let path = if matches!(ds.state(), State::Uploading) {
                    self.store.upload_path(&ds.name)
                } else {
                    self.store.input_path(&ds.name)
                };
                let m = std::fs::metadata(&path).map_err(|_| FsError::NotFound)?;
                let uploading = matches!(ds.state(), State::Uploading);
                let a = file(
                    m.len(),
                    if uploading { 0o644 } else { 0o444 },
                    m.modified().unwrap_or(ds.since),
                    SHORT_TTL,
                );
                Ok(if uploading { writable(a) } else { a })
            }
            _ => {
                let r = ds.ready().ok_or(FsError::NotFound)?;
                let mtime = ds.since;
                match kind {
                    Kind::ArchiveFile | Kind::FeatureFile => {
                        let path = self.real_path(&r, kind, index)?;
                        let m = std::fs::metadata(&path).map_err(io_err)?;
                        Ok(file(
                            m.len(),
                            0o444,
                            m.modified().unwrap_or(mtime),
                            LONG_TTL,
                        ))
                    }
                    Kind::FeaturesDir | Kind::RowsDir | Kind::CsrDir => {
                        Ok(dir(0o555, mtime, LONG_TTL))
                    }
                    Kind::FeatureJson => {
                        let bytes = r.feature_json(index as usize).ok_or(FsError::NotFound)?;
                        Ok(file(bytes.len() as u64, 0o444, mtime, LONG_TTL))
                    }
                    Kind::Row => {
                        let span = RowSpan::new(&r.archive, index, index + 1, true)
                            .ok_or(FsError::NotFound)?;
                        Ok(file(span.dense_size(&r.archive), 0o444, mtime, LONG_TTL))
                    }
                    Kind::Range => {
                        let (_, csr, a, b) = self.range(index)?;
                        let span =
                            RowSpan::new(&r.archive, a, b, false).ok_or(FsError::NotFound)?;
                        let size = if csr {
                            render::npz_size(&r.archive, &span).map_err(io_err)?
                        } else {
                            span.dense_size(&r.archive)
                        };
                        Ok(file(size, 0o444, mtime, LONG_TTL))
                    }
                    _ => Err(FsError::NotFound),
                }
            }
        }
    }

    fn real_path(&self, r: &ReadyDataset, kind: Kind, index: u64) -> FsResult<PathBuf> {
        match kind {
            Kind::ArchiveFile => {
                let name = ARCHIVE_FILES.get(index as usize).ok_or(FsError::NotFound)?;
                Ok(r.archive.path.join(name))
            }
            Kind::FeatureFile => {
                let name = r
                    .feature_files
                    .get(index as usize)
                    .ok_or(FsError::NotFound)?;
                Ok(r.feature_dir.join(name))
            }
            _ => Err(FsError::NotFound),
        }
    }

    // ------------------------------------------------------------------------------ readdir

    /// Up to `max` entries after `offset` (0 = from the start; "." and ".." included).
    pub fn readdir(&self, dir: u64, offset: u64, max: usize) -> FsResult<Vec<DirEntry>> {
        let attr = self.getattr(dir)?;
        if attr.kind != NodeType::Dir {
            return Err(FsError::NotDir);
        }
        let mut out = Vec::new();
        let push = |out: &mut Vec<DirEntry>, pos: u64, ino: u64, kind, name: String| {
            if pos >= offset && out.len() < max {
                out.push(DirEntry {
                    ino,
                    next: pos + 1,
                    kind,
                    name,
                });
            }
        };
        push(&mut out, 0, dir, NodeType::Dir, ".".into());
        push(&mut out, 1, ROOT_INO, NodeType::Dir, "..".into());
        let base = 2u64;
        if dir == ROOT_INO {
            if offset == 0 {
                // A fresh listing sees what other daemons (or people) put in the store.
                self.rescan_if_stale();
            }
            let mut names: Vec<Arc<Dataset>> = self
                .registry
                .read()
                .expect("registry")
                .by_name
                .values()
                .cloned()
                .collect();
            names.sort_by(|a, b| a.name.cmp(&b.name));
            let mut entries = vec![(CONTROL_INO, NodeType::File, ".control".to_string())];
            for ds in names {
                let uploading = matches!(ds.state(), State::Uploading);
                if !uploading {
                    entries.push((
                        ino(Kind::DatasetDir, ds.id, 0),
                        NodeType::Dir,
                        ds.name.to_string(),
                    ));
                }
                if uploading || ds.has_input.load(Ordering::Relaxed) {
                    entries.push((
                        ino(Kind::Input, ds.id, 0),
                        NodeType::File,
                        ds.name.input_file_name(),
                    ));
                }
            }
            for (i, (ino_, kind, name)) in entries.into_iter().enumerate() {
                push(&mut out, base + i as u64, ino_, kind, name);
            }
            return Ok(out);
        }
        let (kind, id, _) = split(dir).ok_or(FsError::NotFound)?;
        match kind {
            Kind::DatasetDir => {
                let mut entries = vec![(
                    ino(Kind::Status, id, 0),
                    NodeType::File,
                    "status.json".to_string(),
                )];
                if let Ok((_, r)) = self.ready_by_id(id) {
                    for f in &r.archive_files {
                        let index =
                            ARCHIVE_FILES.iter().position(|x| x == f).expect("known") as u64;
                        entries.push((
                            ino(Kind::ArchiveFile, id, index),
                            NodeType::File,
                            f.to_string(),
                        ));
                    }
                    entries.push((
                        ino(Kind::FeaturesDir, id, 0),
                        NodeType::Dir,
                        "features".into(),
                    ));
                    entries.push((ino(Kind::RowsDir, id, 0), NodeType::Dir, "rows".into()));
                    entries.push((ino(Kind::CsrDir, id, 0), NodeType::Dir, "csr".into()));
                }
                for (i, (ino_, kind, name)) in entries.into_iter().enumerate() {
                    push(&mut out, base + i as u64, ino_, kind, name);
                }
            }
            Kind::FeaturesDir => {
                let (_, r) = self.ready_by_id(id)?;
                let blocks = r.archive.features.blocks.len() as u64;
                for k in 0..blocks {
                    push(
                        &mut out,
                        base + k,
                        ino(Kind::FeatureJson, id, k),
                        NodeType::File,
                        format!("{k}.json"),
                    );
                }
                for (i, f) in r.feature_files.iter().enumerate() {
                    let pos = base + blocks + i as u64;
                    push(
                        &mut out,
                        pos,
                        ino(Kind::FeatureFile, id, i as u64),
                        NodeType::File,
                        f.clone(),
                    );
                }
            }
            Kind::RowsDir => {
                // Streams: only the rows from `offset` on are produced, so `ls | head` on
                // 10^8 rows returns at once.
                let (_, r) = self.ready_by_id(id)?;
                let first = offset.max(base) - base;
                let end = r.archive.num_rows.min(first + max as u64);
                for i in first..end {
                    push(
                        &mut out,
                        base + i,
                        ino(Kind::Row, id, i),
                        NodeType::File,
                        format!("{i}.npy"),
                    );
                }
            }
            Kind::CsrDir => {
                self.ready_by_id(id)?;
            }
            _ => return Err(FsError::NotDir),
        }
        Ok(out)
    }

    // ------------------------------------------------------------------------------ open/read

    fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().expect("handles").insert(fh, h);
        fh
    }

    /// Opens `ino`; `write` when the caller asked for write access, `truncate` for O_TRUNC.
    pub fn open(&self, ino_: u64, write: bool, truncate: bool) -> FsResult<Opened> {
        let opened = |fh, direct_io, keep_cache, backing| {
            Ok(Opened {
                fh,
                direct_io,
                keep_cache,
                backing,
            })
        };
        if ino_ == CONTROL_INO {
            let h = if write {
                Handle::Control(Vec::new())
            } else {
                Handle::Snapshot(self.control_text().into_bytes().into())
            };
            return opened(self.new_handle(h), true, false, None);
        }
        let attr = self.getattr(ino_)?;
        if attr.kind == NodeType::Dir {
            return Err(FsError::IsDir);
        }
        let (kind, id, index) = split(ino_).ok_or(FsError::NotFound)?;
        let ds = self.dataset_by_id(id)?;
        if write {
            // Only an upload in progress is writable (by the handle that created it).
            return Err(match kind {
                Kind::Input => FsError::Access,
                _ => FsError::ReadOnly,
            });
        }
        let _ = truncate;
        match kind {
            Kind::Status => {
                let status = Handle::Snapshot(ds.status_json().into());
                opened(self.new_handle(status), true, false, None)
            }
            Kind::Input => {
                let path = if matches!(ds.state(), State::Uploading) {
                    self.store.upload_path(&ds.name)
                } else {
                    self.store.input_path(&ds.name)
                };
                let f = Arc::new(File::open(&path).map_err(|_| FsError::NotFound)?);
                opened(self.new_handle(Handle::File(f)), false, false, None)
            }
            Kind::ArchiveFile | Kind::FeatureFile => {
                let r = ds.ready().ok_or(FsError::NotFound)?;
                let f = Arc::new(File::open(self.real_path(&r, kind, index)?).map_err(io_err)?);
                opened(
                    self.new_handle(Handle::File(f.clone())),
                    false,
                    true,
                    Some(f),
                )
            }
            Kind::Range => {
                let (_, csr, _, _) = self.range(index)?;
                if csr {
                    if attr.size > render::MAX_NPZ_BYTES {
                        return Err(FsError::TooBig);
                    }
                    let npz = Handle::Npz(Arc::new(std::sync::OnceLock::new()));
                    return opened(self.new_handle(npz), true, false, None);
                }
                opened(self.new_handle(Handle::Computed), true, false, None)
            }
            _ => opened(self.new_handle(Handle::Computed), false, true, None),
        }
    }

    /// The whole `csr/<a>-<b>.npz` of range inode `ino_`.
    fn render_npz(&self, ino_: u64) -> FsResult<Vec<u8>> {
        let (_, id, index) = split(ino_).ok_or(FsError::NotFound)?;
        let (_, r) = self.ready_by_id(id)?;
        let (_, _, a, b) = self.range(index)?;
        let span = RowSpan::new(&r.archive, a, b, false).ok_or(FsError::NotFound)?;
        render::npz(&r.archive, &span).map_err(|e| match e {
            crate::Error::Usage(_) => FsError::TooBig,
            e => io_err(e),
        })
    }

    pub fn read(&self, ino_: u64, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let slice = |bytes: &[u8]| {
            let start = (offset as usize).min(bytes.len());
            let end = start.saturating_add(size as usize).min(bytes.len());
            bytes[start..end].to_vec()
        };
        enum Source {
            File(Arc<File>),
            Npz(Arc<std::sync::OnceLock<FsResult<Vec<u8>>>>),
            Snapshot(Arc<[u8]>),
        }
        let source = {
            let h = self.handles.lock().expect("handles");
            match h.get(&fh) {
                Some(Handle::File(f)) => Some(Source::File(f.clone())),
                Some(Handle::Npz(b)) => Some(Source::Npz(b.clone())),
                Some(Handle::Snapshot(b)) => Some(Source::Snapshot(b.clone())),
                _ => None,
            }
        };
        match source {
            Some(Source::File(file)) => {
                let mut buf = vec![0u8; size as usize];
                let n = read_at_full(&file, &mut buf, offset).map_err(io_err)?;
                buf.truncate(n);
                return Ok(buf);
            }
            Some(Source::Npz(npz)) => {
                let bytes = npz.get_or_init(|| self.render_npz(ino_));
                return bytes.as_ref().map(|b| slice(b)).map_err(Clone::clone);
            }
            Some(Source::Snapshot(bytes)) => return Ok(slice(&bytes)),
            None => {}
        }
        if ino_ == CONTROL_INO {
            return Ok(slice(self.control_text().as_bytes()));
        }
        let (kind, id, index) = split(ino_).ok_or(FsError::NotFound)?;
        let ds = self.dataset_by_id(id)?;
        match kind {
            Kind::FeatureJson => {
                let r = ds.ready().ok_or(FsError::NotFound)?;
                Ok(slice(
                    r.feature_json(index as usize).ok_or(FsError::NotFound)?,
                ))
            }
            Kind::Row => {
                let r = ds.ready().ok_or(FsError::NotFound)?;
                let span =
                    RowSpan::new(&r.archive, index, index + 1, true).ok_or(FsError::NotFound)?;
                span.dense_read(&r.archive, offset, size as usize)
                    .map_err(io_err)
            }
            Kind::Range => {
                let r = ds.ready().ok_or(FsError::NotFound)?;
                let (_, _, a, b) = self.range(index)?;
                let span = RowSpan::new(&r.archive, a, b, false).ok_or(FsError::NotFound)?;
                span.dense_read(&r.archive, offset, size as usize)
                    .map_err(io_err)
            }
            _ => Err(FsError::NotFound),
        }
    }

    // ------------------------------------------------------------------------------ writes

    /// Creates `NAME.h5ad` in the root: a new upload, converted when its writer closes it.
    pub fn create(&self, parent: u64, name: &str) -> FsResult<(Attr, Opened)> {
        if parent != ROOT_INO {
            return Err(FsError::ReadOnly);
        }
        if name == ".control" {
            return Err(FsError::Exists);
        }
        let dname =
            DatasetName::from_input_file(name).map_err(|e| FsError::Invalid(e.to_string()))?;
        self.rescan_if_stale();
        let ds = {
            let mut reg = self.registry.write().expect("registry");
            if reg.by_name.contains_key(&dname)
                || self.store.input_path(&dname).exists()
                || self.store.archive_path(&dname).exists()
            {
                return Err(FsError::Exists);
            }
            reg.insert(dname.clone(), State::Uploading)
                .ok_or(FsError::Io("too many datasets".into()))?
        };
        // Other daemons over the same store: the lease decides who gets NAME.
        let forget = || {
            self.registry.write().expect("registry").remove(&dname);
        };
        match self.store.claim(&dname, "upload") {
            Ok(Claim::Taken(lease)) => ds.keep_lease(lease),
            Ok(Claim::Busy(holder)) => {
                log::info!("{dname}: refused a drop: {holder} holds it");
                forget();
                return Err(FsError::Exists);
            }
            Err(e) => {
                forget();
                return Err(io_err(e));
            }
        }
        if self.store.input_path(&dname).exists() || self.store.archive_path(&dname).exists() {
            forget();
            return Err(FsError::Exists);
        }
        let path = self.store.upload_path(&dname);
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            // Readable by the converter's unprivileged user whatever the daemon's umask.
            Ok(f) => match f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644)) {
                Ok(()) => f,
                Err(e) => {
                    forget();
                    let _ = std::fs::remove_file(&path);
                    return Err(io_err(e));
                }
            },
            Err(e) => {
                forget();
                return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                    FsError::Exists
                } else {
                    io_err(e)
                });
            }
        };
        let fh = self.new_handle(Handle::Upload {
            dataset: ds.clone(),
            file,
        });
        let attr = self.getattr(ino(Kind::Input, ds.id, 0))?;
        Ok((
            attr,
            Opened {
                fh,
                direct_io: false,
                keep_cache: false,
                backing: None,
            },
        ))
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let mut handles = self.handles.lock().expect("handles");
        match handles.get_mut(&fh) {
            Some(Handle::Upload { file, dataset }) => {
                dataset.upload_flushed.store(false, Ordering::SeqCst);
                file.write_all_at(data, offset).map_err(io_err)?;
                Ok(data.len() as u32)
            }
            Some(Handle::Control(pending)) => {
                pending.extend_from_slice(data);
                let mut lines = Vec::new();
                while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=pos).collect();
                    lines.push(line);
                }
                drop(handles);
                for line in lines {
                    self.run_command_bytes(&line[..line.len() - 1])?;
                }
                Ok(data.len() as u32)
            }
            Some(_) => Err(FsError::ReadOnly),
            None => Err(FsError::Io("bad file handle".into())),
        }
    }

    /// Truncates an upload (the only node whose size may be set).
    pub fn set_size(&self, ino_: u64, size: u64) -> FsResult<Attr> {
        if ino_ == CONTROL_INO {
            return self.getattr(ino_);
        }
        let (kind, id, _) = split(ino_).ok_or(FsError::NotFound)?;
        let ds = self.dataset_by_id(id)?;
        if kind != Kind::Input || !matches!(ds.state(), State::Uploading) {
            return Err(if kind == Kind::Input {
                FsError::Access
            } else {
                FsError::ReadOnly
            });
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.store.upload_path(&ds.name))
            .map_err(io_err)?;
        f.set_len(size).map_err(io_err)?;
        self.getattr(ino_)
    }

    /// close(2) of a descriptor (FUSE flush, synchronous with close). An upload is published
    /// only at release, when its last descriptor is gone: a flush also comes from a forked child
    /// closing an inherited copy while the writer goes on. A flush only marks the upload as
    /// closing, so that a lookup of NAME/ waits for the imminent release (when `cp` returns,
    /// NAME/ exists); a later write clears the mark.
    pub fn flush(&self, fh: u64) -> FsResult<()> {
        if let Some(Handle::Upload { dataset, .. }) = self.handles.lock().expect("handles").get(&fh)
        {
            dataset.upload_flushed.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Waits (briefly) for a flushed upload of `ds` to be released and published.
    fn await_publication(&self, ds: &Dataset) {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while matches!(ds.state(), State::Uploading)
            && ds.upload_flushed.load(Ordering::SeqCst)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Mode or owner changes: accepted (as no-ops) on inputs, refused elsewhere.
    pub fn accept_metadata_change(&self, ino_: u64) -> FsResult<Attr> {
        match split(ino_) {
            // Copy tools (shutil.copy, cp -p) set modes and times on the file they wrote, also
            // after closing it: accepted on inputs, and ignored (modes are the store's).
            Some((Kind::Input, _, _)) => self.getattr(ino_),
            _ => Err(FsError::Access),
        }
    }

    /// Whether the kernel should drop `ino`'s cached pages when it is closed: a row file, computed
    /// on demand and rarely read twice. Kept, the page cache of randomly read rows only grows,
    /// and every row then fills newly allocated pages, which costs more than the row itself
    /// (on VMs that return free memory to the host, a fault in the host per page); dropped,
    /// the next row reuses the same pages. Ranges are not cached at all (direct I/O).
    pub fn drop_cache_at_close(ino_: u64) -> bool {
        matches!(split(ino_), Some((Kind::Row, _, _)))
    }

    /// Closes a handle: a finished upload becomes NAME.h5ad and is queued for conversion; a
    /// `.control` line without a final newline is run.
    pub fn release(&self, fh: u64) -> FsResult<()> {
        let h = self.handles.lock().expect("handles").remove(&fh);
        match h {
            Some(Handle::Upload { dataset, file }) => self.finish_upload(dataset, file),
            Some(Handle::Control(pending)) if !pending.iter().all(u8::is_ascii_whitespace) => {
                self.run_command_bytes(&pending)
            }
            _ => Ok(()),
        }
    }

    fn finish_upload(&self, ds: Arc<Dataset>, file: File) -> FsResult<()> {
        let from = self.store.upload_path(&ds.name);
        let to = self.store.input_path(&ds.name);
        let published = file
            .sync_all()
            .map_err(io_err)
            .and_then(|_| crate::archive::rename_no_replace(&from, &to).map_err(io_err))
            .and_then(|_| crate::archive::sync_dir(self.store.root()).map_err(io_err));
        if let Err(e) = published {
            log::error!("{}: upload could not be published: {e:?}", ds.name);
            let _ = std::fs::remove_file(&from);
            self.registry.write().expect("registry").remove(&ds.name);
            return Err(e);
        }
        ds.has_input.store(true, Ordering::Relaxed);
        ds.set_state(State::Queued);
        self.enqueue(ds);
        Ok(())
    }

    /// Removes `NAME.h5ad` from the root (the dataset, if converted, stays).
    pub fn unlink(&self, parent: u64, name: &str) -> FsResult<()> {
        if parent != ROOT_INO {
            return Err(FsError::ReadOnly);
        }
        let stem = name.strip_suffix(".h5ad").ok_or(FsError::Access)?;
        let ds = self.dataset_by_name(stem).ok_or(FsError::NotFound)?;
        if ds.busy() {
            return Err(FsError::Busy);
        }
        if !ds.has_input.load(Ordering::Relaxed) {
            return Err(FsError::NotFound);
        }
        let _lease = match self.store.leases().try_acquire(&ds.name, "delete") {
            Ok(Claim::Taken(l)) => l,
            Ok(Claim::Busy(_)) => return Err(FsError::Busy),
            Err(e) => return Err(io_err(e)),
        };
        std::fs::remove_file(self.store.input_path(&ds.name)).map_err(io_err)?;
        self.store.clear_failure(&ds.name);
        ds.has_input.store(false, Ordering::Relaxed);
        if matches!(ds.state(), State::Failed(_)) && !self.store.archive_path(&ds.name).exists() {
            self.registry.write().expect("registry").remove(&ds.name);
            self.forget_names_later(ds.name.clone());
        }
        Ok(())
    }

    // ------------------------------------------------------------------------------ .control

    fn control_text(&self) -> String {
        self.control_log
            .lock()
            .expect("control log")
            .iter()
            .map(|l| format!("{l}\n"))
            .collect()
    }

    fn record(&self, command: &str, result: &FsResult<String>) {
        let rec = ControlRecord {
            time: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            command: command.to_string(),
            ok: result.is_ok(),
            message: match result {
                Ok(m) => m.clone(),
                Err(FsError::Invalid(m)) | Err(FsError::Io(m)) => m.clone(),
                Err(e) => format!("{e:?}"),
            },
        };
        let mut log = self.control_log.lock().expect("control log");
        log.push_back(serde_json::to_string(&rec).expect("serialisable"));
        while log.len() > CONTROL_HISTORY {
            log.pop_front();
        }
    }

    fn run_command_bytes(&self, line: &[u8]) -> FsResult<()> {
        let text = String::from_utf8_lossy(line).trim().to_string();
        if text.is_empty() {
            return Ok(());
        }
        let result = match std::str::from_utf8(line) {
            Ok(_) => self.run_command(&text),
            Err(_) => Err(FsError::Invalid("command is not UTF-8".into())),
        };
        self.record(&text, &result);
        result.map(|_| ())
    }

    /// Runs one `.control` command. Every refusal is `Invalid(reason)` (EINVAL to the writer).
    pub fn run_command(&self, line: &str) -> FsResult<String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let invalid = |m: String| Err(FsError::Invalid(m));
        match words.as_slice() {
            ["delete", name] => {
                let name = DatasetName::parse(name).map_err(|e| FsError::Invalid(e.to_string()))?;
                let ds = match self.dataset_by_name(name.as_str()) {
                    Some(ds) => ds,
                    None => return invalid(format!("delete: no dataset {name}")),
                };
                if ds.busy() {
                    return invalid(format!(
                        "delete: {name} is {}; try again when it is done",
                        ds.state().name()
                    ));
                }
                let _lease = match self.store.leases().try_acquire(&name, "delete") {
                    Ok(Claim::Taken(l)) => l,
                    Ok(Claim::Busy(h)) => {
                        return invalid(format!("delete: {name} is busy: {h}; try again later"))
                    }
                    Err(e) => return Err(io_err(e)),
                };
                self.store
                    .delete(&name)
                    .map_err(|e| FsError::Io(e.to_string()))?;
                self.registry.write().expect("registry").remove(&name);
                self.forget_names(&name);
                Ok(format!("deleted {name}"))
            }
            ["delete", ..] => invalid("usage: delete NAME".into()),
            ["concat", new, sources @ ..] => self.start_concat(new, sources, line),
            ["concat"] => invalid("usage: concat NEW SRC...".into()),
            [cmd, ..] => invalid(format!(
                "unknown command '{cmd}' (commands: delete NAME, concat NEW SRC...)"
            )),
            [] => invalid("empty command".into()),
        }
    }
}

impl Namespace {
    /// Validates `concat NEW SRC...` completely before anything is written, then registers NEW
    /// (state converting, with progress) and queues the work.
    fn start_concat(&self, new: &str, sources: &[&str], line: &str) -> FsResult<String> {
        let invalid = |m: String| Err(FsError::Invalid(format!("concat: {m}")));
        if sources.is_empty() {
            return invalid("no sources (usage: concat NEW SRC...)".into());
        }
        let new = DatasetName::parse(new).map_err(|e| FsError::Invalid(format!("concat: {e}")))?;
        let mut names = Vec::with_capacity(sources.len());
        for s in sources {
            let name =
                DatasetName::parse(s).map_err(|e| FsError::Invalid(format!("concat: {e}")))?;
            if name == new {
                return invalid(format!("{name} is both the target and a source"));
            }
            if names.contains(&name) {
                return invalid(format!("{name} is given twice"));
            }
            let Some(ds) = self.dataset_by_name(name.as_str()) else {
                return invalid(format!("no dataset {name}"));
            };
            match ds.state() {
                State::Ready(_) => {}
                other => return invalid(format!("{name} is {}, not ready", other.name())),
            }
            names.push(name);
        }
        let lease = match self.store.claim(&new, "concat") {
            Ok(Claim::Taken(l)) => l,
            Ok(Claim::Busy(h)) => return invalid(format!("{new} is being made: {h}")),
            Err(e) => return Err(io_err(e)),
        };
        let target = {
            let mut reg = self.registry.write().expect("registry");
            if reg.by_name.contains_key(&new)
                || self.store.archive_path(&new).exists()
                || self.store.input_path(&new).exists()
            {
                return invalid(format!("{new} already exists"));
            }
            reg.insert(new.clone(), State::Converting)
                .ok_or_else(|| FsError::Io("too many datasets".into()))?
        };
        let job = ConcatJob {
            command: line.to_string(),
            sources: names.iter().map(|n| n.as_str().to_string()).collect(),
            error: None,
        };
        // Written down before it starts: a crash midway leaves it to the next start.
        if let Err(e) = self.store.write_job(&new, &job) {
            self.registry.write().expect("registry").remove(&new);
            return Err(io_err(e));
        }
        target.keep_lease(lease);
        self.push_job(Job::Concat {
            target,
            sources: job.sources,
            command: line.to_string(),
        });
        Ok(format!("concat {new}: started"))
    }
}

/// pread until `buf` is full or end of file.
fn read_at_full(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A canonical decimal index ("0", "42"; not "042", "+1" or "").
fn parse_index(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// "a-b" with canonical a < b.
fn parse_range(s: &str) -> Option<(u64, u64)> {
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
