//! Who may do what through the mount, checked as another user (`nobody`, via setpriv) against
//! a real mount: with `--allow-other` everyone reads, only the mounting user (root) writes;
//! `--writers GROUP` lets that group's members drop files, remove inputs and write `.control`;
//! without `--allow-other` other users cannot even look. The kernel enforces the modes
//! (default_permissions), so this is also a test of the modes the namespace reports.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{fixtures, scdl, stderr};

const NOBODY: &str = "65534";
const WRITERS_GID: &str = "4242";

struct Mount {
    _dir: tempfile::TempDir,
    root: PathBuf,
    mnt: PathBuf,
    store: PathBuf,
}

impl Mount {
    fn start(extra: &[&str]) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        // Other users must be able to reach the mountpoint and the files they copy from.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = dir.path().to_path_buf();
        let (mnt, store) = (root.join("mnt"), root.join("store"));
        std::fs::create_dir(&mnt).unwrap();
        common::mount(&mnt, &store, extra);
        let src = root.join("source.h5ad");
        std::fs::copy(fixtures().join("csr_f32.h5ad"), &src).unwrap();
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).unwrap();
        Mount {
            _dir: dir,
            root,
            mnt,
            store,
        }
    }

    /// A ready dataset `d` dropped by root.
    fn with_dataset(self) -> Mount {
        std::fs::copy(self.root.join("source.h5ad"), self.mnt.join("d.h5ad")).unwrap();
        self.wait_ready("d");
        self
    }

    fn wait_ready(&self, name: &str) {
        common::wait_ready(&self.mnt, name);
    }

    fn path(&self, rel: &str) -> String {
        self.mnt.join(rel).to_string_lossy().into_owned()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        common::unmount_and_kill(&self.mnt);
    }
}

/// Runs a shell command as user nobody, in the writers group or in no supplementary group.
fn as_nobody(in_writers: bool, script: &str) -> Output {
    let groups = if in_writers {
        format!("--groups={WRITERS_GID}")
    } else {
        "--clear-groups".to_string()
    };
    Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            &groups,
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("setpriv")
}

fn ok(o: &Output, what: &str) -> Vec<u8> {
    assert!(o.status.success(), "{what}: {}", stderr(o));
    o.stdout.clone()
}

fn denied(o: &Output, what: &str) {
    assert!(!o.status.success(), "{what} should have been refused");
    let e = stderr(o);
    assert!(
        e.contains("Permission denied") || e.contains("Operation not permitted"),
        "{what}: refused for the wrong reason: {e}"
    );
}

fn store_names(store: &Path) -> Vec<String> {
    common::listing(store)
}

#[test]
fn with_allow_other_others_read_but_cannot_write() {
    let m = Mount::start(&["--allow-other"]).with_dataset();
    let before = store_names(&m.store);
    let row = ok(
        &as_nobody(false, &format!("cat {}", m.path("d/rows/3.npy"))),
        "read a row",
    );
    assert_eq!(row, std::fs::read(m.mnt.join("d/rows/3.npy")).unwrap());
    ok(
        &as_nobody(false, &format!("cat {} >/dev/null", m.path("d/data.npy"))),
        "read an archive file",
    );
    ok(
        &as_nobody(false, &format!("ls {} >/dev/null", m.path("d/rows"))),
        "list rows",
    );
    let src = m.root.join("source.h5ad");
    denied(
        &as_nobody(
            false,
            &format!("cp {} {}", src.display(), m.path("other.h5ad")),
        ),
        "drop a file",
    );
    denied(
        &as_nobody(false, &format!("echo 'delete d' > {}", m.path(".control"))),
        "write .control",
    );
    denied(
        &as_nobody(false, &format!("rm -f {}", m.path("d.h5ad"))),
        "remove an input",
    );
    assert_eq!(store_names(&m.store), before, "the store is untouched");
    assert!(m.mnt.join("d.h5ad").exists() && m.mnt.join("d/rows/0.npy").exists());
}

#[test]
fn the_writers_group_may_drop_remove_and_command() {
    let m = Mount::start(&["--allow-other", "--writers", WRITERS_GID]).with_dataset();
    let src = m.root.join("source.h5ad");
    // Not in the group: still read-only.
    denied(
        &as_nobody(false, &format!("cp {} {}", src.display(), m.path("e.h5ad"))),
        "drop by a non-member",
    );
    // A member drops a file, concatenates, removes an input.
    ok(
        &as_nobody(true, &format!("cp {} {}", src.display(), m.path("e.h5ad"))),
        "drop by a member",
    );
    m.wait_ready("e");
    assert_eq!(
        std::fs::read(m.store.join("e.h5ad")).unwrap(),
        std::fs::read(&src).unwrap()
    );
    ok(
        &as_nobody(
            true,
            &format!("echo 'concat de d e' > {}", m.path(".control")),
        ),
        "concat by a member",
    );
    m.wait_ready("de");
    ok(
        &as_nobody(true, &format!("rm {}", m.path("e.h5ad"))),
        "remove an input",
    );
    assert!(!m.store.join("e.h5ad").exists());
    // Dataset contents stay read-only for everyone.
    let o = as_nobody(true, &format!("echo x > {}", m.path("d/rows/0.npy")));
    assert!(!o.status.success(), "a row file is never writable");
}

#[test]
fn without_allow_other_others_cannot_look() {
    let m = Mount::start(&[]).with_dataset();
    denied(
        &as_nobody(false, &format!("ls {}", m.mnt.display())),
        "list the mount",
    );
    denied(
        &as_nobody(false, &format!("cat {}", m.path("d/rows/0.npy"))),
        "read a row",
    );
}

#[test]
fn an_unknown_writers_group_is_a_usage_error() {
    let o = scdl(&["mount", "/nonexistent", "--writers", "no-such-group-here"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no-such-group-here"), "{}", stderr(&o));
}
