//! Concatenation through `scdl-fs concat` and `.control`: results checked by the oracle
//! (tests/oracle/verify.py: the sources stacked, read with anndata, and bionemo-scdl 0.0.5 and
//! 0.1.3 loading the result); refusals leave nothing behind and the inputs untouched.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use scdl_fs::namespace::{FsError, Namespace, NamespaceOptions, ROOT_INO};
use scdl_fs::store::Store;

use common::{fixtures, listing, scdl, stderr, verify};

fn convert(src: &str, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "convert".to_string(),
        fixtures().join(src).to_str().unwrap().to_string(),
        out.to_str().unwrap().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = scdl(&args);
    assert!(o.status.success(), "{}", stderr(&o));
}

fn tree_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(tree_bytes(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn different_and_identical_gene_sets() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    convert("csr_f32.h5ad", &d.join("a"), &[]);
    convert("dir", &d.join("ragged"), &[]);
    convert("csr_f32.h5ad", &d.join("a2"), &[]);
    let before = [tree_bytes(&d.join("a")), tree_bytes(&d.join("ragged"))];
    let out = d.join("joined");
    let o = scdl(&[
        "concat",
        out.to_str().unwrap(),
        d.join("a").to_str().unwrap(),
        d.join("ragged").to_str().unwrap(),
        d.join("a2").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let f = fixtures();
    let sources = [
        f.join("csr_f32.h5ad"),
        f.join("dir/a.h5ad"),
        f.join("dir/b/c.h5ad"),
        f.join("dir/b/d.h5ad"),
        f.join("csr_f32.h5ad"),
    ];
    let refs: Vec<&Path> = sources.iter().map(PathBuf::as_path).collect();
    let v = verify(&out, &refs, &[]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    assert_eq!(
        [tree_bytes(&d.join("a")), tree_bytes(&d.join("ragged"))],
        before,
        "inputs unchanged"
    );

    // Identical consecutive gene sets merge into one block.
    let merged = d.join("merged");
    let o = scdl(&[
        "concat",
        merged.to_str().unwrap(),
        d.join("a").to_str().unwrap(),
        d.join("a2").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info: serde_json::Value =
        serde_json::from_slice(&scdl(&["info", merged.to_str().unwrap(), "--json"]).stdout)
            .unwrap();
    assert_eq!(info["rows"], 80);
    assert_eq!(info["feature_blocks"].as_array().unwrap().len(), 1);
    let src = f.join("csr_f32.h5ad");
    let v = verify(&merged, &[&src, &src], &[]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn data_types_widen_or_must_be_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    convert("csr_f32.h5ad", &d.join("f32"), &[]);
    convert("csr_f32.h5ad", &d.join("f64"), &["--data-dtype", "float64"]);
    convert("csr_u8.h5ad", &d.join("u8"), &["--data-dtype", "uint8"]);
    let out = d.join("wide");
    let o = scdl(&[
        "concat",
        out.to_str().unwrap(),
        d.join("f32").to_str().unwrap(),
        d.join("f64").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info: serde_json::Value =
        serde_json::from_slice(&scdl(&["info", out.to_str().unwrap(), "--json"]).stdout).unwrap();
    assert_eq!(info["dtypes"]["data"], "float64");
    let src = fixtures().join("csr_f32.h5ad");
    let v = verify(&out, &[&src, &src], &["--data-dtype", "float64"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    // Integers and floats: refused, naming the inputs, unless --data-dtype says what to make.
    let mixed = d.join("mixed");
    let o = scdl(&[
        "concat",
        mixed.to_str().unwrap(),
        d.join("u8").to_str().unwrap(),
        d.join("f32").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("mix integer and float")
            && err.contains("u8 (uint8)")
            && err.contains("f32 (float32)"),
        "{err}"
    );
    assert!(!mixed.exists());
    let o = scdl(&[
        "concat",
        mixed.to_str().unwrap(),
        d.join("u8").to_str().unwrap(),
        d.join("f32").to_str().unwrap(),
        "--data-dtype",
        "float32",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = verify(&mixed, &[&fixtures().join("csr_u8.h5ad"), &src], &[]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

fn index_dtypes(archive: &Path) -> (String, String) {
    let o = scdl(&["info", archive.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let d = &info["dtypes"];
    (d["col_ptr"].to_string(), d["row_ptr"].to_string())
}

#[test]
fn index_widths_follow_the_result_not_the_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 30 genes, 242 values: uint8 columns and row offsets.
    convert("csr_f32.h5ad", &d.join("small"), &[]);
    // 500 genes, 35,000 values, written wide (uint32/uint64).
    convert(
        "large_csr_f32.h5ad",
        &d.join("large"),
        &["--index-dtypes", "wide"],
    );
    convert("csr_f32.h5ad", &d.join("small-copy"), &[]);
    assert_eq!(
        index_dtypes(&d.join("small")),
        ("\"uint8\"".into(), "\"uint8\"".into())
    );
    let f = fixtures();
    let (small, large) = (f.join("csr_f32.h5ad"), f.join("large_csr_f32.h5ad"));
    for (extra, want) in [
        (&[][..], ("\"uint16\"", "\"uint16\"")),
        (
            &["--index-dtypes", "wide"][..],
            ("\"uint32\"", "\"uint64\""),
        ),
    ] {
        let out = d.join(format!("joined{}", extra.len()));
        let (a, b, c) = (d.join("small"), d.join("large"), d.join("small-copy"));
        let mut args = vec!["concat", out.to_str().unwrap()];
        args.extend([
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            c.to_str().unwrap(),
        ]);
        args.extend_from_slice(extra);
        let o = scdl(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        // The small inputs widen (uint8 -> uint16), the large one narrows (uint32 -> uint16).
        assert_eq!(index_dtypes(&out), (want.0.into(), want.1.into()));
        let v = verify(&out, &[&small, &large, &small], extra);
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    }
}

/// An archive without obs among archives with obs: the result's obs would cover only some rows.
#[test]
fn obs_on_some_inputs_only_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    convert("obs_rich.h5ad", &d.join("with"), &[]);
    convert("csr_f32.h5ad", &d.join("without"), &["--obs", "none"]);
    let before = listing(d);
    let out = d.join("joined");
    let o = scdl(&[
        "concat",
        out.to_str().unwrap(),
        d.join("with").to_str().unwrap(),
        d.join("without").to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("without: has no obs_features/") && err.contains("cover only some rows"),
        "{err}"
    );
    assert_eq!(listing(d), before);
    // Both without obs: joined, without obs.
    convert("csr_f32.h5ad", &d.join("without2"), &["--obs", "none"]);
    let o = scdl(&[
        "concat",
        out.to_str().unwrap(),
        d.join("without").to_str().unwrap(),
        d.join("without2").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let src = fixtures().join("csr_f32.h5ad");
    let v = verify(&out, &[&src, &src], &["--obs", "none"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn refusals_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    convert("csr_f32.h5ad", &d.join("a"), &[]);
    std::fs::create_dir(d.join("not-an-archive")).unwrap();
    let a = d.join("a");
    let cases: Vec<Vec<String>> = vec![
        vec![d.join("a").display().to_string()], // target exists
        vec![
            d.join("new").display().to_string(),
            a.display().to_string(),
            a.display().to_string(),
        ], // twice
        vec![
            d.join("new").display().to_string(),
            d.join("missing").display().to_string(),
        ],
        vec![
            d.join("new").display().to_string(),
            d.join("not-an-archive").display().to_string(),
        ],
    ];
    let before = listing(d);
    for (i, args) in cases.iter().enumerate() {
        let mut all = vec!["concat".to_string()];
        all.extend(args.iter().cloned());
        if i == 0 {
            all.push(a.display().to_string());
        }
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let o = scdl(&all);
        assert!(!o.status.success(), "case {i} should fail");
        assert_eq!(stderr(&o).trim_end().lines().count(), 1, "{}", stderr(&o));
        assert_eq!(listing(d), before, "case {i} left something behind");
    }
    // No inputs at all is a usage error.
    assert_eq!(
        scdl(&["concat", d.join("new").to_str().unwrap()])
            .status
            .code(),
        Some(2)
    );
}

fn read_all(ns: &Namespace, ino: u64) -> Vec<u8> {
    let o = ns.open(ino, false, false).unwrap();
    let mut out = Vec::new();
    loop {
        let chunk = ns.read(ino, o.fh, out.len() as u64, 1 << 16).unwrap();
        if chunk.is_empty() {
            break;
        }
        out.extend(chunk);
    }
    out
}

#[test]
fn control_concat_and_its_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    convert("csr_f32.h5ad", &store.join("a"), &[]);
    convert("dir", &store.join("b"), &[]);
    std::fs::write(store.join("bad.h5ad"), b"not hdf5").unwrap();
    let ns: Arc<Namespace> =
        Namespace::new(Store::open(&store).unwrap(), NamespaceOptions::default());
    ns.start_workers();
    assert!(ns.wait_idle(Duration::from_secs(30)));
    let before = listing(&store);
    let long = "x".repeat(300);
    for bad in [
        "concat new".to_string(),
        "concat new missing".into(),
        "concat a b".into(),
        "concat new/x a".into(),
        "concat .. a".into(),
        "concat .new a".into(),
        "concat new\u{7} a".into(),
        format!("concat {long} a"),
        "concat new a a".into(),
        "concat a a".into(),
        "concat new ../a".into(),
        "concat new a bad".into(), // a failed source
    ] {
        let r = ns.run_command(&bad);
        assert!(matches!(r, Err(FsError::Invalid(_))), "{bad:?}: {r:?}");
        assert_eq!(listing(&store), before, "{bad:?} changed the store");
    }
    ns.run_command("concat new a b").unwrap();
    assert!(ns.wait_idle(Duration::from_secs(30)));
    let ds = ns.lookup(ROOT_INO, "new").unwrap().ino;
    let st: serde_json::Value =
        serde_json::from_slice(&read_all(&ns, ns.lookup(ds, "status.json").unwrap().ino)).unwrap();
    assert_eq!(st["state"], "ready", "{st}");
    assert_eq!(st["rows_total"], 85);
    let f = fixtures();
    let v = verify(
        &store.join("new"),
        &[&f.join("csr_f32.h5ad"), &f.join("dir")],
        &[],
    );
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    // The sources are still there; a concat into an existing name is refused.
    assert!(ns.lookup(ROOT_INO, "a").is_ok() && ns.lookup(ROOT_INO, "b").is_ok());
    assert!(matches!(
        ns.run_command("concat new a"),
        Err(FsError::Invalid(_))
    ));
}

/// A disk too small for the result (a tiny tmpfs; CI runs as root): the concat is refused before
/// it writes, naming the bytes needed and available, leaves no output and no temporary files, and
/// the inputs stay as they were.
#[test]
fn a_full_disk_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    convert("large_csr_f32.h5ad", &d.join("a"), &[]);
    convert("large_csr_f32.h5ad", &d.join("b"), &[]);
    let small = d.join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs needs root");
    let before = [tree_bytes(&d.join("a")), tree_bytes(&d.join("b"))];
    let out = small.join("joined");
    let o = scdl(&[
        "concat",
        out.to_str().unwrap(),
        d.join("a").to_str().unwrap(),
        d.join("b").to_str().unwrap(),
    ]);
    let err = stderr(&o);
    let left = listing(&small);
    let _ = std::process::Command::new("umount").arg(&small).status();
    assert!(!o.status.success(), "concat into a full disk must fail");
    assert!(
        err.contains("joined: needs") && err.contains("available, less a reserve of"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!([tree_bytes(&d.join("a")), tree_bytes(&d.join("b"))], before);
}

/// A write that fails midway (a file-size limit below the result's data.npy; SIGXFSZ ignored, as
/// the mount's workers ignore it): the concat fails with the reason, leaves no output and no
/// temporary files, and the inputs stay as they were.
#[test]
fn a_write_failing_midway_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    convert("large_csr_f32.h5ad", &d.join("a"), &[]);
    convert("large_csr_f32.h5ad", &d.join("b"), &[]);
    let before = [tree_bytes(&d.join("a")), tree_bytes(&d.join("b"))];
    let listing_before = listing(d);
    let out = d.join("joined");
    // ulimit -f counts 1024-byte blocks: 64 KiB, well below the ~280 KiB of values.
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 64; exec \"$0\" concat \"$1\" \"$2\" \"$3\"")
        .arg(common::bin())
        .arg(&out)
        .arg(d.join("a"))
        .arg(d.join("b"))
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("File too large"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!out.exists());
    assert_eq!(listing(d), listing_before, "temporaries left");
    assert_eq!([tree_bytes(&d.join("a")), tree_bytes(&d.join("b"))], before);
}
