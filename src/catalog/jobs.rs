//! The work on datasets: a queue of jobs (convert an input, concatenate archives) and the
//! worker threads that run them, each holding the target's lease while it works. Conversions
//! run in a child process (`isolate`) when the catalogue has a converter, concats in the daemon.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::{Catalog, Dataset, State};
use crate::archive::Archive;
use crate::convert;
use crate::names::DatasetName;
use crate::store::ConcatJob;

/// Work for the workers.
pub(super) enum Job {
    Convert(Arc<Dataset>),
    /// Concatenate ready datasets `sources` into `target` (created in state converting).
    Concat {
        target: Arc<Dataset>,
        sources: Vec<String>,
        command: String,
    },
}

#[derive(Default)]
pub(super) struct JobQueue {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
    stopping: AtomicBool,
}

impl JobQueue {
    fn push(&self, job: Job) {
        self.jobs.lock().expect("jobs").push_back(job);
        self.ready.notify_one();
    }

    /// The next job, waiting for one; `None` once stopping.
    fn next(&self) -> Option<Job> {
        let mut q = self.jobs.lock().expect("jobs");
        loop {
            if self.stopping() {
                return None;
            }
            if let Some(job) = q.pop_front() {
                return Some(job);
            }
            q = self.ready.wait(q).expect("jobs");
        }
    }

    fn stop(&self) {
        // Under the jobs lock: a worker between its check of the flag and its wait would miss a
        // notification sent without it and wait forever (found by the control fuzz target, a
        // join of the workers hung).
        let _jobs = self.jobs.lock().expect("jobs");
        self.stopping.store(true, Ordering::SeqCst);
        self.ready.notify_all();
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn is_empty(&self) -> bool {
        self.jobs.lock().expect("jobs").is_empty()
    }
}

impl Catalog {
    pub(super) fn push_job(&self, job: Job) {
        self.jobs.push(job);
    }

    /// Starts the conversion workers and the periodic store rescan (they stop at `shutdown`).
    pub fn start_workers(self: &Arc<Self>) -> Vec<std::thread::JoinHandle<()>> {
        let rescanner = self.start_rescans();
        std::iter::once(rescanner)
            .chain((0..self.options.workers.max(1)).map(|i| {
                let catalog = self.clone();
                std::thread::Builder::new()
                    .name(format!("convert-{i}"))
                    .spawn(move || catalog.work())
                    .expect("spawn worker")
            }))
            .collect()
    }

    /// Stops the workers and rescans (work in flight is abandoned to the next start).
    pub fn shutdown(&self) {
        self.jobs.stop();
    }

    pub(super) fn shutting_down(&self) -> bool {
        self.jobs.stopping()
    }

    /// Waits until no job is queued or running (for tests and orderly shutdown).
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            let busy = !self.jobs.is_empty() || self.datasets().iter().any(|d| d.busy());
            if !busy {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn work(&self) {
        while let Some(job) = self.jobs.next() {
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
        log::info!("{}: concatenating {}", target.name(), sources.join(" "));
        match self.concat_into(target, sources) {
            Ok(archive) => {
                log::info!(
                    "{}: concatenated ({} rows)",
                    target.name(),
                    archive.num_rows
                );
                self.store.remove_job(target.name());
                target.set_ready(archive);
                self.observer
                    .concat_ended(command, Ok(format!("{} ready", target.name())));
            }
            Err(e) if self.shutting_down() => {
                // Not the sources' fault: the job stays written down for the next start.
                log::warn!("{}: concat interrupted: {e}", target.name());
                target.set_state(State::Failed(format!("interrupted: {e}")));
            }
            Err(e) => self.concat_failed(target, sources, command, e),
        }
    }

    /// Concatenates the archives of `sources` into `target`'s, and opens it.
    fn concat_into(&self, target: &Dataset, sources: &[String]) -> crate::Result<Archive> {
        let inputs: Vec<PathBuf> = sources
            .iter()
            .map(|s| match DatasetName::parse(s) {
                Ok(n) => Ok(self.store.archive_path(&n)),
                Err(e) => Err(crate::Error::Usage(e.to_string())),
            })
            .collect::<crate::Result<_>>()
            .unwrap_or_default();
        if inputs.len() != sources.len() {
            return Err(crate::Error::Usage("a source name is not valid".into()));
        }
        let output = self.store.archive_path(target.name());
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
                target,
            ),
            None => crate::concat::concat_with(&inputs, &output, &opts, target).map(|_| ()),
        }
        .and_then(|_| self.store.open_archive(target.name()))
    }

    /// Nothing was published (the writer removed its temporary directory): the target shows
    /// the reason until deleted, and so does the observer (`.control`).
    fn concat_failed(&self, target: &Dataset, sources: &[String], command: &str, e: crate::Error) {
        let msg = format!("concat failed: {e}");
        log::warn!("{}: {msg}", target.name());
        let job = ConcatJob {
            command: command.to_string(),
            sources: sources.to_vec(),
            error: Some(msg.clone()),
        };
        if let Err(e) = self.store.write_job(target.name(), &job) {
            log::error!("{}: cannot record the failure: {e}", target.name());
        }
        target.set_state(State::Failed(msg.clone()));
        self.observer.concat_ended(command, Err(msg));
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
        let result = self.convert_input(ds);
        // A daemon that took the lease over while this one was silent may have published first.
        let result = match result {
            Err(e) if lease.is_lost() || self.store.has_archive(ds.name()) => {
                log::warn!("{}: {e}; another daemon published it", ds.name());
                self.store.open_archive(ds.name())
            }
            r => r,
        };
        drop(lease);
        match result {
            Ok(archive) => {
                log::info!("{}: ready ({} rows)", ds.name(), archive.num_rows);
                self.store.clear_failure(ds.name());
                ds.set_ready(archive);
            }
            Err(e) if matches!(e, crate::Error::Interrupted(_)) || self.shutting_down() => {
                // Not the input's fault: shown, not remembered; the next start converts again.
                log::warn!("{}: conversion interrupted: {e}", ds.name());
                ds.set_state(State::Failed(e.to_string()));
            }
            Err(e) => {
                let msg = e.to_string();
                log::warn!("{}: conversion failed: {msg}", ds.name());
                if let Err(e) = self.store.record_failure(ds.name(), &msg) {
                    log::error!("{}: cannot record the failure: {e}", ds.name());
                }
                ds.set_state(State::Failed(msg));
            }
        }
    }

    /// Converts `ds`'s input into its archive (in a child process when there is a converter)
    /// and opens it.
    fn convert_input(&self, ds: &Dataset) -> crate::Result<Archive> {
        let input = self.store.input_path(ds.name());
        let output = self.store.archive_path(ds.name());
        log::info!("{}: converting {}", ds.name(), input.display());
        let converted = match &self.options.converter {
            Some(exe) => crate::isolate::convert_in_child(
                exe,
                &input,
                &output,
                &self.options.convert,
                &self.options.limits,
                &self.options.confinement,
                ds,
            ),
            None => {
                convert::convert_files(&[input], &output, &self.options.convert, ds).map(|_| ())
            }
        };
        converted.and_then(|_| self.store.open_archive(ds.name()))
    }
}
