//! Confinement of the worker processes that parse untrusted bytes (`convert-worker` runs
//! libhdf5 on dropped `.h5ad` files, `concat-worker` reads archives). The worker confines itself
//! first thing after it starts, while it is still single-threaded and before it opens any input,
//! so every thread it later starts inherits every layer:
//!
//! 1. namespaces: a fresh network namespace (no interfaces but a downed loopback) and a private
//!    mount namespace; as root directly, otherwise inside a new user namespace when the kernel
//!    lets unprivileged users make one;
//! 2. identity (when started as root): `setgroups([])`, `setgid`, `setuid` to the worker user
//!    (`nobody` by default), checked by a `setuid(0)` that must fail; then `PR_SET_NO_NEW_PRIVS`
//!    and not dumpable;
//! 3. Landlock: reads only beneath the inputs' descriptors, writes only beneath the staging
//!    directory's descriptor, no TCP, no signals or abstract UNIX sockets outside the sandbox;
//! 4. seccomp: an allow-list of the system calls conversion and concat make; sockets and
//!    identity changes fail with `EPERM`, anything else (`execve`, `ptrace`, `mount`, ...) kills
//!    the process.
//!
//! Identity and seccomp fail closed: a worker that cannot drop root or install its filter does
//! not run. Landlock and the namespaces depend on the kernel; what is missing is reported in
//! [`Layers`], which the daemon logs once at start.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};

use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// Why a worker could not confine itself (it then refuses to run).
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("no user named {0:?} for the converter (--worker-user)")]
    NoSuchUser(String),
    #[error("converter confinement failed: {0}")]
    Failed(String),
}

fn failed(what: &str, e: impl std::fmt::Display) -> ConfineError {
    ConfineError::Failed(format!("{what}: {e}"))
}

fn last_os_error(what: &str) -> ConfineError {
    failed(what, std::io::Error::last_os_error())
}

/// The unprivileged identity a worker started as root drops to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

impl Identity {
    /// The identity of the user `name` (its primary group), or `UID:GID` given as numbers.
    pub fn of_user(name: &str) -> Result<Identity, ConfineError> {
        if let Some((u, g)) = name.split_once(':') {
            if let (Ok(uid), Ok(gid)) = (u.parse(), g.parse()) {
                return Ok(Identity { uid, gid });
            }
        }
        let c_name =
            std::ffi::CString::new(name).map_err(|_| ConfineError::NoSuchUser(name.into()))?;
        // SAFETY: an all-zero passwd is a valid value of this plain C struct.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; 16 << 10];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: the name is NUL-terminated, `pw` and
        // `found` are writable, `buf` is writable for its length; nothing is kept past it.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        if rc != 0 || found.is_null() {
            return Err(ConfineError::NoSuchUser(name.into()));
        }
        Ok(Identity {
            uid: pw.pw_uid,
            gid: pw.pw_gid,
        })
    }

    /// `UID:GID`, as the worker takes it on its command line.
    pub fn arg(&self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }
}

/// Which layers a confined worker got; its `Display` is the one line the daemon logs at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layers {
    /// `uid:gid` dropped to, or why not.
    pub identity: String,
    pub no_new_privs: bool,
    /// Landlock's enforcement (`fully enforced (ABI 7)`, `partially ...`, `not available`).
    pub landlock: String,
    pub landlock_full: bool,
    pub seccomp: bool,
    /// The namespaces entered (`network, mount`), or why none.
    pub namespaces: String,
    pub namespaces_full: bool,
}

impl Layers {
    /// Every layer in force (what a current kernel gives; not root is as good as dropping it).
    pub fn complete(&self) -> bool {
        let unprivileged =
            self.identity.starts_with("uid ") || self.identity.starts_with("already unprivileged");
        unprivileged
            && self.no_new_privs
            && self.landlock_full
            && self.seccomp
            && self.namespaces_full
    }

    /// The one-line form the probe worker prints and the daemon parses back.
    pub fn encode(&self) -> String {
        serde_json::json!({
            "identity": self.identity,
            "no_new_privs": self.no_new_privs,
            "landlock": self.landlock,
            "landlock_full": self.landlock_full,
            "seccomp": self.seccomp,
            "namespaces": self.namespaces,
            "namespaces_full": self.namespaces_full,
        })
        .to_string()
    }

