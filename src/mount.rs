//! The daemon's life: open the store, clear a stale mount, mount, report readiness, serve until
//! SIGTERM/SIGINT/SIGHUP or an external unmount, unmount cleanly. Without `--foreground` the
//! command starts itself again in the background and returns only once that daemon's mount is
//! live (or with the reason it could not mount).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::catalog::CatalogOptions;
use crate::convert::ConvertOptions;
use crate::fuse::{self, SessionOptions, Unmounter};
use crate::namespace::{Namespace, NamespaceOptions};
use crate::store::Store;

#[derive(Clone, Debug)]
pub struct MountOptions {
    pub mountpoint: PathBuf,
    pub store: PathBuf,
    pub allow_other: bool,
    /// Group (gid) whose members may write: drop files, remove inputs, write `.control`.
    pub writers: Option<u32>,
    /// Mount read-only (serve only).
    pub read_only: bool,
    pub threads: usize,
    /// Use FUSE over io_uring when the kernel offers it.
    pub io_uring: bool,
    pub workers: usize,
    /// Bytes of rendered batches kept (`--batch-memory`).
    pub batch_memory: usize,
    pub convert: ConvertOptions,
    /// The unprivileged user conversions and concats run as (when the daemon is root).
    pub worker_user: String,
}

/// Why the daemon could not start; each has its own exit code (README.md lists them).
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("store {}: {message}", path.display())]
    Store { path: PathBuf, message: String },
    #[error("mountpoint {}: {message}", path.display())]
    Mountpoint { path: PathBuf, message: String },
    #[error("mount failed: {0}")]
    Mount(String),
    /// The workers cannot be started as asked (no such worker user, confinement refused).
    #[error("{0}")]
    Worker(String),
}

impl MountError {
    pub fn exit_code(&self) -> u8 {
        match self {
            MountError::Store { .. } => 3,
            MountError::Mountpoint { .. } => 4,
            MountError::Mount(_) => 5,
            MountError::Worker(_) => 2,
        }
    }
}

/// The environment variable through which a background daemon tells its parent it is ready.
const READY_PIPE_ENV: &str = "SCDL_FS_READY_ON_STDOUT";

