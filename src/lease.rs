//! Leases: store-wide claims on a dataset name, so that of all the daemons serving one store
//! (one per node, over NFS or any shared file system) exactly one uploads, converts,
//! concatenates or deletes a given NAME at a time.
//!
//! A lease is the file `STORE/.scdl-fs/leases/NAME.lease` holding its holder's host, pid and a
//! random nonce. It is taken with link(2) of a fully written temporary file (atomic on NFS,
//! unlike O_EXCL on old servers), kept alive by touching its mtime (the heartbeat), and given
//! up by removing it. A lease whose holder is dead (same host, pid gone) or silent (not touched
//! for the stale period, measured on the store's own clock, so clock skew between nodes does
//! not matter) is taken over: renamed aside, checked to be the stale one, removed. A holder
//! whose lease was taken over learns it at its next heartbeat and must not publish; the final
//! publication (a no-replace rename) is the last guard.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result};
use crate::names::DatasetName;

/// A lease not touched for this long belongs to a silent holder and may be taken over.
pub const DEFAULT_STALE: Duration = Duration::from_secs(30);
/// Overrides the stale period (seconds; tests use a few).
pub const STALE_ENV: &str = "SCDL_FS_LEASE_STALE_SECS";

/// Who holds a lease: written into the lease file, shown in status.json and errors.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    pub nonce: u64,
    /// What the holder does with NAME: "upload", "convert", "concat", "delete".
    #[serde(default)]
    pub purpose: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {} (pid {})", self.purpose, self.host, self.pid)
    }
}

/// The outcome of trying to take a lease.
pub enum Claim {
    Taken(Lease),
    /// Another live daemon holds it.
    Busy(Holder),
}

/// This daemon's view of the store's leases.
pub struct Leases {
    dir: PathBuf,
    host: String,
    nonce: u64,
    stale: Duration,
    /// The file whose mtime gives the store's clock (see `store_now`).
    clock: PathBuf,
    held: Mutex<HashMap<DatasetName, Arc<AtomicBool>>>,
    counter: AtomicU64,
}

/// A held lease; dropping it gives the lease up.
pub struct Lease {
    leases: Arc<Leases>,
    name: DatasetName,
    lost: Arc<AtomicBool>,
}

impl Lease {
    /// True once a heartbeat found the lease taken over by another daemon: do not publish.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.leases.release(&self.name);
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn random_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists; it sends nothing.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Sets a file's times to now as the file system's clock gives it (UTIME_NOW: on NFS the
/// server's time), so ages compare across nodes whatever their clocks say.
fn touch(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let now = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_NOW,
    };
    let times = [now, now];
    // SAFETY: `c` is a valid NUL-terminated path and `times` two valid timespecs; both
    // outlive the call.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn stale_period() -> Duration {
    std::env::var(STALE_ENV)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_STALE)
}

impl Leases {
    /// The leases of the store whose state directory is `state_dir` (`STORE/.scdl-fs`).
    pub fn open(state_dir: &Path) -> Result<Arc<Leases>> {
        let dir = state_dir.join("leases");
        fs::create_dir_all(&dir).at(&dir)?;
        let host = hostname();
        let nonce = random_nonce();
        let clock = dir.join(format!(".clock.{host}.{}.{nonce:016x}", std::process::id()));
        let leases = Arc::new(Leases {
            dir,
            host,
            nonce,
            stale: stale_period(),
            clock,
            held: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
        });
        leases.remove_dead_clocks();
        Ok(leases)
    }