    pub fn decode(line: &str) -> Option<Layers> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        Some(Layers {
            identity: v["identity"].as_str()?.into(),
            no_new_privs: v["no_new_privs"].as_bool()?,
            landlock: v["landlock"].as_str()?.into(),
            landlock_full: v["landlock_full"].as_bool()?,
            seccomp: v["seccomp"].as_bool()?,
            namespaces: v["namespaces"].as_str()?.into(),
            namespaces_full: v["namespaces_full"].as_bool()?,
        })
    }
}

impl std::fmt::Display for Layers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "identity {}; no_new_privs {}; Landlock {}; seccomp {}; namespaces {}",
            self.identity,
            if self.no_new_privs { "on" } else { "off" },
            self.landlock,
            if self.seccomp {
                "allow-list (kill on anything else)"
            } else {
                "off"
            },
            self.namespaces
        )
    }
}

/// What the worker may reach: it reads beneath `read`, reads and writes beneath `write`.
pub struct Grants<'a> {
    pub read: Vec<BorrowedFd<'a>>,
    pub write: Vec<BorrowedFd<'a>>,
}

/// Confines the calling process (see the module documentation). Call it while single-threaded.
/// `keep_root`: started as root, stay uid 0 (only where the daemon found that the store's file
/// system refuses any other user; the other layers still apply). Otherwise root without an
/// `identity` to drop to is an error.
pub fn confine(
    identity: Option<Identity>,
    keep_root: bool,
    grants: &Grants,
) -> Result<Layers, ConfineError> {
    // SAFETY: geteuid and getppid have no preconditions and cannot fail.
    let (root, parent) = unsafe { (libc::geteuid() == 0, libc::getppid()) };
    let mut layers = Layers::default();
    let (namespaces, full) = enter_namespaces(root);
    layers.namespaces = namespaces;
    layers.namespaces_full = full;
    layers.identity = match (root, identity) {
        (true, Some(id)) => {
            drop_identity(id)?;
            rearm_parent_death_signal(parent)?;
            format!("uid {} gid {} (no supplementary groups)", id.uid, id.gid)
        }
        (true, None) if keep_root => {
            "root kept (the store's file system refuses other users)".into()
        }
        (true, None) => return Err(failed("identity", "no worker user to drop root to")),
        (false, _) => {
            // SAFETY: getuid has no preconditions and cannot fail.
            format!("already unprivileged (uid {})", unsafe { libc::getuid() })
        }
    };
    // SAFETY: prctl with these arguments only changes flags of the calling process.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(last_os_error("PR_SET_NO_NEW_PRIVS"));
    }
    layers.no_new_privs = true;
    // SAFETY: as above; no core dumps, and other processes of the same user cannot ptrace it.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(last_os_error("PR_SET_DUMPABLE"));
    }
    let (landlock, full) = restrict_filesystem(grants)?;
    layers.landlock = landlock;
    layers.landlock_full = full;
    install_syscall_filter()?;
    layers.seccomp = true;
    Ok(layers)
}

/// Changing the user and group ids clears the parent-death signal the daemon set before exec
/// (prctl(2)), which would let a worker outlive a killed daemon and go on working for nobody:
/// sets it again, and gives up if the daemon (`parent`) already died in between.
fn rearm_parent_death_signal(parent: libc::pid_t) -> Result<(), ConfineError> {
    // SAFETY: prctl with these arguments only changes a flag of the calling process.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(last_os_error("PR_SET_PDEATHSIG"));
    }
    // SAFETY: getppid has no preconditions and cannot fail.
    if unsafe { libc::getppid() } != parent {
        return Err(failed(
            "identity",
            "the daemon that started this worker is gone",
        ));
    }
    Ok(())
}

/// A fresh network and a private mount namespace; returns what was entered and whether both.
fn enter_namespaces(root: bool) -> (String, bool) {
    let flags = libc::CLONE_NEWNET | libc::CLONE_NEWNS | libc::CLONE_NEWIPC;
    // As root directly; otherwise a user namespace makes the others possible where the kernel
    // allows unprivileged ones.
    let flags = if root {
        flags
    } else {
        flags | libc::CLONE_NEWUSER
    };
    // SAFETY: unshare only changes the calling process's namespaces.
    if unsafe { libc::unshare(flags) } != 0 {
        let e = std::io::Error::last_os_error();
        return (format!("none ({e})"), false);
    }
    // Nothing done to mounts here propagates back to the host.
    // SAFETY: the pointers are valid NUL-terminated strings or null, as mount(2) allows.
    let rc = unsafe {
        libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return (
            format!("network, ipc (mount namespace not private: {e})"),
            false,
        );
    }
    ("network, mount, ipc".into(), true)
}

