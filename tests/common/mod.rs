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
