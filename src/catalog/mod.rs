//! The catalogue of datasets: which datasets the store holds and in what state, the work on
//! them (the job queue and its conversion and concat workers), rescans of the store, settling
//! with other daemons through leases, and the publication of uploads. It knows nothing of
//! inodes or of FUSE: the mounted tree (`namespace`) is built on top of it, and tests can drive
//! it alone.

mod dataset;
mod jobs;
mod settle;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub use dataset::{Dataset, ReadyDataset, State, ARCHIVE_FILES};

use crate::convert::ConvertOptions;
use crate::lease::Claim;
use crate::names::DatasetName;
use crate::store::{ConcatJob, Store};
use dataset::Registry;
use jobs::{Job, JobQueue};

/// A lookup miss rescans the store at most this often (other daemons publish into it).
const RESCAN_AFTER_MISS: Duration = Duration::from_millis(250);

/// How long a lookup waits for a flushed upload to be released and published.
const PUBLICATION_WAIT: Duration = Duration::from_secs(2);

/// Why the catalogue refused or failed an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("no such dataset")]
    NotFound,
    #[error("the name is taken")]
    Exists,
    #[error("busy")]
    Busy,
    /// A request that cannot be carried out, with the reason.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Io(String),
}

impl CatalogError {
    fn io(e: impl std::fmt::Display) -> CatalogError {
        CatalogError::Io(e.to_string())
    }

    fn refused(m: impl Into<String>) -> CatalogError {
        CatalogError::Refused(m.into())
    }
}

/// How the catalogue converts.
#[derive(Clone, Debug, Default)]
pub struct CatalogOptions {
    pub convert: ConvertOptions,
    /// Conversion worker threads.
    pub workers: usize,
    /// Run each conversion in a child process of this binary (the mount always does); `None`
    /// converts in-process (tests of the catalogue and the tree alone).
    pub converter: Option<PathBuf>,
    pub limits: crate::isolate::Limits,
    /// How the child processes are confined.
    pub confinement: crate::isolate::Confinement,
}

/// What the catalogue tells whoever serves it.
pub trait Observer: Send + Sync {
    /// `name` is no longer in the store (deleted by hand or by another daemon, or its input
    /// removed). Called from any thread, also during a request on the mount's root.
    fn gone(&self, name: &DatasetName);
    /// The concat asked by `command` ended: `Ok` with a message, or `Err` with the reason.
    fn concat_ended(&self, command: &str, outcome: Result<String, String>);
}

/// No one to tell.
impl Observer for () {
    fn gone(&self, _: &DatasetName) {}
    fn concat_ended(&self, _: &str, _: Result<String, String>) {}
}

pub struct Catalog {
    store: Store,
    options: CatalogOptions,
    registry: RwLock<Registry>,
    jobs: JobQueue,
    last_rescan: Mutex<Instant>,
    observer: Arc<dyn Observer>,
}