fn drop_identity(id: Identity) -> Result<(), ConfineError> {
    // SAFETY: setgroups with an empty list reads no memory.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(last_os_error("setgroups"));
    }
    // SAFETY: setresgid/setresuid take plain integers.
    if unsafe { libc::setresgid(id.gid, id.gid, id.gid) } != 0 {
        return Err(last_os_error("setgid"));
    }
    // SAFETY: as above.
    if unsafe { libc::setresuid(id.uid, id.uid, id.uid) } != 0 {
        return Err(last_os_error("setuid"));
    }
    // The drop must be irreversible: getting root back must fail.
    // SAFETY: as above.
    if id.uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err(failed("setuid", "root could be regained after the drop"));
    }
    Ok(())
}

/// Landlock: read beneath the inputs, write beneath the staging directory, nothing else.
fn restrict_filesystem(grants: &Grants) -> Result<(String, bool), ConfineError> {
    let abi = ABI::V6;
    let ll = |e: landlock::RulesetError| failed("Landlock", e);
    let read = AccessFs::from_read(abi);
    let write = AccessFs::from_all(abi) & !AccessFs::Execute;
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .map_err(ll)?
        .handle_access(AccessNet::from_all(abi))
        .map_err(ll)?
        .scope(Scope::from_all(abi))
        .map_err(ll)?
        .create()
        .map_err(ll)?;
    for fd in &grants.read {
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd.as_fd(), read))
            .map_err(ll)?;
    }
    for fd in &grants.write {
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd.as_fd(), write))
            .map_err(ll)?;
    }
    let status = ruleset.restrict_self().map_err(ll)?;
    let version = landlock_abi_version();
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => (format!("fully enforced (ABI {version})"), true),
        RulesetStatus::PartiallyEnforced => (
            format!("partially enforced (ABI {version}: an older kernel)"),
            false,
        ),
        RulesetStatus::NotEnforced => ("not available on this kernel".into(), false),
    })
}

fn landlock_abi_version() -> i64 {
    // SAFETY: landlock_create_ruleset with a null attribute, size 0 and the VERSION flag only
    // returns the ABI version (or an error); it creates nothing.
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    }
}

/// System calls that fail with `EPERM` instead of killing: what an exploit tries first, refused
/// (each also refused by another layer), so that the fault switch can report every attempt.
const REFUSED: &[libc::c_long] = &[
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setgroups,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
];

/// What reading HDF5 (libhdf5, its filters), converting, concatenating (copy_file_range) and
/// writing an archive need: file I/O on open descriptors and paths beneath the grants, memory,
/// threads and their synchronisation, time, signals to itself, exit.
const ALLOWED: &[libc::c_long] = &[
    // files
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_openat,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fadvise64,
    libc::SYS_copy_file_range,
    libc::SYS_sendfile,
    libc::SYS_getdents64,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_readlinkat,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_fcntl,
    libc::SYS_flock,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_getcwd,
    libc::SYS_umask,
    // memory
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_msync,
    libc::SYS_mincore,
    libc::SYS_membarrier,
    // threads
    libc::SYS_clone3,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_get_robust_list,
    libc::SYS_rseq,
    libc::SYS_set_tid_address,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getppid,
    // signals (to itself: abort, a panic's unwinding)
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_restart_syscall,
    // time, identity queries, limits
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_uname,
    libc::SYS_sysinfo,
    libc::SYS_prlimit64,
    libc::SYS_getrlimit,
    libc::SYS_poll,
    libc::SYS_ppoll,
    // the end
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// x86_64's legacy path calls, which glibc and libhdf5 still use on it.
#[cfg(target_arch = "x86_64")]
const ALLOWED_LEGACY: &[libc::c_long] = &[
    libc::SYS_open,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_access,
    libc::SYS_mkdir,
    libc::SYS_rmdir,
    libc::SYS_unlink,
    libc::SYS_rename,
    libc::SYS_readlink,
    libc::SYS_getdents,
    libc::SYS_dup2,
    libc::SYS_arch_prctl,
    libc::SYS_time,
];
#[cfg(not(target_arch = "x86_64"))]
const ALLOWED_LEGACY: &[libc::c_long] = &[];

fn eq_arg(index: u8, value: u64) -> Result<SeccompRule, ConfineError> {
    let cond = SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .map_err(|e| failed("seccomp", e))?;
    SeccompRule::new(vec![cond]).map_err(|e| failed("seccomp", e))
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, ConfineError> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| failed("seccomp", format!("{e:?}")))?;
    SeccompFilter::new(rules, mismatch, matched, arch)
        .and_then(|f| f.try_into())
        .map_err(|e| failed("seccomp", e))
}

