//! The confined workers (src/confine.rs, src/stage.rs) on a real mount, as root: a worker that
//! tries what an exploit would is refused at every step and killed at `execve`, its dataset
//! fails with one line and the daemon serves everything else; a normal drop still converts and
//! its archive is owned by the daemon; the layers are logged once at start.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bin, daemons, fixtures, is_mounted, read_check, scdl, stderr, wait_done};

/// A background mount of a fresh store with `env` set for the daemon (and so its workers).
struct Mounted {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
    store: PathBuf,
}

impl Mounted {
    fn start(env: &[(&str, &str)]) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        let (mnt, store) = (dir.path().join("mnt"), dir.path().join("store"));
        std::fs::create_dir(&mnt).unwrap();
        let o = Command::new(bin())
            .args(["mount", mnt.to_str().unwrap(), "--store"])
            .arg(&store)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(o.status.success(), "mount failed: {}", stderr(&o));
        assert!(is_mounted(&mnt));
        Mounted {
            _dir: dir,
            mnt,
            store,
        }
    }

    fn drop_file(&self, name: &str, source: &Path) {
        std::fs::copy(source, self.mnt.join(name)).unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.store.join(".scdl-fs/daemon.log")).unwrap_or_default()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        common::unmount_and_kill(&self.mnt);
    }
}

/// The outcome the worker reported for the escape attempt `what` (`escape WHAT: OUTCOME`).
fn attempt<'a>(log: &'a str, what: &str) -> &'a str {
    let prefix = format!("escape {what}: ");
    let found: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once(&prefix).map(|(_, rest)| rest))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "attempt {what:?} reported once; log:\n{log}"
    );
    found[0]
}

#[test]
fn an_escaping_converter_is_refused_at_every_step_and_killed_at_execve() {
    let m = Mounted::start(&[
        ("SCDL_FS_CONVERTER_FAULT", "escape:evil"),
        (
            "RUST_LOG",
            "warn,fuser=error,confinement=info,scdl_fs::isolate=info",
        ),
    ]);
    let source = fixtures().join("csr_f32.h5ad");
    m.drop_file("other.h5ad", &source);
    assert_eq!(wait_done(&m.mnt, "other")["state"], "ready");
    m.drop_file("evil.h5ad", &source);
    let st = wait_done(&m.mnt, "evil");
    assert_eq!(st["state"], "failed", "{st}");
    let err = st["error"].as_str().unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("converter crashed: signal 31 (SIGSYS") && err.contains("evil.h5ad"),
        "{err}"
    );

    let log = m.log();
    let store = m.store.canonicalize().unwrap();
    let refused = |what: &str, why: &str| {
        let outcome = attempt(&log, what);
        assert!(
            outcome.starts_with("refused") && outcome.contains(why),
            "{what}: {outcome}"
        );
    };
    // Landlock and the identity both refuse reads outside the input.
    refused("read /etc/shadow", "Permission denied");
    refused(&format!("list {}", store.display()), "Permission denied");
    refused(
        &format!("read {}", store.join("other/data.npy").display()),
        "Permission denied",
    );
    refused(
        &format!("read {}", store.join("other.h5ad").display()),
        "Permission denied",
    );
    // /tmp is writable by everyone: only Landlock stops this one.
    let tmp_attempt = log
        .lines()
        .find_map(|l| l.split_once("escape write /tmp/").map(|(_, r)| r))
        .expect("a write to /tmp was attempted");
    assert!(
        tmp_attempt.contains("refused (Permission denied"),
        "{tmp_attempt}"
    );
    refused(
        &format!("write {}", store.join("escaped-by-worker").display()),
        "Permission denied",
    );
    refused("open an inet socket", "Operation not permitted");
    refused("open an unix socket", "Operation not permitted");
    refused("setuid(0)", "Operation not permitted");
    // execve kills the worker: it never gets to report how the call ended.
    assert_eq!(attempt(&log, "execve /bin/sh"), "trying");
    assert!(!log.contains("SUCCEEDED"), "{log}");
    assert!(!store.join("escaped-by-worker").exists());
    let escaped: Vec<String> = std::fs::read_dir("/tmp")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("scdl-fs-escape-"))
        .collect();
    assert!(escaped.is_empty(), "{escaped:?}");

    // Everything else is served, the daemon lives, nothing is left behind.
    read_check(&m.mnt, "other", &[&source], &[]);
    assert_eq!(daemons(&m.mnt).len(), 1);
    assert_eq!(
        std::fs::read(m.mnt.join("evil.h5ad")).unwrap(),
        std::fs::read(&source).unwrap()
    );
    let temps: Vec<String> = common::listing(&m.store)
        .into_iter()
        .filter(|n| n.contains("scdl-tmp"))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
}

#[test]
fn a_normal_drop_converts_and_its_archive_is_owned_by_the_daemon() {
    let m = Mounted::start(&[]);
    for (name, fixture) in [
        ("csr", "csr_f32.h5ad"),
        ("csc", "csc_f32.h5ad"),
        ("dense", "dense_f32.h5ad"),
    ] {
        let source = fixtures().join(fixture);
        m.drop_file(&format!("{name}.h5ad"), &source);
        assert_eq!(wait_done(&m.mnt, name)["state"], "ready", "{name}");
        read_check(&m.mnt, name, &[&source], &["--bionemo"]);
        // Every file of the archive belongs to the daemon (root), none to the worker user.
        let mut pending = vec![m.store.join(name)];
        while let Some(p) = pending.pop() {
            let meta = std::fs::symlink_metadata(&p).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (0, 0), "{}", p.display());
            if meta.is_dir() {
                pending.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            }
        }
    }
    // Concats run in a confined worker too.
    std::fs::write(m.mnt.join(".control"), b"concat both csr csc\n").unwrap();
    assert_eq!(wait_done(&m.mnt, "both")["state"], "ready");
    read_check(
        &m.mnt,
        "both",
        &[
            &fixtures().join("csr_f32.h5ad"),
            &fixtures().join("csc_f32.h5ad"),
        ],
        &["--bionemo"],
    );
    assert_eq!(
        std::fs::metadata(m.store.join("both/data.npy"))
            .unwrap()
            .uid(),
        0
    );
    // The layers, once, at start.
    let log = m.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("workers confined"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    for layer in [
        "identity uid 65534 gid 65534",
        "no_new_privs on",
        "Landlock fully enforced",
        "seccomp allow-list",
        "namespaces network, mount",
    ] {
        assert!(lines[0].contains(layer), "{layer}: {}", lines[0]);
    }
}

#[test]
fn an_input_the_worker_user_cannot_read_is_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("private.h5ad");
    std::fs::copy(fixtures().join("csr_f32.h5ad"), &input).unwrap();
    std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = dir.path().join("out");
    let o = scdl(&["convert", input.to_str().unwrap(), out.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}: not readable by the converter's user",
            input.display()
        )),
        "{err}"
    );
    assert_eq!(common::listing(dir.path()), ["private.h5ad"]);
    // Readable by others, it converts (the temporary directory is not in the way).
    std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = scdl(&["convert", input.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn an_unknown_worker_user_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let input = fixtures().join("csr_f32.h5ad");
    let o = scdl(&[
        "convert",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--worker-user",
        "no-such-user-here",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no user named \"no-such-user-here\""),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}
