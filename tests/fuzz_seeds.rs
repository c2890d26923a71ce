//! Replays the committed fuzz seeds (`fuzz/seeds/<target>/*`) through the fuzz target bodies
//! on stable, without cargo-fuzz: `fuzz/bodies.rs` is the one definition of each target,
//! included here and by `fuzz/fuzz_targets/<target>.rs`. See fuzz/README.md.

#[path = "../fuzz/bodies.rs"]
mod bodies;

use std::path::PathBuf;

fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn replay(target: &str) {
    let body = bodies::TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .expect("known target")
        .1;
    let files = seeds(target);
    assert!(!files.is_empty(), "no seeds for {target}");
    for f in files {
        let data = std::fs::read(&f).unwrap();
        // A panic names the seed that caused it.
        let r = std::panic::catch_unwind(|| body(&data));
        assert!(r.is_ok(), "seed {} of target {target} failed", f.display());
    }
}

#[test]
fn control_seeds() {
    replay("control");
}

#[test]
fn names_seeds() {
    replay("names");
}

#[test]
fn npy_seeds() {
    replay("npy");
}

#[test]
fn archive_seeds() {
    replay("archive");
}

#[test]
fn batches_seeds() {
    replay("batches");
}

#[test]
fn every_target_has_a_test() {
    let mut names: Vec<&str> = bodies::TARGETS.iter().map(|(n, _)| *n).collect();
    names.sort();
    assert_eq!(names, ["archive", "batches", "control", "names", "npy"]);
}
