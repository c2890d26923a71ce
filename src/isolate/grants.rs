//! What a worker is allowed: the identity and confinement the daemon chose for its workers
//! (`Confinement`), what one worker is told (`WorkerGrants`, its hidden options), and the worker
//! side that applies them (`confine_worker`).

use std::ffi::OsString;
use std::os::fd::{BorrowedFd, RawFd};

use crate::confine::{self, Identity, Layers};
use crate::error::{Error, Result};

// GLOB

/// How workers are confined: the identity a worker started as root drops to, and whether the
/// layers of `confine.rs` are applied at all.
#[derive(Clone, Debug)]
pub struct Confinement {
    /// `None` when this process is not root (there is no privilege to drop).
    pub identity: Option<Identity>,
    /// False only with [`UNCONFINED_ENV`] set (benchmark comparisons; not for production).
    pub enabled: bool,
    /// Stay root (the other layers still apply): set by [`check_confinement`] only, for a store
    /// whose file system refuses every user but root (FUSE without allow_other, root squash).
    pub keep_root: bool,
}

impl Default for Confinement {
    /// As [`Confinement::for_user`] with [`DEFAULT_WORKER_USER`]; without that user, root's
    /// workers have no identity to drop to and refuse to run.
    fn default() -> Confinement {
        Confinement::for_user(DEFAULT_WORKER_USER).unwrap_or(Confinement {
            identity: None,
            enabled: true,
            keep_root: false,
        })
    }
}

/// `SCDL_FS_UNCONFINED=1` runs workers without the confinement layers (still in a child process
/// with the rlimits, through the same staging directory): only to measure what confinement costs.
pub const UNCONFINED_ENV: &str = "SCDL_FS_UNCONFINED";

/// The worker user when none is given.
pub const DEFAULT_WORKER_USER: &str = "nobody";

impl Confinement {
    /// The confinement of workers started by this process: as root, dropping to `worker_user`.
    pub fn for_user(worker_user: &str) -> Result<Confinement> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let identity = if unsafe { libc::geteuid() } == 0 {
            let id = Identity::of_user(worker_user).map_err(|e| Error::Usage(e.to_string()))?;
            if id.uid == 0 {
                return Err(Error::Usage(format!(
                    "the converter's user {worker_user:?} is root: choose an unprivileged one (--worker-user)"
                )));
            }
            Some(id)
        } else {
            None
        };
        let enabled = !std::env::var(UNCONFINED_ENV).is_ok_and(|v| v == "1");
        Ok(Confinement {
            identity,
            enabled,
            keep_root: false,
        })
    }

    /// Who owns what a worker writes: its identity when it drops one.
    pub(super) fn stage_owner(&self) -> Option<Identity> {
        self.identity.filter(|_| self.enabled && !self.keep_root)
    }
}

/// What a worker is told about its confinement (the hidden options of `convert-worker`,
/// `concat-worker` and `confine-probe`): the identity to drop to, the descriptors it may read
/// beneath and the staging directory it may write beneath.
#[derive(Clone, Debug, Default)]
pub struct WorkerGrants {
    pub identity: Option<Identity>,
    pub read_fds: Vec<RawFd>,
    pub stage_fd: Option<RawFd>,
    pub unconfined: bool,
    pub keep_root: bool,
}

impl WorkerGrants {
    pub(super) fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        if let Some(id) = self.identity {
            a.extend(["--as-user".into(), id.arg().into()]);
        }
        for fd in &self.read_fds {
            a.extend(["--read-fd".into(), fd.to_string().into()]);
        }
        if let Some(fd) = self.stage_fd {
            a.extend(["--stage-fd".into(), fd.to_string().into()]);
        }
        if self.unconfined {
            a.push("--unconfined".into());
        }
        if self.keep_root {
            a.push("--keep-root".into());
        }
        a
    }
}

/// The worker side: confines this process as its parent asked, and reports the layers on stdout
/// (`layers {json}`). Call it first thing, while single-threaded.
pub fn confine_worker(grants: &WorkerGrants) -> Result<Option<Layers>> {
    if grants.unconfined {
        return Ok(None);
    }
    let borrow = |fd: &RawFd| {
        // SAFETY: the parent opened these descriptors for this process (`run_worker`), and
        // nothing closes them before the process exits.
        unsafe { BorrowedFd::borrow_raw(*fd) }
    };
    let confine_grants = confine::Grants {
        read: grants.read_fds.iter().map(borrow).collect(),
        write: grants.stage_fd.iter().map(borrow).collect(),
    };
    let layers = confine::confine(grants.identity, grants.keep_root, &confine_grants)
        .map_err(|e| Error::Usage(e.to_string()))?;
    println!("layers {}", layers.encode());
    Ok(Some(layers))
}
