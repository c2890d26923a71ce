//! An archive appears complete or not at all. The writer's test-only fault switch
//! (`SCDL_FS_WRITER_FAULT=STEP`) fails each step between the first write and publication in
//! turn — arrays written, features written, header written, the rename, the directory sync after
//! it — and for `convert`, `concat` and a drop into a mount the output never exists afterwards,
//! no temporary is left, and the inputs are unchanged.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{fixtures, listing, stderr};

const STEPS: [&str; 5] = ["arrays", "features", "header", "rename", "dirsync"];

fn scdl_with_fault(step: &str, args: &[&str]) -> Output {
    Command::new(common::bin())
        .args(args)
        .env("SCDL_FS_WRITER_FAULT", step)
        .output()
        .expect("run scdl-fs")
}

/// Checks the failure contract of one faulted run.
fn assert_left_nothing(o: &Output, step: &str, dir: &Path, before: &[String], out: &Path) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{step}: exit 1 expected: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{step}: one line: {err}");
    assert!(
        err.contains(&format!("injected fault at step '{step}'")),
        "{step}: {err}"
    );
    assert!(
        !out.exists(),
        "{step}: {} exists after a failure",
        out.display()
    );
    assert_eq!(listing(dir), before, "{step}: temporaries left");
}

#[test]
fn a_fault_at_any_step_of_convert_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.h5ad");
    std::fs::copy(fixtures().join("csr_f32.h5ad"), &input).unwrap();
    let bytes = std::fs::read(&input).unwrap();
    let before = listing(dir.path());
    let out = dir.path().join("out");
    for step in STEPS {
        let o = scdl_with_fault(
            step,
            &["convert", input.to_str().unwrap(), out.to_str().unwrap()],
        );
        assert_left_nothing(&o, step, dir.path(), &before, &out);
        assert_eq!(
            std::fs::read(&input).unwrap(),
            bytes,
            "{step}: input changed"
        );
    }
    // Without the fault the same conversion succeeds: the faults were the only cause.
    let o = common::scdl(&["convert", input.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(common::scdl(&["info", out.to_str().unwrap()])
        .status
        .success());
}

#[test]
fn a_fault_at_any_step_of_concat_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let parts: Vec<_> = ["csr_f32.h5ad", "csc_f32.h5ad"]
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let out = dir.path().join(format!("part{i}"));
            let o = common::scdl(&[
                "convert",
                fixtures().join(f).to_str().unwrap(),
                out.to_str().unwrap(),
            ]);
            assert!(o.status.success(), "{}", stderr(&o));
            out
        })
        .collect();
    let snapshot = |p: &Path| {
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        for name in listing(p) {
            let f = p.join(&name);
            if f.is_file() {
                files.push((name, std::fs::read(f).unwrap()));
            }
        }
        files
    };
    let parts_before: Vec<_> = parts.iter().map(|p| snapshot(p)).collect();
    let before = listing(dir.path());
    let out = dir.path().join("joined");
    for step in STEPS {
        let o = scdl_with_fault(
            step,
            &[
                "concat",
                out.to_str().unwrap(),
                parts[0].to_str().unwrap(),
                parts[1].to_str().unwrap(),
            ],
        );
        assert_left_nothing(&o, step, dir.path(), &before, &out);
        let parts_now: Vec<_> = parts.iter().map(|p| snapshot(p)).collect();
        assert!(
            parts_now == parts_before,
            "{step}: an input archive changed"
        );
    }
}

/// Through a mount: the faulted dataset ends `failed` naming the step, the store holds no
/// temporary and no archive of that name, and the daemon converts the next drop.
#[test]
fn a_fault_while_publishing_a_drop_fails_the_dataset_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mnt, store) = (dir.path().join("mnt"), dir.path().join("store"));
    std::fs::create_dir(&mnt).unwrap();
    let o = Command::new(common::bin())
        .args(["mount", mnt.to_str().unwrap(), "--store"])
        .arg(&store)
        .env("SCDL_FS_WRITER_FAULT", "dirsync:faulty")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let _unmount = Unmount(mnt.clone());
    std::fs::copy(fixtures().join("csr_f32.h5ad"), mnt.join("faulty.h5ad")).unwrap();
    let st = common::wait_done(&mnt, "faulty");
    assert_eq!(st["state"], "failed", "{st}");
    let err = st["error"].as_str().unwrap();
    assert!(err.contains("injected fault at step 'dirsync'"), "{err}");
    assert!(!store.join("faulty").exists());
    let temporaries: Vec<String> = listing(&store)
        .into_iter()
        .filter(|n| n.contains("scdl-tmp"))
        .collect();
    assert!(temporaries.is_empty(), "{temporaries:?}");
    std::fs::copy(fixtures().join("csr_f32.h5ad"), mnt.join("fine.h5ad")).unwrap();
    assert_eq!(common::wait_done(&mnt, "fine")["state"], "ready");
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        common::unmount_and_kill(&self.0);
    }
}