/// Three stacked filters (the kernel applies the strictest answer of all): an allow-list that
/// kills on anything unlisted, one that turns the refused calls into `EPERM`, and one that makes
/// `clone3` (whose flags a filter cannot see) fail with `ENOSYS`, so that glibc falls back to
/// `clone`, allowed only for threads: the worker cannot fork a process that would outlive it.
fn install_syscall_filter() -> Result<(), ConfineError> {
    let mut allowed: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED
        .iter()
        .chain(ALLOWED_LEGACY)
        .chain(REFUSED)
        .map(|&n| (n, vec![]))
        .collect();
    // Threads name themselves (PR_SET_NAME); no other prctl.
    allowed.insert(
        libc::SYS_prctl,
        vec![
            eq_arg(0, libc::PR_SET_NAME as u64)?,
            eq_arg(0, libc::PR_GET_NAME as u64)?,
        ],
    );
    // Whether a descriptor is a terminal (TCGETS); no other ioctl.
    allowed.insert(libc::SYS_ioctl, vec![eq_arg(1, libc::TCGETS)?]);
    let thread = libc::CLONE_THREAD as u64;
    let cond = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(thread),
        thread,
    )
    .map_err(|e| failed("seccomp", e))?;
    allowed.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![cond]).map_err(|e| failed("seccomp", e))?],
    );
    let kill = compile(allowed, SeccompAction::KillProcess, SeccompAction::Allow)?;
    let only = |calls: &[libc::c_long]| calls.iter().map(|&n| (n, vec![])).collect();
    let eperm = compile(
        only(REFUSED),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
    )?;
    let enosys = compile(
        only(&[libc::SYS_clone3]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )?;
    // The allow-list last: installing a filter is itself a system call it does not allow.
    for filter in [&eperm, &enosys, &kill] {
        seccompiler::apply_filter(filter).map_err(|e| failed("seccomp", e))?;
    }
    Ok(())
}

/// Test-only (the fault switch `escape`): what an exploit running in the worker would try, each
/// attempt reported on stderr as `escape WHAT: refused (why)` or `escape WHAT: SUCCEEDED`, with
/// the one that kills the worker (`execve`) last. `store` is the directory of the real input and
/// `others` the files found there before confinement (other inputs, other archives' data).
pub fn try_escapes(store: &std::path::Path, others: &[std::path::PathBuf]) -> ! {
    use std::io::Write;
    let report = |what: String, outcome: std::io::Result<()>| {
        let line = match outcome {
            Ok(()) => format!("escape {what}: SUCCEEDED"),
            Err(e) => format!("escape {what}: refused ({e})"),
        };
        let _ = writeln!(std::io::stderr(), "{line}");
    };
    report(
        "read /etc/shadow".into(),
        std::fs::read("/etc/shadow").map(drop),
    );
    report(
        format!("list {}", store.display()),
        std::fs::read_dir(store).map(drop),
    );
    for p in others {
        report(format!("read {}", p.display()), std::fs::read(p).map(drop));
    }
    for p in [
        store.join("escaped-by-worker"),
        std::path::PathBuf::from(format!("/tmp/scdl-fs-escape-{}", std::process::id())),
    ] {
        report(
            format!("write {}", p.display()),
            std::fs::write(&p, b"escaped").map(drop),
        );
    }
    for (what, domain) in [("inet", libc::AF_INET), ("unix", libc::AF_UNIX)] {
        // SAFETY: socket takes plain integers; a descriptor it returns is closed at exit.
        let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM, 0) };
        report(
            format!("open an {what} socket"),
            if fd >= 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            },
        );
    }
    // SAFETY: setuid takes a plain integer.
    let rc = unsafe { libc::setuid(0) };
    report(
        "setuid(0)".into(),
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        },
    );
    let _ = writeln!(std::io::stderr(), "escape execve /bin/sh: trying");
    let err = std::os::unix::process::CommandExt::exec(
        std::process::Command::new("/bin/sh").args(["-c", "id"]),
    );
    report("execve /bin/sh".into(), Err(err));
    std::process::exit(1)
}