    /// How often holders should call `heartbeat`: well within the stale period.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.stale / 6).clamp(Duration::from_millis(200), Duration::from_secs(5))
    }

    fn path(&self, name: &DatasetName) -> PathBuf {
        self.dir.join(format!("{}.lease", name.as_str()))
    }

    fn me(&self, purpose: &str) -> Holder {
        Holder {
            host: self.host.clone(),
            pid: std::process::id(),
            nonce: self.nonce,
            purpose: purpose.into(),
        }
    }

    fn unique_temp(&self, what: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!(
            ".{what}.{}.{:016x}.{n}",
            std::process::id(),
            self.nonce
        ))
    }

    /// The store's current time: the mtime of a file this daemon just touched. Lease ages are
    /// measured against it, never against this node's clock.
    fn store_now(&self) -> SystemTime {
        let touched = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.clock)
            .and_then(|_| touch(&self.clock))
            .and_then(|_| fs::metadata(&self.clock)?.modified());
        touched.unwrap_or_else(|_| SystemTime::now())
    }

    /// Clock files of daemons that are gone: of this host, by pid; of any host, when untouched
    /// for ten stale periods (live daemons touch theirs at every heartbeat).
    fn remove_dead_clocks(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let now = self.store_now();
        let prefix = format!(".clock.{}.", self.host);
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !n.starts_with(".clock.") || e.path() == self.clock {
                continue;
            }
            let pid = n
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split('.').next())
                .and_then(|p| p.parse::<u32>().ok());
            let dead_here = pid.is_some_and(|p| !pid_alive(p));
            let silent = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > self.stale * 10);
            if dead_here || silent {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    fn read_holder(path: &Path) -> Option<(Holder, SystemTime, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(path).ok()?;
        let holder: Holder = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
        Some((holder, m.modified().ok()?, m.ino()))
    }

    fn is_dead(&self, holder: &Holder, touched: SystemTime) -> bool {
        if holder.host == self.host && !pid_alive(holder.pid) {
            return true;
        }
        let age = self
            .store_now()
            .duration_since(touched)
            .unwrap_or(Duration::ZERO);
        age > self.stale
    }

    /// The live holder of NAME's lease other than this daemon, if any.
    pub fn holder(&self, name: &DatasetName) -> Option<Holder> {
        let (h, touched, _) = Self::read_holder(&self.path(name))?;
        (h.nonce != self.nonce && !self.is_dead(&h, touched)).then_some(h)
    }

    /// Takes NAME's lease for `purpose`, taking it over from a dead or silent holder.
    pub fn try_acquire(self: &Arc<Self>, name: &DatasetName, purpose: &str) -> Result<Claim> {
        let me = self.me(purpose);
        let temp = self.unique_temp(name.as_str());
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .at(&temp)?;
        f.write_all(&serde_json::to_vec(&me).expect("serialisable"))
            .and_then(|_| f.sync_all())
            .at(&temp)?;
        drop(f);
        let result = self.link_lease(name, &temp);
        let _ = fs::remove_file(&temp);
        match result? {
            None => {
                let lost = Arc::new(AtomicBool::new(false));
                self.held
                    .lock()
                    .expect("leases")
                    .insert(name.clone(), lost.clone());
                log::debug!("{name}: lease taken for {purpose}");
                Ok(Claim::Taken(Lease {
                    leases: self.clone(),
                    name: name.clone(),
                    lost,
                }))
            }
            Some(holder) => Ok(Claim::Busy(holder)),
        }
    }

    /// Links `temp` as NAME's lease; on a live holder returns it. Tries twice: the second time
    /// after taking over a dead holder's lease.
    fn link_lease(&self, name: &DatasetName, temp: &Path) -> Result<Option<Holder>> {
        use std::os::unix::fs::MetadataExt;
        let path = self.path(name);
        for _ in 0..2 {
            match fs::hard_link(temp, &path) {
                Ok(()) => return Ok(None),
                // NFS may lose the reply of a link that succeeded: the link count tells.
                Err(_) if fs::metadata(temp).is_ok_and(|m| m.nlink() == 2) => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                // Some network file systems report a link onto an existing name as a generic
                // failure (sshfs: EIO): the name being there is what matters.
                Err(_) if path.symlink_metadata().is_ok() => {}
                Err(e) => return Err(crate::Error::io(&path, e)),
            }
            let Some((holder, touched, ino)) = Self::read_holder(&path) else {
                // Vanished, or half-written by a holder that crashed while writing it (never
                // linked half-written: the temp is complete before the link), or unreadable.
                if path.exists() && fs::read(&path).is_ok_and(|b| b.is_empty()) {
                    let _ = fs::remove_file(&path);
                }
                continue;
            };
            if !self.is_dead(&holder, touched) {
                return Ok(Some(holder));
            }
            self.take_over(name, &path, &holder, ino);
        }
        Ok(Self::read_holder(&path).map(|(h, _, _)| h))
    }

    /// Moves a dead holder's lease aside. If what was moved is not the lease judged dead (a
    /// fresh one replaced it meanwhile), it is put back.
    fn take_over(&self, name: &DatasetName, path: &Path, dead: &Holder, ino: u64) {
        use std::os::unix::fs::MetadataExt;
        let aside = self.unique_temp(&format!("{}.stale", name.as_str()));
        if fs::rename(path, &aside).is_err() {
            return; // another daemon moved it first
        }
        let moved_ino = fs::metadata(&aside).map(|m| m.ino()).unwrap_or(0);
        if moved_ino == ino {
            log::warn!("{name}: taking over the lease of a dead or silent holder ({dead})");
        } else {
            let _ = fs::hard_link(&aside, path);
        }
        let _ = fs::remove_file(&aside);
    }

    fn release(&self, name: &DatasetName) {
        self.held.lock().expect("leases").remove(name);
        let path = self.path(name);
        if let Some((h, _, _)) = Self::read_holder(&path) {
            if h.nonce == self.nonce {
                let _ = fs::remove_file(&path);
            }
        }
    }

    /// Touches every lease this daemon holds; marks those found taken over as lost.
    pub fn heartbeat(&self) {
        let held: Vec<(DatasetName, Arc<AtomicBool>)> = self
            .held
            .lock()
            .expect("leases")
            .iter()
            .map(|(n, l)| (n.clone(), l.clone()))
            .collect();
        self.store_now();
        for (name, lost) in held {
            let path = self.path(&name);
            let ours = Self::read_holder(&path).is_some_and(|(h, _, _)| h.nonce == self.nonce);
            let touched = ours && touch(&path).is_ok();
            if !touched && !lost.swap(true, Ordering::SeqCst) {
                log::error!("{name}: this daemon's lease was taken over; its work is abandoned");
            }
        }
    }
}

impl Leases {
    /// At daemon exit: gives up every lease still held (its work is abandoned; whoever takes
    /// the lease next cleans up after it) and removes this daemon's clock file. Needed because
    /// threads still hold `Arc`s when the process exits, so `Drop` would not run.
    pub fn close(&self) {
        let held: Vec<DatasetName> = self.held.lock().expect("leases").keys().cloned().collect();
        for name in held {
            self.release(&name);
        }
        let _ = fs::remove_file(&self.clock);
    }
}

impl Drop for Leases {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.clock);
    }
}