impl Catalog {
    /// Opens the catalogue of `store` and registers what it holds: archives (ready, or failed
    /// when corrupt) and inputs (queued for conversion unless their failure is recorded).
    pub fn new(store: Store, options: CatalogOptions, observer: Arc<dyn Observer>) -> Arc<Catalog> {
        let catalog = Arc::new(Catalog {
            store,
            options,
            registry: RwLock::new(Registry::default()),
            jobs: JobQueue::default(),
            last_rescan: Mutex::new(Instant::now()),
            observer,
        });
        catalog.rescan();
        catalog
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The dataset numbered `id`.
    pub fn dataset(&self, id: u16) -> Option<Arc<Dataset>> {
        self.registry
            .read()
            .expect("registry")
            .by_id
            .get(&id)
            .cloned()
    }

    /// The dataset called `name`; a name not known is looked for in the store again (another
    /// daemon, or a person, may just have put it there).
    pub fn dataset_named(&self, name: &str) -> Option<Arc<Dataset>> {
        let name = DatasetName::parse(name).ok()?;
        let known = |c: &Catalog| {
            c.registry
                .read()
                .expect("registry")
                .by_name
                .get(&name)
                .cloned()
        };
        known(self).or_else(|| {
            self.rescan_if_stale();
            known(self)
        })
    }

    /// Every dataset, by name.
    pub fn datasets(&self) -> Vec<Arc<Dataset>> {
        let mut all: Vec<Arc<Dataset>> = self
            .registry
            .read()
            .expect("registry")
            .by_name
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// Rescans the store unless it was rescanned within `RESCAN_AFTER_MISS`.
    pub fn rescan_if_stale(&self) {
        let mut last = self.last_rescan.lock().expect("rescan lock");
        if last.elapsed() >= RESCAN_AFTER_MISS {
            *last = Instant::now();
            drop(last);
            self.rescan();
        }
    }

    fn forget(&self, name: &DatasetName) {
        self.registry.write().expect("registry").remove(name);
    }

    /// Registers `name` in `state` unless the catalogue or the store has it already.
    fn register_new(&self, name: &DatasetName, state: State) -> Result<Arc<Dataset>, CatalogError> {
        let mut reg = self.registry.write().expect("registry");
        if reg.by_name.contains_key(name) || self.store.holds(name) {
            return Err(CatalogError::Exists);
        }
        reg.insert(name.clone(), state)
            .ok_or_else(|| CatalogError::Io("too many datasets".into()))
    }

    // ------------------------------------------------------------------------------ uploads

    /// Starts the upload of input file `file_name` (`NAME.h5ad`): NAME is registered as
    /// uploading, holding its lease, and the upload file is created for the caller to write.
    pub fn begin_upload(
        &self,
        file_name: &str,
    ) -> Result<(Arc<Dataset>, std::fs::File), CatalogError> {
        let name = DatasetName::from_input_file(file_name)
            .map_err(|e| CatalogError::refused(e.to_string()))?;
        self.rescan_if_stale();
        let ds = self.register_new(&name, State::Uploading)?;
        let file = self.claim_upload(&ds).inspect_err(|_| self.forget(&name))?;
        Ok((ds, file))
    }

    /// Takes NAME's lease (other daemons over the same store: the lease decides who gets NAME)
    /// and creates the upload file.
    fn claim_upload(&self, ds: &Dataset) -> Result<std::fs::File, CatalogError> {
        let name = ds.name();
        match self.store.claim(name, "upload") {
            Ok(Claim::Taken(lease)) => ds.keep_lease(lease),
            Ok(Claim::Busy(holder)) => {
                log::info!("{name}: refused a drop: {holder} holds it");
                return Err(CatalogError::Exists);
            }
            Err(e) => return Err(CatalogError::io(e)),
        }
        if self.store.holds(name) {
            return Err(CatalogError::Exists);
        }
        self.store.create_upload(name).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CatalogError::Exists
            } else {
                CatalogError::io(e)
            }
        })
    }

    /// Sets the length of an upload in progress.
    pub fn truncate_upload(&self, ds: &Dataset, size: u64) -> Result<(), CatalogError> {
        self.store
            .truncate_upload(ds.name(), size)
            .map_err(CatalogError::io)
    }

    /// The upload's writer is done: it becomes `NAME.h5ad` in the store and is queued for
    /// conversion (the dataset keeps NAME's lease until its conversion ends).
    pub fn publish_upload(
        &self,
        ds: Arc<Dataset>,
        file: std::fs::File,
    ) -> Result<(), CatalogError> {
        if let Err(e) = self.store.publish_upload(ds.name(), &file) {
            log::error!("{}: upload could not be published: {e}", ds.name());
            self.forget(ds.name());
            return Err(CatalogError::io(e));
        }
        ds.set_has_input(true);
        ds.set_state(State::Queued);
        self.push_job(Job::Convert(ds));
        Ok(())
    }

    /// Waits (briefly) for a flushed upload of `ds` to be released and published.
    pub fn await_publication(&self, ds: &Dataset) {
        let deadline = Instant::now() + PUBLICATION_WAIT;
        while ds.is_uploading() && ds.upload_flushed() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The input file of `ds` as the store holds it: the upload file while it is uploading.
    pub fn input_path(&self, ds: &Dataset) -> PathBuf {
        if ds.is_uploading() {
            self.store.upload_path(ds.name())
        } else {
            self.store.input_path(ds.name())
        }
    }

    // ------------------------------------------------------------------------------ removal

    /// Removes the input `NAME.h5ad` (the dataset, if converted, stays), holding NAME's lease.
    pub fn remove_input(&self, name: &str) -> Result<(), CatalogError> {
        let ds = self.dataset_named(name).ok_or(CatalogError::NotFound)?;
        if ds.busy() {
            return Err(CatalogError::Busy);
        }
        if !ds.has_input() {
            return Err(CatalogError::NotFound);
        }
        let _lease = match self.store.leases().try_acquire(ds.name(), "delete") {
            Ok(Claim::Taken(l)) => l,
            Ok(Claim::Busy(_)) => return Err(CatalogError::Busy),
            Err(e) => return Err(CatalogError::io(e)),
        };
        self.store
            .remove_input(ds.name())
            .map_err(CatalogError::io)?;
        ds.set_has_input(false);
        if matches!(ds.state(), State::Failed(_)) && !self.store.entry(ds.name()).has_archive {
            self.forget(ds.name());
            self.observer.gone(ds.name());
        }
        Ok(())
    }

    /// Deletes dataset `name` from the store (archive, input, records), holding its lease.
    /// The caller tells the kernel that its names are gone.
    pub fn delete(&self, name: &DatasetName) -> Result<(), CatalogError> {
        let Some(ds) = self.dataset_named(name.as_str()) else {
            return Err(CatalogError::refused(format!("no dataset {name}")));
        };
        if ds.busy() {
            return Err(CatalogError::refused(format!(
                "{name} is {}; try again when it is done",
                ds.state().name()
            )));
        }
        let _lease = match self.store.leases().try_acquire(name, "delete") {
            Ok(Claim::Taken(l)) => l,
            Ok(Claim::Busy(h)) => {
                return Err(CatalogError::refused(format!(
                    "{name} is busy: {h}; try again later"
                )))
            }
            Err(e) => return Err(CatalogError::io(e)),
        };
        self.store.delete(name).map_err(CatalogError::io)?;
        self.forget(name);
        Ok(())
    }

    // ------------------------------------------------------------------------------ concat

    /// Validates a concat of `sources` into `new` completely before anything is written, then
    /// registers NEW (state converting, with progress) and queues the work. `command` is the
    /// request as the user gave it, kept with the job.
    pub fn start_concat(
        &self,
        new: &str,
        sources: &[&str],
        command: &str,
    ) -> Result<String, CatalogError> {
        if sources.is_empty() {
            return Err(CatalogError::refused(
                "no sources (usage: concat NEW SRC...)",
            ));
        }
        let new = DatasetName::parse(new).map_err(|e| CatalogError::refused(e.to_string()))?;
        let names = self.concat_sources(&new, sources)?;
        let lease = match self.store.claim(&new, "concat") {
            Ok(Claim::Taken(l)) => l,
            Ok(Claim::Busy(h)) => {
                return Err(CatalogError::refused(format!("{new} is being made: {h}")))
            }
            Err(e) => return Err(CatalogError::io(e)),
        };
        let target = self
            .register_new(&new, State::Converting)
            .map_err(|e| match e {
                CatalogError::Exists => CatalogError::refused(format!("{new} already exists")),
                e => e,
            })?;
        let job = ConcatJob {
            command: command.to_string(),
            sources: names.iter().map(|n| n.as_str().to_string()).collect(),
            error: None,
        };
        // Written down before it starts: a crash midway leaves it to the next start.
        if let Err(e) = self.store.write_job(&new, &job) {
            self.forget(&new);
            return Err(CatalogError::io(e));
        }
        target.keep_lease(lease);
        self.push_job(Job::Concat {
            target,
            sources: job.sources,
            command: command.to_string(),
        });
        Ok(format!("concat {new}: started"))
    }

    /// The sources of a concat into `new`: valid, distinct, not `new`, each ready.
    fn concat_sources(
        &self,
        new: &DatasetName,
        sources: &[&str],
    ) -> Result<Vec<DatasetName>, CatalogError> {
        let mut names = Vec::with_capacity(sources.len());
        for s in sources {
            let name = DatasetName::parse(s).map_err(|e| CatalogError::refused(e.to_string()))?;
            if &name == new {
                return Err(CatalogError::refused(format!(
                    "{name} is both the target and a source"
                )));
            }
            if names.contains(&name) {
                return Err(CatalogError::refused(format!("{name} is given twice")));
            }
            let Some(ds) = self.dataset_named(name.as_str()) else {
                return Err(CatalogError::refused(format!("no dataset {name}")));
            };
            match ds.state() {
                State::Ready(_) => {}
                other => {
                    return Err(CatalogError::refused(format!(
                        "{name} is {}, not ready",
                        other.name()
                    )))
                }
            }
            names.push(name);
        }
        Ok(names)
    }
}
