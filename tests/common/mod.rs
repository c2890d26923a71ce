//! Helpers shared by the integration tests: running the real binary, finding the Python
//! oracle environment, checking that a failed command left nothing behind.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_scdl-fs"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures/h5ad")
}

/// Hostile inputs made by the fixture script (tests/fixtures/make_fixtures.py, `hostile`).
pub fn hostile_fixtures() -> PathBuf {
    repo().join("tests/fixtures/hostile")
}

/// Bytes of every file below `dir`, hidden ones included (what a directory takes on disk).
pub fn total_size(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = e.path().symlink_metadata() else {
            continue;
        };
        total += if meta.is_dir() {
            total_size(&e.path())
        } else {
            meta.len()
        };
    }
    total
}

/// The Python interpreter of the test environment (scripts/test-env.sh makes it; the test
/// command exports SCDL_FS_PYTHON). Tests that need the oracle fail loudly without it.
pub fn python() -> PathBuf {
    match std::env::var_os("SCDL_FS_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "SCDL_FS_PYTHON is not set: run the test suite with scripts/test.sh, which makes the \
             Python oracle environment (numpy, scipy, anndata, bionemo-scdl)"
        ),
    }
}

pub fn scdl(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run scdl-fs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs the oracle (tests/oracle/verify.py) on an archive and its sources.
pub fn verify(archive: &Path, sources: &[&Path], extra: &[&str]) -> Output {
    let mut cmd = Command::new(python());
    cmd.arg(repo().join("tests/oracle/verify.py")).arg(archive);
    for s in sources {
        cmd.arg(s);
    }
    cmd.args(extra).output().expect("run verify.py")
}

/// Names in `dir` (non-recursive), sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Dense rows of a CSR float32 `X` read field by field with the hdf5 crate: an oracle that
/// shares no code with scdl-fs's reader, archive or rendering.
pub fn dense_rows(h5ad: &Path) -> Vec<Vec<f32>> {
    let f = hdf5::File::open(h5ad).unwrap();
    let x = f.group("X").unwrap();
    let shape: Vec<i64> = x.attr("shape").unwrap().read_raw().unwrap();
    let data: Vec<f32> = x.dataset("data").unwrap().read_raw().unwrap();
    let indices: Vec<i64> = x.dataset("indices").unwrap().read_raw().unwrap();
    let indptr: Vec<i64> = x.dataset("indptr").unwrap().read_raw().unwrap();
    (0..shape[0] as usize)
        .map(|r| {
            let mut row = vec![0f32; shape[1] as usize];
            for e in indptr[r] as usize..indptr[r + 1] as usize {
                row[indices[e] as usize] += data[e];
            }
            row
        })
        .collect()
}

/// Runs `scdl-fs convert INPUT <tmp>/archive ARGS...`, expecting a failure that leaves no
/// output; returns stderr.
pub fn convert_fails(input: &Path, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("archive");
    let mut all = vec!["convert", input.to_str().unwrap(), out.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = scdl(&all);
    assert!(!o.status.success(), "convert {args:?} should fail");
    assert!(!out.exists(), "no output after a failure");
    stderr(&o)
}

/// A background `scdl-fs mount` of a fresh store, unmounted (and its daemon killed) on drop.
pub struct TestMount {
    pub dir: tempfile::TempDir,
    pub mnt: PathBuf,
    pub store: PathBuf,
}

impl TestMount {
    pub fn start() -> TestMount {
        let dir = tempfile::tempdir().unwrap();
        let (mnt, store) = (dir.path().join("mnt"), dir.path().join("store"));
        std::fs::create_dir(&mnt).unwrap();
        mount(&mnt, &store, &[]);
        TestMount { dir, mnt, store }
    }

    /// status.json of NAME once its conversion has ended (ready or failed), within 60 s.
    pub fn wait_done(&self, name: &str) -> serde_json::Value {
        wait_done(&self.mnt, name)
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

/// Whether `mnt` is a mount point now.
pub fn is_mounted(mnt: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = mnt.to_string_lossy().to_string();
    text.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Live processes (not zombies) whose command line has an argument naming `path` or a path
/// below it: daemons serving it, converters writing into it.
pub fn processes_naming(path: &Path) -> Vec<i32> {
    let want = path.to_string_lossy().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    c.split(|&b| b == 0)
                        .map(String::from_utf8_lossy)
                        .any(|a| a == want || a.starts_with(&format!("{want}/")))
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Pids of `scdl-fs mount` daemons serving `mnt`.
pub fn daemons(mnt: &Path) -> Vec<i32> {
    processes_naming(mnt)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|&b| b == 0).any(|a| a == b"mount"))
                .unwrap_or(false)
        })
        .collect()
}

/// `scdl-fs mount MNT --store STORE ARGS...` in the background; returns once the mount is live.
pub fn mount(mnt: &Path, store: &Path, args: &[&str]) {
    let mut all = vec![
        "mount",
        mnt.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let o = scdl(&all);
    assert!(o.status.success(), "mount failed: {}", stderr(&o));
}

/// Tears a test mount down whatever state it is in: lazy unmount, then SIGKILL to its daemons.
pub fn unmount_and_kill(mnt: &Path) {
    if is_mounted(mnt) {
        let _ = Command::new("umount").arg("-l").arg(mnt).status();
    }
    for pid in daemons(mnt) {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
}

/// tests/mount/read_check.py: NAME read through the mount at `mnt` (rows, ranges, npz, archive
/// files by numpy/scipy/bionemo) compared with its source files; `extra` are its options
/// (`--samples N`, `--bionemo`, ...).
pub fn read_check(mnt: &Path, name: &str, sources: &[&Path], extra: &[&str]) {
    let o = Command::new(python())
        .arg(repo().join("tests/mount/read_check.py"))
        .arg(mnt)
        .arg(name)
        .args(sources)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "read_check {name} on {}:\n{}{}",
        mnt.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A synthetic .h5ad of about 8 M values (40,000 x 2,000 CSR float32, density 0.1) at
/// `dir/big.h5ad`: about a second to convert, long enough to interrupt.
pub fn big_input(dir: &Path) -> PathBuf {
    let big = dir.join("big.h5ad");
    let o = Command::new(python())
        .arg(repo().join("bench/make_h5ad.py"))
        .arg(&big)
        .args(["--rows", "40000", "--cols", "2000", "--density", "0.1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    big
}

/// Copies `fa` to `a/NAME` and `fb` to `b/NAME` at the same time (two mounts of one store):
/// exactly one copy must succeed; returns the winner's source and the loser's error.
pub fn race_drops<'a>(
    a: &Path,
    b: &Path,
    name: &str,
    fa: &'a Path,
    fb: &'a Path,
) -> (&'a Path, std::io::Error) {
    let (pa, pb) = (a.join(name), b.join(name));
    let (ca, cb) = (fa.to_path_buf(), fb.to_path_buf());
    let ta = std::thread::spawn(move || std::fs::copy(ca, pa));
    let tb = std::thread::spawn(move || std::fs::copy(cb, pb));
    match (ta.join().unwrap(), tb.join().unwrap()) {
        (Ok(_), Err(e)) => (fa, e),
        (Err(e), Ok(_)) => (fb, e),
        (ra, rb) => panic!("{name}: exactly one drop must win: {ra:?} {rb:?}"),
    }
}

/// The loser of a race for a name: EEXIST when it asked while the winner held the name, or a
/// permission error when the winner's file was already published (read-only) by then.
pub fn refused_drop(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EEXIST) | Some(libc::EACCES) | Some(libc::EROFS) | Some(libc::EPERM)
    )
}

/// MNT/NAME/status.json once NAME's conversion has ended (ready or failed), or as it is after
/// 60 s. NAME/ may appear a moment after the copy that dropped it returns on a loaded machine
/// (the lookup waits up to 2 s for the upload's release): until the deadline, a missing
/// status.json is waited for too.
pub fn wait_done(mnt: &Path, name: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let st = std::fs::read(mnt.join(name).join("status.json"));
        let done = std::time::Instant::now() > deadline;
        match st {
            Ok(bytes) => {
                let st: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                if st["state"] == "ready" || st["state"] == "failed" || done {
                    return st;
                }
            }
            Err(e) if done => panic!("{name}/status.json: {e}"),
            Err(_) => {}
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Like `wait_done`, and NAME must have ended ready.
pub fn wait_ready(mnt: &Path, name: &str) {
    let st = wait_done(mnt, name);
    assert_eq!(st["state"], "ready", "{name}: {st}");
}

/// Puts `source` into `store` as input NAME.h5ad the way a person or another node would: copied
/// under a hidden name, then renamed, so no daemon ever sees it half-written.
pub fn place_input(store: &Path, name: &str, source: &Path) {
    let tmp = store.join(format!(".incoming-{name}"));
    std::fs::copy(source, &tmp).unwrap();
    std::fs::rename(&tmp, store.join(format!("{name}.h5ad"))).unwrap();
}
