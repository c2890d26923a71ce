//! Mounting: the fuser session with its options, the connection both transports share, the
//! io_uring queues when INIT agreed to them, and the kernel notifier, wired in one call.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL};

use super::{adapter::ScdlFs, uring, Connection};
use crate::namespace::Namespace;

/// How to mount.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// The mount's source as `mount(8)` shows it (the store, exactly as given).
    pub source: String,
    pub read_only: bool,
    pub allow_other: bool,
    /// Request threads (at least two).
    pub threads: usize,
    /// Use FUSE over io_uring when the kernel offers it.
    pub io_uring: bool,
}

/// A live mount, served once `run` is called.
pub struct Mounted {
    session: fuser::Session<ScdlFs>,
}

/// Unmounts a live mount from another thread.
pub struct Unmounter(fuser::SessionUnmounter);

impl Unmounter {
    pub fn unmount(&mut self) -> std::io::Result<()> {
        self.0.unmount()
    }
}

fn config(opts: &SessionOptions) -> Config {
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        // The store as the mount's source, exactly as given: mount(8) then recognises an fstab
        // line as mounted (`mount -a` twice is a no-op).
        MountOption::FSName(opts.source.clone()),
        MountOption::Subtype("scdl-fs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    if opts.read_only {
        // Besides refusing writes, a read-only superblock spares a GETATTR per read: the kernel
        // invalidates a FUSE inode's atime after every read unless the mount is read-only.
        cfg.mount_options.push(MountOption::RO);
    }
    cfg.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    // At least two: a lookup may wait for a release that another thread must serve.
    cfg.n_threads = Some(opts.threads.max(2));
    cfg.clone_fd = true;
    cfg
}

/// Mounts `ns` at `mountpoint` (the INIT exchange happens here), starts the io_uring queues
/// when INIT agreed to them, and connects the tree to the kernel's caches.
pub fn mount(
    ns: Arc<Namespace>,
    mountpoint: &Path,
    opts: &SessionOptions,
) -> std::io::Result<Mounted> {
    let conn = Arc::new(Connection::new(ns));
    let fs = ScdlFs::new(conn.clone(), opts.io_uring);
    let session = fuser::Session::new(fs, mountpoint, &config(opts))?;
    let dev = session.as_fd().try_clone_to_owned()?;
    conn.set_device(dev.try_clone()?);
    if conn.io_uring() {
        match uring::start(conn.clone(), &dev, opts.threads) {
            Ok(n) => log::info!("FUSE over io_uring: {n} queue threads"),
            Err(e) => log::warn!("FUSE over io_uring not started ({e}); serving /dev/fuse only"),
        }
    }
    conn.set_notifier(session.notifier());
    Ok(Mounted { session })
}

impl Mounted {
    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter(self.session.unmount_callable())
    }

    /// Serves requests until the mount goes away.
    pub fn run(self) -> std::io::Result<()> {
        self.session.run()
    }
}
