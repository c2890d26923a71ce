//! Keeping the catalogue true to the store it shares with other daemons: rescans (periodic,
//! and on demand), settling each dataset's state from what the store holds, and the leases
//! that decide which daemon works on a name.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Catalog, Dataset, State};
use crate::lease::{Claim, Lease};
use crate::names::DatasetName;
use crate::store::{ConcatJob, Entry};

use super::jobs::Job;

/// The store is also rescanned this often, so datasets published or deleted by other daemons
/// over a shared store appear and disappear without a lookup (no inotify: it misses NFS).
const RESCAN_INTERVAL: Duration = Duration::from_secs(2);

impl Catalog {
    /// The thread that keeps this daemon's leases alive and rescans the store.
    pub(super) fn start_rescans(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let catalog = self.clone();
        std::thread::Builder::new()
            .name("rescan".into())
            .spawn(move || {
                // The heartbeat keeps this daemon's leases alive; it must beat well within the
                // stale period, which may be shorter than the rescan interval.
                let leases = catalog.store.leases();
                let beat = leases.heartbeat_interval().min(RESCAN_INTERVAL);
                let mut last_scan = Instant::now();
                while !catalog.shutting_down() {
                    std::thread::sleep(beat);
                    leases.heartbeat();
                    if last_scan.elapsed() >= RESCAN_INTERVAL {
                        last_scan = Instant::now();
                        catalog.rescan();
                    }
                }
            })
            .expect("spawn rescan")
    }

    /// Registers datasets found in the store that the catalogue does not know yet, follows
    /// those another daemon is working on, and forgets those whose files disappeared (deleted
    /// by hand or by another daemon).
    pub fn rescan(&self) {
        let Ok(found) = self.store.scan() else { return };
        let present: HashSet<&DatasetName> = found.iter().map(|(n, _)| n).collect();
        for name in self.forget_absent(&present) {
            self.observer.gone(&name);
        }
        let mut reg = self.registry.write().expect("registry");
        for (name, entry) in found {
            if let Some(ds) = reg.by_name.get(&name) {
                ds.set_has_input(entry.has_input);
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
            ds.set_has_input(entry.has_input);
            self.settle(&ds, &entry);
        }
    }

    /// Removes the datasets no work of this daemon holds whose name is not `present` in the
    /// store; returns their names.
    fn forget_absent(&self, present: &HashSet<&DatasetName>) -> Vec<DatasetName> {
        let mut reg = self.registry.write().expect("registry");
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
        gone
    }

    /// Sets the state of a dataset that no job of this daemon is working on from what the store
    /// holds, and queues the work still to do (the job takes NAME's lease before doing it).
    fn settle(&self, ds: &Arc<Dataset>, entry: &Entry) {
        if entry.has_archive {
            self.settle_archive(ds, entry);
        } else if entry.has_job {
            self.settle_job(ds);
        } else if let Some(err) = self.store.failure(ds.name()) {
            ds.set_state(State::Failed(err));
        } else if entry.has_input {
            ds.set_state(State::Queued);
            self.push_job(Job::Convert(ds.clone()));
        }
    }

    fn settle_archive(&self, ds: &Dataset, entry: &Entry) {
        let name = ds.name();
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
    }

    fn settle_job(&self, ds: &Arc<Dataset>) {
        match self.store.job(ds.name()) {
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
    }

    /// Takes NAME's lease for a job (unless the dataset already holds it, as an upload does).
    /// On a busy lease the dataset shows the other daemon's work, and rescans follow it.
    pub(super) fn lease_for(&self, ds: &Dataset, purpose: &str) -> Option<Lease> {
        if let Some(l) = ds.take_lease() {
            return Some(l);
        }
        match self.store.claim(ds.name(), purpose) {
            Ok(Claim::Taken(l)) => Some(l),
            Ok(Claim::Busy(holder)) => {
                log::info!("{}: {} elsewhere: {holder}", ds.name(), purpose);
                ds.set_state(State::Remote(holder));
                None
            }
            Err(e) => {
                log::error!("{}: cannot take its lease: {e}", ds.name());
                ds.set_state(State::Failed(format!("cannot take the lease: {e}")));
                None
            }
        }
    }

    /// After taking the lease: the work may have been done (or found impossible) meanwhile by
    /// the daemon that held it. True when there is nothing left to do.
    pub(super) fn done_elsewhere(&self, ds: &Arc<Dataset>) -> bool {
        let entry = self.store.entry(ds.name());
        let failed = self.store.failure(ds.name()).is_some();
        if entry.has_archive || failed || (!entry.has_input && !entry.has_job) {
            self.settle(ds, &entry);
            if !entry.has_archive && !failed {
                // Deleted meanwhile.
                self.forget(ds.name());
                self.observer.gone(ds.name());
            }
            return true;
        }
        false
    }
}
