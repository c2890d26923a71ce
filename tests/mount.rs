//! The real thing: `scdl-fs mount` (needs root and /dev/fuse, as CI has), files dropped with
//! ordinary copies, cells read back through the kernel by numpy/scipy and bionemo-scdl
//! (tests/mount/read_check.py) and compared with the source .h5ad.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{bin, daemons, fixtures, is_mounted, python, repo, scdl, stderr};

struct Mounted {
    _dirs: tempfile::TempDir,
    mnt: PathBuf,
    store: PathBuf,
}

impl Mounted {
    fn start(extra: &[&str]) -> Mounted {
        Self::start_with_env(extra, &[])
    }

    fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Mounted {
        let dirs = tempfile::tempdir().unwrap();
        let mnt = dirs.path().join("mnt");
        let store = dirs.path().join("store");
        std::fs::create_dir(&mnt).unwrap();
        let mut args = vec![
            "mount",
            mnt.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = Command::new(bin())
            .args(&args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(o.status.success(), "mount failed: {}", stderr(&o));
        // The command returns only once the mount is live.
        assert!(is_mounted(&mnt), "mount returned before the mount was live");
        Mounted {
            _dirs: dirs,
            mnt,
            store,
        }
    }

    fn drop_file(&self, name: &str, source: &Path) {
        std::fs::copy(source, self.mnt.join(name)).unwrap();
    }

    fn status(&self, name: &str) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.mnt.join(name).join("status.json")).unwrap())
            .unwrap()
    }

    fn wait_done(&self, name: &str) -> serde_json::Value {
        common::wait_done(&self.mnt, name)
    }

    fn read_check(&self, name: &str, sources: &[&Path], extra: &[&str]) {
        common::read_check(&self.mnt, name, sources, extra);
    }

    fn unmount(&self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        common::unmount_and_kill(&self.mnt);
    }
}

#[test]
fn dropped_files_read_back_through_the_kernel() {
    let m = Mounted::start(&[]);
    let cases: [(&str, &str, &[&str]); 4] = [
        ("csr", "csr_f32.h5ad", &["--bionemo"]),
        ("csc", "csc_f32.h5ad", &[]),
        ("dense", "dense_f32.h5ad", &[]),
        ("raw", "raw_more_genes.h5ad", &["--matrix", "raw"]),
    ];
    for (name, file, _) in &cases {
        m.drop_file(&format!("{name}.h5ad"), &fixtures().join(file));
    }
    for (name, file, extra) in &cases {
        let st = m.wait_done(name);
        assert_eq!(st["state"], "ready", "{name}: {st}");
        m.read_check(name, &[&fixtures().join(file)], extra);
    }
    // The dropped input is kept, unchanged, read-only.
    let src = fixtures().join("csr_f32.h5ad");
    assert_eq!(
        std::fs::read(m.mnt.join("csr.h5ad")).unwrap(),
        std::fs::read(&src).unwrap()
    );
    assert!(std::fs::OpenOptions::new()
        .write(true)
        .open(m.mnt.join("csr.h5ad"))
        .is_err());
}

