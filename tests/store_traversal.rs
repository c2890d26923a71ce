//! Traversal out of the store: symlinks placed in the store (for datasets, inputs, inside an
//! archive, for the state directories), `delete` of a symlink, and names with `..`, `/`, NUL,
//! absolute paths or 300 bytes, through the namespace and through a real mount. In every case a
//! canary archive and input outside the store are never served, modified or deleted, and
//! nothing new appears outside the store. The rule is in src/store.rs's module comment.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use scdl_fs::catalog::CatalogOptions;
use scdl_fs::convert::{self, ConvertOptions, Quiet};
use scdl_fs::namespace::{FsError, Namespace, NamespaceOptions, ROOT_INO};
use scdl_fs::store::Store;

use common::{fixtures, listing};

/// A temporary directory holding `store/` and `outside/`; `outside/` holds a canary archive
/// (`canary/`), a canary input (`canary.h5ad`) and a text file, none of which may ever change.
struct World {
    dir: tempfile::TempDir,
    store: PathBuf,
    outside: PathBuf,
    /// A valid archive to copy into the store.
    template: PathBuf,
}

/// Converts a fixture into `dir/template` (an archive to copy into stores) and puts canaries
/// outside the store: an archive and an input that must never be served, changed or deleted.
fn canaries(dir: &Path, outside: &Path) -> PathBuf {
    let template = dir.join("template");
    convert::convert(
        &fixtures().join("csr_f32.h5ad"),
        &template,
        &ConvertOptions::default(),
        &Quiet,
    )
    .unwrap();
    copy_dir(&template, &outside.join("canary"));
    std::fs::copy(fixtures().join("csr_f64.h5ad"), outside.join("canary.h5ad")).unwrap();
    template
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&store).unwrap();
        std::fs::create_dir(&outside).unwrap();
        let template = canaries(dir.path(), &outside);
        std::fs::write(outside.join("secret.json"), b"\"SECRET\"").unwrap();
        World {
            dir,
            store,
            outside,
            template,
        }
    }

    fn snapshot_outside(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        snapshot(&self.outside)
    }

    /// Nothing appeared beside store/ and outside/ (and the template and mountpoint).
    fn assert_nothing_new_outside(&self, before: &BTreeMap<PathBuf, Vec<u8>>) {
        assert!(
            *before == self.snapshot_outside(),
            "something outside the store changed"
        );
        for name in listing(self.dir.path()) {
            assert!(
                ["mnt", "outside", "store", "template"].contains(&name.as_str()),
                "{name} appeared outside the store"
            );
        }
    }

    fn namespace(&self) -> Arc<Namespace> {
        Namespace::new(
            Store::open(&self.store).unwrap(),
            NamespaceOptions {
                catalog: CatalogOptions {
                    workers: 1,
                    converter: Some(common::bin()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Every entry below `dir` with its contents (directories as "<dir>", symlinks as their target).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_path_buf();
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.insert(rel, format!("-> {}", t.display()).into_bytes());
            } else if ft.is_dir() {
                out.insert(rel, b"<dir>".to_vec());
                walk(base, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn is_symlink(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

fn root_names(ns: &Namespace) -> Vec<String> {
    ns.readdir(ROOT_INO, 0, 1000)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .filter(|n| n != "." && n != "..")
        .collect()
}

fn status(ns: &Namespace, name: &str) -> serde_json::Value {
    let dir = ns.lookup(ROOT_INO, name).unwrap().ino;
    let ino = ns.lookup(dir, "status.json").unwrap().ino;
    let o = ns.open(ino, false, false).unwrap();
    let bytes = ns.read(ino, o.fh, 0, 1 << 20).unwrap();
    ns.release(o.fh).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn invalid(r: Result<String, FsError>) -> String {
    match r {
        Err(FsError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn symlinked_datasets_and_inputs_are_ignored_never_followed_or_deleted() {
    let w = World::new();
    copy_dir(&w.template, &w.store.join("real"));
    std::os::unix::fs::symlink(w.outside.join("canary"), w.store.join("linked")).unwrap();
    std::os::unix::fs::symlink(w.outside.join("canary.h5ad"), w.store.join("input.h5ad")).unwrap();
    std::os::unix::fs::symlink(w.outside.join("absent.h5ad"), w.store.join("dangling.h5ad"))
        .unwrap();
    let before = w.snapshot_outside();
    let ns = w.namespace();
    ns.start_workers();

    // Not served: the canary archive behind `linked`, the canary input behind `input.h5ad`.
    assert_eq!(root_names(&ns), [".control", "real"]);
    for name in ["linked", "input", "input.h5ad", "dangling", "dangling.h5ad"] {
        assert_eq!(
            ns.lookup(ROOT_INO, name).unwrap_err(),
            FsError::NotFound,
            "{name}"
        );
    }
    assert!(
        ns.wait_idle(Duration::from_secs(10)),
        "nothing is converted"
    );

    // Not deleted through: `delete` of a symlink's name refuses, the link stays.
    for name in ["linked", "input", "dangling"] {
        let m = invalid(ns.run_command(&format!("delete {name}")));
        assert!(m.contains("no dataset"), "{m}");
    }
    assert!(is_symlink(&w.store.join("linked")) && is_symlink(&w.store.join("input.h5ad")));

    // Not created through: dropping NAME.h5ad where a symlink has that name (existing target
    // or dangling) never writes to the target.
    assert_eq!(
        ns.create(ROOT_INO, "input.h5ad").unwrap_err(),
        FsError::Exists
    );
    assert_eq!(
        ns.create(ROOT_INO, "linked.h5ad").unwrap_err(),
        FsError::Exists
    );
    if let Ok((_, o)) = ns.create(ROOT_INO, "dangling.h5ad") {
        ns.write(o.fh, 0, b"not an h5ad").unwrap();
        // Publication refuses to replace the symlink (RENAME_NOREPLACE).
        assert!(ns.release(o.fh).is_err());
    }
    assert!(is_symlink(&w.store.join("dangling.h5ad")));
    assert!(!w.outside.join("absent.h5ad").exists());
    assert_eq!(
        listing(&w.store.join(".scdl-fs/uploads")),
        Vec::<String>::new()
    );

    // The real dataset next to them is served, and its delete leaves the symlinks alone.
    assert_eq!(status(&ns, "real")["state"], "ready");
    assert_eq!(ns.run_command("delete real").unwrap(), "deleted real");
    assert!(!w.store.join("real").exists());
    w.assert_nothing_new_outside(&before);
    ns.shutdown();
}

#[test]
fn delete_leaves_a_symlink_put_in_place_of_a_ready_dataset() {
    let w = World::new();
    copy_dir(&w.template, &w.store.join("r"));
    copy_dir(&w.template, &w.store.join("s"));
    let before = w.snapshot_outside();
    let ns = w.namespace();
    assert_eq!(status(&ns, "r")["state"], "ready");
    assert_eq!(status(&ns, "s")["state"], "ready");
    // After registration, someone puts symlinks where the input of r and the archive of s were.
    std::os::unix::fs::symlink(w.outside.join("canary.h5ad"), w.store.join("r.h5ad")).unwrap();
    std::fs::rename(w.store.join("s"), w.dir.path().join("s-moved")).unwrap();
    std::os::unix::fs::symlink(w.outside.join("canary"), w.store.join("s")).unwrap();

    ns.run_command("delete r").unwrap();
    assert!(!w.store.join("r").exists());
    assert!(
        is_symlink(&w.store.join("r.h5ad")),
        "the link itself is left"
    );
    ns.run_command("delete s").unwrap();
    assert!(is_symlink(&w.store.join("s")), "the link itself is left");
    std::fs::remove_dir_all(w.dir.path().join("s-moved")).unwrap();
    w.assert_nothing_new_outside(&before);
}

#[test]
fn an_archive_holding_a_symlink_is_failed_and_none_of_its_files_served() {
    let w = World::new();
    // data.npy -> the canary's (same size: the archive would validate if followed).
    let x = w.store.join("x");
    copy_dir(&w.template, &x);
    std::fs::remove_file(x.join("data.npy")).unwrap();
    std::os::unix::fs::symlink(w.outside.join("canary/data.npy"), x.join("data.npy")).unwrap();
    // version.json -> a secret (read leniently: would be served as MNT/y/version.json).
    let y = w.store.join("y");
    copy_dir(&w.template, &y);
    std::fs::remove_file(y.join("version.json")).unwrap();
    std::os::unix::fs::symlink(w.outside.join("secret.json"), y.join("version.json")).unwrap();
    // features/ -> the canary's feature directory.
    let z = w.store.join("z");
    copy_dir(&w.template, &z);
    std::fs::remove_dir_all(z.join("features")).unwrap();
    std::os::unix::fs::symlink(w.outside.join("canary/features"), z.join("features")).unwrap();
    let before = w.snapshot_outside();
    let ns = w.namespace();

    for name in ["x", "y", "z"] {
        let st = status(&ns, name);
        assert_eq!(st["state"], "failed", "{name}: {st}");
        assert!(st["error"].as_str().unwrap().contains("symlink"), "{st}");
        let dir = ns.lookup(ROOT_INO, name).unwrap().ino;
        for f in ["data.npy", "version.json", "features", "rows"] {
            assert_eq!(
                ns.lookup(dir, f).unwrap_err(),
                FsError::NotFound,
                "{name}/{f}"
            );
        }
    }
    // delete removes the archive and the links in it, never what they point to.
    for name in ["x", "y", "z"] {
        ns.run_command(&format!("delete {name}")).unwrap();
        assert!(!w.store.join(name).exists());
    }
    w.assert_nothing_new_outside(&before);
}

#[test]
fn symlinked_state_directories_refuse_the_store_and_touch_nothing() {
    let w = World::new();
    let victims = w.outside.join("victims");
    std::fs::create_dir(&victims).unwrap();
    std::fs::write(victims.join("unfinished.h5ad"), b"not ours").unwrap();
    std::fs::write(victims.join("x.json"), b"not ours").unwrap();
    let before = w.snapshot_outside();
    let state = w.store.join(".scdl-fs");
    let cases: [(&str, PathBuf); 6] = [
        (".scdl-fs", victims.clone()),
        (".scdl-fs/leases", victims.clone()),
        (".scdl-fs/uploads", victims.clone()),
        (".scdl-fs/failed", victims.clone()),
        (".scdl-fs/uploads", w.outside.join("absent")),
        (".scdl-fs/uploads", w.outside.join("secret.json")),
    ];
    for (link, target) in cases {
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(state.join("uploads")).unwrap();
        std::fs::create_dir_all(state.join("failed")).unwrap();
        std::fs::create_dir_all(state.join("leases")).unwrap();
        let at = w.store.join(link);
        std::fs::remove_dir_all(&at).unwrap();
        std::os::unix::fs::symlink(&target, &at).unwrap();
        let e = Store::open(&w.store)
            .err()
            .unwrap_or_else(|| panic!("{link} opened"));
        assert!(e.to_string().contains("not a directory"), "{link}: {e}");
        w.assert_nothing_new_outside(&before);
    }
    // The daemon refuses to start, with the store's exit code, before mounting anything.
    let mnt = w.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let o = common::scdl(&[
        "mount",
        mnt.to_str().unwrap(),
        "--store",
        w.store.to_str().unwrap(),
        "--foreground",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", common::stderr(&o));
    assert!(common::stderr(&o).contains("not a directory"));
    w.assert_nothing_new_outside(&before);
}

#[test]
fn bad_names_are_refused_everywhere_in_the_namespace() {
    let w = World::new();
    copy_dir(&w.template, &w.store.join("real"));
    let before = w.snapshot_outside();
    let ns = w.namespace();
    let long = "x".repeat(300);
    let bad = [
        "..",
        ".",
        "../outside/canary",
        "../outside",
        "/abs",
        &w.outside.join("canary").display().to_string(),
        "a/b",
        "a\0b",
        "",
        &long,
        &"y".repeat(251),
        ".scdl-fs",
    ];
    for name in bad {
        assert!(ns.lookup(ROOT_INO, name).is_err(), "lookup {name:?}");
        assert!(
            ns.lookup(ROOT_INO, &format!("{name}.h5ad")).is_err(),
            "lookup {name:?}.h5ad"
        );
        assert!(
            matches!(
                ns.create(ROOT_INO, &format!("{name}.h5ad")),
                Err(FsError::Invalid(_))
            ),
            "create {name:?}.h5ad"
        );
        assert!(
            ns.unlink(ROOT_INO, &format!("{name}.h5ad")).is_err(),
            "unlink {name:?}.h5ad"
        );
        if !name.is_empty() && !name.contains(char::is_whitespace) {
            invalid(ns.run_command(&format!("delete {name}")));
            invalid(ns.run_command(&format!("concat {name} real")));
            invalid(ns.run_command(&format!("concat new {name}")));
        }
    }
    // Through .control as bytes (a NUL inside a word, a name that is not UTF-8).
    let control = ns.lookup(ROOT_INO, ".control").unwrap().ino;
    for line in [
        &b"delete real\0x\n"[..],
        b"delete \xff\xfe\n",
        b"delete ../real\n",
    ] {
        let o = ns.open(control, true, false).unwrap();
        assert!(matches!(ns.write(o.fh, 0, line), Err(FsError::Invalid(_))));
        ns.release(o.fh).unwrap();
    }
    assert_eq!(status(&ns, "real")["state"], "ready");
    assert_eq!(root_names(&ns), [".control", "real"]);
    assert_eq!(listing(&w.store), [".scdl-fs", "real"]);
    w.assert_nothing_new_outside(&before);
}

/// The kernel's view: symlinked entries are invisible and stay untouched, archive-internal
/// symlinks fail their dataset, bad names fail with the errno the kernel or the daemon gives.
#[test]
fn symlinks_and_bad_names_through_a_real_mount() {
    use std::io::Write;
    let m = common::TestMount::start();
    let outside = m.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let template = canaries(m.dir.path(), &outside);
    let before = snapshot(&outside);

    // Placed in the store while mounted (noticed by the rescan or a lookup miss).
    copy_dir(&template, &m.store.join("real"));
    let inner = m.store.join("inner");
    copy_dir(&template, &inner);
    std::fs::remove_file(inner.join("data.npy")).unwrap();
    std::os::unix::fs::symlink(outside.join("canary/data.npy"), inner.join("data.npy")).unwrap();
    std::os::unix::fs::symlink(outside.join("canary"), m.store.join("linked")).unwrap();
    std::os::unix::fs::symlink(outside.join("canary.h5ad"), m.store.join("input.h5ad")).unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !m.mnt.join("real/rows/0.npy").exists() || !m.mnt.join("inner").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "store entries not noticed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(m.wait_done("inner")["state"], "failed");
    assert!(!m.mnt.join("inner/data.npy").exists());
    // Several rescans later, the symlinks are still neither listed nor reachable.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(listing(&m.mnt), [".control", "inner", "real"]);
    for name in ["linked", "input.h5ad", "input", "linked/data.npy"] {
        let e = std::fs::metadata(m.mnt.join(name)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{name}");
    }

    let control = |line: &str| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(m.mnt.join(".control"))
            .unwrap();
        f.write_all(line.as_bytes()).map_err(|e| e.raw_os_error())
    };
    assert_eq!(control("delete linked\n"), Err(Some(libc::EINVAL)));
    assert_eq!(control("delete input\n"), Err(Some(libc::EINVAL)));
    assert_eq!(
        control("delete ../outside/canary\n"),
        Err(Some(libc::EINVAL))
    );
    assert_eq!(
        control(&format!("delete {}\n", outside.join("canary").display())),
        Err(Some(libc::EINVAL))
    );
    assert_eq!(control("concat ../escaped real\n"), Err(Some(libc::EINVAL)));

    let create = |name: &str| {
        std::fs::File::create(m.mnt.join(name))
            .map(|_| ())
            .map_err(|e| e.raw_os_error())
    };
    // The kernel may refuse a 300-byte name itself (ENAMETOOLONG) or pass it on (EINVAL).
    let long = create(&format!("{}.h5ad", "x".repeat(300)));
    assert!(
        long == Err(Some(libc::ENAMETOOLONG)) || long == Err(Some(libc::EINVAL)),
        "{long:?}"
    );
    assert_eq!(
        create(&format!("{}.h5ad", "x".repeat(251))),
        Err(Some(libc::EINVAL))
    );
    assert_eq!(create("input.h5ad"), Err(Some(libc::EEXIST)));
    assert_eq!(create("linked.h5ad"), Err(Some(libc::EEXIST)));
    // No symlinks can be made through the mount either.
    assert!(std::os::unix::fs::symlink("/etc/passwd", m.mnt.join("p.h5ad")).is_err());
    assert!(std::os::unix::fs::symlink("/etc", m.mnt.join("real/rows/x")).is_err());

    // delete of the dataset with an inner symlink removes the store's archive only.
    control("delete inner\n").unwrap();
    assert!(!inner.exists());
    assert!(is_symlink(&m.store.join("linked")) && is_symlink(&m.store.join("input.h5ad")));
    assert!(before == snapshot(&outside), "outside changed");
    let mut top = listing(m.dir.path());
    top.sort();
    assert_eq!(top, ["mnt", "outside", "store", "template"]);
    assert_eq!(
        listing(&m.store),
        [".scdl-fs", "input.h5ad", "linked", "real"]
    );
}