fn mountpoint_error(path: &Path, message: impl Into<String>) -> MountError {
    MountError::Mountpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// umount2(MNT_DETACH): detaches the mount at `mnt` now, lazily releasing it when unused.
fn detach(mnt: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A FUSE mount whose daemon died leaves the mountpoint answering ENOTCONN: detach it.
fn clear_stale_mount(mnt: &Path) -> Result<(), MountError> {
    let dead = |e: &std::io::Error| e.raw_os_error() == Some(libc::ENOTCONN);
    match std::fs::metadata(mnt) {
        Ok(m) if !m.is_dir() => return Err(mountpoint_error(mnt, "not a directory")),
        Ok(_) => {}
        Err(e) if dead(&e) => return detach_stale(mnt),
        Err(e) => return Err(mountpoint_error(mnt, e.to_string())),
    }
    // Within a second of the daemon's death the kernel may still answer stat from its attribute
    // cache; statfs is never cached, so it tells (a restart right after a crash needs this).
    if is_mountpoint(mnt) && statfs(mnt).is_err_and(|e| dead(&e)) {
        return detach_stale(mnt);
    }
    Ok(())
}

fn detach_stale(mnt: &Path) -> Result<(), MountError> {
    log::warn!(
        "{}: clearing a stale mount left by a dead daemon",
        mnt.display()
    );
    detach(mnt).map_err(|e| mountpoint_error(mnt, format!("stale mount could not be cleared: {e}")))
}

fn statfs(path: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `buf` a writable statfs; both outlive the
    // call.
    if unsafe { libc::statfs(c.as_ptr(), &mut buf) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn is_mountpoint(mnt: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let Ok(canon) = mnt.canonicalize() else {
        return false;
    };
    let want = canon.to_string_lossy();
    text.lines().any(|l| l.split(' ').nth(4) == Some(&want))
}

/// Runs the daemon in this process until it is unmounted.
pub fn run_foreground(opts: &MountOptions) -> Result<(), MountError> {
    let store = Store::open(&opts.store).map_err(|e| MountError::Store {
        path: opts.store.clone(),
        message: e.to_string(),
    })?;
    clear_stale_mount(&opts.mountpoint)?;
    if is_mountpoint(&opts.mountpoint) {
        return Err(mountpoint_error(
            &opts.mountpoint,
            "already a mount point (busy)",
        ));
    }
    let converter = crate::isolate::own_executable();
    let confinement = crate::isolate::Confinement::for_user(&opts.worker_user)
        .map_err(|e| MountError::Worker(e.to_string()))?;
    let confinement = match &converter {
        // Once, at start: which layers every worker gets here (a worker that cannot drop root
        // or install its filter would refuse every job: refuse to start instead).
        Some(exe) => {
            crate::isolate::check_confinement(exe, confinement, &store.root().join(".scdl-fs"))
                .map_err(|e| MountError::Worker(e.to_string()))?
        }
        None => confinement,
    };
    crate::batches::map_large_allocations();
    let ns = Namespace::new(store, opts.namespace_options(converter, confinement));
    let workers = ns.start_workers();
    let mut mounted = fuse::mount(ns.clone(), &opts.mountpoint, &opts.session_options())
        .map_err(|e| MountError::Mount(e.to_string()))?;
    unmount_on_signals(mounted.unmounter(), &opts.mountpoint, ns.clone())?;
    log::info!(
        "mounted {} (store {})",
        opts.mountpoint.display(),
        opts.store.display()
    );
    notify_ready();
    let served = mounted.run().map_err(|e| MountError::Mount(e.to_string()));
    sd_notify("STOPPING=1");
    ns.shutdown();
    drop(workers); // conversions in flight are abandoned; the next start cleans their temp files
    ns.store().leases().close();
    served
}

impl MountOptions {
    fn namespace_options(
        &self,
        converter: Option<PathBuf>,
        confinement: crate::isolate::Confinement,
    ) -> NamespaceOptions {
        NamespaceOptions {
            catalog: CatalogOptions {
                convert: self.convert.clone(),
                workers: self.workers,
                converter,
                limits: crate::isolate::Limits::default(),
                confinement,
            },
            writers: self.writers,
            batches: crate::namespace::BatchOptions {
                memory: self.batch_memory,
                ..Default::default()
            },
        }
    }

    fn session_options(&self) -> SessionOptions {
        SessionOptions {
            source: self.store.display().to_string(),
            read_only: self.read_only,
            allow_other: self.allow_other,
            threads: self.threads,
            io_uring: self.io_uring,
        }
    }
}

/// At SIGTERM, SIGINT or SIGHUP: stop the workers and unmount (lazily if the mount is busy).
fn unmount_on_signals(
    mut unmounter: Unmounter,
    mnt: &Path,
    ns: Arc<Namespace>,
) -> Result<(), MountError> {
    let mnt = mnt.to_path_buf();
    let mut signals =
        signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
            .map_err(|e| MountError::Mount(format!("signal handlers: {e}")))?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            log::info!("signal {sig}: unmounting {}", mnt.display());
            ns.shutdown();
            if let Err(e) = unmounter.unmount() {
                log::warn!("unmount: {e}; detaching lazily");
                if let Err(e) = detach(&mnt) {
                    log::error!("lazy unmount of {}: {e}", mnt.display());
                }
            }
        }
    });
    Ok(())
}

fn notify_ready() {
    if std::env::var_os(READY_PIPE_ENV).is_some() {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
    sd_notify(&format!("READY=1\nMAINPID={}", std::process::id()));
}

/// The sd_notify protocol: one datagram to $NOTIFY_SOCKET (a path, or '@' for the abstract
/// namespace), so `Type=notify` units know when the mount is live.
fn sd_notify(message: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|a| UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &a));
    if let Err(e) = sent {
        log::warn!("sd_notify to {path}: {e}");
    }
}

/// Starts the daemon in the background (this same binary with `--foreground`) and waits until
/// its mount is live. Returns the daemon's error when it could not mount.
pub fn run_background(args: &[std::ffi::OsString], store: &Path) -> Result<(), (u8, String)> {
    let exe =
        std::env::current_exe().map_err(|e| (1, format!("cannot find own executable: {e}")))?;
    let log_dir = store.join(".scdl-fs");
    let _ = std::fs::create_dir_all(&log_dir);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join("daemon.log"))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    let mut child = Command::new(exe)
        .args(args)
        .arg("--foreground")
        .env(READY_PIPE_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| (1, format!("cannot start the daemon: {e}")))?;
    let out = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(out).lines();
    match lines.next() {
        Some(Ok(l)) if l == "ready" => Ok(()),
        other => {
            let status = child.wait().ok();
            let code = status.and_then(|s| s.code()).unwrap_or(1) as u8;
            let msg = match other {
                Some(Ok(l)) => l,
                _ => format!(
                    "the daemon exited before mounting; see {}",
                    log_dir.join("daemon.log").display()
                ),
            };
            Err((code.max(1), msg))
        }
    }
}

/// Writes the daemon's startup error to stdout for a waiting parent (background mode).
pub fn report_startup_error(message: &str) {
    if std::env::var_os(READY_PIPE_ENV).is_some() {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{message}");
        let _ = out.flush();
    }
}