/// Per-cell metadata through the kernel: obs as JSON and parquet, neighbor graphs as npz, obsm as
/// npy (read_check.py's "cells" and "archive" groups read them with json, pandas, pyarrow and
/// numpy against the sources read by anndata); bionemo-scdl 0.1.3 loads the graph through the
/// mount. A directory conversion placed in the store gives one block-diagonal graph.
#[test]
fn per_cell_metadata_reads_back_through_the_kernel() {
    let m = Mounted::start(&[]);
    let cases: [(&str, &str, &[&str]); 4] = [
        ("knn", "neighbors_csr.h5ad", &["--bionemo"]),
        ("knncsc", "neighbors_csc.h5ad", &[]),
        ("knndense", "neighbors_dense_x.h5ad", &[]),
        ("obsrich", "obs_rich.h5ad", &[]),
    ];
    for (name, file, _) in &cases {
        m.drop_file(&format!("{name}.h5ad"), &fixtures().join(file));
    }
    let out = m.store.join("cells");
    let o = scdl(&[
        "convert",
        fixtures().join("cells_dir").to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (name, file, extra) in &cases {
        let st = m.wait_done(name);
        assert_eq!(st["state"], "ready", "{name}: {st}");
        m.read_check(name, &[&fixtures().join(file)], extra);
    }
    assert_eq!(m.wait_done("cells")["state"], "ready");
    m.read_check("cells", &[&fixtures().join("cells_dir")], &["--bionemo"]);
    // Rows past the end and ranges across the end are not there.
    for missing in [
        "obs/40.json",
        "neighbors/40.npz",
        "obsm/X_pca/40.npy",
        "obsm/X_pca/39-41.npy",
    ] {
        assert!(!m.mnt.join("knn").join(missing).exists(), "{missing}");
    }
}

#[test]
fn a_larger_dataset_and_an_archive_placed_in_the_store() {
    let m = Mounted::start(&["--threads", "2"]);
    // An archive converted elsewhere (a directory of files: three feature blocks) and copied in.
    let out = m.store.join("ragged");
    let o = scdl(&[
        "convert",
        fixtures().join("dir").to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    m.drop_file("big.h5ad", &fixtures().join("large_csr_f32.h5ad"));
    assert_eq!(m.wait_done("big")["state"], "ready");
    m.read_check(
        "big",
        &[&fixtures().join("large_csr_f32.h5ad")],
        &["--samples", "300"],
    );
    // Several readers at once (as DataLoader workers would), each checking its own sample.
    let readers: Vec<_> = (0..4)
        .map(|seed| {
            Command::new(python())
                .arg(repo().join("tests/mount/read_check.py"))
                .arg(&m.mnt)
                .arg("big")
                .arg(fixtures().join("large_csr_f32.h5ad"))
                .args(["--samples", "200", "--seed", &seed.to_string()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for r in readers {
        let o = r.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "concurrent reader failed:\n{out}");
    }
    // Found by a lookup miss (rescan), served like a converted one.
    assert_eq!(m.wait_done("ragged")["state"], "ready");
    m.read_check("ragged", &[&fixtures().join("dir")], &["--bionemo"]);
}

#[test]
fn bad_drops_fail_cleanly_and_the_mount_keeps_serving() {
    let m = Mounted::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.h5ad");
    std::fs::write(&junk, b"not an h5ad at all").unwrap();
    m.drop_file("junk.h5ad", &junk);
    m.drop_file("good.h5ad", &fixtures().join("csr_f32.h5ad"));
    let st = m.wait_done("junk");
    assert_eq!(st["state"], "failed");
    let err = st["error"].as_str().unwrap().to_string();
    assert!(err.contains("not an HDF5 file"), "{err}");
    // Same one-line error as `scdl-fs convert`.
    let o = scdl(&[
        "convert",
        junk.to_str().unwrap(),
        dir.path().join("x").to_str().unwrap(),
    ]);
    let cli = stderr(&o);
    assert!(
        cli.trim_end().ends_with(err.split(": ").last().unwrap()),
        "cli: {cli} status: {err}"
    );
    assert_eq!(m.wait_done("good")["state"], "ready");
    // Unsafe or colliding names are refused at create time.
    for bad in [".hidden.h5ad", "notes.txt"] {
        let e = std::fs::write(m.mnt.join(bad), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{bad}: {e}");
    }
    let e = std::fs::write(m.mnt.join("good.h5ad"), b"x").unwrap_err();
    assert!(
        matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::EACCES)),
        "{e}"
    );
    // Writes into datasets fail; unknown names do not exist.
    assert_eq!(
        std::fs::write(m.mnt.join("good/new"), b"x")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EROFS)
    );
    assert_eq!(
        std::fs::metadata(m.mnt.join("nope"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );
    // .control: a malformed command fails with EINVAL and its reason is readable.
    let e = std::fs::write(m.mnt.join(".control"), b"explode now\n").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    let log = std::fs::read_to_string(m.mnt.join(".control")).unwrap();
    assert!(log.contains("unknown command 'explode'"), "{log}");
    std::fs::write(m.mnt.join(".control"), b"delete good\n").unwrap();
    assert!(!m.mnt.join("good").exists() && !m.store.join("good").exists());
    // rm of an input deletes it.
    std::fs::remove_file(m.mnt.join("junk.h5ad")).unwrap();
    assert!(!m.store.join("junk.h5ad").exists());
    // Nothing escaped the store.
    let mut names: Vec<String> = std::fs::read_dir(&m.store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    names.sort();
    assert_eq!(names, [".scdl-fs"]);
}

#[test]
fn a_crashing_converter_fails_its_dataset_and_nothing_else() {
    // The test-only fault switch makes the converter abort on inputs named *crashme*.
    let m = Mounted::start_with_env(&[], &[("SCDL_FS_CONVERTER_FAULT", "abort:crashme")]);
    m.drop_file("crashme.h5ad", &fixtures().join("csr_f32.h5ad"));
    m.drop_file("fine.h5ad", &fixtures().join("csr_f32.h5ad"));
    let st = m.wait_done("crashme");
    assert_eq!(st["state"], "failed");
    let err = st["error"].as_str().unwrap();
    assert!(
        err.contains("converter crashed: signal 6 (SIGABRT)") && err.contains("crashme.h5ad"),
        "{err}"
    );
    assert_eq!(m.wait_done("fine")["state"], "ready");
    m.read_check("fine", &[&fixtures().join("csr_f32.h5ad")], &[]);
    // The input stays, and the crashed child's temporary directory is gone.
    assert_eq!(
        std::fs::read(m.mnt.join("crashme.h5ad")).unwrap(),
        std::fs::read(fixtures().join("csr_f32.h5ad")).unwrap()
    );
    let names: Vec<String> = std::fs::read_dir(&m.store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert!(names.iter().all(|n| !n.contains("scdl-tmp")), "{names:?}");
    assert_eq!(daemons(&m.mnt).len(), 1, "the daemon is still there");
}

#[test]
fn concat_through_the_control_file() {
    let m = Mounted::start(&[]);
    m.drop_file("a.h5ad", &fixtures().join("csr_f32.h5ad"));
    m.drop_file("b.h5ad", &fixtures().join("csc_f32.h5ad"));
    assert_eq!(m.wait_done("a")["state"], "ready");
    assert_eq!(m.wait_done("b")["state"], "ready");
    std::fs::write(m.mnt.join(".control"), b"concat ab a b\n").unwrap();
    assert_eq!(m.wait_done("ab")["state"], "ready");
    m.read_check(
        "ab",
        &[
            &fixtures().join("csr_f32.h5ad"),
            &fixtures().join("csc_f32.h5ad"),
        ],
        &["--bionemo"],
    );
    let e = std::fs::write(m.mnt.join(".control"), b"concat ab a\n").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "the target exists");
    let log = std::fs::read_to_string(m.mnt.join(".control")).unwrap();
    assert!(log.contains("ab already exists"), "{log}");
}

#[test]
fn sigterm_unmounts_and_a_stale_mount_is_cleared() {
    let m = Mounted::start(&[]);
    m.drop_file("a.h5ad", &fixtures().join("csr_f32.h5ad"));
    assert_eq!(m.wait_done("a")["state"], "ready");
    let pids = daemons(&m.mnt);
    assert_eq!(pids.len(), 1, "{pids:?}");
    Command::new("kill")
        .arg("-TERM")
        .arg(pids[0].to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while (is_mounted(&m.mnt) || !daemons(&m.mnt).is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!is_mounted(&m.mnt), "SIGTERM unmounts");
    assert!(daemons(&m.mnt).is_empty(), "and the daemon exits");

    // Mount again on the same store: the dataset is served at once. Then kill -9.
    let o = scdl(&[
        "mount",
        m.mnt.to_str().unwrap(),
        "--store",
        m.store.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(m.status("a")["state"], "ready");
    let pids = daemons(&m.mnt);
    assert_eq!(pids.len(), 1, "{pids:?}");
    Command::new("kill")
        .arg("-9")
        .arg(pids[0].to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let stale = loop {
        match std::fs::metadata(&m.mnt) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => break true,
            _ if Instant::now() > deadline => break false,
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    assert!(stale, "a killed daemon leaves a stale mount (ENOTCONN)");
    let o = scdl(&[
        "mount",
        m.mnt.to_str().unwrap(),
        "--store",
        m.store.to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "stale mount cleared at start: {}",
        stderr(&o)
    );
    m.read_check("a", &[&fixtures().join("csr_f32.h5ad")], &[]);
    m.unmount();
}

#[test]
fn mount_errors_have_their_own_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let store = dir.path().join("store");
    // Not a directory.
    let o = Command::new(bin())
        .args([
            "mount",
            file.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a directory"));
    // A store that cannot be created (under a regular file).
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let bad_store = file.join("store");
    let o = Command::new(bin())
        .args([
            "mount",
            mnt.to_str().unwrap(),
            "--store",
            bad_store.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("store"));
    assert!(!is_mounted(&mnt));
}

#[test]
fn the_mount_helper_takes_fstab_options() {
    // mount(8) runs /sbin/mount.fuse.scdl-fs STORE MNT -o OPTS: the binary under that name.
    let dirs = tempfile::tempdir().unwrap();
    let helper = dirs.path().join("mount.fuse.scdl-fs");
    std::os::unix::fs::symlink(bin(), &helper).unwrap();
    let (store, mnt) = (dirs.path().join("store"), dirs.path().join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    let o = Command::new(&helper)
        .arg(&store)
        .arg(&mnt)
        .args([
            "-o",
            "rw,allow_other,_netdev,nofail,x-systemd.automount,threads=3",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        is_mounted(&mnt),
        "the helper returns once the mount is live"
    );
    let line = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let ours = line
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(mnt.to_str().unwrap()))
        .unwrap()
        .to_string();
    assert!(ours.contains("allow_other"), "{ours}");
    Command::new("umount").arg(&mnt).status().unwrap();
    // An option it does not know: a distinct exit code, the option named, nothing mounted.
    let o = Command::new(&helper)
        .arg(&store)
        .arg(&mnt)
        .args(["-o", "allow_other,frobnicate=1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).contains("frobnicate=1"));
    assert!(!is_mounted(&mnt));
}

#[test]
fn foreground_daemon_notifies_systemd_when_live() {
    use std::os::unix::net::UnixDatagram;
    let dirs = tempfile::tempdir().unwrap();
    let sock_path = dirs.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (store, mnt) = (dirs.path().join("store"), dirs.path().join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    let mut daemon = Command::new(bin())
        .args([
            "mount",
            mnt.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--foreground",
        ])
        .env("NOTIFY_SOCKET", &sock_path)
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 20 s");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        msg.contains("READY=1") && msg.contains(&format!("MAINPID={}", daemon.id())),
        "{msg}"
    );
    assert!(is_mounted(&mnt), "ready means mounted");
    Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().to_string())
        .status()
        .unwrap();
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(daemon.wait().unwrap().success(), "SIGTERM is a clean stop");
    assert!(!is_mounted(&mnt));
}

/// kill -9 at random moments while conversions and concats run: after each restart on the same
/// store, nothing partial is ever served, no temporary files remain, every input is still there,
/// and every interrupted conversion and concat completes (checked against the source).
#[test]
fn killed_at_random_moments_nothing_partial_is_served() {
    let dirs = tempfile::tempdir().unwrap();
    let (store, mnt) = (dirs.path().join("store"), dirs.path().join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    let big = common::big_input(dirs.path());
    let mount = || {
        // Two workers: the round's concat runs beside its conversion, so kills land in both.
        let o = scdl(&[
            "mount",
            mnt.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--conversions",
            "2",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    // Two ready datasets for the concats that each round starts beside a conversion.
    mount();
    for base in ["base1", "base2"] {
        std::fs::copy(&big, mnt.join(format!("{base}.h5ad"))).unwrap();
    }
    for base in ["base1", "base2"] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(mnt.join(base).join("status.json"))
            .is_ok_and(|s| s.contains("\"ready\""))
        {
            assert!(Instant::now() < deadline, "{base} not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let o = Command::new("umount").arg(&mnt).output().unwrap();
    assert!(o.status.success(), "umount: {}", stderr(&o));
    let mut seed = 0x5eed_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..6 {
        mount();
        let name = format!("d{round}");
        std::fs::copy(&big, mnt.join(format!("{name}.h5ad"))).unwrap();
        std::fs::write(
            mnt.join(".control"),
            format!("concat c{round} base1 base2\n"),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(next() % 400));
        for pid in daemons(&mnt) {
            Command::new("kill")
                .arg("-9")
                .arg(pid.to_string())
                .status()
                .unwrap();
        }
        // Whatever the moment, the store never holds a partial archive under a dataset name.
        std::thread::sleep(Duration::from_millis(200));
        for e in std::fs::read_dir(&store).unwrap() {
            let p = e.unwrap().path();
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            if p.is_dir() && !n.starts_with('.') {
                let o = scdl(&["info", p.to_str().unwrap()]);
                assert!(
                    o.status.success(),
                    "round {round}: {n} is not a complete archive: {}",
                    stderr(&o)
                );
            }
        }
    }
    // Restart: interrupted conversions run again from their intact inputs; temp files are gone.
    mount();
    let deadline = Instant::now() + Duration::from_secs(120);
    for round in 0..6 {
        let name = format!("d{round}");
        assert_eq!(
            std::fs::read(mnt.join(format!("{name}.h5ad"))).unwrap(),
            std::fs::read(&big).unwrap(),
            "{name}: the dropped input is intact"
        );
        for name in [name.clone(), format!("c{round}")] {
            loop {
                let st: serde_json::Value = serde_json::from_slice(
                    &std::fs::read(mnt.join(&name).join("status.json")).unwrap(),
                )
                .unwrap();
                if st["state"] == "ready" {
                    break;
                }
                assert!(st["state"] != "failed", "{name}: {st}");
                assert!(Instant::now() < deadline, "{name} never finished: {st}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let o = scdl(&[
            "info",
            mnt.join(format!("c{round}")).to_str().unwrap(),
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(info["rows"], 80000, "c{round}: {info}");
    }
    let leftovers: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("scdl-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let o = Command::new(python())
        .arg(repo().join("tests/mount/read_check.py"))
        .arg(&mnt)
        .arg("d0")
        .arg(&big)
        .args(["--samples", "50"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let o = common::verify(&store.join("c5"), &[&big, &big], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    Command::new("umount").arg(&mnt).status().unwrap();
}

/// `--read-only` (fstab `ro`): a serving mount. Datasets read as usual; drops, `.control` and
/// removing inputs fail with EROFS (the kernel refuses them); inputs that appear in the store by
/// other means are still converted.
#[test]
fn a_read_only_mount_serves_and_refuses_writes() {
    let m = Mounted::start(&["--read-only"]);
    let src = fixtures().join("csr_f32.h5ad");
    common::place_input(&m.store, "a", &src);
    assert_eq!(m.wait_done("a")["state"], "ready");
    m.read_check("a", &[&src], &[]);
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs(
        std::fs::copy(&src, m.mnt.join("b.h5ad")).map(|_| ()),
        "drop",
    );
    erofs(
        std::fs::write(m.mnt.join(".control"), b"delete a\n"),
        ".control",
    );
    erofs(std::fs::remove_file(m.mnt.join("a.h5ad")), "rm input");
    assert!(m.store.join("a").is_dir() && m.store.join("a.h5ad").is_file());
    assert!(!m.store.join("b.h5ad").exists());
}

/// The CPU time (ns, from schedstat) of the daemon's threads whose name starts with `prefix`,
/// and how many there are.
fn thread_cpu(pid: i32, prefix: &str) -> (u64, usize) {
    let mut total = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.starts_with(prefix) {
            let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
            total.0 += stat
                .split(' ')
                .next()
                .unwrap_or("0")
                .parse::<u64>()
                .unwrap();
            total.1 += 1;
        }
    }
    total
}

/// Kernels with FUSE over io_uring (Linux >= 6.14) offer it once `fuse.enable_uring` is set;
/// the tests run as root and set it (it only offers the feature: each mount opts in).
fn offer_fuse_io_uring() -> bool {
    let param = Path::new("/sys/module/fuse/parameters/enable_uring");
    if !param.exists() {
        eprintln!("this kernel has no FUSE over io_uring: only /dev/fuse is tested");
        return false;
    }
    std::fs::write(param, "Y").expect("enable fuse.enable_uring (tests run as root)");
    true
}

/// With FUSE over io_uring offered, the per-CPU queue threads serve the requests: while rows,
/// ranges and archive files are read, their CPU time grows and the /dev/fuse threads' hardly
/// does. `--no-io-uring` serves the same reads through /dev/fuse, with no queue threads.
#[test]
fn requests_go_through_io_uring_queues_when_the_kernel_offers_them() {
    if !offer_fuse_io_uring() || std::env::var_os("SCDL_FS_NO_IO_URING").is_some() {
        return;
    }
    let src = fixtures().join("csr_f32.h5ad");
    let m = Mounted::start(&[]);
    common::place_input(&m.store, "a", &src);
    assert_eq!(m.wait_done("a")["state"], "ready");
    let pid = daemons(&m.mnt)[0];
    let cpus = std::thread::available_parallelism().unwrap().get();
    let (uring_before, queue_threads) = thread_cpu(pid, "fuse-uring-");
    let (fuser_before, _) = thread_cpu(pid, "fuser-");
    assert!(
        queue_threads >= 2 * cpus,
        "{queue_threads} queue threads for {cpus} CPUs"
    );
    m.read_check("a", &[&src], &[]);
    let uring_used = thread_cpu(pid, "fuse-uring-").0 - uring_before;
    let fuser_used = thread_cpu(pid, "fuser-").0 - fuser_before;
    assert!(
        uring_used > 10 * fuser_used.max(1_000),
        "io_uring threads {uring_used} ns, /dev/fuse threads {fuser_used} ns"
    );

    let plain = Mounted::start(&["--no-io-uring"]);
    common::place_input(&plain.store, "a", &src);
    assert_eq!(plain.wait_done("a")["state"], "ready");
    assert_eq!(thread_cpu(daemons(&plain.mnt)[0], "fuse-uring-").1, 0);
    plain.read_check("a", &[&src], &[]);
}

/// Once FUSE over io_uring is agreed, the kernel holds every request until all queues are
/// registered: a queue that cannot be (test-only fault switch) must not hang the mount. The
/// daemon has the kernel give io_uring up, and everything is served through /dev/fuse.
#[test]
fn a_queue_that_cannot_register_falls_back_to_dev_fuse() {
    if !offer_fuse_io_uring() || std::env::var_os("SCDL_FS_NO_IO_URING").is_some() {
        return;
    }
    let src = fixtures().join("csr_f32.h5ad");
    let m = Mounted::start_with_env(&[], &[("SCDL_FS_IO_URING_FAULT", "register")]);
    common::place_input(&m.store, "a", &src);
    let root = m.mnt.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_dir(&root).map(|d| d.count()));
    });
    let listed = rx.recv_timeout(Duration::from_secs(20));
    assert!(
        matches!(listed, Ok(Ok(_))),
        "the mount does not answer: {listed:?}"
    );
    assert_eq!(m.wait_done("a")["state"], "ready");
    m.read_check("a", &[&src], &[]);
}

/// Resident pages of a file in the kernel's page cache, by fincore(1) (util-linux).
fn resident_pages(path: &Path) -> u64 {
    let o = Command::new("fincore")
        .args(["--noheadings", "--bytes", "--output", "PAGES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux)");
    assert!(o.status.success(), "fincore: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

/// A row file's pages are dropped once it is closed (random rows would otherwise fill the page
/// cache with pages read once); a feature file's stay cached across opens.
#[test]
fn row_pages_are_dropped_at_close_feature_pages_are_kept() {
    let src = fixtures().join("csr_f32.h5ad");
    let m = Mounted::start(&[]);
    common::place_input(&m.store, "a", &src);
    assert_eq!(m.wait_done("a")["state"], "ready");
    let row = m.mnt.join("a/rows/3.npy");
    let feature = m.mnt.join("a/features/0.json");
    assert!(!std::fs::read(&row).unwrap().is_empty());
    assert!(!std::fs::read(&feature).unwrap().is_empty());
    let deadline = Instant::now() + Duration::from_secs(5);
    while resident_pages(&row) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(resident_pages(&row), 0, "row pages still cached");
    assert!(
        resident_pages(&feature) > 0,
        "feature pages were not cached"
    );
}
